//! `--mode batch`: a job through the simulator's Files and Batch APIs,
//! with the same output as online mode. No timing assertions: the
//! simulator's turnaround and aiq's poll interval are milliseconds, and
//! tests wait for journal lines, not for time.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use aiq::simulator::SimConfig;
use serde_json::{json, Value};

use super::util::*;

/// Batch mode, polled every 20 ms: tests take milliseconds, not the
/// default 30 s.
const BATCH: [&str; 4] = ["--mode", "batch", "--poll-secs", "0.02"];

/// [`job`] that also returns its input rows, to check the output against.
async fn batch_job(
    cfg: SimConfig,
    n: usize,
    null_every: usize,
) -> (Fixture, Vec<Value>, PathBuf, PathBuf) {
    let (f, path, out) = job(cfg, n, null_every).await;
    (f, rows(n, null_every), path, out)
}

async fn run_batch(
    f: &Fixture,
    input: &Path,
    output: &Path,
    extra: &[&str],
) -> std::process::Output {
    f.score(input, output, &[&BATCH[..], extra].concat()).await
}

/// [`run_batch`] from `io`'s input (the rows `input`) to its output: it
/// succeeds and answers every row ([`assert_all_answered`]).
async fn answers_all(f: &Fixture, io: [&Path; 2], input: &[Value], extra: &[&str]) {
    assert_ok(&run_batch(f, io[0], io[1], extra).await);
    assert_all_answered(io[1], input);
}

/// Every row of `out` answered as the simulator answers `text` online.
#[track_caller]
fn assert_all_answered(out: &Path, input: &[Value]) {
    let (_, rows) = read_rows(out);
    assert_eq!(rows.len(), input.len());
    for (row, inp) in rows.iter().zip(input) {
        assert_eq!(row["id"], inp["id"], "input order");
        match inp["text"].as_str() {
            Some(text) => {
                assert_eq!(row["result"], json!(format!("echo: {text}")), "{row:?}");
                assert_eq!(row["error_message"], Value::Null);
                assert!(row["prompt_tokens"].as_i64().unwrap() > 0);
                assert_eq!(row["finish_reason"], json!("stop"));
            }
            None => assert_eq!(row["result"], Value::Null),
        }
    }
}

