//! Amazon Bedrock Runtime (`--endpoint bedrock`): the Converse API for
//! chat and InvokeModel for embeddings, behind
//! [`crate::provider::dialect::Dialect`]. Credentials, region, endpoints
//! and SigV4 signing are [`crate::provider::aws`]'s.
//!
//! - **Where**: `POST {endpoint}/model/{modelId}/converse` (streamed:
//!   `/converse-stream`), embeddings `POST {endpoint}/model/{modelId}/invoke`;
//!   `--model` is the model id or inference profile (`us.anthropic.…`, or
//!   an ARN), percent-encoded as one path segment
//!   ([`crate::provider::aws::path_segment`]).
//! - **Requests** ([`request`]): aiq lays every chat body out once, in
//!   the OpenAI shape, and this turns it into a Converse body: `system`
//!   messages become `system` text blocks, others `messages` with content
//!   blocks (`text`, `image` with base64 `bytes`); aiq's `cache_control`
//!   breakpoint on the shared prefix becomes a `{"cachePoint": {"type":
//!   "default"}}` block right after the marked one; `max_tokens`,
//!   `temperature`, `top_p` and `stop` go in `inferenceConfig`; a typed
//!   result (`response_format` with a JSON schema) is a forced tool,
//!   [`RESULT_TOOL`] (`toolConfig` with `toolChoice: {tool: {name}}`),
//!   whose `toolUse` input is read back as the answer; other parameters
//!   the job sets (`top_k`, …) go in `additionalModelRequestFields`, as
//!   Converse refuses unknown top-level keys.
//! - **Replies** ([`reply`]): `output.message.content` (text, `toolUse`),
//!   `stopReason` as a `finish_reason`, and `usage`, which is additive as
//!   Anthropic's (`inputTokens` excludes `cacheReadInputTokens` and
//!   `cacheWriteInputTokens`; `totalTokens` counts them).
//! - **Streams** ([`stream_event`]): the event stream
//!   ([`crate::provider::eventstream`]) of `messageStart`,
//!   `contentBlockStart`/`Delta`/`Stop`, `messageStop` (stop reason) and
//!   `metadata` (usage); an exception event (`throttlingException`, …)
//!   is classified by the status it stands for ([`error_status`]).
//! - **Embeddings** ([`embed_request`], [`embed_reply`]): Amazon Titan
//!   (`{"inputText"}` → `{"embedding", "inputTextTokenCount"}`, one text a
//!   call) and Cohere (`cohere.embed-*`: `{"texts", "input_type"}` →
//!   `{"embeddings"}`).
//! - **Errors**: the type is the `x-amzn-ErrorType` header or the body's
//!   `__type`; [`crate::provider::retry::classify`] decides with
//!   [`error_action`].

use serde_json::{json, Map, Value};

use crate::provider::anthropic;
use crate::provider::aws::path_segment;
use crate::provider::wire::{self, ChatResponse, EmbeddingItem, EmbeddingResponse, WireUsage};

/// The tool a typed result is forced through: its input is the answer.
pub const RESULT_TOOL: &str = "result";

/// The URL of `route` (`converse`, `invoke`) for `model` under `base`.
pub fn url(base: &str, route: &str, model: &str) -> String {
    format!("{base}/model/{}/{route}", path_segment(model))
}

/// A Converse URL's streamed twin: `/converse` → `/converse-stream`.
pub fn stream_url(url: &str) -> String {
    match url.strip_suffix("/converse") {
        Some(base) => format!("{base}/converse-stream"),
        None => url.to_string(),
    }
}

/// The keys of `inferenceConfig`, and the OpenAI names they come from.
const INFERENCE: &[(&str, &str)] = &[
    ("max_tokens", "maxTokens"),
    ("max_completion_tokens", "maxTokens"),
    ("temperature", "temperature"),
    ("top_p", "topP"),
];

