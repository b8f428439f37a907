//! Streaming replies: server-sent events → one [`Reply`], with the time to
//! first token.
//!
//! SSE framing is parsed by `eventsource-stream`; each `data:` payload is a
//! chat chunk (`choices[0].delta.content`) or a completion chunk
//! (`choices[0].text`). Databricks sends `usage` in every chunk and OpenAI in
//! a last chunk with no choices: the last usage seen wins either way.

use std::time::Duration;

use eventsource_stream::Eventsource;
use futures::StreamExt;
use serde_json::Value;
use tokio::time::Instant;

use crate::outcome::Usage;
use crate::reply::{Reply, RowReply, Shape};
use crate::wire::{self, WireUsage};

#[derive(Debug)]
pub enum StreamError {
    /// The connection broke mid-stream: worth a retry.
    Transport(String),
    /// The stream was well formed but its content is not a usable answer.
    Reply(String),
}

/// Read a streamed reply to the end. `sent` is when the request went out,
/// for the time to first token.
pub async fn read(
    response: reqwest::Response,
    shape: &Shape,
    sent: Instant,
) -> Result<(Reply, Option<Duration>), StreamError> {
    let mut events = response.bytes_stream().eventsource();
    let mut text = String::new();
    let mut finish_reason = None;
    let mut usage: Option<WireUsage> = None;
    let mut ttft = None;
    let mut done = false;
    while let Some(event) = events.next().await {
        let event = event.map_err(|e| StreamError::Transport(format!("stream broke: {e}")))?;
        if event.data.trim() == "[DONE]" {
            done = true;
            break;
        }
        let chunk: Value = serde_json::from_str(&event.data)
            .map_err(|e| StreamError::Reply(format!("unreadable stream chunk ({e})")))?;
        if let Some(u) = chunk.get("usage").filter(|u| !u.is_null()) {
            usage = serde_json::from_value(u.clone()).ok();
        }
        let Some(choice) = chunk.pointer("/choices/0") else { continue };
        let piece = choice
            .pointer("/delta/content")
            .and_then(wire::content_text)
            .or_else(|| choice.get("text").and_then(Value::as_str).map(str::to_string));
        if let Some(piece) = piece.filter(|p| !p.is_empty()) {
            ttft.get_or_insert_with(|| sent.elapsed());
            text.push_str(&piece);
        }
        if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) {
            finish_reason = Some(reason.to_string());
        }
    }
    if !done && finish_reason.is_none() {
        return Err(StreamError::Transport("stream ended before the reply was complete".into()));
    }
    let usage = usage.as_ref().map(Usage::from_wire).unwrap_or_default();
    let result = shape.typed(&text);
    Ok((Reply { rows: vec![RowReply { result, finish_reason }], usage }, ttft))
}
