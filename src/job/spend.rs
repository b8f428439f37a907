//! Spend: what tokens cost, and when a job must stop spending.
//!
//! Prices are USD per million tokens, given by the user (`--price-in`,
//! `--price-out`, `--price-cached`, `--price-cache-write`): aiq ships no
//! price list, since prices change more often than releases. Only the
//! cache-write surcharge has a default, the provider's documented multiplier
//! of the input price ([`Dialect::cache_write_multiplier`]). With prices known, every output row
//! gets a `cost` and the summary a total.
//!
//! Budgets (`--max-tokens-total`, `--max-cost`) are **per job**, not per
//! run: a re-run of a stopped job starts from what the journal says earlier
//! runs spent, so raising the budget continues the job where it stopped and
//! the sum of all runs stays within the last budget given (plus the
//! requests that were in flight when it was reached). `--restart` discards
//! the journal and with it the count. Spend is counted from the usage the
//! provider reported, with attempts that may have been billed without an
//! answer counted as one more bill of the same size
//! (`Outcome::billed_usage` in the data path, which hands that usage
//! here): budgets err on the side of stopping early.

use serde::Serialize;

use crate::provider::dialect::Dialect;
use crate::provider::usage::Usage;

/// USD per million tokens. Cache reads and cache writes are priced apart
/// from other input (reads at a fraction of the input price at most
/// providers, writes at a premium at Anthropic); unset, they cost as input.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Prices {
    pub input: f64,
    pub output: f64,
    pub cached: Option<f64>,
    pub cache_write: Option<f64>,
}

impl Prices {
    /// These prices for calls to `dialect`: an unset cache-write price
    /// becomes the input price times the provider's documented multiplier.
    pub fn for_provider(mut self, dialect: Dialect) -> Prices {
        self.cache_write
            .get_or_insert(self.input * dialect.cache_write_multiplier());
        self
    }

    /// Cost in USD of `u`: uncached input at the input price, cache reads at
    /// the cached price, cache writes at the cache-write price, output
    /// (reasoning included) at the output price.
    pub fn cost(&self, u: &Usage) -> f64 {
        let prompt = u.prompt_tokens.max(0);
        let cached = u.cached_tokens.clamp(0, prompt);
        let written = u.cache_write_tokens.clamp(0, prompt - cached);
        let uncached = prompt - cached - written;
        (uncached as f64 * self.input
            + cached as f64 * self.cached.unwrap_or(self.input)
            + written as f64 * self.cache_write.unwrap_or(self.input)
            + u.completion_tokens.max(0) as f64 * self.output)
            / 1e6
    }
}

/// Limits on what a job may spend in total, across runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Budget {
    pub max_tokens: Option<u64>,
    pub max_cost: Option<f64>,
}

impl Budget {
    pub fn is_set(&self) -> bool {
        self.max_tokens.is_some() || self.max_cost.is_some()
    }
}

/// Tokens and money spent so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Spent {
    pub tokens: u64,
    /// Null when no prices are known.
    pub cost_usd: Option<f64>,
}

/// Counts spend against a budget as outcomes arrive.
#[derive(Debug, Clone)]
pub struct Meter {
    pub budget: Budget,
    pub prices: Option<Prices>,
    pub spent: Spent,
}

impl Meter {
    /// `before` is what earlier runs of the job spent (from its journal).
    pub fn new(budget: Budget, prices: Option<Prices>, before: &Usage) -> Meter {
        let spent = Spent {
            tokens: before.total_tokens.max(0) as u64,
            cost_usd: prices.map(|p| p.cost(before)),
        };
        Meter {
            budget,
            prices,
            spent,
        }
    }

    /// Count one outcome's possibly billed usage; returns why the budget
    /// is now spent, if it is.
    pub fn record(&mut self, billed: &Usage) -> Option<String> {
        self.spent.tokens += billed.total_tokens.max(0) as u64;
        if let (Some(p), Some(c)) = (self.prices, self.spent.cost_usd.as_mut()) {
            *c += p.cost(billed);
        }
        self.exhausted()
    }

    /// Why the budget is spent, or None while there is room left.
    pub fn exhausted(&self) -> Option<String> {
        if let Some(max) = self.budget.max_tokens {
            if self.spent.tokens >= max {
                return Some(format!(
                    "token budget reached: {} of --max-tokens-total {max} spent",
                    self.spent.tokens
                ));
            }
        }
        if let (Some(max), Some(cost)) = (self.budget.max_cost, self.spent.cost_usd) {
            if cost >= max {
                return Some(format!(
                    "cost budget reached: ${cost:.4} of --max-cost ${max} spent"
                ));
            }
        }
        None
    }
}

