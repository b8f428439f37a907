//! `aiq run` end to end: every row once, in order, with its own answer;
//! both endpoint kinds, all three tasks, job files, and bad input.

use aiq::pipeline::sink::OUTCOME_COLUMNS;
use aiq::simulator::SimConfig;
use arrow::array::{Float64Array, Int64Array, StringArray, UInt32Array};
use arrow::datatypes::DataType;
use serde_json::{json, Value};

use super::util::*;

#[tokio::test(flavor = "multi_thread")]
async fn chat_rows_come_back_in_order_with_their_own_answers() {
    let (f, input, out) = job(SimConfig::default(), 300, 7).await;
    let prompt = ["--prompt", "Summarize: {{text}}"];
    let flags = [&prompt[..], &["--concurrency", "8", "--batch-rows", "64"]].concat();
    let o = f.run_openai(&input, &out, &flags).await;
    assert_ok(&o);
    let (schema, rows) = read_rows(&out);
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    // The input's columns, then the outcome's, as the library names them.
    assert_eq!(names, [&["id", "text"][..], &OUTCOME_COLUMNS].concat());
    assert_eq!(rows.len(), 300);
    let mut sent = 0;
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row["id"], json!(i), "rows keep input order");
        if i % 7 == 6 {
            // SQL null in, null out: not sent.
            assert_eq!(row["result"], Value::Null);
            assert_eq!(row["error_message"], Value::Null);
            assert_eq!(row["attempts"], json!(0));
            continue;
        }
        sent += 1;
        let result = row["result"].as_str().expect("a string result");
        assert!(
            result.starts_with(&format!("echo: Summarize: row-{i} ")),
            "row {i} got {result}"
        );
        assert_eq!(row["error_message"], Value::Null);
        assert!(row["prompt_tokens"].as_i64().unwrap() > 0);
        assert!(row["completion_tokens"].as_i64().unwrap() > 0);
        assert_eq!(
            row["total_tokens"].as_i64().unwrap(),
            row["prompt_tokens"].as_i64().unwrap() + row["completion_tokens"].as_i64().unwrap()
        );
        assert_eq!(row["cached_tokens"], json!(0));
        assert!(row["latency_ms"].as_i64().is_some());
        assert_eq!(row["attempts"], json!(1));
        assert!(matches!(
            row["finish_reason"].as_str(),
            Some("stop" | "length")
        ));
    }
    let stats = f.sim.stats();
    assert_eq!(stats.ok, sent, "one request per non-null row");
    assert!(
        stats.max_in_flight <= 8,
        "concurrency bound held: {}",
        stats.max_in_flight
    );
    assert!(
        !f.path("out.parquet.aiq").exists(),
        "the journal is removed after success"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn databricks_endpoint_with_token_from_environment() {
    let (f, input, out) = job(sim(|c| c.endpoints = vec!["my-llm".into()]), 20, 0).await;
    let flags = [
        "--system",
        "Be terse.",
        "--prompt",
        "{{text}}",
        "--param",
        "max_tokens=5",
        "--param",
        "temperature=0",
    ];
    let o = f.run_databricks(&input, &out, "my-llm", &flags).await;
    let rows = ok_rows(&o, &out);
    assert_eq!(rows.len(), 20);
    for (i, row) in rows.iter().enumerate() {
        assert!(text_of(row).starts_with(&format!("echo: row-{i} ")));
        // max_tokens=5 reached the body: the echo was cut at 5 tokens.
        assert_eq!(row["completion_tokens"], json!(5));
        assert_eq!(row["finish_reason"], json!("length"));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn databricks_profile_from_databrickscfg() {
    let f = Fixture::new(SimConfig::default()).await;
    std::fs::write(
        f.path(".databrickscfg"),
        format!("[DEFAULT]\nhost = http://nowhere.invalid\ntoken = wrong\n\n[sim]\nhost = {}\ntoken = {TOKEN}\n", f.sim.base_url()),
    )
    .unwrap();
    let input = f.write_jsonl("in.jsonl", &rows(5, 0));
    let out = f.path("out.parquet");
    let o = f
        .aiq(
            &[&run_io(&input, &out, "llm")[..], &QUIET_TEXT].concat(),
            &[("DATABRICKS_CONFIG_PROFILE", "sim")],
        )
        .await;
    assert_ok(&o);
    assert_eq!(read_rows(&out).1.len(), 5);
}

#[tokio::test(flavor = "multi_thread")]
async fn databricks_oauth_machine_to_machine() {
    let (f, input, out) = job(SimConfig::default(), 10, 0).await;
    let o = f
        .run_databricks_env(&input, &out, "llm", &QUIET_TEXT, &DATABRICKS_OAUTH)
        .await;
    assert_ok(&o);
    assert_eq!(read_rows(&out).1.len(), 10);
    assert_eq!(
        f.sim.stats().oauth_tokens,
        1,
        "the token is fetched once and reused"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn completions_task() {
    let (f, input, out) = job(SimConfig::default(), 10, 0).await;
    let flags = ["--task", "completions", "--prompt", "Q: {{text}}"];
    let o = f.run_openai(&input, &out, &flags).await;
    let rows = ok_rows(&o, &out);
    for (i, row) in rows.iter().enumerate() {
        assert!(
            text_of(row).starts_with(&format!("echo: Q: row-{i} ")),
            "{row:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn embeddings_task_gives_float_lists_batched() {
    let mut input_rows = rows(25, 0);
    input_rows[3]["text"] = input_rows[0]["text"].clone(); // equal texts, equal vectors
    let (f, input, out) = job_of(SimConfig::default(), &input_rows).await;
    let flags = ["--task", "embeddings", "--batch-size", "10"];
    let o = f.score(&input, &out, &flags).await;
    assert_ok(&o);
    let (schema, rows) = read_rows(&out);
    let result = schema.field_with_name("result").unwrap();
    assert!(
        matches!(result.data_type(), DataType::List(item) if item.data_type() == &DataType::Float32),
        "{result:?}"
    );
    assert_eq!(rows.len(), 25);
    for row in &rows {
        assert_eq!(row["result"].as_array().unwrap().len(), 16);
    }
    assert_eq!(rows[0]["result"], rows[3]["result"]);
    assert_ne!(rows[0]["result"], rows[1]["result"]);
    assert_eq!(f.sim.stats().ok, 3, "25 rows in requests of 10");
}

#[tokio::test(flavor = "multi_thread")]
async fn parquet_input_columns_pass_through() {
    let f = Fixture::new(SimConfig::default()).await;
    let batch = batch_of([
        col("n", UInt32Array::from(vec![1, 2, 3]), false),
        col(
            "score",
            Float64Array::from(vec![Some(0.5), None, Some(2.0)]),
            true,
        ),
        col("text", StringArray::from(vec!["a", "b", "c"]), true),
    ]);
    let input = f.write_parquet("in.parquet", batch);
    let out = f.path("out.parquet");
    let flags = ["--prompt", "{{text}} scored {{n}}"];
    let o = f.run_openai(&input, &out, &flags).await;
    assert_ok(&o);
    let (schema, rows) = read_rows(&out);
    // Unsigned input types are widened so DuckDB, pandas and Spark read them.
    assert_eq!(type_of(&schema, "n"), DataType::Int64);
    assert_eq!(rows[1]["score"], Value::Null);
    assert_eq!(rows[2]["result"], json!("echo: c scored 3"));
    let _ = Int64Array::from(vec![0]);
}

/// Paths in a job file are relative to its folder, paths in flags to the
/// current one; errors name the path as resolved (issue 27.6).
#[tokio::test(flavor = "multi_thread")]
async fn job_file_paths_are_relative_to_the_job_file() {
    let f = Fixture::new(SimConfig::default()).await;
    std::fs::create_dir_all(f.path("t4/data")).unwrap();
    std::fs::create_dir_all(f.path("elsewhere")).unwrap();
    f.write_jsonl("t4/data/in.jsonl", &rows(5, 0));
    let job = |input: &str| {
        format!(
            "input = {input:?}\noutput = \"out/scored.parquet\"\ncall_journal = \"calls\"\nendpoint = {:?}\nmodel = \"m\"\nprompt = \"{{{{text}}}}\"\n",
            f.openai_url()
        )
    };
    std::fs::create_dir_all(f.path("t4/out")).unwrap();
    std::fs::write(f.path("t4/big.toml"), job("data/in.jsonl")).unwrap();
    let envs = [("OPENAI_API_KEY", TOKEN)];
    let elsewhere = |args: &[&str]| output(f.command_in(&f.path("elsewhere"), args, &envs));
    let o = elsewhere(&["run", "-q", "../t4/big.toml"]).await;
    assert_ok(&o);
    assert_eq!(read_rows(&f.path("t4/out/scored.parquet")).1.len(), 5);
    assert!(
        f.path("t4/calls").is_dir(),
        "the call journal beside the job file"
    );

    // A flag stays relative to the current folder.
    let o = elsewhere(&["run", "-q", "../t4/big.toml", "--output", "mine.parquet"]).await;
    assert_ok(&o);
    assert_eq!(read_rows(&f.path("elsewhere/mine.parquet")).1.len(), 5);

    // The error names the path as resolved.
    std::fs::write(f.path("t4/typo.toml"), job("data/missing.jsonl")).unwrap();
    let o = elsewhere(&["run", "-q", "../t4/typo.toml"]).await;
    assert_exit(&o, 2, &["../t4/data/missing.jsonl"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn job_file_with_flags_overriding() {
    let (f, input, _) = job(SimConfig::default(), 12, 0).await;
    let text = format!(
        "input = {:?}\noutput = {:?}\nendpoint = {:?}\nmodel = \"m\"\nprompt = \"File: {{{{text}}}}\"\nconcurrency = 2\n[params]\nmax_tokens = 8\n",
        input.to_str().unwrap(),
        f.path("from-file.parquet").to_str().unwrap(),
        f.openai_url()
    );
    let job = f.write_text("job.toml", &text);
    let out = f.path("from-flag.parquet");
    let o = f
        .aiq(
            &[
                "run",
                "-q",
                job.to_str().unwrap(),
                "--output",
                out.to_str().unwrap(),
            ],
            &[("OPENAI_API_KEY", TOKEN)],
        )
        .await;
    assert_ok(&o);
    assert!(!f.path("from-file.parquet").exists());
    let (_, rows) = read_rows(&out);
    assert_eq!(rows.len(), 12);
    assert!(rows[0]["result"]
        .as_str()
        .unwrap()
        .starts_with("echo: File: row-0"));
    assert_eq!(rows[0]["completion_tokens"], json!(8));
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_column_stops_before_any_request() {
    let (f, input, out) = job(SimConfig::default(), 5, 0).await;
    let flags = ["--prompt", "Summarize: {{txet}}"];
    let o = f.run_openai(&input, &out, &flags).await;
    assert_exit(&o, 2, &["`txet`"]);
    assert_eq!(f.sim.stats().requests, 0);
    assert!(!out.exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_and_corrupt_inputs_are_usage_errors() {
    let f = Fixture::new(SimConfig::default()).await;
    let out = f.path("out.parquet");
    let missing = f.path("nope.parquet");
    let o = f.score(&missing, &out, &[]).await;
    assert_exit(&o, 2, &["nope.parquet"]);
    let corrupt = f.path("bad.parquet");
    std::fs::write(&corrupt, b"PAR1 this is not parquet").unwrap();
    let o = f.score(&corrupt, &out, &[]).await;
    assert_exit(&o, 2, &["bad.parquet"]);
    let bad_ext = f.path("data.csv");
    std::fs::write(&bad_ext, b"a,b\n").unwrap();
    let o = f.run_openai(&bad_ext, &out, &["--prompt", "{{a}}"]).await;
    assert_eq!(code(&o), 2);
    let o = f.aiq(&["run", "--input", "x.jsonl"], &[]).await;
    assert_exit(&o, 2, &["--output"]);
    assert_eq!(f.sim.stats().requests, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_row_gets_its_error_and_fail_on_error_fails_the_job() {
    let (f, input, out) = job_marked(30, &[(4, "[[sim:400]] malformed")]).await;
    let o = f.score(&input, &out, &[]).await;
    let rows = ok_rows(&o, &out);
    assert_eq!(rows.len(), 30);
    let err = rows[4]["error_message"]
        .as_str()
        .expect("row 4 has an error");
    assert!(
        err.contains("400") && err.contains("simulated bad request"),
        "{err}"
    );
    assert_eq!(rows[4]["attempts"], json!(1), "a 400 is not retried");
    assert!(rows
        .iter()
        .enumerate()
        .all(|(i, r)| i == 4 || r["error_message"].is_null()));

    let out2 = f.path("out2.parquet");
    let flags = ["--fail-on-error", "--concurrency", "1"];
    let o = f.score(&input, &out2, &flags).await;
    assert_exit(&o, 1, &["row 4"]);
    assert!(!out2.exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_output_folders_are_created() {
    let (f, input, _) = job(SimConfig::default(), 3, 0).await;
    let out = f.path("new/deeper/out.parquet");
    let o = f.score(&input, &out, &[]).await;
    assert_ok(&o);
    assert_eq!(read_rows(&out).1.len(), 3);
    // A file where a folder should be is a usage error, before any request.
    let o = f.score(&input, &f.path("in.jsonl/out.parquet"), &[]).await;
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert_eq!(f.sim.stats().requests, 3);
}