/// An OpenAI-shaped chat body (as [`crate::pipeline::render`] lays it out)
/// as a Converse body.
pub fn request(mut body: Map<String, Value>) -> Map<String, Value> {
    // The model is in the URL; the stream flag is the route.
    for key in ["model", "stream", "stream_options", "prompt_cache_key", "n"] {
        body.remove(key);
    }
    let mut out = Map::new();
    let (system, turns) = wire::take_turns(&mut body);
    let system: Vec<Value> = system.into_iter().flat_map(blocks).collect();
    let messages: Vec<Value> = turns
        .into_iter()
        .map(|(role, content)| json!({"role": role, "content": blocks(content)}))
        .collect();
    if !system.is_empty() {
        out.insert("system".into(), Value::Array(system));
    }
    out.insert("messages".into(), Value::Array(messages));
    let mut inference = Map::new();
    for (from, to) in INFERENCE {
        if let Some(v) = body.remove(*from) {
            inference.insert((*to).into(), v);
        }
    }
    if let Some(list) = wire::take_stop_list(&mut body) {
        inference.insert("stopSequences".into(), list);
    }
    if !inference.is_empty() {
        out.insert("inferenceConfig".into(), Value::Object(inference));
    }
    let mut tools: Vec<Value> = Vec::new();
    let mut choice = None;
    if let Some(format) = body.remove("response_format") {
        if let Some(schema) = format.pointer("/json_schema/schema") {
            tools.push(json!({"toolSpec": {
                "name": RESULT_TOOL,
                "description": "Give the answer as this tool's input, which must match the schema.",
                "inputSchema": {"json": schema},
            }}));
            choice = Some(json!({"tool": {"name": RESULT_TOOL}}));
        }
    }
    if let Some(Value::Array(list)) = body.remove("tools") {
        tools.extend(list.into_iter().map(tool));
    }
    if let Some(c) = body.remove("tool_choice") {
        choice = choice.or_else(|| tool_choice(c));
    }
    if !tools.is_empty() {
        let mut config = json!({"tools": tools});
        if let Some(c) = choice {
            config["toolChoice"] = c;
        }
        out.insert("toolConfig".into(), config);
    }
    // Whatever else the job sets is the model's own parameter.
    if !body.is_empty() {
        out.insert("additionalModelRequestFields".into(), Value::Object(body));
    }
    out
}

/// Content (a string or OpenAI parts) as Converse content blocks; a part
/// marked `cache_control` is followed by a cache point.
fn blocks(content: Value) -> Vec<Value> {
    let parts = match content {
        Value::String(text) => return vec![json!({"text": text})],
        Value::Array(parts) => parts,
        Value::Null => return Vec::new(),
        other => return vec![json!({"text": other.to_string()})],
    };
    let mut out = Vec::with_capacity(parts.len() + 1);
    for part in parts {
        let marked = part.get("cache_control").is_some();
        out.push(match part.get("type").and_then(Value::as_str) {
            Some("text") => json!({"text": part.get("text").cloned().unwrap_or(json!(""))}),
            Some("image_url") => image(&part),
            _ => part,
        });
        if marked {
            out.push(json!({"cachePoint": {"type": "default"}}));
        }
    }
    out
}

/// An `image_url` part as an `image` block: a data URL's bytes, or an
/// `s3://` location (Bedrock fetches nothing over HTTP; such a URL is
/// passed as written, for the service to refuse).
fn image(part: &Value) -> Value {
    let url = part
        .pointer("/image_url/url")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if let Some((media, data)) = url
        .strip_prefix("data:")
        .and_then(|rest| rest.split_once(";base64,"))
    {
        let format = match media.strip_prefix("image/").unwrap_or(media) {
            "jpg" => "jpeg",
            f => f,
        };
        return json!({"image": {"format": format, "source": {"bytes": data}}});
    }
    let format = url
        .rsplit('.')
        .next()
        .map(|e| if e == "jpg" { "jpeg" } else { e })
        .unwrap_or("png");
    json!({"image": {"format": format, "source": {"s3Location": {"uri": url}}}})
}

/// An OpenAI function tool as a Converse `toolSpec` (others pass as given).
fn tool(tool: Value) -> Value {
    match tool.get("function") {
        Some(f) => json!({"toolSpec": {
            "name": f.get("name").cloned().unwrap_or(Value::Null),
            "description": f.get("description").cloned().unwrap_or(json!("")),
            "inputSchema": {"json": f.get("parameters").cloned().unwrap_or(json!({"type": "object"}))},
        }}),
        None => tool,
    }
}

