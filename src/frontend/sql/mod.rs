//! `aiq sql`: Databricks-style SQL with `ai_query(...)` and the AI functions,
//! over local Parquet, JSONL and CSV files, on Apache DataFusion.
//!
//! The query is parsed, [`rewrite`]n (named AI-function arguments, file
//! tables), planned and run by DataFusion; every AI call goes through
//! [`calls::Engine`], which is aiq's own request pipeline (the same limiter,
//! retries, body layout and reply typing as `aiq run`), shared by the whole
//! query. With `--output`, the result is written atomically to Parquet and
//! finished calls are journaled beside it so a killed query, run again, does
//! not pay for them twice; without it, the first rows are printed as a table.
//!
//! Queries read and never write: `SELECT`, `WITH`, `VALUES`, `EXPLAIN` and
//! `DESCRIBE` run; DDL, DML and `COPY` are refused before anything runs
//! ([`read_only`]). A query may read any local file the user can
//! (`FROM 'reviews.parquet'`, `read_json('…')`, `--table`), as any tool run
//! by that user may; the only file written is `--output`, which must not
//! be one of them.

pub mod agg;
pub mod calls;
pub mod catalog;
pub mod planning;
pub mod rewrite;
pub mod udf;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use arrow::record_batch::RecordBatch;
use datafusion::common::DataFusionError;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::prelude::{CsvReadOptions, JsonReadOptions, ParquetReadOptions, SessionContext};
use datafusion::sql::parser::Statement as DfStatement;
use futures::StreamExt;
use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::job::location::{Location, Role};
use crate::job::settings::{with_call_settings, OutputFormat};
use crate::pipeline::parquet_out::{compatible_schema, make_compatible, ParquetFile};
use crate::pipeline::store::Remote;
use calls::{Engine, EngineSettings};
use rewrite::{FileKind, FileTable};

with_call_settings! {
    /// `aiq sql`'s settings: the command's flags, and (as JSON, the same names
    /// in snake case) `aiq.sql`'s keyword arguments: one declaration, one way
    /// in for both shells. What `aiq.sql` takes as its own parameters (the
    /// query, tables, output, restart) or has no use for (`show`: it returns
    /// every row) is not a setting there. The settings of every model call
    /// are `aiq run`'s too ([`with_call_settings`]).
    #[derive(Debug, clap::Args, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct SqlArgs {
        /// The query, or the path of a .sql file holding it: a read query
        /// (SELECT, WITH, VALUES, EXPLAIN, DESCRIBE), which may read local files
        /// (`FROM 'reviews.parquet'`, read_json('...'), --table). COPY, CREATE,
        /// INSERT and other writes are refused: --output writes the result.
        #[arg(value_name = "QUERY|FILE.sql")]
        #[serde(skip)]
        pub query: String,

        /// Write the result to this Parquet file (atomically, when the query
        /// completes). Without it, the first rows are printed as a table.
        #[arg(long, value_name = "PATH")]
        #[serde(skip)]
        pub output: Option<PathBuf>,

        /// How --output is written: `parquet` (a file), or `delta` (appended
        /// to a Delta Lake table, local or s3://..., as one version)
        /// [default: parquet].
        #[arg(long, value_enum, value_name = "FORMAT")]
        #[serde(default)]
        pub output_format: Option<OutputFormat>,

        /// Register a file as a table: NAME=PATH, by extension (.parquet,
        /// .jsonl/.ndjson/.json with one object a line, .csv). Repeatable.
        #[arg(long = "table", value_name = "NAME=PATH", value_parser = parse_table)]
        #[serde(skip)]
        pub tables: Vec<(String, PathBuf)>,
    }
    {
        /// Rows to print without --output.
        #[arg(long, value_name = "ROWS", default_value_t = 20)]
        #[serde(skip)]
        pub show: usize,

        /// Discard the journal of an earlier run of this query and start over.
        #[arg(long)]
        #[serde(skip)]
        pub restart: bool,

        /// The model's context window in tokens: ai_agg and ai_summarize_agg
        /// split a group's values so that no request is larger [default: 8192].
        #[arg(long, value_name = "TOKENS")]
        pub context_tokens: Option<u64>,

        /// Read the tables and run the query without calling any model (no
        /// endpoint contact, no credentials): print how many AI calls each AI
        /// function may make at most.
        #[arg(long)]
        #[serde(default)]
        pub dry_run: bool,
    }
}

