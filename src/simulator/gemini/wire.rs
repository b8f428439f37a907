//! The Gemini wire, as the simulator reads and writes it: requests
//! (`GenerateContentRequest`, `EmbedContentRequest`) translated into the
//! chat and embedding requests the rest of the simulator answers, and
//! replies (`GenerateContentResponse` with `usageMetadata`, embeddings,
//! SSE chunks, errors) in Google's shape.
//!
//! Google's JSON takes field names in lowerCamelCase or in the proto's
//! snake_case; both are read. Unknown fields of the request and of its
//! `generationConfig` are refused with a 400, as Google refuses them.

use std::time::Duration;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use serde_json::{json, Map, Value};

use super::super::answer::{reply_id, Job, Reply};
use super::call::{Call, Method};
use crate::provider::wire::WireUsage;

/// `thoughtsTokenCount` of a reply to a request with a thinking budget
/// (at most the budget).
pub const THOUGHT_TOKENS: u64 = 16;

/// The explicit cache a request names, as its translation needs it.
#[derive(Debug, Clone, Default)]
pub(crate) struct CachedPrefix {
    pub model: String,
    pub system: Option<Value>,
    pub contents: Vec<Value>,
    pub tokens: u64,
}

/// The canonical name of an error status (google.rpc.Code).
fn status_name(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        409 => "ABORTED",
        429 => "RESOURCE_EXHAUSTED",
        499 => "CANCELLED",
        500 => "INTERNAL",
        501 => "UNIMPLEMENTED",
        503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        _ => "UNKNOWN",
    }
}

/// The gRPC code of an HTTP status, as a batch's per-request
/// `google.rpc.Status` carries it.
pub fn grpc_code(status: StatusCode) -> u16 {
    match status.as_u16() {
        400 => 3,
        401 => 16,
        403 => 7,
        404 => 5,
        429 => 8,
        500 => 13,
        503 => 14,
        504 => 4,
        _ => 2,
    }
}

/// An error body in Google's shape.
pub fn error_body(status: StatusCode, message: &str) -> Value {
    json!({"error": {"code": status.as_u16(), "message": message, "status": status_name(status)}})
}

/// An error reply in Google's shape.
pub fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(error_body(status, message))).into_response()
}

/// A wrong key: 400, not 401, with the reason in a `google.rpc.ErrorInfo`.
pub fn api_key_invalid() -> Response {
    let message = "API key not valid. Please pass a valid API key.";
    let mut body = error_body(StatusCode::BAD_REQUEST, message);
    body["error"]["details"] = json!([
        {
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": "API_KEY_INVALID",
            "domain": "googleapis.com",
            "metadata": {"service": "generativelanguage.googleapis.com"}
        },
        {
            "@type": "type.googleapis.com/google.rpc.LocalizedMessage",
            "locale": "en-US",
            "message": message
        }
    ]);
    (StatusCode::BAD_REQUEST, Json(body)).into_response()
}

/// A 429: a quota refused, with `retryDelay` when `delay` is given.
pub fn resource_exhausted(delay: Option<&str>) -> Response {
    let status = StatusCode::TOO_MANY_REQUESTS;
    let mut message = "You exceeded your current quota, please check your plan and billing details. For more information on this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits.".to_string();
    let mut details = vec![json!({
        "@type": "type.googleapis.com/google.rpc.QuotaFailure",
        "violations": [{
            "quotaMetric": "generativelanguage.googleapis.com/generate_content_requests",
            "quotaId": "GenerateRequestsPerMinutePerProjectPerModel"
        }]
    })];
    if let Some(d) = delay {
        message.push_str(&format!(" Please retry in {d}."));
        details.push(json!({"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": d}));
    }
    let mut body = error_body(status, &message);
    body["error"]["details"] = Value::Array(details);
    (status, Json(body)).into_response()
}

/// A protobuf `Duration` in JSON: seconds with up to three decimals, "1.25s".
pub fn duration(d: Duration) -> String {
    let s = format!("{:.3}", d.as_secs_f64());
    format!("{}s", s.trim_end_matches('0').trim_end_matches('.'))
}

pub use crate::provider::gemini::parse_duration;

/// `obj[camel]`, or its snake_case spelling.
pub fn field<'a>(obj: &'a Map<String, Value>, camel: &str) -> Option<&'a Value> {
    obj.get(camel).or_else(|| obj.get(&snake(camel)))
}

