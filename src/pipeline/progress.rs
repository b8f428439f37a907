//! Progress and the end-of-job summary.
//!
//! The bar (indicatif) draws on stderr only when it is a terminal and the
//! job is not `-q`: rows done/total, rows/s, ETA, tokens in/out with the
//! cached share, and errors. The [`Summary`] is the same figures at the end,
//! printed for people and available as JSON for scripts.
//!
//! For scripts watching a running job, a [`StatusFile`] beside the output
//! (`out.parquet.status.json`) holds the same figures as JSON: rows
//! done/failed, tokens, spend, rate, ETA and errors by class. It is
//! rewritten atomically (temporary file + rename) every second while the
//! job runs, so a reader never sees half a file, and finalised when the job
//! ends with `"state": "done"`, `"stopped"` or `"failed"` (and the reason); it is left
//! in place so the last word stays readable, and replaced by the next run.
//!
//! [`Saturation`] watches the replies for a server that queues: latency
//! climbing while throughput stays flat means more requests in flight only
//! wait longer (16 in flight against a server with 2 slots), and the bar
//! says so once, with a lower `--concurrency` to try.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use crate::job::spend::Prices;
use crate::pipeline::client::ClientStats;
use crate::pipeline::outcome::{Outcome, Usage};

/// Figures of a finished (or stopped) job.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    /// Rows in the output (or, for a stopped job, rows with an outcome).
    pub rows: u64,
    pub ok: u64,
    pub failed: u64,
    /// Rows not sent because a template variable was null or the prompt
    /// rendered empty.
    pub null: u64,
    /// Rows whose outcome came from an earlier run's journal.
    pub resumed: u64,
    pub usage: Usage,
    /// HTTP attempts made by this run (retries included).
    pub requests: u64,
    pub retries: u64,
    pub rate_limited: u64,
    /// Retries of attempts that timed out after sending (maybe billed).
    pub ambiguous_retries: u64,
    /// Repairs (typed replies asked again) among this run's requests.
    pub repairs: u64,
    /// What the rows' usage cost (ambiguous attempts counted as billed);
    /// null without prices.
    pub cost_usd: Option<f64>,
    /// Rows answered by another row's call with the same request
    /// (dedup): the calls it saved.
    pub shared: u64,
    /// What those calls would have cost at the prices given; null without
    /// prices.
    pub shared_cost_usd: Option<f64>,
    /// Failed rows by class of error (`http_429`, `http_5xx`, `timeout`, ...).
    pub errors: BTreeMap<String, u64>,
    pub elapsed_secs: f64,
    /// `--write-mode merge`: rows not sent because the table held their
    /// answer to the same request, and what those calls cost (with prices).
    pub saved_by_table: u64,
    pub saved_by_table_usd: Option<f64>,
    /// `--write-mode merge`: input rows not sent because a later row has
    /// their key (the merge keeps the last row of each key).
    pub replaced_by_later_rows: u64,
    pub output: String,
    /// Prices for `cost_usd`, set before counting.
    #[serde(skip)]
    pub prices: Option<Prices>,
    /// Where the request counts and the time come from, set before
    /// counting; read by [`Summary::close`].
    #[serde(skip)]
    pub live: Option<Live>,
}

/// The running job's own counters: the client's requests and the start.
#[derive(Debug, Clone)]
pub struct Live {
    pub stats: Arc<ClientStats>,
    pub started: tokio::time::Instant,
}

impl Summary {
    pub fn count(&mut self, o: &Outcome) {
        self.rows += 1;
        if let Some(message) = o.error_message.as_ref().filter(|_| o.is_error()) {
            self.failed += 1;
            *self
                .errors
                .entry(error_class(message).to_string())
                .or_insert(0) += 1;
        } else if o.attempts == 0 && o.result.is_null() && o.shared.is_none() {
            self.null += 1;
        } else {
            self.ok += 1;
        }
        self.usage.add(&o.usage);
        if let Some(p) = &self.prices {
            *self.cost_usd.get_or_insert(0.0) += p.cost(&o.billed_usage());
        }
        if let Some(shared) = &o.shared {
            self.shared += 1;
            if let Some(p) = &self.prices {
                *self.shared_cost_usd.get_or_insert(0.0) += p.cost(&shared.usage);
            }
        }
    }

