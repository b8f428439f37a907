//! `aiq run --dry-run`: what a job would send and spend, without sending.
//!
//! The plan is checked as for a real run (templates against the input's
//! columns, output columns, settings), then every row is rendered into the
//! exact request body a run would send ([`CallMaker`], shared with the
//! scheduler) — but no endpoint is contacted and no credentials are read.
//! Token counts use [`crate::ai::tokens::estimate`], the same four-bytes-per-token
//! rule the simulator bills by, so against the simulator the estimate is
//! exact up to rounding; against real models it is an approximation (English
//! prose is close; code and other languages run higher). The estimate is of
//! the whole job as if started fresh: a journal of an earlier run is neither
//! read nor touched.

use std::collections::{BTreeMap, HashSet};
use std::fmt;

use serde::Serialize;

use crate::error::Result;
use crate::job::plan::Plan;
use crate::job::settings::Mode;
use crate::job::spend::Prices;
use crate::pipeline::batch::bedrock;
use crate::pipeline::batch::state::Splitter;
use crate::pipeline::fingerprint::Fingerprinter;
use crate::pipeline::render::{BodyBuilder, Templates};
use crate::pipeline::schedule::CallMaker;
use crate::pipeline::sink::Layout;
use crate::provider::batch_api::{endpoint_path, request_line};
use crate::provider::endpoint::Target;
use crate::provider::usage::Usage;

/// What a job would send, and an estimate of what it would cost and take.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Estimate {
    /// Input rows.
    pub rows: u64,
    /// Rows that would be sent (not null in a template variable, rendered,
    /// not sharing an earlier row's request).
    pub rows_to_send: u64,
    /// Rows not sent because an earlier row asks the same request: they
    /// take its answer (dedup; 0 with `--no-dedup`).
    pub shared_rows: u64,
    /// `--write-mode merge`: rows not sent because the table holds their
    /// key with the same request.
    pub answered_by_table: u64,
    /// `--write-mode merge`: rows not sent because a later row of the
    /// input has their key (it replaces them).
    pub replaced_by_later_rows: u64,
    /// Rows not sent: a template variable is null (their result is null).
    pub null_rows: u64,
    /// Rows a template fails on (they would get an `error_message`).
    pub template_errors: u64,
    /// HTTP requests (fewer than rows with embedding `--batch-size`).
    pub requests: u64,
    /// Estimated input tokens of all requests.
    pub input_tokens: u64,
    /// Output tokens reserved: `max_tokens` (or aiq's default reserve) × requests.
    pub reserved_output_tokens: u64,
    /// Input tokens in static prefixes long enough for provider caching.
    pub cacheable_prefix_tokens: u64,
    /// `cacheable_prefix_tokens / input_tokens`.
    pub cacheable_share: f64,
    /// Input tokens expected to be read from the cache: every cacheable
    /// prefix after its first request.
    pub est_cached_tokens: u64,
    pub prices: Option<Prices>,
    /// Cost of the input at the prices given (cached part at the cached price).
    pub cost_input_usd: Option<f64>,
    /// Input cost + every reserved output token: the most the job can cost.
    pub cost_max_usd: Option<f64>,
    /// Seconds the job takes at the configured limits, if any limit binds.
    pub est_secs: Option<f64>,
    /// The limit that sets `est_secs`.
    pub bound_by: Option<String>,
    /// When the estimate is over `--max-tokens-total` or `--max-cost`: how
    /// many rows the budget covers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub budget_covers: Option<Covers>,
    /// `--mode batch`: the batch input files the job would upload.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batches: Option<Vec<BatchFile>>,
    /// `--mode batch`: requests of files too small for a batch (Bedrock's
    /// minimum records per job), which a run sends online instead.
    #[serde(skip_serializing_if = "is_zero")]
    pub batch_online_requests: u64,
    /// The fewest requests a batch takes (1 but on Bedrock).
    #[serde(skip)]
    pub batch_min_requests: usize,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The rows a budget covers, between every reply using its whole