fn snake(camel: &str) -> String {
    let mut out = String::with_capacity(camel.len() + 4);
    for c in camel.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// Refuses a field not in `known` (in either spelling), as Google does.
fn known_fields(obj: &Map<String, Value>, known: &[&str], at: &str) -> Result<(), String> {
    for k in obj.keys() {
        if !known.iter().any(|n| n == k || snake(n) == *k) {
            return Err(format!(
                "Invalid JSON payload received. Unknown name {k:?} at '{at}': Cannot find field."
            ));
        }
    }
    Ok(())
}

const REQUEST_FIELDS: [&str; 8] = [
    "model",
    "contents",
    "tools",
    "toolConfig",
    "safetySettings",
    "systemInstruction",
    "generationConfig",
    "cachedContent",
];

const GENERATION_FIELDS: [&str; 21] = [
    "stopSequences",
    "responseMimeType",
    "responseSchema",
    "responseJsonSchema",
    "responseModalities",
    "candidateCount",
    "maxOutputTokens",
    "temperature",
    "topP",
    "topK",
    "seed",
    "presencePenalty",
    "frequencyPenalty",
    "responseLogprobs",
    "logprobs",
    "enableEnhancedCivicAnswers",
    "speechConfig",
    "thinkingConfig",
    "imageConfig",
    "mediaResolution",
    "_responseJsonSchema",
];

/// The text of a `Content`'s parts and its parts as OpenAI content parts.
fn parts(content: &Value, at: &str) -> Result<Vec<Value>, String> {
    let parts = content
        .get("parts")
        .and_then(Value::as_array)
        .ok_or_else(|| format!("* {at}.parts: required field is not specified"))?;
    let mut out = Vec::new();
    for (i, p) in parts.iter().enumerate() {
        let Some(p) = p.as_object() else {
            return Err(format!("* {at}.parts[{i}]: must be an object"));
        };
        if let Some(text) = p.get("text") {
            let text = text
                .as_str()
                .ok_or_else(|| format!("* {at}.parts[{i}].text: must be a string"))?;
            out.push(json!({"type": "text", "text": text}));
        } else if let Some(data) = field(p, "inlineData") {
            let mime = data
                .as_object()
                .and_then(|d| field(d, "mimeType"))
                .and_then(Value::as_str)
                .ok_or_else(|| format!("* {at}.parts[{i}].inline_data.mime_type: required"))?;
            let b64 = data.get("data").and_then(Value::as_str).unwrap_or("");
            if base64::engine::general_purpose::STANDARD
                .decode(b64)
                .is_err()
            {
                return Err(format!(
                    "Invalid value at '{at}.parts[{i}].inline_data.data' (TYPE_BYTES), Base64 decoding failed"
                ));
            }
            out.push(json!({"type": "image_url", "image_url": {"url": format!("data:{mime};base64,{b64}")}}));
        } else if let Some(file) = field(p, "fileData") {
            let uri = file
                .as_object()
                .and_then(|d| field(d, "fileUri"))
                .and_then(Value::as_str)
                .unwrap_or("");
            out.push(json!({"type": "image_url", "image_url": {"url": uri}}));
        } else if let Some(v) = field(p, "functionCall").or_else(|| field(p, "functionResponse")) {
            out.push(json!({"type": "text", "text": v.to_string()}));
        } else {
            return Err(format!(
                "* {at}.parts[{i}]: a part needs text, inlineData, fileData, functionCall or functionResponse"
            ));
        }
    }
    Ok(out)
}

/// `contents` as chat messages.
fn messages(contents: &[Value], out: &mut Vec<Value>) -> Result<(), String> {
    for (i, c) in contents.iter().enumerate() {
        let at = format!("GenerateContentRequest.contents[{i}]");
        let role = match c.get("role").and_then(Value::as_str) {
            None | Some("") | Some("user") => "user",
            Some("model") => "assistant",
            Some(other) => {
                return Err(format!(
                    "Please use a valid role: user, model. (got {other:?})"
                ))
            }
        };
        out.push(json!({"role": role, "content": parts(c, &at)?}));
    }
    Ok(())
}

/// The system instruction's text, as a system message.
fn system_message(system: &Value) -> Result<Value, String> {
    let parts = parts(system, "GenerateContentRequest.system_instruction")?;
    Ok(json!({"role": "system", "content": parts}))
}

/// A `generateContent` request as the chat request the simulator answers,
/// and what the reply needs beyond it.
pub(crate) fn translate(
    body: &Value,
    model: &str,
    method: Method,
    cached: Option<&CachedPrefix>,
) -> Result<(Value, Call), String> {
    let obj = body
        .as_object()
        .ok_or("Invalid JSON payload received. Expected an object.")?;
    known_fields(obj, &REQUEST_FIELDS, "")?;
    let contents = field(obj, "contents")
        .and_then(Value::as_array)
        .filter(|c| !c.is_empty())
        .ok_or("* GenerateContentRequest.contents: contents is not specified")?;
    let system = field(obj, "systemInstruction");
    let mut msgs = Vec::new();
    if let Some(c) = cached {
        if system.is_some() || field(obj, "tools").is_some() || field(obj, "toolConfig").is_some() {
            return Err("CachedContent can not be used with GenerateContent request setting system_instruction, tools or tool_config.\n\nProposed fix: move those values to CachedContent from GenerateContent request.".into());
        }
        if c.model != model {
            return Err(format!(
                "Model used by GenerateContent request (models/{model}) and CachedContent (models/{}) has to be the same.",
                c.model
            ));
        }
        if let Some(s) = &c.system {
            msgs.push(system_message(s)?);
        }
        messages(&c.contents, &mut msgs)?;
    } else if let Some(s) = system {
        msgs.push(system_message(s)?);
    }
    messages(contents, &mut msgs)?;
    let mut chat = json!({"model": model, "messages": msgs, "stream": method == Method::Stream});
    let mut call = Call {
        model: model.to_string(),
        method,
        explicit_cached: cached.map_or(0, |c| c.tokens),
        thoughts: 0,
        enum_text: false,
    };
    if let Some(config) = field(obj, "generationConfig") {
        let config = config
            .as_object()
            .ok_or("* GenerateContentRequest.generation_config: must be an object")?;
        generation_config(config, &mut chat, &mut call)?;
    }
    Ok((chat, call))
}

fn generation_config(
    config: &Map<String, Value>,
    chat: &mut Value,
    call: &mut Call,
) -> Result<(), String> {
    known_fields(config, &GENERATION_FIELDS, "generation_config")?;
    if let Some(n) = field(config, "maxOutputTokens") {
        let n = n
            .as_u64()
            .filter(|n| *n > 0)
            .ok_or("* GenerateContentRequest.generation_config.max_output_tokens: must be a positive integer")?;
        chat["max_tokens"] = json!(n);
    }
    if let Some(n) = field(config, "candidateCount").and_then(Value::as_u64) {
        if n > 1 {
            return Err("The simulator answers one candidate (candidateCount 1).".into());
        }
    }
    let mime = field(config, "responseMimeType").and_then(Value::as_str);
    let openapi = field(config, "responseSchema");
    let json_schema =
        field(config, "responseJsonSchema").or_else(|| config.get("_responseJsonSchema"));
    if openapi.is_some() && json_schema.is_some() {
        return Err("* GenerateContentRequest.generation_config: only one of response_schema and response_json_schema may be set".into());
    }
    let schema = match (openapi, json_schema) {
        (Some(s), _) => Some(openapi_to_json_schema(s)),
        (_, Some(s)) => Some(s.clone()),
        _ => None,
    };
    match (mime, schema) {
        (None | Some("text/plain"), None) => {}
        (Some("application/json"), None) => {
            chat["response_format"] = json!({"type": "json_object"})
        }
        (Some("application/json"), Some(s)) => {
            chat["response_format"] =
                json!({"type": "json_schema", "json_schema": {"name": "response", "schema": s}})
        }
        (Some("text/x.enum"), Some(s)) if s.get("enum").is_some() => {
            call.enum_text = true;
            chat["response_format"] =
                json!({"type": "json_schema", "json_schema": {"name": "response", "schema": s}})
        }
        (None | Some("text/plain") | Some("text/x.enum"), Some(_)) => {
            return Err("* GenerateContentRequest.generation_config.response_mime_type: a response schema needs response_mime_type application/json (or text/x.enum with an enum schema)".into())
        }
        (Some(other), _) => {
            return Err(format!(
                "* GenerateContentRequest.generation_config.response_mime_type: allowed mimetypes are `text/plain`, `application/json`, `text/x.enum`; got {other:?}"
            ))
        }
    }
    if let Some(thinking) = field(config, "thinkingConfig").and_then(Value::as_object) {
        call.thoughts = match field(thinking, "thinkingBudget").and_then(Value::as_i64) {
            Some(-1) => THOUGHT_TOKENS,
            Some(b) if b > 0 => THOUGHT_TOKENS.min(b as u64),
            _ => 0,
        };
    }
    Ok(())
}

/// Google's OpenAPI-subset `Schema` (types in capitals, `nullable`) as the
/// JSON Schema the simulator's generator reads.
pub fn openapi_to_json_schema(s: &Value) -> Value {
    let Some(obj) = s.as_object() else {
        return s.clone();
    };
    let mut out = Map::new();
    for (k, v) in obj {
        let v = match k.as_str() {
            "type" => Value::String(v.as_str().unwrap_or("string").to_ascii_lowercase()),
            "properties" => Value::Object(
                v.as_object()
                    .into_iter()
                    .flatten()
                    .map(|(name, p)| (name.clone(), openapi_to_json_schema(p)))
                    .collect(),
            ),
            "items" => openapi_to_json_schema(v),
            "anyOf" | "any_of" => Value::Array(
                v.as_array()
                    .into_iter()
                    .flatten()
                    .map(openapi_to_json_schema)
                    .collect(),
            ),
            _ => v.clone(),
        };
        let k = if k == "any_of" { "anyOf" } else { k.as_str() };
        out.insert(k.to_string(), v);
    }
    Value::Object(out)
}

/// An `embedContent` or `batchEmbedContents` request as an embeddings
/// request.
pub(crate) fn embed_request(
    body: &Value,
    model: &str,
    method: Method,
) -> Result<(Value, Call), String> {
    let one = |r: &Value, at: &str| -> Result<String, String> {
        let obj = r.as_object().ok_or(format!("* {at}: must be an object"))?;
        if let Some(m) = field(obj, "model").and_then(Value::as_str) {
            if m.trim_start_matches("models/") != model {
                return Err(format!(
                    "* {at}.model: {m:?} differs from the model of the call (models/{model})"
                ));
            }
        }
        let content = field(obj, "content").ok_or(format!("* {at}.content: required"))?;
        let texts: Vec<String> = parts(content, &format!("{at}.content"))?
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str).map(str::to_string))
            .collect();
        Ok(texts.concat())
    };
    let inputs = match method {
        Method::EmbedBatch => {
            let requests = body
                .get("requests")
                .and_then(Value::as_array)
                .filter(|r| !r.is_empty())
                .ok_or("* BatchEmbedContentsRequest.requests: requests is not specified")?;
            requests
                .iter()
                .enumerate()
                .map(|(i, r)| one(r, &format!("BatchEmbedContentsRequest.requests[{i}]")))
                .collect::<Result<Vec<_>, _>>()?
        }
        _ => vec![one(body, "EmbedContentRequest")?],
    };
    let call = Call {
        model: model.to_string(),
        method,
        explicit_cached: 0,
        thoughts: 0,
        enum_text: false,
    };
    Ok((json!({"model": model, "input": inputs}), call))
}

