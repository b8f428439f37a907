//! The simulator's Files and Batch APIs, as OpenAI serves them:
//! `POST /v1/files` (multipart, `purpose=batch`), `GET /v1/files/{id}`,
//! `GET /v1/files/{id}/content`, `POST /v1/batches`, `GET /v1/batches`
//! (newest first, `limit` and `after`), `GET /v1/batches/{id}` and
//! `POST /v1/batches/{id}/cancel`. Wire types are
//! [`crate::provider::batch_api`]'s, shared with the client.
//!
//! Each line is answered by the same code as the online routes
//! ([`super::handler::answer_now`]), so a batch answer is the online answer.
//! Lines are answered one after another over `--batch-turnaround-ms`, so a
//! batch cancelled or expired midway has answered a part. Knobs:
//! - `--batch-fail-rate`: share of lines that fail with a 500 (seeded);
//! - `--batch-expire-first N` / `--batch-expire-share`: the first N batches
//!   expire after answering that share of their lines; the rest are written
//!   to the error file as `batch_expired`;
//! - `--batch-token-cap`: enqueued tokens (prompt + `max_tokens` of every
//!   line of unfinished batches); a batch over it fails with
//!   `token_limit_exceeded`, as OpenAI's do;
//! - `--batch-create-delay-ms`: the batch exists at once but its id comes
//!   back late (a client killed meanwhile must find it by its metadata).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::extract::{Path, State};
use axum::http::Uri;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::Notify;

use super::answer::{self, Api, Marker, Task};
use super::handler::{answer_now, error, Authorized, Refusal};
use super::{ServerState, SimConfig};
use crate::provider::batch_api::{
    BatchError, BatchErrors, BatchList, BatchObject, BatchStatus, CreateBatch, FileObject,
    LineError, LineResponse, OutputLine, RequestCounts, TOKEN_LIMIT_EXCEEDED,
};

/// What the Batch API has done, for tests.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct BatchStats {
    /// Batches created (including those failed at once).
    pub batches: u64,
    /// Request lines in created batches that started running.
    pub lines: u64,
    /// Lines failed by `--batch-fail-rate`.
    pub lines_failed: u64,
    /// Batches failed for the enqueued-token cap.
    pub token_capped: u64,
    pub expired: u64,
    pub cancelled: u64,
}

impl BatchStats {
    /// Counts the `n` lines of a batch that starts running and draws
    /// whether it is one of the `--batch-expire-first` that expire: then
    /// the line it expires at (`--batch-expire-share` of `n`).
    pub(crate) fn start(&mut self, n: usize, cfg: &SimConfig) -> Option<usize> {
        self.lines += n as u64;
        (self.expired < cfg.batch_expire_first).then(|| {
            self.expired += 1;
            (n as f64 * cfg.batch_expire_share).floor() as usize
        })
    }
}

struct StoredFile {
    object: FileObject,
    content: Bytes,
}

struct Stored {
    object: BatchObject,
    /// Enqueued tokens while the batch is unfinished.
    tokens: u64,
    cancel: Arc<Notify>,
}

/// Files and batches, in memory.
pub(crate) struct BatchStore {
    files: Mutex<HashMap<String, StoredFile>>,
    /// By creation sequence: listing is newest first.
    batches: Mutex<BTreeMap<u64, Stored>>,
    seq: AtomicU64,
    rng: Mutex<StdRng>,
    stats: Mutex<BatchStats>,
}

impl BatchStore {
    pub fn new(seed: u64) -> BatchStore {
        BatchStore {
            files: Mutex::new(HashMap::new()),
            batches: Mutex::new(BTreeMap::new()),
            seq: AtomicU64::new(0),
            rng: Mutex::new(StdRng::seed_from_u64(seed ^ 0xba7c4)),
            stats: Mutex::new(BatchStats::default()),
        }
    }

    pub fn stats(&self) -> BatchStats {
        lock(&self.stats).clone()
    }

    /// Update the stats (other batch APIs count in them too).
    pub(crate) fn count<T>(&self, f: impl FnOnce(&mut BatchStats) -> T) -> T {
        f(&mut lock(&self.stats))
    }

    /// A batch of `n` lines created and started ([`BatchStats::start`]).
    pub(crate) fn open(&self, n: usize, cfg: &SimConfig) -> Option<usize> {
        self.count(|s| {
            s.batches += 1;
            s.start(n, cfg)
        })
    }

