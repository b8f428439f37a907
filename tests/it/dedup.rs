//! Identical requests: the request fingerprint each row's outcome carries
//! (the `request_fingerprint` column).

use aiq::simulator::SimConfig;
use serde_json::{json, Value};

use super::util::*;

/// `text` per row (null: not sent), each with its own `id`.
fn texts(texts: &[Option<&str>]) -> Vec<Value> {
    texts
        .iter()
        .enumerate()
        .map(|(i, t)| json!({"id": i, "text": t}))
        .collect()
}

/// The `request_fingerprint` column of `out`, by row.
fn fingerprints(out: &std::path::Path) -> Vec<Value> {
    read_rows(out)
        .1
        .into_iter()
        .map(|r| r["request_fingerprint"].clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn request_fingerprint_names_the_request_not_the_row() {
    let input = texts(&[Some("a"), Some("b"), Some("a"), None, Some("b")]);
    let (f, input, out) = job_of(SimConfig::default(), &input).await;
    assert_ok(&f.score(&input, &out, &[]).await);
    let fp = fingerprints(&out);
    let hex = |v: &Value| {
        v.as_str()
            .map(|s| s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit()))
    };
    assert_eq!(hex(&fp[0]), Some(true), "{fp:?}");
    assert_eq!(fp[0], fp[2], "the same text, other ids: the same request");
    assert_eq!(fp[1], fp[4]);
    assert_ne!(fp[0], fp[1]);
    assert_eq!(fp[3], Value::Null, "a row not sent has none");

    // Another run of the same job names the same requests; streaming the
    // replies changes neither the answer nor the bill.
    let again = f.path("again.parquet");
    assert_ok(&f.score(&input, &again, &["--stream"]).await);
    assert_eq!(fingerprints(&again), fp);
    // Nor does asking through the Batch API (another rate, the same request).
    let batch = f.path("batch.parquet");
    let o = f.score(&input, &batch, &["--mode", "batch", "--poll-secs", "0.02"]);
    assert_ok(&o.await);
    assert_eq!(fingerprints(&batch), fp);

    // A parameter, the system prompt or the result type do (the model: a
    // unit test in src/pipeline/fingerprint.rs).
    for (name, flags) in [
        ("param", &["--param", "temperature=0.5"][..]),
        ("system", &["--system", "Be terse."][..]),
        ("type", &["--return-type", "INT"][..]),
    ] {
        let other = f.path(&format!("{name}.parquet"));
        let o = f.score(&input, &other, flags).await;
        assert_ok(&o);
        let changed = fingerprints(&other);
        assert_ne!(changed[0], fp[0], "{name}");
        assert_eq!(changed[0], changed[2], "{name}");
    }
}

/// `n` rows whose texts repeat every `distinct` rows (`text-0`, `text-1`,
/// ...), each row with its own `id`.
fn repeating(n: usize, distinct: usize) -> Vec<Value> {
    (0..n)
        .map(|i| json!({"id": i, "text": format!("text-{}", i % distinct)}))
        .collect()
}

/// Each row of `out` holds its own text's answer; a row that repeats an
/// earlier row's text took the first such row's answer and paid nothing,
/// and the first paid. Returns how many rows paid.
#[track_caller]
fn assert_shared_from_first(out: &std::path::Path, n: usize, distinct: usize) -> usize {
    let (_, rows) = read_rows(out);
    assert_eq!(rows.len(), n);
    let mut paid = 0;
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row["id"], json!(i), "input order");
        let first = i % distinct;
        let result = row["result"]
            .as_str()
            .unwrap_or_else(|| panic!("row {i}: {row:?}"));
        assert!(
            result.starts_with(&format!("echo: text-{first}")),
            "row {i}: {result}"
        );
        assert_eq!(row["result"], rows[first]["result"], "row {i}");
        assert_eq!(
            row["request_fingerprint"],
            rows[first]["request_fingerprint"]
        );
        if i == first {
            assert_eq!(row["shared_from"], Value::Null, "row {i} leads");
            assert_eq!(row["attempts"], json!(1));
            assert!(row["total_tokens"].as_i64().unwrap() > 0);
            paid += 1;
        } else {
            assert_eq!(row["shared_from"], json!(first), "row {i}: {row:?}");
            for paid_nothing in [
                "attempts",
                "prompt_tokens",
                "completion_tokens",
                "total_tokens",
            ] {
                assert_eq!(row[paid_nothing], json!(0), "row {i} {paid_nothing}");
            }
            assert_eq!(row["latency_ms"], Value::Null);
        }
    }
    paid
}

