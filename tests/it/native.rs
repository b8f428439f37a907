//! What every provider reached by name (`--endpoint anthropic`, `gemini`)
//! must do alike against the simulator's copy of its API, written once:
//! each provider's module calls these with its [`Provider`] and adds what
//! is its own (cache columns, its errors, its batch API).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use aiq::simulator::SimConfig;
use serde_json::{json, Map, Value};

use super::util::*;

/// A provider as `aiq run` reaches it: `--endpoint NAME --base-url` the
/// simulator, with the simulator's key in the provider's variable.
pub struct Provider {
    pub endpoint: &'static str,
    pub key_var: &'static str,
    pub model: &'static str,
    /// Other variables every run sets (Bedrock: the key id and region).
    pub env: &'static [(&'static str, &'static str)],
}

pub const ANTHROPIC: Provider = Provider {
    endpoint: "anthropic",
    key_var: "ANTHROPIC_API_KEY",
    model: "claude-sim",
    env: &[],
};

pub const GEMINI: Provider = Provider {
    endpoint: "gemini",
    key_var: "GEMINI_API_KEY",
    model: "gemini-sim",
    env: &[],
};

/// The simulator's long-term AWS key: its secret is the fixture's
/// [`TOKEN`] (the simulator's token), in `AWS_SECRET_ACCESS_KEY`.
pub const BEDROCK: Provider = Provider {
    endpoint: "bedrock",
    key_var: "AWS_SECRET_ACCESS_KEY",
    model: "us.anthropic.claude-3-5-haiku-20241022-v1:0",
    env: &[
        ("AWS_ACCESS_KEY_ID", aiq::simulator::AWS_KEYS[0].0),
        ("AWS_REGION", "us-east-1"),
    ],
};

impl Provider {
    /// `aiq run -q --endpoint NAME` from `io`'s input to its output against the
    /// simulator of `f` (`--base-url`), the key ([`TOKEN`]) in the
    /// provider's variable, then `extra` and `envs`
    /// ([`Fixture::provider_command`]).
    pub fn command(&self, f: &Fixture, io: [&Path; 2], extra: &[&str], envs: Envs<'_>) -> Command {
        let base = f.sim.base_url();
        let named = ["--base-url", &base, "--model", self.model];
        let key = (self.key_var, TOKEN);
        let envs = [self.env, envs].concat();
        f.provider_command(self.endpoint, &named, key, io, extra, &envs)
    }

    /// [`Provider::command`] run to its end.
    pub async fn run(
        &self,
        f: &Fixture,
        input: &Path,
        out: &Path,
        extra: &[&str],
        envs: Envs<'_>,
    ) -> Output {
        output(self.command(f, [input, out], extra, envs)).await
    }
}

/// The tests every provider passes alike, written once: in the module of
/// the provider `$p`, whose overloaded and server errors come as the
/// statuses `$faults`, each runs the check of this module it names; with
/// `batch`, batch mode's too (resubmits, a kill, the deadline).
macro_rules! provider_tests {
    ($p:expr, faults: $faults:expr) => {
        $crate::it::native::provider_tests!(@each $p;
            typed_results_online_and_streamed => typed_results_online_and_streamed(),
            typed_replies_that_do_not_fit_are_repaired => unfit_replies_are_repaired(),
            overloaded_and_server_errors_are_retried => faults_are_retried($faults),
        );
    };
    ($p:expr, faults: $faults:expr, batch) => {
        $crate::it::native::provider_tests!($p, faults: $faults);
        $crate::it::native::provider_tests!(@each $p;
            batch_mode_resubmits_what_failed => batch_mode_resubmits_what_failed(),
            batch_mode_killed_then_run_again_polls_its_batch_never_a_second =>
                batch_mode_killed_then_run_again_polls_its_batch(),
            batch_mode_deadline_cancels_and_sends_the_rest_online =>
                batch_mode_deadline_cancels_and_sends_the_rest_online(),
        );
    };
    (@each $p:expr; $($test:ident => $check:ident($($arg:expr),*)),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread")]
        async fn $test() {
            $crate::it::native::$check(&$p, $($arg),*).await;
        }
    )*};
}
pub(crate) use provider_tests;

/// A provider SDK's two calls with a long marked system prompt
/// (`first_usage` and `second_usage` of `report`): the first wrote the
/// prefix (its usage field `written`), the second read all of it (`read`).
#[track_caller]
pub fn assert_cache_written_then_read(report: &Value, written: &str, read: &str) {
    let (first, second) = (&report["first_usage"], &report["second_usage"]);
    assert!(first[written].as_u64() > Some(1000), "{report}");
    assert_eq!(first[read], json!(0));
    assert_eq!(second[read], first[written]);
}

pub fn sum(rows: &[Map<String, Value>], column: &str) -> i64 {
    rows.iter().map(|r| r[column].as_i64().unwrap_or(0)).sum()
}

/// A system prompt well over the 1,024 tokens providers cache at least.
pub fn long_system() -> String {
    "You grade short product reviews carefully and consistently. ".repeat(100)
}

