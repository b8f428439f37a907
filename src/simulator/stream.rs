//! Streamed replies (`"stream": true`): server-sent events paced like a
//! decoding model.
//!
//! The first chunk (role and first token) comes after the time to first
//! token, then one chunk per token (about four bytes of text) every
//! `itl_ms`, then a chunk with `finish_reason`, then `data: [DONE]`.
//! Databricks puts `usage` in every chunk; OpenAI only in one final chunk
//! with no choices, and only when `stream_options.include_usage` is set.
//! The request counts as successful (and its prefix is cached) when the
//! last event is sent; a client that hangs up earlier leaves no success.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::Response;
use bytes::Bytes;
use serde_json::Value;

use super::answer::{first_token_delay, model_name, reply_id, Api, Job, Reply};
use super::SimConfig;
use crate::ai::tokens::BYTES_PER_TOKEN;
use crate::provider::wire::{
    ChatChunk, ChunkChoice, CompletionChoice, CompletionResponse, Delta, WireUsage,
};

/// Called once the last event has been handed to the connection.
pub(crate) type Done = Box<dyn FnOnce() + Send>;

/// `text` cut into pieces of about one token, on char boundaries.
pub(crate) fn pieces(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let mut end = BYTES_PER_TOKEN.min(rest.len());
        while !rest.is_char_boundary(end) {
            end += 1;
        }
        out.push(&rest[..end]);
        rest = &rest[end..];
    }
    out
}

fn event(payload: &impl serde::Serialize) -> Bytes {
    let json = serde_json::to_string(payload).unwrap_or_else(|_| "{}".to_string());
    Bytes::from(format!("data: {json}\n\n"))
}

/// When a model decoding a reply sends each token: the first after the
/// time to first token, each later one `itl_ms` after the one before. One
/// rule for every API's stream (OpenAI's, Anthropic's, Converse's).
pub(crate) struct Pacing {
    next: Duration,
    itl: Duration,
}

impl Pacing {
    pub(crate) fn new(cfg: &SimConfig, job: &Job, cached: u64) -> Pacing {
        Pacing {
            next: first_token_delay(cfg, job.prompt_tokens, cached),
            itl: Duration::from_secs_f64((cfg.itl_ms / 1e3).max(0.0)),
        }
    }

    /// The delay before the next token.
    pub(crate) fn token(&mut self) -> Duration {
        std::mem::replace(&mut self.next, self.itl)
    }

    /// The delay before what ends the reply: as long as a next token's
    /// (the time to first token when no token was sent).
    pub(crate) fn end(&self) -> Duration {
        self.next
    }
}

