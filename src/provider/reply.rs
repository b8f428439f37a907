//! Replies: a successful response body → one result per row.
//!
//! The text of a chat or completion is turned into the job's result type
//! here (a string, or a typed value parsed from structured output, or a task
//! function's answer); embeddings become lists of floats (or, for
//! ai_similarity, the cosine similarity of a pair). A reply that does not
//! fit its type is a row error, with a message saying what did not fit.

use serde_json::Value;

use crate::ai::functions::{cosine_similarity, AiFunction, FunctionOptions};
use crate::ai::types::SqlType;
use crate::provider::dialect::Dialect;
use crate::provider::usage::Usage;
use crate::provider::wire::Task;
use crate::provider::wire::{self, ChatResponse, CompletionResponse, EmbeddingResponse};

/// How reply text becomes the result value.
#[derive(Debug, Clone)]
pub struct Shape {
    /// The wire replies come in ([`Dialect::chat_reply`] reads its chat
    /// replies into the OpenAI shape parsed here).
    pub dialect: Dialect,
    pub task: Task,
    pub result_type: SqlType,
    pub function: Option<(AiFunction, FunctionOptions)>,
    /// ai_similarity: each call embeds two texts and yields their similarity.
    pub similarity: bool,
    /// OpenAI Batch input: the result is the reply body itself, as text.
    pub raw: bool,
}

/// One row's share of a reply.
#[derive(Debug, Clone, PartialEq)]
pub struct RowReply {
    pub result: Result<Value, String>,
    pub finish_reason: Option<String>,
}

impl RowReply {
    /// An answer came but did not fit the result type: what a repair may
    /// fix. An answer the provider's content filter withheld is not one
    /// (asking again for the same text meets the same filter).
    pub fn unfit(&self) -> bool {
        self.result.is_err() && self.finish_reason.as_deref() != Some(CONTENT_FILTER)
    }
}

/// A parsed reply: per-row results in call order, and the call's usage.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub rows: Vec<RowReply>,
    pub usage: Usage,
}

impl Shape {
    pub fn string(task: Task) -> Shape {
        Shape {
            dialect: Dialect::OpenAi,
            task,
            result_type: SqlType::String,
            function: None,
            similarity: false,
            raw: false,
        }
    }

    /// Parse a 2xx body for a call answering `rows` rows. `Err` means the
    /// body is not what the endpoint should have sent (for every row).
    pub fn parse(&self, body: &[u8], rows: usize) -> Result<Reply, String> {
        if self.raw {
            return parse_raw(body);
        }
        match self.task {
            Task::Chat => {
                let r: ChatResponse = self
                    .dialect
                    .chat_reply(body)
                    .map_err(|e| format!("unexpected reply ({e}): {}", head(body)))?;
                self.chat(r)
            }
            Task::Completions => {
                let r: CompletionResponse = decode(body)?;
                let choice = r.choices.into_iter().next().ok_or("reply has no choices")?;
                let result = self.answer(&choice.text, choice.finish_reason.as_deref());
                Ok(Reply {
                    rows: vec![RowReply {
                        result,
                        finish_reason: choice.finish_reason,
                    }],
                    usage: usage(r.usage.as_ref()),
                })
            }
            Task::Embeddings => {
                let r: EmbeddingResponse = self
                    .dialect
                    .embedding_reply(body)
                    .map_err(|e| format!("unexpected reply ({e}): {}", head(body)))?;
                let mut data = r.data;
                data.sort_by_key(|d| d.index);
                let expected = if self.similarity { 2 } else { rows };
                if data.len() != expected {
                    return Err(format!(
                        "asked for {expected} embeddings, got {}",
                        data.len()
                    ));
                }
                let rows = if self.similarity {
                    let result = cosine_similarity(&data[0].embedding, &data[1].embedding)
                        .map(|s| serde_json::json!(s))
                        .ok_or_else(|| "embeddings differ in length or are zero".to_string());
                    vec![RowReply {
                        result,
                        finish_reason: None,
                    }]
                } else {
                    data.into_iter()
                        .map(|d| RowReply {
                            result: Ok(serde_json::json!(d.embedding)),
                            finish_reason: None,
                        })
                        .collect()
                };
                Ok(Reply {
                    rows,
                    usage: usage(r.usage.as_ref()),
                })
            }
        }
    }

