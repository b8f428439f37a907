//! What one row's call produced: the typed result or an error, with usage,
//! latency and attempts. Outcomes are what the journal stores and what the
//! sink turns into output columns, so they are plain serialisable records.

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use crate::provider::usage::Usage;

/// A row's position in the input (0-based), the key of everything per-row.
pub type RowId = u64;

/// The outcome of one row. `result` holds the value in the shape of the
/// job's result type (a JSON string for `STRING`, a list of numbers for an
/// embedding, an object for a `STRUCT`), or null.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    pub row: RowId,
    #[serde(default)]
    pub result: Value,
    #[serde(default)]
    pub error_message: Option<String>,
    #[serde(default)]
    pub finish_reason: Option<String>,
    #[serde(default)]
    pub usage: Usage,
    #[serde(default)]
    pub latency_ms: Option<i64>,
    /// Time to first token, when the reply was streamed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttft_ms: Option<i64>,
    #[serde(default)]
    pub attempts: u32,
    /// Attempts that timed out after the request was sent and so may have
    /// been billed without an answer (see `--max-ambiguous-retries`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub ambiguous_attempts: u32,
    /// Times a typed reply that was cut off or did not fit was asked again
    /// (`--max-repairs`); their attempts and usage are in `attempts` and
    /// `usage`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub repairs: u32,
    /// What the outcome answers: the request hash
    /// ([`crate::pipeline::call_journal::row_keys`]) of the call that
    /// answered the row (none for a row not sent). A resume takes a
    /// journaled outcome only for a row whose request, rendered from the
    /// input as it is now, hashes the same.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The request fingerprint of the row's answer
    /// ([`crate::pipeline::fingerprint`]): the same for every row that asks
    /// the same request, at the same price; none for a row without an
    /// answer (not sent, or failed), so that a stored row with one always
    /// holds its request's answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// Answered by another row's call with the same request
    /// ([`crate::pipeline::dedup`]): this row paid nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared: Option<Shared>,
    /// A hash of the row's input values ([`crate::pipeline::recheck::row_hashes`]),
    /// by which a resume tells whether a finished part's row is still the
    /// input's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_hash: Option<u64>,
    /// Not sent on purpose (its prompt rendered empty): `error_message`
    /// says why, but the row did not fail.
    #[serde(default, skip_serializing_if = "is_false")]
    pub skipped: bool,
    /// Failed during the outage that stopped the job early (rows failing
    /// in a row): not final, a resume sends it again. The journal marks a
    /// row so with a second line carrying no usage, as its first line
    /// already counted it.
    #[serde(default, skip_serializing_if = "is_false")]
    pub unsettled: bool,
}

/// Where a shared answer came from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Shared {
    /// The row whose call answered (and paid).
    pub from: RowId,
    /// What that call's answer was billed: what this row would have cost.
    pub usage: Usage,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl Outcome {
    /// A row that was not sent because a template variable was null.
    pub fn null_input(row: RowId) -> Outcome {
        Outcome {
            row,
            ..Outcome::default()
        }
    }

    /// A row not sent on purpose, and why (it shows in `error_message`).
    pub fn skipped(row: RowId, reason: String) -> Outcome {
        Outcome {
            row,
            error_message: Some(reason),
            skipped: true,
            ..Outcome::default()
        }
    }

    pub fn failed(row: RowId, message: String, attempts: u32) -> Outcome {
        Outcome {
            row,
            error_message: Some(message),
            attempts,
            ..Outcome::default()
        }
    }

    /// The row failed (a skipped row has a message but did not fail).
    pub fn is_error(&self) -> bool {
        self.error_message.is_some() && !self.skipped
    }

    /// This failed outcome, marked as not final (see [`Outcome::unsettled`]),
    /// for a second journal line: its usage is left out, the first line
    /// counted it.
    pub fn marked_unsettled(&self) -> Outcome {
        Outcome {
            unsettled: true,
            usage: Usage::default(),
            ambiguous_attempts: 0,
            ..self.clone()
        }
    }

    /// The provider may have billed this row more than once: an attempt
    /// timed out after its request was sent, and another attempt was billed
    /// too (the one that answered, or a second ambiguous one).
    pub fn maybe_billed_twice(&self) -> bool {
        let answered = u32::from(!self.is_error() && self.attempts > 0);
        self.ambiguous_attempts + answered >= 2
    }

    /// Usage the row may have been billed for: what the reply reported, and
    /// as much again for each attempt that timed out after sending (the same
    /// request, so about the same bill). An upper bound, used for budgets and
    /// the `cost` column so that they never undercount.
    pub fn billed_usage(&self) -> Usage {
        let mut u = self.usage;
        let times = 1 + i64::from(self.ambiguous_attempts);
        for f in u.fields_mut() {
            *f *= times;
        }
        u
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn billed_usage_counts_ambiguous_attempts() {
        let usage = Usage {
            prompt_tokens: 10,
            completion_tokens: 5,
            total_tokens: 15,
            ..Default::default()
        };
        let o = Outcome {
            row: 0,
            attempts: 2,
            ambiguous_attempts: 1,
            usage,
            ..Default::default()
        };
        assert!(o.maybe_billed_twice());
        assert_eq!(o.billed_usage().total_tokens, 30);
        let once = Outcome {
            ambiguous_attempts: 0,
            ..o.clone()
        };
        assert!(!once.maybe_billed_twice());
        let failed = Outcome {
            error_message: Some("timed out".into()),
            ambiguous_attempts: 1,
            ..o
        };
        assert!(
            !failed.maybe_billed_twice(),
            "one ambiguous attempt, no answer: billed at most once"
        );
        // Journals written before these fields existed still load.
        let old: Outcome = serde_json::from_str(r#"{"row":1,"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3,"cached_tokens":0}}"#).unwrap();
        assert_eq!(old.usage.total_tokens, 3);
    }
}
