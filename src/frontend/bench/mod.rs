//! `aiq bench`: measure an endpoint (or aiq itself) under a sweep of load.
//!
//! This module owns the flags, their checking, and the measuring loop; the
//! figures are pure functions in [`stats`], the outputs (table, JSON,
//! Parquet records) in [`report`] and the picture in [`plot`] (PNG through
//! [`png`]).
//!
//! The loop is oha's design: per step, a pacing task hands out tickets on a
//! bounded channel — as fast as workers take them for a concurrency step
//! (closed loop), or at Poisson arrival times for a rate step (open loop) —
//! and one kind of worker sends a request per ticket and hands an owned
//! [`Record`] to the collector. A step is just values (how many workers, how
//! tickets are paced), so both modes share every line of the worker.
//! Requests are single attempts ([`Client::probe`]): retrying would hide the
//! 429s and errors a benchmark exists to show. Replies are streamed, so time
//! to first token and inter-token latency are measured, not guessed.

pub mod plot;
pub mod png;
pub mod report;
pub mod stats;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::StringArray;
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use bytes::Bytes;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rand::SeedableRng;
use serde_json::{Map, Value};
use tokio::sync::{mpsc, Mutex};
use tokio::time::Instant;

use crate::ai::tokens::BYTES_PER_TOKEN;
use crate::error::{Error, Result};
use crate::job::plan::EndpointSpec;
use crate::job::settings::{parse_param, SimFlags, SimulatorSettings};
use crate::pipeline::client::Client;
use crate::pipeline::connect::{self, Reach, AGENT};
use crate::pipeline::render::{BodyBuilder, BodySpec, Templates};
use crate::pipeline::source::Source;
use crate::provider::endpoint::Endpoint;
use crate::provider::endpoint::Target;
use crate::provider::limit::Limits;
use crate::provider::quirks::Quirks;
use crate::provider::reply::Shape;
use crate::provider::retry::RetryPolicy;
use crate::provider::wire::Task;

pub use stats::{Load, Record, Slo, StepStats};

/// Distinct prompts kept in memory and cycled through: enough variety that
/// no cache sees one prompt twice in a short step, bounded whatever the
/// input's size.
pub const MAX_PROMPTS: usize = 4096;

/// Requests per step when neither `--requests` nor `--duration` is given.
pub const DEFAULT_REQUESTS: u64 = 100;

/// Workers (requests in flight at most) of a `--rate` step.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 512;

