//! The OpenAI Batch file format, in and out, so that aiq runs files made
//! for OpenAI's Batch API or vLLM's `run_batch` locally, against any
//! endpoint.
//!
//! Input (`--input-format openai-batch`): JSON Lines of
//! `{"custom_id": .., "method": "POST", "url": "/v1/chat/completions", "body": {..}}`.
//! This module reads them into ordinary rows with the columns `custom_id`,
//! `method`, `url` and `body` (the body as compact JSON text), so the rest
//! of the pipeline — schedule, client, journal, resume — is the one every
//! job uses: render sends each row's `body` as is, to the route its `url`
//! names ([`crate::pipeline::render::BodyBuilder::passthrough`]), and the raw reply is
//! the row's STRING result. The whole file is checked before anything is
//! sent: every line an object with a unique `custom_id`, a supported `url`
//! and an object `body`.
//!
//! Output (`--output-format openai-batch`): when the job is done, the
//! finished rows are written as the Batch API's output lines,
//! `{"id": "batch_req_..", "custom_id": .., "response": {"status_code": 200,
//! "request_id": .., "body": <reply>}, "error": null}`, or with
//! `"response": null` and `"error": {"code": .., "message": ..}` for a row
//! that failed. Lines keep the input's order.

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch, StringBuilder};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::error::{Error, Result};
use crate::job::location::Location;
use crate::pipeline::journal::Part;
use crate::pipeline::jsonl::Lines;
use crate::pipeline::parquet_out::read_batches;
use crate::pipeline::source::{Format, Source};

pub use crate::job::settings::{InputFormat, OutputFormat, BODY_TEMPLATE};
pub use crate::provider::batch_api::route;

/// The columns an OpenAI Batch input becomes, in order.
pub const CUSTOM_ID: &str = "custom_id";
pub const METHOD: &str = "method";
pub const URL: &str = "url";
pub const BODY: &str = "body";

/// One input line.
#[derive(Deserialize)]
struct Line {
    custom_id: String,
    #[serde(default)]
    method: Option<String>,
    url: String,
    body: Map<String, Value>,
}

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(CUSTOM_ID, DataType::Utf8, false),
        Field::new(METHOD, DataType::Utf8, false),
        Field::new(URL, DataType::Utf8, false),
        Field::new(BODY, DataType::Utf8, false),
    ]))
}

/// A line parsed and checked; errors say what is wrong with it.
fn parse_line(text: &[u8]) -> std::result::Result<Line, String> {
    let line: Line = serde_json::from_slice(text)
        .map_err(|e| format!("not an OpenAI Batch request line: {e}"))?;
    if line.custom_id.is_empty() {
        return Err("custom_id is empty".into());
    }
    if let Some(m) = &line.method {
        if !m.eq_ignore_ascii_case("POST") {
            return Err(format!("method {m:?}: only POST requests are supported"));
        }
    }
    if route(&line.url).is_none() {
        return Err(format!(
            "url {:?} is not supported: use /v1/chat/completions, /v1/completions or /v1/embeddings",
            line.url
        ));
    }
    Ok(line)
}

/// Opens an OpenAI Batch file as a [`Source`] of `custom_id`, `method`,
/// `url`, `body` rows, after checking every line (exit 2 on the first bad
/// one, naming it).
/// A line may hold at most `max_line_bytes`.
pub fn open(input: &Location, batch_size: usize, max_line_bytes: usize) -> Result<Source> {
    let path = input.as_path();
    if batch_size == 0 {
        return Err(Error::Config("batch size must be at least 1 row".into()));
    }
    let mut ids = HashSet::new();
    let mut rows = 0u64;
    let mut lines = open_lines(input, max_line_bytes)?;
    while let Some(row) = lines.next_row()? {
        let (line_no, line) = (row.no, parse_line(row.text));
        let line = line.map_err(|e| lines.error(e))?;
        // Results are matched to requests by custom_id: a duplicate would
        // make two outputs indistinguishable (OpenAI rejects them too).
        if !ids.insert(line.custom_id.clone()) {
            return Err(Error::input(
                path,
                format!(
                    "line {line_no}: custom_id {:?} is used twice",
                    line.custom_id
                ),
            ));
        }
        rows += 1;
    }
    if rows == 0 {
        return Err(Error::input(path, "the file has no request lines"));
    }
    let file_bytes = input
        .local()
        .map_or(0, |path| std::fs::metadata(path).map_or(0, |m| m.len()));
    let batch_size = crate::pipeline::bounds::batch_rows(
        batch_size,
        usize::try_from(file_bytes / rows).unwrap_or(usize::MAX),
    );
    let batches = Batches {
        lines: open_lines(input, max_line_bytes)?,
        batch_size,
        done: false,
    };
    let mut source = Source::from_batches(
        path,
        Format::OpenAiBatch,
        schema(),
        Some(rows),
        Box::new(batches),
    );
    source.batch_rows = batch_size;
    Ok(source)
}

