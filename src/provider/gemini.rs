//! Google's Gemini API (`{base}/v1beta/models/{model}:generateContent`):
//! everything aiq does differently for it, behind
//! [`crate::provider::dialect::Dialect`].
//!
//! aiq lays every body out once, in the OpenAI shape
//! ([`crate::pipeline::render`]); [`request`] turns a chat body into a
//! `GenerateContentRequest` and [`embed_request`] an embeddings body into a
//! `batchEmbedContents` request; [`reply`], [`embed_reply`] and
//! [`stream_event`] turn Google's replies back into the OpenAI shape the
//! rest of aiq reads, so templates, typed results, task functions, repairs
//! and usage columns work alike for every provider:
//!
//! - `system` messages become `systemInstruction`; `assistant` turns are
//!   `model` turns; `image_url` parts become `inlineData` (a `data:` URL)
//!   or `fileData` (any other URL);
//! - a typed result (`response_format` with a JSON schema) becomes
//!   `responseMimeType: application/json` with the schema as
//!   `responseJsonSchema` (full JSON Schema, which `responseSchema`'s
//!   OpenAPI subset is not); `json_object` is the MIME type alone;
//! - `max_tokens` is `maxOutputTokens`, and the other sampling knobs move
//!   into `generationConfig` under Google's names; `reasoning_effort`
//!   becomes a `thinkingConfig.thinkingBudget` as Google's own OpenAI
//!   layer maps it; OpenAI function tools become `functionDeclarations`;
//! - `usageMetadata` maps to the one usage convention:
//!   `promptTokenCount` (cached part included) is `prompt_tokens`,
//!   `cachedContentTokenCount` is `cached_tokens`, `candidatesTokenCount +
//!   thoughtsTokenCount` is `completion_tokens` with the thoughts as
//!   `reasoning_tokens`; Gemini bills no cache writes.
//!
//! Errors come as `{"error":{"code","message","status","details"}}`: a
//! wrong key is a 400 whose `google.rpc.ErrorInfo` reason is
//! `API_KEY_INVALID`, and a 429 says when to come back in a
//! `google.rpc.RetryInfo` `retryDelay`; [`ErrorDetails`] reads both for
//! the retry table ([`crate::provider::retry`]).

use std::time::Duration;

use serde_json::{json, Map, Value};

use crate::provider::wire::{take_stop_list, take_turns};
use crate::provider::wire::{
    ChatResponse, CompletionTokensDetails, EmbeddingItem, EmbeddingResponse, PromptTokensDetails,
    Task, WireUsage,
};

/// Where the API is when `--base-url` does not say.
pub const DEFAULT_BASE_URL: &str = "https://generativelanguage.googleapis.com";

/// The variables the key is read from, first set wins: `GOOGLE_API_KEY`
/// when both are set, as Google's SDKs read them.
pub const KEY_VARS: &[&str] = &["GOOGLE_API_KEY", "GEMINI_API_KEY"];

/// The variable Google's SDKs read the base URL from.
pub const BASE_URL_VAR: &str = "GOOGLE_GEMINI_BASE_URL";

/// The header the key is sent in.
pub const KEY_HEADER: &str = "x-goog-api-key";

/// The API version in every path.
pub const API_VERSION: &str = "v1beta";

/// `thinkingBudget` for each `reasoning_effort`, as Google's
/// OpenAI-compatible layer maps them.
const EFFORT_BUDGETS: [(&str, i64); 4] = [
    ("none", 0),
    ("low", 1024),
    ("medium", 8192),
    ("high", 24576),
];

/// The model id as the path wants it (`gemini-2.5-flash`, not
/// `models/gemini-2.5-flash`).
pub fn model_id(model: &str) -> &str {
    model.trim().trim_start_matches("models/")
}

/// The URL of a call under `base` (no trailing slash): generateContent (or
/// its server-sent-events stream) for chat, batchEmbedContents for
/// embeddings. Gemini has no completions API.
pub fn url(base: &str, task: Task, model: &str, stream: bool) -> String {
    let method = match (task, stream) {
        (Task::Embeddings, _) => "batchEmbedContents",
        (_, true) => "streamGenerateContent?alt=sse",
        (_, false) => "generateContent",
    };
    format!("{base}/{API_VERSION}/models/{}:{method}", model_id(model))
}

