//! Images: an input cell → the URL of an `image_url` content part.
//!
//! Image columns are named explicitly (`--image COLUMN`, job file
//! `images = [..]`): guessing which string column holds pictures would send
//! megabytes of text as an image, or an image as text. A cell may be raw
//! bytes (Arrow Binary, as Parquet files of images hold them) or a string
//! holding base64, a `data:` URL or an http(s) URL. Bytes and base64 become
//! a `data:image/...;base64,...` URL whose MIME type is sniffed from the
//! magic bytes: providers reject a data URL whose declared type does not
//! match, and a column rarely says what format its images are in. Anything
//! that is not a PNG, JPEG, GIF or WebP image is that row's error, found
//! before the row is sent.

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::datatypes::DataType;
use base64::engine::general_purpose::STANDARD_PAD_INDIFFERENT as BASE64;
use base64::Engine;

/// Tokens one image is estimated at for rate limiting (OpenAI's low-detail
/// cost; the simulator charges the same).
pub const IMAGE_TOKEN_ESTIMATE: u64 = 85;

/// Column types an image can be read from.
pub fn is_image_type(dt: &DataType) -> bool {
    matches!(
        dt,
        DataType::Binary
            | DataType::LargeBinary
            | DataType::BinaryView
            | DataType::FixedSizeBinary(_)
            | DataType::Utf8
            | DataType::LargeUtf8
            | DataType::Utf8View
    )
}

/// The MIME type of an image from its first bytes.
pub fn sniff(bytes: &[u8]) -> Option<&'static str> {
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some("image/png")
    } else if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some("image/jpeg")
    } else if bytes.starts_with(b"GIF87a") || bytes.starts_with(b"GIF89a") {
        Some("image/gif")
    } else if bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        Some("image/webp")
    } else {
        None
    }
}

/// A data URL for raw image bytes.
pub fn data_url(bytes: &[u8]) -> Result<String, String> {
    let mime = sniff(bytes).ok_or_else(|| not_an_image(bytes))?;
    Ok(format!("data:{mime};base64,{}", BASE64.encode(bytes)))
}

/// The URL for an image given as text: a `data:` or http(s) URL passes
/// through (a data URL's type is checked to be an image), anything else is
/// read as base64 and checked to decode to an image.
pub fn url_from_text(text: &str) -> Result<String, String> {
    let text = text.trim();
    if text.starts_with("http://") || text.starts_with("https://") {
        return Ok(text.to_string());
    }
    if let Some(rest) = text.strip_prefix("data:") {
        if !rest.starts_with("image/") || !rest.contains(";base64,") {
            let head: String = text.chars().take(40).collect();
            return Err(format!(
                "{head:?}... is not a base64 data URL of an image (data:image/...;base64,...)"
            ));
        }
        return Ok(text.to_string());
    }
    // Line-wrapped base64 (as `base64` writes it by default) is still base64.
    let compact: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let bytes = BASE64.decode(compact.as_bytes()).map_err(|e| {
        format!(
            "an image column holds text that is not base64, a data: URL or an http(s) URL ({e})"
        )
    })?;
    let mime = sniff(&bytes).ok_or_else(|| not_an_image(&bytes))?;
    Ok(format!("data:{mime};base64,{compact}"))
}

/// The image URL of row `i` of an image column, which must not be null
/// there (null images are the caller's: the row is not sent).
pub fn cell_url(array: &ArrayRef, i: usize) -> Result<String, String> {
    match array.data_type() {
        DataType::Binary => data_url(array.as_binary::<i32>().value(i)),
        DataType::LargeBinary => data_url(array.as_binary::<i64>().value(i)),
        DataType::BinaryView => data_url(array.as_binary_view().value(i)),
        DataType::FixedSizeBinary(_) => data_url(array.as_fixed_size_binary().value(i)),
        DataType::Utf8 => url_from_text(array.as_string::<i32>().value(i)),
        DataType::LargeUtf8 => url_from_text(array.as_string::<i64>().value(i)),
        DataType::Utf8View => url_from_text(array.as_string_view().value(i)),
        other => Err(format!("an image column cannot be of type {other}")),
    }
}

fn not_an_image(bytes: &[u8]) -> String {
    let head: Vec<String> = bytes.iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!(
        "not a PNG, JPEG, GIF or WebP image (it starts with bytes {})",
        if head.is_empty() {
            "(none)".to_string()
        } else {
            head.join(" ")
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use arrow::array::{BinaryArray, StringArray};

    const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR";

    #[test]
    fn sniffs_the_four_formats() {
        assert_eq!(sniff(PNG), Some("image/png"));
        assert_eq!(sniff(&[0xFF, 0xD8, 0xFF, 0xE0]), Some("image/jpeg"));
        assert_eq!(sniff(b"GIF89a...."), Some("image/gif"));
        assert_eq!(sniff(b"RIFF\0\0\0\0WEBPVP8 "), Some("image/webp"));
        assert_eq!(sniff(b"%PDF-1.7"), None);
        assert_eq!(sniff(b""), None);
    }

    #[test]
    fn bytes_and_base64_become_data_urls() {
        let url = data_url(PNG).unwrap();
        assert_eq!(url, format!("data:image/png;base64,{}", BASE64.encode(PNG)));
        let b64 = BASE64.encode(PNG);
        assert_eq!(url_from_text(&b64).unwrap(), url);
        // Wrapped lines and surrounding space are fine.
        let wrapped = format!(" {}\n{} ", &b64[..8], &b64[8..]);
        assert_eq!(url_from_text(&wrapped).unwrap(), url);
        assert_eq!(url_from_text(&url).unwrap(), url);
        assert_eq!(
            url_from_text("https://x.test/a.png").unwrap(),
            "https://x.test/a.png"
        );
    }

    #[test]
    fn non_images_are_row_errors() {
        assert!(data_url(b"%PDF-1.7").unwrap_err().contains("25 50 44 46"));
        assert!(url_from_text("not base64!")
            .unwrap_err()
            .contains("not base64"));
        assert!(url_from_text(&BASE64.encode(b"hello world"))
            .unwrap_err()
            .contains("not a PNG"));
        assert!(url_from_text("data:text/plain;base64,aGk=").is_err());
    }

    #[test]
    fn cells_of_binary_and_string_columns() {
        let bin: ArrayRef = Arc::new(BinaryArray::from(vec![PNG]));
        let text: ArrayRef = Arc::new(StringArray::from(vec![BASE64.encode(PNG)]));
        assert_eq!(cell_url(&bin, 0).unwrap(), cell_url(&text, 0).unwrap());
        assert!(is_image_type(bin.data_type()) && !is_image_type(&DataType::Int64));
    }
}
