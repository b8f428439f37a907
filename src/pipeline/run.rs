//! A job's run: a checked plan → a finished output file (`aiq run`, the
//! Python package and `aiq.spark`/`aiq.ray` all come here), in three steps:
//!
//! 1. [`prepare`]: everything that can be wrong with the job is found
//!    before the first request: the input opens and is checked whole, its
//!    columns fit the templates, the output is writable and locked for this
//!    writer, credentials resolve, and any journal there belongs to this job.
//! 2. [`execute`]: the stages run concurrently, joined by bounded channels:
//!    a reader thread (source) → the dispatcher (render, schedule, client)
//!    → the collector (journal, ordered parts).
//! 3. [`finish`]: the parts become the output, which appears atomically.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arrow::record_batch::RecordBatch;
use tokio::sync::{mpsc, Notify, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::job::location::{Location, Role};
use crate::job::plan::Plan;
use crate::job::settings::Mode;
use crate::job::spend::{Enforcer, Meter};
pub use crate::pipeline::batch::open_source;
use crate::pipeline::batch::{BatchJob, BatchReport};
use crate::pipeline::bounds::open_batches;
use crate::pipeline::call_journal::{CallJournal, Recall};
use crate::pipeline::collect::Collector;
use crate::pipeline::connect::{connect, Connection};
use crate::pipeline::context_cache;
use crate::pipeline::dedup::Dedup;
use crate::pipeline::delta::saved::Saved;
use crate::pipeline::delta::state_output;
use crate::pipeline::journal::{InputIdentity, Journal, Manifest, Resume};
use crate::pipeline::lock::WriterLock;
use crate::pipeline::openai_batch::OutputFormat;
use crate::pipeline::outcome::RowId;
use crate::pipeline::progress::{status_path, Live, Progress, StatusFile, Summary};
use crate::pipeline::recheck::{recheck, Batches, Rechecked};
use crate::pipeline::render::{BodyBuilder, Templates};
use crate::pipeline::schedule::Dispatcher;
use crate::pipeline::sink::{
    check_output, concat_parts, job_stamp, written_by, Layout, PartWriter,
};
use crate::pipeline::source::Source;
use crate::pipeline::store::{mirror, Remote, RemoteOutput, MIRROR_AFTER_LINES};
use crate::provider::batch_api::BatchApi;
use crate::provider::wire::Task;

/// The journal format this build writes (2: outcomes keyed by request).
const JOURNAL_VERSION: u32 = 2;

/// How a run reports to the person running it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ui {
    pub quiet: bool,
}

/// Where a run's rows come from and go to, when not the plan's files. The
/// CLI uses the default (read `plan.input`, write `plan.output`, stop on the
/// process's Ctrl-C); the Python package hands in an Arrow stream and may
/// take the output back as batches. Everything else is the same run.
#[derive(Default)]
pub struct Io {
    /// Rows to score instead of `plan.input`, and what identifies them in
    /// the journal's manifest (a resume checks it).
    pub source: Option<(Source, InputIdentity)>,
    /// Send the output here, batch by batch in input order, instead of
    /// writing `plan.output`: nothing goes to disk (no journal, no status
    /// file), so nothing can be resumed. The run ends when all is sent.
    pub batches: Option<mpsc::Sender<RecordBatch>>,
    /// Stop when this is notified instead of on the process's SIGINT and
    /// SIGTERM (an embedding interpreter owns its signals): the first
    /// notification stops sending and waits for the calls in flight, a
    /// second stops at once, as a first and second Ctrl-C do.
    pub interrupt: Option<Arc<Notify>>,
    /// The identity of `source` says which rows they are (a Spark or Ray
    /// task's run and partition), as a file's does: a run of them whose
    /// output already holds them is complete, and a Delta append of them
    /// that another attempt committed is not made again.
    pub named: bool,
}

pub async fn run(plan: Plan, ui: Ui) -> Result<Summary> {
    run_with(plan, Io::default(), ui).await
}

/// [`run`], with the input, output and interrupt given by `io`: the job is
/// prepared (everything checked, nothing sent), executed (the stages), and
/// finished (the output committed).
pub async fn run_with(plan: Plan, io: Io, ui: Ui) -> Result<Summary> {
    // However the run ends, its status file says how and its lock goes.
    let mut held = Held::default();
    let result = async {
        let ready = match prepare(&plan, io, ui, &mut held).await? {
            Prepared::Complete(summary) => return Ok(summary),
            Prepared::Ready(ready) => ready,
        };
        let ran = execute(&plan, *ready, ui, &mut held).await?;
        finish(&plan, ran, ui).await
    }
    .await;
    if let (Err(e), Some(status)) = (&result, &held.status) {
        status.fail(e);
    }
    if let Some(lock) = held.lock.take() {
        lock.release().await;
    }
    result
}

