//! Client: one call → its rows' outcomes, over HTTP, with retries.
//!
//! Every attempt first passes the rate limiter, then posts the prepared body
//! with the endpoint's credentials. Failures are classified once
//! ([`crate::retry::classify_status`]): transient ones are retried with
//! jittered exponential backoff (backon), never sooner than the server's
//! `Retry-After`; a row's own bad request becomes its `error_message`; a
//! refusal of the whole job (401, 403, 404) is returned as [`Abort`] so the
//! scheduler stops sending.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use reqwest::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use serde_json::Value;
use tokio::time::Instant;

use crate::endpoint::Endpoint;
use crate::limit::Limiter;
use crate::outcome::Outcome;
use crate::render::Call;
use crate::reply::{split_usage, Reply, Shape};
use crate::retry::{classify_status, retry_after, RetryAction};
use crate::stream;
use crate::wire;

/// The job must stop: the endpoint refused it as a whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Abort(pub String);

/// Counters over all calls, for the summary and the benchmark.
#[derive(Debug, Default)]
pub struct ClientStats {
    pub attempts: AtomicU64,
    pub rate_limited: AtomicU64,
    pub retries: AtomicU64,
}

#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub max_retries: u32,
    pub timeout: Duration,
    pub min_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 8,
            timeout: Duration::from_secs(300),
            min_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(60),
        }
    }
}

pub struct Client {
    http: reqwest::Client,
    endpoint: Arc<Endpoint>,
    limiter: Arc<Limiter>,
    policy: RetryPolicy,
    shape: Shape,
    stream: bool,
    pub stats: Arc<ClientStats>,
}

/// Why one attempt failed.
#[derive(Debug)]
struct AttemptError {
    action: RetryAction,
    message: String,
}

impl AttemptError {
    fn retry(message: String, after: Option<Duration>, rate_limited: bool) -> AttemptError {
        AttemptError { action: RetryAction::Retry { after, rate_limited }, message }
    }
}

/// A reply and when its first token arrived (streaming only).
struct Answer {
    reply: Reply,
    ttft: Option<Duration>,
}

impl Client {
    pub fn new(
        http: reqwest::Client,
        endpoint: Arc<Endpoint>,
        limiter: Arc<Limiter>,
        policy: RetryPolicy,
        shape: Shape,
        stream: bool,
    ) -> Client {
        Client { http, endpoint, limiter, policy, shape, stream, stats: Arc::new(ClientStats::default()) }
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Send `call` until it succeeds, fails for good, or the retries run out.
    /// Returns one outcome per row of the call, in the call's row order.
    pub async fn execute(&self, call: &Call) -> Result<Vec<Outcome>, Abort> {
        let attempts = AtomicU32::new(0);
        let started = Instant::now();
        let backoff = ExponentialBuilder::default()
            .with_min_delay(self.policy.min_delay)
            .with_max_delay(self.policy.max_delay)
            .with_jitter()
            .with_max_times(self.policy.max_retries as usize);
        let result = (|| async {
            attempts.fetch_add(1, Ordering::Relaxed);
            self.attempt(call).await
        })
        .retry(backoff)
        .when(|e: &AttemptError| matches!(e.action, RetryAction::Retry { .. }))
        .notify(|_, _| {
            self.stats.retries.fetch_add(1, Ordering::Relaxed);
        })
        // Never come back sooner than the server asked; `dur` is None once
        // the budget is spent, and then we stop (never `Some` unconditionally).
        .adjust(|e: &AttemptError, dur: Option<Duration>| match &e.action {
            RetryAction::Retry { after: Some(after), .. } => dur.map(|d| d.max(*after)),
            _ => dur,
        })
        .await;
        let attempts = attempts.load(Ordering::Relaxed);
        let latency_ms = Some(started.elapsed().as_millis() as i64);
        match result {
            Ok(answer) => {
                let usages = split_usage(answer.reply.usage, call.rows.len());
                let mut outcomes = Vec::with_capacity(call.rows.len());
                for (i, row) in call.rows.iter().enumerate() {
                    let r = answer.reply.rows.get(i);
                    let (result, error_message) = match r.map(|r| &r.result) {
                        Some(Ok(v)) => (v.clone(), None),
                        Some(Err(e)) => (Value::Null, Some(e.clone())),
                        None => (Value::Null, Some("reply has no answer for this row".to_string())),
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
                    });
                }
                Ok(outcomes)
            }
            Err(e) => match e.action {
                RetryAction::Abort => Err(Abort(format!("{} refused the job: {}", self.endpoint.label, e.message))),
                RetryAction::Retry { .. } => Ok(self.all_failed(
                    call,
                    format!("gave up after {attempts} attempts: {}", e.message),
                    attempts,
                    latency_ms,
                )),
                RetryAction::RowError => Ok(self.all_failed(call, e.message, attempts, latency_ms)),
            },
        }
    }

