//! `aiq bench` against the built-in simulator: every output appears, and the
//! latencies measured are at least what the simulator was configured to
//! take (a reply can be late, never early). No upper bounds: how late a
//! reply is depends on the machine's load, and tests assert no timings.

use serde_json::Value;

use super::util::{assert_ok, read_rows, Fixture, TOKEN};
use aiq::simulator::SimConfig;

const TTFT_MS: f64 = 100.0;
const ITL_MS: f64 = 5.0;
const OUTPUT_TOKENS: f64 = 20.0;

/// `--json JSON --plot PLOT`: where a bench writes its summary and chart.
fn outputs(json: &std::path::Path, plot: &std::path::Path) -> [String; 4] {
    let path = |p: &std::path::Path| p.display().to_string();
    ["--json".into(), path(json), "--plot".into(), path(plot)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_writes_table_json_records_and_plot() {
    let fx = Fixture::new(SimConfig::default()).await;
    let (json, records, plot) = (
        fx.path("bench.json"),
        fx.path("records.parquet"),
        fx.path("sweep.svg"),
    );
    let written = outputs(&json, &plot);
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
                "--records",
                records.to_str().unwrap(),
                &written[0],
                &written[1],
                &written[2],
                &written[3],
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
        // A reply can be late, never early: each latency is at least what
        // the simulator was told to take (how much more depends on the
        // machine, so no upper bound). TTFT: the first-token delay.
        let p = |metric: &str, q: &str| {
            step[metric][q]
                .as_f64()
                .unwrap_or_else(|| panic!("{metric} {q} in {step}"))
        };
        let ttft = p("ttft_ms", "p50");
        assert!(ttft >= TTFT_MS, "ttft p50 {ttft}");
        assert!(ttft <= p("ttft_ms", "p90") && p("ttft_ms", "p90") <= p("ttft_ms", "p99"));
        // End to end: first token, then one chunk per further token and a
        // finish chunk, each ITL apart; never before the first token.
        let e2e_expected = TTFT_MS + ITL_MS * OUTPUT_TOKENS;
        let e2e = p("e2e_ms", "p50");
        assert!(
            e2e >= e2e_expected && e2e >= ttft,
            "e2e p50 {e2e}, expected at least {e2e_expected} and ttft p50 {ttft}"
        );
        // Inter-token latency is measured; a late chunk lets the next ones
        // catch up (they are due at fixed times), so it has no bound here.
        let itl = p("itl_ms", "p50");
        assert!(itl.is_finite() && itl >= 0.0, "itl p50 {itl}");
        assert!(step["output_tokens_per_sec"].as_f64().unwrap() > 0.0);
    }

    let (schema, rows) = read_rows(&records);
    assert!(schema.field_with_name("ttft_ms").is_ok() && schema.field_with_name("e2e_ms").is_ok());
    assert_eq!(rows.len(), 24);
    for r in &rows {
        let ms = |k: &str| r[k].as_f64().unwrap_or_else(|| panic!("{k} in {r:?}"));
        assert!(r["status"] == 200 && r["output_tokens"] == 20, "{r:?}");
        assert!(
            ms("ttft_ms") >= TTFT_MS && ms("e2e_ms") >= ms("ttft_ms"),
            "{r:?}"
        );
    }

    let svg = std::fs::read_to_string(&plot).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.contains("achieved throughput") && svg.contains("c=4"),
        "{}",
        &svg[..200.min(svg.len())]
    );
}

