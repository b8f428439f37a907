//! `--endpoint anthropic`: aiq against the simulator's Messages API
//! (`--base-url`), as it would talk to api.anthropic.com: every row, the
//! cache columns (Anthropic caches only where aiq marks `cache_control`),
//! typed results through a forced tool, streaming, repairs, retries of
//! Anthropic's errors, and a wrong or missing key stopping the job early.

use std::path::Path;
use std::process::Output;

use aiq::simulator::SimConfig;
use serde_json::{json, Map, Value};

use super::util::*;

/// A system prompt well over the 1,024 tokens Anthropic caches at least.
fn long_system() -> String {
    "You grade short product reviews carefully and consistently. ".repeat(100)
}

/// `aiq run` against the simulator's Messages API ([`Fixture::anthropic_command`]).
async fn run(
    f: &Fixture,
    input: &Path,
    out: &Path,
    extra: &[&str],
    envs: &[(&str, &str)],
) -> Output {
    output(f.anthropic_command(input, out, extra, envs)).await
}

fn sum(rows: &[Map<String, Value>], column: &str) -> i64 {
    rows.iter().map(|r| r[column].as_i64().unwrap_or(0)).sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_row_is_answered_with_anthropic_cache_columns() {
    let (f, input, out) = job(SimConfig::default(), 24, 0).await;
    let system = long_system();
    let o = run(
        &f,
        &input,
        &out,
        &[
            "--prompt",
            "{{text}}",
            "--system",
            &system,
            "--concurrency",
            "4",
        ],
        &[],
    )
    .await;
    assert_ok(&o);
    let rows = read_rows(&out).1;
    assert_eq!(rows.len(), 24);
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(
            row["result"],
            json!(format!("echo: row-{i} says the product is fine")),
            "{row:?}"
        );
        assert_eq!(row["finish_reason"], json!("stop"));
        // One convention: prompt_tokens is the whole input.
        let whole = row["prompt_tokens"].as_i64().unwrap();
        let (read, written) = (
            row["cached_tokens"].as_i64().unwrap(),
            row["cache_write_tokens"].as_i64().unwrap(),
        );
        assert!(read + written <= whole && whole > 1000, "{row:?}");
    }
    // The marked system prompt is written once (the warm-up) and read by
    // every other row.
    let stats = f.sim.stats();
    assert_eq!(stats.ok, 24);
    assert!(sum(&rows, "cache_write_tokens") > 0);
    assert_eq!(sum(&rows, "cached_tokens") as u64, stats.cached_tokens);
    let reading = rows
        .iter()
        .filter(|r| r["cached_tokens"].as_i64() > Some(0));
    assert!(reading.count() >= 20, "{rows:?}");
    assert_eq!(sum(&rows, "prompt_tokens") as u64, stats.prompt_tokens);
}

#[tokio::test(flavor = "multi_thread")]
async fn typed_results_come_through_a_forced_tool_online_and_streamed() {
    for stream in [false, true] {
        let (f, input, out) = job(SimConfig::default(), 6, 0).await;
        let mut extra = vec![
            "--prompt",
            "{{text}}",
            "--return-type",
            "STRUCT<a: INT, b: STRING>",
        ];
        if stream {
            extra.push("--stream");
        }
        assert_ok(&run(&f, &input, &out, &extra, &[]).await);
        let rows = read_rows(&out).1;
        for row in &rows {
            assert_eq!(
                row["error_message"],
                Value::Null,
                "stream {stream}: {row:?}"
            );
            assert!(row["result"]["a"].is_i64(), "stream {stream}: {row:?}");
            assert!(row["result"]["b"].is_string(), "{row:?}");
            assert!(row["completion_tokens"].as_i64() > Some(0), "{row:?}");
            assert!(row["prompt_tokens"].as_i64() > Some(0), "{row:?}");
            if stream {
                assert!(row["ttft_ms"].is_i64(), "{row:?}");
            }
        }
        assert_eq!(f.sim.stats().ok, 6);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn streamed_text_and_usage_match_the_unstreamed() {
    let (f, input, out) = job(SimConfig::default(), 5, 0).await;
    let system = long_system();
    let base = [
        "--prompt",
        "{{text}}",
        "--system",
        &system,
        "--concurrency",
        "1",
    ];
    assert_ok(&run(&f, &input, &out, &base, &[]).await);
    let plain = read_rows(&out).1;
    let streamed_out = f.path("streamed.parquet");
    let args = [&base[..], &["--stream"]].concat();
    assert_ok(&run(&f, &input, &streamed_out, &args, &[]).await);
    let streamed = read_rows(&streamed_out).1;
    for (a, b) in plain.iter().zip(&streamed) {
        for column in [
            "result",
            "finish_reason",
            "prompt_tokens",
            "completion_tokens",
        ] {
            assert_eq!(a[column], b[column], "{column}");
        }
    }
    // The second run reads the prefix the first wrote.
    assert!(streamed
        .iter()
        .all(|r| r["cached_tokens"].as_i64() > Some(0)));
}

#[tokio::test(flavor = "multi_thread")]
async fn typed_replies_that_do_not_fit_are_repaired() {
    let cfg = SimConfig {
        truncate_first: 1,
        mismatch_first: 1,
        ..SimConfig::default()
    };
    let (f, input, out) = job(cfg, 3, 0).await;
    let extra = [
        "--prompt",
        "{{text}}",
        "--return-type",
        "STRUCT<a: INT, b: STRING>",
        "--concurrency",
        "1",
        "--max-repairs",
        "2",
    ];
    assert_ok(&run(&f, &input, &out, &extra, &[]).await);
    let rows = read_rows(&out).1;
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row["error_message"], Value::Null, "row {i}: {row:?}");
        assert!(row["result"]["a"].is_i64(), "row {i}: {row:?}");
        assert_eq!(row["repairs"], json!(if i == 0 { 2 } else { 0 }), "row {i}");
    }
    assert_eq!(f.sim.stats().ok, 5);
}

