//! The simulator's Anthropic Messages API: `POST /v1/messages` (JSON or
//! server-sent events) and Message Batches (`/v1/messages/batches`).
//!
//! A request is checked as Anthropic checks it (`model`, `max_tokens` and
//! `messages` required; keys the API does not know refused, so a client
//! that leaks OpenAI-only fields is caught), then read into the OpenAI
//! shape the shared pipeline of [`super::handler`] answers ([`to_openai`]),
//! and the answer is written back in Anthropic's shapes: a `message`
//! ([`message`]), its event stream ([`frames`]), errors
//! `{"type":"error","error":{"type":..}}` typed by status ([`error_body`]),
//! and `anthropic-ratelimit-*` headers ([`rate_headers`]). Caching follows
//! Anthropic's rule: only up to the last `cache_control` breakpoint, with
//! usage additive (`input_tokens` excludes cache reads and writes).
//!
//! A forced tool (`tool_choice: {"type": "tool"}`) is answered as a typed
//! reply generated from the tool's `input_schema`, so the typed-reply
//! faults (`--truncate-*`, `--mismatch-*`) reach it too.

use std::collections::VecDeque;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use bytes::Bytes;
use serde_json::{json, Map, Value};

use super::answer::{model_name, reply_id, Api, Job, Reply};
use super::limits::Admission;
use super::SimConfig;
use crate::provider::wire::WireUsage;

/// The keys a Messages request may carry; any other is refused, as the
/// API refuses it ("Extra inputs are not permitted").
const KNOWN_KEYS: &[&str] = &[
    "model",
    "messages",
    "max_tokens",
    "system",
    "stop_sequences",
    "stream",
    "temperature",
    "top_p",
    "top_k",
    "tools",
    "tool_choice",
    "metadata",
    "thinking",
    "service_tier",
    "cache_control",
    "output_config",
    "container",
    "context_management",
    "mcp_servers",
];