fn finish_reason(openai: &str) -> &'static str {
    match openai {
        "length" => "MAX_TOKENS",
        "content_filter" => "SAFETY",
        "tool_calls" => "STOP",
        _ => "STOP",
    }
}

/// `usageMetadata` from the usage the shared pipeline computed;
/// `candidates` is the output so far (a stream's chunks carry none).
fn usage_metadata(call: &Call, usage: &WireUsage, candidates: Option<i64>) -> Value {
    let prompt = usage.prompt_tokens.unwrap_or(0);
    let cached = usage
        .prompt_tokens_details
        .as_ref()
        .and_then(|d| d.cached_tokens)
        .unwrap_or(0);
    let thoughts = call.thoughts as i64;
    let mut u = json!({
        "promptTokenCount": prompt,
        "totalTokenCount": prompt,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt}],
    });
    if let Some(c) = candidates {
        u["candidatesTokenCount"] = json!(c);
        u["totalTokenCount"] = json!(prompt + c + thoughts);
        if thoughts > 0 {
            u["thoughtsTokenCount"] = json!(thoughts);
        }
    }
    if cached > 0 {
        u["cachedContentTokenCount"] = json!(cached);
        u["cacheTokensDetails"] = json!([{"modality": "TEXT", "tokenCount": cached}]);
    }
    u
}

