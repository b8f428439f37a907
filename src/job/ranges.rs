//! The allowed range of every numeric job setting, flag and job-file key
//! alike, checked in one place before anything else is looked at.
//!
//! A value out of range is a usage error (exit 2) naming the setting and
//! what it allows, never a panic later on (`--timeout 1e30` overflowed a
//! `Duration`) nor a silent fix (`--batch-rows 0` used to become 1). The
//! bounds are generous: they only rule out what cannot work or would
//! overflow, not what is merely unusual.

use crate::error::{Error, Result};
use crate::job::settings::JobSettings;

/// What a setting allows: from `min` (inclusive unless `above`) to `max`
/// (inclusive), in `unit`.
#[derive(Debug, Clone, Copy)]
struct Allowed {
    min: f64,
    /// Strictly above `min` (a duration or a price cap of zero is no
    /// setting at all).
    above: bool,
    max: f64,
    unit: &'static str,
}

/// A count from `min` up to `max`.
const fn count(min: f64, max: f64) -> Allowed {
    Allowed {
        min,
        above: false,
        max,
        unit: "",
    }
}

/// A positive quantity of `unit`, at most `max`.
const fn positive(max: f64, unit: &'static str) -> Allowed {
    Allowed {
        min: 0.0,
        above: true,
        max,
        unit,
    }
}

/// Zero or more `unit`, at most `max`.
const fn non_negative(max: f64, unit: &'static str) -> Allowed {
    Allowed {
        min: 0.0,
        above: false,
        max,
        unit,
    }
}

/// A day: longer than any attempt, poll or stall a job needs, and far
/// from where a `Duration` overflows.
const DAY_SECS: f64 = 86_400.0;
const DAY_MS: f64 = DAY_SECS * 1000.0;
/// Requests in flight: tokio's semaphore panics above about 2^61; no
/// endpoint takes more than this many at once.
const MAX_CONCURRENCY: f64 = 100_000.0;
const MAX_ROWS: f64 = 10_000_000.0;
const U32: f64 = u32::MAX as f64;
const U64: f64 = u64::MAX as f64;

impl Allowed {
    fn admits(&self, v: f64) -> bool {
        let low = if self.above {
            v > self.min
        } else {
            v >= self.min
        };
        v.is_finite() && low && v <= self.max
    }

    fn describe(&self) -> String {
        let unit = if self.unit.is_empty() {
            String::new()
        } else {
            format!(" {}", self.unit)
        };
        match (self.above, self.max >= U32) {
            (true, true) => format!("a number above {}{unit}", number(self.min)),
            (true, false) => format!(
                "above {} and at most {}{unit}",
                number(self.min),
                number(self.max)
            ),
            (false, true) => format!("at least {}{unit}", number(self.min)),
            (false, false) => format!("from {} to {}{unit}", number(self.min), number(self.max)),
        }
    }
}

/// A value as people write it: whole numbers without a fraction, huge
/// ones in exponent form.
fn number(v: f64) -> String {
    if v.is_finite() && v.abs() >= 1e12 {
        format!("{v:e}")
    } else {
        format!("{v}")
    }
}

