//! Bedrock Runtime's shapes, for the shared pipeline of
//! [`super::super::handler`]: requests read into the OpenAI shape
//! ([`to_openai`]), replies and event streams written back ([`reply`],
//! [`frames`]), errors typed in `x-amzn-ErrorType` ([`error`]), and no
//! rate-limit headers ([`admission`]).

use std::collections::VecDeque;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use serde_json::{json, Map, Value};

use super::super::answer::{reply_id, Api, BedrockOp, Job, Reply};
use super::super::anthropic::{chat_messages, put_tools};
use super::super::limits::Admission;
use super::super::SimConfig;
use crate::provider::eventstream;
use crate::provider::wire::WireUsage;

/// The keys a Converse request may carry (the API refuses others).
const KNOWN_KEYS: &[&str] = &[
    "messages",
    "system",
    "inferenceConfig",
    "toolConfig",
    "guardrailConfig",
    "additionalModelRequestFields",
    "additionalModelResponseFieldPaths",
    "promptVariables",
    "requestMetadata",
    "performanceConfig",
];

/// The error type Bedrock sends with `status`.
fn error_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 | 422 => "ValidationException",
        401 | 403 => "AccessDeniedException",
        404 => "ResourceNotFoundException",
        408 => "ModelTimeoutException",
        424 => "ModelErrorException",
        429 => "ThrottlingException",
        503 | 529 => "ServiceUnavailableException",
        _ => "InternalServerException",
    }
}

/// An error reply as Bedrock sends it: `{"message"}`, the type in
/// `x-amzn-ErrorType`.
pub(crate) fn error_reply(status: StatusCode, kind: &str, message: &str) -> Response {
    let mut resp = (status, Json(json!({"message": message}))).into_response();
    if let Ok(v) = HeaderValue::from_str(kind) {
        resp.headers_mut().insert("x-amzn-errortype", v);
    }
    resp
}

/// [`error_reply`] typed by its status.
pub(crate) fn error(status: StatusCode, message: &str) -> Response {
    error_reply(status, error_type(status), message)
}

/// Bedrock sends no rate-limit headers: a refusal is a bare
/// `ThrottlingException`.
pub(crate) fn admission(a: Admission) -> Admission {
    let strip = |h: HeaderMap| {
        h.into_iter()
            .filter_map(|(n, v)| Some((n?, v)))
            .filter(|(n, _)| {
                !n.as_str().starts_with("x-ratelimit-") && !n.as_str().starts_with("retry-after")
            })
            .collect()
    };
    match a {
        Admission::Admitted(h) => Admission::Admitted(strip(h)),
        Admission::Refused(h) => Admission::Refused(strip(h)),
    }
}

/// A Converse (or InvokeModel embeddings) body as the OpenAI body the
/// shared pipeline answers, and the forced tool's name.
pub(crate) fn to_openai(
    body: Value,
    model: &str,
    op: BedrockOp,
) -> Result<(Value, Option<String>), String> {
    let Value::Object(mut b) = body else {
        return Err("request body must be a JSON object".into());
    };
    if op == BedrockOp::Invoke {
        let input = match (b.remove("inputText"), b.remove("texts")) {
            (Some(Value::String(text)), None) => json!([text]),
            (None, Some(Value::Array(texts))) if !texts.is_empty() => Value::Array(texts),
            _ => return Err("Malformed input request: expected `inputText` (a string) or `texts` (a list), please reformat your input and try again.".into()),
        };
        return Ok((json!({"model": model, "input": input}), None));
    }
    if let Some(key) = b.keys().find(|k| !KNOWN_KEYS.contains(&k.as_str())) {
        return Err(format!(
            "1 validation error detected: Unknown parameter in input: \"{key}\", must be one of: {}",
            KNOWN_KEYS.join(", ")
        ));
    }
    let messages = chat_messages(
        &mut b,
        parts,
        "1 validation error detected: Value at 'messages' failed to satisfy constraint: Member must not be null",
        |role| format!("1 validation error detected: Value '{role}' at 'messages.role' failed to satisfy constraint: Member must satisfy enum value set: [user, assistant]"),
    )?;
    let mut out = Map::new();
    out.insert("model".into(), json!(model));
    out.insert("messages".into(), messages);
    out.insert("stream".into(), json!(op == BedrockOp::Stream));
    if let Some(Value::Object(config)) = b.remove("inferenceConfig") {
        for (from, to) in [
            ("maxTokens", "max_tokens"),
            ("temperature", "temperature"),
            ("topP", "top_p"),
            ("stopSequences", "stop"),
        ] {
            if let Some(v) = config.get(from) {
                out.insert(to.into(), v.clone());
            }
        }
    }
    let Some(config) = b.remove("toolConfig") else {
        return Ok((Value::Object(out), None));
    };
    // Each `toolSpec` in Anthropic's shape, keeping absent keys absent so
    // the shared defaults apply.
    let tools: Vec<Value> = config
        .get("tools")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|t| {
            let spec = t.get("toolSpec");
            let fields = [
                ("name", spec.and_then(|s| s.get("name"))),
                ("description", spec.and_then(|s| s.get("description"))),
                (
                    "input_schema",
                    spec.and_then(|s| s.pointer("/inputSchema/json")),
                ),
            ];
            Value::Object(
                fields
                    .into_iter()
                    .filter_map(|(k, v)| Some((k.to_string(), v?.clone())))
                    .collect(),
            )
        })
        .collect();
    let forced = config
        .pointer("/toolChoice/tool/name")
        .and_then(Value::as_str)
        .map(str::to_string);
    let choice = if config.pointer("/toolChoice/any").is_some() {
        "required"
    } else {
        "auto"
    };
    put_tools(out, &tools, forced, choice, |name| {
        format!("The tool {name} in toolChoice is not in toolConfig.tools.")
    })
}

