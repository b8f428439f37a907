//! Answers you can use: a typed reply cut off at `max_tokens` says so, typed
//! replies that were cut off or did not match their schema are repaired
//! (asked again, their tokens counted), and `--retry-failed` re-sends only
//! the rows whose journaled outcome is an error. The simulator's
//! `truncate_*` / `mismatch_*` knobs spoil typed replies the way real
//! models sometimes do.

use aiq::simulator::SimConfig;
use serde_json::{json, Map, Value};

use super::util::*;

const TYPE: &str = "STRUCT<a: INT, b: STRING>";

/// `n` rows scored with the result type [`TYPE`] and `flags` by a
/// simulator with `cfg`, which must succeed: the fixture and the rows
/// written.
async fn typed(cfg: SimConfig, n: usize, flags: &[&str]) -> (Fixture, Vec<Map<String, Value>>) {
    let (f, input, out) = job(cfg, n, 0).await;
    let args = [&["--return-type", TYPE][..], flags].concat();
    let rows = ok_rows(&f.score(&input, &out, &args).await, &out);
    (f, rows)
}

fn sum(rows: &[Map<String, Value>], column: &str) -> i64 {
    rows.iter().map(|r| r[column].as_i64().unwrap_or(0)).sum()
}

/// The simulator answered `ok` calls, and the rows' usage counts every
/// one of them: a repair's call is billed to its row.
#[track_caller]
fn assert_usage_counts_every_call(f: &Fixture, rows: &[Map<String, Value>], ok: u64) {
    let stats = f.sim.stats();
    assert_eq!(stats.ok, ok);
    let used = (sum(rows, "prompt_tokens"), sum(rows, "completion_tokens"));
    let billed = (stats.prompt_tokens, stats.completion_tokens);
    assert_eq!((used.0 as u64, used.1 as u64), billed);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cut_off_typed_reply_says_to_raise_max_tokens() {
    let (f, rows) = typed(sim(|c| c.truncate_rate = 1.0), 4, &["--max-repairs", "0"]).await;
    for row in &rows {
        let err = row["error_message"].as_str().expect("cut off: an error");
        assert!(
            err.contains("cut off at max_tokens") && err.contains("raise max_tokens"),
            "{err}"
        );
        assert_eq!(row["finish_reason"], json!("length"));
        assert_eq!(
            (row["attempts"].clone(), row["repairs"].clone()),
            (json!(1), json!(0))
        );
    }
    assert_eq!(f.sim.stats().ok, 4, "no repair with --max-repairs 0");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reply_cut_off_by_max_tokens_is_asked_again_with_more() {
    // No knob: the simulator cuts the document at the request's max_tokens,
    // as a model does; only a larger max_tokens gets it whole.
    let (f, rows) = typed(SimConfig::default(), 5, &["--param", "max_tokens=2"]).await;
    for row in &rows {
        assert_eq!(row["error_message"], Value::Null, "{row:?}");
        assert!(row["result"]["a"].is_i64(), "{row:?}");
        assert_eq!(row["finish_reason"], json!("stop"));
        assert_eq!(
            (row["attempts"].clone(), row["repairs"].clone()),
            (json!(2), json!(1))
        );
    }
    // Usage counts both calls of every row.
    assert_usage_counts_every_call(&f, &rows, 10);
}

#[tokio::test(flavor = "multi_thread")]
async fn repairs_fix_cut_off_and_mismatching_replies_and_are_paid_for() {
    // With one call at a time: row 0's reply is cut off, its repair does not
    // match the schema, and its second repair (with the validation error) is
    // good. The other rows are answered at once.
    let (f, rows) = typed(
        sim(|c| (c.truncate_first, c.mismatch_first) = (1, 1)),
        4,
        &[
            "--concurrency",
            "1",
            "--max-repairs",
            "2",
            "--price-in",
            "1",
            "--price-out",
            "2",
        ],
    )
    .await;
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row["error_message"], Value::Null, "row {i}: {row:?}");
        assert!(row["result"]["a"].is_i64(), "row {i}: {row:?}");
        let repairs = if i == 0 { 2 } else { 0 };
        assert_eq!(row["repairs"], json!(repairs), "row {i}");
        assert_eq!(row["attempts"], json!(repairs + 1), "row {i}");
        let cost = (row["prompt_tokens"].as_f64().unwrap() * 1.0
            + row["completion_tokens"].as_f64().unwrap() * 2.0)
            / 1e6;
        assert!(
            (row["cost"].as_f64().unwrap() - cost).abs() < 1e-12,
            "row {i}"
        );
    }
    assert!(
        rows[0]["prompt_tokens"].as_i64() > rows[1]["prompt_tokens"].as_i64(),
        "row 0 paid for three prompts"
    );
    assert_usage_counts_every_call(&f, &rows, 6);
    let stats = f.sim.stats();
    // The second repair carried the validation error.
    assert!(
        stats
            .ok_by_prompt
            .keys()
            .any(|k| k.starts_with("Your previous answer did not match")
                && k.contains("expected INT")),
        "{:?}",
        stats.ok_by_prompt.keys()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reply_that_never_fits_fails_after_its_repairs() {
    let (f, rows) = typed(sim(|c| c.mismatch_rate = 1.0), 3, &[]).await;
    for row in &rows {
        let err = row["error_message"].as_str().expect("an error");
        assert!(
            err.contains("expected INT") && err.ends_with("(after 1 repair)"),
            "{err}"
        );
        assert_eq!(
            (row["attempts"].clone(), row["repairs"].clone()),
            (json!(2), json!(1))
        );
    }
    assert_eq!(f.sim.stats().ok, 6);
}

#[tokio::test(flavor = "multi_thread")]
async fn retry_failed_resends_only_the_failed_rows() {
    // The first three requests fail (HTTP 500, no retries allowed): three
    // failed rows, the job still completes.
    let (f, input, out) = failing_first(3).await;
    let args = [&PROMPT_TEXT[..], &ONE_AT_A_TIME_NO_RETRIES].concat();
    assert_ok(&f.run_openai(&input, &out, &args).await);
    let (_, first) = read_rows(&out);
    let failed: Vec<usize> = (0..30)
        .filter(|&i| !first[i]["error_message"].is_null())
        .collect();
    assert_eq!(failed, [0, 1, 2]);
    assert!(
        f.path("out.parquet.aiq").exists(),
        "kept for --retry-failed"
    );
    let requests = f.sim.stats().requests;

    // A plain re-run keeps the errors as final and sends nothing.
    assert_ok(&f.run_openai(&input, &out, &args).await);
    assert_eq!(f.sim.stats().requests, requests);
    assert_eq!(read_rows(&out).1, first);

    let mut retry = args.to_vec();
    retry.push("--retry-failed");
    assert_ok(&f.run_openai(&input, &out, &retry).await);
    assert_eq!(f.sim.stats().requests, requests + 3, "only the failed rows");
    let (_, after) = read_rows(&out);
    assert_eq!(after.len(), 30);
    for (i, row) in after.iter().enumerate() {
        assert_eq!(row["error_message"], Value::Null, "row {i}");
        if !failed.contains(&i) {
            assert_eq!(row, &first[i], "answered row {i} kept as it was");
        }
    }
    assert!(
        !f.path("out.parquet.aiq").exists(),
        "nothing failed: state removed"
    );

    let flags = ["--retry-failed", "--restart"];
    let o = f.score(&input, &out, &flags).await;
    assert_eq!(code(&o), 2, "{}", stderr(&o));
}

/// The summary says why rows were not sent and why more requests were
/// sent than rows: its null and repair counts (issue 27.4).
#[tokio::test(flavor = "multi_thread")]
async fn the_summary_says_what_null_rows_and_repairs_are() {
    let (f, input, out) = job(SimConfig::default(), 9, 3).await;
    let mut args = f.run_args(&input, &out);
    args.retain(|a| a != "-q");
    args.extend(["--return-type", TYPE, "--param", "max_tokens=2"].map(String::from));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = f.aiq(&args, &[("OPENAI_API_KEY", TOKEN)]).await;
    let rows = ok_rows(&o, &out);
    let nulls = rows.iter().filter(|r| r["attempts"] == json!(0)).count();
    let repairs = sum(&rows, "repairs");
    assert!(nulls > 0 && repairs > 0, "{rows:?}");
    let err = stderr(&o);
    assert!(
        err.contains(&format!(
            "{nulls} null (not sent: a template value was null or the prompt empty)"
        )),
        "{err}"
    );
    assert!(err.contains(&format!("(incl. {repairs} repairs)")), "{err}");
}
