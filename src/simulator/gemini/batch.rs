//! The Gemini Batch API: `models/{model}:batchGenerateContent` with inline
//! requests (`inputConfig.requests.requests[]`, each a `request` and its
//! `metadata`), `batches/{id}` (get, delete), `batches/{id}:cancel` and the
//! list. A batch is a long-running `Operation` whose `metadata` is the
//! `GenerateContentBatch` (`state` `BATCH_STATE_*`, `batchStats` with
//! int64 counts as strings) and whose `response`, once `done`, holds the
//! `inlinedResponses` in request order, each with its request's `metadata`
//! and either a `response` or an `error` (a `google.rpc.Status`).
//!
//! Each request is answered by the online code
//! ([`super::super::handler::answer_now`]), one after another over
//! `--batch-turnaround-ms`, so a cancelled or expired batch has answered a
//! part, and keeps those answers. Knobs shared with the OpenAI Batch API:
//! `--batch-fail-rate` (a request fails with `INTERNAL`),
//! `--batch-expire-first` / `--batch-expire-share`, and
//! `--batch-create-delay-ms`. Inline input is refused above Google's 20 MB.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use serde_json::{json, Value};
use tokio::sync::Notify;

use super::super::answer::{Api, Task};
use super::super::batch::{create_delay, plan_line, Pace};
use super::super::handler::answer_now;
use super::super::ServerState;
use super::call::{Call, Method};
use super::wire::{self, field};
use super::{caches, empty, lock, Keyed};
use crate::ai::types::format_utc;

/// Google's limit on an inline batch request.
pub const MAX_INLINE_BYTES: usize = 20 << 20;

const BATCH_TYPE: &str =
    "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatch";
const OUTPUT_TYPE: &str =
    "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatchOutput";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BatchState {
    Pending,
    Running,
    Succeeded,
    Cancelled,
    Expired,
}

impl BatchState {
    fn name(self) -> &'static str {
        match self {
            BatchState::Pending => "BATCH_STATE_PENDING",
            BatchState::Running => "BATCH_STATE_RUNNING",
            BatchState::Succeeded => "BATCH_STATE_SUCCEEDED",
            BatchState::Cancelled => "BATCH_STATE_CANCELLED",
            BatchState::Expired => "BATCH_STATE_EXPIRED",
        }
    }

    fn done(self) -> bool {
        matches!(
            self,
            BatchState::Succeeded | BatchState::Cancelled | BatchState::Expired
        )
    }
}

/// One inline request: its chat translation (or why it cannot be
/// answered) and its metadata.
struct Line {
    metadata: Option<Value>,
    planned: Result<(Value, Call), String>,
}

struct Batch {
    model: String,
    display_name: String,
    state: BatchState,
    created: SystemTime,
    updated: SystemTime,
    ended: Option<SystemTime>,
    total: usize,
    /// Answers so far, in request order.
    responses: Vec<Value>,
    failed: usize,
    cancel: Arc<Notify>,
}

#[derive(Default)]
pub(super) struct Batches {
    by_name: BTreeMap<String, (u64, Batch)>,
}

fn counts(b: &Batch) -> Value {
    let answered = b.responses.len();
    json!({
        "requestCount": b.total.to_string(),
        "successfulRequestCount": (answered - b.failed).to_string(),
        "failedRequestCount": b.failed.to_string(),
        "pendingRequestCount": (if b.state.done() { 0 } else { b.total - answered }).to_string(),
    })
}

/// The batch as Google returns it: an `Operation`.
fn operation(name: &str, b: &Batch) -> Value {
    let output = json!({"inlinedResponses": {"inlinedResponses": b.responses}});
    let mut meta = json!({
        "@type": BATCH_TYPE,
        "name": name,
        "model": format!("models/{}", b.model),
        "displayName": b.display_name,
        "createTime": format_utc(b.created),
        "updateTime": format_utc(b.updated),
        "batchStats": counts(b),
        "state": b.state.name(),
    });
    let mut op = json!({"name": name, "metadata": meta.clone()});
    if b.state.done() {
        if let Some(t) = b.ended {
            meta["endTime"] = json!(format_utc(t));
        }
        meta["output"] = output.clone();
        let mut response = output;
        response["@type"] = json!(OUTPUT_TYPE);
        op = json!({"name": name, "metadata": meta, "done": true, "response": response});
    }
    op
}

