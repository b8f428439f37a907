//! Batch mode (`--mode batch`): a job's rows through the provider's Batch
//! API, at batch prices, with aiq's guarantees.
//!
//! This stage sits in front of the online pipeline and answers rows into
//! the same journal: it renders the rows with the online request bodies
//! ([`CallMaker`]), writes them as batch input lines (`custom_id` = row id)
//! cut by `--batch-max-requests` and `--batch-max-bytes`, uploads and
//! creates the batches, polls them every `--poll-secs`, and turns their
//! output and error lines into row outcomes with the online reply parsing
//! ([`Shape`]). When it returns, [`crate::pipeline::run`] runs the online
//! pipeline as usual: every answered row comes from the journal (nothing is
//! sent for it), the rows left — after a `--deadline` — are sent online, and
//! the output is written in input order with the usual columns.
//!
//! Rows are never paid for twice: batches are recorded the moment they are
//! created ([`state`]); a re-run polls them instead of submitting again,
//! and finds a batch whose id a kill lost by its metadata. Failed lines
//! (transient by [`classify_status`]) and the unanswered part of an expired
//! or cancelled batch are resubmitted alone, each row in at most
//! `1 + --max-retries` batches; then the row gets the provider's message. A
//! batch the provider fails for its enqueued-token cap is created again
//! once a running batch finishes: waiting, never a row failure.

pub mod bedrock;
pub mod state;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::time::Duration;

use bytes::Bytes;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use reqwest::StatusCode;
use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::job::plan::Plan;
use crate::pipeline::call_journal::row_keys;
use crate::pipeline::fingerprint::Fingerprinter;
use crate::pipeline::journal::{Journal, Resume};
use crate::pipeline::outcome::{Outcome, RowId};
use crate::pipeline::render::{BodyBuilder, Templates};
use crate::pipeline::schedule::CallMaker;
use crate::pipeline::source::Source;
use crate::provider::batch_api::{
    endpoint_path, request_line, ApiError, BatchApi, BatchObject, BatchStatus, CreateBatch,
    OutputLine, COMPLETION_WINDOW, TOKEN_LIMIT_EXCEEDED,
};
use crate::provider::reply::Shape;
use crate::provider::retry::{classify_status, RetryAction};
use state::{BatchJournal, Record, Splitter};

/// Pages of `GET /batches` searched for a batch whose id a kill lost: it
/// was created moments before, so it is among the newest.
const MAX_LIST_PAGES: usize = 20;

/// What batch mode needs from the run that calls it.
pub struct BatchJob<'a> {
    pub plan: &'a Plan,
    pub templates: &'a Templates,
    /// The online request bodies: what rows and their outcomes are keyed by.
    pub builder: &'a BodyBuilder,
    /// The bodies batch lines carry: `builder` itself, or another shape
    /// where the provider's batches take one (Bedrock: [`bedrock::view`]).
    pub lines: &'a BodyBuilder,
    pub shape: &'a Shape,
    pub api: BatchApi,
    /// Names the job in batch metadata, the same for every run of it.
    pub job_id: String,
    pub quiet: bool,
}

/// What batch mode did in this run, for the summary.
#[derive(Debug, Default, Clone, Copy)]
pub struct BatchReport {
    /// Rows whose outcome batch mode journaled in this run.
    pub answered: u64,
    pub batches_created: u64,
    pub deadline_passed: bool,
}

/// A submission: an uploaded input file, its rows, and its batch once created.
#[derive(Debug, Clone)]
struct Submission {
    key: String,
    file_id: String,
    endpoint: String,
    rows: Vec<RowId>,
    batch: Option<BatchObject>,
}

/// An input file being filled: its lines, rows and their request hashes.
#[derive(Default)]
struct InputFile {
    lines: Vec<u8>,
    rows: Vec<RowId>,
    keys: Vec<String>,
}

/// A row's line did not bring an answer.
enum LineFailure {
    /// Worth another round (a 5xx, an expired or cancelled line).
    Transient(String),
    /// No round will help (a 400, a reply that does not fit the type).
    Final(String),
}

