//! Wire formats: the JSON bodies of OpenAI-compatible and Databricks Model
//! Serving requests and replies.
//!
//! This module is the one source of truth for both sides of the wire: the
//! client builds and parses these types, and the built-in simulator parses
//! and builds the same ones, so the two cannot drift apart. Fields that aiq
//! does not interpret are kept as raw JSON (`serde_json::Value`) so they pass
//! through untouched (tools, images, provider extensions).
//!
//! Databricks chat endpoints accept the OpenAI chat body (without `model`) and
//! reply in the OpenAI shape; Claude endpoints on Databricks report cache use
//! Anthropic-style (`cache_read_input_tokens`), which [`WireUsage`] accepts
//! too.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Which kind of call a row becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    /// Chat completions: system + user messages, text (or typed) result.
    #[default]
    Chat,
    /// Legacy text completions on a raw prompt.
    Completions,
    /// Embeddings of the rendered prompt: a list<float32> result.
    Embeddings,
}

/// A chat message. `content` is either a string or a list of content parts
/// (`{"type":"text",...}`, `{"type":"image_url",...}`), kept as JSON.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Message {
    /// Required in requests; optional in replies (an answer is readable
    /// without it, and some servers leave it out).
    #[serde(default)]
    pub role: String,
    #[serde(default)]
    pub content: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Value>,
}

/// `POST /chat/completions` (OpenAI) or `/serving-endpoints/{name}/invocations`.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct ChatRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    pub messages: Vec<Message>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_format: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_cache_key: Option<String>,
    /// Everything else (temperature, tools, seed, ...), passed through as is.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, Value>,
}

/// `POST /completions`.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct CompletionRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    pub prompt: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, Value>,
}

/// `POST /embeddings`: `input` is one string or a list of strings.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct EmbeddingRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    pub input: Value,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, Value>,
}

/// Token usage as providers report it. OpenAI nests cache reads under
/// `prompt_tokens_details.cached_tokens`; Anthropic-shaped replies (Claude on
/// Databricks) report `cache_read_input_tokens` and `cache_creation_input_tokens`,
/// and Anthropic's own names `input_tokens` (which then *excludes* cache reads
/// and writes) and `output_tokens`. [`crate::provider::usage::Usage::from_wire`] maps
/// both onto one meaning.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
pub struct WireUsage {
    /// Anthropic: input tokens neither read from nor written to the cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_tokens: Option<i64>,
    /// Anthropic: output tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_tokens: Option<i64>,
    #[serde(default)]
    pub prompt_tokens: Option<i64>,
    #[serde(default)]
    pub completion_tokens: Option<i64>,
    #[serde(default)]
    pub total_tokens: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_tokens_details: Option<PromptTokensDetails>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_tokens_details: Option<CompletionTokensDetails>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_read_input_tokens: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_creation_input_tokens: Option<i64>,
}

impl WireUsage {
    /// Reads a reply's `usage` object, or None when it is not one aiq can
    /// trust: counts that are not whole numbers (`"completion_tokens":
    /// "many"`) or are negative. The answer it came with is still good, so a
    /// bad usage must not fail the row: it is recorded as if the server had
    /// sent none (README "What aiq accepts"), with one warning per process.
    pub fn lenient(value: Value) -> Option<WireUsage> {
        if value.is_null() {
            return None;
        }
        let usage = serde_json::from_value::<WireUsage>(value.clone())
            .ok()
            .filter(WireUsage::is_sane);
        if usage.is_none() {
            static WARNED: std::sync::atomic::AtomicBool =
                std::sync::atomic::AtomicBool::new(false);
            if !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
                let shown: String = value.to_string().chars().take(200).collect();
                tracing::warn!(
                    "the endpoint sent a usage this aiq cannot read ({shown}); answers are kept, \
                     their token counts recorded as 0 (warned once)"
                );
            }
        }
        usage
    }

    fn is_sane(&self) -> bool {
        let details = [
            self.prompt_tokens_details
                .as_ref()
                .and_then(|d| d.cached_tokens),
            self.prompt_tokens_details
                .as_ref()
                .and_then(|d| d.cache_write_tokens),
            self.completion_tokens_details
                .as_ref()
                .and_then(|d| d.reasoning_tokens),
        ];
        [
            self.input_tokens,
            self.output_tokens,
            self.prompt_tokens,
            self.completion_tokens,
            self.total_tokens,
            self.cache_read_input_tokens,
            self.cache_creation_input_tokens,
        ]
        .into_iter()
        .chain(details)
        .all(|v| v.is_none_or(|n| n >= 0))
    }
}