fn not_found(name: &str) -> Response {
    wire::error(
        StatusCode::NOT_FOUND,
        &format!("Requested entity was not found. ({name})"),
    )
}

/// `POST /v1beta/models/{model}:batchGenerateContent` (the key is checked).
pub(super) async fn create(st: Arc<ServerState>, model: &str, body: Bytes) -> Response {
    if body.len() > MAX_INLINE_BYTES {
        return wire::error(
            StatusCode::BAD_REQUEST,
            &format!("Request payload size exceeds the limit: {MAX_INLINE_BYTES} bytes."),
        );
    }
    let (display_name, lines) = match parse(&st, model, &body) {
        Ok(l) => l,
        Err(m) => return wire::error(StatusCode::BAD_REQUEST, &m),
    };
    let name = format!("batches/{}", st.gemini.next_id());
    let now = SystemTime::now();
    let cancel = Arc::new(Notify::new());
    let batch = Batch {
        model: model.to_string(),
        display_name,
        state: BatchState::Pending,
        created: now,
        updated: now,
        ended: None,
        total: lines.len(),
        responses: Vec::new(),
        failed: 0,
        cancel: cancel.clone(),
    };
    let reply = operation(&name, &batch);
    {
        let mut batches = lock(&st.gemini.batches);
        let seq = batches.by_name.len() as u64;
        batches.by_name.insert(name.clone(), (seq, batch));
    }
    // Counted with the other Batch APIs' batches, under the same knobs.
    let expire = st.batches.open(lines.len(), &st.cfg);
    st.gemini.count(|s| {
        s.batches += 1;
        s.batch_requests += lines.len() as u64;
    });
    tokio::spawn(process(st.clone(), name, lines, expire, cancel));
    create_delay(&st.cfg).await;
    Json(reply).into_response()
}

/// The display name and the requests of a create body; a malformed body
/// is refused whole, a request the model cannot answer fails alone.
fn parse(st: &ServerState, model: &str, body: &[u8]) -> Result<(String, Vec<Line>), String> {
    let bad = |m: String| m;
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| bad(format!("Invalid JSON payload received. {e}")))?;
    let batch = value
        .get("batch")
        .and_then(Value::as_object)
        .ok_or_else(|| bad("* BatchGenerateContentRequest.batch: batch is not specified".into()))?;
    let display_name = field(batch, "displayName")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let input = field(batch, "inputConfig")
        .and_then(Value::as_object)
        .ok_or_else(|| bad("* GenerateContentBatch.input_config: required".into()))?;
    if field(input, "fileName").is_some() {
        return Err(bad(
            "The simulator takes inline requests only (inputConfig.requests), not a file.".into(),
        ));
    }
    let requests = field(input, "requests")
        .and_then(|r| r.get("requests"))
        .and_then(Value::as_array)
        .filter(|r| !r.is_empty())
        .ok_or_else(|| {
            bad("* GenerateContentBatch.input_config.requests.requests: no requests".into())
        })?;
    let mut lines = Vec::with_capacity(requests.len());
    for (i, r) in requests.iter().enumerate() {
        let request = r.get("request").ok_or_else(|| {
            bad(format!(
                "* GenerateContentBatch.input_config.requests.requests[{i}].request: required"
            ))
        })?;
        let planned = match caches::for_request(st, request) {
            Ok(cached) => wire::translate(request, model, Method::Generate, cached.as_ref()),
            Err(_) => Err("CachedContent not found (or permission denied)".to_string()),
        };
        lines.push(Line {
            metadata: r.get("metadata").cloned(),
            planned,
        });
    }
    Ok((display_name, lines))
}

