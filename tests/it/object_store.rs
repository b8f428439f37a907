//! Object-store input and output against a real S3-compatible server:
//! moto's standalone server from the test venv (`tests/all.sh` installs it
//! and exports `AIQ_TEST_PYTHON`). One server serves every test of the
//! binary, each in buckets of its own; the access-denied test starts one
//! more with authentication on.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use aiq::simulator::SimConfig;
use arrow::array::{Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use serde_json::json;
use std::sync::Arc;

use super::util::*;

const ACCESS_KEY: &str = "AKIAOBJSTORETEST0001";
const SECRET_KEY: &str = "objstore-SECRET-9b1e7c4d2a";

/// A moto server on 127.0.0.1. Its process is a child of a shell that
/// waits on our pipe: when the test binary exits, however it exits, the
/// pipe closes and the shell stops the server.
pub(super) struct Moto {
    pub(super) url: String,
    _guard: Child,
}

impl Moto {
    fn start(extra_env: &[(&str, &str)]) -> Moto {
        let python = std::env::var("AIQ_TEST_PYTHON").unwrap_or_else(|_| {
            panic!("AIQ_TEST_PYTHON is not set: run tests/all.sh, which installs moto[server] into a venv and sets it")
        });
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let script = format!(
            "\"$0\" -m moto.server -H 127.0.0.1 -p {port} >/dev/null 2>&1 & pid=$!; cat >/dev/null; kill $pid"
        );
        let mut cmd = Command::new("sh");
        cmd.args(["-c", &script, &python])
            .stdin(Stdio::piped())
            .stdout(Stdio::null());
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let guard = cmd.spawn().expect("moto starts");
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !answers(port) {
            assert!(
                Instant::now() < deadline,
                "moto did not answer on {url} within 30 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Moto { url, _guard: guard }
    }

    pub(super) fn shared() -> &'static Moto {
        static MOTO: OnceLock<Moto> = OnceLock::new();
        MOTO.get_or_init(|| Moto::start(&[]))
    }
}

/// Whether moto answers on `port` yet (a plain HTTP/1.0 GET).
fn answers(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let mut head = [0u8; 12];
    s.write_all(b"GET /moto-api/ HTTP/1.0\r\n\r\n").is_ok()
        && s.read_exact(&mut head).is_ok()
        && head.starts_with(b"HTTP/1.")
        && &head[9..12] == b"200"
}

/// Plain HTTP against moto, which accepts unsigned requests unless its
/// authentication is on: enough to set up buckets and look at results.
async fn http() -> reqwest::Client {
    reqwest::Client::new()
}

pub(super) async fn create_bucket(moto: &Moto, bucket: &str) {
    let r = http()
        .await
        .put(format!("{}/{bucket}", moto.url))
        .send()
        .await
        .unwrap();
    assert!(
        r.status().is_success(),
        "create bucket {bucket}: {}",
        r.status()
    );
}

async fn put_object(moto: &Moto, bucket: &str, key: &str, body: Vec<u8>) {
    let r = http()
        .await
        .put(format!("{}/{bucket}/{key}", moto.url))
        .body(body)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "put {key}: {}", r.status());
}

/// An object's bytes, `None` when there is no such object. Read with a
/// signed request: moto answers an unsigned read of an object written with
/// credentials with 403 (it takes unsigned bucket creation, uploads and
/// listings), and a read that fails for any other reason fails the test.
async fn get_object(moto: &Moto, bucket: &str, key: &str) -> Option<Vec<u8>> {
    use object_store::ObjectStoreExt;
    match signed(moto, bucket).get(&key.into()).await {
        Ok(r) => Some(r.bytes().await.unwrap().to_vec()),
        Err(object_store::Error::NotFound { .. }) => None,
        Err(e) => panic!("reading s3://{bucket}/{key}: {e}"),
    }
}

/// A client of `bucket` that signs its requests as aiq's do.
fn signed(moto: &Moto, bucket: &str) -> object_store::aws::AmazonS3 {
    object_store::aws::AmazonS3Builder::new()
        .with_endpoint(&moto.url)
        .with_allow_http(true)
        .with_access_key_id(ACCESS_KEY)
        .with_secret_access_key(SECRET_KEY)
        .with_region("us-east-1")
        .with_bucket_name(bucket)
        .build()
        .unwrap()
}

/// Keys under `prefix`, from a ListObjectsV2 answer.
async fn list(moto: &Moto, bucket: &str, prefix: &str) -> Vec<String> {
    let r = http()
        .await
        .get(format!("{}/{bucket}?list-type=2&prefix={prefix}", moto.url))
        .send()
        .await
        .unwrap();
    let body = r.text().await.unwrap();
    body.split("<Key>")
        .skip(1)
        .filter_map(|s| s.split_once("</Key>").map(|(k, _)| k.to_string()))
        .collect()
}

/// The environment a job needs for moto: the cloud's own variables only.
pub(super) fn s3_env(moto: &Moto) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ENDPOINT_URL", moto.url.clone()),
        ("AWS_ALLOW_HTTP", "true".into()),
        ("AWS_ACCESS_KEY_ID", ACCESS_KEY.into()),
        ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.into()),
        ("AWS_REGION", "us-east-1".into()),
    ]
}

pub(super) fn unique_bucket(name: &str) -> String {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("aiq-{name}-{}-{n}", std::process::id())
}

/// A new, empty bucket named after `name`.
async fn new_bucket(moto: &Moto, name: &str) -> String {
    let bucket = unique_bucket(name);
    create_bucket(moto, &bucket).await;
    bucket
}

