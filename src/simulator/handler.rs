//! The request pipeline shared by every inference route, in the order a
//! real provider applies it: count → authenticate → find the endpoint →
//! parse → test markers → faults → rate limits → prefix cache → latency →
//! reply (JSON or a stream).
//!
//! Malformed input never panics: it becomes a 400 whose message says what
//! is wrong. Error bodies take the shape of the API called (OpenAI's
//! `{"error":{..}}` or Databricks' `{"error_code":..,"message":..}`).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{post, MethodRouter};
use axum::Json;
use bytes::Bytes;
use futures::StreamExt;
use serde_json::{json, Value};

use super::answer::{self, model_name, reply_id, Api, Job, Marker, Reply, Task};
use super::cache::{self, prefix_keys};
use super::faults::Fault;
use super::limits::Admission;
use super::stats::{bump, InFlight};
use super::{stream, Quirk, ServerState, SimConfig};
use crate::provider::wire::{
    ChatChoice, ChatResponse, CompletionChoice, CompletionResponse, EmbeddingItem,
    EmbeddingResponse, Message, PromptTokensDetails, WireUsage,
};

/// An error reply in the shape of `api`.
pub(crate) fn error(api: &Api, status: StatusCode, code: &str, message: &str) -> Response {
    let body = match api {
        Api::OpenAi => json!({"error": {"message": message, "type": code, "code": code}}),
        Api::Databricks { .. } => json!({"error_code": code, "message": message}),
        Api::Gemini(_) => super::gemini::wire::error_body(status, message),
        Api::Anthropic => super::anthropic::error_body(status, message),
        Api::Azure => super::azure::wire::error_body(status, code, message),
        Api::Bedrock { .. } => return super::bedrock::wire::error(status, message),
    };
    (status, Json(body)).into_response()
}

/// The route of one OpenAI API (`/v1/chat/completions`, ...): the path
/// decides the task.
pub(crate) fn openai(task: Task) -> MethodRouter<Arc<ServerState>> {
    post(
        move |State(st): State<Arc<ServerState>>, headers: HeaderMap, body: Bytes| {
            handle(st, Api::OpenAi, Some(task), headers, body)
        },
    )
}

/// Anthropic's Messages API: one route, chat only.
pub(crate) async fn anthropic(
    State(st): State<Arc<ServerState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    handle(st, Api::Anthropic, Some(Task::Chat), headers, body).await
}

/// Databricks decides the task from the body (`messages`, `prompt`, `input`).
pub(crate) async fn databricks(
    State(st): State<Arc<ServerState>>,
    Path(endpoint): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    handle(st, Api::Databricks { endpoint }, None, headers, body).await
}

pub(crate) async fn not_found(State(st): State<Arc<ServerState>>) -> Response {
    bump(&st.counters.not_found);
    error(
        &Api::OpenAi,
        StatusCode::NOT_FOUND,
        "not_found",
        "no such route on the aiq simulator",
    )
}

pub(crate) fn authorized(cfg: &SimConfig, headers: &HeaderMap) -> bool {
    let Some(token) = &cfg.token else { return true };
    // Anthropic's key header, or Azure's.
    let key = (headers.get("x-api-key"))
        .or_else(|| headers.get("api-key"))
        .and_then(|v| v.to_str().ok());
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .or(key)
        .is_some_and(|got| got.trim() == token)
}

/// How a dialect's side routes (files, batches) refuse a request without
/// the key.
pub(crate) trait Refusal {
    fn unauthorized() -> Response;
}

/// A request whose key checked out ([`authorized`]), refused in `D`'s
/// words otherwise: a route that takes it need not check.
pub(crate) struct Authorized<D>(std::marker::PhantomData<D>);

impl<D: Refusal> axum::extract::FromRequestParts<Arc<ServerState>> for Authorized<D> {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        st: &Arc<ServerState>,
    ) -> Result<Self, Response> {
        match authorized(&st.cfg, &parts.headers) {
            true => Ok(Authorized(std::marker::PhantomData)),
            false => Err(D::unauthorized()),
        }
    }
}