    /// Count an outcome of this run: its repairs are among the requests
    /// this run sent (a resumed row's are not).
    pub fn count_sent(&mut self, o: &Outcome) {
        self.repairs += u64::from(o.repairs);
        self.count(o);
    }

    /// Take the request counts and the elapsed time from [`Summary::live`]:
    /// the one way they get into a summary, whether the job finished or
    /// stopped (interrupted, stopped early, out of budget).
    pub fn close(&mut self) {
        let Some(live) = &self.live else { return };
        let s = &live.stats;
        self.requests = s.attempts.load(Ordering::Relaxed);
        self.retries = s.retries.load(Ordering::Relaxed);
        self.rate_limited = s.rate_limited.load(Ordering::Relaxed);
        self.ambiguous_retries = s.ambiguous_retries.load(Ordering::Relaxed);
        self.elapsed_secs = live.started.elapsed().as_secs_f64();
    }

    /// Takes in the calls a merge's table answered.
    pub fn count_saved(&mut self, saved: &crate::pipeline::delta::saved::Saved) {
        let (rows, prompt, completion) = saved.tally();
        self.saved_by_table = rows;
        self.replaced_by_later_rows = saved.replaced();
        self.saved_by_table_usd = self
            .prices
            .filter(|_| rows > 0)
            .map(|p| (prompt as f64 * p.input + completion as f64 * p.output) / 1_000_000.0);
    }

    pub fn rows_per_sec(&self) -> f64 {
        if self.elapsed_secs > 0.0 {
            (self.rows - self.resumed) as f64 / self.elapsed_secs
        } else {
            0.0
        }
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let u = &self.usage;
        writeln!(
            f,
            "rows       {} ok, {} failed, {} null{}{}",
            self.ok,
            self.failed,
            self.null,
            if self.null > 0 {
                " (not sent: a template value was null or the prompt empty)"
            } else {
                ""
            },
            if self.resumed > 0 {
                format!(" ({} from an earlier run)", self.resumed)
            } else {
                String::new()
            }
        )?;
        writeln!(
            f,
            "tokens     {} in ({} cached, {:.0}%, {} cache writes), {} out ({} reasoning)",
            u.prompt_tokens,
            u.cached_tokens,
            percent(u.cached_tokens, u.prompt_tokens),
            u.cache_write_tokens,
            u.completion_tokens,
            u.reasoning_tokens
        )?;
        if let Some(cost) = self.cost_usd {
            writeln!(f, "cost       ${cost:.4}")?;
        }
        if self.shared > 0 {
            writeln!(
                f,
                "saved      {} calls: rows that asked the same request as another row took its answer{}",
                self.shared,
                match self.shared_cost_usd {
                    Some(cost) => format!(" (they would have cost ${cost:.4})"),
                    None => String::new(),
                }
            )?;
        }
        if self.saved_by_table > 0 {
            writeln!(
                f,
                "saved      {} calls answered by the table (same key, same request){}",
                self.saved_by_table,
                match self.saved_by_table_usd {
                    Some(cost) => format!(" (they would have cost ${cost:.4})"),
                    None => String::new(),
                }
            )?;
        }
        if self.replaced_by_later_rows > 0 {
            writeln!(
                f,
                "replaced   {} rows not sent: a later row has the same merge key (the last row \
                 of each key is kept)",
                self.replaced_by_later_rows
            )?;
        }
        writeln!(
            f,
            "requests   {} sent{}, {} retried, {} rate limited, {} ambiguous retries (maybe billed twice)",
            self.requests,
            if self.repairs > 0 {
                format!(" (incl. {} repairs)", self.repairs)
            } else {
                String::new()
            },
            self.retries,
            self.rate_limited,
            self.ambiguous_retries
        )?;
        write!(
            f,
            "time       {:.1}s, {:.1} rows/s",
            self.elapsed_secs,
            self.rows_per_sec()
        )?;
        if !self.output.is_empty() {
            write!(f, "\noutput     {}", self.output)?;
        }
        Ok(())
    }
}