/// What a run holds that must be let go however it ends.
#[derive(Default)]
struct Held {
    status: Option<Arc<StatusFile>>,
    lock: Option<WriterLock>,
}

/// What preparing a job found.
enum Prepared {
    /// This job already wrote the output: nothing to send.
    Complete(Summary),
    Ready(Box<Ready>),
}

/// A job ready to send: everything found and checked, nothing sent yet.
struct Ready {
    started: Instant,
    templates: Arc<Templates>,
    layout: Layout,
    manifest: Manifest,
    /// What the output's footer records of the job that wrote it.
    stamp: String,
    /// The endpoint and pool (and the built-in simulator, when asked for:
    /// it lives as long as the run).
    connection: Connection,
    state: State,
    /// The input, its finished rows rechecked against the journal.
    input: Rechecked,
    total_rows: Option<u64>,
    batch_rows: usize,
    /// Output batches go here instead of to a file ([`Io::batches`]).
    batches: Option<mpsc::Sender<RecordBatch>>,
    interrupt: Option<Arc<Notify>>,
    /// Calls a merge's table answered (not sent).
    saved: Arc<Saved>,
    /// [`Io::named`], or the plan's own input.
    named: bool,
}

/// Where a job keeps what it has paid for: the journal and finished parts
/// (in a local scratch folder mirrored to the bucket for an object-store
/// output).
struct State {
    journal: Journal,
    /// The local output: `plan.output`, or its scratch copy.
    output: PathBuf,
    remote: Option<Arc<tokio::sync::Mutex<RemoteOutput>>>,
    /// Sends the state to the bucket; woken when a part is done.
    mirror: Option<JoinHandle<()>>,
    part_done: Arc<Notify>,
    /// Failed rows in finished parts: this run will not see them again.
    failed_before: u64,
}

/// Everything that can be wrong with the job is found here, before the
/// first request: the input, the templates, the output and its lock, the
/// endpoint and its credentials, and the journal.
async fn prepare(plan: &Plan, io: Io, ui: Ui, held: &mut Held) -> Result<Prepared> {
    let started = Instant::now();
    // The plan's input, not rows handed in: the output must not replace it.
    let own_input = io.source.is_none().then_some(&plan.input);
    let named = own_input.is_some() || io.named;
    crate::pipeline::batch::check_io(plan, io.source.is_some(), io.batches.is_some())?;
    let (source, identity) = match io.source {
        Some((source, identity)) => (source, Some(identity)),
        None => (open_source(plan)?, None),
    };
    let templates = Arc::new(Templates::for_plan(plan, &source.schema)?);
    // A merge reads its own input twice: the keys first (the last row of
    // each key is the one sent).
    let reopen = own_input.map(|_| open_source as fn(&Plan) -> Result<Source>);
    let (source, saved) = crate::pipeline::delta::skip_stored(plan, source, reopen, &templates)?;
    let layout =
        Layout::new(&source.schema, plan.result_type.arrow_type())?.with_prices(plan.prices);
    let manifest = Manifest {
        version: JOURNAL_VERSION,
        input: match identity {
            Some(identity) => identity,
            None => crate::pipeline::batch::input_identity(plan)?,
        },
        settings: plan.answer_settings(),
    };
    let stamp = job_stamp(&manifest);
    let delta = plan.output_format == OutputFormat::Delta;
    if io.batches.is_none() {
        match delta {
            true => crate::pipeline::delta::check_output(plan, &source.schema).await?,
            false => check_output(&plan.output, own_input)?,
        }
        let scope = plan.shard_scope();
        held.lock = Some(WriterLock::acquire(&state_output(plan), scope.as_deref()).await?);
        // Only a file's identity (or a name given with the rows) is trusted
        // to say the rows are the same: rows handed in (Python) may be
        // others of the same shape.
        if named && !(plan.restart || plan.overwrite || plan.retry_failed) {
            if let Some(summary) = complete(plan, &stamp, ui).await {
                return Ok(Prepared::Complete(summary));
            }
        }
    }

    let connection = connect(plan).await?;
    let endpoint = &connection.endpoint;
    tracing::info!(url = %endpoint.url, "sending to {}", endpoint.label);

    let (total_rows, batch_rows) = (source.total_rows, source.batch_rows.max(1));
    let (state, input) = open_state(plan, &manifest, source, io.batches.is_some(), ui).await?;
    Ok(Prepared::Ready(Box::new(Ready {
        started,
        templates,
        layout,
        manifest,
        stamp,
        connection,
        state,
        input,
        total_rows,
        batch_rows,
        batches: io.batches,
        interrupt: io.interrupt,
        saved,
        named,
    })))
}

