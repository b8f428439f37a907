//! Identical requests: the request fingerprint each row's outcome carries
//! (the `request_fingerprint` column).

use aiq::simulator::SimConfig;
use serde_json::{json, Value};

use super::util::*;

/// `text` per row (null: not sent), each with its own `id`.
fn texts(texts: &[Option<&str>]) -> Vec<Value> {
    texts
        .iter()
        .enumerate()
        .map(|(i, t)| json!({"id": i, "text": t}))
        .collect()
}

/// The `request_fingerprint` column of `out`, by row.
fn fingerprints(out: &std::path::Path) -> Vec<Value> {
    read_rows(out)
        .1
        .into_iter()
        .map(|r| r["request_fingerprint"].clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn request_fingerprint_names_the_request_not_the_row() {
    let input = texts(&[Some("a"), Some("b"), Some("a"), None, Some("b")]);
    let (f, input, out) = job_of(SimConfig::default(), &input).await;
    assert_ok(&f.score(&input, &out, &[]).await);
    let fp = fingerprints(&out);
    let hex = |v: &Value| {
        v.as_str()
            .map(|s| s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit()))
    };
    assert_eq!(hex(&fp[0]), Some(true), "{fp:?}");
    assert_eq!(fp[0], fp[2], "the same text, other ids: the same request");
    assert_eq!(fp[1], fp[4]);
    assert_ne!(fp[0], fp[1]);
    assert_eq!(fp[3], Value::Null, "a row not sent has none");

    // Another run of the same job names the same requests; streaming the
    // replies changes neither the answer nor the bill.
    let again = f.path("again.parquet");
    assert_ok(&f.score(&input, &again, &["--stream"]).await);
    assert_eq!(fingerprints(&again), fp);
    // Nor does asking through the Batch API (another rate, the same request).
    let batch = f.path("batch.parquet");
    let o = f.score(&input, &batch, &["--mode", "batch", "--poll-secs", "0.02"]);
    assert_ok(&o.await);
    assert_eq!(fingerprints(&batch), fp);

    // A parameter, the system prompt or the result type do (the model: a
    // unit test in src/pipeline/fingerprint.rs).
    for (name, flags) in [
        ("param", &["--param", "temperature=0.5"][..]),
        ("system", &["--system", "Be terse."][..]),
        ("type", &["--return-type", "INT"][..]),
    ] {
        let other = f.path(&format!("{name}.parquet"));
        let o = f.score(&input, &other, flags).await;
        assert_ok(&o);
        let changed = fingerprints(&other);
        assert_ne!(changed[0], fp[0], "{name}");
        assert_eq!(changed[0], changed[2], "{name}");
    }
}
