//! Retry decisions, in one place: which replies and faults are worth another
//! try, which belong to the row alone, and which mean the whole job must
//! stop. Also the parsing of the server's hints on when to come back
//! (`Retry-After` as seconds or HTTP date, `retry-after-ms`), and the one
//! retry loop ([`RetryPolicy::run`]) that model calls and side requests
//! (the Batch API's files and batches) both go through.

use std::future::Future;
use std::time::{Duration, SystemTime};

use backon::{ExponentialBuilder, Retryable};

use reqwest::header::HeaderMap;
use reqwest::StatusCode;

use crate::provider::dialect::Dialect;
use crate::provider::reply::BodyFault;
use crate::provider::{bedrock, gemini};

/// How many times and how patiently a call is retried.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub max_retries: u32,
    pub timeout: Duration,
    pub min_delay: Duration,
    pub max_delay: Duration,
    /// Retries allowed after attempts that may have been billed.
    pub max_ambiguous_retries: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 8,
            timeout: Duration::from_secs(300),
            min_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(60),
            max_ambiguous_retries: 1,
        }
    }
}

/// A failed attempt, as the retry loop sees it.
pub trait Failure {
    /// What the failure asks for ([`classify_status`] and friends).
    fn action(&self) -> &RetryAction;
}

/// Who paces the attempts a [`RetryPolicy::run`] makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pacing {
    /// A shared rate limiter paces every request of the job: a 429 has
    /// already slowed it, so the retry waits what the server asked (or the
    /// shortest backoff) and then queues at the new pace like any request.
    /// Growing its own backoff too would leave rows idle for up to a minute
    /// while the limit goes unused.
    Limiter,
    /// Nothing else paces these requests: a 429 backs off like any
    /// transient failure.
    Backoff,
}

impl RetryPolicy {
    /// Runs `attempt` until it succeeds, fails for good, `may_retry` says
    /// no, or the policy's retries run out: jittered exponential backoff
    /// (backon), never sooner than the server asked. `on_retry` hears of
    /// each retry and how long it waits.
    pub async fn run<T, E, Fut>(
        &self,
        pacing: Pacing,
        attempt: impl FnMut() -> Fut,
        may_retry: impl Fn(&E) -> bool,
        on_retry: impl Fn(&E, Duration),
    ) -> Result<T, E>
    where
        E: Failure,
        Fut: Future<Output = Result<T, E>>,
    {
        let backoff = ExponentialBuilder::default()
            .with_min_delay(self.min_delay)
            .with_max_delay(self.max_delay)
            .with_jitter()
            .with_max_times(self.max_retries as usize);
        attempt
            .retry(backoff)
            .when(|e: &E| matches!(e.action(), RetryAction::Retry { .. }) && may_retry(e))
            .notify(|e: &E, after: Duration| on_retry(e, after))
            // `dur` is None once the budget is spent, and then we stop:
            // never `Some` unconditionally (that retries a 429 forever).
            .adjust(|e: &E, dur: Option<Duration>| match e.action() {
                RetryAction::Retry {
                    rate_limited: true,
                    after,
                } if pacing == Pacing::Limiter => dur.map(|_| after.unwrap_or(self.min_delay)),
                RetryAction::Retry {
                    after: Some(after), ..
                } => dur.map(|d| d.max(*after)),
                _ => dur,
            })
            .await
    }
}

/// What to do after one attempt failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RetryAction {
    /// Transient: try again after backoff, and not before `after`.
    Retry {
        after: Option<Duration>,
        rate_limited: bool,
    },
    /// The request itself is wrong: record the error in the row, go on.
    RowError,
    /// The job cannot succeed (credentials refused, no such endpoint).
    Abort,
}

