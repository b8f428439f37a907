//! Hostile servers (issue 23): a server that quotes the request's headers
//! (`Authorization` included) in its errors, sends megabytes of error, or
//! breaks off a finished reply; and what a stopped job says it sent. No
//! secret may reach stderr, the status file, the journal or the output, at
//! any log level.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use aiq::simulator::{RateHeaders, RetryAfterHint, SimConfig, CLIENT_ID, CLIENT_SECRET};
use serde_json::json;

use super::util::*;

/// A Databricks personal access token the simulator does not take.
const WRONG_TOKEN: &str = "dapiSECRET123";
/// The user-info of an endpoint URL.
const USER: &str = "alice";
const PASSWORD: &str = "pAsSw0rd";

fn base64(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// A server whose every error quotes the request's headers. It allows one
/// request a minute (a bare 429 after that), so rows of [`input`] meet a
/// 400, a 500 and a 429 after the first.
fn echoing() -> SimConfig {
    SimConfig {
        echo_headers: true,
        rpm: Some(1),
        rate_headers: RateHeaders::Never,
        retry_after: RetryAfterHint::None,
        ..SimConfig::default()
    }
}

fn input(f: &Fixture) -> PathBuf {
    f.write_jsonl(
        "in.jsonl",
        &[
            json!({"text": "fine"}),
            json!({"text": "[[sim:400]] bad"}),
            json!({"text": "[[sim:500]] broken"}),
            json!({"text": "limited"}),
        ],
    )
}

/// `aiq run -v` of [`input`] to `endpoint`, one call at a time, no retry.
async fn run(f: &Fixture, endpoint: &str, extra: &[&str], envs: Envs<'_>) -> Output {
    let mut args = vec!["--max-retries", "0", "--concurrency", "1"];
    args.extend_from_slice(extra);
    run_rows(f, &input(f), endpoint, &args, envs).await
}

/// [`run`] to the simulator's OpenAI route with `key` as `OPENAI_API_KEY`.
async fn run_with_key(f: &Fixture, key: &str) -> Output {
    let envs = [("OPENAI_API_KEY", key)];
    run(f, &f.openai_url(), &["--model", "m"], &envs).await
}

/// `aiq run -v` of `input` to `url`, the prompt its `text`.
async fn run_rows(f: &Fixture, input: &Path, url: &str, extra: &[&str], envs: Envs<'_>) -> Output {
    let out = f.path("out.parquet");
    let mut args = run_io(input, &out, url);
    args.extend(["-v", "--prompt", "{{text}}"]);
    args.extend_from_slice(extra);
    f.aiq(&args, envs).await
}

/// A server whose every inference call meets `fault`.
fn always(fault: &str) -> SimConfig {
    sim(|c| (c.fault_rate, c.faults) = (1.0, fault.into()))
}

/// Files the test wrote for aiq to read: they hold what they hold.
const GIVEN: [&str; 3] = ["in.jsonl", ".databrickscfg", "ca.pem"];

/// What a run left to read: its stdout and stderr, and every file under the
/// fixture's folder but those given to it (Parquet read back as rows: its
/// pages are compressed).
fn everything(f: &Fixture, o: &Output) -> Vec<(String, String)> {
    let mut found = vec![
        ("stderr".to_string(), stderr(o)),
        (
            "stdout".to_string(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
        ),
    ];
    let mut dirs = vec![f.dir.path().to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if path.is_dir() {
                dirs.push(path);
            } else if !GIVEN.contains(&name.as_str()) {
                let text = if name.ends_with(".parquet") {
                    serde_json::to_string(&read_rows(&path).1).unwrap()
                } else {
                    String::from_utf8_lossy(&std::fs::read(&path).unwrap()).into_owned()
                };
                found.push((path.display().to_string(), text));
            }
        }
    }
    found
}

/// None of `secrets` in anything the run left; the status file, at least,
/// was looked at.
#[track_caller]
fn assert_nowhere(f: &Fixture, o: &Output, secrets: &[&str]) {
    let places = everything(f, o);
    assert!(
        places
            .iter()
            .any(|(p, _)| p.ends_with("out.parquet.status.json")),
        "no status file: {:?}",
        places.iter().map(|(p, _)| p).collect::<Vec<_>>()
    );
    for (place, text) in &places {
        for secret in secrets {
            if let Some(at) = text.find(secret) {
                let from = text[..at]
                    .char_indices()
                    .rev()
                    .nth(120)
                    .map_or(0, |(i, _)| i);
                panic!(
                    "{secret:?} is in {place}: …{}…",
                    &text[from..(at + secret.len()).min(text.len())]
                );
            }
        }
    }
}

/// The 400, 500 and 429 rows say what the server said, its quote of the
/// `Authorization` header redacted; nothing holds a secret.
#[track_caller]
fn assert_echoes_redacted(f: &Fixture, o: &Output, secrets: &[&str]) {
    let (_, rows) = read_rows(&f.path("out.parquet"));
    assert_eq!(rows.len(), 4, "{}", stderr(o));
    assert!(rows[0]["error_message"].is_null(), "{:?}", rows[0]);
    for (row, status) in rows[1..].iter().zip(["HTTP 400", "HTTP 500", "HTTP 429"]) {
        let m = row["error_message"].as_str().unwrap_or_default();
        assert!(
            m.contains(status) && m.contains("authorization: ") && m.contains(" [redacted]"),
            "{m}"
        );
    }
    assert_nowhere(f, o, secrets);
}

#[tokio::test(flavor = "multi_thread")]
async fn echoed_credentials_are_redacted_in_rows_files_and_logs() {
    // OPENAI_API_KEY.
    let f = Fixture::new(echoing()).await;
    let o = run_with_key(&f, TOKEN).await;
    assert_echoes_redacted(&f, &o, &[TOKEN]);

    // DATABRICKS_TOKEN.
    let f = Fixture::new(echoing()).await;
    let host = f.sim.base_url();
    let o = run(
        &f,
        "my-llm",
        &[],
        &[("DATABRICKS_HOST", &host), ("DATABRICKS_TOKEN", TOKEN)],
    )
    .await;
    assert_echoes_redacted(&f, &o, &[TOKEN]);

    // A token in ~/.databrickscfg.
    let f = Fixture::new(echoing()).await;
    let profile = format!("[DEFAULT]\nhost = {}\ntoken = {TOKEN}\n", f.sim.base_url());
    std::fs::write(f.path(".databrickscfg"), profile).unwrap();
    let o = run(&f, "my-llm", &[], &[]).await;
    assert_echoes_redacted(&f, &o, &[TOKEN]);

    // OAuth: the token the simulator hands out, and the client secret.
    let f = Fixture::new(echoing()).await;
    let host = f.sim.base_url();
    let mut envs = DATABRICKS_OAUTH.to_vec();
    envs.push(("DATABRICKS_HOST", &host));
    let o = run(&f, "my-llm", &[], &envs).await;
    let login = base64(&format!("{CLIENT_ID}:{CLIENT_SECRET}"));
    assert_echoes_redacted(&f, &o, &[TOKEN, CLIENT_SECRET, &login]);

    // A password in the URL, sent as Basic auth (this server takes any).
    let f = Fixture::open(echoing()).await;
    let url = format!("http://{USER}:{PASSWORD}@{}/v1", f.sim.addr());
    let o = run(&f, &url, &["--model", "m"], &[]).await;
    let basic = base64(&format!("{USER}:{PASSWORD}"));
    assert_echoes_redacted(&f, &o, &[PASSWORD, &basic]);
    // The -v line names the endpoint, without its user-info.
    let shown = format!("endpoint http://{}/v1", f.sim.addr());
    assert!(stderr(&o).contains(&shown), "{}", stderr(&o));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_credential_echoed_in_a_401_is_redacted() {
    let refused = |f: &Fixture, o: &Output, secrets: &[&str]| {
        let err = stderr(o);
        assert_ne!(code(o), 0, "{err}");
        assert!(err.contains("401") && err.contains("[redacted]"), "{err}");
        assert_nowhere(f, o, secrets);
    };
    let hostile = || sim(|c| c.echo_headers = true);

    let f = Fixture::new(hostile()).await;
    let host = f.sim.base_url();
    let envs = [
        ("DATABRICKS_HOST", host.as_str()),
        ("DATABRICKS_TOKEN", WRONG_TOKEN),
    ];
    let o = run(&f, "my-llm", &[], &envs).await;
    refused(&f, &o, &[WRONG_TOKEN]);

    let f = Fixture::new(hostile()).await;
    let o = run_with_key(&f, WRONG_TOKEN).await;
    refused(&f, &o, &[WRONG_TOKEN]);

    // The URL's user and password, where a token is wanted.
    let f = Fixture::new(hostile()).await;
    let url = format!("http://{USER}:{PASSWORD}@{}/v1", f.sim.addr());
    let o = run(&f, &url, &["--model", "m"], &[]).await;
    refused(&f, &o, &[PASSWORD, &base64(&format!("{USER}:{PASSWORD}"))]);

    // The OAuth token endpoint quotes the Basic header of a wrong secret.
    let f = Fixture::new(hostile()).await;
    let host = f.sim.base_url();
    let wrong = "wrong-client-secret-456";
    let envs = [
        ("DATABRICKS_HOST", host.as_str()),
        ("DATABRICKS_CLIENT_ID", CLIENT_ID),
        ("DATABRICKS_CLIENT_SECRET", wrong),
    ];
    let o = run(&f, "my-llm", &[], &envs).await;
    refused(&f, &o, &[wrong, &base64(&format!("{CLIENT_ID}:{wrong}"))]);
}

#[tokio::test(flavor = "multi_thread")]
async fn no_log_level_shows_a_token() {
    // Every target at trace, the HTTP stack's included, over HTTP/1.1 and
    // over TLS with HTTP/2; an OAuth login on reqwest besides.
    for tls in [false, true] {
        let f = Fixture::new(SimConfig {
            tls,
            ..SimConfig::default()
        })
        .await;
        let ca = f.path("ca.pem");
        if let Some(pem) = f.sim.ca_pem() {
            std::fs::write(&ca, pem).unwrap();
        }
        let tls_args = ["--ca-cert", ca.to_str().unwrap()];
        let extra: &[&str] = if tls { &tls_args } else { &[] };
        let host = f.sim.base_url();
        let mut envs = DATABRICKS_OAUTH.to_vec();
        envs.extend([("DATABRICKS_HOST", host.as_str()), ("RUST_LOG", "trace")]);
        let o = run(&f, "my-llm", extra, &envs).await;
        assert!(stderr(&o).contains("TRACE"), "{}", stderr(&o));
        assert_nowhere(&f, &o, &[TOKEN, CLIENT_SECRET]);

        let f2 = Fixture::new(SimConfig {
            tls,
            ..SimConfig::default()
        })
        .await;
        if let Some(pem) = f2.sim.ca_pem() {
            std::fs::write(&ca, pem).unwrap();
        }
        let mut args = vec!["--model", "m"];
        args.extend_from_slice(extra);
        let envs = [("OPENAI_API_KEY", TOKEN), ("RUST_LOG", "trace")];
        let o = run(&f2, &f2.openai_url(), &args, &envs).await;
        assert!(stderr(&o).contains("TRACE"), "{}", stderr(&o));
        assert_nowhere(&f2, &o, &[TOKEN]);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_huge_error_body_is_cut_and_says_so() {
    let f = Fixture::new(sim(|c| c.error_body_bytes = 10 << 20)).await;
    let o = run_with_key(&f, TOKEN).await;
    let (_, rows) = read_rows(&f.path("out.parquet"));
    assert_eq!(rows.len(), 4, "{}", stderr(&o));
    for row in &rows[1..3] {
        // The body has no length: aiq read 64 KiB of its 10 MB, no more.
        let m = row["error_message"].as_str().unwrap();
        assert!(m.len() < 1000, "{} bytes kept", m.len());
        assert!(m.ends_with("… (cut, more than 65536 bytes)"), "{m}");
    }
    let status = std::fs::read(f.path("out.parquet.status.json")).unwrap();
    assert!(status.len() < 10_000, "{} bytes", status.len());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reply_broken_off_after_the_call_counts_as_maybe_billed() {
    // Every call runs to the end (the server counts it), then its reply
    // breaks off halfway: each attempt may have been billed.
    let f = Fixture::new(always("cut")).await;
    let input = f.write_jsonl("in.jsonl", &super::util::rows(3, 0));
    let out = f.path("out.parquet");
    let o = f.score(&input, &out, &["--max-retries", "5"]).await;
    let (_, rows) = read_rows(&out);
    assert_eq!(rows.len(), 3, "{}", stderr(&o));
    for row in &rows {
        assert_eq!(
            (row["attempts"].as_i64(), &row["maybe_billed_twice"]),
            (Some(2), &json!(true)),
            "one retry after a maybe-billed attempt: {row:?}"
        );
        let m = row["error_message"].as_str().unwrap();
        assert!(m.contains("--max-ambiguous-retries 1"), "{m}");
    }
    assert_eq!(f.sim.stats().ok, 6, "the server answered every attempt");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_stopped_early_says_how_many_requests_it_sent() {
    let f = Fixture::new(always("500")).await;
    let input = f.write_jsonl("in.jsonl", &super::util::rows(40, 0));
    let extra = ["--model", "m", "--max-retries", "1", "--backoff-ms", "1"];
    let envs = [("OPENAI_API_KEY", TOKEN)];
    let o = run_rows(&f, &input, &f.openai_url(), &extra, &envs).await;
    let err = stderr(&o);
    assert_exit(&o, 1, &["failed in a row"]);
    let sent = requests_sent(&err);
    assert_eq!(sent, f.sim.stats().requests, "{err}");
    assert!(sent >= 20, "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_interrupted_job_says_how_many_requests_it_sent() {
    let (f, input, out) = job(sim(|c| c.latency_ms = 20), 400, 0).await;
    let url = f.openai_url();
    let mut args = run_io(&input, &out, &url);
    args.extend(["--model", "m", "--prompt", "{{text}}", "--concurrency", "4"]);
    let mut cmd = f.command(&args, &[("OPENAI_API_KEY", TOKEN)]);
    cmd.stdout(Stdio::null()).stderr(Stdio::piped());
    let journal = f.path("out.parquet.aiq/journal.jsonl");
    let child = spawn_until_journaled(&mut cmd, &journal, 20);
    let pid = child.id().to_string();
    let o = tokio::task::spawn_blocking(move || {
        Command::new("kill").args(["-INT", &pid]).status().unwrap();
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    let err = stderr(&o);
    assert_exit(&o, 1, &["interrupted"]);
    let sent = requests_sent(&err);
    assert_eq!(sent, f.sim.stats().requests, "{err}");
    assert!(sent >= 20, "{err}");
}

/// N of the summary's `requests   N sent, …` line.
#[track_caller]
fn requests_sent(stderr: &str) -> u64 {
    stderr
        .lines()
        .find_map(|l| l.strip_prefix("requests   "))
        .and_then(|l| l.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no request count: {stderr}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn explain_names_the_simulator() {
    let f = Fixture::new(SimConfig::default()).await;
    let o = run_rows(&f, &input(&f), "simulator", &["--explain"], &[]).await;
    let text = String::from_utf8_lossy(&o.stdout);
    let line = text.lines().next().unwrap_or_default();
    assert!(line.contains("built-in simulator"), "{text}{}", stderr(&o));
    assert!(!line.contains("(Databricks)"), "{line}");
}
