//! Progress and the end-of-job summary.
//!
//! The bar (indicatif) draws on stderr only when it is a terminal and the
//! job is not `-q`: rows done/total, rows/s, ETA, tokens in/out with the
//! cached share, and errors. The [`Summary`] is the same figures at the end,
//! printed for people and available as JSON for scripts.

use std::fmt;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use crate::outcome::{Outcome, Usage};

/// Figures of a finished (or stopped) job.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    /// Rows in the output (or, for a stopped job, rows with an outcome).
    pub rows: u64,
    pub ok: u64,
    pub failed: u64,
    /// Rows not sent because a template variable was null.
    pub null: u64,
    /// Rows whose outcome came from an earlier run's journal.
    pub resumed: u64,
    pub usage: Usage,
    /// HTTP attempts made by this run (retries included).
    pub requests: u64,
    pub retries: u64,
    pub rate_limited: u64,
    pub elapsed_secs: f64,
    pub output: String,
}

impl Summary {
    pub fn count(&mut self, o: &Outcome) {
        self.rows += 1;
        if o.is_error() {
            self.failed += 1;
        } else if o.attempts == 0 && o.result.is_null() {
            self.null += 1;
        } else {
            self.ok += 1;
        }
        self.usage.add(&o.usage);
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
            "rows       {} ok, {} failed, {} null{}",
            self.ok,
            self.failed,
            self.null,
            if self.resumed > 0 { format!(" ({} from an earlier run)", self.resumed) } else { String::new() }
        )?;
        writeln!(
            f,
            "tokens     {} in ({} cached, {:.0}%), {} out",
            u.prompt_tokens,
            u.cached_tokens,
            percent(u.cached_tokens, u.prompt_tokens),
            u.completion_tokens
        )?;
        writeln!(
            f,
            "requests   {} sent, {} retried, {} rate limited",
            self.requests, self.retries, self.rate_limited
        )?;
        write!(f, "time       {:.1}s, {:.1} rows/s", self.elapsed_secs, self.rows_per_sec())?;
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

/// The live progress bar.
pub struct Progress {
    bar: ProgressBar,
    quiet: bool,
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
        let template = if total.is_some() {
            "{spinner} {bar:30.cyan/blue} {pos}/{len} rows · {per_sec} · ETA {eta} · {msg}"
        } else {
            "{spinner} {pos} rows · {per_sec} · {msg}"
        };
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("█▉▊▋▌▍▎▏ "));
        }
        bar.enable_steady_tick(Duration::from_millis(250));
        Progress { bar, quiet }
    }

    pub fn update(&self, s: &Summary) {
        self.bar.set_position(s.rows);
        let u = &s.usage;
        self.bar.set_message(format!(
            "tokens {} in ({:.0}% cached) / {} out · {} errors",
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
    fn summary_counts_ok_failed_and_null() {
        let mut s = Summary::default();
        s.count(&Outcome { row: 0, result: json!("x"), attempts: 1, ..Default::default() });
        s.count(&Outcome::failed(1, "bad".into(), 1));
        s.count(&Outcome::null_input(2));
        assert_eq!((s.rows, s.ok, s.failed, s.null), (3, 1, 1, 1));
        let text = s.to_string();
        assert!(text.contains("1 ok, 1 failed, 1 null"), "{text}");
        assert_eq!(human(12_345), "12k");
    }
}
