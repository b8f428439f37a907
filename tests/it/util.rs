//! Test helpers: a temp folder, the simulator, input files, running the
//! binary with a clean environment, and reading the output back as JSON rows.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aiq::simulator::{SimConfig, Simulator};
use arrow::array::RecordBatch;
use arrow::datatypes::Schema;
use serde_json::{Map, Value};

/// Environment variables for a command: `(name, value)` pairs.
pub type Envs<'a> = &'a [(&'a str, &'a str)];

pub const TOKEN: &str = "sk-test-SECRET-7f3a9c";

pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub sim: Simulator,
}

impl Fixture {
    /// A simulator that takes [`TOKEN`] only.
    pub async fn new(cfg: SimConfig) -> Fixture {
        Fixture::open(SimConfig {
            token: Some(TOKEN.to_string()),
            ..cfg
        })
        .await
    }

    /// A simulator with the token of `cfg` (None: it takes any credentials).
    pub async fn open(cfg: SimConfig) -> Fixture {
        let sim = Simulator::start(cfg).await.expect("simulator starts");
        Fixture {
            dir: tempfile::tempdir().expect("temp dir"),
            sim,
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The simulator's OpenAI-compatible base URL.
    pub fn openai_url(&self) -> String {
        format!("{}/v1", self.sim.base_url())
    }

    /// `text` in the file `name` of the temp folder (a job file, say).
    pub fn write_text(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, text).expect("write a text file");
        path
    }

    pub fn write_jsonl(&self, name: &str, rows: &[Value]) -> PathBuf {
        let path = self.path(name);
        let text: Vec<String> = rows.iter().map(|r| r.to_string()).collect();
        std::fs::write(&path, text.join("\n") + "\n").expect("write jsonl");
        path
    }

    pub fn write_parquet(&self, name: &str, batch: RecordBatch) -> PathBuf {
        let path = self.path(name);
        let file = std::fs::File::create(&path).expect("create parquet");
        let mut w =
            parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None).expect("writer");
        w.write(&batch).expect("write");
        w.close().expect("close");
        path
    }

    /// `aiq ARGS` with a clean environment: no Databricks or OpenAI
    /// variables but those given, HOME in the temp folder.
    pub async fn aiq(&self, args: &[&str], envs: Envs<'_>) -> Output {
        output(self.command(args, envs)).await
    }

    /// [`Fixture::command`] run in the folder `cwd`, for relative paths.
    pub fn command_in(&self, cwd: &Path, args: &[&str], envs: Envs<'_>) -> Command {
        let mut cmd = self.command(args, envs);
        cmd.current_dir(cwd);
        cmd
    }

    /// [`Fixture::aiq`] with stdout a pipe whose reading end is already
    /// closed, as in `aiq ... | head -1` once `head` has its line: every
    /// write to stdout fails with a broken pipe. The output's stdout is empty.
    pub async fn aiq_stdout_closed(&self, args: &[&str], envs: Envs<'_>) -> Output {
        let mut cmd = self.command(args, envs);
        let (reader, writer) = std::io::pipe().expect("pipe");
        drop(reader);
        cmd.stdout(writer);
        output(cmd).await
    }

    /// The `aiq ARGS` command with a clean environment (see [`Fixture::aiq`]),
    /// for a caller that spawns it (to stop it mid-job, or to run another
    /// job beside it).
    pub fn command(&self, args: &[&str], envs: Envs<'_>) -> Command {
        let mut cmd = Command::new(aiq_bin());
        cmd.args(args)
            .env_clear()
            .env("HOME", self.dir.path())
            .env("PATH", std::env::var("PATH").unwrap_or_default());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        cmd
    }

    /// The arguments of `aiq run -q` from `input` to `output` against the
    /// simulator's OpenAI route, prompt `{{text}}`: add flags, then run
    /// them with the key ([`TOKEN`] as `OPENAI_API_KEY`).
    pub fn run_args(&self, input: &Path, output: &Path) -> Vec<String> {
        let url = self.openai_url();
        let mut args = run_io(input, output, &url);
        args.extend(["-q", "--model", "m", "--prompt", "{{text}}"]);
        args.into_iter().map(String::from).collect()
    }