fn parse_table(s: &str) -> std::result::Result<(String, PathBuf), String> {
    let (name, path) = s
        .split_once('=')
        .ok_or_else(|| format!("expected NAME=PATH, got `{s}`"))?;
    if name.trim().is_empty() {
        return Err(format!("empty table name in `{s}`"));
    }
    Ok((name.trim().to_string(), PathBuf::from(path.trim())))
}

/// What the query did, printed on stderr when it ends.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct SqlSummary {
    pub rows: u64,
    pub calls: u64,
    pub resumed: u64,
    pub errors: u64,
    pub requests: u64,
    pub retries: u64,
    pub rate_limited: u64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub cached_tokens: i64,
    /// What this run's calls cost, with --price-in and --price-out.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost_usd: Option<f64>,
    pub elapsed_secs: f64,
    /// `--dry-run`'s report, when it is returned rather than printed (the
    /// Python package's `aiq.sql(..., dry_run=True)`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dry_run: Option<String>,
}

impl std::fmt::Display for SqlSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "{} rows in {:.1}s", self.rows, self.elapsed_secs)?;
        writeln!(
            f,
            "AI calls: {} sent ({} errors), {} answered from the journal; {} HTTP requests, {} retries, {} rate-limited",
            self.calls, self.errors, self.resumed, self.requests, self.retries, self.rate_limited
        )?;
        write!(
            f,
            "tokens: {} prompt ({} cached), {} completion",
            self.prompt_tokens, self.cached_tokens, self.completion_tokens
        )?;
        if let Some(cost) = self.cost_usd {
            write!(f, "\ncost: ${cost:.4}")?;
        }
        Ok(())
    }
}

/// `aiq sql`: run the query, print or write its result, print the summary.
pub async fn command(args: SqlArgs, quiet: bool) -> Result<()> {
    query(args, Vec::new(), false, quiet).await.map(|_| ())
}

/// A table handed in as data rather than a file (the Python package's
/// `tables=`): its name, schema and batches, held in memory for the query.
pub type DataTable = (String, arrow::datatypes::SchemaRef, Vec<RecordBatch>);

/// `aiq sql` with `data` registered beside `args.tables`. With
/// `args.output` the result is written as by the command; without it, it is
/// returned when `collect` is set and printed otherwise (and so is
/// `--dry-run`'s report, in [`SqlSummary::dry_run`]).
pub async fn query(
    args: SqlArgs,
    data: Vec<DataTable>,
    collect: bool,
    quiet: bool,
) -> Result<(Vec<RecordBatch>, SqlSummary)> {
    let started = Instant::now();
    let query = read_query(&args.query)?;
    let engine = Arc::new(engine(&args, quiet)?);
    let rule = Arc::new(planning::AiCallsLast::default());
    let joins = rule.joins.clone();
    let ctx = session(rule);
    register_all(&ctx, &engine, &args, data).await?;
    let frame = plan_query(&ctx, &query, &args).await?;
    if let Some(dry) = &engine.dry {
        let report = dry_run(&ctx, frame, dry, &joins, engine.settings.context_tokens).await?;
        // Nothing was sent: the summary counts no calls.
        let mut summary = summarize(&engine, 0, started);
        if collect {
            summary.dry_run = Some(report);
        } else {
            crate::frontend::stdout::print(report)?;
        }
        return Ok((Vec::new(), summary));
    }
    let delta = args.output_format == Some(OutputFormat::Delta);
    let result = match args.output.as_deref() {
        Some(out) if delta => write_delta(out, &ctx, frame)
            .await
            .map(|rows| (rows, Vec::new())),
        output => {
            let stream = frame.execute_stream().await.map_err(planning)?;
            match output {
                Some(out) => write(stream, out).await.map(|rows| (rows, Vec::new())),
                None if collect => collect_all(stream).await,
                None => show(stream, args.show).await.map(|rows| (rows, Vec::new())),
            }
        }
    };
    let (rows, collected) = match result {
        Ok(r) => r,
        // A budget stop says what was spent, as `aiq run`'s does.
        Err(e @ Error::Stopped(_)) => {
            if !quiet {
                eprintln!("{}", summarize(&engine, 0, started));
            }
            return Err(e);
        }
        Err(e) => return Err(e),
    };
    let summary = summarize(&engine, rows, started);
    // The output is in place: the journal has served its purpose.
    if let Some(j) = &engine.journal {
        j.remove()?;
    }
    if !quiet {
        eprintln!("{summary}");
    }
    Ok((collected, summary))
}

