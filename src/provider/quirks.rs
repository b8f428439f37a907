//! Provider quirks, in one place: how the request body must differ between
//! the servers aiq talks to. `aiq run`, `aiq sql` and `aiq bench` all lay
//! out bodies through [`Quirks::of`], so a new provider difference is taught
//! here once.

use crate::provider::dialect::Dialect;

/// What the body of a request to one endpoint must carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quirks {
    /// OpenAI-compatible servers route by the body's `model`; a Databricks
    /// endpoint is the model, and some refuse a `model` key.
    pub model_in_body: bool,
    /// Claude models cache only up to an explicit `cache_control`
    /// breakpoint, so one is always set for them (and for Nova on
    /// Bedrock, whose `cachePoint` it becomes).
    pub cache_control: bool,
    /// Only OpenAI-compatible servers take `prompt_cache_key`; Databricks
    /// rejects unknown body keys for some models.
    pub prompt_cache_key: bool,
    /// OpenAI reports usage while streaming only when asked to with
    /// `stream_options.include_usage`.
    pub stream_usage_option: bool,
}

impl Quirks {
    /// The quirks of an endpoint of `dialect` serving the model (or
    /// Databricks endpoint) called `name`.
    pub fn of(dialect: Dialect, name: &str) -> Quirks {
        let openai = dialect == Dialect::OpenAi;
        Quirks {
            model_in_body: dialect != Dialect::Databricks,
            // Bedrock caches at a `cachePoint` for Claude and Nova models
            // (the marks become one); others refuse it.
            cache_control: dialect == Dialect::Anthropic
                || name.to_ascii_lowercase().contains("claude")
                || (dialect == Dialect::Bedrock && name.contains("amazon.nova")),
            prompt_cache_key: openai,
            // Azure too (api-version 2024-09-01-preview and later, and v1).
            stream_usage_option: openai || dialect == Dialect::Azure,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_flavor_and_model() {
        let claude = Quirks::of(Dialect::Databricks, "databricks-claude-sonnet-4");
        assert!(claude.cache_control && !claude.model_in_body && !claude.prompt_cache_key);
        let openai = Quirks::of(Dialect::OpenAi, "gpt-4o-mini");
        let anthropic = Quirks::of(Dialect::Anthropic, "any-model");
        assert!(anthropic.cache_control && anthropic.model_in_body && !anthropic.prompt_cache_key);
        assert!(!openai.cache_control && openai.model_in_body);
        assert!(openai.prompt_cache_key && openai.stream_usage_option);
        let nova = Quirks::of(Dialect::Bedrock, "us.amazon.nova-pro-v1:0");
        let llama = Quirks::of(Dialect::Bedrock, "meta.llama3-70b-instruct-v1:0");
        assert!(nova.cache_control && !llama.cache_control && !nova.prompt_cache_key);
    }
}
