//! Rate limits: a requests-per-minute and a tokens-per-minute token bucket,
//! refilled continuously, as OpenAI and Databricks enforce them.
//!
//! Both buckets are checked under one lock and charged only together, so a
//! request refused by one bucket does not drain the other. Token cost is
//! charged at admission (prompt estimate + the reply budget), like OpenAI
//! does. The `x-ratelimit-*` headers follow OpenAI's names so clients can be
//! tested against them.
//!
//! An optional output-tokens-per-minute bucket (OTPM) works the Databricks
//! way: a request's `max_tokens` is reserved at admission, and the part its
//! reply did not use is refunded when it completes ([`Limits::refund_output`]),
//! so clients that reserve generously are slowed only while they hold it.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderName, HeaderValue};

use super::{RateHeaders, RetryAfterHint};

/// One continuously refilled bucket.
#[derive(Debug)]
struct Bucket {
    /// The limit per minute, as configured (reported in headers).
    per_minute: u64,
    /// Refill rate per second.
    rate: f64,
    /// Largest level: `per_minute / 60 * burst_seconds`, at least 1.
    capacity: f64,
    level: f64,
}

impl Bucket {
    fn new(per_minute: u64, burst_seconds: f64) -> Bucket {
        let rate = per_minute as f64 / 60.0;
        let capacity = (rate * burst_seconds).max(1.0);
        Bucket {
            per_minute,
            rate,
            capacity,
            level: capacity,
        }
    }

    fn refill(&mut self, elapsed: f64) {
        self.level = (self.level + elapsed * self.rate).min(self.capacity);
    }

    /// A cost above the capacity could never be admitted; it is capped so
    /// such a request waits for a full bucket instead of failing forever.
    fn cost(&self, want: f64) -> f64 {
        want.min(self.capacity)
    }

    /// Time until `cost` is available (zero if it is now).
    fn wait(&self, cost: f64) -> Duration {
        let missing = self.cost(cost) - self.level;
        if missing <= 0.0 || self.rate <= 0.0 {
            return Duration::ZERO;
        }
        Duration::from_secs_f64(missing / self.rate)
    }

    fn time_to_full(&self) -> Duration {
        if self.rate <= 0.0 {
            return Duration::ZERO;
        }
        Duration::from_secs_f64(((self.capacity - self.level) / self.rate).max(0.0))
    }

    fn headers(&self, kind: &str, headers: &mut HeaderMap) {
        let mut put = |name: String, value: String| {
            if let (Ok(n), Ok(v)) = (HeaderName::try_from(name), HeaderValue::try_from(value)) {
                headers.insert(n, v);
            }
        };
        put(
            format!("x-ratelimit-limit-{kind}"),
            self.per_minute.to_string(),
        );
        put(
            format!("x-ratelimit-remaining-{kind}"),
            (self.level.max(0.0).floor() as u64).to_string(),
        );
        put(
            format!("x-ratelimit-reset-{kind}"),
            format_duration(self.time_to_full()),
        );
    }
}

/// OpenAI-style reset duration: seconds with up to three decimals ("1.2s").
fn format_duration(d: Duration) -> String {
    let s = format!("{:.3}", d.as_secs_f64());
    let s = s.trim_end_matches('0').trim_end_matches('.');
    format!("{s}s")
}

#[derive(Debug)]
struct Buckets {
    requests: Option<Bucket>,
    tokens: Option<Bucket>,
    output: Option<Bucket>,
    last: Instant,
}

/// The outcome of asking the limiter to admit a request.
#[derive(Debug)]
pub enum Admission {
    /// Go ahead; the headers (possibly empty) go on the reply.
    Admitted(HeaderMap),
    /// Refused: answer 429 with these headers (incl. `Retry-After`).
    Refused(HeaderMap),
}

/// The RPM/TPM limiter of one simulator.
#[derive(Debug)]
pub struct Limits {
    /// `None` when neither limit is set: no lock on the hot path.
    inner: Option<Mutex<Buckets>>,
    /// Which replies carry `x-ratelimit-*` headers.
    rate_headers: RateHeaders,
    /// What a 429 says about when to come back.
    retry_after: RetryAfterHint,
}

