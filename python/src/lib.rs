//! `aiq._core`: the Python package's bindings over the `aiq` library.
//!
//! A thin shell, like the CLI: Python's keyword settings become the same
//! [`JobSettings`] a job file holds, checked into the same [`Plan`], run by
//! the same [`run_with`]. What this crate adds is the Python side of the
//! boundary:
//!
//! - **Arrow in and out without copies**: input is any object with
//!   `__arrow_c_stream__` (pyo3-arrow), read batch by batch on aiq's reader
//!   thread; output batches come back one at a time from [`Job`], an
//!   iterator, in input order.
//! - **The GIL is released** while aiq works (`py.detach`), in slices of
//!   [`SLICE`] between which `check_signals` lets Ctrl-C raise
//!   `KeyboardInterrupt`; the run is told through its `interrupt` (aiq
//!   installs no signal handler in the interpreter) and gets a short grace
//!   to journal the calls in flight.
//! - **Fork safety**: no runtime or thread exists until the first call;
//!   an idle runtime is stopped before `os.fork()` ([`before_fork`]) and
//!   the runtime is keyed by process id and rebuilt in a forked child
//!   (tokio's threads do not survive `fork`, PySpark forks its workers).
//! - Errors become `aiq.ConfigError` (what the CLI exits 2 for) or
//!   `aiq.JobError` (exit 1), with the CLI's messages.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aiq::frontend::cli::Cli;
use aiq::job::plan::Plan;
use aiq::job::settings::JobSettings;
use aiq::pipeline::journal::InputIdentity;
use aiq::pipeline::progress::Summary;
use aiq::pipeline::run::{run_with, Io, Ui};
use aiq::pipeline::sink::Layout;
use aiq::pipeline::source::{Format, Source};
use aiq::provider::auth::Secret;
use aiq::provider::endpoint;
use arrow::datatypes::SchemaRef;
use arrow::record_batch::{RecordBatch, RecordBatchReader};
use clap::Parser;
use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3_arrow::{PyRecordBatch, PyRecordBatchReader, PySchema};
use tokio::runtime::Runtime;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;

create_exception!(aiq, Error, PyException, "Base class of aiq's errors.");
create_exception!(
    aiq,
    ConfigError,
    Error,
    "Bad settings, input or credentials, found before any request was sent (the CLI's exit code 2)."
);
create_exception!(
    aiq,
    JobError,
    Error,
    "The job started and failed: refused by the endpoint, a row failed under fail_on_error, a budget or an interrupt stopped it (the CLI's exit code 1). With output=, finished rows are kept: the same call again resumes."
);

/// How long the GIL stays released before Python gets to look for Ctrl-C.
const SLICE: Duration = Duration::from_millis(100);

/// After Ctrl-C: how long the calls in flight get to land in the journal,
/// then how long the run gets to stop once told to quit at once.
const GRACE: Duration = Duration::from_millis(1000);
const QUIT: Duration = Duration::from_millis(1000);

/// Output batches waiting for Python to take them: the run goes no further
/// ahead of its reader than this.
const OUTPUT_BATCHES: usize = 2;

fn to_py(e: aiq::Error) -> PyErr {
    match e.exit_code() {
        2 => ConfigError::new_err(in_python(&e.to_string())),
        _ => JobError::new_err(e.to_string()),
    }
}

