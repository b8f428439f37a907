//! The command line: flags → a checked plan → a run → an exit code.
//!
//! `main` only parses and hands over; everything here is callable from
//! tests. Logs (tracing) go to stderr at `warn` by default, `-v` for info,
//! `-vv` for debug, or `RUST_LOG`; the HTTP stack's own logs stay at `warn`
//! unless asked for by name, and no log line carries a credential: tokens
//! travel only in headers marked sensitive.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::error::Error;
use crate::frontend::stdout;
use crate::job::plan::Plan;
use crate::job::settings::JobSettings;
use crate::pipeline::run::{run, Ui};
use crate::simulator::{serve_forever, SimConfig};

#[derive(Debug, Parser)]
#[command(
    name = "aiq",
    version,
    about = "Batch scoring of datasets with LLMs: resumable, rate-limited, prompt-cache friendly.",
    long_about = "Batch scoring of datasets with LLMs: resumable, rate-limited, prompt-cache friendly.\n\n\
        Reads Parquet or JSONL, renders each row into a request, calls a Databricks serving endpoint \
        or any OpenAI-compatible server under concurrency and rate limits, and writes Parquet with \
        a typed result, errors and usage per row. A killed job resumes where it stopped.\n\n\
        Exit codes: 0 done, 1 job failed, 2 bad usage, configuration or input."
)]
pub struct Cli {
    /// No progress bar and no summary.
    #[arg(short, long, global = true)]
    pub quiet: bool,

    /// More logs on stderr (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once per process: size is irrelevant
pub enum Command {
    /// Score a dataset: one request per row, one output row per input row.
    Run(RunArgs),
    /// Serve the built-in OpenAI- and Databricks-compatible simulator.
    Simulate(SimConfig),
    /// Measure an endpoint: latency, throughput and errors across a
    /// concurrency or request-rate sweep.
    Bench(Box<crate::frontend::bench::BenchArgs>),
    /// Run a SQL query with ai_query(...) and the AI functions over local files.
    #[cfg(feature = "sql")]
    Sql(crate::frontend::sql::SqlArgs),
    /// Run a SQL query with ai_query(...) (not in this build: see below).
    #[cfg(not(feature = "sql"))]
    #[command(
        disable_help_flag = true,
        long_about = "Not in this build: `aiq sql` needs the `sql` feature. Build it with \
                      `cargo install --path . --features sql`, or `pip install .` (the wheel has it)."
    )]
    Sql {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
        rest: Vec<String>,
    },
}

/// Why `aiq sql` is missing from a build without the `sql` feature, and how
/// to get it: DataFusion triples the first build, so it is opt-in.
#[cfg(not(feature = "sql"))]
const NO_SQL: &str = "this aiq was built without `aiq sql`: build it with \
     `cargo install --path . --features sql` (or `cargo run --features sql -- sql ...`), \
     or install the Python package (`pip install .`), which includes it";

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// A TOML job file (see jobs/); flags override its settings.
    #[arg(value_name = "JOB.toml")]
    pub job: Option<PathBuf>,

    /// Discard the journal of an earlier run of this job and start over.
    #[arg(long)]
    pub restart: bool,

    /// Print the summary as JSON on stdout when the job ends.
    #[arg(long)]
    pub json: bool,

    /// Show the first rendered requests, the static prefix and whether it
    /// can be cached, then exit without sending anything.
    #[arg(long)]
    pub explain: bool,

    /// Check the job and render every request without sending any (no
    /// endpoint contact, no credentials): print rows, estimated tokens,
    /// cacheable prefix share, cost (with --price-in/--price-out) and time
    /// at the configured limits.
    #[arg(long)]
    pub dry_run: bool,

    #[command(flatten)]
    pub settings: JobSettings,
}

/// Run the parsed command line and return the process exit code.
pub fn main_with(cli: Cli) -> ExitCode {
    ExitCode::from(exit_code(cli))
}