impl Limits {
    pub fn new(rpm: Option<u64>, tpm: Option<u64>, burst_seconds: f64) -> Limits {
        if rpm.is_none() && tpm.is_none() {
            return Limits {
                inner: None,
                rate_headers: RateHeaders::Every,
                retry_after: RetryAfterHint::Precise,
            };
        }
        let burst = if burst_seconds > 0.0 {
            burst_seconds
        } else {
            1.0
        };
        Limits {
            inner: Some(Mutex::new(Buckets {
                requests: rpm.map(|l| Bucket::new(l, burst)),
                tokens: tpm.map(|l| Bucket::new(l, burst)),
                output: None,
                last: Instant::now(),
            })),
            rate_headers: RateHeaders::Every,
            retry_after: RetryAfterHint::Precise,
        }
    }

    /// Send rate headers and `Retry-After` the way `rate_headers` and
    /// `retry_after` say (other servers than OpenAI differ here).
    pub fn with_hints(mut self, rate_headers: RateHeaders, retry_after: RetryAfterHint) -> Limits {
        self.rate_headers = rate_headers;
        self.retry_after = retry_after;
        self
    }

    /// Also limit output tokens per minute (reserve `max_tokens`, refund
    /// the unused part).
    pub fn with_otpm(mut self, otpm: Option<u64>, burst_seconds: f64) -> Limits {
        let Some(otpm) = otpm else { return self };
        let inner = self.inner.get_or_insert_with(|| {
            Mutex::new(Buckets {
                requests: None,
                tokens: None,
                output: None,
                last: Instant::now(),
            })
        });
        let b = inner.get_mut().unwrap_or_else(|e| e.into_inner());
        b.output = Some(Bucket::new(
            otpm,
            if burst_seconds > 0.0 {
                burst_seconds
            } else {
                1.0
            },
        ));
        self
    }

    /// Admits one request costing `tokens` against the TPM bucket, or says
    /// how long to wait (the handler always goes through `admit_reserving`).
    #[cfg(test)]
    pub fn admit(&self, tokens: u64) -> Admission {
        self.admit_reserving(tokens, 0)
    }

    /// Like [`Limits::admit`], also reserving `output` (the request's
    /// `max_tokens`) against the OTPM bucket.
    pub fn admit_reserving(&self, tokens: u64, output: u64) -> Admission {
        let Some(inner) = &self.inner else {
            return Admission::Admitted(HeaderMap::new());
        };
        let mut b = inner.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let elapsed = now.duration_since(b.last).as_secs_f64();
        b.last = now;
        let tokens = tokens as f64;
        let output = output as f64;
        let mut wait = Duration::ZERO;
        if let Some(o) = &mut b.output {
            o.refill(elapsed);
            wait = wait.max(o.wait(output));
        }
        if let Some(r) = &mut b.requests {
            r.refill(elapsed);
            wait = wait.max(r.wait(1.0));
        }
        if let Some(t) = &mut b.tokens {
            t.refill(elapsed);
            wait = wait.max(t.wait(tokens));
        }
        let admitted = wait.is_zero();
        if admitted {
            if let Some(r) = &mut b.requests {
                r.level -= r.cost(1.0);
            }
            if let Some(t) = &mut b.tokens {
                t.level -= t.cost(tokens);
            }
            if let Some(o) = &mut b.output {
                o.level -= o.cost(output);
            }
        }
        let mut headers = HeaderMap::new();
        let send = match self.rate_headers {
            RateHeaders::Every => true,
            RateHeaders::On429 => !admitted,
            RateHeaders::Never => false,
        };
        if let Some(r) = b.requests.as_ref().filter(|_| send) {
            r.headers("requests", &mut headers);
        }
        if let Some(t) = b.tokens.as_ref().filter(|_| send) {
            t.headers("tokens", &mut headers);
        }
        if let Some(o) = b.output.as_ref().filter(|_| send) {
            o.headers("output-tokens", &mut headers);
        }
        if admitted {
            return Admission::Admitted(headers);
        }
        retry_after_headers(self.retry_after, wait, &mut headers);
        Admission::Refused(headers)
    }
}

/// A refusal's `Retry-After` (and `retry-after-ms`) for a `wait`, as
/// `hint` says. Retry-After is whole seconds (rounded up, at least 1) as
/// HTTP wants; retry-after-ms carries the precise figure.
pub(crate) fn retry_after_headers(hint: RetryAfterHint, wait: Duration, headers: &mut HeaderMap) {
    let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
    let ms = (wait.as_secs_f64() * 1000.0).ceil().max(1.0) as u64;
    if hint != RetryAfterHint::None {
        headers.insert("retry-after", HeaderValue::from(secs));
    }
    if hint == RetryAfterHint::Precise {
        headers.insert("retry-after-ms", HeaderValue::from(ms));
    }
}