/// OpenAI's `tool_choice` in Converse's words; `none` has none (no
/// `toolChoice` then: the model may still call a tool).
fn tool_choice(choice: Value) -> Option<Value> {
    match &choice {
        Value::String(s) => match s.as_str() {
            "required" => Some(json!({"any": {}})),
            "none" => None,
            _ => Some(json!({"auto": {}})),
        },
        Value::Object(o) if o.get("type").and_then(Value::as_str) == Some("function") => {
            let name = choice
                .pointer("/function/name")
                .cloned()
                .unwrap_or(Value::Null);
            Some(json!({"tool": {"name": name}}))
        }
        _ => Some(choice),
    }
}

/// The output-token cap a Converse body sets.
pub fn max_tokens(body: &Map<String, Value>) -> Option<u64> {
    body.get("inferenceConfig")?.get("maxTokens")?.as_u64()
}

/// Sets a Converse body's output-token cap (a repair of a cut-off answer).
pub fn set_max_tokens(body: &mut Map<String, Value>, n: u64) {
    let config = body.entry("inferenceConfig").or_insert_with(|| json!({}));
    if let Some(c) = config.as_object_mut() {
        c.insert("maxTokens".into(), json!(n));
    }
}

/// Adds a user turn to a Converse body (a repair's correction).
pub fn push_user_turn(body: &mut Map<String, Value>, text: String) {
    if let Some(Value::Array(messages)) = body.get_mut("messages") {
        messages.push(json!({"role": "user", "content": [{"text": text}]}));
    }
}

/// `stopReason` in the Messages API's words: Converse's are Anthropic's,
/// but for its guardrails and content filter (a refusal), so the reply
/// and its stream are read by [`anthropic`]'s code, one reading for both
/// (finish reasons, the typed answer through [`RESULT_TOOL`], a tool input
/// cut off at `max_tokens`).
fn stop_reason(stop: &str) -> &str {
    match stop {
        "guardrail_intervened" | "content_filtered" => "refusal",
        other => other,
    }
}

/// Converse content blocks as Messages API blocks: `text`, and `toolUse`
/// as `tool_use` (reasoning blocks and the like are not the answer).
fn message_blocks(blocks: &[Value]) -> Vec<Value> {
    blocks
        .iter()
        .filter_map(|b| {
            if let Some(text) = b.get("text") {
                return Some(json!({"type": "text", "text": text}));
            }
            let u = b.get("toolUse")?;
            let field = |k: &str| u.get(k).cloned().unwrap_or(Value::Null);
            Some(json!({"type": "tool_use", "id": field("toolUseId"), "name": field("name"), "input": field("input")}))
        })
        .collect()
}

/// Converse `usage` in the Messages API's names (both additive).
fn usage_fields(u: &Value) -> Value {
    let n = |k: &str| u.get(k).cloned().unwrap_or(Value::Null);
    json!({
        "input_tokens": n("inputTokens"),
        "output_tokens": n("outputTokens"),
        "total_tokens": n("totalTokens"),
        "cache_read_input_tokens": n("cacheReadInputTokens"),
        "cache_creation_input_tokens": n("cacheWriteInputTokens"),
    })
}

/// A Converse reply as the OpenAI-shaped [`ChatResponse`] aiq reads.
/// `Err` when the body is not one.
pub fn reply(body: &[u8]) -> Result<ChatResponse, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let blocks = v
        .pointer("/output/message/content")
        .and_then(Value::as_array)
        .ok_or("reply has no `output.message.content` list")?;
    let stop = v.get("stopReason").and_then(Value::as_str).map(stop_reason);
    let usage = v
        .get("usage")
        .map(usage_fields)
        .and_then(WireUsage::lenient);
    Ok(anthropic::message_response(
        &message_blocks(blocks),
        stop,
        usage,
    ))
}

/// What a streamed reply has said so far: the Messages API's fold, fed
/// Converse's events in its words ([`stream_event`]).
#[derive(Debug, Default)]
pub struct Streamed(anthropic::Streamed);

