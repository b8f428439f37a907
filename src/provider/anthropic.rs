//! Anthropic's Messages API (`POST {base}/v1/messages`): everything aiq
//! does differently for it, behind [`crate::provider::dialect::Dialect`].
//!
//! aiq lays every chat body out once, in the OpenAI shape
//! ([`crate::pipeline::render`]); [`request`] turns that body into a
//! Messages request, and [`reply`] turns a Messages reply back into the
//! OpenAI shape the rest of aiq reads, so templates, typed results, task
//! functions, repairs and usage columns work alike for every provider:
//!
//! - `system` messages become the top-level `system` (as text blocks, so
//!   the `cache_control` breakpoint aiq places on the shared prefix stays
//!   where it was put: Anthropic caches only up to a marked block);
//! - `image_url` parts become `image` blocks (base64 or URL sources);
//! - a typed result (`response_format` with a JSON schema) becomes a forced
//!   tool, [`RESULT_TOOL`], whose input is the answer; OpenAI-style
//!   `tools`/`tool_choice` are translated;
//! - `max_tokens` is required: [`DEFAULT_MAX_TOKENS`] when the job gives
//!   none; `stop` becomes `stop_sequences`;
//! - the reply's `usage` is additive (`input_tokens` excludes cache reads
//!   and writes), which [`crate::provider::usage::Usage::from_wire`] sums
//!   into the one convention; `stop_reason` becomes a `finish_reason`.
//!
//! Streaming ([`stream_event`]) folds `message_start` (input usage),
//! `content_block_delta` (text and tool-input JSON) and `message_delta`
//! (stop reason, output usage). The Message Batches API is
//! [`crate::provider::anthropic_batch`].

use serde_json::{json, Map, Value};

use crate::provider::wire::{take_stop_list, take_turns, ChatResponse, WireUsage};

/// The API version aiq speaks, sent as `anthropic-version` on every call.
pub const VERSION: &str = "2023-06-01";

/// Where the API is when neither `--base-url` nor [`BASE_URL_VAR`] says.
pub const DEFAULT_BASE_URL: &str = "https://api.anthropic.com";

/// The variable holding the API key (as the official SDKs read it).
pub const KEY_VAR: &str = "ANTHROPIC_API_KEY";

/// The variable the official SDKs read the base URL from.
pub const BASE_URL_VAR: &str = "ANTHROPIC_BASE_URL";

/// The header the key is sent in.
pub const KEY_HEADER: &str = "x-api-key";

/// `max_tokens` sent when the job sets none (the API requires it): room for
/// any ordinary answer, and within every current model's output limit.
pub const DEFAULT_MAX_TOKENS: u64 = 4096;

/// Price of a 5-minute cache write as a multiple of the input price
/// (Anthropic's prompt-caching pricing).
pub const CACHE_WRITE_MULTIPLIER: f64 = 1.25;

/// The tool a typed result is forced through: its input is the answer.
pub const RESULT_TOOL: &str = "result";

/// The headers every request carries besides the key.
pub const HEADERS: &[(&str, &str)] = &[("anthropic-version", VERSION)];

