//! The simulator's Anthropic Message Batches API: `POST
//! /v1/messages/batches` (`{"requests": [{custom_id, params}]}`), `GET
//! /v1/messages/batches` (newest first; `limit`, `after_id`,
//! `before_id`), `GET /v1/messages/batches/{id}`, `POST
//! /v1/messages/batches/{id}/cancel` and `GET
//! /v1/messages/batches/{id}/results` (JSON Lines, once the batch has
//! ended, not in request order).
//!
//! Each request is answered by the same code as `POST /v1/messages`
//! ([`super::handler::answer_now`]); a request the Messages API would
//! refuse becomes an `errored` result, as Anthropic validates `params`
//! only while processing. The OpenAI Batch API's knobs apply:
//! `--batch-turnaround-ms` (requests answered evenly over it, so a
//! cancelled batch has answered a part), `--batch-fail-rate` (`errored`
//! with `api_error`), `--batch-expire-first`/`--batch-expire-share` (the
//! rest `expired`), `--batch-create-delay-ms`; they count in the same
//! [`super::BatchStats`].

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{FromRequestParts, Path, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use serde_json::{json, Value};
use tokio::sync::Notify;

use super::answer::{self, Api, Task};
use super::batch::{create_delay, plan_line, Pace};
use super::handler::{answer_now, error, Authorized, Refusal};
use super::ServerState;

/// At most this many requests per batch, as Anthropic allows.
const MAX_REQUESTS: usize = 100_000;

struct Stored {
    object: Value,
    results: Vec<Value>,
    cancel: Arc<Notify>,
}

/// Message batches, in memory.
#[derive(Default)]
pub(crate) struct Store {
    batches: Mutex<BTreeMap<u64, Stored>>,
    seq: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn refuse(status: StatusCode, message: &str) -> Response {
    error(&Api::Anthropic, status, "", message)
}

/// The Message Batches API's dialect.
pub(crate) struct Anthropic;

impl Refusal for Anthropic {
    fn unauthorized() -> Response {
        refuse(StatusCode::UNAUTHORIZED, "invalid x-api-key")
    }
}

fn id_of(seq: u64) -> String {
    format!("msgbatch_{seq:020}")
}

fn seq_of(id: &str) -> Option<u64> {
    id.strip_prefix("msgbatch_")?.parse().ok()
}

fn now_rfc3339(after: Duration) -> String {
    super::anthropic::rfc3339_after(after)
}

fn valid_custom_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// `POST /v1/messages/batches`.
pub(crate) async fn create(
    State(st): State<Arc<ServerState>>,
    _: Authorized<Anthropic>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let requests = match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(mut o)) => match o.remove("requests") {
            Some(Value::Array(r)) => r,
            _ => return refuse(StatusCode::BAD_REQUEST, "requests: Field required"),
        },
        _ => return refuse(StatusCode::BAD_REQUEST, "request body is not a JSON object"),
    };
    if requests.is_empty() || requests.len() > MAX_REQUESTS {
        let m = format!(
            "requests: between 1 and {MAX_REQUESTS} requests, got {}",
            requests.len()
        );
        return refuse(StatusCode::BAD_REQUEST, &m);
    }
    let mut seen = std::collections::HashSet::new();
    let mut lines = Vec::with_capacity(requests.len());
    for r in requests {
        let custom_id = r
            .get("custom_id")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if !valid_custom_id(custom_id) {
            let m = format!("requests: custom_id {custom_id:?} must match ^[a-zA-Z0-9_-]{{1,64}}$");
            return refuse(StatusCode::BAD_REQUEST, &m);
        }
        if !seen.insert(custom_id.to_string()) {
            let m = format!("requests: duplicate custom_id {custom_id:?}");
            return refuse(StatusCode::BAD_REQUEST, &m);
        }
        let Some(params) = r.get("params").filter(|p| p.is_object()) else {
            return refuse(StatusCode::BAD_REQUEST, "requests: params: Field required");
        };
        if params.get("stream").and_then(Value::as_bool) == Some(true) {
            return refuse(
                StatusCode::BAD_REQUEST,
                "requests: streaming is not supported in batches",
            );
        }
        lines.push((custom_id.to_string(), params.clone()));
    }
    let seq = st.anthropic_batches.seq.fetch_add(1, Ordering::Relaxed) + 1;
    let n = lines.len();
    let object = json!({
        "id": id_of(seq),
        "type": "message_batch",
        "processing_status": "in_progress",
        "request_counts": {"processing": n, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0},
        "ended_at": null,
        "created_at": now_rfc3339(Duration::ZERO),
        "expires_at": now_rfc3339(Duration::from_secs(24 * 3600)),
        "archived_at": null,
        "cancel_initiated_at": null,
        "results_url": null,
    });
    let cancel = Arc::new(Notify::new());
    let expire = st.batches.open(n, &st.cfg);
    lock(&st.anthropic_batches.batches).insert(
        seq,
        Stored {
            object: object.clone(),
            results: Vec::new(),
            cancel: cancel.clone(),
        },
    );
    let base = base_url(&st, &headers);
    tokio::spawn(process(st.clone(), seq, lines, expire, cancel, base));
    create_delay(&st.cfg).await;
    Json(object).into_response()
}