    /// Whether a line fails by `--batch-fail-rate` (`rate`), counted.
    fn draw_failure(&self, rate: f64) -> bool {
        let fails = rate > 0.0 && lock(&self.rng).random::<f64>() < rate;
        if fails {
            lock(&self.stats).lines_failed += 1;
        }
        fails
    }
}

/// A batch line planned as the online route would plan it, or why it
/// fails instead (status and message): its body refused, a test marker,
/// or a `--batch-fail-rate` draw. Every Batch API answers lines through
/// this, each in its own dialect.
pub(crate) fn plan_line(
    st: &ServerState,
    task: Task,
    body: Value,
    claude: bool,
) -> Result<answer::Job, (StatusCode, String)> {
    let cfg = &st.cfg;
    let job = answer::plan(task, body, cfg.output_tokens, cfg.embedding_dim, claude)
        .map_err(|m| (StatusCode::BAD_REQUEST, m))?;
    let failure = match job.marker {
        Some(Marker::BadRequest) => Some((StatusCode::BAD_REQUEST, "simulated bad request")),
        Some(Marker::ServerError) => {
            Some((StatusCode::INTERNAL_SERVER_ERROR, "simulated server error"))
        }
        None if st.batches.draw_failure(cfg.batch_fail_rate) => Some((
            StatusCode::INTERNAL_SERVER_ERROR,
            "simulated batch line failure",
        )),
        None => None,
    };
    match failure {
        Some((status, message)) => Err((status, message.to_string())),
        None => Ok(job),
    }
}

/// A batch's lines answered evenly over `--batch-turnaround-ms`: line `i`
/// of `n` is due at `(i + 1) / n` of it, so a batch cancelled or expired
/// midway has answered a part.
pub(crate) struct Pace {
    started: tokio::time::Instant,
    turnaround: Duration,
    n: usize,
}

impl Pace {
    pub(crate) fn new(cfg: &SimConfig, n: usize) -> Pace {
        Pace {
            started: tokio::time::Instant::now(),
            turnaround: Duration::from_millis(cfg.batch_turnaround_ms),
            n,
        }
    }

    /// Waits until line `i` is due; false when `cancel` is notified first.
    pub(crate) async fn until(&self, i: usize, cancel: &Notify) -> bool {
        let due = self.started + self.turnaround.mul_f64((i + 1) as f64 / self.n as f64);
        tokio::select! {
            _ = tokio::time::sleep_until(due) => true,
            _ = cancel.notified() => false,
        }
    }
}

/// `--batch-create-delay-ms`: the batch exists at once, but the reply that
/// names it comes late.
pub(crate) async fn create_delay(cfg: &SimConfig) {
    if cfg.batch_create_delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(cfg.batch_create_delay_ms)).await;
    }
}

/// A poisoned lock only means a handler panicked mid-update; the maps are
/// still usable.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn api_error(status: StatusCode, code: &str, message: &str) -> Response {
    error(&Api::OpenAi, status, code, message)
}

/// The OpenAI Files and Batch APIs' dialect.
pub(crate) struct OpenAi;

impl Refusal for OpenAi {
    fn unauthorized() -> Response {
        api_error(
            StatusCode::UNAUTHORIZED,
            "invalid_api_key",
            "missing or invalid bearer token",
        )
    }
}

/// `POST /v1/files`: a multipart form with `purpose` and `file`.
pub(crate) async fn upload(
    State(st): State<Arc<ServerState>>,
    _: Authorized<OpenAi>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(boundary) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(boundary_of)
    else {
        return api_error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "expected a multipart/form-data body",
        );
    };
    let parts = multipart(&body, &boundary);
    let purpose = parts
        .iter()
        .find(|p| p.name == "purpose")
        .map(|p| String::from_utf8_lossy(&p.data).trim().to_string());
    let Some(file) = parts.iter().find(|p| p.name == "file") else {
        return api_error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "the form has no `file` part",
        );
    };
    let Some(purpose) = purpose else {
        return api_error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "the form has no `purpose` part",
        );
    };
    let object = new_file(
        &st,
        file.filename
            .clone()
            .unwrap_or_else(|| "upload.jsonl".into()),
        &purpose,
        Bytes::copy_from_slice(&file.data),
    );
    Json(object).into_response()
}

