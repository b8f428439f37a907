//! Dedup: identical requests inside one job are sent once.
//!
//! Rows whose requests have the same fingerprint
//! ([`crate::pipeline::fingerprint`]) ask the same thing at the same price.
//! The first of them in input order (the leader) is sent; the others wait
//! for its answer and take a copy, marked shared ([`Outcome::shared`]): no
//! usage, no attempts, and the leader's row named. A row whose request was
//! answered earlier in the job takes the kept answer at once. A leader that
//! fails hands its rows on: the first waiting row is sent in its place (a
//! failure belongs to its row; only answers are shared).
//!
//! Copies are journaled like any outcome, so a resume keeps them. A row
//! still waiting when the job was killed finds its leader's answer on the
//! resume: the journal's answers are kept again when it is loaded
//! ([`crate::pipeline::answers::Answers::offer`]), so a shared row is never paid twice.
//!
//! What is kept is bounded ([`ANSWER_BYTES`]): past the bound the oldest
//! answers are forgotten, and a repeat of one of those is sent again. Only
//! calls for one row take part: an embeddings call carrying several rows
//! (`--batch-size`) is sent as it is. In `--mode batch` the Batch API gets
//! each request once; the rows that repeat one are left to the online
//! stage, which finds its answer kept.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::Notify;

use crate::pipeline::answers::{copy, Answer};
pub use crate::pipeline::answers::{Answers, ANSWER_BYTES};
use crate::pipeline::outcome::Outcome;
use crate::pipeline::render::Call;

/// A row waiting for its leader: its call (sent if the leader fails) and
/// its request key for the journal.
struct Waiter {
    call: Call,
    key: Option<String>,
}

/// What to do with a call about to be sent.
pub enum Claim {
    /// Send it: no other row asks its request (it leads).
    Send(Call),
    /// Its request is in flight for an earlier row: it waits for that answer.
    Wait,
    /// Its request was answered: this is the row's outcome.
    Answered(Outcome),
}

#[derive(Default)]
struct State {
    /// Requests in flight, by fingerprint: the rows waiting for each.
    leading: HashMap<String, Vec<Waiter>>,
    answers: Answers,
    /// Calls of waiting rows whose leader failed, for the dispatcher to send.
    handed_on: Vec<Call>,
}

/// The job's dedup state, shared by the dispatcher (claims) and the calls
/// in flight (settles).
pub struct Dedup {
    state: Mutex<State>,
    /// Told when a leader with waiting rows is settled: the dispatcher may
    /// have calls to send, or nothing left to wait for.
    pub settled: Notify,
}

