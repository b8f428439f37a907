//! Explicit context caches: `cachedContents` create, get, list, update
//! (the TTL) and delete, and the lookup of the cache a `generateContent`
//! request names in `cachedContent`.
//!
//! A cache holds a system instruction and contents; a request that names it
//! is answered as if they came first, and its `cachedContentTokenCount`
//! is the cache's whole size. Caches smaller than
//! [`MIN_CACHE_TOKENS`] are refused, as Google refuses them; an expired
//! cache is gone.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use serde_json::{json, Value};

use super::super::answer::{self, Task};
use super::super::ServerState;
use super::call::Method;
use super::wire::{self, field, CachedPrefix};
use super::{empty, lock, Keyed};
use crate::ai::types::format_utc;

/// The smallest cache Google creates (Gemini 2.5 Flash's minimum; larger
/// models want more).
pub const MIN_CACHE_TOKENS: u64 = 1024;
/// TTL of a cache created without one.
const DEFAULT_TTL: Duration = Duration::from_secs(3600);

struct Cached {
    prefix: CachedPrefix,
    display_name: Option<String>,
    created: SystemTime,
    updated: SystemTime,
    expires: SystemTime,
}

#[derive(Default)]
pub(super) struct Caches {
    by_name: BTreeMap<String, Cached>,
}

impl Caches {
    pub fn live(&self) -> u64 {
        let now = SystemTime::now();
        self.by_name.values().filter(|c| c.expires > now).count() as u64
    }

    fn find(&self, name: &str) -> Option<&Cached> {
        self.by_name
            .get(name)
            .filter(|c| c.expires > SystemTime::now())
    }
}

fn not_found() -> Response {
    wire::error(
        StatusCode::FORBIDDEN,
        "CachedContent not found (or permission denied)",
    )
}

fn object(name: &str, c: &Cached) -> Value {
    let mut v = json!({
        "name": name,
        "model": format!("models/{}", c.prefix.model),
        "createTime": format_utc(c.created),
        "updateTime": format_utc(c.updated),
        "expireTime": format_utc(c.expires),
        "usageMetadata": {"totalTokenCount": c.prefix.tokens},
    });
    if let Some(d) = &c.display_name {
        v["displayName"] = json!(d);
    }
    v
}

/// The expiry a body asks for: `ttl` ("300s") or `expireTime`.
fn expiry(body: &serde_json::Map<String, Value>) -> Result<Option<SystemTime>, String> {
    if let Some(ttl) = field(body, "ttl") {
        let d = ttl
            .as_str()
            .and_then(wire::parse_duration)
            .ok_or("* CachedContent.ttl: a duration like \"300s\"")?;
        return Ok(Some(SystemTime::now() + d));
    }
    if let Some(t) = field(body, "expireTime") {
        let t = t
            .as_str()
            .and_then(crate::ai::types::parse_utc)
            .ok_or("* CachedContent.expire_time: an RFC 3339 timestamp")?;
        return Ok(Some(t));
    }
    Ok(None)
}

/// `POST /v1beta/cachedContents`.
pub(super) async fn create(State(st): State<Arc<ServerState>>, _: Keyed, body: Bytes) -> Response {
    match make(&st, &body) {
        Ok(v) => Json(v).into_response(),
        Err(m) => wire::error(StatusCode::BAD_REQUEST, &m),
    }
}