fn lenient_usage<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<WireUsage>, D::Error> {
    Ok(WireUsage::lenient(Value::deserialize(d)?))
}

#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
pub struct PromptTokensDetails {
    #[serde(default)]
    pub cached_tokens: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_write_tokens: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
pub struct CompletionTokensDetails {
    #[serde(default)]
    pub reasoning_tokens: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChatChoice {
    #[serde(default)]
    pub index: u32,
    pub message: Message,
    #[serde(default)]
    pub finish_reason: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChatResponse {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub object: Option<String>,
    #[serde(default)]
    pub model: Option<String>,
    pub choices: Vec<ChatChoice>,
    #[serde(default, deserialize_with = "lenient_usage")]
    pub usage: Option<WireUsage>,
}

impl ChatResponse {
    /// A reply of one assistant message (`content`, and the tool calls
    /// `calls` when there are any): what the Messages API's and Gemini's
    /// replies read into.
    pub fn one(
        id: Option<&str>,
        model: Option<&str>,
        content: Value,
        calls: Vec<Value>,
        finish_reason: Option<String>,
        usage: Option<WireUsage>,
    ) -> ChatResponse {
        ChatResponse {
            id: id.map(str::to_string),
            object: Some("chat.completion".into()),
            model: model.map(str::to_string),
            choices: vec![ChatChoice {
                index: 0,
                message: Message {
                    role: "assistant".into(),
                    content,
                    tool_calls: (!calls.is_empty()).then_some(Value::Array(calls)),
                },
                finish_reason,
            }],
            usage,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CompletionChoice {
    #[serde(default)]
    pub index: u32,
    pub text: String,
    #[serde(default)]
    pub finish_reason: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CompletionResponse {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub model: Option<String>,
    pub choices: Vec<CompletionChoice>,
    #[serde(default, deserialize_with = "lenient_usage")]
    pub usage: Option<WireUsage>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EmbeddingItem {
    #[serde(default)]
    pub index: usize,
    pub embedding: Vec<f32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EmbeddingResponse {
    #[serde(default)]
    pub model: Option<String>,
    pub data: Vec<EmbeddingItem>,
    #[serde(default, deserialize_with = "lenient_usage")]
    pub usage: Option<WireUsage>,
}

/// One server-sent event chunk of a streamed chat completion. Databricks
/// sends `usage` in every chunk; OpenAI only in the last (with
/// `stream_options.include_usage`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChatChunk {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub choices: Vec<ChunkChoice>,
    #[serde(default)]
    pub usage: Option<WireUsage>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChunkChoice {
    #[serde(default)]
    pub index: u32,
    #[serde(default)]
    pub delta: Delta,
    #[serde(default)]
    pub finish_reason: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Delta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<Value>,
}

/// The error body OpenAI-compatible servers send: `{"error": {"message": ..}}`.
/// Databricks sends `{"error_code": .., "message": ..}`; [`error_message`]
/// reads both.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub message: String,
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub code: Option<Value>,
}

/// The most of a server's message aiq keeps, in characters: what a row's
/// `error_message`, the journal, the status file and the terminal get of an
/// error body (or of a reply that is no answer). Real errors fit; a server
/// that sends megabytes does not fill every failed row with them. Longer
/// messages are cut and say so ([`cut_message`]).
pub const MAX_SERVER_MESSAGE: usize = 500;

/// The most of an error reply's body aiq reads: far more than any real
/// error message (of which [`MAX_SERVER_MESSAGE`] characters are kept),
/// and a bound on what a server can make each failed call hold in memory.
pub const MAX_ERROR_BODY_BYTES: usize = 64 << 10;

/// The first [`MAX_ERROR_BODY_BYTES`] of an error reply's body (hyper's or
/// reqwest's), and how long the body was: its `Content-Length`, else what
/// was read (more than that when reading stopped at the bound).
pub async fn error_body<B>(headers: &hyper::HeaderMap, mut body: B) -> (bytes::Bytes, BodyLen)
where
    B: hyper::body::Body<Data = bytes::Bytes> + Unpin,
{
    use http_body_util::BodyExt;
    let mut head = Vec::new();
    let mut more = false;
    // A body that breaks off keeps what came before the break.
    while let Some(Ok(frame)) = body.frame().await {
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let room = MAX_ERROR_BODY_BYTES - head.len();
        head.extend_from_slice(&data[..data.len().min(room)]);
        if data.len() > room {
            more = true;
            break;
        }
    }
    let declared = headers
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let len = match declared {
        Some(n) => BodyLen::Exact(n),
        None if more => BodyLen::MoreThan(head.len() as u64),
        None => BodyLen::Exact(head.len() as u64),
    };
    (head.into(), len)
}

/// How long a body from a server was, for the note on a cut message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyLen {
    Exact(u64),
    /// Only this much was read (a body too large to be worth reading).
    MoreThan(u64),
}

impl std::fmt::Display for BodyLen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BodyLen::Exact(n) => write!(f, "{n} bytes"),
            BodyLen::MoreThan(n) => write!(f, "more than {n} bytes"),
        }
    }
}

/// `text` (from a body of `len`) cut to [`MAX_SERVER_MESSAGE`] characters,
/// saying so when cut: `…… (cut, 10485760 bytes)`.
pub fn cut_message(text: &str, len: BodyLen) -> String {
    match text.char_indices().nth(MAX_SERVER_MESSAGE) {
        Some((at, _)) => format!("{}… (cut, {len})", &text[..at]),
        None => text.to_string(),
    }
}

/// The human-readable message in an error body, whichever provider sent it;
/// falls back to the raw body. Cut to [`MAX_SERVER_MESSAGE`].
pub fn error_message(body: &[u8]) -> String {
    error_message_of(body, BodyLen::Exact(body.len() as u64))
}

/// [`error_message`] of a body of `len` of which `body` was read.
pub fn error_message_of(body: &[u8], len: BodyLen) -> String {
    cut_message(&message_in(body), len)
}

fn message_in(body: &[u8]) -> String {
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        if let Some(m) = v.pointer("/error/message").and_then(Value::as_str) {
            return m.to_string();
        }
        if let Some(m) = v.get("message").and_then(Value::as_str) {
            return match v.get("error_code").and_then(Value::as_str) {
                Some(code) => format!("{code}: {m}"),
                None => m.to_string(),
            };
        }
        if let Some(m) = v.get("error").and_then(Value::as_str) {
            return m.to_string();
        }
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return "(empty body)".to_string();
    }
    text.to_string()
}

/// The text of a message's content: a plain string, or the `text` parts of a
/// content list. Reasoning blocks (`{"type":"reasoning",..}`, as Databricks
/// reasoning models send them) are skipped.
pub fn content_text(content: &Value) -> Option<String> {
    match content {
        Value::String(s) => Some(s.clone()),
        Value::Array(parts) => {
            let mut out = String::new();
            let mut any = false;
            for part in parts {
                if part.get("type").and_then(Value::as_str) == Some("text") {
                    if let Some(t) = part.get("text").and_then(Value::as_str) {
                        out.push_str(t);
                        any = true;
                    }
                }
            }
            any.then_some(out)
        }
        _ => None,
    }
}

/// A chat body's `messages` taken out and split the way the Messages API
/// and Gemini take them: the contents of the system (and developer) turns,
/// which go apart, and the other turns as `(role, content)` in order.
pub fn take_turns(body: &mut Map<String, Value>) -> (Vec<Value>, Vec<(String, Value)>) {
    let mut system = Vec::new();
    let mut turns = Vec::new();
    if let Some(Value::Array(list)) = body.remove("messages") {
        for mut message in list {
            let role = match message.get("role").and_then(Value::as_str) {
                Some(role) => role.to_string(),
                None => "user".to_string(),
            };
            let content = message.get_mut("content").map_or(Value::Null, Value::take);
            match role.as_str() {
                "system" | "developer" => system.push(content),
                _ => turns.push((role, content)),
            }
        }
    }
    (system, turns)
}

/// A body's `stop`, taken out, as a list: OpenAI also takes one string,
/// the other dialects only lists.
pub fn take_stop_list(body: &mut Map<String, Value>) -> Option<Value> {
    body.remove("stop").map(|stop| match stop {
        Value::String(s) => Value::Array(vec![Value::String(s)]),
        other => other,
    })
}

/// Request bodies for the dialects' own tests: each translates the same
/// OpenAI body into its wire.
#[cfg(test)]
pub(crate) mod samples {
    use serde_json::{json, Map, Value};

    /// `v`, which a test wrote as a JSON object, as a map.
    pub(crate) fn object(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => panic!("not an object"),
        }
    }

    /// A chat body as aiq sends it: the `system` prompt marked for caching,
    /// then a user turn of `text`, an inline PNG and the image at `url`;
    /// the fields of `more` are added.
    pub(crate) fn chat(system: &str, text: &str, url: &str, more: Value) -> Map<String, Value> {
        let mut body = object(json!({
            "messages": [
                {"role": "system", "content": [{"type": "text", "text": system, "cache_control": {"type": "ephemeral"}}]},
                {"role": "user", "content": [
                    {"type": "text", "text": text},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBO"}},
                    {"type": "image_url", "image_url": {"url": url}}
                ]}
            ]
        }));
        body.extend(object(more));
        body
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn error_message_reads_openai_and_databricks_bodies() {
        assert_eq!(
            error_message(br#"{"error":{"message":"bad key"}}"#),
            "bad key"
        );
        assert_eq!(
            error_message(br#"{"error_code":"RESOURCE_DOES_NOT_EXIST","message":"no endpoint"}"#),
            "RESOURCE_DOES_NOT_EXIST: no endpoint"
        );
        assert_eq!(error_message(b"plain failure"), "plain failure");
        assert_eq!(error_message(b""), "(empty body)");
    }

    #[test]
    fn long_messages_are_cut_and_say_so() {
        let huge = json!({"error": {"message": "x".repeat(10 << 20)}}).to_string();
        let m = error_message(huge.as_bytes());
        assert!(m.len() < MAX_SERVER_MESSAGE + 50, "{}", m.len());
        assert!(
            m.ends_with(&format!("… (cut, {} bytes)", huge.len())),
            "{m}"
        );
        let head = &huge.as_bytes()[..1000];
        let m = error_message_of(head, BodyLen::MoreThan(1000));
        assert!(
            m.starts_with("{\"error\"") && m.ends_with("(cut, more than 1000 bytes)"),
            "{m}"
        );
        let short = "é".repeat(MAX_SERVER_MESSAGE);
        assert_eq!(cut_message(&short, BodyLen::Exact(1)), short);
    }

    #[test]
    fn content_text_skips_reasoning_blocks() {
        let content = json!([
            {"type": "reasoning", "summary": [{"type": "summary_text", "text": "thinking"}]},
            {"type": "text", "text": "answer"}
        ]);
        assert_eq!(content_text(&content).as_deref(), Some("answer"));
        assert_eq!(content_text(&json!("plain")).as_deref(), Some("plain"));
        assert_eq!(content_text(&Value::Null), None);
    }

    #[test]
    fn chat_request_passes_unknown_fields_through() {
        let body = json!({"messages": [], "temperature": 0.5, "tools": [{"type": "function"}]});
        let req: ChatRequest = serde_json::from_value(body.clone()).unwrap();
        assert_eq!(req.extra["temperature"], json!(0.5));
        let back = serde_json::to_value(&req).unwrap();
        assert_eq!(back["tools"], body["tools"]);
    }
}
