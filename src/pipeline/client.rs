//! Client: one call → its rows' outcomes, over HTTP, with retries.
//!
//! Every attempt first passes the rate limiter, then posts the prepared body
//! with the endpoint's credentials. Failures are classified once
//! ([`crate::provider::retry::classify_status`]): transient ones are retried by the one
//! retry loop ([`crate::provider::retry::RetryPolicy::run`]), never sooner
//! than the server's `Retry-After`; a row's own bad request becomes its `error_message`; a
//! refusal of the whole job (401, 403, 404) is returned as [`Abort`] so the
//! scheduler stops sending.
//!
//! Billing-safe retries: an attempt that times out after its request was
//! sent may still be billed (the provider ran it; we did not wait for the
//! answer), and so may a success whose body broke off
//! ([`crate::provider::retry::maybe_billed`] decides). Such attempts are
//! *ambiguous*: they are counted apart
//! (`ambiguous_retries`), retried at most `max_ambiguous_retries` times, and
//! recorded in the row ([`Outcome::ambiguous_attempts`], the
//! `maybe_billed_twice` column).
//!
//! Server text enters aiq here: every body read passes the endpoint's
//! [`Scrubber`] (no secret the credentials hold comes back out), and an
//! error body is read only up to [`wire::MAX_ERROR_BODY_BYTES`].

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::Response;
use serde_json::Value;
use tokio::time::Instant;

use crate::pipeline::http::{redirect_target, HttpPool, Lease, Post, TransportError};
use crate::pipeline::outcome::{Outcome, Usage};
use crate::pipeline::render::Call;
use crate::provider::auth::Scrubber;
use crate::provider::endpoint::Endpoint;
use crate::provider::limit::{Limiter, Ticket};
use crate::provider::reply::{body_fault, split_usage, Reply, RowReply, Shape};
use crate::provider::retry::{
    certificate_problem, classify, classify_body_fault, classify_status, maybe_billed, retry_after,
    Failure, Lost, Pacing, RetryAction, RetryPolicy,
};
use crate::provider::stream;
use crate::provider::wire;

/// The job must stop: the endpoint refused it as a whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Abort(pub String);

/// Counters over all calls, for the summary and the benchmark.
#[derive(Debug, Default)]
pub struct ClientStats {
    pub attempts: AtomicU64,
    /// Attempts sent and not yet fully answered (the progress bar shows it).
    pub in_flight: Arc<AtomicU64>,
    pub rate_limited: AtomicU64,
    pub retries: AtomicU64,
    /// Retries of attempts that timed out after sending (maybe billed).
    pub ambiguous_retries: AtomicU64,
}

pub struct Client {
    http: HttpPool,
    endpoint: Arc<Endpoint>,
    /// The POST to `endpoint.url`, built once: parsing the URL and building
    /// headers per request showed in profiles.
    post: Post,
    limiter: Arc<Limiter>,
    policy: RetryPolicy,
    shape: Shape,
    stream: bool,
    /// Hides the credentials' secrets in every body read.
    scrub: Scrubber,
    pub stats: Arc<ClientStats>,
    /// Typed replies that were cut off or did not fit may be asked again
    /// this many times (`pipeline::repair`); 0 by default.
    pub max_repairs: u32,
    /// Gemini's explicit cache of the system prompt every call reads
    /// instead of sending it (`pipeline::context_cache`).
    pub cached_content: Option<String>,
}

/// What [`Client::send`] got: one outcome per row of the call, and for each
/// whether its reply arrived but did not fit the result type (the rows a
/// repair can help).
#[derive(Debug)]
pub struct Sent {
    pub outcomes: Vec<Outcome>,
    pub unfit: Vec<bool>,
}

/// Why one attempt failed.
#[derive(Debug)]
struct AttemptError {
    action: RetryAction,
    message: String,
    /// The request was sent and may have been billed without an answer.
    ambiguous: bool,
    /// The HTTP status of the reply, when there was one.
    status: Option<u16>,
}

impl Failure for AttemptError {
    fn action(&self) -> &RetryAction {
        &self.action
    }
}

impl AttemptError {
    fn new(action: RetryAction, message: String) -> AttemptError {
        AttemptError {
            action,
            message,
            ambiguous: false,
            status: None,
        }
    }

