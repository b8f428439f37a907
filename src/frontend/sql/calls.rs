//! Calls: what the AI functions of one query share, and how a batch of rows
//! becomes requests through aiq's own pipeline.
//!
//! One [`Engine`] per query holds the HTTP client, one [`Limiter`] (RPM/TPM)
//! and one concurrency semaphore for every AI call in the query, whatever the
//! function or partition; endpoints are resolved once each (the simulator is
//! started once). Each call goes through [`crate::pipeline::repair::execute`] (retries,
//! `Retry-After`, learned limits) with a body from [`BodyBuilder`], its reply
//! typed by [`Shape`] — exactly as in `aiq run`.
//!
//! With `--output`, finished calls are also recorded in a [`CallJournal`]
//! (the core's, shared with `aiq run --call-journal`) beside the output,
//! keyed by a hash of what was asked; a re-run of a killed query answers
//! those from the journal instead of paying for them again.
//!
//! Spend is `aiq run`'s ([`crate::job::spend`]): with prices the summary
//! says what the query cost, and a budget (`--max-cost`,
//! `--max-tokens-total`) stops new calls once spent, counting what the
//! journal's answers cost earlier runs, so a re-run with a higher budget
//! finishes the query within it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokio::sync::Semaphore;

use crate::error::{Error, Result};
use crate::job::plan::{Plan, DEFAULT_CONCURRENCY};
use crate::job::settings::JobSettings;
use crate::job::spend::{Meter, Prices};
use crate::pipeline::call_journal::{CallJournal, Entry};
use crate::pipeline::connect::{Pool, AGENT};
use crate::pipeline::outcome::Usage;
use crate::pipeline::render::{BodyBuilder, Call, RenderedRow};
use crate::provider::endpoint::Endpoint;
use crate::provider::endpoint::Target;
use crate::provider::limit::Limits;
use crate::provider::reply::Shape;
use crate::provider::retry::RetryPolicy;
use crate::simulator::Simulator;

/// Settings of `aiq sql` that apply to every AI call of the query.
#[derive(Debug, Clone, Default)]
pub struct EngineSettings {
    /// The query's settings of every model call (endpoint, model,
    /// concurrency, limits, retries, credentials): each call site's
    /// settings are laid over them.
    pub call: JobSettings,
    /// The model's context window, for `ai_agg`'s map-reduce.
    pub context_tokens: u64,
    /// `--dry-run`: count the calls each AI function would make, send none.
    pub dry_run: bool,
}

/// Usage and counts over the whole query, for the summary.
#[derive(Debug, Default)]
pub struct Totals {
    /// Calls answered by the endpoint (successes and row errors).
    pub calls: AtomicU64,
    /// Calls answered from the journal of an earlier run.
    pub resumed: AtomicU64,
    pub errors: AtomicU64,
    pub requests: AtomicU64,
    pub retries: AtomicU64,
    pub rate_limited: AtomicU64,
    pub usage: Mutex<Usage>,
}

/// The query's spend: the budget's meter (earlier runs' journaled answers
/// counted in) and what this run may have been billed.
#[derive(Debug)]
pub struct Spend {
    meter: Meter,
    this_run: Usage,
}

impl Spend {
    /// What this run cost; None without prices.
    pub fn cost_usd(&self) -> Option<f64> {
        self.meter.prices.map(|p: Prices| p.cost(&self.this_run))
    }
}

/// One distinct AI call site: what to send and how to read the reply.
pub struct Prepared {
    pub endpoint: Arc<Endpoint>,
    pub builder: BodyBuilder,
    pub shape: Shape,
    pub retry: RetryPolicy,
    /// The task function's system prompt (ai_classify etc.), as `aiq run` sends it.
    pub system: Option<String>,
    /// Folded into every journal key: the same body read as another type
    /// is another answer.
    pub fingerprint: String,
}

/// What one row's call gave.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    Value(Value),
    Error(String),
}

pub struct Engine {
    pub settings: EngineSettings,
    /// One HTTP pool and limiter for every call of the query.
    pool: Pool,
    in_flight: Arc<Semaphore>,
    endpoints: tokio::sync::Mutex<HashMap<String, Arc<Endpoint>>>,
    /// Kept alive for the query: dropping a simulator stops it.
    simulators: Mutex<Vec<Simulator>>,
    prepared: tokio::sync::Mutex<HashMap<String, Arc<Prepared>>>,
    pub journal: Option<CallJournal>,
    pub totals: Totals,
    pub spend: Mutex<Spend>,
    /// Set for `--dry-run`: the functions count here instead of calling.
    pub dry: Option<DryRun>,
}

/// What a dry run counted for one call site.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DryCount {
    /// Calls it may make at most.
    pub calls: u64,
    /// Rows (non-null values) that reached it.
    pub rows: u64,
    /// Groups, for the AI aggregates.
    pub groups: u64,
}

/// The call sites of a dry run, by label, in the order first met.
#[derive(Debug, Default)]
pub struct DryRun {
    counts: Mutex<Vec<(String, DryCount)>>,
}