impl Limits {
    /// Give back output tokens reserved at admission but not produced.
    pub fn refund_output(&self, unused: u64) {
        let Some(inner) = &self.inner else { return };
        let mut b = inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(o) = &mut b.output {
            o.level = (o.level + unused as f64).min(o.capacity);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rpm_bucket_refuses_after_its_burst() {
        // 60 rpm with a 2 s burst: two requests pass, the third waits ~1 s.
        let l = Limits::new(Some(60), None, 2.0);
        assert!(matches!(l.admit(0), Admission::Admitted(_)));
        assert!(matches!(l.admit(0), Admission::Admitted(_)));
        match l.admit(0) {
            Admission::Refused(h) => {
                assert_eq!(h["retry-after"], "1");
                let ms: u64 = h["retry-after-ms"].to_str().unwrap().parse().unwrap();
                assert!((900..=1000).contains(&ms), "{ms}");
                assert_eq!(h["x-ratelimit-limit-requests"], "60");
                assert_eq!(h["x-ratelimit-remaining-requests"], "0");
            }
            Admission::Admitted(_) => panic!("third request should be refused"),
        }
    }

    #[test]
    fn tpm_refusal_does_not_charge_requests() {
        let l = Limits::new(Some(600), Some(600), 1.0); // 10 requests, 10 tokens
        assert!(matches!(l.admit(10), Admission::Admitted(_)));
        assert!(matches!(l.admit(5), Admission::Refused(_)));
        match l.admit(0) {
            Admission::Admitted(h) => assert_eq!(h["x-ratelimit-remaining-requests"], "8"),
            Admission::Refused(_) => panic!("zero-token request should pass"),
        }
    }

    #[test]
    fn oversized_requests_wait_for_a_full_bucket() {
        let l = Limits::new(None, Some(60), 1.0); // capacity 1 token
        assert!(matches!(l.admit(1000), Admission::Admitted(_)));
        assert!(matches!(l.admit(1000), Admission::Refused(_)));
    }

    #[test]
    fn otpm_reserves_max_tokens_and_refunds_the_unused_part() {
        // 600 output tokens/min, 1 s burst: capacity 10.
        let l = Limits::new(None, None, 1.0).with_otpm(Some(600), 1.0);
        assert!(matches!(l.admit_reserving(5, 8), Admission::Admitted(_)));
        assert!(
            matches!(l.admit_reserving(5, 8), Admission::Refused(_)),
            "8 reserved, 2 left"
        );
        l.refund_output(6); // the reply used 2 of its 8
        assert!(matches!(l.admit_reserving(5, 8), Admission::Admitted(_)));
    }

    #[test]
    fn hints_follow_the_settings() {
        let refused = |h: RateHeaders, r: RetryAfterHint| {
            let l = Limits::new(Some(60), None, 1.0).with_hints(h, r);
            let first = match l.admit(0) {
                Admission::Admitted(h) => h,
                Admission::Refused(_) => panic!("first passes"),
            };
            match l.admit(0) {
                Admission::Refused(h) => (first, h),
                Admission::Admitted(_) => panic!("second is refused"),
            }
        };
        let (ok, no) = refused(RateHeaders::On429, RetryAfterHint::Seconds);
        assert!(ok.is_empty());
        assert_eq!(no["x-ratelimit-limit-requests"], "60");
        assert_eq!(no["retry-after"], "1");
        assert!(no.get("retry-after-ms").is_none());
        let (ok, no) = refused(RateHeaders::Never, RetryAfterHint::None);
        assert!(ok.is_empty() && no.is_empty(), "a bare 429");
    }

    #[test]
    fn no_limits_no_headers() {
        match Limits::new(None, None, 10.0).admit(1_000_000) {
            Admission::Admitted(h) => assert!(h.is_empty()),
            Admission::Refused(_) => panic!(),
        }
        assert_eq!(format_duration(Duration::from_millis(1200)), "1.2s");
        assert_eq!(format_duration(Duration::ZERO), "0s");
    }
}