struct Runner<'a, 'j> {
    job: BatchJob<'a>,
    journal: &'j mut Journal,
    resume: &'j mut Resume,
    batches: BatchJournal,
    /// The job's request hash fingerprint ([`Plan::call_fingerprint`]).
    fingerprint: String,
    /// The request hash of each row in a submission, for its outcome.
    keys: HashMap<RowId, String>,
    /// Names each row's request in its outcome ([`crate::pipeline::fingerprint`]).
    requests: Fingerprinter,
    /// The request fingerprint of each row not answered yet, for its outcome.
    fingerprints: HashMap<RowId, String>,
    /// Requests submitted by this job (dedup): a row asking one of them
    /// again is left to the online stage, which gives it the answer.
    submitted: HashSet<String>,
    rounds: HashMap<RowId, u32>,
    max_rounds: u32,
    /// Submissions with a batch that is not terminal.
    live: Vec<Submission>,
    /// Submissions refused for the enqueued-token cap, to be created again.
    waiting: VecDeque<Submission>,
    /// Rows whose line failed, to resubmit in the next round.
    retry: BTreeSet<RowId>,
    /// Rows per batch input file; lowered when one file alone exceeds the
    /// provider's enqueued-token cap.
    max_requests: usize,
    report: BatchReport,
    done_batches: u64,
    bar: ProgressBar,
    total_rows: u64,
}

/// Run the job's unanswered rows through the Batch API, journaling every
/// outcome; returns once every row is answered or given up, or the
/// deadline passed and the unfinished batches are cancelled and collected.
pub async fn run(
    job: BatchJob<'_>,
    journal: &mut Journal,
    resume: &mut Resume,
) -> Result<BatchReport> {
    let (batches, loaded) = BatchJournal::open(journal.dir())?;
    let max_rounds = 1 + job.plan.retry.max_retries;
    let bar = progress_bar(job.quiet);
    let max_requests = job.plan.batch.max_requests;
    let fingerprint = job.plan.call_fingerprint();
    let requests = Fingerprinter::of(job.plan);
    let mut runner = Runner {
        job,
        journal,
        resume,
        batches,
        fingerprint,
        keys: HashMap::new(),
        requests,
        fingerprints: HashMap::new(),
        submitted: HashSet::new(),
        rounds: loaded.rounds,
        max_rounds,
        live: Vec::new(),
        waiting: VecDeque::new(),
        retry: BTreeSet::new(),
        max_requests,
        report: BatchReport::default(),
        done_batches: 0,
        bar,
        total_rows: 0,
    };
    let result = runner.drive(loaded.open).await;
    runner.bar.finish_and_clear();
    result.map(|()| runner.report)
}

impl Runner<'_, '_> {
    async fn drive(&mut self, open: Vec<state::Open>) -> Result<()> {
        let started = Instant::now();
        let deadline = self.job.plan.batch.deadline.map(|d| started + d);
        self.adopt(open).await?;
        self.total_rows = self.count_rows()?;
        // The first round: every row not answered and not in a live batch.
        self.submit(None).await?;
        let poll = self.job.plan.batch.poll;
        loop {
            self.draw(deadline);
            if self.live.is_empty() && self.waiting.is_empty() && self.retry.is_empty() {
                return Ok(());
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return self.cancel_and_collect().await;
            }
            if !self.retry.is_empty() {
                let rows = std::mem::take(&mut self.retry);
                self.submit(Some(rows)).await?;
                continue;
            }
            if self.live.is_empty() {
                // Nothing running: a waiting batch goes now, and one refused
                // with nothing running can never fit whole.
                self.create_waiting(true).await?;
                continue;
            }
            let wake = Instant::now() + poll;
            let wake = deadline.map_or(wake, |d| wake.min(d));
            tokio::time::sleep_until(wake).await;
            if self.poll_live().await? {
                // A batch finished: room under an enqueued-token cap.
                self.create_waiting(false).await?;
            }
        }
    }

    /// Rows of the input, for the progress bar (the input is read again
    /// when the source does not know its length).
    fn count_rows(&self) -> Result<u64> {
        let source = open_source(self.job.plan)?;
        if let Some(n) = source.total_rows {
            return Ok(n);
        }
        let mut n = 0;
        for batch in source.into_batches() {
            n += batch?.num_rows() as u64;
        }
        Ok(n)
    }

    fn answered(&self, row: RowId) -> bool {
        row < self.resume.committed || self.resume.outcomes.contains_key(&row)
    }

