//! Schedule: rendered rows → calls in flight, in a cache-friendly order,
//! under a bound on concurrency.
//!
//! One dispatcher task reads input batches, renders them, and launches calls:
//! - at most `concurrency` calls are in flight (a semaphore; the rate
//!   limiter inside the client paces each attempt);
//! - at most `open_batches` input batches are between reading and writing,
//!   so memory stays bounded when one slow row holds its batch back;
//! - within a batch, calls are ordered by their static prefix, and the first
//!   call of a cacheable prefix is a warm-up: the rest of its group waits
//!   until it completes, so they read the provider's prompt cache instead of
//!   all paying to fill it at once. Output order is restored by the collector.
//!
//! Rendering runs on a blocking thread, not on the runtime that drives the
//! calls and the collector: a slow template (each row's work is bounded, see
//! [`crate::pipeline::render::RENDER_FUEL`]) never holds up the answers, the
//! journal or a Ctrl-C, and a stop is seen between rows.
//!
//! Results go back to the collector as [`Event`]s on one bounded channel, in
//! which a batch is always announced before any of its outcomes.
//!
//! On a resume, a row with a journaled outcome is not sent when its request
//! hashes as the journaled one did ([`crate::pipeline::call_journal::row_keys`]):
//! the collector takes the outcome from the journal. A row whose input
//! changed since is sent again.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arrow::record_batch::RecordBatch;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use crate::pipeline::call_journal::{row_keys, Recall};
use crate::pipeline::client::{Abort, Client};
use crate::pipeline::dedup::{Claim, Dedup};
use crate::pipeline::fingerprint::Fingerprinter;
use crate::pipeline::outcome::{Outcome, RowId};
use crate::pipeline::render::{BodyBuilder, Call, RenderedRow, Templates};
use crate::provider::wire::Task;

/// What the dispatcher and the calls tell the collector.
pub enum Event {
    /// A batch of input rows whose outcomes will follow. The permit bounds
    /// open batches and is released when the batch is written.
    Batch {
        first: RowId,
        batch: RecordBatch,
        permit: OwnedSemaphorePermit,
    },
    /// Outcomes of rows (of calls, or rows not sent at all). A call's
    /// concurrency permit travels with its outcomes and is released only once
    /// they are journaled, so a kill can lose at most the calls in flight.
    Outcomes(Vec<Outcome>, Option<OwnedSemaphorePermit>),
    /// Rows whose journaled outcome stands: their requests are unchanged.
    Resumed(Vec<RowId>),
    /// The endpoint refused the job; the rows of that call stay undone.
    Abort(String),
}

/// How calls are formed and launched.
pub struct Dispatcher {
    pub client: Arc<Client>,
    pub templates: Arc<Templates>,
    pub builder: Arc<BodyBuilder>,
    pub events: mpsc::Sender<Event>,
    pub in_flight: Arc<Semaphore>,
    pub open_batches: Arc<Semaphore>,
    pub stop: Arc<AtomicBool>,
    /// The request hash of each row with an outcome from an earlier run.
    pub journaled: Arc<HashMap<RowId, String>>,
    /// What the job's request hashes fold in ([`crate::job::plan::Plan::call_fingerprint`]).
    pub fingerprint: Arc<str>,
    /// Names each row's request in its outcome ([`crate::pipeline::fingerprint`]).
    pub requests: Arc<Fingerprinter>,
    pub warmup: bool,
    /// Embedding rows per request.
    pub batch_size: usize,
    /// ai_similarity: each call embeds the row's two texts.
    pub similarity: bool,
    /// OpenAI Batch input: each row's `body` is the call.
    pub passthrough: bool,
    /// `--call-journal`: calls answered before (by any run, shard or task
    /// of the job) are not sent again; new answers are added.
    pub recall: Option<Arc<Recall>>,
    /// Identical requests are sent once ([`crate::pipeline::dedup`]);
    /// `None` with `--no-dedup`.
    pub dedup: Option<Arc<Dedup>>,
}

/// Per-prefix warm-up state: absent = never seen; `None` = warm; `Some`
/// = its warm-up call is in flight and these calls wait for it.
type Warming = HashMap<u64, Option<Vec<Call>>>;

