//! `aiq sql`: the SQL guide's examples, ai_query's arguments, the task
//! functions, SQL around AI calls, failOnError, and a killed query resumed.
//! Every query runs the real binary against a simulator.

use std::path::Path;
use std::process::{Output, Stdio};
use std::sync::Arc;

use aiq::simulator::SimConfig;
use arrow::datatypes::Schema;
use serde_json::{json, Map, Value};

use super::util::*;

/// `aiq sql QUERY ARGS...` against the fixture's simulator (OpenAI route).
async fn sql(f: &Fixture, query: &str, extra: &[&str]) -> Output {
    let mut args = vec!["sql", query, "--model", "m", "--max-retries", "2"];
    args.extend_from_slice(extra);
    f.aiq(&args, &[("OPENAI_API_KEY", TOKEN)]).await
}

/// [`sql`] of `query` into `out` with `flags` (tables, endpoint), which
/// must succeed: its output and what it wrote.
async fn sql_rows(
    f: &Fixture,
    query: &str,
    flags: &[&str],
    out: &Path,
) -> (Output, Arc<Schema>, Vec<Map<String, Value>>) {
    let args = [flags, &["--output", out.to_str().unwrap()]].concat();
    let o = sql(f, query, &args).await;
    assert_ok(&o);
    let (schema, rows) = read_rows(out);
    (o, schema, rows)
}

fn echo(text: &str) -> Value {
    json!(format!("echo: {text}"))
}

fn by_id(rows: Vec<Map<String, Value>>) -> Vec<Map<String, Value>> {
    let mut rows = rows;
    rows.sort_by_key(|r| r["id"].as_i64());
    rows
}