/// Opens the job's journal (or none when the output goes back as batches),
/// rechecks the finished rows against the input, and says what a resume
/// found. An object-store output's manifest goes to the bucket before any
/// request (a denied write fails here), then the state follows.
async fn open_state(
    plan: &Plan,
    manifest: &Manifest,
    source: Source,
    to_batches: bool,
    ui: Ui,
) -> Result<(State, Rechecked)> {
    // An object-store output: the journal and parts are kept in a local
    // scratch folder and mirrored to the bucket (pipeline::store).
    let state = state_output(plan);
    let (remote, output) = match &state {
        Location::Local(output) => (None, output.clone()),
        Location::Store(_) if to_batches => (None, PathBuf::from(&state)),
        Location::Store(_) if plan.output_format == OutputFormat::OpenaiBatch => {
            return Err(Error::output(
                &plan.output,
                "--output-format openai-batch writes local files only",
            ))
        }
        Location::Store(url) => {
            let r = Remote::open(url, Role::Output)?;
            let r = RemoteOutput::prepare(r, plan.restart, plan.overwrite).await?;
            let output = r.local_output().to_path_buf();
            (Some(r), output)
        }
    };
    let (mut journal, resume) = match to_batches {
        true => (Journal::disabled(), Resume::default()),
        false => Journal::open(&output, manifest, plan.restart)?,
    };
    let (resume, again) = if plan.retry_failed {
        crate::pipeline::journal::retry_failed(&journal, resume)?
    } else {
        (resume, 0)
    };
    let dir = journal.dir().to_path_buf();
    let rechecked =
        tokio::task::spawn_blocking(move || recheck(&dir, resume, source.into_batches()))
            .await
            .map_err(|e| Error::Stopped(format!("rechecking the input failed: {e}")))??;
    let resume = &rechecked.resume;
    let failed_before = resume.failed.range(..resume.committed).count() as u64;
    if !ui.quiet {
        if plan.retry_failed {
            eprintln!("--retry-failed: sending {again} failed rows again");
        }
        if rechecked.changed > 0 {
            eprintln!(
                "the input changed: {} finished rows are sent again (every other answer is kept)",
                rechecked.changed
            );
        }
        if !resume.is_empty() {
            let place = remote
                .as_ref()
                .map_or(journal.dir().display().to_string(), |r| {
                    r.state_url().to_string()
                });
            eprintln!(
                "resuming: {} rows already written, {} more in the journal of {place}",
                resume.committed,
                resume.outcomes.len(),
            );
        }
    }
    let remote = match remote {
        Some(mut r) => {
            r.sync().await?;
            Some(Arc::new(tokio::sync::Mutex::new(r)))
        }
        None => None,
    };
    let part_done = Arc::new(Notify::new());
    let mirror = remote.clone().map(|r| {
        journal.notify_every(MIRROR_AFTER_LINES, part_done.clone());
        mirror(r, part_done.clone())
    });
    let state = State {
        journal,
        output,
        remote,
        mirror,
        part_done,
        failed_before,
    };
    Ok((state, rechecked))
}

/// What the stages left: the collector with every outcome, and what is
/// needed to commit the output.
struct Ran {
    collector: Collector,
    batch_report: Option<BatchReport>,
    stamp: String,
    remote: Option<Arc<tokio::sync::Mutex<RemoteOutput>>>,
    status: Option<Arc<StatusFile>>,
    /// Rows finished by earlier runs (in committed parts).
    committed: u64,
    failed_before: u64,
    saved: Arc<Saved>,
    named: bool,
}