/// `n` rows scored with [`long_system`], `concurrency` at a time, then
/// `more` flags: the fixture, the input and output paths, and the rows.
pub async fn with_system(
    p: &Provider,
    n: usize,
    concurrency: &str,
    more: &[&str],
) -> (Fixture, PathBuf, PathBuf, Vec<Map<String, Value>>) {
    let (f, input, out) = job(SimConfig::default(), n, 0).await;
    let system = long_system();
    let flags = [
        "--prompt",
        "{{text}}",
        "--system",
        &system,
        "--concurrency",
        concurrency,
    ];
    let extra = [&flags[..], more].concat();
    let rows = ok_rows(&p.run(&f, &input, &out, &extra, &[]).await, &out);
    (f, input, out, rows)
}

/// 24 rows with a long shared system prompt, four at a time: every row
/// answered, usage in the one convention (the whole input in
/// `prompt_tokens`, cache reads and writes within it), the columns adding
/// up to what the simulator counted, and at least 20 rows reading the
/// cache. Returns the rows, for what differs by provider (cache writes).
pub async fn every_row_with_cache_columns(p: &Provider) -> Vec<Map<String, Value>> {
    let (f, _, _, rows) = with_system(p, 24, "4", &[]).await;
    assert_eq!(rows.len(), 24);
    for (i, row) in rows.iter().enumerate() {
        let answer = format!("echo: row-{i} says the product is fine");
        assert_eq!(row["result"], json!(answer), "{row:?}");
        assert_eq!(row["finish_reason"], json!("stop"));
        let whole = row["prompt_tokens"].as_i64().unwrap();
        let read = row["cached_tokens"].as_i64().unwrap();
        let written = row["cache_write_tokens"].as_i64().unwrap();
        assert!(read + written <= whole && whole > 1000, "{row:?}");
    }
    let stats = f.sim.stats();
    assert_eq!(stats.ok, 24);
    assert_eq!(sum(&rows, "cached_tokens") as u64, stats.cached_tokens);
    let reading = rows
        .iter()
        .filter(|r| r["cached_tokens"].as_i64() > Some(0));
    assert!(reading.count() >= 20, "{rows:?}");
    assert_eq!(sum(&rows, "prompt_tokens") as u64, stats.prompt_tokens);
    assert_eq!(
        sum(&rows, "completion_tokens") as u64,
        stats.completion_tokens
    );
    rows
}

/// Typed results (`--return-type`), online and streamed, each row with
/// its usage (and, streamed, its time to first token).
pub async fn typed_results_online_and_streamed(p: &Provider) {
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
        let rows = ok_rows(&p.run(&f, &input, &out, &extra, &[]).await, &out);
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

/// Streamed replies come to the same rows as whole ones (a system prompt
/// shared by both runs); returns the streamed rows.
pub async fn streamed_match_the_unstreamed(p: &Provider) -> Vec<Map<String, Value>> {
    let (f, input, _, plain) = with_system(p, 5, "1", &[]).await;
    let system = long_system();
    let streamed_out = f.path("streamed.parquet");
    let args = [
        "--prompt",
        "{{text}}",
        "--system",
        &system,
        "--concurrency",
        "1",
        "--stream",
    ];
    let streamed = ok_rows(
        &p.run(&f, &input, &streamed_out, &args, &[]).await,
        &streamed_out,
    );
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
    streamed
}

/// A typed reply cut off, then one that does not fit: repaired twice.
pub async fn unfit_replies_are_repaired(p: &Provider) {
    let cfg = sim(|c| (c.truncate_first, c.mismatch_first) = (1, 1));
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
    let rows = ok_rows(&p.run(&f, &input, &out, &extra, &[]).await, &out);
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row["error_message"], Value::Null, "row {i}: {row:?}");
        assert!(row["result"]["a"].is_i64(), "row {i}: {row:?}");
        assert_eq!(row["repairs"], json!(if i == 0 { 2 } else { 0 }), "row {i}");
    }
    assert_eq!(f.sim.stats().ok, 5);
}

/// Faults of the kinds `faults` (the provider's overloaded, 500, its 429)
/// on 30% of calls: every row still answered.
pub async fn faults_are_retried(p: &Provider, faults: &str) {
    let cfg = sim(|c| (c.fault_rate, c.faults) = (0.3, faults.into()));
    let (f, input, out) = job(cfg, 30, 0).await;
    let rows = ok_rows(
        &p.run(&f, &input, &out, &["--prompt", "{{text}}"], &[])
            .await,
        &out,
    );
    assert_no_errors(&rows);
    let stats = f.sim.stats();
    assert!(stats.faults_injected > 0);
    assert_eq!(stats.ok, 30);
}

/// A wrong key stops the job early (exit 1), naming the variable and
/// saying what the provider said (`said`), never the key; returns the
/// fixture for the provider's own checks.
pub async fn a_wrong_key_stops_the_job(p: &Provider, wrong: &str, said: &str) -> Fixture {
    let (f, input, out) = job(SimConfig::default(), 40, 0).await;
    let extra = ["--prompt", "{{text}}", "--concurrency", "2"];
    let o = output(p.command(&f, [&input, &out], &extra, &[(p.key_var, wrong)])).await;
    let err = assert_exit(&o, 1, &[&p.key_var, &said]);
    assert!(!err.contains(wrong), "{err}");
    assert!(f.sim.stats().requests < 40, "the job stopped early");
    f
}