/// The base URL the client reached us at, for `results_url`.
fn base_url(st: &ServerState, headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1");
    let scheme = if st.cfg.tls { "https" } else { "http" };
    format!("{scheme}://{host}")
}

/// Answers a batch's requests over the turnaround, until done, cancelled
/// or (expiring) `expire` are answered.
async fn process(
    st: Arc<ServerState>,
    seq: u64,
    lines: Vec<(String, Value)>,
    expire: Option<usize>,
    cancel: Arc<Notify>,
    base: String,
) {
    let n = lines.len();
    let pace = Pace::new(&st.cfg, n);
    let mut results = Vec::with_capacity(n);
    // Tallied as results come: counting them again each time was
    // quadratic (minutes for 10,000 requests in a debug build).
    let mut counts =
        json!({"processing": n, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0});
    let mut ended_by: Option<&str> = None;
    for (i, (custom_id, params)) in lines.iter().enumerate() {
        if expire == Some(i) {
            ended_by = Some("expired");
        }
        if ended_by.is_none() {
            let cancelled = !pace.until(i, &cancel).await;
            let canceling = lock(&st.anthropic_batches.batches)
                .get(&seq)
                .is_some_and(|b| b.object["processing_status"] == "canceling");
            if cancelled || canceling {
                ended_by = Some("canceled");
            }
        }
        let result = match ended_by {
            Some(how) => json!({"type": how}),
            None => answer(&st, params),
        };
        let kind = result["type"].as_str().unwrap_or("errored").to_string();
        results.push(json!({"custom_id": custom_id, "result": result}));
        for (key, step) in [(kind.as_str(), 1i64), ("processing", -1)] {
            counts[key] = json!(counts[key].as_i64().unwrap_or(0) + step);
        }
        if let Some(b) = lock(&st.anthropic_batches.batches).get_mut(&seq) {
            b.object["request_counts"] = counts.clone();
        }
    }
    if ended_by == Some("canceled") {
        st.batches.count(|s| s.cancelled += 1);
    }
    // Not in request order, as Anthropic warns.
    results.reverse();
    if let Some(b) = lock(&st.anthropic_batches.batches).get_mut(&seq) {
        b.object["processing_status"] = json!("ended");
        b.object["ended_at"] = json!(now_rfc3339(Duration::ZERO));
        b.object["request_counts"] = counts;
        b.object["results_url"] =
            json!(format!("{base}/v1/messages/batches/{}/results", id_of(seq)));
        b.results = results;
    }
}

/// One request's result, as `POST /v1/messages` would answer it (Bedrock
/// batch records too).
pub(crate) fn answer(st: &ServerState, params: &Value) -> Value {
    let planned = super::anthropic::to_openai(params.clone())
        .map_err(|m| (StatusCode::BAD_REQUEST, m))
        .and_then(|(body, answer_tool)| {
            let job = plan_line(st, Task::Chat, body, true)?;
            Ok(answer::Job { answer_tool, ..job })
        });
    match planned {
        Ok(job) => json!({"type": "succeeded", "message": answer_now(st, &Api::Anthropic, job)}),
        Err((status, m)) => {
            json!({"type": "errored", "error": super::anthropic::error_body(status, &m)})
        }
    }
}