/// A message of the core, which names flags, in the keywords a Python
/// caller writes: `--prompt TEMPLATE` becomes `prompt=TEMPLATE`,
/// `--max-tokens-total` `max_tokens_total=`. A flag's value (a quoted
/// example, an upper-case placeholder, an identifier such as `ai_classify`)
/// follows the `=`.
fn in_python(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(at) = rest.find("--") {
        let (before, flag) = rest.split_at(at);
        out.push_str(before);
        let name_len = flag[2..]
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'))
            .unwrap_or(flag.len() - 2);
        let name = &flag[2..2 + name_len];
        if name.is_empty() || !name.starts_with(|c: char| c.is_ascii_lowercase()) {
            out.push_str("--");
            rest = &flag[2..];
            continue;
        }
        out.push_str(&name.replace('-', "_"));
        out.push('=');
        rest = &flag[2 + name_len..];
        let value = rest.strip_prefix(' ').filter(|v| {
            let word = v
                .split(|c: char| c == ' ' || c == ',' || c == ':' || c == ';')
                .next()
                .unwrap_or("");
            word.starts_with(['\'', '"'])
                || word.starts_with(|c: char| c.is_ascii_digit())
                || (!word.is_empty() && word.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
                || word.contains('_')
        });
        if let Some(v) = value {
            rest = v;
        }
    }
    out.push_str(rest);
    out
}

/// The runtime of this process and the process id it was built in.
static RUNTIME: Mutex<Option<(u32, Arc<Runtime>)>> = Mutex::new(None);

/// The runtime of this process, built on first use. A runtime inherited
/// through `fork` has no threads in the child: it is leaked, never dropped
/// (dropping would wait for those threads), and a new one is built.
fn runtime() -> PyResult<Arc<Runtime>> {
    let pid = std::process::id();
    let mut slot = RUNTIME.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((owner, rt)) = slot.as_ref() {
        if *owner == pid {
            return Ok(rt.clone());
        }
    }
    if let Some(inherited) = slot.take() {
        std::mem::forget(inherited);
    }
    // Two workers: aiq waits on the network; the reader has its own thread.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("aiq")
        .enable_all()
        .build()
        .map_err(|e| JobError::new_err(format!("cannot start the async runtime: {e}")))?;
    let rt = Arc::new(rt);
    *slot = Some((pid, rt.clone()));
    Ok(rt)
}

/// Called before `os.fork()` (`os.register_at_fork` in aiq/__init__.py):
/// stop the idle runtime, so that no aiq thread exists when the process
/// forks. Keying by pid alone is not enough: a thread of the parent's
/// runtime that is parking or waking at the instant of the fork leaves
/// the locks it holds (parking_lot's global table of parked threads)
/// locked or half-written in the child, whose first threads then hang or
/// crash. The next call builds a new runtime, in the parent as in the
/// child. A runtime still in use (a job running in another thread, an open
/// `Simulator`) is left as it is; the child then builds its own (above).
#[pyfunction]
fn before_fork(py: Python<'_>) {
    let mut slot = RUNTIME.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((pid, rt)) = slot.take() {
        match Arc::try_unwrap(rt) {
            // Joins the workers and the idle blocking threads.
            Ok(rt) => py.detach(|| rt.shutdown_timeout(QUIT)),
            Err(in_use) => *slot = Some((pid, in_use)),
        }
    }
}

/// Wait for `fut` with the GIL released, looking for Ctrl-C every
/// [`SLICE`]: then the `KeyboardInterrupt` is returned, and the caller
/// tells the run.
fn wait<F>(py: Python<'_>, rt: &Runtime, fut: F) -> PyResult<F::Output>
where
    F: Future + Send,
    F::Output: Send,
{
    let mut fut = std::pin::pin!(fut);
    loop {
        let out = py
            .detach(|| rt.block_on(async { tokio::time::timeout(SLICE, fut.as_mut()).await.ok() }));
        if let Some(out) = out {
            return Ok(out);
        }
        py.check_signals()?;
    }
}

type RunTask = JoinHandle<aiq::Result<Summary>>;

/// A running job: iterate it for the output batches (without `output=`),
/// or call `wait()` for the summary (with it).
#[pyclass(module = "aiq._core")]
struct Job {
    rt: Arc<Runtime>,
    /// The output batches, until the last has been taken.
    batches: Option<mpsc::Receiver<RecordBatch>>,
    task: Option<RunTask>,
    interrupt: Arc<Notify>,
    schema: SchemaRef,
    summary: Option<Summary>,
}

impl Job {
    /// Stop at once, as a second Ctrl-C does: without `output=` nothing is
    /// journaled, so there is nothing to wait for.
    fn quit(&mut self) {
        self.batches = None;
        self.interrupt.notify_one();
        self.interrupt.notify_one();
    }

    /// Ctrl-C with `output=`: stop sending, give the calls in flight
    /// [`GRACE`] to land in the journal, then stop at once.
    fn stop(rt: &Runtime, interrupt: &Notify, task: &mut RunTask) {
        interrupt.notify_one();
        rt.block_on(async {
            if tokio::time::timeout(GRACE, &mut *task).await.is_err() {
                interrupt.notify_one();
                let _ = tokio::time::timeout(QUIT, &mut *task).await;
            }
        });
    }

    /// Wait for the run to end and keep its summary.
    fn finish(&mut self, py: Python<'_>) -> PyResult<()> {
        let Some(task) = self.task.as_mut() else {
            return Ok(());
        };
        let joined = match wait(py, &self.rt, &mut *task) {
            Ok(joined) => joined,
            Err(interrupt) => {
                let (rt, notify) = (&self.rt, &self.interrupt);
                py.detach(|| Job::stop(rt, notify, task));
                self.task = None;
                return Err(interrupt);
            }
        };
        self.task = None;
        let summary = joined
            .map_err(|e| JobError::new_err(format!("the run failed: {e}")))?
            .map_err(to_py)?;
        self.summary = Some(summary);
        Ok(())
    }
}

#[pymethods]
impl Job {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    /// The next output batch (a `pyarrow.RecordBatch`), in input order.
    fn __next__(&mut self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        let Some(rx) = self.batches.as_mut() else {
            self.finish(py)?;
            return Ok(None);
        };
        match wait(py, &self.rt, rx.recv()) {
            Ok(Some(batch)) => Ok(Some(PyRecordBatch::new(batch).into_pyarrow(py)?.unbind())),
            Ok(None) => {
                self.batches = None;
                self.finish(py)?;
                Ok(None)
            }
            Err(interrupt) => {
                self.quit();
                Err(interrupt)
            }
        }
    }

    /// The output's schema (a `pyarrow.Schema`): the input columns, then
    /// aiq's result columns.
    #[getter]
    fn schema(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        Ok(PySchema::new(self.schema.clone())
            .into_pyarrow(py)?
            .unbind())
    }

    /// Wait for the job to end and return its summary as JSON.
    fn wait(&mut self, py: Python<'_>) -> PyResult<String> {
        self.finish(py)?;
        serde_json::to_string(&self.summary).map_err(|e| JobError::new_err(format!("summary: {e}")))
    }
}

impl Drop for Job {
    /// A job dropped before its end (an abandoned iterator) stops sending.
    fn drop(&mut self) {
        if self.task.is_some() {
            self.quit();
        }
    }
}

/// The rows of `reader` in batches of at most `rows`, sliced without copies.
fn rebatch(
    reader: Box<dyn RecordBatchReader + Send>,
    rows: usize,
    label: String,
) -> Box<dyn Iterator<Item = aiq::Result<RecordBatch>> + Send> {
    Box::new(reader.flat_map(move |batch| {
        let slices: Vec<aiq::Result<RecordBatch>> = match batch {
            Ok(b) => (0..b.num_rows())
                .step_by(rows)
                .map(|start| Ok(b.slice(start, rows.min(b.num_rows() - start))))
                .collect(),
            Err(e) => vec![Err(aiq::Error::input(
                &label,
                format!("cannot read a batch: {e}"),
            ))],
        };
        slices
    }))
}

/// `settings` (JSON with the job file's keys) over the job file `job`.
fn job_settings(settings: &str, job: Option<&std::path::Path>) -> PyResult<JobSettings> {
    let s = JobSettings::from_json(settings).map_err(to_py)?;
    match job {
        Some(job) => Ok(s.overlay(JobSettings::from_file(job).map_err(to_py)?)),
        None => Ok(s),
    }
}

/// Start a job. `data` is an Arrow stream, or `None` to read the input
/// file of the settings; `settings` is JSON with the job file's keys;
/// `credentials` are environment variables to resolve the endpoint's
/// credentials from instead of the process's environment and config file;
/// `work` names the rows of `data` (the same name, the same rows: a Spark
/// or Ray task's run and partition), so that a Delta table that holds
/// their append already is not appended to again.
#[pyfunction]
#[pyo3(signature = (data, label, total_rows, settings, job=None, output=None, restart=false, quiet=false, credentials=None, work=None))]
#[allow(clippy::too_many_arguments)]
fn start(
    py: Python<'_>,
    data: Option<PyRecordBatchReader>,
    label: String,
    total_rows: Option<u64>,
    settings: &str,
    job: Option<PathBuf>,
    output: Option<PathBuf>,
    restart: bool,
    quiet: bool,
    credentials: Option<BTreeMap<String, String>>,
    work: Option<String>,
) -> PyResult<Job> {
    aiq::frontend::cli::init_logging(0);
    if data.is_none() && work.is_some() {
        return Err(ConfigError::new_err(
            "work_id names rows handed in as data; a file is named by itself",
        ));
    }
    let mut s = job_settings(settings, job.as_deref())?;
    if data.is_some() {
        s.input = Some(PathBuf::from(&label));
    }
    // Without output= the output comes back as batches; the plan still
    // wants a path, which nothing writes.
    let to_python = output.is_none();
    if let Some(output) = output {
        s.output = Some(output);
    } else {
        s.output = Some(PathBuf::from("<python>"));
    }
    let mut plan = Plan::from_settings(s, restart).map_err(to_py)?;
    plan.handed = credentials.map(|vars| {
        vars.into_iter()
            .map(|(name, value)| (name, Secret::new(value)))
            .collect()
    });
    let source = match data {
        Some(data) => {
            let reader = data.into_reader()?;
            let schema = reader.schema();
            let columns: Vec<String> = schema
                .fields()
                .iter()
                .map(|f| format!("{}: {}", f.name(), f.data_type()))
                .collect();
            let named = match &work {
                Some(work) => format!("{label} {work}"),
                None => label.clone(),
            };
            let identity = InputIdentity {
                path: format!("{named} ({})", columns.join(", ")),
                size: total_rows.unwrap_or(0),
                modified: 0,
            };
            let batches = rebatch(reader, plan.batch_rows, label.clone());
            let source = Source::from_batches(
                std::path::Path::new(&label),
                Format::Arrow,
                schema,
                total_rows,
                batches,
            );
            Some((source, identity))
        }
        None => None,
    };
    let schema = match &source {
        Some((source, _)) => source.schema.clone(),
        None => {
            aiq::pipeline::run::open_source(&plan)
                .map_err(to_py)?
                .schema
        }
    };
    let schema = Layout::new(&schema, plan.result_type.arrow_type())
        .map_err(to_py)?
        .output;
    let rt = runtime()?;
    let interrupt = Arc::new(Notify::new());
    let (tx, rx) = if to_python {
        let (tx, rx) = mpsc::channel(OUTPUT_BATCHES);
        (Some(tx), Some(rx))
    } else {
        (None, None)
    };
    let io = Io {
        source,
        batches: tx,
        interrupt: Some(interrupt.clone()),
        named: work.is_some(),
    };
    let task = py.detach(|| rt.spawn(run_with(plan, io, Ui { quiet })));
    Ok(Job {
        rt,
        batches: rx,
        task: Some(task),
        interrupt,
        schema,
        summary: None,
    })
}

/// The endpoint of a job's settings resolved here, for runs elsewhere
/// (aiq.spark's tasks, aiq.ray's actors): the variables that give its
/// credentials anywhere (secrets, for `start`'s `credentials`). Raises
/// `ConfigError` as a run would when the host or credentials are missing.
#[pyfunction]
#[pyo3(signature = (settings, job=None))]
fn handover(settings: &str, job: Option<PathBuf>) -> PyResult<BTreeMap<String, String>> {
    let mut s = job_settings(settings, job.as_deref())?;
    // Only the endpoint matters: the data and output are the tasks'.
    s.input = Some(PathBuf::from("<python>"));
    s.output = Some(PathBuf::from("<python>"));
    let plan = Plan::from_settings(s, false).map_err(to_py)?;
    let handed = endpoint::handover(
        &plan.target,
        plan.profile.as_deref(),
        plan.api_key_env.as_deref(),
    )
    .map_err(to_py)?;
    Ok(handed
        .into_iter()
        .map(|(name, value)| (name, value.expose().to_owned()))
        .collect())
}

/// `aiq ARGS...`: the command line, exactly as the Rust binary runs it.
#[pyfunction]
fn main(py: Python<'_>, argv: Vec<String>) -> PyResult<u8> {
    let cli = match Cli::try_parse_from(argv) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return Ok(e.exit_code().clamp(0, 255) as u8);
        }
    };
    Ok(py.detach(|| aiq::frontend::cli::exit_code(cli)))
}

