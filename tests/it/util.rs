//! Test helpers: a temp folder, the simulator, input files, running the
//! binary with a clean environment, and reading the output back as JSON rows.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;

use aiq::simulator::{SimConfig, Simulator};
use arrow::array::RecordBatch;
use arrow::datatypes::Schema;
use serde_json::{Map, Value};

pub const TOKEN: &str = "sk-test-SECRET-7f3a9c";

pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub sim: Simulator,
}

impl Fixture {
    pub async fn new(cfg: SimConfig) -> Fixture {
        let cfg = SimConfig {
            token: Some(TOKEN.to_string()),
            ..cfg
        };
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

    /// Run `aiq ARGS` with a clean environment: no Databricks or OpenAI
    /// variables but those given, HOME in the temp folder.
    pub async fn aiq(&self, args: &[&str], envs: &[(&str, &str)]) -> Output {
        let mut cmd = std::process::Command::new(aiq_bin());
        cmd.args(args)
            .env_clear()
            .env("HOME", self.dir.path())
            .env("PATH", std::env::var("PATH").unwrap_or_default());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        tokio::task::spawn_blocking(move || cmd.output().expect("aiq runs"))
            .await
            .expect("join")
    }

    /// `aiq run` against the simulator's OpenAI route with the right key.
    pub async fn run_openai(&self, input: &Path, output: &Path, extra: &[&str]) -> Output {
        let url = self.openai_url();
        let mut args = vec![
            "run",
            "-q",
            "--input",
            input.to_str().unwrap(),
            "--output",
            output.to_str().unwrap(),
            "--endpoint",
            &url,
            "--model",
            "sim-model",
            "--backoff-ms",
            "1",
        ];
        args.extend_from_slice(extra);
        self.aiq(&args, &[("OPENAI_API_KEY", TOKEN)]).await
    }
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