/// Answers a batch's requests one by one over the turnaround, until done,
/// cancelled, or (for an expiring batch) `expire` are answered.
async fn process(
    st: Arc<ServerState>,
    name: String,
    lines: Vec<Line>,
    expire: Option<usize>,
    cancel: Arc<Notify>,
) {
    let set = |f: &mut dyn FnMut(&mut Batch) -> bool| -> bool {
        let mut batches = lock(&st.gemini.batches);
        match batches.by_name.get_mut(&name) {
            Some((_, b)) if !b.state.done() => {
                b.updated = SystemTime::now();
                f(b)
            }
            _ => false,
        }
    };
    set(&mut |b| {
        b.state = BatchState::Running;
        true
    });
    let pace = Pace::new(&st.cfg, lines.len());
    for (i, line) in lines.into_iter().enumerate() {
        if expire == Some(i) {
            set(&mut |b| {
                b.state = BatchState::Expired;
                b.ended = Some(SystemTime::now());
                true
            });
            return;
        }
        if !pace.until(i, &cancel).await {
            // The cancel route has set the state; nothing more is answered.
            return;
        }
        let (answer, ok) = answer_line(&st, line);
        // A batch cancelled meanwhile keeps what it had.
        if !set(&mut |b| {
            b.responses.push(answer.clone());
            b.failed += usize::from(!ok);
            true
        }) {
            return;
        }
    }
    set(&mut |b| {
        b.state = BatchState::Succeeded;
        b.ended = Some(SystemTime::now());
        true
    });
}

/// One request answered as the online route would, or its error.
fn answer_line(st: &ServerState, line: Line) -> (Value, bool) {
    let planned = line
        .planned
        .map_err(|m| (StatusCode::BAD_REQUEST, m))
        .and_then(|(chat, call)| Ok((plan_line(st, Task::Chat, chat, false)?, call)));
    let (mut v, ok) = match planned {
        Ok((job, call)) => (
            json!({"response": answer_now(st, &Api::Gemini(call), job)}),
            true,
        ),
        Err((status, m)) => {
            let error = json!({"code": wire::grpc_code(status), "message": m});
            (json!({ "error": error }), false)
        }
    };
    if let Some(m) = line.metadata {
        v["metadata"] = m;
    }
    (v, ok)
}

/// The batch name of a `batches/{id}` or `batches/{id}:cancel` path.
fn split(call: &str) -> (String, Option<&str>) {
    match call.split_once(':') {
        Some((id, verb)) => (format!("batches/{id}"), Some(verb)),
        None => (format!("batches/{call}"), None),
    }
}

/// `GET /v1beta/batches/{id}`.
pub(super) async fn get(
    State(st): State<Arc<ServerState>>,
    Path(call): Path<String>,
    _: Keyed,
) -> Response {
    let (name, _) = split(&call);
    match lock(&st.gemini.batches).by_name.get(&name) {
        Some((_, b)) => Json(operation(&name, b)).into_response(),
        None => not_found(&name),
    }
}

/// `GET /v1beta/batches`: newest first.
pub(super) async fn list(State(st): State<Arc<ServerState>>, _: Keyed) -> Response {
    let batches = lock(&st.gemini.batches);
    let mut all: Vec<_> = batches.by_name.iter().collect();
    all.sort_by_key(|(_, (seq, _))| std::cmp::Reverse(*seq));
    let ops: Vec<Value> = all.iter().map(|(n, (_, b))| operation(n, b)).collect();
    Json(json!({"operations": ops})).into_response()
}

/// `POST /v1beta/batches/{id}:cancel`: an unfinished batch stops at once,
/// keeping the answers it has; a finished one cannot be cancelled.
pub(super) async fn cancel(
    State(st): State<Arc<ServerState>>,
    Path(call): Path<String>,
    _: Keyed,
) -> Response {
    let (name, verb) = split(&call);
    if verb != Some("cancel") {
        return wire::error(StatusCode::NOT_FOUND, &format!("no method {call:?}"));
    }
    let mut batches = lock(&st.gemini.batches);
    let Some((_, b)) = batches.by_name.get_mut(&name) else {
        return not_found(&name);
    };
    if b.state.done() {
        return wire::error(
            StatusCode::BAD_REQUEST,
            &format!(
                "Batch {name} is already in a terminal state ({}).",
                b.state.name()
            ),
        );
    }
    b.state = BatchState::Cancelled;
    b.ended = Some(SystemTime::now());
    b.updated = SystemTime::now();
    b.cancel.notify_one();
    drop(batches);
    st.gemini.count(|s| s.batches_cancelled += 1);
    st.batches.count(|s| s.cancelled += 1);
    empty()
}

/// `DELETE /v1beta/batches/{id}`.
pub(super) async fn delete(
    State(st): State<Arc<ServerState>>,
    Path(call): Path<String>,
    _: Keyed,
) -> Response {
    let (name, _) = split(&call);
    match lock(&st.gemini.batches).by_name.remove(&name) {
        Some(_) => empty(),
        None => not_found(&name),
    }
}