/// A clap error as one message: its first paragraph, without the usage.
fn clap_error(e: clap::Error) -> PyErr {
    let text = e.render().to_string();
    let first = text.split("\n\n").next().unwrap_or(&text).trim();
    ConfigError::new_err(first.strip_prefix("error: ").unwrap_or(first).to_string())
}

/// `settings` (a JSON object of `aiq.sql` keywords) as `aiq sql`'s
/// settings: the same type the command's flags fill, with the same checks,
/// read as `aiq.run`'s are ([`aiq::job::settings::from_json`]).
fn sql_settings(settings: &str) -> PyResult<aiq::frontend::sql::SqlArgs> {
    aiq::job::settings::from_json(settings).map_err(|e| {
        let message = e.to_string();
        let message = message.strip_prefix("settings: ").unwrap_or(&message);
        ConfigError::new_err(unknown_setting(message).unwrap_or_else(|| message.to_string()))
    })
}

/// serde's "unknown field `k`, expected one of `a`, `b`" in Python's terms.
fn unknown_setting(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    let (key, rest) = rest.split_once('`')?;
    let names: Vec<&str> = rest.split('`').skip(1).step_by(2).collect();
    Some(format!(
        "aiq.sql has no setting `{key}`; it takes {}",
        names.join(", ")
    ))
}

