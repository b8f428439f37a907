//! Streaming replies: server-sent events → one [`Reply`], with the time to
//! first token.
//!
//! SSE framing is parsed by `eventsource-stream`; each `data:` payload is a
//! chat chunk (`choices[0].delta.content`) or a completion chunk
//! (`choices[0].text`). Databricks sends `usage` in every chunk and OpenAI in
//! a last chunk with no choices: the last usage seen wins either way.
//!
//! [`read_timed`] also reports when the first and last content chunks
//! arrived and how many there were, which is what `aiq bench` needs for
//! inter-token latency; [`read`] is the same parse for `aiq run`.

use std::time::Duration;

use eventsource_stream::Eventsource;
use futures::StreamExt;
use serde_json::Value;
use tokio::time::Instant;

use crate::provider::auth::Scrubber;
use crate::provider::dialect::Dialect;
use crate::provider::reply::{Reply, RowReply, Shape};
use crate::provider::usage::Usage;
use crate::provider::wire::ChatResponse;
use crate::provider::wire::{self, WireUsage};
use crate::provider::{anthropic, bedrock, eventstream, gemini};

#[derive(Debug)]
pub enum StreamError {
    /// The connection broke mid-stream: worth a retry.
    Transport(String),
    /// The stream was well formed but its content is not a usable answer.
    Reply(String),
    /// The server sent an error event (Anthropic's `error`): classified
    /// like an error reply of this status.
    Server { status: u16, message: String },
}

/// When content arrived, measured from when the request went out. Three
/// numbers rather than a timestamp per chunk: enough for the mean
/// inter-chunk latency of a request, with no allocation per chunk.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Timing {
    /// The first chunk with content: the time to first token.
    pub first: Option<Duration>,
    /// The last chunk with content.
    pub last: Option<Duration>,
    /// Chunks that carried content.
    pub chunks: u32,
}

impl Timing {
    /// Mean time between content chunks after the first; None with fewer
    /// than two chunks.
    pub fn inter_chunk(&self) -> Option<Duration> {
        match (self.first, self.last) {
            (Some(first), Some(last)) if self.chunks >= 2 => {
                Some((last - first) / (self.chunks - 1))
            }
            _ => None,
        }
    }
}

/// Read a streamed reply to the end. `sent` is when the request went out,
/// for the time to first token; `scrub` hides secrets in the reply's text.
pub async fn read(
    response: hyper::Response<hyper::body::Incoming>,
    shape: &Shape,
    sent: Instant,
    scrub: &Scrubber,
) -> Result<(Reply, Option<Duration>), StreamError> {
    read_timed(response, shape, sent, scrub)
        .await
        .map(|(reply, timing)| (reply, timing.first))
}

/// [`read`], also returning when content chunks arrived.
pub async fn read_timed(
    response: hyper::Response<hyper::body::Incoming>,
    shape: &Shape,
    sent: Instant,
    scrub: &Scrubber,
) -> Result<(Reply, Timing), StreamError> {
    let body = http_body_util::BodyDataStream::new(response.into_body());
    if shape.dialect == Dialect::Bedrock {
        let mut events = Box::pin(event_stream(body));
        return read_folded::<bedrock::Streamed, _, _>(&mut events, shape, sent, scrub).await;
    }
    let mut events = body.eventsource();
    let mut data = (&mut events).map(|e| e.map(|e| e.data));
    match shape.dialect {
        Dialect::Anthropic => {
            return read_folded::<anthropic::Streamed, _, _>(&mut data, shape, sent, scrub).await
        }
        Dialect::Gemini => {
            return read_folded::<gemini::Streamed, _, _>(&mut data, shape, sent, scrub).await
        }
        Dialect::Databricks | Dialect::OpenAi | Dialect::Azure | Dialect::Bedrock => {}
    }
    let mut text = String::new();
    let mut finish_reason = None;
    let mut usage: Option<WireUsage> = None;
    let mut timing = Timing::default();
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
            usage = WireUsage::lenient(u.clone());
        }
        let Some(choice) = chunk.pointer("/choices/0") else {
            continue;
        };
        let piece = choice
            .pointer("/delta/content")
            .and_then(wire::content_text)
            .or_else(|| {
                choice
                    .get("text")
                    .and_then(Value::as_str)
                    .map(str::to_string)
            });
        if let Some(piece) = piece.filter(|p| !p.is_empty()) {
            let now = sent.elapsed();
            timing.first.get_or_insert(now);
            timing.last = Some(now);
            timing.chunks += 1;
            text.push_str(&piece);
        }
        if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) {
            finish_reason = Some(reason.to_string());
        }
    }
    if !done && finish_reason.is_none() {
        return Err(StreamError::Transport(
            "stream ended before the reply was complete".into(),
        ));
    }
    let usage = usage.as_ref().map(Usage::from_wire).unwrap_or_default();
    // The whole text, not chunk by chunk: a secret may span chunks.
    let result = shape.answer(&scrub.text(&text), finish_reason.as_deref());
    Ok((
        Reply {
            rows: vec![RowReply {
                result,
                finish_reason,
            }],
            usage,
        },
        timing,
    ))
}

