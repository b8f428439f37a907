//! Nested input columns in templates: struct, list and map columns are
//! values (`{{ meta.title }}`, `{% for t in meta.tags %}`, `{{ meta | tojson }}`),
//! decimals and timestamps keep their exact text, and a typo inside a
//! struct is found before any request, from Parquet and from JSONL. The
//! simulator echoes the prompt, so each row's result shows what was sent.

use std::sync::Arc;

use aiq::simulator::SimConfig;
use arrow::array::{
    Array, ArrayRef, Decimal128Array, Int64Array, Int64Builder, ListBuilder, MapBuilder,
    RecordBatch, StringArray, StringBuilder, StructArray, TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema};
use serde_json::{json, Value};

use super::util::*;

/// Two rows: `meta: struct<title, tags: list<string>, price: decimal(10,2)>`,
/// `attrs: map<string, int64>`, `at: timestamp[us, UTC]`; the second row's
/// meta is null (so it is not sent).
fn nested_batch() -> RecordBatch {
    let mut tags = ListBuilder::new(StringBuilder::new());
    tags.values().append_value("x");
    tags.values().append_value("y, z");
    tags.append(true);
    tags.append(true);
    let tags = tags.finish();
    let meta = StructArray::from(vec![
        (
            Arc::new(Field::new("title", DataType::Utf8, true)),
            Arc::new(StringArray::from(vec![Some("Deed \"A\""), Some("B")])) as ArrayRef,
        ),
        (
            Arc::new(Field::new("tags", tags.data_type().clone(), true)),
            Arc::new(tags) as ArrayRef,
        ),
        (
            Arc::new(Field::new("price", DataType::Decimal128(10, 2), true)),
            Arc::new(
                Decimal128Array::from(vec![1230, 5])
                    .with_precision_and_scale(10, 2)
                    .unwrap(),
            ) as ArrayRef,
        ),
    ]);
    // Null the second struct: SQL null in, null out.
    let meta = StructArray::new(
        meta.fields().clone(),
        meta.columns().to_vec(),
        Some(vec![true, false].into()),
    );
    let mut attrs = MapBuilder::new(None, StringBuilder::new(), Int64Builder::new());
    attrs.keys().append_value("pages");
    attrs.values().append_value(12);
    attrs.append(true).unwrap();
    attrs.append(true).unwrap();
    let attrs = attrs.finish();
    let at = TimestampMicrosecondArray::from(vec![1_700_000_000_123_456, 0]).with_timezone("UTC");
    let schema = Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("meta", meta.data_type().clone(), true),
        Field::new("attrs", attrs.data_type().clone(), true),
        Field::new("at", at.data_type().clone(), true),
    ]);
    RecordBatch::try_new(
        Arc::new(schema),
        vec![
            Arc::new(Int64Array::from(vec![1, 2])),
            Arc::new(meta),
            Arc::new(attrs),
            Arc::new(at),
        ],
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn nested_parquet_columns_are_template_values() {
    // Replies long enough to echo the whole prompt.
    let f = Fixture::new(sim(|c| c.output_tokens = 1000)).await;
    let input = f.write_parquet("in.parquet", nested_batch());
    let out = f.path("out.parquet");
    let prompt = "T={{ meta.title }}|J={{ meta.tags | join(';') }}|\
                  {% for t in meta.tags %}[{{ t }}]{% endfor %}|N={{ meta.tags | length }}|\
                  P={{ meta.price }}|M={{ attrs.pages }}|AT={{ at }}|JSON={{ meta | tojson }}";
    let flags = ["--prompt", prompt, "--param", "max_tokens=500"];
    let o = f.run_openai(&input, &out, &flags).await;
    let rows = ok_rows(&o, &out);
    assert_eq!(rows.len(), 2);
    let sent = rows[0]["result"].as_str().expect("row 0 answered");
    let expected = "echo: T=Deed \"A\"|J=x;y, z|[x][y, z]|N=2|P=12.30|M=12|\
                    AT=2023-11-14T22:13:20.123456Z|\
                    JSON={\"title\": \"Deed \\\"A\\\"\", \"tags\": [\"x\", \"y, z\"], \"price\": \"12.30\"}";
    assert_eq!(sent, expected);
    assert_eq!(rows[1]["result"], Value::Null, "a null struct is not sent");
    assert_eq!(rows[1]["attempts"], json!(0));
    assert_eq!(f.sim.stats().ok, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_typo_inside_a_struct_stops_the_job_before_any_request() {
    let f = Fixture::new(SimConfig::default()).await;
    let input = f.write_parquet("in.parquet", nested_batch());
    let out = f.path("out.parquet");
    let flags = ["--prompt", "Title: {{ meta.titel }}"];
    let o = f.run_openai(&input, &out, &flags).await;
    assert_exit(&o, 2, &["`meta.titel`", "title, tags, price"]);
    // Through a list or a map nothing is known before the rows: no error.
    let flags = ["--prompt", "{{ attrs.anything }}{{ meta.tags.first }}"];
    let o = f.run_openai(&input, &out, &flags).await;
    assert_ok(&o);
    assert_eq!(f.sim.stats().requests, 0, "no request for the typo");
}

#[tokio::test(flavor = "multi_thread")]
async fn nested_jsonl_objects_and_arrays_are_template_values() {
    let f = Fixture::new(SimConfig::default()).await;
    let input = f.write_jsonl(
        "in.jsonl",
        &[
            json!({"id": 1, "doc": {"title": "Lease", "parties": [{"name": "Ann"}, {"name": "Bo"}]}}),
            json!({"id": 2, "doc": {"title": "Sale", "parties": []}}),
        ],
    );
    let out = f.path("out.parquet");
    let prompt = "{{ doc.title }}:{% for p in doc.parties %} {{ p.name }}{% endfor %}";
    assert_ok(&f.run_openai(&input, &out, &["--prompt", prompt]).await);
    let (_, rows) = read_rows(&out);
    assert_eq!(rows[0]["result"], json!("echo: Lease: Ann Bo"));
    assert_eq!(rows[1]["result"], json!("echo: Sale:"));

    let flags = ["--prompt", "{{ doc.tilte }}"];
    let o = f.run_openai(&input, &f.path("typo.parquet"), &flags).await;
    assert_exit(&o, 2, &["`doc.tilte`"]);
    assert_eq!(f.sim.stats().ok, 2, "the typo sent nothing");
}