fn percent(part: i64, whole: i64) -> f64 {
    if whole > 0 {
        part as f64 * 100.0 / whole as f64
    } else {
        0.0
    }
}

/// The class of a row's error message, for counts by class.
pub fn error_class(message: &str) -> &'static str {
    // Messages are "HTTP 429: ..." or "gave up after N attempts: HTTP 503: ...".
    let http = message
        .find("HTTP ")
        .and_then(|i| message.get(i + 5..i + 8))
        .and_then(|c| c.parse::<u16>().ok());
    match http {
        Some(429) => "http_429",
        Some(500..=599) => "http_5xx",
        Some(_) => "http_4xx",
        None if message.contains("timed out") => "timeout",
        None if message.contains("connect") => "connection",
        None if message.contains("template") => "template",
        None => "other",
    }
}

/// The live progress bar, and the status file if there is one.
pub struct Progress {
    bar: ProgressBar,
    quiet: bool,
    status: Option<Arc<StatusFile>>,
    /// Requests in flight right now (the client's count), when known.
    in_flight: Option<Arc<std::sync::atomic::AtomicU64>>,
    /// Watches for a queueing server (see [`Progress::with_concurrency`]).
    saturation: Option<Saturation>,
    started: std::time::Instant,
}

impl Progress {
    pub fn new(total: Option<u64>, quiet: bool) -> Progress {
        let bar = match total {
            Some(n) => ProgressBar::new(n),
            None => ProgressBar::no_length(),
        };
        if quiet {
            bar.set_draw_target(ProgressDrawTarget::hidden());
        } else {
            bar.set_draw_target(ProgressDrawTarget::stderr_with_hz(8));
        }
        // `wide_msg`: the message is cut to the terminal's width, so the
        // bar stays one line (a wrapped bar is redrawn as a new line).
        let template = if total.is_some() {
            "{spinner} {bar:30.cyan/blue} {pos}/{len} rows · {rate} · ETA {eta} · {wide_msg}"
        } else {
            "{spinner} {pos} rows · {rate} · {wide_msg}"
        };
        if let Ok(style) = ProgressStyle::with_template(template) {
            // indicatif's own {per_sec} prints four decimals.
            let style = style.with_key(
                "rate",
                |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                    let _ = write!(w, "{:.1} rows/s", state.per_sec());
                },
            );
            bar.set_style(style.progress_chars("█▉▊▋▌▍▎▏ "));
        }
        bar.enable_steady_tick(Duration::from_millis(250));
        Progress {
            bar,
            quiet,
            status: None,
            in_flight: None,
            saturation: None,
            started: std::time::Instant::now(),
        }
    }

    /// Also watch the replies for a server that queues what `concurrency`
    /// requests in flight send it, and say so once (see [`Saturation`]).
    pub fn with_concurrency(mut self, concurrency: usize) -> Progress {
        self.saturation = Some(Saturation::new(concurrency));
        self
    }

    /// A reply this run received: fed to the saturation watch.
    pub fn observe(&mut self, o: &Outcome) {
        // Single successful attempts only: a retry's latency includes its
        // back-off, and an error's says nothing about the queue.
        let Some(latency) = o.latency_ms.filter(|_| o.attempts == 1 && !o.is_error()) else {
            return;
        };
        let at = self.started.elapsed().as_secs_f64();
        if let Some(advice) = self
            .saturation
            .as_mut()
            .and_then(|s| s.observe(at, latency as f64))
        {
            if !self.quiet {
                self.println(&advice);
            }
        }
    }

    /// Also keep `status` current (see [`StatusFile`]).
    pub fn with_status(mut self, status: Arc<StatusFile>) -> Progress {
        self.status = Some(status);
        self
    }

    /// Also show how many requests are in flight.
    pub fn with_in_flight(mut self, n: Arc<std::sync::atomic::AtomicU64>) -> Progress {
        self.in_flight = Some(n);
        self
    }

    pub fn update(&self, s: &Summary) {
        if let Some(status) = &self.status {
            status.update(s);
        }
        self.bar.set_position(s.rows);
        let u = &s.usage;
        let in_flight = self
            .in_flight
            .as_ref()
            .map(|n| {
                format!(
                    "{} in flight · ",
                    n.load(std::sync::atomic::Ordering::Relaxed)
                )
            })
            .unwrap_or_default();
        self.bar.set_message(format!(
            "{in_flight}tokens {} in ({:.0}% cached) / {} out · {} errors",
            human(u.prompt_tokens),
            percent(u.cached_tokens, u.prompt_tokens),
            human(u.completion_tokens),
            s.failed
        ));
    }

    /// `-q`: no bar, no summary.
    pub fn quiet(&self) -> bool {
        self.quiet
    }

    pub fn println(&self, line: &str) {
        self.bar.suspend(|| eprintln!("{line}"));
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// Latency climbing while throughput stays flat: the server works on a
/// few requests at a time and queues the rest, so the requests in flight
/// beyond those only wait (and time out sooner).
///
/// It shows at the start of a run, which sends `concurrency` requests at
/// once. A server with room for them all answers the first wave as fast as
/// the later ones. A server with room for a few answers those few quickly
/// and the rest of the wave later and later, while the queue builds,
/// spreading the first wave's latencies from one service time up to the
/// steady queued latency, at the same requests per second. So the first
/// `concurrency` completions (the first wave) are compared, once, with the
/// next `2 × concurrency`: the lower quartile of latency (a wave's quickest
/// quarter: a queue lifts it most, while uneven requests move it little) up
/// by [`Saturation::CLIMB`] or more, with throughput within
/// [`Saturation::FLAT`] of the first wave's either way, and it is said. One
/// comparison, not one per window, so uneven requests do not set it off by
/// chance; and a server that slows down (longer rows later in the file)
/// does so with throughput falling, which is not a queue. Fed (time,
/// latency) pairs, so it is tested without a clock.
#[derive(Debug, Clone)]
pub struct Saturation {
    concurrency: usize,
    /// Completion time (s) and latency (ms) of the first three waves.
    seen: Vec<(f64, f64)>,
    /// The comparison was made (or cannot be: one request in flight).
    decided: bool,
}

impl Saturation {
    pub const CLIMB: f64 = 2.0;
    pub const FLAT: f64 = 1.2;
    /// The smallest wave worth a median.
    pub const MIN_WAVE: usize = 4;

    pub fn new(concurrency: usize) -> Saturation {
        Saturation {
            concurrency,
            seen: Vec::new(),
            // One request in flight cannot queue behind another of ours.
            decided: concurrency < 2,
        }
    }

    /// One completed request: finished `at` seconds into the run, after
    /// `latency_ms`. Returns the advice, the one time saturation is seen.
    pub fn observe(&mut self, at: f64, latency_ms: f64) -> Option<String> {
        if self.decided {
            return None;
        }
        let wave = self.concurrency.max(Saturation::MIN_WAVE);
        self.seen.push((at, latency_ms));
        if self.seen.len() < 3 * wave {
            return None;
        }
        self.decided = true;
        let seen = std::mem::take(&mut self.seen);
        let (first, later) = seen.split_at(wave);
        let quartile = |s: &[(f64, f64)]| {
            let mut l: Vec<f64> = s.iter().map(|(_, l)| *l).collect();
            l.sort_by(f64::total_cmp);
            l[l.len() / 4]
        };
        let last = |s: &[(f64, f64)]| s.iter().map(|(t, _)| *t).fold(f64::MIN, f64::max);
        // The first wave was sent when its first reply began.
        let sent = first
            .iter()
            .map(|(t, l)| t - l / 1e3)
            .fold(f64::MAX, f64::min);
        let per_sec = |n: usize, from: f64, to: f64| n as f64 / (to - from).max(1e-3);
        let (r1, x1) = (quartile(first), per_sec(first.len(), sent, last(first)));
        let (r2, x2) = (
            quartile(later),
            per_sec(later.len(), last(first), last(later)),
        );
        if r2 < r1 * Saturation::CLIMB || x2 > x1 * Saturation::FLAT || x2 < x1 / Saturation::FLAT {
            return None;
        }
        // The first reply came before any queue: requests finished per
        // second times that is about how many the server works on at once.
        // Twice that keeps it busy between replies.
        let quickest = first.iter().map(|(_, l)| *l).fold(f64::MAX, f64::min);
        let at_once = (x2 * quickest / 1e3).ceil().max(1.0) as usize;
        let suggest = (2 * at_once).clamp(1, self.concurrency - 1);
        Some(format!(
            "latency climbed from {} to {} per request (lower quartile) while throughput stayed at {x2:.1} requests/s: \
             the server works on about {at_once} at once and queues the rest of the {} in flight; \
             --concurrency {suggest} would finish as fast, with shorter waits and fewer timeouts",
            seconds(r1),
            seconds(r2),
            self.concurrency
        ))
    }
}

/// `850 ms` or `8.0 s`.
fn seconds(ms: f64) -> String {
    if ms < 1000.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{:.1} s", ms / 1e3)
    }
}

