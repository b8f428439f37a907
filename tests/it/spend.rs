//! Spend control end to end: dry runs send nothing and estimate what the
//! simulator bills; budgets stop a job and a re-run finishes it without
//! paying twice; OTPM reservations are refunded; usage columns fill from
//! OpenAI- and Anthropic-shaped usage; ambiguous timeouts are capped and
//! marked; the status file says how the job ended.

use aiq::simulator::SimConfig;
use serde_json::{json, Value};

use super::util::*;

fn stdout_json(o: &std::process::Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}",
            String::from_utf8_lossy(&o.stdout)
        )
    })
}

fn status_file(f: &Fixture, output: &str) -> Value {
    let path = f.path(&format!("{output}.status.json"));
    serde_json::from_slice(&std::fs::read(&path).expect("status file")).expect("status JSON")
}

#[tokio::test(flavor = "multi_thread")]
async fn dry_run_sends_nothing_and_estimates_what_the_simulator_bills() {
    let (f, input, out) = job(SimConfig::default(), 120, 10).await;
    let url = f.openai_url();
    let mut args = run_io(&input, &out, &url);
    args.extend([
        "-q",
        "--model",
        "sim-model",
        "--system",
        "You are a terse analyst.",
        "--prompt",
        "Summarize: {{text}}",
        "--param",
        "max_tokens=20",
        "--price-in",
        "3",
        "--price-out",
        "15",
        "--rpm",
        "600",
    ]);
    // No API key in the environment: a dry run needs no credentials.
    let mut dry = args.to_vec();
    dry.extend(["--dry-run", "--json"]);
    let o = f.aiq(&dry, &[]).await;
    assert_ok(&o);
    let e = stdout_json(&o);
    assert_eq!(f.sim.stats().requests, 0, "a dry run contacts no endpoint");
    assert!(
        !out.exists() && !f.path("out.parquet.aiq").exists(),
        "and writes nothing"
    );
    assert_eq!(
        (
            e["rows"].as_u64(),
            e["rows_to_send"].as_u64(),
            e["null_rows"].as_u64()
        ),
        (Some(120), Some(108), Some(12))
    );
    assert_eq!(e["reserved_output_tokens"], json!(108 * 20));
    assert_eq!(e["bound_by"], json!("--rpm 600"));
    assert!((e["est_secs"].as_f64().unwrap() - 108.0 / 10.0).abs() < 1e-6);
    assert!(e["cost_max_usd"].as_f64().unwrap() > e["cost_input_usd"].as_f64().unwrap());

    // The real run: the estimate is within 10% of what the simulator counted.
    let o = f.aiq(&args, &[("OPENAI_API_KEY", TOKEN)]).await;
    assert_ok(&o);
    let billed = f.sim.stats().prompt_tokens as f64;
    let estimated = e["input_tokens"].as_f64().unwrap();
    assert!(
        (estimated - billed).abs() <= billed * 0.1,
        "estimated {estimated}, billed {billed}"
    );
    let status = status_file(&f, "out.parquet");
    assert_eq!(
        (status["state"].as_str(), status["rows_done"].as_u64()),
        (Some("done"), Some(120))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_budget_stops_the_job_and_a_higher_one_finishes_it_without_paying_twice() {
    let (f, input, out) = job(SimConfig::default(), 100, 0).await;
    // About 17 tokens a row (8 in, 9 out): 500 tokens is some 30 rows.
    let budget = 500u64;
    let flags = [
        "--concurrency",
        "2",
        "--max-tokens-total",
        "500",
        "--batch-rows",
        "16",
        "--price-in",
        "1",
        "--price-out",
        "2",
    ];
    let o = f.score(&input, &out, &flags).await;
    assert_exit(
        &o,
        1,
        &["token budget reached", "of 100 rows have an outcome"],
    );
    let first = f.sim.stats();
    let spent = first.prompt_tokens + first.completion_tokens;
    assert!(spent >= budget, "it ran up to the budget: {spent}");
    // Requests in flight when the budget is reached finish (and are paid):
    // the `concurrency` of them, plus those launched while the collector
    // was still counting the outcome that crossed the line. A row is ~18 tokens.
    assert!(spent <= budget + 4 * 20, "and stopped there: {spent}");
    assert!(first.ok < 100);
    assert!(
        f.path("out.parquet.aiq").exists(),
        "the journal is kept for resuming"
    );
    assert_eq!(status_file(&f, "out.parquet")["state"], json!("stopped"));

    // The same budget again: earlier runs' spend counts, so nothing is sent.
    let o = f.score(&input, &out, &["--max-tokens-total", "500"]).await;
    assert_exit(&o, 1, &["by earlier runs"]);
    assert_eq!(f.sim.stats().requests, first.requests);

    // A higher budget finishes the job; no row is paid for twice.
    // $1 a million input tokens, $2 a million output tokens.
    let prices = ["--price-in", "1", "--price-out", "2"];
    let flags = [&["--max-tokens-total", "100000"][..], &prices].concat();
    assert_ok(&f.score(&input, &out, &flags).await);
    let stats = f.sim.stats();
    assert_eq!(stats.ok_by_prompt.len(), 100);
    assert!(
        stats.ok_by_prompt.values().all(|n| *n == 1),
        "every row paid for once"
    );
    let (_, rows) = read_rows(&out);
    assert_eq!(rows.len(), 100);
    for row in &rows {
        let cost = row["cost"].as_f64().expect("a cost with prices");
        let (p, c) = (
            row["prompt_tokens"].as_f64().unwrap(),
            row["completion_tokens"].as_f64().unwrap(),
        );
        assert!((cost - (p + 2.0 * c) / 1e6).abs() < 1e-12);
        assert_eq!(row["maybe_billed_twice"], json!(false));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn otpm_reservations_are_refunded_from_real_usage() {
    // 6000 output tokens a minute at the provider, enforced the Databricks
    // way; max_tokens is ten times the real answers (about 9 tokens).
    let (f, input, out) = job(sim(|c| c.otpm = Some(6000)), 150, 0).await;
    let flags = [
        "--param",
        "max_tokens=90",
        "--otpm",
        "5400",
        "--concurrency",
        "16",
    ];
    let o = f.score(&input, &out, &flags).await;
    // (The client is told 90% of the provider's limit: when the provider's
    // bucket is full, what the client refills while a request is on the
    // wire is lost at the provider, so pacing at exactly the limit can
    // graze it.)
    assert_ok(&o);
    let s = f.sim.stats();
    // Without refunds 150 requests reserve 13,500 tokens: at 6000/min that
    // is over two minutes of OTPM, one request admitted a second. With them
    // the job needs about 1,500 (the real output), the client stays under
    // the provider's limit (no 429) and every request is admitted at its
    // first try. (`limit::tests::otpm_refunds_keep_throughput_near_the_limit`
    // measures the throughput itself, on a fake clock.)
    assert_eq!(
        s.rate_limited, 0,
        "the client paces under the provider's OTPM"
    );
    assert_eq!((s.ok, s.requests), (150, 150));
    assert!(
        s.completion_tokens * 5 < 150 * 90,
        "real output is far below the reservations"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn usage_columns_fill_from_anthropic_and_openai_shapes() {
    let f = Fixture::new(sim(|c| {
        c.endpoints = vec!["databricks-claude-sonnet-4".into()]
    }))
    .await;
    let input = f.write_jsonl("in.jsonl", &rows(6, 0));
    let system = "Rules. ".repeat(900); // 6300 bytes: a cacheable prefix

    // Claude on Databricks: Anthropic-shaped, additive usage.
    let out = f.path("claude.parquet");
    let flags = [
        "--system",
        &system,
        "--prompt",
        "{{text}}",
        "--concurrency",
        "1",
        "--price-in",
        "3",
        "--price-out",
        "15",
        "--price-cached",
        "0.3",
    ];
    let o = f
        .run_databricks(&input, &out, "databricks-claude-sonnet-4", &flags)
        .await;
    let rows = ok_rows(&o, &out);
    for (i, row) in rows.iter().enumerate() {
        let text = format!("row-{i} says the product is fine");
        let all_input = aiq::ai::tokens::estimate(&format!("{system}{text}")) as i64;
        assert_eq!(
            row["prompt_tokens"],
            json!(all_input),
            "row {i}: prompt_tokens counts every input token"
        );
        let (cached, written) = (
            row["cached_tokens"].as_i64().unwrap(),
            row["cache_write_tokens"].as_i64().unwrap(),
        );
        if i == 0 {
            assert!(
                cached == 0 && written > 1000,
                "the first request writes the cache: {row:?}"
            );
        } else {
            assert!(cached > 1000 && written == 0, "later ones read it: {row:?}");
        }
        assert_eq!(
            row["completion_tokens"],
            json!(aiq::ai::tokens::estimate(&format!("echo: {text}")))
        );
        assert_eq!(
            row["total_tokens"],
            json!(all_input + row["completion_tokens"].as_i64().unwrap())
        );
        assert_eq!(row["reasoning_tokens"], json!(0));
        let p = all_input as f64;
        let want = ((p - cached as f64) * 3.0
            + cached as f64 * 0.3
            + row["completion_tokens"].as_f64().unwrap() * 15.0)
            / 1e6;
        assert!((row["cost"].as_f64().unwrap() - want).abs() < 1e-12);
    }

    // OpenAI-compatible: cached tokens inside prompt_tokens, no cost without prices.
    let out = f.path("openai.parquet");
    let flags = ["--system", &system, "--concurrency", "1", "--no-warmup"];
    let o = f.score(&input, &out, &flags).await;
    let rows = ok_rows(&o, &out);
    assert!(rows[1..].iter().all(
        |r| r["cached_tokens"].as_i64().unwrap() > 1000 && r["cache_write_tokens"] == json!(0)
    ));
    assert!(rows.iter().all(|r| r["cost"].is_null()));
}

#[tokio::test(flavor = "multi_thread")]
async fn timeouts_after_sending_are_capped_and_marked() {
    // A third of requests stall past the client's timeout: the provider may
    // have billed them, so each row gets at most one retry after one.
    let (f, input, out) = job(
        SimConfig {
            fault_rate: 0.3,
            faults: "slow".into(),
            slow_ms: 3000,
            seed: 7,
            ..SimConfig::default()
        },
        40,
        0,
    )
    .await;
    let flags = ["--timeout", "0.4", "--concurrency", "8", "--json"];
    let o = f.score(&input, &out, &flags).await;
    assert_ok(&o);
    let summary = stdout_json(&o);
    let (_, rows) = read_rows(&out);
    let mut retries = 0;
    for row in &rows {
        let attempts = row["attempts"].as_i64().unwrap();
        assert!(
            attempts <= 2,
            "at most one retry after an ambiguous timeout: {row:?}"
        );
        retries += attempts - 1;
        if row["error_message"].is_null() {
            assert_eq!(row["maybe_billed_twice"], json!(attempts == 2), "{row:?}");
        } else {
            let message = row["error_message"].as_str().unwrap();
            assert!(
                message.contains("--max-ambiguous-retries 1") && message.contains("timed out"),
                "{message}"
            );
            assert_eq!(
                row["maybe_billed_twice"],
                json!(true),
                "two attempts may both have been billed"
            );
        }
    }
    assert!(retries > 0, "the seed makes some requests stall");
    assert_eq!(summary["ambiguous_retries"], json!(retries));
}

/// The budget stop's "N of M rows have an outcome" and the summary beside
/// it count the same rows: those of the requests in flight at the stop
/// included (issue 27.5).
#[tokio::test(flavor = "multi_thread")]
async fn a_budget_stop_and_the_summary_count_the_same_rows() {
    let (f, input, out) = job(sim(|c| c.latency_ms = 20), 300, 0).await;
    let mut args: Vec<String> = f.run_args(&input, &out);
    args.retain(|a| a != "-q");
    args.extend(["--concurrency", "16", "--max-tokens-total", "600"].map(String::from));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = f.aiq(&args, &[("OPENAI_API_KEY", TOKEN)]).await;
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    let err = stderr(&o);
    let number_before = |marker: &str| -> u64 {
        let at = err
            .find(marker)
            .unwrap_or_else(|| panic!("no `{marker}` in {err}"));
        let digits: String = err[..at]
            .chars()
            .rev()
            .take_while(char::is_ascii_digit)
            .collect();
        digits
            .chars()
            .rev()
            .collect::<String>()
            .parse()
            .expect("a count")
    };
    let stopped = number_before(" of 300 rows have an outcome");
    let summary = number_before(" ok,") + number_before(" failed,") + number_before(" null");
    assert_eq!(stopped, summary, "{err}");
}

/// A dry run whose estimate is over the budget says how many rows the
/// budget covers (issue 27.8).
#[tokio::test(flavor = "multi_thread")]
async fn a_dry_run_over_budget_says_how_many_rows_it_covers() {
    let (f, input, out) = job(SimConfig::default(), 100, 0).await;
    let mut args = f.run_args(&input, &out);
    args.extend(["--param", "max_tokens=10", "--dry-run", "--json"].map(String::from));
    let base: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut json_args = base.clone();
    json_args.extend(["--max-tokens-total", "300"]);
    json_args.retain(|a| *a != "--json");
    let o = f.aiq(&json_args, &[]).await;
    assert_ok(&o);
    let text = String::from_utf8_lossy(&o.stdout).to_string();
    json_args.push("--json");
    let e = stdout_json(&f.aiq(&json_args, &[]).await);
    let (input_tokens, reserved) = (
        e["input_tokens"].as_u64().unwrap(),
        e["reserved_output_tokens"].as_u64().unwrap(),
    );
    assert!(input_tokens + reserved > 300, "over budget: {e}");
    let at_least = 100 * 300 / (input_tokens + reserved);
    let at_most = (100 * 300 / input_tokens).min(100);
    assert_eq!(
        (
            e["budget_covers"]["rows_min"].as_u64(),
            e["budget_covers"]["rows_max"].as_u64()
        ),
        (Some(at_least), Some(at_most)),
        "{e}"
    );
    assert!(
        text.contains(&format!(
            "--max-tokens-total 300 covers {at_least} to {at_most} of the 100 rows to send"
        )),
        "{text}"
    );

    // A cost budget the same way: at $1 per million tokens, $0.0003 is 300 tokens.
    let mut cost: Vec<&str> = base.clone();
    cost.extend(["--max-cost", "0.0003"]);
    cost.extend(["--price-in", "1", "--price-out", "1"]);
    let e = stdout_json(&f.aiq(&cost, &[]).await);
    assert_eq!(
        e["budget_covers"]["budget"],
        json!("--max-cost $0.0003"),
        "{e}"
    );
    assert_eq!(
        e["budget_covers"]["rows_min"].as_u64(),
        Some(at_least),
        "{e}"
    );

    // Within the budget: nothing said.
    let mut roomy: Vec<&str> = base.clone();
    roomy.extend(["--max-tokens-total", "1000000"]);
    let o = f.aiq(&roomy, &[]).await;
    assert_ok(&o);
    assert!(!String::from_utf8_lossy(&o.stdout).contains("covers"));
}

/// `aiq run` sets the built-in simulator's latency from flags, as `aiq
/// bench` does (issue 27.9): a dry run's time counts it.
#[tokio::test(flavor = "multi_thread")]
async fn run_sets_the_simulators_latency_from_flags() {
    let (f, input, out) = job(SimConfig::default(), 40, 0).await;
    let url = f.openai_url();
    let args = |endpoint: &str, extra: &[&str]| -> Vec<String> {
        let mut args = run_io(&input, &out, endpoint);
        args.extend([
            "-q",
            "--prompt",
            "{{text}}",
            "--model",
            "m",
            "--concurrency",
            "4",
            "--sim-latency-ms",
            "500",
        ]);
        args.extend(extra);
        args.into_iter().map(String::from).collect()
    };
    let dry = args("simulator", &["--dry-run", "--json"]);
    let e = stdout_json(
        &f.aiq(&dry.iter().map(String::as_str).collect::<Vec<_>>(), &[])
            .await,
    );
    // 40 requests, 4 at a time, half a second each.
    assert_eq!(e["est_secs"].as_f64(), Some(5.0), "{e}");
    assert_eq!(
        e["bound_by"],
        json!("--concurrency 4 at the simulator's latency")
    );

    let real = args(&url, &[]);
    let envs = [("OPENAI_API_KEY", TOKEN)];
    let o = f
        .aiq(&real.iter().map(String::as_str).collect::<Vec<_>>(), &envs)
        .await;
    assert_exit(&o, 2, &["--endpoint simulator"]);
}