    /// [`Fixture::run_openai`] with the prompt `{{text}}` ([`PROMPT_TEXT`])
    /// and then `extra`: what most jobs in these tests run.
    pub async fn score(&self, input: &Path, output: &Path, extra: &[&str]) -> Output {
        let args = [&PROMPT_TEXT[..], extra].concat();
        self.run_openai(input, output, &args).await
    }

    /// `aiq run` against the simulator's OpenAI route with the right key.
    pub async fn run_openai(&self, input: &Path, out: &Path, extra: &[&str]) -> Output {
        self.run_openai_env(input, out, extra, &[]).await
    }

    /// [`Fixture::run_openai`] with more environment variables.
    pub async fn run_openai_env(
        &self,
        input: &Path,
        out: &Path,
        extra: &[&str],
        envs: Envs<'_>,
    ) -> Output {
        let cmd = self.endpoint_command(&self.openai_url(), input, out, extra, envs);
        self::output(cmd).await
    }

    /// The command [`Fixture::run_openai`] runs, to spawn and then signal
    /// or kill mid-job.
    pub fn openai_command(&self, input: &Path, out: &Path, extra: &[&str]) -> Command {
        self.endpoint_command(&self.openai_url(), input, out, extra, &[])
    }

    /// `aiq run` against any OpenAI-compatible `url` (a server in
    /// front of the simulator) with the simulator's key and `envs`.
    pub fn endpoint_command(
        &self,
        url: &str,
        input: &Path,
        out: &Path,
        extra: &[&str],
        envs: Envs<'_>,
    ) -> Command {
        let mut args = run_io(input, out, url);
        args.extend(["-q", "--model", "sim-model"]);
        self.keyed_command(args, extra, ("OPENAI_API_KEY", TOKEN), envs)
    }

    /// `args`, `--backoff-ms 1` and `extra`, run with the simulator's key
    /// in the variable of `key`, and `envs`.
    fn keyed_command<'a>(
        &self,
        mut args: Vec<&'a str>,
        extra: &[&'a str],
        key: (&str, &str),
        envs: Envs<'_>,
    ) -> Command {
        args.extend(["--backoff-ms", "1"]);
        args.extend_from_slice(extra);
        let mut all_envs = vec![key];
        all_envs.extend_from_slice(envs);
        self.command(&args, &all_envs)
    }

    /// `aiq run -q --endpoint azure` against the simulator's Azure OpenAI
    /// routes (`AZURE_OPENAI_ENDPOINT`), deployment `gpt4o-dep`, then
    /// `extra`; the credentials are `envs` alone.
    pub fn azure_command(
        &self,
        input: &Path,
        out: &Path,
        extra: &[&str],
        envs: Envs<'_>,
    ) -> Command {
        let base = self.sim.base_url();
        let named = ["--model", "gpt4o-dep"];
        let at = ("AZURE_OPENAI_ENDPOINT", base.as_str());
        self.provider_command("azure", &named, at, [input, out], extra, envs)
    }

