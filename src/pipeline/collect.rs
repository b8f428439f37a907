//! Collect: outcomes → journal → ordered output parts.
//!
//! The collector is the one place results land. Every outcome is appended
//! to the journal as it arrives (flushed to the OS before the collector
//! waits again), placed in its batch, and each batch is written to the
//! output parts as soon as all of its rows are in, in input order. It also
//! decides when the job must stop: the endpoint refused it, a row failed
//! under `--fail-on-error`, too many rows in a row failed (calls after their
//! retries, or rows the template failed on), or the user pressed Ctrl-C.
//! Stopping stops new calls; calls in flight still land in the journal (they
//! are paid for), up to a grace period. Calls that failed in the run that
//! stopped the job, and those failing after it, are journaled as unsettled:
//! they failed because of the outage, so a resume sends them again.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arrow::record_batch::RecordBatch;
use tokio::sync::{mpsc, Notify, OwnedSemaphorePermit};
use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::job::spend::Enforcer;
use crate::pipeline::journal::Journal;
use crate::pipeline::lock::LeaseLost;
use crate::pipeline::outcome::{Outcome, RowId};
use crate::pipeline::progress::{Progress, Summary};
use crate::pipeline::recheck::{row_hashes, stamp};
use crate::pipeline::schedule::Event;
use crate::pipeline::sink::{Layout, PartWriter};

/// Rows failing one after another (calls after their retries, or rows the
/// template fails on) before the job stops: a bad setting fails every row,
/// and should cost a handful of requests, not thousands.
pub const MAX_CONSECUTIVE_FAILURES: u32 = 10;

/// How long in-flight calls may take to land after a stop.
pub const STOP_GRACE: Duration = Duration::from_secs(30);

struct Pending {
    first: RowId,
    batch: RecordBatch,
    /// Each row's input hash, journaled with its outcome.
    inputs: Vec<u64>,
    outcomes: Vec<Option<Outcome>>,
    missing: usize,
    _permit: OwnedSemaphorePermit,
}

pub struct Collector {
    pub journal: Journal,
    pub layout: Layout,
    pub parts: PartWriter,
    pub resumed: HashMap<RowId, Outcome>,
    pub stop: Arc<AtomicBool>,
    pub fail_on_error: bool,
    pub progress: Progress,
    pub summary: Summary,
    /// `--max-tokens-total` / `--max-cost`, when given.
    pub budget: Option<Enforcer>,
    /// The failure is the budget's: its message is written at the end.
    budget_stop: bool,
    /// Send finished batches here instead of to `parts` (the output goes
    /// back to the caller, e.g. Python). A full channel holds the collector
    /// back, and with it new calls: the consumer sets the pace.
    pub batches: Option<mpsc::Sender<RecordBatch>>,
    /// Stop on this instead of the process's signals (see [`Signals`]).
    pub interrupt: Option<Arc<Notify>>,
    /// The output's writer lease, when it is one: losing it stops the job.
    pub lease: Option<LeaseLost>,
    pending: VecDeque<Pending>,
    consecutive_failures: u32,
    /// The failed calls of the current run of failures, already journaled:
    /// marked unsettled if the run stops the job.
    failed_calls: Vec<Outcome>,
    /// The job stopped on a run of failed calls: calls failing from now on
    /// are unsettled too.
    outage: bool,
    failure: Option<Error>,
    /// Permits of calls whose outcomes await the next journal flush.
    released: Vec<OwnedSemaphorePermit>,
}

impl Collector {
    /// A collector writing through `journal` and `parts`; the stop rules
    /// (`fail_on_error`, `budget`) and a starting `summary` are set on the
    /// public fields.
    pub fn new(
        journal: Journal,
        layout: Layout,
        parts: PartWriter,
        resumed: HashMap<RowId, Outcome>,
        stop: Arc<AtomicBool>,
        progress: Progress,
    ) -> Collector {
        Collector {
            journal,
            layout,
            parts,
            resumed,
            stop,
            fail_on_error: false,
            progress,
            summary: Summary::default(),
            budget: None,
            budget_stop: false,
            batches: None,
            interrupt: None,
            lease: None,
            pending: VecDeque::new(),
            consecutive_failures: 0,
            failed_calls: Vec::new(),
            outage: false,
            failure: None,
            released: Vec::new(),
        }
    }