/// Folds one event, `{"<eventType>": payload}` as
/// [`crate::provider::stream`] makes it from an event stream message:
/// the answer's text it added, or (`Err`) an exception event.
pub fn stream_event(s: &mut Streamed, event: &Value) -> Result<Option<String>, Value> {
    let Some((kind, data)) = event.as_object().and_then(|o| o.iter().next()) else {
        return Ok(None);
    };
    let index = data.get("contentBlockIndex").cloned().unwrap_or(json!(0));
    let mut events = Vec::new();
    match kind.as_str() {
        "contentBlockStart" => {
            if let Some(u) = data.pointer("/start/toolUse") {
                let block = json!({"type": "tool_use", "id": u.get("toolUseId"), "name": u.get("name"), "input": {}});
                events.push(
                    json!({"type": "content_block_start", "index": index, "content_block": block}),
                );
            }
        }
        "contentBlockDelta" => {
            let delta = data.get("delta").unwrap_or(&Value::Null);
            if let Some(text) = delta.get("text") {
                events.push(json!({"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": text}}));
            } else if let Some(piece) = delta.pointer("/toolUse/input") {
                events.push(json!({"type": "content_block_delta", "index": index, "delta": {"type": "input_json_delta", "partial_json": piece}}));
            }
        }
        "messageStop" => {
            let stop = data
                .get("stopReason")
                .and_then(Value::as_str)
                .map(stop_reason);
            events.push(json!({"type": "message_delta", "delta": {"stop_reason": stop}}));
        }
        // The last event: the usage, and the end.
        "metadata" => {
            let usage = data.get("usage").map(usage_fields).unwrap_or(Value::Null);
            events.push(json!({"type": "message_delta", "delta": {}, "usage": usage}));
            events.push(json!({"type": "message_stop"}));
        }
        // An exception: `{"error": {"type", "message"}}`, as the stream
        // reader reads error events.
        k if k.ends_with("Exception") => {
            let said = data
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or_default();
            return Err(json!({"error": {"type": k, "message": format!("{k}: {said}")}}));
        }
        // messageStart, contentBlockStop and event types added later.
        _ => {}
    }
    let mut text = None;
    for e in &events {
        if let anthropic::Event::Text(piece) = anthropic::stream_event(&mut s.0, e)? {
            text = Some(piece);
        }
    }
    Ok(text)
}

impl Streamed {
    /// No more events are to come.
    pub fn done(&self) -> bool {
        self.0.done
    }

    /// Whether the stream said how the message ended.
    pub fn finished(&self) -> bool {
        self.0.finished()
    }

    /// The whole streamed message as the OpenAI-shaped reply.
    pub fn into_response(self) -> ChatResponse {
        self.0.into_response()
    }
}

/// The HTTP status a Bedrock error type stands for (the API's table), for
/// errors met without one: an exception event in a stream. Event stream
/// names are lower camel case (`throttlingException`), HTTP ones upper.
pub fn error_status(kind: &str) -> Option<u16> {
    let mut k = kind.to_string();
    if let Some(first) = k.get_mut(..1) {
        first.make_ascii_uppercase();
    }
    Some(match k.as_str() {
        "ValidationException" => 400,
        "AccessDeniedException" | "UnrecognizedClientException" => 403,
        "ResourceNotFoundException" => 404,
        "ModelTimeoutException" => 408,
        "ModelErrorException" | "ModelStreamErrorException" => 424,
        "ThrottlingException" | "ModelNotReadyException" => 429,
        "InternalServerException" => 500,
        "ServiceUnavailableException" => 503,
        _ => return None,
    })
}

/// The error type of an error reply: the `x-amzn-ErrorType` header
/// (`ThrottlingException:http://internal.amazon.com/…`), else the body's
/// `__type` (`com.amazon.coral.service#ExpiredTokenException`), bare.
pub fn error_type(header: Option<&str>, head: &[u8]) -> Option<String> {
    let bare = |t: &str| {
        let t = t.split(':').next().unwrap_or(t);
        t.rsplit('#').next().unwrap_or(t).trim().to_string()
    };
    if let Some(h) = header.filter(|h| !h.trim().is_empty()) {
        return Some(bare(h));
    }
    let v: Value = serde_json::from_slice(head).ok()?;
    v.get("__type").and_then(Value::as_str).map(bare)
}

