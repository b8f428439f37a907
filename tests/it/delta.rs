//! Delta Lake tables in and out (`--output-format delta`, `--input-format
//! delta`), checked from the other side with delta-rs's Python package and
//! Polars from the test venv (`AIQ_TEST_PYTHON`, tests/requirements.txt).

use std::path::Path;
use std::process::Command;

use aiq::simulator::SimConfig;
use serde_json::{json, Value};

use super::util::*;

/// Runs `script` with the test venv's Python, `args` as `sys.argv[1:]`,
/// and returns what it printed as JSON (its last line).
#[track_caller]
fn python(script: &str, args: &[&str]) -> Value {
    let python = std::env::var("AIQ_TEST_PYTHON").unwrap_or_else(|_| {
        panic!(
            "AIQ_TEST_PYTHON is not set: run tests/all.sh, which installs deltalake and polars \
             into a venv and sets it"
        )
    });
    let out = Command::new(python)
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let last = text.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| panic!("python printed {text:?}: {e}"))
}

/// The `id` of each row READ_BACK (or READ_BACK_S3) printed, in order.
fn ids_of(rows: &Value) -> Vec<i64> {
    let rows = rows.as_array().expect("rows");
    rows.iter().filter_map(|r| r["id"].as_i64()).collect()
}

/// What Python's deltalake and Polars see in the table at `uri`: every row
/// (sorted by id), the Arrow types, and the history's operations.
const READ_BACK: &str = r#"
import json, sys
from deltalake import DeltaTable
import polars as pl
dt = DeltaTable(sys.argv[1])
t = dt.to_pyarrow_table()
rows = sorted(t.to_pylist(), key=lambda r: r["id"])
types = {f.name: str(f.type).replace("large_string", "string").replace("string_view", "string") for f in t.schema}
history = [h["operation"] for h in reversed(dt.history())]
p = pl.read_delta(sys.argv[1])
print(json.dumps({"rows": rows, "types": types, "history": history,
                  "version": dt.version(), "polars_rows": p.height,
                  "polars_columns": p.columns}, default=str))
"#;

/// A delta table written by the Python package: version 0 with `v0` rows,
/// then an overwrite with `v1` rows (so version 0 differs from the latest).
const WRITE_TWO_VERSIONS: &str = r#"
import json, sys
import pyarrow as pa
from deltalake import write_deltalake
uri, n0, n1 = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def rows(n, tag):
    return pa.table({"id": pa.array(range(n), pa.int64()),
                     "text": [f"{tag} row {i}" for i in range(n)]})
write_deltalake(uri, rows(n0, "first"))
write_deltalake(uri, rows(n1, "second"), mode="overwrite")
print(json.dumps({"ok": True}))
"#;

/// A merge into a Delta table by the input's `id`.
const MERGE_BY_ID: [&str; 6] = [
    "--output-format",
    "delta",
    "--write-mode",
    "merge",
    "--merge-key",
    "id",
];

fn text_rows(tag: &str, ids: std::ops::Range<usize>) -> Vec<Value> {
    ids.map(|i| json!({"id": i, "text": format!("{tag} {i}")}))
        .collect()
}

fn types_of(v: &Value) -> Vec<(String, String)> {
    let mut t: Vec<(String, String)> = v["types"]
        .as_object()
        .expect("types")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
        .collect();
    t.sort();
    t
}