    /// Answered, for the request that hashes to `key` (committed rows were
    /// rechecked against the input before batch mode began).
    fn answered_as(&self, row: RowId, key: &str) -> bool {
        row < self.resume.committed
            || self
                .resume
                .outcomes
                .get(&row)
                .is_some_and(|o| o.key.as_deref() == Some(key))
    }

    /// Submissions an earlier run left open: poll those with a batch id;
    /// find the batch of the others by their metadata, or create it now
    /// (then it was never created: the kill came first).
    async fn adopt(&mut self, open: Vec<state::Open>) -> Result<()> {
        let lost: HashSet<String> = open
            .iter()
            .filter(|o| o.batch_id.is_none())
            .map(|o| o.submission.clone())
            .collect();
        let found = if lost.is_empty() {
            HashMap::new()
        } else {
            self.find_by_metadata(&lost).await?
        };
        for o in open {
            self.keys.extend(o.rows.iter().copied().zip(o.keys));
            let batch_id = o.batch_id.or_else(|| found.get(&o.submission).cloned());
            let mut s = Submission {
                key: o.submission,
                file_id: o.file_id,
                endpoint: o.endpoint,
                rows: o.rows,
                batch: None,
            };
            match batch_id {
                Some(id) => {
                    if lost.contains(&s.key) {
                        self.batches.record(&Record::Created {
                            submission: s.key.clone(),
                            batch_id: id.clone(),
                        })?;
                    }
                    let batch = self.job.api.get(&id).await.map_err(abort)?;
                    s.batch = Some(batch);
                    self.live.push(s);
                }
                None => self.waiting.push_back(s),
            }
        }
        if !self.live.is_empty() && !self.job.quiet {
            self.bar.println(format!(
                "resuming: polling {} batch(es) of an earlier run",
                self.live.len()
            ));
        }
        // Collect those that finished meanwhile.
        self.poll_live().await?;
        Ok(())
    }

    /// Batch ids of lost submissions, by the `aiq_submission` metadata key.
    async fn find_by_metadata(&self, lost: &HashSet<String>) -> Result<HashMap<String, String>> {
        let mut found = HashMap::new();
        let mut after: Option<String> = None;
        for _ in 0..MAX_LIST_PAGES {
            let page = self.job.api.list(after.as_deref()).await.map_err(abort)?;
            for b in &page.data {
                let Some(meta) = &b.metadata else { continue };
                if meta.get("aiq_job") != Some(&self.job.job_id) {
                    continue;
                }
                if let Some(key) = meta.get("aiq_submission").filter(|k| lost.contains(*k)) {
                    found.entry(key.clone()).or_insert_with(|| b.id.clone());
                }
            }
            if found.len() == lost.len() || !page.has_more {
                break;
            }
            match page.data.last() {
                Some(last) => after = Some(last.id.clone()),
                None => break,
            }
        }
        Ok(found)
    }