/// Sends the job: batch mode first when asked, then the online stages,
/// joined by bounded channels: a reader thread (source) → the dispatcher
/// (render, schedule, client) → the collector (journal, ordered parts).
async fn execute(plan: &Plan, ready: Ready, ui: Ui, held: &mut Held) -> Result<Ran> {
    let Ready {
        started,
        templates,
        layout,
        manifest,
        stamp,
        connection,
        state,
        mut input,
        total_rows,
        batch_rows,
        batches,
        interrupt,
        saved,
        named,
    } = ready;
    let State {
        mut journal,
        output,
        remote,
        mirror,
        part_done,
        failed_before,
    } = state;
    let shape = plan.reply_shape();
    let builder = Arc::new(BodyBuilder::new(plan.body_spec(), &templates));
    // Batch mode answers rows into the journal first; the online stages
    // below then send only what is left and write the output as usual.
    let batch_report = match plan.mode {
        Mode::Online => None,
        Mode::Batch => {
            let (lines, shape) =
                crate::pipeline::batch::bedrock::view(plan, &templates, &builder, &shape);
            let job = BatchJob {
                plan,
                templates: &templates,
                builder: &builder,
                lines: &lines,
                shape: &shape,
                api: batch_api(plan, &connection)?
                    .for_dialect(connection.endpoint.dialect, journal.dir())
                    .for_model(&connection.endpoint.name),
                job_id: job_id(&manifest, plan.output.as_path()),
                quiet: ui.quiet,
            };
            let resume = &mut input.resume;
            Some(crate::pipeline::batch::run(job, &mut journal, resume).await?)
        }
    };
    let mut resume = input.resume;
    let answers = std::mem::take(&mut resume.answers);
    let mut client = connection.client(plan, shape)?;
    let budget = budget(plan, &resume, total_rows)?;
    // Deleted below whatever happens: nothing between returns early.
    let cache = context_cache::open(plan, &connection, &templates, total_rows).await;
    client.cached_content = cache.as_ref().map(|c| c.cache.name.clone());
    let client = Arc::new(client);

    // Stage 1: the reader thread streams batches, skipping committed rows.
    let committed = resume.committed;
    let (batch_rx, reader) = read(input.batches, input.first, committed);

    // Stage 2: the dispatcher renders and launches calls.
    let stop = Arc::new(AtomicBool::new(false));
    let (event_tx, event_rx) = mpsc::channel(1024);
    let dispatcher = Dispatcher {
        client: client.clone(),
        templates,
        builder,
        events: event_tx,
        in_flight: Arc::new(Semaphore::new(plan.concurrency)),
        open_batches: Arc::new(Semaphore::new(open_batches(plan.concurrency, batch_rows))),
        stop: stop.clone(),
        // A journaled answer is taken for a row only if its request is the
        // same now (the input may have changed since).
        journaled: Arc::new(journaled_keys(&resume)),
        fingerprint: plan.call_fingerprint().into(),
        requests: Arc::new(crate::pipeline::fingerprint::Fingerprinter::of(plan)),
        warmup: plan.warmup && plan.task == Task::Chat,
        batch_size: plan.batch_size,
        similarity: plan.prompt2.is_some(),
        passthrough: plan.passthrough(),
        recall: recall(plan)?.map(Arc::new),
        dedup: plan.dedup.then(|| Arc::new(Dedup::new(answers))),
    };
    let dispatch = tokio::spawn(dispatcher.run(batch_rx));

    // Stage 3: the collector journals outcomes and writes ordered parts.
    let to_do = total_rows.map(|t| t.saturating_sub(committed));
    let status = batches
        .is_none()
        .then(|| StatusFile::start(status_path(&output), to_do));
    held.status = status.clone();
    let mut progress =
        Progress::new(to_do, ui.quiet).with_in_flight(client.stats.in_flight.clone());
    if let Some(status) = &status {
        progress = progress.with_status(status.clone());
    }
    if batches.is_none() {
        progress = progress.with_concurrency(plan.concurrency);
    }
    let mut parts = PartWriter::new(journal.parts_dir(), layout.output.clone(), resume.parts);
    parts.on_part = remote.is_some().then(|| part_done.clone());
    let mut collector = Collector::new(
        journal,
        layout,
        parts,
        resume.outcomes,
        stop.clone(),
        progress,
    );
    collector.fail_on_error = plan.fail_on_error;
    collector.summary = Summary {
        prices: plan.prices,
        live: Some(Live {
            stats: client.stats.clone(),
            started,
        }),
        ..Summary::default()
    };
    collector.budget = budget;
    collector.batches = batches;
    collector.interrupt = interrupt;
    collector.lease = held.lock.as_ref().and_then(WriterLock::lost);
    let collected = collector.run(event_rx).await;
    let joined = join(collected, mirror, &remote, &stop, dispatch, reader).await;
    if let Some(cache) = cache {
        cache.close().await;
    }
    let collector = joined?;
    // The simulator served every call; it may go now.
    drop(connection);
    Ok(Ran {
        collector,
        batch_report,
        stamp,
        remote,
        status,
        committed,
        failed_before,
        saved,
        named,
    })
}