#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Where to send requests: a Databricks serving endpoint name, an
    /// OpenAI-compatible base URL (http(s)://host/v1), or `simulator`.
    #[arg(long, value_name = "NAME|URL")]
    pub endpoint: String,

    /// Model name sent in the body (OpenAI-compatible servers need one).
    #[arg(long)]
    pub model: Option<String>,

    /// Kind of call: chat (default), completions, or embeddings (never
    /// streamed: no time to first token; latency is end to end).
    #[arg(long, value_enum, default_value = "chat")]
    pub task: Task,

    /// Environment variable holding the OpenAI-compatible API key
    /// [default: OPENAI_API_KEY].
    #[arg(long, value_name = "NAME")]
    pub api_key_env: Option<String>,

    /// ~/.databrickscfg profile [default: $DATABRICKS_CONFIG_PROFILE or DEFAULT].
    #[arg(long)]
    pub profile: Option<String>,

    /// Prompts from a file (.parquet or .jsonl), rendered with --prompt;
    /// without it, synthetic prompts of --input-tokens tokens.
    #[arg(long, value_name = "PATH", requires = "prompt")]
    pub input: Option<PathBuf>,

    /// User prompt template over the input's columns: "Summarize: {{text}}".
    #[arg(long, value_name = "TEMPLATE", requires = "input")]
    pub prompt: Option<String>,

    /// System prompt template.
    #[arg(long, value_name = "TEMPLATE")]
    pub system: Option<String>,

    /// Length of synthetic prompts, in tokens (about 4 bytes each; the
    /// server's count, with its chat template, is in the report's `sent:` line).
    #[arg(
        long,
        value_name = "N",
        default_value_t = 256,
        conflicts_with = "input"
    )]
    pub input_tokens: u64,

    /// max_tokens of every request.
    #[arg(long, value_name = "N", default_value_t = 128)]
    pub output_tokens: u64,

    /// Model parameter passed into the request body, typed (as for `aiq run`). Repeatable.
    #[arg(long = "param", value_name = "KEY=VALUE", value_parser = parse_param)]
    pub params: Vec<(String, Value)>,

    /// Concurrency sweep: a step per value, each with that many requests in
    /// flight (closed loop) [default: 1].
    #[arg(
        long,
        value_name = "N,N,..",
        value_delimiter = ',',
        conflicts_with = "rate"
    )]
    pub concurrency: Vec<usize>,

    /// Request-rate sweep: a step per value, Poisson arrivals at that many
    /// requests per second (open loop).
    #[arg(long, value_name = "RPS,RPS,..", value_delimiter = ',')]
    pub rate: Vec<f64>,

    /// Requests in flight at most during a --rate step; arrivals beyond it
    /// wait (their wait is reported as `queued`).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_IN_FLIGHT)]
    pub max_in_flight: usize,

    /// Requests sent before the first step, at its load, and not measured:
    /// connections, caches and a cold server warm up outside the figures.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub warmup: u64,

    /// Requests per step [default: 100 unless --duration is given].
    #[arg(long, value_name = "N", conflicts_with = "duration")]
    pub requests: Option<u64>,

    /// Seconds per step: no new request starts after it; those in flight finish.
    #[arg(long, value_name = "SECS")]
    pub duration: Option<f64>,

    /// Goodput SLO: time to first token at most this many ms.
    #[arg(long, value_name = "MS")]
    pub slo_ttft_ms: Option<f64>,

    /// Goodput SLO: end-to-end latency at most this many ms.
    #[arg(long, value_name = "MS")]
    pub slo_e2e_ms: Option<f64>,

    /// Write the JSON summary to PATH (`-` for stdout, the table then goes to stderr).
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,

    /// Write one Parquet row per request to PATH.
    #[arg(long, value_name = "PATH")]
    pub records: Option<PathBuf>,

    /// Draw latency against throughput across the sweep into PATH: SVG or
    /// PNG, by the extension.
    #[arg(long, value_name = "PATH.svg|PATH.png")]
    pub plot: Option<PathBuf>,

    /// Timeout of one request, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 120.0)]
    pub timeout: f64,

    /// Seed of the Poisson arrivals, for repeatable schedules.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,

    /// Do not stream: no time to first token or inter-token latency.
    #[arg(long)]
    pub no_stream: bool,

    #[command(flatten)]
    pub sim: SimFlags,
}

/// `BenchArgs`, checked: everything a run needs, nothing left to fail on
/// usage.
#[derive(Debug, Clone)]
pub struct BenchPlan {
    pub target: Target,
    pub args: BenchArgs,
    pub loads: Vec<Load>,
    pub stop: StepEnd,
    pub slo: Slo,
    pub params: Map<String, Value>,
    pub simulator: SimulatorSettings,
}

/// When a step stops handing out tickets.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum StepEnd {
    Requests(u64),
    Duration(Duration),
}