/// The answer's text as the reply carries it (`text/x.enum`: the bare label).
fn answer_text(call: &Call, text: &str) -> String {
    if call.enum_text {
        if let Ok(Value::String(label)) = serde_json::from_str::<Value>(text) {
            return label;
        }
    }
    text.to_string()
}

fn candidate(text: Option<&str>, finish: Option<&str>) -> Value {
    let mut c = json!({"index": 0});
    if let Some(t) = text {
        c["content"] = json!({"parts": [{"text": t}], "role": "model"});
    }
    if let Some(f) = finish {
        c["finishReason"] = json!(finish_reason(f));
        if f == "content_filter" {
            c["safetyRatings"] = json!([{"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH", "blocked": true}]);
        }
    }
    c
}

/// The non-streamed reply of `call`.
pub(crate) fn reply(call: &Call, job: &Job, usage: &WireUsage) -> Value {
    match &job.reply {
        Reply::Chat {
            content,
            finish_reason,
            ..
        } => {
            let text = content.as_deref().map(|t| answer_text(call, t));
            json!({
                "candidates": [candidate(text.as_deref(), Some(finish_reason))],
                "usageMetadata": usage_metadata(call, usage, Some(usage.completion_tokens.unwrap_or(0))),
                "modelVersion": call.model,
                "responseId": reply_id("gen", job),
            })
        }
        Reply::Embedding { vectors } if call.method == Method::EmbedOne => {
            json!({"embedding": {"values": vectors.first()}})
        }
        Reply::Embedding { vectors } => json!({
            "embeddings": vectors.iter().map(|v| json!({"values": v})).collect::<Vec<_>>()
        }),
        Reply::Completion { .. } => error_body(
            StatusCode::INTERNAL_SERVER_ERROR,
            "no completions on the Gemini API",
        ),
    }
}

