//! `--endpoint anthropic`: aiq against the simulator's Messages API
//! (`--base-url`), as it would talk to api.anthropic.com: every row, the
//! cache columns (Anthropic caches only where aiq marks `cache_control`),
//! typed results through a forced tool, streaming, repairs, retries of
//! Anthropic's errors, and a wrong or missing key stopping the job early.

use aiq::simulator::SimConfig;
use serde_json::json;

use super::native::{self, long_system, sum, ANTHROPIC};
use super::util::*;

// Typed results online and streamed, repairs, retried faults, and batch
// mode (resubmits, a kill, the deadline), as every provider does them.
native::provider_tests!(ANTHROPIC, faults: "529,500,429", batch);

#[tokio::test(flavor = "multi_thread")]
async fn every_row_is_answered_with_anthropic_cache_columns() {
    let rows = native::every_row_with_cache_columns(&ANTHROPIC).await;
    // The marked system prompt is written once (the warm-up) and read by
    // every other row.
    assert!(sum(&rows, "cache_write_tokens") > 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn cache_writes_cost_a_quarter_more_than_input_by_default() {
    // $1/M input, nothing for output or cache reads: a row costs its
    // uncached input plus 1.25x its cache writes (Anthropic's multiplier).
    let prices = ["--price-in", "1", "--price-out", "0", "--price-cached", "0"];
    let (_, _, _, rows) = native::with_system(&ANTHROPIC, 6, "1", &prices).await;
    assert!(sum(&rows, "cache_write_tokens") > 0);
    for row in &rows {
        let tokens = |c: &str| row[c].as_i64().unwrap() as f64;
        let (whole, read, written) = (
            tokens("prompt_tokens"),
            tokens("cached_tokens"),
            tokens("cache_write_tokens"),
        );
        let expected = (whole - read - written + 1.25 * written) / 1e6;
        let cost = row["cost"].as_f64().unwrap();
        assert!(
            (cost - expected).abs() < 1e-12,
            "{cost} != {expected}: {row:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn streamed_text_and_usage_match_the_unstreamed() {
    let streamed = native::streamed_match_the_unstreamed(&ANTHROPIC).await;
    // The second run reads the prefix the first wrote.
    assert!(streamed
        .iter()
        .all(|r| r["cached_tokens"].as_i64() > Some(0)));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_key_stops_the_job_naming_the_variable() {
    native::a_wrong_key_stops_the_job(&ANTHROPIC, "sk-ant-WRONG-key-123456", "401").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn no_key_or_no_model_is_found_before_anything_is_sent() {
    let vars = ["ANTHROPIC_API_KEY"];
    native::what_is_missing_is_found_before_anything_is_sent(&ANTHROPIC, &vars, "embeddings").await;
    // ANTHROPIC_BASE_URL is read as the SDK reads it.
    let (f, input, out) = job(SimConfig::default(), 3, 0).await;
    let base = f.sim.base_url();
    let mut args = run_io(&input, &out, "anthropic");
    args.extend(["-q", "--model", "claude-sim", "--prompt", "{{text}}"]);
    let envs = [("ANTHROPIC_API_KEY", TOKEN), ("ANTHROPIC_BASE_URL", &base)];
    let o = f.aiq(&args, &envs).await;
    assert_ok(&o);
    assert_eq!(f.sim.stats().ok, 3);
}

/// messages.create (a cache write, then a read), streaming, a forced tool,
/// a refused key, Message Batches (create, retrieve, results, cancel,
/// list), all through Anthropic's official Python SDK.
#[tokio::test(flavor = "multi_thread")]
async fn the_anthropic_sdk_drives_the_simulators_messages_api() {
    let f = Fixture::new(sim(|c| c.batch_turnaround_ms = 300)).await;
    let args = [f.sim.base_url(), TOKEN.to_string(), long_system()];
    let report = python_sdk(&f, SDK_SCRIPT, &args, &[]).await;
    assert_eq!(report["text"], json!("echo: hello claude"));
    assert_eq!(report["stop"], json!("end_turn"));
    // The marked system prompt is written, then read.
    let (written, read) = ("cache_creation_input_tokens", "cache_read_input_tokens");
    native::assert_cache_written_then_read(&report, written, read);
    assert_eq!(report["second_usage"][written], json!(0));
    assert_eq!(report["streamed"], json!("echo: stream me"));
    assert!(report["stream_events"].as_u64() > Some(3), "{report}");
    assert!(
        report["stream_output_tokens"].as_u64() > Some(0),
        "{report}"
    );
    assert!(report["stream_input_tokens"].as_u64() > Some(0), "{report}");
    assert_eq!(report["tool_stop"], json!("tool_use"));
    assert!(report["tool_input"]["score"].is_i64(), "{report}");
    assert_eq!(report["auth_error"], json!("AuthenticationError"));
    assert_eq!(report["bad_request"], json!("BadRequestError"));
    // Batches: every result with its custom_id; the cancelled one ends.
    assert_eq!(report["batch_status"], json!("ended"));
    assert_eq!(
        report["batch_results"],
        json!({"a": "succeeded", "b": "succeeded", "c": "errored"})
    );
    assert_eq!(report["batch_a_text"], json!("echo: batch a"));
    assert_eq!(report["cancel_status"], json!("ended"));
    assert!(report["cancel_canceled"].as_u64() > Some(0), "{report}");
    assert_eq!(report["listed"], json!(2));
}

const SDK_SCRIPT: &str = r#"
import json, sys, time
import anthropic

base, key, system = sys.argv[1], sys.argv[2], sys.argv[3]
client = anthropic.Anthropic(base_url=base, api_key=key, max_retries=0)
out = {}
marked = [{"type": "text", "text": system, "cache_control": {"type": "ephemeral"}}]

def ask(text):
    return client.messages.create(
        model="claude-sim", max_tokens=256, system=marked,
        messages=[{"role": "user", "content": text}])

m = ask("hello claude")
out["text"] = m.content[0].text
out["stop"] = m.stop_reason
out["first_usage"] = m.usage.model_dump()
out["second_usage"] = ask("hello again").usage.model_dump()

events = 0
with client.messages.stream(model="claude-sim", max_tokens=256,
                            messages=[{"role": "user", "content": "stream me"}]) as s:
    for _ in s:
        events += 1
    final = s.get_final_message()
out["streamed"] = final.content[0].text
out["stream_events"] = events
out["stream_output_tokens"] = final.usage.output_tokens
out["stream_input_tokens"] = final.usage.input_tokens

t = client.messages.create(
    model="claude-sim", max_tokens=256,
    tools=[{"name": "grade", "description": "Grade it.",
            "input_schema": {"type": "object", "properties": {"score": {"type": "integer"}},
                             "required": ["score"]}}],
    tool_choice={"type": "tool", "name": "grade"},
    messages=[{"role": "user", "content": "grade this"}])
out["tool_stop"] = t.stop_reason
out["tool_input"] = t.content[0].input

try:
    anthropic.Anthropic(base_url=base, api_key="wrong", max_retries=0).messages.create(
        model="claude-sim", max_tokens=5, messages=[{"role": "user", "content": "x"}])
except anthropic.APIStatusError as e:
    out["auth_error"] = type(e).__name__
try:
    client.messages.create(model="claude-sim", max_tokens=5,
                           messages=[{"role": "user", "content": "x"}],
                           extra_body={"response_format": {"type": "json_object"}})
except anthropic.APIStatusError as e:
    out["bad_request"] = type(e).__name__

def params(text):
    return {"model": "claude-sim", "max_tokens": 64, "messages": [{"role": "user", "content": text}]}

b = client.messages.batches.create(requests=[
    {"custom_id": "a", "params": params("batch a")},
    {"custom_id": "b", "params": params("batch b")},
    {"custom_id": "c", "params": params("batch c [[sim:400]]")},
])
while client.messages.batches.retrieve(b.id).processing_status != "ended":
    time.sleep(0.05)
out["batch_status"] = client.messages.batches.retrieve(b.id).processing_status
results = {}
for r in client.messages.batches.results(b.id):
    results[r.custom_id] = r.result.type
    if r.custom_id == "a":
        out["batch_a_text"] = r.result.message.content[0].text
out["batch_results"] = results

c = client.messages.batches.create(requests=[
    {"custom_id": f"r{i}", "params": params(f"row {i}")} for i in range(50)])
client.messages.batches.cancel(c.id)
while (got := client.messages.batches.retrieve(c.id)).processing_status != "ended":
    time.sleep(0.05)
out["cancel_status"] = got.processing_status
out["cancel_canceled"] = got.request_counts.canceled
out["listed"] = len(list(client.messages.batches.list(limit=1)))
print(json.dumps(out))
"#;

#[tokio::test(flavor = "multi_thread")]
async fn anthropic_rate_limit_headers_pace_the_job() {
    let cfg = SimConfig {
        rpm: Some(1200),
        otpm: Some(60_000),
        burst_seconds: 1.0,
        ..SimConfig::default()
    };
    let (f, input, out) = job(cfg, 30, 0).await;
    let extra = ["--prompt", "{{text}}", "--concurrency", "8"];
    let rows = ok_rows(&ANTHROPIC.run(&f, &input, &out, &extra, &[]).await, &out);
    assert_no_errors(&rows);
    assert_eq!(f.sim.stats().ok, 30);
}

#[tokio::test(flavor = "multi_thread")]
async fn ai_query_names_the_provider_and_its_model_in_one_string() {
    let (f, input, out) = job(SimConfig::default(), 5, 0).await;
    let base = f.sim.base_url();
    let table = format!("t={}", input.display());
    let query = "SELECT id, text,
            ai_query('anthropic:claude-sim', text) AS plain,
            ai_query('anthropic:claude-sim', text, returnType => 'STRUCT<score: INT>') AS typed
         FROM t";
    let args = [
        "sql",
        "-q",
        query,
        "--table",
        &table,
        "--base-url",
        &base,
        "--output",
        out.to_str().unwrap(),
    ];
    let rows = ok_rows(&f.aiq(&args, &[("ANTHROPIC_API_KEY", TOKEN)]).await, &out);
    assert_eq!(rows.len(), 5);
    for r in &rows {
        let text = r["text"].as_str().unwrap();
        assert_eq!(r["plain"], json!(format!("echo: {text}")), "{r:?}");
        assert!(r["typed"]["score"].is_i64(), "{r:?}");
    }
    assert_eq!(f.sim.stats().ok, 10);
}