#[tokio::test]
async fn a_delta_output_reads_back_in_python_and_polars_with_the_parquet_outputs_columns() {
    let fx = Fixture::new(SimConfig::default()).await;
    let input = fx.write_jsonl("in.jsonl", &text_rows("review", 0..12));
    let table = fx.path("scores");
    let out = fx
        .score(&input, &table, &["--output-format", "delta"])
        .await;
    assert_ok(&out);

    // The same job to Parquet: the table has its columns, with its types.
    let parquet = fx.path("scores.parquet");
    assert_ok(&fx.score(&input, &parquet, &[]).await);
    let from_parquet = python(
        r#"
import json, sys, pyarrow.parquet as pq
t = pq.read_table(sys.argv[1])
print(json.dumps({"types": {f.name: str(f.type).replace("large_string", "string") for f in t.schema}}))
"#,
        &[parquet.to_str().unwrap()],
    );

    let seen = python(READ_BACK, &[table.to_str().unwrap()]);
    assert_eq!(types_of(&seen), types_of(&from_parquet));
    let rows = seen["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 12);
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row["id"], json!(i));
        assert_eq!(row["text"], json!(format!("review {i}")));
        assert!(
            row["result"].as_str().is_some_and(|r| !r.is_empty()),
            "{row}"
        );
        assert!(row["error_message"].is_null(), "{row}");
    }
    assert_eq!(seen["polars_rows"], json!(12));
    assert_eq!(seen["history"], json!(["WRITE"]));
    assert!(
        !fx.path("scores.aiq").exists(),
        "the job's state goes once the table has its rows"
    );

    // A later run with a new input column appends and adds the column.
    let more: Vec<Value> = (12..15)
        .map(|i| json!({"id": i, "text": format!("review {i}"), "lang": "en"}))
        .collect();
    let input2 = fx.write_jsonl("in2.jsonl", &more);
    assert_ok(
        &fx.score(&input2, &table, &["--output-format", "delta"])
            .await,
    );
    let seen = python(READ_BACK, &[table.to_str().unwrap()]);
    let rows = seen["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 15);
    assert!(rows[0]["lang"].is_null());
    assert_eq!(rows[14]["lang"], json!("en"));
    assert_eq!(seen["history"], json!(["WRITE", "WRITE"]));
    assert_eq!(seen["version"], json!(1));

    // --write-mode overwrite replaces the rows; version 1 stays readable.
    assert_ok(
        &fx.score(
            &input2,
            &table,
            &["--output-format", "delta", "--write-mode", "overwrite"],
        )
        .await,
    );
    let seen = python(READ_BACK, &[table.to_str().unwrap()]);
    assert_eq!(seen["rows"].as_array().map(Vec::len), Some(3));
    assert_eq!(seen["version"], json!(2));
}

#[tokio::test]
async fn aiq_reads_a_python_written_table_at_each_version() {
    let fx = Fixture::new(SimConfig::default()).await;
    let table = fx.path("source");
    python(WRITE_TWO_VERSIONS, &[table.to_str().unwrap(), "3", "5"]);
    let t = table.to_str().unwrap();
    for (flags, rows, tag) in [
        (vec!["--input-version", "0"], 3, "first"),
        (vec!["--input-version", "1"], 5, "second"),
        (vec![], 5, "second"),
    ] {
        let out = fx.path(&format!("out-{}.parquet", flags.join("")));
        let mut extra = vec!["--input-format", "delta"];
        extra.extend(flags.iter().copied());
        let o = fx.score(Path::new(t), &out, &extra).await;
        assert_ok(&o);
        let (_, got) = read_rows(&out);
        assert_eq!(got.len(), rows, "{flags:?}");
        let mut ids: Vec<i64> = got.iter().filter_map(|r| r["id"].as_i64()).collect();
        ids.sort();
        assert_eq!(ids, (0..rows as i64).collect::<Vec<_>>());
        assert!(got
            .iter()
            .all(|r| r["text"].as_str().is_some_and(|s| s.starts_with(tag))));
    }
    // A version the table does not have: exit 2, naming the table.
    let out = fx.path("none.parquet");
    let o = fx
        .score(
            Path::new(t),
            &out,
            &["--input-format", "delta", "--input-version", "7"],
        )
        .await;
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(stderr(&o).contains("source"), "{}", stderr(&o));
}

#[tokio::test]
async fn shards_of_a_delta_input_split_it_by_file_and_commit_to_one_table() {
    let fx = Fixture::new(SimConfig::default()).await;
    let source = fx.path("source");
    // Three appends: three files.
    python(
        r#"
import json, sys
import pyarrow as pa
from deltalake import write_deltalake
for k in range(3):
    write_deltalake(sys.argv[1], pa.table({"id": pa.array(range(k * 4, k * 4 + 4), pa.int64()),
                                            "text": [f"t {i}" for i in range(k * 4, k * 4 + 4)]}), mode="append")
print(json.dumps({"ok": True}))
"#,
        &[source.to_str().unwrap()],
    );
    let table = fx.path("scores");
    let shard = |k: &str| {
        fx.openai_command(
            &source,
            &table,
            &[
                "--prompt",
                "{{text}}",
                "--input-format",
                "delta",
                "--output-format",
                "delta",
                "--shard",
                k,
            ],
        )
    };
    let (a, b) = (shard("0/2"), shard("1/2"));
    // Both at once: each commits its own version; every row lands once.
    let (oa, ob) = tokio::join!(output(a), output(b));
    assert_ok(&oa);
    assert_ok(&ob);
    let seen = python(READ_BACK, &[table.to_str().unwrap()]);
    let ids = ids_of(&seen["rows"]);
    assert_eq!(ids, (0..12).collect::<Vec<_>>());
    assert_eq!(seen["history"], json!(["WRITE", "WRITE"]));
    assert_eq!(fx.sim.stats().requests, 12);
}