/// The query's engine: its settings checked, and with `--output` (unless a
/// dry run) the journal of an earlier run of it opened.
fn engine(args: &SqlArgs, quiet: bool) -> Result<Engine> {
    let call = args.call_settings();
    crate::job::ranges::check(&call)?;
    if let Some(out) = &args.output {
        check_output(out, args.output_format.unwrap_or_default())?;
    }
    if args.context_tokens == Some(0) {
        return Err(Error::Config("--context-tokens must be at least 1".into()));
    }
    let journal = args
        .output
        .as_deref()
        .filter(|_| !args.dry_run)
        .map(|o| calls::open_journal(o, args.restart))
        .transpose()?;
    if let Some(j) = journal.as_ref().filter(|j| !j.is_empty()) {
        if !quiet {
            eprintln!(
                "resuming: {} answers in the journal of {}",
                j.len(),
                j.dir().display()
            );
        }
    }
    Engine::new(
        EngineSettings {
            call,
            context_tokens: args
                .context_tokens
                .unwrap_or(crate::ai::aggregate::DEFAULT_CONTEXT_TOKENS),
            dry_run: args.dry_run,
        },
        journal,
    )
}

/// The AI functions, the `--table` files and the tables handed in as data.
async fn register_all(
    ctx: &SessionContext,
    engine: &Arc<Engine>,
    args: &SqlArgs,
    data: Vec<DataTable>,
) -> Result<()> {
    for f in udf::all(engine, args.endpoint.as_deref())
        .into_iter()
        .chain(agg::all(engine, args.endpoint.as_deref()))
    {
        ctx.register_udf(f);
    }
    for (name, path) in &args.tables {
        // Anything else is taken for a Delta table (a folder, a prefix).
        let delta = cfg!(feature = "delta").then_some(FileKind::Delta);
        let kind = FileKind::of(&path.to_string_lossy())
            .or(delta)
            .ok_or_else(|| {
                Error::input(
                    path,
                    "unknown file type: use .parquet, .jsonl, .ndjson, .json or .csv",
                )
            })?;
        register(
            ctx,
            &FileTable {
                name: name.clone(),
                path: path.clone(),
                kind,
            },
        )
        .await?;
    }
    for (name, schema, batches) in data {
        let table = datafusion::datasource::MemTable::try_new(schema, vec![batches])
            .map_err(|e| Error::Config(format!("table {name}: {e}")))?;
        ctx.register_table(name.as_str(), Arc::new(table))
            .map_err(|e| Error::Config(format!("table {name}: {e}")))?;
    }
    Ok(())
}

/// The query parsed, its file tables registered, planned and checked to
/// be read-only; `--output` must not be one of the files it reads.
async fn plan_query(
    ctx: &SessionContext,
    query: &str,
    args: &SqlArgs,
) -> Result<datafusion::dataframe::DataFrame> {
    let state = ctx.state();
    let dialect = state.config().options().sql_parser.dialect;
    let mut statement = state.sql_to_statement(query, &dialect).map_err(planning)?;
    let files = match &mut statement {
        DfStatement::Statement(s) => rewrite::rewrite(s.as_mut()).map_err(Error::Config)?,
        _ => Vec::new(),
    };
    for file in &files {
        register(ctx, file).await?;
    }
    if let Some(out) = &args.output {
        let inputs = args
            .tables
            .iter()
            .map(|(_, p)| p)
            .chain(files.iter().map(|f| &f.path));
        not_an_input(out, inputs)?;
    }
    let plan = state.statement_to_plan(statement).await.map_err(planning)?;
    read_only(&plan)?;
    ctx.execute_logical_plan(plan).await.map_err(planning)
}