    /// Render the rows to submit and send them as batches: `only` the
    /// given rows, or (first round) every row not answered and not in a
    /// live or waiting submission.
    async fn submit(&mut self, only: Option<BTreeSet<RowId>>) -> Result<()> {
        let in_flight: HashSet<RowId> = self
            .live
            .iter()
            .chain(self.waiting.iter())
            .flat_map(|s| s.rows.iter().copied())
            .collect();
        let plan = self.job.plan;
        let maker = CallMaker {
            templates: self.job.templates,
            builder: self.job.builder,
            batch_size: 1,
            similarity: plan.prompt2.is_some(),
            passthrough: plan.passthrough(),
        };
        let lines = (!std::ptr::eq(self.job.lines, self.job.builder)).then(|| CallMaker {
            builder: self.job.lines,
            ..maker
        });
        let source = open_source(plan)?;
        // One open file per endpoint (OpenAI Batch input may mix them).
        let mut files: BTreeMap<&'static str, (InputFile, Splitter)> = BTreeMap::new();
        let mut given_up: Vec<Outcome> = Vec::new();
        let mut first: RowId = 0;
        for batch in source.into_batches() {
            let batch = batch?;
            let start = first;
            first += batch.num_rows() as u64;
            if only
                .as_ref()
                .is_some_and(|o| o.range(start..first).next().is_none())
            {
                continue;
            }
            let (_, calls) = maker.calls(start, &batch);
            let mut bodies: HashMap<RowId, Bytes> = match &lines {
                Some(m) => (m.calls(start, &batch).1.into_iter())
                    .filter_map(|c| Some((*c.rows.first()?, c.body)))
                    .collect(),
                None => HashMap::new(),
            };
            for call in calls {
                let Some(&row) = call.rows.first() else {
                    continue;
                };
                let key = row_keys(&self.fingerprint, &call).swap_remove(0);
                let fingerprint = (!self.answered_as(row, &key)).then(|| {
                    // Rows of batches adopted from an earlier run too.
                    let fingerprint = self.requests.rows(&call).swap_remove(0);
                    self.fingerprints.insert(row, fingerprint.clone());
                    fingerprint
                });
                let wanted = match &only {
                    Some(o) => o.contains(&row),
                    None => !self.answered_as(row, &key) && !in_flight.contains(&row),
                };
                if !wanted {
                    if let Some(fp) = fingerprint.filter(|_| in_flight.contains(&row)) {
                        self.submitted.insert(fp);
                    }
                    continue;
                }
                // Dedup: a request this job submitted, or has an answer to,
                // is not submitted again; the online stage gives the row
                // that answer ([`crate::pipeline::dedup`]). A round that
                // resubmits failed rows sends them as they are.
                if let Some(fp) = fingerprint.filter(|_| plan.dedup && only.is_none()) {
                    if self.resume.answers.contains(&fp) || !self.submitted.insert(fp) {
                        continue;
                    }
                }
                // An outcome of the row's earlier request: stale.
                self.resume.outcomes.remove(&row);
                if self.rounds.get(&row).copied().unwrap_or(0) >= self.max_rounds {
                    // An earlier run used every round and stopped before
                    // recording the row's failure.
                    self.keys.insert(row, key);
                    given_up.push(Outcome::failed(
                        row,
                        format!("no answer after {} batch rounds", self.max_rounds),
                        self.max_rounds,
                    ));
                    continue;
                }
                let endpoint = endpoint_path(plan.dialect(), call.route.unwrap_or(plan.task));
                let body = bodies.remove(&row).unwrap_or_else(|| call.body.clone());
                let line = request_line(&row.to_string(), endpoint, &body);
                let (file, splitter) = files.entry(endpoint).or_insert_with(|| {
                    (
                        InputFile::default(),
                        Splitter::new(self.max_requests, self.max_bytes()),
                    )
                });
                if !splitter.fits(line.len() as u64) {
                    let full = std::mem::take(file);
                    splitter.reset();
                    self.send_file(endpoint, full).await?;
                }
                let (file, splitter) = files
                    .get_mut(endpoint)
                    .ok_or_else(|| Error::Stopped("batch file vanished".into()))?;
                splitter.add(line.len() as u64);
                file.lines.extend_from_slice(&line);
                file.rows.push(row);
                file.keys.push(key);
            }
        }
        for (endpoint, (file, _)) in files {
            if !file.rows.is_empty() {
                self.send_file(endpoint, file).await?;
            }
        }
        self.journal_outcomes(given_up)
    }

    /// Upload one input file, record the submission, create its batch.
    async fn send_file(&mut self, endpoint: &'static str, file: InputFile) -> Result<()> {
        let InputFile {
            lines: content,
            rows,
            keys,
        } = file;
        let min = self.job.api.min_requests();
        if rows.len() < min {
            // The provider refuses so small a batch: these go online.
            if !self.job.quiet {
                self.bar.println(format!(
                    "{} row(s) go online: fewer than the {min} requests a batch needs",
                    rows.len()
                ));
            }
            return Ok(());
        }
        let key = format!("{:016x}", rand::random::<u64>());
        let filename = format!("aiq-{}-{key}.jsonl", self.job.job_id);
        let file = self
            .job
            .api
            .upload(&filename, Bytes::from(content))
            .await
            .map_err(abort)?;
        self.batches.record(&Record::Submitting {
            submission: key.clone(),
            file_id: file.id.clone(),
            endpoint: endpoint.to_string(),
            rows: rows.clone(),
            keys: keys.clone(),
        })?;
        for r in &rows {
            *self.rounds.entry(*r).or_insert(0) += 1;
        }
        self.keys.extend(rows.iter().copied().zip(keys));
        let s = Submission {
            key,
            file_id: file.id,
            endpoint: endpoint.to_string(),
            rows,
            batch: None,
        };
        self.create(s, false).await
    }

