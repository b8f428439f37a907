//! `aiq run --shard K/N`: N runs cover every row exactly once, each writes
//! its own `{shard}` output, job-wide limits are divided, bad shard values
//! are usage errors, and `--call-journal` lets any run reuse answers.

use std::collections::BTreeMap;

use aiq::simulator::SimConfig;
use arrow::array::{Int64Array, StringArray};
use serde_json::{json, Map, Value};

use super::util::*;

/// Every output row of the shards, by `id`, checked to appear once.
fn merged(f: &Fixture, n: u32) -> BTreeMap<i64, Map<String, Value>> {
    let mut all = BTreeMap::new();
    for k in 0..n {
        let (_, rows) = read_rows(&f.path(&format!("out/part-{k}.parquet")));
        for r in rows {
            let id = r["id"].as_i64().expect("id");
            assert!(all.insert(id, r).is_none(), "row {id} is in two shards");
        }
    }
    all
}

fn check_answers(all: &BTreeMap<i64, Map<String, Value>>, total: i64) {
    assert_eq!(
        all.keys().copied().collect::<Vec<_>>(),
        (0..total).collect::<Vec<_>>()
    );
    for (id, r) in all {
        match r["text"].as_str() {
            Some(text) => assert_eq!(r["result"], json!(format!("echo: {text}")), "row {id}"),
            None => assert!(r["result"].is_null(), "row {id}: null in, null out"),
        }
    }
}

