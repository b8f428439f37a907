//! The simulator: an OpenAI- and Databricks-compatible LLM server with no
//! model behind it, used by every test and benchmark (`aiq simulate` runs it
//! on its own).
//!
//! It answers deterministically from the request (so tests can check each
//! row got its own answer), charges usage with the same token estimate as
//! the client ([`crate::ai::tokens`]), and reproduces what makes real endpoints
//! hard to drive: RPM/TPM limits with `Retry-After`, injected faults
//! (5xx, dropped connections, stalls), prefix caching, streaming and
//! latency. This file owns the configuration, the server's life cycle and
//! the routes; each concern has its own file:
//! [`handler`](self::handler) (the request pipeline), [`answer`](self::answer)
//! and [`schema`](self::schema) (the replies), [`stream`](self::stream) (SSE),
//! [`limits`](self::limits), [`faults`](self::faults), [`cache`](self::cache),
//! [`oauth`](self::oauth), [`hostile`](self::hostile) (error replies that
//! echo credentials or run long) and [`stats`](self::stats). Google's Gemini
//! API is [`gemini`](self::gemini): its own wire over the same pipeline;
//! Azure OpenAI's paths, credentials and errors are [`azure`](self::azure);
//! Amazon Bedrock's Converse API, with SigV4 checks, is
//! [`bedrock`](self::bedrock), and its batch inference jobs (reading and
//! writing S3) are [`bedrock_batch`](self::bedrock_batch).

mod answer;
mod anthropic;
mod anthropic_batch;
mod azure;
mod batch;
mod bedrock;
mod bedrock_batch;
mod cache;
mod faults;
mod gemini;
mod handler;
mod hostile;
mod limits;
mod oauth;
mod schema;
mod stats;
mod stream;
#[cfg(test)]
mod tests;
mod tls;

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use tokio::sync::oneshot;

pub use batch::BatchStats;
pub use bedrock::{
    CONTAINER_TOKEN as AWS_CONTAINER_TOKEN, KEYS as AWS_KEYS,
    WEB_IDENTITY_TOKEN as AWS_WEB_IDENTITY_TOKEN,
};
pub use gemini::GeminiStats;
pub use oauth::{CLIENT_ID, CLIENT_SECRET};
pub use stats::SimStats;

use answer::Task;
use faults::Faults;
use limits::Limits;
use stats::Counters;

/// Default reply length in tokens.
pub const DEFAULT_OUTPUT_TOKENS: u64 = 32;
/// Default token-bucket depth, in seconds of the per-minute rate.
pub const DEFAULT_BURST_SECONDS: f64 = 10.0;
/// Default fault kinds drawn when `fault_rate` > 0.
pub const DEFAULT_FAULTS: &str = "500,502,503,reset,slow";
/// Default stall of a `slow` fault.
pub const DEFAULT_SLOW_MS: u64 = 30_000;
/// Default embedding width.
pub const DEFAULT_EMBEDDING_DIM: usize = 16;
/// Largest request body accepted (base64 images make bodies big).
const MAX_BODY_BYTES: usize = 64 << 20;