    /// Create the batch of a submission; refused for the enqueued-token
    /// cap, it waits. `alone`: nothing else is running, so a refusal means
    /// this file can never fit and is cut in two.
    async fn create(&mut self, mut s: Submission, alone: bool) -> Result<()> {
        let plan = self.job.plan;
        let mut metadata = BTreeMap::new();
        metadata.insert("aiq_job".to_string(), self.job.job_id.clone());
        metadata.insert("aiq_submission".to_string(), s.key.clone());
        let name = plan
            .output
            .as_path()
            .file_name()
            .map(|n| n.to_string_lossy().chars().take(200).collect::<String>())
            .unwrap_or_default();
        metadata.insert("aiq_output".to_string(), name);
        let request = CreateBatch {
            input_file_id: s.file_id.clone(),
            endpoint: s.endpoint.clone(),
            completion_window: COMPLETION_WINDOW.to_string(),
            metadata: Some(metadata),
        };
        let created = match self.job.api.create(&request).await {
            Ok(b) => b,
            Err(e) if e.code.as_deref() == Some(TOKEN_LIMIT_EXCEEDED) => {
                return self.token_capped(s, alone, &e.message);
            }
            Err(e) => return Err(abort(e)),
        };
        self.batches.record(&Record::Created {
            submission: s.key.clone(),
            batch_id: created.id.clone(),
        })?;
        self.report.batches_created += 1;
        if created.status == BatchStatus::Failed
            && created.error_code() == Some(TOKEN_LIMIT_EXCEEDED)
        {
            let why = created.error_text();
            return self.token_capped(s, alone, &why);
        }
        s.batch = Some(created);
        self.live.push(s);
        Ok(())
    }

    fn token_capped(&mut self, s: Submission, alone: bool, why: &str) -> Result<()> {
        if !alone {
            tracing::info!("batch waits for a running one to finish: {why}");
            self.waiting.push_back(s);
            return Ok(());
        }
        // Refused with nothing else enqueued: smaller files, same rows.
        self.batches.record(&Record::Done {
            submission: s.key.clone(),
        })?;
        if s.rows.len() <= 1 {
            let outcomes = s
                .rows
                .iter()
                .map(|r| Outcome::failed(*r, format!("batch refused: {why}"), self.rounds_of(*r)))
                .collect();
            return self.journal_outcomes(outcomes);
        }
        self.max_requests = (s.rows.len() / 2).max(1);
        tracing::info!(
            "a batch of {} rows exceeds the provider's enqueued-token limit alone; \
             files of {} rows from now on",
            s.rows.len(),
            self.max_requests
        );
        for r in &s.rows {
            // The refused round does not count against the row.
            if let Some(n) = self.rounds.get_mut(r) {
                *n = n.saturating_sub(1);
            }
        }
        self.retry.extend(s.rows);
        Ok(())
    }

    /// Create waiting batches again (a running one finished, or none runs).
    async fn create_waiting(&mut self, alone: bool) -> Result<()> {
        let waiting: Vec<Submission> = self.waiting.drain(..).collect();
        let mut first = alone;
        for s in waiting {
            // Only the first can go "alone"; the rest wait behind it.
            self.create(s, first).await?;
            first = false;
        }
        Ok(())
    }

    /// Poll every live batch once; collect the finished ones. True if any finished.
    async fn poll_live(&mut self) -> Result<bool> {
        let mut finished = false;
        let live = std::mem::take(&mut self.live);
        for mut s in live {
            let Some(id) = s.batch.as_ref().map(|b| b.id.clone()) else {
                self.waiting.push_back(s);
                continue;
            };
            let polled = match s.batch.as_ref().filter(|b| b.status.is_terminal()) {
                Some(b) => b.clone(),
                None => match self.job.api.get(&id).await {
                    Ok(b) => b,
                    Err(e) if e.fatal => return Err(abort(e)),
                    Err(e) => {
                        tracing::warn!("polling batch {id}: {e}; trying again at the next poll");
                        self.live.push(s);
                        continue;
                    }
                },
            };
            if !polled.status.is_terminal() {
                s.batch = Some(polled);
                self.live.push(s);
                continue;
            }
            finished = true;
            if polled.status == BatchStatus::Failed
                && polled.error_code() == Some(TOKEN_LIMIT_EXCEEDED)
            {
                s.batch = None;
                self.waiting.push_back(s);
                continue;
            }
            s.batch = Some(polled);
            self.collect(s, false).await?;
        }
        Ok(finished)
    }