pub(crate) async fn handle(
    st: Arc<ServerState>,
    api: Api,
    task: Option<Task>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let in_flight = InFlight::new(st.counters.clone());
    let mut job = match read_job(&st, &api, task, &headers, &body) {
        Ok(job) => job,
        Err(refused) => return refused,
    };
    let cut_after = match inject_faults(&st, &api, &mut job).await {
        Ok(cut_after) => cut_after,
        Err(fault) => return fault,
    };
    let admission = st
        .limits
        .admit_reserving(job.prompt_tokens + job.max_tokens, job.max_tokens);
    let admission = super::azure::wire::admission(&api, admission);
    let admission = match &api {
        Api::Bedrock { .. } => super::bedrock::wire::admission(admission),
        _ => admission,
    };
    let limit_headers = match super::anthropic::admission(&api, admission) {
        Admission::Admitted(h) => h,
        Admission::Refused(h) => {
            bump(&st.counters.rate_limited);
            let code = if api.is_databricks() {
                "REQUEST_LIMIT_EXCEEDED"
            } else {
                "rate_limit_exceeded"
            };
            let mut resp = error(
                &api,
                StatusCode::TOO_MANY_REQUESTS,
                code,
                "rate limit exceeded, retry later",
            );
            resp.headers_mut().extend(h);
            return resp;
        }
    };
    // Queued for a slot, as at a busy server: the wait is latency. The slot
    // is held until the reply is complete (`done`).
    let slot = match &st.slots {
        Some(slots) => slots.clone().acquire_owned().await.ok(),
        None => None,
    };
    let (keys, cached, usage) = cached_usage(&st, &api, &job);
    let done = {
        let st = st.clone();
        let (prompt, completion, keys_by_prompt) =
            (job.prompt_tokens, job.completion_tokens, job.keys.clone());
        let unused_output = job.max_tokens.saturating_sub(job.completion_tokens);
        // Runs when the reply is complete: only then is the prefix cached
        // and the call counted, as at a real provider.
        move || {
            st.cache.insert(&keys);
            st.limits.refund_output(unused_output);
            st.counters
                .record_ok(prompt, completion, cached, &keys_by_prompt);
            drop(in_flight);
            drop(slot);
        }
    };
    if job.stream && matches!(api, Api::Anthropic) {
        let frames = super::anthropic::frames(&st.cfg, &api, &job, &usage, cached);
        return stream::paced(frames, Box::new(done), limit_headers);
    }
    if let (true, Api::Bedrock { model, .. }) = (job.stream, &api) {
        let frames = super::bedrock::wire::frames(&st.cfg, model, &job, &usage, cached);
        let mut resp = stream::paced(frames, Box::new(done), limit_headers);
        let kind = header::HeaderValue::from_static(super::bedrock::wire::STREAM_TYPE);
        resp.headers_mut().insert(header::CONTENT_TYPE, kind);
        return resp;
    }
    if job.stream {
        return stream::respond(
            &st.cfg,
            &api,
            job,
            usage,
            cached,
            limit_headers,
            Box::new(done),
        );
    }
    let delay = latency(&st.cfg, &job, cached);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    done();
    let mut body = body_of(&api, job, usage);
    quirks(&st.cfg.quirks, &mut body);
    if cut_after {
        return cut_short(&body);
    }
    let mut resp = Json(body).into_response();
    resp.headers_mut().extend(limit_headers);
    resp
}