fn parquet_bytes(n: usize) -> Vec<u8> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("text", DataType::Utf8, false),
    ]));
    let ids: Vec<i64> = (0..n as i64).collect();
    let texts: Vec<String> = ids.iter().map(|i| format!("row-{i} text")).collect();
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(Int64Array::from(ids)),
            Arc::new(StringArray::from(texts)),
        ],
    )
    .unwrap();
    let mut buf = Vec::new();
    // Small row groups: the reader must fetch them one range at a time.
    let props = parquet::file::properties::WriterProperties::builder()
        .set_max_row_group_row_count(Some(64))
        .build();
    let mut w = parquet::arrow::ArrowWriter::try_new(&mut buf, schema, Some(props)).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    buf
}

fn jsonl_bytes(n: usize) -> Vec<u8> {
    rows(n, 0)
        .iter()
        .map(|r| r.to_string() + "\n")
        .collect::<String>()
        .into_bytes()
}

/// `aiq ARGS` with the simulator's key and `envs`; HOME and the working
/// folder in `home`.
fn aiq_cmd(home: &Path, args: &[&str], envs: &[(&str, String)]) -> Command {
    std::fs::create_dir_all(home).unwrap();
    let mut cmd = Command::new(aiq_bin());
    cmd.args(args)
        .env_clear()
        .env("HOME", home)
        .env("TMPDIR", home)
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("OPENAI_API_KEY", TOKEN)
        .current_dir(home)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd
}

fn run_args<'a>(url: &'a str, input: &'a str, out: &'a str) -> Vec<&'a str> {
    vec![
        "run",
        "--input",
        input,
        "--output",
        out,
        "--endpoint",
        url,
        "--model",
        "m",
        "--prompt",
        "{{text}}",
        "--backoff-ms",
        "1",
    ]
}

/// Reads the output object back and checks every row has its answer.
async fn assert_output(f: &Fixture, moto: &Moto, bucket: &str, key: &str, n: usize) {
    assert_output_rows(f, moto, bucket, key, 0..n).await
}

/// Reads the output object back and checks it holds the input rows `ids`,
/// each once, in input order, each with its answer.
async fn assert_output_rows(
    f: &Fixture,
    moto: &Moto,
    bucket: &str,
    key: &str,
    ids: std::ops::Range<usize>,
) {
    let bytes = get_object(moto, bucket, key).await.expect("output object");
    let path = f.path(&format!("{bucket}-{}", key.replace('/', "_")));
    std::fs::write(&path, bytes).unwrap();
    let (_, rows) = read_rows(&path);
    assert_eq!(rows.len(), ids.len(), "{key}");
    for (i, row) in ids.zip(&rows) {
        assert_eq!(row["id"], json!(i));
        assert!(
            row["error_message"].is_null(),
            "row {i}: {:?}",
            row["error_message"]
        );
        assert!(
            text_of(row).starts_with(&format!("echo: row-{i} ")),
            "{row:?}"
        );
    }
    // Working files are gone once the output is there.
    assert_eq!(
        list(moto, bucket, &format!("{key}.aiq/")).await,
        Vec::<String>::new()
    );
}

fn assert_no_secret(o: &std::process::Output) {
    for stream in [&o.stdout, &o.stderr] {
        let text = String::from_utf8_lossy(stream);
        assert!(
            !text.contains(SECRET_KEY),
            "the secret key was printed:\n{text}"
        );
    }
}

/// A new bucket holding the same `n` rows as `in/reviews.parquet` (row
/// groups of 64 rows) and `in/reviews.jsonl`.
async fn bucket_with_inputs(moto: &Moto, name: &str, n: usize) -> String {
    let bucket = new_bucket(moto, name).await;
    put_object(moto, &bucket, "in/reviews.parquet", parquet_bytes(n)).await;
    put_object(moto, &bucket, "in/reviews.jsonl", jsonl_bytes(n)).await;
    bucket
}

/// The shared S3 server, a fixture, and a new bucket (named after
/// `name`) holding `n` input rows ([`bucket_with_inputs`]).
async fn with_inputs(name: &str, n: usize) -> (&'static Moto, Fixture, String) {
    let moto = Moto::shared();
    let f = Fixture::new(SimConfig::default()).await;
    let bucket = bucket_with_inputs(moto, name, n).await;
    (moto, f, bucket)
}