/// `aiq.sql`: run a query; `tables` are name → Arrow stream pairs, read
/// into memory for the query, `files` name → path pairs (`--table`),
/// `settings` the other `aiq sql` settings as JSON (see [`sql_settings`]).
/// Returns the result's batches (none with `output` or `dry_run`) and the
/// summary as JSON.
#[pyfunction]
#[pyo3(signature = (query, tables, files, settings, output=None, restart=false, quiet=false))]
#[allow(clippy::too_many_arguments)]
fn sql(
    py: Python<'_>,
    query: String,
    tables: Vec<(String, PyRecordBatchReader)>,
    files: Vec<(String, PathBuf)>,
    settings: &str,
    output: Option<PathBuf>,
    restart: bool,
    quiet: bool,
) -> PyResult<(Vec<Py<PyAny>>, String)> {
    aiq::frontend::cli::init_logging(0);
    let mut args = sql_settings(settings)?;
    args.query = query;
    args.output = output;
    args.tables = files;
    args.restart = restart;
    let mut data = Vec::new();
    for (name, reader) in tables {
        let reader = reader.into_reader()?;
        let schema = reader.schema();
        // Reading may call back into Python (a generator-backed reader).
        let batches = py
            .detach(|| reader.collect::<Result<Vec<_>, _>>())
            .map_err(|e| ConfigError::new_err(format!("table {name}: {e}")))?;
        data.push((name, schema, batches));
    }
    let rt = runtime()?;
    let mut task = py.detach(|| rt.spawn(aiq::frontend::sql::query(args, data, true, quiet)));
    let joined = wait(py, &rt, &mut task).inspect_err(|_| task.abort())?;
    let (batches, summary) = joined
        .map_err(|e| JobError::new_err(format!("the query failed: {e}")))?
        .map_err(to_py)?;
    let summary =
        serde_json::to_string(&summary).map_err(|e| JobError::new_err(format!("summary: {e}")))?;
    let batches = batches
        .into_iter()
        .map(|b| Ok(PyRecordBatch::new(b).into_pyarrow(py)?.unbind()))
        .collect::<PyResult<_>>()?;
    Ok((batches, summary))
}