/// Converse content blocks as OpenAI parts; a `cachePoint` marks the part
/// before it with `cache_control`, the shared pipeline's cache breakpoint.
fn parts(content: Value) -> Result<Value, String> {
    let Value::Array(blocks) = content else {
        return Err("1 validation error detected: Value at 'content' failed to satisfy constraint: Member must be a list".into());
    };
    let mut out: Vec<Value> = Vec::with_capacity(blocks.len());
    for block in blocks {
        if block.get("cachePoint").is_some() {
            let last = out
                .last_mut()
                .ok_or("A cachePoint must follow a content block.")?;
            last["cache_control"] = json!({"type": "ephemeral"});
            continue;
        }
        let part = if let Some(text) = block.get("text") {
            json!({"type": "text", "text": text.as_str().ok_or("text must be a string")?})
        } else if let Some(image) = block.get("image") {
            let format = image.get("format").and_then(Value::as_str).unwrap_or("png");
            let data = image
                .pointer("/source/bytes")
                .and_then(Value::as_str)
                .unwrap_or_default();
            json!({"type": "image_url", "image_url": {"url": format!("data:image/{format};base64,{data}")}})
        } else if let Some(u) = block.get("toolUse") {
            json!({"type": "text", "text": u.get("input").cloned().unwrap_or(json!({})).to_string()})
        } else if let Some(r) = block.get("toolResult") {
            json!({"type": "text", "text": r.get("content").cloned().unwrap_or(Value::Null).to_string()})
        } else {
            return Err(format!(
                "The content block {block} is not one Converse takes."
            ));
        };
        out.push(part);
    }
    Ok(Value::Array(out))
}

/// Usage in Converse's names (additive, as Anthropic's).
fn usage_json(u: &WireUsage) -> Value {
    let (i, o, r, w) = (
        u.input_tokens.unwrap_or(0),
        u.output_tokens.unwrap_or(0),
        u.cache_read_input_tokens.unwrap_or(0),
        u.cache_creation_input_tokens.unwrap_or(0),
    );
    json!({"inputTokens": i, "outputTokens": o, "totalTokens": i + o + r + w,
           "cacheReadInputTokens": r, "cacheWriteInputTokens": w})
}

/// What the reply holds, as Converse content blocks, and why it stopped:
/// the simulator's Anthropic message (the same answer, the typed one
/// through the forced tool) in Converse's words.
fn blocks(job: &Job, usage: &WireUsage) -> (Vec<Value>, String) {
    let message = super::super::anthropic::message(&Api::Anthropic, job, usage);
    let blocks = message["content"].as_array().cloned().unwrap_or_default();
    let blocks = blocks
        .iter()
        .map(|b| match b["type"].as_str() {
            Some("tool_use") => {
                json!({"toolUse": {"toolUseId": b["id"], "name": b["name"], "input": b["input"]}})
            }
            _ => json!({"text": b["text"]}),
        })
        .collect();
    let stop = match message["stop_reason"].as_str() {
        Some("refusal") => "content_filtered",
        Some(other) => other,
        None => "end_turn",
    };
    (blocks, stop.to_string())
}