impl Dedup {
    /// Dedup starting from `answers` (an earlier run's, on resume).
    pub fn new(answers: Answers) -> Dedup {
        Dedup {
            state: Mutex::new(State {
                answers,
                ..State::default()
            }),
            settled: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Claim `call`'s request (fingerprint `fp`, row key `key`) for its
    /// row. Calls must be claimed in input order: the first row leads.
    pub fn claim(&self, call: Call, fp: &str, key: Option<String>) -> Claim {
        let [row] = call.rows[..] else {
            return Claim::Send(call);
        };
        let mut state = self.lock();
        if let Some(o) = state.answers.copy_for(fp, row, key.clone()) {
            return Claim::Answered(o);
        }
        match state.leading.get_mut(fp) {
            Some(waiting) => {
                waiting.push(Waiter { call, key });
                Claim::Wait
            }
            None => {
                state.leading.insert(fp.to_string(), Vec::new());
                Claim::Send(call)
            }
        }
    }

    /// A leader's outcomes are in (`fp` its request): the outcomes of
    /// the rows waiting for it when it answered, and its answer kept. When
    /// it failed, the first waiting row is handed on to be sent in its
    /// place, the others wait for that one.
    pub fn settle(&self, call: &Call, fp: &str, outcomes: &[Outcome]) -> Vec<Outcome> {
        let ([_], [o]) = (&call.rows[..], outcomes) else {
            return Vec::new();
        };
        let mut state = self.lock();
        let waiting = state.leading.remove(fp).unwrap_or_default();
        let had_waiters = !waiting.is_empty();
        let copies = if o.is_error() {
            let mut waiting = waiting.into_iter();
            if let Some(next) = waiting.next() {
                state.leading.insert(fp.to_string(), waiting.collect());
                state.handed_on.push(next.call);
            }
            Vec::new()
        } else {
            state.answers.offer(o);
            let a = Answer::of(o);
            waiting
                .into_iter()
                .map(|w| copy(&a, fp, w.call.rows[0], w.key))
                .collect()
        };
        drop(state);
        if had_waiters {
            self.settled.notify_one();
        }
        copies
    }

    /// The leader of `call` will not answer (the job stops): its waiting
    /// rows stay open, and the dispatcher need not wait for them.
    pub fn abandon(&self, call: &Call, fp: Option<&str>) {
        if let (Some(fp), [_]) = (fp, &call.rows[..]) {
            self.lock().leading.remove(fp);
        }
        self.settled.notify_one();
    }

    /// Calls handed on by failed leaders, to send now.
    pub fn handed_on(&self) -> Vec<Call> {
        std::mem::take(&mut self.lock().handed_on)
    }

    /// Rows are waiting for a leader's answer, or handed on and not yet
    /// taken: the dispatcher must not end.
    pub fn busy(&self) -> bool {
        let state = self.lock();
        !state.handed_on.is_empty() || state.leading.values().any(|w| !w.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::answers::answered;
    use crate::pipeline::outcome::{RowId, Usage};
    use bytes::Bytes;
    use serde_json::json;

    fn call(row: RowId) -> Call {
        Call {
            rows: vec![row],
            body: Bytes::from_static(b"{}"),
            prefix: None,
            est_tokens: 0,
            est_prompt_tokens: 0,
            route: None,
        }
    }

    #[test]
    fn the_first_row_leads_and_the_others_take_its_answer() {
        let d = Dedup::new(Answers::default());
        assert!(matches!(d.claim(call(0), "f", None), Claim::Send(_)));
        assert!(matches!(
            d.claim(call(3), "f", Some("k3".into())),
            Claim::Wait
        ));
        assert!(matches!(d.claim(call(1), "g", None), Claim::Send(_)));
        assert!(d.busy());
        let copies = d.settle(&call(0), "f", &[answered(0, "f")]);
        assert!(!d.busy());
        assert_eq!(copies.len(), 1);
        let c = &copies[0];
        assert_eq!((c.row, &c.result, c.attempts), (3, &json!("yes"), 0));
        assert_eq!(c.usage, Usage::default(), "the copy paid nothing");
        assert_eq!(
            c.shared.map(|s| (s.from, s.usage.total_tokens)),
            Some((0, 12))
        );
        assert_eq!(c.key.as_deref(), Some("k3"));
        // A later row with the same request: answered at once.
        let Claim::Answered(later) = d.claim(call(9), "f", None) else {
            panic!("not answered from the kept answer");
        };
        assert_eq!(later.shared.map(|s| s.from), Some(0));
    }

    #[test]
    fn a_failed_leader_hands_its_rows_on() {
        let d = Dedup::new(Answers::default());
        assert!(matches!(d.claim(call(0), "f", None), Claim::Send(_)));
        assert!(matches!(d.claim(call(1), "f", None), Claim::Wait));
        assert!(matches!(d.claim(call(2), "f", None), Claim::Wait));
        let failed = Outcome {
            error_message: Some("HTTP 500".into()),
            ..answered(0, "f")
        };
        assert!(d.settle(&call(0), "f", &[failed]).is_empty());
        assert!(d.busy());
        let next = d.handed_on();
        assert_eq!(next.iter().map(|c| c.rows[0]).collect::<Vec<_>>(), [1]);
        assert!(d.busy(), "row 2 waits for row 1");
        let copies = d.settle(&next[0], "f", &[answered(1, "f")]);
        assert_eq!(copies.iter().map(|c| c.row).collect::<Vec<_>>(), [2]);
        assert_eq!(copies[0].shared.map(|s| s.from), Some(1));
        assert!(!d.busy());
    }
}
