//! Rate limits the job is not told (and one it is told wrong), against
//! servers that say more or less about them: rate headers on every reply,
//! only on 429s, or never; 429s with `Retry-After` in whole seconds, or
//! bare; short and long buckets.
//! Each test asserts that every row was answered and how many requests
//! were refused (never how long it took); README "Rate limits" has the
//! figures from `cargo bench --bench rate_limits`.

use aiq::simulator::{RateHeaders, RetryAfterHint, SimConfig};

use super::util::{assert_ok, job, read_rows};

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
    assert_ok(&o);
    let (_, got) = read_rows(&out);
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

/// 2,400 requests/minute (40/s) with a one-second bucket and 20 ms calls:
/// at concurrency 32 the job could send 1,600/s.
fn one_second_bucket(rate_headers: RateHeaders, retry_after: RetryAfterHint) -> SimConfig {
    SimConfig {
        rpm: Some(2_400),
        burst_seconds: 1.0,
        latency_ms: 20,
        rate_headers,
        retry_after,
        ..SimConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn rate_headers_on_every_reply() {
    let cfg = one_second_bucket(RateHeaders::Every, RetryAfterHint::Precise);
    not_told(cfg, 240, 0.05).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rate_headers_only_on_429s() {
    let cfg = one_second_bucket(RateHeaders::On429, RetryAfterHint::Precise);
    not_told(cfg, 240, 0.05).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn retry_after_in_whole_seconds_only() {
    let cfg = one_second_bucket(RateHeaders::Never, RetryAfterHint::Seconds);
    not_told(cfg, 240, 0.05).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bare_429s() {
    let cfg = one_second_bucket(RateHeaders::Never, RetryAfterHint::None);
    not_told(cfg, 240, 0.05).await;
}

/// 1,200 requests/minute with a 60-second bucket: the first 1,200
/// requests pass at once, then the pace must drop to 20/s.
fn sixty_second_bucket(rate_headers: RateHeaders, retry_after: RetryAfterHint) -> SimConfig {
    SimConfig {
        rpm: Some(1_200),
        burst_seconds: 60.0,
        latency_ms: 20,
        rate_headers,
        retry_after,
        ..SimConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn long_bucket_with_headers_on_429s() {
    let cfg = sixty_second_bucket(RateHeaders::On429, RetryAfterHint::Precise);
    not_told(cfg, 1_300, 0.05).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn long_bucket_with_headers_on_every_reply() {
    // What is left in the bucket goes at once: without that credit the
    // advertised 20/s would take a minute for these rows.
    let cfg = sixty_second_bucket(RateHeaders::Every, RetryAfterHint::Precise);
    not_told(cfg, 1_300, 0.05).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn long_bucket_with_bare_429s() {
    let cfg = sixty_second_bucket(RateHeaders::Never, RetryAfterHint::None);
    not_told(cfg, 1_300, 0.05).await;
}

/// Told twice what the server allows (a key shared with another job, or a
/// limit lower than the user thought): 429s cut the pace under the told
/// ceiling, so few requests are refused and every row is answered within
/// the default retries. With a told pace that 429s did not lower, rows
/// here ran out of retries and failed with 429.
#[tokio::test(flavor = "multi_thread")]
async fn told_more_than_the_server_allows() {
    let cfg = SimConfig {
        rpm: Some(1_200),
        burst_seconds: 1.0,
        latency_ms: 20,
        ..SimConfig::default()
    };
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