    /// `aiq run -q --endpoint PROVIDER` from `io`'s input to its output
    /// with the flags that name where and what (`named`), the variable
    /// `var` set, then `extra` and `envs` ([`Fixture::keyed_command`]).
    pub fn provider_command<'a>(
        &self,
        provider: &'a str,
        named: &[&'a str],
        var: (&str, &str),
        io: [&'a Path; 2],
        extra: &[&'a str],
        envs: Envs<'_>,
    ) -> Command {
        let mut args = run_io(io[0], io[1], provider);
        args.push("-q");
        args.extend_from_slice(named);
        self.keyed_command(args, extra, var, envs)
    }

    /// `aiq run -q` against the simulator's Databricks route: the serving
    /// endpoint `name` on `DATABRICKS_HOST` (the simulator) with the
    /// right `DATABRICKS_TOKEN`.
    pub async fn run_databricks(
        &self,
        input: &Path,
        out: &Path,
        name: &str,
        extra: &[&str],
    ) -> Output {
        let mut args = vec!["-q"];
        args.extend_from_slice(extra);
        self.run_databricks_env(input, out, name, &args, &[("DATABRICKS_TOKEN", TOKEN)])
            .await
    }

    /// `aiq run` against the simulator's Databricks route with
    /// `DATABRICKS_HOST` set and `envs` in place of the token: credentials
    /// (e.g. [`DATABRICKS_OAUTH`]) and anything else such as `RUST_LOG`.
    /// Unlike [`Fixture::run_databricks`] it adds no `-q`: put `-q` or `-v`s
    /// in `extra`.
    pub async fn run_databricks_env(
        &self,
        input: &Path,
        out: &Path,
        name: &str,
        extra: &[&str],
        envs: Envs<'_>,
    ) -> Output {
        let host = self.sim.base_url();
        let mut args = run_io(input, out, name);
        args.extend_from_slice(extra);
        let mut all_envs = vec![("DATABRICKS_HOST", host.as_str())];
        all_envs.extend_from_slice(envs);
        self.aiq(&args, &all_envs).await
    }
}

/// `run --input INPUT --output OUTPUT --endpoint ENDPOINT`: the start of
/// every `aiq run` command line here; the caller adds the rest.
pub fn run_io<'a>(input: &'a Path, output: &'a Path, endpoint: &'a str) -> Vec<&'a str> {
    let utf8 = |p: &'a Path| p.to_str().expect("a UTF-8 temp path");
    let io = ["--input", utf8(input), "--output", utf8(output)];
    [&["run"][..], &io, &["--endpoint", endpoint]].concat()
}

/// Owned arguments as the `&str`s a command takes.
pub fn refs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// Run `cmd` to its end off the async runtime.
pub async fn output(mut cmd: Command) -> Output {
    tokio::task::spawn_blocking(move || cmd.output().expect("aiq runs"))
        .await
        .expect("join")
}

/// Flags that send rows one at a time, without retries: with
/// [`failing_first`], each failed request is a failed row, in row order.
pub const ONE_AT_A_TIME_NO_RETRIES: [&str; 4] = ["--concurrency", "1", "--max-retries", "0"];

/// `-q` and [`PROMPT_TEXT`]: for the runs that add no `-q` of their own
/// ([`Fixture::run_databricks_env`]).
pub const QUIET_TEXT: [&str; 3] = ["-q", "--prompt", "{{text}}"];

/// The flags that make each row's `text` column the whole prompt.
pub const PROMPT_TEXT: [&str; 2] = ["--prompt", "{{text}}"];

/// A simulator with `cfg` (taking [`TOKEN`]), `n` [`rows`] of input
/// (`in.jsonl`, every `null_every`th text null) and the path `out.parquet`
/// to score them into: the start of most tests.
pub async fn job(cfg: SimConfig, n: usize, null_every: usize) -> (Fixture, PathBuf, PathBuf) {
    job_of(cfg, &rows(n, null_every)).await
}

/// [`job`] with the input rows `input`.
pub async fn job_of(cfg: SimConfig, input: &[Value]) -> (Fixture, PathBuf, PathBuf) {
    let f = Fixture::new(cfg).await;
    let input = f.write_jsonl("in.jsonl", input);
    let out = f.path("out.parquet");
    (f, input, out)
}

/// [`job`] of `n` rows (the default simulator) with the texts of some
/// replaced: `(row, text)`, e.g. a text with a marker (`[[sim:400]]`)
/// that the simulator fails.
pub async fn job_marked(n: usize, texts: &[(usize, &str)]) -> (Fixture, PathBuf, PathBuf) {
    let mut input = rows(n, 0);
    for (row, text) in texts {
        input[*row]["text"] = Value::String(text.to_string());
    }
    job_of(SimConfig::default(), &input).await
}