impl BenchPlan {
    pub fn from_args(args: BenchArgs) -> Result<BenchPlan> {
        let target = Target::parse(&args.endpoint)?;
        let loads: Vec<Load> = if !args.rate.is_empty() {
            for r in &args.rate {
                if !(r.is_finite() && *r > 0.0) {
                    return Err(Error::Config(format!(
                        "--rate values must be positive numbers, got {r}"
                    )));
                }
            }
            args.rate.iter().map(|r| Load::Rate(*r)).collect()
        } else if args.concurrency.is_empty() {
            vec![Load::Concurrency(1)]
        } else {
            if args.concurrency.contains(&0) {
                return Err(Error::Config(
                    "--concurrency values must be at least 1".into(),
                ));
            }
            args.concurrency
                .iter()
                .map(|c| Load::Concurrency(*c))
                .collect()
        };
        if args.max_in_flight == 0 {
            return Err(Error::Config("--max-in-flight must be at least 1".into()));
        }
        let stop = match (args.requests, args.duration) {
            (Some(0), _) => return Err(Error::Config("--requests must be at least 1".into())),
            (Some(n), _) => StepEnd::Requests(n),
            (None, Some(d)) if d.is_finite() && d > 0.0 => {
                StepEnd::Duration(Duration::from_secs_f64(d))
            }
            (None, Some(d)) => {
                return Err(Error::Config(format!(
                    "--duration must be a positive number of seconds, got {d}"
                )))
            }
            (None, None) => StepEnd::Requests(DEFAULT_REQUESTS),
        };
        if !(args.timeout.is_finite() && args.timeout > 0.0) {
            return Err(Error::Config(
                "--timeout must be a positive number of seconds".into(),
            ));
        }
        for (name, v) in [
            ("--slo-ttft-ms", args.slo_ttft_ms),
            ("--slo-e2e-ms", args.slo_e2e_ms),
        ] {
            if v.is_some_and(|v| !(v.is_finite() && v > 0.0)) {
                return Err(Error::Config(format!(
                    "{name} must be a positive number of milliseconds"
                )));
            }
        }
        let simulator = args
            .sim
            .over(SimulatorSettings::default(), target == Target::Simulator)?;
        for path in [&args.json, &args.records, &args.plot]
            .into_iter()
            .flatten()
        {
            if path.as_os_str() == "-" {
                continue;
            }
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                if !parent.is_dir() {
                    return Err(Error::output(
                        path,
                        format!("folder {} does not exist", parent.display()),
                    ));
                }
            }
        }
        if let Some(plot) = &args.plot {
            if plot.as_os_str() != "-" && plot::Format::of(plot).is_none() {
                return Err(Error::Config(format!(
                    "--plot {}: the picture is SVG or PNG; name the file .svg or .png",
                    plot.display()
                )));
            }
        }
        if args.records.as_ref().is_some_and(|p| p.as_os_str() == "-")
            || args.plot.as_ref().is_some_and(|p| p.as_os_str() == "-")
        {
            return Err(Error::Config(
                "--records and --plot need a file path, not `-`".into(),
            ));
        }
        let mut params: Map<String, Value> = args.params.iter().cloned().collect();
        for reserved in ["messages", "prompt", "stream"] {
            if params.contains_key(reserved) {
                return Err(Error::Config(format!(
                    "--param {reserved} is set by aiq itself"
                )));
            }
        }
        let mut args = args;
        if args.task == Task::Embeddings {
            // An embedding is one reply with no tokens to stream, and
            // max_tokens means nothing to it.
            args.no_stream = true;
        } else {
            params
                .entry("max_tokens")
                .or_insert(Value::from(args.output_tokens));
        }
        Ok(BenchPlan {
            target,
            loads,
            stop,
            slo: Slo {
                ttft_ms: args.slo_ttft_ms,
                e2e_ms: args.slo_e2e_ms,
            },
            params,
            simulator,
            args,
        })
    }
}

/// Everything a bench produced.
#[derive(Debug, Clone)]
pub struct BenchResult {
    pub endpoint: String,
    pub steps: Vec<StepStats>,
    pub records: Vec<Record>,
}

