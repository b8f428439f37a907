//! The output location, end to end: checked before the first request (not
//! a directory, writable, not the input), one writer at a time, a finished
//! job not bought again, the status file's last word when a run fails, and
//! what a killed final write left cleaned up.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use aiq::simulator::SimConfig;
use serde_json::{json, Value};

use super::util::*;

/// `o` failed (exit 1), and the status file of `out` says so, with a
/// message that says `why`.
#[track_caller]
fn assert_failed_status(o: &std::process::Output, out: &Path, why: &str) {
    assert_eq!(code(o), 1, "{}", stderr(o));
    let s = status(out);
    assert_eq!(s["state"], json!("failed"), "{s}");
    assert!(s["message"].as_str().unwrap().contains(why), "{s}");
}

/// `n` rows of input to score into `out.parquet`, and a simulator slow
/// enough (20 ms a call) that a job of a few hundred rows is still running
/// when the test acts on it (the test waits on progress, never on time).
async fn slow_job(n: usize) -> (Fixture, PathBuf, PathBuf) {
    job(sim(|c| c.latency_ms = 20), n, 0).await
}

/// `aiq run -q` of `input` into `output` against the simulator, then `extra`.
fn args(f: &Fixture, input: &Path, output: &Path, extra: &[&str]) -> Vec<String> {
    let mut args = f.run_args(input, output);
    args.extend(extra.iter().map(|a| a.to_string()));
    args
}

async fn run(f: &Fixture, input: &Path, output: &Path, extra: &[&str]) -> std::process::Output {
    let args = args(f, input, output, extra);
    f.aiq(&refs(&args), &[("OPENAI_API_KEY", TOKEN)]).await
}

/// [`run`] as a command to spawn.
fn command(f: &Fixture, input: &Path, output: &Path, extra: &[&str]) -> std::process::Command {
    let args = args(f, input, output, extra);
    f.command(&refs(&args), &[("OPENAI_API_KEY", TOKEN)])
}

fn status(output: &Path) -> Value {
    let path = format!("{}.status.json", output.display());
    serde_json::from_slice(&std::fs::read(&path).expect("status file")).expect("status JSON")
}

#[track_caller]
fn assert_refused_unsent(f: &Fixture, o: &std::process::Output, says: &str) {
    assert_eq!(code(o), 2, "{}", stderr(o));
    assert!(stderr(o).contains(says), "{}", stderr(o));
    assert_eq!(f.sim.stats().requests, 0, "nothing may be sent");
}

