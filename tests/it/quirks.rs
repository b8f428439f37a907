//! Replies that differ from OpenAI's in ways aiq must accept or classify
//! (README "What aiq accepts"): no `message.role`, unknown fields, missing
//! or malformed usage, a 200 carrying an error object, HTML or truncated
//! JSON with a 200, JSON that is no answer, and a content filter's empty
//! answer.

use aiq::simulator::{Quirk, SimConfig};
use serde_json::json;

use super::util::*;

#[tokio::test(flavor = "multi_thread")]
async fn replies_that_differ_harmlessly_keep_their_answers() {
    // (quirks, usage read, warnings about the usage)
    let cases = [
        (vec![Quirk::NoRole], true, 0),
        (vec![Quirk::ExtraFields], true, 0),
        (vec![Quirk::NoUsage], false, 0),
        (vec![Quirk::BadUsage], false, 1),
        (vec![Quirk::NegativeUsage, Quirk::NoRole], false, 1),
    ];
    for (quirks, usage_read, warnings) in cases {
        let f = Fixture::new(sim(|c| c.quirks = quirks.clone())).await;
        let input = f.write_jsonl("in.jsonl", &rows(5, 0));
        let out = f.path("out.parquet");
        let url = f.openai_url();
        let mut args = run_io(&input, &out, &url);
        args.extend(["--model", "m", "--prompt", "{{text}}"]);
        let o = f.aiq(&args, &[("OPENAI_API_KEY", TOKEN)]).await;
        let got = ok_rows(&o, &out);
        for (i, row) in got.iter().enumerate() {
            assert_eq!(row["error_message"], json!(null), "{quirks:?}");
            assert!(text_of(row).starts_with(&format!("echo: row-{i} ")));
        }
        if usage_read {
            assert!(got.iter().all(|r| r["prompt_tokens"].as_i64() > Some(0)));
        } else {
            assert!(got.iter().all(|r| r["prompt_tokens"] == json!(0)));
        }
        let warned = stderr(&o).matches("usage this aiq cannot read").count();
        assert_eq!(warned, warnings, "{quirks:?}: {}", stderr(&o));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn html_truncated_and_error_bodies_with_200_are_retried() {
    for fault in ["html", "truncated", "error200"] {
        let f = Fixture::new(SimConfig {
            fault_rate: 0.3,
            faults: fault.into(),
            seed: 3,
            ..SimConfig::default()
        })
        .await;
        let input = f.write_jsonl("in.jsonl", &rows(40, 0));
        let out = f.path("out.parquet");
        // A reply cut short was answered, so maybe billed: its retries
        // are capped by --max-ambiguous-retries (tests/it/hostile.rs).
        let flags = ["--max-retries", "20", "--max-ambiguous-retries", "20"];
        let o = f.score(&input, &out, &flags).await;
        let got = ok_rows(&o, &out);
        assert!(got.iter().all(|r| r["error_message"].is_null()), "{fault}");
        let stats = f.sim.stats();
        assert!(stats.faults_injected >= 3, "{fault}: {stats:?}");
        assert_eq!(stats.ok_by_prompt.len(), 40, "{fault}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn json_that_is_no_answer_is_the_rows_error() {
    let (f, input, out) = job(sim(|c| c.quirks = vec![Quirk::NoChoices]), 2, 0).await;
    let o = f.score(&input, &out, &[]).await;
    let got = ok_rows(&o, &out);
    for row in &got {
        let e = row["error_message"].as_str().unwrap();
        assert!(
            e.contains("choices") && e.contains("chat.completion"),
            "{e}"
        );
        assert_eq!(row["attempts"], json!(1), "not retried");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_error_in_a_200_reports_the_servers_message() {
    let (f, input, out) = job(
        sim(|c| (c.fault_rate, c.faults) = (1.0, "error200".into())),
        2,
        0,
    )
    .await;
    let o = f.score(&input, &out, &["--max-retries", "1"]).await;
    let got = ok_rows(&o, &out);
    for row in &got {
        let e = row["error_message"].as_str().unwrap();
        assert!(e.contains("upstream exploded"), "{e}");
        assert!(!e.contains("missing field"), "{e}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_content_filter_says_so() {
    let f = Fixture::new(SimConfig::default()).await;
    let input = f.write_jsonl(
        "in.jsonl",
        &[
            json!({"text": "fine"}),
            json!({"text": "bad [[sim:filter]]"}),
        ],
    );
    let out = f.path("out.parquet");
    let o = f.score(&input, &out, &[]).await;
    let got = ok_rows(&o, &out);
    assert!(got[0]["error_message"].is_null());
    let e = got[1]["error_message"]
        .as_str()
        .unwrap_or_else(|| panic!("{got:?}"));
    assert!(e.contains("content filter"), "{e}");
    assert_eq!(got[1]["finish_reason"], json!("content_filter"));
}