// The test thread blocks while it waits for the journal: the simulator
// needs a thread of its own.
#[tokio::test(flavor = "multi_thread")]
async fn the_same_shard_twice_at_once_is_refused_other_shards_are_not() {
    // Slow replies, one at a time: the first run is still going while the
    // others start (it has 3 of its 4 rows to go, 1.5 s).
    let fx = Fixture::new(SimConfig {
        latency_ms: 500,
        ..SimConfig::default()
    })
    .await;
    let input = fx.write_jsonl("in.jsonl", &text_rows("t", 0..8));
    let table = fx.path("scores");
    let args = |shard: &'static str| {
        vec![
            "--prompt",
            "{{text}}",
            "--output-format",
            "delta",
            "--shard",
            shard,
            "--concurrency",
            "1",
        ]
    };
    let mut first = fx.openai_command(&input, &table, &args("0/2"));
    let first = spawn_until_journaled(
        &mut first,
        &fx.path("scores.shard-0-of-2.aiq/journal.jsonl"),
        1,
    );
    let twice = output(fx.openai_command(&input, &table, &args("0/2"))).await;
    assert_eq!(code(&twice), 2, "{}", stderr(&twice));
    let other = output(fx.openai_command(&input, &table, &args("1/2"))).await;
    assert_ok(&other);
    let done = first.wait_with_output().expect("first ends");
    assert_ok(&done);
    let seen = python(READ_BACK, &[table.to_str().unwrap()]);
    assert_eq!(seen["rows"].as_array().map(Vec::len), Some(8));
}

// The test thread blocks while it waits for the journal: the simulator
// needs a thread of its own.
#[tokio::test(flavor = "multi_thread")]
async fn kill_9_mid_job_leaves_the_table_at_its_last_version_and_the_rerun_completes() {
    let fx = Fixture::new(SimConfig {
        latency_ms: 20,
        ..SimConfig::default()
    })
    .await;
    let table = fx.path("scores");
    let first = fx.write_jsonl("a.jsonl", &text_rows("a", 0..5));
    assert_ok(
        &fx.score(&first, &table, &["--output-format", "delta"])
            .await,
    );
    let input = fx.write_jsonl("b.jsonl", &text_rows("b", 5..205));
    let extra = [&PROMPT_TEXT[..], &MERGE_BY_ID, &["--concurrency", "2"]].concat();
    let mut cmd = fx.openai_command(&input, &table, &extra);
    let mut child = spawn_until_journaled(&mut cmd, &fx.path("scores.aiq/journal.jsonl"), 40);
    child.kill().expect("kill -9");
    child.wait().expect("reaped");
    let seen = python(READ_BACK, &[table.to_str().unwrap()]);
    assert_eq!(seen["version"], json!(0));
    assert_eq!(seen["rows"].as_array().map(Vec::len), Some(5));
    let sent_before = fx.sim.stats().requests;

    let out = output(fx.openai_command(&input, &table, &extra)).await;
    assert_ok(&out);
    let seen = python(READ_BACK, &[table.to_str().unwrap()]);
    assert_eq!(seen["rows"].as_array().map(Vec::len), Some(205));
    assert_eq!(seen["history"], json!(["WRITE", "MERGE"]));
    // The re-run paid only for what the journal did not hold, plus the
    // calls in flight when the job was killed.
    let total = fx.sim.stats().requests;
    assert!(
        total <= 5 + 200 + 2 && total - sent_before < 200 - 38,
        "sent {total} in all, {} after the kill",
        total - sent_before
    );
}

/// What READ_BACK prints, for a table in moto's S3.
const READ_BACK_S3: &str = r#"
import json, sys, os
from deltalake import DeltaTable
opts = {k: os.environ[k] for k in ["AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION"]}
opts.update({"AWS_ALLOW_HTTP": "true", "AWS_S3_ALLOW_UNSAFE_RENAME": "true"})
dt = DeltaTable(sys.argv[1], storage_options=opts)
rows = sorted(dt.to_pyarrow_table().to_pylist(), key=lambda r: r["id"])
print(json.dumps({"rows": rows, "history": [h["operation"] for h in reversed(dt.history())],
                  "version": dt.version()}, default=str), flush=True)