/// What the status file holds.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// `running`, then `done` or `stopped`.
    pub state: &'static str,
    /// Why a stopped job stopped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Rows this run has to account for (null when the input does not say).
    pub rows_total: Option<u64>,
    pub rows_done: u64,
    pub rows_ok: u64,
    pub rows_failed: u64,
    pub tokens: Usage,
    pub spent_usd: Option<f64>,
    pub rows_per_sec: f64,
    pub eta_secs: Option<f64>,
    pub errors: BTreeMap<String, u64>,
    pub elapsed_secs: f64,
    /// Seconds since the Unix epoch when this was written.
    pub updated_at: u64,
}

/// `out.parquet` → `out.parquet.status.json`.
pub fn status_path(output: &Path) -> PathBuf {
    crate::job::location::with_name_suffix(output, ".status.json")
}

/// The status file of a running job, written once a second by its own task.
pub struct StatusFile {
    path: PathBuf,
    total: Option<u64>,
    started: tokio::time::Instant,
    latest: Mutex<Option<Summary>>,
    writer: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl StatusFile {
    /// Start writing `path` every second (call inside the runtime).
    pub fn start(path: PathBuf, total: Option<u64>) -> Arc<StatusFile> {
        let file = Arc::new(StatusFile {
            path,
            total,
            started: tokio::time::Instant::now(),
            latest: Mutex::new(Some(Summary::default())),
            writer: Mutex::new(None),
        });
        // The task holds a weak handle, so a dropped StatusFile ends it.
        let weak = Arc::downgrade(&file);
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let Some(file) = weak.upgrade() else { break };
                file.write("running", None);
            }
        });
        *lock(&file.writer) = Some(task);
        file
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn update(&self, s: &Summary) {
        *lock(&self.latest) = Some(s.clone());
    }

    /// Stop the periodic writes and write the final state.
    pub fn finish(&self, summary: Option<&Summary>, state: &'static str, message: Option<String>) {
        if let Some(task) = lock(&self.writer).take() {
            task.abort();
        }
        if let Some(s) = summary {
            self.update(s);
        }
        self.write(state, message);
    }

    /// The job ended with `error`: `stopped` for a stop that a re-run
    /// resumes (an interrupt, a budget), `failed` for anything else; the
    /// message says why. An object-store output's status file lives in its
    /// scratch folder, which may be gone with the run: nothing to tell then.
    pub fn fail(&self, error: &crate::error::Error) {
        if self
            .path
            .parent()
            .is_some_and(|p| !p.as_os_str().is_empty() && !p.is_dir())
        {
            return;
        }
        let state = match error {
            crate::error::Error::Stopped(_) => "stopped",
            _ => "failed",
        };
        self.finish(None, state, Some(error.to_string()));
    }

    fn write(&self, state: &'static str, message: Option<String>) {
        let Some(s) = lock(&self.latest).clone() else {
            return;
        };
        let elapsed = self.started.elapsed().as_secs_f64();
        let fresh = s.rows - s.resumed.min(s.rows);
        let rate = if elapsed > 0.0 {
            fresh as f64 / elapsed
        } else {
            0.0
        };
        let status = Status {
            state,
            message,
            rows_total: self.total,
            rows_done: s.rows,
            rows_ok: s.ok,
            rows_failed: s.failed,
            tokens: s.usage,
            spent_usd: s.cost_usd,
            rows_per_sec: rate,
            eta_secs: self
                .total
                .filter(|_| rate > 0.0)
                .map(|t| t.saturating_sub(s.rows) as f64 / rate),
            errors: s.errors.clone(),
            elapsed_secs: elapsed,
            updated_at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        };
        // A status file is a convenience: failing to write it must not fail the job.
        if let Ok(bytes) = serde_json::to_vec_pretty(&status) {
            if let Err(e) = crate::pipeline::journal::write_atomic(&self.path, &bytes) {
                tracing::warn!("status file: {e}");
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn human(n: i64) -> String {
    match n {
        n if n >= 10_000_000 => format!("{:.0}M", n as f64 / 1e6),
        n if n >= 1_000_000 => format!("{:.1}M", n as f64 / 1e6),
        n if n >= 10_000 => format!("{:.0}k", n as f64 / 1e3),
        n if n >= 1_000 => format!("{:.1}k", n as f64 / 1e3),
        n => n.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_bar_shows_the_requests_in_flight() {
        let n = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let p = Progress::new(Some(10), true).with_in_flight(n.clone());
        n.store(400, std::sync::atomic::Ordering::Relaxed);
        p.update(&Summary::default());
        assert!(
            p.bar.message().starts_with("400 in flight"),
            "{}",
            p.bar.message()
        );
    }

    /// Completions of a closed loop: `concurrency` requests always in
    /// flight against a server that works on `slots` at once, each taking
    /// `service` seconds, first come first served. (time, latency ms).
    fn closed_loop(
        concurrency: usize,
        slots: usize,
        service: impl Fn(usize) -> f64,
        n: usize,
    ) -> Vec<(f64, f64)> {
        let mut free = vec![0.0f64; slots];
        // Every request is sent the moment an earlier one completes.
        let mut sends: std::collections::VecDeque<f64> =
            std::iter::repeat_n(0.0, concurrency).collect();
        let mut done = Vec::with_capacity(n);
        for i in 0..n {
            let sent = sends.pop_front().unwrap();
            let slot = (0..slots)
                .min_by(|a, b| free[*a].total_cmp(&free[*b]))
                .unwrap();
            let end = free[slot].max(sent) + service(i);
            free[slot] = end;
            done.push((end, (end - sent) * 1e3));
            sends.push_back(end);
            sends.make_contiguous().sort_by(f64::total_cmp);
        }
        done.sort_by(|a, b| a.0.total_cmp(&b.0));
        done
    }

    fn advice(concurrency: usize, done: &[(f64, f64)]) -> Vec<String> {
        let mut s = Saturation::new(concurrency);
        done.iter().filter_map(|(t, l)| s.observe(*t, *l)).collect()
    }

    #[test]
    fn a_queueing_server_is_named_once_with_a_lower_concurrency() {
        // 16 in flight, 2 slots, 1 s a request: 2 requests/s whatever the
        // concurrency, and every request waits 7 s for a slot.
        let done = closed_loop(16, 2, |_| 1.0, 200);
        let said = advice(16, &done);
        assert_eq!(said.len(), 1, "{said:?}");
        assert!(
            said[0].contains("throughput stayed at 2.0 requests/s")
                && said[0].contains("from 3.0 s to 8.0 s per request")
                && said[0].contains("about 2 at once")
                && said[0].contains("--concurrency 4 "),
            "{}",
            said[0]
        );
    }

    #[test]
    fn a_server_with_room_is_not_named() {
        // As many slots as requests in flight: no queue.
        assert!(advice(16, &closed_loop(16, 16, |_| 1.0, 400)).is_empty());
        // Uneven requests (0.2 s to 3 s), still no queue.
        let uneven = |i: usize| 0.2 + ((i * 7919) % 29) as f64 / 10.0;
        assert!(advice(16, &closed_loop(16, 16, uneven, 400)).is_empty());
        // One in flight cannot queue, however slow the server.
        assert!(advice(1, &closed_loop(1, 1, |i| 1.0 + i as f64, 50)).is_empty());
        // A server that slows down (longer rows later): latency climbs, but
        // throughput falls with it.
        assert!(advice(16, &closed_loop(16, 16, |i| 1.0 + i as f64 / 10.0, 200)).is_empty());
        // A server that queues, with the concurrency it can take: 2 of 2.
        assert!(advice(2, &closed_loop(2, 2, |_| 1.0, 100)).is_empty());
    }

    #[test]
    fn summary_counts_ok_failed_and_null() {
        let mut s = Summary::default();
        s.count(&Outcome {
            row: 0,
            result: json!("x"),
            attempts: 1,
            ..Default::default()
        });
        s.count(&Outcome::failed(1, "bad".into(), 1));
        s.count(&Outcome::null_input(2));
        assert_eq!((s.rows, s.ok, s.failed, s.null), (3, 1, 1, 1));
        let text = s.to_string();
        assert!(text.contains("1 ok, 1 failed, 1 null"), "{text}");
        assert_eq!(human(12_345), "12k");
        assert_eq!(s.errors.get("other"), Some(&1));
    }

    #[test]
    fn errors_are_classed() {
        assert_eq!(
            error_class("gave up after 9 attempts: HTTP 429: slow down"),
            "http_429"
        );
        assert_eq!(error_class("HTTP 503: busy"), "http_5xx");
        assert_eq!(error_class("HTTP 400: bad"), "http_4xx");
        assert_eq!(
            error_class("gave up after 2 attempts: timed out: error sending request"),
            "timeout"
        );
        assert_eq!(
            error_class("--prompt template failed on this row: x"),
            "template"
        );
    }

    #[tokio::test]
    async fn status_file_is_written_and_finalised() {
        let dir = tempfile::tempdir().unwrap();
        let path = status_path(&dir.path().join("out.parquet"));
        assert!(path.ends_with("out.parquet.status.json"));
        let status = StatusFile::start(path.clone(), Some(10));
        let mut s = Summary {
            prices: Some(Prices {
                input: 1.0,
                output: 1.0,
                cached: None,
                cache_write: None,
            }),
            ..Default::default()
        };
        s.count(&Outcome {
            row: 0,
            result: json!("x"),
            attempts: 1,
            usage: Usage {
                prompt_tokens: 3,
                completion_tokens: 1,
                total_tokens: 4,
                ..Default::default()
            },
            ..Default::default()
        });
        status.update(&s);
        status.write("running", None);
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(
            (
                v["state"].as_str(),
                v["rows_done"].as_u64(),
                v["rows_total"].as_u64()
            ),
            (Some("running"), Some(1), Some(10))
        );
        assert!((v["spent_usd"].as_f64().unwrap() - 4e-6).abs() < 1e-12);
        status.finish(None, "stopped", Some("budget".into()));
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(
            (v["state"].as_str(), v["message"].as_str()),
            (Some("stopped"), Some("budget"))
        );
    }
}