impl Dispatcher {
    /// Run until the input is exhausted and every call has been launched, or
    /// until `stop` is set.
    pub async fn run(self, mut batches: mpsc::Receiver<(RowId, RecordBatch)>) {
        let (warmed_tx, mut warmed_rx) = mpsc::unbounded_channel::<u64>();
        let mut prefixes: Warming = HashMap::new();
        let mut waiting = 0usize; // prefixes whose warm-up is in flight
        let mut ready: VecDeque<Call> = VecDeque::new();
        let mut input_done = false;
        loop {
            if let Some(dedup) = &self.dedup {
                // Rows whose leader failed: sent in its place, before newer rows.
                for call in dedup.handed_on().into_iter().rev() {
                    ready.push_front(call);
                }
            }
            while let Some(call) = ready.pop_front() {
                if self.stopped() {
                    return;
                }
                // Warm-ups that finished meanwhile release their groups first.
                while let Ok(key) = warmed_rx.try_recv() {
                    release(&mut prefixes, key, &mut ready, &mut waiting);
                }
                let warm_key = match call.prefix.filter(|p| self.warmup && p.cacheable()) {
                    None => None,
                    Some(p) => match prefixes.get_mut(&p.key) {
                        None => {
                            prefixes.insert(p.key, Some(Vec::new()));
                            waiting += 1;
                            Some(p.key)
                        }
                        Some(Some(queue)) => {
                            queue.push(call);
                            continue;
                        }
                        Some(None) => None,
                    },
                };
                self.launch(call, warm_key.map(|k| (k, warmed_tx.clone())))
                    .await;
            }
            if input_done && waiting == 0 && !self.dedup.as_ref().is_some_and(|d| d.busy()) {
                return;
            }
            tokio::select! {
                Some(key) = warmed_rx.recv(), if waiting > 0 => {
                    release(&mut prefixes, key, &mut ready, &mut waiting);
                }
                _ = settled(&self.dedup) => {}
                next = next_batch(&self.open_batches, &mut batches), if !input_done => {
                    let Some((first, batch, permit)) = next else {
                        input_done = true;
                        continue;
                    };
                    let (immediate, resumed, calls) = match self.calls_for(first, &batch).await {
                        Ok(made) => made,
                        Err(message) => {
                            self.stop.store(true, Ordering::Relaxed);
                            let _ = self.events.send(Event::Abort(message)).await;
                            return;
                        }
                    };
                    if self.stopped() {
                        return; // rendering gave up part way: nothing of this batch is announced
                    }
                    if self.events.send(Event::Batch { first, batch, permit }).await.is_err() {
                        return;
                    }
                    if !resumed.is_empty() && self.events.send(Event::Resumed(resumed)).await.is_err() {
                        return;
                    }
                    if !immediate.is_empty() && self.events.send(Event::Outcomes(immediate, None)).await.is_err() {
                        return;
                    }
                    // Claimed once the batch is announced: a leader in
                    // flight may answer its waiting rows at any moment.
                    let (calls, shared) = self.claim(calls);
                    if !shared.is_empty() && self.events.send(Event::Outcomes(shared, None)).await.is_err() {
                        return;
                    }
                    ready.extend(calls);
                }
            }
            if self.stopped() {
                return;
            }
        }
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Render a batch into calls (grouped by prefix for warm-ups), plus the
    /// outcomes of rows that need no call and the rows whose journaled
    /// outcome stands, on a blocking thread that gives up between rows once
    /// the job stops. `Err`: rendering itself broke.
    async fn calls_for(
        &self,
        first: RowId,
        batch: &RecordBatch,
    ) -> std::result::Result<(Vec<Outcome>, Vec<RowId>, Vec<Call>), String> {
        let templates = self.templates.clone();
        let builder = self.builder.clone();
        let journaled = self.journaled.clone();
        let fingerprint = self.fingerprint.clone();
        let stop = self.stop.clone();
        let batch = batch.clone();
        let (batch_size, similarity, passthrough, warmup) = (
            self.batch_size,
            self.similarity,
            self.passthrough,
            self.warmup,
        );
        tokio::task::spawn_blocking(move || {
            let maker = CallMaker {
                templates: &templates,
                builder: &builder,
                batch_size,
                similarity,
                passthrough,
            };
            let (immediate, calls) = maker.calls_until(first, &batch, Some(&stop));
            let mut resumed = Vec::new();
            let mut calls: Vec<Call> = calls
                .into_iter()
                .filter(|call| {
                    let unchanged = call.rows.iter().all(|r| journaled.contains_key(r))
                        && call
                            .rows
                            .iter()
                            .zip(row_keys(&fingerprint, call))
                            .all(|(r, key)| journaled.get(r) == Some(&key));
                    if unchanged {
                        resumed.extend_from_slice(&call.rows);
                    }
                    !unchanged
                })
                .collect();
            if warmup {
                // Group by prefix (stable, so input order holds within a group).
                calls.sort_by_key(|c| c.prefix.map(|p| p.key));
            }
            (immediate, resumed, calls)
        })
        .await
        .map_err(|e| format!("rendering rows {first}.. failed: {e}"))
    }

    /// The calls to send, after dedup: a call whose request an earlier row
    /// asks waits for its answer (not sent), or takes the answer kept for
    /// it (the outcomes returned). In input order within each prefix group,
    /// which is all that matters: identical requests share their prefix.
    fn claim(&self, calls: Vec<Call>) -> (Vec<Call>, Vec<Outcome>) {
        let Some(dedup) = &self.dedup else {
            return (calls, Vec::new());
        };
        let mut send = Vec::with_capacity(calls.len());
        let mut shared = Vec::new();
        for call in calls {
            if call.rows.len() != 1 {
                send.push(call);
                continue;
            }
            let fp = self.requests.rows(&call).pop().unwrap_or_default();
            let key = row_keys(&self.fingerprint, &call).pop();
            match dedup.claim(call, &fp, key) {
                Claim::Send(call) => send.push(call),
                Claim::Wait => {}
                Claim::Answered(o) => shared.push(o),
            }
        }
        (send, shared)
    }

    /// Wait for a free slot, then run the call in its own task.
    async fn launch(&self, call: Call, warm: Option<(u64, mpsc::UnboundedSender<u64>)>) {
        // Answered before: no slot, no request, no bill.
        if let Some(mut outcomes) = self.recall.as_ref().and_then(|r| r.answered(&call)) {
            settle(&self.requests, self.dedup.as_deref(), &call, &mut outcomes);
            let _ = self.events.send(Event::Outcomes(outcomes, None)).await;
            if let Some((key, tx)) = warm {
                let _ = tx.send(key);
            }
            return;
        }
        let Ok(permit) = self.in_flight.clone().acquire_owned().await else {
            return;
        };
        // The job may have stopped (a budget, Ctrl-C) while this call waited.
        if self.stopped() {
            return;
        }
        let client = self.client.clone();
        let events = self.events.clone();
        let stop = self.stop.clone();
        let recall = self.recall.clone();
        let fingerprint = self.fingerprint.clone();
        let requests = self.requests.clone();
        let dedup = self.dedup.clone();
        tokio::spawn(async move {
            let event = match crate::pipeline::repair::execute(&client, &call).await {
                Ok(mut outcomes) => {
                    let keys = row_keys(&fingerprint, &call);
                    for o in &mut outcomes {
                        let at = call.rows.iter().position(|r| *r == o.row);
                        o.key = at.and_then(|i| keys.get(i)).cloned();
                    }
                    settle(&requests, dedup.as_deref(), &call, &mut outcomes);
                    if let Some(recall) = &recall {
                        // The row journal still has the answer: a failed
                        // write costs a later task a request, not this row.
                        if let Err(e) = recall.record(&outcomes) {
                            tracing::warn!("call journal: {e}");
                        }
                    }
                    Event::Outcomes(outcomes, Some(permit))
                }
                Err(Abort(message)) => {
                    // Stop at once, before this slot frees up for another call.
                    stop.store(true, Ordering::Relaxed);
                    drop(permit);
                    if let Some(dedup) = &dedup {
                        dedup.abandon(&call, requests.rows(&call).first().map(String::as_str));
                    }
                    Event::Abort(message)
                }
            };
            let _ = events.send(event).await;
            if let Some((key, tx)) = warm {
                let _ = tx.send(key);
            }
        });
    }
}

/// How rows become calls: one place for the dispatcher and `--dry-run`.
pub struct CallMaker<'a> {
    pub templates: &'a Templates,
    pub builder: &'a BodyBuilder,
    /// Embedding rows per request.
    pub batch_size: usize,
    /// ai_similarity: each call embeds the row's two texts.
    pub similarity: bool,
    /// OpenAI Batch input: each row carries its own body.
    pub passthrough: bool,
}

