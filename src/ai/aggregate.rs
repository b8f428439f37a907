//! AI aggregates (`ai_agg`, `ai_summarize_agg`): one answer over many
//! values, map-reduced so that no request is larger than the model's
//! context.
//!
//! This module owns the prompts and the arithmetic: how much of a request
//! the values may take ([`Budget`]), how values are cut into chunks
//! ([`chunks`]) and how many calls a group costs at most ([`max_calls`]).
//! The caller sends the chunks with [`Budget::map_prompt`], then combines
//! the partial answers with [`Budget::reduce_prompt`], chunked the same way,
//! until one answer remains. Chunking depends only on the values and their
//! order (the caller sorts them), so a re-run sends the same requests and
//! is answered from the call journal.
//!
//! Sizes are [`crate::ai::tokens::estimate`]s. A server that counts more
//! tokens and refuses a chunk (`context_length_exceeded`) gets it again in
//! two halves ([`split`]).

use crate::ai::tokens::estimate;

/// The context window assumed when none is given (`--context-tokens`).
pub const DEFAULT_CONTEXT_TOKENS: u64 = 8192;

/// Between two values in one request.
pub const SEPARATOR: &str = "\n\n---\n\n";

/// Tokens allowed for a message's framing (role, special tokens).
const FRAMING_TOKENS: u64 = 16;

/// The instruction `ai_summarize_agg` gives.
pub const SUMMARIZE_INSTRUCTION: &str =
    "Summarize these texts together in one concise paragraph: the main points they share and where they differ.";

/// How one aggregate's requests are sized.
#[derive(Debug, Clone, PartialEq)]
pub struct Budget {
    pub context_tokens: u64,
    /// `max_tokens` of every request: an answer, partial or final, is at
    /// most this long, so partial answers always combine in fewer calls.
    pub answer_tokens: u64,
    pub instruction: String,
}

impl Budget {
    /// Answers get a quarter of the context, at most 1,024 tokens.
    pub fn new(context_tokens: u64, instruction: &str) -> Result<Budget, String> {
        let b = Budget {
            context_tokens,
            answer_tokens: (context_tokens / 4).min(1024),
            instruction: instruction.trim().to_string(),
        };
        if b.instruction.is_empty() {
            return Err("the instruction is empty".into());
        }
        // Two partial answers must fit in one request, or combining them
        // would never end.
        let need = 2 * (b.answer_tokens + estimate(SEPARATOR));
        if b.values_tokens(false) < need {
            return Err(format!(
                "--context-tokens {context_tokens} is too small for this instruction: \
                 a request needs room for the instruction and two answers of {} tokens",
                b.answer_tokens
            ));
        }
        Ok(b)
    }

    /// The system prompt of a request over original values.
    pub fn map_prompt(&self) -> String {
        format!(
            "The user message holds several records, separated by lines with ---.\n\
             Task: {}\n\
             Answer over all of these records together, as one answer. Output only the answer.",
            self.instruction
        )
    }

    /// The system prompt of a request that combines partial answers.
    pub fn reduce_prompt(&self) -> String {
        format!(
            "The user message holds partial answers, separated by lines with ---; each answers \
             the task below over a different part of the same records.\n\
             Task: {}\n\
             Combine them into one answer over all the records. Output only the answer.",
            self.instruction
        )
    }

    /// Tokens the values of one request may take: the context less the
    /// answer, the system prompt and the framing.
    pub fn values_tokens(&self, reduce: bool) -> u64 {
        let system = if reduce {
            self.reduce_prompt()
        } else {
            self.map_prompt()
        };
        self.context_tokens
            .saturating_sub(self.answer_tokens + estimate(&system) + 2 * FRAMING_TOKENS)
    }
}