    fn all_failed(&self, call: &Call, message: String, attempts: u32, latency_ms: Option<i64>) -> Vec<Outcome> {
        call.rows
            .iter()
            .map(|row| Outcome { latency_ms, ..Outcome::failed(*row, message.clone(), attempts) })
            .collect()
    }

    async fn attempt(&self, call: &Call) -> Result<Answer, AttemptError> {
        self.limiter.admit(call.est_tokens).await;
        self.stats.attempts.fetch_add(1, Ordering::Relaxed);
        let token = self
            .endpoint
            .credentials
            .bearer(&self.http)
            .await
            .map_err(|e| AttemptError { action: RetryAction::Abort, message: e.to_string() })?;
        let mut request = self
            .http
            .post(self.endpoint.url_for(call.route).as_ref())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .timeout(self.policy.timeout)
            .body(call.body.clone());
        if let Some(token) = token {
            let mut value = HeaderValue::from_str(&format!("Bearer {}", token.expose()))
                .map_err(|_| AttemptError { action: RetryAction::Abort, message: "the token contains characters not allowed in an HTTP header".into() })?;
            // Keeps the token out of any debug output of the request.
            value.set_sensitive(true);
            request = request.header(AUTHORIZATION, value);
        }
        let sent = Instant::now();
        let response = request.send().await.map_err(|e| transport_error(&e))?;
        let status = response.status();
        let headers = response.headers().clone();
        let after = retry_after(&headers);
        self.limiter.observe(&headers, status.as_u16() == 429, after);
        if !status.is_success() {
            let action = classify_status(status, &headers);
            if status.as_u16() == 429 {
                self.stats.rate_limited.fetch_add(1, Ordering::Relaxed);
            }
            let body = response.bytes().await.unwrap_or_default();
            let message = format!("HTTP {}: {}", status.as_u16(), wire::error_message(&body));
            return Err(AttemptError { action, message });
        }
        if self.stream {
            let (reply, ttft) = stream::read(response, &self.shape, sent).await.map_err(|e| match e {
                stream::StreamError::Transport(m) => AttemptError::retry(m, None, false),
                stream::StreamError::Reply(m) => AttemptError { action: RetryAction::RowError, message: m },
            })?;
            return Ok(Answer { reply, ttft });
        }
        let body = response.bytes().await.map_err(|e| transport_error(&e))?;
        let reply = self
            .shape
            .parse(&body, call.rows.len())
            .map_err(|message| AttemptError { action: RetryAction::RowError, message })?;
        Ok(Answer { reply, ttft: None })
    }
}

/// Connection errors, resets and timeouts are transient. reqwest's messages
/// name the URL, never headers, so no credential can leak through them.
fn transport_error(e: &reqwest::Error) -> AttemptError {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else {
        "connection failed"
    };
    let mut message = format!("{kind}: {e}");
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        message.push_str(&format!(": {s}"));
        source = s.source();
    }
    AttemptError::retry(message, None, false)
}