/// Runs `in/reviews.parquet` → `out/a.parquet` and `in/reviews.jsonl` →
/// `out/b.parquet` of [`bucket_with_inputs`] with `env`, and checks each
/// output row by row and that no output shows the secret key.
async fn both_inputs_to_parquet(
    f: &Fixture,
    moto: &Moto,
    bucket: &str,
    env: &[(&str, String)],
    n: usize,
) {
    let url = f.openai_url();
    for (input, out) in [
        ("in/reviews.parquet", "out/a.parquet"),
        ("in/reviews.jsonl", "out/b.parquet"),
    ] {
        let input = format!("s3://{bucket}/{input}");
        let out_url = format!("s3://{bucket}/{out}");
        let args = run_args(&url, &input, &out_url);
        let o = output(aiq_cmd(&f.path("home"), &args, env)).await;
        assert_ok(&o);
        assert_no_secret(&o);
        assert_output(f, moto, bucket, out, n).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn parquet_and_jsonl_in_parquet_out() {
    let n = 300;
    let (moto, f, bucket) = with_inputs("io", n).await;
    let mut env = s3_env(moto);
    // Debug logs of every layer, the HTTP stack's included: no secret.
    env.push(("RUST_LOG", "debug".into()));
    both_inputs_to_parquet(&f, moto, &bucket, &env, n).await;
    let url = f.openai_url();

    // The same job again finds its output complete and sends nothing.
    let before = f.sim.stats().ok;
    let input = format!("s3://{bucket}/in/reviews.parquet");
    let out_url = format!("s3://{bucket}/out/a.parquet");
    let args = run_args(&url, &input, &out_url);
    let o = output(aiq_cmd(&f.path("home"), &args, &s3_env(moto))).await;
    assert_ok(&o);
    assert!(stderr(&o).contains("is complete"), "{}", stderr(&o));
    // The output is only ever created: another job's run is refused before
    // any request.
    let mut other = args.clone();
    other.extend(["--system", "Be brief."]);
    let o = output(aiq_cmd(&f.path("home"), &other, &s3_env(moto))).await;
    assert_exit(&o, 2, &[&out_url, "already exists"]);
    assert_eq!(f.sim.stats().ok, before);
}

#[cfg(feature = "sql")]
#[tokio::test(flavor = "multi_thread")]
async fn sql_over_s3_tables() {
    let moto = Moto::shared();
    let f = Fixture::new(SimConfig::default()).await;
    let bucket = new_bucket(moto, "sql").await;
    put_object(moto, &bucket, "t/reviews.parquet", parquet_bytes(40)).await;
    put_object(moto, &bucket, "t/more.jsonl", jsonl_bytes(7)).await;
    let url = f.openai_url();
    let table = format!("reviews=s3://{bucket}/t/reviews.parquet");
    // `aiq sql -q QUERY --table TABLE` through moto and the simulator.
    let sql = |query: &str, table: &str| {
        let args = [
            "sql",
            "-q",
            query,
            "--table",
            table,
            "--model",
            "m",
            "--endpoint",
            &url,
        ];
        output(aiq_cmd(&f.path("home"), &args, &s3_env(moto)))
    };
    let query = format!(
        "SELECT count(*) AS n, max(r.id) AS top, (SELECT count(*) FROM 's3://{bucket}/t/more.jsonl') AS m \
         FROM reviews r"
    );
    let o = sql(&query, &table).await;
    assert_ok(&o);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        stdout.contains("| 40 ") && stdout.contains("| 39 ") && stdout.contains("| 7 "),
        "{stdout}"
    );

    // AI functions over an s3:// table.
    let query = format!(
        "SELECT id, ai_query('{url}', text) AS answer FROM reviews WHERE id < 3 ORDER BY id"
    );
    let o = sql(&query, &table).await;
    assert_ok(&o);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("echo: row-2 text"), "{stdout}");

    let missing = format!("reviews=s3://{bucket}/t/nope.parquet");
    let o = sql("SELECT * FROM reviews", &missing).await;
    assert_exit(&o, 2, &[&format!("s3://{bucket}/t/nope.parquet")]);
}

#[tokio::test(flavor = "multi_thread")]
async fn shards_read_and_write_the_bucket() {
    let n = 300;
    let (moto, f, bucket) = with_inputs("shard", n).await;
    let url = f.openai_url();
    // Shard edges fall inside row groups.
    let count = 3;
    for (input, out) in [
        ("in/reviews.parquet", "out/p/part-{shard}.parquet"),
        ("in/reviews.jsonl", "out/j/part-{shard}.parquet"),
    ] {
        let input = format!("s3://{bucket}/{input}");
        let out_url = format!("s3://{bucket}/{out}");
        for k in 0..count {
            let shard = format!("{k}/{count}");
            let mut args = run_args(&url, &input, &out_url);
            args.extend(["-q", "--shard", &shard]);
            let o = output(aiq_cmd(&f.path("home"), &args, &s3_env(moto))).await;
            assert_ok(&o);
        }
        // Each shard's rows in its own object; together every row once.
        for k in 0..count {
            let key = out.replace("{shard}", &k.to_string());
            let rows = n * k / count..n * (k + 1) / count;
            assert_output_rows(&f, moto, &bucket, &key, rows).await;
        }
    }
    // The two inputs' texts differ: each of their rows was sent once.
    let stats = f.sim.stats();
    assert_eq!(stats.ok_by_prompt.len(), 2 * n);
    assert!(stats.ok_by_prompt.values().all(|&c| c == 1));
}

/// The row ids in the journal chunks under `prefix`, and how many chunks.
async fn journaled_rows(moto: &Moto, bucket: &str, prefix: &str) -> (Vec<u64>, usize) {
    let keys = list(moto, bucket, prefix).await;
    let mut rows = Vec::new();
    for key in &keys {
        let bytes = get_object(moto, bucket, key).await.unwrap_or_default();
        for line in bytes.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let v: serde_json::Value = serde_json::from_slice(line).expect("a journal line");
            rows.push(v["row"].as_u64().expect("a row id"));
        }
    }
    (rows, keys.len())
}

/// A job of `n` rows in a bucket of its own (`in.jsonl` → `out.parquet`),
/// `latency_ms` a call, `concurrency` calls at a time.
struct BucketJob {
    f: Fixture,
    bucket: String,
    args: Vec<String>,
}

impl BucketJob {
    async fn new(moto: &Moto, name: &str, n: usize, latency_ms: u64, concurrency: usize) -> Self {
        let f = Fixture::new(SimConfig {
            latency_ms,
            ..SimConfig::default()
        })
        .await;
        let bucket = unique_bucket(name);
        create_bucket(moto, &bucket).await;
        put_object(moto, &bucket, "in.jsonl", jsonl_bytes(n)).await;
        let url = f.openai_url();
        let input = format!("s3://{bucket}/in.jsonl");
        let out = format!("s3://{bucket}/out.parquet");
        let c = concurrency.to_string();
        let mut args = run_args(&url, &input, &out);
        args.extend(["-q", "--batch-rows", "32", "--concurrency", &c]);
        let args = args.into_iter().map(String::from).collect();
        BucketJob { f, bucket, args }
    }