/// `max_tokens` (`rows_min`) and replies costing nothing (`rows_max`): the
/// estimate knows the input, not the length of the answers.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Covers {
    /// The budget that binds: `--max-tokens-total N` or `--max-cost $X`.
    pub budget: String,
    pub rows_min: u64,
    pub rows_max: u64,
}

/// The rows of `e` that `plan`'s budgets cover, if fewer than all: each
/// budget shares out over the rows to send at their average spend, and the
/// tighter one binds.
fn budget_covers(plan: &Plan, e: &Estimate) -> Option<Covers> {
    let rows = e.rows_to_send;
    let share = |budget: f64, spend: f64| {
        if spend <= 0.0 {
            rows
        } else {
            ((rows as f64 * budget / spend).floor() as u64).min(rows)
        }
    };
    let mut each = Vec::new();
    if let Some(max) = plan.budget.max_tokens {
        let (least, most) = (e.input_tokens + e.reserved_output_tokens, e.input_tokens);
        each.push((
            format!("--max-tokens-total {max}"),
            share(max as f64, least as f64),
            share(max as f64, most as f64),
        ));
    }
    if let (Some(max), Some(least), Some(most)) =
        (plan.budget.max_cost, e.cost_max_usd, e.cost_input_usd)
    {
        each.push((
            format!("--max-cost ${max}"),
            share(max, least),
            share(max, most),
        ));
    }
    each.into_iter()
        .filter(|(_, rows_min, _)| *rows_min < rows)
        .min_by_key(|(_, rows_min, _)| *rows_min)
        .map(|(budget, rows_min, rows_max)| Covers {
            budget,
            rows_min,
            rows_max,
        })
}

/// One batch input file of a `--mode batch` dry run.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct BatchFile {
    pub endpoint: String,
    pub requests: u64,
    pub bytes: u64,
}

/// Cuts the dry run's calls into batch input files exactly as batch mode
/// does ([`Splitter`], same line format).
struct BatchFiles {
    max_requests: usize,
    max_bytes: u64,
    /// A file with fewer requests goes online, as in a run.
    min_requests: usize,
    open: BTreeMap<&'static str, Splitter>,
    files: Vec<BatchFile>,
    online: u64,
}

impl BatchFiles {
    fn add(&mut self, endpoint: &'static str, line: u64) {
        let (max_requests, max_bytes) = (self.max_requests, self.max_bytes);
        let s = self
            .open
            .entry(endpoint)
            .or_insert_with(|| Splitter::new(max_requests, max_bytes));
        let cut = (!s.fits(line)).then(|| BatchFile {
            endpoint: endpoint.to_string(),
            requests: s.lines() as u64,
            bytes: s.bytes(),
        });
        if cut.is_some() {
            s.reset();
        }
        s.add(line);
        if let Some(file) = cut {
            self.close(file);
        }
    }

    /// A cut file: a batch, or online requests when too small for one.
    fn close(&mut self, file: BatchFile) {
        match file.requests < self.min_requests as u64 {
            true => self.online += file.requests,
            false => self.files.push(file),
        }
    }

    /// The batch files and the requests that go online.
    fn finish(mut self) -> (Vec<BatchFile>, u64) {
        for (endpoint, s) in std::mem::take(&mut self.open) {
            if s.lines() > 0 {
                self.close(BatchFile {
                    endpoint: endpoint.to_string(),
                    requests: s.lines() as u64,
                    bytes: s.bytes(),
                });
            }
        }
        (self.files, self.online)
    }
}