/// Run the sweep and write every output asked for.
pub async fn bench(plan: BenchPlan, quiet: bool) -> Result<BenchResult> {
    let args = &plan.args;
    let workers = plan
        .loads
        .iter()
        .map(|l| workers_of(*l, args.max_in_flight))
        .max()
        .unwrap_or(1);
    // No limiter: a benchmark offers the load it was told to, and counts 429s.
    let connection = connect::open(Reach {
        endpoint: EndpointSpec {
            target: &plan.target,
            model: args.model.as_deref(),
            task: args.task,
            profile: args.profile.as_deref(),
            api_key_env: args.api_key_env.as_deref(),
            simulator: &plan.simulator,
            handed: None,
        },
        concurrency: workers,
        ca_cert: None,
        limits: Limits::default(),
        agent: &format!("{AGENT} bench"),
    })
    .await?;
    let endpoint = connection.endpoint.clone();
    let bodies = Arc::new(prompt_bodies(&plan, &endpoint)?);
    let policy = RetryPolicy {
        max_retries: 0,
        timeout: Duration::from_secs_f64(args.timeout),
        ..RetryPolicy::default()
    };
    let client = Arc::new(connection.pool.client(
        endpoint.clone(),
        policy,
        Shape {
            dialect: endpoint.dialect,
            ..Shape::string(args.task)
        },
        !args.no_stream,
    )?);

    if let (Some(first), true) = (plan.loads.first(), args.warmup > 0) {
        let warmup = StepEnd::Requests(args.warmup);
        let bar = step_bar(warmup, "warm-up".into(), quiet);
        let (records, _) = run_step(&plan, &client, &bodies, warmup, u32::MAX, *first, &bar).await;
        bar.finish_and_clear();
        if !quiet {
            let errors = records.iter().filter(|r| !r.ok()).count();
            eprintln!(
                "{:>10}: {} requests at {}, {errors} errors (not measured)",
                "warm-up",
                records.len(),
                first.label()
            );
        }
    }
    let mut steps = Vec::with_capacity(plan.loads.len());
    let mut records = Vec::new();
    for (i, load) in plan.loads.iter().enumerate() {
        let bar = step_bar(plan.stop, load.label(), quiet);
        let (step_records, elapsed) =
            run_step(&plan, &client, &bodies, plan.stop, i as u32, *load, &bar).await;
        bar.finish_and_clear();
        let stats = stats::summarize(*load, &step_records, elapsed.as_secs_f64(), &plan.slo);
        if !quiet {
            eprintln!("{}", report::step_line(&stats));
        }
        steps.push(stats);
        records.extend(step_records);
    }
    let result = BenchResult {
        endpoint: endpoint.label.clone(),
        steps,
        records,
    };
    report::write_outputs(&plan, &result, quiet)?;
    Ok(result)
}

/// Workers of a step: its concurrency, or the in-flight cap of a rate step.
fn workers_of(load: Load, max_in_flight: usize) -> usize {
    match load {
        Load::Concurrency(c) => c,
        Load::Rate(_) => max_in_flight,
    }
}

/// One ticket: a request to send. `due` is its scheduled arrival (rate
/// steps only), to measure how long it waited for a worker.
#[derive(Debug, Clone, Copy)]
struct Ticket {
    id: u64,
    due: Option<Instant>,
}

/// Run one step: a pacer, `workers` workers and the collector (this
/// function). Returns the records and the step's wall time, first ticket to
/// last reply.
async fn run_step(
    plan: &BenchPlan,
    client: &Arc<Client>,
    bodies: &Arc<Vec<Bytes>>,
    stop: StepEnd,
    step: u32,
    load: Load,
    bar: &ProgressBar,
) -> (Vec<Record>, Duration) {
    let started = Instant::now();
    // Capacity 1: a ticket exists only when a worker is about to take it, so
    // a duration step stops offering load on time.
    let (ticket_tx, ticket_rx) = mpsc::channel::<Ticket>(1);
    let ticket_rx = Arc::new(Mutex::new(ticket_rx));
    let (record_tx, mut record_rx) = mpsc::channel::<Record>(1024);

    let pacer = tokio::spawn(pace(
        ticket_tx,
        load,
        stop,
        plan.args.seed ^ u64::from(step),
        started,
    ));
    let workers: Vec<_> = (0..workers_of(load, plan.args.max_in_flight))
        .map(|_| {
            tokio::spawn(worker(
                ticket_rx.clone(),
                record_tx.clone(),
                client.clone(),
                bodies.clone(),
                step,
                started,
            ))
        })
        .collect();
    drop(record_tx);

    let mut records = Vec::new();
    while let Some(r) = record_rx.recv().await {
        if !r.ok() {
            bar.set_message(format!(
                "{} errors",
                records.iter().filter(|r: &&Record| !r.ok()).count() + 1
            ));
        }
        records.push(r);
        bar.inc(1);
    }
    let elapsed = started.elapsed();
    let _ = pacer.await;
    for w in workers {
        let _ = w.await;
    }
    records.sort_by_key(|r| r.request);
    (records, elapsed)
}

