//! HTTPS as hosted endpoints serve it: HTTP/2 with a cap on the streams of
//! each connection, and a certificate from a CA the client must be told
//! about. The simulator makes its own test CA (`SimConfig::tls`).

use aiq::simulator::SimConfig;

use super::util::*;

async fn https(max_streams: u32, latency_ms: u64) -> Fixture {
    Fixture::new(SimConfig {
        tls: true,
        max_streams,
        latency_ms,
        ..SimConfig::default()
    })
    .await
}

fn ca_file(f: &Fixture) -> String {
    let path = f.path("ca.pem");
    std::fs::write(&path, f.sim.ca_pem().expect("a TLS simulator has a CA")).unwrap();
    path.to_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_server_sees_the_concurrency_asked_for_past_stream_caps() {
    // 100 streams per HTTP/2 connection, 1 s per call: one connection
    // would hold the job to 100 in flight (README: the server sees ~400).
    let f = https(100, 1_000).await;
    let ca = ca_file(&f);
    let input = f.write_jsonl("in.jsonl", &rows(1_200, 0));
    let out = f.path("out.parquet");
    let flags = ["--concurrency", "400", "--no-warmup", "--ca-cert", &ca];
    let o = f.score(&input, &out, &flags).await;
    let got = ok_rows(&o, &out);
    assert_eq!(got.len(), 1_200);
    assert!(got.iter().all(|r| r["error_message"].is_null()));
    // More than one connection's cap: the calls went over several.
    let stats = f.sim.stats();
    assert!(
        stats.max_in_flight > 100,
        "the server saw at most {} calls in flight of 400",
        stats.max_in_flight
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_untrusted_certificate_stops_the_job_at_once() {
    let f = https(100, 0).await;
    let input = f.write_jsonl("in.jsonl", &rows(50, 0));
    let out = f.path("out.parquet");
    let o = f.score(&input, &out, &["--concurrency", "4"]).await;
    let err = assert_exit(&o, 1, &["certificate"]);
    assert!(
        err.contains("--ca-cert") && err.contains("SSL_CERT_FILE"),
        "{err}"
    );
    // No retries: a handful of handshakes (one per worker at most), and
    // none of rustls' own log lines or colour codes under -q.
    let stats = f.sim.stats();
    assert!(stats.tls_failures <= 8, "{} handshakes", stats.tls_failures);
    assert_eq!(stats.requests, 0);
    assert!(!err.contains('\u{1b}') && !err.contains("ERROR"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_ca_file_that_is_not_pem_is_bad_usage() {
    let f = https(100, 0).await;
    let bad = f.path("bad.pem");
    std::fs::write(&bad, "not a certificate").unwrap();
    let input = f.write_jsonl("in.jsonl", &rows(2, 0));
    let out = f.path("out.parquet");
    let flags = ["--ca-cert", bad.to_str().unwrap()];
    let o = f.score(&input, &out, &flags).await;
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(stderr(&o).contains("--ca-cert"));
}