/// Render every row of the plan's input and add up what would be sent.
pub fn dry_run(plan: &Plan) -> Result<Estimate> {
    let source = crate::pipeline::batch::open_source(plan)?;
    let templates = std::sync::Arc::new(Templates::for_plan(plan, &source.schema)?);
    // A merge sends only what its table does not hold already.
    let (source, saved) = crate::pipeline::delta::skip_stored(
        plan,
        source,
        Some(crate::pipeline::batch::open_source),
        &templates,
    )?;
    // Checked as for a real run: an input column named like an output column.
    Layout::new(&source.schema, plan.result_type.arrow_type())?;
    let builder = std::sync::Arc::new(BodyBuilder::new(plan.body_spec(), &templates));
    // Batch files carry the bodies a run's batches do (Bedrock: Messages).
    let builder = match plan.mode {
        Mode::Batch => bedrock::view(plan, &templates, &builder, &plan.reply_shape()).0,
        Mode::Online => builder,
    };
    let maker = CallMaker {
        templates: &templates,
        builder: &builder,
        batch_size: plan.batch_size,
        similarity: plan.prompt2.is_some(),
        passthrough: plan.passthrough(),
    };
    let mut e = Estimate {
        prices: plan.prices,
        ..Estimate::default()
    };
    let mut batch_files = (plan.mode == Mode::Batch).then(|| BatchFiles {
        max_requests: plan.batch.max_requests,
        max_bytes: plan.batch.max_bytes,
        min_requests: bedrock::min_requests(plan),
        open: BTreeMap::new(),
        files: Vec::new(),
        online: 0,
    });
    let mut seen_prefixes: HashSet<u64> = HashSet::new();
    let mut written = 0u64;
    // Requests a run would send once (as the scheduler's dedup does).
    let requests = (plan.dedup && plan.mode == Mode::Online).then(|| Fingerprinter::of(plan));
    let mut seen_requests: HashSet<String> = HashSet::new();
    let mut first = 0;
    for batch in source.into_batches() {
        let batch = batch?;
        let (immediate, calls) = maker.calls(first, &batch);
        first += batch.num_rows() as u64;
        e.rows += batch.num_rows() as u64;
        for o in &immediate {
            if o.is_error() {
                e.template_errors += 1;
            } else {
                e.null_rows += 1;
            }
        }
        for call in &calls {
            if let Some(requests) = requests.as_ref().filter(|_| call.rows.len() == 1) {
                if !seen_requests.insert(requests.rows(call).pop().unwrap_or_default()) {
                    e.shared_rows += 1;
                    continue;
                }
            }
            if let (Some(files), Some(row)) = (batch_files.as_mut(), call.rows.first()) {
                let endpoint = endpoint_path(plan.dialect(), call.route.unwrap_or(plan.task));
                files.add(
                    endpoint,
                    request_line(&row.to_string(), endpoint, &call.body).len() as u64,
                );
            }
            e.requests += 1;
            e.rows_to_send += call.rows.len() as u64;
            e.input_tokens += call.est_prompt_tokens;
            e.reserved_output_tokens += call.est_tokens.saturating_sub(call.est_prompt_tokens);
            if let Some(p) = call.prefix.filter(|p| p.cacheable()) {
                e.cacheable_prefix_tokens += p.tokens;
                if seen_prefixes.insert(p.key) {
                    written += p.tokens;
                } else {
                    e.est_cached_tokens += p.tokens;
                }
            }
        }
    }
    e.answered_by_table = saved.tally().0;
    e.replaced_by_later_rows = saved.replaced();
    e.rows += e.answered_by_table + e.replaced_by_later_rows;
    e.cacheable_share = ratio(e.cacheable_prefix_tokens, e.input_tokens);
    if let Some(p) = plan.prices {
        // The first request with a prefix writes it to the cache, the others read it.
        let input = p.cost(&Usage {
            prompt_tokens: e.input_tokens as i64,
            cached_tokens: e.est_cached_tokens as i64,
            cache_write_tokens: written as i64,
            ..Usage::default()
        });
        e.cost_input_usd = Some(input);
        e.cost_max_usd = Some(input + e.reserved_output_tokens as f64 * p.output / 1e6);
    }
    (e.est_secs, e.bound_by) = time_at_limits(plan, &e);
    e.budget_covers = budget_covers(plan, &e);
    if let Some(files) = batch_files {
        e.batch_min_requests = files.min_requests;
        let (batches, online) = files.finish();
        (e.batches, e.batch_online_requests) = (Some(batches), online);
        // The provider sets the pace of a batch, not aiq's limits.
        (e.est_secs, e.bound_by) = (None, None);
    }
    Ok(e)
}