impl CallMaker<'_> {
    /// Render a batch into calls, in row order, plus the outcomes of rows
    /// that need no call (a null in a template variable, an empty prompt, a
    /// template error). Every row is in one or the other.
    pub fn calls(&self, first: RowId, batch: &RecordBatch) -> (Vec<Outcome>, Vec<Call>) {
        self.calls_until(first, batch, None)
    }

    /// [`CallMaker::calls`], giving up between rows once `stop` is set; what
    /// it returns then is incomplete and must not be used.
    pub fn calls_until(
        &self,
        first: RowId,
        batch: &RecordBatch,
        stop: Option<&AtomicBool>,
    ) -> (Vec<Outcome>, Vec<Call>) {
        if self.passthrough {
            return self.passthrough_calls(first, batch);
        }
        let mut immediate = Vec::new();
        let mut rows: Vec<RenderedRow> = Vec::with_capacity(batch.num_rows());
        for rendered in self.templates.render_until(batch, first, stop) {
            match rendered {
                Ok(Some(r)) => match self.templates.not_sent_because(&r) {
                    Some(reason) => immediate.push(Outcome::skipped(r.row, reason)),
                    None => rows.push(r),
                },
                Ok(None) => {}
                Err((row, message)) => immediate.push(Outcome::failed(row, message, 0)),
            }
        }
        // Rows not sent because of a null: their outcome is a null result.
        let mut sent_or_failed: HashSet<RowId> = rows.iter().map(|r| r.row).collect();
        sent_or_failed.extend(immediate.iter().map(|o| o.row));
        for i in 0..batch.num_rows() as u64 {
            let row = first + i;
            if !sent_or_failed.contains(&row) {
                immediate.push(Outcome::null_input(row));
            }
        }
        let builder = self.builder;
        let calls: Vec<Call> = if self.similarity {
            rows.iter()
                .map(|r| builder.pair(r.row, &r.user, r.user2.as_deref().unwrap_or_default()))
                .collect()
        } else if builder.spec().task == Task::Embeddings && self.batch_size > 1 {
            rows.chunks(self.batch_size)
                .map(|chunk| {
                    let texts: Vec<(RowId, &str)> =
                        chunk.iter().map(|r| (r.row, r.user.as_str())).collect();
                    builder.embeddings(&texts)
                })
                .collect()
        } else {
            rows.iter().map(|r| builder.single(r)).collect()
        };
        (immediate, calls)
    }

    /// OpenAI Batch input: one call per row, its body from the input; no
    /// prefix grouping (the bodies are opaque).
    fn passthrough_calls(&self, first: RowId, batch: &RecordBatch) -> (Vec<Outcome>, Vec<Call>) {
        let mut immediate = Vec::new();
        let mut calls = Vec::new();
        for (i, call) in self
            .builder
            .passthrough_batch(batch, first)
            .into_iter()
            .enumerate()
        {
            let row = first + i as u64;
            match call {
                Ok(Some(call)) => calls.push(call),
                Ok(None) => immediate.push(Outcome::null_input(row)),
                Err((row, message)) => immediate.push(Outcome::failed(row, message, 0)),
            }
        }
        (immediate, calls)
    }
}