#[tokio::test(flavor = "multi_thread")]
async fn overloaded_and_server_errors_are_retried() {
    let cfg = SimConfig {
        fault_rate: 0.3,
        faults: "529,500,429".into(),
        ..SimConfig::default()
    };
    let (f, input, out) = job(cfg, 30, 0).await;
    assert_ok(&run(&f, &input, &out, &["--prompt", "{{text}}"], &[]).await);
    let rows = read_rows(&out).1;
    assert!(
        rows.iter().all(|r| r["error_message"].is_null()),
        "{rows:?}"
    );
    let stats = f.sim.stats();
    assert!(stats.faults_injected > 0);
    assert_eq!(stats.ok, 30);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_key_stops_the_job_naming_the_variable() {
    let (f, input, out) = job(SimConfig::default(), 40, 0).await;
    let wrong = "sk-ant-WRONG-key-123456";
    let o = run(
        &f,
        &input,
        &out,
        &["--prompt", "{{text}}", "--concurrency", "2"],
        &[("ANTHROPIC_API_KEY", wrong)],
    )
    .await;
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("ANTHROPIC_API_KEY") && err.contains("401"),
        "{err}"
    );
    assert!(!err.contains(wrong), "{err}");
    assert!(f.sim.stats().requests < 40, "the job stopped early");
}

#[tokio::test(flavor = "multi_thread")]
async fn no_key_or_no_model_is_found_before_anything_is_sent() {
    let (f, input, out) = job(SimConfig::default(), 3, 0).await;
    let base = f.sim.base_url();
    let mut args = run_io(&input, &out, "anthropic");
    args.extend(["-q", "--base-url", &base, "--prompt", "{{text}}"]);
    let no_model = f.aiq(&args, &[("ANTHROPIC_API_KEY", TOKEN)]).await;
    assert_eq!(code(&no_model), 2, "{}", stderr(&no_model));
    assert!(
        stderr(&no_model).contains("--model"),
        "{}",
        stderr(&no_model)
    );
    args.extend(["--model", "claude-sim"]);
    let no_key = f.aiq(&args, &[]).await;
    assert_eq!(code(&no_key), 2, "{}", stderr(&no_key));
    assert!(
        stderr(&no_key).contains("ANTHROPIC_API_KEY"),
        "{}",
        stderr(&no_key)
    );
    // ANTHROPIC_BASE_URL is read as the SDK reads it.
    let mut args = run_io(&input, &out, "anthropic");
    args.extend(["-q", "--model", "claude-sim", "--prompt", "{{text}}"]);
    let o = f
        .aiq(
            &args,
            &[("ANTHROPIC_API_KEY", TOKEN), ("ANTHROPIC_BASE_URL", &base)],
        )
        .await;
    assert_ok(&o);
    assert_eq!(f.sim.stats().ok, 3);
    let embeddings = [&args[..], &["--task", "embeddings", "--overwrite"]].concat();
    let o = f.aiq(&embeddings, &[("ANTHROPIC_API_KEY", TOKEN)]).await;
    assert_eq!(code(&o), 2, "{}", stderr(&o));
}