/// Values packed in order into chunks of at most `budget` tokens (with
/// separators); a value larger than `budget` is cut into pieces of it.
pub fn chunks(values: &[String], budget: u64) -> Vec<Vec<String>> {
    let sep = estimate(SEPARATOR);
    let mut out: Vec<Vec<String>> = Vec::new();
    let mut current: Vec<String> = Vec::new();
    let mut used = 0u64;
    for value in values {
        for piece in pieces(value, budget) {
            let t = estimate(&piece);
            let extra = if current.is_empty() { t } else { t + sep };
            if !current.is_empty() && used + extra > budget {
                out.push(std::mem::take(&mut current));
                used = 0;
            }
            used += if current.is_empty() { t } else { t + sep };
            current.push(piece);
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// The user message of one chunk.
pub fn render(chunk: &[String]) -> String {
    chunk.join(SEPARATOR)
}

/// A chunk the server refused as too long, in two: by values, or a lone
/// value by text. None when it cannot get smaller.
pub fn split(chunk: &[String]) -> Option<(Vec<String>, Vec<String>)> {
    match chunk {
        [] => None,
        [one] => {
            let mid = half(one)?;
            Some((vec![one[..mid].to_string()], vec![one[mid..].to_string()]))
        }
        many => {
            let (a, b) = many.split_at(many.len() / 2);
            Some((a.to_vec(), b.to_vec()))
        }
    }
}

/// A char boundary near the middle of `s`, or None for a text too short
/// to be worth cutting.
fn half(s: &str) -> Option<usize> {
    if s.len() < 8 {
        return None;
    }
    let mut mid = s.len() / 2;
    while !s.is_char_boundary(mid) {
        mid += 1;
    }
    Some(mid)
}

/// `value` cut into pieces of at most `budget` tokens.
fn pieces(value: &str, budget: u64) -> Vec<String> {
    let max_bytes = (budget.max(1) as usize) * crate::ai::tokens::BYTES_PER_TOKEN;
    if value.len() <= max_bytes {
        return vec![value.to_string()];
    }
    let mut out = Vec::new();
    let mut rest = value;
    while !rest.is_empty() {
        let mut end = max_bytes.min(rest.len());
        while !rest.is_char_boundary(end) {
            end -= 1;
        }
        if end == 0 {
            // One character wider than the budget: take it whole.
            end = rest.chars().next().map_or(rest.len(), char::len_utf8);
        }
        out.push(rest[..end].to_string());
        rest = &rest[end..];
    }
    out
}

/// The most calls one group of `values` can take: its chunks, then every
/// level of combining as if each answer were `answer_tokens` long.
pub fn max_calls(values: &[String], b: &Budget) -> u64 {
    if values.is_empty() {
        return 0;
    }
    let mut calls = chunks(values, b.values_tokens(false)).len() as u64;
    let mut partials = calls;
    let per_chunk = (b.values_tokens(true) + estimate(SEPARATOR))
        / (b.answer_tokens + estimate(SEPARATOR)).max(1);
    let per_chunk = per_chunk.max(2);
    while partials > 1 {
        partials = partials.div_ceil(per_chunk);
        calls += partials;
    }
    calls
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, len: usize) -> Vec<String> {
        (0..n)
            .map(|i| format!("{i:04}{}", "x".repeat(len - 4)))
            .collect()
    }

    #[test]
    fn chunks_fit_the_budget_and_keep_every_value_in_order() {
        let v = values(50, 40); // 10 tokens each
        let c = chunks(&v, 100);
        assert!(c.len() > 1);
        for chunk in &c {
            assert!(
                estimate(&render(chunk)) <= 100,
                "{}",
                estimate(&render(chunk))
            );
        }
        let flat: Vec<String> = c.concat();
        assert_eq!(flat, v);
        // Deterministic: the same values give the same chunks.
        assert_eq!(chunks(&v, 100), c);
    }

    #[test]
    fn a_value_larger_than_the_budget_is_cut() {
        let big = "é".repeat(500); // 1,000 bytes, 250 tokens
        let c = chunks(&[big.clone()], 60);
        assert!(c.len() >= 5);
        assert!(c.iter().all(|ch| estimate(&render(ch)) <= 60));
        assert_eq!(c.concat().concat(), big);
    }

    #[test]
    fn split_halves_by_values_then_by_text() {
        let (a, b) = split(&["a".into(), "b".into(), "c".into()]).unwrap();
        assert_eq!((a.len(), b.len()), (1, 2));
        let (a, b) = split(&["abcdefghij".into()]).unwrap();
        assert_eq!(a[0].clone() + &b[0], "abcdefghij");
        assert_eq!(split(&["abc".into()]), None);
    }

    #[test]
    fn budgets_leave_room_for_answers_and_count_calls() {
        let b = Budget::new(8192, "list the complaints").unwrap();
        assert_eq!(b.answer_tokens, 1024);
        assert!(b.values_tokens(false) > 6000);
        assert!(Budget::new(200, "x").unwrap_err().contains("too small"));
        assert!(Budget::new(8192, " ").is_err());
        assert_eq!(max_calls(&[], &b), 0);
        assert_eq!(max_calls(&values(3, 40), &b), 1);
        let small = Budget::new(600, "x").unwrap();
        let v = values(100, 40);
        let map = chunks(&v, small.values_tokens(false)).len() as u64;
        assert!(max_calls(&v, &small) > map, "{map}");
    }
}