/// Hand out tickets until the step ends: back to back for a concurrency
/// step (the bounded channel makes it wait for a free worker), at Poisson
/// arrival times for a rate step.
async fn pace(
    tickets: mpsc::Sender<Ticket>,
    load: Load,
    stop: StepEnd,
    seed: u64,
    started: Instant,
) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let deadline = match stop {
        StepEnd::Duration(d) => Some(started + d),
        StepEnd::Requests(_) => None,
    };
    // Arrivals are scheduled from the step's start, not from the previous
    // send, so a late send does not shift every later arrival.
    let mut due = started;
    for id in 0.. {
        if let StepEnd::Requests(n) = stop {
            if id >= n {
                break;
            }
        }
        let ticket = match load {
            Load::Concurrency(_) => Ticket { id, due: None },
            Load::Rate(rate) => {
                due += Duration::from_secs_f64(stats::poisson_gap(rate, &mut rng));
                if deadline.is_some_and(|d| due >= d) {
                    break;
                }
                tokio::time::sleep_until(due).await;
                Ticket { id, due: Some(due) }
            }
        };
        if deadline.is_some_and(|d| Instant::now() >= d) || tickets.send(ticket).await.is_err() {
            break;
        }
    }
}

/// The one worker loop: take a ticket, send one request, hand over its record.
async fn worker(
    tickets: Arc<Mutex<mpsc::Receiver<Ticket>>>,
    records: mpsc::Sender<Record>,
    client: Arc<Client>,
    bodies: Arc<Vec<Bytes>>,
    step: u32,
    started: Instant,
) {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    loop {
        let ticket = tickets.lock().await.recv().await;
        let Some(ticket) = ticket else { break };
        let sent = Instant::now();
        let body = bodies[(ticket.id as usize) % bodies.len()].clone();
        let probe = client.probe(body).await;
        let record = Record {
            step,
            request: ticket.id,
            start_ms: ms(sent - started),
            queued_ms: ticket
                .due
                .map_or(0.0, |due| ms(sent.saturating_duration_since(due))),
            ttft_ms: probe.timing.first.map(ms),
            e2e_ms: ms(probe.elapsed),
            itl_ms: probe.timing.inter_chunk().map(ms),
            prompt_tokens: probe.usage.prompt_tokens.max(0) as u64,
            output_tokens: probe.usage.completion_tokens.max(0) as u64,
            status: probe.status,
            error: probe.error,
        };
        if records.send(record).await.is_err() {
            break;
        }
    }
}

