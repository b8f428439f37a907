//! The PNG picture (`--plot PATH.png`): a plotters drawing backend that
//! paints into an RGB buffer and writes it as a PNG file.
//!
//! Shapes use plotters' own CPU rasterizer (a backend only has to set
//! pixels). Text cannot be left to a viewer as in the SVG, and a TrueType
//! rasterizer (font-kit or ab_glyph, plus the `image` crate) is a large
//! dependency for a few labels, so text comes from a glyph atlas of DejaVu
//! Sans rasterized once at the sizes the plot uses (`font/make_atlas.py`
//! made `font/atlas.bin.z` and says how to remake it). The encoder writes
//! one IDAT chunk of zlib-compressed, unfiltered scanlines through flate2,
//! which the tree already has for Parquet.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::Path;
use std::sync::OnceLock;

use plotters::prelude::DrawingBackend;
use plotters_backend::text_anchor::{HPos, VPos};
use plotters_backend::{BackendColor, BackendCoord, BackendTextStyle, DrawingErrorKind};

use crate::error::{Error, Result};

const ATLAS: &[u8] = include_bytes!("font/atlas.bin.z");

/// One rasterized character: `coverage` is `width * height` bytes, row by
/// row; `left`/`top` place it relative to the pen on the baseline (y down).
#[derive(Debug, Clone)]
struct Glyph {
    advance: i32,
    left: i32,
    top: i32,
    width: usize,
    height: usize,
    coverage: Vec<u8>,
}

/// The glyphs of one pixel size.
#[derive(Debug, Clone)]
struct Face {
    size: u16,
    ascent: i32,
    descent: i32,
    glyphs: HashMap<char, Glyph>,
}

impl Face {
    /// A character's glyph; one the atlas lacks is drawn as `?`.
    fn glyph(&self, c: char) -> Option<&Glyph> {
        self.glyphs.get(&c).or_else(|| self.glyphs.get(&'?'))
    }

    fn width(&self, text: &str) -> i32 {
        text.chars()
            .filter_map(|c| self.glyph(c))
            .map(|g| g.advance)
            .sum()
    }

    fn height(&self) -> i32 {
        self.ascent + self.descent
    }
}

/// The faces of the embedded atlas, read once. The atlas is part of the
/// binary, so a failure to read it is a build defect; it is still an
/// error, not a panic.
fn faces() -> std::result::Result<&'static [Face], String> {
    static FACES: OnceLock<std::result::Result<Vec<Face>, String>> = OnceLock::new();
    FACES
        .get_or_init(|| {
            parse_atlas(ATLAS).ok_or_else(|| "the embedded font atlas is corrupt".into())
        })
        .as_ref()
        .map(Vec::as_slice)
        .map_err(Clone::clone)
}

/// The face nearest to `size` pixels.
fn face(faces: &[Face], size: f64) -> Option<&Face> {
    faces.iter().min_by(|a, b| {
        (f64::from(a.size) - size)
            .abs()
            .total_cmp(&(f64::from(b.size) - size).abs())
    })
}

fn parse_atlas(packed: &[u8]) -> Option<Vec<Face>> {
    let mut data = Vec::new();
    flate2::read::ZlibDecoder::new(packed)
        .read_to_end(&mut data)
        .ok()?;
    let mut at = 0usize;
    let mut take = |n: usize| -> Option<&[u8]> {
        let s = data.get(at..at + n)?;
        at += n;
        Some(s)
    };
    if take(4)? != b"AIQF" {
        return None;
    }
    let u16_at = |b: &[u8]| u16::from_le_bytes([b[0], b[1]]);
    let n_sizes = take(1)?[0];
    let mut faces = Vec::with_capacity(usize::from(n_sizes));
    for _ in 0..n_sizes {
        let h = take(8)?;
        let (size, ascent, descent, count) = (
            u16_at(&h[0..2]),
            u16_at(&h[2..4]),
            u16_at(&h[4..6]),
            u16_at(&h[6..8]),
        );
        let mut glyphs = HashMap::with_capacity(usize::from(count));
        for _ in 0..count {
            let g = take(14)?;
            let code = u32::from_le_bytes([g[0], g[1], g[2], g[3]]);
            let advance = u16_at(&g[4..6]);
            let left = i16::from_le_bytes([g[6], g[7]]);
            let top = i16::from_le_bytes([g[8], g[9]]);
            let (width, height) = (
                usize::from(u16_at(&g[10..12])),
                usize::from(u16_at(&g[12..14])),
            );
            let coverage = take(width * height)?.to_vec();
            glyphs.insert(
                char::from_u32(code)?,
                Glyph {
                    advance: i32::from(advance),
                    left: i32::from(left),
                    top: i32::from(top),
                    width,
                    height,
                    coverage,
                },
            );
        }
        faces.push(Face {
            size,
            ascent: i32::from(ascent),
            descent: i32::from(descent),
            glyphs,
        });
    }
    Some(faces)
}