/// The built-in simulator, serving on 127.0.0.1 until closed.
#[pyclass(module = "aiq._core")]
struct Simulator {
    inner: Option<aiq::simulator::Simulator>,
    url: String,
    // Keeps the runtime serving it alive, until closed.
    rt: Option<Arc<Runtime>>,
}

/// `aiq simulate`'s flags, parsed by clap so the checks are the CLI's.
#[derive(Parser)]
struct SimulateArgs {
    #[command(flatten)]
    cfg: aiq::simulator::SimConfig,
}

#[pymethods]
impl Simulator {
    /// `flags` are `aiq simulate` flags, e.g. `["--latency-ms", "200"]`.
    #[new]
    fn new(py: Python<'_>, flags: Vec<String>) -> PyResult<Simulator> {
        let args = std::iter::once("simulate".to_string()).chain(flags);
        let args = SimulateArgs::try_parse_from(args).map_err(clap_error)?;
        let rt = runtime()?;
        let sim = py
            .detach(|| rt.block_on(aiq::simulator::Simulator::start(args.cfg)))
            .map_err(|e| ConfigError::new_err(format!("simulator: {e}")))?;
        Ok(Simulator {
            url: sim.base_url(),
            inner: Some(sim),
            rt: Some(rt),
        })
    }

    /// `http://127.0.0.1:PORT`; an OpenAI-compatible base URL is this + `/v1`.
    #[getter]
    fn url(&self) -> String {
        self.url.clone()
    }