impl DryRun {
    /// `rows` rows reached the row function `label`: one call each.
    pub fn count(&self, label: &str, rows: u64) {
        self.add(
            label,
            DryCount {
                calls: rows,
                rows,
                groups: 0,
            },
        );
    }

    pub fn add(&self, label: &str, n: DryCount) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        match counts.iter_mut().find(|(l, _)| l == label) {
            Some((_, c)) => {
                c.calls += n.calls;
                c.rows += n.rows;
                c.groups += n.groups;
            }
            None => counts.push((label.to_string(), n)),
        }
    }

    pub fn snapshot(&self) -> Vec<(String, DryCount)> {
        self.counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl Engine {
    pub fn new(settings: EngineSettings, journal: Option<CallJournal>) -> Result<Engine> {
        // A query may call several endpoints: clients sized as for HTTPS
        // (one per STREAMS_PER_CONNECTION), which plain HTTP does not mind.
        let concurrency = settings.call.concurrency.unwrap_or(DEFAULT_CONCURRENCY);
        // The limits are the query's, over every endpoint it calls.
        let limits = Limits {
            rpm: settings.call.rpm,
            tpm: settings.call.tpm,
            ..Limits::default()
        };
        let pool = Pool::open("https:", concurrency, None, &limits, AGENT)?;
        let dry = settings.dry_run.then(DryRun::default);
        let (prices, budget) = crate::job::plan::spend(&settings.call, None)?;
        let before = journal.as_ref().map(CallJournal::usage).unwrap_or_default();
        let spend = Mutex::new(Spend {
            meter: Meter::new(budget, prices, &before),
            this_run: Usage::default(),
        });
        Ok(Engine {
            spend,
            in_flight: Arc::new(Semaphore::new(concurrency)),
            settings,
            pool,
            endpoints: Default::default(),
            simulators: Mutex::new(Vec::new()),
            prepared: Default::default(),
            dry,
            journal,
            totals: Totals::default(),
        })
    }

    /// The checked plan for one call site, as `aiq run` would build it from
    /// the same settings: endpoint, model, result type, parameters, function.
    pub fn plan(&self, s: JobSettings) -> Result<Plan> {
        let mut s = s.overlay(self.settings.call.clone());
        s.input = Some(PathBuf::from("<query>"));
        s.output = Some(PathBuf::from("aiq-sql.parquet"));
        s.prompt.get_or_insert_with(|| "{{request}}".into());
        Plan::from_settings(s, false)
    }

    /// The prepared call site for `settings`, built once per query.
    pub async fn prepare(&self, key: &str, settings: JobSettings) -> Result<Arc<Prepared>> {
        let mut prepared = self.prepared.lock().await;
        if let Some(p) = prepared.get(key) {
            return Ok(p.clone());
        }
        let plan = self.plan(settings)?;
        let endpoint = self.endpoint(&plan).await?;
        let shape = plan.reply_shape();
        let p = Arc::new(Prepared {
            // The endpoint as written (in `key`), not its URL: the simulator's
            // port changes from run to run, and a resume must still match.
            fingerprint: format!("{}|{key}", plan.result_type),
            endpoint,
            builder: BodyBuilder::literal(plan.body_spec()),
            shape,
            retry: plan.retry.clone(),
            system: plan.system.clone(),
        });
        prepared.insert(key.to_string(), p.clone());
        Ok(p)
    }

    /// Resolve an endpoint once per query. The simulator's route is the same
    /// for every task, so it is started once whatever the functions; an
    /// OpenAI-compatible URL has one route per task.
    async fn endpoint(&self, plan: &Plan) -> Result<Arc<Endpoint>> {
        let key = match &plan.target {
            Target::OpenAi(url) => format!("{url}#{:?}", plan.task),
            Target::Simulator => "simulator".to_string(),
            Target::Databricks(name) => format!("databricks:{name}"),
            Target::Native { .. } => format!("{}#{:?}", plan.target, plan.task),
        };
        let mut endpoints = self.endpoints.lock().await;
        if let Some(e) = endpoints.get(&key) {
            return Ok(e.clone());
        }
        let (endpoint, simulator) = plan.resolve_endpoint().await?;
        if let Some(sim) = simulator {
            self.simulators
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(sim);
        }
        let endpoint = Arc::new(endpoint);
        endpoints.insert(key, endpoint.clone());
        Ok(endpoint)
    }

    /// Answer every row of a batch: `texts[i]` is row i's request (two texts
    /// for ai_similarity), `None` for a null input (not sent). Rows are sent
    /// concurrently, bounded by the query's semaphore; journaled answers are
    /// not sent again. `Err` only when the endpoint refuses the whole query.
    pub async fn answer(
        &self,
        p: &Prepared,
        texts: Vec<Option<(String, Option<String>)>>,
    ) -> Result<Vec<Option<Answer>>> {
        let client =
            self.pool
                .client(p.endpoint.clone(), p.retry.clone(), p.shape.clone(), false)?;
        let calls = texts.into_iter().enumerate().map(|(i, text)| {
            let client = &client;
            async move {
                let Some((a, b)) = text else { return Ok(None) };
                let call = self.call(p, i as u64, a, b);
                let key = journal_key(&p.fingerprint, &call.body);
                if let Some(hit) = self.journal.as_ref().and_then(|j| j.get(&key)) {
                    self.totals.resumed.fetch_add(1, Ordering::Relaxed);
                    return Ok(Some(Answer::Value(hit.result)));
                }
                let _permit = self
                    .in_flight
                    .acquire()
                    .await
                    .map_err(|_| Error::Stopped("query stopped".into()))?;
                // Checked once a call may go: those waiting for a permit
                // when the budget ran out are not sent.
                self.within_budget()?;
                let outcome = crate::pipeline::repair::execute(&client, &call)
                    .await
                    .map_err(|abort| Error::Aborted(abort.0))?
                    .into_iter()
                    .next()
                    .unwrap_or_default();
                {
                    let mut spend = self.spend.lock().unwrap_or_else(|p| p.into_inner());
                    let billed = outcome.billed_usage();
                    spend.this_run.add(&billed);
                    spend.meter.record(&billed);
                }
                self.totals.calls.fetch_add(1, Ordering::Relaxed);
                self.totals
                    .usage
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .add(&outcome.usage);
                Ok(Some(match outcome.error_message {
                    Some(message) => {
                        self.totals.errors.fetch_add(1, Ordering::Relaxed);
                        Answer::Error(message)
                    }
                    None => {
                        if let Some(j) = &self.journal {
                            j.put(Entry {
                                key,
                                result: outcome.result.clone(),
                                usage: outcome.usage,
                                finish_reason: outcome.finish_reason.clone(),
                            })?;
                        }
                        Answer::Value(outcome.result)
                    }
                }))
            }
        });
        let answers: Result<Vec<_>> = futures::future::join_all(calls).await.into_iter().collect();
        let t = &self.totals;
        t.requests.fetch_add(
            client.stats.attempts.load(Ordering::Relaxed),
            Ordering::Relaxed,
        );
        t.retries.fetch_add(
            client.stats.retries.load(Ordering::Relaxed),
            Ordering::Relaxed,
        );
        t.rate_limited.fetch_add(
            client.stats.rate_limited.load(Ordering::Relaxed),
            Ordering::Relaxed,
        );
        answers
    }

    /// `Err(Stopped)` once the budget is spent: the query sends nothing
    /// more, the calls in flight finish (and are journaled).
    fn within_budget(&self) -> Result<()> {
        let spend = self.spend.lock().unwrap_or_else(|p| p.into_inner());
        let Some(why) = spend.meter.exhausted() else {
            return Ok(());
        };
        let resume = match &self.journal {
            Some(j) => format!(
                "Answers are kept in {}: run the same query with a higher budget to finish it, without paying for them again",
                j.dir().display()
            ),
            None => "Without --output nothing is kept: give --output to resume a stopped query".into(),
        };
        Err(Error::Stopped(format!(
            "{why}; no new AI calls were sent (those in flight finished). {resume}"
        )))
    }

    fn call(&self, p: &Prepared, row: u64, a: String, b: Option<String>) -> Call {
        match b {
            Some(b) => p.builder.pair(row, &a, &b),
            None => p.builder.single(&RenderedRow {
                row,
                system: p.system.clone(),
                user: a,
                user2: None,
                images: Vec::new(),
            }),
        }
    }
}

fn journal_key(fingerprint: &str, body: &[u8]) -> String {
    crate::pipeline::call_journal::key(fingerprint, body, 0)
}

/// `out.parquet` → `out.parquet.aiq-sql`: where a query's answered calls
/// are journaled ([`CallJournal`], shared with `aiq run --call-journal`).
/// Keys are hashes of (endpoint, result type, call site, request body), so
/// the journal does not care how the query orders or filters rows: any call
/// asked again is answered from it.
pub fn journal_dir(output: &Path) -> PathBuf {
    crate::job::location::with_name_suffix(output, ".aiq-sql")
}

/// Open (or start) the journal for `output`; `restart` discards it first.
pub fn open_journal(output: &Path, restart: bool) -> Result<CallJournal> {
    let dir = journal_dir(output);
    if restart && dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    }
    CallJournal::open(&dir, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_survives_reopen_and_restart() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out.parquet");
        let j = open_journal(&out, false).unwrap();
        let entry = Entry {
            key: "k1".into(),
            result: serde_json::json!("one"),
            usage: Usage::default(),
            finish_reason: None,
        };
        j.put(entry).unwrap();
        drop(j);
        let j = open_journal(&out, false).unwrap();
        assert_eq!(j.get("k1").unwrap().result, serde_json::json!("one"));
        let j = open_journal(&out, true).unwrap();
        assert!(j.is_empty());
        j.remove().unwrap();
        assert!(!journal_dir(&out).exists());
    }
}