/// `aiq bench -q ARGS --json -` against the fixture's simulator (over its
/// OpenAI URL with the token): the summary it printed.
async fn bench_json(fx: &Fixture, args: &[&str]) -> Value {
    let url = fx.openai_url();
    let mut all = vec!["bench", "-q", "--endpoint", &url, "--json", "-"];
    all.extend_from_slice(args);
    let out = fx.aiq(&all, &[("OPENAI_API_KEY", TOKEN)]).await;
    assert_ok(&out);
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_rate_sweep_with_json_on_stdout() {
    let fx = Fixture::new(SimConfig::default()).await;
    let summary = bench_json(&fx, &["--rate", "50,100", "--requests", "20"]).await;
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
        &["bench", "--endpoint", "simulator", "--plot", "p.jpg"],
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

/// Decode a PNG written by `aiq bench --plot`: its size and RGB pixels
/// (8-bit RGB, unfiltered scanlines, as aiq writes it).
fn decode_png(bytes: &[u8]) -> (u32, u32, Vec<[u8; 3]>) {
    use std::io::Read;
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
    let (mut at, mut size, mut idat) = (8, (0, 0), Vec::new());
    while at < bytes.len() {
        let len = u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        let (kind, body) = (&bytes[at + 4..at + 8], &bytes[at + 8..at + 8 + len]);
        match kind {
            b"IHDR" => {
                size = (
                    u32::from_be_bytes(body[0..4].try_into().unwrap()),
                    u32::from_be_bytes(body[4..8].try_into().unwrap()),
                );
                assert_eq!(&body[8..10], &[8, 2], "8-bit RGB");
            }
            b"IDAT" => idat.extend_from_slice(body),
            _ => {}
        }
        at += 12 + len;
    }
    let mut raw = Vec::new();
    flate2::read::ZlibDecoder::new(&idat[..])
        .read_to_end(&mut raw)
        .unwrap();
    let row = 1 + 3 * size.0 as usize;
    assert_eq!(raw.len(), row * size.1 as usize);
    let pixels = raw
        .chunks(row)
        .flat_map(|r| {
            r[1..]
                .chunks(3)
                .map(|p| [p[0], p[1], p[2]])
                .collect::<Vec<_>>()
        })
        .collect();
    (size.0, size.1, pixels)
}

/// `--plot x.png` draws the same picture as the SVG: title, a subtitle
/// saying what was sent and counted, the SLO lines, and a note when the
/// percentiles come from too few requests. Warm-up requests reach the
/// server but no figure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_png_and_svg_carry_subtitle_slo_lines_and_few_sample_note() {
    let fx = Fixture::new(SimConfig::default()).await;
    let url = fx.openai_url();
    let (png, svg, json) = (
        fx.path("sweep.png"),
        fx.path("sweep.svg"),
        fx.path("b.json"),
    );
    let mut texts = Vec::new();
    for plot in [&png, &svg] {
        let written = outputs(&json, plot);
        let out = fx
            .aiq(
                &[
                    "bench",
                    "--endpoint",
                    &url,
                    "--model",
                    "m",
                    "--concurrency",
                    "1,2",
                    "--requests",
                    "8",
                    "--warmup",
                    "3",
                    "--input-tokens",
                    "64",
                    "--output-tokens",
                    "5",
                    "--slo-e2e-ms",
                    "2000",
                    "--slo-ttft-ms",
                    "1500",
                    &written[0],
                    &written[1],
                    &written[2],
                    &written[3],
                ],
                &[("OPENAI_API_KEY", TOKEN)],
            )
            .await;
        assert_ok(&out);
        texts.push(String::from_utf8_lossy(&out.stdout).to_string());
    }
    // Two runs of 3 warm-up and 2 x 8 measured requests each; the warm-up
    // is in no figure.
    assert_eq!(fx.sim.stats().requests, 2 * (3 + 16));
    let summary: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(summary["warmup"], 3);
    assert_eq!(summary["steps"][0]["requests"], 8);
    assert_eq!(summary["steps"][0]["e2e_ms"]["samples"], 8);
    // What was sent and what the server counted.
    let counted = summary["prompt_tokens"]["min"].as_u64().unwrap();
    assert!(counted >= 64, "{summary}");
    let table = &texts[0];
    assert!(
        table.contains("sent: prompts of ~64 tokens (")
            && table.contains("max_tokens 5 (5 counted)"),
        "{table}"
    );
    // 8 samples: the percentiles are marked and explained.
    assert!(
        table.contains('*') && table.contains("fewer than 20"),
        "{table}"
    );

    let svg = std::fs::read_to_string(&svg).unwrap();
    for text in [
        "aiq bench: latency vs achieved throughput",
        &format!("{url} · m · chat, streamed"),
        "prompts of ~64 tokens",
        "e2e SLO 2000 ms",
        "TTFT SLO 1500 ms",
        "hollow points",
        "c=1 n=8",
    ] {
        assert!(svg.contains(text), "the SVG lacks {text:?}");
    }

    let (w, h, pixels) = decode_png(&std::fs::read(&png).unwrap());
    assert_eq!((w, h), (1000, 680));
    let count = |c: [u8; 3]| pixels.iter().filter(|p| **p == c).count();
    // Mostly white, with the e2e line's blue and dark text drawn on it.
    assert!(count([255, 255, 255]) > pixels.len() / 2);
    assert!(count([31, 119, 180]) > 100, "no e2e line");
    // The title: near-black anti-aliased text in the top rows.
    let dark_in_title = pixels[..(w * 40) as usize]
        .iter()
        .filter(|p| p.iter().all(|c| *c < 80))
        .count();
    assert!(
        dark_in_title > 200,
        "no title text ({dark_in_title} dark pixels)"
    );
}

/// Embeddings are benchmarked too: unstreamed, end-to-end latency only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_measures_embeddings() {
    let fx = Fixture::new(SimConfig::default()).await;
    let flags = ["--model", "e", "--task", "embeddings", "--requests", "5"];
    let summary = bench_json(&fx, &flags).await;
    assert_eq!(summary["stream"], false);
    assert_eq!(summary["steps"][0]["errors"], 0, "{summary}");
    assert_eq!(summary["steps"][0]["e2e_ms"]["samples"], 5);
    assert!(summary["steps"][0]["ttft_ms"].is_null());
}