    /// Requests served so far, by outcome, as JSON.
    fn stats(&self) -> PyResult<String> {
        let sim = self
            .inner
            .as_ref()
            .ok_or_else(|| Error::new_err("the simulator is closed"))?;
        serde_json::to_string(&sim.stats()).map_err(|e| Error::new_err(e.to_string()))
    }

    /// Stop serving (requests in progress finish).
    fn close(&mut self) {
        if let Some(sim) = self.inner.take() {
            sim.shutdown();
        }
        // A closed simulator no longer holds the runtime (see before_fork).
        self.rt = None;
    }
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("Error", py.get_type::<Error>())?;
    m.add("ConfigError", py.get_type::<ConfigError>())?;
    m.add("JobError", py.get_type::<JobError>())?;
    m.add_class::<Job>()?;
    m.add_class::<Simulator>()?;
    m.add_function(wrap_pyfunction!(start, m)?)?;
    m.add_function(wrap_pyfunction!(main, m)?)?;
    m.add_function(wrap_pyfunction!(sql, m)?)?;
    m.add_function(wrap_pyfunction!(before_fork, m)?)?;
    m.add_function(wrap_pyfunction!(handover, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    // The columns every output ends with, after the input's: the core's list.
    m.add(
        "OUTCOME_COLUMNS",
        aiq::pipeline::sink::OUTCOME_COLUMNS.to_vec(),
    )?;
    Ok(())
}