/// Waits for the stages to end, the collector's result first. What this
/// run paid for goes to the bucket whatever happened.
async fn join<D>(
    collected: Result<Collector>,
    mirror: Option<JoinHandle<()>>,
    remote: &Option<Arc<tokio::sync::Mutex<RemoteOutput>>>,
    stop: &AtomicBool,
    dispatch: JoinHandle<D>,
    reader: JoinHandle<Result<()>>,
) -> Result<Collector> {
    if let (Some(task), Some(r)) = (mirror, remote) {
        task.abort();
        let synced = r.lock().await.sync().await;
        if collected.is_ok() {
            synced?;
        }
    }
    stop.store(true, Ordering::Relaxed);
    if collected.is_err() {
        // Stopped: the dispatcher may be waiting for a slot that only a
        // slow call in flight would free. Its calls are launched tasks of
        // their own; ending it only drops rows not yet sent.
        dispatch.abort();
    }
    let _ = dispatch.await;
    // A read error ends the input early: that is a failed job, not a done one.
    let read = reader
        .await
        .map_err(|e| Error::Stopped(format!("input reader failed: {e}")))?;
    let collector = collected?;
    read?;
    Ok(collector)
}

/// The job's budget, counting what earlier runs of it spent (from the
/// journal): budgets are per job. Refused before anything is sent when
/// earlier runs spent it all.
fn budget(plan: &Plan, resume: &Resume, total_rows: Option<u64>) -> Result<Option<Enforcer>> {
    let budget = plan.budget.is_set().then(|| Enforcer {
        meter: Meter::new(plan.budget, plan.prices, &resume.spent),
        committed: resume.committed,
        total_rows,
    });
    if let Some(why) = budget.as_ref().and_then(|b| b.meter.exhausted()) {
        return Err(Error::Stopped(format!(
            "{why} by earlier runs of this job; nothing was sent. Give a higher budget to go on \
             (finished rows are not paid for again)."
        )));
    }
    Ok(budget)
}

/// The request key of every journaled answer, by row.
fn journaled_keys(resume: &Resume) -> HashMap<RowId, String> {
    resume
        .outcomes
        .iter()
        .filter_map(|(row, o)| Some((*row, o.key.clone()?)))
        .collect()
}

/// The Batch API of the job's endpoint: its OpenAI-compatible base URL, or
/// the built-in simulator's.
fn batch_api(plan: &Plan, connection: &Connection) -> Result<BatchApi> {
    let endpoint = &connection.endpoint;
    let bedrock = crate::pipeline::batch::bedrock::api(plan, endpoint)?;
    let base = match (&bedrock, &endpoint.base, &connection.simulator) {
        (Some((control, _)), _, _) => control.clone(),
        (None, Some(base), _) => base.clone(),
        (None, None, Some(sim)) => format!("{}/v1", sim.base_url()),
        (None, None, None) => {
            return Err(Error::Config(format!(
                "--mode batch needs an OpenAI-compatible base URL, not {}",
                endpoint.label
            )))
        }
    };
    let api = BatchApi::new(
        connection.pool.http.side().clone(),
        &base,
        endpoint.credentials.clone(),
        plan.retry.clone(),
    );
    Ok(match bedrock {
        Some((_, staging)) => api.for_bedrock(staging),
        None => api,
    })
}