/// What Bedrock's error type says beyond its status: None leaves the
/// decision to the status table. Credentials the service refuses
/// (unknown key, bad signature, expired token: some are 400s) stop the
/// job; a model that is loading (`ModelNotReadyException`) or timed out
/// is retried.
pub fn error_action(kind: &str) -> Option<ErrorKind> {
    Some(match kind {
        "UnrecognizedClientException"
        | "InvalidSignatureException"
        | "IncompleteSignatureException"
        | "SignatureDoesNotMatch"
        | "MissingAuthenticationTokenException"
        | "ExpiredTokenException"
        | "InvalidClientTokenId"
        | "AccessDeniedException"
        | "ResourceNotFoundException" => ErrorKind::Refused,
        "ThrottlingException" | "ModelNotReadyException" => ErrorKind::Throttled,
        "ServiceUnavailableException" | "ModelTimeoutException" | "InternalServerException" => {
            ErrorKind::Transient
        }
        "ValidationException" | "ModelErrorException" => ErrorKind::Row,
        _ => return None,
    })
}

/// How [`crate::provider::retry`] treats a Bedrock error type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The job cannot succeed: stop it.
    Refused,
    /// A rate limit: retry, slowing down.
    Throttled,
    /// Retry.
    Transient,
    /// The request is wrong: the row's error.
    Row,
}

/// Which embedding API a model speaks.
fn cohere(model: &str) -> bool {
    model.contains("cohere.embed")
}

/// The texts one InvokeModel call may embed: Titan takes one
/// (`inputText`), Cohere a list of up to 96 (`texts`).
pub fn max_embedding_inputs(model: &str) -> Option<usize> {
    Some(if cohere(model) { 96 } else { 1 })
}

/// An embeddings body as aiq lays it out (`model`, `input`) as the
/// InvokeModel body of the model's family: Cohere's `texts` (with
/// `input_type`, default `search_document`), or Titan's one `inputText`
/// (with `dimensions` when set).
pub fn embed_request(mut body: Map<String, Value>) -> Map<String, Value> {
    let model = body
        .remove("model")
        .and_then(|m| m.as_str().map(str::to_string))
        .unwrap_or_default();
    let input = body.remove("input").unwrap_or(Value::Null);
    let mut out = Map::new();
    if cohere(&model) {
        let texts = match input {
            Value::Array(list) => list,
            one => vec![one],
        };
        out.insert("texts".into(), Value::Array(texts));
        let kind = body
            .remove("input_type")
            .unwrap_or_else(|| json!("search_document"));
        out.insert("input_type".into(), kind);
    } else {
        // Titan embeds one text a call: an array of one is that text; a
        // longer one goes as it is, for the service to refuse.
        let text = match input {
            Value::Array(mut list) if list.len() == 1 => list.remove(0),
            other => other,
        };
        out.insert("inputText".into(), text);
        if let Some(d) = body.remove("dimensions") {
            out.insert("dimensions".into(), d);
        }
    }
    out.extend(body);
    out
}

