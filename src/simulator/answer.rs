//! What the simulator answers: a parsed request turned into a [`Job`] that
//! holds the prompt (for usage, limits and caching) and the deterministic
//! reply.
//!
//! Replies are functions of the request only, so tests can check that each
//! row's result belongs to its own input row: chat and completions echo the
//! last user text (`"echo: ..."`), structured outputs and tool arguments are
//! generated from the schema ([`super::schema`]), embeddings are unit
//! vectors hashed from the text. Magic markers in the text let tests ask for
//! a specific failure: `[[sim:400]]`, `[[sim:500]]`, `[[sim:tool]]`,
//! `[[sim:filter]]` (`finish_reason` content_filter, no content), and
//! `[[sim:badjson]]` (a reply that does not fit: a structured document with
//! its first leaf of the wrong type, or text that is not JSON at all).

use std::time::Duration;

use serde_json::{json, Value};

use super::schema;
use super::SimConfig;
use crate::ai::tokens;
use crate::provider::wire::{content_text, ChatRequest, CompletionRequest, EmbeddingRequest};

/// Tokens an image content part counts, whatever its size.
pub const IMAGE_TOKENS: u64 = 85;

/// Which API the body speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    Chat,
    Completion,
    Embedding,
}

impl Task {
    /// The task a Databricks `invocations` body asks for, from its keys.
    pub fn of_body(body: &Value) -> Option<Task> {
        if body.get("messages").is_some() {
            Some(Task::Chat)
        } else if body.get("prompt").is_some() {
            Some(Task::Completion)
        } else if body.get("input").is_some() {
            Some(Task::Embedding)
        } else {
            None
        }
    }
}

/// A failure a test asked for with a marker in its text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Marker {
    BadRequest,
    ServerError,
}