/// An OpenAI-shaped chat body (as [`crate::pipeline::render`] lays it out)
/// as a Messages API body.
pub fn request(mut body: Map<String, Value>) -> Map<String, Value> {
    let mut out = Map::new();
    if let Some(model) = body.remove("model") {
        out.insert("model".into(), model);
    }
    let (system, turns) = take_turns(&mut body);
    let system: Vec<Value> = system.into_iter().flat_map(blocks).collect();
    let messages: Vec<Value> = turns
        .into_iter()
        .map(|(role, content)| json!({"role": role, "content": content_blocks(content)}))
        .collect();
    if !system.is_empty() {
        // A plain string when nothing is marked: the simplest valid form.
        let marked = system.iter().any(|b| b.get("cache_control").is_some());
        let value = match (marked, system.as_slice()) {
            (false, [one]) => one.get("text").cloned().unwrap_or(Value::Null),
            _ => Value::Array(system),
        };
        out.insert("system".into(), value);
    }
    out.insert("messages".into(), Value::Array(messages));
    let max_tokens = body
        .remove("max_tokens")
        .or_else(|| body.remove("max_completion_tokens"))
        .unwrap_or_else(|| json!(DEFAULT_MAX_TOKENS));
    body.remove("max_completion_tokens");
    out.insert("max_tokens".into(), max_tokens);
    if let Some(format) = body.remove("response_format") {
        if let Some(schema) = format.pointer("/json_schema/schema") {
            out.insert(
                "tools".into(),
                json!([{
                    "name": RESULT_TOOL,
                    "description": "Give the answer as this tool's input, which must match the schema.",
                    "input_schema": schema,
                }]),
            );
            out.insert(
                "tool_choice".into(),
                json!({"type": "tool", "name": RESULT_TOOL}),
            );
        }
    }
    if let Some(Value::Array(tools)) = body.remove("tools") {
        let tools: Vec<Value> = tools.into_iter().map(tool).collect();
        match out.get_mut("tools").and_then(Value::as_array_mut) {
            Some(forced) => forced.extend(tools),
            None => {
                out.insert("tools".into(), Value::Array(tools));
            }
        }
    }
    if let Some(choice) = body.remove("tool_choice") {
        out.entry("tool_choice")
            .or_insert_with(|| tool_choice(choice));
    }
    if let Some(list) = take_stop_list(&mut body) {
        out.insert("stop_sequences".into(), list);
    }
    // OpenAI-only knobs the Messages API refuses as unknown.
    for key in ["stream_options", "prompt_cache_key", "n"] {
        body.remove(key);
    }
    // Everything else (temperature, top_p, top_k, metadata, thinking,
    // stream, ...) is the job's to set and passes as given.
    out.extend(body);
    out
}

/// Message content as a list of content blocks.
fn content_blocks(content: Value) -> Value {
    match content {
        Value::String(_) => content,
        other => Value::Array(blocks(other)),
    }
}

/// Content (a string or OpenAI parts) as Anthropic content blocks.
fn blocks(content: Value) -> Vec<Value> {
    match content {
        Value::String(text) => vec![json!({"type": "text", "text": text})],
        Value::Array(parts) => parts.into_iter().map(block).collect(),
        Value::Null => Vec::new(),
        other => vec![json!({"type": "text", "text": other.to_string()})],
    }
}

fn block(part: Value) -> Value {
    if part.get("type").and_then(Value::as_str) != Some("image_url") {
        return part;
    }
    let url = part
        .pointer("/image_url/url")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let source = match url
        .strip_prefix("data:")
        .and_then(|rest| rest.split_once(";base64,"))
    {
        Some((media_type, data)) => {
            json!({"type": "base64", "media_type": media_type, "data": data})
        }
        None => json!({"type": "url", "url": url}),
    };
    json!({"type": "image", "source": source})
}

/// An OpenAI function tool as an Anthropic tool (others pass as given).
fn tool(tool: Value) -> Value {
    match tool.get("function") {
        Some(f) => json!({
            "name": f.get("name").cloned().unwrap_or(Value::Null),
            "description": f.get("description").cloned().unwrap_or(json!("")),
            "input_schema": f.get("parameters").cloned().unwrap_or(json!({"type": "object"})),
        }),
        None => tool,
    }
}

fn tool_choice(choice: Value) -> Value {
    match &choice {
        Value::String(s) => match s.as_str() {
            "required" => json!({"type": "any"}),
            "none" => json!({"type": "none"}),
            _ => json!({"type": "auto"}),
        },
        Value::Object(o) if o.get("type").and_then(Value::as_str) == Some("function") => {
            let name = choice
                .pointer("/function/name")
                .cloned()
                .unwrap_or(Value::Null);
            json!({"type": "tool", "name": name})
        }
        _ => choice,
    }
}

/// `stop_reason` as the `finish_reason` aiq records (OpenAI's words where
/// they mean the same: repairs look for `length`, the content filter for
/// `content_filter`).
pub fn finish_reason(stop_reason: &str, answered_by_tool: bool) -> String {
    match stop_reason {
        "end_turn" | "stop_sequence" => "stop",
        "max_tokens" | "model_context_window_exceeded" => "length",
        "tool_use" if answered_by_tool => "stop",
        "tool_use" => "tool_calls",
        "refusal" => "content_filter",
        other => other,
    }
    .to_string()
}