/// No `--model`, or no key in the provider's variables (`vars`), is found
/// before anything is sent (exit 2), and so is a task the provider has no
/// API for.
pub async fn what_is_missing_is_found_before_anything_is_sent(
    p: &Provider,
    vars: &[&str],
    no_api_for: &str,
) {
    let (f, input, out) = job(SimConfig::default(), 3, 0).await;
    let base = f.sim.base_url();
    let mut args = run_io(&input, &out, p.endpoint);
    args.extend(["-q", "--base-url", &base, "--prompt", "{{text}}"]);
    let no_model = f.aiq(&args, &[(p.key_var, TOKEN)]).await;
    assert_exit(&no_model, 2, &["--model"]);
    args.extend(["--model", p.model]);
    let no_key = f.aiq(&args, &[]).await;
    assert_eq!(code(&no_key), 2, "{}", stderr(&no_key));
    for var in vars {
        assert!(stderr(&no_key).contains(var), "{}", stderr(&no_key));
    }
    let other = [&args[..], &["--task", no_api_for]].concat();
    let o = f.aiq(&other, &[(p.key_var, TOKEN)]).await;
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert_eq!(f.sim.stats().requests, 0);
}

/// Batch mode, polled every 20 ms.
const BATCH: [&str; 6] = [
    "--mode",
    "batch",
    "--poll-secs",
    "0.02",
    "--prompt",
    "{{text}}",
];

/// Every row answered with its own echo, each prompt answered once by
/// the simulator (batch and online together).
#[track_caller]
fn assert_each_row_answered_once(f: &Fixture, out: &Path, n: usize) {
    let rows = read_rows(out).1;
    assert_eq!(rows.len(), n);
    let stats = f.sim.stats();
    for (i, row) in rows.iter().enumerate() {
        let text = format!("row-{i} says the product is fine");
        assert_eq!(row["result"], json!(format!("echo: {text}")), "{row:?}");
        assert!(row["prompt_tokens"].as_i64() > Some(0), "{row:?}");
        assert_eq!(stats.ok_by_prompt.get(&text), Some(&1), "{text}");
    }
}

/// Batch mode through the provider's batch API, 10 rows a batch, with
/// failed requests and an expiring batch: what failed is resubmitted,
/// each row answered once, nothing online.
pub async fn batch_mode_resubmits_what_failed(p: &Provider) {
    let cfg = sim(|c| (c.batch_fail_rate, c.batch_expire_first) = (0.2, 1));
    let (f, input, out) = job(cfg, 30, 0).await;
    let extra = [&BATCH[..], &["--batch-max-requests", "10"]].concat();
    assert_ok(&p.run(&f, &input, &out, &extra, &[]).await);
    assert_each_row_answered_once(&f, &out, 30);
    let batches = f.sim.batch_stats();
    assert!(
        batches.batches > 3,
        "{batches:?}: three batches, then resubmissions"
    );
    assert!(
        batches.lines_failed > 0 && batches.expired == 1,
        "{batches:?}"
    );
    assert_eq!(f.sim.stats().requests, 0, "nothing went online");
}

/// Killed (SIGKILL) once its batch's id is journaled, the job run again
/// polls that batch and submits nothing more.
pub async fn batch_mode_killed_then_run_again_polls_its_batch(p: &Provider) {
    let cfg = sim(|c| c.batch_turnaround_ms = 1_500);
    let (f, input, out) = job(cfg, 12, 0).await;
    let journal = f.path("out.parquet.aiq/batches.jsonl");
    let command = || {
        let mut cmd = p.command(&f, [&input, &out], &BATCH, &[]);
        cmd.stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        cmd
    };
    // `submitting` then `created`: the batch runs, its id is journaled.
    let mut child = spawn_until_journaled(&mut command(), &journal, 2);
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!out.exists());
    assert_ok(&output(command()).await);
    assert_each_row_answered_once(&f, &out, 12);
    assert_eq!(
        f.sim.batch_stats().batches,
        1,
        "the re-run polled, never resubmitted"
    );
}

/// At the deadline the batch is cancelled, its answers kept, and the rest
/// sent online: each row answered once.
pub async fn batch_mode_deadline_cancels_and_sends_the_rest_online(p: &Provider) {
    let cfg = sim(|c| c.batch_turnaround_ms = 4_000);
    let (f, input, out) = job(cfg, 40, 0).await;
    let extra = [&BATCH[..], &["--deadline", "1s"]].concat();
    assert_ok(&p.run(&f, &input, &out, &extra, &[]).await);
    assert_each_row_answered_once(&f, &out, 40);
    assert_eq!(f.sim.batch_stats().cancelled, 1);
    assert!(f.sim.stats().requests > 0, "the rest went online");
}