/// How the simulator behaves. Every field is also an `aiq simulate` flag;
/// the defaults suit tests (no latency, no limits, no faults).
#[derive(Debug, Clone, clap::Args)]
pub struct SimConfig {
    /// Port to listen on (127.0.0.1); 0 picks a free port.
    #[arg(long, default_value_t = 0)]
    pub port: u16,
    /// Bearer token every inference request must carry; unset accepts any
    /// or none. The Gemini routes take it as Google's key (`x-goog-api-key`
    /// or `?key=`).
    #[arg(long)]
    pub token: Option<String>,
    /// Base latency of every request, in milliseconds (0 for tests; try 300
    /// to mimic a hosted model).
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    /// Inter-token latency: milliseconds per output token.
    #[arg(long, default_value_t = 0.0)]
    pub itl_ms: f64,
    /// Streaming only: milliseconds until the first chunk; 0 means use
    /// `--latency-ms`. Prefill time is added on top.
    #[arg(long, default_value_t = 0)]
    pub ttft_ms: u64,
    /// Prefill cost: microseconds per prompt token not read from the cache.
    #[arg(long, default_value_t = 0.0)]
    pub prefill_us_per_token: f64,
    /// Reply length in tokens when the request sets no smaller `max_tokens`.
    #[arg(long, default_value_t = DEFAULT_OUTPUT_TOKENS)]
    pub output_tokens: u64,
    /// Requests per minute (token bucket); unset means unlimited.
    #[arg(long)]
    pub rpm: Option<u64>,
    /// Tokens per minute, charged at admission as prompt estimate +
    /// `max_tokens` (or `--output-tokens`); unset means unlimited.
    #[arg(long)]
    pub tpm: Option<u64>,
    /// Output tokens per minute, enforced the Databricks way: `max_tokens`
    /// (or `--output-tokens`) is reserved at admission and the unused part
    /// refunded when the reply completes; unset means unlimited.
    #[arg(long)]
    pub otpm: Option<u64>,
    /// Bucket depth in seconds: a bucket holds `limit / 60 * burst_seconds`.
    #[arg(long, default_value_t = DEFAULT_BURST_SECONDS)]
    pub burst_seconds: f64,
    /// Probability (0..1) that a request gets a fault from `--faults`.
    #[arg(long, default_value_t = 0.0)]
    pub fault_rate: f64,
    /// Fault kinds to draw from: comma list of 500, 502, 503, 529, 429 (a
    /// refusal unrelated to load, with `Retry-After: 1` as `--retry-after`
    /// says), reset (connection dropped before the reply), slow (stall
    /// `--slow-ms`), and
    /// success statuses that are no answer: html (a proxy's error page),
    /// truncated (JSON cut short), error200 (`{"error":{..}}`); and cut (the
    /// call runs and is counted, then its 200 reply breaks off halfway;
    /// non-streamed replies only).
    #[arg(long, default_value = DEFAULT_FAULTS)]
    pub faults: String,
    /// The first N authorised inference requests answer 500.
    #[arg(long, default_value_t = 0)]
    pub fail_first: u64,
    /// A hostile server: every error reply (401, 400, 404, 429, 5xx, on the
    /// inference and OAuth token routes) quotes the request's headers in
    /// its message, `Authorization` included. For testing that clients
    /// keep secrets out of what they print and store.
    #[arg(long)]
    pub echo_headers: bool,
    /// A hostile server: every error reply's message is padded to this
    /// many bytes (0: off), sent without a length, for testing how much of
    /// it a client reads and keeps.
    #[arg(long, default_value_t = 0, value_name = "BYTES")]
    pub error_body_bytes: usize,
    /// Seed of the fault RNG, for repeatable runs.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Extra delay of a `slow` fault, in milliseconds.
    #[arg(long, default_value_t = DEFAULT_SLOW_MS)]
    pub slow_ms: u64,
    /// Width of embedding vectors.
    #[arg(long, default_value_t = DEFAULT_EMBEDDING_DIM)]
    pub embedding_dim: usize,
    /// Disable the prefix cache (no reply reports cached tokens).
    #[arg(long)]
    pub no_cache: bool,
    /// Databricks endpoint names (and Azure OpenAI deployments) that exist
    /// (comma list); empty means every name exists. Others answer 404
    /// RESOURCE_DOES_NOT_EXIST (Azure: DeploymentNotFound).
    #[arg(long, value_delimiter = ',')]
    pub endpoints: Vec<String>,
    /// Which replies carry the `x-ratelimit-*` headers: `every` reply (as
    /// OpenAI), `on429` only (as many proxies), or `never` (as Databricks).
    #[arg(long, value_enum, default_value_t = RateHeaders::Every)]
    pub rate_headers: RateHeaders,
    /// What a 429 says about when to come back: `precise` (`Retry-After` in
    /// whole seconds and `retry-after-ms`), `seconds` (`Retry-After` only)
    /// or `none` (a bare 429, with `--rate-headers never`).
    #[arg(long, value_enum, default_value_t = RetryAfterHint::Precise)]
    pub retry_after: RetryAfterHint,
    /// Ways in which replies differ from OpenAI's (comma list): harmless
    /// ones, `no-role` (no `message.role`), `bad-usage`
    /// (`"completion_tokens": "many"`), `negative-usage`, `no-usage`,
    /// `extra-fields` (unknown fields at every level); and `no-choices`, a
    /// reply that is JSON but no answer.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub quirks: Vec<Quirk>,
    /// Serve HTTPS (HTTP/2 or HTTP/1.1 by ALPN) with a certificate from a
    /// test CA made at start; clients must trust that CA.
    #[arg(long)]
    pub tls: bool,
    /// With `--tls`: concurrent streams allowed per HTTP/2 connection.
    #[arg(long, default_value_t = DEFAULT_MAX_STREAMS)]
    pub max_streams: u32,
    /// Batch API: milliseconds from creating a batch to its last answer
    /// (lines are answered evenly over it).
    #[arg(long, default_value_t = 0)]
    pub batch_turnaround_ms: u64,
    /// Batch API: probability (0..1) that a line fails with a 500.
    #[arg(long, default_value_t = 0.0)]
    pub batch_fail_rate: f64,
    /// Batch API: the first N batches expire part-done.
    #[arg(long, default_value_t = 0)]
    pub batch_expire_first: u64,
    /// Batch API: share (0..1) of its lines an expiring batch answers.
    #[arg(long, default_value_t = 0.5)]
    pub batch_expire_share: f64,
    /// Batch API: enqueued-token cap (prompt + max_tokens of every line of
    /// unfinished batches); a batch over it fails with token_limit_exceeded.
    #[arg(long)]
    pub batch_token_cap: Option<u64>,
    /// Batch API: delay the reply to a batch creation (the batch exists at once).
    #[arg(long, default_value_t = 0)]
    pub batch_create_delay_ms: u64,
    /// Probability (0..1) that a typed (structured-output) reply is cut off
    /// halfway with finish_reason = length, as when max_tokens runs out.
    #[arg(long, default_value_t = 0.0)]
    pub truncate_rate: f64,
    /// Probability (0..1) that a typed reply is valid JSON that does not
    /// match its schema.
    #[arg(long, default_value_t = 0.0)]
    pub mismatch_rate: f64,
    /// The first N typed replies are cut off (then --truncate-rate applies).
    #[arg(long, default_value_t = 0)]
    pub truncate_first: u64,
    /// The N typed replies after those cut off do not match their schema.
    #[arg(long, default_value_t = 0)]
    pub mismatch_first: u64,
    /// The model's context window in tokens: a request whose prompt is
    /// longer answers 400 `context_length_exceeded`, with OpenAI's message.
    /// Unset means unlimited.
    #[arg(long, value_name = "TOKENS")]
    pub context_tokens: Option<u64>,
    /// Requests worked on at once, as a server's slots (llama.cpp
    /// `--parallel`, vLLM's batch); the others wait their turn, their wait
    /// part of their latency. 0: no limit.
    #[arg(long, default_value_t = 0)]
    pub slots: usize,
    /// Bedrock batch inference: the S3-compatible server (e.g. moto) where
    /// jobs read their input and write their output; unset, every job fails
    /// for want of its input.
    #[arg(long, value_name = "URL")]
    pub bedrock_s3_endpoint: Option<String>,
    /// Bedrock batch inference: a job with fewer records fails at
    /// validation, as AWS's quota "Minimum number of records per batch
    /// inference job" makes it.
    #[arg(long, default_value_t = bedrock_batch::DEFAULT_MIN_RECORDS)]
    pub bedrock_min_records: usize,
}

