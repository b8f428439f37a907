//! What one row's call produced: the typed result or an error, with usage,
//! latency and attempts. Outcomes are what the journal stores and what the
//! sink turns into output columns, so they are plain serialisable records.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::wire::WireUsage;

/// A row's position in the input (0-based), the key of everything per-row.
pub type RowId = u64;

/// Token usage normalised to one meaning whatever the provider's shape:
/// `prompt_tokens` counts every input token, cached or not (OpenAI's meaning;
/// Anthropic's additive `input_tokens + cache_read + cache_creation` is mapped
/// onto it by the provider), `cached_tokens` is the part read from a cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub total_tokens: i64,
    pub cached_tokens: i64,
}

impl Usage {
    pub fn from_wire(w: &WireUsage) -> Usage {
        let prompt = w.prompt_tokens.unwrap_or(0);
        let completion = w.completion_tokens.unwrap_or(0);
        let cached = w
            .prompt_tokens_details
            .as_ref()
            .and_then(|d| d.cached_tokens)
            .or(w.cache_read_input_tokens)
            .unwrap_or(0);
        Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: w.total_tokens.unwrap_or(prompt + completion),
            cached_tokens: cached,
        }
    }

    pub fn add(&mut self, other: &Usage) {
        self.prompt_tokens += other.prompt_tokens;
        self.completion_tokens += other.completion_tokens;
        self.total_tokens += other.total_tokens;
        self.cached_tokens += other.cached_tokens;
    }
}

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
}

impl Outcome {
    /// A row that was not sent because a template variable was null.
    pub fn null_input(row: RowId) -> Outcome {
        Outcome { row, ..Outcome::default() }
    }

    pub fn failed(row: RowId, message: String, attempts: u32) -> Outcome {
        Outcome { row, error_message: Some(message), attempts, ..Outcome::default() }
    }

    pub fn is_error(&self) -> bool {
        self.error_message.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::PromptTokensDetails;

    #[test]
    fn usage_reads_openai_and_anthropic_cache_fields() {
        let openai = WireUsage {
            prompt_tokens: Some(1200),
            completion_tokens: Some(10),
            total_tokens: Some(1210),
            prompt_tokens_details: Some(PromptTokensDetails { cached_tokens: Some(1024), cache_write_tokens: None }),
            ..Default::default()
        };
        assert_eq!(Usage::from_wire(&openai).cached_tokens, 1024);
        let anthropic = WireUsage {
            prompt_tokens: Some(900),
            completion_tokens: Some(5),
            cache_read_input_tokens: Some(512),
            ..Default::default()
        };
        let u = Usage::from_wire(&anthropic);
        assert_eq!((u.cached_tokens, u.total_tokens), (512, 905));
        assert_eq!(Usage::from_wire(&WireUsage::default()), Usage::default());
    }
}