    /// Run until every sender is gone. Returns the collector for the final
    /// step, or the reason the job stopped (journal flushed either way).
    pub async fn run(mut self, mut events: mpsc::Receiver<Event>) -> Result<Collector> {
        let mut interrupted = false;
        let mut signals = Signals::new(self.interrupt.clone());
        let mut deadline: Option<Instant> = None;
        let mut lease = self.lease.take();
        loop {
            let grace = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                event = events.recv() => {
                    let Some(event) = event else { break };
                    self.handle(event)?;
                    // Take whatever else is ready before flushing: one write
                    // call for many outcomes under load, none left waiting.
                    while let Ok(event) = events.try_recv() {
                        self.handle(event)?;
                    }
                    match self.journal.flush() {
                        // The state folder was deleted: stop sending, and let
                        // the calls in flight land in the journal put back.
                        Err(e @ Error::Stopped(_)) => self.fail(e),
                        other => other?,
                    }
                    self.released.clear();
                    self.write_ready().await?;
                    self.progress.update(&self.summary);
                }
                _ = signals.next() => {
                    if interrupted {
                        break; // the second signal: quit now
                    }
                    interrupted = true;
                    self.progress.println("interrupted: no new requests; waiting for the ones in flight (Ctrl-C again to quit now)");
                    self.fail(Error::Stopped(format!(
                        "interrupted; finished rows are kept in {}: run the same command again to resume",
                        self.journal.dir().display()
                    )));
                }
                why = lease_lost(&mut lease) => {
                    self.progress.println("the output's writer lease was lost: no new requests; waiting for the ones in flight");
                    self.fail(Error::Stopped(why));
                }
                _ = grace => break,
            }
            if self.stop.load(Ordering::Relaxed) && deadline.is_none() {
                deadline = Some(Instant::now() + STOP_GRACE);
            }
        }
        self.journal.flush()?;
        self.progress.finish();
        match self.failure.take() {
            Some(e) => {
                // A budget stop counts its rows now, the requests in flight
                // at the stop in: one count with the summary beside it.
                let e = match self.budget.as_ref().filter(|_| self.budget_stop) {
                    Some(b) => b.stopped(self.summary.rows).unwrap_or(e),
                    None => e,
                };
                // Keep what is complete: fewer rows to reload on resume. Not
                // at the cost of the reason the job stopped, which may be
                // that the parts' folder is gone.
                if let Err(part) = self.parts.commit() {
                    tracing::warn!("{part}");
                }
                self.summary.close();
                if !self.progress.quiet() {
                    eprintln!("{}", self.summary);
                }
                Err(e)
            }
            None if !self.pending.is_empty() => {
                Err(Error::Stopped("the job ended with rows still open".into()))
            }
            None => Ok(self),
        }
    }

    fn handle(&mut self, event: Event) -> Result<()> {
        match event {
            Event::Batch { first, batch, permit } => {
                let n = batch.num_rows();
                let inputs = row_hashes(&batch);
                self.pending.push_back(Pending { first, batch, inputs, outcomes: vec![None; n], missing: n, _permit: permit });
            }
            Event::Resumed(rows) => {
                for row in rows {
                    if let Some(o) = self.resumed.remove(&row) {
                        self.summary.resumed += 1;
                        self.summary.count(&o);
                        self.place(o);
                    }
                }
            }
            Event::Outcomes(outcomes, permit) => {
                for mut o in outcomes {
                    if let Some(p) = self.pending.get(self.pending_index(o.row)) {
                        stamp(&mut o, &p.inputs, p.first);
                    }
                    // A row not sent (a null, a template error) is worked
                    // out again on each resume: judged in the run that first
                    // met it, or a template's run of failures would stop
                    // every resume at the same rows.
                    if !(o.attempts == 0 && self.resumed.contains_key(&o.row)) {
                        self.judge(&o)?;
                    }
                    if self.outage && o.is_error() && o.attempts > 0 {
                        o.unsettled = true;
                    }
                    self.journal.append(&o)?;
                    if self.budget.as_mut().is_some_and(|b| b.record(&o.billed_usage())) && self.failure.is_none() {
                        // Said when the job ends ([`Enforcer::stopped`]).
                        self.budget_stop = true;
                        self.fail(Error::Stopped("budget spent".into()));
                    }
                    self.summary.count_sent(&o);
                    self.progress.observe(&o);
                    self.place(o);
                }
                // Released after the flush that ends this round of events.
                self.released.extend(permit);
            }
            Event::Abort(message) => self.fail(Error::Aborted(format!(
                "{message}\nCheck the endpoint name and credentials; finished rows are kept, run the same command again to resume."
            ))),
        }
        Ok(())
    }

    /// Stop conditions that an outcome can trigger, judged before it is
    /// journaled. A row the template failed on counts as a failure; a row
    /// not sent for a null or an empty prompt says nothing either way.
    fn judge(&mut self, o: &Outcome) -> Result<()> {
        let Some(message) = o.error_message.as_ref().filter(|_| o.is_error()) else {
            if o.attempts > 0 {
                self.consecutive_failures = 0;
                self.failed_calls.clear();
            }
            return Ok(());
        };
        if self.fail_on_error {
            self.fail(Error::RowFailed {
                row: o.row,
                message: message.clone(),
            });
            return Ok(());
        }
        self.consecutive_failures += 1;
        if self.consecutive_failures < MAX_CONSECUTIVE_FAILURES {
            if o.attempts > 0 {
                self.failed_calls.push(o.clone());
            }
            return Ok(());
        }
        if self.outage || self.failure.is_some() {
            return Ok(()); // already stopping: said once
        }
        let advice = if o.attempts == 0 {
            // The template's own failures are final: they would fail again.
            "Check the template against the input's values (a changed template needs \
             --restart). Finished rows are kept, and rows the template failed on are kept as \
             failed: run the same command again to go on past them."
        } else {
            "Check the endpoint, the model parameters and the prompt. Finished rows are kept: \
             run the same command again to resume, and the rows that failed in a row are sent \
             again."
        };
        self.fail(Error::Aborted(format!(
            "stopped after {} rows failed in a row; the last error was: {message}\n{advice}",
            self.consecutive_failures
        )));
        // The calls of this run of failures are not final (a resume sends
        // them again): said in the journal by a second line for each.
        self.outage = true;
        for failed in std::mem::take(&mut self.failed_calls) {
            self.journal.append(&failed.marked_unsettled())?;
        }
        Ok(())
    }

    fn fail(&mut self, e: Error) {
        self.stop.store(true, Ordering::Relaxed);
        if self.failure.is_none() {
            self.failure = Some(e);
        }
    }

    fn place(&mut self, o: Outcome) {
        // A row sent again (its request changed): the old outcome is stale.
        self.resumed.remove(&o.row);
        let idx = self.pending_index(o.row);
        if let Some(p) = self.pending.get_mut(idx) {
            if let Some(slot) = p.outcomes.get_mut((o.row - p.first) as usize) {
                if slot.is_none() {
                    p.missing -= 1;
                }
                *slot = Some(o);
            }
        }
    }

    /// The pending batch holding `row` (batches are few and ordered).
    fn pending_index(&self, row: RowId) -> usize {
        self.pending
            .partition_point(|p| p.first + p.outcomes.len() as u64 <= row)
    }

    /// Write every complete batch at the front of the queue, in order.
    async fn write_ready(&mut self) -> Result<()> {
        while self.pending.front().is_some_and(|p| p.missing == 0) {
            let Some(p) = self.pending.pop_front() else {
                break;
            };
            let mut outcomes: Vec<Outcome> = p.outcomes.into_iter().flatten().collect();
            let out = self.layout.assemble(&p.batch, &mut outcomes)?;
            match &self.batches {
                Some(tx) => {
                    if tx.send(out).await.is_err() {
                        // The caller stopped reading: there is no one to
                        // hand further rows to.
                        self.fail(Error::Stopped("the output's reader went away".into()));
                    }
                }
                None => self.parts.write(p.first, &out)?,
            }
        }
        Ok(())
    }
}