    /// A chat reply (in the OpenAI shape) → its row's result: tool calls
    /// as their JSON text, else the content as the result type. `Err` when
    /// it has no choices.
    pub fn chat(&self, r: ChatResponse) -> Result<Reply, String> {
        let choice = r.choices.into_iter().next().ok_or("reply has no choices")?;
        let finish = choice.finish_reason;
        let result = match (
            &choice.message.tool_calls,
            wire::content_text(&choice.message.content),
        ) {
            (Some(calls), _) if calls.as_array().is_some_and(|a| !a.is_empty()) => {
                Ok(Value::String(calls.to_string()))
            }
            (_, Some(text)) => self.answer(&text, finish.as_deref()),
            (_, None) => Err(no_content(finish.as_deref())),
        };
        Ok(Reply {
            rows: vec![RowReply {
                result,
                finish_reason: finish,
            }],
            usage: usage(r.usage.as_ref()),
        })
    }

    /// Reply text → the result, unless it is empty because the provider's
    /// content filter withheld it (then the row says so).
    pub fn answer(&self, text: &str, finish_reason: Option<&str>) -> Result<Value, String> {
        if text.is_empty() && finish_reason == Some(CONTENT_FILTER) {
            return Err(no_content(finish_reason));
        }
        self.typed(text)
    }

    /// Reply text → the result type, then the task function's finishing.
    pub fn typed(&self, text: &str) -> Result<Value, String> {
        let value = self.result_type.parse_reply(text)?;
        match &self.function {
            Some((f, opts)) => f.finish(opts, value),
            None => Ok(value),
        }
    }
}

const CONTENT_FILTER: &str = "content_filter";

/// The row error of a reply that carries no answer text; the provider's
/// content filter is named when it was the reason.
pub fn no_content(finish_reason: Option<&str>) -> String {
    match finish_reason {
        Some(CONTENT_FILTER) => "the provider's content filter withheld the answer \
                                 (finish_reason content_filter)"
            .to_string(),
        _ => "reply has no text content".to_string(),
    }
}

/// A reply kept whole (OpenAI Batch input): the result is the body text,
/// which must be JSON; usage and finish reason are read where any API puts
/// them, so the usual columns still fill in.
fn parse_raw(body: &[u8]) -> Result<Reply, String> {
    #[derive(serde::Deserialize)]
    struct Any {
        #[serde(default)]
        choices: Vec<Value>,
        #[serde(default)]
        usage: Option<wire::WireUsage>,
    }
    let any: Any = decode(body)?;
    let text = std::str::from_utf8(body).map_err(|e| format!("reply is not UTF-8: {e}"))?;
    let finish_reason = any
        .choices
        .first()
        .and_then(|c| c.get("finish_reason"))
        .and_then(Value::as_str)
        .map(str::to_string);
    Ok(Reply {
        rows: vec![RowReply {
            result: Ok(Value::String(text.trim().to_string())),
            finish_reason,
        }],
        usage: usage(any.usage.as_ref()),
    })
}

/// What makes a 2xx body not an answer at all (as opposed to an answer
/// that does not fit its row): see [`body_fault`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyFault {
    /// Not JSON: a proxy's HTML error page. A fault of the path, like a
    /// 502.
    Unreadable(String),
    /// JSON that stops short: the server answered, and the answer was cut
    /// off on the way. Retried like a 502, and counted as maybe billed
    /// ([`crate::provider::retry::maybe_billed`]).
    CutShort(String),
    /// A JSON error object sent with a success status
    /// (`{"error": {"message": ..}}`): the server's own message, and the
    /// HTTP status it names in `code` or `status`, if any.
    Error {
        message: String,
        status: Option<u16>,
    },
}

impl std::fmt::Display for BodyFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BodyFault::Unreadable(m) | BodyFault::CutShort(m) => write!(f, "{m}"),
            BodyFault::Error { message, .. } => {
                write!(f, "the endpoint answered with an error: {message}")
            }
        }
    }
}

/// Why a 2xx body that [`Shape::parse`] could not read is not an answer:
/// None when it is a well-formed JSON reply that just does not fit (that
/// stays the row's error). Only called after a parse failed, so good
/// replies are parsed once.
pub fn body_fault(body: &[u8]) -> Option<BodyFault> {
    let value: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => {
            let head = head(body);
            let what = if e.is_eof() {
                "a reply cut short"
            } else if head.starts_with('<') {
                "an HTML page instead of a JSON reply (a proxy's error page?)"
            } else {
                "a reply that is not JSON"
            };
            let message = format!("the endpoint sent {what} with a success status: {head}");
            return Some(if e.is_eof() {
                BodyFault::CutShort(message)
            } else {
                BodyFault::Unreadable(message)
            });
        }
    };
    let error = value.get("error").filter(|e| !e.is_null())?;
    if value.get("choices").is_some() || value.get("data").is_some() {
        return None;
    }
    let status = ["code", "status"]
        .iter()
        .filter_map(|k| error.get(*k).or_else(|| value.get(*k)))
        .find_map(|c| {
            c.as_u64()
                .or_else(|| c.as_str().and_then(|s| s.parse().ok()))
        })
        .and_then(|c| u16::try_from(c).ok())
        .filter(|c| (400..600).contains(c));
    Some(BodyFault::Error {
        message: wire::error_message(body),
        status,
    })
}