/// The parts of a reply's content aiq keeps: the text, the typed answer
/// given through [`RESULT_TOOL`], and any other tool calls.
#[derive(Debug, Default)]
struct Content {
    text: Option<String>,
    answer: Option<String>,
    calls: Vec<Value>,
}

fn content(blocks: &[Value]) -> Content {
    let mut c = Content::default();
    for b in blocks {
        match b.get("type").and_then(Value::as_str) {
            Some("text") => {
                if let Some(t) = b.get("text").and_then(Value::as_str) {
                    c.text.get_or_insert_with(String::new).push_str(t);
                }
            }
            Some("tool_use") => {
                let input = b.get("input").cloned().unwrap_or(json!({}));
                let name = b.get("name").and_then(Value::as_str).unwrap_or_default();
                if name == RESULT_TOOL {
                    c.answer = Some(input.to_string());
                } else {
                    c.calls.push(json!({
                        "id": b.get("id").cloned().unwrap_or(Value::Null),
                        "type": "function",
                        "function": {"name": name, "arguments": input.to_string()},
                    }));
                }
            }
            // Thinking blocks and the like are not the answer.
            _ => {}
        }
    }
    c
}

/// A Messages API reply as the OpenAI-shaped [`ChatResponse`] aiq reads.
/// `Err` when the body is not a message.
pub fn reply(body: &[u8]) -> Result<ChatResponse, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let blocks = v
        .get("content")
        .and_then(Value::as_array)
        .ok_or("reply has no `content` list")?;
    let c = content(blocks);
    let stop = v.get("stop_reason").and_then(Value::as_str);
    let usage = v.get("usage").cloned().and_then(WireUsage::lenient);
    Ok(chat_response(
        v.get("id").and_then(Value::as_str),
        v.get("model").and_then(Value::as_str),
        c,
        stop,
        usage,
    ))
}

/// Messages API content blocks, with the stop reason and usage, as the
/// OpenAI-shaped reply: what [`reply`] reads, for a provider that answers
/// in these blocks' terms (Bedrock's Converse,
/// [`crate::provider::bedrock`]).
pub fn message_response(
    blocks: &[Value],
    stop: Option<&str>,
    usage: Option<WireUsage>,
) -> ChatResponse {
    chat_response(None, None, content(blocks), stop, usage)
}

fn chat_response(
    id: Option<&str>,
    model: Option<&str>,
    c: Content,
    stop: Option<&str>,
    usage: Option<WireUsage>,
) -> ChatResponse {
    let by_tool = c.answer.is_some();
    let cut = stop == Some("max_tokens");
    let content = match (c.answer, c.text) {
        // A tool input cut off at max_tokens is whatever part of it could
        // be read (often `{}`), which may still parse: no answer, so the
        // row says it was cut off (and a repair asks with more room).
        (Some(_), _) if cut => Value::Null,
        (Some(answer), _) => Value::String(answer),
        (None, Some(text)) => Value::String(text),
        (None, None) => Value::Null,
    };
    let finish = stop.map(|s| finish_reason(s, by_tool));
    ChatResponse::one(id, model, content, c.calls, finish, usage)
}

/// What a streamed reply has said so far.
#[derive(Debug, Default)]
pub struct Streamed {
    /// Content blocks by index, as `message_start`/`content_block_start`
    /// open them; deltas append text or tool-input JSON.
    blocks: Vec<Value>,
    /// Tool-input JSON per block, as it arrives in pieces.
    partial: Vec<String>,
    stop_reason: Option<String>,
    usage: Map<String, Value>,
    pub done: bool,
}

/// What one stream event contributed.
#[derive(Debug, PartialEq)]
pub enum Event {
    /// Text of the answer (for the time to first token).
    Text(String),
    /// Nothing aiq times.
    Other,
}

