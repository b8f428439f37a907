//! Retries, rate limits, resume, early stop and secrets: every paid result
//! kept, no row paid twice, a hopeless job stopped within a few requests.

use std::io::{BufRead, BufReader, Read};
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
        assert!(text_of(row).starts_with(&format!("echo: row-{i} ")));
    }
    let stats = f.sim.stats();
    assert_eq!(stats.ok_by_prompt.len(), n);
}

/// `got` holds every row of `input` in order, each answered with the echo
/// of its text.
#[track_caller]
fn assert_echoes(got: &[serde_json::Map<String, serde_json::Value>], input: &[serde_json::Value]) {
    assert_eq!(got.len(), input.len());
    for (i, (row, asked)) in got.iter().zip(input).enumerate() {
        assert_eq!(row["id"], json!(i));
        let want = format!("echo: {}", asked["text"].as_str().unwrap());
        assert_eq!(row["result"], json!(want), "row {i}");
    }
}

/// `n` rows scored with `flags` against a simulator with `cfg`: every row
/// answered once ([`assert_every_row_once`]). The fixture, for its stats,
/// and the output.
async fn every_row_once_through(
    cfg: SimConfig,
    n: usize,
    flags: &[&str],
) -> (Fixture, std::path::PathBuf) {
    let (f, input, out) = job(cfg, n, 0).await;
    assert_ok(&f.score(&input, &out, flags).await);
    assert_every_row_once(&f, &out, n);
    (f, out)
}

#[tokio::test(flavor = "multi_thread")]
async fn every_row_right_through_forty_percent_faults() {
    let cfg = SimConfig {
        fault_rate: 0.4,
        faults: "500,502,503,reset".into(),
        seed: 7,
        ..SimConfig::default()
    };
    let flags = ["--max-retries", "20", "--concurrency", "16"];
    let (f, out) = every_row_once_through(cfg, 200, &flags).await;
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
    let (f, input, out) = job_marked(20, &[(5, "[[sim:500]] always fails")]).await;
    let o = f.score(&input, &out, &["--max-retries", "3"]).await;
    let rows = ok_rows(&o, &out);
    assert_eq!(rows[5]["attempts"], json!(4));
    let err = rows[5]["error_message"].as_str().unwrap();
    assert!(
        err.contains("gave up after 4 attempts") && err.contains("500"),
        "{err}"
    );
}

/// Rows and concurrency of the jobs [`Running::start`] starts.
const N: usize = 400;
const CONCURRENCY: usize = 4;

/// A job of [`N`] rows at 15 ms a call, [`CONCURRENCY`] at a time
/// ([`job_command`]), left running once it has journaled some outcomes.
struct Running {
    f: Fixture,
    input: std::path::PathBuf,
    out: std::path::PathBuf,
    child: std::process::Child,
}

impl Running {
    /// Start the job and wait (bounded) until `lines` outcomes are journaled.
    async fn start(lines: usize) -> Running {
        let f = Fixture::new(sim(|c| c.latency_ms = 15)).await;
        let input = f.write_jsonl("in.jsonl", &rows(N, 0));
        let out = f.path("out.parquet");
        let journal = f.path("out.parquet.aiq/journal.jsonl");
        let mut cmd = job_command(&f, &input, &out, CONCURRENCY);
        let child = spawn_until_journaled(&mut cmd, &journal, lines);
        Running {
            f,
            input,
            out,
            child,
        }
    }

    fn kill_nine(&mut self) {
        self.child.kill().unwrap(); // SIGKILL
        self.child.wait().unwrap();
    }

    /// Wait for the job to end: its exit status and stderr.
    fn wait(&mut self) -> (std::process::ExitStatus, String) {
        let mut err = String::new();
        if let Some(mut pipe) = self.child.stderr.take() {
            let _ = pipe.read_to_string(&mut err);
        }
        (self.child.wait().unwrap(), err)
    }

