//! Rendering rows into prompts, end to end: what is not sent (nulls, empty
//! prompts), what stops the job before any request (unknown filters and
//! tests, fields of plain values), and what a template may cost (runaway
//! loops fail their row; a signal still stops the job).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use aiq::simulator::SimConfig;
use arrow::array::{Int64Array, NullArray, StringArray};
use serde_json::{json, Value};

use super::util::*;

/// Input lines `{"id": i, "text": texts[i]}`.
fn lines(texts: &[&str]) -> Vec<Value> {
    texts
        .iter()
        .enumerate()
        .map(|(i, t)| json!({"id": i, "text": t}))
        .collect()
}

/// Every row of `out` whose id is in `not_sent` has a null result and
/// `error_message` (`None`: null too), and every other row an answer.
#[track_caller]
fn assert_not_sent(out: &std::path::Path, not_sent: &[u64], error: Option<&str>) {
    let (_, rows) = read_rows(out);
    for row in &rows {
        let id = row["id"].as_u64().unwrap();
        if not_sent.contains(&id) {
            assert_eq!(row["result"], Value::Null, "row {id}: {row:?}");
            match error {
                None => assert_eq!(row["error_message"], Value::Null, "row {id}: {row:?}"),
                Some(e) => assert!(
                    row["error_message"].as_str().is_some_and(|m| m.contains(e)),
                    "row {id}: {row:?}"
                ),
            }
            assert_eq!(row["attempts"], json!(0), "row {id}");
        } else {
            assert!(row["result"].is_string(), "row {id}: {row:?}");
            assert_eq!(row["error_message"], Value::Null, "row {id}: {row:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_column_null_on_every_row_is_not_sent() {
    let f = Fixture::new(SimConfig::default()).await;
    // JSONL: `note` is null on every line.
    let lines: Vec<Value> = (0..5)
        .map(|i| json!({"id": i, "text": format!("row {i}"), "note": null}))
        .collect();
    let jsonl = f.write_jsonl("in.jsonl", &lines);
    // Parquet: a column of Arrow's null type (what pyarrow writes for an
    // all-None column).
    let texts = StringArray::from_iter_values((0..5).map(|i| format!("row {i}")));
    let batch = batch_of([
        col("id", Int64Array::from_iter_values(0..5), false),
        col("text", texts, false),
        col("note", NullArray::new(5), true),
    ]);
    let parquet = f.write_parquet("in.parquet", batch);
    for input in [jsonl, parquet] {
        let out = f.path("out.parquet");
        let flags = ["--prompt", "{{text}} / {{note}}", "--restart"];
        let o = f.run_openai(&input, &out, &flags).await;
        assert_ok(&o);
        assert_not_sent(&out, &[0, 1, 2, 3, 4], None);
        assert_eq!(f.sim.stats().requests, 0, "{}", input.display());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_empty_prompt_is_not_sent_unless_asked() {
    let (f, input, out) = job_of(
        SimConfig::default(),
        &lines(&["one", "", "  \n\t ", "four"]),
    )
    .await;
    let o = f.score(&input, &out, &[]).await;
    assert_ok(&o);
    assert_not_sent(&out, &[1, 2], Some("empty"));
    assert_eq!(f.sim.stats().requests, 2);
    // Nothing failed: the journal is not kept for --retry-failed.
    assert!(!f.path("out.parquet.aiq").exists());

    let o = f.score(&input, &out, &["--send-empty"]).await;
    assert_ok(&o);
    assert_eq!(f.sim.stats().requests, 6, "--send-empty sends every row");
    let (_, rows) = read_rows(&out);
    assert_no_errors(&rows);
}

#[tokio::test(flavor = "multi_thread")]
async fn template_mistakes_stop_the_job_before_any_request() {
    let (f, input, out) = job(SimConfig::default(), 50, 0).await;
    for (prompt, named) in [
        ("{{ text | upperr }}", "upperr"),
        // Found even on a branch no row takes.
        (
            "{% if id > 1000 %}{{ text | trimm }}{% endif %}{{ text }}",
            "trimm",
        ),
        ("{% if text is stringg %}{{ text }}{% endif %}", "stringg"),
        ("{% filter upperr %}{{ text }}{% endfilter %}", "upperr"),
        ("{{ text.foo }}", "text.foo"),
    ] {
        let o = f.run_openai(&input, &out, &["--prompt", prompt]).await;
        assert_eq!(code(&o), 2, "{prompt}: {}", stderr(&o));
        assert!(stderr(&o).contains(named), "{prompt}: {}", stderr(&o));
    }
    assert_eq!(f.sim.stats().requests, 0);
    assert!(!out.exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn rows_the_template_fails_on_count_toward_the_early_stop() {
    // Every row divides by zero: only the data says so.
    let lines: Vec<Value> = (0..2000).map(|i| json!({"id": i, "n": 0})).collect();
    let (f, input, out) = job_of(SimConfig::default(), &lines).await;
    let flags = ["--prompt", "{{ 100 // n }}", "--batch-rows", "100"];
    let o = f.run_openai(&input, &out, &flags).await;
    assert_exit(&o, 1, &["in a row"]);
    assert!(stderr(&o).contains("template"), "{}", stderr(&o));
    assert_eq!(f.sim.stats().requests, 0);
    let journaled = line_count(&f.path("out.parquet.aiq/journal.jsonl"));
    assert!(
        journaled < 2000,
        "stopped early: {journaled} rows journaled"
    );
}

/// A prompt that would take days: nested loops of 100,000 each.
const RUNAWAY: &str =
    "{% if text == 'loop' %}{% for i in range(100000) %}{% for j in range(100000) %}x\
                       {% endfor %}{% endfor %}{% endif %}{{ text }}";

#[tokio::test(flavor = "multi_thread")]
async fn a_runaway_template_fails_its_row() {
    let (f, input, out) = job_of(SimConfig::default(), &lines(&["a", "loop", "b"])).await;
    let o = f.run_openai(&input, &out, &["--prompt", RUNAWAY]).await;
    let rows = ok_rows(&o, &out);
    assert_eq!(rows.len(), 3);
    let error = rows[1]["error_message"].as_str().unwrap_or_default();
    assert!(error.contains("too much work"), "{error}");
    assert!(rows[0]["result"].is_string() && rows[2]["result"].is_string());
    assert_eq!(f.sim.stats().requests, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_stops_a_job_that_is_rendering() {
    // Answered rows between runaway ones: no early stop, only the signal ends it.
    let lines: Vec<Value> = (0..400)
        .map(|i| json!({"id": i, "text": if i % 2 == 0 { "fine" } else { "loop" }}))
        .collect();
    let (f, input, out) = job_of(SimConfig::default(), &lines).await;
    let mut cmd = f.openai_command(&input, &out, &["--prompt", RUNAWAY, "--batch-rows", "1"]);
    cmd.stderr(Stdio::piped());
    let journal = f.path("out.parquet.aiq/journal.jsonl");
    let mut child = spawn_until_journaled(&mut cmd, &journal, 2);
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    // A generous bound: this asserts that it stops, not how fast.
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("aiq did not stop within 120 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("interrupted"), "{}", stderr(&o));
    // The journal is whole: every line an outcome.
    let lines = BufReader::new(std::fs::File::open(&journal).unwrap()).lines();
    let mut n = 0;
    for line in lines {
        let v: Value = serde_json::from_str(&line.unwrap()).expect("journal line");
        assert!(v["row"].is_u64());
        n += 1;
    }
    assert!(n >= 2 && n < 400, "{n} rows journaled");
}