/// `--dry-run`: runs the query whole with the AI functions counting instead
/// of calling (not `count()`, which would let the optimizer drop AI calls
/// whose values no one reads), counts both sides of every join that asks a
/// model about each pair, and says what it found.
async fn dry_run(
    ctx: &SessionContext,
    frame: datafusion::dataframe::DataFrame,
    dry: &calls::DryRun,
    joins: &std::sync::Mutex<Vec<planning::JoinNote>>,
    context_tokens: u64,
) -> Result<String> {
    let mut stream = frame.execute_stream().await.map_err(planning)?;
    let mut rows = 0usize;
    while let Some(batch) = stream.next().await {
        rows += batch.map_err(running)?.num_rows();
    }
    let counted = dry.snapshot();
    let notes = joins.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let mut pairs = Vec::new();
    for note in notes.iter().filter(|n| n.cross) {
        let count = |plan: &Arc<datafusion::logical_expr::LogicalPlan>| {
            datafusion::dataframe::DataFrame::new(ctx.state(), plan.as_ref().clone()).count()
        };
        let left = count(&note.left).await.map_err(running)?;
        let right = count(&note.right).await.map_err(running)?;
        pairs.push((note.labels.clone(), left as u64, right as u64));
    }
    Ok(dry_report(&counted, &pairs, rows as u64, context_tokens))
}

/// `--output`: the result written to Parquet; its row count.
async fn write(mut stream: SendableRecordBatchStream, out: &Path) -> Result<u64> {
    let mut rows = 0u64;
    let schema = compatible_schema(&stream.schema());
    let mut file = ParquetFile::create(out, schema.clone())?;
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(running)?;
        rows += batch.num_rows() as u64;
        let batch = make_compatible(&batch, &schema).map_err(|e| Error::output(out, e))?;
        file.write(&batch)?;
    }
    file.finish()?;
    Ok(rows)
}

/// `--output-format delta`: the query's rows appended to the Delta table
/// `out` as one version (delta-rs runs the query's plan); the row count.
#[cfg(feature = "delta")]
async fn write_delta(
    out: &Path,
    ctx: &SessionContext,
    frame: datafusion::dataframe::DataFrame,
) -> Result<u64> {
    let out = Location::parse(out, Role::Output)?;
    crate::pipeline::delta::write_query(&out, ctx.state(), frame.logical_plan().clone()).await
}

#[cfg(not(feature = "delta"))]
async fn write_delta(
    out: &Path,
    _: &SessionContext,
    _: datafusion::dataframe::DataFrame,
) -> Result<u64> {
    Err(Error::output(
        out,
        "this aiq was built without Delta Lake (the `delta` feature)",
    ))
}

/// The whole result, returned (the Python package).
async fn collect_all(mut stream: SendableRecordBatchStream) -> Result<(u64, Vec<RecordBatch>)> {
    let mut rows = 0u64;
    let mut collected = Vec::new();
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(running)?;
        rows += batch.num_rows() as u64;
        collected.push(batch);
    }
    Ok((rows, collected))
}

/// The first `show` rows printed as a table (the rest counted); the row count.
async fn show(mut stream: SendableRecordBatchStream, show: usize) -> Result<u64> {
    let mut rows = 0u64;
    let mut shown: Vec<RecordBatch> = Vec::new();
    let mut kept = 0usize;
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(running)?;
        rows += batch.num_rows() as u64;
        if kept < show {
            let take = batch.num_rows().min(show - kept);
            kept += take;
            shown.push(batch.slice(0, take));
        }
    }
    let table = arrow::util::pretty::pretty_format_batches(&shown)
        .map_err(|e| Error::Aborted(format!("cannot print the result: {e}")))?;
    crate::frontend::stdout::println(table)?;
    if rows as usize > kept {
        crate::frontend::stdout::println(format_args!(
            "({kept} of {rows} rows shown; --show N for more, --output PATH for all)"
        ))?;
    }
    Ok(rows)
}

/// A session that reads Databricks SQL: the Databricks dialect
/// (double-quoted text is a string, backticks quote names), struct fields
/// found whatever their case, and AI calls planned last.
fn session(rule: Arc<planning::AiCallsLast>) -> SessionContext {
    use datafusion::execution::session_state::SessionStateBuilder;
    use datafusion::execution::SessionStateDefaults;
    let mut config = datafusion::prelude::SessionConfig::new();
    config.options_mut().sql_parser.dialect = datafusion::config::Dialect::Databricks;
    let mut planners: Vec<Arc<dyn datafusion::logical_expr::planner::ExprPlanner>> =
        vec![Arc::new(planning::SparkFieldAccess)];
    planners.extend(SessionStateDefaults::default_expr_planners());
    let state = SessionStateBuilder::new()
        .with_config(config)
        .with_default_features()
        .with_expr_planners(planners)
        .with_optimizer_rule(rule)
        .build();
    SessionContext::new_with_state(state).enable_url_table()
}

