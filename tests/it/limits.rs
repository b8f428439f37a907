//! Rate limits the job is not told (and one it is told wrong), against
//! servers that say more or less about them: rate headers on every reply,
//! only on 429s, or never; 429s with `Retry-After` in whole seconds, or
//! bare; short and long buckets.
//! Each test asserts that every row was answered and how many requests
//! were refused (never how long it took); README "Rate limits" has the
//! figures from `cargo bench --bench rate_limits`.

use aiq::simulator::{RateHeaders, RetryAfterHint, SimConfig};

use super::util::*;

/// Runs `n` rows at concurrency 32, not told the limit, against `cfg`;
/// asserts every row answered and at most `max_refused` (a share) of all
/// requests refused.
async fn not_told(cfg: SimConfig, n: usize, max_refused: f64) {
    answered_with_few_refusals(cfg, n, &["--max-retries", "30"], max_refused).await;
}

/// Runs `n` rows at concurrency 32 with `flags` against `cfg`; asserts
/// every row answered once and at most `max_refused` (a share) of all
/// requests refused.
async fn answered_with_few_refusals(cfg: SimConfig, n: usize, flags: &[&str], max_refused: f64) {
    let (f, input, out) = job(cfg, n, 0).await;
    let mut args = vec!["--prompt", "{{text}}", "--concurrency", "32"];
    args.extend_from_slice(flags);
    let o = f.run_openai(&input, &out, &args).await;
    let got = ok_rows(&o, &out);
    assert_eq!(got.len(), n);
    assert!(got.iter().all(|r| r["error_message"].is_null()));
    let stats = f.sim.stats();
    assert_eq!(stats.ok_by_prompt.len(), n, "every row answered once");
    let refused = stats.rate_limited as f64 / stats.requests as f64;
    assert!(
        refused <= max_refused,
        "{} of {} requests refused ({:.1}%)",
        stats.rate_limited,
        stats.requests,
        refused * 100.0
    );
}

/// 2,400 requests/minute (40/s) with a one-second bucket: with 20 ms
/// calls at concurrency 32 the job could send 1,600/s.
const ONE_SECOND: (u64, f64) = (2_400, 1.0);

/// 1,200 requests/minute with a 60-second bucket: the first 1,200
/// requests pass at once, then the pace must drop to 20/s.
const SIXTY_SECONDS: (u64, f64) = (1_200, 60.0);

/// A server allowing `rpm` requests a minute from a bucket of
/// `burst_seconds`, answering in 20 ms, that says so with `rate_headers`
/// and `retry_after`.
fn bucket(
    (rpm, burst_seconds): (u64, f64),
    rate_headers: RateHeaders,
    retry_after: RetryAfterHint,
) -> SimConfig {
    SimConfig {
        rpm: Some(rpm),
        burst_seconds,
        latency_ms: 20,
        rate_headers,
        retry_after,
        ..SimConfig::default()
    }
}

/// One test per server: `name: bucket, rate headers, Retry-After, rows`,
/// each not told the limit and at most 5% of its requests refused.
macro_rules! not_told {
    ($($name:ident: $bucket:ident, $headers:ident, $hint:ident, $n:expr;)*) => {$(
        #[tokio::test(flavor = "multi_thread")]
        async fn $name() {
            let cfg = bucket($bucket, RateHeaders::$headers, RetryAfterHint::$hint);
            not_told(cfg, $n, 0.05).await;
        }
    )*};
}

not_told! {
    rate_headers_on_every_reply: ONE_SECOND, Every, Precise, 240;
    rate_headers_only_on_429s: ONE_SECOND, On429, Precise, 240;
    retry_after_in_whole_seconds_only: ONE_SECOND, Never, Seconds, 240;
    bare_429s: ONE_SECOND, Never, None, 240;
    long_bucket_with_headers_on_429s: SIXTY_SECONDS, On429, Precise, 1_300;
    // What is left in the bucket goes at once: without that credit the
    // advertised 20/s would take a minute for these rows.
    long_bucket_with_headers_on_every_reply: SIXTY_SECONDS, Every, Precise, 1_300;
    long_bucket_with_bare_429s: SIXTY_SECONDS, Never, None, 1_300;
}

/// Told twice what the server allows (a key shared with another job, or a
/// limit lower than the user thought): 429s cut the pace under the told
/// ceiling, so few requests are refused and every row is answered within
/// the default retries. With a told pace that 429s did not lower, rows
/// here ran out of retries and failed with 429.
#[tokio::test(flavor = "multi_thread")]
async fn told_more_than_the_server_allows() {
    let cfg = bucket((1_200, 1.0), RateHeaders::Every, RetryAfterHint::Precise);
    answered_with_few_refusals(cfg, 240, &["--rpm", "2400"], 0.2).await;
}

/// 32 requests in flight against a server with 2 slots: the progress
/// output says once that latency climbs while throughput stays flat, and
/// names a lower --concurrency; with a slot per request it says nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queueing_server_is_named_once() {
    let (f, input, _) = job(SimConfig::default(), 130, 0).await;
    let input = input.display().to_string();
    let run = |slots: &'static str| {
        let (f, input) = (&f, &input);
        async move {
            let out = f
                .path(&format!("out-{slots}.parquet"))
                .display()
                .to_string();
            let o = f
                .aiq(
                    &[
                        "run",
                        "--input",
                        input,
                        "--output",
                        &out,
                        "--endpoint",
                        "simulator",
                        "--prompt",
                        "{{text}}",
                        "--concurrency",
                        "32",
                        "--sim-latency-ms",
                        "40",
                        "--sim-slots",
                        slots,
                    ],
                    &[],
                )
                .await;
            assert_ok(&o);
            super::util::stderr(&o)
        }
    };
    let queued = run("2").await;
    assert_eq!(queued.matches("latency climbed").count(), 1, "{queued}");
    // The server's 2 slots, seen through the client's own overheads.
    let at_once: usize = queued
        .split("works on about ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!((2..=4).contains(&at_once), "{queued}");
    let room = run("32").await;
    assert!(!room.contains("latency climbed"), "{room}");
}