/// Why drawing into the buffer failed: only the font atlas can.
#[derive(Debug)]
pub struct RasterError(String);

impl std::fmt::Display for RasterError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RasterError {}

/// An RGB picture in memory, drawn on by plotters.
pub struct Raster {
    width: u32,
    height: u32,
    rgb: Vec<u8>,
}

impl Raster {
    /// A white picture of `width` × `height` pixels.
    pub fn new(width: u32, height: u32) -> Raster {
        Raster {
            width,
            height,
            rgb: vec![255; width as usize * height as usize * 3],
        }
    }

    /// The colour at (x, y), if inside.
    pub fn pixel(&self, x: u32, y: u32) -> Option<(u8, u8, u8)> {
        if x >= self.width || y >= self.height {
            return None;
        }
        let i = (y as usize * self.width as usize + x as usize) * 3;
        Some((self.rgb[i], self.rgb[i + 1], self.rgb[i + 2]))
    }

    /// Blend `color` at `alpha` (0..=1) over the pixel at `p`; outside is ignored.
    fn blend(&mut self, (x, y): BackendCoord, color: BackendColor, alpha: f64) {
        if x < 0 || y < 0 || x >= self.width as i32 || y >= self.height as i32 {
            return;
        }
        let a = (alpha * color.alpha).clamp(0.0, 1.0);
        let i = (y as usize * self.width as usize + x as usize) * 3;
        let (r, g, b) = color.rgb;
        for (k, c) in [r, g, b].into_iter().enumerate() {
            let old = f64::from(self.rgb[i + k]);
            self.rgb[i + k] = (f64::from(c) * a + old * (1.0 - a)).round() as u8;
        }
    }

    /// The picture as PNG bytes: 8-bit RGB, no interlace, filter 0 on
    /// every scanline.
    pub fn encode(&self) -> std::io::Result<Vec<u8>> {
        let row = self.width as usize * 3;
        let mut raw = Vec::with_capacity((row + 1) * self.height as usize);
        for line in self.rgb.chunks(row.max(1)) {
            raw.push(0);
            raw.extend_from_slice(line);
        }
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(&raw)?;
        let idat = z.finish()?;

        let mut ihdr = Vec::with_capacity(13);
        ihdr.extend_from_slice(&self.width.to_be_bytes());
        ihdr.extend_from_slice(&self.height.to_be_bytes());
        // Bit depth 8, colour type 2 (RGB), deflate, filter set 0, no interlace.
        ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);

        let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
        for (kind, body) in [
            (b"IHDR", &ihdr[..]),
            (b"IDAT", &idat[..]),
            (b"IEND", &[][..]),
        ] {
            out.extend_from_slice(&(body.len() as u32).to_be_bytes());
            out.extend_from_slice(kind);
            out.extend_from_slice(body);
            let mut crc = flate2::Crc::new();
            crc.update(kind);
            crc.update(body);
            out.extend_from_slice(&crc.sum().to_be_bytes());
        }
        Ok(out)
    }

    /// Write the picture to `path` (atomically, like every aiq output).
    pub fn save(&self, path: &Path) -> Result<()> {
        let bytes = self.encode().map_err(|e| Error::output(path, e))?;
        crate::pipeline::journal::write_atomic(path, &bytes)
    }
}

impl DrawingBackend for &mut Raster {
    type ErrorType = RasterError;

    fn get_size(&self) -> (u32, u32) {
        (self.width, self.height)
    }

    fn ensure_prepared(&mut self) -> std::result::Result<(), DrawingErrorKind<RasterError>> {
        Ok(())
    }

    fn present(&mut self) -> std::result::Result<(), DrawingErrorKind<RasterError>> {
        Ok(())
    }

    fn draw_pixel(
        &mut self,
        point: BackendCoord,
        color: BackendColor,
    ) -> std::result::Result<(), DrawingErrorKind<RasterError>> {
        self.blend(point, color, 1.0);
        Ok(())
    }