/// Every prompt was answered exactly once, batch and online together.
#[track_caller]
fn assert_each_answered_once(f: &Fixture, input: &[Value]) {
    let stats = f.sim.stats();
    for text in input.iter().filter_map(|r| r["text"].as_str()) {
        assert_eq!(stats.ok_by_prompt.get(text), Some(&1), "{text}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn splits_by_count_and_by_bytes_with_online_output() {
    let (f, input, path, out) = batch_job(SimConfig::default(), 25, 7).await;
    let flags = [
        "--batch-max-requests",
        "10",
        "--price-in",
        "1",
        "--price-out",
        "2",
    ];
    answers_all(&f, [&path, &out], &input, &flags).await;
    // 25 rows, 3 of them null (not sent): 10 + 10 + 2.
    assert_eq!(f.sim.batch_stats().batches, 3);
    assert_eq!(f.sim.batch_stats().lines, 22);
    assert_each_answered_once(&f, &input);
    let (_, got) = read_rows(&out);
    assert!(got[0]["cost"].as_f64().unwrap() > 0.0);
    assert!(!f.path("out.parquet.aiq").exists(), "state folder removed");

    // By bytes: the dry run shows the files, the run uploads as many.
    let out2 = f.path("out2.parquet");
    let flags = ["--batch-max-bytes", "1024", "--dry-run", "--json"];
    let dry = run_batch(&f, &path, &out2, &flags).await;
    assert_ok(&dry);
    let estimate: Value = serde_json::from_slice(&dry.stdout).unwrap();
    let files = estimate["batches"].as_array().unwrap().clone();
    assert!(files.len() > 2, "{estimate}");
    assert_eq!(
        files
            .iter()
            .map(|b| b["requests"].as_u64().unwrap())
            .sum::<u64>(),
        22
    );
    assert!(
        files.iter().all(|b| b["bytes"].as_u64().unwrap() <= 1024),
        "{estimate}"
    );
    answers_all(&f, [&path, &out2], &input, &["--batch-max-bytes", "1024"]).await;
    assert_eq!(f.sim.batch_stats().batches, 3 + files.len() as u64);
}

#[tokio::test(flavor = "multi_thread")]
async fn failed_lines_are_resubmitted_alone() {
    let (f, input, path, out) =
        batch_job(sim(|c| (c.batch_fail_rate, c.seed) = (0.3, 3)), 30, 0).await;
    answers_all(&f, [&path, &out], &input, &[]).await;
    let st = f.sim.batch_stats();
    assert!(st.lines_failed > 0 && st.batches >= 2, "{st:?}");
    // Every failed line came back once more, and nothing else did.
    assert_eq!(st.lines, 30 + st.lines_failed, "{st:?}");
    assert_each_answered_once(&f, &input);
}

#[tokio::test(flavor = "multi_thread")]
async fn rows_that_keep_failing_get_the_providers_message() {
    let mut input = rows(6, 0);
    input[1]["text"] = json!("always [[sim:500]] here");
    input[2]["text"] = json!("bad [[sim:400]] request");
    let (f, path, out) = job_of(SimConfig::default(), &input).await;
    let o = run_batch(&f, &path, &out, &["--max-retries", "2"]).await;
    let got = ok_rows(&o, &out);
    let e1 = got[1]["error_message"].as_str().unwrap();
    assert!(
        e1.contains("simulated server error") && e1.contains("3 batch rounds"),
        "{e1}"
    );
    assert_eq!(got[1]["attempts"], json!(3));
    // A bad request is final at once: no round helps.
    let e2 = got[2]["error_message"].as_str().unwrap();
    assert!(
        e2.contains("HTTP 400") && e2.contains("simulated bad request"),
        "{e2}"
    );
    assert_eq!(got[2]["attempts"], json!(1));
    assert_eq!(
        got[0]["result"],
        json!(format!("echo: {}", input[0]["text"].as_str().unwrap()))
    );
    // Round 1: 6 lines; rounds 2 and 3: the one 5xx line alone.
    assert_eq!(f.sim.batch_stats().lines, 8);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_batch_resubmits_its_unanswered_part() {
    let (f, input, path, out) = batch_job(
        sim(|c| (c.batch_expire_first, c.batch_expire_share) = (1, 0.4)),
        20,
        0,
    )
    .await;
    answers_all(&f, [&path, &out], &input, &[]).await;
    let st = f.sim.batch_stats();
    assert_eq!(
        (st.batches, st.expired, st.lines),
        (2, 1, 20 + 12),
        "{st:?}"
    );
    assert_each_answered_once(&f, &input);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_enqueued_token_cap_waits_and_never_fails_a_row() {
    // Each line enqueues ~8 prompt + 32 reply tokens: one 10-row batch fits
    // under 600, two do not.
    let (f, input, path, out) = batch_job(
        sim(|c| (c.batch_token_cap, c.batch_turnaround_ms) = (Some(600), 50)),
        30,
        0,
    )
    .await;
    let flags = ["--batch-max-requests", "10", "--max-retries", "0"];
    answers_all(&f, [&path, &out], &input, &flags).await;
    let st = f.sim.batch_stats();
    assert!(st.token_capped >= 2, "{st:?}");
    assert_eq!(st.lines, 30, "only accepted batches ran: {st:?}");
    assert_each_answered_once(&f, &input);

    // A cap below one whole file: files are cut smaller until they fit.
    let f = Fixture::new(sim(|c| c.batch_token_cap = Some(250))).await;
    let path = f.write_jsonl("in.jsonl", &input);
    answers_all(&f, [&path, &out], &input, &["--batch-max-requests", "10"]).await;
    assert_each_answered_once(&f, &input);
}

/// The command line of a batch job, for spawning and killing.
fn batch_command(f: &Fixture, input: &Path, out: &Path) -> Command {
    let mut cmd = f.openai_command(input, out, &[&PROMPT_TEXT[..], &BATCH].concat());
    cmd.stdout(Stdio::null()).stderr(Stdio::piped());
    cmd
}

/// The job run again after a kill: every row answered once, through the
/// one batch the killed run created (`why` it was not created again).
async fn assert_rerun_used_the_one_batch(f: &Fixture, io: [&Path; 2], input: &[Value], why: &str) {
    assert_ok(&output(batch_command(f, io[0], io[1])).await);
    assert_all_answered(io[1], input);
    assert_eq!(f.sim.batch_stats().batches, 1, "{why}");
    assert_each_answered_once(f, input);
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_while_batches_run_then_a_rerun_resubmits_nothing() {
    let (f, input, path, out) = batch_job(sim(|c| c.batch_turnaround_ms = 1_500), 12, 0).await;
    let journal = f.path("out.parquet.aiq/batches.jsonl");
    // `submitting` then `created`: the batch runs, its id is journaled.
    let mut child = spawn_until_journaled(&mut batch_command(&f, &path, &out), &journal, 2);
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(!out.exists());
    let why = "the re-run polled, never resubmitted";
    assert_rerun_used_the_one_batch(&f, [&path, &out], &input, why).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_whose_id_a_kill_lost_is_found_by_its_metadata() {
    // The batch exists at once, but its id comes back only after 60 s:
    // the kill lands in between.
    let (f, input, path, out) = batch_job(sim(|c| c.batch_create_delay_ms = 60_000), 8, 0).await;
    let journal = f.path("out.parquet.aiq/batches.jsonl");
    let mut child = spawn_until_journaled(&mut batch_command(&f, &path, &out), &journal, 1);
    // Wait (by progress, not time) until the simulator holds the batch.
    while f.sim.batch_stats().batches == 0 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let why = "found by metadata, not created again";
    assert_rerun_used_the_one_batch(&f, [&path, &out], &input, why).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_deadline_cancels_and_sends_the_rest_online() {
    // The batch would take 4 s (a line every 100 ms); the deadline is 1 s.
    let (f, input, path, out) = batch_job(sim(|c| c.batch_turnaround_ms = 4_000), 40, 0).await;
    answers_all(&f, [&path, &out], &input, &["--deadline", "1s"]).await;
    assert_eq!(f.sim.batch_stats().cancelled, 1);
    // How many the batch answered before it was cancelled depends on the
    // machine's speed; that the rest went online does not.
    let online = f.sim.stats().requests;
    assert!(online > 0, "{online} rows went online");
    assert_each_answered_once(&f, &input);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_databricks_endpoint_is_refused_before_anything_is_sent() {
    let (f, path, out) = job(SimConfig::default(), 3, 0).await;
    let flags = ["--prompt", "{{text}}", "--mode", "batch"];
    let o = f
        .run_databricks(
            &path,
            &out,
            "databricks-meta-llama-3-3-70b-instruct",
            &flags,
        )
        .await;
    assert_exit(&o, 2, &["no batch API", "online", "ai_query"]);
    assert_eq!(f.sim.stats().requests, 0);
    assert_eq!(f.sim.batch_stats().batches, 0);
}

/// The official `openai` Python SDK's `files` and `batches` calls against
/// the simulator: the wire must be what OpenAI's own client expects.
#[tokio::test(flavor = "multi_thread")]
async fn the_openai_python_sdk_drives_the_simulators_batch_api() {
    let f = Fixture::new(sim(|c| c.batch_turnaround_ms = 50)).await;
    let lines: Vec<Value> = (0..3)
        .map(|i| {
            json!({"custom_id": format!("r{i}"), "method": "POST", "url": "/v1/chat/completions",
                   "body": {"model": "m", "messages": [{"role": "user", "content": format!("sdk row {i}")}]}})
        })
        .collect();
    let requests = f.write_jsonl("requests.jsonl", &lines);
    let args = [f.openai_url(), requests.to_str().unwrap().to_string()];
    let report = python_sdk(&f, SDK_SCRIPT, &args, &[("OPENAI_API_KEY", TOKEN)]).await;
    assert_eq!(report["file_purpose"], json!("batch"));
    assert_eq!(report["status"], json!("completed"));
    assert_eq!(report["counts"], json!([3, 3, 0]));
    assert_eq!(
        report["answers"],
        json!({"r0": "echo: sdk row 0", "r1": "echo: sdk row 1", "r2": "echo: sdk row 2"})
    );
    assert_eq!(report["listed"], json!(true));
    assert_eq!(report["metadata"], json!({"job": "sdk"}));
    assert!(
        ["cancelling", "cancelled", "completed"]
            .contains(&report["cancel_status"].as_str().unwrap()),
        "{report}"
    );
}

const SDK_SCRIPT: &str = r#"
import json, sys, time
import openai
from openai import OpenAI

url, path = sys.argv[1], sys.argv[2]
client = OpenAI(base_url=url, max_retries=0)
f = client.files.create(file=open(path, "rb"), purpose="batch")
assert client.files.retrieve(f.id).id == f.id
b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                          completion_window="24h", metadata={"job": "sdk"})
for _ in range(1000):
    b = client.batches.retrieve(b.id)
    if b.status in ("completed", "failed", "expired", "cancelled"):
        break
    time.sleep(0.01)
answers = {}
for line in client.files.content(b.output_file_id).text.splitlines():
    line = json.loads(line)
    answers[line["custom_id"]] = line["response"]["body"]["choices"][0]["message"]["content"]
listed = any(x.id == b.id for x in client.batches.list(limit=10))
second = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                               completion_window="24h")
try:
    cancel_status = client.batches.cancel(second.id).status
except openai.ConflictError:  # it finished first
    cancel_status = client.batches.retrieve(second.id).status
print(json.dumps({
    "file_purpose": f.purpose,
    "status": b.status,
    "counts": [b.request_counts.total, b.request_counts.completed, b.request_counts.failed],
    "answers": answers,
    "listed": listed,
    "metadata": b.metadata,
    "cancel_status": cancel_status,
}))
"#;