/// The streaming form of a generateContent URL.
pub fn stream_url(url: &str) -> String {
    match url.strip_suffix(":generateContent") {
        Some(head) => format!("{head}:streamGenerateContent?alt=sse"),
        None => url.to_string(),
    }
}

/// An OpenAI-shaped chat body (as [`crate::pipeline::render`] lays it out)
/// as a `GenerateContentRequest`.
pub fn request(mut body: Map<String, Value>) -> Map<String, Value> {
    let mut out = Map::new();
    let (system, turns) = take_turns(&mut body);
    let system: Vec<Value> = system.into_iter().flat_map(parts).collect();
    let contents: Vec<Value> = turns
        .into_iter()
        .map(|(role, content)| {
            let role = if role == "assistant" { "model" } else { "user" };
            json!({"role": role, "parts": parts(content)})
        })
        .collect();
    if !system.is_empty() {
        out.insert("systemInstruction".into(), json!({"parts": system}));
    }
    out.insert("contents".into(), Value::Array(contents));
    let mut config = Map::new();
    if let Some(format) = body.remove("response_format") {
        match format.get("type").and_then(Value::as_str) {
            Some("json_schema") => {
                config.insert("responseMimeType".into(), json!("application/json"));
                if let Some(schema) = format.pointer("/json_schema/schema") {
                    config.insert("responseJsonSchema".into(), schema.clone());
                }
            }
            Some("json_object") => {
                config.insert("responseMimeType".into(), json!("application/json"));
            }
            _ => {}
        }
    }
    let renamed = [
        ("max_tokens", "maxOutputTokens"),
        ("max_completion_tokens", "maxOutputTokens"),
        ("temperature", "temperature"),
        ("top_p", "topP"),
        ("top_k", "topK"),
        ("seed", "seed"),
        ("presence_penalty", "presencePenalty"),
        ("frequency_penalty", "frequencyPenalty"),
        ("n", "candidateCount"),
        ("logprobs", "responseLogprobs"),
        ("top_logprobs", "logprobs"),
    ];
    for (from, to) in renamed {
        if let Some(v) = body.remove(from) {
            config.entry(to).or_insert(v);
        }
    }
    if let Some(list) = take_stop_list(&mut body) {
        config.insert("stopSequences".into(), list);
    }
    if let Some(budget) = body
        .remove("reasoning_effort")
        .as_ref()
        .and_then(Value::as_str)
        .and_then(|e| EFFORT_BUDGETS.iter().find(|(name, _)| *name == e))
    {
        config.insert("thinkingConfig".into(), json!({"thinkingBudget": budget.1}));
    }
    if let Some(Value::Array(tools)) = body.remove("tools") {
        let declarations: Vec<Value> = tools.iter().filter_map(function_declaration).collect();
        if !declarations.is_empty() {
            out.insert(
                "tools".into(),
                json!([{"functionDeclarations": declarations}]),
            );
        }
    }
    if let Some(choice) = body.remove("tool_choice") {
        out.insert(
            "toolConfig".into(),
            json!({"functionCallingConfig": function_calling(&choice)}),
        );
    }
    // OpenAI-only knobs and what the URL carries: Google refuses unknown
    // fields.
    for key in [
        "model",
        "stream",
        "stream_options",
        "prompt_cache_key",
        "user",
    ] {
        body.remove(key);
    }
    // What is left is the job's own (`--param`): Google's request fields
    // go at the top (`safetySettings`, `cachedContent`), anything else into
    // `generationConfig` under the name given (`thinkingConfig`,
    // `responseModalities`, ...), where Google names what it refuses.
    for (k, v) in body {
        if ["safetySettings", "cachedContent", "toolConfig", "tools"].contains(&k.as_str()) {
            out.insert(k, v);
        } else {
            config.insert(k, v);
        }
    }
    if !config.is_empty() {
        out.insert("generationConfig".into(), Value::Object(config));
    }
    out
}

