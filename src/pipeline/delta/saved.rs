//! What a merge's table saved: the calls it did not make.

use std::sync::atomic::{AtomicU64, Ordering};

/// The calls a merge did not make because the table held their answer:
/// how many, and the tokens they cost when they were made.
#[derive(Debug, Default)]
pub struct Saved {
    pub rows: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub completion_tokens: AtomicU64,
    /// Input rows not sent because a later row has their key (a merge
    /// keeps the last row of each key).
    pub replaced: AtomicU64,
}

impl Saved {
    pub fn add(&self, prompt_tokens: u64, completion_tokens: u64) {
        self.rows.fetch_add(1, Ordering::Relaxed);
        self.prompt_tokens
            .fetch_add(prompt_tokens, Ordering::Relaxed);
        self.completion_tokens
            .fetch_add(completion_tokens, Ordering::Relaxed);
    }

    pub fn add_replaced(&self) {
        self.replaced.fetch_add(1, Ordering::Relaxed);
    }

    pub fn replaced(&self) -> u64 {
        self.replaced.load(Ordering::Relaxed)
    }

    /// Counts and would-be cost for the summary.
    pub fn tally(&self) -> (u64, u64, u64) {
        (
            self.rows.load(Ordering::Relaxed),
            self.prompt_tokens.load(Ordering::Relaxed),
            self.completion_tokens.load(Ordering::Relaxed),
        )
    }
}
