//! Token estimates, for rate limiting (TPM) and dry runs before any reply
//! tells the real count. The same function counts tokens in the simulator, so
//! that estimates and "billed" usage agree there; against real providers it is
//! a documented approximation (about four bytes of English per token, the
//! figure OpenAI and Anthropic both quote).

/// Bytes of UTF-8 text per estimated token.
pub const BYTES_PER_TOKEN: usize = 4;

/// Estimated tokens in `text`: one per four bytes, rounded up.
pub fn estimate(text: &str) -> u64 {
    text.len().div_ceil(BYTES_PER_TOKEN) as u64
}

#[cfg(test)]
mod tests {
    #[test]
    fn four_bytes_per_token_rounded_up() {
        assert_eq!(super::estimate(""), 0);
        assert_eq!(super::estimate("abcd"), 1);
        assert_eq!(super::estimate("abcde"), 2);
    }
}