/// What `--dry-run` prints: each AI call site with the most calls it may
/// make, joins that ask a model about every pair, and the total.
fn dry_report(
    counted: &[(String, calls::DryCount)],
    pairs: &[(Vec<String>, u64, u64)],
    rows: u64,
    context_tokens: u64,
) -> String {
    let mut out = String::from("dry run: nothing sent; every ai_filter counted as TRUE\n");
    let mut total = 0u64;
    for (label, c) in counted {
        total += c.calls;
        let why = if c.groups > 0 {
            format!(
                "{} groups, {} values; chunked to --context-tokens {context_tokens}",
                c.groups, c.rows
            )
        } else {
            match pairs.iter().find(|(labels, _, _)| labels.contains(label)) {
                Some((_, l, r)) => format!(
                    "in JOIN … ON: a cross product, |left| × |right| = {l} × {r} = {} pairs",
                    l * r
                ),
                None => format!("{} rows reach it", c.rows),
            }
        };
        out.push_str(&format!("{label}: at most {} calls ({why})\n", c.calls));
    }
    if counted.is_empty() {
        out.push_str("no AI function is called\n");
    }
    out.push_str(&format!(
        "total: at most {total} AI calls; the query returns at most {rows} rows\n"
    ));
    out
}

fn summarize(engine: &Engine, rows: u64, started: Instant) -> SqlSummary {
    let t = &engine.totals;
    let usage = *t.usage.lock().unwrap_or_else(|p| p.into_inner());
    SqlSummary {
        rows,
        calls: t.calls.load(Ordering::Relaxed),
        resumed: t.resumed.load(Ordering::Relaxed),
        errors: t.errors.load(Ordering::Relaxed),
        requests: t.requests.load(Ordering::Relaxed),
        retries: t.retries.load(Ordering::Relaxed),
        rate_limited: t.rate_limited.load(Ordering::Relaxed),
        prompt_tokens: usage.prompt_tokens,
        completion_tokens: usage.completion_tokens,
        cached_tokens: usage.cached_tokens,
        cost_usd: engine
            .spend
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .cost_usd(),
        elapsed_secs: started.elapsed().as_secs_f64(),
        dry_run: None,
    }
}

/// The query as given, or read from a `.sql` file.
fn read_query(arg: &str) -> Result<String> {
    let path = Path::new(arg);
    if arg.trim_end().to_ascii_lowercase().ends_with(".sql") && !arg.contains(char::is_whitespace) {
        return std::fs::read_to_string(path).map_err(|e| Error::input(path, e));
    }
    Ok(arg.to_string())
}

fn check_output(out: &Path, format: OutputFormat) -> Result<()> {
    match format {
        OutputFormat::Parquet => {}
        OutputFormat::Delta => return Ok(()),
        OutputFormat::OpenaiBatch => {
            return Err(Error::output(
                out,
                "aiq sql writes Parquet or Delta (--output-format parquet|delta)",
            ))
        }
    }
    if out
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .as_deref()
        != Some("parquet")
    {
        return Err(Error::output(
            out,
            "aiq sql writes Parquet: name the output *.parquet",
        ));
    }
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !parent.is_dir() {
            return Err(Error::output(
                out,
                format!("folder {} does not exist", parent.display()),
            ));
        }
    }
    Ok(())
}

/// `aiq sql` runs read queries only: `SELECT`, `WITH`, `VALUES`, `EXPLAIN`,
/// `DESCRIBE`. DDL and DML (`COPY ... TO`, `CREATE [EXTERNAL] TABLE`,
/// `INSERT`, `DROP`, `SELECT ... INTO`, ...) and statements (`SET`, ...)
/// are refused before anything runs: they would write files anywhere with
/// no journal and no atomic write. A result is written only by `--output`.
/// Checked on the plan, where every way of writing shows as a DDL, DML or
/// COPY node, whatever the SQL spelled.
fn read_only(plan: &datafusion::logical_expr::LogicalPlan) -> Result<()> {
    datafusion::execution::context::SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
        .verify_plan(plan)
        .map_err(|e| {
            let what = match e.find_root() {
                DataFusionError::Plan(m) => m.clone(),
                other => other.to_string(),
            };
            Error::Config(format!(
                "aiq sql runs read queries only (SELECT, WITH, VALUES, EXPLAIN, DESCRIBE), and this \
                 one is not ({what}): write a query's result with --output PATH.parquet"
            ))
        })
}

