//! One line of an OpenAI Batch output or error file: the form the runner
//! reads every dialect's batch results in. [`crate::pipeline::batch`] turns
//! each line into its row's outcome, so a dialect's batch module
//! (`anthropic_batch`, `gemini_batch`) only translates its results into
//! these lines, and one step decides what a result means for a row.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One line of a batch output or error file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OutputLine {
    #[serde(default)]
    pub id: Option<String>,
    pub custom_id: String,
    #[serde(default)]
    pub response: Option<LineResponse>,
    #[serde(default)]
    pub error: Option<LineError>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LineResponse {
    pub status_code: u16,
    #[serde(default)]
    pub request_id: Option<String>,
    #[serde(default)]
    pub body: Value,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LineError {
    #[serde(default)]
    pub code: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
}

impl OutputLine {
    /// The request `custom_id` was answered with HTTP `status` and `body`
    /// (an error status: the endpoint's error body).
    pub fn answered(custom_id: String, status: u16, body: Value) -> OutputLine {
        OutputLine {
            id: None,
            custom_id,
            response: Some(LineResponse {
                status_code: status,
                request_id: None,
                body,
            }),
            error: None,
        }
    }

    /// The request `custom_id` got no answer (expired, cancelled): `code`
    /// says why.
    pub fn unanswered(custom_id: String, code: &str, message: String) -> OutputLine {
        OutputLine {
            id: None,
            custom_id,
            response: None,
            error: Some(LineError {
                code: Some(code.to_string()),
                message: Some(message),
            }),
        }
    }
}

/// `lines` as the bytes of a JSON Lines file.
pub fn jsonl(lines: impl IntoIterator<Item = OutputLine>) -> Vec<u8> {
    let mut out = Vec::new();
    for line in lines {
        // Plain data: serialising it cannot fail.
        if serde_json::to_writer(&mut out, &line).is_ok() {
            out.push(b'\n');
        }
    }
    out
}