/// A simulator whose first `n` requests fail (HTTP 500), and 30 rows of
/// input (`in.jsonl`) to score into `out.parquet`.
pub async fn failing_first(n: u64) -> (Fixture, PathBuf, PathBuf) {
    let cfg = SimConfig {
        fail_first: n,
        ..SimConfig::default()
    };
    job(cfg, 30, 0).await
}

/// The OAuth machine-to-machine credentials the simulator accepts, as
/// `DATABRICKS_CLIENT_ID` and `DATABRICKS_CLIENT_SECRET`.
pub const DATABRICKS_OAUTH: [(&str, &str); 2] = [
    ("DATABRICKS_CLIENT_ID", aiq::simulator::CLIENT_ID),
    ("DATABRICKS_CLIENT_SECRET", aiq::simulator::CLIENT_SECRET),
];

/// Spawn `cmd` (an aiq job) and return it, still running, once `journal`
/// (a file, or a call journal folder) holds at least `lines` lines, for the caller to kill or signal mid-job.
/// Waits by progress, not by time: polls every 10 ms, and panics if 60 s
/// pass without reaching `lines` or if aiq exits first (with its stderr, when
/// piped).
#[track_caller]
pub fn spawn_until_journaled(cmd: &mut Command, journal: &Path, lines: usize) -> Child {
    let mut child = cmd.spawn().expect("aiq starts");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let have = line_count(journal);
        if have >= lines {
            return child;
        }
        if let Some(status) = child.try_wait().expect("child status") {
            let mut err = String::new();
            if let Some(mut pipe) = child.stderr.take() {
                let _ = pipe.read_to_string(&mut err);
            }
            panic!(
                "the job ended ({status}) before it could be stopped: {have} of {lines} lines \
                 in {}\nstderr: {err}",
                journal.display()
            );
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the job made no progress: {have} of {lines} lines in {} after 60 s",
                journal.display()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Every file below `dir`, in its folders too (none when it is missing):
/// what a test searches for a secret that must not have been written.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(files_under(&path));
        } else {
            files.push(path);
        }
    }
    files
}

/// Lines in the file at `path`, or in all the `.jsonl` files of the
/// folder at `path` (a call journal); 0 while it does not exist.
pub fn line_count(path: &Path) -> usize {
    if path.is_dir() {
        return std::fs::read_dir(path)
            .map(|d| {
                d.flatten()
                    .filter(|e| e.path().extension().is_some_and(|x| x == "jsonl"))
                    .map(|e| line_count(&e.path()))
                    .sum()
            })
            .unwrap_or(0);
    }
    std::fs::File::open(path)
        .map(|f| BufReader::new(f).lines().count())
        .unwrap_or(0)
}

/// The binary under test. Worktrees that share one `CARGO_TARGET_DIR` also
/// share the uplifted `target/debug/aiq`, which the last build of any of
/// them overwrites; `AIQ_BIN` names this worktree's own binary (the
/// `target/debug/deps/aiq-HASH`) to test that one.
pub fn aiq_bin() -> PathBuf {
    std::env::var_os("AIQ_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_aiq")))
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

#[track_caller]
pub fn assert_ok(o: &Output) {
    assert_eq!(
        code(o),
        0,
        "aiq failed:\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&o.stdout),
        stderr(o)
    );
}

/// `o` failed with exit code `code`, and its stderr says each of `said`:
/// the stderr, for more checks.
#[track_caller]
pub fn assert_exit(o: &Output, code: i32, said: &[&str]) -> String {
    let err = stderr(o);
    assert_eq!(self::code(o), code, "{err}");
    for s in said {
        assert!(err.contains(s), "stderr does not say {s:?}: {err}");
    }
    err
}