fn new_file(st: &ServerState, filename: String, purpose: &str, content: Bytes) -> FileObject {
    let id = format!(
        "file-{:012}",
        st.batches.seq.fetch_add(1, Ordering::Relaxed) + 1
    );
    let object = FileObject {
        id: id.clone(),
        object: "file".into(),
        bytes: content.len() as u64,
        created_at: now(),
        filename,
        purpose: purpose.to_string(),
    };
    lock(&st.batches.files).insert(
        id,
        StoredFile {
            object: object.clone(),
            content,
        },
    );
    object
}

/// `GET /v1/files/{id}`.
pub(crate) async fn file_info(
    State(st): State<Arc<ServerState>>,
    Path(id): Path<String>,
    _: Authorized<OpenAi>,
) -> Response {
    match lock(&st.batches.files).get(&id) {
        Some(f) => Json(f.object.clone()).into_response(),
        None => no_such("file", &id),
    }
}

/// `GET /v1/files/{id}/content`.
pub(crate) async fn file_content(
    State(st): State<Arc<ServerState>>,
    Path(id): Path<String>,
    _: Authorized<OpenAi>,
) -> Response {
    match lock(&st.batches.files).get(&id) {
        Some(f) => (
            [(header::CONTENT_TYPE, "application/octet-stream")],
            f.content.clone(),
        )
            .into_response(),
        None => no_such("file", &id),
    }
}

fn no_such(what: &str, id: &str) -> Response {
    api_error(
        StatusCode::NOT_FOUND,
        "not_found",
        &format!("No such {what}: {id}"),
    )
}

/// One request line of an input file.
#[derive(Deserialize)]
struct InputLine {
    custom_id: String,
    url: String,
    body: Value,
}

/// `POST /v1/batches`.
pub(crate) async fn create(
    State(st): State<Arc<ServerState>>,
    _: Authorized<OpenAi>,
    body: Bytes,
) -> Response {
    let request: CreateBatch = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return api_error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                &format!("invalid batch request: {e}"),
            )
        }
    };
    let Some(task) = crate::provider::batch_api::route(&request.endpoint) else {
        return api_error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            &format!("unsupported endpoint {:?}", request.endpoint),
        );
    };
    if request.completion_window != "24h" {
        return api_error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "completion_window must be 24h",
        );
    }
    let content = match lock(&st.batches.files).get(&request.input_file_id) {
        Some(f) => f.content.clone(),
        None => return no_such("file", &request.input_file_id),
    };
    let seq = st.batches.seq.fetch_add(1, Ordering::Relaxed) + 1;
    let id = format!("batch_{seq:012}");
    let mut object = BatchObject {
        id: id.clone(),
        object: "batch".into(),
        endpoint: request.endpoint.clone(),
        errors: None,
        input_file_id: request.input_file_id.clone(),
        completion_window: request.completion_window.clone(),
        status: BatchStatus::Validating,
        output_file_id: None,
        error_file_id: None,
        created_at: now(),
        in_progress_at: None,
        expires_at: Some(now() + 24 * 3600),
        finalizing_at: None,
        completed_at: None,
        failed_at: None,
        expired_at: None,
        cancelling_at: None,
        cancelled_at: None,
        request_counts: Some(RequestCounts::default()),
        metadata: request.metadata.clone(),
    };
    let cfg = &st.cfg;
    let parsed = parse_lines(&content, task, &request.endpoint, cfg);
    let cancel = Arc::new(Notify::new());
    let mut run = None;
    {
        let mut batches = lock(&st.batches.batches);
        let mut stats = lock(&st.batches.stats);
        stats.batches += 1;
        match parsed {
            Err(e) => fail(&mut object, e),
            Ok((lines, tokens)) => {
                let enqueued: u64 = batches
                    .values()
                    .filter(|b| !b.object.status.is_terminal())
                    .map(|b| b.tokens)
                    .sum();
                match cfg.batch_token_cap {
                    Some(cap) if enqueued + tokens > cap => {
                        stats.token_capped += 1;
                        fail(
                            &mut object,
                            BatchError {
                                code: Some(TOKEN_LIMIT_EXCEEDED.into()),
                                message: Some(format!(
                                    "Enqueued token limit reached for this model. Limit: {cap} \
                                     enqueued tokens; {enqueued} already enqueued, this batch {tokens}. \
                                     Please try again once some in_progress batches have been completed."
                                )),
                                param: None,
                                line: None,
                            },
                        )
                    }
                    _ => {
                        object.request_counts = Some(RequestCounts {
                            total: lines.len() as u64,
                            ..RequestCounts::default()
                        });
                        let expire = stats.start(lines.len(), cfg);
                        run = Some((lines, expire));
                    }
                }
                batches.insert(
                    seq,
                    Stored {
                        object: object.clone(),
                        tokens,
                        cancel: cancel.clone(),
                    },
                );
            }
        }
        if object.status == BatchStatus::Failed && !batches.contains_key(&seq) {
            batches.insert(
                seq,
                Stored {
                    object: object.clone(),
                    tokens: 0,
                    cancel: cancel.clone(),
                },
            );
        }
    }
    if let Some((lines, expire)) = run {
        tokio::spawn(process(st.clone(), seq, lines, expire, cancel));
    }
    create_delay(cfg).await;
    Json(object).into_response()
}