/// Classify an HTTP status: 408, 429 and 5xx retry; 401, 403 and 404 stop
/// the job; other 4xx belong to the row.
pub fn classify_status(status: StatusCode, headers: &HeaderMap) -> RetryAction {
    match status.as_u16() {
        429 => RetryAction::Retry {
            after: retry_after(headers),
            rate_limited: true,
        },
        408 | 500..=599 => RetryAction::Retry {
            after: retry_after(headers),
            rate_limited: false,
        },
        401 | 403 | 404 => RetryAction::Abort,
        // A redirect the client did not follow meets every call alike.
        300..=399 => RetryAction::Abort,
        _ => RetryAction::RowError,
    }
}

/// Classify an error reply of an endpoint speaking `dialect`: the status
/// table above, with what each provider says beside its status read from
/// the body (`head`, the start of it). The one place retries are decided.
pub fn classify(
    dialect: Dialect,
    status: StatusCode,
    headers: &HeaderMap,
    head: &[u8],
) -> RetryAction {
    match dialect {
        Dialect::Gemini => classify_gemini(status, headers, head),
        Dialect::Bedrock => classify_bedrock(status, headers, head),
        Dialect::Databricks | Dialect::OpenAi | Dialect::Anthropic | Dialect::Azure => {
            classify_status(status, headers)
        }
    }
}

/// Gemini's table (`{"error":{"code","message","status","details"}}`):
/// - a key Google does not take is a 400 `INVALID_ARGUMENT` whose
///   `google.rpc.ErrorInfo` reason is `API_KEY_INVALID`: the job stops, as
///   for a 401;
/// - `FAILED_PRECONDITION` (400: the API is not offered where the caller
///   is, or billing is off) meets every call alike: the job stops;
/// - a 429 `RESOURCE_EXHAUSTED` says when to come back in a
///   `google.rpc.RetryInfo` `retryDelay` (no `Retry-After`): honoured;
/// - 500 `INTERNAL`, 503 `UNAVAILABLE` (overloaded) and 504
///   `DEADLINE_EXCEEDED` are retried by the status table; other 400s are
///   the row's.
pub fn classify_gemini(status: StatusCode, headers: &HeaderMap, head: &[u8]) -> RetryAction {
    let details = gemini::ErrorDetails::of(head);
    if details.key_refused() || details.status.as_deref() == Some("FAILED_PRECONDITION") {
        return RetryAction::Abort;
    }
    match classify_status(status, headers) {
        RetryAction::Retry {
            after,
            rate_limited,
        } => RetryAction::Retry {
            after: after.or(details.retry_delay),
            rate_limited,
        },
        other => other,
    }
}

/// Bedrock's table: the error type (the `x-amzn-ErrorType` header, else
/// the body's `__type`) decides before the status
/// ([`bedrock::error_action`]): credentials refused, even as a 400
/// (`ExpiredTokenException`), stop the job; `ThrottlingException` and
/// `ModelNotReadyException` retry as rate limits;
/// `ServiceUnavailableException`, `ModelTimeoutException` and
/// `InternalServerException` retry; `ValidationException` is the row's.
/// Other types, and replies without one, follow the status table.
pub fn classify_bedrock(status: StatusCode, headers: &HeaderMap, head: &[u8]) -> RetryAction {
    let kind = bedrock::error_type(header_str(headers, "x-amzn-errortype"), head);
    let after = retry_after(headers);
    match kind.as_deref().and_then(bedrock::error_action) {
        Some(bedrock::ErrorKind::Refused) => RetryAction::Abort,
        Some(bedrock::ErrorKind::Throttled) => RetryAction::Retry {
            after,
            rate_limited: true,
        },
        Some(bedrock::ErrorKind::Transient) => RetryAction::Retry {
            after,
            rate_limited: false,
        },
        Some(bedrock::ErrorKind::Row) => RetryAction::RowError,
        None => classify_status(status, headers),
    }
}

/// Classify a success status whose body is not an answer. An unreadable
/// body (HTML, JSON cut short) is a fault of the path: retried like a 502.
/// An error object is classified by the status it names; naming none, it
/// is retried like a 500 (the server did not call the request bad, which
/// would have been a 400).
pub fn classify_body_fault(fault: &BodyFault) -> RetryAction {
    let status = match fault {
        BodyFault::Unreadable(_) | BodyFault::CutShort(_) => 502,
        BodyFault::Error { status, .. } => status.unwrap_or(500),
    };
    classify_status(
        StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
        &HeaderMap::new(),
    )
}