    fn estimate_text_size<S: BackendTextStyle>(
        &self,
        text: &str,
        style: &S,
    ) -> std::result::Result<(u32, u32), DrawingErrorKind<RasterError>> {
        let faces = faces().map_err(|e| DrawingErrorKind::FontError(Box::new(RasterError(e))))?;
        Ok(face(faces, style.size()).map_or((0, 0), |f| {
            (f.width(text).max(0) as u32, f.height().max(0) as u32)
        }))
    }

    /// Text from the atlas, placed by its anchor and turned by its
    /// transform the way plotters' default `draw_text` does.
    fn draw_text<S: BackendTextStyle>(
        &mut self,
        text: &str,
        style: &S,
        pos: BackendCoord,
    ) -> std::result::Result<(), DrawingErrorKind<RasterError>> {
        let faces = faces().map_err(|e| DrawingErrorKind::FontError(Box::new(RasterError(e))))?;
        let Some(face) = face(faces, style.size()) else {
            return Ok(());
        };
        let color = style.color();
        let (width, height) = (face.width(text), face.height());
        let dx = match style.anchor().h_pos {
            HPos::Left => 0,
            HPos::Right => -width,
            HPos::Center => -width / 2,
        };
        let dy = match style.anchor().v_pos {
            VPos::Top => 0,
            VPos::Center => -height / 2,
            VPos::Bottom => -height,
        };
        let transform = style.transform();
        let mut pen = 0;
        for c in text.chars() {
            let Some(g) = face.glyph(c) else { continue };
            for (row, line) in g.coverage.chunks(g.width.max(1)).enumerate().take(g.height) {
                for (col, &cov) in line.iter().enumerate() {
                    if cov == 0 {
                        continue;
                    }
                    let x = dx + pen + g.left + col as i32;
                    let y = dy + face.ascent + g.top + row as i32;
                    let (x, y) = transform.transform(x, y);
                    self.blend((pos.0 + x, pos.1 + y), color, f64::from(cov) / 255.0);
                }
            }
            pen += g.advance;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atlas_has_every_size_and_printable_ascii() {
        let faces = faces().unwrap();
        assert!(faces.len() >= 3);
        for f in faces {
            assert!(f.ascent > 0 && f.descent > 0, "size {}", f.size);
            for c in ' '..='~' {
                assert!(f.glyphs.contains_key(&c), "size {} lacks {c:?}", f.size);
            }
            // Proportional: an m is wider than an i.
            assert!(f.width("m") > f.width("i"));
        }
        assert_eq!(face(faces, 13.4).unwrap().size, 13);
        assert_eq!(
            face(faces, 100.0).unwrap().size,
            faces.iter().map(|f| f.size).max().unwrap()
        );
    }

    #[test]
    fn png_encoding_has_valid_chunks() {
        let mut r = Raster::new(3, 2);
        r.blend(
            (1, 1),
            BackendColor {
                alpha: 1.0,
                rgb: (10, 20, 30),
            },
            1.0,
        );
        assert_eq!(r.pixel(1, 1), Some((10, 20, 30)));
        assert_eq!(r.pixel(0, 0), Some((255, 255, 255)));
        let png = r.encode().unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        assert_eq!(&png[12..16], b"IHDR");
        assert_eq!(u32::from_be_bytes(png[16..20].try_into().unwrap()), 3);
        assert_eq!(u32::from_be_bytes(png[20..24].try_into().unwrap()), 2);
        // The IHDR CRC covers its type and body.
        let mut crc = flate2::Crc::new();
        crc.update(&png[12..29]);
        assert_eq!(
            u32::from_be_bytes(png[29..33].try_into().unwrap()),
            crc.sum()
        );
        assert_eq!(&png[png.len() - 8..png.len() - 4], b"IEND");
        // The pixels inflate back to the scanlines.
        let idat_len = u32::from_be_bytes(png[33..37].try_into().unwrap()) as usize;
        assert_eq!(&png[37..41], b"IDAT");
        let mut raw = Vec::new();
        flate2::read::ZlibDecoder::new(&png[41..41 + idat_len])
            .read_to_end(&mut raw)
            .unwrap();
        assert_eq!(raw.len(), 2 * (1 + 9));
        assert_eq!(&raw[10..17], &[0, 255, 255, 255, 10, 20, 30]);
    }
}