/// The slowest of the configured limits, in seconds, and its name. OTPM is
/// counted at the reserved `max_tokens`: an upper bound, since aiq gives
/// back what replies do not use. Without limits the time depends on the
/// endpoint's latency, which a dry run cannot know (except the simulator's).
fn time_at_limits(plan: &Plan, e: &Estimate) -> (Option<f64>, Option<String>) {
    let per_minute =
        |amount: u64, limit: Option<u32>| limit.map(|l| amount as f64 / l as f64 * 60.0);
    let mut candidates: Vec<(f64, String)> = Vec::new();
    let mut push = |secs: Option<f64>, name: String| {
        if let Some(s) = secs {
            candidates.push((s, name));
        }
    };
    push(
        per_minute(e.requests, plan.rpm),
        format!("--rpm {}", plan.rpm.unwrap_or(0)),
    );
    push(
        per_minute(e.input_tokens + e.reserved_output_tokens, plan.tpm),
        format!("--tpm {}", plan.tpm.unwrap_or(0)),
    );
    push(
        per_minute(e.input_tokens, plan.itpm),
        format!("--itpm {}", plan.itpm.unwrap_or(0)),
    );
    push(
        per_minute(e.reserved_output_tokens, plan.otpm),
        format!("--otpm {} (at max_tokens)", plan.otpm.unwrap_or(0)),
    );
    push(
        plan.qph.map(|q| e.requests as f64 / q as f64 * 3600.0),
        format!("--qph {}", plan.qph.unwrap_or(0)),
    );
    if plan.target == Target::Simulator {
        // The simulator's latency is known: requests take it, `concurrency` at a time.
        let per_request = plan.simulator.latency_ms.unwrap_or(0) as f64 / 1e3;
        if per_request > 0.0 {
            let waves = e.requests.div_ceil(plan.concurrency as u64) as f64;
            push(
                Some(waves * per_request),
                format!(
                    "--concurrency {} at the simulator's latency",
                    plan.concurrency
                ),
            );
        }
    }
    candidates
        .into_iter()
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map_or((None, None), |(s, name)| (Some(s), Some(name)))
}

fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

impl fmt::Display for Estimate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "dry run: nothing was sent")?;
        writeln!(
            f,
            "rows              {} ({} to send, {} null, {} template errors{})",
            self.rows,
            self.rows_to_send,
            self.null_rows,
            self.template_errors,
            if self.answered_by_table > 0 {
                format!(", {} answered by the table", self.answered_by_table)
            } else {
                String::new()
            }
        )?;
        if self.replaced_by_later_rows > 0 {
            writeln!(
                f,
                "replaced          {} rows: a later row has the same merge key (the last \
                 row of each key is kept)",
                self.replaced_by_later_rows
            )?;
        }
        if self.shared_rows > 0 {
            writeln!(
                f,
                "shared            {} rows ask the same request as an earlier row: not sent, \
                 they take its answer (--no-dedup sends them)",
                self.shared_rows
            )?;
        }
        writeln!(f, "requests          {}", self.requests)?;
        writeln!(
            f,
            "input tokens      ~{} (estimated at 4 bytes a token)",
            self.input_tokens
        )?;
        writeln!(
            f,
            "output reserved   {} (max_tokens × requests)",
            self.reserved_output_tokens
        )?;
        writeln!(
            f,
            "cacheable prefix  {:.0}% of input tokens (~{} read from the cache)",
            self.cacheable_share * 100.0,
            self.est_cached_tokens
        )?;
        match (self.cost_input_usd, self.cost_max_usd) {
            (Some(input), Some(max)) => {
                writeln!(f, "cost              ~${input:.4} input; at most ${max:.4} with every reserved output token")?
            }
            _ => writeln!(f, "cost              give --price-in and --price-out (USD per million tokens) to estimate")?,
        }
        if let Some(c) = &self.budget_covers {
            writeln!(
                f,
                "budget            {} covers {} to {} of the {} rows to send ({} if every reply uses its max_tokens); the job stops there, resumable with a higher budget",
                c.budget, c.rows_min, c.rows_max, self.rows_to_send, c.rows_min
            )?;
        }
        if let Some(files) = &self.batches {
            let sizes: Vec<String> = files
                .iter()
                .map(|b| format!("{} requests, {}", b.requests, megabytes(b.bytes)))
                .collect();
            writeln!(
                f,
                "batches           {} input file(s) for the Batch API: {}",
                files.len(),
                sizes.join("; ")
            )?;
            if self.batch_online_requests > 0 {
                writeln!(
                    f,
                    "online            {} request(s) in files of fewer than the {} a batch job takes: \
                     sent online, at the on-demand price",
                    self.batch_online_requests, self.batch_min_requests
                )?;
            }
            return write!(
                f,
                "time              within the 24h completion window (cost above is at the prices given: pass the batch prices)"
            );
        }
        match (self.est_secs, &self.bound_by) {
            (Some(secs), Some(by)) => write!(f, "time              ~{} at {by}", duration(secs)),
            _ => write!(
                f,
                "time              no rate limit given: depends on the endpoint's latency"
            ),
        }
    }
}

