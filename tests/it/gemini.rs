//! Google's Gemini API: the simulator against the official `google-genai`
//! Python SDK (if the SDK accepts the simulator's replies and the simulator
//! its requests, the simulator speaks the real wire), then `--endpoint
//! gemini` against the simulator as it would talk to Google: every row,
//! usage and cache columns, typed results, streaming, embeddings, Google's
//! errors and limits, a wrong or missing key stopping the job early.

use aiq::simulator::{SimConfig, Simulator};
use serde_json::json;

use super::native::{self, sum, GEMINI};
use super::util::*;

// Typed results online and streamed, repairs, retried faults, and batch
// mode (resubmits, a kill, the deadline), as every provider does them.
native::provider_tests!(GEMINI, faults: "503,500,429", batch);

#[tokio::test(flavor = "multi_thread")]
async fn every_row_is_answered_with_gemini_usage_and_implicit_caching() {
    // The shared prefix comes first, so Google's implicit cache serves it
    // to the rows after the first ones, and Gemini bills no cache writes.
    let rows = native::every_row_with_cache_columns(&GEMINI).await;
    assert_eq!(sum(&rows, "cache_write_tokens"), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn streamed_text_and_usage_match_the_unstreamed() {
    native::streamed_match_the_unstreamed(&GEMINI).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn embeddings_go_through_batch_embed_contents() {
    let (f, input, out) = job(SimConfig::default(), 10, 0).await;
    let extra = [
        &PROMPT_TEXT[..],
        &["--task", "embeddings", "--batch-size", "4"],
    ]
    .concat();
    let rows = ok_rows(&GEMINI.run(&f, &input, &out, &extra, &[]).await, &out);
    assert_eq!(rows.len(), 10);
    for row in &rows {
        assert_eq!(row["result"].as_array().map(Vec::len), Some(16), "{row:?}");
    }
    assert_ne!(rows[0]["result"], rows[1]["result"]);
    // Four rows a call: three calls.
    assert_eq!(f.sim.stats().requests, 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn rate_limited_calls_without_retry_after_headers_get_through() {
    // Google's 429 says when to come back only in its body (RetryInfo),
    // with no Retry-After and no rate-limit headers.
    let cfg = sim(|c| (c.rpm, c.burst_seconds) = (Some(120), 1.0));
    let (f, input, out) = job(cfg, 8, 0).await;
    let extra = ["--prompt", "{{text}}", "--concurrency", "4"];
    let rows = ok_rows(&GEMINI.run(&f, &input, &out, &extra, &[]).await, &out);
    assert_no_errors(&rows);
    let stats = f.sim.stats();
    assert_eq!(stats.ok, 8);
    assert!(stats.rate_limited > 0, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_key_stops_the_job_naming_the_variable_and_googles_message() {
    // Google answers 400 INVALID_ARGUMENT (reason API_KEY_INVALID), not 401.
    let said = "API key not valid";
    let f = native::a_wrong_key_stops_the_job(&GEMINI, "AIza-WRONG-key-123456", said).await;
    assert!(f.sim.gemini_stats().bad_keys >= 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn what_is_missing_is_found_before_anything_is_sent() {
    let vars = ["GEMINI_API_KEY", "GOOGLE_API_KEY"];
    native::what_is_missing_is_found_before_anything_is_sent(&GEMINI, &vars, "completions").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_sdks_variables_are_read() {
    // GOOGLE_API_KEY and GOOGLE_GEMINI_BASE_URL, as Google's SDKs read them.
    let (f, input, out) = job(SimConfig::default(), 3, 0).await;
    let base = f.sim.base_url();
    let mut args = run_io(&input, &out, "gemini");
    args.extend(["-q", "--model", "gemini-sim", "--prompt", "{{text}}"]);
    let envs = [
        ("GOOGLE_API_KEY", TOKEN),
        ("GOOGLE_GEMINI_BASE_URL", base.as_str()),
    ];
    assert_ok(&f.aiq(&args, &envs).await);
    assert_eq!(f.sim.stats().ok, 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_long_shared_system_prompt_goes_in_an_explicit_cache_deleted_at_the_end() {
    // About 4,500 tokens, the same for 20 rows: an explicit cache pays.
    let system = "You grade short product reviews carefully and consistently. ".repeat(300);
    let (f, input, out) = job(SimConfig::default(), 20, 0).await;
    let extra = [
        "--prompt",
        "{{text}}",
        "--system",
        &system,
        "--concurrency",
        "4",
    ];
    let rows = ok_rows(&GEMINI.run(&f, &input, &out, &extra, &[]).await, &out);
    let g = f.sim.gemini_stats();
    assert_eq!((g.caches_created, g.cache_uses), (1, 20), "{g:?}");
    assert_eq!(
        (g.caches_deleted, g.caches_live),
        (1, 0),
        "deleted at the end: {g:?}"
    );
    for (i, row) in rows.iter().enumerate() {
        let answer = format!("echo: row-{i} says the product is fine");
        assert_eq!(row["result"], json!(answer), "{row:?}");
        // Every row reads the whole cached prompt from its first call.
        assert!(row["cached_tokens"].as_i64() > Some(4000), "{row:?}");
    }
    // A short prompt is left to implicit caching: no cache is made.
    let short = f.path("short.parquet");
    let extra = ["--prompt", "{{text}}", "--system", "Be brief."];
    assert_ok(&GEMINI.run(&f, &input, &short, &extra, &[]).await);
    assert_eq!(f.sim.gemini_stats().caches_created, 1);
}

#[cfg(feature = "sql")]
#[tokio::test(flavor = "multi_thread")]
async fn aiq_sql_reaches_gemini_by_name() {
    let (f, input, _) = job(SimConfig::default(), 3, 0).await;
    let base = f.sim.base_url();
    let query = format!(
        "SELECT text, ai_query('gemini', text) AS a FROM '{}' ORDER BY text",
        input.display()
    );
    let args = [
        "sql",
        "-q",
        "--base-url",
        &base,
        "--model",
        "gemini-sim",
        "--endpoint",
        "gemini",
        &query,
    ];
    let o = f.aiq(&args, &[("GEMINI_API_KEY", TOKEN)]).await;
    assert_ok(&o);
    let out = String::from_utf8_lossy(&o.stdout);
    for i in 0..3 {
        assert!(
            out.contains(&format!("echo: row-{i} says the product is fine")),
            "{out}"
        );
    }
    assert_eq!(f.sim.stats().ok, 3);
}

/// generate_content (system instruction, typed JSON by schema and by JSON
/// schema, thinking), streaming, embed_content, caches, batches, a wrong
/// key, all through the SDK.
#[tokio::test(flavor = "multi_thread")]
async fn the_google_genai_sdk_drives_the_simulators_gemini_api() {
    let f = Fixture::new(sim(|c| c.batch_turnaround_ms = 200)).await;
    let limited = Simulator::start(sim(|c| (c.rpm, c.burst_seconds) = (Some(60), 1.0)))
        .await
        .unwrap();
    let args = [f.sim.base_url(), TOKEN.to_string(), limited.base_url()];
    let report = python_sdk(&f, SDK_SCRIPT, &args, &[]).await;
    assert_eq!(report["text"], json!("echo: hello gemini"));
    assert_eq!(report["finish"], json!("STOP"));
    let usage = &report["usage"];
    assert!(usage["prompt"].as_u64().unwrap() > 0, "{report}");
    assert_eq!(
        usage["total"].as_u64().unwrap(),
        usage["prompt"].as_u64().unwrap() + usage["candidates"].as_u64().unwrap()
    );
    assert_eq!(report["thoughts"], json!(16));
    assert_eq!(report["streamed"], json!("echo: stream me"));
    assert!(report["stream_chunks"].as_u64().unwrap() > 1, "{report}");
    assert_eq!(report["embeddings"], json!([16, 16]));
    assert_eq!(report["embeddings_differ"], json!(true));
    // Typed answers: the schema's fields, of its types, from both spellings.
    for key in ["typed_schema", "typed_json_schema"] {
        let doc = &report[key];
        assert!(doc["label"].is_string(), "{key}: {doc}");
        assert!(doc["score"].is_i64(), "{key}: {doc}");
    }
    assert_eq!(
        report["enum"].as_str().map(|s| !s.starts_with('"')),
        Some(true)
    );
    // The explicit cache: every token of it read on each use, then gone.
    let cache_tokens = report["cache_tokens"].as_u64().unwrap();
    assert!(cache_tokens >= 1024, "{report}");
    assert_eq!(report["cached_read"], json!(cache_tokens));
    assert_eq!(report["cache_gone"], json!(true));
    assert_eq!(report["cache_with_system"], json!(400));
    // Batches: every answer in order with its key; a cancel stops one.
    assert_eq!(report["batch_state"], json!("JOB_STATE_SUCCEEDED"));
    assert_eq!(
        report["batch_answers"],
        json!([
            ["r0", "echo: batch row 0"],
            ["r1", "echo: batch row 1"],
            ["r2", "echo: batch row 2"]
        ])
    );
    assert_eq!(report["cancelled_state"], json!("JOB_STATE_CANCELLED"));
    assert_eq!(report["listed"], json!(true));
    // A wrong key is a 400 INVALID_ARGUMENT whose reason says so.
    assert_eq!(report["bad_key"]["code"], json!(400));
    assert_eq!(report["bad_key"]["status"], json!("INVALID_ARGUMENT"));
    assert_eq!(report["bad_key"]["reason"], json!("API_KEY_INVALID"));
    assert!(!report.to_string().contains("wrong-key"), "{report}");
    // A rate limit is a 429 RESOURCE_EXHAUSTED saying when to come back.
    assert_eq!(report["limited"]["code"], json!(429));
    assert_eq!(report["limited"]["status"], json!("RESOURCE_EXHAUSTED"));
    let delay = report["limited"]["retry_delay"].as_str().unwrap();
    assert!(delay.ends_with('s'), "{delay}");
    let g = f.sim.gemini_stats();
    let caches = [g.caches_created, g.caches_deleted, g.caches_live];
    let batches = [g.batches, g.batch_requests, g.batches_cancelled];
    assert_eq!((caches, batches, g.bad_keys), ([1, 1, 0], [2, 6, 1], 1));
}

const SDK_SCRIPT: &str = r#"
import json, sys, time
from google import genai
from google.genai import errors, types
from pydantic import BaseModel

url, key, limited_url = sys.argv[1], sys.argv[2], sys.argv[3]
opts = lambda u: types.HttpOptions(base_url=u, api_version="v1beta")
client = genai.Client(api_key=key, http_options=opts(url))
model = "gemini-2.5-flash"
out = {}

r = client.models.generate_content(
    model=model, contents="hello gemini",
    config=types.GenerateContentConfig(system_instruction="be brief", max_output_tokens=64,
                                       thinking_config=types.ThinkingConfig(thinking_budget=100)))
out["text"] = r.text
out["finish"] = r.candidates[0].finish_reason.value
u = r.usage_metadata
out["usage"] = {"prompt": u.prompt_token_count, "candidates": u.candidates_token_count,
                "total": u.total_token_count - (u.thoughts_token_count or 0)}
out["thoughts"] = u.thoughts_token_count

chunks = list(client.models.generate_content_stream(model=model, contents="stream me"))
out["streamed"] = "".join(c.text or "" for c in chunks)
out["stream_chunks"] = len(chunks)

e = client.models.embed_content(model="gemini-embedding-001", contents=["one", "two"])
out["embeddings"] = [len(x.values) for x in e.embeddings]
out["embeddings_differ"] = e.embeddings[0].values != e.embeddings[1].values

class Verdict(BaseModel):
    label: str
    score: int

r = client.models.generate_content(model=model, contents="rate this",
    config=types.GenerateContentConfig(response_mime_type="application/json", response_schema=Verdict))
out["typed_schema"] = json.loads(r.text)
r = client.models.generate_content(model=model, contents="rate that",
    config={"response_mime_type": "application/json",
            "response_json_schema": {"type": "object", "properties": {"label": {"type": "string"}, "score": {"type": "integer"}},
                                     "required": ["label", "score"]}})
out["typed_json_schema"] = json.loads(r.text)
r = client.models.generate_content(model=model, contents="pick one",
    config={"response_mime_type": "text/x.enum",
            "response_schema": {"type": "STRING", "enum": ["red", "green"]}})
out["enum"] = r.text

long_doc = " ".join(f"word{i}" for i in range(1200))
cache = client.caches.create(model=model, config=types.CreateCachedContentConfig(
    system_instruction="you grade essays", contents=[long_doc], ttl="300s", display_name="sdk"))
out["cache_tokens"] = cache.usage_metadata.total_token_count
assert client.caches.get(name=cache.name).name == cache.name
r = client.models.generate_content(model=model, contents="grade it",
    config=types.GenerateContentConfig(cached_content=cache.name))
out["cached_read"] = r.usage_metadata.cached_content_token_count
try:
    client.models.generate_content(model=model, contents="grade it",
        config=types.GenerateContentConfig(cached_content=cache.name, system_instruction="no"))
    out["cache_with_system"] = 200
except errors.APIError as err:
    out["cache_with_system"] = err.code
client.caches.delete(name=cache.name)
try:
    client.caches.get(name=cache.name)
    out["cache_gone"] = False
except errors.APIError:
    out["cache_gone"] = True

inline = [{"contents": [{"parts": [{"text": f"batch row {i}"}], "role": "user"}], "metadata": {"key": f"r{i}"}}
          for i in range(3)]
job = client.batches.create(model=model, src=inline, config={"display_name": "sdk"})
for _ in range(2000):
    job = client.batches.get(name=job.name)
    if job.state.name in ("JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED", "JOB_STATE_EXPIRED"):
        break
    time.sleep(0.01)
out["batch_state"] = job.state.name
out["batch_answers"] = [[x.metadata["key"], x.response.text] for x in job.dest.inlined_responses]
second = client.batches.create(model=model, src=inline, config={"display_name": "cancel me"})
client.batches.cancel(name=second.name)
out["cancelled_state"] = client.batches.get(name=second.name).state.name
out["listed"] = any(b.name == job.name for b in client.batches.list())

bad = genai.Client(api_key="wrong-key", http_options=opts(url))
try:
    bad.models.generate_content(model=model, contents="hi")
except errors.APIError as err:
    reason = [d.get("reason") for d in err.details["error"].get("details", []) if "reason" in d]
    out["bad_key"] = {"code": err.code, "status": err.status, "reason": reason[0] if reason else None}

limited = genai.Client(api_key=key, http_options=opts(limited_url))
try:
    for _ in range(10):
        limited.models.generate_content(model=model, contents="again")
except errors.APIError as err:
    info = [d for d in err.details["error"]["details"] if d["@type"].endswith("RetryInfo")]
    out["limited"] = {"code": err.code, "status": err.status, "retry_delay": info[0]["retryDelay"]}

print(json.dumps(out))
"#;