    /// The same command again, run to its end.
    async fn rerun(&self) -> std::process::Output {
        finish(job_command(&self.f, &self.input, &self.out, CONCURRENCY)).await
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_nine_then_rerun_gives_every_row_once() {
    let (n, concurrency) = (N, CONCURRENCY);
    // A good part of the rows journaled, then kill -9.
    let mut job = Running::start(120).await;
    job.kill_nine();
    let (f, out) = (&job.f, &job.out);
    assert!(!out.exists(), "no output from a killed job");
    let before = f.sim.stats().ok;
    assert!(before < n as u64);

    let o = job.rerun().await;
    assert_ok(&o);
    assert_every_row_once(f, out, n);
    let stats = f.sim.stats();
    let paid_twice = stats.ok_by_prompt.values().filter(|&&c| c > 1).count();
    assert!(
        paid_twice <= concurrency,
        "{paid_twice} rows paid twice; at most the {concurrency} in flight may be"
    );
    assert!(stats.ok <= (n + concurrency) as u64);
    assert!(!f.path("out.parquet.aiq").exists());
}

/// `aiq run -q` of `input` into `out` (`{{text}}`, 32-row batches) against
/// the fixture's simulator, in a clean environment, stderr piped.
fn job_command(
    f: &Fixture,
    input: &std::path::Path,
    out: &std::path::Path,
    concurrency: usize,
) -> Command {
    let concurrency = concurrency.to_string();
    let mut c = f.openai_command(
        input,
        out,
        &[
            "--prompt",
            "{{text}}",
            "--batch-rows",
            "32",
            "--concurrency",
            &concurrency,
        ],
    );
    c.stdout(Stdio::null()).stderr(Stdio::piped());
    c
}

/// Run `cmd` to its end off the async runtime.
async fn finish(mut cmd: Command) -> std::process::Output {
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

/// The cp -p / rsync -t case: after a kill -9 the input is replaced by one
/// of the same size and modification time whose rows differ. The resume
/// takes a journaled answer only for a row whose request is unchanged:
/// every changed row is sent again, no unchanged row is bought twice (but
/// the calls in flight at the kill).
#[tokio::test(flavor = "multi_thread")]
async fn same_size_and_mtime_but_other_rows_resends_only_the_changed_ones() {
    let (n, concurrency) = (N, CONCURRENCY);
    let mut job = Running::start(120).await;
    job.kill_nine();
    let (f, input, out) = (&job.f, &job.input, &job.out);
    let mtime = std::fs::metadata(input).unwrap().modified().unwrap();

    // Every third row says FINE instead of fine: same bytes, same mtime.
    let mut changed = rows(n, 0);
    for (i, row) in changed.iter_mut().enumerate().filter(|(i, _)| i % 3 == 0) {
        row["text"] = json!(format!("row-{i} says the product is FINE"));
    }
    let size = std::fs::metadata(input).unwrap().len();
    f.write_jsonl("in.jsonl", &changed);
    let file = std::fs::File::options().write(true).open(input).unwrap();
    file.set_modified(mtime).unwrap();
    drop(file);
    assert_eq!(std::fs::metadata(input).unwrap().len(), size);

    let o = job.rerun().await;
    assert_ok(&o);
    let (_, got) = read_rows(out);
    assert_echoes(&got, &changed);
    let stats = f.sim.stats();
    let paid_twice = stats.ok_by_prompt.values().filter(|&&c| c > 1).count();
    assert!(
        paid_twice <= concurrency,
        "{paid_twice} rows paid twice; at most the {concurrency} in flight at the kill may be"
    );
}

/// Fixing a bad line keeps every other paid answer: a run stopped by a row
/// (here a 400 under --fail-on-error) leaves a finished part; the input is
/// then edited (the bad row, and a row inside the finished part). The
/// re-run resumes instead of asking for --restart, sends just the two
/// edited rows and the rows never sent, and pays for no row twice.
#[tokio::test(flavor = "multi_thread")]
async fn fixing_a_bad_line_keeps_every_other_paid_answer() {
    let n = 30;
    let mut input_rows = rows(n, 0);
    input_rows[10]["text"] = json!("[[sim:400]] stop here");
    let (f, input, out) = job_of(SimConfig::default(), &input_rows).await;
    let args = [
        "--prompt",
        "{{text}}",
        "--fail-on-error",
        "--concurrency",
        "1",
        "--batch-rows",
        "4",
    ];
    let o = f.run_openai(&input, &out, &args).await;
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    let parts = f.path("out.parquet.aiq/parts");
    assert!(
        std::fs::read_dir(&parts).unwrap().count() > 0,
        "the rows before the bad one are in a finished part"
    );
    let paid = f.sim.stats().ok;
    assert_eq!(paid, 10);

    input_rows[10]["text"] = json!("row-10 is fixed");
    input_rows[2]["text"] = json!("row-2 was edited too");
    f.write_jsonl("in.jsonl", &input_rows);
    let o = f.run_openai(&input, &out, &args).await;
    let got = ok_rows(&o, &out);
    assert_echoes(&got, &input_rows);
    let stats = f.sim.stats();
    assert_eq!(
        stats.ok - paid,
        (n - 10 + 1) as u64,
        "rows 10..30 and the edited row 2 are sent, nothing else"
    );
    assert!(
        stats.ok_by_prompt.values().all(|&c| c == 1),
        "no row paid twice"
    );
}

/// Deleting the state folder mid-run: the job notices at its next journal
/// write and stops sending (exit 1) instead of paying on for answers it can
/// no longer keep; every answer it journaled is put back in the folder, so
/// the re-run pays for none of them again.
#[tokio::test(flavor = "multi_thread")]
async fn deleting_the_state_folder_stops_at_once_and_keeps_the_answers() {
    let (n, concurrency) = (N, CONCURRENCY);
    let mut job = Running::start(60).await;
    let state = job.f.path("out.parquet.aiq");
    let journal = state.join("journal.jsonl");
    std::fs::remove_dir_all(&state).unwrap();
    let at_delete = job.f.sim.stats().requests;
    let (status, err) = job.wait();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("was deleted"), "{err}");
    let stats = job.f.sim.stats();
    let after = stats.requests - at_delete;
    assert!(
        after <= 2 * concurrency as u64,
        "{after} requests after the folder was deleted; the calls in flight and those \
         launched before the next journal write may be"
    );
    assert_eq!(
        line_count(&journal) as u64,
        stats.ok,
        "every answer is in the journal put back"
    );

    let o = job.rerun().await;
    assert_ok(&o);
    assert_every_row_once(&job.f, &job.out, n);
    assert!(
        job.f.sim.stats().ok_by_prompt.values().all(|&c| c == 1),
        "no row paid twice"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_token_stops_within_a_handful_of_requests() {
    let (f, input, out) = job(SimConfig::default(), 500, 0).await;
    let run = f.run_args(&input, &out);
    let args = [refs(&run), vec!["--concurrency", "4"]].concat();
    let o = f.aiq(&args, &[("OPENAI_API_KEY", "sk-wrong-key")]).await;
    let err = assert_exit(&o, 1, &["401", "refused"]);
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
    let (f, input, out) = job(sim(|c| c.endpoints = vec!["real".into()]), 300, 0).await;
    let flags = ["--prompt", "{{text}}", "--concurrency", "4"];
    let o = f.run_databricks(&input, &out, "typo", &flags).await;
    assert_exit(&o, 1, &["404", "`typo`"]);
    assert!(f.sim.stats().not_found <= 8);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_of_failures_stops_the_job() {
    let all_bad: Vec<_> = (0..300)
        .map(|i| json!({"id": i, "text": format!("[[sim:400]] {i}")}))
        .collect();
    let (f, input, out) = job_of(SimConfig::default(), &all_bad).await;
    let o = f.score(&input, &out, &["--concurrency", "4"]).await;
    assert_exit(&o, 1, &["failed in a row"]);
    assert!(
        f.sim.stats().bad_request <= 20,
        "{} requests before stopping",
        f.sim.stats().bad_request
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_resume_after_an_early_stop_sends_the_outage_rows_again() {
    // An outage: the first 10 requests fail, then the server is fine.
    let (f, input, out) = failing_first(10).await;
    let args = [&PROMPT_TEXT[..], &ONE_AT_A_TIME_NO_RETRIES].concat();
    let o = f.run_openai(&input, &out, &args).await;
    assert_exit(&o, 1, &["failed in a row", "run the same command"]);
    // What the message says to do sends the failed rows again.
    let o = f.run_openai(&input, &out, &args).await;
    assert_ok(&o);
    assert_every_row_once(&f, &out, 30);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_changed_job_refuses_to_resume_and_restart_discards() {
    let (f, input, out) = job_marked(30, &[(10, "[[sim:400]] stop here")]).await;
    let flags = ["--fail-on-error", "--concurrency", "1"];
    let o = f.score(&input, &out, &flags).await;
    assert_eq!(code(&o), 1);
    assert!(
        f.path("out.parquet.aiq").exists(),
        "the journal stays for a resume"
    );
    let flags = ["--prompt", "Other: {{text}}"];
    let o = f.run_openai(&input, &out, &flags).await;
    assert_eq!(code(&o), 2);
    assert!(
        stderr(&o).contains("settings changed (prompt)") && stderr(&o).contains("--restart"),
        "{}",
        stderr(&o)
    );
    // Resuming the same job re-pays nothing: rows 0..10 are journaled.
    let paid = f.sim.stats().ok;
    let o = f.score(&input, &out, &[]).await;
    assert_ok(&o);
    assert_eq!(
        f.sim.stats().ok - paid,
        19,
        "only the 19 rows after the failed one are sent"
    );
    let flags = ["--prompt", "Other: {{text}}", "--restart"];
    let o = f.run_openai(&input, &out, &flags).await;
    assert_ok(&o);
}

#[tokio::test(flavor = "multi_thread")]
async fn learns_the_limit_when_not_told() {
    // 12,000 requests/minute with a one-second bucket: sending at full speed
    // would be refused most of the time.
    let cfg = sim(|c| (c.rpm, c.burst_seconds) = (Some(12_000), 1.0));
    let (f, _) =
        every_row_once_through(cfg, 600, &["--concurrency", "32", "--max-retries", "20"]).await;
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
    let mut job = Running::start(40).await;
    Command::new("kill")
        .args(["-INT", &job.child.id().to_string()])
        .status()
        .unwrap();
    let (status, err) = job.wait();
    assert_eq!(status.code(), Some(1));
    assert!(
        err.contains("interrupted") && err.contains("run the same command again"),
        "{err}"
    );
    let journal = job.f.path("out.parquet.aiq/journal.jsonl");
    let journaled = BufReader::new(std::fs::File::open(&journal).unwrap())
        .lines()
        .count();
    assert_eq!(
        journaled as u64,
        job.f.sim.stats().ok,
        "every paid answer is in the journal"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_never_reach_logs_output_or_journal() {
    let (f, input, out) = job_marked(20, &[(15, "[[sim:400]] stop")]).await;
    let url = f.openai_url();
    let mut base = run_io(&input, &out, &url);
    base.extend(["-vv", "--model", "m", "--concurrency", "1"]);
    base.extend(PROMPT_TEXT);
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
    for entry in files_under(f.dir.path()) {
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

/// A 401 names the variable the key was read from and whether it was set,
/// never the key itself (issue 27.1).
#[tokio::test(flavor = "multi_thread")]
async fn a_401_names_the_key_variable_it_read() {
    let (f, input, out) = job(SimConfig::default(), 20, 0).await;
    let args = f.run_args(&input, &out);
    let mut with_env_name: Vec<&str> = args.iter().map(String::as_str).collect();
    with_env_name.extend(["--api-key-env", "MY_KEY"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let cases: [(&[&str], &[(&str, &str)], &[&str]); 4] = [
        (&args, &[], &["OPENAI_API_KEY", "not set"]),
        (
            &args,
            &[("OPENAI_API_KEY", " ")],
            &["OPENAI_API_KEY", "empty"],
        ),
        (
            &args,
            &[("OPENAI_API_KEY", "sk-wrong-key")],
            &["OPENAI_API_KEY"],
        ),
        (&with_env_name, &[("MY_KEY", "sk-wrong-key")], &["MY_KEY"]),
    ];
    for (args, envs, said) in cases {
        let o = f.aiq(args, envs).await;
        let err = assert_exit(&o, 1, &["401"]);
        for s in said {
            assert!(err.contains(s), "{envs:?}: `{s}` missing from {err}");
        }
        assert!(!err.contains("sk-wrong-key"), "{err}");
    }

    let out = f.path("databricks.parquet");
    let o = f
        .run_databricks_env(
            &input,
            &out,
            "m",
            &QUIET_TEXT,
            &[("DATABRICKS_TOKEN", "dapi-wrong")],
        )
        .await;
    let err = assert_exit(&o, 1, &["401", "DATABRICKS_TOKEN"]);
    assert!(!err.contains("dapi-wrong"), "{err}");
}