/// The non-blank lines of `input` (a file, or an object streamed from its
/// store, as every input is read), each at most `max_line_bytes`.
fn open_lines(input: &Location, max_line_bytes: usize) -> Result<Lines> {
    let reader = crate::pipeline::store::open_read(input, 0)?;
    Ok(Lines::new(input.as_path(), reader, max_line_bytes, 0, 0))
}

/// The checked file, read again as record batches of `batch_size` rows.
struct Batches {
    lines: Lines,
    batch_size: usize,
    done: bool,
}

impl Batches {
    fn next_batch(&mut self) -> Result<Option<RecordBatch>> {
        let mut cols: [StringBuilder; 4] = std::array::from_fn(|_| StringBuilder::new());
        let mut n = 0;
        while n < self.batch_size {
            let Some(row) = self.lines.next_row()? else {
                break;
            };
            // Checked when opened; failing now means the file changed since.
            let line = parse_line(row.text);
            let line = line.map_err(|e| self.lines.error(e))?;
            cols[0].append_value(&line.custom_id);
            cols[1].append_value(line.method.as_deref().unwrap_or("POST"));
            cols[2].append_value(&line.url);
            cols[3].append_value(Value::Object(line.body).to_string());
            n += 1;
        }
        if n == 0 {
            return Ok(None);
        }
        let columns = cols.iter_mut().map(|b| Arc::new(b.finish()) as _).collect();
        RecordBatch::try_new(schema(), columns)
            .map(Some)
            .map_err(|e| Error::input(self.lines.path(), e))
    }
}

impl Iterator for Batches {
    type Item = Result<RecordBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let next = self.next_batch();
        if !matches!(next, Ok(Some(_))) {
            self.done = true;
        }
        next.transpose()
    }
}

/// Writes the finished output parts as OpenAI Batch output lines into
/// `output`, atomically (a temporary file renamed at the end). Returns the
/// number of lines.
pub fn write_output(parts: &[Part], output: &Path) -> Result<u64> {
    let tmp = output.with_file_name(format!(
        ".{}.aiq-tmp",
        output
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("output")
    ));
    let file = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let mut out = BufWriter::new(file);
    let mut lines = 0u64;
    for part in parts {
        for batch in read_batches(&part.path)? {
            let batch = batch?;
            let column = |name: &str| {
                batch
                    .column_by_name(name)
                    .and_then(|c| c.as_string_opt::<i32>())
                    .ok_or_else(|| {
                        Error::output(
                            output,
                            format!("part {} has no string column `{name}`", part.path.display()),
                        )
                    })
            };
            let (ids, results, errors) = (
                column(CUSTOM_ID)?,
                column("result")?,
                column("error_message")?,
            );
            for i in 0..batch.num_rows() {
                let get =
                    |a: &arrow::array::StringArray| a.is_valid(i).then(|| a.value(i).to_string());
                let id = get(ids).unwrap_or_default();
                let line = output_line(&id, get(results).as_deref(), get(errors).as_deref());
                serde_json::to_writer(&mut out, &line).map_err(|e| Error::io(&tmp, e.into()))?;
                out.write_all(b"\n").map_err(|e| Error::io(&tmp, e))?;
                lines += 1;
            }
        }
    }
    let file = out
        .into_inner()
        .map_err(|e| Error::io(&tmp, e.into_error()))?;
    file.sync_all().map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, output).map_err(|e| Error::io(output, e))?;
    Ok(lines)
}

