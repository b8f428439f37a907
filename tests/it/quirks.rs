//! Replies that differ from OpenAI's in ways aiq must accept or classify
//! (README "What aiq accepts"): no `message.role`, malformed usage, a 200
//! carrying an error object, HTML or truncated JSON with a 200, and a
//! content filter's empty answer.

use aiq::simulator::{Quirk, SimConfig};
use serde_json::json;

use super::util::{assert_ok, read_rows, rows, stderr, Fixture, TOKEN};

#[tokio::test(flavor = "multi_thread")]
async fn replies_without_role_or_with_bad_usage_keep_their_answers() {
    for quirks in [
        vec![Quirk::NoRole],
        vec![Quirk::BadUsage],
        vec![Quirk::NegativeUsage, Quirk::NoRole],
    ] {
        let f = Fixture::new(SimConfig {
            quirks: quirks.clone(),
            ..SimConfig::default()
        })
        .await;
        let input = f.write_jsonl("in.jsonl", &rows(5, 0));
        let out = f.path("out.parquet");
        let url = f.openai_url();
        let args = [
            "run",
            "--input",
            input.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
            "--endpoint",
            &url,
            "--model",
            "m",
            "--prompt",
            "{{text}}",
        ];
        let o = f.aiq(&args, &[("OPENAI_API_KEY", TOKEN)]).await;
        assert_ok(&o);
        let (_, got) = read_rows(&out);
        for (i, row) in got.iter().enumerate() {
            assert_eq!(row["error_message"], json!(null), "{quirks:?}");
            assert!(row["result"]
                .as_str()
                .unwrap()
                .starts_with(&format!("echo: row-{i} ")));
        }
        let bad_usage = quirks != vec![Quirk::NoRole];
        if bad_usage {
            assert!(got.iter().all(|r| r["prompt_tokens"] == json!(0)));
            let warned = stderr(&o).matches("usage this aiq cannot read").count();
            assert_eq!(warned, 1, "warned once: {}", stderr(&o));
        } else {
            assert!(got.iter().all(|r| r["prompt_tokens"].as_i64() > Some(0)));
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn html_truncated_and_error_bodies_with_200_are_retried() {
    let f = Fixture::new(SimConfig {
        fault_rate: 0.3,
        faults: "html,truncated,error200".into(),
        seed: 3,
        ..SimConfig::default()
    })
    .await;
    let input = f.write_jsonl("in.jsonl", &rows(60, 0));
    let out = f.path("out.parquet");
    let o = f
        .run_openai(
            &input,
            &out,
            &["--prompt", "{{text}}", "--max-retries", "20"],
        )
        .await;
    assert_ok(&o);
    let (_, got) = read_rows(&out);
    assert!(got.iter().all(|r| r["error_message"].is_null()));
    let stats = f.sim.stats();
    assert!(stats.faults_injected >= 5, "{stats:?}");
    assert_eq!(stats.ok_by_prompt.len(), 60);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_error_in_a_200_reports_the_servers_message() {
    let f = Fixture::new(SimConfig {
        fault_rate: 1.0,
        faults: "error200".into(),
        ..SimConfig::default()
    })
    .await;
    let input = f.write_jsonl("in.jsonl", &rows(2, 0));
    let out = f.path("out.parquet");
    let o = f
        .run_openai(
            &input,
            &out,
            &["--prompt", "{{text}}", "--max-retries", "1"],
        )
        .await;
    assert_ok(&o);
    let (_, got) = read_rows(&out);
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
    let o = f.run_openai(&input, &out, &["--prompt", "{{text}}"]).await;
    assert_ok(&o);
    let (_, got) = read_rows(&out);
    assert!(got[0]["error_message"].is_null());
    let e = got[1]["error_message"]
        .as_str()
        .unwrap_or_else(|| panic!("{got:?}"));
    assert!(e.contains("content filter"), "{e}");
    assert_eq!(got[1]["finish_reason"], json!("content_filter"));
}