/// The request as a [`Job`], or the reply that refuses it: unauthorised,
/// no such endpoint, not a request, a marker asking for an error, or a
/// prompt over the context window.
fn read_job(
    st: &ServerState,
    api: &Api,
    task: Option<Task>,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Job, Response> {
    let c = &st.counters;
    // Bedrock's calls are signed, and checked on their route.
    if !matches!(api, Api::Bedrock { .. }) && !authorized(&st.cfg, headers) {
        bump(&c.unauthorized);
        // Never echo what was received: it may be someone's real token.
        return Err(error(
            api,
            StatusCode::UNAUTHORIZED,
            "invalid_api_key",
            "missing or invalid bearer token",
        ));
    }
    if let Api::Databricks { endpoint } = api {
        if !st.cfg.endpoints.is_empty() && !st.cfg.endpoints.iter().any(|e| e == endpoint) {
            bump(&c.not_found);
            let msg = format!("The given endpoint does not exist, please retry after checking the specified model and version deployment exists: {endpoint}");
            return Err(error(
                api,
                StatusCode::NOT_FOUND,
                "RESOURCE_DOES_NOT_EXIST",
                &msg,
            ));
        }
    }
    let bad_request = |msg: &str| {
        bump(&c.bad_request);
        error(api, StatusCode::BAD_REQUEST, "invalid_request_error", msg)
    };
    let value: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => return Err(bad_request(&format!("request body is not valid JSON: {e}"))),
    };
    let (value, answer_tool) = match api {
        Api::Anthropic => super::anthropic::to_openai(value).map_err(|m| bad_request(&m))?,
        Api::Bedrock { model, op } => {
            super::bedrock::wire::to_openai(value, model, *op).map_err(|m| bad_request(&m))?
        }
        _ => (value, None),
    };
    let Some(task) = task.or_else(|| Task::of_body(&value)) else {
        return Err(bad_request(
            "request body needs `messages` (chat), `prompt` (completions) or `input` (embeddings)",
        ));
    };
    let job = match answer::plan(
        task,
        value,
        st.cfg.output_tokens,
        st.cfg.embedding_dim,
        api.claude(),
    ) {
        Ok(job) => Job { answer_tool, ..job },
        Err(msg) => return Err(bad_request(&msg)),
    };
    match job.marker {
        Some(Marker::BadRequest) => return Err(bad_request("simulated bad request")),
        Some(Marker::ServerError) => {
            return Err(error(
                api,
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                "simulated server error",
            ))
        }
        None => {}
    }
    if let Some(limit) = st.cfg.context_tokens.filter(|l| job.prompt_tokens > *l) {
        bump(&c.context_exceeded);
        let message = format!(
            "This model's maximum context length is {limit} tokens. However, your messages resulted in {} tokens. Please reduce the length of the messages.",
            job.prompt_tokens
        );
        return Err(error(
            api,
            StatusCode::BAD_REQUEST,
            "context_length_exceeded",
            &message,
        ));
    }
    Ok(job)
}

/// The injected faults of `st` drawn for this request: a spoilt typed
/// answer (in `job`), a reply that stands for the answer (`Err`), or a
/// delay; `Ok(true)` asks for the answer's body to be cut short.
async fn inject_faults(st: &ServerState, api: &Api, job: &mut Job) -> Result<bool, Response> {
    let c = &st.counters;
    if job.typed {
        if let Some(how) = st.typed_faults.draw() {
            answer::spoil(job, how);
        }
    }
    if let Some(fault) = st.faults.draw() {
        bump(&c.faults_injected);
        match fault {
            Fault::Status(code) => {
                let status =
                    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                return Err(error(
                    api,
                    status,
                    "server_error",
                    &format!("simulated fault: HTTP {code}"),
                ));
            }
            Fault::Reset => return Err(reset()),
            Fault::Html => {
                return Err((
                    StatusCode::OK,
                    [(header::CONTENT_TYPE, "text/html")],
                    "<html><body><h1>502 Bad Gateway</h1></body></html>",
                )
                    .into_response())
            }
            Fault::Truncated => {
                return Err((
                    StatusCode::OK,
                    [(header::CONTENT_TYPE, "application/json")],
                    r#"{"id":"chatcmpl-1","choices":[{"index":0,"mess"#,
                )
                    .into_response())
            }
            Fault::Error200 => {
                return Err((
                    StatusCode::OK,
                    Json(json!({"error": {"message": "upstream exploded"}})),
                )
                    .into_response())
            }
            Fault::Slow => tokio::time::sleep(Duration::from_millis(st.cfg.slow_ms)).await,
            Fault::CutAfter => return Ok(true),
            Fault::RandomLimit => return Err(random_limit(st, api)),
        }
    }
    Ok(false)
}

