//! `aiq run`: a checked plan → a finished output file.
//!
//! Everything that can be wrong with the job is found before the first
//! request: the input opens and its columns fit the templates, credentials
//! resolve, the output folder exists and any journal there belongs to this
//! job. Then the stages run concurrently, joined by bounded channels:
//! a reader thread (source) → the dispatcher (render, schedule, client) →
//! the collector (journal, sink) — and the parts are concatenated into the
//! output, which appears atomically.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arrow::record_batch::RecordBatch;
use tokio::sync::{mpsc, Semaphore};
use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::job::plan::Plan;
use crate::job::spend::{Enforcer, Meter};
use crate::pipeline::client::Client;
use crate::pipeline::collect::Collector;
use crate::pipeline::http::HttpPool;
use crate::pipeline::journal::{InputIdentity, Journal, Manifest};
use crate::pipeline::openai_batch::{InputFormat, OutputFormat};
use crate::pipeline::outcome::RowId;
use crate::pipeline::progress::{status_path, Progress, StatusFile, Summary};
use crate::pipeline::render::{BodyBuilder, Templates};
use crate::pipeline::schedule::Dispatcher;
use crate::pipeline::sink::{concat_parts, Layout, PartWriter};
use crate::pipeline::source::Source;
use crate::provider::limit::Limiter;
use crate::provider::reply::Shape;
use crate::provider::wire::Task;

/// Output rows per part file: bounds what a resume reloads from the journal.
pub const PART_ROWS: u64 = 65_536;

/// The journal format this build writes.
const JOURNAL_VERSION: u32 = 1;

/// How a run reports to the person running it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ui {
    pub quiet: bool,
}

