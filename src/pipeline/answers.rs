//! Answers kept by request fingerprint: what a row asking a request that
//! was answered before takes instead of paying ([`crate::pipeline::dedup`]).
//! The journal fills one from an earlier run's outcomes on resume, so it
//! lives apart from the dedup state (which holds calls).

use std::collections::{HashMap, VecDeque};

use serde_json::Value;

use crate::pipeline::outcome::{Outcome, RowId, Shared, Usage};

/// Bytes of answers kept for rows yet to come (results and fingerprints,
/// roughly): a million short answers fit.
pub const ANSWER_BYTES: usize = 64 << 20;

/// An answer kept for rows asking the same request later.
#[derive(Debug, Clone)]
pub(crate) struct Answer {
    /// The row that paid for it.
    row: RowId,
    result: Value,
    finish_reason: Option<String>,
    usage: Usage,
}

impl Answer {
    /// The answer `o` holds, paid for by its own row or, for a copy, by
    /// the row it names.
    pub(crate) fn of(o: &Outcome) -> Answer {
        let (row, usage) = match o.shared {
            Some(s) => (s.from, s.usage),
            None => (o.row, o.usage),
        };
        Answer {
            row,
            result: o.result.clone(),
            finish_reason: o.finish_reason.clone(),
            usage,
        }
    }
}

/// Answers by request fingerprint, the oldest forgotten first past `limit`
/// bytes.
#[derive(Debug)]
pub struct Answers {
    /// Each answer with the bytes it is counted for.
    map: HashMap<String, (Answer, usize)>,
    order: VecDeque<String>,
    bytes: usize,
    limit: usize,
}

impl Default for Answers {
    fn default() -> Answers {
        Answers::with_limit(ANSWER_BYTES)
    }
}

impl Answers {
    pub fn with_limit(limit: usize) -> Answers {
        Answers {
            map: HashMap::new(),
            order: VecDeque::new(),
            bytes: 0,
            limit,
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// An answer to the request `fp` is kept.
    pub fn contains(&self, fp: &str) -> bool {
        self.map.contains_key(fp)
    }

    /// Keep the answer `o` carries, if it is one (a successful row with a
    /// fingerprint; a copy counts, as the answer of the row it names). The
    /// first answer of a request stays.
    pub fn offer(&mut self, o: &Outcome) {
        let Some(fp) = o.fingerprint.as_ref() else {
            return;
        };
        if o.is_error() || o.unsettled || o.skipped || self.map.contains_key(fp) {
            return;
        }
        // The key twice (map and queue), the result, and the rest.
        let size = 2 * fp.len() + 96 + serde_json::to_vec(&o.result).map_or(0, |v| v.len());
        self.bytes += size;
        self.order.push_back(fp.clone());
        self.map.insert(fp.clone(), (Answer::of(o), size));
        while self.bytes > self.limit {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            if let Some((_, size)) = self.map.remove(&old) {
                self.bytes = self.bytes.saturating_sub(size);
            }
        }
    }

    /// Row `row`'s outcome from the kept answer to `fp`, if there is one.
    pub(crate) fn copy_for(&self, fp: &str, row: RowId, key: Option<String>) -> Option<Outcome> {
        let (a, _) = self.map.get(fp)?;
        Some(copy(a, fp, row, key))
    }
}

pub(crate) fn copy(a: &Answer, fp: &str, row: RowId, key: Option<String>) -> Outcome {
    Outcome {
        row,
        result: a.result.clone(),
        finish_reason: a.finish_reason.clone(),
        key,
        fingerprint: Some(fp.to_string()),
        shared: Some(Shared {
            from: a.row,
            usage: a.usage,
        }),
        ..Outcome::default()
    }
}

/// A row's successful outcome for the request `fp`, for tests.
#[cfg(test)]
pub(crate) fn answered(row: RowId, fp: &str) -> Outcome {
    Outcome {
        row,
        result: serde_json::json!("yes"),
        attempts: 1,
        usage: Usage {
            prompt_tokens: 10,
            completion_tokens: 2,
            total_tokens: 12,
            ..Usage::default()
        },
        fingerprint: Some(fp.into()),
        ..Outcome::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_answers_are_bounded_oldest_first() {
        let mut a = Answers::with_limit(1000);
        for i in 0..100 {
            a.offer(&answered(i, &format!("fp-{i}")));
        }
        assert!(a.len() < 100 && a.len() > 1, "{}", a.len());
        assert!(a.copy_for("fp-99", 200, None).is_some());
        assert!(a.copy_for("fp-0", 200, None).is_none());
        // A copy keeps the payer's row and usage.
        let mut b = Answers::default();
        let mut copy = answered(5, "x");
        copy.usage = Usage::default();
        copy.shared = Some(Shared {
            from: 2,
            usage: answered(2, "x").usage,
        });
        b.offer(&copy);
        let c = b.copy_for("x", 7, None).unwrap();
        assert_eq!(
            c.shared.map(|s| (s.from, s.usage.total_tokens)),
            Some((2, 12))
        );
    }
}
