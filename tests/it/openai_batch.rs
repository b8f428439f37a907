//! `--input-format openai-batch` / `--output-format openai-batch`: files made
//! for OpenAI's Batch API (or vLLM's `run_batch`) run through the usual
//! pipeline, each line's body sent as is to its route.

use aiq::simulator::SimConfig;
use serde_json::{json, Value};

use super::util::*;

/// Batch files in and out.
const FILES: [&str; 4] = [
    "--input-format",
    "openai-batch",
    "--output-format",
    "openai-batch",
];

/// 5 chat lines and 2 embeddings lines, as OpenAI's docs write them.
fn batch_lines() -> Vec<Value> {
    let mut lines: Vec<Value> = (0..5)
        .map(|i| {
            json!({"custom_id": format!("chat-{i}"), "method": "POST", "url": "/v1/chat/completions",
                   "body": {"model": "gpt-x", "messages": [{"role": "system", "content": "Be brief."},
                            {"role": "user", "content": format!("question {i}")}], "max_tokens": 50}})
        })
        .collect();
    for i in 0..2 {
        lines.push(
            json!({"custom_id": format!("emb-{i}"), "method": "POST", "url": "/v1/embeddings",
                          "body": {"model": "text-embedding-x", "input": format!("text {i}")}}),
        );
    }
    lines
}

fn read_jsonl(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn batch_file_in_batch_output_out() {
    let f = Fixture::new(SimConfig::default()).await;
    let input = f.write_jsonl("batch.jsonl", &batch_lines());
    let out = f.path("results.jsonl");
    let flags = [&FILES[..], &["--batch-rows", "3"]].concat();
    let o = f.run_openai(&input, &out, &flags).await;
    assert_ok(&o);
    let lines = read_jsonl(&out);
    assert_eq!(lines.len(), 7);
    for (line, input) in lines.iter().zip(batch_lines()) {
        assert_eq!(line["custom_id"], input["custom_id"]);
        assert!(line["id"].as_str().unwrap().starts_with("batch_req_"));
        assert_eq!(line["error"], Value::Null, "{line}");
        let response = &line["response"];
        assert_eq!(response["status_code"], json!(200));
        assert!(response["request_id"].is_string());
        let body = &response["body"];
        if input["url"] == json!("/v1/embeddings") {
            // The body's own model went to the embeddings route.
            assert_eq!(body["model"], input["body"]["model"]);
            assert_eq!(body["data"][0]["embedding"].as_array().unwrap().len(), 16);
        } else {
            let question = input["body"]["messages"][1]["content"].as_str().unwrap();
            assert_eq!(
                body["choices"][0]["message"]["content"],
                json!(format!("echo: {question}"))
            );
            assert_eq!(
                body["model"],
                json!("gpt-x"),
                "the body's model wins over --model"
            );
            assert!(body["usage"]["prompt_tokens"].as_i64().unwrap() > 0);
        }
    }
    let stats = f.sim.stats();
    assert_eq!(stats.ok, 7);
    assert!(
        stats.ok_by_prompt.contains_key("question 3") && stats.ok_by_prompt.contains_key("text 1")
    );
    assert!(
        !f.path("results.jsonl.aiq").exists(),
        "the journal is removed after success"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn failed_lines_get_an_error_and_parquet_output_keeps_the_raw_reply() {
    let f = Fixture::new(SimConfig::default()).await;
    let mut lines = batch_lines();
    lines[1]["body"]["messages"][1]["content"] = json!("[[sim:400]] broken");
    lines[2]["body"]["stream"] = json!(true);
    let input = f.write_jsonl("batch.jsonl", &lines);
    let out = f.path("results.jsonl");
    assert_ok(&f.run_openai(&input, &out, &FILES).await);
    let got = read_jsonl(&out);
    assert_eq!(got[1]["response"], Value::Null);
    assert_eq!(got[1]["error"]["code"], json!("http_400"));
    assert!(got[1]["error"]["message"]
        .as_str()
        .unwrap()
        .contains("simulated bad request"));
    assert!(got[2]["error"]["message"]
        .as_str()
        .unwrap()
        .contains("stream"));
    assert_eq!(got[0]["response"]["status_code"], json!(200));

    // Parquet output: the input columns, and the reply as the STRING result.
    let out = f.path("results.parquet");
    assert_ok(
        &f.run_openai(&input, &out, &["--input-format", "openai-batch"])
            .await,
    );
    let (schema, rows) = read_rows(&out);
    let names: Vec<&str> = schema
        .fields()
        .iter()
        .take(5)
        .map(|f| f.name().as_str())
        .collect();
    assert_eq!(names, ["custom_id", "method", "url", "body", "result"]);
    let reply: Value = serde_json::from_str(rows[0]["result"].as_str().unwrap()).unwrap();
    assert_eq!(
        reply["choices"][0]["message"]["content"],
        json!("echo: question 0")
    );
    assert_eq!(rows[0]["finish_reason"], json!("stop"));
    assert!(rows[0]["total_tokens"].as_i64().unwrap() > 0);
    assert!(rows[5]["result"].as_str().unwrap().contains("embedding"));
}

#[tokio::test(flavor = "multi_thread")]
async fn batch_file_against_a_databricks_endpoint() {
    let f = Fixture::new(SimConfig::default()).await;
    let input = f.write_jsonl("batch.jsonl", &batch_lines());
    let out = f.path("results.jsonl");
    let o = f.run_databricks(&input, &out, "my-llm", &FILES).await;
    assert_ok(&o);
    let lines = read_jsonl(&out);
    assert_eq!(lines.len(), 7);
    assert!(
        lines
            .iter()
            .all(|l| l["response"]["status_code"] == json!(200)),
        "{lines:?}"
    );
    assert!(
        lines[6]["response"]["body"]["data"].is_array(),
        "the invocations route took the embeddings body"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_batch_files_and_flags_are_usage_errors() {
    let f = Fixture::new(SimConfig::default()).await;
    let out = f.path("out.jsonl");
    // A line changed (`row`, `field`, `value`), and what the refusal says.
    let spoiled = [
        (4, "custom_id", "chat-1", ["line 5", "used twice"]),
        (2, "url", "/v1/responses", ["line 3", "/v1/responses"]),
    ];
    for (row, field, value, said) in spoiled {
        let mut lines = batch_lines();
        lines[row][field] = json!(value);
        let bad = f.write_jsonl("bad.jsonl", &lines);
        let o = f
            .run_openai(&bad, &out, &["--input-format", "openai-batch"])
            .await;
        assert_exit(&o, 2, &said);
    }

    let good = f.write_jsonl("good.jsonl", &batch_lines());
    for extra in [
        vec!["--input-format", "openai-batch", "--prompt", "{{x}}"],
        vec!["--input-format", "openai-batch", "--return-type", "INT"],
        vec!["--output-format", "openai-batch", "--prompt", "{{text}}"],
    ] {
        let o = f.run_openai(&good, &out, &extra).await;
        assert_eq!(code(&o), 2, "{extra:?}: {}", stderr(&o));
    }
    assert_eq!(f.sim.stats().requests, 0);
}
