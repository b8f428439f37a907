//! Statistics of a benchmark step: pure functions over the per-request
//! records, so every figure in the table, the JSON and the plot comes from
//! one place and is unit-tested without a server.
//!
//! Percentiles interpolate linearly between the closest ranks (numpy's
//! default), so p50 of an even-sized sample is the mean of the middle two.
//! Latencies are over successful requests only: a fast 429 is not a fast
//! answer. Goodput counts successful requests that also meet every SLO given.

use rand::Rng;
use serde::Serialize;

/// One request as measured: what the collector stores and `--records` writes.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Record {
    /// Index of the sweep step.
    pub step: u32,
    /// Sequence number within the step.
    pub request: u64,
    /// When the request was sent, ms after the step started.
    pub start_ms: f64,
    /// How long its ticket waited for a free worker, ms (rate mode: a
    /// non-zero wait means the client, not the server, held it back).
    pub queued_ms: f64,
    /// Time to first content chunk, ms; None if none arrived.
    pub ttft_ms: Option<f64>,
    /// Request sent → reply complete (or failed), ms.
    pub e2e_ms: f64,
    /// Mean time between content chunks after the first, ms.
    pub itl_ms: Option<f64>,
    pub prompt_tokens: u64,
    pub output_tokens: u64,
    /// HTTP status; None when no response arrived.
    pub status: Option<u16>,
    pub error: Option<String>,
}

impl Record {
    pub fn ok(&self) -> bool {
        self.error.is_none()
    }
}

/// Service-level objectives for goodput; None means no bound.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Slo {
    pub ttft_ms: Option<f64>,
    pub e2e_ms: Option<f64>,
}

impl Slo {
    /// A successful request within every bound.
    pub fn met_by(&self, r: &Record) -> bool {
        r.ok()
            && self
                .ttft_ms
                .is_none_or(|max| r.ttft_ms.is_some_and(|t| t <= max))
            && self.e2e_ms.is_none_or(|max| r.e2e_ms <= max)
    }
}

/// Below this many samples a percentile is flagged as rough in the table
/// and drawn hollow on the plot: the p99 of 8 requests is just their
/// maximum, and one slow request moves the p90 of 10 by a whole request.
pub const MIN_SAMPLES: u64 = 20;

/// p50, p90, p99 (and the mean) of one latency, in ms, and how many
/// requests they come from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Latency {
    pub samples: u64,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
}

impl Latency {
    /// None for an empty sample.
    pub fn of(mut values: Vec<f64>) -> Option<Latency> {
        if values.is_empty() {
            return None;
        }
        values.sort_by(f64::total_cmp);
        Some(Latency {
            samples: values.len() as u64,
            mean: values.iter().sum::<f64>() / values.len() as f64,
            p50: percentile(&values, 50.0),
            p90: percentile(&values, 90.0),
            p99: percentile(&values, 99.0),
        })
    }
}

/// The `p`th percentile (0..=100) of sorted `values`, linearly interpolated
/// between closest ranks; NaN for an empty slice.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    match sorted.len() {
        0 => f64::NAN,
        1 => sorted[0],
        n => {
            let rank = (p.clamp(0.0, 100.0) / 100.0) * (n - 1) as f64;
            let lo = rank.floor() as usize;
            let hi = rank.ceil() as usize;
            sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - lo as f64)
        }
    }
}

/// What drives a step: a fixed number of workers sending back to back
/// (closed loop), or Poisson arrivals at a rate (open loop).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Load {
    Concurrency(usize),
    Rate(f64),
}

impl Load {
    /// How the step is named in the table and on the plot.
    pub fn label(&self) -> String {
        match self {
            Load::Concurrency(c) => format!("c={c}"),
            Load::Rate(r) => format!("{r} rps"),
        }
    }
}

/// The figures of one step of the sweep.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepStats {
    pub load: Load,
    pub requests: u64,
    pub ok: u64,
    pub errors: u64,
    pub rate_limited: u64,
    pub error_rate: f64,
    pub rate_limited_rate: f64,
    /// First send to last completion, seconds.
    pub elapsed_secs: f64,
    /// Completed requests (ok or not) per second.
    pub requests_per_sec: f64,
    /// Output tokens of successful requests per second.
    pub output_tokens_per_sec: f64,
    /// Requests meeting the SLO per second, and as a share of all requests.
    pub goodput_per_sec: f64,
    pub goodput_share: f64,
    pub ttft_ms: Option<Latency>,
    pub e2e_ms: Option<Latency>,
    pub itl_ms: Option<Latency>,
    /// Mean time tickets waited for a free worker, ms.
    pub queued_ms_mean: f64,
    /// Prompt and output tokens of successful requests, as the server
    /// counted them: what was really sent, not what was asked for.
    pub prompt_tokens: Option<TokenCount>,
    pub output_tokens: Option<TokenCount>,
}

/// The least, mean and most tokens per request of a sample.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct TokenCount {
    pub min: u64,
    pub mean: f64,
    pub max: u64,
}

impl TokenCount {
    /// None for an empty sample.
    pub fn of(values: impl IntoIterator<Item = u64>) -> Option<TokenCount> {
        let (mut n, mut sum, mut min, mut max) = (0u64, 0u64, u64::MAX, 0u64);
        for v in values {
            n += 1;
            sum = sum.saturating_add(v);
            min = min.min(v);
            max = max.max(v);
        }
        (n > 0).then(|| TokenCount {
            min,
            mean: sum as f64 / n as f64,
            max,
        })
    }

    /// `117` or `117–120`.
    pub fn range(&self) -> String {
        if self.min == self.max {
            self.min.to_string()
        } else {
            format!("{}–{}", self.min, self.max)
        }
    }
}