/// The reply of one request, before usage and timing are added.
#[derive(Debug, Clone)]
pub enum Reply {
    Chat {
        content: Option<String>,
        tool_calls: Option<Value>,
        finish_reason: &'static str,
    },
    /// One `(text, finish_reason)` per prompt.
    Completion {
        choices: Vec<(String, &'static str)>,
    },
    Embedding {
        vectors: Vec<Vec<f32>>,
    },
}

/// One parsed request and its answer.
#[derive(Debug, Clone)]
pub struct Job {
    pub task: Task,
    pub model: Option<String>,
    /// Input tokens: all message texts, plus a fixed count per image.
    pub prompt_tokens: u64,
    /// The text eligible for prefix caching (`None`: never cached).
    pub cache_text: Option<String>,
    /// What `ok_by_prompt` counts this request under.
    pub keys: Vec<String>,
    pub marker: Option<Marker>,
    /// The reply budget charged against the TPM bucket at admission.
    pub max_tokens: u64,
    pub stream: bool,
    /// OpenAI streams send usage only when asked (`stream_options`).
    pub include_usage: bool,
    pub reply: Reply,
    pub completion_tokens: u64,
    /// The reply is a complete structured-output document (a
    /// `response_format` JSON schema was asked for): what `--truncate-*`
    /// and `--mismatch-*` spoil.
    pub typed: bool,
    /// Anthropic: the forced tool whose input carries the typed reply.
    pub answer_tool: Option<String>,
}

/// Reads `body` as a `task` request and computes its answer. `reply_tokens`
/// is the simulator's natural reply length; `claude` turns on Anthropic
/// cache semantics (only up to the last `cache_control` part).
pub fn plan(
    task: Task,
    body: Value,
    reply_tokens: u64,
    dim: usize,
    claude: bool,
) -> Result<Job, String> {
    match task {
        Task::Chat => chat(body, reply_tokens, claude),
        Task::Completion => completion(body, reply_tokens),
        Task::Embedding => embedding(body, dim),
    }
}

fn bad_body(what: &str, e: serde_json::Error) -> String {
    format!("invalid {what} request body: {e}")
}

fn marker_in(text: &str) -> Option<Marker> {
    if text.contains("[[sim:400]]") {
        Some(Marker::BadRequest)
    } else if text.contains("[[sim:500]]") {
        Some(Marker::ServerError)
    } else {
        None
    }
}

/// Cuts `text` to at most `max_tokens` tokens (on a char boundary); true if
/// anything was cut.
pub fn truncate(text: &str, max_tokens: u64) -> (String, bool) {
    let max_bytes = usize::try_from(max_tokens)
        .unwrap_or(usize::MAX)
        .saturating_mul(tokens::BYTES_PER_TOKEN);
    if text.len() <= max_bytes {
        return (text.to_string(), false);
    }
    let mut end = max_bytes;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    (text[..end].to_string(), true)
}

fn stream_flags(stream: Option<bool>, extra: &serde_json::Map<String, Value>) -> (bool, bool) {
    let include_usage = extra
        .get("stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    (stream.unwrap_or(false), include_usage)
}

fn chat(body: Value, reply_tokens: u64, claude: bool) -> Result<Job, String> {
    let req: ChatRequest = serde_json::from_value(body).map_err(|e| bad_body("chat", e))?;
    if req.messages.is_empty() {
        return Err("`messages` must not be empty".to_string());
    }
    let mut prompt = String::new();
    let mut images = 0u64;
    // For Claude, caching reaches up to the end of the last part marked
    // with `cache_control`, as Anthropic's explicit breakpoints do.
    let mut cache_end: Option<usize> = None;
    for m in &req.messages {
        match &m.content {
            Value::Array(parts) => {
                for part in parts {
                    match part.get("type").and_then(Value::as_str) {
                        Some("text") => {
                            prompt.push_str(part.get("text").and_then(Value::as_str).unwrap_or(""))
                        }
                        Some("image_url") | Some("image") => images += 1,
                        _ => {}
                    }
                    if part.get("cache_control").is_some() {
                        cache_end = Some(prompt.len());
                    }
                }
            }
            other => prompt.push_str(&content_text(other).unwrap_or_default()),
        }
    }
    let last_user = req
        .messages
        .iter()
        .rev()
        .find(|m| m.role == "user")
        .and_then(|m| content_text(&m.content))
        .unwrap_or_default();
    let asked = req.max_tokens.or_else(|| {
        req.extra
            .get("max_completion_tokens")
            .and_then(Value::as_u64)
    });
    let limit = asked.unwrap_or(reply_tokens).min(reply_tokens);
    let mut typed = false;
    let (content, tool_calls, finish_reason) = match tool_call(&req, &prompt, &last_user)? {
        // A content filter's refusal: no content at all.
        None if last_user.contains(FILTERED) => (None, None, "content_filter"),
        Some(calls) => (None, Some(calls), "tool_calls"),
        None => {
            let doc = structured(&req, &prompt, &last_user)?;
            typed = doc.is_some() && req.response_format.is_some();
            let (text, cut) = match doc {
                // A structured reply's natural length is the document; only
                // the caller's own max_tokens cuts it (into invalid JSON, as a
                // real model would).
                Some(doc) => truncate(&doc, asked.unwrap_or(u64::MAX)),
                None => truncate(&format!("echo: {last_user}"), limit),
            };
            typed &= !cut;
            (Some(text), None, if cut { "length" } else { "stop" })
        }
    };
    let completion_tokens = match (&content, &tool_calls) {
        (Some(text), _) => tokens::estimate(text),
        (None, Some(calls)) => tokens::estimate(&calls.to_string()),
        _ => 0,
    };
    let (stream, include_usage) = stream_flags(req.stream, &req.extra);
    let cache_text = if claude {
        cache_end.map(|end| prompt[..end].to_string())
    } else {
        Some(prompt.clone())
    };
    Ok(Job {
        task: Task::Chat,
        model: req.model.clone(),
        prompt_tokens: tokens::estimate(&prompt) + IMAGE_TOKENS * images,
        cache_text,
        marker: marker_in(&last_user),
        keys: vec![last_user],
        max_tokens: asked.unwrap_or(reply_tokens),
        stream,
        include_usage,
        reply: Reply::Chat {
            content,
            tool_calls,
            finish_reason,
        },
        completion_tokens,
        typed,
        answer_tool: None,
    })
}

/// Asks for a reply withheld by a content filter.
const FILTERED: &str = "[[sim:filter]]";

/// How a typed reply is spoiled, for tests of what clients do with replies
/// a real model sometimes gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spoil {
    /// Cut off halfway, `finish_reason = length`: as if `max_tokens` ran out.
    Truncate,
    /// Valid JSON that does not match the schema (its first leaf of the
    /// wrong type).
    Mismatch,
}

/// Spoils a typed reply (see [`Job::typed`]); others are left alone.
pub fn spoil(job: &mut Job, how: Spoil) {
    let Reply::Chat {
        content: Some(text),
        finish_reason,
        ..
    } = &mut job.reply
    else {
        return;
    };
    match how {
        Spoil::Truncate => {
            let mut end = text.len() / 2;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
            *finish_reason = "length";
        }
        Spoil::Mismatch => {
            if let Ok(mut doc) = serde_json::from_str::<Value>(text) {
                if schema::break_first_leaf(&mut doc) {
                    *text = doc.to_string();
                }
            }
        }
    }
    job.completion_tokens = tokens::estimate(text);
}

/// Asks for a reply that does not fit what was requested.
const BAD_JSON: &str = "[[sim:badjson]]";

/// The JSON document `response_format` asks for, if it asks for one.
fn structured(req: &ChatRequest, prompt: &str, last_user: &str) -> Result<Option<String>, String> {
    // The marker is the row's: looked for in the first user message, so a
    // client's correction that quotes a broken reply does not re-trigger it.
    let bad = req
        .messages
        .iter()
        .find(|m| m.role == "user")
        .and_then(|m| content_text(&m.content))
        .is_some_and(|t| t.contains(BAD_JSON));
    let Some(format) = &req.response_format else {
        return Ok(bad.then(|| "this is { not JSON".to_string()));
    };
    if bad {
        let doc = match format.pointer("/json_schema/schema") {
            Some(schema) => {
                let mut doc = schema::generate(schema, prompt);
                schema::break_first_leaf(&mut doc);
                doc
            }
            None => json!({"result": {"not": "what was asked"}}),
        };
        return Ok(Some(doc.to_string()));
    }
    match format.get("type").and_then(Value::as_str) {
        Some("json_schema") => {
            let schema = format
                .pointer("/json_schema/schema")
                .ok_or("response_format json_schema needs `json_schema.schema`")?;
            Ok(Some(schema::generate(schema, prompt).to_string()))
        }
        Some("json_object") => Ok(Some(
            json!({"result": format!("echo: {last_user}")}).to_string(),
        )),
        Some("text") | None => Ok(None),
        Some(other) => Err(format!("unsupported response_format type {other:?}")),
    }
}

/// The `tool_calls` of the reply, when the request has tools and either
/// demands a call (`tool_choice` "required" or a named function) or the
/// text carries `[[sim:tool]]`.
fn tool_call(req: &ChatRequest, prompt: &str, last_user: &str) -> Result<Option<Value>, String> {
    let Some(tools) = req
        .extra
        .get("tools")
        .and_then(Value::as_array)
        .filter(|t| !t.is_empty())
    else {
        return Ok(None);
    };
    let choice = req.extra.get("tool_choice");
    let named = choice
        .and_then(|c| c.pointer("/function/name"))
        .and_then(Value::as_str);
    let wanted = named.is_some()
        || choice.and_then(Value::as_str) == Some("required")
        || (last_user.contains("[[sim:tool]]") && choice.and_then(Value::as_str) != Some("none"));
    if !wanted {
        return Ok(None);
    }
    let tool = match named {
        Some(name) => tools
            .iter()
            .find(|t| t.pointer("/function/name").and_then(Value::as_str) == Some(name))
            .ok_or_else(|| format!("tool_choice names {name:?}, which is not in `tools`"))?,
        None => &tools[0],
    };
    let name = tool
        .pointer("/function/name")
        .and_then(Value::as_str)
        .ok_or("a tool has no `function.name`")?;
    let params = tool
        .pointer("/function/parameters")
        .cloned()
        .unwrap_or_else(|| json!({"type": "object"}));
    let args = schema::generate(&params, prompt);
    let id = format!("call_{}", &blake3::hash(prompt.as_bytes()).to_hex()[..24]);
    Ok(Some(json!([{
        "id": id,
        "type": "function",
        "function": {"name": name, "arguments": args.to_string()}
    }])))
}

/// `prompt` / `input` as a list of strings (one string is a list of one).
fn strings(v: &Value, field: &str) -> Result<Vec<String>, String> {
    match v {
        Value::String(s) => Ok(vec![s.clone()]),
        Value::Array(items) if !items.is_empty() => items
            .iter()
            .map(|i| i.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| format!("`{field}` must be a string or a list of strings")),
        _ => Err(format!(
            "`{field}` must be a string or a non-empty list of strings"
        )),
    }
}

fn completion(body: Value, reply_tokens: u64) -> Result<Job, String> {
    let req: CompletionRequest =
        serde_json::from_value(body).map_err(|e| bad_body("completions", e))?;
    let prompts = strings(&req.prompt, "prompt")?;
    let limit = req.max_tokens.unwrap_or(reply_tokens).min(reply_tokens);
    let choices: Vec<_> = prompts
        .iter()
        .map(|p| {
            let (text, cut) = truncate(&format!("echo: {p}"), limit);
            (text, if cut { "length" } else { "stop" })
        })
        .collect();
    let prompt = prompts.concat();
    let (stream, include_usage) = stream_flags(req.stream, &req.extra);
    Ok(Job {
        task: Task::Completion,
        model: req.model,
        prompt_tokens: tokens::estimate(&prompt),
        completion_tokens: choices.iter().map(|(t, _)| tokens::estimate(t)).sum(),
        marker: prompts.iter().find_map(|p| marker_in(p)),
        cache_text: Some(prompt),
        keys: prompts,
        max_tokens: req.max_tokens.unwrap_or(reply_tokens),
        stream,
        include_usage,
        reply: Reply::Completion { choices },
        typed: false,
        answer_tool: None,
    })
}

fn embedding(body: Value, dim: usize) -> Result<Job, String> {
    let req: EmbeddingRequest =
        serde_json::from_value(body).map_err(|e| bad_body("embeddings", e))?;
    let inputs = strings(&req.input, "input")?;
    Ok(Job {
        task: Task::Embedding,
        model: req.model,
        prompt_tokens: inputs.iter().map(|s| tokens::estimate(s)).sum(),
        completion_tokens: 0,
        marker: inputs.iter().find_map(|s| marker_in(s)),
        cache_text: None,
        reply: Reply::Embedding {
            vectors: inputs.iter().map(|s| embed(s, dim)).collect(),
        },
        keys: inputs,
        max_tokens: 0,
        stream: false,
        include_usage: false,
        typed: false,
        answer_tool: None,
    })
}

/// A unit vector of `dim` components hashed from `text`: equal texts get
/// equal vectors, different texts (almost surely) different ones.
pub fn embed(text: &str, dim: usize) -> Vec<f32> {
    let mut bytes = vec![0u8; dim * 4];
    blake3::Hasher::new()
        .update(text.as_bytes())
        .finalize_xof()
        .fill(&mut bytes);
    let raw: Vec<f64> = bytes
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64 / u32::MAX as f64 * 2.0 - 1.0)
        .collect();
    let norm = raw
        .iter()
        .map(|x| x * x)
        .sum::<f64>()
        .sqrt()
        .max(f64::MIN_POSITIVE);
    raw.iter().map(|x| (x / norm) as f32).collect()
}

