//! The library entry the Python package drives: [`run_with`] over record
//! batches in memory, the output handed back as batches, stopped by an
//! interrupt instead of the process's signals. Same plan, same pipeline as
//! `aiq run`.

use std::sync::Arc;
use std::time::Duration;

use aiq::job::plan::Plan;
use aiq::job::settings::{JobSettings, SimulatorSettings};
use aiq::pipeline::journal::{state_dir, InputIdentity};
use aiq::pipeline::run::{run_with, Io, Ui};
use aiq::pipeline::source::{Format, Source};
use arrow::array::{Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use tokio::sync::{mpsc, Notify};

fn memory_source(rows: i64, batch: i64) -> (Source, InputIdentity) {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("text", DataType::Utf8, false),
    ]));
    let batches: Vec<aiq::Result<RecordBatch>> = (0..rows)
        .step_by(batch as usize)
        .map(|start| {
            let ids: Vec<i64> = (start..(start + batch).min(rows)).collect();
            let texts: Vec<String> = ids.iter().map(|i| format!("row {i}")).collect();
            Ok(RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(Int64Array::from(ids)),
                    Arc::new(StringArray::from(texts)),
                ],
            )
            .expect("batch"))
        })
        .collect();
    let path = std::path::Path::new("<memory>");
    let source = Source::from_batches(
        path,
        Format::Arrow,
        schema,
        Some(rows as u64),
        Box::new(batches.into_iter()),
    );
    let identity = InputIdentity {
        path: "<memory>".into(),
        size: rows as u64,
        modified: 0,
    };
    (source, identity)
}

fn plan(output: std::path::PathBuf, latency_ms: u64) -> Plan {
    let settings = JobSettings {
        input: Some("<memory>".into()),
        output: Some(output),
        endpoint: Some("simulator".into()),
        prompt: Some("Summarize: {{text}}".into()),
        batch_rows: Some(4),
        concurrency: Some(4),
        simulator: Some(SimulatorSettings {
            latency_ms: Some(latency_ms),
            ..Default::default()
        }),
        ..Default::default()
    };
    Plan::from_settings(settings, false).expect("plan")
}

#[tokio::test(flavor = "multi_thread")]
async fn batches_in_batches_out_in_order_and_nothing_on_disk() {
    let dir = tempfile::tempdir().expect("temp dir");
    let output = dir.path().join("unused.parquet");
    let (tx, mut rx) = mpsc::channel(2);
    let io = Io {
        source: Some(memory_source(10, 3)),
        batches: Some(tx),
        interrupt: Some(Arc::new(Notify::new())),
        named: false,
    };
    let job = tokio::spawn(run_with(plan(output.clone(), 0), io, Ui { quiet: true }));
    let mut ids = Vec::new();
    while let Some(batch) = rx.recv().await {
        assert!(batch.num_rows() <= 4, "batches are re-cut to batch_rows");
        let id = batch
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .expect("id");
        ids.extend(id.values().iter().copied());
        let result = batch.column_by_name("result").expect("result column");
        assert_eq!(result.null_count(), 0);
    }
    let summary = job.await.expect("join").expect("run");
    assert_eq!(ids, (0..10).collect::<Vec<_>>());
    assert_eq!((summary.rows, summary.ok), (10, 10));
    assert!(!output.exists());
    assert!(!state_dir(&output).exists());
    assert!(!dir.path().join("unused.parquet.status.json").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_interrupt_stops_the_run_and_keeps_the_journal() {
    let dir = tempfile::tempdir().expect("temp dir");
    let output = dir.path().join("out.parquet");
    let interrupt = Arc::new(Notify::new());
    let io = Io {
        source: Some(memory_source(40, 4)),
        batches: None,
        interrupt: Some(interrupt.clone()),
        named: false,
    };
    // Calls that take a minute: only the interrupt can end this run soon.
    let job = tokio::spawn(run_with(
        plan(output.clone(), 60_000),
        io,
        Ui { quiet: true },
    ));
    while !state_dir(&output).join("journal.jsonl").exists() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    interrupt.notify_one();
    tokio::time::sleep(Duration::from_millis(50)).await;
    interrupt.notify_one();
    let result = tokio::time::timeout(Duration::from_secs(60), job)
        .await
        .expect("the run stops when interrupted twice")
        .expect("join");
    let err = result.expect_err("an interrupted run fails");
    assert_eq!(err.exit_code(), 1, "{err}");
    assert!(err.to_string().contains("interrupted"), "{err}");
    assert!(
        state_dir(&output).exists(),
        "the journal stays for a resume"
    );
    assert!(!output.exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn rows_handed_in_are_sent_even_into_a_finished_output() {
    // Rows in memory have no identity to trust (the same schema and count
    // may be other rows): a finished output from them is written again.
    let dir = tempfile::tempdir().expect("temp dir");
    let output = dir.path().join("out.parquet");
    for _ in 0..2 {
        let io = Io {
            source: Some(memory_source(10, 3)),
            batches: None,
            interrupt: Some(Arc::new(Notify::new())),
            named: false,
        };
        let summary = run_with(plan(output.clone(), 0), io, Ui { quiet: true })
            .await
            .expect("run");
        assert_eq!((summary.rows, summary.ok, summary.resumed), (10, 10, 0));
    }
}
