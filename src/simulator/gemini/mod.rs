//! The Gemini API (`generativelanguage.googleapis.com`, `v1beta`), as
//! Google documents it: `models/{model}:generateContent`,
//! `:streamGenerateContent?alt=sse`, `:embedContent`, `:batchEmbedContents`,
//! explicit context caches (`cachedContents`) and the Batch API
//! (`:batchGenerateContent`, `batches/{id}`, `batches/{id}:cancel`).
//!
//! A request is translated into the chat request the rest of the simulator
//! answers ([`wire::translate`]) and goes through the same pipeline as the
//! OpenAI routes ([`super::handler::handle`]): faults, limits, the implicit
//! prefix cache, latency and typed answers are the same knobs. Only the
//! edges are Google's: the key (`x-goog-api-key`, or `?key=`; a wrong one
//! is a 400 `INVALID_ARGUMENT` with reason `API_KEY_INVALID`, a missing one
//! a 403), error bodies (`{"error":{"code","message","status","details"}}`),
//! a 429 that says when to come back in a `google.rpc.RetryInfo`
//! `retryDelay` and no rate-limit headers, `usageMetadata`, and SSE events
//! without a `[DONE]`. Files (`fileName` batch input) are not simulated.

mod batch;
mod caches;
pub(crate) mod call;
pub(crate) mod wire;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;

use super::answer::{Api, Task};
use super::handler;
use super::stats::bump;
use super::{RetryAfterHint, ServerState, SimConfig};
use call::Method;

/// What the Gemini routes have seen, for tests.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct GeminiStats {
    /// `cachedContents` created, deleted, and alive now.
    pub caches_created: u64,
    pub caches_deleted: u64,
    pub caches_live: u64,
    /// generateContent calls that named a `cachedContent`.
    pub cache_uses: u64,
    /// Batches created, their requests, and batches cancelled.
    pub batches: u64,
    pub batch_requests: u64,
    pub batches_cancelled: u64,
    /// Requests refused for a wrong or missing key.
    pub bad_keys: u64,
}

/// The Gemini routes' own state: explicit caches and batches.
#[derive(Default)]
pub(crate) struct Store {
    caches: Mutex<caches::Caches>,
    batches: Mutex<batch::Batches>,
    seq: AtomicU64,
    stats: Mutex<GeminiStats>,
}

impl Store {
    pub fn stats(&self) -> GeminiStats {
        let mut s = lock(&self.stats).clone();
        s.caches_live = lock(&self.caches).live();
        s
    }

    /// A fresh id for a cache or a batch.
    fn next_id(&self) -> String {
        let n = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        blake3::hash(&n.to_le_bytes()).to_hex()[..12].to_string()
    }

    fn count(&self, f: impl FnOnce(&mut GeminiStats)) {
        f(&mut lock(&self.stats));
    }
}

/// A poisoned lock only means a handler panicked mid-update; the maps are
/// still usable.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The Gemini routes, for the simulator's router.
pub(crate) fn routes() -> Router<Arc<ServerState>> {
    Router::new()
        .route("/v1beta/models/{call}", post(models))
        .route(
            "/v1beta/cachedContents",
            post(caches::create).get(caches::list),
        )
        .route(
            "/v1beta/cachedContents/{id}",
            get(caches::get)
                .delete(caches::delete)
                .patch(caches::update),
        )
        .route("/v1beta/batches", get(batch::list))
        .route(
            "/v1beta/batches/{call}",
            get(batch::get).post(batch::cancel).delete(batch::delete),
        )
}

/// The key of a request: `x-goog-api-key`, the `key` query parameter, or
/// an OAuth bearer token (Google takes all three).
fn key_of<'a>(headers: &'a HeaderMap, query: Option<&'a str>) -> Option<&'a str> {
    if let Some(k) = headers.get("x-goog-api-key").and_then(|v| v.to_str().ok()) {
        return Some(k.trim());
    }
    if let Some(k) = query.and_then(|q| {
        q.split('&')
            .find_map(|kv| kv.strip_prefix("key="))
            .filter(|k| !k.is_empty())
    }) {
        return Some(k);
    }
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

/// Refuses a request without the configured key, the way Google does: a
/// wrong key is a 400 `API_KEY_INVALID`, no key at all a 403.
fn check_key(st: &ServerState, headers: &HeaderMap, query: Option<&str>) -> Result<(), Response> {
    let Some(want) = &st.cfg.token else {
        return Ok(());
    };
    let refused = match key_of(headers, query) {
        Some(k) if k == want => return Ok(()),
        // Never echo what was received: it may be someone's real key.
        Some(_) => wire::api_key_invalid(),
        None => wire::error(
            StatusCode::FORBIDDEN,
            "Method doesn't allow unregistered callers (callers without established identity). Please use API Key or other form of API consumer identity to call this API.",
        ),
    };
    bump(&st.counters.unauthorized);
    st.gemini.count(|s| s.bad_keys += 1);
    Err(refused)
}

/// A request whose key checked out: handlers that take it need not check.
pub(super) struct Keyed;

impl axum::extract::FromRequestParts<Arc<ServerState>> for Keyed {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        st: &Arc<ServerState>,
    ) -> Result<Keyed, Response> {
        check_key(st, &parts.headers, parts.uri.query()).map(|()| Keyed)
    }
}