fn fail(object: &mut BatchObject, e: BatchError) {
    object.status = BatchStatus::Failed;
    object.failed_at = Some(now());
    object.errors = Some(BatchErrors {
        object: "list".into(),
        data: vec![e],
    });
}

/// Every line parsed and planned as the online route would, with the
/// tokens the batch enqueues; the first bad line fails the batch.
fn parse_lines(
    content: &[u8],
    task: crate::provider::wire::Task,
    endpoint: &str,
    cfg: &super::SimConfig,
) -> Result<(Vec<(String, Value)>, u64), BatchError> {
    let bad = |line: u64, message: String| BatchError {
        code: Some("invalid_request".into()),
        message: Some(message),
        param: None,
        line: Some(line),
    };
    let mut lines = Vec::new();
    let mut ids = HashSet::new();
    let mut tokens = 0u64;
    for (i, text) in content.split(|b| *b == b'\n').enumerate() {
        let n = i as u64 + 1;
        if text.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let line: InputLine = serde_json::from_slice(text)
            .map_err(|e| bad(n, format!("line {n} is not a batch request: {e}")))?;
        if crate::provider::batch_api::route(&line.url) != Some(task) {
            return Err(bad(
                n,
                format!(
                    "line {n}: url {:?} differs from the batch's endpoint {endpoint:?}",
                    line.url
                ),
            ));
        }
        if !ids.insert(line.custom_id.clone()) {
            return Err(bad(
                n,
                format!("line {n}: duplicate custom_id {:?}", line.custom_id),
            ));
        }
        if let Ok(job) = answer::plan(
            sim_task(task),
            line.body.clone(),
            cfg.output_tokens,
            cfg.embedding_dim,
            false,
        ) {
            tokens += job.prompt_tokens + job.max_tokens;
        }
        lines.push((line.custom_id, line.body));
    }
    if lines.is_empty() {
        return Err(bad(0, "the input file has no request lines".into()));
    }
    Ok((lines, tokens))
}

fn sim_task(task: crate::provider::wire::Task) -> Task {
    match task {
        crate::provider::wire::Task::Chat => Task::Chat,
        crate::provider::wire::Task::Completions => Task::Completion,
        crate::provider::wire::Task::Embeddings => Task::Embedding,
    }
}

/// Runs a batch: lines answered one by one over the turnaround, until done,
/// cancelled, or (for an expiring batch) `expire` lines are answered.
async fn process(
    st: Arc<ServerState>,
    seq: u64,
    lines: Vec<(String, Value)>,
    expire: Option<usize>,
    cancel: Arc<Notify>,
) {
    update(&st, seq, |b| {
        if b.status == BatchStatus::Validating {
            b.status = BatchStatus::InProgress;
            b.in_progress_at = Some(now());
        }
    });
    let Some(task) = current(&st, seq).and_then(|b| crate::provider::batch_api::route(&b.endpoint))
    else {
        return;
    };
    let n = lines.len();
    let pace = Pace::new(&st.cfg, n);
    let mut output = Vec::new();
    let mut errors = Vec::new();
    let mut answered = 0usize;
    let mut end = BatchStatus::Completed;
    for (i, (custom_id, body)) in lines.iter().enumerate() {
        if expire == Some(i) {
            end = BatchStatus::Expired;
            break;
        }
        let cancelled = !pace.until(i, &cancel).await;
        if cancelled || current(&st, seq).is_some_and(|b| b.status == BatchStatus::Cancelling) {
            end = BatchStatus::Cancelled;
            break;
        }
        let (line, ok) = answer_line(&st, sim_task(task), custom_id, body);
        if ok {
            output.push(line);
        } else {
            errors.push(line);
        }
        answered += 1;
        let failed = errors.len() as u64;
        update(&st, seq, |b| {
            b.request_counts = Some(RequestCounts {
                total: n as u64,
                completed: answered as u64 - failed,
                failed,
            })
        });
    }
    if end == BatchStatus::Expired {
        for (custom_id, _) in &lines[answered..] {
            errors.push(line_json(
                custom_id,
                None,
                Some(LineError {
                    code: Some("batch_expired".into()),
                    message: Some(
                        "This request could not be executed before the completion window expired."
                            .into(),
                    ),
                }),
            ));
        }
    }
    let to_file = |lines: &[Vec<u8>], name: &str| {
        (!lines.is_empty()).then(|| {
            new_file(
                &st,
                format!("{name}.jsonl"),
                "batch_output",
                Bytes::from(lines.concat()),
            )
            .id
        })
    };
    let output_file = to_file(&output, "batch_output");
    let error_file = to_file(&errors, "batch_errors");
    {
        let mut stats = lock(&st.batches.stats);
        if end == BatchStatus::Cancelled {
            stats.cancelled += 1;
        }
    }
    update(&st, seq, |b| {
        b.status = end;
        b.output_file_id = output_file;
        b.error_file_id = error_file;
        let t = Some(now());
        b.finalizing_at = t;
        match end {
            BatchStatus::Expired => b.expired_at = t,
            BatchStatus::Cancelled => b.cancelled_at = t,
            _ => b.completed_at = t,
        }
    });
}

