//! Rate-limit use: how much of an endpoint's limit a job uses, and how many
//! of its requests are refused (429), told the limit (`--rpm`) and not told,
//! against servers that say more or less about their limit: rate headers on
//! every reply (OpenAI), only on 429s (many proxies), never (Databricks'
//! REQUEST_LIMIT_EXCEEDED), `Retry-After` in whole seconds only, bare 429s;
//! one-second and sixty-second buckets.
//!
//! Two measures of use: answers per second ÷ the limit per second (the
//! issue's; a bucket's first fill lifts it above 100%, far above with a
//! sixty-second bucket), and the least time the limit allows ÷ the time
//! taken, where the least is the bucket's first fill at once, then the
//! refill rate: (N − B) / R for N rows, a bucket of B and R/s. Refused =
//! 429s ÷ all requests.
//!
//! Run: `cargo bench --features sql --profile dev --bench rate_limits`
//! (pacing, not CPU, sets these); `AIQ_BENCH_ONLY=bare` runs the
//! behaviours whose name contains "bare".

mod common;

use aiq::job::settings::JobSettings;
use aiq::simulator::{RateHeaders, RetryAfterHint, SimConfig, Simulator};
use serde_json::json;

struct Scenario {
    name: &'static str,
    rpm: u64,
    burst_seconds: f64,
    rows: usize,
    told: bool,
    rate_headers: RateHeaders,
    retry_after: RetryAfterHint,
}

/// The server behaviours, each against a one-second bucket (3,000/minute,
/// 500 rows) and a sixty-second one (1,200/minute, 1,800 rows).
const BEHAVIOURS: [(&str, bool, RateHeaders, RetryAfterHint); 6] = [
    (
        "told --rpm",
        true,
        RateHeaders::Every,
        RetryAfterHint::Precise,
    ),
    (
        "headers on every reply",
        false,
        RateHeaders::Every,
        RetryAfterHint::Precise,
    ),
    (
        "headers only on 429s",
        false,
        RateHeaders::On429,
        RetryAfterHint::Precise,
    ),
    (
        "no headers, Retry-After (s)",
        false,
        RateHeaders::Never,
        RetryAfterHint::Seconds,
    ),
    (
        "no headers, retry-after-ms",
        false,
        RateHeaders::Never,
        RetryAfterHint::Precise,
    ),
    ("bare 429s", false, RateHeaders::Never, RetryAfterHint::None),
];

fn scenarios() -> Vec<Scenario> {
    let only = std::env::var("AIQ_BENCH_ONLY").ok();
    [(3_000, 1.0, 500), (1_200, 60.0, 1_800)]
        .into_iter()
        .flat_map(|(rpm, burst_seconds, rows)| {
            BEHAVIOURS
                .iter()
                .map(move |&(name, told, rate_headers, retry_after)| Scenario {
                    name,
                    rpm,
                    burst_seconds,
                    rows,
                    told,
                    rate_headers,
                    retry_after,
                })
        })
        .filter(|s| only.as_deref().is_none_or(|o| s.name.contains(o)))
        .collect()
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::env::set_var("OPENAI_API_KEY", "bench");
    println!("rate limits: concurrency 64, 50 ms calls, not told the limit unless said");
    for s in &scenarios() {
        let input = dir.path().join(format!("rows-{}.jsonl", s.rows));
        let rows: Vec<_> = (0..s.rows)
            .map(|i| json!({"id": i, "text": format!("row {i}")}))
            .collect();
        common::write_jsonl(&input, &rows);
        let sim = Simulator::start(SimConfig {
            rpm: Some(s.rpm),
            burst_seconds: s.burst_seconds,
            latency_ms: 50,
            rate_headers: s.rate_headers,
            retry_after: s.retry_after,
            ..SimConfig::default()
        })
        .await
        .expect("simulator");
        let settings = JobSettings {
            input: Some(input.clone()),
            output: Some(
                dir.path()
                    .join(format!("{}.parquet", s.name.replace(' ', "_"))),
            ),
            prompt: Some("{{text}}".into()),
            concurrency: Some(64),
            rpm: s.told.then_some(s.rpm as u32),
            max_retries: Some(30),
            ..JobSettings::default()
        };
        let summary = common::run_against(&sim, settings).await;
        let stats = sim.stats();
        let per_sec = s.rpm as f64 / 60.0;
        let bucket = per_sec * s.burst_seconds;
        let least = (s.rows as f64 - bucket).max(0.0) / per_sec;
        println!(
            "  {:<30} {:>3}/s, {:>2} s bucket, {:>4} rows: {:>5.1}% of the rate used, {:>5.1}% of the least time, {:>4.1}% of requests refused ({} of {}), {:.1} s (least {:.1} s)",
            s.name,
            per_sec,
            s.burst_seconds,
            s.rows,
            stats.ok as f64 / summary.elapsed_secs * 100.0 / per_sec,
            least / summary.elapsed_secs * 100.0,
            stats.rate_limited as f64 * 100.0 / stats.requests as f64,
            stats.rate_limited,
            stats.requests,
            summary.elapsed_secs,
            least,
        );
    }
}