fn decode<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    serde_json::from_slice(body).map_err(|e| format!("unexpected reply ({e}): {}", head(body)))
}

/// The start of a body, as a message may quote it.
pub fn head(body: &[u8]) -> String {
    wire::cut_message(
        String::from_utf8_lossy(body).trim(),
        wire::BodyLen::Exact(body.len() as u64),
    )
}

fn usage(u: Option<&wire::WireUsage>) -> Usage {
    u.map(Usage::from_wire).unwrap_or_default()
}

/// Split a call's usage over its rows: the first row carries the remainder,
/// so the column sums to what the provider billed.
pub fn split_usage(total: Usage, rows: usize) -> Vec<Usage> {
    let n = rows.max(1) as i64;
    (0..rows.max(1))
        .map(|i| {
            let mut share = total;
            for v in share.fields_mut() {
                *v = *v / n + if i == 0 { *v % n } else { 0 };
            }
            share
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn chat_text_and_tool_calls() {
        let shape = Shape::string(Task::Chat);
        let body = json!({"choices": [{"message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
                          "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}});
        let r = shape.parse(body.to_string().as_bytes(), 1).unwrap();
        assert_eq!(r.rows[0].result, Ok(json!("hi")));
        assert_eq!(r.rows[0].finish_reason.as_deref(), Some("stop"));
        assert_eq!(r.usage.total_tokens, 6);
        let tools = json!({"choices": [{"message": {"role": "assistant", "content": null,
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
            "finish_reason": "tool_calls"}]});
        let r = shape.parse(tools.to_string().as_bytes(), 1).unwrap();
        let text = r.rows[0].result.clone().unwrap();
        let calls: Value = serde_json::from_str(text.as_str().unwrap()).unwrap();
        assert_eq!(calls[0]["function"]["name"], json!("f"));
    }

    #[test]
    fn malformed_bodies_are_errors() {
        let shape = Shape::string(Task::Chat);
        assert!(shape
            .parse(b"<html>", 1)
            .unwrap_err()
            .contains("unexpected reply"));
        assert!(shape.parse(br#"{"choices": []}"#, 1).is_err());
    }

    #[test]
    fn embeddings_in_index_order() {
        let shape = Shape::string(Task::Embeddings);
        let body = json!({"data": [{"index": 1, "embedding": [0.0, 1.0]}, {"index": 0, "embedding": [1.0, 0.0]}]});
        let r = shape.parse(body.to_string().as_bytes(), 2).unwrap();
        assert_eq!(r.rows[0].result, Ok(json!([1.0, 0.0])));
        assert!(shape.parse(body.to_string().as_bytes(), 3).is_err());
        let sim = Shape {
            similarity: true,
            ..Shape::string(Task::Embeddings)
        };
        let r = sim.parse(body.to_string().as_bytes(), 1).unwrap();
        assert_eq!(r.rows.len(), 1);
        assert!(r.rows[0].result.as_ref().unwrap().as_f64().unwrap().abs() < 1e-6);
    }

    #[test]
    fn raw_replies_are_kept_whole() {
        let shape = Shape {
            raw: true,
            ..Shape::string(Task::Chat)
        };
        let body = json!({"id": "x", "choices": [{"message": {"content": "hi"}, "finish_reason": "stop"}],
                          "usage": {"prompt_tokens": 5, "completion_tokens": 1}});
        let r = shape.parse(body.to_string().as_bytes(), 1).unwrap();
        let kept: Value =
            serde_json::from_str(r.rows[0].result.as_ref().unwrap().as_str().unwrap()).unwrap();
        assert_eq!(kept, body);
        assert_eq!(r.rows[0].finish_reason.as_deref(), Some("stop"));
        assert_eq!(r.usage.total_tokens, 6);
        // Embeddings replies have no choices; a non-JSON body is an error.
        let emb =
            json!({"data": [{"index": 0, "embedding": [1.0]}], "usage": {"prompt_tokens": 2}});
        assert_eq!(
            shape
                .parse(emb.to_string().as_bytes(), 1)
                .unwrap()
                .usage
                .prompt_tokens,
            2
        );
        assert!(shape.parse(b"<html>", 1).is_err());
    }

    #[test]
    fn usage_split_sums_to_total() {
        let total = Usage {
            prompt_tokens: 10,
            completion_tokens: 0,
            total_tokens: 10,
            cached_tokens: 3,
            ..Default::default()
        };
        let parts = split_usage(total, 3);
        assert_eq!(parts.iter().map(|u| u.prompt_tokens).sum::<i64>(), 10);
        assert_eq!(parts.iter().map(|u| u.cached_tokens).sum::<i64>(), 3);
    }
}
