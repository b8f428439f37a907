//! `ai_query` and the Databricks AI functions end to end: every return type
//! from its DDL string to a typed Arrow column, `--response-format`, replies
//! that do not fit, `--fail-on-error`, every task function, tool calls and
//! embeddings batching. The simulator answers structured outputs with values
//! generated from the schema it was sent, so a conforming typed result
//! shows the request carried the right `response_format`.

use aiq::ai::types::SqlType;
use aiq::job::plan::Plan;
use aiq::job::settings::JobSettings;
use aiq::simulator::SimConfig;
use arrow::datatypes::{DataType, TimeUnit};
use serde_json::{json, Map, Value};

use super::util::*;

type Row = Map<String, Value>;

/// The plan's `response_format` for `--return-type t`: what every request
/// of the job carries.
fn planned_response_format(return_type: &str) -> Option<Value> {
    let dir = tempfile::tempdir().unwrap();
    let settings = JobSettings {
        input: Some("in.jsonl".into()),
        output: Some(dir.path().join("out.parquet")),
        endpoint: Some("simulator".into()),
        prompt: Some("{{text}}".into()),
        return_type: Some(return_type.into()),
        ..Default::default()
    };
    Plan::from_settings(settings, false)
        .unwrap()
        .response_format
}

fn is_date(s: &str) -> bool {
    let b = s.as_bytes();
    s.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && s.chars().filter(char::is_ascii_digit).count() == 8
}

fn check_int(v: &Value) {
    let n = v.as_i64().unwrap_or_else(|| panic!("not an integer: {v}"));
    assert!(i32::try_from(n).is_ok(), "{n} out of INT range");
}

fn check_float(v: &Value) {
    let x = v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"));
    assert!(x.is_finite() && x.abs() <= f32::MAX as f64, "{x}");
}

/// Checks the non-null result of one row for a type; panics with the value.
type Check = fn(&Value);

#[tokio::test(flavor = "multi_thread")]
async fn every_return_type_round_trips_into_a_typed_column() {
    let ts = DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into()));
    let nested =
        "STRUCT<name: STRING, tags: ARRAY<STRING>, scores: MAP<STRING, DOUBLE>, born: DATE, \
                  inner: STRUCT<ok: BOOLEAN, n: BIGINT>>";
    let cases: Vec<(&str, DataType, Check)> = vec![
        ("INT", DataType::Int32, check_int),
        ("BIGINT", DataType::Int64, |v| assert!(v.is_i64(), "{v}")),
        ("FLOAT", DataType::Float32, check_float),
        ("DOUBLE", DataType::Float64, |v| {
            assert!(v.as_f64().is_some_and(f64::is_finite), "{v}")
        }),
        ("BOOLEAN", DataType::Boolean, |v| {
            assert!(v.is_boolean(), "{v}")
        }),
        ("DATE", DataType::Date32, |v| {
            assert!(v.as_str().is_some_and(is_date), "{v}")
        }),
        ("TIMESTAMP", ts, |v| {
            let s = v.as_str().unwrap_or_else(|| panic!("{v}"));
            assert!(is_date(&s[..10]) && s.contains('T'), "{s}")
        }),
        (
            "ARRAY<INT>",
            SqlType::Array(Box::new(SqlType::Int)).arrow_type(),
            |v| {
                let items = v.as_array().unwrap_or_else(|| panic!("{v}"));
                assert_eq!(items.len(), 2);
                items.iter().for_each(check_int);
            },
        ),
        (
            "MAP<STRING,INT>",
            SqlType::Map(Box::new(SqlType::Int)).arrow_type(),
            |v| {
                let m = v.as_object().unwrap_or_else(|| panic!("{v}"));
                assert_eq!(m.len(), 2);
                m.values().for_each(check_int);
            },
        ),
        (
            nested,
            nested.parse::<SqlType>().unwrap().arrow_type(),
            |v| {
                assert!(
                    v["name"]
                        .as_str()
                        .is_some_and(|s| !s.is_empty() && !s.contains(' ')),
                    "{v}"
                );
                assert_eq!(v["tags"].as_array().map(Vec::len), Some(2), "{v}");
                assert!(
                    v["scores"]
                        .as_object()
                        .is_some_and(|m| m.len() == 2 && m.values().all(Value::is_number)),
                    "{v}"
                );
                assert!(v["born"].as_str().is_some_and(is_date), "{v}");
                assert!(
                    v["inner"]["ok"].is_boolean() && v["inner"]["n"].is_i64(),
                    "{v}"
                );
            },
        ),
    ];

    let (f, input, _) = job(SimConfig::default(), 9, 4).await;
    let runs = cases.iter().enumerate().map(|(i, (ty, _, _))| {
        let out = f.path(&format!("out-{i}.parquet"));
        let input = input.clone();
        let f = &f;
        async move { (f.score(&input, &out, &["--return-type", ty]).await, out) }
    });
    let results = futures::future::join_all(runs).await;

    for ((ty, arrow_type, check), (o, out)) in cases.iter().zip(results) {
        assert_ok(&o);
        let t: SqlType = ty.parse().unwrap();
        assert_eq!(
            planned_response_format(ty),
            Some(t.response_format()),
            "{ty}"
        );
        let (schema, rows) = read_rows(&out);
        assert_eq!(
            schema.field_with_name("result").unwrap().data_type(),
            arrow_type,
            "{ty}"
        );
        assert_eq!(rows.len(), 9);
        for (i, row) in rows.iter().enumerate() {
            if i % 4 == 3 {
                assert_eq!(row["result"], Value::Null, "{ty}: a null input is not sent");
                continue;
            }
            assert_eq!(row["error_message"], Value::Null, "{ty} row {i}: {row:?}");
            check(&row["result"]);
        }
    }
    // STRING is the reply text itself, with no structured output requested.
    assert_eq!(planned_response_format("STRING"), None);
}

