//! End-to-end tests: a real simulator on 127.0.0.1:0, driven with reqwest
//! the way the client will drive it. No timing assertions: latency is 0.

use serde_json::{json, Value};

use super::{RetryAfterHint, SimConfig, Simulator};
use crate::ai::tokens;

async fn sim(cfg: SimConfig) -> Simulator {
    Simulator::start(cfg).await.expect("simulator starts")
}

fn chat_body(text: &str) -> Value {
    json!({"model": "m", "messages": [{"role": "system", "content": "sys"}, {"role": "user", "content": text}]})
}

async fn post(url: String, body: &Value) -> (u16, reqwest::header::HeaderMap, Value) {
    let resp = reqwest::Client::new()
        .post(url)
        .json(body)
        .send()
        .await
        .expect("request sent");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.json::<Value>().await.unwrap_or(Value::Null);
    (status, headers, body)
}

#[tokio::test]
async fn chat_echoes_the_last_user_text_with_usage() {
    let s = sim(SimConfig::default()).await;
    let (status, _, v) = post(
        format!("{}/v1/chat/completions", s.base_url()),
        &chat_body("hello row 1"),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["choices"][0]["message"]["content"], "echo: hello row 1");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    let prompt = tokens::estimate("syshello row 1") as i64;
    assert_eq!(v["usage"]["prompt_tokens"], prompt);
    assert_eq!(
        v["usage"]["completion_tokens"],
        tokens::estimate("echo: hello row 1") as i64
    );
    assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], 0);

    // max_tokens truncates and says so.
    let mut body = chat_body("a long text that will not fit");
    body["max_tokens"] = json!(2);
    let (_, _, v) = post(format!("{}/v1/chat/completions", s.base_url()), &body).await;
    assert_eq!(v["choices"][0]["message"]["content"], "echo: a "); // 2 tokens = 8 bytes
    assert_eq!(v["choices"][0]["finish_reason"], "length");

    // Completions and the Databricks route answer the same way.
    let (_, _, v) = post(
        format!("{}/v1/completions", s.base_url()),
        &json!({"prompt": "p1"}),
    )
    .await;
    assert_eq!(v["choices"][0]["text"], "echo: p1");
    let (_, _, v) = post(
        format!("{}/serving-endpoints/my-llm/invocations", s.base_url()),
        &json!({"messages": [{"role": "user", "content": "db"}]}),
    )
    .await;
    assert_eq!(v["choices"][0]["message"]["content"], "echo: db");
    assert_eq!(v["model"], "my-llm");

    let st = s.stats();
    assert_eq!((st.requests, st.ok), (4, 4));
    assert_eq!(st.ok_by_prompt["hello row 1"], 1);
    assert_eq!(st.ok_by_prompt["p1"], 1);
}

#[tokio::test]
async fn bad_json_and_markers_are_400_not_panics() {
    let s = sim(SimConfig::default()).await;
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", s.base_url()))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await.unwrap();
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("not valid JSON"));
    let (status, _, v) = post(
        format!("{}/v1/chat/completions", s.base_url()),
        &chat_body("x [[sim:400]]"),
    )
    .await;
    assert_eq!(
        (status, v["error"]["message"].as_str()),
        (400, Some("simulated bad request"))
    );
    let (status, _, _) = post(
        format!("{}/v1/chat/completions", s.base_url()),
        &chat_body("x [[sim:500]]"),
    )
    .await;
    assert_eq!(status, 500);
    let (status, _, _) = post(
        format!("{}/serving-endpoints/e/invocations", s.base_url()),
        &json!({"foo": 1}),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(s.stats().bad_request, 3);
    assert_eq!(s.stats().ok, 0);
}