/// An AWS event stream ([`eventstream`]) as the JSON of each message:
/// `{"<event-type>": payload}` for an event, `{"<exception-type>":
/// payload}` for an exception (Bedrock's names end in `Exception`), and
/// `{"<error-code>Exception": {"message"}}` for an error message.
fn event_stream<S, E>(body: S) -> impl futures::Stream<Item = Result<String, String>>
where
    S: futures::Stream<Item = Result<bytes::Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let start = (body, eventstream::Decoder::default(), false);
    futures::stream::unfold(start, |(mut body, mut decoder, mut over)| async move {
        loop {
            if over {
                return None;
            }
            match decoder.next_message() {
                Ok(Some(m)) => return Some((Ok(event_json(&m)), (body, decoder, over))),
                Err(e) => {
                    over = true;
                    return Some((Err(e), (body, decoder, over)));
                }
                Ok(None) => {}
            }
            match body.next().await {
                Some(Ok(bytes)) => decoder.push(&bytes),
                Some(Err(e)) => {
                    over = true;
                    return Some((Err(e.to_string()), (body, decoder, over)));
                }
                None if decoder.pending() => {
                    over = true;
                    let cut = "the event stream ended inside a message".to_string();
                    return Some((Err(cut), (body, decoder, over)));
                }
                None => return None,
            }
        }
    })
}

fn event_json(m: &eventstream::Message) -> String {
    let payload: serde_json::Value =
        serde_json::from_slice(&m.payload).unwrap_or_else(|_| serde_json::json!({}));
    let (name, payload) = match m.header(":message-type") {
        Some("exception") => (
            m.header(":exception-type").unwrap_or("unknownException"),
            payload,
        ),
        Some("error") => {
            let message = m.header(":error-message").unwrap_or_default();
            let code = m.header(":error-code").unwrap_or("internalServer");
            let name = format!("{}Exception", code.trim_end_matches("Exception"));
            return serde_json::json!({ name: {"message": message} }).to_string();
        }
        _ => (m.header(":event-type").unwrap_or_default(), payload),
    };
    serde_json::json!({ name: payload }).to_string()
}

/// A provider's stream of whole events, folded into one reply: Anthropic's
/// Messages events ([`anthropic::stream_event`]), Gemini's chunks
/// ([`gemini::stream_event`]), Bedrock's ([`bedrock::stream_event`]).
trait Fold: Default {
    /// Folds one event's JSON: the answer's text it added, or an error
    /// event's body.
    fn event(&mut self, data: &Value) -> Result<Option<String>, Value>;
    /// No more events are to come, whatever the connection does.
    fn done(&self) -> bool;
    /// The reply is complete (its end was said).
    fn finished(&self) -> bool;
    fn into_response(self) -> ChatResponse;
    /// The HTTP status an error event stands for.
    fn error_status(error: &Value) -> u16;
}