/// One line answered as the online route would; false for an error line.
fn answer_line(st: &ServerState, task: Task, custom_id: &str, body: &Value) -> (Vec<u8>, bool) {
    let (status, body, ok) = match plan_line(st, task, body.clone(), false) {
        Ok(job) => (200, answer_now(st, &Api::OpenAi, job), true),
        Err((status, message)) => {
            let code = match status {
                StatusCode::BAD_REQUEST => "invalid_request_error",
                _ => "server_error",
            };
            let body = json!({"error": {"message": message, "type": code, "code": code}});
            (status.as_u16(), body, false)
        }
    };
    let response = LineResponse {
        status_code: status,
        request_id: Some(request_id(custom_id)),
        body,
    };
    (line_json(custom_id, Some(response), None), ok)
}

fn request_id(custom_id: &str) -> String {
    format!("req_{}", &blake3::hash(custom_id.as_bytes()).to_hex()[..24])
}

fn line_json(custom_id: &str, response: Option<LineResponse>, error: Option<LineError>) -> Vec<u8> {
    let line = OutputLine {
        id: Some(format!(
            "batch_req_{}",
            &blake3::hash(custom_id.as_bytes()).to_hex()[..24]
        )),
        custom_id: custom_id.to_string(),
        response,
        error,
    };
    crate::provider::batch_line::jsonl([line])
}

fn current(st: &ServerState, seq: u64) -> Option<BatchObject> {
    lock(&st.batches.batches)
        .get(&seq)
        .map(|b| b.object.clone())
}

fn update(st: &ServerState, seq: u64, f: impl FnOnce(&mut BatchObject)) {
    if let Some(b) = lock(&st.batches.batches).get_mut(&seq) {
        f(&mut b.object);
    }
}

fn seq_of(id: &str) -> Option<u64> {
    id.strip_prefix("batch_")?.parse().ok()
}

/// `GET /v1/batches/{id}`.
pub(crate) async fn get(
    State(st): State<Arc<ServerState>>,
    Path(id): Path<String>,
    _: Authorized<OpenAi>,
) -> Response {
    match seq_of(&id).and_then(|s| current(&st, s)) {
        Some(b) => Json(b).into_response(),
        None => no_such("batch", &id),
    }
}

/// `POST /v1/batches/{id}/cancel`: an unfinished batch goes to
/// `cancelling`, then `cancelled` with what it answered so far.
pub(crate) async fn cancel(
    State(st): State<Arc<ServerState>>,
    Path(id): Path<String>,
    _: Authorized<OpenAi>,
) -> Response {
    let Some(seq) = seq_of(&id) else {
        return no_such("batch", &id);
    };
    let mut batches = lock(&st.batches.batches);
    let Some(b) = batches.get_mut(&seq) else {
        return no_such("batch", &id);
    };
    if b.object.status.is_terminal() {
        let message = format!("Cannot cancel a batch with status {:?}", b.object.status);
        drop(batches);
        return api_error(StatusCode::CONFLICT, "invalid_request_error", &message);
    }
    b.object.status = BatchStatus::Cancelling;
    b.object.cancelling_at = Some(now());
    b.cancel.notify_one();
    Json(b.object.clone()).into_response()
}