    /// Turn a terminal batch's lines into outcomes; rows without an answer
    /// go to the next round (or, after the deadline, to online mode).
    async fn collect(&mut self, s: Submission, deadline_passed: bool) -> Result<()> {
        let Some(batch) = &s.batch else {
            return Ok(());
        };
        let mut lines: HashMap<RowId, OutputLine> = HashMap::new();
        for file_id in [&batch.output_file_id, &batch.error_file_id]
            .into_iter()
            .flatten()
        {
            let content = self.job.api.content(file_id).await.map_err(abort)?;
            for line in content.split(|b| *b == b'\n') {
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                match serde_json::from_slice::<OutputLine>(line) {
                    Ok(l) => match l.custom_id.parse::<RowId>() {
                        Ok(row) => {
                            // An answer beats an error for the same row.
                            let keep = lines.get(&row).is_none_or(|old| {
                                old.response
                                    .as_ref()
                                    .is_none_or(|r| !(200..300).contains(&r.status_code))
                            });
                            if keep {
                                lines.insert(row, l);
                            }
                        }
                        Err(_) => tracing::warn!(
                            "batch {}: custom_id {:?} is not a row of this job",
                            batch.id,
                            l.custom_id
                        ),
                    },
                    Err(e) => tracing::warn!("batch {}: unreadable output line: {e}", batch.id),
                }
            }
        }
        let batch_failure = (batch.status == BatchStatus::Failed).then(|| batch.error_text());
        let mut outcomes = Vec::new();
        for &row in &s.rows {
            if self.answered(row) {
                continue;
            }
            let failure = match lines.remove(&row) {
                Some(line) => match self.line_outcome(row, line) {
                    Ok(o) => {
                        outcomes.push(o);
                        continue;
                    }
                    Err(f) => f,
                },
                None => LineFailure::Transient(match &batch_failure {
                    Some(why) => format!("batch {} failed: {why}", batch.id),
                    None => format!(
                        "batch {} ended {} without answering this row",
                        batch.id,
                        status_name(batch.status)
                    ),
                }),
            };
            let rounds = self.rounds_of(row);
            match failure {
                LineFailure::Final(m) => outcomes.push(Outcome::failed(row, m, rounds)),
                LineFailure::Transient(_) if deadline_passed => {} // sent online next
                LineFailure::Transient(m) if rounds >= self.max_rounds => {
                    outcomes.push(Outcome::failed(
                        row,
                        format!("gave up after {rounds} batch rounds: {m}"),
                        rounds,
                    ))
                }
                LineFailure::Transient(m) => {
                    tracing::debug!(row, "resubmitting: {m}");
                    self.retry.insert(row);
                }
            }
        }
        self.journal_outcomes(outcomes)?;
        self.batches.record(&Record::Done {
            submission: s.key.clone(),
        })?;
        self.done_batches += 1;
        Ok(())
    }

    /// One output or error line → the row's outcome, or why not.
    fn line_outcome(&self, row: RowId, line: OutputLine) -> Result<Outcome, LineFailure> {
        let rounds = self.rounds_of(row);
        match line.response {
            Some(r) if (200..300).contains(&r.status_code) => {
                let body = serde_json::to_vec(&r.body).unwrap_or_default();
                let reply = self.job.shape.parse(&body, 1).map_err(LineFailure::Final)?;
                let usage = reply.usage;
                let first = reply.rows.into_iter().next();
                let (result, error_message) = match first.as_ref().map(|r| &r.result) {
                    Some(Ok(v)) => (v.clone(), None),
                    Some(Err(e)) => (serde_json::Value::Null, Some(e.clone())),
                    None => (
                        serde_json::Value::Null,
                        Some("reply has no answer for this row".to_string()),
                    ),
                };
                Ok(Outcome {
                    row,
                    result,
                    error_message,
                    finish_reason: first.and_then(|r| r.finish_reason),
                    usage,
                    attempts: rounds,
                    ..Outcome::default()
                })
            }
            Some(r) => {
                let message = format!(
                    "HTTP {}: {}",
                    r.status_code,
                    crate::provider::wire::error_message(
                        &serde_json::to_vec(&r.body).unwrap_or_default()
                    )
                );
                let status = StatusCode::from_u16(r.status_code).unwrap_or(StatusCode::BAD_GATEWAY);
                match classify_status(status, &reqwest::header::HeaderMap::new()) {
                    RetryAction::Retry { .. } => Err(LineFailure::Transient(message)),
                    RetryAction::RowError | RetryAction::Abort => Err(LineFailure::Final(message)),
                }
            }
            None => {
                let e = line.error.unwrap_or(crate::provider::batch_api::LineError {
                    code: None,
                    message: None,
                });
                Err(LineFailure::Transient(format!(
                    "{}: {}",
                    e.code.as_deref().unwrap_or("batch_error"),
                    e.message.as_deref().unwrap_or("the line has no response")
                )))
            }
        }
    }

