//! The prefix cache: which prompt prefixes the "provider" has seen, so
//! replies can report cached tokens the way OpenAI does.
//!
//! Like OpenAI's automatic caching, the prompt is cut into 128-token blocks
//! (512 bytes under the 4-bytes-per-token rule of [`crate::ai::tokens`]); each
//! block's key is a hash chained over all blocks before it, so a key stands
//! for a whole prefix. A hit needs at least 1024 tokens (8 blocks). Entries
//! are inserted when a request completes, so concurrent first requests all
//! miss, as they do at a real provider. The number of keys is bounded
//! (oldest dropped first) so long benchmarks do not grow memory forever.

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;

use crate::ai::tokens::BYTES_PER_TOKEN;

/// Tokens per cache block.
pub const BLOCK_TOKENS: u64 = 128;
/// Bytes per cache block.
pub const BLOCK_BYTES: usize = BLOCK_TOKENS as usize * BYTES_PER_TOKEN;
/// The shortest prefix that is cached at all.
pub const MIN_CACHED_TOKENS: u64 = 1024;
const MIN_BLOCKS: usize = (MIN_CACHED_TOKENS / BLOCK_TOKENS) as usize;
/// At most this many prefix keys are kept (32 bytes each plus overhead).
const MAX_KEYS: usize = 1 << 20;

pub(crate) type Key = [u8; 32];

/// The chained keys of every whole-block prefix of `text` that is long
/// enough to be cached, shortest first.
pub fn prefix_keys(text: &str) -> Vec<Key> {
    let mut keys = Vec::new();
    let mut prev = [0u8; 32];
    for (i, block) in text.as_bytes().chunks_exact(BLOCK_BYTES).enumerate() {
        let mut h = blake3::Hasher::new();
        h.update(&prev);
        h.update(block);
        prev = *h.finalize().as_bytes();
        if i + 1 >= MIN_BLOCKS {
            keys.push(prev);
        }
    }
    keys
}

/// Tokens covered by the longest cacheable prefix of `keys` (0 if none).
pub fn cacheable_tokens(keys: &[Key]) -> u64 {
    if keys.is_empty() {
        0
    } else {
        (keys.len() + MIN_BLOCKS - 1) as u64 * BLOCK_TOKENS
    }
}

#[derive(Debug, Default)]
struct Inner {
    keys: HashSet<Key>,
    order: VecDeque<Key>,
}

/// The cache of one simulator; a disabled cache never hits.
#[derive(Debug)]
pub struct PrefixCache {
    enabled: bool,
    inner: Mutex<Inner>,
}

impl PrefixCache {
    pub fn new(enabled: bool) -> PrefixCache {
        PrefixCache {
            enabled,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Cached tokens for a prompt with these prefix keys: the longest prefix
    /// present, in whole blocks.
    pub fn lookup(&self, keys: &[Key]) -> u64 {
        if !self.enabled || keys.is_empty() {
            return 0;
        }
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        // Longest first: with eviction a long prefix can outlive a shorter one.
        match keys.iter().rposition(|k| inner.keys.contains(k)) {
            Some(i) => cacheable_tokens(&keys[..=i]),
            None => 0,
        }
    }

    /// Remembers every cacheable prefix of a completed request.
    pub fn insert(&self, keys: &[Key]) {
        if !self.enabled {
            return;
        }
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        for k in keys {
            if inner.keys.insert(*k) {
                inner.order.push_back(*k);
            }
        }
        while inner.order.len() > MAX_KEYS {
            if let Some(old) = inner.order.pop_front() {
                inner.keys.remove(&old);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hits_need_1024_tokens_and_count_whole_blocks() {
        let c = PrefixCache::new(true);
        let short = "a".repeat(BLOCK_BYTES * 7 + 100);
        assert!(prefix_keys(&short).is_empty());
        let long = "b".repeat(BLOCK_BYTES * 9 + 100);
        let keys = prefix_keys(&long);
        assert_eq!(cacheable_tokens(&keys), 9 * BLOCK_TOKENS);
        assert_eq!(c.lookup(&keys), 0);
        c.insert(&keys);
        assert_eq!(c.lookup(&keys), 9 * BLOCK_TOKENS);
        // Same first 8 blocks, different tail: the 8-block prefix hits.
        let other = format!(
            "{}{}",
            &long[..BLOCK_BYTES * 8],
            "c".repeat(BLOCK_BYTES * 3)
        );
        assert_eq!(c.lookup(&prefix_keys(&other)), 8 * BLOCK_TOKENS);
        // A different first block shares nothing.
        let moved = format!("x{long}");
        assert_eq!(c.lookup(&prefix_keys(&moved)), 0);
    }

    #[test]
    fn disabled_cache_never_hits() {
        let c = PrefixCache::new(false);
        let keys = prefix_keys(&"z".repeat(BLOCK_BYTES * 10));
        c.insert(&keys);
        assert_eq!(c.lookup(&keys), 0);
    }
}
