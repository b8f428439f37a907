//! Token usage normalised to one meaning whatever the provider's shape.
//! The wire's reply and stream parsers produce it; the data path stores it
//! per row and the spend meter prices it, so it lives here, under both.

use serde::{Deserialize, Serialize};

use crate::provider::wire::WireUsage;

/// Token usage normalised to one meaning whatever the provider's shape:
/// - `prompt_tokens` counts every input token: uncached, read from the cache
///   and written to it (OpenAI's meaning; Anthropic's additive
///   `input_tokens + cache_read_input_tokens + cache_creation_input_tokens`
///   is summed into it);
/// - `cached_tokens` is the part read from a prompt cache, `cache_write_tokens`
///   the part written to one (billed at a premium by Anthropic);
/// - `completion_tokens` counts every output token, `reasoning_tokens` the
///   part spent thinking (already inside `completion_tokens`).
///
/// New fields default to 0 so journals of older runs still load.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub total_tokens: i64,
    pub cached_tokens: i64,
    #[serde(default)]
    pub cache_write_tokens: i64,
    #[serde(default)]
    pub reasoning_tokens: i64,
}

impl Usage {
    pub fn from_wire(w: &WireUsage) -> Usage {
        let details = w.prompt_tokens_details.as_ref();
        let cached = details
            .and_then(|d| d.cached_tokens)
            .or(w.cache_read_input_tokens)
            .unwrap_or(0);
        let written = details
            .and_then(|d| d.cache_write_tokens)
            .or(w.cache_creation_input_tokens)
            .unwrap_or(0);
        // OpenAI's `prompt_tokens` already includes cached tokens; Anthropic's
        // `input_tokens` excludes cache reads and writes, so they are added.
        let prompt = match (w.prompt_tokens, w.input_tokens) {
            (Some(p), _) => p,
            (None, Some(input)) => input + cached + written,
            (None, None) => 0,
        };
        let completion = w.completion_tokens.or(w.output_tokens).unwrap_or(0);
        let reasoning = w
            .completion_tokens_details
            .as_ref()
            .and_then(|d| d.reasoning_tokens)
            .unwrap_or(0);
        Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: w.total_tokens.unwrap_or(prompt + completion),
            cached_tokens: cached,
            cache_write_tokens: written,
            reasoning_tokens: reasoning,
        }
    }

    pub fn add(&mut self, other: &Usage) {
        self.prompt_tokens += other.prompt_tokens;
        self.completion_tokens += other.completion_tokens;
        self.total_tokens += other.total_tokens;
        self.cached_tokens += other.cached_tokens;
        self.cache_write_tokens += other.cache_write_tokens;
        self.reasoning_tokens += other.reasoning_tokens;
    }

    /// Every field as a mutable reference, in column order: lets code that
    /// treats the counts alike (splitting a call's usage over its rows)
    /// not name each one.
    pub fn fields_mut(&mut self) -> [&mut i64; 6] {
        [
            &mut self.prompt_tokens,
            &mut self.completion_tokens,
            &mut self.total_tokens,
            &mut self.cached_tokens,
            &mut self.cache_write_tokens,
            &mut self.reasoning_tokens,
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::wire::PromptTokensDetails;

    #[test]
    fn usage_reads_openai_and_anthropic_cache_fields() {
        let openai = WireUsage {
            prompt_tokens: Some(1200),
            completion_tokens: Some(10),
            total_tokens: Some(1210),
            prompt_tokens_details: Some(PromptTokensDetails {
                cached_tokens: Some(1024),
                cache_write_tokens: None,
            }),
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

    #[test]
    fn usage_maps_both_shapes_to_one_meaning() {
        // OpenAI: prompt_tokens includes the cached part; details break it down.
        let openai: WireUsage = serde_json::from_value(serde_json::json!({
            "prompt_tokens": 2000, "completion_tokens": 300, "total_tokens": 2300,
            "prompt_tokens_details": {"cached_tokens": 1024, "cache_write_tokens": 512},
            "completion_tokens_details": {"reasoning_tokens": 200}
        }))
        .unwrap();
        let u = Usage::from_wire(&openai);
        assert_eq!(
            u,
            Usage {
                prompt_tokens: 2000,
                completion_tokens: 300,
                total_tokens: 2300,
                cached_tokens: 1024,
                cache_write_tokens: 512,
                reasoning_tokens: 200
            }
        );
        // Anthropic: input_tokens excludes cache reads and writes (additive).
        let anthropic: WireUsage = serde_json::from_value(serde_json::json!({
            "input_tokens": 464, "output_tokens": 300,
            "cache_read_input_tokens": 1024, "cache_creation_input_tokens": 512
        }))
        .unwrap();
        let a = Usage::from_wire(&anthropic);
        assert_eq!(
            a,
            Usage {
                reasoning_tokens: 0,
                ..u
            }
        );
    }
}
