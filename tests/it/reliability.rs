//! Retries, rate limits, resume, early stop and secrets: every paid result
//! kept, no row paid twice, a hopeless job stopped within a few requests.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use aiq::simulator::SimConfig;
use serde_json::json;

use super::util::*;

/// Every non-null row got exactly one successful call and its own answer.
fn assert_every_row_once(f: &Fixture, out: &std::path::Path, n: usize) {
    let (_, rows) = read_rows(out);
    assert_eq!(rows.len(), n);
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row["id"], json!(i));
        assert!(
            row["error_message"].is_null(),
            "row {i}: {:?}",
            row["error_message"]
        );
        assert!(row["result"]
            .as_str()
            .unwrap()
            .starts_with(&format!("echo: row-{i} ")));
    }
    let stats = f.sim.stats();
    assert_eq!(stats.ok_by_prompt.len(), n);
}

#[tokio::test(flavor = "multi_thread")]
async fn every_row_right_through_forty_percent_faults() {
    let f = Fixture::new(SimConfig {
        fault_rate: 0.4,
        faults: "500,502,503,reset".into(),
        seed: 7,
        ..SimConfig::default()
    })
    .await;
    let input = f.write_jsonl("in.jsonl", &rows(200, 0));
    let out = f.path("out.parquet");
    let o = f
        .run_openai(
            &input,
            &out,
            &[
                "--prompt",
                "{{text}}",
                "--max-retries",
                "20",
                "--concurrency",
                "16",
            ],
        )
        .await;
    assert_ok(&o);
    assert_every_row_once(&f, &out, 200);
    let stats = f.sim.stats();
    assert!(
        stats.faults_injected > 50,
        "faults were injected: {}",
        stats.faults_injected
    );
    assert!(
        stats.ok_by_prompt.values().all(|&n| n == 1),
        "one successful call per row"
    );
    assert_eq!(stats.ok, 200);
    let (_, rows) = read_rows(&out);
    let retried = rows
        .iter()
        .filter(|r| r["attempts"].as_i64().unwrap() > 1)
        .count();
    assert!(
        retried > 20,
        "the attempts column counts tries: {retried} rows retried"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn retries_run_out_into_a_row_error() {
    let f = Fixture::new(SimConfig::default()).await;
    let mut input_rows = rows(20, 0);
    input_rows[5]["text"] = json!("[[sim:500]] always fails");
    let input = f.write_jsonl("in.jsonl", &input_rows);
    let out = f.path("out.parquet");
    let o = f
        .run_openai(
            &input,
            &out,
            &["--prompt", "{{text}}", "--max-retries", "3"],
        )
        .await;
    assert_ok(&o);
    let (_, rows) = read_rows(&out);
    assert_eq!(rows[5]["attempts"], json!(4));
    let err = rows[5]["error_message"].as_str().unwrap();
    assert!(
        err.contains("gave up after 4 attempts") && err.contains("500"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_nine_then_rerun_gives_every_row_once() {
    let f = Fixture::new(SimConfig {
        latency_ms: 15,
        ..SimConfig::default()
    })
    .await;
    let n = 400;
    let concurrency = 4;
    let input = f.write_jsonl("in.jsonl", &rows(n, 0));
    let out = f.path("out.parquet");
    let url = f.openai_url();
    let args = |c: &mut Command| {
        c.args([
            "run",
            "-q",
            "--input",
            input.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
            "--endpoint",
            &url,
            "--model",
            "m",
            "--prompt",
            "{{text}}",
            "--batch-rows",
            "32",
            "--concurrency",
            &concurrency.to_string(),
        ])
        .env_clear()
        .env("OPENAI_API_KEY", TOKEN)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    };
    let mut cmd = Command::new(aiq_bin());
    args(&mut cmd);
    // Wait (bounded) until a good part of the rows is journaled, then kill -9.
    let journal = f.path("out.parquet.aiq/journal.jsonl");
    let mut child = spawn_until_journaled(&mut cmd, &journal, 120);
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(!out.exists(), "no output from a killed job");
    let before = f.sim.stats().ok;
    assert!(before < n as u64);

    let mut cmd = Command::new(aiq_bin());
    args(&mut cmd);
    let o = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    assert_ok(&o);
    assert_every_row_once(&f, &out, n);
    let stats = f.sim.stats();
    let paid_twice = stats.ok_by_prompt.values().filter(|&&c| c > 1).count();
    assert!(
        paid_twice <= concurrency,
        "{paid_twice} rows paid twice; at most the {concurrency} in flight may be"
    );
    assert!(stats.ok <= (n + concurrency) as u64);
    assert!(!f.path("out.parquet.aiq").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_token_stops_within_a_handful_of_requests() {
    let f = Fixture::new(SimConfig::default()).await;
    let input = f.write_jsonl("in.jsonl", &rows(500, 0));
    let out = f.path("out.parquet");
    let url = f.openai_url();
    let o = f
        .aiq(
            &[
                "run",
                "-q",
                "--input",
                input.to_str().unwrap(),
                "--output",
                out.to_str().unwrap(),
                "--endpoint",
                &url,
                "--model",
                "m",
                "--prompt",
                "{{text}}",
                "--concurrency",
                "4",
            ],
            &[("OPENAI_API_KEY", "sk-wrong-key")],
        )
        .await;
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("401") && err.contains("refused"), "{err}");
    assert!(!err.contains("sk-wrong-key"));
    let stats = f.sim.stats();
    assert!(
        stats.unauthorized <= 8,
        "{} requests refused before stopping",
        stats.unauthorized
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_databricks_endpoint_stops_at_once() {
    let f = Fixture::new(SimConfig {
        endpoints: vec!["real".into()],
        ..SimConfig::default()
    })
    .await;
    let input = f.write_jsonl("in.jsonl", &rows(300, 0));
    let out = f.path("out.parquet");
    let o = f
        .run_databricks(
            &input,
            &out,
            "typo",
            &["--prompt", "{{text}}", "--concurrency", "4"],
        )
        .await;
    assert_eq!(code(&o), 1);
    assert!(
        stderr(&o).contains("404") && stderr(&o).contains("`typo`"),
        "{}",
        stderr(&o)
    );
    assert!(f.sim.stats().not_found <= 8);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_of_failures_stops_the_job() {
    let f = Fixture::new(SimConfig::default()).await;
    let all_bad: Vec<_> = (0..300)
        .map(|i| json!({"id": i, "text": format!("[[sim:400]] {i}")}))
        .collect();
    let input = f.write_jsonl("in.jsonl", &all_bad);
    let out = f.path("out.parquet");
    let o = f
        .run_openai(
            &input,
            &out,
            &["--prompt", "{{text}}", "--concurrency", "4"],
        )
        .await;
    assert_eq!(code(&o), 1);
    assert!(stderr(&o).contains("failed in a row"), "{}", stderr(&o));
    assert!(
        f.sim.stats().bad_request <= 20,
        "{} requests before stopping",
        f.sim.stats().bad_request
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_changed_job_refuses_to_resume_and_restart_discards() {
    let f = Fixture::new(SimConfig::default()).await;
    let mut input_rows = rows(30, 0);
    input_rows[10]["text"] = json!("[[sim:400]] stop here");
    let input = f.write_jsonl("in.jsonl", &input_rows);
    let out = f.path("out.parquet");
    let o = f
        .run_openai(
            &input,
            &out,
            &[
                "--prompt",
                "{{text}}",
                "--fail-on-error",
                "--concurrency",
                "1",
            ],
        )
        .await;
    assert_eq!(code(&o), 1);
    assert!(
        f.path("out.parquet.aiq").exists(),
        "the journal stays for a resume"
    );
    let o = f
        .run_openai(&input, &out, &["--prompt", "Other: {{text}}"])
        .await;
    assert_eq!(code(&o), 2);
    assert!(
        stderr(&o).contains("settings changed (prompt)") && stderr(&o).contains("--restart"),
        "{}",
        stderr(&o)
    );
    // Resuming the same job re-pays nothing: rows 0..10 are journaled.
    let paid = f.sim.stats().ok;
    let o = f.run_openai(&input, &out, &["--prompt", "{{text}}"]).await;
    assert_ok(&o);
    assert_eq!(
        f.sim.stats().ok - paid,
        19,
        "only the 19 rows after the failed one are sent"
    );
    let o = f
        .run_openai(&input, &out, &["--prompt", "Other: {{text}}", "--restart"])
        .await;
    assert_ok(&o);
}

#[tokio::test(flavor = "multi_thread")]
async fn learns_the_limit_when_not_told() {
    // 12,000 requests/minute with a one-second bucket: sending at full speed
    // would be refused most of the time.
    let f = Fixture::new(SimConfig {
        rpm: Some(12_000),
        burst_seconds: 1.0,
        ..SimConfig::default()
    })
    .await;
    let input = f.write_jsonl("in.jsonl", &rows(600, 0));
    let out = f.path("out.parquet");
    let o = f
        .run_openai(
            &input,
            &out,
            &[
                "--prompt",
                "{{text}}",
                "--concurrency",
                "32",
                "--max-retries",
                "20",
            ],
        )
        .await;
    assert_ok(&o);
    assert_every_row_once(&f, &out, 600);
    let stats = f.sim.stats();
    assert!(
        stats.rate_limited * 10 <= stats.requests,
        "{} of {} requests refused",
        stats.rate_limited,
        stats.requests
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn interrupt_flushes_and_says_how_to_resume() {
    let f = Fixture::new(SimConfig {
        latency_ms: 15,
        ..SimConfig::default()
    })
    .await;
    let input = f.write_jsonl("in.jsonl", &rows(400, 0));
    let out = f.path("out.parquet");
    let url = f.openai_url();
    let mut cmd = Command::new(aiq_bin());
    cmd.args([
        "run",
        "-q",
        "--input",
        input.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--endpoint",
        &url,
        "--model",
        "m",
        "--prompt",
        "{{text}}",
        "--concurrency",
        "4",
    ])
    .env_clear()
    .env("OPENAI_API_KEY", TOKEN)
    .stderr(Stdio::piped());
    let journal = f.path("out.parquet.aiq/journal.jsonl");
    let child = spawn_until_journaled(&mut cmd, &journal, 40);
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("interrupted") && err.contains("run the same command again"),
        "{err}"
    );
    let journaled = BufReader::new(std::fs::File::open(&journal).unwrap())
        .lines()
        .count();
    assert_eq!(
        journaled as u64,
        f.sim.stats().ok,
        "every paid answer is in the journal"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_never_reach_logs_output_or_journal() {
    let f = Fixture::new(SimConfig::default()).await;
    let mut input_rows = rows(20, 0);
    input_rows[15]["text"] = json!("[[sim:400]] stop");
    let input = f.write_jsonl("in.jsonl", &input_rows);
    let out = f.path("out.parquet");
    let url = f.openai_url();
    let base = [
        "run",
        "-vv",
        "--input",
        input.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--endpoint",
        &url,
        "--model",
        "m",
        "--prompt",
        "{{text}}",
        "--concurrency",
        "1",
    ];
    let mut outputs = Vec::new();
    // A failing job leaves its journal: it must not hold the token either.
    let mut failing = base.to_vec();
    failing.push("--fail-on-error");
    outputs.push(
        f.aiq(
            &failing,
            &[("OPENAI_API_KEY", TOKEN), ("RUST_LOG", "trace")],
        )
        .await,
    );
    outputs.push(
        f.aiq(
            &base,
            &[
                ("OPENAI_API_KEY", "sk-wrong-SECRET-key"),
                ("RUST_LOG", "trace"),
            ],
        )
        .await,
    );
    outputs.push(
        f.run_databricks_env(
            &input,
            &f.path("db.parquet"),
            "llm",
            &["-vv", "--prompt", "{{text}}"],
            &[
                DATABRICKS_OAUTH[0],
                DATABRICKS_OAUTH[1],
                ("RUST_LOG", "trace"),
            ],
        )
        .await,
    );
    for o in &outputs {
        let all = format!("{}{}", String::from_utf8_lossy(&o.stdout), stderr(o));
        assert!(!all.is_empty());
        for secret in [TOKEN, "sk-wrong-SECRET-key", aiq::simulator::CLIENT_SECRET] {
            assert!(!all.contains(secret), "a secret reached the logs:\n{all}");
        }
    }
    for entry in walk(f.dir.path()) {
        if entry
            .extension()
            .is_some_and(|e| e == "jsonl" && entry.ends_with("in.jsonl"))
        {
            continue;
        }
        let bytes = std::fs::read(&entry).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            !text.contains(TOKEN) && !text.contains(aiq::simulator::CLIENT_SECRET),
            "secret in {}",
            entry.display()
        );
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            files.extend(walk(&p));
        } else {
            files.push(p);
        }
    }
    files
}