/// How an attempt that went out came to no answer, as far as billing goes
/// (see [`maybe_billed`]).
#[derive(Debug, Clone, Copy)]
pub enum Lost<'a> {
    /// No whole reply within the timeout.
    TimedOut,
    /// The connection broke while the body of a (non-streamed) reply with
    /// this status was being read.
    BodyBroke(StatusCode),
    /// A success status whose body is no answer.
    Body(&'a BodyFault),
}

/// Whether the provider may have run, and billed, an attempt that brought
/// no answer: one that timed out after sending (the server may still be
/// working on it), and a success whose body broke off or came cut short.
/// A non-streamed reply's status is sent when its answer is done, so such
/// a call ran. Such attempts are retried at most `max_ambiguous_retries`
/// times and marked in the row (`maybe_billed_twice`). An error status, a
/// proxy's page or an error object says the call did not run.
pub fn maybe_billed(lost: Lost<'_>) -> bool {
    match lost {
        Lost::TimedOut => true,
        Lost::BodyBroke(status) => status.is_success(),
        Lost::Body(fault) => matches!(fault, BodyFault::CutShort(_)),
    }
}

/// The certificate problem in a connection error's text (its whole source
/// chain), if verifying the server's certificate is what failed. Not
/// transient: no retry makes an untrusted certificate trusted, so the job
/// stops at once (the caller says how to trust a private CA).
pub fn certificate_problem(chain: &str) -> Option<&str> {
    const MARKERS: [&str; 3] = [
        "invalid peer certificate",
        "certificate verify failed",
        "InvalidCertificate",
    ];
    let at = MARKERS.iter().find_map(|m| chain.find(m))?;
    Some(chain[at..].trim())
}

/// How long the server asks us to wait: `retry-after-ms` (OpenAI), then
/// `Retry-After` as delta-seconds or an HTTP date.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    if let Some(ms) =
        header_str(headers, "retry-after-ms").and_then(|v| v.trim().parse::<f64>().ok())
    {
        if ms.is_finite() && ms >= 0.0 {
            return Some(Duration::from_secs_f64(ms / 1000.0));
        }
    }
    let value = header_str(headers, "retry-after")?.trim();
    if let Ok(secs) = value.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(
        when.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// A rate-limit reset hint such as `1s`, `6m0s`, `120ms` or `0.5` (OpenAI
/// and Databricks style durations, or bare seconds), or the RFC 3339 time
/// Anthropic gives (`2026-12-06T20:01:00Z`): the time until then.
pub fn parse_reset(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs));
    }
    if value.len() >= 20 && value.as_bytes().get(10) == Some(&b'T') {
        let at = arrow::compute::kernels::cast_utils::string_to_timestamp_nanos(value).ok()?;
        let at = std::time::UNIX_EPOCH + Duration::from_nanos(u64::try_from(at).ok()?);
        return Some(
            at.duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO),
        );
    }
    let mut total = 0.0;
    let mut number = String::new();
    let mut chars = value.chars().peekable();
    let mut any = false;
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() || c == '.' {
            number.push(c);
            continue;
        }
        let n: f64 = number.parse().ok()?;
        number.clear();
        let unit = match c {
            'h' => 3600.0,
            'm' if chars.peek() == Some(&'s') => {
                chars.next();
                0.001
            }
            'm' => 60.0,
            's' => 1.0,
            _ => return None,
        };
        total += n * unit;
        any = true;
    }
    if !number.is_empty() {
        return None;
    }
    any.then(|| Duration::from_secs_f64(total))
}