/// One output line. A result that is not JSON (it always is: it is the
/// reply the endpoint sent, checked when it arrived) is kept as a string.
fn output_line(custom_id: &str, result: Option<&str>, error: Option<&str>) -> Value {
    // Stable across runs and resumes: derived from the custom_id only.
    let hash = blake3::hash(custom_id.as_bytes()).to_hex();
    let id = format!("batch_req_{}", &hash[..24]);
    match (result, error) {
        (Some(reply), None) => {
            let body: Value =
                serde_json::from_str(reply).unwrap_or_else(|_| Value::String(reply.to_string()));
            let request_id = body
                .get("id")
                .and_then(Value::as_str)
                .map_or_else(|| format!("req_{}", &hash[24..48]), str::to_string);
            json!({
                "id": id,
                "custom_id": custom_id,
                "response": {"status_code": 200, "request_id": request_id, "body": body},
                "error": null,
            })
        }
        (_, error) => {
            let message = error.unwrap_or("the request was not sent");
            json!({
                "id": id,
                "custom_id": custom_id,
                "response": null,
                "error": {"code": error_code(message), "message": message},
            })
        }
    }
}

/// An error code for a row's error message: the HTTP status the endpoint
/// answered with (`http_400`), else a generic one.
fn error_code(message: &str) -> String {
    let status = message
        .strip_prefix("HTTP ")
        .or_else(|| message.split_once(": HTTP ").map(|(_, rest)| rest))
        .and_then(|rest| rest.get(..3))
        .filter(|s| s.bytes().all(|b| b.is_ascii_digit()));
    match status {
        Some(s) => format!("http_{s}"),
        None => "request_failed".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_checked() {
        assert!(parse_line(
            br#"{"custom_id":"a","method":"POST","url":"/v1/chat/completions","body":{}}"#
        )
        .is_ok());
        assert!(parse_line(br#"{"custom_id":"a","url":"/v1/chat/completions","body":{}}"#).is_ok());
        let bad = [
            (
                r#"{"custom_id":"a","method":"GET","url":"/v1/chat/completions","body":{}}"#,
                "only POST",
            ),
            (
                r#"{"custom_id":"a","url":"/v1/responses","body":{}}"#,
                "not supported",
            ),
            (
                r#"{"custom_id":"a","url":"/v1/embeddings","body":"x"}"#,
                "not an OpenAI Batch",
            ),
            (
                r#"{"custom_id":"","url":"/v1/embeddings","body":{}}"#,
                "empty",
            ),
            (r#"{"url":"/v1/embeddings","body":{}}"#, "custom_id"),
        ];
        for (line, want) in bad {
            let err = parse_line(line.as_bytes()).err().unwrap();
            assert!(err.contains(want), "{line}: {err}");
        }
    }

    #[test]
    fn output_lines_for_success_and_failure() {
        let ok = output_line("r1", Some(r#"{"id":"chatcmpl-1","choices":[]}"#), None);
        assert_eq!(ok["custom_id"], json!("r1"));
        assert_eq!(ok["response"]["status_code"], json!(200));
        assert_eq!(ok["response"]["request_id"], json!("chatcmpl-1"));
        assert_eq!(ok["response"]["body"]["choices"], json!([]));
        assert_eq!(ok["error"], Value::Null);
        assert!(ok["id"].as_str().unwrap().starts_with("batch_req_"));
        assert_eq!(
            ok["id"],
            output_line("r1", None, Some("x"))["id"],
            "ids depend on the custom_id only"
        );
        let failed = output_line("r2", None, Some("HTTP 400: bad"));
        assert_eq!(failed["response"], Value::Null);
        assert_eq!(
            failed["error"],
            json!({"code": "http_400", "message": "HTTP 400: bad"})
        );
        assert_eq!(
            error_code("gave up after 3 attempts: HTTP 503: busy"),
            "http_503"
        );
        assert_eq!(error_code("reply has no choices"), "request_failed");
    }
}