/// Message content (a string or OpenAI parts) as Gemini parts.
fn parts(content: Value) -> Vec<Value> {
    match content {
        Value::String(text) => vec![json!({"text": text})],
        Value::Array(list) => list.into_iter().filter_map(part).collect(),
        Value::Null => Vec::new(),
        other => vec![json!({"text": other.to_string()})],
    }
}

fn part(p: Value) -> Option<Value> {
    match p.get("type").and_then(Value::as_str) {
        Some("text") => Some(json!({"text": p.get("text").cloned().unwrap_or(json!(""))})),
        Some("image_url") => {
            let url = p
                .pointer("/image_url/url")
                .and_then(Value::as_str)
                .unwrap_or_default();
            Some(
                match url
                    .strip_prefix("data:")
                    .and_then(|rest| rest.split_once(";base64,"))
                {
                    Some((mime, data)) => json!({"inlineData": {"mimeType": mime, "data": data}}),
                    None => json!({"fileData": {"mimeType": mime_of(url), "fileUri": url}}),
                },
            )
        }
        // Anything else is already a Gemini part, or text.
        _ => match p {
            Value::String(text) => Some(json!({"text": text})),
            Value::Object(ref o) if o.contains_key("type") => None,
            other => Some(other),
        },
    }
}

/// The image MIME type a URL's extension names (Google wants one for
/// `fileData`); JPEG when it names none.
fn mime_of(url: &str) -> &'static str {
    let path = url
        .split(['?', '#'])
        .next()
        .unwrap_or(url)
        .to_ascii_lowercase();
    match path.rsplit('.').next() {
        Some("png") => "image/png",
        Some("webp") => "image/webp",
        Some("gif") => "image/gif",
        Some("heic") => "image/heic",
        Some("heif") => "image/heif",
        _ => "image/jpeg",
    }
}

/// An OpenAI function tool as a Gemini function declaration (its
/// parameters as JSON Schema).
fn function_declaration(tool: &Value) -> Option<Value> {
    let f = tool.get("function")?;
    let mut d = json!({"name": f.get("name").cloned().unwrap_or(Value::Null)});
    if let Some(desc) = f.get("description") {
        d["description"] = desc.clone();
    }
    if let Some(params) = f.get("parameters") {
        d["parametersJsonSchema"] = params.clone();
    }
    Some(d)
}

fn function_calling(choice: &Value) -> Value {
    match choice {
        Value::String(s) => match s.as_str() {
            "required" => json!({"mode": "ANY"}),
            "none" => json!({"mode": "NONE"}),
            _ => json!({"mode": "AUTO"}),
        },
        other => match other.pointer("/function/name") {
            Some(name) => json!({"mode": "ANY", "allowedFunctionNames": [name]}),
            None => json!({"mode": "AUTO"}),
        },
    }
}

/// A request body (as [`request`] made it) that reads its system prompt
/// from the explicit cache `name` instead of carrying it: Google refuses a
/// request that names a cache and sends a system instruction of its own.
/// Done as the call goes out, so the body aiq keys its journal by stays
/// the same from run to run (a cache's name does not).
pub fn with_cache(body: &[u8], name: &str) -> Option<Vec<u8>> {
    let mut v: Map<String, Value> = serde_json::from_slice(body).ok()?;
    v.remove("systemInstruction")?;
    v.insert("cachedContent".into(), json!(name));
    serde_json::to_vec(&v).ok()
}

/// A request's `generationConfig.maxOutputTokens`.
pub fn max_output_tokens(body: &Map<String, Value>) -> Option<u64> {
    body.get("generationConfig")?
        .get("maxOutputTokens")?
        .as_u64()
}

pub fn set_max_output_tokens(body: &mut Map<String, Value>, n: u64) {
    let config = body
        .entry("generationConfig")
        .or_insert_with(|| Value::Object(Map::new()));
    if let Some(c) = config.as_object_mut() {
        c.insert("maxOutputTokens".into(), json!(n));
    }
}

/// Adds a user turn to a request's `contents`.
pub fn push_user_turn(body: &mut Map<String, Value>, text: String) {
    if let Some(Value::Array(contents)) = body.get_mut("contents") {
        contents.push(json!({"role": "user", "parts": [{"text": text}]}));
    }
}