/// The event stream for `job`, with its pacing.
pub(crate) fn respond(
    cfg: &SimConfig,
    api: &Api,
    job: Job,
    usage: WireUsage,
    cached: u64,
    extra_headers: HeaderMap,
    done: Done,
) -> Response {
    let mut pace = Pacing::new(cfg, &job, cached);
    // Databricks repeats usage in every chunk; OpenAI sends it once at the end.
    let every = api.is_databricks().then(|| usage.clone());
    let mut frames: VecDeque<(Duration, Bytes)> = VecDeque::new();
    let mut push = |frames: &mut VecDeque<(Duration, Bytes)>, b: Bytes| {
        frames.push_back((pace.token(), b));
    };
    if let (Api::Gemini(call), Reply::Chat { content, .. }) = (api, &job.reply) {
        // Google's chunks: no role deltas, no `[DONE]`.
        let text = super::gemini::wire::streamed_text(call, content.as_deref().unwrap_or(""));
        for e in super::gemini::wire::stream_events(call, &job, &usage, &pieces(&text)) {
            push(&mut frames, e);
        }
        return paced(frames, done, extra_headers);
    }
    let model = model_name(api, &job);
    match &job.reply {
        Reply::Chat {
            content,
            tool_calls,
            finish_reason,
        } => {
            let id = Some(reply_id("chatcmpl", &job));
            let chunk = |delta: Delta, finish: Option<&str>| ChatChunk {
                id: id.clone(),
                choices: vec![ChunkChoice {
                    index: 0,
                    delta,
                    finish_reason: finish.map(str::to_string),
                }],
                usage: every.clone(),
            };
            let role = || Some("assistant".to_string());
            let text = content.as_deref().unwrap_or("");
            let parts = pieces(text);
            if let Some(calls) = tool_calls {
                // `Delta` has no tool_calls field: add it to the JSON.
                let mut v = serde_json::to_value(chunk(
                    Delta {
                        role: role(),
                        content: None,
                    },
                    None,
                ))
                .unwrap_or_default();
                if let Some(d) = v
                    .pointer_mut("/choices/0/delta")
                    .and_then(Value::as_object_mut)
                {
                    d.insert("tool_calls".into(), calls.clone());
                }
                push(&mut frames, event(&v));
            } else if parts.is_empty() {
                let delta = Delta {
                    role: role(),
                    content: Some(Value::String(String::new())),
                };
                push(&mut frames, event(&chunk(delta, None)));
            }
            for (i, p) in parts.iter().enumerate() {
                let delta = Delta {
                    role: if i == 0 { role() } else { None },
                    content: Some(Value::String(p.to_string())),
                };
                push(&mut frames, event(&chunk(delta, None)));
            }
            push(
                &mut frames,
                event(&chunk(Delta::default(), Some(finish_reason))),
            );
            if job.include_usage && !api.is_databricks() {
                let last = ChatChunk {
                    id: id.clone(),
                    choices: vec![],
                    usage: Some(usage.clone()),
                };
                push(&mut frames, event(&last));
            }
        }
        Reply::Completion { choices } => {
            let id = Some(reply_id("cmpl", &job));
            let chunk = |index: usize, text: &str, finish: Option<&str>| CompletionResponse {
                id: id.clone(),
                model: Some(model.clone()),
                choices: vec![CompletionChoice {
                    index: index as u32,
                    text: text.to_string(),
                    finish_reason: finish.map(str::to_string),
                }],
                usage: every.clone(),
            };
            for (i, (text, finish)) in choices.iter().enumerate() {
                for p in pieces(text) {
                    push(&mut frames, event(&chunk(i, p, None)));
                }
                push(&mut frames, event(&chunk(i, "", Some(finish))));
            }
            if job.include_usage && !api.is_databricks() {
                let last = CompletionResponse {
                    id: id.clone(),
                    model: Some(model.clone()),
                    choices: vec![],
                    usage: Some(usage.clone()),
                };
                push(&mut frames, event(&last));
            }
        }
        // Embeddings have no streaming form; `plan` never sets `stream` for them.
        Reply::Embedding { .. } => {}
    }
    frames.push_back((Duration::ZERO, Bytes::from_static(b"data: [DONE]\n\n")));
    paced(frames, done, extra_headers)
}

/// `frames` sent as an event stream, each after its delay; `done` runs
/// once the last is handed to the connection.
pub(crate) fn paced(
    frames: VecDeque<(Duration, Bytes)>,
    done: Done,
    extra_headers: HeaderMap,
) -> Response {
    // Each frame is due at a fixed offset from now, not a delay after the
    // previous one: sleeps overshoot (timer granularity, scheduling), and
    // chained delays would add every overshoot up, making a 5 ms
    // inter-token latency come out near 6.
    let state = (frames, Some(done), tokio::time::Instant::now());
    let body = futures::stream::unfold(state, |(mut frames, mut done, mut due)| async move {
        let (delay, bytes) = frames.pop_front()?;
        if !delay.is_zero() {
            due += delay;
            tokio::time::sleep_until(due).await;
        }
        if frames.is_empty() {
            if let Some(f) = done.take() {
                f();
            }
        }
        Some((Ok::<_, Infallible>(bytes), (frames, done, due)))
    });
    let mut resp = Response::new(Body::from_stream(body));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.extend(extra_headers);
    resp
}

#[cfg(test)]
mod tests {
    #[test]
    fn pieces_are_about_one_token_on_char_boundaries() {
        assert_eq!(super::pieces("echo: hi"), vec!["echo", ": hi"]);
        assert_eq!(super::pieces("aaaéb"), vec!["aaaé", "b"]);
        assert!(super::pieces("").is_empty());
    }
}