/// Reshapes a reply the harmless ways other servers differ from OpenAI.
fn quirks(quirks: &[Quirk], body: &mut Value) {
    for q in quirks {
        match q {
            Quirk::NoRole => {
                if let Some(m) = body
                    .pointer_mut("/choices/0/message")
                    .and_then(Value::as_object_mut)
                {
                    m.remove("role");
                }
            }
            Quirk::BadUsage => {
                if let Some(u) = body.get_mut("usage").and_then(Value::as_object_mut) {
                    u.insert("completion_tokens".into(), json!("many"));
                }
            }
            Quirk::NegativeUsage => {
                if let Some(u) = body.get_mut("usage").and_then(Value::as_object_mut) {
                    u.insert("prompt_tokens".into(), json!(-1));
                }
            }
            Quirk::NoUsage => {
                if let Some(o) = body.as_object_mut() {
                    o.remove("usage");
                }
            }
            Quirk::ExtraFields => {
                // What newer or other servers add, at every level.
                let extra = [
                    (
                        "",
                        json!({"system_fingerprint": "fp_sim", "x_vendor": {"region": "eu"}}),
                    ),
                    ("/choices/0", json!({"logprobs": null, "stop_reason": 2})),
                    (
                        "/choices/0/message",
                        json!({"refusal": null, "annotations": [], "reasoning_content": ""}),
                    ),
                    (
                        "/usage",
                        json!({"prompt_tokens_details": {"audio_tokens": 0}, "x_queue_ms": 3}),
                    ),
                ];
                for (at, fields) in extra {
                    let (Some(o), Value::Object(fields)) =
                        (body.pointer_mut(at).and_then(Value::as_object_mut), fields)
                    else {
                        continue;
                    };
                    o.extend(fields);
                }
            }
            Quirk::NoChoices => {
                if let Some(o) = body.as_object_mut() {
                    o.remove("choices");
                }
            }
        }
    }
}

/// The prefix-cache keys of `job`, the tokens it reads from the cache,
/// and its usage as the API reports it.
fn cached_usage(st: &ServerState, api: &Api, job: &Job) -> (Vec<cache::Key>, u64, WireUsage) {
    let keys = job
        .cache_text
        .as_deref()
        .map(prefix_keys)
        .unwrap_or_default();
    let cached = st
        .cache
        .lookup(&keys)
        .max(api.explicitly_cached())
        .min(job.prompt_tokens);
    let usage = usage(job, cached, cache::cacheable_tokens(&keys), api.claude());
    (keys, cached, usage)
}

/// The reply to `job` at once, with no latency, limits or faults: what a
/// Batch API output line carries. It reads and fills the prefix cache and
/// counts as an answer, exactly as the same request online would.
pub(crate) fn answer_now(st: &ServerState, api: &Api, job: Job) -> Value {
    let (keys, cached, usage) = cached_usage(st, api, &job);
    st.cache.insert(&keys);
    st.counters
        .record_ok(job.prompt_tokens, job.completion_tokens, cached, &job.keys);
    body_of(api, job, usage)
}

/// The `reset` fault: the connection drops before the call is answered. A
/// body that fails at once makes hyper abort the connection before the
/// status line goes out (HTTP/1.1; HTTP/2 resets the stream after its
/// status), so the client sees a transport error and no reply.
fn reset() -> Response {
    let parts = futures::stream::iter([Err::<Bytes, _>(connection_reset())]);
    with_json_type(Response::new(Body::from_stream(parts)))
}

/// The `cut` fault: the status and the first half of a finished call's
/// reply, then the connection breaks.
fn cut_short(body: &Value) -> Response {
    let whole = serde_json::to_vec(body).unwrap_or_default();
    let head = Bytes::from(whole[..whole.len() / 2].to_vec());
    let parts = futures::stream::iter([Ok(head)]).chain(futures::stream::once(async {
        // Pending once, so hyper sends what it has before the break.
        tokio::task::yield_now().await;
        Err(connection_reset())
    }));
    with_json_type(Response::new(Body::from_stream(parts)))
}

fn connection_reset() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::ConnectionReset,
        "simulated connection reset",
    )
}

fn with_json_type(mut resp: Response) -> Response {
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}