/// Which API a request came in through: it decides error shapes, streaming
/// usage and (for Claude endpoints) cache semantics.
#[derive(Debug, Clone)]
pub(crate) enum Api {
    OpenAi,
    Databricks {
        endpoint: String,
    },
    /// Google's Gemini API (see [`super::gemini`]).
    Gemini(super::gemini::call::Call),
    /// Anthropic's Messages API ([`super::anthropic`]).
    Anthropic,
    /// Azure OpenAI ([`super::azure`]): OpenAI's wire.
    Azure,
    /// Amazon Bedrock Runtime ([`super::bedrock`]): the model in the path.
    Bedrock {
        model: String,
        op: BedrockOp,
    },
}

/// Which Bedrock Runtime operation a call is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BedrockOp {
    Converse,
    Stream,
    Invoke,
}

impl Api {
    /// Databricks endpoints serving Claude use explicit cache breakpoints
    /// and Anthropic-style usage; so does Bedrock (its `cachePoint`s, and
    /// usage additive in its own names).
    pub fn claude(&self) -> bool {
        matches!(self, Api::Databricks { endpoint } if endpoint.to_ascii_lowercase().contains("claude"))
            || matches!(self, Api::Anthropic | Api::Bedrock { .. })
    }

    pub fn is_databricks(&self) -> bool {
        matches!(self, Api::Databricks { .. })
    }