fn megabytes(bytes: u64) -> String {
    if bytes >= 1_000_000 {
        format!("{:.1} MB", bytes as f64 / 1e6)
    } else {
        format!("{:.1} kB", bytes as f64 / 1e3)
    }
}

fn duration(secs: f64) -> String {
    let s = secs.round() as u64;
    match s {
        s if s >= 3600 => format!("{}h {:02}m", s / 3600, s % 3600 / 60),
        s if s >= 60 => format!("{}m {:02}s", s / 60, s % 60),
        s => format!("{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::settings::JobSettings;

    #[test]
    fn renders_every_row_and_estimates_without_an_endpoint() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in.jsonl");
        let rows: Vec<String> = (0..10)
            .map(|i| {
                if i == 9 {
                    r#"{"text": null}"#.to_string()
                } else {
                    format!(r#"{{"text": "row {i} abcd"}}"#)
                }
            })
            .collect();
        std::fs::write(&input, rows.join("\n")).unwrap();
        let settings = JobSettings {
            input: Some(input),
            output: Some(dir.path().join("out.parquet")),
            // A Databricks endpoint with no host or token anywhere: a dry run needs neither.
            endpoint: Some("databricks-claude-sonnet-4".into()),
            system: Some("x".repeat(5000)),
            prompt: Some("{{text}}".into()),
            params: vec![("max_tokens".into(), serde_json::json!(100))],
            rpm: Some(60),
            price_in: Some(3.0),
            price_out: Some(15.0),
            price_cached: Some(0.3),
            ..Default::default()
        };
        let plan = Plan::from_settings(settings, false).unwrap();
        let e = dry_run(&plan).unwrap();
        assert_eq!(
            (e.rows, e.rows_to_send, e.null_rows, e.requests),
            (10, 9, 1, 9)
        );
        assert_eq!(e.input_tokens, 9 * (1250 + 3));
        assert_eq!(e.reserved_output_tokens, 900);
        assert_eq!(e.cacheable_prefix_tokens, 9 * 1250);
        assert_eq!(
            e.est_cached_tokens,
            8 * 1250,
            "every request after the first reads the prefix"
        );
        assert!(e.cacheable_share > 0.99);
        let input = (9.0 * 1253.0 - 8.0 * 1250.0) * 3.0 / 1e6 + 8.0 * 1250.0 * 0.3 / 1e6;
        assert!((e.cost_input_usd.unwrap() - input).abs() < 1e-9);
        assert!((e.cost_max_usd.unwrap() - input - 900.0 * 15.0 / 1e6).abs() < 1e-9);
        assert_eq!(e.est_secs, Some(9.0));
        assert_eq!(e.bound_by.as_deref(), Some("--rpm 60"));
        let text = e.to_string();
        assert!(
            text.contains("9 to send, 1 null") && text.contains("~9s at --rpm 60"),
            "{text}"
        );
    }
}