/// The result must not replace a file the query reads.
fn not_an_input<'a>(out: &Path, inputs: impl Iterator<Item = &'a PathBuf>) -> Result<()> {
    // A local output that does not exist yet is no input (each input was
    // found above); one that exists is compared by its real path.
    let Ok(real) = std::fs::canonicalize(out) else {
        return Ok(());
    };
    for input in inputs {
        if std::fs::canonicalize(input).is_ok_and(|i| i == real) {
            return Err(Error::output(
                out,
                format!(
                    "the query reads {}: write its result to another file",
                    input.display()
                ),
            ));
        }
    }
    Ok(())
}

async fn register(ctx: &SessionContext, t: &FileTable) -> Result<()> {
    let location = Location::parse(&t.path, Role::Input)?;
    if t.kind == FileKind::Delta {
        #[cfg(feature = "delta")]
        return crate::pipeline::delta::register(ctx, &t.name, &location).await;
        #[cfg(not(feature = "delta"))]
        return Err(Error::input(
            &t.path,
            "a Delta table: this aiq was built without Delta Lake (the `delta` feature)",
        ));
    }
    // An object-store table: DataFusion reads it through the same store
    // (credentials, retries) as `aiq run`, registered for its bucket. The
    // object is looked up first so a missing one fails before any call.
    match &location {
        Location::Store(url) => {
            let remote = Remote::open(url, Role::Input)?;
            remote.identity(Role::Input)?;
            ctx.register_object_store(&remote.root, remote.store.clone());
        }
        Location::Local(path) if !path.is_file() => return Err(Error::input(path, "no such file")),
        Location::Local(_) => {}
    }
    let path = t.path.to_string_lossy();
    // The extension options must match the file's own, or DataFusion finds no file.
    let ext = t
        .path
        .extension()
        .map(|e| format!(".{}", e.to_string_lossy()))
        .unwrap_or_default();
    let result = match t.kind {
        FileKind::Parquet => {
            ctx.register_parquet(
                &t.name,
                path.as_ref(),
                ParquetReadOptions {
                    file_extension: &ext,
                    ..Default::default()
                },
            )
            .await
        }
        FileKind::Json => {
            ctx.register_json(
                &t.name,
                path.as_ref(),
                JsonReadOptions {
                    file_extension: &ext,
                    ..Default::default()
                },
            )
            .await
        }
        FileKind::Delta => return Ok(()),
        FileKind::Csv => {
            ctx.register_csv(
                &t.name,
                path.as_ref(),
                CsvReadOptions {
                    file_extension: &ext,
                    ..Default::default()
                },
            )
            .await
        }
    };
    result.map_err(|e| Error::input(&t.path, e))
}

/// An aiq error raised inside DataFusion (by an AI function), if any.
fn ours(e: &DataFusionError) -> Option<Error> {
    let DataFusionError::External(inner) = e.find_root() else {
        return None;
    };
    let ours = inner.downcast_ref::<Error>()?;
    Some(match ours {
        Error::Config(m) => Error::Config(m.clone()),
        Error::Credentials(m) => Error::Credentials(m.clone()),
        Error::Stopped(m) => Error::Stopped(m.clone()),
        e if e.exit_code() == 2 => Error::Config(e.to_string()),
        e => Error::Aborted(e.to_string()),
    })
}

/// Errors before the query runs are the user's to fix (exit 2).
fn planning(e: DataFusionError) -> Error {
    ours(&e).unwrap_or_else(|| Error::Config(format!("SQL: {e}")))
}

/// Errors while it runs fail the query (exit 1); the journal keeps what was paid.
fn running(e: DataFusionError) -> Error {
    ours(&e).unwrap_or_else(|| Error::Aborted(format!("query failed: {e}")))
}