    fn retry(message: String, after: Option<Duration>, rate_limited: bool) -> AttemptError {
        AttemptError::new(
            RetryAction::Retry {
                after,
                rate_limited,
            },
            message,
        )
    }

    /// This row's own request or reply is bad: no retry helps.
    fn row(message: String) -> AttemptError {
        AttemptError::new(RetryAction::RowError, message)
    }
}

/// A reply and when its first token arrived (streaming only).
struct Answer {
    reply: Reply,
    ttft: Option<Duration>,
}

impl Client {
    pub fn new(
        http: HttpPool,
        endpoint: Arc<Endpoint>,
        limiter: Arc<Limiter>,
        policy: RetryPolicy,
        shape: Shape,
        stream: bool,
    ) -> crate::error::Result<Client> {
        // Gemini streams from another method than it answers whole.
        let url = match stream {
            true => endpoint.dialect.stream_url(&endpoint.url),
            false => endpoint.url.clone(),
        };
        let post = post_to(&http, &endpoint, &url)?;
        Ok(Client {
            scrub: endpoint.credentials.scrubber(),
            http,
            endpoint,
            post,
            limiter,
            policy,
            shape,
            stream,
            stats: Arc::new(ClientStats::default()),
            max_repairs: 0,
            cached_content: None,
        })
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// The shape replies are parsed into.
    pub fn shape(&self) -> &Shape {
        &self.shape
    }

    /// Send `call` until it succeeds, fails for good, or the retries run
    /// out: one call, with its retries. Repairs of typed replies are layered
    /// on top (`repair::execute`).
    pub async fn send(&self, call: &Call) -> Result<Sent, Abort> {
        let attempts = AtomicU32::new(0);
        let ambiguous = AtomicU32::new(0);
        let max_ambiguous = self.policy.max_ambiguous_retries;
        let started = Instant::now();
        let result = self
            .policy
            .run(
                Pacing::Limiter,
                || async {
                    attempts.fetch_add(1, Ordering::Relaxed);
                    let result = self.attempt(call).await;
                    if result.as_ref().is_err_and(|e| e.ambiguous) {
                        ambiguous.fetch_add(1, Ordering::Relaxed);
                    }
                    result
                },
                // At most `max_ambiguous` retries after attempts that may
                // have been billed.
                |e: &AttemptError| {
                    !(e.ambiguous && ambiguous.load(Ordering::Relaxed) > max_ambiguous)
                },
                |e: &AttemptError, after| {
                    tracing::debug!(rows = ?call.rows, "retrying in {after:?}: {}", e.message);
                    self.stats.retries.fetch_add(1, Ordering::Relaxed);
                    if e.ambiguous {
                        self.stats.ambiguous_retries.fetch_add(1, Ordering::Relaxed);
                    }
                },
            )
            .await;
        let attempts = attempts.load(Ordering::Relaxed);
        let ambiguous = ambiguous.load(Ordering::Relaxed);
        let latency_ms = Some(started.elapsed().as_millis() as i64);
        match result {
            Ok(answer) => {
                let usages = split_usage(answer.reply.usage, call.rows.len());
                let mut outcomes = Vec::with_capacity(call.rows.len());
                let mut unfit = Vec::with_capacity(call.rows.len());
                for (i, row) in call.rows.iter().enumerate() {
                    let r = answer.reply.rows.get(i);
                    unfit.push(r.is_some_and(RowReply::unfit));
                    let (result, error_message) = match r.map(|r| &r.result) {
                        Some(Ok(v)) => (v.clone(), None),
                        Some(Err(e)) => (Value::Null, Some(e.clone())),
                        None => (
                            Value::Null,
                            Some("reply has no answer for this row".to_string()),
                        ),
                    };
                    outcomes.push(Outcome {
                        row: *row,
                        result,
                        error_message,
                        finish_reason: r.and_then(|r| r.finish_reason.clone()),
                        usage: usages.get(i).copied().unwrap_or_default(),
                        latency_ms,
                        ttft_ms: answer.ttft.map(|d| d.as_millis() as i64),
                        attempts,
                        ambiguous_attempts: ambiguous,
                        ..Outcome::default()
                    });
                }
                Ok(Sent { outcomes, unfit })
            }
            Err(e) => match e.action {
                // A status is the endpoint refusing; without one the job
                // could not reach it (an untrusted certificate).
                RetryAction::Abort => Err(Abort(match e.status {
                    // Refused credentials: say which were sent (the
                    // variable, not the secret), the usual cause being an
                    // unset or wrong variable.
                    // (Gemini refuses a key with a 400.)
                    Some(400 | 401 | 403) => format!(
                        "{} refused the job: {} (credentials sent: {})",
                        self.endpoint.label, e.message, self.endpoint.credentials_from
                    ),
                    Some(_) => format!("{} refused the job: {}", self.endpoint.label, e.message),
                    None => format!("{}: {}", self.endpoint.label, e.message),
                })),
                RetryAction::Retry { .. } => {
                    let why = if e.ambiguous && ambiguous > max_ambiguous {
                        format!(
                            "; not retried again: an attempt that times out after sending, or whose \
                             answer breaks off, may have been billed (--max-ambiguous-retries {max_ambiguous})"
                        )
                    } else {
                        String::new()
                    };
                    Ok(self.all_failed(
                        call,
                        format!("gave up after {attempts} attempts: {}{why}", e.message),
                        (attempts, ambiguous),
                        latency_ms,
                    ))
                }
                RetryAction::RowError => {
                    Ok(self.all_failed(call, e.message, (attempts, ambiguous), latency_ms))
                }
            }
            .map(|outcomes: Vec<Outcome>| Sent {
                unfit: vec![false; outcomes.len()],
                outcomes,
            }),
        }
    }

    fn all_failed(
        &self,
        call: &Call,
        message: String,
        attempts: (u32, u32),
        latency_ms: Option<i64>,
    ) -> Vec<Outcome> {
        let (attempts, ambiguous_attempts) = attempts;
        call.rows
            .iter()
            .map(|row| Outcome {
                latency_ms,
                ambiguous_attempts,
                ..Outcome::failed(*row, message.clone(), attempts)
            })
            .collect()
    }

    async fn attempt(&self, call: &Call) -> Result<Answer, AttemptError> {
        // The OTPM reservation (max_tokens) is settled from the reply's
        // usage below, or refunded whole if this attempt gets no answer.
        let output_reserve = call.est_tokens.saturating_sub(call.est_prompt_tokens);
        let grant = self
            .limiter
            .admit_call(call.est_prompt_tokens, output_reserve)
            .await;
        let routed;
        let post = match call.route {
            None => &self.post,
            Some(_) => {
                routed = self.routed(call.route)?;
                &routed
            }
        };
        let answer = self
            .timed(async {
                // Held until the reply is read whole: a stream occupies its
                // connection until then.
                let lease = self.http.lease();
                let _in_flight = InFlight::new(&self.stats.in_flight);
                let (response, sent) = self
                    .post(&lease, post, &self.body_of(call), Some(grant.ticket))
                    .await?;
                if self.stream {
                    let (reply, ttft) = stream::read(response, &self.shape, sent, &self.scrub)
                        .await
                        .map_err(stream_error)?;
                    return Ok(Answer { reply, ttft });
                }
                let body = self.read_body(response).await?;
                let reply = self.parse(&body, call.rows.len())?;
                Ok(Answer { reply, ttft: None })
            })
            .await?;
        grant.settle(answer.reply.usage.completion_tokens.max(0) as u64);
        Ok(answer)
    }

    /// The body `call` goes out with: its own, or reading the system
    /// prompt from the job's explicit cache.
    fn body_of(&self, call: &Call) -> Bytes {
        match &self.cached_content {
            Some(name) => (self.endpoint.dialect)
                .with_cached_system(&call.body, name)
                .map_or_else(|| call.body.clone(), Bytes::from),
            None => call.body.clone(),
        }
    }

    /// `attempt` bounded by the policy's timeout, from before it is sent to
    /// the end of its reply. Running out after sending is ambiguous: the
    /// provider may be running (and billing) the request.
    async fn timed<T>(
        &self,
        attempt: impl std::future::Future<Output = Result<T, AttemptError>>,
    ) -> Result<T, AttemptError> {
        match tokio::time::timeout(self.policy.timeout, attempt).await {
            Ok(result) => result,
            Err(_) => {
                let mut error = AttemptError::retry(
                    format!(
                        "timed out: no whole reply within {:.0?}",
                        self.policy.timeout
                    ),
                    None,
                    false,
                );
                error.ambiguous = maybe_billed(Lost::TimedOut);
                Err(error)
            }
        }
    }

    /// A 2xx body → its reply. A body that is no answer at all (HTML, cut
    /// short, an error object) is classified like a failed status; one that
    /// is an answer but does not fit is the row's error.
    fn parse(&self, body: &[u8], rows: usize) -> Result<Reply, AttemptError> {
        self.shape
            .parse(body, rows)
            .map_err(|message| match body_fault(body) {
                Some(fault) => AttemptError {
                    status: Some(200),
                    ambiguous: maybe_billed(Lost::Body(&fault)),
                    ..AttemptError::new(classify_body_fault(&fault), fault.to_string())
                },
                None => AttemptError::row(message),
            })
    }

    /// One attempt of `body`, timed, with no retry and no rate limiter: what
    /// `aiq bench` measures. Streamed replies report their chunk timing.
    pub async fn probe(&self, body: Bytes) -> Probe {
        let started = Instant::now();
        let result = self
            .timed(async {
                let lease = self.http.lease();
                let (response, sent) = self.post(&lease, &self.post, &body, None).await?;
                if self.stream {
                    stream::read_timed(response, &self.shape, sent, &self.scrub)
                        .await
                        .map_err(stream_error)
                } else {
                    let body = self.read_body(response).await?;
                    let reply = self.parse(&body, 1)?;
                    Ok((reply, stream::Timing::default()))
                }
            })
            .await;
        let elapsed = started.elapsed();
        match result {
            Ok((reply, timing)) => {
                let error = reply
                    .rows
                    .first()
                    .and_then(|r| r.result.as_ref().err().cloned());
                Probe {
                    elapsed,
                    timing,
                    usage: reply.usage,
                    status: Some(200),
                    error,
                }
            }
            Err(e) => Probe {
                elapsed,
                timing: stream::Timing::default(),
                usage: Usage::default(),
                status: e.status,
                error: Some(e.message),
            },
        }
    }

    /// The POST for the route an OpenAI Batch line names.
    fn routed(&self, route: Option<crate::provider::wire::Task>) -> Result<Post, AttemptError> {
        let url = self.endpoint.url_for(route);
        post_to(&self.http, &self.endpoint, &url)
            .map_err(|e| AttemptError::row(format!("bad URL {url}: {e}")))
    }

    /// Post `body` with the endpoint's credentials; a reply that is not a
    /// success becomes an error classified for retrying. Returns the
    /// response and when the request went out.
    async fn post(
        &self,
        lease: &Lease<'_>,
        post: &Post,
        body: &Bytes,
        ticket: Option<Ticket>,
    ) -> Result<(Response<Incoming>, Instant), AttemptError> {
        self.stats.attempts.fetch_add(1, Ordering::Relaxed);
        let authorization = self
            .endpoint
            .credentials
            .headers(self.http.side(), &hyper::Method::POST, &post.uri, body)
            .await
            .map_err(|e| AttemptError::new(RetryAction::Abort, e.to_string()))?;
        let sent = Instant::now();
        let response = lease
            .send(post, authorization, body.clone())
            .await
            .map_err(transport_error)?;
        let status = response.status();
        if status.is_success() {
            // Borrowed, not cloned: a header map copy per reply showed in profiles.
            let headers = response.headers();
            let after = retry_after(headers);
            self.limiter
                .observe(headers, status.as_u16(), after, ticket);
        } else {
            let (parts, body) = response.into_parts();
            let headers = &parts.headers;
            // Some providers say in the body what the status does not
            // (Gemini's refused key, its retry delay): classified with it.
            let (head, len) = match status.is_redirection() {
                true => (Bytes::new(), wire::BodyLen::Exact(0)),
                false => wire::error_body(headers, body).await,
            };
            let head = self.scrub.bytes(head);
            let action = classify(self.endpoint.dialect, status, headers, &head);
            let after = match &action {
                RetryAction::Retry { after, .. } => *after,
                _ => retry_after(headers),
            };
            self.limiter
                .observe(headers, status.as_u16(), after, ticket);
            if status.as_u16() == 429 {
                self.stats.rate_limited.fetch_add(1, Ordering::Relaxed);
            }
            let message = if status.is_redirection() {
                // Not followed (only 307 and 308 keep a POST a POST): every
                // call would meet it, so the job stops and says where to.
                // Without the query, which may carry a signature.
                let to = redirect_target(&post.uri, headers).map_or_else(
                    || "nowhere aiq can follow".to_string(),
                    |u| {
                        format!(
                            "{}://{}{}",
                            u.scheme_str().unwrap_or("http"),
                            u.authority().map_or("", |a| a.as_str()),
                            u.path()
                        )
                    },
                );
                format!(
                    "HTTP {}: the endpoint redirects to {to}; use that URL as the endpoint",
                    status.as_u16()
                )
            } else {
                format!(
                    "HTTP {}: {}",
                    status.as_u16(),
                    wire::error_message_of(&head, len)
                )
            };
            return Err(AttemptError {
                status: Some(status.as_u16()),
                ..AttemptError::new(action, message)
            });
        }
        Ok((response, sent))
    }

    /// A reply's whole body, its secrets hidden. A connection that breaks
    /// while it is read is a transport error (retried), and maybe billed
    /// when the status said the answer was done.
    async fn read_body(&self, response: Response<Incoming>) -> Result<Bytes, AttemptError> {
        let status = response.status();
        match response.into_body().collect().await {
            Ok(body) => Ok(self.scrub.bytes(body.to_bytes())),
            Err(e) => Err(AttemptError {
                ambiguous: maybe_billed(Lost::BodyBroke(status)),
                ..transport_error(TransportError {
                    connect: false,
                    message: format!("reading the reply: {e}"),
                })
            }),
        }
    }
}

/// What one timed attempt came to (see [`Client::probe`]).
#[derive(Debug, Clone)]
pub struct Probe {
    /// From just before the request was sent to the end of the reply.
    pub elapsed: Duration,
    pub timing: stream::Timing,
    pub usage: Usage,
    /// The HTTP status; None when no response came (connection fault, timeout).
    pub status: Option<u16>,
    /// Why it failed, if it did (an HTTP error, a broken stream, a bad reply).
    pub error: Option<String>,
}

fn stream_error(e: stream::StreamError) -> AttemptError {
    match e {
        stream::StreamError::Transport(m) => AttemptError::retry(m, None, false),
        stream::StreamError::Reply(m) => AttemptError::row(m),
        stream::StreamError::Server { status, message } => AttemptError {
            status: Some(status),
            ..AttemptError::new(
                classify_status(
                    hyper::StatusCode::from_u16(status)
                        .unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR),
                    &hyper::HeaderMap::new(),
                ),
                format!("HTTP {status} (in the stream): {message}"),
            )
        },
    }
}