    /// `--batch-max-bytes`, or less where the provider takes less in one
    /// batch (Gemini's inline requests).
    fn max_bytes(&self) -> u64 {
        let asked = self.job.plan.batch.max_bytes;
        self.job
            .api
            .max_input_bytes()
            .map_or(asked, |cap| asked.min(cap))
    }

    fn rounds_of(&self, row: RowId) -> u32 {
        self.rounds.get(&row).copied().unwrap_or(0)
    }

    /// Outcomes into the row journal (flushed), then into the resume state
    /// the online pipeline starts from.
    fn journal_outcomes(&mut self, outcomes: Vec<Outcome>) -> Result<()> {
        if outcomes.is_empty() {
            return Ok(());
        }
        let mut outcomes = outcomes;
        for o in &mut outcomes {
            o.key = self.keys.remove(&o.row);
            // A failed row has no answer to stand for its request.
            o.fingerprint = self.fingerprints.remove(&o.row).filter(|_| !o.is_error());
            self.journal.append(o)?;
            // For the online stage's dedup: rows asking the same take it.
            self.resume.answers.offer(o);
        }
        self.journal.flush()?;
        self.report.answered += outcomes.len() as u64;
        for o in outcomes {
            self.resume.outcomes.insert(o.row, o);
        }
        Ok(())
    }

    /// The deadline passed: cancel what runs, drop what waits, collect what
    /// the cancelled batches answered. The rest goes online.
    async fn cancel_and_collect(&mut self) -> Result<()> {
        self.report.deadline_passed = true;
        if !self.job.quiet {
            self.bar.println(format!(
                "deadline reached: cancelling {} batch(es); the rows they did not answer go online",
                self.live.len()
            ));
        }
        for s in self.waiting.drain(..).collect::<Vec<_>>() {
            self.batches.record(&Record::Done { submission: s.key })?;
        }
        self.retry.clear();
        for s in &mut self.live {
            let Some(id) = s
                .batch
                .as_ref()
                .filter(|b| !b.status.is_terminal())
                .map(|b| b.id.clone())
            else {
                continue;
            };
            match self.job.api.cancel(&id).await {
                Ok(b) => s.batch = Some(b),
                Err(e) if e.fatal => return Err(abort(e)),
                // Finished meanwhile, or the provider refused: polling tells.
                Err(e) => tracing::warn!("cancelling batch {id}: {e}"),
            }
        }
        let poll = self.job.plan.batch.poll;
        while !self.live.is_empty() {
            let live = std::mem::take(&mut self.live);
            for mut s in live {
                let Some(id) = s.batch.as_ref().map(|b| b.id.clone()) else {
                    continue;
                };
                let b = match s.batch.as_ref().filter(|b| b.status.is_terminal()) {
                    Some(b) => b.clone(),
                    None => match self.job.api.get(&id).await {
                        Ok(b) => b,
                        Err(e) if e.fatal => return Err(abort(e)),
                        Err(e) => {
                            tracing::warn!("polling batch {id}: {e}");
                            self.live.push(s);
                            continue;
                        }
                    },
                };
                if b.status.is_terminal() {
                    s.batch = Some(b);
                    self.collect(s, true).await?;
                } else {
                    s.batch = Some(b);
                    self.live.push(s);
                }
            }
            self.draw(None);
            if !self.live.is_empty() {
                tokio::time::sleep(poll).await;
            }
        }
        Ok(())
    }