/// [`main_with`], with the exit code as a number (for the Python package's
/// `aiq` command, which hands it to `sys.exit`).
pub fn exit_code(cli: Cli) -> u8 {
    log_to_stderr(cli.verbose, cli.quiet);
    // `aiq run` spends its time waiting on the network: one thread drives
    // every call with no cross-thread wake-ups, which cut its CPU per row by
    // a quarter (benches/e2e.sh: 55 → 40 µs) while still sending over 10,000
    // rows/s (the input reader has a thread of its own).
    // The simulator and `aiq bench` serve or measure many streams at once
    // and keep a worker per core.
    let mut builder = match cli.command {
        Command::Run(_) => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("aiq: cannot start the async runtime: {e}");
            return 1;
        }
    };
    let quiet = cli.quiet;
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Run(args) => run_command(args, quiet).await,
            Command::Bench(args) => bench_command(*args, quiet).await,
            Command::Simulate(cfg) => serve_forever(cfg)
                .await
                .map_err(|e| Error::Config(format!("simulator: {e}"))),
            #[cfg(feature = "sql")]
            Command::Sql(args) => crate::frontend::sql::command(args, quiet).await,
            #[cfg(not(feature = "sql"))]
            Command::Sql { .. } => Err(Error::Config(NO_SQL.into())),
        }
    });
    // The job is over, its output and journal written. A blocking thread
    // may still be busy (rendering a row, reading input the job no longer
    // needs): the process exits now instead of waiting for it.
    runtime.shutdown_background();
    match result {
        Ok(()) | Err(Error::StdoutClosed) => 0,
        Err(e) => {
            eprintln!("aiq: {e}");
            e.exit_code()
        }
    }
}

async fn run_command(args: RunArgs, quiet: bool) -> Result<(), Error> {
    let settings = match &args.job {
        Some(path) => args.settings.overlay(JobSettings::from_file(path)?),
        None => args.settings,
    };
    let plan = Plan::from_settings(settings, args.restart)?;
    if args.explain {
        return stdout::print(crate::frontend::explain::explain(&plan)?);
    }
    if args.dry_run {
        let estimate =
            tokio::task::spawn_blocking(move || crate::frontend::dry_run::dry_run(&plan))
                .await
                .map_err(|e| Error::Stopped(format!("dry run failed: {e}")))??;
        return if args.json {
            stdout::println(serde_json::to_string_pretty(&estimate).unwrap_or_default())
        } else {
            stdout::println(estimate)
        };
    }
    let summary = run(plan, Ui { quiet }).await?;
    if args.json {
        stdout::println(serde_json::to_string_pretty(&summary).unwrap_or_default())?;
    } else if !quiet {
        eprintln!("{summary}");
    }
    Ok(())
}

async fn bench_command(args: crate::frontend::bench::BenchArgs, quiet: bool) -> Result<(), Error> {
    let plan = crate::frontend::bench::BenchPlan::from_args(args)?;
    crate::frontend::bench::bench(plan, quiet).await.map(|_| ())
}

/// Logs on stderr at `warn` (more with `verbose`, or by `RUST_LOG`); a
/// second call keeps the first's setting.
pub fn init_logging(verbose: u8) {
    log_to_stderr(verbose, false);
}

/// [`init_logging`]; `quiet` keeps only errors.
fn log_to_stderr(verbose: u8, quiet: bool) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let level = match (verbose, quiet) {
        (0, true) => "error",
        (0, false) => "warn",
        (1, _) => "info",
        _ => "debug",
    };
    // The HTTP stack logs connection details at debug and trace; keep it at
    // warn unless RUST_LOG names it explicitly. rustls logs its own ERROR
    // lines for a certificate that does not verify: aiq reports that
    // failure itself (with what to do), so rustls stays silent. delta-rs's
    // kernel logs every failed snapshot load as an ERROR, among them the
    // "No files in log segment" of a table not written yet (every first
    // write); the failures that matter come back to aiq, which reports them.
    let default = format!(
        "{level},hyper=warn,hyper_util=warn,reqwest=warn,h2=warn,rustls=off,\
         buoyant_kernel::snapshot::builder=off"
    );
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}