    /// The job's command on a machine of its own: HOME, working and
    /// temporary folder `f/machine`; only the bucket is shared.
    fn command(&self, moto: &Moto, machine: &str) -> Command {
        aiq_cmd(&self.f.path(machine), &refs(&self.args), &s3_env(moto))
    }

    /// The job started on `machine`, returned still running once its
    /// manifest is in the bucket (its output was checked and it holds it).
    async fn start(&self, moto: &Moto, machine: &str) -> Child {
        let child = self.command(moto, machine).spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while list(moto, &self.bucket, "out.parquet.aiq/manifest.json")
            .await
            .is_empty()
        {
            assert!(Instant::now() < deadline, "no manifest after 60 s");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        child
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_nine_then_resume_from_another_machine() {
    let moto = Moto::shared();
    // Every call takes at least `latency_ms`: with `concurrency` calls at a
    // time the first run lasts at least n·latency/concurrency = 10 s, far
    // longer than the few chunks it is killed after.
    let latency_ms = 50;
    let concurrency = 4;
    let n = 800;
    let job = BucketJob::new(moto, "resume", n, latency_ms, concurrency).await;
    let (f, bucket) = (&job.f, &job.bucket);
    let chunks = "out.parquet.aiq/journal/";

    // The journal reaches the bucket while the job runs, a chunk at a time:
    // wait (by progress, bounded) for the third, and kill the job just after.
    let mut child = job.command(moto, "machine-a").spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while list(moto, bucket, chunks).await.len() < 3 {
        if let Some(status) = child.try_wait().unwrap() {
            let o = child.wait_with_output().unwrap();
            panic!(
                "the job ended ({status}) before 3 journal chunks reached the bucket: {}",
                stderr(&o)
            );
        }
        assert!(
            Instant::now() < deadline,
            "fewer than 3 journal chunks in the bucket after 60 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(
        get_object(moto, bucket, "out.parquet").await.is_none(),
        "no output from a killed job"
    );
    let (saved, n_chunks) = journaled_rows(moto, bucket, chunks).await;
    assert!(n_chunks >= 3 && !saved.is_empty());
    let paid_first = f.sim.stats().ok;
    assert!(paid_first < n as u64, "the job was killed mid-run");

    // Another working folder, HOME and temporary folder: only the bucket is shared.
    let o = output(job.command(moto, "machine-b")).await;
    assert_ok(&o);
    assert_output(f, moto, bucket, "out.parquet", n).await;
    let stats = f.sim.stats();
    let prompt = |i: u64| format!("row-{i} says the product is fine");
    assert_eq!(stats.ok_by_prompt.len(), n);
    // What the bucket held is never paid for again.
    for &row in &saved {
        assert_eq!(
            stats.ok_by_prompt[&prompt(row)],
            1,
            "row {row} was in the bucket"
        );
    }
    // Paid twice: the answers that had not reached the bucket when the job
    // was killed, which is at most the calls in flight plus the answers
    // since the last chunk. The job was killed right after a chunk, so less
    // than a second's: at most `concurrency` calls per `latency_ms`.
    let paid_twice = stats.ok_by_prompt.values().filter(|&&c| c > 1).count() as u64;
    // (The answers the first run got but had not saved are all in it.)
    assert!(paid_twice >= paid_first.saturating_sub(saved.len() as u64));
    let per_second = concurrency as u64 * 1000 / latency_ms;
    eprintln!(
        "killed after {n_chunks} chunks holding {} rows; {paid_first} answered; {paid_twice} paid twice",
        saved.len()
    );
    assert!(
        paid_twice <= concurrency as u64 + per_second,
        "{paid_twice} rows paid twice; in flight {concurrency}, a second of answers ≤ {per_second}"
    );
}

/// The bucket's copy of the journal trails the answers by at most 64 of
/// them at modest rates (a quarter-second's at higher ones), not by a
/// second's: a kill -9 at the worst moment, when the bucket lags the most,
/// costs that plus the calls in flight. The job is killed as soon as the
/// bucket lags the local journal by 100 answers (a once-a-second mirror
/// does at these ~160 answers a second), or once 600 answers are in.
#[tokio::test(flavor = "multi_thread")]
async fn a_kill_at_the_worst_moment_costs_at_most_64_answers_besides_those_in_flight() {
    let moto = Moto::shared();
    let concurrency = 4;
    let n = 1200;
    let job = BucketJob::new(moto, "lag", n, 25, concurrency).await;
    let (f, bucket) = (&job.f, &job.bucket);
    let chunks = "out.parquet.aiq/journal/";
    let home = f.path("machine-a");
    let mut child = job.command(moto, "machine-a").spawn().unwrap();
    // The job's local journal, in its scratch folder under TMPDIR (= home).
    let local = || {
        std::fs::read_dir(&home)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("aiq-"))
            .map(|e| line_count(&e.path().join("out.parquet.aiq/journal.jsonl")))
            .sum::<usize>()
    };
    let mut in_bucket: std::collections::HashMap<String, usize> = Default::default();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut worst_lag = 0;
    loop {
        let here = local();
        for key in list(moto, bucket, chunks).await {
            if !in_bucket.contains_key(&key) {
                let bytes = get_object(moto, bucket, &key).await.unwrap_or_default();
                let lines = bytes
                    .split(|&b| b == b'\n')
                    .filter(|l| !l.is_empty())
                    .count();
                in_bucket.insert(key, lines);
            }
        }
        let lag = here.saturating_sub(in_bucket.values().sum());
        worst_lag = worst_lag.max(lag);
        if lag >= 100 || here >= 600 {
            break;
        }
        if let Some(status) = child.try_wait().unwrap() {
            let o = child.wait_with_output().unwrap();
            panic!(
                "the job ended ({status}) before it could be killed: {}",
                stderr(&o)
            );
        }
        assert!(Instant::now() < deadline, "{here} answers after 60 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    let o = output(job.command(moto, "machine-b")).await;
    assert_ok(&o);
    assert_output(f, moto, bucket, "out.parquet", n).await;
    let stats = f.sim.stats();
    let paid_twice = stats.ok_by_prompt.values().filter(|&&c| c > 1).count();
    eprintln!("worst lag seen {worst_lag}; {paid_twice} rows paid twice");
    // A quarter-second at ≤ 160 answers a second is 40, under 64; 24 more
    // for the answers landing while one chunk is uploaded.
    let bound = concurrency + 64 + 24;
    assert!(
        paid_twice <= bound,
        "{paid_twice} rows paid twice (the bucket lagged by up to {worst_lag}); at most {bound} may be"
    );
}

/// Fixing a line in the input of a job whose finished parts are in the
/// bucket: the part holding an edited row is redone, and removed from the
/// bucket too (left there beside its redone rows, a later resume could
/// take it), and no answer is bought twice.
#[tokio::test(flavor = "multi_thread")]
async fn an_edited_input_redoes_its_parts_in_the_bucket() {
    let moto = Moto::shared();
    let f = Fixture::new(SimConfig::default()).await;
    let bucket = new_bucket(moto, "edit").await;
    let mut rows = rows(30, 0);
    rows[10]["text"] = json!("[[sim:400]] stop here");
    rows[20]["text"] = json!("[[sim:400]] stop here too");
    let jsonl = |rows: &[serde_json::Value]| -> Vec<u8> {
        rows.iter()
            .map(|r| r.to_string() + "\n")
            .collect::<String>()
            .into_bytes()
    };
    put_object(moto, &bucket, "in.jsonl", jsonl(&rows)).await;
    let url = f.openai_url();
    let out = format!("s3://{bucket}/out.parquet");
    let env = s3_env(moto);
    // The fixed input is written as a new object (moto refuses to overwrite
    // one); where the input lives is not part of what is resumed.
    let run = |machine: &str, key: &str| {
        let input = format!("s3://{bucket}/{key}");
        let mut args = run_args(&url, &input, &out);
        args.extend(["-q", "--fail-on-error", "--concurrency", "1"]);
        args.extend(["--batch-rows", "4"]);
        output(aiq_cmd(&f.path(machine), &args, &env))
    };
    let o = run("machine-a", "in.jsonl").await;
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    let parts = || list(moto, &bucket, "out.parquet.aiq/parts/");
    let stale = "out.parquet.aiq/parts/part-000000000000-000000000008.parquet";
    assert_eq!(parts().await, [stale], "rows 0..8 are in a finished part");

    // Row 2 (in that part) edited, row 10 fixed: the job goes on to row 20.
    rows[10]["text"] = json!("row-10 is fixed");
    rows[2]["text"] = json!("row-2 was edited too");
    put_object(moto, &bucket, "fixed.jsonl", jsonl(&rows)).await;
    let o = run("machine-b", "fixed.jsonl").await;
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    assert_eq!(
        parts().await,
        ["out.parquet.aiq/parts/part-000000000000-000000000020.parquet"],
        "the stale part is gone from the bucket"
    );

    rows[20]["text"] = json!("row-20 is fixed");
    put_object(moto, &bucket, "fixed-again.jsonl", jsonl(&rows)).await;
    let o = run("machine-c", "fixed-again.jsonl").await;
    assert_ok(&o);
    assert_output(&f, moto, &bucket, "out.parquet", rows.len()).await;
    let (_, got) = read_rows(&f.path(&format!("{bucket}-out.parquet")));
    for (i, row) in got.iter().enumerate() {
        let want = format!("echo: {}", rows[i]["text"].as_str().unwrap());
        assert_eq!(row["result"], json!(want), "row {i}");
    }
    let stats = f.sim.stats();
    assert_eq!(stats.ok, 31, "30 rows and the first text of row 2");
    assert!(
        stats.ok_by_prompt.values().all(|&c| c == 1),
        "no row paid twice"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_output_written_meanwhile_is_not_overwritten() {
    // Another run commits the output while this one works: this one's
    // conditional copy (If-None-Match) fails, and it keeps its answers.
    // 200 rows at 20 ms a call, 2 at a time: at least 2 s.
    let moto = Moto::shared();
    let job = BucketJob::new(moto, "race", 200, 20, 2).await;
    let bucket = &job.bucket;
    let child = job.start(moto, "home").await;
    let theirs = b"another run's output".to_vec();
    put_object(moto, &bucket, "out.parquet", theirs.clone()).await;
    let o = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    assert_exit(&o, 1, &["written by another run"]);
    assert_eq!(get_object(moto, &bucket, "out.parquet").await, Some(theirs));
    assert!(!list(moto, &bucket, "out.parquet.aiq/journal/")
        .await
        .is_empty());
}

/// A proxy in front of moto that answers every `every`-th request with 503
/// SlowDown (S3's throttling) instead of passing it on: a flaky store.
struct Flaky {
    url: String,
    refused: Arc<std::sync::atomic::AtomicU64>,
}

async fn flaky(moto: &Moto, every: u64) -> Flaky {
    use axum::body::{to_bytes, Body};
    use axum::http::{Request, Response, StatusCode};
    use std::sync::atomic::{AtomicU64, Ordering};
    let seen = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let (upstream, client) = (moto.url.clone(), reqwest::Client::new());
    let counts = (seen, refused.clone());
    let app = axum::Router::new().fallback(move |req: Request<Body>| {
        let (upstream, client, (seen, refused)) = (upstream.clone(), client.clone(), counts.clone());
        async move {
            if seen.fetch_add(1, Ordering::Relaxed) % every == every - 1 {
                refused.fetch_add(1, Ordering::Relaxed);
                let body = "<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>";
                return Response::builder()
                    .status(StatusCode::SERVICE_UNAVAILABLE)
                    .body(Body::from(body))
                    .unwrap();
            }
            let (parts, body) = req.into_parts();
            let body = to_bytes(body, usize::MAX).await.unwrap();
            let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
            let mut forward = client.request(parts.method, format!("{upstream}{path}"));
            for (name, value) in &parts.headers {
                if name != "host" {
                    forward = forward.header(name, value);
                }
            }
            let answer = forward.body(body).send().await.unwrap();
            let mut out = Response::builder().status(answer.status());
            for (name, value) in answer.headers() {
                out = out.header(name, value);
            }
            out.body(Body::from(answer.bytes().await.unwrap())).unwrap()
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    Flaky { url, refused }
}

#[tokio::test(flavor = "multi_thread")]
async fn transient_store_errors_are_retried() {
    let n = 300;
    let (moto, f, bucket) = with_inputs("flaky", n).await;
    let proxy = flaky(moto, 3).await;
    let mut env = s3_env(moto);
    env.retain(|(k, _)| *k != "AWS_ENDPOINT_URL");
    env.push(("AWS_ENDPOINT_URL", proxy.url.clone()));
    both_inputs_to_parquet(&f, moto, &bucket, &env, n).await;
    // Every third request of each job was refused, and retried.
    assert!(proxy.refused.load(std::sync::atomic::Ordering::Relaxed) >= 6);
}

#[tokio::test(flavor = "multi_thread")]
async fn errors_exit_2_before_any_request_naming_the_url() {
    let moto = Moto::shared();
    let f = Fixture::new(SimConfig::default()).await;
    let bucket = new_bucket(moto, "err").await;
    put_object(moto, &bucket, "in.parquet", parquet_bytes(5)).await;
    let url = f.openai_url();
    let good_in = format!("s3://{bucket}/in.parquet");
    let good_out = format!("s3://{bucket}/out.parquet");
    let local_in = f.write_jsonl("in.jsonl", &rows(5, 0));
    let local_in = local_in.to_str().unwrap().to_string();
    // A closed port: no metadata service, so no instance role either.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let ok_env = s3_env(moto);
    let no_creds: Vec<(&str, String)> = s3_env(moto)
        .into_iter()
        .filter(|(k, _)| !k.starts_with("AWS_ACCESS") && !k.starts_with("AWS_SECRET"))
        .chain([("AWS_METADATA_ENDPOINT", format!("http://{closed}"))])
        .collect();
    let missing_in = format!("s3://{bucket}/nope.parquet");
    let no_bucket_in = "s3://aiq-no-such-bucket/in.parquet".to_string();
    let missing_jsonl = format!("s3://{bucket}/nope.jsonl");
    let no_bucket_jsonl = "s3://aiq-no-such-bucket/in.jsonl".to_string();
    let no_bucket_out = "s3://aiq-no-such-bucket/out.parquet".to_string();
    let bare = format!("s3://{bucket}");
    // A presigned URL: its signature must not be shown.
    let presigned = format!(
        "{}/{bucket}/in.parquet?X-Amz-Signature={SECRET_KEY}",
        moto.url
    );
    let presigned_shown = format!("{}/{bucket}/in.parquet?…", moto.url);
    // (what, input, output, environment, the URL the message names, what it says)
    let cases: Vec<(&str, &str, &str, &[(&str, String)], &str, &str)> = vec![
        (
            "malformed input URL",
            "s3://no bucket/in.parquet",
            &good_out,
            &ok_env,
            "s3://no bucket/in.parquet",
            "",
        ),
        (
            "malformed output URL",
            &local_in,
            "s3:///out.parquet",
            &ok_env,
            "s3:///out.parquet",
            "",
        ),
        (
            "credentials in the URL",
            &presigned,
            &good_out,
            &ok_env,
            &presigned_shown,
            "query string",
        ),
        (
            "output names a bucket",
            &local_in,
            &bare,
            &ok_env,
            &bare,
            "not an object",
        ),
        (
            "missing input object",
            &missing_in,
            &good_out,
            &ok_env,
            &missing_in,
            "no such object",
        ),
        (
            "missing input bucket",
            &no_bucket_in,
            &good_out,
            &ok_env,
            &no_bucket_in,
            "NoSuchBucket",
        ),
        (
            "missing input object (JSON Lines)",
            &missing_jsonl,
            &good_out,
            &ok_env,
            &missing_jsonl,
            "NoSuchKey",
        ),
        (
            "missing input bucket (JSON Lines)",
            &no_bucket_jsonl,
            &good_out,
            &ok_env,
            &no_bucket_jsonl,
            "NoSuchBucket",
        ),
        (
            "missing output bucket",
            &local_in,
            &no_bucket_out,
            &ok_env,
            &no_bucket_out,
            "NoSuchBucket",
        ),
        (
            "no credentials (input)",
            &good_in,
            &good_out,
            &no_creds,
            &good_in,
            "no credentials",
        ),
        (
            "no credentials (output)",
            &local_in,
            &good_out,
            &no_creds,
            &good_out,
            "no credentials",
        ),
    ];
    for (what, input, out, env, named, expect) in cases {
        let args = run_args(&url, input, out);
        let o = output(aiq_cmd(&f.path("home"), &args, env)).await;
        let err = stderr(&o);
        assert_eq!(code(&o), 2, "{what}: {err}");
        assert!(
            err.contains(named),
            "{what}: the message should name {named}: {err}"
        );
        assert!(
            err.contains(expect),
            "{what}: expected `{expect}` in: {err}"
        );
        assert_no_secret(&o);
    }
    assert_eq!(f.sim.stats().requests, 0, "no request was sent");
    assert!(list(moto, &bucket, "out.parquet").await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn access_denied_exits_2_naming_the_url() {
    // moto checks signatures once this many requests have been served
    // (creating the bucket and uploading the inputs); our key is not one it
    // issued, so every request of the job is refused with 403.
    let moto = Moto::start(&[("INITIAL_NO_AUTH_ACTION_COUNT", "3")]);
    let f = Fixture::new(SimConfig::default()).await;
    let bucket = unique_bucket("denied");
    create_bucket(&moto, &bucket).await;
    put_object(&moto, &bucket, "in.parquet", parquet_bytes(5)).await;
    put_object(&moto, &bucket, "in.jsonl", jsonl_bytes(5)).await;
    let url = f.openai_url();
    let local_in = f.write_jsonl("in.jsonl", &rows(5, 0));
    for (input, out, named) in [
        (
            format!("s3://{bucket}/in.parquet"),
            f.path("out.parquet"),
            format!("s3://{bucket}/in.parquet"),
        ),
        (
            format!("s3://{bucket}/in.jsonl"),
            f.path("out.parquet"),
            format!("s3://{bucket}/in.jsonl"),
        ),
        (
            local_in.display().to_string(),
            PathBuf::from(format!("s3://{bucket}/out.parquet")),
            format!("s3://{bucket}/out.parquet"),
        ),
    ] {
        let out = out.display().to_string();
        let args = run_args(&url, &input, &out);
        let o = output(aiq_cmd(&f.path("home"), &args, &s3_env(&moto))).await;
        assert_exit(&o, 2, &[&named, "403"]);
        assert_no_secret(&o);
    }
    assert_eq!(f.sim.stats().requests, 0, "no request was sent");
}

/// A writer lease object as another run leaves it: held by `host`/`pid`,
/// lapsing `expires_in` seconds from now (negative: already lapsed).
async fn put_lease(moto: &Moto, bucket: &str, key: &str, host: &str, expires_in: i64) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let lease = json!({"host": host, "pid": 4242, "since": now - 60, "expires": now + expires_in});
    // Signed: moto refuses an unsigned write over an object a signed one made.
    use object_store::ObjectStoreExt;
    signed(moto, bucket)
        .put(&key.into(), lease.to_string().into_bytes().into())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bucket_output_has_one_writer_and_a_lapsed_lease_is_taken_over() {
    let n = 50;
    let (moto, f, bucket) = with_inputs("lease", n).await;
    let url = f.openai_url();
    let input = format!("s3://{bucket}/in/reviews.jsonl");
    let out = format!("s3://{bucket}/out.parquet");
    let args = run_args(&url, &input, &out);
    let env = s3_env(moto);
    let lease = "out.parquet.aiq/writer.lock";

    // Another machine's run holds the output: refused at once, named.
    put_lease(moto, &bucket, lease, "elsewhere.invalid", 600).await;
    let o = output(aiq_cmd(&f.path("home"), &args, &env)).await;
    assert_exit(&o, 2, &["process 4242 on host elsewhere.invalid"]);
    assert_eq!(f.sim.stats().requests, 0);

    // That run died and its lease lapsed: taken over, and let go at the end.
    put_lease(moto, &bucket, lease, "elsewhere.invalid", -1).await;
    let o = output(aiq_cmd(&f.path("home"), &args, &env)).await;
    assert_ok(&o);
    assert_output(&f, moto, &bucket, "out.parquet", n).await;
    assert!(list(moto, &bucket, "out.parquet.aiq/").await.is_empty());
    assert_eq!(f.sim.stats().requests, n as u64);

    // The same job again: the output says it is complete; nothing is sent.
    let o = output(aiq_cmd(&f.path("home"), &args, &env)).await;
    assert_ok(&o);
    assert!(stderr(&o).contains("is complete"), "{}", stderr(&o));
    assert_eq!(f.sim.stats().requests, n as u64);
    // Unless told.
    let mut again = args.clone();
    again.push("--overwrite");
    let o = output(aiq_cmd(&f.path("home"), &again, &env)).await;
    assert_ok(&o);
    assert_eq!(f.sim.stats().requests, 2 * n as u64);
    assert_output(&f, moto, &bucket, "out.parquet", n).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_run_on_a_bucket_output_stops_at_once() {
    let moto = Moto::shared();
    let n = 200;
    let job = BucketJob::new(moto, "two-writers", n, 20, 2).await;
    let (f, bucket) = (&job.f, &job.bucket);
    let first = job.start(moto, "a").await;
    let o = output(job.command(moto, "b")).await;
    assert_exit(&o, 2, &[&format!("process {} on host", first.id())]);
    let o = tokio::task::spawn_blocking(move || first.wait_with_output().unwrap())
        .await
        .unwrap();
    assert_ok(&o);
    assert_output(&f, moto, &bucket, "out.parquet", n).await;
    assert_eq!(f.sim.stats().ok, n as u64, "every row bought once");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_openai_batch_file_in_a_bucket_is_read_like_any_input() {
    let moto = Moto::shared();
    let f = Fixture::new(SimConfig::default()).await;
    let n = 20;
    let bucket = unique_bucket("batch-in");
    create_bucket(moto, &bucket).await;
    let lines: String = (0..n)
        .map(|i| {
            json!({"custom_id": format!("req-{i}"), "method": "POST", "url": "/v1/chat/completions",
                   "body": {"model": "gpt-x", "messages": [{"role": "user", "content": format!("question {i}")}]}})
            .to_string()
                + "\n"
        })
        .collect();
    put_object(moto, &bucket, "in/batch.jsonl", lines.into_bytes()).await;
    let url = f.openai_url();
    let input = format!("s3://{bucket}/in/batch.jsonl");
    let out = format!("s3://{bucket}/out.parquet");
    let args = [
        "run",
        "--input",
        &input,
        "--output",
        &out,
        "--endpoint",
        &url,
        "--model",
        "m",
        "--input-format",
        "openai-batch",
    ];
    let o = output(aiq_cmd(&f.path("home"), &args, &s3_env(moto))).await;
    assert_ok(&o);
    let bytes = get_object(moto, &bucket, "out.parquet")
        .await
        .expect("output object");
    let path = f.path("batch-out.parquet");
    std::fs::write(&path, bytes).unwrap();
    let (_, rows) = read_rows(&path);
    assert_eq!(rows.len(), n);
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row["custom_id"], json!(format!("req-{i}")));
        assert!(row["error_message"].is_null(), "{row:?}");
        let reply: serde_json::Value =
            serde_json::from_str(row["result"].as_str().unwrap()).unwrap();
        assert_eq!(
            reply["choices"][0]["message"]["content"],
            json!(format!("echo: question {i}"))
        );
    }
    assert_eq!(f.sim.stats().ok, n as u64);
}

/// A run whose writer lease another run takes over stops sending once its
/// heartbeat sees it (exit 1, naming the new holder); every call it made
/// is journaled in the bucket, and the job resumes from there.
#[tokio::test(flavor = "multi_thread")]
async fn a_run_that_loses_its_lease_stops_and_resumes_later() {
    let moto = Moto::shared();
    // 40 calls a second for 1000 rows: 25 s, longer than the heartbeat
    // (10 s) that notices the takeover.
    let n = 1000;
    let job = BucketJob::new(moto, "lease-lost", n, 50, 2).await;
    let (f, bucket) = (&job.f, &job.bucket);
    let lease = "out.parquet.aiq/writer.lock";
    let first = job.start(moto, "a").await;
    put_lease(moto, bucket, lease, "elsewhere.invalid", 600).await;
    let o = tokio::task::spawn_blocking(move || first.wait_with_output().unwrap())
        .await
        .unwrap();
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    assert!(
        stderr(&o).contains("lease")
            && stderr(&o).contains("process 4242 on host elsewhere.invalid"),
        "{}",
        stderr(&o)
    );
    assert!(get_object(moto, bucket, "out.parquet").await.is_none());
    // Every call sent was answered and its answer journaled in the bucket:
    // nothing was sent after the stop and left behind.
    let sent = f.sim.stats().requests;
    assert!(sent < n as u64, "stopped early: {sent}");
    let (saved, _) = journaled_rows(moto, bucket, "out.parquet.aiq/journal/").await;
    assert_eq!(saved.len() as u64, sent);
    // The other run is gone (its lease lapsed): the job resumes, each row
    // bought once.
    put_lease(moto, bucket, lease, "elsewhere.invalid", -1).await;
    let o = output(job.command(moto, "a")).await;
    assert_ok(&o);
    assert_output(f, moto, bucket, "out.parquet", n).await;
    assert_eq!(f.sim.stats().ok, n as u64, "every row bought once");
}

/// Scratch folders that killed runs left in `$TMPDIR` go at the next run
/// on a bucket output; a live run's, and anything else, stay.
#[tokio::test(flavor = "multi_thread")]
async fn scratch_folders_of_killed_runs_are_removed() {
    let moto = Moto::shared();
    let f = Fixture::new(SimConfig::default()).await;
    let bucket = bucket_with_inputs(moto, "scratch", 5).await;
    let home = f.path("home");
    // A process that has ended: its pid names nothing now.
    let mut gone = Command::new("true").spawn().unwrap();
    gone.wait().unwrap();
    let stale = home.join(format!("aiq-{}-0123456789abcdef", gone.id()));
    let live = home.join(format!("aiq-{}-0123456789abcdef", std::process::id()));
    let other = home.join("aiq-notes");
    for dir in [&stale, &live, &other] {
        std::fs::create_dir_all(dir.join("journal")).unwrap();
        std::fs::write(dir.join("journal/x.jsonl"), "{}\n").unwrap();
    }
    let url = f.openai_url();
    let input = format!("s3://{bucket}/in/reviews.jsonl");
    let out = format!("s3://{bucket}/out.parquet");
    let o = output(aiq_cmd(&home, &run_args(&url, &input, &out), &s3_env(moto))).await;
    assert_ok(&o);
    assert!(!stale.exists(), "a killed run's scratch folder is removed");
    assert!(live.exists() && other.exists());
}