/// Folds one server-sent event (its JSON data) into `s`. `Err` carries an
/// `error` event's body, to be classified like an error reply.
pub fn stream_event(s: &mut Streamed, data: &Value) -> Result<Event, Value> {
    match data.get("type").and_then(Value::as_str).unwrap_or_default() {
        "message_start" => {
            if let Some(Value::Object(u)) = data.pointer("/message/usage") {
                s.usage.extend(u.clone());
            }
        }
        "content_block_start" => {
            let i = index(data);
            let block = data.get("content_block").cloned().unwrap_or(Value::Null);
            if s.blocks.len() <= i {
                s.blocks.resize(i + 1, Value::Null);
                s.partial.resize(i + 1, String::new());
            }
            s.blocks[i] = block;
        }
        "content_block_delta" => {
            let i = index(data);
            if s.blocks.len() <= i {
                s.blocks.resize(i + 1, json!({"type": "text", "text": ""}));
                s.partial.resize(i + 1, String::new());
            }
            let delta = data.get("delta").cloned().unwrap_or(Value::Null);
            match delta.get("type").and_then(Value::as_str) {
                Some("text_delta") => {
                    let piece = delta.get("text").and_then(Value::as_str).unwrap_or("");
                    if let Some(Value::String(t)) = s.blocks[i].get_mut("text") {
                        t.push_str(piece);
                    } else {
                        s.blocks[i] = json!({"type": "text", "text": piece});
                    }
                    return Ok(Event::Text(piece.to_string()));
                }
                Some("input_json_delta") => {
                    let piece = delta
                        .get("partial_json")
                        .and_then(Value::as_str)
                        .unwrap_or("");
                    s.partial[i].push_str(piece);
                    return Ok(Event::Text(piece.to_string()));
                }
                _ => {}
            }
        }
        "message_delta" => {
            if let Some(r) = data.pointer("/delta/stop_reason").and_then(Value::as_str) {
                s.stop_reason = Some(r.to_string());
            }
            // Counts here are cumulative: they replace message_start's.
            if let Some(Value::Object(u)) = data.get("usage") {
                for (k, v) in u {
                    if !v.is_null() {
                        s.usage.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        "message_stop" => s.done = true,
        "error" => return Err(data.clone()),
        // ping, content_block_stop and event types added later.
        _ => {}
    }
    Ok(Event::Other)
}

fn index(data: &Value) -> usize {
    data.get("index").and_then(Value::as_u64).unwrap_or(0) as usize
}

impl Streamed {
    /// Whether the stream said how the message ended.
    pub fn finished(&self) -> bool {
        self.done || self.stop_reason.is_some()
    }

    /// The whole streamed message as the OpenAI-shaped reply.
    pub fn into_response(self) -> ChatResponse {
        let blocks: Vec<Value> = self
            .blocks
            .into_iter()
            .zip(self.partial)
            .map(|(mut b, partial)| {
                if b.get("type").and_then(Value::as_str) == Some("tool_use") && !partial.is_empty()
                {
                    // Unreadable input stays text, so the row says what came.
                    let input = serde_json::from_str(&partial).unwrap_or(Value::String(partial));
                    b["input"] = input;
                }
                b
            })
            .collect();
        let usage = WireUsage::lenient(Value::Object(self.usage));
        chat_response(
            None,
            None,
            content(&blocks),
            self.stop_reason.as_deref(),
            usage,
        )
    }
}

/// The HTTP status an Anthropic error `type` stands for (the API's table
/// of error types), for errors met without one: an `error` event in a
/// stream, an error object in a batch result line.
pub fn error_status(kind: &str) -> Option<u16> {
    Some(match kind {
        "invalid_request_error" => 400,
        "authentication_error" => 401,
        "billing_error" => 402,
        "permission_error" => 403,
        "not_found_error" => 404,
        "request_too_large" => 413,
        "rate_limit_error" => 429,
        "api_error" => 500,
        "timeout_error" => 504,
        "overloaded_error" => 529,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::wire::samples::{chat, object};

    #[test]
    fn chat_bodies_become_messages_requests() {
        let body = chat(
            "be brief",
            "what is this?",
            "https://x/y.jpg",
            json!({
                "model": "claude-sonnet-4-5",
                "response_format": {"type": "json_schema", "json_schema": {"name": "result", "schema": {"type": "object"}, "strict": true}},
                "temperature": 0.0,
                "stop": "END",
                "stream": true,
                "stream_options": {"include_usage": true}
            }),
        );
        let r = Value::Object(request(body));
        assert_eq!(r["system"][0]["cache_control"]["type"], "ephemeral");
        assert_eq!(r["messages"].as_array().unwrap().len(), 1);
        assert_eq!(
            r["messages"][0]["content"][1]["source"]["media_type"],
            "image/png"
        );
        assert_eq!(r["messages"][0]["content"][2]["source"]["type"], "url");
        assert_eq!(r["max_tokens"], json!(DEFAULT_MAX_TOKENS));
        assert_eq!(
            r["tool_choice"],
            json!({"type": "tool", "name": RESULT_TOOL})
        );
        assert_eq!(r["tools"][0]["input_schema"], json!({"type": "object"}));
        assert_eq!(r["stop_sequences"], json!(["END"]));
        assert_eq!(r["temperature"], json!(0.0));
        assert!(r.get("stream_options").is_none() && r.get("response_format").is_none());
        // An unmarked plain system prompt stays a string.
        let plain = object(
            json!({"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}], "max_tokens": 5}),
        );
        let r = Value::Object(request(plain));
        assert_eq!(
            (r["system"].clone(), r["max_tokens"].clone()),
            (json!("s"), json!(5))
        );
        assert_eq!(r["messages"][0]["content"], json!("u"));
    }

    #[test]
    fn replies_read_text_tools_and_usage() {
        let body = json!({
            "id": "msg_1", "type": "message", "role": "assistant", "model": "claude",
            "content": [{"type": "tool_use", "id": "t1", "name": RESULT_TOOL, "input": {"result": 3}}],
            "stop_reason": "tool_use",
            "usage": {"input_tokens": 10, "output_tokens": 4, "cache_read_input_tokens": 1000, "cache_creation_input_tokens": 0}
        });
        let r = reply(body.to_string().as_bytes()).unwrap();
        assert_eq!(r.choices[0].message.content, json!("{\"result\":3}"));
        assert_eq!(r.choices[0].finish_reason.as_deref(), Some("stop"));
        let u = crate::provider::usage::Usage::from_wire(r.usage.as_ref().unwrap());
        assert_eq!(
            (u.prompt_tokens, u.cached_tokens, u.completion_tokens),
            (1010, 1000, 4)
        );
        let text = json!({"content": [{"type": "thinking", "thinking": "hm"}, {"type": "text", "text": "hi"}], "stop_reason": "max_tokens"});
        let r = reply(text.to_string().as_bytes()).unwrap();
        assert_eq!(r.choices[0].message.content, json!("hi"));
        assert_eq!(r.choices[0].finish_reason.as_deref(), Some("length"));
        assert!(reply(b"{\"type\":\"error\"}").is_err());
    }

    #[test]
    fn streams_fold_into_one_reply() {
        let mut s = Streamed::default();
        let events = [
            json!({"type": "message_start", "message": {"usage": {"input_tokens": 7, "output_tokens": 1, "cache_read_input_tokens": 3}}}),
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            json!({"type": "ping"}),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hel"}}),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "lo"}}),
            json!({"type": "content_block_stop", "index": 0}),
            json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 5}}),
            json!({"type": "message_stop"}),
        ];
        for e in &events {
            stream_event(&mut s, e).unwrap();
        }
        assert!(s.finished());
        let r = s.into_response();
        assert_eq!(r.choices[0].message.content, json!("Hello"));
        let u = crate::provider::usage::Usage::from_wire(r.usage.as_ref().unwrap());
        assert_eq!(
            (u.prompt_tokens, u.completion_tokens, u.cached_tokens),
            (10, 5, 3)
        );
        let err = json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}});
        assert!(stream_event(&mut Streamed::default(), &err).is_err());
        assert_eq!(error_status("overloaded_error"), Some(529));
    }
}