/// The request bodies to cycle through: the input's rows rendered with the
/// templates (at most [`MAX_PROMPTS`]), or synthetic prompts. Both go
/// through the same renderer and body builder as `aiq run`.
fn prompt_bodies(plan: &BenchPlan, endpoint: &Endpoint) -> Result<Vec<Bytes>> {
    let args = &plan.args;
    let (batches, prompt): (Box<dyn Iterator<Item = Result<RecordBatch>>>, String) =
        match (&args.input, &args.prompt) {
            (Some(input), Some(prompt)) => {
                (Source::open(input, 1024)?.into_batches(), prompt.clone())
            }
            _ => (
                Box::new(std::iter::once(Ok(synthetic_prompts(args.input_tokens)))),
                "{{prompt}}".to_string(),
            ),
        };
    let mut batches = batches.peekable();
    let schema = match batches.peek() {
        Some(Ok(b)) => b.schema(),
        Some(Err(_)) => {
            return Err(batches
                .next()
                .and_then(|b| b.err())
                .unwrap_or_else(|| Error::Config("unreadable input".into())))
        }
        None => {
            return Err(Error::Config(
                "the --input file has no rows to make prompts from".into(),
            ))
        }
    };
    let templates = Templates::bind(args.system.as_deref(), &prompt, None, &schema)?;
    let quirks = Quirks::of(endpoint.dialect, &endpoint.name);
    let builder = BodyBuilder::new(
        BodySpec {
            dialect: endpoint.dialect,
            task: args.task,
            model: if quirks.model_in_body {
                args.model.clone()
            } else {
                None
            },
            params: plan.params.clone(),
            response_format: None,
            cache_control: false,
            prompt_cache_key: false,
            stream: !args.no_stream,
            stream_usage_option: quirks.stream_usage_option,
        },
        &templates,
    );
    let mut bodies = Vec::new();
    let mut first = 0;
    'batches: for batch in batches {
        let batch = batch?;
        for row in templates
            .render_batch(&batch, first)
            .into_iter()
            .flatten()
            .flatten()
        {
            bodies.push(builder.single(&row).body);
            if bodies.len() >= MAX_PROMPTS {
                break 'batches;
            }
        }
        first += batch.num_rows() as u64;
    }
    if bodies.is_empty() {
        return Err(Error::Config(
            "no prompt could be rendered from the --input rows (all null or failing the template)"
                .into(),
        ));
    }
    Ok(bodies)
}

/// Distinct synthetic prompts of about `tokens` tokens each: a number first
/// (so no two share a cacheable prefix), then filler words. The words are
/// common three-letter English ones: with its space each is one token to
/// the usual tokenizers and four bytes, so the prompt is as long in tokens
/// as asked (Latin filler splits into two or three tokens a word).
fn synthetic_prompts(tokens: u64) -> RecordBatch {
    const WORDS: &[&str] = &[
        "the", "and", "for", "day", "way", "new", "one", "man", "old", "see", "two", "how",
    ];
    let bytes = (tokens as usize).max(1) * BYTES_PER_TOKEN;
    let prompts: Vec<String> = (0..256)
        .map(|i| {
            let mut text = format!("{i} ");
            let mut w = i;
            while text.len() < bytes {
                text.push_str(WORDS[w % WORDS.len()]);
                text.push(' ');
                w += 1;
            }
            text.truncate(bytes);
            text
        })
        .collect();
    let schema = Arc::new(Schema::new(vec![Field::new(
        "prompt",
        DataType::Utf8,
        false,
    )]));
    // One Utf8 column of the declared type: building the batch cannot fail.
    RecordBatch::try_new(schema.clone(), vec![Arc::new(StringArray::from(prompts))])
        .unwrap_or_else(|_| RecordBatch::new_empty(schema))
}

fn step_bar(stop: StepEnd, label: String, quiet: bool) -> ProgressBar {
    let bar = match stop {
        StepEnd::Requests(n) => ProgressBar::new(n),
        StepEnd::Duration(_) => ProgressBar::no_length(),
    };
    bar.set_draw_target(if quiet {
        ProgressDrawTarget::hidden()
    } else {
        ProgressDrawTarget::stderr_with_hz(8)
    });
    let template = match stop {
        StepEnd::Requests(_) => {
            "{spinner} {prefix:>10} {bar:30.cyan/blue} {pos}/{len} requests · {per_sec} · {msg}"
        }
        StepEnd::Duration(_) => {
            "{spinner} {prefix:>10} {pos} requests · {elapsed} · {per_sec} · {msg}"
        }
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("█▉▊▋▌▍▎▏ "));
    }
    bar.set_prefix(label);
    bar.enable_steady_tick(Duration::from_millis(250));
    bar
}