/// The POST to `url` with the headers the endpoint's dialect sends on
/// every call (Anthropic's `anthropic-version`).
fn post_to(http: &HttpPool, endpoint: &Endpoint, url: &str) -> crate::error::Result<Post> {
    let mut post = http.post(url)?;
    for (name, value) in endpoint.dialect.headers() {
        post.headers.insert(
            hyper::header::HeaderName::from_static(name),
            hyper::header::HeaderValue::from_static(value),
        );
    }
    Ok(post)
}

/// Counts an attempt in flight for as long as it lives.
struct InFlight<'a>(&'a AtomicU64);

impl<'a> InFlight<'a> {
    fn new(n: &'a AtomicU64) -> InFlight<'a> {
        n.fetch_add(1, Ordering::Relaxed);
        InFlight(n)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Connection errors and resets are transient; a certificate that does not
/// verify is not. hyper's messages name neither the URL nor a header, so no
/// credential can leak through them.
fn transport_error(e: TransportError) -> AttemptError {
    let kind = if e.connect {
        "could not connect"
    } else {
        "connection failed"
    };
    let message = format!("{kind}: {}", e.message);
    if let Some(problem) = certificate_problem(&message) {
        return AttemptError::new(
            RetryAction::Abort,
            format!(
                "the TLS certificate did not verify ({problem}). If the endpoint uses a private \
                 certificate authority, trust it with --ca-cert PATH (a PEM file) or \
                 SSL_CERT_FILE=PATH"
            ),
        );
    }
    AttemptError::retry(message, None, false)
}