/// An OpenAI-shaped embeddings body (`model`, `input`: a string or a
/// list) as a `batchEmbedContents` request.
pub fn embed_request(mut body: Map<String, Value>) -> Map<String, Value> {
    let model = body
        .remove("model")
        .and_then(|m| m.as_str().map(str::to_string))
        .unwrap_or_default();
    let texts = match body.remove("input") {
        Some(Value::Array(list)) => list,
        Some(one) => vec![one],
        None => Vec::new(),
    };
    let dimensions = body.remove("dimensions");
    let task_type = body.remove("taskType").or_else(|| body.remove("task_type"));
    let name = format!("models/{}", model_id(&model));
    let requests: Vec<Value> = texts
        .into_iter()
        .map(|t| {
            let text = match t {
                Value::String(s) => s,
                other => other.to_string(),
            };
            let mut r = json!({"model": name, "content": {"parts": [{"text": text}]}});
            if let Some(d) = &dimensions {
                r["outputDimensionality"] = d.clone();
            }
            if let Some(t) = &task_type {
                r["taskType"] = t.clone();
            }
            r
        })
        .collect();
    let mut out = Map::new();
    out.insert("requests".into(), Value::Array(requests));
    out
}

/// A `batchEmbedContents` reply as the OpenAI-shaped reply aiq reads.
pub fn embed_reply(body: &[u8]) -> Result<EmbeddingResponse, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let list = v
        .get("embeddings")
        .and_then(Value::as_array)
        .ok_or("reply has no `embeddings` list")?;
    let data = list
        .iter()
        .enumerate()
        .map(|(index, e)| {
            let values = e
                .get("values")
                .and_then(Value::as_array)
                .ok_or_else(|| format!("embedding {index} has no `values`"))?;
            let embedding = values
                .iter()
                .map(|x| x.as_f64().map(|f| f as f32))
                .collect::<Option<Vec<f32>>>()
                .ok_or_else(|| format!("embedding {index} holds a value that is not a number"))?;
            Ok(EmbeddingItem { index, embedding })
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(EmbeddingResponse {
        model: None,
        data,
        usage: v.get("usageMetadata").and_then(usage),
    })
}

/// `finishReason` as the `finish_reason` aiq records (OpenAI's words where
/// they mean the same: repairs look for `length`, the content filter for
/// `content_filter`).
pub fn finish_reason(reason: &str) -> String {
    match reason {
        "STOP" => "stop",
        "MAX_TOKENS" => "length",
        "SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII" | "IMAGE_SAFETY" => {
            "content_filter"
        }
        other => return other.to_ascii_lowercase(),
    }
    .to_string()
}

/// `usageMetadata` in the one convention (see the module's text).
pub fn usage(meta: &Value) -> Option<WireUsage> {
    let n = |k: &str| meta.get(k).and_then(Value::as_i64);
    let prompt = n("promptTokenCount")?;
    let thoughts = n("thoughtsTokenCount").unwrap_or(0);
    let completion = n("candidatesTokenCount").unwrap_or(0) + thoughts;
    let cached = n("cachedContentTokenCount").unwrap_or(0);
    // Tokens of tool results Google fed back to the model are input too.
    let prompt = prompt + n("toolUsePromptTokenCount").unwrap_or(0);
    let usage = WireUsage {
        prompt_tokens: Some(prompt),
        completion_tokens: Some(completion),
        total_tokens: Some(n("totalTokenCount").unwrap_or(prompt + completion)),
        prompt_tokens_details: Some(PromptTokensDetails {
            cached_tokens: Some(cached),
            cache_write_tokens: None,
        }),
        completion_tokens_details: (thoughts > 0).then_some(CompletionTokensDetails {
            reasoning_tokens: Some(thoughts),
        }),
        ..WireUsage::default()
    };
    WireUsage::lenient(serde_json::to_value(usage).ok()?)
}

/// What the parts of a candidate say: the answer's text (thoughts left
/// out) and the function calls.
#[derive(Debug, Default)]
struct Content {
    text: Option<String>,
    calls: Vec<Value>,
}

impl Content {
    fn add(&mut self, candidate: &Value) -> Option<String> {
        let mut piece = None;
        for p in candidate
            .pointer("/content/parts")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if p.get("thought").and_then(Value::as_bool) == Some(true) {
                continue;
            }
            if let Some(t) = p.get("text").and_then(Value::as_str) {
                self.text.get_or_insert_with(String::new).push_str(t);
                piece.get_or_insert_with(String::new).push_str(t);
            }
            if let Some(call) = p.get("functionCall") {
                let n = self.calls.len();
                self.calls.push(json!({
                    "id": format!("call_{n}"),
                    "type": "function",
                    "function": {
                        "name": call.get("name").cloned().unwrap_or(Value::Null),
                        "arguments": call.get("args").cloned().unwrap_or(json!({})).to_string(),
                    },
                }));
            }
        }
        piece
    }
}