/// Resolves once with why the lease was lost; never without a lease.
async fn lease_lost(lease: &mut Option<LeaseLost>) -> String {
    let Some(watch) = lease else {
        return std::future::pending().await;
    };
    let why = watch.lost().await;
    *lease = None;
    why
}

/// Ctrl-C (SIGINT) and, on Unix, SIGTERM (what schedulers and `kill` send):
/// both mean "stop sending, keep what is paid for". The listeners are made
/// once and kept: a `ctrl_c()` future made anew on each loop turn misses a
/// signal that lands while the loop is busy with an outcome (busy is the
/// normal state under load), and the job would run to the end. Inside
/// another program (the Python package) the host owns the signal handlers
/// and tells the run through `interrupt` instead: no handler is installed.
struct Signals {
    #[cfg(unix)]
    int: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    interrupt: Option<Arc<Notify>>,
}

impl Signals {
    fn new(interrupt: Option<Arc<Notify>>) -> Signals {
        #[cfg(unix)]
        use tokio::signal::unix::{signal, SignalKind};
        let own = interrupt.is_none();
        Signals {
            #[cfg(unix)]
            int: own.then(|| signal(SignalKind::interrupt()).ok()).flatten(),
            #[cfg(unix)]
            term: own.then(|| signal(SignalKind::terminate()).ok()).flatten(),
            interrupt,
        }
    }

    async fn next(&mut self) {
        if let Some(interrupt) = &self.interrupt {
            return interrupt.notified().await;
        }
        #[cfg(unix)]
        {
            let Signals { int, term, .. } = self;
            let int = async {
                match int.as_mut() {
                    Some(s) => s.recv().await,
                    None => std::future::pending().await,
                }
            };
            let term = async {
                match term.as_mut() {
                    Some(s) => s.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = int => {}
                _ = term => {}
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    }
}