/// Every numeric setting with its flag, value and range. Settings of the
/// built-in simulator are job-file keys under `[simulator]`.
fn numeric(s: &JobSettings) -> Vec<(&'static str, Option<f64>, Allowed)> {
    let n = |v: Option<u64>| v.map(|v| v as f64);
    let limit = count(1.0, U32);
    let sim = s.simulator.clone().unwrap_or_default();
    vec![
        (
            "--concurrency",
            n(s.concurrency.map(|v| v as u64)),
            count(1.0, MAX_CONCURRENCY),
        ),
        ("--rpm", n(s.rpm.map(u64::from)), limit),
        ("--tpm", n(s.tpm.map(u64::from)), limit),
        ("--itpm", n(s.itpm.map(u64::from)), limit),
        ("--otpm", n(s.otpm.map(u64::from)), limit),
        ("--qph", n(s.qph.map(u64::from)), limit),
        (
            "--workers",
            n(s.workers.map(u64::from)),
            count(1.0, MAX_CONCURRENCY),
        ),
        ("--max-tokens-total", n(s.max_tokens_total), count(1.0, U64)),
        ("--max-cost", s.max_cost, positive(1e12, "USD")),
        (
            "--price-in",
            s.price_in,
            non_negative(1e12, "USD per million tokens"),
        ),
        (
            "--price-out",
            s.price_out,
            non_negative(1e12, "USD per million tokens"),
        ),
        (
            "--price-cached",
            s.price_cached,
            non_negative(1e12, "USD per million tokens"),
        ),
        (
            "--price-cache-write",
            s.price_cache_write,
            non_negative(1e12, "USD per million tokens"),
        ),
        (
            "--max-retries",
            n(s.max_retries.map(u64::from)),
            count(0.0, 1000.0),
        ),
        (
            "--max-ambiguous-retries",
            n(s.max_ambiguous_retries.map(u64::from)),
            count(0.0, 1000.0),
        ),
        (
            "--max-repairs",
            n(s.max_repairs.map(u64::from)),
            count(0.0, 100.0),
        ),
        (
            "--backoff-ms",
            n(s.backoff_ms),
            non_negative(DAY_MS, "milliseconds"),
        ),
        ("--timeout", s.timeout, positive(DAY_SECS, "seconds")),
        (
            "--batch-rows",
            n(s.batch_rows.map(|v| v as u64)),
            count(1.0, MAX_ROWS),
        ),
        (
            "--max-line-bytes",
            n(s.max_line_bytes.map(|v| v as u64)),
            count(1.0, U64),
        ),
        (
            "--batch-size",
            n(s.batch_size.map(|v| v as u64)),
            count(1.0, 100_000.0),
        ),
        (
            "--max-words",
            n(s.max_words.map(u64::from)),
            count(0.0, 100_000.0),
        ),
        (
            "--batch-max-requests",
            n(s.batch_max_requests.map(|v| v as u64)),
            count(1.0, MAX_ROWS),
        ),
        (
            "--batch-max-bytes",
            n(s.batch_max_bytes),
            count(1024.0, U64),
        ),
        ("--poll-secs", s.poll_secs, positive(DAY_SECS, "seconds")),
        (
            "--bedrock-min-records",
            n(s.bedrock_min_records.map(|v| v as u64)),
            count(1.0, MAX_ROWS),
        ),
        (
            "simulator.latency_ms",
            n(sim.latency_ms),
            non_negative(DAY_MS, "milliseconds"),
        ),
        (
            "simulator.itl_ms",
            sim.itl_ms,
            non_negative(60_000.0, "milliseconds"),
        ),
        (
            "simulator.ttft_ms",
            n(sim.ttft_ms),
            non_negative(DAY_MS, "milliseconds"),
        ),
        (
            "simulator.output_tokens",
            n(sim.output_tokens),
            count(0.0, 1_000_000.0),
        ),
        ("simulator.rpm", n(sim.rpm), count(1.0, U64)),
        ("simulator.tpm", n(sim.tpm), count(1.0, U64)),
        (
            "simulator.fault_rate",
            sim.fault_rate,
            non_negative(1.0, ""),
        ),
        (
            "simulator.batch_turnaround_ms",
            n(sim.batch_turnaround_ms),
            non_negative(DAY_MS, "milliseconds"),
        ),
    ]
}

/// Every numeric setting within its range, or an error naming the first
/// that is not, as a flag and as a job-file key.
pub fn check(s: &JobSettings) -> Result<()> {
    for (name, value, allowed) in numeric(s) {
        if let Some(v) = value.filter(|v| !allowed.admits(*v)) {
            let key = match name.strip_prefix("--") {
                Some(flag) => format!("{name} (job file: {})", flag.replace('-', "_")),
                None => format!("{name} (job file)"),
            };
            return Err(Error::Config(format!(
                "{key} must be {}, got {}",
                allowed.describe(),
                number(v)
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_read_as_people_write_them() {
        assert_eq!(
            positive(DAY_SECS, "seconds").describe(),
            "above 0 and at most 86400 seconds"
        );
        assert_eq!(count(1.0, MAX_ROWS).describe(), "from 1 to 10000000");
        assert_eq!(count(1.0, U32).describe(), "at least 1");
        assert_eq!(number(1e30), "1e30");
        assert!(!positive(1.0, "").admits(f64::NAN));
        assert!(!positive(1.0, "").admits(0.0));
        assert!(non_negative(1.0, "").admits(0.0));
    }
}