/// Fold a step's records into its figures. `elapsed_secs` is the step's
/// wall time (the divisor of every rate).
pub fn summarize(load: Load, records: &[Record], elapsed_secs: f64, slo: &Slo) -> StepStats {
    let requests = records.len() as u64;
    let ok_records: Vec<&Record> = records.iter().filter(|r| r.ok()).collect();
    let ok = ok_records.len() as u64;
    let rate_limited = records.iter().filter(|r| r.status == Some(429)).count() as u64;
    let good = records.iter().filter(|r| slo.met_by(r)).count() as u64;
    let per_sec = |n: f64| {
        if elapsed_secs > 0.0 {
            n / elapsed_secs
        } else {
            0.0
        }
    };
    let share = |n: u64| {
        if requests > 0 {
            n as f64 / requests as f64
        } else {
            0.0
        }
    };
    let output_tokens: u64 = ok_records.iter().map(|r| r.output_tokens).sum();
    StepStats {
        load,
        requests,
        ok,
        errors: requests - ok,
        rate_limited,
        error_rate: share(requests - ok),
        rate_limited_rate: share(rate_limited),
        elapsed_secs,
        requests_per_sec: per_sec(requests as f64),
        output_tokens_per_sec: per_sec(output_tokens as f64),
        goodput_per_sec: per_sec(good as f64),
        goodput_share: share(good),
        ttft_ms: Latency::of(ok_records.iter().filter_map(|r| r.ttft_ms).collect()),
        e2e_ms: Latency::of(ok_records.iter().map(|r| r.e2e_ms).collect()),
        itl_ms: Latency::of(ok_records.iter().filter_map(|r| r.itl_ms).collect()),
        queued_ms_mean: if requests > 0 {
            records.iter().map(|r| r.queued_ms).sum::<f64>() / requests as f64
        } else {
            0.0
        },
        prompt_tokens: TokenCount::of(ok_records.iter().map(|r| r.prompt_tokens)),
        output_tokens: TokenCount::of(ok_records.iter().map(|r| r.output_tokens)),
    }
}

/// The gap before the next arrival of a Poisson process at `rate` per
/// second: exponentially distributed with mean 1/rate, by inverse transform.
pub fn poisson_gap(rate: f64, rng: &mut impl Rng) -> f64 {
    // 1 - u is in (0, 1], so the log is finite.
    let u: f64 = rng.random();
    -(1.0 - u).ln() / rate
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn rec(e2e: f64, ttft: f64, status: u16) -> Record {
        Record {
            e2e_ms: e2e,
            ttft_ms: Some(ttft),
            output_tokens: 10,
            status: Some(status),
            error: (status != 200).then(|| format!("HTTP {status}")),
            ..Record::default()
        }
    }

    #[test]
    fn percentiles_interpolate_between_ranks() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.0), 1.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert!((percentile(&v, 50.0) - 50.5).abs() < 1e-9);
        assert!((percentile(&v, 99.0) - 99.01).abs() < 1e-9);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
        assert!(percentile(&[], 50.0).is_nan());
        let l = Latency::of(vec![3.0, 1.0, 2.0]).unwrap();
        assert_eq!((l.p50, l.mean, l.samples), (2.0, 2.0, 3));
        assert!(Latency::of(vec![]).is_none());
    }

    #[test]
    fn summary_counts_errors_429s_and_goodput() {
        let records = vec![
            rec(100.0, 10.0, 200),
            rec(300.0, 50.0, 200), // misses the e2e SLO
            rec(150.0, 90.0, 200), // misses the TTFT SLO
            rec(5.0, 1.0, 429),    // fast, but an error
        ];
        let slo = Slo {
            ttft_ms: Some(60.0),
            e2e_ms: Some(200.0),
        };
        let s = summarize(Load::Concurrency(4), &records, 2.0, &slo);
        assert_eq!((s.requests, s.ok, s.errors, s.rate_limited), (4, 3, 1, 1));
        assert_eq!(s.requests_per_sec, 2.0);
        assert_eq!(s.output_tokens_per_sec, 15.0); // 3 ok × 10 tokens / 2 s
        assert_eq!(s.goodput_per_sec, 0.5);
        assert_eq!(s.goodput_share, 0.25);
        assert_eq!(s.rate_limited_rate, 0.25);
        // Latencies are over successful requests only.
        assert_eq!(s.e2e_ms.unwrap().p50, 150.0);
        // No SLO: every successful request is good.
        let s = summarize(Load::Rate(5.0), &records, 2.0, &Slo::default());
        assert_eq!(s.goodput_share, 0.75);
        assert_eq!(Load::Rate(5.0).label(), "5 rps");
        // What the server counted, over successful requests.
        let t = s.output_tokens.unwrap();
        assert_eq!((t.min, t.max, t.range()), (10, 10, "10".to_string()));
        let t = TokenCount::of([117, 120, 118]).unwrap();
        assert_eq!((t.range(), t.mean), ("117–120".to_string(), 355.0 / 3.0));
        assert!(TokenCount::of([]).is_none());
    }

    #[test]
    fn poisson_gaps_average_one_over_the_rate() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let n = 200_000;
        let rate = 20.0;
        let gaps: Vec<f64> = (0..n).map(|_| poisson_gap(rate, &mut rng)).collect();
        let mean = gaps.iter().sum::<f64>() / n as f64;
        assert!((mean - 1.0 / rate).abs() < 0.01 / rate, "mean gap {mean}");
        assert!(gaps.iter().all(|g| g.is_finite() && *g >= 0.0));
        // Exponential: the standard deviation equals the mean.
        let var = gaps.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / n as f64;
        assert!((var.sqrt() - mean).abs() < 0.02 * mean);
    }
}
