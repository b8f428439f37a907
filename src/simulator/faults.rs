//! Fault injection: which requests fail, and how.
//!
//! Faults are drawn from a seeded RNG so a run is repeatable for a given
//! arrival order. `fail_first` makes the first N authorised requests fail
//! with 500, the "fail the first N, then assert all delivered" pattern.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::answer::Spoil;

/// One kind of injected failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Answer with this HTTP status and an error body.
    Status(u16),
    /// Drop the connection before the call is answered.
    Reset,
    /// Sleep `slow_ms` before answering normally.
    Slow,
    /// 200 with a proxy's HTML error page.
    Html,
    /// 200 with a JSON reply cut short.
    Truncated,
    /// 200 with `{"error": {"message": ..}}` (no status named).
    Error200,
    /// The call runs to the end (counted, usage charged), then its 200
    /// reply breaks off halfway: an answer the provider bills but the
    /// client never reads whole.
    CutAfter,
    /// 429 with `Retry-After: 1`, at random, whatever the load: a refusal
    /// no slower pace would have avoided (a gateway's own quota, a shared
    /// backend), which a client must not take for its rate limit.
    RandomLimit,
}

impl Fault {
    fn parse(name: &str) -> Result<Fault, String> {
        match name.trim() {
            "500" => Ok(Fault::Status(500)),
            "502" => Ok(Fault::Status(502)),
            "503" => Ok(Fault::Status(503)),
            // Anthropic's overloaded_error.
            "529" => Ok(Fault::Status(529)),
            "reset" => Ok(Fault::Reset),
            "slow" => Ok(Fault::Slow),
            "html" => Ok(Fault::Html),
            "truncated" => Ok(Fault::Truncated),
            "error200" => Ok(Fault::Error200),
            "cut" => Ok(Fault::CutAfter),
            "429" => Ok(Fault::RandomLimit),
            other => Err(format!("unknown fault {other:?} in --faults (use a comma list of 500, 502, 503, 529, 429, reset, slow, html, truncated, error200, cut)")),
        }
    }
}

/// Decides, request by request, whether to inject a fault.
#[derive(Debug)]
pub struct Faults {
    rate: f64,
    kinds: Vec<Fault>,
    fail_first: u64,
    seen: AtomicU64,
    rng: Mutex<StdRng>,
}

impl Faults {
    /// Checks the settings: `rate` in 0..=1 and known fault names.
    pub fn new(rate: f64, list: &str, fail_first: u64, seed: u64) -> Result<Faults, String> {
        if !(0.0..=1.0).contains(&rate) {
            return Err(format!("--fault-rate must be between 0 and 1, got {rate}"));
        }
        let kinds = list
            .split(',')
            .filter(|s| !s.trim().is_empty())
            .map(Fault::parse)
            .collect::<Result<Vec<_>, _>>()?;
        if rate > 0.0 && kinds.is_empty() {
            return Err("--fault-rate is set but --faults names no fault".to_string());
        }
        Ok(Faults {
            rate,
            kinds,
            fail_first,
            seen: AtomicU64::new(0),
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
        })
    }

    /// The fault for the next authorised request, if any.
    pub fn draw(&self) -> Option<Fault> {
        if self.seen.fetch_add(1, Ordering::Relaxed) < self.fail_first {
            return Some(Fault::Status(500));
        }
        if self.rate <= 0.0 || self.kinds.is_empty() {
            return None;
        }
        let mut rng = self.rng.lock().unwrap_or_else(|e| e.into_inner());
        if rng.random::<f64>() >= self.rate {
            return None;
        }
        Some(self.kinds[rng.random_range(0..self.kinds.len())])
    }
}

/// Decides which typed (structured-output) replies to spoil: the first
/// `truncate_first` cut off, the next `mismatch_first` not matching their
/// schema, then each at random with its rate (seeded).
#[derive(Debug)]
pub struct TypedFaults {
    truncate: (f64, u64),
    mismatch: (f64, u64),
    seen: AtomicU64,
    rng: Mutex<StdRng>,
}

impl TypedFaults {
    /// `truncate` and `mismatch` are (rate, first N); rates in 0..=1.
    pub fn new(
        truncate: (f64, u64),
        mismatch: (f64, u64),
        seed: u64,
    ) -> Result<TypedFaults, String> {
        for (flag, rate) in [
            ("--truncate-rate", truncate.0),
            ("--mismatch-rate", mismatch.0),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                return Err(format!("{flag} must be between 0 and 1, got {rate}"));
            }
        }
        Ok(TypedFaults {
            truncate,
            mismatch,
            seen: AtomicU64::new(0),
            rng: Mutex::new(StdRng::seed_from_u64(seed ^ 0x7e5d)),
        })
    }

    /// How to spoil the next typed reply, if at all.
    pub fn draw(&self) -> Option<Spoil> {
        let n = self.seen.fetch_add(1, Ordering::Relaxed);
        if n < self.truncate.1 {
            return Some(Spoil::Truncate);
        }
        if n < self.truncate.1.saturating_add(self.mismatch.1) {
            return Some(Spoil::Mismatch);
        }
        if self.truncate.0 <= 0.0 && self.mismatch.0 <= 0.0 {
            return None;
        }
        let x = self
            .rng
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .random::<f64>();
        if x < self.truncate.0 {
            Some(Spoil::Truncate)
        } else if x < self.truncate.0 + self.mismatch.0 {
            Some(Spoil::Mismatch)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fail_first_then_clean() {
        let f = Faults::new(0.0, "500,502,503,reset,slow", 2, 1).unwrap();
        assert_eq!(f.draw(), Some(Fault::Status(500)));
        assert_eq!(f.draw(), Some(Fault::Status(500)));
        assert_eq!(f.draw(), None);
    }

    #[test]
    fn rate_one_always_faults_and_is_seeded() {
        let a = Faults::new(1.0, "502,reset", 0, 7).unwrap();
        let b = Faults::new(1.0, "502,reset", 0, 7).unwrap();
        let da: Vec<_> = (0..20).map(|_| a.draw()).collect();
        let db: Vec<_> = (0..20).map(|_| b.draw()).collect();
        assert_eq!(da, db);
        assert!(da
            .iter()
            .all(|f| matches!(f, Some(Fault::Status(502)) | Some(Fault::Reset))));
    }

    #[test]
    fn typed_faults_first_n_then_by_rate() {
        let f = TypedFaults::new((0.0, 1), (0.0, 2), 0).unwrap();
        let drawn: Vec<_> = (0..5).map(|_| f.draw()).collect();
        assert_eq!(
            drawn,
            [
                Some(Spoil::Truncate),
                Some(Spoil::Mismatch),
                Some(Spoil::Mismatch),
                None,
                None
            ]
        );
        let all = TypedFaults::new((0.0, 0), (1.0, 0), 0).unwrap();
        assert!((0..10).all(|_| all.draw() == Some(Spoil::Mismatch)));
        assert!(TypedFaults::new((2.0, 0), (0.0, 0), 0).is_err());
    }

    #[test]
    fn bad_settings_are_refused() {
        assert!(Faults::new(1.5, "500", 0, 0).is_err());
        assert!(Faults::new(0.5, "500,teapot", 0, 0).is_err());
    }
}