fn chat_response(
    id: Option<&str>,
    model: Option<&str>,
    c: Content,
    finish: Option<String>,
    usage: Option<WireUsage>,
) -> ChatResponse {
    let content = c.text.map_or(Value::Null, Value::String);
    ChatResponse::one(id, model, content, c.calls, finish, usage)
}

/// Why a reply has no candidate: the prompt was blocked.
fn blocked(v: &Value) -> Option<String> {
    v.pointer("/promptFeedback/blockReason")
        .and_then(Value::as_str)
        .map(|_| "content_filter".to_string())
}

/// A `GenerateContentResponse` as the OpenAI-shaped [`ChatResponse`] aiq
/// reads. `Err` when the body is not one.
pub fn reply(body: &[u8]) -> Result<ChatResponse, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    reply_value(&v)
}

/// [`reply`] of an already parsed body (a Batch API's inlined response).
pub fn reply_value(v: &Value) -> Result<ChatResponse, String> {
    if !v.is_object() || (v.get("candidates").is_none() && v.get("promptFeedback").is_none()) {
        return Err("reply has no `candidates`".into());
    }
    let first = v.pointer("/candidates/0");
    let mut c = Content::default();
    if let Some(candidate) = first {
        c.add(candidate);
    }
    let finish = first
        .and_then(|c| c.get("finishReason"))
        .and_then(Value::as_str)
        .map(finish_reason)
        .or_else(|| blocked(v));
    Ok(chat_response(
        v.get("responseId").and_then(Value::as_str),
        v.get("modelVersion").and_then(Value::as_str),
        c,
        finish,
        v.get("usageMetadata").and_then(usage),
    ))
}

/// What a streamed reply has said so far: each event is a whole
/// `GenerateContentResponse` carrying the next piece of text; the last
/// has the `finishReason`, and the latest `usageMetadata` is the whole
/// call's.
#[derive(Debug, Default)]
pub struct Streamed {
    content: Content,
    finish: Option<String>,
    usage: Option<Value>,
    id: Option<String>,
    model: Option<String>,
}

/// Folds one server-sent event (its JSON data) into `s`, returning the
/// text it added. `Err` carries an error object sent in the stream, to be
/// classified like an error reply.
pub fn stream_event(s: &mut Streamed, data: &Value) -> Result<Option<String>, Value> {
    if data.get("error").is_some() {
        return Err(data.clone());
    }
    let text = data.pointer("/candidates/0").and_then(|c| s.content.add(c));
    if let Some(f) = data
        .pointer("/candidates/0/finishReason")
        .and_then(Value::as_str)
    {
        s.finish = Some(finish_reason(f));
    } else if let Some(b) = blocked(data) {
        s.finish = Some(b);
    }
    if let Some(u) = data.get("usageMetadata") {
        s.usage = Some(u.clone());
    }
    for (slot, key) in [(&mut s.id, "responseId"), (&mut s.model, "modelVersion")] {
        if let Some(v) = data.get(key).and_then(Value::as_str) {
            *slot = Some(v.to_string());
        }
    }
    Ok(text)
}

impl Streamed {
    /// The stream has ended properly: its last event named why.
    pub fn finished(&self) -> bool {
        self.finish.is_some()
    }

    pub fn into_response(self) -> ChatResponse {
        let usage = self.usage.as_ref().and_then(usage);
        chat_response(
            self.id.as_deref(),
            self.model.as_deref(),
            self.content,
            self.finish,
            usage,
        )
    }
}