# Leave without the interpreter's teardown: with an S3 store, deltalake
# 1.6.6's runtime threads once aborted it ("terminate called without an
# active exception") after the answer was printed.
os._exit(0)
"#;

#[tokio::test]
async fn on_s3_two_shards_commit_to_one_table_that_python_and_aiq_read_back() {
    use super::object_store::{create_bucket, s3_env, unique_bucket, Moto};
    let moto = Moto::shared();
    let bucket = unique_bucket("delta");
    create_bucket(moto, &bucket).await;
    let env = s3_env(moto);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let fx = Fixture::new(SimConfig::default()).await;
    let input = fx.write_jsonl("in.jsonl", &text_rows("t", 0..30));
    let table = format!("s3://{bucket}/scores");
    let shard = |k: &'static str| {
        let mut cmd = fx.openai_command(
            &input,
            Path::new(&table),
            &[
                "--prompt",
                "{{text}}",
                "--output-format",
                "delta",
                "--shard",
                k,
            ],
        );
        cmd.envs(env.iter().copied());
        cmd
    };
    let (a, b) = tokio::join!(output(shard("0/2")), output(shard("1/2")));
    assert_ok(&a);
    assert_ok(&b);

    let mut py = Command::new(std::env::var("AIQ_TEST_PYTHON").expect("AIQ_TEST_PYTHON"));
    py.arg("-c")
        .arg(READ_BACK_S3)
        .arg(&table)
        .envs(env.iter().copied());
    let out = py.output().expect("python runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: Value = serde_json::from_slice(
        out.stdout
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .last()
            .unwrap_or_default(),
    )
    .expect("json");
    let ids = ids_of(&seen["rows"]);
    assert_eq!(ids, (0..30).collect::<Vec<_>>());
    assert_eq!(seen["history"], json!(["WRITE", "WRITE"]));
    assert_eq!(fx.sim.stats().requests, 30);

    // aiq reads it back from the bucket in `aiq sql`, where Databricks'
    // way to name a table by its location works.
    let query = format!("SELECT count(*) AS n FROM delta.`{table}`");
    let back = fx.path("back.parquet");
    let o = fx
        .aiq(&["sql", &query, "--output", back.to_str().unwrap()], &env)
        .await;
    assert_ok(&o);
    assert_eq!(read_rows(&back).1[0]["n"], json!(30));
}