/// A row's `result` as text (a test's rows are answered with text).
#[track_caller]
pub fn text_of(row: &Map<String, Value>) -> &str {
    row["result"]
        .as_str()
        .unwrap_or_else(|| panic!("no text: {row:?}"))
}

/// No row of `rows` has an error.
#[track_caller]
pub fn assert_no_errors(rows: &[Map<String, Value>]) {
    let failed: Vec<_> = rows
        .iter()
        .filter(|r| !r["error_message"].is_null())
        .collect();
    assert!(failed.is_empty(), "{failed:?}");
}

/// `o` succeeded: the rows it wrote to `out`.
#[track_caller]
pub fn ok_rows(o: &Output, out: &Path) -> Vec<Map<String, Value>> {
    assert_ok(o);
    read_rows(out).1
}

/// The simulator's defaults with what `change` sets: a test states only
/// what differs.
pub fn sim(change: impl FnOnce(&mut SimConfig)) -> SimConfig {
    let mut cfg = SimConfig::default();
    change(&mut cfg);
    cfg
}

/// A column of a test's input: its name, values and whether it may hold
/// nulls.
pub fn col<A: arrow::array::Array + 'static>(
    name: &str,
    values: A,
    nullable: bool,
) -> (String, arrow::array::ArrayRef, bool) {
    (name.to_string(), Arc::new(values), nullable)
}

/// A record batch of `columns` ([`col`]), its schema theirs.
pub fn batch_of<const N: usize>(
    columns: [(String, arrow::array::ArrayRef, bool); N],
) -> RecordBatch {
    RecordBatch::try_from_iter_with_nullable(columns).expect("columns of one length")
}

/// The type of the column `name` of `schema`.
#[track_caller]
pub fn type_of(schema: &Schema, name: &str) -> arrow::datatypes::DataType {
    let field = schema
        .field_with_name(name)
        .unwrap_or_else(|e| panic!("{e}"));
    field.data_type().clone()
}

/// Read a Parquet file as JSON objects, one per row.
pub fn read_rows(path: &Path) -> (Arc<Schema>, Vec<Map<String, Value>>) {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .expect("parquet");
    let schema = reader.schema().clone();
    let mut rows = Vec::new();
    for batch in reader.build().expect("reader") {
        let batch = batch.expect("batch");
        let mut w = arrow_json::WriterBuilder::new()
            .with_explicit_nulls(true)
            .build::<_, arrow_json::writer::JsonArray>(Vec::new());
        w.write(&batch).expect("json");
        w.finish().expect("json");
        let buf = w.into_inner();
        if buf.is_empty() {
            continue;
        }
        let values: Vec<Map<String, Value>> = serde_json::from_slice(&buf).expect("json rows");
        rows.extend(values);
    }
    (schema, rows)
}

/// `n` review-like rows: `{"id": i, "text": "row-i ..."}`, every `null_every`th text null.
pub fn rows(n: usize, null_every: usize) -> Vec<Value> {
    (0..n)
        .map(|i| {
            let text = if null_every > 0 && i % null_every == null_every - 1 {
                Value::Null
            } else {
                Value::String(format!("row-{i} says the product is fine"))
            };
            serde_json::json!({"id": i, "text": text})
        })
        .collect()
}

/// Runs `script` (a providers' official SDK driving the simulator) with the
/// test venv's Python, `args` after it and `envs` set, and returns what it
/// printed as JSON; a failing script fails the test with its output.
pub async fn python_sdk(f: &Fixture, script: &str, args: &[String], envs: Envs<'_>) -> Value {
    let python = std::env::var("AIQ_TEST_PYTHON").expect(
        "AIQ_TEST_PYTHON is unset: run tests/all.sh, which makes the test venv (with the providers' SDKs) and sets it",
    );
    let path = f.path("sdk.py");
    std::fs::write(&path, script).expect("write the SDK script");
    let mut cmd = Command::new(python);
    cmd.arg(path).args(args);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = tokio::task::spawn_blocking(move || cmd.output().expect("python runs"))
        .await
        .expect("python's task");
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}