/// The batch a `/v1/messages/batches/{id}` route names (its sequence
/// number), for a caller with the key; else the refusal.
pub(crate) struct Named(u64);

impl FromRequestParts<Arc<ServerState>> for Named {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        st: &Arc<ServerState>,
    ) -> Result<Named, Response> {
        Authorized::<Anthropic>::from_request_parts(parts, st).await?;
        let Path(id) = Path::<String>::from_request_parts(parts, st)
            .await
            .map_err(IntoResponse::into_response)?;
        seq_of(&id)
            .filter(|s| lock(&st.anthropic_batches.batches).contains_key(s))
            .map(Named)
            .ok_or_else(|| not_found(&id))
    }
}

fn not_found(id: &str) -> Response {
    refuse(
        StatusCode::NOT_FOUND,
        &format!("message batch {id} not found"),
    )
}

/// `GET /v1/messages/batches/{id}`.
pub(crate) async fn get(State(st): State<Arc<ServerState>>, Named(seq): Named) -> Response {
    let object = lock(&st.anthropic_batches.batches)
        .get(&seq)
        .map(|b| b.object.clone());
    Json(object).into_response()
}

/// `POST /v1/messages/batches/{id}/cancel`: canceling until the running
/// request is done, then ended.
pub(crate) async fn cancel(State(st): State<Arc<ServerState>>, Named(seq): Named) -> Response {
    let mut batches = lock(&st.anthropic_batches.batches);
    let Some(b) = batches.get_mut(&seq) else {
        return not_found(&id_of(seq));
    };
    if b.object["processing_status"] == "in_progress" {
        b.object["processing_status"] = json!("canceling");
        b.object["cancel_initiated_at"] = json!(now_rfc3339(Duration::ZERO));
        b.cancel.notify_one();
    }
    Json(b.object.clone()).into_response()
}

/// `GET /v1/messages/batches/{id}/results`: JSON Lines, once ended.
pub(crate) async fn results(State(st): State<Arc<ServerState>>, Named(seq): Named) -> Response {
    let batches = lock(&st.anthropic_batches.batches);
    let Some(b) = batches
        .get(&seq)
        .filter(|b| b.object["processing_status"] == "ended")
    else {
        let id = id_of(seq);
        let m = format!("message batch {id} has not ended yet: its results are not available");
        return refuse(StatusCode::BAD_REQUEST, &m);
    };
    let mut text = String::new();
    for r in &b.results {
        text.push_str(&r.to_string());
        text.push('\n');
    }
    ([(header::CONTENT_TYPE, "application/x-jsonl")], text).into_response()
}

/// `GET /v1/messages/batches`: newest first, a page of `limit` (default
/// 20) after `after_id` or before `before_id`.
pub(crate) async fn list(
    State(st): State<Arc<ServerState>>,
    uri: Uri,
    _: Authorized<Anthropic>,
) -> Response {
    let param = |key: &str| super::batch::query_param(&uri, key);
    let limit = param("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .unwrap_or(20)
        .clamp(1, 1000);
    let after = param("after_id").and_then(|i| seq_of(&i));
    let before = param("before_id").and_then(|i| seq_of(&i));
    let batches = lock(&st.anthropic_batches.batches);
    let newest_first: Vec<&Stored> = batches
        .iter()
        .rev()
        .filter(|(s, _)| after.is_none_or(|a| **s < a) && before.is_none_or(|b| **s > b))
        .map(|(_, b)| b)
        .collect();
    let page: Vec<Value> = newest_first
        .iter()
        .take(limit)
        .map(|b| b.object.clone())
        .collect();
    Json(json!({
        "data": page,
        "has_more": newest_first.len() > limit,
        "first_id": page.first().map(|b| b["id"].clone()),
        "last_id": page.last().map(|b| b["id"].clone()),
    }))
    .into_response()
}
