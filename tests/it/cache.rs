//! Prompt-cache-friendly scheduling: rows grouped by static prefix, one
//! warm-up request per prefix before the rest of its group fans out.

use aiq::simulator::SimConfig;
use serde_json::{json, Map, Value};

use super::util::*;

/// The prompt of every test here: per-row instructions as the system
/// prompt (the prefix the scheduler groups by), then the ticket.
const TICKET: [&str; 4] = [
    "--system",
    "{{instructions}}",
    "--prompt",
    "Ticket: {{text}}",
];

/// How many rows read nothing from the prompt cache.
fn cold_rows(rows: &[Map<String, Value>]) -> usize {
    rows.iter()
        .filter(|r| r["cached_tokens"] == json!(0))
        .count()
}

/// `n` rows over `prefixes` distinct ~1,500-token instructions, shuffled.
pub fn prefixed_rows(n: usize, prefixes: usize) -> Vec<Value> {
    let instructions: Vec<String> = (0..prefixes)
        .map(|p| {
            format!("Instructions set {p}. ")
                + &"Classify the ticket carefully and answer briefly. ".repeat(120)
        })
        .collect();
    (0..n)
        .map(|i| {
            // A fixed permutation: neighbours rarely share a prefix.
            let p = (i * 7 + i / 3) % prefixes;
            json!({"id": i, "instructions": instructions[p], "text": format!("row-{i} my order is late")})
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn one_cold_request_per_prefix_then_every_row_reads_the_cache() {
    let (f, input, out) = job_of(SimConfig::default(), &prefixed_rows(400, 8)).await;
    let o = f
        .run_openai(
            &input,
            &out,
            &[&TICKET[..], &["--concurrency", "64"]].concat(),
        )
        .await;
    let rows = ok_rows(&o, &out);
    assert_eq!(rows.len(), 400);
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row["id"], json!(i), "output order is input order");
        assert!(text_of(row).starts_with(&format!("echo: Ticket: row-{i} ")));
    }
    let cold = cold_rows(&rows);
    assert_eq!(
        cold, 8,
        "exactly the warm-up request of each prefix pays for the cache"
    );
    let cached: i64 = rows
        .iter()
        .map(|r| r["cached_tokens"].as_i64().unwrap())
        .sum();
    assert!(cached > 392 * 1024, "{cached}");
}

#[tokio::test(flavor = "multi_thread")]
async fn without_warmup_concurrent_rows_miss_the_cache() {
    let (f, input, out) = job_of(sim(|c| c.latency_ms = 300), &prefixed_rows(200, 8)).await;
    let o = f
        .run_openai(
            &input,
            &out,
            &[&TICKET[..], &["--concurrency", "64", "--no-warmup"]].concat(),
        )
        .await;
    let rows = ok_rows(&o, &out);
    let cold = cold_rows(&rows);
    // The first calls go out together, before any cache entry exists: many
    // rows of each prefix pay full price, where warm-ups would make it one.
    // (A wide margin: on a loaded machine the first 64 launches may spread.)
    assert!(cold >= 16, "{cold} cold rows");
}

#[tokio::test(flavor = "multi_thread")]
async fn claude_endpoints_get_a_cache_control_breakpoint() {
    let (f, input, out) = job_of(SimConfig::default(), &prefixed_rows(40, 2)).await;
    let o = f
        .run_databricks(&input, &out, "databricks-claude-sonnet-4", &TICKET)
        .await;
    let rows = ok_rows(&o, &out);
    let cold = cold_rows(&rows);
    // The simulator caches Claude prompts only up to a cache_control marker.
    assert_eq!(cold, 2, "one warm-up per prefix, the rest read the cache");
}

#[tokio::test(flavor = "multi_thread")]
async fn explain_shows_the_prefix_and_sends_nothing() {
    let (f, input, out) = job_of(SimConfig::default(), &prefixed_rows(10, 2)).await;
    let o = f
        .run_openai(&input, &out, &[&TICKET[..], &["--explain"]].concat())
        .await;
    assert_ok(&o);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("varies per row"), "{text}");
    assert!(
        text.contains("reaches the 1,024-token caching minimum"),
        "{text}"
    );
    assert!(text.contains("prompt_cache_key"), "{text}");
    assert_eq!(f.sim.stats().requests, 0);
    let flags = ["--prompt", "{{text}} is short", "--explain"];
    let o = f.run_openai(&input, &out, &flags).await;
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("starts with a row value"), "{text}");
}