/// Streams per HTTP/2 connection: hypercorn's default, about what hosted
/// front ends allow.
pub const DEFAULT_MAX_STREAMS: u32 = 100;

/// See [`SimConfig::rate_headers`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum RateHeaders {
    #[default]
    Every,
    On429,
    Never,
}

/// See [`SimConfig::retry_after`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum RetryAfterHint {
    #[default]
    Precise,
    Seconds,
    None,
}

/// See [`SimConfig::quirks`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Quirk {
    NoRole,
    BadUsage,
    NegativeUsage,
    NoUsage,
    ExtraFields,
    NoChoices,
}

impl Default for SimConfig {
    fn default() -> SimConfig {
        SimConfig {
            port: 0,
            token: None,
            latency_ms: 0,
            itl_ms: 0.0,
            ttft_ms: 0,
            prefill_us_per_token: 0.0,
            output_tokens: DEFAULT_OUTPUT_TOKENS,
            rpm: None,
            tpm: None,
            otpm: None,
            burst_seconds: DEFAULT_BURST_SECONDS,
            fault_rate: 0.0,
            faults: DEFAULT_FAULTS.to_string(),
            fail_first: 0,
            echo_headers: false,
            error_body_bytes: 0,
            seed: 0,
            slow_ms: DEFAULT_SLOW_MS,
            embedding_dim: DEFAULT_EMBEDDING_DIM,
            no_cache: false,
            endpoints: Vec::new(),
            rate_headers: RateHeaders::Every,
            retry_after: RetryAfterHint::Precise,
            quirks: Vec::new(),
            tls: false,
            max_streams: DEFAULT_MAX_STREAMS,
            batch_turnaround_ms: 0,
            batch_fail_rate: 0.0,
            batch_expire_first: 0,
            batch_expire_share: 0.5,
            batch_token_cap: None,
            batch_create_delay_ms: 0,
            truncate_rate: 0.0,
            mismatch_rate: 0.0,
            truncate_first: 0,
            mismatch_first: 0,
            context_tokens: None,
            slots: 0,
            bedrock_s3_endpoint: None,
            bedrock_min_records: bedrock_batch::DEFAULT_MIN_RECORDS,
        }
    }
}