impl Fold for anthropic::Streamed {
    fn event(&mut self, data: &Value) -> Result<Option<String>, Value> {
        anthropic::stream_event(self, data).map(|e| match e {
            anthropic::Event::Text(piece) => Some(piece),
            anthropic::Event::Other => None,
        })
    }
    fn done(&self) -> bool {
        self.done
    }
    fn finished(&self) -> bool {
        anthropic::Streamed::finished(self)
    }
    fn into_response(self) -> ChatResponse {
        anthropic::Streamed::into_response(self)
    }
    fn error_status(error: &Value) -> u16 {
        let kind = error.pointer("/error/type").and_then(Value::as_str);
        kind.and_then(anthropic::error_status).unwrap_or(500)
    }
}

impl Fold for bedrock::Streamed {
    fn event(&mut self, data: &Value) -> Result<Option<String>, Value> {
        bedrock::stream_event(self, data)
    }
    fn done(&self) -> bool {
        bedrock::Streamed::done(self)
    }
    fn finished(&self) -> bool {
        bedrock::Streamed::finished(self)
    }
    fn into_response(self) -> ChatResponse {
        bedrock::Streamed::into_response(self)
    }
    fn error_status(error: &Value) -> u16 {
        let kind = error.pointer("/error/type").and_then(Value::as_str);
        kind.and_then(bedrock::error_status).unwrap_or(500)
    }
}

impl Fold for gemini::Streamed {
    fn event(&mut self, data: &Value) -> Result<Option<String>, Value> {
        gemini::stream_event(self, data)
    }
    fn done(&self) -> bool {
        false
    }
    fn finished(&self) -> bool {
        gemini::Streamed::finished(self)
    }
    fn into_response(self) -> ChatResponse {
        gemini::Streamed::into_response(self)
    }
    fn error_status(error: &Value) -> u16 {
        error
            .pointer("/error/code")
            .and_then(Value::as_u64)
            .and_then(|c| u16::try_from(c).ok())
            .unwrap_or(500)
    }
}

/// A stream of whole events' JSON (see [`Fold`]) to the end.
async fn read_folded<F: Fold, S, E>(
    events: &mut S,
    shape: &Shape,
    sent: Instant,
    scrub: &Scrubber,
) -> Result<(Reply, Timing), StreamError>
where
    S: futures::Stream<Item = Result<String, E>> + Unpin,
    E: std::fmt::Display,
{
    let mut state = F::default();
    let mut timing = Timing::default();
    while let Some(event) = events.next().await {
        let event = event.map_err(|e| StreamError::Transport(format!("stream broke: {e}")))?;
        let data: Value = serde_json::from_str(&event)
            .map_err(|e| StreamError::Reply(format!("unreadable stream event ({e})")))?;
        match state.event(&data) {
            Ok(Some(piece)) if !piece.is_empty() => {
                let now = sent.elapsed();
                timing.first.get_or_insert(now);
                timing.last = Some(now);
                timing.chunks += 1;
            }
            Ok(_) => {}
            Err(error) => {
                let message = wire::error_message(error.to_string().as_bytes());
                return Err(StreamError::Server {
                    status: F::error_status(&error),
                    message: scrub.text(&message).into_owned(),
                });
            }
        }
        if state.done() {
            break;
        }
    }
    if !state.finished() {
        return Err(StreamError::Transport(
            "stream ended before the reply was complete".into(),
        ));
    }
    let mut response = state.into_response();
    // The whole texts, not event by event: a secret may span events.
    for choice in &mut response.choices {
        let message = &mut choice.message;
        if let Value::String(text) = &message.content {
            message.content = Value::String(scrub.text(text).into_owned());
        }
        if let Some(calls) = &message.tool_calls {
            let text = calls.to_string();
            message.tool_calls = serde_json::from_str(&scrub.text(&text)).ok();
        }
    }
    let reply = shape.chat(response).map_err(StreamError::Reply)?;
    Ok((reply, timing))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inter_chunk_latency_is_the_mean_gap_after_the_first() {
        let ms = Duration::from_millis;
        let t = Timing {
            first: Some(ms(100)),
            last: Some(ms(130)),
            chunks: 4,
        };
        assert_eq!(t.inter_chunk(), Some(ms(10)));
        assert_eq!(
            Timing {
                first: Some(ms(1)),
                last: Some(ms(1)),
                chunks: 1
            }
            .inter_chunk(),
            None
        );
        assert_eq!(Timing::default().inter_chunk(), None);
    }
}