fn make(st: &ServerState, body: &[u8]) -> Result<Value, String> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| format!("Invalid JSON payload received. {e}"))?;
    let obj = value
        .as_object()
        .ok_or("Invalid JSON payload received. Expected an object.")?;
    let model = field(obj, "model")
        .and_then(Value::as_str)
        .map(|m| m.trim_start_matches("models/").to_string())
        .ok_or("* CachedContent.model: model is not specified")?;
    let contents = field(obj, "contents")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let system = field(obj, "systemInstruction").cloned();
    // The cache's size is what its text costs as a prompt: translate it as
    // a request would be (a cache of a system instruction only needs a turn).
    let probe = CachedPrefix {
        model: model.clone(),
        system: system.clone(),
        contents: contents.clone(),
        tokens: 0,
    };
    let turn = json!({"contents": [{"role": "user", "parts": [{"text": ""}]}]});
    let (chat, _) = wire::translate(&turn, &model, Method::Generate, Some(&probe))?;
    let job = answer::plan(Task::Chat, chat, 0, 1, false)?;
    let tokens = job.prompt_tokens;
    if tokens < MIN_CACHE_TOKENS {
        return Err(format!(
            "Cached content is too small. total_token_count={tokens}, min_total_token_count={MIN_CACHE_TOKENS}"
        ));
    }
    let now = SystemTime::now();
    let expires = expiry(obj)?.unwrap_or(now + DEFAULT_TTL);
    let name = format!("cachedContents/{}", st.gemini.next_id());
    let cached = Cached {
        prefix: CachedPrefix { tokens, ..probe },
        display_name: field(obj, "displayName")
            .and_then(Value::as_str)
            .map(str::to_string),
        created: now,
        updated: now,
        expires,
    };
    let v = object(&name, &cached);
    lock(&st.gemini.caches).by_name.insert(name, cached);
    st.gemini.count(|s| s.caches_created += 1);
    Ok(v)
}

/// `GET /v1beta/cachedContents/{id}`.
pub(super) async fn get(
    State(st): State<Arc<ServerState>>,
    Path(id): Path<String>,
    _: Keyed,
) -> Response {
    let name = format!("cachedContents/{id}");
    match lock(&st.gemini.caches).find(&name) {
        Some(c) => Json(object(&name, c)).into_response(),
        None => not_found(),
    }
}

/// `GET /v1beta/cachedContents`.
pub(super) async fn list(State(st): State<Arc<ServerState>>, _: Keyed) -> Response {
    let caches = lock(&st.gemini.caches);
    let now = SystemTime::now();
    let items: Vec<Value> = caches
        .by_name
        .iter()
        .filter(|(_, c)| c.expires > now)
        .map(|(n, c)| object(n, c))
        .collect();
    Json(json!({"cachedContents": items})).into_response()
}

/// `PATCH /v1beta/cachedContents/{id}`: a new `ttl` or `expireTime`.
pub(super) async fn update(
    State(st): State<Arc<ServerState>>,
    Path(id): Path<String>,
    _: Keyed,
    body: Bytes,
) -> Response {
    let value: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let Some(obj) = value.as_object() else {
        return wire::error(StatusCode::BAD_REQUEST, "Invalid JSON payload received.");
    };
    let expires = match expiry(obj) {
        Ok(e) => e,
        Err(m) => return wire::error(StatusCode::BAD_REQUEST, &m),
    };
    let name = format!("cachedContents/{id}");
    let mut caches = lock(&st.gemini.caches);
    if caches.find(&name).is_none() {
        return not_found();
    }
    let Some(c) = caches.by_name.get_mut(&name) else {
        return not_found();
    };
    if let Some(e) = expires {
        c.expires = e;
    }
    c.updated = SystemTime::now();
    Json(object(&name, c)).into_response()
}

/// `DELETE /v1beta/cachedContents/{id}`.
pub(super) async fn delete(
    State(st): State<Arc<ServerState>>,
    Path(id): Path<String>,
    _: Keyed,
) -> Response {
    let name = format!("cachedContents/{id}");
    let removed = lock(&st.gemini.caches).by_name.remove(&name);
    match removed {
        Some(c) if c.expires > SystemTime::now() => {
            st.gemini.count(|s| s.caches_deleted += 1);
            empty()
        }
        _ => not_found(),
    }
}

/// The cache a `generateContent` body names in `cachedContent`, if any;
/// an unknown or expired one is refused.
pub(super) fn for_request(
    st: &ServerState,
    body: &Value,
) -> Result<Option<CachedPrefix>, Response> {
    let Some(name) = body
        .as_object()
        .and_then(|o| field(o, "cachedContent"))
        .and_then(Value::as_str)
    else {
        return Ok(None);
    };
    let found = lock(&st.gemini.caches).find(name).map(|c| c.prefix.clone());
    match found {
        Some(p) => {
            st.gemini.count(|s| s.cache_uses += 1);
            Ok(Some(p))
        }
        None => Err(not_found()),
    }
}