/// `--output /dev/null` (or a pipe) is not a file to write: aiq writes
/// beside the output and renames into place, which replaced the device
/// node with a Parquet file (as root, `/dev/null` itself). A FIFO shows it
/// without root.
#[tokio::test(flavor = "multi_thread")]
async fn an_output_that_is_a_pipe_or_device_is_refused_and_left_alone() {
    use std::os::unix::fs::FileTypeExt;
    let (f, input, _) = job(SimConfig::default(), 20, 0).await;
    let out = f.path("pipe");
    let made = std::process::Command::new("mkfifo")
        .arg(&out)
        .status()
        .unwrap();
    assert!(made.success());
    let o = run(&f, &input, &out, &[]).await;
    assert_refused_unsent(&f, &o, "is not a regular file");
    let kind = std::fs::symlink_metadata(&out).unwrap().file_type();
    assert!(kind.is_fifo(), "the pipe is still a pipe: {kind:?}");
    assert!(!f.path("pipe.status.json").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_output_that_is_a_directory_is_refused_before_any_request() {
    let (f, input, _) = job(SimConfig::default(), 20, 0).await;
    let out = f.path("results");
    std::fs::create_dir(&out).unwrap();
    let o = run(&f, &input, &out, &[]).await;
    assert_refused_unsent(&f, &o, "is a directory");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_output_folder_that_cannot_be_written_is_refused_before_any_request() {
    use std::os::unix::fs::PermissionsExt;
    let (f, input, _) = job(SimConfig::default(), 20, 0).await;
    let folder = f.path("read-only");
    std::fs::create_dir(&folder).unwrap();
    std::fs::set_permissions(&folder, std::fs::Permissions::from_mode(0o555)).unwrap();
    // Root writes through permission bits; sysfs refuses new files even
    // to root, so the same case is tried there.
    let folder = if std::fs::write(folder.join("probe"), b"").is_ok() {
        std::path::PathBuf::from("/sys")
    } else {
        folder
    };
    let out = folder.join("out.parquet");
    let o = run(&f, &input, &out, &[]).await;
    assert_refused_unsent(&f, &o, "cannot write in its folder");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_input_as_output_is_refused_and_left_alone() {
    let (f, input, _) = job(SimConfig::default(), 20, 0).await;
    let before = std::fs::read(&input).unwrap();
    let o = run(&f, &input, &input, &[]).await;
    assert_refused_unsent(&f, &o, "is the input");
    // Through a link and a `..` too.
    let link = f.path("link.jsonl");
    std::os::unix::fs::symlink(&input, &link).unwrap();
    let o = run(&f, &input, &link, &[]).await;
    assert_refused_unsent(&f, &o, "is the input");
    std::fs::create_dir(f.path("sub")).unwrap();
    let dotted = f.path("sub/../in.jsonl");
    let o = run(&f, &input, &dotted, &[]).await;
    assert_refused_unsent(&f, &o, "is the input");
    assert_eq!(std::fs::read(&input).unwrap(), before);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_run_on_the_same_output_stops_at_once_and_names_the_first() {
    let n = 200;
    let (f, input, out) = slow_job(n).await;
    let mut first = command(&f, &input, &out, &["--concurrency", "2"]);
    first.stderr(Stdio::piped());
    let journal = f.path("out.parquet.aiq/journal.jsonl");
    let first = spawn_until_journaled(&mut first, &journal, 5);

    let o = run(&f, &input, &out, &["--concurrency", "2"]).await;
    let err = stderr(&o);
    assert_eq!(code(&o), 2, "{err}");
    assert!(
        err.contains(&format!("process {} on host", first.id())) && err.contains(" since "),
        "the message names the holder: {err}"
    );
    // The same with --restart, which must not discard the first run's journal.
    let o = run(&f, &input, &out, &["--restart"]).await;
    assert_eq!(code(&o), 2, "{}", stderr(&o));

    let o = tokio::task::spawn_blocking(move || first.wait_with_output().unwrap())
        .await
        .unwrap();
    let got = ok_rows(&o, &out);
    assert_eq!(got.len(), n);
    assert_eq!(f.sim.stats().ok, n as u64, "every row bought once");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_writer_leaves_no_lock_and_no_temporary_file_in_the_way() {
    let n = 200;
    let (f, input, out) = slow_job(n).await;
    let journal = f.path("out.parquet.aiq/journal.jsonl");
    let mut child = spawn_until_journaled(
        &mut command(&f, &input, &out, &["--concurrency", "2"]),
        &journal,
        5,
    );
    child.kill().unwrap(); // SIGKILL: the lock file stays, its lock does not
    child.wait().unwrap();
    // What a kill during the final write leaves: the output's temporary
    // file, named for a process that is gone.
    let gone = std::process::Command::new("true").spawn().unwrap();
    let dead = gone.id();
    let mut gone = gone;
    gone.wait().unwrap();
    let leftover = f.path(&format!(".out.parquet.tmp-{dead}"));
    std::fs::write(&leftover, vec![0u8; 4096]).unwrap();
    // A live process's temporary file of another output is not ours.
    let other = f.path(&format!(".other.parquet.tmp-{dead}"));
    std::fs::write(&other, b"x").unwrap();

    let o = run(&f, &input, &out, &[]).await;
    assert_ok(&o);
    assert_eq!(read_rows(&out).1.len(), n);
    assert!(
        !leftover.exists(),
        "the killed run's temporary file is removed"
    );
    assert!(other.exists(), "another output's file is left alone");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_finished_job_run_again_sends_nothing_unless_told() {
    let n = 30;
    let (f, input, out) = job(SimConfig::default(), n, 0).await;
    assert_ok(&run(&f, &input, &out, &[]).await);
    let sent = f.sim.stats().requests;
    assert_eq!(sent, n as u64);

    let o = run(&f, &input, &out, &["--json"]).await;
    assert_ok(&o);
    assert!(stderr(&o).is_empty(), "-q: {}", stderr(&o));
    assert_eq!(
        f.sim.stats().requests,
        sent,
        "a finished job is not bought again"
    );
    let summary: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(summary["rows"], json!(n));
    assert_eq!(read_rows(&out).1.len(), n);
    let mut loud = args(&f, &input, &out, &[]);
    loud.retain(|a| a != "-q");
    let without_q = f.aiq(&refs(&loud), &[("OPENAI_API_KEY", TOKEN)]).await;
    assert_ok(&without_q);
    assert!(
        stderr(&without_q).contains("is complete") && stderr(&without_q).contains("--overwrite"),
        "{}",
        stderr(&without_q)
    );
    assert_eq!(f.sim.stats().requests, sent);

    // Another job into the same output runs.
    let flags = ["--prompt", "Summarise: {{ text }}"];
    let o = f.run_openai(&input, &out, &flags).await;
    assert_ok(&o);
    assert_eq!(f.sim.stats().requests, sent + n as u64);
    // And so does the same job when told.
    let flags = ["--prompt", "Summarise: {{ text }}", "--overwrite"];
    let o = f.run_openai(&input, &out, &flags).await;
    assert_ok(&o);
    assert_eq!(f.sim.stats().requests, sent + 2 * n as u64);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_status_file_ends_failed_with_the_reason() {
    // A row error under --fail-on-error: exit 1.
    let (f, input, out) = job_marked(20, &[(3, "[[sim:400]] bad")]).await;
    let o = run(&f, &input, &out, &["--fail-on-error", "--concurrency", "1"]).await;
    assert_failed_status(&o, &out, "row 3 failed");

    // The output cannot be written at the end (something took its place
    // while the job ran): exit 1, and the status says why.
    let (f, input, out) = slow_job(200).await;
    let journal = f.path("out.parquet.aiq/journal.jsonl");
    let mut cmd = command(&f, &input, &out, &["--concurrency", "2"]);
    cmd.stderr(Stdio::piped());
    let child = spawn_until_journaled(&mut cmd, &journal, 5);
    std::fs::create_dir_all(out.join("in-the-way")).unwrap();
    let o = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    assert_failed_status(&o, &out, "out.parquet");
}
