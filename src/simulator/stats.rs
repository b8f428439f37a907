//! Counters the simulator keeps while it serves, and the snapshot
//! ([`SimStats`]) tests and benchmarks read back.
//!
//! Counters are atomics so the hot path never takes a lock; only the
//! per-prompt success map needs a mutex. `ok_by_prompt` exists so tests can
//! assert "exactly one successful call per row" after retries and faults.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;

/// A snapshot of what the simulator has seen since it started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SimStats {
    /// Inference requests received (chat, completions, embeddings), whatever
    /// their fate. OAuth token exchanges are counted in `oauth_tokens` only.
    pub requests: u64,
    /// Requests answered successfully (a stream counts once it has finished).
    pub ok: u64,
    /// Requests refused with 429 by the RPM/TPM buckets.
    pub rate_limited: u64,
    /// Injected faults: `fail_first` 500s and random faults (incl. `slow`).
    pub faults_injected: u64,
    /// Requests refused for a missing or wrong bearer token.
    pub unauthorized: u64,
    /// Unknown routes and unknown Databricks endpoints.
    pub not_found: u64,
    /// Malformed bodies and `[[sim:400]]` markers.
    pub bad_request: u64,
    /// OAuth access tokens handed out by `/oidc/v1/token`.
    pub oauth_tokens: u64,
    /// Prompt tokens of successful requests.
    pub prompt_tokens: u64,
    /// Completion tokens of successful requests.
    pub completion_tokens: u64,
    /// Prompt tokens read from the prefix cache by successful requests.
    pub cached_tokens: u64,
    /// Successful completions per last user text (chat), prompt
    /// (completions) or input string (embeddings).
    pub ok_by_prompt: BTreeMap<String, u64>,
    /// Peak number of inference requests being handled at once.
    pub max_in_flight: u64,
    /// TLS handshakes that failed (a client not trusting the test CA).
    pub tls_failures: u64,
    /// Requests refused with 400 `context_length_exceeded` (`--context-tokens`).
    pub context_exceeded: u64,
}

/// The live counters behind [`SimStats`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub requests: AtomicU64,
    pub ok: AtomicU64,
    pub rate_limited: AtomicU64,
    pub faults_injected: AtomicU64,
    pub unauthorized: AtomicU64,
    pub not_found: AtomicU64,
    pub bad_request: AtomicU64,
    pub oauth_tokens: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub completion_tokens: AtomicU64,
    pub cached_tokens: AtomicU64,
    pub context_exceeded: AtomicU64,
    ok_by_prompt: Mutex<BTreeMap<String, u64>>,
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
    pub tls_failures: AtomicU64,
}

/// Adds one to a counter; relaxed ordering is enough for statistics.
pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Counters {
    /// Records one successful request with its usage and the prompts it
    /// answered.
    pub fn record_ok(&self, prompt: u64, completion: u64, cached: u64, keys: &[String]) {
        bump(&self.ok);
        self.prompt_tokens.fetch_add(prompt, Ordering::Relaxed);
        self.completion_tokens
            .fetch_add(completion, Ordering::Relaxed);
        self.cached_tokens.fetch_add(cached, Ordering::Relaxed);
        // A poisoned lock only means another handler panicked mid-insert;
        // the map itself is still usable.
        let mut map = self.ok_by_prompt.lock().unwrap_or_else(|e| e.into_inner());
        for key in keys {
            *map.entry(key.clone()).or_insert(0) += 1;
        }
    }

    pub fn snapshot(&self) -> SimStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        SimStats {
            requests: get(&self.requests),
            ok: get(&self.ok),
            rate_limited: get(&self.rate_limited),
            faults_injected: get(&self.faults_injected),
            unauthorized: get(&self.unauthorized),
            not_found: get(&self.not_found),
            bad_request: get(&self.bad_request),
            oauth_tokens: get(&self.oauth_tokens),
            prompt_tokens: get(&self.prompt_tokens),
            completion_tokens: get(&self.completion_tokens),
            cached_tokens: get(&self.cached_tokens),
            ok_by_prompt: self
                .ok_by_prompt
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            max_in_flight: get(&self.max_in_flight),
            tls_failures: get(&self.tls_failures),
            context_exceeded: get(&self.context_exceeded),
        }
    }
}

/// Marks one inference request as in flight for as long as it lives; a
/// stream carries it until its last chunk, so a slow stream counts too.
pub(crate) struct InFlight(Arc<Counters>);

impl InFlight {
    pub fn new(counters: Arc<Counters>) -> InFlight {
        bump(&counters.requests);
        let now = counters.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        counters.max_in_flight.fetch_max(now, Ordering::Relaxed);
        InFlight(counters)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_flight_tracks_the_peak() {
        let c = Arc::new(Counters::default());
        let a = InFlight::new(c.clone());
        let b = InFlight::new(c.clone());
        drop(a);
        drop(b);
        let _c = InFlight::new(c.clone());
        let s = c.snapshot();
        assert_eq!((s.requests, s.max_in_flight), (3, 2));
    }
}