/// The `aiq sql` lines of the SQL guide: `aiq sql "QUERY" FLAGS`.
fn guide_examples() -> Vec<(String, Vec<String>)> {
    let guide = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/guide/sql.md"))
        .expect("docs/guide/sql.md");
    guide
        .replace("\\\n", " ")
        .lines()
        .filter_map(|l| l.trim().strip_prefix("aiq sql \""))
        .map(|rest| {
            let close = rest.find('"').expect("closing quote");
            let flags = rest[close + 1..].split('#').next().unwrap_or("");
            (
                rest[..close].to_string(),
                flags.split_whitespace().map(str::to_string).collect(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn guide_examples_run_against_the_simulator() {
    let f = Fixture::new(SimConfig::default()).await;
    let examples = guide_examples();
    assert!(examples.len() >= 4, "{examples:?}");
    for (query, flags) in examples {
        let mut args = vec!["sql".to_string(), "-q".to_string(), query.clone()];
        for flag in flags {
            // Outputs go to the temp folder, not into the repository.
            args.push(if flag.ends_with(".parquet") {
                f.path(&flag.replace('/', "_")).display().to_string()
            } else {
                flag
            });
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = f.aiq(&args, &[]).await;
        assert_ok(&o);
        let stdout = String::from_utf8_lossy(&o.stdout);
        assert!(
            args.contains(&"--output") || stdout.contains('|'),
            "{query}: {stdout}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn ai_query_takes_each_argument_named_or_positional() {
    let (f, input, out) = job(SimConfig::default(), 12, 4).await;
    let url = f.openai_url();
    let query = format!(
        "SELECT id, text,
            ai_query('{url}', text) AS plain,
            ai_query('{url}', 'Rate: ' || text, returnType => 'STRUCT<label: STRING, score: INT>') AS typed,
            ai_query('{url}', text, modelParameters => named_struct('max_tokens', 3, 'temperature', 0)) AS short,
            ai_query('{url}', text, responseFormat => 'STRUCT<topic: STRING>') AS formatted,
            ai_query('{url}', text, failOnError => false) AS safe,
            ai_query('{url}', text, 'BIGINT', true) AS positional
         FROM t"
    );
    let table = format!("t={}", input.display());
    let (o, schema, rows) = sql_rows(&f, &query, &["--table", &table], &out).await;
    assert_eq!(rows.len(), 12);
    assert!(schema
        .field_with_name("typed")
        .unwrap()
        .data_type()
        .is_nested());
    for r in by_id(rows) {
        let Some(text) = r["text"].as_str() else {
            // SQL null in, null out: nothing sent.
            assert!(r["plain"].is_null() && r["typed"].is_null(), "{r:?}");
            assert_eq!(r["safe"], json!({"result": null, "errorMessage": null}));
            continue;
        };
        assert_eq!(r["plain"], echo(text));
        assert!(
            r["typed"]["label"].is_string() && r["typed"]["score"].is_i64(),
            "{r:?}"
        );
        let short = r["short"].as_str().unwrap();
        assert!(
            short.len() < echo(text).as_str().unwrap().len() && short.starts_with("echo"),
            "{short}"
        );
        assert!(r["formatted"]["topic"].is_string(), "{r:?}");
        assert_eq!(
            r["safe"],
            json!({"result": echo(text), "errorMessage": null})
        );
        assert!(r["positional"].is_i64(), "{r:?}");
    }
    assert!(
        !f.path("out.parquet.aiq-sql").exists(),
        "journal removed once the output is written"
    );
    // 9 non-null rows, 6 calls each, but `plain` and `safe` ask the same
    // question: the second is answered from the journal. The summary goes to stderr.
    let err = stderr(&o);
    assert!(
        err.contains("AI calls: 45 sent (0 errors), 9 answered from the journal"),
        "{err}"
    );
    assert_eq!(f.sim.stats().ok, 45);
}

#[tokio::test(flavor = "multi_thread")]
async fn two_task_functions_in_one_select() {
    let (f, input, out) = job(SimConfig::default(), 10, 0).await;
    let url = f.openai_url();
    let query = format!(
        "SELECT id, ai_classify(text, ARRAY('good', 'bad')) AS verdict, ai_summarize(text, 5) AS gist,
                ai_extract(text, ARRAY('product', 'person')) AS found
         FROM read_json('{}')",
        input.display()
    );
    let (o, _, rows) = sql_rows(&f, &query, &["--endpoint", &url], &out).await;
    assert_eq!(rows.len(), 10);
    for r in &rows {
        assert!(
            matches!(r["verdict"].as_str(), Some("good" | "bad")),
            "{r:?}"
        );
        assert!(r["gist"].as_str().is_some_and(|s| !s.is_empty()), "{r:?}");
        assert!(
            r["found"]
                .as_object()
                .is_some_and(|o| o.contains_key("product") && o.contains_key("person")),
            "{r:?}"
        );
    }
    // Three calls per row, each paid once.
    assert_eq!(f.sim.stats().ok, 30);
    let err = stderr(&o);
    assert!(
        err.contains("AI calls: 30 sent (0 errors)") && err.contains("tokens:"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn where_join_and_group_by_around_ai_calls() {
    let f = Fixture::new(SimConfig::default()).await;
    let reviews: Vec<Value> = (0..20)
        .map(|i| json!({"id": i, "product_id": i % 3, "rating": i % 5 + 1, "text": format!("review {i}")}))
        .collect();
    let products: Vec<Value> = (0..3)
        .map(|i| json!({"product_id": i, "name": format!("p{i}")}))
        .collect();
    let r = f.write_jsonl("reviews.jsonl", &reviews);
    let p = f.write_jsonl("products.jsonl", &products);
    let url = f.openai_url();
    let query = "SELECT sentiment, count(*) AS n FROM (
            SELECT ai_analyze_sentiment(concat(p.name, ': ', r.text)) AS sentiment
            FROM reviews r JOIN products p ON r.product_id = p.product_id
            WHERE r.rating <= 2
         ) GROUP BY sentiment ORDER BY sentiment";
    let out = f.path("out.parquet");
    let tables = [
        format!("reviews={}", r.display()),
        format!("products={}", p.display()),
    ];
    let flags = [
        "--endpoint",
        &url,
        "--table",
        &tables[0],
        "--table",
        &tables[1],
    ];
    let (_, _, rows) = sql_rows(&f, query, &flags, &out).await;
    let total: i64 = rows.iter().map(|r| r["n"].as_i64().unwrap()).sum();
    let matching = reviews
        .iter()
        .filter(|r| r["rating"].as_i64().unwrap() <= 2)
        .count();
    assert_eq!(total as usize, matching);
    assert!(rows
        .iter()
        .all(|r| aiq::ai::functions::SENTIMENTS.contains(&r["sentiment"].as_str().unwrap())));
    // Only the rows the WHERE kept were sent.
    assert_eq!(f.sim.stats().ok as usize, matching);
}

#[tokio::test(flavor = "multi_thread")]
async fn fail_on_error_false_gives_a_struct_true_fails_the_query() {
    let (f, path, _) = job_marked(6, &[(2, "a bad row [[sim:400]]")]).await;
    let url = f.openai_url();
    let out = f.path("out.parquet");
    let table = format!("t={}", path.display());
    let query =
        format!("SELECT id, ai_query('{url}', text, failOnError => false) AS answer FROM t");
    let flags = ["--table", &table, "--output", out.to_str().unwrap()];
    let o = sql(&f, &query, &flags).await;
    let rows = ok_rows(&o, &out);
    for r in by_id(rows) {
        let answer = r["answer"].as_object().unwrap();
        if r["id"] == json!(2) {
            assert!(answer["result"].is_null());
            assert!(
                answer["errorMessage"].as_str().unwrap().contains("400"),
                "{answer:?}"
            );
        } else {
            assert!(
                answer["result"].is_string() && answer["errorMessage"].is_null(),
                "{answer:?}"
            );
        }
    }
    assert!(stderr(&o).contains("(1 errors)"), "{}", stderr(&o));

    let strict = format!("SELECT id, ai_query('{url}', text) AS answer FROM t");
    let out2 = f.path("strict.parquet");
    let flags = ["--table", &table, "--output", out2.to_str().unwrap()];
    let o = sql(&f, &strict, &flags).await;
    assert_exit(&o, 1, &["failOnError => false"]);
    assert!(!out2.exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn mistakes_in_the_query_exit_2_before_sending() {
    let (f, path, _) = job(SimConfig::default(), 3, 0).await;
    let url = f.openai_url();
    let table = format!("t={}", path.display());
    for (query, endpoint, expect) in [
        (
            format!("SELECT ai_query('{url}', text, returnType => 'STRUCT<a INTEGR>') FROM t"),
            None,
            "returnType",
        ),
        (format!("SELECT ai_query('{url}', txt) FROM t"), None, "txt"),
        (
            format!("SELECT ai_query('{url}', text, failOnErr => false) FROM t"),
            None,
            "failOnErr",
        ),
        (
            "SELECT ai_classify(text, ARRAY('only-one')) FROM t".to_string(),
            Some(url.as_str()),
            "2 labels",
        ),
        (
            "SELECT ai_translate(text) FROM t".to_string(),
            Some(url.as_str()),
            "to_lang",
        ),
        (
            "SELECT ai_summarize(text) FROM t".to_string(),
            None,
            "--endpoint",
        ),
    ] {
        let mut flags = vec!["--table", &table];
        if let Some(e) = endpoint {
            flags.extend(["--endpoint", e]);
        }
        let o = sql(&f, &query, &flags).await;
        assert_eq!(code(&o), 2, "{query}: {}", stderr(&o));
        assert!(
            stderr(&o).to_lowercase().contains(&expect.to_lowercase()),
            "{query}: {}",
            stderr(&o)
        );
    }
    assert_eq!(f.sim.stats().requests, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn only_read_queries_run_and_only_output_is_written() {
    let (f, input, _) = job(SimConfig::default(), 3, 0).await;
    let before = std::fs::read(&input).unwrap();
    let table = format!("t={}", input.display());
    let url = f.openai_url();
    let elsewhere = f.path("elsewhere.csv");
    let (input_at, elsewhere_at) = (input.display(), elsewhere.display());
    for query in [
        // One replaced its own --table input.
        format!("COPY t TO '{input_at}' STORED AS JSON"),
        format!("COPY (SELECT ai_query('{url}', text) FROM t) TO '{elsewhere_at}'"),
        format!("CREATE EXTERNAL TABLE x (a INT) STORED AS CSV LOCATION '{elsewhere_at}'"),
        format!("CREATE TABLE x AS SELECT ai_query('{url}', text) FROM t"),
        "CREATE VIEW v AS SELECT * FROM t".to_string(),
        "INSERT INTO t VALUES (9, 'x')".to_string(),
        "DROP TABLE t".to_string(),
        "SET datafusion.execution.batch_size = 1".to_string(),
        format!("EXPLAIN COPY t TO '{elsewhere_at}'"),
    ] {
        let o = sql(&f, &query, &["--table", &table]).await;
        assert_eq!(code(&o), 2, "{query}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("read queries only"),
            "{query}: {}",
            stderr(&o)
        );
    }
    assert_eq!(std::fs::read(&input).unwrap(), before);
    assert!(!elsewhere.exists());
    assert_eq!(f.sim.stats().requests, 0);

    // Read queries run, over --table files and files named in FROM.
    for query in [
        "SELECT count(*) AS n FROM t".to_string(),
        "WITH a AS (SELECT id FROM t) SELECT max(id) FROM a".to_string(),
        "VALUES (1, 'a')".to_string(),
        "EXPLAIN SELECT id FROM t".to_string(),
        "DESCRIBE t".to_string(),
        format!("SELECT id FROM '{input_at}'"),
    ] {
        let o = sql(&f, &query, &["--table", &table]).await;
        assert_ok(&o);
        assert!(!o.stdout.is_empty(), "{query}");
    }

    // --output writes the result, but never over a file the query reads.
    let parquet = f.path("in.parquet");
    let o = sql(
        &f,
        "SELECT * FROM t",
        &["--table", &table, "--output", parquet.to_str().unwrap()],
    )
    .await;
    assert_ok(&o);
    let written = std::fs::read(&parquet).unwrap();
    let o = sql(
        &f,
        &format!("SELECT * FROM read_parquet('{}')", parquet.display()),
        &["--output", parquet.to_str().unwrap()],
    )
    .await;
    assert_exit(&o, 2, &["reads"]);
    assert_eq!(std::fs::read(&parquet).unwrap(), written);
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_query_resumes_without_paying_twice() {
    let n = 300;
    let concurrency = 4;
    let (f, input, out) = job(sim(|c| c.latency_ms = 15), n, 0).await;
    let url = f.openai_url();
    let query = format!(
        "SELECT id, text, ai_query('{url}', text) AS answer FROM '{}'",
        input.display()
    );
    let concurrency_flag = concurrency.to_string();
    let args = [
        "sql",
        "-q",
        &query,
        "--model",
        "m",
        "--concurrency",
        &concurrency_flag,
        "--output",
        out.to_str().unwrap(),
    ];
    let run = || {
        let mut c = f.command(&args, &[("OPENAI_API_KEY", TOKEN)]);
        c.stdout(Stdio::null()).stderr(Stdio::piped());
        c
    };
    // Wait (bounded, by progress, not by time) until a good part is journaled.
    let journal = f.path("out.parquet.aiq-sql");
    let mut child = spawn_until_journaled(&mut run(), &journal, 80);
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(!out.exists(), "no output from a killed query");
    assert!(f.sim.stats().ok < n as u64);

    let mut again = run();
    let o = tokio::task::spawn_blocking(move || again.output().unwrap())
        .await
        .unwrap();
    let rows = ok_rows(&o, &out);
    assert_eq!(rows.len(), n);
    for r in &rows {
        assert_eq!(r["answer"], echo(r["text"].as_str().unwrap()));
    }
    let stats = f.sim.stats();
    assert_eq!(stats.ok_by_prompt.len(), n, "every row paid at least once");
    let paid_twice = stats.ok_by_prompt.values().filter(|&&c| c > 1).count();
    assert!(
        paid_twice <= concurrency,
        "{paid_twice} rows paid twice; at most the {concurrency} in flight may be"
    );
    assert!(!f.path("out.parquet.aiq-sql").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn tables_from_parquet_csv_and_a_sql_file() {
    let (f, jsonl, _) = job(SimConfig::default(), 4, 0).await;
    let parquet = f.path("in.parquet");
    let flags = ["--output", parquet.to_str().unwrap()];
    let o = sql(
        &f,
        &format!("SELECT * FROM read_json('{}')", jsonl.display()),
        &flags,
    )
    .await;
    assert_ok(&o);
    let csv = f.path("extra.csv");
    std::fs::write(&csv, "id,tag\n0,a\n1,b\n2,c\n3,d\n").unwrap();
    let url = f.openai_url();
    let query = f.path("q.sql");
    std::fs::write(
        &query,
        format!(
            "SELECT p.id, x.tag, ai_query('{url}', concat(x.tag, ' ', p.text)) AS answer
             FROM read_parquet('{}') p JOIN extra x ON p.id = x.id
             WHERE p.id IN (SELECT id FROM '{}' WHERE id < 3)",
            parquet.display(),
            parquet.display()
        ),
    )
    .unwrap();
    let out = f.path("out.parquet");
    let table = format!("extra={}", csv.display());
    let (_, _, rows) = sql_rows(&f, query.to_str().unwrap(), &["--table", &table], &out).await;
    assert_eq!(rows.len(), 3);
    for r in by_id(rows) {
        let id = r["id"].as_i64().unwrap();
        let tag = r["tag"].as_str().unwrap();
        assert_eq!(
            r["answer"],
            echo(&format!("{tag} row-{id} says the product is fine"))
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_query_keeps_its_answers_for_the_next_run() {
    // Against the in-process simulator, whose port differs on every run:
    // the journal must match calls by endpoint as written, not by URL.
    let (f, path, _) = job_marked(6, &[(2, "a bad row [[sim:400]]")]).await;
    let table = format!("t={}", path.display());
    let out = f.path("out.parquet");
    let query = |sql: &str| {
        let args = [
            "sql",
            sql,
            "--table",
            &table,
            "--output",
            out.to_str().unwrap(),
        ];
        f.command(&args, &[])
    };
    let o = output(query("SELECT id, ai_query('simulator', text) AS a FROM t")).await;
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    assert!(line_count(&f.path("out.parquet.aiq-sql")) > 0);
    let o = output(query(
        "SELECT id, ai_query('simulator', text) AS a FROM t WHERE id <> 2",
    ))
    .await;
    assert_exit(
        &o,
        0,
        &["AI calls: 0 sent (0 errors), 5 answered from the journal"],
    );
    assert_eq!(read_rows(&out).1.len(), 5);
}

/// `--max-cost` stops a query as it stops `aiq run`: no new AI calls once
/// the budget is spent, exit 1, the summary says what it cost and the
/// answers are kept. The budget is the query's over all its runs: run
/// again with the same budget it sends nothing; with a higher one it
/// finishes without paying twice.
#[tokio::test(flavor = "multi_thread")]
async fn max_cost_stops_a_query_and_a_higher_budget_finishes_it() {
    let n = 40;
    let (f, input, out) = job(SimConfig::default(), n, 0).await;
    let query = format!(
        "SELECT id, ai_query('{}', text) AS answer FROM '{}'",
        f.openai_url(),
        input.display()
    );
    // A dollar a token: a call costs some $20, so $150 buys a handful.
    let run = |budget: &'static str| {
        let (f, query, out) = (&f, &query, out.to_str().unwrap().to_string());
        async move {
            sql(
                f,
                query,
                &[
                    "--concurrency",
                    "2",
                    "--price-in",
                    "1000000",
                    "--price-out",
                    "1000000",
                    "--max-cost",
                    budget,
                    "--output",
                    &out,
                ],
            )
            .await
        }
    };
    let o = run("150").await;
    let err = assert_exit(&o, 1, &["cost budget reached", "no new AI calls were sent"]);
    assert!(
        err.contains("cost: $"),
        "the summary says what it cost: {err}"
    );
    let paid = f.sim.stats().ok;
    assert!((1..n as u64 / 2).contains(&paid), "{paid} calls paid");

    // The same budget: already spent by the journaled answers.
    let o = run("150").await;
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    assert_eq!(f.sim.stats().ok, paid, "a spent budget sends nothing");

    let o = run("100000").await;
    assert_ok(&o);
    assert!(
        stderr(&o).contains(&format!("{paid} answered from the journal")),
        "{}",
        stderr(&o)
    );
    assert_eq!(read_rows(&out).1.len(), n);
    assert_eq!(f.sim.stats().ok, n as u64, "no call paid twice");
}

#[tokio::test(flavor = "multi_thread")]
async fn max_cost_without_prices_exits_2() {
    let f = Fixture::new(SimConfig::default()).await;
    for flags in [&["--max-cost", "1"][..], &["--price-in", "1"]] {
        let o = sql(&f, "SELECT 1", flags).await;
        assert_eq!(code(&o), 2, "{flags:?}: {}", stderr(&o));
        assert!(stderr(&o).contains("--price-in"), "{}", stderr(&o));
    }
}