    fn draw(&self, deadline: Option<Instant>) {
        let running = self
            .live
            .iter()
            .filter(|s| s.batch.as_ref().is_some_and(|b| !b.status.is_terminal()))
            .count();
        let answered = self.resume.committed + self.resume.outcomes.len() as u64;
        self.bar.set_length(self.total_rows.max(answered));
        self.bar.set_position(answered);
        let left = match deadline {
            Some(d) => format!(
                " · deadline in {}",
                human_duration(d.saturating_duration_since(Instant::now()))
            ),
            None => String::new(),
        };
        self.bar.set_message(format!(
            "batches {} submitted, {} running, {} waiting, {} done{left}",
            self.report.batches_created,
            running,
            self.waiting.len(),
            self.done_batches
        ));
    }
}

/// Batch mode reads the input again for each stage and journals what its
/// batches answered next to the output, so it needs both as files: rows
/// handed in (Python's frames) or output handed back are refused, before
/// anything is sent, rather than misread.
pub fn check_io(plan: &Plan, rows_handed_in: bool, output_handed_back: bool) -> Result<()> {
    if plan.mode != crate::job::settings::Mode::Batch {
        return Ok(());
    }
    match (rows_handed_in, output_handed_back) {
        (false, false) => Ok(()),
        (true, _) => Err(Error::Config(
            "--mode batch reads its input from a file: give the input's path (Parquet or JSON Lines) \
             rather than rows"
                .into(),
        )),
        (false, true) => Err(Error::Config(
            "--mode batch journals its batches next to the output: give an output path".into(),
        )),
    }
}

/// The job's input, opened as its `input_format` says: the whole file, or
/// `--shard`'s rows. The online run, batch mode and dry runs all open it here.
pub fn open_source(plan: &Plan) -> Result<Source> {
    match plan.input_format {
        crate::pipeline::openai_batch::InputFormat::Rows => Source::open_shard(
            &plan.input,
            plan.batch_rows,
            plan.shard,
            plan.max_line_bytes,
        ),
        crate::pipeline::openai_batch::InputFormat::Delta => delta_source(plan),
        crate::pipeline::openai_batch::InputFormat::OpenaiBatch => {
            let source = crate::pipeline::openai_batch::open(
                &plan.input,
                plan.batch_rows,
                plan.max_line_bytes,
            )?;
            match plan.shard {
                Some(shard) => source.into_shard(shard),
                None => Ok(source),
            }
        }
    }
}

#[cfg(feature = "delta")]
fn delta_source(plan: &Plan) -> Result<Source> {
    crate::pipeline::delta::open_source(plan)
}

/// Refused when the plan is checked already; kept so no row is misread.
#[cfg(not(feature = "delta"))]
fn delta_source(plan: &Plan) -> Result<Source> {
    Err(Error::input(
        &plan.input,
        "this aiq was built without Delta Lake",
    ))
}

/// What identifies the job's input in its journal: the file, or the Delta
/// table and the version read.
pub fn input_identity(plan: &Plan) -> Result<crate::pipeline::journal::InputIdentity> {
    match plan.input_format {
        #[cfg(feature = "delta")]
        crate::pipeline::openai_batch::InputFormat::Delta => crate::pipeline::delta::identity(plan),
        _ => crate::pipeline::journal::InputIdentity::of(&plan.input),
    }
}

fn abort(e: ApiError) -> Error {
    Error::Aborted(format!(
        "Batch API: {e}\nFinished rows and live batches are kept; run the same command again to resume."
    ))
}

fn status_name(s: BatchStatus) -> String {
    serde_json::to_value(s)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| format!("{s:?}"))
}

fn progress_bar(quiet: bool) -> ProgressBar {
    let bar = ProgressBar::new(0);
    if quiet {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    } else {
        bar.set_draw_target(ProgressDrawTarget::stderr_with_hz(4));
    }
    if let Ok(style) = ProgressStyle::with_template(
        "{spinner} {bar:30.cyan/blue} {pos}/{len} rows answered · {msg} · {elapsed}",
    ) {
        bar.set_style(style.progress_chars("█▉▊▋▌▍▎▏ "));
    }
    bar.enable_steady_tick(Duration::from_millis(250));
    bar
}

fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        s if s >= 3600 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        s if s >= 60 => format!("{}m{:02}s", s / 60, s % 60),
        s => format!("{s}s"),
    }
}
