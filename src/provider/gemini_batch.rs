//! Gemini's Batch API behind the batch runner's interface
//! ([`crate::provider::batch_api::BatchApi`], shaped after OpenAI's Files
//! and Batch APIs): the translations both ways, JSON to JSON, as
//! [`crate::provider::anthropic_batch`] does for Anthropic.
//!
//! - There are no files to upload: an input file is kept in the job's
//!   journal folder until its batch is created.
//! - Requests go inline: `POST models/{model}:batchGenerateContent` with
//!   `batch.inputConfig.requests.requests[]`, each a `GenerateContentRequest`
//!   and `metadata.key` = the line's `custom_id` (the row). Google takes at
//!   most [`MAX_INLINE_BYTES`] in one such call, so files are cut below it.
//! - The batch is a long-running operation named `batches/{id}`; its
//!   `metadata.state` (`BATCH_STATE_*`, or `JOB_STATE_*` as Google's SDKs
//!   name them) maps to a [`BatchStatus`], `batchStats` (int64 counts, sent
//!   as strings) to the request counts.
//! - Once done, its `response.inlinedResponses.inlinedResponses[]` (each a
//!   `response` or an `error`, with its request's `metadata`) become
//!   output lines whose `custom_id` is the key; an error's gRPC code is
//!   turned back into an HTTP status for the one retry table.
//! - Batches carry no metadata of their own: the job and submission are
//!   written into the `displayName` ([`display_name`]), which is how a
//!   batch whose name a kill lost is found again.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::provider::batch_line::{jsonl, OutputLine};

/// The most Google takes in one `batchGenerateContent` call (20 MB), less
/// room for the envelope around the requests.
pub const MAX_INLINE_BYTES: u64 = 19 << 20;

/// Where an operation's batch keeps its output.
const OUTPUT_AT: [&str; 2] = [
    "/response/inlinedResponses/inlinedResponses",
    "/metadata/output/inlinedResponses/inlinedResponses",
];

/// The path of `batchGenerateContent` for `model` under the API's base.
pub fn create_path(model: &str) -> String {
    format!(
        "{}/models/{}:batchGenerateContent",
        crate::provider::gemini::API_VERSION,
        crate::provider::gemini::model_id(model)
    )
}

/// The path of a batch (`batches/{id}`), or of a method on it.
pub fn batch_path(name: &str, method: Option<&str>) -> String {
    let v = crate::provider::gemini::API_VERSION;
    match method {
        Some(m) => format!("{v}/{name}:{m}"),
        None => format!("{v}/{name}"),
    }
}

/// The path of a page of `GET batches`.
pub fn list_path(page: Option<&str>) -> String {
    let v = crate::provider::gemini::API_VERSION;
    match page {
        Some(token) => format!("{v}/batches?pageSize=100&pageToken={token}"),
        None => format!("{v}/batches?pageSize=100"),
    }
}

/// The `displayName` that carries a batch's metadata (`aiq_job`,
/// `aiq_submission`, ...) as `key=value` words.
pub fn display_name(metadata: &BTreeMap<String, String>) -> String {
    let words: Vec<String> = metadata
        .iter()
        .map(|(k, v)| format!("{k}={}", v.replace([' ', '='], "_")))
        .collect();
    format!("aiq {}", words.join(" "))
}