/// The outcomes of `call` are in: each answered row gets its request
/// fingerprint (a failed row has no answer to stand for its request), and
/// the rows waiting for the call's answer get theirs ([`Dedup::settle`]).
fn settle(
    requests: &Fingerprinter,
    dedup: Option<&Dedup>,
    call: &Call,
    outcomes: &mut Vec<Outcome>,
) {
    let fingerprints = requests.rows(call);
    for o in outcomes.iter_mut().filter(|o| !o.is_error()) {
        let at = call.rows.iter().position(|r| *r == o.row);
        o.fingerprint = at.and_then(|i| fingerprints.get(i)).cloned();
    }
    if let (Some(dedup), [fp]) = (dedup, &fingerprints[..]) {
        let shared = dedup.settle(call, fp, outcomes);
        outcomes.extend(shared);
    }
}

/// A leader with waiting rows was settled (never, without dedup).
async fn settled(dedup: &Option<Arc<Dedup>>) {
    match dedup {
        Some(d) => d.settled.notified().await,
        None => std::future::pending().await,
    }
}

fn release(prefixes: &mut Warming, key: u64, ready: &mut VecDeque<Call>, waiting: &mut usize) {
    if let Some(slot) = prefixes.get_mut(&key) {
        if let Some(queue) = slot.take() {
            *waiting = waiting.saturating_sub(1);
            // Front of the line: these rows' batches are the oldest open ones.
            for call in queue.into_iter().rev() {
                ready.push_front(call);
            }
        }
    }
}

async fn next_batch(
    open: &Arc<Semaphore>,
    batches: &mut mpsc::Receiver<(RowId, RecordBatch)>,
) -> Option<(RowId, RecordBatch, OwnedSemaphorePermit)> {
    let permit = open.clone().acquire_owned().await.ok()?;
    let (first, batch) = batches.recv().await?;
    Some((first, batch, permit))
}