/// What a Google error body says beyond its status and message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErrorDetails {
    /// `error.status`: `INVALID_ARGUMENT`, `RESOURCE_EXHAUSTED`, ...
    pub status: Option<String>,
    /// The `google.rpc.ErrorInfo` reason: `API_KEY_INVALID`, ...
    pub reason: Option<String>,
    /// The `google.rpc.RetryInfo` `retryDelay`.
    pub retry_delay: Option<Duration>,
}

impl ErrorDetails {
    /// Reads an error body; all `None` when it is not Google's shape.
    pub fn of(body: &[u8]) -> ErrorDetails {
        let Ok(v) = serde_json::from_slice::<Value>(body) else {
            return ErrorDetails::default();
        };
        let details = v
            .pointer("/error/details")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let of_type = |suffix: &str| {
            details.iter().find(|d| {
                d.get("@type")
                    .and_then(Value::as_str)
                    .is_some_and(|t| t.ends_with(suffix))
            })
        };
        ErrorDetails {
            status: v
                .pointer("/error/status")
                .and_then(Value::as_str)
                .map(str::to_string),
            reason: of_type("google.rpc.ErrorInfo")
                .and_then(|d| d.get("reason"))
                .and_then(Value::as_str)
                .map(str::to_string),
            retry_delay: of_type("google.rpc.RetryInfo")
                .and_then(|d| d.get("retryDelay"))
                .and_then(Value::as_str)
                .and_then(parse_duration),
        }
    }

    /// A key Google does not take: it answers 400 (not 401) for it.
    pub fn key_refused(&self) -> bool {
        matches!(
            self.reason.as_deref(),
            Some("API_KEY_INVALID" | "API_KEY_SERVICE_BLOCKED" | "API_KEY_HTTP_REFERRER_BLOCKED")
        )
    }
}

