//! Prompt-cache hit rate: 8 distinct ~1,500-token system prompts, 400
//! shuffled rows, concurrency 64, against the simulator's prefix cache.
//!
//! Compares aiq's scheduling (rows grouped by prefix, one warm-up request
//! per prefix) with naive in-order fan-out (`--no-warmup`), each as a share
//! of what is cacheable: every request but the first of each prefix, which
//! is what a one-at-a-time run reads from cache.
//!
//! Run: `cargo bench --bench prefix_cache`

mod common;

use aiq::job::settings::JobSettings;
use aiq::simulator::{SimConfig, Simulator};
use serde_json::json;

const ROWS: usize = 400;
const PREFIXES: usize = 8;

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    let input = dir.path().join("tickets.jsonl");
    let instructions: Vec<String> = (0..PREFIXES)
        .map(|p| {
            format!("Instructions set {p}. ")
                + &"Classify the ticket carefully and answer briefly. ".repeat(120)
        })
        .collect();
    // A seeded shuffle of rows over prefixes.
    let mut state = 0x9e3779b97f4a7c15u64;
    let rows: Vec<_> = (0..ROWS)
        .map(|i| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let p = (state % PREFIXES as u64) as usize;
            json!({"id": i, "instructions": instructions[p], "text": format!("ticket {i}: my order is late")})
        })
        .collect();
    common::write_jsonl(&input, &rows);
    std::env::set_var("OPENAI_API_KEY", "bench");

    let job = |concurrency: usize, warmup: bool, out: &str| JobSettings {
        input: Some(input.clone()),
        output: Some(dir.path().join(out)),
        system: Some("{{instructions}}".into()),
        prompt: Some("Ticket: {{text}}".into()),
        concurrency: Some(concurrency),
        no_warmup: !warmup,
        ..JobSettings::default()
    };
    // Latency makes concurrency real: requests overlap as they would live.
    let sim_cfg = || SimConfig {
        latency_ms: 50,
        prefill_us_per_token: 20.0,
        ..SimConfig::default()
    };

    let ideal = {
        let sim = Simulator::start(sim_cfg()).await.expect("simulator");
        common::run_against(
            &sim,
            JobSettings {
                no_warmup: true,
                ..job(1, false, "ideal.parquet")
            },
        )
        .await
        .usage
        .cached_tokens
    };
    let mut lines = Vec::new();
    for (name, warmup) in [
        ("aiq (grouped, warm-up per prefix)", true),
        ("naive in-order fan-out", false),
    ] {
        let sim = Simulator::start(sim_cfg()).await.expect("simulator");
        let s = common::run_against(&sim, job(64, warmup, &format!("{warmup}.parquet"))).await;
        lines.push(format!(
            "{name:<36} cached {:>7} of {:>7} prompt tokens = {:>5.1}% of cacheable ({ideal}), {:.1}s",
            s.usage.cached_tokens,
            s.usage.prompt_tokens,
            s.usage.cached_tokens as f64 * 100.0 / ideal as f64,
            s.elapsed_secs
        ));
    }
    println!("prefix cache: {ROWS} rows, {PREFIXES} prefixes of ~1,500 tokens, concurrency 64");
    for l in lines {
        println!("  {l}");
    }
}