/// A Messages request as the OpenAI chat body the shared pipeline
/// answers, and the name of the tool a forced answer goes through.
pub(crate) fn to_openai(body: Value) -> Result<(Value, Option<String>), String> {
    let Value::Object(mut b) = body else {
        return Err("request body must be a JSON object".into());
    };
    if let Some(key) = b.keys().find(|k| !KNOWN_KEYS.contains(&k.as_str())) {
        return Err(format!("{key}: Extra inputs are not permitted"));
    }
    for required in ["model", "max_tokens", "messages"] {
        if !b.contains_key(required) {
            return Err(format!("{required}: Field required"));
        }
    }
    let max_tokens = b
        .get("max_tokens")
        .and_then(Value::as_u64)
        .filter(|n| *n >= 1)
        .ok_or("max_tokens: Input should be a valid integer, greater than or equal to 1")?;
    let messages = chat_messages(
        &mut b,
        parts,
        "messages: Input should be a valid list",
        |role| {
            format!("messages: Input tag '{role}' found using 'role' does not match any of the expected tags: 'user', 'assistant'")
        },
    )?;
    let mut out = Map::new();
    out.insert("model".into(), b.remove("model").unwrap_or(Value::Null));
    out.insert("messages".into(), messages);
    out.insert("max_tokens".into(), json!(max_tokens));
    if let Some(stream) = b.remove("stream") {
        out.insert("stream".into(), stream);
    }
    if let Some(stop) = b.remove("stop_sequences") {
        out.insert("stop".into(), stop);
    }
    let tools: Vec<Value> = match b.remove("tools") {
        Some(Value::Array(t)) => t,
        Some(_) => return Err("tools: Input should be a valid list".into()),
        None => Vec::new(),
    };
    let choice = b.remove("tool_choice");
    let forced = choice
        .as_ref()
        .filter(|c| c.get("type").and_then(Value::as_str) == Some("tool"))
        .map(|c| {
            c.get("name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        });
    let choice = match choice
        .as_ref()
        .and_then(|c| c.get("type"))
        .and_then(Value::as_str)
    {
        Some("any") => "required",
        Some("none") => "none",
        _ => "auto",
    };
    put_tools(out, &tools, forced, choice, |name| {
        format!("tool_choice: tool '{name}' not found in tools")
    })
}

/// The system prompt and the user/assistant turns of a Messages-like body
/// (Anthropic's or Converse's: both keep them in `system` and `messages`)
/// as OpenAI chat messages, each content read by the API's `parts`;
/// `no_messages` and `bad_role` word the refusals in the API's voice.
pub(crate) fn chat_messages(
    b: &mut Map<String, Value>,
    parts: fn(Value) -> Result<Value, String>,
    no_messages: &str,
    bad_role: impl Fn(&str) -> String,
) -> Result<Value, String> {
    let mut messages = Vec::new();
    if let Some(system) = b.remove("system") {
        messages.push(json!({"role": "system", "content": parts(system)?}));
    }
    let Some(Value::Array(list)) = b.remove("messages") else {
        return Err(no_messages.into());
    };
    for m in list {
        let role = m.get("role").and_then(Value::as_str).unwrap_or_default();
        if role != "user" && role != "assistant" {
            return Err(bad_role(role));
        }
        let content = m.get("content").cloned().unwrap_or(Value::Null);
        messages.push(json!({"role": role, "content": parts(content)?}));
    }
    Ok(Value::Array(messages))
}

/// Tools in Anthropic's shape (`name`, `description`, `input_schema`;
/// Converse's `toolSpec` is read into it) put into the OpenAI body: the
/// `forced` one as the `response_format` the typed reply follows (refused
/// in the words of `missing` when no tool has its name), otherwise all of
/// them as functions under `choice`. Returns the forced tool's name.
pub(crate) fn put_tools(
    mut out: Map<String, Value>,
    tools: &[Value],
    forced: Option<String>,
    choice: &str,
    missing: impl FnOnce(&str) -> String,
) -> Result<(Value, Option<String>), String> {
    if let Some(name) = &forced {
        let tool = tools
            .iter()
            .find(|t| t.get("name").and_then(Value::as_str) == Some(name))
            .ok_or_else(|| missing(name))?;
        let schema = tool
            .get("input_schema")
            .cloned()
            .unwrap_or(json!({"type": "object"}));
        out.insert(
            "response_format".into(),
            json!({"type": "json_schema", "json_schema": {"name": name, "schema": schema}}),
        );
    } else if !tools.is_empty() {
        let tools: Vec<Value> = tools
            .iter()
            .map(|t| {
                json!({"type": "function", "function": {
                    "name": t.get("name").cloned().unwrap_or(Value::Null),
                    "description": t.get("description").cloned().unwrap_or(json!("")),
                    "parameters": t.get("input_schema").cloned().unwrap_or(json!({"type": "object"})),
                }})
            })
            .collect();
        out.insert("tools".into(), Value::Array(tools));
        out.insert("tool_choice".into(), json!(choice));
    }
    Ok((Value::Object(out), forced))
}

/// Anthropic content (a string or blocks) as OpenAI content parts, each
/// keeping its `cache_control`.
fn parts(content: Value) -> Result<Value, String> {
    let blocks = match content {
        Value::String(_) => return Ok(content),
        Value::Array(blocks) => blocks,
        _ => return Err("content: Input should be a valid string or list".into()),
    };
    let mut out = Vec::with_capacity(blocks.len());
    for block in blocks {
        let mut part = match block.get("type").and_then(Value::as_str) {
            Some("text") => {
                let text = block
                    .get("text")
                    .and_then(Value::as_str)
                    .ok_or("text block: text: Field required")?;
                json!({"type": "text", "text": text})
            }
            Some("image") => {
                let source = block.get("source").cloned().unwrap_or(Value::Null);
                let url = match source.get("type").and_then(Value::as_str) {
                    Some("base64") => format!(
                        "data:{};base64,{}",
                        source
                            .get("media_type")
                            .and_then(Value::as_str)
                            .unwrap_or_default(),
                        source
                            .get("data")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                    ),
                    Some("url") => source
                        .get("url")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string(),
                    _ => return Err("image block: source: unknown source type".into()),
                };
                json!({"type": "image_url", "image_url": {"url": url}})
            }
            Some("tool_result") => {
                let text = match block.get("content") {
                    Some(Value::String(s)) => s.clone(),
                    Some(other) => other.to_string(),
                    None => String::new(),
                };
                json!({"type": "text", "text": text})
            }
            Some("tool_use") => {
                let input = block.get("input").cloned().unwrap_or(json!({}));
                json!({"type": "text", "text": input.to_string()})
            }
            Some(other) => json!({"type": other}),
            None => return Err("content block: type: Field required".into()),
        };
        if let Some(cc) = block.get("cache_control") {
            part["cache_control"] = cc.clone();
        }
        out.push(part);
    }
    Ok(Value::Array(out))
}

/// The error `type` Anthropic sends with `status`.
fn error_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 | 422 => "invalid_request_error",
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        504 => "timeout_error",
        529 | 503 => "overloaded_error",
        _ => "api_error",
    }
}

/// An error body in Anthropic's shape, typed by its status.
pub(crate) fn error_body(status: StatusCode, message: &str) -> Value {
    json!({
        "type": "error",
        "error": {"type": error_type(status), "message": message},
        "request_id": "req_sim",
    })
}

/// `x-ratelimit-{limit,remaining,reset}-{kind}` as Anthropic names them:
/// `anthropic-ratelimit-{requests,input-tokens,output-tokens}-*`, the
/// reset an RFC 3339 time. The simulator's token bucket counts the input
/// and the reserved output together, as Anthropic's `tokens` limit does;
/// it is reported as both `tokens` and `input-tokens`.
pub(crate) fn rate_headers(headers: HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    for (name, value) in &headers {
        let n = name.as_str();
        let Some(rest) = n.strip_prefix("x-ratelimit-") else {
            out.insert(name.clone(), value.clone());
            continue;
        };
        let Some((what, kind)) = rest.split_once('-') else {
            continue;
        };
        let kinds: &[&str] = match kind {
            "requests" => &["requests"],
            "tokens" => &["tokens", "input-tokens"],
            "output-tokens" => &["output-tokens"],
            _ => &[],
        };
        let value = match what {
            "reset" => {
                let secs = crate::provider::retry::parse_reset(value.to_str().unwrap_or(""))
                    .unwrap_or_default();
                match HeaderValue::from_str(&rfc3339_after(secs)) {
                    Ok(v) => v,
                    Err(_) => continue,
                }
            }
            _ => value.clone(),
        };
        for k in kinds {
            if let Ok(name) = HeaderName::try_from(format!("anthropic-ratelimit-{k}-{what}")) {
                out.insert(name, value.clone());
            }
        }
    }
    out
}

/// A rate-limit admission with its headers named as `api` names them.
pub(crate) fn admission(api: &Api, a: Admission) -> Admission {
    match (api, a) {
        (Api::Anthropic, Admission::Admitted(h)) => Admission::Admitted(rate_headers(h)),
        (Api::Anthropic, Admission::Refused(h)) => Admission::Refused(rate_headers(h)),
        (_, a) => a,
    }
}

/// The UTC time `d` from now, as RFC 3339 (whole seconds, rounded up).
pub(crate) fn rfc3339_after(d: Duration) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let t = (now + d).as_secs() + u64::from(d.subsec_nanos() > 0);
    let (days, secs) = (t / 86_400, t % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// What the reply holds, as content blocks, and why it stopped.
fn blocks(job: &Job) -> (Vec<Value>, &'static str) {
    let Reply::Chat {
        content,
        tool_calls,
        finish_reason,
    } = &job.reply
    else {
        return (Vec::new(), "end_turn");
    };
    let cut = *finish_reason == "length";
    let tool_id = || format!("toolu_{}", &reply_id("t", job)[2..26]);
    if let Some(name) = &job.answer_tool {
        // A forced tool's input is the typed document; cut short, what
        // was produced is no JSON, and the input is what could be read.
        let text = content.as_deref().unwrap_or("{}");
        let input = serde_json::from_str::<Value>(text).unwrap_or(json!({}));
        let block = json!({"type": "tool_use", "id": tool_id(), "name": name, "input": input});
        return (vec![block], if cut { "max_tokens" } else { "tool_use" });
    }
    if let Some(Value::Array(calls)) = tool_calls {
        let blocks = calls
            .iter()
            .map(|c| {
                let args = c
                    .pointer("/function/arguments")
                    .and_then(Value::as_str)
                    .and_then(|a| serde_json::from_str::<Value>(a).ok())
                    .unwrap_or(json!({}));
                json!({"type": "tool_use", "id": tool_id(),
                       "name": c.pointer("/function/name").cloned().unwrap_or(Value::Null),
                       "input": args})
            })
            .collect();
        return (blocks, "tool_use");
    }
    match (content, *finish_reason) {
        (_, "content_filter") => (Vec::new(), "refusal"),
        (Some(text), _) => (
            vec![json!({"type": "text", "text": text})],
            if cut { "max_tokens" } else { "end_turn" },
        ),
        (None, _) => (Vec::new(), "end_turn"),
    }
}

fn usage_json(usage: &WireUsage) -> Value {
    json!({
        "input_tokens": usage.input_tokens.unwrap_or(0),
        "output_tokens": usage.output_tokens.unwrap_or(0),
        "cache_creation_input_tokens": usage.cache_creation_input_tokens.unwrap_or(0),
        "cache_read_input_tokens": usage.cache_read_input_tokens.unwrap_or(0),
    })
}

/// The non-streamed `message` answering `job`.
pub(crate) fn message(api: &Api, job: &Job, usage: &WireUsage) -> Value {
    let (content, stop) = blocks(job);
    json!({
        "id": format!("msg_{}", &reply_id("m", job)[2..26]),
        "type": "message",
        "role": "assistant",
        "model": model_name(api, job),
        "content": content,
        "stop_reason": stop,
        "stop_sequence": null,
        "usage": usage_json(usage),
    })
}

fn event(name: &str, data: &Value) -> Bytes {
    Bytes::from(format!("event: {name}\ndata: {data}\n\n"))
}

/// The event stream answering `job`, each event with the delay before it:
/// `message_start` (input usage), then per block `content_block_start`,
/// deltas of about a token every `itl_ms` (the first after the time to
/// first token),
/// `content_block_stop`, then `message_delta` (stop reason, output
/// usage) and `message_stop`.
pub(crate) fn frames(
    cfg: &SimConfig,
    api: &Api,
    job: &Job,
    usage: &WireUsage,
    cached: u64,
) -> VecDeque<(Duration, Bytes)> {
    let mut pace = super::stream::Pacing::new(cfg, job, cached);
    let mut frames = VecDeque::new();
    let whole = message(api, job, usage);
    let mut start = whole.clone();
    start["content"] = json!([]);
    start["stop_reason"] = Value::Null;
    start["usage"]["output_tokens"] = json!(1);
    frames.push_back((
        Duration::ZERO,
        event(
            "message_start",
            &json!({"type": "message_start", "message": start}),
        ),
    ));
    for (i, block) in whole["content"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        let (opened, pieces, delta_type, field) = match block["type"].as_str() {
            Some("tool_use") => {
                let mut b = block.clone();
                b["input"] = json!({});
                (
                    b,
                    block["input"].to_string(),
                    "input_json_delta",
                    "partial_json",
                )
            }
            _ => (
                json!({"type": "text", "text": ""}),
                block["text"].as_str().unwrap_or_default().to_string(),
                "text_delta",
                "text",
            ),
        };
        frames.push_back((
            Duration::ZERO,
            event(
                "content_block_start",
                &json!({"type": "content_block_start", "index": i, "content_block": opened}),
            ),
        ));
        if i == 0 {
            frames.push_back((Duration::ZERO, event("ping", &json!({"type": "ping"}))));
        }
        for piece in super::stream::pieces(&pieces) {
            let delta = json!({"type": "content_block_delta", "index": i, "delta": {"type": delta_type, field: piece}});
            frames.push_back((pace.token(), event("content_block_delta", &delta)));
        }
        frames.push_back((
            Duration::ZERO,
            event(
                "content_block_stop",
                &json!({"type": "content_block_stop", "index": i}),
            ),
        ));
    }
    let delta = json!({
        "type": "message_delta",
        "delta": {"stop_reason": whole["stop_reason"], "stop_sequence": null},
        "usage": {"output_tokens": whole["usage"]["output_tokens"]},
    });
    frames.push_back((pace.end(), event("message_delta", &delta)));
    frames.push_back((
        Duration::ZERO,
        event("message_stop", &json!({"type": "message_stop"})),
    ));
    frames
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_checked_and_read() {
        let (body, forced) = to_openai(json!({
            "model": "claude-x", "max_tokens": 10,
            "system": [{"type": "text", "text": "sys", "cache_control": {"type": "ephemeral"}}],
            "messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AA=="}}, {"type": "text", "text": "hi"}]}],
            "tools": [{"name": "result", "input_schema": {"type": "object"}}],
            "tool_choice": {"type": "tool", "name": "result"}
        }))
        .unwrap();
        assert_eq!(forced.as_deref(), Some("result"));
        assert_eq!(
            body["messages"][0]["content"][0]["cache_control"]["type"],
            "ephemeral"
        );
        assert_eq!(
            body["messages"][1]["content"][0]["image_url"]["url"],
            "data:image/png;base64,AA=="
        );
        assert!(body["response_format"]["json_schema"]["schema"].is_object());
        let refused = |b: Value| to_openai(b).unwrap_err();
        assert!(refused(json!({"model": "m", "messages": []})).contains("max_tokens"));
        assert!(refused(
            json!({"model": "m", "max_tokens": 5, "messages": [], "response_format": {}})
        )
        .contains("Extra inputs"));
        assert!(refused(
            json!({"model": "m", "max_tokens": 5, "messages": [{"role": "system", "content": "x"}]})
        )
        .contains("role"));
    }

    #[test]
    fn errors_and_headers_take_anthropic_shapes() {
        assert_eq!(
            error_body(StatusCode::from_u16(529).unwrap(), "busy")["error"]["type"],
            "overloaded_error"
        );
        let mut h = HeaderMap::new();
        h.insert("x-ratelimit-limit-tokens", HeaderValue::from_static("1000"));
        h.insert(
            "x-ratelimit-reset-requests",
            HeaderValue::from_static("1.5s"),
        );
        h.insert("retry-after", HeaderValue::from_static("2"));
        let a = rate_headers(h);
        assert_eq!(a["anthropic-ratelimit-input-tokens-limit"], "1000");
        assert_eq!(a["anthropic-ratelimit-tokens-limit"], "1000");
        assert_eq!(a["retry-after"], "2");
        let reset = a["anthropic-ratelimit-requests-reset"].to_str().unwrap();
        assert!(reset.ends_with('Z') && reset.len() == 20, "{reset}");
        assert_eq!(rfc3339_after(Duration::ZERO).len(), 20);
    }
}
