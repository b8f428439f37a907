//! Rate-limit use: how much of an endpoint's limit a job uses, and how many
//! of its requests are refused (429), told the limit (`--rpm`) and not told
//! (learned from 429s and x-ratelimit-* headers).
//!
//! The simulator enforces 2,400 requests/minute with a one-second bucket (so
//! a burst cannot flatter the figures); each job sends enough rows to run
//! about 20 seconds at the limit. Use = achieved rate ÷ the limit.
//!
//! Run: `cargo bench --bench rate_limits`

mod common;

use aiq::job::settings::JobSettings;
use aiq::simulator::{SimConfig, Simulator};
use serde_json::json;

const RPM: u64 = 2_400;
const ROWS: usize = 800;

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    let input = dir.path().join("rows.jsonl");
    let rows: Vec<_> = (0..ROWS)
        .map(|i| json!({"id": i, "text": format!("row {i}")}))
        .collect();
    common::write_jsonl(&input, &rows);
    std::env::set_var("OPENAI_API_KEY", "bench");
    println!("rate limits: simulator at {RPM} requests/minute, {ROWS} rows, concurrency 64, 50 ms latency");
    for (name, told) in [
        ("told --rpm", Some(RPM as u32)),
        ("not told (learned)", None),
    ] {
        let sim = Simulator::start(SimConfig {
            rpm: Some(RPM),
            burst_seconds: 1.0,
            latency_ms: 50,
            ..SimConfig::default()
        })
        .await
        .expect("simulator");
        let settings = JobSettings {
            input: Some(input.clone()),
            output: Some(dir.path().join(format!("{}.parquet", told.is_some()))),
            prompt: Some("{{text}}".into()),
            concurrency: Some(64),
            rpm: told,
            max_retries: Some(30),
            ..JobSettings::default()
        };
        let s = common::run_against(&sim, settings).await;
        let stats = sim.stats();
        let achieved = stats.ok as f64 / s.elapsed_secs;
        println!(
            "  {name:<20} {:>5.1}% of the limit used ({achieved:.1} of {:.1} requests/s), {:>4.1}% of requests refused ({} of {}), {:.1}s",
            achieved * 100.0 / (RPM as f64 / 60.0),
            RPM as f64 / 60.0,
            stats.rate_limited as f64 * 100.0 / stats.requests as f64,
            stats.rate_limited,
            stats.requests,
            s.elapsed_secs,
        );
    }
}
