//! aiq's own CPU cost per row, without the network: render a row's prompt,
//! build its request body, parse a reply, append the outcome to the journal
//! and assemble + encode the output Parquet batch (and the scrubbing of
//! secrets from each reply body, `reply_scrub_*`). Each stage is measured
//! alone and then all together, per batch of `ROWS` rows, reported as rows
//! per second (`Throughput::Elements`). The budget is 50 µs of CPU per row
//! for the whole client side; `benches/e2e.sh` measures the same against the
//! simulator, HTTP included.

use std::hint::black_box;
use std::sync::Arc;

use aiq::pipeline::journal::{InputIdentity, Journal, Manifest};
use aiq::pipeline::outcome::Outcome;
use aiq::pipeline::parquet_out::writer_properties;
use aiq::pipeline::render::{BodyBuilder, BodySpec, Call, RenderedRow, Templates};
use aiq::pipeline::sink::Layout;
use aiq::provider::auth::{Credentials, Secret};
use aiq::provider::reply::{split_usage, Shape};
use aiq::provider::wire::Task;
use arrow::array::{Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use parquet::arrow::ArrowWriter;
use serde_json::{json, Map, Value};

const ROWS: usize = 1024;

struct Fixture {
    batch: RecordBatch,
    templates: Templates,
    builder: BodyBuilder,
    shape: Shape,
    layout: Layout,
    replies: Vec<Vec<u8>>,
    _dir: tempfile::TempDir,
    journal: Journal,
}

fn fixture(width: usize) -> Fixture {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("product", DataType::Utf8, false),
        Field::new("text", DataType::Utf8, false),
    ]));
    let filler = "the product arrived on time, works as described, battery lasts two days. ";
    let texts: Vec<String> = (0..ROWS)
        .map(|i| {
            let mut t = format!("Review {i}: ");
            while t.len() < width {
                t.push_str(filler);
            }
            t.truncate(width);
            t
        })
        .collect();
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(Int64Array::from_iter_values(0..ROWS as i64)),
            Arc::new(StringArray::from_iter_values((0..ROWS).map(|i| {
                if i % 2 == 0 {
                    "phone"
                } else {
                    "laptop"
                }
            }))),
            Arc::new(StringArray::from_iter_values(texts.iter())),
        ],
    )
    .expect("batch");
    let templates = Templates::bind(
        Some("You are a terse product analyst."),
        "Summarize this {{product}} review in one sentence:\n\n{{text}}",
        None,
        &schema,
    )
    .expect("templates");
    let mut params = Map::new();
    params.insert("max_tokens".into(), json!(64));
    let builder = BodyBuilder::new(
        BodySpec {
            task: Task::Chat,
            model: None,
            params,
            response_format: None,
            cache_control: false,
            prompt_cache_key: false,
            stream: false,
            stream_usage_option: false,
        },
        &templates,
    );
    let replies = texts
        .iter()
        .map(|t| {
            serde_json::to_vec(&json!({
                "id": "chatcmpl-1", "object": "chat.completion", "model": "m",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": format!("echo: {}", &t[..t.len().min(64)])}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 40, "completion_tokens": 24, "total_tokens": 64, "prompt_tokens_details": {"cached_tokens": 8}}
            }))
            .expect("json")
        })
        .collect();
    let layout = Layout::new(&schema, DataType::Utf8).expect("layout");
    let dir = tempfile::tempdir().expect("temp dir");
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, "{}\n").expect("input");
    let manifest = Manifest {
        version: 1,
        input: InputIdentity::of(&aiq::job::location::Location::Local(input)).expect("identity"),
        settings: json!({}),
    };
    let (journal, _) =
        Journal::open(&dir.path().join("out.parquet"), &manifest, true).expect("journal");
    Fixture {
        batch,
        templates,
        builder,
        shape: Shape::string(Task::Chat),
        layout,
        replies,
        _dir: dir,
        journal,
    }
}

fn render(f: &Fixture) -> Vec<RenderedRow> {
    f.templates
        .render_batch(&f.batch, 0)
        .into_iter()
        .flatten()
        .flatten()
        .collect()
}

fn bodies(f: &Fixture, rows: &[RenderedRow]) -> Vec<Call> {
    rows.iter().map(|r| f.builder.single(r)).collect()
}

/// Parse each row's reply into its outcome, as the client does.
fn outcomes(f: &Fixture) -> Vec<Outcome> {
    f.replies
        .iter()
        .enumerate()
        .map(|(i, body)| {
            let reply = f.shape.parse(body, 1).expect("reply parses");
            let usage = split_usage(reply.usage, 1)[0];
            let r = &reply.rows[0];
            Outcome {
                row: i as u64,
                result: r.result.clone().unwrap_or(Value::Null),
                error_message: None,
                finish_reason: r.finish_reason.clone(),
                usage,
                latency_ms: Some(120),
                attempts: 1,
                ..Outcome::default()
            }
        })
        .collect()
}

fn journal(f: &mut Fixture, outcomes: &[Outcome]) {
    for o in outcomes {
        f.journal.append(o).expect("append");
    }
    f.journal.flush().expect("flush");
}

fn assemble(f: &Fixture, outcomes: &mut [Outcome]) -> usize {
    let batch = f.layout.assemble(&f.batch, outcomes).expect("assemble");
    let mut w = ArrowWriter::try_new(std::io::sink(), batch.schema(), Some(writer_properties()))
        .expect("writer");
    w.write(&batch).expect("write");
    w.close().expect("close");
    batch.num_rows()
}

fn pipeline(c: &mut Criterion) {
    for width in [100, 4096] {
        per_row(c, width);
    }
}

fn per_row(c: &mut Criterion, width: usize) {
    let mut f = fixture(width);
    let mut g = c.benchmark_group(format!("per_row_{width}B"));
    g.throughput(Throughput::Elements(ROWS as u64));
    g.bench_function("render", |b| b.iter(|| black_box(render(&f))));
    let rows = render(&f);
    g.bench_function("body", |b| b.iter(|| black_box(bodies(&f, &rows))));
    g.bench_function("reply_parse", |b| b.iter(|| black_box(outcomes(&f))));
    // Every reply body passes the credentials' scrubber before it is parsed.
    let replies: Vec<bytes::Bytes> = f.replies.iter().map(|r| r.clone().into()).collect();
    for (kind, credentials) in [
        (
            "bearer",
            Credentials::Bearer(Secret::new("sk-test-SECRET-7f3a9c")),
        ),
        ("login", Credentials::Basic(Secret::new("alice:pAsSw0rd"))),
    ] {
        let scrub = credentials.scrubber();
        g.bench_function(format!("reply_scrub_{kind}"), |b| {
            b.iter(|| {
                for r in &replies {
                    black_box(scrub.bytes(r.clone()));
                }
            })
        });
    }
    let parsed = outcomes(&f);
    g.bench_function("journal_append", |b| {
        b.iter(|| journal(&mut f, black_box(&parsed)))
    });
    g.bench_function("parquet_assemble", |b| {
        b.iter(|| black_box(assemble(&f, &mut parsed.clone())))
    });
    g.bench_function("all", |b| {
        b.iter(|| {
            let rows = render(&f);
            black_box(bodies(&f, &rows));
            let mut parsed = outcomes(&f);
            journal(&mut f, &parsed);
            black_box(assemble(&f, &mut parsed))
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    // Short runs: the figures are stable to a few percent on 2 cores.
    config = Criterion::default().sample_size(20).warm_up_time(std::time::Duration::from_secs(1)).measurement_time(std::time::Duration::from_secs(3));
    targets = pipeline
}
criterion_main!(benches);
