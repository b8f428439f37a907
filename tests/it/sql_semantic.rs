//! `aiq sql`'s semantic operators (ai_filter, ai_score, ai_agg,
//! ai_summarize_agg), their dry-run counts, a killed aggregate resumed, the
//! same operators in `aiq run`, and Databricks-style queries run as written.
//! Every query runs the real binary against a simulator, whose request
//! counts say what was sent.

use std::process::Stdio;

use aiq::simulator::SimConfig;
use serde_json::{json, Map, Value};

use super::util::*;

/// `aiq sql -q QUERY --endpoint <sim> ARGS...`, table `t` = `input`.
async fn sql(
    f: &Fixture,
    input: &std::path::Path,
    query: &str,
    extra: &[&str],
) -> std::process::Output {
    let url = f.openai_url();
    let table = format!("t={}", input.display());
    let mut args = vec![
        "sql",
        "-q",
        query,
        "--endpoint",
        &url,
        "--model",
        "m",
        "--max-retries",
        "2",
        "--table",
        &table,
    ];
    args.extend_from_slice(extra);
    f.aiq(&args, &[("OPENAI_API_KEY", TOKEN)]).await
}

/// [`sql`] writing its result to `out`: the schema and rows it wrote.
async fn sql_to(
    f: &Fixture,
    input: &std::path::Path,
    query: &str,
    out: &std::path::Path,
) -> (
    std::sync::Arc<arrow::datatypes::Schema>,
    Vec<Map<String, Value>>,
) {
    assert_ok(&sql(f, input, query, &["--output", out.to_str().unwrap()]).await);
    read_rows(out)
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `n` rows in `groups` groups, each text long enough to make chunks.
fn grouped(n: usize, groups: usize) -> Vec<Value> {
    (0..n)
        .map(|i| json!({"id": i, "g": i % groups, "text": format!("review {i}: the parcel came late and the box was dented, {}", "x".repeat(40))}))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn ai_filter_in_where_asks_only_rows_the_cheap_conjuncts_keep() {
    let (f, input, out) = job(SimConfig::default(), 20, 0).await;
    // The AI conjunct is written first: it still runs last.
    let q =
        "SELECT id, text FROM t WHERE ai_filter(text, 'says the product is fine') AND id % 4 = 0";
    sql_to(&f, &input, q, &out).await;
    assert_eq!(
        f.sim.stats().requests,
        5,
        "only the 5 rows with id % 4 = 0 are asked"
    );
    let (_, kept) = read_rows(&out);
    assert!(
        kept.iter().all(|r| r["id"].as_i64().unwrap() % 4 == 0),
        "{kept:?}"
    );

    // In SELECT and CASE: a BOOLEAN column.
    let out2 = f.path("out2.parquet");
    let q = "SELECT id, ai_filter(text, 'is positive') AS ok, CASE WHEN ai_filter(text, 'is positive') THEN 'yes' ELSE 'no' END AS said FROM t";
    let (schema, rows) = sql_to(&f, &input, q, &out2).await;
    assert_eq!(type_of(&schema, "ok"), arrow::datatypes::DataType::Boolean);
    assert_eq!(rows.len(), 20);
    for r in &rows {
        let ok = r["ok"].as_bool().expect("a boolean answer");
        assert_eq!(r["said"], json!(if ok { "yes" } else { "no" }), "{r:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn ai_filter_in_a_join_asks_each_pair_and_dry_run_says_cross_product() {
    let f = Fixture::new(SimConfig::default()).await;
    let left = f.write_jsonl("l.jsonl", &rows(4, 0));
    let right = f.write_jsonl("r.jsonl", &rows(5, 0));
    let query = format!(
        "SELECT a.id AS a, b.id AS b FROM t a JOIN '{}' b ON ai_filter(a.text || ' / ' || b.text, 'the two say the same')",
        right.display()
    );
    let dry = sql(&f, &left, &query, &["--dry-run"]).await;
    assert_ok(&dry);
    let report = stdout(&dry);
    assert!(
        report.contains("cross product") && report.contains("4 × 5 = 20"),
        "{report}"
    );
    assert!(report.contains("at most 20 calls"), "{report}");
    assert_eq!(f.sim.stats().requests, 0, "a dry run sends nothing");

    let out = f.path("out.parquet");
    let o = sql(&f, &left, &query, &["--output", out.to_str().unwrap()]).await;
    assert_ok(&o);
    assert_eq!(f.sim.stats().requests, 20);
    let (_, pairs) = read_rows(&out);
    assert!(pairs.len() <= 20);
}

#[tokio::test(flavor = "multi_thread")]
async fn ai_agg_answers_groups_that_fit_in_one_call_each() {
    let (f, input, out) = job_of(SimConfig::default(), &grouped(30, 3)).await;
    let q = "SELECT g, ai_agg(text, 'List the complaints') AS complaints, ai_summarize_agg(text) AS gist FROM t GROUP BY g";
    sql_to(&f, &input, q, &out).await;
    assert_eq!(f.sim.stats().requests, 6, "one call per group and function");
    let (_, rows) = read_rows(&out);
    assert_eq!(rows.len(), 3);
    for r in &rows {
        assert!(
            r["complaints"].as_str().unwrap().starts_with("echo: "),
            "{r:?}"
        );
        assert!(r["gist"].is_string(), "{r:?}");
    }
    // Over the whole table, without GROUP BY.
    let o = sql(
        &f,
        &input,
        "SELECT ai_agg(text, 'List the complaints') AS all_complaints FROM t",
        &[],
    )
    .await;
    assert_ok(&o);
    assert_eq!(f.sim.stats().requests, 7);
}

#[tokio::test(flavor = "multi_thread")]
async fn ai_agg_map_reduces_groups_larger_than_the_context() {
    let context = 600;
    let f = Fixture::new(sim(|c| c.context_tokens = Some(context))).await;
    let input = f.write_jsonl("in.jsonl", &grouped(90, 3));
    let query = "SELECT g, ai_agg(text, 'List the complaints') AS complaints FROM t GROUP BY g";
    let ctx = context.to_string();
    let dry = sql(&f, &input, query, &["--dry-run", "--context-tokens", &ctx]).await;
    assert_ok(&dry);
    let report = stdout(&dry);
    let most: u64 = report
        .split("at most ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{report}"));

    let out = f.path("out.parquet");
    let flags = ["--context-tokens", &ctx, "--output", out.to_str().unwrap()];
    let o = sql(&f, &input, query, &flags).await;
    assert_ok(&o);
    let stats = f.sim.stats();
    assert_eq!(
        stats.context_exceeded, 0,
        "no request was larger than the context"
    );
    assert!(stats.requests > 3, "groups were split: {stats:?}");
    assert!(
        stats.requests <= most,
        "dry run said at most {most}, sent {}",
        stats.requests
    );
    let (_, rows) = read_rows(&out);
    assert_eq!(rows.len(), 3);
    assert!(rows.iter().all(|r| r["complaints"].is_string()), "{rows:?}");

    // Told a larger context than the server has: refused chunks are split
    // further, and the query still succeeds.
    let o = sql(&f, &input, query, &["--context-tokens", "4000"]).await;
    assert_ok(&o);
    let after = f.sim.stats();
    assert!(after.context_exceeded > 0, "{after:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn ai_score_ranks_with_order_by_limit() {
    let (f, input, out) = job(SimConfig::default(), 12, 0).await;
    let q = "SELECT id, ai_score(text, 'how positive it is') AS s FROM t ORDER BY s DESC LIMIT 3";
    let (schema, top) = sql_to(&f, &input, q, &out).await;
    assert_eq!(type_of(&schema, "s"), arrow::datatypes::DataType::Float64);
    assert_eq!(top.len(), 3);
    let scores: Vec<f64> = top.iter().map(|r| r["s"].as_f64().unwrap()).collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "{scores:?}");
    assert!(scores.iter().all(|s| (0.0..=1.0).contains(s)), "{scores:?}");
    assert_eq!(f.sim.stats().requests, 12, "every row is scored once");
    // Sorting on the call itself, not on an alias.
    let o = sql(
        &f,
        &input,
        "SELECT id FROM t ORDER BY ai_score(text, 'how positive it is') DESC LIMIT 2",
        &[],
    )
    .await;
    assert_ok(&o);
}

#[tokio::test(flavor = "multi_thread")]
async fn dry_run_counts_rows_reaching_each_function() {
    let f = Fixture::new(SimConfig::default()).await;
    let input = f.write_jsonl("in.jsonl", &grouped(40, 4));
    let o = sql(
        &f,
        &input,
        "SELECT g, ai_summarize_agg(text) FROM t WHERE id < 10 AND ai_filter(text, 'mentions a delay') GROUP BY g",
        &["--dry-run"],
    )
    .await;
    assert_ok(&o);
    let report = stdout(&o);
    assert!(
        report.contains("ai_filter(…, 'mentions a delay'): at most 10 calls"),
        "{report}"
    );
    assert!(
        report.contains("ai_summarize_agg(…): at most 4 calls (4 groups, 10 values"),
        "{report}"
    );
    assert!(report.contains("total: at most 14 AI calls"), "{report}");
    assert_eq!(f.sim.stats().requests, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_aggregate_resumes_from_the_journal() {
    let (f, input, out) = job_of(sim(|c| c.latency_ms = 40), &grouped(200, 1)).await;
    // The call journal is a folder of per-process files.
    let journal = out.with_file_name("out.parquet.aiq-sql");
    let url = f.openai_url();
    let table = format!("t={}", input.display());
    let concurrency = 2u64;
    let args = [
        "sql",
        "SELECT ai_agg(text, 'List the complaints') AS a FROM t",
        "--endpoint",
        &url,
        "--model",
        "m",
        "--table",
        &table,
        "--context-tokens",
        "600",
        "--concurrency",
        "2",
        "--output",
        out.to_str().unwrap(),
    ];
    let run = || {
        let mut c = f.command(&args, &[("OPENAI_API_KEY", TOKEN)]);
        c.stdout(Stdio::null()).stderr(Stdio::piped());
        c
    };
    let mut child = spawn_until_journaled(&mut run(), &journal, 4);
    child.kill().expect("kill -9");
    child.wait().expect("reaped");
    let paid_first = f.sim.stats().ok;
    assert!(!out.exists());

    let o = run().output().expect("second run");
    assert_ok(&o);
    let err = stderr(&o);
    assert!(err.contains("resuming"), "{err}");
    let resumed: u64 = err
        .split(" answered from the journal")
        .next()
        .and_then(|s| s.rsplit(", ").next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("{err}"));
    assert!(resumed >= 4, "{err}");
    let total_ok = f.sim.stats().ok;
    let sent_second = total_ok - paid_first;
    // Nothing answered before the kill is paid again, but the calls in flight.
    assert!(
        paid_first <= resumed + concurrency,
        "first {paid_first}, resumed {resumed}"
    );
    assert!(sent_second > 0);
    let (_, rows) = read_rows(&out);
    assert_eq!(rows.len(), 1);
    assert!(rows[0]["a"].is_string());
}

#[tokio::test(flavor = "multi_thread")]
async fn aiq_run_has_ai_filter_and_ai_score() {
    let (f, input, _) = job(SimConfig::default(), 6, 0).await;
    for (function, flag, value, ty) in [
        (
            "ai_filter",
            "--condition",
            "mentions the product",
            arrow::datatypes::DataType::Boolean,
        ),
        (
            "ai_score",
            "--criterion",
            "how positive it is",
            arrow::datatypes::DataType::Float64,
        ),
    ] {
        let out = f.path(&format!("{function}.parquet"));
        let flags = ["--function", function, flag, value];
        let o = f.score(&input, &out, &flags).await;
        assert_ok(&o);
        let (schema, rows) = read_rows(&out);
        assert_eq!(schema.field_with_name("result").unwrap().data_type(), &ty);
        assert_eq!(rows.len(), 6);
        assert!(
            rows.iter()
                .all(|r| r["error_message"].is_null() && !r["result"].is_null()),
            "{rows:?}"
        );
    }
    let flags = ["--function", "ai_filter"];
    let o = f.score(&input, &f.path("x.parquet"), &flags).await;
    assert_eq!(super::util::code(&o), 2, "{}", stderr(&o));
}

#[tokio::test(flavor = "multi_thread")]
async fn databricks_queries_run_as_written() {
    let f = Fixture::new(SimConfig::default()).await;
    let reviews = f.write_jsonl(
        "reviews.jsonl",
        &(0..4)
            .map(|i| json!({"review_id": i, "rating": i + 1, "text": format!("review {i}: late parcel")}))
            .collect::<Vec<_>>(),
    );
    let file = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/sql/databricks.sql"
    ))
    .unwrap();
    let queries: Vec<&str> = file
        .split("\n;\n")
        .map(str::trim)
        .filter(|q| {
            q.lines()
                .any(|l| !l.trim_start().starts_with("--") && !l.trim().is_empty())
        })
        .collect();
    assert!(queries.len() >= 7, "{queries:?}");
    let host = f.sim.base_url();
    let table = format!("reviews={}", reviews.display());
    for query in queries {
        let o = f
            .aiq(
                // After `--`: a query that opens with a `--` comment is no flag.
                &["sql", "-q", "--table", &table, "--", query],
                &[("DATABRICKS_HOST", &host), ("DATABRICKS_TOKEN", TOKEN)],
            )
            .await;
        assert_ok(&o);
        let shown = stdout(&o);
        assert!(
            shown.contains('|') && !shown.contains("No field"),
            "{query}\n{shown}"
        );
    }
}