    /// Prompt tokens read from an explicit cache the request named.
    pub fn explicitly_cached(&self) -> u64 {
        match self {
            Api::Gemini(call) => call.explicit_cached,
            _ => 0,
        }
    }
}

/// Time to the first streamed chunk: `ttft_ms` (or `latency_ms`) + prefill.
pub(crate) fn first_token_delay(cfg: &SimConfig, prompt_tokens: u64, cached: u64) -> Duration {
    let base = if cfg.ttft_ms > 0 {
        cfg.ttft_ms
    } else {
        cfg.latency_ms
    };
    let prefill_us = cfg.prefill_us_per_token * prompt_tokens.saturating_sub(cached) as f64;
    Duration::from_millis(base) + Duration::from_secs_f64((prefill_us / 1e6).max(0.0))
}

/// A stable reply id from the request's prompts.
pub(crate) fn reply_id(prefix: &str, job: &Job) -> String {
    let h = blake3::hash(job.keys.join("\u{1f}").as_bytes());
    format!("{prefix}-{}", &h.to_hex()[..24])
}

pub(crate) fn model_name(api: &Api, job: &Job) -> String {
    match (&job.model, api) {
        (Some(m), _) => m.clone(),
        (None, Api::Databricks { endpoint }) => endpoint.clone(),
        (None, Api::Gemini(call)) => call.model.clone(),
        (None, Api::OpenAi | Api::Azure) => "aiq-sim".to_string(),
        (None, Api::Anthropic) => "claude-sim".to_string(),
        (None, Api::Bedrock { model, .. }) => model.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncate_cuts_on_char_boundaries() {
        assert_eq!(truncate("abcdefgh", 1), ("abcd".to_string(), true));
        assert_eq!(truncate("abc", 1), ("abc".to_string(), false));
        // "é" is two bytes: 4 bytes = "abé" minus nothing, 5th byte would split.
        assert_eq!(truncate("aaaé", 1), ("aaa".to_string(), true));
    }

    #[test]
    fn chat_echoes_last_user_text_and_counts_all_messages() {
        let body = json!({"messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "hello"}, {"type": "image_url", "image_url": {"url": "x"}}]}
        ]});
        let job = plan(Task::Chat, body, 32, 16, false).unwrap();
        assert_eq!(
            job.prompt_tokens,
            tokens::estimate("be briefhello") + IMAGE_TOKENS
        );
        assert_eq!(job.keys, vec!["hello".to_string()]);
        match job.reply {
            Reply::Chat {
                content,
                finish_reason,
                ..
            } => {
                assert_eq!(content.as_deref(), Some("echo: hello"));
                assert_eq!(finish_reason, "stop");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_bodies_are_errors_not_panics() {
        assert!(plan(Task::Chat, json!({"messages": "nope"}), 32, 16, false).is_err());
        assert!(plan(Task::Chat, json!({"messages": []}), 32, 16, false).is_err());
        assert!(plan(Task::Completion, json!({"prompt": [1, 2]}), 32, 16, false).is_err());
        assert!(plan(Task::Embedding, json!({"input": {}}), 32, 16, false).is_err());
    }

    #[test]
    fn embeddings_are_unit_and_deterministic() {
        let a = embed("x", 16);
        assert_eq!(a.len(), 16);
        assert_eq!(a, embed("x", 16));
        assert_ne!(a, embed("y", 16));
        let norm: f32 = a.iter().map(|v| v * v).sum();
        assert!((norm - 1.0).abs() < 1e-4);
    }
}