#[tokio::test(flavor = "multi_thread")]
async fn response_format_as_json_schema_and_as_ddl() {
    let (f, input, _) = job(SimConfig::default(), 6, 0).await;
    let schema = json!({
        "type": "object",
        "properties": {
            "label": {"type": "string", "enum": ["good", "bad"]},
            "score": {"type": "number"},
            "when": {"type": ["string", "null"], "format": "date"}
        },
        "required": ["label", "score", "when"],
        "additionalProperties": false
    })
    .to_string();
    let out = f.path("schema.parquet");
    assert_ok(&f.score(&input, &out, &["--response-format", &schema]).await);
    let (s, rows) = read_rows(&out);
    let expected: SqlType = "STRUCT<label: STRING, score: DOUBLE, when: DATE>"
        .parse()
        .unwrap();
    assert_eq!(
        s.field_with_name("result").unwrap().data_type(),
        &expected.arrow_type()
    );
    for row in &rows {
        let r = &row["result"];
        assert!(
            ["good", "bad"].contains(&r["label"].as_str().unwrap()),
            "{r}"
        );
        assert!(
            r["score"].is_number() && r["when"].as_str().is_some_and(is_date),
            "{r}"
        );
    }

    let out = f.path("ddl.parquet");
    let ddl = "STRUCT<title: STRING, year: INT, tags: ARRAY<STRING>>";
    assert_ok(&f.score(&input, &out, &["--response-format", ddl]).await);
    let (s, rows) = read_rows(&out);
    assert_eq!(
        s.field_with_name("result").unwrap().data_type(),
        &ddl.parse::<SqlType>().unwrap().arrow_type()
    );
    for row in &rows {
        let r = &row["result"];
        assert!(
            r["title"].is_string() && r["year"].is_i64() && r["tags"].is_array(),
            "{r}"
        );
    }

    // Both, or a type that does not parse: exit 2 before any request.
    let flags = ["--response-format", ddl, "--return-type", "INT"];
    let o = f.score(&input, &out, &flags).await;
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    let flags = ["--return-type", "ARRAY<INTT>"];
    let o = f.score(&input, &out, &flags).await;
    assert_exit(&o, 2, &["--return-type"]);
    assert_eq!(f.sim.stats().requests, 12);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reply_that_does_not_fit_is_a_row_error_and_fails_the_job_under_fail_on_error() {
    let f = Fixture::new(SimConfig::default()).await;
    let mut input_rows = rows(8, 0);
    input_rows[2]["text"] = json!("[[sim:badjson]] row-2");
    input_rows[5]["text"] = json!("[[sim:badjson]] row-5");
    let input = f.write_jsonl("in.jsonl", &input_rows);

    // The simulator breaks the first field of the document (`a`, an INT).
    let out = f.path("struct.parquet");
    let ty = "STRUCT<a: INT, b: STRING>";
    assert_ok(&f.score(&input, &out, &["--return-type", ty]).await);
    let (_, rows) = read_rows(&out);
    for (i, row) in rows.iter().enumerate() {
        if i == 2 || i == 5 {
            let err = row["error_message"]
                .as_str()
                .unwrap_or_else(|| panic!("row {i}: {row:?}"));
            assert!(
                err.contains("result.a")
                    && err.contains("expected INT")
                    && err.contains("(after 1 repair)"),
                "{err}"
            );
            assert_eq!(row["result"], Value::Null);
            assert_eq!(
                (row["attempts"].clone(), row["repairs"].clone()),
                (json!(2), json!(1)),
                "a reply that does not fit is asked again once (--max-repairs 1), not retried"
            );
        } else {
            assert_eq!(row["error_message"], Value::Null, "row {i}: {row:?}");
            assert!(row["result"]["a"].is_i64());
        }
    }

    // A scalar type, and text that is not JSON for a list.
    let out = f.path("int.parquet");
    assert_ok(&f.score(&input, &out, &["--return-type", "INT"]).await);
    let err = read_rows(&out).1[2]["error_message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        err.contains("expected INT") && err.contains("[[sim:badjson]]"),
        "{err}"
    );

    let out = f.path("fail.parquet");
    let flags = ["--return-type", ty, "--fail-on-error", "--concurrency", "1"];
    let o = f.score(&input, &out, &flags).await;
    assert_exit(&o, 1, &["row 2 failed", "expected INT"]);
    assert!(!out.exists());
}

/// Runs one task function over `input_rows` and returns the output rows
/// and the result column's type.
async fn function(
    f: &Fixture,
    name: &str,
    input_rows: &[Value],
    extra: &[&str],
) -> (DataType, Vec<Row>) {
    let input = f.write_jsonl(&format!("{name}.jsonl"), input_rows);
    let out = f.path(&format!("{name}.parquet"));
    let mut args = vec!["--function", name, "--prompt", "{{text}}"];
    args.extend_from_slice(extra);
    let o = f.run_openai(&input, &out, &args).await;
    assert_ok(&o);
    let (schema, rows) = read_rows(&out);
    let ty = schema
        .field_with_name("result")
        .unwrap()
        .data_type()
        .clone();
    assert_eq!(rows.len(), input_rows.len());
    for row in &rows {
        if !row["text"].is_null() {
            assert_eq!(row["error_message"], Value::Null, "{name}: {row:?}");
        }
    }
    (ty, rows)
}

#[tokio::test(flavor = "multi_thread")]
async fn every_task_function() {
    let f = Fixture::new(SimConfig::default()).await;
    let input = rows(8, 4);
    let labels = |rows: &[Row], set: &[&str]| {
        for row in rows.iter().filter(|r| !r["text"].is_null()) {
            assert!(set.contains(&row["result"].as_str().unwrap()), "{row:?}");
        }
    };

    let (ty, out) = function(&f, "ai_analyze_sentiment", &input, &[]).await;
    assert_eq!(ty, DataType::Utf8);
    labels(&out, &["positive", "negative", "neutral", "mixed"]);
    assert_eq!(out[3]["result"], Value::Null, "null in, null out");

    let (ty, out) = function(
        &f,
        "ai_classify",
        &input,
        &["--labels", "spam,ham,other label"],
    )
    .await;
    assert_eq!(ty, DataType::Utf8);
    labels(&out, &["spam", "ham", "other label"]);

    let (ty, out) = function(&f, "ai_extract", &input, &["--labels", "person,place"]).await;
    assert_eq!(
        ty,
        "STRUCT<person: STRING, place: STRING>"
            .parse::<SqlType>()
            .unwrap()
            .arrow_type()
    );
    for row in out.iter().filter(|r| !r["text"].is_null()) {
        let r = row["result"].as_object().unwrap();
        assert_eq!(r.keys().collect::<Vec<_>>(), ["person", "place"]);
        assert!(r.values().all(Value::is_string), "{r:?}");
    }

    // The text functions answer text: the simulator echoes the row, trimmed.
    for (name, extra) in [
        ("ai_fix_grammar", vec![]),
        ("ai_gen", vec![]),
        ("ai_mask", vec!["--labels", "email,phone"]),
        ("ai_summarize", vec!["--max-words", "20"]),
        ("ai_translate", vec!["--to-lang", "es"]),
    ] {
        let (ty, out) = function(&f, name, &input, &extra).await;
        assert_eq!(ty, DataType::Utf8, "{name}");
        for (i, row) in out.iter().enumerate() {
            if row["text"].is_null() {
                assert_eq!(row["result"], Value::Null);
            } else {
                assert_eq!(
                    row["result"],
                    json!(format!("echo: row-{i} says the product is fine")),
                    "{name}"
                );
            }
        }
    }

    // Options a function does not take, or lacks, are usage errors.
    let path = f.write_jsonl("x.jsonl", &input);
    let out = f.path("x.parquet");
    for bad in [
        vec!["--function", "ai_classify", "--labels", "only-one"],
        vec!["--function", "ai_translate"],
        vec!["--function", "ai_gen", "--max-words", "3"],
        vec!["--function", "ai_summarize", "--return-type", "INT"],
    ] {
        let mut args = vec!["--prompt", "{{text}}"];
        args.extend(bad.iter());
        let o = f.run_openai(&path, &out, &args).await;
        assert_eq!(code(&o), 2, "{bad:?}: {}", stderr(&o));
    }
    assert_eq!(f.sim.stats().bad_request, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn ai_similarity_embeds_both_texts() {
    let f = Fixture::new(SimConfig::default()).await;
    let input: Vec<Value> = (0..6)
        .map(|i| {
            let other = if i % 2 == 0 {
                format!("text {i}")
            } else {
                format!("another {i}")
            };
            let other = if i == 5 {
                Value::Null
            } else {
                Value::String(other)
            };
            json!({"id": i, "text": format!("text {i}"), "other": other})
        })
        .collect();
    let path = f.write_jsonl("in.jsonl", &input);
    let out = f.path("out.parquet");
    let flags = ["--function", "ai_similarity", "--prompt2", "{{other}}"];
    let o = f.score(&path, &out, &flags).await;
    assert_ok(&o);
    let (schema, rows) = read_rows(&out);
    assert_eq!(type_of(&schema, "result"), DataType::Float32);
    for (i, row) in rows.iter().enumerate() {
        if i == 5 {
            assert_eq!(row["result"], Value::Null);
            continue;
        }
        let s = row["result"].as_f64().unwrap();
        if i % 2 == 0 {
            assert!((s - 1.0).abs() < 1e-5, "equal texts: {s}");
        } else {
            assert!((-1.0..1.0).contains(&s), "{s}");
        }
    }
    let stats = f.sim.stats();
    assert_eq!(
        stats.ok, 5,
        "one embeddings call per row, over the embeddings route"
    );
    assert!(stats.ok_by_prompt.contains_key("another 1"));
    // --prompt2 belongs to ai_similarity only.
    let o = f.score(&path, &out, &["--prompt2", "{{other}}"]).await;
    assert_eq!(code(&o), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn tool_calls_from_a_job_file() {
    let (f, input, out) = job(SimConfig::default(), 4, 0).await;
    let text = format!(
        r#"input = {input:?}
output = {out:?}
endpoint = {url:?}
model = "m"
prompt = "Look up: {{{{text}}}}"
tool_choice = "required"

[[tools]]
type = "function"
[tools.function]
name = "lookup"
description = "Finds a city"
[tools.function.parameters]
type = "object"
required = ["city", "days"]
[tools.function.parameters.properties.city]
type = "string"
[tools.function.parameters.properties.days]
type = "integer"
"#,
        input = input.to_str().unwrap(),
        out = out.to_str().unwrap(),
        url = f.openai_url()
    );
    let job = f.write_text("job.toml", &text);
    let o = f
        .aiq(
            &["run", "-q", job.to_str().unwrap()],
            &[("OPENAI_API_KEY", TOKEN)],
        )
        .await;
    let rows = ok_rows(&o, &out);
    assert_eq!(rows.len(), 4);
    for row in &rows {
        assert_eq!(row["finish_reason"], json!("tool_calls"));
        let calls: Value = serde_json::from_str(row["result"].as_str().unwrap()).unwrap();
        assert_eq!(calls[0]["type"], json!("function"));
        assert_eq!(calls[0]["function"]["name"], json!("lookup"));
        let args: Value =
            serde_json::from_str(calls[0]["function"]["arguments"].as_str().unwrap()).unwrap();
        assert!(args["city"].is_string() && args["days"].is_i64(), "{args}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn embeddings_batches_skip_nulls_and_keep_each_rows_vector() {
    let (f, input, _) = job(SimConfig::default(), 23, 5).await;
    let batched = f.path("batched.parquet");
    let single = f.path("single.parquet");
    let args = |n: &'static str| {
        [
            "--task",
            "embeddings",
            "--prompt",
            "{{text}}",
            "--batch-size",
            n,
        ]
    };
    assert_ok(&f.run_openai(&input, &batched, &args("4")).await);
    // 19 non-null rows in requests of 4.
    assert_eq!(f.sim.stats().ok, 5);
    assert_ok(&f.run_openai(&input, &single, &args("1")).await);
    assert_eq!(f.sim.stats().ok, 5 + 19);
    let (_, a) = read_rows(&batched);
    let (_, b) = read_rows(&single);
    assert_eq!(a.len(), 23);
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        if i % 5 == 4 {
            assert_eq!(x["result"], Value::Null);
        } else {
            assert_eq!(x["result"].as_array().map(Vec::len), Some(16));
        }
        assert_eq!(
            x["result"], y["result"],
            "row {i} got its own vector in a batch"
        );
    }
    // Usage of a batched call is split over its rows and sums to the total.
    let total: i64 = a.iter().map(|r| r["prompt_tokens"].as_i64().unwrap()).sum();
    let single_total: i64 = b.iter().map(|r| r["prompt_tokens"].as_i64().unwrap()).sum();
    assert_eq!(total, single_total);
}

/// A tiny PNG header: enough for MIME sniffing, which is all aiq reads.
const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x01";

#[tokio::test(flavor = "multi_thread")]
async fn images_from_base64_data_url_and_binary_columns() {
    use arrow::array::{BinaryArray, StringArray};
    use base64::Engine;

    let f = Fixture::new(SimConfig::default()).await;
    let b64 = base64::engine::general_purpose::STANDARD.encode(PNG);
    let input = f.write_jsonl(
        "in.jsonl",
        &[
            json!({"id": 0, "text": "cat", "img": b64}),
            json!({"id": 1, "text": "dog", "img": format!("data:image/png;base64,{b64}")}),
            json!({"id": 2, "text": "none", "img": null}),
            json!({"id": 3, "text": "pdf", "img": "JVBERi0xLjc="}),
        ],
    );
    let out = f.path("out.parquet");
    let flags = ["--prompt", "Describe the {{text}}", "--image", "img"];
    assert_ok(&f.run_openai(&input, &out, &flags).await);
    let (_, rows) = read_rows(&out);
    for i in [0, 1] {
        let text = format!("Describe the {}", rows[i]["text"].as_str().unwrap());
        assert_eq!(
            rows[i]["result"],
            json!(format!("echo: {text}")),
            "{:?}",
            rows[i]
        );
        // The simulator charges 85 tokens per image part it received.
        assert_eq!(
            rows[i]["prompt_tokens"],
            json!(aiq::ai::tokens::estimate(&text) + 85)
        );
    }
    assert_eq!(rows[2]["result"], Value::Null, "null image: not sent");
    assert_eq!(rows[2]["attempts"], json!(0));
    let err = rows[3]["error_message"].as_str().unwrap();
    assert!(
        err.contains("--image `img`") && err.contains("not a PNG"),
        "{err}"
    );
    assert_eq!(
        rows[3]["attempts"],
        json!(0),
        "a bad image is found before sending"
    );
    assert_eq!(f.sim.stats().ok, 2);

    // Bytes from Parquet, two image columns in one message.
    let batch = batch_of([
        col("text", StringArray::from(vec!["a", "b"]), false),
        col("front", BinaryArray::from(vec![Some(PNG), Some(PNG)]), true),
        col("back", BinaryArray::from(vec![Some(PNG), None]), true),
    ]);
    let input = f.write_parquet("in.parquet", batch);
    let out = f.path("bin.parquet");
    let args = [
        "--prompt", "{{text}}", "--image", "front", "--image", "back",
    ];
    assert_ok(&f.run_openai(&input, &out, &args).await);
    let (_, rows) = read_rows(&out);
    assert_eq!(
        rows[0]["prompt_tokens"],
        json!(aiq::ai::tokens::estimate("a") + 2 * 85)
    );
    assert_eq!(rows[1]["result"], Value::Null);

    // A column that does not exist or cannot hold images: exit 2, nothing sent.
    let before = f.sim.stats().requests;
    let o = f.score(&input, &out, &["--image", "frnt"]).await;
    assert_exit(&o, 2, &["`frnt`"]);
    let flags = ["--task", "embeddings", "--image", "front"];
    let o = f.score(&input, &out, &flags).await;
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert_eq!(f.sim.stats().requests, before);
}