/// The metadata [`display_name`] wrote, if the name is one of aiq's.
pub fn metadata_of(display_name: &str) -> Option<BTreeMap<String, String>> {
    let rest = display_name.strip_prefix("aiq ")?;
    Some(
        rest.split(' ')
            .filter_map(|w| w.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

/// The body of `batchGenerateContent` for batch input lines
/// (`{"custom_id", "url", "body"}` JSONL, the body already Gemini's).
pub fn create_body(display_name: &str, lines: &[u8]) -> Result<Vec<u8>, String> {
    let mut requests = Vec::new();
    for (i, line) in lines.split(|b| *b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let mut v: Value = serde_json::from_slice(line)
            .map_err(|e| format!("batch input line {} is not JSON: {e}", i + 1))?;
        let request = v.get_mut("body").map(Value::take).unwrap_or(Value::Null);
        requests.push(json!({"request": request, "metadata": {"key": v["custom_id"]}}));
    }
    let body = json!({"batch": {
        "displayName": display_name,
        "inputConfig": {"requests": {"requests": requests}},
    }});
    serde_json::to_vec(&body).map_err(|e| e.to_string())
}

/// A batch state, in either of Google's spellings, as an OpenAI status.
fn status(state: &str) -> &'static str {
    let name = state
        .strip_prefix("BATCH_STATE_")
        .or_else(|| state.strip_prefix("JOB_STATE_"))
        .unwrap_or(state);
    match name {
        "RUNNING" | "UPDATING" | "PAUSED" => "in_progress",
        "SUCCEEDED" | "PARTIALLY_SUCCEEDED" => "completed",
        "FAILED" => "failed",
        "CANCELLING" => "cancelling",
        "CANCELLED" => "cancelled",
        "EXPIRED" => "expired",
        // PENDING, QUEUED, UNSPECIFIED.
        _ => "validating",
    }
}

/// An int64 count, which Google's JSON sends as a string.
fn count(v: Option<&Value>) -> u64 {
    match v {
        Some(Value::String(s)) => s.parse().unwrap_or(0),
        Some(n) => n.as_u64().unwrap_or(0),
        None => 0,
    }
}

/// The HTTP status of a gRPC code (a per-request `google.rpc.Status`).
pub fn http_status(code: i64) -> u16 {
    match code {
        3 | 9 | 11 => 400,
        16 => 401,
        7 => 403,
        5 => 404,
        6 | 10 => 409,
        8 => 429,
        1 => 499,
        12 => 501,
        14 => 503,
        4 => 504,
        _ => 500,
    }
}

fn is_terminal(status: &str) -> bool {
    matches!(status, "completed" | "failed" | "cancelled" | "expired")
}

/// An operation (what create and get return) as an OpenAI batch object
/// (the runner's `BatchObject`); once it is done, its `output_file_id` is
/// the batch's name, whose inlined responses [`output_lines`] reads.
pub fn batch_object(op: &Value) -> Result<Value, String> {
    let name = op
        .get("name")
        .and_then(Value::as_str)
        .ok_or("a batch operation without a name")?;
    let meta = op.get("metadata").unwrap_or(&Value::Null);
    let mut status = status(meta.get("state").and_then(Value::as_str).unwrap_or(""));
    let failure = op.get("error").filter(|e| !e.is_null());
    if op.get("done").and_then(Value::as_bool) == Some(true) && !is_terminal(status) {
        status = if failure.is_some() {
            "failed"
        } else {
            "completed"
        };
    }
    let stats = meta.get("batchStats").unwrap_or(&Value::Null);
    let mut v = json!({
        "id": name,
        "object": "batch",
        "completion_window": "24h",
        "status": status,
        "output_file_id": is_terminal(status).then_some(name),
        "request_counts": {
            "total": count(stats.get("requestCount")),
            "completed": count(stats.get("successfulRequestCount")),
            "failed": count(stats.get("failedRequestCount")),
        },
        "metadata": meta.get("displayName").and_then(Value::as_str).and_then(metadata_of),
    });
    if let Some(e) = failure {
        v["errors"] = json!({"object": "list", "data": [{
            "code": e.get("code").map(|c| c.to_string()),
            "message": e.get("message"),
        }]});
    }
    Ok(v)
}

/// A page of `GET batches`: its batch objects and the next page's token.
pub fn list_page(v: &Value) -> (Vec<Value>, Option<String>) {
    let batches = v
        .get("operations")
        .or_else(|| v.get("batches"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|op| batch_object(op).ok())
        .collect();
    let next = v
        .get("nextPageToken")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
        .map(str::to_string);
    (batches, next)
}

/// A done operation's inlined responses as OpenAI output lines (JSONL):
/// the key is the `custom_id`, a response a 200, an error the HTTP status
/// its gRPC code stands for. A cancelled or expired batch has the answers
/// it gave; the rows it did not answer have no line.
pub fn output_lines(op: &Value) -> Vec<u8> {
    let responses = OUTPUT_AT
        .iter()
        .find_map(|at| op.pointer(at).and_then(Value::as_array))
        .map_or(&[][..], Vec::as_slice);
    let lines = responses.iter().enumerate().filter_map(|(i, r)| {
        let key = r
            .pointer("/metadata/key")
            .and_then(Value::as_str)
            .map_or_else(|| i.to_string(), str::to_string);
        match (r.get("response"), r.get("error")) {
            (Some(body), _) => Some(OutputLine::answered(key, 200, body.clone())),
            (None, Some(e)) => {
                let status = http_status(e.get("code").and_then(Value::as_i64).unwrap_or(13));
                Some(OutputLine::answered(key, status, json!({ "error": e })))
            }
            (None, None) => None,
        }
    });
    jsonl(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_rides_in_the_display_name() {
        let m = BTreeMap::from([
            ("aiq_job".to_string(), "j1".to_string()),
            ("aiq_output".to_string(), "out put.parquet".to_string()),
        ]);
        let name = display_name(&m);
        assert_eq!(name, "aiq aiq_job=j1 aiq_output=out_put.parquet");
        assert_eq!(metadata_of(&name).unwrap()["aiq_job"], "j1");
        assert_eq!(metadata_of("someone else's"), None);
    }

    #[test]
    fn lines_become_inline_requests() {
        let lines = b"{\"custom_id\":\"7\",\"method\":\"POST\",\"url\":\"/v1/chat/completions\",\"body\":{\"contents\":[]}}\n";
        let body: Value = serde_json::from_slice(&create_body("aiq x=1", lines).unwrap()).unwrap();
        assert_eq!(
            body["batch"]["inputConfig"]["requests"]["requests"][0],
            json!({"request": {"contents": []}, "metadata": {"key": "7"}})
        );
        assert!(create_body("n", b"{oops\n").is_err());
        assert_eq!(
            create_path("models/g"),
            "v1beta/models/g:batchGenerateContent"
        );
        assert_eq!(
            batch_path("batches/b", Some("cancel")),
            "v1beta/batches/b:cancel"
        );
    }

    #[test]
    fn operations_become_batches_with_output_lines() {
        let running = json!({"name": "batches/b1", "metadata": {"state": "BATCH_STATE_RUNNING",
            "displayName": "aiq aiq_job=j", "batchStats": {"requestCount": "3"}}});
        let b = batch_object(&running).unwrap();
        assert_eq!(
            (b["status"].clone(), b["request_counts"]["total"].clone()),
            (json!("in_progress"), json!(3))
        );
        assert!(b["output_file_id"].is_null());
        assert_eq!(b["metadata"]["aiq_job"], "j");
        let done = json!({"name": "batches/b1", "done": true,
        "metadata": {"state": "JOB_STATE_SUCCEEDED"},
        "response": {"inlinedResponses": {"inlinedResponses": [
            {"response": {"candidates": []}, "metadata": {"key": "4"}},
            {"error": {"code": 8, "message": "quota"}, "metadata": {"key": "5"}}
        ]}}});
        let b = batch_object(&done).unwrap();
        assert_eq!(
            (b["status"].clone(), b["output_file_id"].clone()),
            (json!("completed"), json!("batches/b1"))
        );
        let lines: Vec<Value> = String::from_utf8(output_lines(&done))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines[0]["custom_id"], "4");
        assert_eq!(lines[1]["response"]["status_code"], 429);
        let cancelled =
            json!({"name": "batches/b2", "metadata": {"state": "BATCH_STATE_CANCELLED"}});
        assert_eq!(batch_object(&cancelled).unwrap()["status"], "cancelled");
        assert!(output_lines(&cancelled).is_empty());
    }
}