#[tokio::test]
async fn a_merge_rerun_sends_exactly_the_changed_and_new_rows() {
    let fx = Fixture::new(SimConfig::default()).await;
    let table = fx.path("scores");
    let merge = [&MERGE_BY_ID[..], &["--price-in", "3", "--price-out", "15"]].concat();
    let first = fx.write_jsonl("day1.jsonl", &text_rows("review", 0..20));
    assert_ok(&fx.score(&first, &table, &merge).await);
    assert_eq!(fx.sim.stats().requests, 20);

    // Day 2: the same rows, two of them edited, and five new ones.
    let mut day2 = text_rows("review", 0..25);
    day2[3]["text"] = json!("review 3, edited");
    day2[7]["text"] = json!("review 7, edited");
    let second = fx.write_jsonl("day2.jsonl", &day2);
    let dry = fx
        .score(&second, &table, &[&merge[..], &["--dry-run"]].concat())
        .await;
    assert_ok(&dry);
    let report = String::from_utf8_lossy(&dry.stdout);
    assert!(
        report.contains("25 (7 to send") && report.contains("18 answered by the table"),
        "{report}"
    );
    assert_eq!(fx.sim.stats().requests, 20, "a dry run sends nothing");

    let out = fx.score(&second, &table, &merge).await;
    assert_ok(&out);
    assert_eq!(
        fx.sim.stats().requests,
        27,
        "exactly the 2 changed and 5 new rows"
    );

    let seen = python(READ_BACK, &[table.to_str().unwrap()]);
    let rows = seen["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 25, "one row per key");
    assert_eq!(rows[3]["text"], json!("review 3, edited"));
    assert_eq!(rows[7]["text"], json!("review 7, edited"));
    assert_eq!(rows[24]["text"], json!("review 24"));
    assert!(rows.iter().all(|r| r["result"].as_str().is_some()));
    assert_eq!(seen["history"], json!(["WRITE", "MERGE"]));

    // The summary says what the table saved (-q is off for this run).
    // The same requests as `score` makes: its model, without -q.
    let mut args = fx.run_args(&second, &table);
    args.retain(|a| a != "-q");
    if let Some(model) = args.iter().position(|a| a == "--model") {
        args[model + 1] = "sim-model".into();
    }
    args.extend(merge.iter().map(|s| s.to_string()));
    let third = fx.aiq(&refs(&args), &[("OPENAI_API_KEY", TOKEN)]).await;
    assert_ok(&third);
    assert!(
        stderr(&third).contains("saved      25 calls answered by the table"),
        "{}",
        stderr(&third)
    );
    assert_eq!(fx.sim.stats().requests, 27);
}

#[tokio::test]
async fn a_first_write_prints_no_error_line() {
    let fx = Fixture::new(SimConfig::default()).await;
    let input = fx.write_jsonl("in.jsonl", &text_rows("review", 0..3));
    // delta-rs's kernel logs a harmless ERROR while it finds there is no
    // table yet; users read ERROR as failure.
    for (name, mode) in [("appended", "append"), ("merged", "merge")] {
        let mut extra = vec!["--output-format", "delta", "--write-mode", mode];
        if mode == "merge" {
            extra.extend(["--merge-key", "id"]);
        }
        let out = fx.score(&input, &fx.path(name), &extra).await;
        assert_ok(&out);
        assert!(!stderr(&out).contains("ERROR"), "{mode}: {}", stderr(&out));
    }
}

#[tokio::test]
async fn the_same_append_run_again_is_complete_and_appends_nothing() {
    let fx = Fixture::new(SimConfig::default()).await;
    let input = fx.write_jsonl("in.jsonl", &text_rows("review", 0..5));
    let table = fx.path("scores");
    let append = ["--output-format", "delta"];
    assert_ok(&fx.score(&input, &table, &append).await);
    assert_eq!(fx.sim.stats().requests, 5);

    // The same command again (as for Parquet output: the job footer);
    // --json for its summary.
    let again = fx
        .score(&input, &table, &[&append[..], &["--json"]].concat())
        .await;
    assert_ok(&again);
    let summary: Value = serde_json::from_slice(&again.stdout).expect("a JSON summary");
    assert_eq!(
        (&summary["rows"], &summary["resumed"]),
        (&json!(5), &json!(5)),
        "{summary}"
    );
    assert_eq!(fx.sim.stats().requests, 5, "nothing sent");
    let seen = python(READ_BACK, &[table.to_str().unwrap()]);
    assert_eq!(seen["rows"].as_array().map(Vec::len), Some(5));
    assert_eq!(seen["version"], json!(0), "nothing committed");

    // Another input is another job: it appends.
    let more = fx.write_jsonl("more.jsonl", &text_rows("review", 5..7));
    assert_ok(&fx.score(&more, &table, &append).await);
    let seen = python(READ_BACK, &[table.to_str().unwrap()]);
    assert_eq!(seen["rows"].as_array().map(Vec::len), Some(7));
}

#[tokio::test]
async fn duplicate_keys_in_one_merge_input_leave_the_last_row_of_each() {
    let fx = Fixture::new(SimConfig::default()).await;
    let table = fx.path("scores");
    let merge = MERGE_BY_ID;
    // Day 1 creates the table; day 2 merges into it. Each repeats keys:
    // the last row of a key in input order is its newest version.
    for (day, tag) in [(1, "first"), (2, "second")] {
        let mut rows = text_rows(tag, 0..4);
        rows.push(json!({"id": 1, "text": format!("{tag} 1, newer")}));
        rows.push(json!({"id": 2, "text": format!("{tag} 2, newer")}));
        rows.push(json!({"id": 1, "text": format!("{tag} 1, newest")}));
        let input = fx.write_jsonl(&format!("day{day}.jsonl"), &rows);
        let sent = fx.sim.stats().requests;
        assert_ok(&fx.score(&input, &table, &merge).await);
        assert_eq!(
            fx.sim.stats().requests - sent,
            4,
            "day {day}: one call per key, rows a later row replaces are not sent"
        );
        let seen = python(READ_BACK, &[table.to_str().unwrap()]);
        let rows = seen["rows"].as_array().expect("rows");
        let texts: Vec<&str> = rows.iter().map(|r| r["text"].as_str().unwrap()).collect();
        assert_eq!(
            texts,
            [
                format!("{tag} 0"),
                format!("{tag} 1, newest"),
                format!("{tag} 2, newer"),
                format!("{tag} 3")
            ],
            "day {day}: one row per key, the last"
        );
        for r in rows {
            assert_eq!(
                r["result"],
                json!(format!("echo: {}", r["text"].as_str().unwrap()))
            );
        }
    }
}