/// Time to answer without streaming: base + prefill of uncached tokens +
/// decoding of the reply.
fn latency(cfg: &SimConfig, job: &Job, cached: u64) -> Duration {
    let prefill_us = cfg.prefill_us_per_token * job.prompt_tokens.saturating_sub(cached) as f64;
    let decode_ms = cfg.itl_ms * job.completion_tokens as f64;
    Duration::from_millis(cfg.latency_ms)
        + Duration::from_secs_f64(((prefill_us / 1e3 + decode_ms) / 1e3).max(0.0))
}

/// Usage as the API reports it: OpenAI nests cached tokens under
/// `prompt_tokens_details` inside a total `prompt_tokens`; Claude reports
/// Anthropic-shaped usage, additive: `input_tokens` excludes the cache reads
/// (`cache_read_input_tokens`) and writes (`cache_creation_input_tokens`),
/// and output is `output_tokens`.
fn usage(job: &Job, cached: u64, cacheable: u64, claude: bool) -> WireUsage {
    let (p, c) = (job.prompt_tokens as i64, job.completion_tokens as i64);
    if claude {
        let written = cacheable.saturating_sub(cached) as i64;
        return WireUsage {
            input_tokens: Some((p - cached as i64 - written).max(0)),
            output_tokens: Some(c),
            cache_read_input_tokens: Some(cached as i64),
            cache_creation_input_tokens: Some(written),
            ..WireUsage::default()
        };
    }
    let mut u = WireUsage {
        prompt_tokens: Some(p),
        completion_tokens: Some(c),
        total_tokens: Some(p + c),
        ..WireUsage::default()
    };
    if job.task != Task::Embedding {
        u.prompt_tokens_details = Some(PromptTokensDetails {
            cached_tokens: Some(cached as i64),
            cache_write_tokens: None,
        });
    }
    u
}

/// The non-streamed JSON reply.
fn body_of(api: &Api, job: Job, usage: WireUsage) -> Value {
    if let Api::Gemini(call) = api {
        return super::gemini::wire::reply(call, &job, &usage);
    }
    if let Api::Anthropic = api {
        return super::anthropic::message(api, &job, &usage);
    }
    if let Api::Bedrock { model, .. } = api {
        return super::bedrock::wire::reply(model, &job, &usage);
    }
    let model = Some(model_name(api, &job));
    let result = match &job.reply {
        Reply::Chat {
            content,
            tool_calls,
            finish_reason,
        } => serde_json::to_value(ChatResponse {
            id: Some(reply_id("chatcmpl", &job)),
            object: Some("chat.completion".to_string()),
            model,
            choices: vec![ChatChoice {
                index: 0,
                message: Message {
                    role: "assistant".to_string(),
                    content: content.clone().map(Value::String).unwrap_or(Value::Null),
                    tool_calls: tool_calls.clone(),
                },
                finish_reason: Some(finish_reason.to_string()),
            }],
            usage: Some(usage),
        }),
        Reply::Completion { choices } => serde_json::to_value(CompletionResponse {
            id: Some(reply_id("cmpl", &job)),
            model,
            choices: choices
                .iter()
                .enumerate()
                .map(|(i, (text, finish))| CompletionChoice {
                    index: i as u32,
                    text: text.clone(),
                    finish_reason: Some(finish.to_string()),
                })
                .collect(),
            usage: Some(usage),
        }),
        Reply::Embedding { vectors } => serde_json::to_value(EmbeddingResponse {
            model,
            data: vectors
                .iter()
                .enumerate()
                .map(|(index, v)| EmbeddingItem {
                    index,
                    embedding: v.clone(),
                })
                .collect(),
            usage: Some(usage),
        }),
    };
    // Serialising these plain structs cannot fail; answer something valid anyway.
    result.unwrap_or_else(|e| json!({"error": {"message": e.to_string()}}))
}

/// A 429 unrelated to load (`--faults 429`): the body and `Retry-After`
/// of a real refusal, one second away, without the rate headers (no
/// bucket is behind it).
fn random_limit(st: &ServerState, api: &Api) -> Response {
    let mut resp = error(
        api,
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limit_exceeded",
        "simulated fault: HTTP 429",
    );
    super::limits::retry_after_headers(
        st.cfg.retry_after,
        Duration::from_secs(1),
        resp.headers_mut(),
    );
    resp
}
