//! Anthropic's Message Batches API behind the batch runner's interface
//! ([`crate::provider::batch_api::BatchApi`], shaped after OpenAI's Files
//! and Batch APIs): the translations both ways.
//!
//! - There are no files: an "uploaded" input file is kept in the job's
//!   journal folder (so a re-run can still create its batch), and
//!   creating the batch sends its lines as `{"requests": [{custom_id,
//!   params}]}` to `POST /v1/messages/batches` ([`create_body`]).
//! These are JSON to JSON, into the OpenAI shapes `batch_api` decodes.
//!
//! - A `message_batch` becomes an OpenAI batch object ([`batch_object`]):
//!   `in_progress`, `canceling`, and `ended` as completed, cancelled (a
//!   cancel was asked) or expired (requests expired); once ended its
//!   `results_url` is the output file.
//! - Result lines (in no particular order) become output lines
//!   ([`output_lines`]): `succeeded` a 200 with the message, `errored` the
//!   status its error type stands for, `canceled` and `expired` a line
//!   error, which the runner resubmits (or sends online after the
//!   deadline).
//!
//! Message batches carry no metadata, so a batch whose id a kill lost in
//! the instant between its creation and its journal record cannot be found
//! again (OpenAI's can, by metadata): the rows are then submitted again.

use serde_json::{json, Value};

use crate::provider::anthropic::error_status;
use crate::provider::batch_line::{jsonl, OutputLine};

/// The Message Batches route under the API's base URL.
pub const BATCHES: &str = "v1/messages/batches";

/// Batch input lines (`{custom_id, method, url, body}` JSONL, as the
/// runner writes them) as the body of `POST /v1/messages/batches`.
pub fn create_body(lines: &[u8]) -> Result<Vec<u8>, String> {
    let mut requests = Vec::new();
    for (i, line) in lines.split(|b| *b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let mut v: Value =
            serde_json::from_slice(line).map_err(|e| format!("batch input line {}: {e}", i + 1))?;
        let params = v.get_mut("body").map(Value::take).unwrap_or(Value::Null);
        requests.push(json!({"custom_id": v["custom_id"], "params": params}));
    }
    serde_json::to_vec(&json!({ "requests": requests })).map_err(|e| e.to_string())
}

fn count(v: &Value, key: &str) -> u64 {
    v.pointer(&format!("/request_counts/{key}"))
        .and_then(Value::as_u64)
        .unwrap_or(0)
}

/// A `message_batch` as an OpenAI batch object (the runner's
/// `BatchObject`).
pub fn batch_object(v: &Value) -> Result<Value, String> {
    let id = v
        .get("id")
        .and_then(Value::as_str)
        .ok_or("a message batch without an id")?;
    let ended = v.get("processing_status").and_then(Value::as_str) == Some("ended");
    let cancel_asked = v.get("cancel_initiated_at").is_some_and(|c| !c.is_null());
    let status = match v.get("processing_status").and_then(Value::as_str) {
        Some("in_progress") => "in_progress",
        Some("canceling") => "cancelling",
        Some("ended") if cancel_asked => "cancelled",
        Some("ended") if count(v, "expired") > 0 => "expired",
        Some("ended") => "completed",
        other => return Err(format!("message batch {id}: unknown status {other:?}")),
    };
    let [succeeded, errored, canceled, expired, processing] =
        ["succeeded", "errored", "canceled", "expired", "processing"].map(|k| count(v, k));
    let results = v
        .get("results_url")
        .and_then(Value::as_str)
        .filter(|_| ended);
    Ok(json!({
        "id": id,
        "object": "batch",
        "endpoint": BATCHES,
        "completion_window": "24h",
        "status": status,
        "output_file_id": results,
        "request_counts": {
            "total": succeeded + errored + canceled + expired + processing,
            "completed": succeeded,
            "failed": errored + canceled + expired,
        },
    }))
}

/// A page of `GET /v1/messages/batches` as an OpenAI batch list.
pub fn batch_list(v: &Value) -> Result<Value, String> {
    let data = v
        .get("data")
        .and_then(Value::as_array)
        .ok_or("a batch list without `data`")?
        .iter()
        .map(batch_object)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(json!({
        "object": "list",
        "data": data,
        "first_id": v.get("first_id"),
        "last_id": v.get("last_id"),
        "has_more": v.get("has_more").and_then(Value::as_bool).unwrap_or(false),
    }))
}

/// Result lines (JSONL) as OpenAI batch output lines (JSONL).
pub fn output_lines(results: &[u8]) -> Vec<u8> {
    let lines = results.split(|b| *b == b'\n').filter_map(|line| {
        let v = serde_json::from_slice::<Value>(line).ok()?;
        let custom_id = v["custom_id"].as_str().unwrap_or_default().to_string();
        let result = &v["result"];
        Some(match result["type"].as_str().unwrap_or_default() {
            "succeeded" => OutputLine::answered(custom_id, 200, result["message"].clone()),
            "errored" => {
                let body = &result["error"];
                let status = body
                    .pointer("/error/type")
                    .and_then(Value::as_str)
                    .and_then(error_status)
                    .unwrap_or(500);
                OutputLine::answered(custom_id, status, body.clone())
            }
            other => {
                let message = format!("the batch request was {other}");
                OutputLine::unanswered(custom_id, other, message)
            }
        })
    });
    jsonl(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_become_requests_and_results_become_output_lines() {
        let lines = br#"{"custom_id":"7","method":"POST","url":"/v1/chat/completions","body":{"model":"m"}}"#;
        let body: Value = serde_json::from_slice(&create_body(lines).unwrap()).unwrap();
        assert_eq!(
            body,
            json!({"requests": [{"custom_id": "7", "params": {"model": "m"}}]})
        );
        let results = [
            json!({"custom_id": "2", "result": {"type": "errored", "error": {"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}}}),
            json!({"custom_id": "1", "result": {"type": "succeeded", "message": {"content": []}}}),
            json!({"custom_id": "3", "result": {"type": "expired"}}),
        ]
        .map(|v| v.to_string())
        .join("\n");
        let out: Vec<Value> = output_lines(results.as_bytes())
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect();
        assert_eq!(out[0]["response"]["status_code"], 529);
        assert_eq!(out[1]["response"]["status_code"], 200);
        assert_eq!(out[2]["error"]["code"], "expired");
    }

    #[test]
    fn batch_statuses_map_onto_the_runners() {
        let b = |status: &str, cancel: Value, expired: u64| {
            batch_object(&json!({"id": "msgbatch_1", "processing_status": status,
                "cancel_initiated_at": cancel, "results_url": "http://x/results",
                "request_counts": {"processing": 0, "succeeded": 1, "errored": 0, "canceled": 0, "expired": expired}}))
            .unwrap()
        };
        assert_eq!(b("in_progress", Value::Null, 0)["status"], "in_progress");
        assert_eq!(
            b("in_progress", Value::Null, 0)["output_file_id"],
            Value::Null
        );
        assert_eq!(b("ended", json!("t"), 0)["status"], "cancelled");
        assert_eq!(b("ended", Value::Null, 1)["status"], "expired");
        let done = b("ended", Value::Null, 0);
        assert_eq!(
            (&done["status"], &done["output_file_id"]),
            (&json!("completed"), &json!("http://x/results"))
        );
    }
}