pub async fn run(plan: Plan, ui: Ui) -> Result<Summary> {
    let started = Instant::now();
    let source = match plan.input_format {
        InputFormat::Rows => Source::open(&plan.input, plan.batch_rows)?,
        InputFormat::OpenaiBatch => {
            crate::pipeline::openai_batch::open(&plan.input, plan.batch_rows)?
        }
    };
    let templates = Arc::new(
        Templates::bind(
            plan.system.as_deref(),
            &plan.prompt,
            plan.prompt2.as_deref(),
            &source.schema,
        )?
        .with_images(&plan.images, &source.schema)?,
    );
    let layout =
        Layout::new(&source.schema, plan.result_type.arrow_type())?.with_prices(plan.prices);

    // The simulator (if any) lives as long as this function.
    let (endpoint, _simulator) = plan.resolve_endpoint().await?;
    let endpoint = Arc::new(endpoint);
    tracing::info!(url = %endpoint.url, "sending to {}", endpoint.label);

    let manifest = Manifest {
        version: JOURNAL_VERSION,
        input: InputIdentity::of(&plan.input)?,
        settings: plan.answer_settings(),
    };
    // Like `mkdir -p`: the example job writes under target/, which a fresh
    // clone built elsewhere (CARGO_TARGET_DIR) does not have.
    if let Some(parent) = plan.output.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .map_err(|e| Error::output(&plan.output, format!("cannot create its folder: {e}")))?;
    }
    let (journal, resume) = Journal::open(&plan.output, &manifest, plan.restart)?;
    if !resume.is_empty() && !ui.quiet {
        eprintln!(
            "resuming: {} rows already written, {} more in the journal of {}",
            resume.committed,
            resume.outcomes.len(),
            journal.dir().display()
        );
    }

    let http = HttpPool::new(
        &endpoint.url,
        plan.concurrency,
        plan.ca_cert.as_deref(),
        concat!("aiq/", env!("CARGO_PKG_VERSION")),
    )?;
    let limiter = Arc::new(Limiter::with_limits(&plan.limits()));
    let shape = Shape {
        task: plan.task,
        result_type: plan.result_type.clone(),
        function: plan.function.clone(),
        similarity: plan.prompt2.is_some(),
        raw: plan.passthrough(),
    };
    let client = Arc::new(Client::new(
        http,
        endpoint.clone(),
        limiter.clone(),
        plan.retry.clone(),
        shape,
        plan.stream,
    )?);
    let builder = Arc::new(BodyBuilder::new(plan.body_spec(), &templates));

    // Budgets are per job: earlier runs' spend (from the journal) counts.
    let budget = plan.budget.is_set().then(|| Enforcer {
        meter: Meter::new(plan.budget, plan.prices, &resume.spent),
        committed: resume.committed,
        total_rows: source.total_rows,
    });
    if let Some(why) = budget.as_ref().and_then(|b| b.meter.exhausted()) {
        return Err(Error::Stopped(format!(
            "{why} by earlier runs of this job; nothing was sent. Give a higher budget to go on \
             (finished rows are not paid for again)."
        )));
    }

    // Stage 1: the reader thread streams batches, skipping committed rows.
    let committed = resume.committed;
    let (batch_tx, batch_rx) = mpsc::channel::<(RowId, RecordBatch)>(2);
    let total_rows = source.total_rows;
    let reader = tokio::task::spawn_blocking(move || -> Result<()> {
        let mut first: RowId = 0;
        for batch in source.into_batches() {
            let batch = batch?;
            let n = batch.num_rows() as u64;
            let start = first;
            first += n;
            if first <= committed {
                continue;
            }
            let (start, batch) = if start < committed {
                let skip = (committed - start) as usize;
                (committed, batch.slice(skip, batch.num_rows() - skip))
            } else {
                (start, batch)
            };
            if batch_tx.blocking_send((start, batch)).is_err() {
                break; // the job stopped
            }
        }
        Ok(())
    });

    // Stage 2: the dispatcher renders and launches calls.
    let stop = Arc::new(AtomicBool::new(false));
    let (event_tx, event_rx) = mpsc::channel(1024);
    let open_batches = 4 + plan.concurrency.div_ceil(plan.batch_rows);
    let done: HashSet<RowId> = resume.outcomes.keys().copied().collect();
    let dispatcher = Dispatcher {
        client: client.clone(),
        templates: templates.clone(),
        builder,
        events: event_tx,
        in_flight: Arc::new(Semaphore::new(plan.concurrency)),
        open_batches: Arc::new(Semaphore::new(open_batches)),
        stop: stop.clone(),
        done: Arc::new(done),
        warmup: plan.warmup && plan.task == Task::Chat,
        batch_size: plan.batch_size,
        similarity: plan.prompt2.is_some(),
        passthrough: plan.passthrough(),
    };
    let dispatch = tokio::spawn(dispatcher.run(batch_rx));

    // Stage 3: the collector journals outcomes and writes ordered parts.
    let to_do = total_rows.map(|t| t.saturating_sub(committed));
    let status = StatusFile::start(status_path(&plan.output), to_do);
    let progress = Progress::new(to_do, ui.quiet)
        .with_status(status.clone())
        .with_in_flight(client.stats.in_flight.clone());
    let parts = PartWriter::new(
        journal.parts_dir(),
        layout.output.clone(),
        PART_ROWS,
        resume.parts,
    );
    let summary = Summary {
        prices: plan.prices,
        ..Summary::default()
    };
    let mut collector = Collector::new(
        journal,
        layout,
        parts,
        resume.outcomes,
        stop.clone(),
        progress,
    );
    collector.fail_on_error = plan.fail_on_error;
    collector.summary = summary;
    collector.budget = budget;
    let collected = collector.run(event_rx).await;
    if let Err(e) = &collected {
        status.finish(None, "stopped", Some(e.to_string()));
    }
    stop.store(true, Ordering::Relaxed);
    let _ = dispatch.await;
    // A read error ends the input early: that is a failed job, not a done one.
    let read = reader
        .await
        .map_err(|e| Error::Stopped(format!("input reader failed: {e}")))?;
    let mut collector = collected?;
    read?;

    collector.parts.commit()?;
    let rows = match plan.output_format {
        OutputFormat::Parquet => concat_parts(
            &collector.parts.parts,
            &plan.output,
            collector.layout.output.clone(),
        )?,
        OutputFormat::OpenaiBatch => {
            crate::pipeline::openai_batch::write_output(&collector.parts.parts, &plan.output)?
        }
    };
    let mut summary = collector.summary.clone();
    summary.rows = rows;
    summary.resumed += committed;
    summary.requests = client.stats.attempts.load(Ordering::Relaxed);
    summary.retries = client.stats.retries.load(Ordering::Relaxed);
    summary.rate_limited = client.stats.rate_limited.load(Ordering::Relaxed);
    summary.ambiguous_retries = client.stats.ambiguous_retries.load(Ordering::Relaxed);
    summary.elapsed_secs = started.elapsed().as_secs_f64();
    summary.output = plan.output.display().to_string();
    collector.journal.remove()?;
    status.finish(Some(&summary), "done", None);
    Ok(summary)
}