pub fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    /// A failure that asks for `action`.
    struct Asked(RetryAction);

    impl Failure for Asked {
        fn action(&self) -> &RetryAction {
            &self.0
        }
    }

    /// Runs a loop whose every attempt fails with `action`; returns the
    /// attempts made and the waits the loop chose (as `on_retry` hears
    /// them: what it then sleeps, kept to milliseconds here).
    async fn fail_always(pacing: Pacing, action: RetryAction) -> (u32, Vec<Duration>) {
        let policy = RetryPolicy {
            max_retries: 3,
            min_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(50),
            ..RetryPolicy::default()
        };
        let attempts = std::sync::atomic::AtomicU32::new(0);
        let waits = std::sync::Mutex::new(Vec::new());
        let result: Result<(), Asked> = policy
            .run(
                pacing,
                || async {
                    attempts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    Err(Asked(action.clone()))
                },
                |_| true,
                |_, after| waits.lock().unwrap().push(after),
            )
            .await;
        assert!(result.is_err());
        (attempts.into_inner(), waits.into_inner().unwrap())
    }

    #[tokio::test]
    async fn one_loop_for_every_request_kind() {
        let ms = Duration::from_millis;
        let limited = |after| RetryAction::Retry {
            after,
            rate_limited: true,
        };
        // Paced by a limiter, a 429 waits just what the server asked (or
        // the shortest backoff), however many came before.
        let (n, waits) = fail_always(Pacing::Limiter, limited(Some(ms(5)))).await;
        assert_eq!((n, waits), (4, vec![ms(5); 3]));
        let (_, waits) = fail_always(Pacing::Limiter, limited(None)).await;
        assert_eq!(waits, vec![ms(1); 3]);
        // Without a limiter it backs off like any transient failure, and
        // never sooner than asked.
        let (n, waits) = fail_always(Pacing::Backoff, limited(Some(ms(5)))).await;
        assert_eq!(n, 4);
        assert!(waits.iter().all(|w| *w >= ms(5)), "{waits:?}");
        // A row's own error and a refused job are not retried.
        assert_eq!(
            fail_always(Pacing::Limiter, RetryAction::RowError).await.0,
            1
        );
        assert_eq!(fail_always(Pacing::Backoff, RetryAction::Abort).await.0, 1);
    }

    /// A header map from literal pairs (also used by the limiter's tests).
    pub(crate) fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn statuses_are_classified() {
        let h = HeaderMap::new();
        let retry = |s: u16| classify_status(StatusCode::from_u16(s).unwrap(), &h);
        assert!(matches!(
            retry(429),
            RetryAction::Retry {
                rate_limited: true,
                ..
            }
        ));
        for s in [408, 500, 502, 503, 504] {
            assert!(
                matches!(
                    retry(s),
                    RetryAction::Retry {
                        rate_limited: false,
                        ..
                    }
                ),
                "{s}"
            );
        }
        for s in [301, 302, 303, 307, 308, 401, 403, 404] {
            assert_eq!(retry(s), RetryAction::Abort, "{s}");
        }
        for s in [400, 413, 422] {
            assert_eq!(retry(s), RetryAction::RowError, "{s}");
        }
    }

    #[test]
    fn gemini_says_in_the_body_what_its_status_does_not() {
        let h = HeaderMap::new();
        let gemini = |status: u16, body: &str| {
            classify(
                Dialect::Gemini,
                StatusCode::from_u16(status).unwrap(),
                &h,
                body.as_bytes(),
            )
        };
        let key = r#"{"error":{"code":400,"message":"API key not valid. Please pass a valid API key.","status":"INVALID_ARGUMENT","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"API_KEY_INVALID","domain":"googleapis.com"}]}}"#;
        assert_eq!(gemini(400, key), RetryAction::Abort);
        // The same body to another dialect is a row's bad request.
        assert_eq!(
            classify(Dialect::OpenAi, StatusCode::BAD_REQUEST, &h, key.as_bytes()),
            RetryAction::RowError
        );
        let place = r#"{"error":{"code":400,"message":"User location is not supported for the API use.","status":"FAILED_PRECONDITION"}}"#;
        assert_eq!(gemini(400, place), RetryAction::Abort);
        let bad = r#"{"error":{"code":400,"message":"Invalid JSON payload","status":"INVALID_ARGUMENT"}}"#;
        assert_eq!(gemini(400, bad), RetryAction::RowError);
        let limit = r#"{"error":{"code":429,"status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"2.5s"}]}}"#;
        assert_eq!(
            gemini(429, limit),
            RetryAction::Retry {
                after: Some(Duration::from_millis(2500)),
                rate_limited: true
            }
        );
        let busy =
            r#"{"error":{"code":503,"message":"The model is overloaded.","status":"UNAVAILABLE"}}"#;
        assert!(matches!(
            gemini(503, busy),
            RetryAction::Retry {
                rate_limited: false,
                ..
            }
        ));
    }

    #[test]
    fn certificate_failures_are_recognised() {
        let chain = "connection failed: error sending request for url (https://x/v1): client error (Connect): invalid peer certificate: UnknownIssuer";
        assert_eq!(
            certificate_problem(chain),
            Some("invalid peer certificate: UnknownIssuer")
        );
        assert_eq!(
            certificate_problem("could not connect: connection refused"),
            None
        );
    }

    #[test]
    fn body_faults_are_classified() {
        let transient = RetryAction::Retry {
            after: None,
            rate_limited: false,
        };
        let fault = |s: &[u8]| crate::provider::reply::body_fault(s).unwrap();
        assert_eq!(classify_body_fault(&fault(b"<html>502</html>")), transient);
        assert_eq!(
            classify_body_fault(&fault(br#"{"choices":[{"mess"#)),
            transient
        );
        let e = fault(br#"{"error":{"message":"upstream exploded"}}"#);
        assert_eq!(
            e.to_string(),
            "the endpoint answered with an error: upstream exploded"
        );
        assert_eq!(classify_body_fault(&e), transient);
        let e = fault(br#"{"error":{"message":"slow down","code":429}}"#);
        assert!(matches!(
            classify_body_fault(&e),
            RetryAction::Retry {
                rate_limited: true,
                ..
            }
        ));
        let e = fault(br#"{"error":{"message":"bad","code":"400"}}"#);
        assert_eq!(classify_body_fault(&e), RetryAction::RowError);
        assert!(!maybe_billed(Lost::Body(&e)));
        // A reply cut short was answered: maybe billed; a proxy's page not.
        assert!(maybe_billed(Lost::Body(&fault(br#"{"choices":[{"mess"#))));
        assert!(!maybe_billed(Lost::Body(&fault(b"<html>502</html>"))));
        assert!(maybe_billed(Lost::BodyBroke(StatusCode::OK)));
        assert!(!maybe_billed(Lost::BodyBroke(StatusCode::BAD_GATEWAY)));
        assert!(maybe_billed(Lost::TimedOut));
        assert_eq!(
            crate::provider::reply::body_fault(br#"{"choices":[]}"#),
            None
        );
    }

    #[test]
    fn bedrock_error_types_decide_before_the_status() {
        let with_type = |t: &str| {
            let mut h = HeaderMap::new();
            h.insert("x-amzn-errortype", t.parse().unwrap());
            h
        };
        let bedrock = |s: u16, h: &HeaderMap, body: &[u8]| {
            classify(Dialect::Bedrock, StatusCode::from_u16(s).unwrap(), h, body)
        };
        let throttled = bedrock(
            429,
            &with_type("ThrottlingException:http://internal.amazon.com/"),
            b"",
        );
        assert!(matches!(
            throttled,
            RetryAction::Retry {
                rate_limited: true,
                ..
            }
        ));
        for (s, t) in [
            (503, "ServiceUnavailableException"),
            (408, "ModelTimeoutException"),
            (500, "InternalServerException"),
        ] {
            assert!(
                matches!(
                    bedrock(s, &with_type(t), b""),
                    RetryAction::Retry {
                        rate_limited: false,
                        ..
                    }
                ),
                "{t}"
            );
        }
        // An expired session token is a 400 (not the row's fault) or 403.
        let expired = br#"{"__type":"com.amazon.coral.service#ExpiredTokenException","message":"The security token included in the request is expired"}"#;
        assert_eq!(bedrock(400, &HeaderMap::new(), expired), RetryAction::Abort);
        for t in [
            "UnrecognizedClientException",
            "AccessDeniedException",
            "ResourceNotFoundException",
        ] {
            assert_eq!(bedrock(403, &with_type(t), b""), RetryAction::Abort, "{t}");
        }
        assert_eq!(
            bedrock(400, &with_type("ValidationException"), b""),
            RetryAction::RowError
        );
        // No type: the status table.
        assert_eq!(
            bedrock(502, &HeaderMap::new(), b"<html>"),
            RetryAction::Retry {
                after: None,
                rate_limited: false
            }
        );
    }

    #[test]
    fn retry_after_forms() {
        assert_eq!(
            retry_after(&headers(&[("retry-after", "3")])),
            Some(Duration::from_secs(3))
        );
        assert_eq!(
            retry_after(&headers(&[("retry-after-ms", "250"), ("retry-after", "3")])),
            Some(Duration::from_millis(250))
        );
        let later = SystemTime::now() + Duration::from_secs(120);
        let date = httpdate::fmt_http_date(later);
        let d = retry_after(&headers(&[("retry-after", &date)])).unwrap();
        assert!(
            d > Duration::from_secs(100) && d <= Duration::from_secs(120),
            "{d:?}"
        );
        let past = httpdate::fmt_http_date(SystemTime::now() - Duration::from_secs(60));
        assert_eq!(
            retry_after(&headers(&[("retry-after", &past)])),
            Some(Duration::ZERO)
        );
        assert_eq!(retry_after(&headers(&[("retry-after", "soon")])), None);
        assert_eq!(retry_after(&HeaderMap::new()), None);
    }

    #[test]
    fn reset_durations() {
        assert_eq!(parse_reset("1s"), Some(Duration::from_secs(1)));
        assert_eq!(parse_reset("6m0s"), Some(Duration::from_secs(360)));
        assert_eq!(parse_reset("120ms"), Some(Duration::from_millis(120)));
        assert_eq!(parse_reset("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_reset("0.25"), Some(Duration::from_millis(250)));
        assert_eq!(parse_reset("abc"), None);
        assert_eq!(parse_reset("12"), Some(Duration::from_secs(12)));
        let later = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(90));
        assert_eq!(parse_reset(&later), None, "an HTTP date is not a reset");
        // Anthropic's resets: RFC 3339 times.
        let far = parse_reset("2200-01-01T00:00:00Z").unwrap();
        assert!(far > Duration::from_secs(170 * 365 * 86_400), "{far:?}");
        assert_eq!(parse_reset("2000-01-01T00:00:00Z"), Some(Duration::ZERO));
    }
}

/// Whether a row error says the request did not fit the model's context
/// window: OpenAI's `context_length_exceeded` ("This model's maximum context
/// length is N tokens"), vLLM's and LiteLLM's wording of the same, and
/// Anthropic's "prompt is too long". Such a request fails again as it is,
/// but smaller pieces of it may not: `aiq sql`'s `ai_agg` splits it.
pub fn is_context_overflow(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    [
        "context_length_exceeded",
        "maximum context length",
        "context length",
        "context window",
        "prompt is too long",
        "too many input tokens",
    ]
    .iter()
    .any(|needle| m.contains(needle))
}

#[cfg(test)]
mod context_overflow_tests {
    #[test]
    fn context_overflow_messages_are_recognised() {
        use super::is_context_overflow;
        assert!(is_context_overflow(
            "HTTP 400: This model's maximum context length is 8192 tokens. However, your messages resulted in 9000 tokens."
        ));
        assert!(is_context_overflow(
            "HTTP 400: prompt is too long: 210000 tokens > 200000 maximum"
        ));
        assert!(!is_context_overflow("HTTP 400: simulated bad request"));
    }
}