#[tokio::test(flavor = "multi_thread")]
async fn identical_requests_are_sent_once_and_every_row_gets_the_answer() {
    let (n, distinct) = (60, 7);
    let (f, input, out) = job_of(SimConfig::default(), &repeating(n, distinct)).await;
    // Small batches: copies within a batch, across batches, and of calls
    // still in flight.
    let flags = ["--batch-rows", "8", "--concurrency", "4", "--json"];
    let prices = ["--price-in", "1", "--price-out", "2"];
    let o = f.score(&input, &out, &[&flags[..], &prices].concat()).await;
    assert_ok(&o);
    let stats = f.sim.stats();
    assert_eq!(stats.ok, distinct as u64, "{:?}", stats.ok_by_prompt);
    assert!(
        stats.ok_by_prompt.values().all(|&c| c == 1),
        "{:?}",
        stats.ok_by_prompt
    );
    assert_eq!(assert_shared_from_first(&out, n, distinct), distinct);
    let (_, rows) = read_rows(&out);
    assert!(
        rows.iter().skip(distinct).all(|r| r["cost"] == json!(0.0)),
        "copies cost nothing"
    );

    let summary: Value = serde_json::from_slice(&o.stdout).expect("--json summary");
    assert_eq!(summary["shared"], json!(n - distinct));
    let paid: f64 = rows.iter().filter_map(|r| r["cost"].as_f64()).sum();
    let saved = summary["shared_cost_usd"]
        .as_f64()
        .expect("saved cost at the prices");
    // Every text's call costs the same here: 7 paid, 53 saved.
    let per_call = paid / distinct as f64;
    assert!(
        (saved - per_call * (n - distinct) as f64).abs() < 1e-9,
        "{saved} vs {paid}"
    );

    // --no-dedup: every row pays, as benchmarks of repeated prompts want.
    let every = f.path("every.parquet");
    assert_ok(
        &f.score(&input, &every, &[&flags[..], &["--no-dedup"]].concat())
            .await,
    );
    assert_eq!(f.sim.stats().ok, (distinct + n) as u64);
    let (_, rows) = read_rows(&every);
    assert!(rows
        .iter()
        .all(|r| r["shared_from"] == Value::Null && r["attempts"] == json!(1)));

    // --dry-run says what dedup leaves to send.
    let flags = ["--dry-run", "--json"];
    let dry = f.score(&input, &f.path("dry.parquet"), &flags).await;
    assert_ok(&dry);
    let e: Value = serde_json::from_slice(&dry.stdout).expect("--json estimate");
    assert_eq!(
        (
            e["rows_to_send"].clone(),
            e["shared_rows"].clone(),
            e["requests"].clone()
        ),
        (json!(distinct), json!(n - distinct), json!(distinct))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_request_is_not_shared_the_next_row_is_sent_instead() {
    let cfg = sim(|c| c.fail_first = 1);
    let (f, input, out) = job_of(cfg, &repeating(5, 1)).await;
    let o = f.score(&input, &out, &ONE_AT_A_TIME_NO_RETRIES).await;
    assert_ok(&o);
    assert_eq!(f.sim.stats().requests, 2, "the failed one and one more");
    let (_, rows) = read_rows(&out);
    assert!(rows[0]["error_message"]
        .as_str()
        .is_some_and(|e| e.contains("500")));
    assert_eq!(rows[0]["shared_from"], Value::Null);
    // No answer: no fingerprint a results table could take as answered.
    assert_eq!(rows[0]["request_fingerprint"], Value::Null);
    assert_eq!(
        rows[2]["request_fingerprint"],
        rows[1]["request_fingerprint"]
    );
    assert_eq!(
        (rows[1]["shared_from"].clone(), rows[1]["attempts"].clone()),
        (Value::Null, json!(1))
    );
    for row in &rows[2..] {
        assert_eq!(row["shared_from"], json!(1), "{row:?}");
        assert_eq!(row["result"], rows[1]["result"]);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_nine_then_rerun_pays_each_request_once() {
    let (n, distinct) = (300, 30);
    let f = Fixture::new(sim(|c| c.latency_ms = 20)).await;
    let input = f.write_jsonl("in.jsonl", &repeating(n, distinct));
    let out = f.path("out.parquet");
    let journal = f.path("out.parquet.aiq/journal.jsonl");
    // One call at a time: a kill catches at most one in flight.
    let flags = [
        "--prompt",
        "{{text}}",
        "--batch-rows",
        "10",
        "--concurrency",
        "1",
    ];
    let mut cmd = f.openai_command(&input, &out, &flags);
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    // Killed with some leaders answered and others not yet sent: rows
    // after them in the input wait for answers the next run must find.
    let mut child = spawn_until_journaled(&mut cmd, &journal, distinct / 2);
    child.kill().expect("kill -9");
    child.wait().expect("reaped");
    assert!(!out.exists(), "no output from a killed job");
    assert!(
        f.sim.stats().ok < distinct as u64,
        "killed too late to tell"
    );

    assert_ok(&output(f.openai_command(&input, &out, &flags)).await);
    assert_eq!(assert_shared_from_first(&out, n, distinct), distinct);
    let stats = f.sim.stats();
    let twice: Vec<_> = stats.ok_by_prompt.iter().filter(|(_, &c)| c > 1).collect();
    assert!(
        twice.len() <= 1,
        "only the call in flight at the kill may be paid again: {twice:?}"
    );
    assert!(stats.ok <= distinct as u64 + 1, "{:?}", stats.ok_by_prompt);
}

#[tokio::test(flavor = "multi_thread")]
async fn batch_mode_submits_each_request_once() {
    let (n, distinct) = (40, 6);
    let (f, input, out) = job_of(SimConfig::default(), &repeating(n, distinct)).await;
    let flags = ["--mode", "batch", "--poll-secs", "0.02"];
    let o = f.score(&input, &out, &flags).await;
    assert_ok(&o);
    assert_eq!(
        f.sim.batch_stats().lines,
        distinct as u64,
        "one line per request"
    );
    assert_eq!(
        f.sim.stats().requests,
        0,
        "the repeats took the batch's answers, not a call"
    );
    let (_, rows) = read_rows(&out);
    for (i, row) in rows.iter().enumerate().skip(distinct) {
        assert_eq!(row["shared_from"], json!(i % distinct), "row {i}: {row:?}");
        assert_eq!(row["result"], rows[i % distinct]["result"]);
    }
}