/// The SSE events of a streamed reply: one chunk per piece of text, the
/// last with `finishReason` and the whole usage (each chunk carries the
/// prompt's). `pieces` is the answer cut as the shared stream cuts it.
pub(crate) fn stream_events(
    call: &Call,
    job: &Job,
    usage: &WireUsage,
    pieces: &[&str],
) -> Vec<bytes::Bytes> {
    let Reply::Chat { finish_reason, .. } = &job.reply else {
        return Vec::new();
    };
    let id = reply_id("gen", job);
    let chunk = |text: Option<&str>, last: bool| {
        let done = usage.completion_tokens.unwrap_or(0);
        let c = json!({
            "candidates": [candidate(text, last.then_some(*finish_reason))],
            "usageMetadata": usage_metadata(call, usage, last.then_some(done)),
            "modelVersion": call.model,
            "responseId": id,
        });
        bytes::Bytes::from(format!("data: {c}\r\n\r\n"))
    };
    if pieces.is_empty() {
        return vec![chunk(Some(""), true)];
    }
    let n = pieces.len();
    pieces
        .iter()
        .enumerate()
        .map(|(i, p)| chunk(Some(p), i + 1 == n))
        .collect()
}

/// The pieces of an `enum_text` answer are the label's, not the JSON's.
pub(crate) fn streamed_text(call: &Call, text: &str) -> String {
    answer_text(call, text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_and_write_googles_way() {
        assert_eq!(duration(Duration::from_millis(1250)), "1.25s");
        assert_eq!(duration(Duration::from_secs(3)), "3s");
        assert_eq!(parse_duration("300s"), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("0.5s"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("5m"), None);
    }

    #[test]
    fn requests_translate_with_either_spelling_and_unknown_fields_fail() {
        let body = json!({
            "system_instruction": {"parts": [{"text": "be brief"}]},
            "contents": [{"role": "user", "parts": [{"text": "hi"}]}],
            "generationConfig": {"maxOutputTokens": 5, "responseMimeType": "application/json",
                "responseSchema": {"type": "OBJECT", "properties": {"a": {"type": "INTEGER"}}}}
        });
        let (chat, call) = translate(&body, "m", Method::Generate, None).unwrap();
        assert_eq!(chat["messages"][0]["role"], "system");
        assert_eq!(chat["max_tokens"], 5);
        assert_eq!(
            chat["response_format"]["json_schema"]["schema"]["properties"]["a"]["type"],
            "integer"
        );
        assert_eq!(call.model, "m");
        let bad = json!({"contents": [{"parts": [{"text": "x"}]}], "temprature": 1});
        let err = translate(&bad, "m", Method::Generate, None).unwrap_err();
        assert!(err.contains("Unknown name \"temprature\""), "{err}");
        let no_mime = json!({"contents": [{"parts": [{"text": "x"}]}],
            "generationConfig": {"responseJsonSchema": {"type": "object"}}});
        assert!(translate(&no_mime, "m", Method::Generate, None).is_err());
    }
}
