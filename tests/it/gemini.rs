//! Google's Gemini API: the simulator against the official `google-genai`
//! Python SDK (if the SDK accepts the simulator's replies and the simulator
//! its requests, the simulator speaks the real wire).

use aiq::simulator::{SimConfig, Simulator};
use serde_json::json;

use super::util::{python_sdk, Fixture, TOKEN};

/// generate_content (system instruction, typed JSON by schema and by JSON
/// schema, thinking), streaming, embed_content, caches, batches, a wrong
/// key, all through the SDK.
#[tokio::test(flavor = "multi_thread")]
async fn the_google_genai_sdk_drives_the_simulators_gemini_api() {
    let f = Fixture::new(SimConfig {
        batch_turnaround_ms: 200,
        ..SimConfig::default()
    })
    .await;
    let limited = Simulator::start(SimConfig {
        rpm: Some(60),
        burst_seconds: 1.0,
        ..SimConfig::default()
    })
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
    assert_eq!(
        (g.caches_created, g.caches_deleted, g.caches_live),
        (1, 1, 0)
    );
    assert_eq!(
        (g.batches, g.batch_requests, g.batches_cancelled),
        (2, 6, 1)
    );
    assert_eq!(g.bad_keys, 1);
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
