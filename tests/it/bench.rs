//! `aiq bench` against the built-in simulator: every output appears, and the
//! latencies measured match what the simulator was configured to take.
//! Latencies are long (100 ms) so scheduling noise on a loaded machine is
//! small next to them; upper bounds are loose (+15%), lower bounds strict
//! (a reply can be late, never early).

use serde_json::Value;

use super::util::{assert_ok, read_rows, Fixture};
use aiq::simulator::SimConfig;

const TTFT_MS: f64 = 100.0;
const ITL_MS: f64 = 5.0;
const OUTPUT_TOKENS: f64 = 20.0;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_writes_table_json_records_and_plot() {
    let fx = Fixture::new(SimConfig::default()).await;
    let (json, records, plot) = (
        fx.path("bench.json"),
        fx.path("records.parquet"),
        fx.path("sweep.svg"),
    );
    let out = fx
        .aiq(
            &[
                "bench",
                "--endpoint",
                "simulator",
                "--concurrency",
                "1,4",
                "--requests",
                "12",
                "--input-tokens",
                "64",
                "--output-tokens",
                "20",
                "--sim-ttft-ms",
                "100",
                "--sim-itl-ms",
                "5",
                "--slo-e2e-ms",
                "10000",
                "--json",
                json.to_str().unwrap(),
                "--records",
                records.to_str().unwrap(),
                "--plot",
                plot.to_str().unwrap(),
            ],
            &[],
        )
        .await;
    assert_ok(&out);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("ttft p50") && table.contains("c=1") && table.contains("c=4"),
        "{table}"
    );

    let summary: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let steps = summary["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 2);
    for step in steps {
        assert_eq!(step["requests"], 12);
        assert_eq!(step["errors"], 0);
        assert_eq!(step["goodput_share"], 1.0);
        // TTFT: the configured first-token delay.
        let ttft = step["ttft_ms"]["p50"].as_f64().unwrap();
        assert!((TTFT_MS..TTFT_MS * 1.15).contains(&ttft), "ttft p50 {ttft}");
        // End to end: first token, then one chunk per further token and a
        // finish chunk, each ITL apart.
        let e2e_expected = TTFT_MS + ITL_MS * OUTPUT_TOKENS;
        let e2e = step["e2e_ms"]["p50"].as_f64().unwrap();
        assert!(
            (e2e_expected..e2e_expected * 1.15).contains(&e2e),
            "e2e p50 {e2e}, expected {e2e_expected}"
        );
        let itl = step["itl_ms"]["p50"].as_f64().unwrap();
        assert!((ITL_MS * 0.9..ITL_MS * 1.3).contains(&itl), "itl p50 {itl}");
        assert!(step["output_tokens_per_sec"].as_f64().unwrap() > 0.0);
    }

    let (schema, rows) = read_rows(&records);
    assert!(schema.field_with_name("ttft_ms").is_ok() && schema.field_with_name("e2e_ms").is_ok());
    assert_eq!(rows.len(), 24);
    assert!(rows
        .iter()
        .all(|r| r["status"] == 200 && r["output_tokens"] == 20));

    let svg = std::fs::read_to_string(&plot).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.contains("achieved throughput") && svg.contains("c=4"),
        "{}",
        &svg[..200.min(svg.len())]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_rate_sweep_with_json_on_stdout() {
    let fx = Fixture::new(SimConfig::default()).await;
    let out = fx
        .aiq(
            &[
                "bench",
                "-q",
                "--endpoint",
                "simulator",
                "--rate",
                "50,100",
                "--requests",
                "20",
                "--json",
                "-",
            ],
            &[],
        )
        .await;
    assert_ok(&out);
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    let steps = summary["steps"].as_array().unwrap();
    assert_eq!(steps[0]["load"]["rate"], 50.0);
    assert_eq!(steps[1]["requests"], 20);
}

#[tokio::test]
async fn bench_usage_errors_exit_2() {
    let fx = Fixture::new(SimConfig::default()).await;
    for args in [
        &["bench", "--endpoint", "simulator", "--concurrency", "0"][..],
        &["bench", "--endpoint", "simulator", "--rate", "-1"],
        &[
            "bench",
            "--endpoint",
            "http://127.0.0.1:9/v1",
            "--sim-ttft-ms",
            "5",
        ],
        &[
            "bench",
            "--endpoint",
            "simulator",
            "--concurrency",
            "2",
            "--rate",
            "3",
        ],
        &[
            "bench",
            "--endpoint",
            "simulator",
            "--plot",
            "/no/such/folder/p.svg",
        ],
    ] {
        let out = fx.aiq(args, &[]).await;
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