/// A protobuf `Duration` in JSON: "3s", "1.500s".
pub fn parse_duration(s: &str) -> Option<Duration> {
    let secs: f64 = s.trim().strip_suffix('s')?.parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::wire::samples::{chat, object as map};

    #[test]
    fn chat_bodies_become_generate_content_requests() {
        let mut body = chat(
            "grade",
            "essay",
            "https://x/cat.webp?s=1",
            json!({
                "model": "gemini-2.5-flash",
                "max_tokens": 50, "temperature": 0.2, "stop": "END", "stream": true,
                "stream_options": {"include_usage": true}, "prompt_cache_key": "aiq-1",
                "reasoning_effort": "low",
                "response_format": {"type": "json_schema", "json_schema": {"name": "r", "schema": {"type": "object"}}}
            }),
        );
        if let Some(Value::Array(turns)) = body.get_mut("messages") {
            turns.push(json!({"role": "assistant", "content": "ok"}));
        }
        let out = Value::Object(request(body));
        assert_eq!(
            out,
            json!({
                "systemInstruction": {"parts": [{"text": "grade"}]},
                "contents": [
                    {"role": "user", "parts": [
                        {"text": "essay"},
                        {"inlineData": {"mimeType": "image/png", "data": "iVBO"}},
                        {"fileData": {"mimeType": "image/webp", "fileUri": "https://x/cat.webp?s=1"}}
                    ]},
                    {"role": "model", "parts": [{"text": "ok"}]}
                ],
                "generationConfig": {
                    "responseMimeType": "application/json",
                    "responseJsonSchema": {"type": "object"},
                    "maxOutputTokens": 50, "temperature": 0.2, "stopSequences": ["END"],
                    "thinkingConfig": {"thinkingBudget": 1024}
                }
            })
        );
        assert_eq!(
            url("http://h", Task::Chat, "models/gemini-2.5-flash", true),
            "http://h/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
        );
        assert_eq!(
            url("http://h", Task::Embeddings, "gemini-embedding-001", false),
            "http://h/v1beta/models/gemini-embedding-001:batchEmbedContents"
        );
    }

    #[test]
    fn replies_and_usage_map_to_one_convention() {
        let body = json!({
            "candidates": [{"content": {"role": "model", "parts": [
                {"text": "thinking...", "thought": true}, {"text": "{\"a\":"}, {"text": "1}"}
            ]}, "finishReason": "MAX_TOKENS", "index": 0}],
            "usageMetadata": {"promptTokenCount": 2000, "candidatesTokenCount": 30,
                              "thoughtsTokenCount": 12, "cachedContentTokenCount": 1500,
                              "totalTokenCount": 2042},
            "modelVersion": "gemini-2.5-flash", "responseId": "r1"
        });
        let r = reply(body.to_string().as_bytes()).unwrap();
        let c = &r.choices[0];
        assert_eq!(c.message.content, json!("{\"a\":1}"));
        assert_eq!(c.finish_reason.as_deref(), Some("length"));
        let u = crate::provider::usage::Usage::from_wire(r.usage.as_ref().unwrap());
        assert_eq!(
            (u.prompt_tokens, u.cached_tokens, u.cache_write_tokens),
            (2000, 1500, 0)
        );
        assert_eq!(
            (u.completion_tokens, u.reasoning_tokens, u.total_tokens),
            (42, 12, 2042)
        );
        let blocked = json!({"promptFeedback": {"blockReason": "SAFETY"},
                             "usageMetadata": {"promptTokenCount": 5, "totalTokenCount": 5}});
        let r = reply(blocked.to_string().as_bytes()).unwrap();
        assert_eq!(r.choices[0].message.content, Value::Null);
        assert_eq!(
            r.choices[0].finish_reason.as_deref(),
            Some("content_filter")
        );
        assert!(reply(br#"{"error": {"code": 400}}"#).is_err());
    }

    #[test]
    fn streams_fold_to_one_reply() {
        let mut s = Streamed::default();
        let ev = |t: &str, last: bool| {
            let mut e = json!({"candidates": [{"content": {"parts": [{"text": t}], "role": "model"}, "index": 0}],
                               "usageMetadata": {"promptTokenCount": 7, "totalTokenCount": 7}});
            if last {
                e["candidates"][0]["finishReason"] = json!("STOP");
                e["usageMetadata"] = json!({"promptTokenCount": 7, "candidatesTokenCount": 3, "totalTokenCount": 10});
            }
            e
        };
        assert_eq!(
            stream_event(&mut s, &ev("echo", false)),
            Ok(Some("echo".into()))
        );
        assert!(!s.finished());
        stream_event(&mut s, &ev(": hi", true)).unwrap();
        assert!(s.finished());
        let r = s.into_response();
        assert_eq!(r.choices[0].message.content, json!("echo: hi"));
        assert_eq!(r.usage.unwrap().completion_tokens, Some(3));
        let mut s = Streamed::default();
        assert!(stream_event(&mut s, &json!({"error": {"code": 503}})).is_err());
    }

    #[test]
    fn embeddings_go_in_one_batch_call() {
        let body =
            map(json!({"model": "gemini-embedding-001", "input": ["a", "b"], "dimensions": 8}));
        let out = Value::Object(embed_request(body));
        assert_eq!(
            out["requests"][1],
            json!({"model": "models/gemini-embedding-001", "content": {"parts": [{"text": "b"}]}, "outputDimensionality": 8})
        );
        let r = embed_reply(br#"{"embeddings": [{"values": [0.5, 1]}, {"values": [2]}]}"#).unwrap();
        assert_eq!(r.data[1].embedding, vec![2.0]);
        assert!(embed_reply(br#"{"embeddings": [{"values": ["x"]}]}"#).is_err());
    }

    #[test]
    fn error_details_name_the_reason_and_the_delay() {
        let key = br#"{"error": {"code": 400, "message": "API key not valid. Please pass a valid API key.", "status": "INVALID_ARGUMENT",
            "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID", "domain": "googleapis.com"}]}}"#;
        let d = ErrorDetails::of(key);
        assert!(d.key_refused());
        assert_eq!(d.status.as_deref(), Some("INVALID_ARGUMENT"));
        let limit = br#"{"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "details": [
            {"@type": "type.googleapis.com/google.rpc.QuotaFailure"},
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "1.500s"}]}}"#;
        let d = ErrorDetails::of(limit);
        assert_eq!(d.retry_delay, Some(Duration::from_millis(1500)));
        assert!(!d.key_refused());
        assert_eq!(ErrorDetails::of(b"<html>"), ErrorDetails::default());
    }
}