#[tokio::test]
async fn bearer_token_is_checked_and_never_echoed() {
    let s = sim(SimConfig {
        token: Some("secret-1".into()),
        ..SimConfig::default()
    })
    .await;
    let url = format!("{}/v1/chat/completions", s.base_url());
    let client = reqwest::Client::new();
    let none = client
        .post(&url)
        .json(&chat_body("a"))
        .send()
        .await
        .unwrap();
    assert_eq!(none.status(), 401);
    let wrong = client
        .post(&url)
        .bearer_auth("leaked-guess")
        .json(&chat_body("a"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let text = wrong.text().await.unwrap();
    assert!(!text.contains("leaked-guess"), "{text}");
    assert!(serde_json::from_str::<Value>(&text).unwrap()["error"]["message"].is_string());
    let ok = client
        .post(&url)
        .bearer_auth("secret-1")
        .json(&chat_body("a"))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(s.stats().unauthorized, 2);
}

#[tokio::test]
async fn oauth_m2m_hands_out_the_bearer_token() {
    let s = sim(SimConfig {
        token: Some("tok".into()),
        ..SimConfig::default()
    })
    .await;
    let url = format!("{}/oidc/v1/token", s.base_url());
    let client = reqwest::Client::new();
    let form = |body: &'static str| {
        client
            .post(&url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
    };
    let basic = form("grant_type=client_credentials&scope=all-apis")
        .basic_auth("sim-client", Some("sim-secret"))
        .send()
        .await
        .unwrap();
    assert_eq!(basic.status(), 200);
    let v: Value = basic.json().await.unwrap();
    assert_eq!(
        (v["access_token"].as_str(), v["token_type"].as_str()),
        (Some("tok"), Some("Bearer"))
    );
    assert_eq!(v["expires_in"], 3600);
    let in_body =
        form("grant_type=client_credentials&client_id=sim-client&client_secret=sim-secret")
            .send()
            .await
            .unwrap();
    assert_eq!(in_body.status(), 200);
    let wrong = form("grant_type=client_credentials&client_id=sim-client&client_secret=nope")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    assert_eq!(s.stats().oauth_tokens, 2);
}

#[tokio::test]
async fn unknown_databricks_endpoint_is_404() {
    let s = sim(SimConfig {
        endpoints: vec!["known".into()],
        ..SimConfig::default()
    })
    .await;
    let (status, _, v) = post(
        format!("{}/serving-endpoints/nope/invocations", s.base_url()),
        &chat_body("a"),
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(v["error_code"], "RESOURCE_DOES_NOT_EXIST");
    assert!(v["message"].is_string());
    let (status, _, _) = post(
        format!("{}/serving-endpoints/known/invocations", s.base_url()),
        &chat_body("a"),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _, _) = post(format!("{}/no/such/route", s.base_url()), &json!({})).await;
    assert_eq!(status, 404);
    assert_eq!(s.stats().not_found, 2);
}

#[tokio::test]
async fn rpm_limit_answers_429_with_retry_after() {
    // 60 rpm, 2 s burst: two requests pass, the third is refused.
    let s = sim(SimConfig {
        rpm: Some(60),
        burst_seconds: 2.0,
        ..SimConfig::default()
    })
    .await;
    let url = format!("{}/v1/chat/completions", s.base_url());
    for _ in 0..2 {
        let (status, h, _) = post(url.clone(), &chat_body("a")).await;
        assert_eq!(status, 200);
        assert_eq!(h["x-ratelimit-limit-requests"], "60");
        assert!(h.contains_key("x-ratelimit-remaining-requests"));
        assert!(h["x-ratelimit-reset-requests"]
            .to_str()
            .unwrap()
            .ends_with('s'));
    }
    let (status, h, v) = post(url, &chat_body("a")).await;
    assert_eq!(status, 429, "{v}");
    let secs: u64 = h["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(secs >= 1);
    let ms: u64 = h["retry-after-ms"].to_str().unwrap().parse().unwrap();
    assert!(ms > 0 && ms <= 1000);
    assert_eq!(h["x-ratelimit-remaining-requests"], "0");
    let st = s.stats();
    assert_eq!((st.ok, st.rate_limited), (2, 1));
}

#[tokio::test]
async fn tpm_limit_counts_prompt_and_reply_budget() {
    // 600 tpm with a 1 s burst = 10 tokens; a request costs prompt + max_tokens.
    let s = sim(SimConfig {
        tpm: Some(600),
        burst_seconds: 1.0,
        ..SimConfig::default()
    })
    .await;
    let mut body = chat_body("abcd"); // "sysabcd" = 2 tokens
    body["max_tokens"] = json!(6);
    let url = format!("{}/v1/chat/completions", s.base_url());
    let (status, h, _) = post(url.clone(), &body).await;
    assert_eq!(status, 200);
    assert_eq!(h["x-ratelimit-remaining-tokens"], "2");
    let (status, h, _) = post(url, &body).await;
    assert_eq!(status, 429);
    assert!(h.contains_key("retry-after"));
}

#[tokio::test]
async fn fail_first_then_every_row_once() {
    let s = sim(SimConfig {
        fail_first: 2,
        ..SimConfig::default()
    })
    .await;
    let url = format!("{}/v1/chat/completions", s.base_url());
    let mut statuses = Vec::new();
    for row in 0..4 {
        statuses.push(post(url.clone(), &chat_body(&format!("row {row}"))).await.0);
    }
    assert_eq!(statuses, vec![500, 500, 200, 200]);
    for row in 0..2 {
        assert_eq!(
            post(url.clone(), &chat_body(&format!("row {row}"))).await.0,
            200
        );
    }
    let st = s.stats();
    assert_eq!(st.faults_injected, 2);
    assert_eq!(st.ok_by_prompt.len(), 4);
    assert!(st.ok_by_prompt.values().all(|n| *n == 1));
}

#[tokio::test]
async fn reset_fault_is_a_transport_error() {
    let s = sim(SimConfig {
        fault_rate: 1.0,
        faults: "reset".into(),
        ..SimConfig::default()
    })
    .await;
    let got = async {
        let resp = reqwest::Client::new()
            .post(format!("{}/v1/chat/completions", s.base_url()))
            .json(&chat_body("a"))
            .send()
            .await?;
        resp.json::<Value>().await
    }
    .await;
    assert!(
        got.is_err(),
        "a reset must not look like a success: {got:?}"
    );
    assert_eq!(s.stats().faults_injected, 1);
    assert_eq!(s.stats().ok, 0);
}

#[tokio::test]
async fn status_faults_use_the_configured_codes() {
    let s = sim(SimConfig {
        fault_rate: 1.0,
        faults: "503".into(),
        ..SimConfig::default()
    })
    .await;
    let (status, _, v) = post(
        format!("{}/v1/chat/completions", s.base_url()),
        &chat_body("a"),
    )
    .await;
    assert_eq!(status, 503);
    assert!(v["error"]["message"].is_string());
    assert!(Simulator::start(SimConfig {
        faults: "teapot".into(),
        ..SimConfig::default()
    })
    .await
    .is_err());
}

#[tokio::test]
async fn random_429s_say_retry_after_and_count_as_faults_not_limits() {
    let s = sim(SimConfig {
        fault_rate: 1.0,
        faults: "429".into(),
        retry_after: RetryAfterHint::Seconds,
        ..SimConfig::default()
    })
    .await;
    let (status, h, v) = post(
        format!("{}/v1/chat/completions", s.base_url()),
        &chat_body("a"),
    )
    .await;
    assert_eq!(status, 429);
    assert_eq!(h["retry-after"], "1");
    assert!(h.get("x-ratelimit-limit-requests").is_none());
    assert!(v["error"]["message"].is_string());
    let st = s.stats();
    assert_eq!((st.faults_injected, st.rate_limited), (1, 0));
}

#[tokio::test]
async fn json_schema_replies_conform() {
    let s = sim(SimConfig::default()).await;
    let schema = json!({
        "type": "object",
        "properties": {
            "sentiment": {"type": "string", "enum": ["positive", "negative"]},
            "date": {"type": "string", "format": "date"},
            "topics": {"type": "array", "items": {"type": "string"}},
            "confidence": {"type": "number"}
        },
        "required": ["sentiment", "date", "topics", "confidence"],
        "additionalProperties": false
    });
    let mut body = chat_body("review of row 7");
    body["response_format"] = json!({"type": "json_schema", "json_schema": {"name": "r", "schema": schema, "strict": true}});
    let url = format!("{}/v1/chat/completions", s.base_url());
    let (status, _, v) = post(url.clone(), &body).await;
    assert_eq!(status, 200, "{v}");
    let content = v["choices"][0]["message"]["content"].as_str().unwrap();
    let doc: Value = serde_json::from_str(content).unwrap();
    assert!(["positive", "negative"].contains(&doc["sentiment"].as_str().unwrap()));
    let date = doc["date"].as_str().unwrap();
    assert!(
        date.len() == 10 && date.as_bytes()[4] == b'-' && date.as_bytes()[7] == b'-',
        "{date}"
    );
    assert_eq!(doc["topics"].as_array().unwrap().len(), 2);
    let topic = doc["topics"][0].as_str().unwrap();
    assert!(
        !topic.contains(' ') && topic.len() <= 10,
        "a short word: {topic}"
    );
    assert!(doc["confidence"].is_number());
    // Deterministic: the same prompt, the same document.
    let (_, _, again) = post(url.clone(), &body).await;
    assert_eq!(
        again["choices"][0]["message"]["content"],
        v["choices"][0]["message"]["content"]
    );

    body["response_format"] = json!({"type": "json_object"});
    let (_, _, v) = post(url, &body).await;
    let doc: Value =
        serde_json::from_str(v["choices"][0]["message"]["content"].as_str().unwrap()).unwrap();
    assert_eq!(doc["result"], "echo: review of row 7");
}

#[tokio::test]
async fn tools_answer_with_tool_calls() {
    let s = sim(SimConfig::default()).await;
    let tools = json!([
        {"type": "function", "function": {"name": "first", "parameters": {"type": "object", "properties": {"x": {"type": "integer"}}}}},
        {"type": "function", "function": {"name": "classify", "parameters": {"type": "object", "properties": {"label": {"enum": ["a", "b"]}}, "required": ["label"]}}}
    ]);
    let url = format!("{}/v1/chat/completions", s.base_url());
    let mut body = chat_body("row 3");
    body["tools"] = tools.clone();
    body["tool_choice"] = json!({"type": "function", "function": {"name": "classify"}});
    let (status, _, v) = post(url.clone(), &body).await;
    assert_eq!(status, 200, "{v}");
    let choice = &v["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    assert!(choice["message"]["content"].is_null());
    let call = &choice["message"]["tool_calls"][0];
    assert_eq!(call["type"], "function");
    assert!(call["id"].as_str().unwrap().starts_with("call_"));
    assert_eq!(call["function"]["name"], "classify");
    let args: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert!(["a", "b"].contains(&args["label"].as_str().unwrap()));

    // The marker picks the first tool; tools alone do not force a call.
    let mut body = chat_body("row 4 [[sim:tool]]");
    body["tools"] = tools.clone();
    let (_, _, v) = post(url.clone(), &body).await;
    assert_eq!(
        v["choices"][0]["message"]["tool_calls"][0]["function"]["name"],
        "first"
    );
    let mut body = chat_body("row 5");
    body["tools"] = tools;
    let (_, _, v) = post(url, &body).await;
    assert_eq!(v["choices"][0]["message"]["content"], "echo: row 5");
}

#[tokio::test]
async fn embeddings_have_shape_and_are_deterministic() {
    let s = sim(SimConfig {
        embedding_dim: 8,
        ..SimConfig::default()
    })
    .await;
    let url = format!("{}/v1/embeddings", s.base_url());
    let (status, _, v) = post(url.clone(), &json!({"input": ["alpha", "beta", "alpha"]})).await;
    assert_eq!(status, 200, "{v}");
    let data = v["data"].as_array().unwrap();
    assert_eq!(data.len(), 3);
    for (i, d) in data.iter().enumerate() {
        assert_eq!(d["index"], i);
        let norm: f64 = d["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap().powi(2))
            .sum();
        assert!((norm - 1.0).abs() < 1e-3);
        assert_eq!(d["embedding"].as_array().unwrap().len(), 8);
    }
    assert_eq!(data[0]["embedding"], data[2]["embedding"]);
    assert_ne!(data[0]["embedding"], data[1]["embedding"]);
    assert_eq!(v["usage"]["prompt_tokens"], 5); // 2 + 1 + 2
                                                // The Databricks route picks embeddings from `input`.
    let (_, _, one) = post(
        format!("{}/serving-endpoints/emb/invocations", s.base_url()),
        &json!({"input": "alpha"}),
    )
    .await;
    assert_eq!(one["data"][0]["embedding"], data[0]["embedding"]);
    assert_eq!(s.stats().ok_by_prompt["alpha"], 3);
}

#[tokio::test]
async fn prefix_cache_reports_whole_blocks_above_1024_tokens() {
    let s = sim(SimConfig::default()).await;
    let url = format!("{}/v1/chat/completions", s.base_url());
    let system = "s".repeat(5000); // 1250 tokens of shared prefix
    let body = |row: &str| json!({"messages": [{"role": "system", "content": system}, {"role": "user", "content": row}]});
    let cached = |v: &Value| {
        v["usage"]["prompt_tokens_details"]["cached_tokens"]
            .as_i64()
            .unwrap()
    };
    let (_, _, first) = post(url.clone(), &body("row 1")).await;
    assert_eq!(cached(&first), 0);
    let (_, _, second) = post(url.clone(), &body("row 2")).await;
    let c = cached(&second);
    assert!(c >= 1024 && c % 128 == 0, "{c}");
    assert_eq!(c, 1152); // 5000 bytes shared = 9 whole 512-byte blocks
    let (_, _, short) = post(url.clone(), &chat_body("short")).await;
    assert_eq!(cached(&short), 0);
    let (_, _, again) = post(url, &chat_body("short")).await;
    assert_eq!(cached(&again), 0);
    assert_eq!(s.stats().cached_tokens, 1152);

    let off = sim(SimConfig {
        no_cache: true,
        ..SimConfig::default()
    })
    .await;
    let url = format!("{}/v1/chat/completions", off.base_url());
    post(url.clone(), &body("row 1")).await;
    let (_, _, v) = post(url, &body("row 2")).await;
    assert_eq!(cached(&v), 0);
}

#[tokio::test]
async fn claude_caches_only_up_to_cache_control() {
    let s = sim(SimConfig::default()).await;
    let url = format!(
        "{}/serving-endpoints/databricks-claude-sonnet/invocations",
        s.base_url()
    );
    let long = "c".repeat(6000);
    let marked = |row: &str| {
        json!({"messages": [
            {"role": "system", "content": [{"type": "text", "text": long, "cache_control": {"type": "ephemeral"}}]},
            {"role": "user", "content": row}
        ]})
    };
    let (_, _, first) = post(url.clone(), &marked("row 1")).await;
    let u = &first["usage"];
    assert_eq!(u["cache_read_input_tokens"], 0);
    assert_eq!(u["cache_creation_input_tokens"], 1408); // 11 whole blocks of 6000 bytes
                                                        // Anthropic-shaped: input_tokens excludes cache reads and writes.
    assert!(u["prompt_tokens"].is_null());
    assert_eq!(
        u["input_tokens"].as_i64().unwrap() + 1408,
        tokens::estimate(&format!("{long}row 1")) as i64
    );
    assert_eq!(u["output_tokens"], tokens::estimate("echo: row 1") as i64);
    let (_, _, second) = post(url.clone(), &marked("row 2")).await;
    assert_eq!(second["usage"]["cache_read_input_tokens"], 1408);
    assert_eq!(second["usage"]["cache_creation_input_tokens"], 0);

    // No marker: no caching at all, even for a prefix seen before.
    let unmarked = json!({"messages": [{"role": "system", "content": long}, {"role": "user", "content": "row 3"}]});
    let (_, _, v) = post(url.clone(), &unmarked).await;
    assert_eq!(v["usage"]["cache_read_input_tokens"], 0);
    assert_eq!(v["usage"]["cache_creation_input_tokens"], 0);
    let (_, _, v) = post(url, &unmarked).await;
    assert_eq!(v["usage"]["cache_read_input_tokens"], 0);
}

/// The JSON payloads of an SSE body, and whether it ended with [DONE].
fn sse_events(text: &str) -> (Vec<Value>, bool) {
    let mut events = Vec::new();
    let mut done = false;
    for line in text.lines() {
        if let Some(data) = line.strip_prefix("data: ") {
            if data == "[DONE]" {
                done = true;
            } else {
                events.push(serde_json::from_str(data).unwrap());
            }
        }
    }
    (events, done)
}

async fn stream_text(url: String, body: &Value) -> String {
    let resp = reqwest::Client::new()
        .post(url)
        .json(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    resp.text().await.unwrap()
}

#[tokio::test]
async fn openai_stream_sends_tokens_then_usage_then_done() {
    let s = sim(SimConfig::default()).await;
    let mut body = chat_body("streamed row");
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let (events, done) =
        sse_events(&stream_text(format!("{}/v1/chat/completions", s.base_url()), &body).await);
    assert!(done);
    assert_eq!(events[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = events
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "echo: streamed row");
    // One chunk per ~4 bytes, then a finish chunk, then the usage chunk.
    assert_eq!(events.len(), "echo: streamed row".len().div_ceil(4) + 2);
    let finish = &events[events.len() - 2];
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
    assert!(finish["usage"].is_null());
    let last = &events[events.len() - 1];
    assert_eq!(last["choices"].as_array().unwrap().len(), 0);
    assert_eq!(
        last["usage"]["completion_tokens"],
        tokens::estimate("echo: streamed row") as i64
    );
    assert_eq!(s.stats().ok_by_prompt["streamed row"], 1);

    // Without include_usage no chunk carries usage.
    body["stream_options"] = json!({"include_usage": false});
    let (events, _) =
        sse_events(&stream_text(format!("{}/v1/chat/completions", s.base_url()), &body).await);
    assert!(events.iter().all(|e| e["usage"].is_null()));
}

#[tokio::test]
async fn databricks_stream_has_usage_in_every_chunk() {
    let s = sim(SimConfig::default()).await;
    let body = json!({"messages": [{"role": "user", "content": "db stream"}], "stream": true});
    let (events, done) = sse_events(
        &stream_text(
            format!("{}/serving-endpoints/e/invocations", s.base_url()),
            &body,
        )
        .await,
    );
    assert!(done);
    assert!(events.len() > 2);
    assert!(events
        .iter()
        .all(|e| e["usage"]["prompt_tokens"] == tokens::estimate("db stream") as i64));
    assert_eq!(
        events.last().unwrap()["choices"][0]["finish_reason"],
        "stop"
    );

    let body = json!({"prompt": "cmpl", "stream": true});
    let (events, done) =
        sse_events(&stream_text(format!("{}/v1/completions", s.base_url()), &body).await);
    assert!(done);
    let text: String = events
        .iter()
        .filter_map(|e| e["choices"][0]["text"].as_str())
        .collect();
    assert_eq!(text, "echo: cmpl");
    assert_eq!(s.stats().ok, 2);
}

#[tokio::test]
async fn stats_count_concurrency_and_tokens() {
    let s = sim(SimConfig {
        latency_ms: 50,
        ..SimConfig::default()
    })
    .await;
    let url = format!("{}/v1/chat/completions", s.base_url());
    let calls = (0..8).map(|i| {
        let url = url.clone();
        async move { post(url, &chat_body(&format!("row {i}"))).await.0 }
    });
    let statuses = futures::future::join_all(calls).await;
    assert!(statuses.iter().all(|s| *s == 200));
    let st = s.stats();
    assert_eq!(st.ok, 8);
    // Concurrent calls overlap inside the 50 ms latency (how many is up to
    // the scheduler, so only "more than one" is asserted).
    assert!(st.max_in_flight > 1, "{st:?}");
    assert_eq!(st.completion_tokens, 8 * tokens::estimate("echo: row 0"));
    assert!(serde_json::to_value(&st).unwrap()["ok_by_prompt"]["row 3"] == 1);
    s.shutdown();
}

#[tokio::test]
async fn streamed_tool_calls_arrive_in_the_first_delta() {
    let s = sim(SimConfig::default()).await;
    let mut body = chat_body("row 9");
    body["stream"] = json!(true);
    body["tools"] =
        json!([{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]);
    body["tool_choice"] = json!("required");
    let (events, done) =
        sse_events(&stream_text(format!("{}/v1/chat/completions", s.base_url()), &body).await);
    assert!(done);
    assert_eq!(
        events[0]["choices"][0]["delta"]["tool_calls"][0]["function"]["name"],
        "f"
    );
    assert_eq!(
        events.last().unwrap()["choices"][0]["finish_reason"],
        "tool_calls"
    );
}

/// `aiq simulate` flags: clap's defaults must be `SimConfig::default()`.
#[test]
fn flags_default_to_sim_config_default() {
    use clap::{CommandFactory, Parser};
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        sim: SimConfig,
    }
    Cli::command().debug_assert();
    let parsed = Cli::parse_from(["simulate"]).sim;
    assert_eq!(format!("{parsed:?}"), format!("{:?}", SimConfig::default()));
    let cli = Cli::try_parse_from([
        "simulate",
        "--rpm",
        "60",
        "--endpoints",
        "a,b",
        "--no-cache",
        "--fault-rate",
        "0.1",
    ])
    .unwrap()
    .sim;
    assert_eq!(
        (cli.rpm, cli.endpoints.len(), cli.no_cache, cli.fault_rate),
        (Some(60), 2, true, 0.1)
    );
}