/// An InvokeModel embeddings reply (Titan's `embedding` or Cohere's
/// `embeddings`) as the OpenAI-shaped reply aiq reads.
pub fn embed_reply(body: &[u8]) -> Result<EmbeddingResponse, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let vectors: Vec<&Value> = match (v.get("embedding"), v.get("embeddings")) {
        (Some(one), _) => vec![one],
        (None, Some(Value::Array(list))) => list.iter().collect(),
        // Cohere with `embedding_types`: `{"float": [[…]]}`.
        (None, Some(Value::Object(by_type))) => match by_type.get("float") {
            Some(Value::Array(list)) => list.iter().collect(),
            _ => return Err("reply has no float `embeddings`".into()),
        },
        _ => return Err("reply has no `embedding` or `embeddings`".into()),
    };
    let data = vectors
        .into_iter()
        .enumerate()
        .map(|(index, e)| {
            let embedding = e
                .as_array()
                .and_then(|l| l.iter().map(|x| x.as_f64().map(|f| f as f32)).collect())
                .ok_or_else(|| format!("embedding {index} is not a list of numbers"))?;
            Ok(EmbeddingItem { index, embedding })
        })
        .collect::<Result<Vec<_>, String>>()?;
    let usage = v
        .get("inputTextTokenCount")
        .and_then(|n| WireUsage::lenient(json!({"prompt_tokens": n, "total_tokens": n})));
    Ok(EmbeddingResponse {
        model: None,
        data,
        usage,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn chat_bodies_become_converse_requests() {
        let body = object(json!({
            "model": "anthropic.claude-3-5-haiku-20241022-v1:0",
            "messages": [
                {"role": "system", "content": [{"type": "text", "text": "be brief", "cache_control": {"type": "ephemeral"}}]},
                {"role": "user", "content": [
                    {"type": "text", "text": "what is this?"},
                    {"type": "image_url", "image_url": {"url": "data:image/jpg;base64,/9j/"}}
                ]}
            ],
            "response_format": {"type": "json_schema", "json_schema": {"name": "result", "schema": {"type": "object"}, "strict": true}},
            "temperature": 0.0, "max_tokens": 50, "top_k": 5,
            "stop": "END", "stream": true,
        }));
        let r = Value::Object(request(body));
        assert_eq!(
            r["system"],
            json!([{"text": "be brief"}, {"cachePoint": {"type": "default"}}])
        );
        assert_eq!(
            r["messages"][0]["content"][0],
            json!({"text": "what is this?"})
        );
        assert_eq!(
            r["messages"][0]["content"][1],
            json!({"image": {"format": "jpeg", "source": {"bytes": "/9j/"}}})
        );
        assert_eq!(
            r["inferenceConfig"],
            json!({"maxTokens": 50, "temperature": 0.0, "stopSequences": ["END"]})
        );
        assert_eq!(
            r["toolConfig"]["toolChoice"],
            json!({"tool": {"name": RESULT_TOOL}})
        );
        assert_eq!(
            r["toolConfig"]["tools"][0]["toolSpec"]["inputSchema"],
            json!({"json": {"type": "object"}})
        );
        assert_eq!(r["additionalModelRequestFields"], json!({"top_k": 5}));
        for gone in ["model", "stream", "response_format", "temperature"] {
            assert!(r.get(gone).is_none(), "{gone}");
        }
        let mut m = request(object(
            json!({"messages": [{"role": "user", "content": "u"}]}),
        ));
        assert_eq!(max_tokens(&m), None);
        set_max_tokens(&mut m, 99);
        push_user_turn(&mut m, "again".into());
        assert_eq!(max_tokens(&m), Some(99));
        assert_eq!(m["messages"][1]["content"][0]["text"], "again");
        assert_eq!(
            url(
                "http://h",
                "converse",
                "us.anthropic.claude-3-5-haiku-20241022-v1:0"
            ),
            "http://h/model/us.anthropic.claude-3-5-haiku-20241022-v1%3A0/converse"
        );
        assert_eq!(
            stream_url("http://h/model/m/converse"),
            "http://h/model/m/converse-stream"
        );
    }

    #[test]
    fn replies_read_text_tools_and_usage() {
        let body = json!({
            "output": {"message": {"role": "assistant", "content": [
                {"toolUse": {"toolUseId": "t1", "name": RESULT_TOOL, "input": {"result": 3}}}
            ]}},
            "stopReason": "tool_use",
            "usage": {"inputTokens": 10, "outputTokens": 4, "totalTokens": 1014, "cacheReadInputTokens": 1000, "cacheWriteInputTokens": 0},
            "metrics": {"latencyMs": 100}
        });
        let r = reply(body.to_string().as_bytes()).unwrap();
        assert_eq!(r.choices[0].message.content, json!("{\"result\":3}"));
        assert_eq!(r.choices[0].finish_reason.as_deref(), Some("stop"));
        let u = crate::provider::usage::Usage::from_wire(r.usage.as_ref().unwrap());
        assert_eq!(
            (
                u.prompt_tokens,
                u.cached_tokens,
                u.completion_tokens,
                u.total_tokens
            ),
            (1010, 1000, 4, 1014)
        );
        let text = json!({"output": {"message": {"content": [{"text": "hi"}]}}, "stopReason": "max_tokens"});
        let r = reply(text.to_string().as_bytes()).unwrap();
        assert_eq!(r.choices[0].message.content, json!("hi"));
        assert_eq!(r.choices[0].finish_reason.as_deref(), Some("length"));
        assert!(reply(b"{\"message\":\"x\"}").is_err());
    }

    #[test]
    fn streams_fold_into_one_reply() {
        let mut s = Streamed::default();
        let events = [
            json!({"messageStart": {"role": "assistant"}}),
            json!({"contentBlockStart": {"contentBlockIndex": 0, "start": {"toolUse": {"toolUseId": "t", "name": RESULT_TOOL}}}}),
            json!({"contentBlockDelta": {"contentBlockIndex": 0, "delta": {"toolUse": {"input": "{\"a\":"}}}}),
            json!({"contentBlockDelta": {"contentBlockIndex": 0, "delta": {"toolUse": {"input": "1}"}}}}),
            json!({"contentBlockStop": {"contentBlockIndex": 0}}),
            json!({"messageStop": {"stopReason": "tool_use"}}),
            json!({"metadata": {"usage": {"inputTokens": 7, "outputTokens": 5, "totalTokens": 15, "cacheReadInputTokens": 3}, "metrics": {"latencyMs": 1}}}),
        ];
        for e in &events {
            stream_event(&mut s, e).unwrap();
        }
        assert!(s.finished() && s.done());
        let r = s.into_response();
        assert_eq!(r.choices[0].message.content, json!("{\"a\":1}"));
        let u = crate::provider::usage::Usage::from_wire(r.usage.as_ref().unwrap());
        assert_eq!(
            (u.prompt_tokens, u.completion_tokens, u.cached_tokens),
            (10, 5, 3)
        );
        let err = json!({"throttlingException": {"message": "slow down"}});
        let refused = stream_event(&mut Streamed::default(), &err).unwrap_err();
        assert_eq!(
            crate::provider::wire::error_message(refused.to_string().as_bytes()),
            "throttlingException: slow down"
        );
        assert_eq!(refused["error"]["type"], "throttlingException");
        assert_eq!(error_status("throttlingException"), Some(429));
        assert_eq!(error_status("modelStreamErrorException"), Some(424));
    }

    #[test]
    fn error_types_from_header_or_body() {
        assert_eq!(
            error_type(
                Some("ThrottlingException:http://internal.amazon.com/coral/com.amazon.bedrock/"),
                b""
            ),
            Some("ThrottlingException".into())
        );
        assert_eq!(
            error_type(
                None,
                br#"{"__type":"com.amazon.coral.service#ExpiredTokenException","message":"x"}"#
            ),
            Some("ExpiredTokenException".into())
        );
        assert_eq!(error_type(None, b"<html>"), None);
        assert_eq!(
            error_action("ExpiredTokenException"),
            Some(ErrorKind::Refused)
        );
        assert_eq!(
            error_action("ModelTimeoutException"),
            Some(ErrorKind::Transient)
        );
        assert_eq!(error_action("ValidationException"), Some(ErrorKind::Row));
    }

    #[test]
    fn embeddings_for_titan_and_cohere() {
        let titan = embed_request(object(
            json!({"model": "amazon.titan-embed-text-v2:0", "input": ["hello"], "dimensions": 256}),
        ));
        assert_eq!(
            Value::Object(titan),
            json!({"inputText": "hello", "dimensions": 256})
        );
        let cohere_body = embed_request(object(
            json!({"model": "cohere.embed-english-v3", "input": ["a", "b"]}),
        ));
        assert_eq!(
            Value::Object(cohere_body),
            json!({"texts": ["a", "b"], "input_type": "search_document"})
        );
        let r = embed_reply(br#"{"embedding": [0.5, 1], "inputTextTokenCount": 3}"#).unwrap();
        assert_eq!(r.data[0].embedding, vec![0.5, 1.0]);
        assert_eq!(r.usage.unwrap().prompt_tokens, Some(3));
        let r = embed_reply(
            br#"{"id": "x", "embeddings": [[1], [2]], "response_type": "embeddings_floats"}"#,
        )
        .unwrap();
        assert_eq!((r.data.len(), r.data[1].embedding[0]), (2, 2.0));
        assert!(embed_reply(b"{}").is_err());
    }
}