/// The non-streamed reply to `job`: Converse's, or an embedding model's.
pub(crate) fn reply(model: &str, job: &Job, usage: &WireUsage) -> Value {
    if let Reply::Embedding { vectors } = &job.reply {
        if model.contains("cohere.embed") {
            return json!({"id": reply_id("emb", job), "embeddings": vectors,
                          "texts": job.keys, "response_type": "embeddings_floats"});
        }
        let one = vectors.first().cloned().unwrap_or_default();
        return json!({"embedding": one, "inputTextTokenCount": job.prompt_tokens});
    }
    let (content, stop) = blocks(job, usage);
    json!({
        "output": {"message": {"role": "assistant", "content": content}},
        "stopReason": stop,
        "usage": usage_json(usage),
        "metrics": {"latencyMs": 1},
    })
}

fn event(kind: &str, payload: &Value) -> Bytes {
    eventstream::encode(
        &[
            (":event-type", kind),
            (":content-type", "application/json"),
            (":message-type", "event"),
        ],
        payload.to_string().as_bytes(),
    )
}

/// The ConverseStream reply to `job`, each event with the delay before
/// it: `messageStart`, per block `contentBlockStart` (tool use),
/// deltas of about a token, `contentBlockStop`, then `messageStop` (stop
/// reason) and `metadata` (usage).
pub(crate) fn frames(
    cfg: &SimConfig,
    model: &str,
    job: &Job,
    usage: &WireUsage,
    cached: u64,
) -> VecDeque<(Duration, Bytes)> {
    let mut pace = super::super::stream::Pacing::new(cfg, job, cached);
    let whole = reply(model, job, usage);
    let mut frames = VecDeque::new();
    frames.push_back((
        Duration::ZERO,
        event("messageStart", &json!({"role": "assistant"})),
    ));
    let content = whole
        .pointer("/output/message/content")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for (i, block) in content.iter().enumerate() {
        let (pieces, delta): (String, fn(&str) -> Value) = match block.get("toolUse") {
            Some(u) => {
                let start = json!({"contentBlockIndex": i, "start": {"toolUse": {"toolUseId": u["toolUseId"], "name": u["name"]}}});
                frames.push_back((Duration::ZERO, event("contentBlockStart", &start)));
                (u["input"].to_string(), |p| json!({"toolUse": {"input": p}}))
            }
            None => (
                block["text"].as_str().unwrap_or_default().to_string(),
                |p| json!({"text": p}),
            ),
        };
        for piece in super::super::stream::pieces(&pieces) {
            let d = json!({"contentBlockIndex": i, "delta": delta(piece)});
            frames.push_back((pace.token(), event("contentBlockDelta", &d)));
        }
        frames.push_back((
            Duration::ZERO,
            event("contentBlockStop", &json!({"contentBlockIndex": i})),
        ));
    }
    frames.push_back((
        pace.end(),
        event("messageStop", &json!({"stopReason": whole["stopReason"]})),
    ));
    frames.push_back((
        Duration::ZERO,
        event(
            "metadata",
            &json!({"usage": whole["usage"], "metrics": {"latencyMs": 1}}),
        ),
    ));
    frames
}

/// The content type of [`frames`].
pub(crate) const STREAM_TYPE: &str = "application/vnd.amazon.eventstream";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converse_requests_are_read_with_their_cache_points() {
        let (body, forced) = to_openai(
            json!({
                "system": [{"text": "sys"}, {"cachePoint": {"type": "default"}}],
                "messages": [{"role": "user", "content": [{"text": "hi"}]}],
                "inferenceConfig": {"maxTokens": 10},
                "toolConfig": {"tools": [{"toolSpec": {"name": "result", "inputSchema": {"json": {"type": "object"}}}}],
                               "toolChoice": {"tool": {"name": "result"}}}
            }),
            "m",
            BedrockOp::Converse,
        )
        .unwrap();
        assert_eq!(forced.as_deref(), Some("result"));
        assert_eq!(
            body["messages"][0]["content"][0]["cache_control"]["type"],
            "ephemeral"
        );
        assert_eq!(body["max_tokens"], 10);
        assert!(to_openai(
            json!({"messages": [], "model": "x"}),
            "m",
            BedrockOp::Converse
        )
        .unwrap_err()
        .contains("Unknown parameter"));
        let (e, _) = to_openai(
            json!({"inputText": "t"}),
            "amazon.titan-embed-text-v2:0",
            BedrockOp::Invoke,
        )
        .unwrap();
        assert_eq!(e["input"], json!(["t"]));
    }
}