/// Every one of `n` shards of `input` scored into `out/part-{shard}.parquet`
/// with `extra`, each run succeeding.
async fn score_shards(f: &Fixture, input: &std::path::Path, n: usize, extra: &[&str]) {
    let out = f.path("out/part-{shard}.parquet");
    for k in 0..n {
        let shard = format!("{k}/{n}");
        let flags = [&["--shard", &shard][..], extra].concat();
        assert_ok(&f.score(input, &out, &flags).await);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn jsonl_shards_cover_every_row_once() {
    let (f, input, _) = job(SimConfig::default(), 50, 7).await;
    score_shards(&f, &input, 3, &["--batch-rows", "4"]).await;
    let all = merged(&f, 3);
    check_answers(&all, 50);
    assert_eq!(f.sim.stats().ok, 50 - 7, "each non-null row sent once");
}

#[tokio::test(flavor = "multi_thread")]
async fn parquet_shards_split_row_groups_and_cover_every_row_once() {
    let f = Fixture::new(SimConfig::default()).await;
    let n = 103i64;
    let texts = StringArray::from_iter_values((0..n).map(|i| format!("row {i}")));
    let batch = batch_of([
        col("id", Int64Array::from_iter_values(0..n), false),
        col("text", texts, true),
    ]);
    // Row groups of 10: shard edges fall inside groups and between them.
    let input = f.path("in.parquet");
    let props = parquet::file::properties::WriterProperties::builder()
        .set_max_row_group_row_count(Some(10))
        .build();
    let mut w = parquet::arrow::ArrowWriter::try_new(
        std::fs::File::create(&input).unwrap(),
        batch.schema(),
        Some(props),
    )
    .unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    let out = f.path("out/part-{shard}.parquet");
    for k in 0..4 {
        let shard = format!("{k}/4");
        let o = f.score(&input, &out, &["--shard", &shard]).await;
        assert_ok(&o);
        let (_, rows) = read_rows(&f.path(&format!("out/part-{k}.parquet")));
        assert!(
            (25..=26).contains(&rows.len()),
            "shard {k}: {} rows",
            rows.len()
        );
    }
    check_answers(&merged(&f, 4), n);
    assert_eq!(f.sim.stats().ok, n as u64);
}

/// `--shard auto/N` takes the index from the environment (here as a
/// Kubernetes Indexed Job sets it), and `{shard}` pads to N's width.
#[tokio::test(flavor = "multi_thread")]
async fn auto_index_from_the_environment() {
    let (f, input, _) = job(SimConfig::default(), 24, 0).await;
    let out = f.path("out/part-{shard}.parquet");
    let url = f.openai_url();
    let args = |shard: &'static str| {
        vec![
            "run".to_string(),
            "-q".into(),
            "--input".into(),
            input.display().to_string(),
            "--output".into(),
            out.display().to_string(),
            "--endpoint".into(),
            url.clone(),
            "--model".into(),
            "m".into(),
            "--prompt".into(),
            "{{text}}".into(),
            "--shard".into(),
            shard.into(),
        ]
    };
    let a = args("auto/12");
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let flags = [
        ("OPENAI_API_KEY", super::util::TOKEN),
        ("JOB_COMPLETION_INDEX", "7"),
    ];
    let o = f.aiq(&a, &flags).await;
    assert_ok(&o);
    let (_, rows) = read_rows(&f.path("out/part-07.parquet"));
    let ids: Vec<i64> = rows.iter().map(|r| r["id"].as_i64().unwrap()).collect();
    assert_eq!(ids, [14, 15]);
}

#[tokio::test(flavor = "multi_thread")]
async fn limits_are_for_the_whole_job() {
    let (f, input, _) = job(SimConfig::default(), 100, 0).await;
    let whole = f.path("whole.parquet");
    let estimate = |out: &'static str, extra: &'static [&'static str]| {
        let (f, input) = (&f, &input);
        async move {
            let out = f.path(out);
            let mut args = vec![
                "--prompt",
                "{{text}}",
                "--dry-run",
                "--json",
                "--rpm",
                "600",
            ];
            args.extend_from_slice(extra);
            let o = f.run_openai(input, &out, &args).await;
            assert_ok(&o);
            let v: Value = serde_json::from_slice(&o.stdout).expect("dry run JSON");
            (v["rows"].as_u64().unwrap(), v["est_secs"].as_f64().unwrap())
        }
    };
    // One run alone: 100 rows at 600/min = 10 s.
    let (rows, secs) = estimate("whole.parquet", &[]).await;
    assert_eq!(rows, 100);
    assert!((secs - 10.0).abs() < 0.5, "{secs}");
    assert!(!whole.exists(), "a dry run writes nothing");
    // A quarter of the rows at a quarter of the rate: the same 10 s.
    let (rows, secs) = estimate("out/part-{shard}.parquet", &["--shard", "1/4"]).await;
    assert_eq!(rows, 25);
    assert!((secs - 10.0).abs() < 0.5, "{secs}");
    // Two of the four shards at a time: each gets half the rate.
    let (_, secs) = estimate(
        "out/part-{shard}.parquet",
        &["--shard", "1/4", "--workers", "2"],
    )
    .await;
    assert!((secs - 5.0).abs() < 0.5, "{secs}");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_shard_values_are_usage_errors() {
    let (f, input, _) = job(SimConfig::default(), 4, 0).await;
    let out = f.path("out/part-{shard}.parquet");
    let plain = f.path("out.parquet");
    for (output, extra, says) in [
        (&out, &["--shard", "4/4"][..], "out of range"),
        (&out, &["--shard=-1/4"][..], "K/N"),
        (&out, &["--shard", "x/4"][..], "K/N"),
        (&out, &["--shard", "1/0"][..], "at least 1"),
        (&out, &["--shard", "1"][..], "K/N"),
        (&out, &["--shard", "auto/4"][..], "JOB_COMPLETION_INDEX"),
        (&plain, &["--shard", "1/2"][..], "{shard}"),
        (&out, &[][..], "no --shard"),
        (&out, &["--shard", "1/2", "--workers", "0"][..], "--workers"),
    ] {
        let mut args = vec!["--prompt", "{{text}}"];
        args.extend_from_slice(extra);
        let o = f.run_openai(&input, output, &args).await;
        assert_eq!(code(&o), 2, "{extra:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(says), "{extra:?}: {}", stderr(&o));
    }
    assert_eq!(f.sim.stats().requests, 0);
}

/// `--call-journal`: a second run of the job (another output, as a retried
/// task on another machine would write) sends nothing; a shard re-run reads
/// its shard's answers.
#[tokio::test(flavor = "multi_thread")]
async fn call_journal_answers_reruns_without_paying() {
    let (f, input, _) = job(SimConfig::default(), 30, 0).await;
    let journal = f.path("calls");
    let journal = journal.to_str().unwrap();
    let first = f.path("first.parquet");
    let o = f.score(&input, &first, &["--call-journal", journal]).await;
    assert_ok(&o);
    assert_eq!(f.sim.stats().ok, 30);
    let second = f.path("second.parquet");
    let flags = ["--call-journal", journal, "--json"];
    let o = f.score(&input, &second, &flags).await;
    assert_ok(&o);
    assert_eq!(f.sim.stats().requests, 30, "the re-run sent nothing");
    let (_, a) = read_rows(&first);
    let (_, b) = read_rows(&second);
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x["result"], y["result"]);
        assert_eq!(
            x["prompt_tokens"], y["prompt_tokens"],
            "usage as billed then"
        );
    }
    assert!(b.iter().all(|r| r["attempts"] == json!(0)), "not sent");
    // Another prompt is another question: asked again.
    let third = f.path("third.parquet");
    let flags = ["--prompt", "Q: {{text}}", "--call-journal", journal];
    let o = f.run_openai(&input, &third, &flags).await;
    assert_ok(&o);
    assert_eq!(f.sim.stats().ok, 60);

    // Shards: a re-run of shard 1 (a retried task) pays nothing.
    let parts = f.path("out/part-{shard}.parquet");
    let sharded = f.path("sharded");
    let sharded = sharded.to_str().unwrap();
    let run_shard = |k: u32| {
        let (f, input, parts) = (&f, &input, &parts);
        async move {
            let shard = format!("{k}/2");
            let flags = ["--shard", &shard, "--call-journal", sharded, "--restart"];
            let o = f.score(input, parts, &flags).await;
            assert_ok(&o);
        }
    };
    run_shard(0).await;
    run_shard(1).await;
    let before = f.sim.stats().requests;
    run_shard(1).await;
    assert_eq!(f.sim.stats().requests, before);
    check_answers(&merged(&f, 2), 30);
}

/// The merge step the README documents: `aiq sql` over the shards' parts.
#[cfg(feature = "sql")]
#[tokio::test(flavor = "multi_thread")]
async fn shards_merge_with_aiq_sql() {
    let (f, input, _) = job(SimConfig::default(), 20, 0).await;
    score_shards(&f, &input, 2, &[]).await;
    let query = format!(
        "SELECT count(*) AS n, count(DISTINCT id) AS ids FROM '{}/'",
        f.path("out").display()
    );
    let merged = f.path("merged.parquet");
    let args = ["sql", &query, "--output", merged.to_str().unwrap()];
    let o = f.aiq(&args, &[]).await;
    let rows = ok_rows(&o, &merged);
    assert_eq!(rows[0]["n"], json!(20));
    assert_eq!(rows[0]["ids"], json!(20));
}