/// A budget being enforced during a run, with what is needed to say how
/// far the job got when it stops.
#[derive(Debug, Clone)]
pub struct Enforcer {
    pub meter: Meter,
    /// Rows done in earlier runs and not reloaded (in committed parts).
    pub committed: u64,
    pub total_rows: Option<u64>,
}

impl Enforcer {
    /// Count one paid outcome; true when the budget is now spent.
    pub fn record(&mut self, billed: &Usage) -> bool {
        self.meter.record(billed).is_some()
    }

    /// The error a budget stop ends the job with, once the requests in
    /// flight at the stop are in: `rows` is this run's rows with an
    /// outcome, the count the summary beside it shows. None while the
    /// budget has room.
    pub fn stopped(&self, rows: u64) -> Option<crate::error::Error> {
        let why = self.meter.exhausted()?;
        let done = self.committed + rows;
        let of = self
            .total_rows
            .map(|t| format!(" of {t}"))
            .unwrap_or_default();
        Some(crate::error::Error::Stopped(format!(
            "{why} (requests in flight at the stop finished and are kept); no new requests were sent. \
             {done}{of} rows have an outcome. Run the same command with a higher budget to finish the job: \
             finished rows are not sent or paid for again."
        )))
    }
}

/// The `cost` of one output row: its possibly billed usage at `prices`.
pub fn row_cost(prices: Option<&Prices>, billed: &Usage) -> Option<f64> {
    prices.map(|p| p.cost(billed))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(prompt: i64, cached: i64, completion: i64) -> Usage {
        Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: prompt + completion,
            cached_tokens: cached,
            ..Default::default()
        }
    }

    #[test]
    fn cost_prices_cached_input_apart() {
        let p = Prices {
            input: 3.0,
            output: 15.0,
            cached: Some(0.3),
            cache_write: None,
        };
        let c = p.cost(&usage(1_000_000, 500_000, 100_000));
        assert!((c - (1.5 + 0.15 + 1.5)).abs() < 1e-9, "{c}");
        let no_cached_price = Prices { cached: None, ..p };
        assert!((no_cached_price.cost(&usage(1_000_000, 500_000, 0)) - 3.0).abs() < 1e-9);
    }

    #[test]
    fn cache_writes_cost_the_providers_multiplier_unless_priced() {
        let p = Prices {
            input: 3.0,
            output: 15.0,
            cached: Some(0.3),
            cache_write: None,
        };
        // 1M prompt tokens: 200k read from the cache, 400k written to it.
        let u = Usage {
            cache_write_tokens: 400_000,
            ..usage(1_000_000, 200_000, 0)
        };
        // Anthropic bills 5-minute cache writes at 1.25x input.
        let anthropic = p.for_provider(Dialect::Anthropic).cost(&u);
        assert!((anthropic - (1.2 + 0.06 + 1.5)).abs() < 1e-9, "{anthropic}");
        let openai = p.for_provider(Dialect::OpenAi).cost(&u);
        assert!((openai - (1.2 + 0.06 + 1.2)).abs() < 1e-9, "{openai}");
        // A price given wins over the multiplier.
        let given = Prices {
            cache_write: Some(6.0),
            ..p
        };
        let c = given.for_provider(Dialect::Anthropic).cost(&u);
        assert!((c - (1.2 + 0.06 + 2.4)).abs() < 1e-9, "{c}");
    }

    #[test]
    fn meter_counts_earlier_runs_and_stops_at_the_budget() {
        let prices = Prices {
            input: 1.0,
            output: 1.0,
            cached: None,
            cache_write: None,
        };
        let budget = Budget {
            max_tokens: Some(100),
            max_cost: None,
        };
        let mut m = Meter::new(budget, Some(prices), &usage(50, 0, 10));
        assert_eq!(m.spent.tokens, 60);
        let o = usage(20, 0, 5);
        assert_eq!(m.record(&o), None);
        let stop = m.record(&o).expect("100 reached");
        assert!(stop.contains("110 of --max-tokens-total 100"), "{stop}");
        let money = Budget {
            max_tokens: None,
            max_cost: Some(0.00009),
        };
        let mut m = Meter::new(money, Some(prices), &Usage::default());
        // 25 tokens at $1/M = $0.000025 each time: the fourth passes $0.00009.
        assert_eq!((0..3).filter_map(|_| m.record(&o)).count(), 0);
        assert!(m.record(&o).is_some());
        // Without prices a cost budget can never trigger (plan refuses that combination).
        let mut m = Meter::new(money, None, &Usage::default());
        assert_eq!(m.record(&o), None);
    }
}