/// Stage 1: a reader thread streams the input's batches from `first`,
/// skipping rows below `committed` (finished by earlier runs). Bounded: it
/// reads ahead two batches at most.
fn read(
    batches: Batches,
    first: RowId,
    committed: RowId,
) -> (mpsc::Receiver<(RowId, RecordBatch)>, JoinHandle<Result<()>>) {
    let (batch_tx, batch_rx) = mpsc::channel::<(RowId, RecordBatch)>(2);
    let reader = tokio::task::spawn_blocking(move || -> Result<()> {
        let mut next = first;
        for batch in batches {
            let batch = batch?;
            let start = next;
            next += batch.num_rows() as u64;
            if next <= committed {
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
    (batch_rx, reader)
}

/// Commits the output (atomically, stamped with the job that made it),
/// says how the run went, and drops the journal unless rows failed (kept
/// for `--retry-failed`).
async fn finish(plan: &Plan, ran: Ran, ui: Ui) -> Result<Summary> {
    let Ran {
        mut collector,
        batch_report,
        stamp,
        remote,
        status,
        committed,
        failed_before,
        saved,
        named,
    } = ran;
    collector.parts.commit()?;
    let rows = match (plan.output_format, &remote) {
        _ if collector.batches.is_some() => collector.summary.rows,
        (OutputFormat::Parquet, Some(r)) => {
            r.lock()
                .await
                .commit(
                    &collector.parts.parts,
                    collector.layout.output.clone(),
                    &stamp,
                )
                .await?
        }
        (OutputFormat::Parquet, None) => concat_parts(
            &collector.parts.parts,
            plan.output.as_path(),
            collector.layout.output.clone(),
            &stamp,
        )?,
        (OutputFormat::Delta, remote) => {
            let (parts, schema) = (&collector.parts.parts, collector.layout.output.clone());
            crate::pipeline::delta::commit(plan, parts, remote.as_ref(), schema, &stamp, named)
                .await?
        }
        (OutputFormat::OpenaiBatch, _) => crate::pipeline::openai_batch::write_output(
            &collector.parts.parts,
            plan.output.as_path(),
        )?,
    };
    let mut summary = collector.summary.clone();
    summary.rows = rows;
    summary.resumed += committed;
    if let Some(report) = batch_report {
        // Rows batch mode answered in this run are this run's work.
        summary.resumed = summary.resumed.saturating_sub(report.answered);
        if !ui.quiet {
            eprintln!(
                "batches    {} created, {} rows answered through the Batch API{}",
                report.batches_created,
                report.answered,
                if report.deadline_passed {
                    "; the deadline passed, the rest went online"
                } else {
                    ""
                }
            );
        }
    }
    summary.close();
    summary.count_saved(&saved);
    if collector.batches.is_none() {
        summary.output = plan.output.to_string();
    }
    let failed = summary.failed + failed_before;
    if failed > 0 && collector.batches.is_none() {
        // Kept so that `--retry-failed` can re-send just the failed rows.
        if !ui.quiet {
            eprintln!(
                "{failed} rows failed: run the same command with --retry-failed to send only them again \
                 (their journal is kept in {}; --restart discards it)",
                collector.journal.dir().display()
            );
        }
    } else {
        collector.journal.remove()?;
        if let Some(r) = &remote {
            r.lock().await.remove().await?;
        }
    }
    if let Some(status) = &status {
        status.finish(Some(&summary), "done", None);
    }
    Ok(summary)
}

/// The summary of a run that finds its output already written by this job
/// (a Parquet footer, or a Delta commit, says so): nothing to send.
async fn complete(plan: &Plan, stamp: &str, ui: Ui) -> Option<Summary> {
    let output = &plan.output;
    let rows = match plan.output_format {
        OutputFormat::Delta => crate::pipeline::delta::appended_by(plan, stamp).await?,
        _ => written_by(output, stamp).await?,
    };
    if !ui.quiet {
        eprintln!(
            "{} is complete: this job (the same input and settings) wrote it; nothing was \
             sent. Give --overwrite to run it again",
            output
        );
    }
    Some(Summary {
        rows,
        resumed: rows,
        output: output.to_string(),
        ..Summary::default()
    })
}

/// Names a job in batch metadata: the same for every run of the same job
/// (answer-changing settings, output path; not the input, which a resume
/// may see edited), so a re-run finds its batches, and different for
/// another job on the same account.
fn job_id(manifest: &Manifest, output: &std::path::Path) -> String {
    let mut h = blake3::Hasher::new();
    let job = (manifest.version, &manifest.settings);
    h.update(&serde_json::to_vec(&job).unwrap_or_default());
    let output = std::fs::canonicalize(
        output
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(std::path::Path::new(".")),
    )
    .map(|p| p.join(output.file_name().unwrap_or_default()))
    .unwrap_or_else(|_| output.to_path_buf());
    h.update(output.to_string_lossy().as_bytes());
    h.finalize().to_hex()[..16].to_string()
}

/// The `--call-journal` of the plan, scoped to its shard (a re-run of a
/// shard reads only its own shard's answers).
fn recall(plan: &Plan) -> Result<Option<Recall>> {
    let Some(dir) = &plan.call_journal else {
        return Ok(None);
    };
    let scope = plan.shard_scope();
    Ok(Some(Recall {
        journal: CallJournal::open(dir, scope.as_deref())?,
        fingerprint: plan.call_fingerprint(),
    }))
}