impl SimConfig {
    /// Settings that would make no sense or overflow a `Duration` later.
    fn check(&self) -> Result<(), String> {
        let non_negative = [
            ("--itl-ms", self.itl_ms),
            ("--prefill-us-per-token", self.prefill_us_per_token),
        ];
        for (flag, v) in non_negative {
            if !v.is_finite() || v < 0.0 {
                return Err(format!("{flag} must be a finite number >= 0, got {v}"));
            }
        }
        if !self.burst_seconds.is_finite() || self.burst_seconds <= 0.0 {
            return Err(format!(
                "--burst-seconds must be > 0, got {}",
                self.burst_seconds
            ));
        }
        for (flag, v) in [
            ("--batch-fail-rate", self.batch_fail_rate),
            ("--batch-expire-share", self.batch_expire_share),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(format!("{flag} must be between 0 and 1, got {v}"));
            }
        }
        if self.embedding_dim == 0 {
            return Err("--embedding-dim must be at least 1".to_string());
        }
        Ok(())
    }
}

/// Everything the handlers share.
pub(crate) struct ServerState {
    cfg: SimConfig,
    faults: Faults,
    typed_faults: faults::TypedFaults,
    limits: Limits,
    cache: cache::PrefixCache,
    counters: Arc<Counters>,
    batches: batch::BatchStore,
    gemini: gemini::Store,
    /// `--slots`: a permit per request being worked on; None: no limit.
    slots: Option<Arc<tokio::sync::Semaphore>>,
    anthropic_batches: anthropic_batch::Store,
    bedrock_batches: bedrock_batch::Store,
}

/// A running simulator; it stops when shut down or dropped.
pub struct Simulator {
    addr: SocketAddr,
    /// With `tls`: the test CA's certificate (PEM) clients must trust.
    ca_pem: Option<String>,
    counters: Arc<Counters>,
    state: Arc<ServerState>,
    stop: Option<oneshot::Sender<()>>,
}