/// `POST /v1beta/models/{model}:{method}`.
async fn models(
    State(st): State<Arc<ServerState>>,
    Path(call): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(refused) = check_key(&st, &headers, query.as_deref()) {
        // Counted as an inference request, as the OpenAI routes count theirs.
        bump(&st.counters.requests);
        return refused;
    }
    let Some((model, method)) = call.rsplit_once(':') else {
        return wire::error(
            StatusCode::NOT_FOUND,
            &format!("models/{call} is not a method"),
        );
    };
    let method = match method {
        "generateContent" => Method::Generate,
        "streamGenerateContent" => Method::Stream,
        "embedContent" => Method::EmbedOne,
        "batchEmbedContents" => Method::EmbedBatch,
        "batchGenerateContent" => return batch::create(st, model, body).await,
        other => {
            bump(&st.counters.not_found);
            return wire::error(
                StatusCode::NOT_FOUND,
                &format!("Method {other:?} of models/{model} is not found (the simulator serves generateContent, streamGenerateContent, embedContent, batchEmbedContents and batchGenerateContent)."),
            );
        }
    };
    if method == Method::Stream && !query.as_deref().is_some_and(|q| q.contains("alt=sse")) {
        bump(&st.counters.bad_request);
        return wire::error(
            StatusCode::BAD_REQUEST,
            "The simulator streams server-sent events only: add ?alt=sse.",
        );
    }
    let value: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            bump(&st.counters.bad_request);
            return wire::error(
                StatusCode::BAD_REQUEST,
                &format!("Invalid JSON payload received. {e}"),
            );
        }
    };
    let translated = match method {
        Method::EmbedOne | Method::EmbedBatch => wire::embed_request(&value, model, method),
        _ => {
            let cached = match caches::for_request(&st, &value) {
                Ok(c) => c,
                Err(refused) => return refused,
            };
            wire::translate(&value, model, method, cached.as_ref())
        }
    };
    let (chat, call) = match translated {
        Ok(t) => t,
        Err(message) => {
            bump(&st.counters.bad_request);
            return wire::error(StatusCode::BAD_REQUEST, &message);
        }
    };
    let task = match method {
        Method::EmbedOne | Method::EmbedBatch => Task::Embedding,
        _ => Task::Chat,
    };
    answer(&st, Api::Gemini(call), task, &chat).await
}

/// Answers a translated request through the shared pipeline, then gives
/// the reply Google's edges.
async fn answer(st: &Arc<ServerState>, api: Api, task: Task, chat: &Value) -> Response {
    let body = Bytes::from(serde_json::to_vec(chat).unwrap_or_default());
    // The key was checked above, Google's way; the shared pipeline checks
    // the bearer token, so it gets the one it wants.
    let mut headers = HeaderMap::new();
    if let Some(token) = &st.cfg.token {
        if let Ok(v) = HeaderValue::try_from(format!("Bearer {token}")) {
            headers.insert(header::AUTHORIZATION, v);
        }
    }
    let resp = handler::handle(st.clone(), api, Some(task), headers, body).await;
    google_edges(&st.cfg, resp)
}

/// Google sends no rate-limit headers and no `Retry-After`: a 429 says when
/// to come back in its body, as a `google.rpc.RetryInfo`.
fn google_edges(cfg: &SimConfig, mut resp: Response) -> Response {
    let wait = retry_wait(resp.headers());
    let h = resp.headers_mut();
    let names: Vec<_> = h
        .keys()
        .filter(|n| n.as_str().starts_with("x-ratelimit-") || n.as_str().starts_with("retry-after"))
        .cloned()
        .collect();
    for n in names {
        h.remove(n);
    }
    if resp.status() != StatusCode::TOO_MANY_REQUESTS {
        return resp;
    }
    let delay = match cfg.retry_after {
        RetryAfterHint::None => None,
        RetryAfterHint::Seconds => Some(format!("{}s", wait.as_secs_f64().ceil().max(1.0))),
        RetryAfterHint::Precise => Some(wire::duration(wait)),
    };
    wire::resource_exhausted(delay.as_deref())
}

/// The wait a 429 of the shared pipeline announces in its headers.
fn retry_wait(h: &HeaderMap) -> Duration {
    let num = |name: &str| {
        h.get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
    };
    match (num("retry-after-ms"), num("retry-after")) {
        (Some(ms), _) => Duration::from_millis(ms),
        (None, Some(s)) => Duration::from_secs(s),
        (None, None) => Duration::from_secs(1),
    }
}

/// `{}`: what Google answers to a delete or a cancel.
fn empty() -> Response {
    Json(serde_json::json!({})).into_response()
}