/// `GET /v1/batches`: newest first, `limit` (1..100, default 20) after the
/// batch `after`. (The query is read by hand: axum's `query` feature
/// would pull serde_urlencoded for two parameters.)
/// The value of `key` in `uri`'s query (the batch list routes' cursors).
pub(crate) fn query_param(uri: &Uri, key: &str) -> Option<String> {
    uri.query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| v.to_string())
    })
}

pub(crate) async fn list(
    State(st): State<Arc<ServerState>>,
    uri: Uri,
    _: Authorized<OpenAi>,
) -> Response {
    let param = |key: &str| query_param(&uri, key);
    let q_limit: Option<usize> = param("limit").and_then(|v| v.parse().ok());
    let q_after = param("after");
    let limit = q_limit.unwrap_or(20).clamp(1, 100);
    let before = q_after.as_deref().and_then(seq_of).unwrap_or(u64::MAX);
    let batches = lock(&st.batches.batches);
    let mut newest = batches.range(..before).rev();
    let data: Vec<BatchObject> = newest
        .by_ref()
        .take(limit)
        .map(|(_, b)| b.object.clone())
        .collect();
    let has_more = newest.next().is_some();
    Json(BatchList {
        object: "list".into(),
        first_id: data.first().map(|b| b.id.clone()),
        last_id: data.last().map(|b| b.id.clone()),
        data,
        has_more,
    })
    .into_response()
}

/// One part of a multipart form.
struct Part {
    name: String,
    filename: Option<String>,
    data: Vec<u8>,
}

fn boundary_of(content_type: &str) -> Option<String> {
    let (kind, params) = content_type.split_once(';')?;
    if !kind.trim().eq_ignore_ascii_case("multipart/form-data") {
        return None;
    }
    params.split(';').find_map(|p| {
        let (k, v) = p.split_once('=')?;
        (k.trim().eq_ignore_ascii_case("boundary")).then(|| v.trim().trim_matches('"').to_string())
    })
}

/// The parts of a multipart/form-data body (RFC 7578), enough for what
/// HTTP clients send: a header block per part, then its bytes.
fn multipart(body: &[u8], boundary: &str) -> Vec<Part> {
    let delimiter = format!("--{boundary}");
    let d = delimiter.as_bytes();
    let mut parts = Vec::new();
    let mut pos = match find(body, d, 0) {
        Some(p) => p + d.len(),
        None => return parts,
    };
    while let Some(next) = find(body, d, pos) {
        let mut chunk = &body[pos..next];
        chunk = chunk.strip_prefix(b"\r\n").unwrap_or(chunk);
        chunk = chunk.strip_suffix(b"\r\n").unwrap_or(chunk);
        if let Some(split) = find(chunk, b"\r\n\r\n", 0) {
            let head = String::from_utf8_lossy(&chunk[..split]);
            let data = chunk[split + 4..].to_vec();
            let disposition = head
                .lines()
                .find(|l| l.to_ascii_lowercase().starts_with("content-disposition"))
                .unwrap_or("");
            let param = |key: &str| {
                disposition.split(';').find_map(|p| {
                    let (k, v) = p.split_once('=')?;
                    (k.trim() == key).then(|| v.trim().trim_matches('"').to_string())
                })
            };
            if let Some(name) = param("name") {
                parts.push(Part {
                    name,
                    filename: param("filename"),
                    data,
                });
            }
        }
        pos = next + d.len();
        if body[pos..].starts_with(b"--") {
            break;
        }
    }
    parts
}

fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    if needle.is_empty() || from > haystack.len() {
        return None;
    }
    haystack[from..]
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p + from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multipart_forms_parse() {
        let body = b"--XY\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n--XY\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.jsonl\"\r\nContent-Type: application/jsonl\r\n\r\n{\"a\":1}\n{\"b\":2}\n\r\n--XY--\r\n";
        let parts = multipart(body, "XY");
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].name, "purpose");
        assert_eq!(parts[0].data, b"batch");
        assert_eq!(parts[1].filename.as_deref(), Some("a.jsonl"));
        assert_eq!(parts[1].data, b"{\"a\":1}\n{\"b\":2}\n");
        assert_eq!(
            boundary_of("multipart/form-data; boundary=\"XY\"").as_deref(),
            Some("XY")
        );
        assert_eq!(boundary_of("application/json"), None);
    }
}