impl Simulator {
    /// Checks `cfg`, binds 127.0.0.1:`cfg.port` and serves in a background
    /// task. Bad settings are `InvalidInput` errors.
    pub async fn start(cfg: SimConfig) -> std::io::Result<Simulator> {
        let invalid = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, m);
        let faults =
            Faults::new(cfg.fault_rate, &cfg.faults, cfg.fail_first, cfg.seed).map_err(invalid)?;
        cfg.check().map_err(invalid)?;
        let typed_faults = faults::TypedFaults::new(
            (cfg.truncate_rate, cfg.truncate_first),
            (cfg.mismatch_rate, cfg.mismatch_first),
            cfg.seed,
        )
        .map_err(invalid)?;
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", cfg.port)).await?;
        let addr = listener.local_addr()?;
        let counters = Arc::new(Counters::default());
        let tls = match cfg.tls {
            true => Some(tls::TestCa::new()?),
            false => None,
        };
        let max_streams = cfg.max_streams.max(1);
        let state = Arc::new(ServerState {
            limits: Limits::new(cfg.rpm, cfg.tpm, cfg.burst_seconds)
                .with_otpm(cfg.otpm, cfg.burst_seconds)
                .with_hints(cfg.rate_headers, cfg.retry_after),
            cache: cache::PrefixCache::new(!cfg.no_cache),
            faults,
            typed_faults,
            counters: counters.clone(),
            batches: batch::BatchStore::new(cfg.seed),
            gemini: gemini::Store::default(),
            slots: (cfg.slots > 0).then(|| Arc::new(tokio::sync::Semaphore::new(cfg.slots))),
            anthropic_batches: anthropic_batch::Store::default(),
            bedrock_batches: bedrock_batch::Store::default(),
            cfg,
        });
        let (stop, stopped) = oneshot::channel::<()>();
        let ca_pem = tls.as_ref().map(|t| t.ca_pem.clone());
        match tls {
            Some(ca) => {
                tokio::spawn(tls::serve(
                    listener,
                    router(state.clone()),
                    ca.acceptor,
                    max_streams,
                    counters.clone(),
                    stopped,
                ));
            }
            None => {
                let server =
                    axum::serve(listener, router(state.clone())).with_graceful_shutdown(async {
                        // A dropped sender also ends the wait: dropping the Simulator stops it.
                        let _ = stopped.await;
                    });
                tokio::spawn(async move {
                    if let Err(e) = server.await {
                        eprintln!("simulator stopped: {e}");
                    }
                });
            }
        }
        Ok(Simulator {
            addr,
            ca_pem,
            counters,
            state,
            stop: Some(stop),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT` (`https://` with `tls`), without a
    /// trailing slash.
    pub fn base_url(&self) -> String {
        let scheme = if self.ca_pem.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.addr)
    }

    /// With `tls`: the test CA's certificate (PEM) clients must trust.
    pub fn ca_pem(&self) -> Option<&str> {
        self.ca_pem.as_deref()
    }

    pub fn stats(&self) -> SimStats {
        self.counters.snapshot()
    }

    /// What the Files and Batch APIs have seen.
    pub fn batch_stats(&self) -> BatchStats {
        self.state.batches.stats()
    }

    /// What the Gemini routes have seen (caches, batches, bad keys).
    pub fn gemini_stats(&self) -> GeminiStats {
        self.state.gemini.stats()
    }

    /// Stops accepting connections; requests in progress finish.
    pub fn shutdown(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        self.stop_now();
    }
}

/// Runs a simulator until Ctrl-C, for `aiq simulate`.
pub async fn serve_forever(cfg: SimConfig) -> std::io::Result<()> {
    let sim = Simulator::start(cfg).await?;
    let mut out = std::io::stdout();
    writeln!(out, "simulator listening on {}", sim.base_url())?;
    if let Some(pem) = sim.ca_pem() {
        let path = std::env::temp_dir().join(format!("aiq-simulator-ca-{}.pem", sim.addr.port()));
        std::fs::write(&path, pem)?;
        writeln!(
            out,
            "test CA written to {} (pass --ca-cert {0})",
            path.display()
        )?;
    }
    out.flush()?;
    tokio::signal::ctrl_c().await?;
    sim.shutdown();
    Ok(())
}

fn router(state: Arc<ServerState>) -> Router {
    Router::new()
        .route("/v1/chat/completions", handler::openai(Task::Chat))
        .route("/v1/completions", handler::openai(Task::Completion))
        .route("/v1/embeddings", handler::openai(Task::Embedding))
        .route(
            "/serving-endpoints/{name}/invocations",
            post(handler::databricks),
        )
        .route("/v1/messages", post(handler::anthropic))
        .route(
            "/v1/messages/batches",
            post(anthropic_batch::create).get(anthropic_batch::list),
        )
        .route("/v1/messages/batches/{id}", get(anthropic_batch::get))
        .route(
            "/v1/messages/batches/{id}/cancel",
            post(anthropic_batch::cancel),
        )
        .route(
            "/v1/messages/batches/{id}/results",
            get(anthropic_batch::results),
        )
        .route("/oidc/v1/token", post(oauth::token))
        .route("/v1/files", post(batch::upload))
        .route("/v1/files/{id}", get(batch::file_info))
        .route("/v1/files/{id}/content", get(batch::file_content))
        .route("/v1/batches", post(batch::create).get(batch::list))
        .route("/v1/batches/{id}", get(batch::get))
        .route("/v1/batches/{id}/cancel", post(batch::cancel))
        .route("/model-invocation-job", post(bedrock_batch::create))
        .route("/model-invocation-job/{id}", get(bedrock_batch::get))
        .route("/model-invocation-job/{id}/stop", post(bedrock_batch::stop))
        .merge(gemini::routes())
        .merge(azure::routes())
        .merge(bedrock::routes())
        .fallback(handler::not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            hostile::errors,
        ))
        .with_state(state)
}
