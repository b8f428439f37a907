//! Dialects: the one place that says how the providers aiq speaks to
//! differ on the wire. Each provider with a wire of its own has a module
//! (`anthropic.rs`, `gemini.rs`, `azure.rs`, `bedrock.rs`), and
//! [`Dialect`] dispatches to it; the pipeline only ever calls these
//! methods, so it never knows which provider it talks to.
//!
//! How a provider plugs in (docs/internals/architecture.md, "Providers"):
//! 1. a variant here, named by `--endpoint` in [`Dialect::named`], with its
//!    defaults in [`Dialect::native`] (base URL, key variables and header);
//! 2. its URL per task ([`Dialect::url`]) and fixed headers
//!    ([`Dialect::headers`]);
//! 3. request bodies: aiq lays every body out once in the OpenAI chat
//!    shape (`pipeline::render`), and [`Dialect::request`] turns it into
//!    the provider's;
//! 4. replies: [`Dialect::chat_reply`] turns the provider's reply into the
//!    OpenAI shape ([`ChatResponse`], usage as [`crate::provider::wire::WireUsage`]),
//!    and [`crate::provider::stream`] folds its stream events the same way;
//! 5. errors: its error `type`s beside the status table in
//!    [`crate::provider::retry`] (retry decisions stay in one place);
//!    rate-limit header names in [`crate::provider::limit`];
//! 6. batch: its batch API behind [`crate::provider::batch_api`].
//!
//! Databricks and OpenAI-compatible servers speak the shape aiq lays out,
//! so their arms are the identity.

use std::fmt;

use serde_json::{Map, Value};

use crate::provider::wire::{ChatResponse, EmbeddingResponse, Task};
use crate::provider::{anthropic, azure, bedrock, gemini};

/// The wire an endpoint speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// Databricks Model Serving: `POST {host}/serving-endpoints/{name}/invocations`.
    Databricks,
    /// OpenAI-compatible: `POST {base}/chat/completions`, `/completions`, `/embeddings`.
    OpenAi,
    /// Anthropic's Messages API: `POST {base}/v1/messages`.
    Anthropic,
    /// Azure OpenAI: OpenAI's wire at a deployment's URL, with Azure's
    /// credentials ([`azure`]).
    Azure,
    /// Google's Gemini API: `POST {base}/v1beta/models/{model}:generateContent`.
    Gemini,
    /// Amazon Bedrock Runtime's Converse API: `POST {base}/model/{model}/converse`,
    /// SigV4-signed ([`bedrock`], [`crate::provider::aws`]).
    Bedrock,
}

/// Where a provider named by `--endpoint` is and how it takes a key, when
/// nothing overrides it.
#[derive(Debug, Clone, Copy)]
pub struct Native {
    /// The API's base URL.
    pub base_url: &'static str,
    /// The variable that overrides the base URL, as the provider's SDK reads it.
    pub base_url_var: Option<&'static str>,
    /// The variables the key is read from, first set wins.
    pub key_vars: &'static [&'static str],
    /// The header the key goes in; None: `Authorization: Bearer`.
    pub key_header: Option<&'static str>,
}

impl fmt::Display for Dialect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Dialect::Databricks => "Databricks",
            Dialect::OpenAi => "OpenAI",
            Dialect::Anthropic => "Anthropic",
            Dialect::Azure => "Azure OpenAI",
            Dialect::Gemini => "Gemini",
            Dialect::Bedrock => "Amazon Bedrock",
        })
    }
}

impl Dialect {
    /// The provider `--endpoint` names, if it names one.
    pub fn named(name: &str) -> Option<Dialect> {
        match name {
            "anthropic" => Some(Dialect::Anthropic),
            "gemini" => Some(Dialect::Gemini),
            "openai" => Some(Dialect::OpenAi),
            "azure" => Some(Dialect::Azure),
            "bedrock" => Some(Dialect::Bedrock),
            _ => None,
        }
    }

    /// The `--endpoint` name of a provider reached by name.
    pub fn name(self) -> &'static str {
        match self {
            Dialect::Databricks => "databricks",
            Dialect::OpenAi => "openai",
            Dialect::Anthropic => "anthropic",
            Dialect::Azure => "azure",
            Dialect::Gemini => "gemini",
            Dialect::Bedrock => "bedrock",
        }
    }

    /// A provider's defaults, for the ones `--endpoint` reaches by name
    /// with a key. Azure has no public base URL and more ways to log in
    /// than a key: [`azure`] resolves it; Bedrock signs with AWS
    /// credentials ([`crate::provider::aws`]).
    pub fn native(self) -> Option<Native> {
        match self {
            Dialect::Databricks | Dialect::Azure | Dialect::Bedrock => None,
            Dialect::OpenAi => Some(Native {
                base_url: "https://api.openai.com/v1",
                base_url_var: Some("OPENAI_BASE_URL"),
                key_vars: &["OPENAI_API_KEY"],
                key_header: None,
            }),
            Dialect::Anthropic => Some(Native {
                base_url: anthropic::DEFAULT_BASE_URL,
                base_url_var: Some(anthropic::BASE_URL_VAR),
                key_vars: &[anthropic::KEY_VAR],
                key_header: Some(anthropic::KEY_HEADER),
            }),
            Dialect::Gemini => Some(Native {
                base_url: gemini::DEFAULT_BASE_URL,
                base_url_var: Some(gemini::BASE_URL_VAR),
                key_vars: gemini::KEY_VARS,
                key_header: Some(gemini::KEY_HEADER),
            }),
        }
    }

    /// The provider's documented price of writing a token to its prompt
    /// cache, as a multiple of the input price: Anthropic bills 5-minute
    /// cache writes at 1.25x, and so does Bedrock for Claude (Nova's writes
    /// cost nothing extra: `--price-cache-write` says so); OpenAI, Azure,
    /// Databricks and Gemini's implicit caching charge no write surcharge.
    pub fn cache_write_multiplier(self) -> f64 {
        match self {
            Dialect::Anthropic | Dialect::Bedrock => anthropic::CACHE_WRITE_MULTIPLIER,
            Dialect::Databricks | Dialect::OpenAi | Dialect::Azure | Dialect::Gemini => 1.0,
        }
    }

    /// The output-token cap the dialect's requests carry when the job sets
    /// none (Anthropic requires one); None: the provider's own limit.
    pub fn default_max_tokens(self) -> Option<u64> {
        match self {
            Dialect::Anthropic => Some(anthropic::DEFAULT_MAX_TOKENS),
            Dialect::Databricks
            | Dialect::OpenAi
            | Dialect::Azure
            | Dialect::Gemini
            | Dialect::Bedrock => None,
        }
    }

    /// The tasks the dialect has an API for.
    pub fn supports(self, task: Task) -> bool {
        match self {
            Dialect::Databricks | Dialect::OpenAi | Dialect::Azure => true,
            Dialect::Anthropic => task == Task::Chat,
            Dialect::Gemini | Dialect::Bedrock => task != Task::Completions,
        }
    }

    /// Whether one embeddings call may carry `inputs` texts for `model`:
    /// Bedrock's Titan models embed one text a call, Cohere's up to 96
    /// ([`bedrock::max_embedding_inputs`]); others take what the job sends.
    pub fn check_embedding_inputs(
        self,
        model: Option<&str>,
        inputs: usize,
    ) -> crate::error::Result<()> {
        let model = model.unwrap_or_default();
        let max = match self {
            Dialect::Bedrock => bedrock::max_embedding_inputs(model),
            _ => None,
        };
        match max {
            Some(max) if inputs > max => Err(crate::error::Error::Config(format!(
                "{model} embeds at most {max} text(s) a call, and this job sends {inputs} \
                 (--batch-size; ai_similarity sends two): lower --batch-size, or use a model that takes more"
            ))),
            _ => Ok(()),
        }
    }

    /// The URL of `task`'s API under `base` (no trailing slash) for
    /// `model` (Gemini names it in the path). A Databricks endpoint has one
    /// URL for every task: the body says what it is
    /// ([`crate::provider::endpoint::Endpoint::databricks`]).
    pub fn url(self, base: &str, task: Task, model: &str) -> String {
        match self {
            Dialect::Databricks | Dialect::OpenAi => {
                let route = match task {
                    Task::Chat => "chat/completions",
                    Task::Completions => "completions",
                    Task::Embeddings => "embeddings",
                };
                format!("{base}/{route}")
            }
            Dialect::Anthropic => format!("{base}/v1/messages"),
            // The route goes before the base's `?api-version=…`.
            Dialect::Azure => {
                let (path, query) = azure::split_query(base);
                format!("{}{query}", Dialect::OpenAi.url(path, task, model))
            }
            Dialect::Gemini => gemini::url(base, task, model, false),
            Dialect::Bedrock => {
                let route = match task {
                    Task::Embeddings => "invoke",
                    Task::Chat | Task::Completions => "converse",
                };
                bedrock::url(base, route, model)
            }
        }
    }

    /// The URL a streamed call goes to, from the call's [`Dialect::url`]:
    /// the same but for Gemini, which streams from another method.
    pub fn stream_url(self, url: &str) -> String {
        match self {
            Dialect::Gemini => gemini::stream_url(url),
            Dialect::Bedrock => bedrock::stream_url(url),
            _ => url.to_string(),
        }
    }

    /// Fixed headers every request carries, besides the credentials.
    pub fn headers(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Dialect::Databricks
            | Dialect::OpenAi
            | Dialect::Azure
            | Dialect::Gemini
            | Dialect::Bedrock => &[],
            Dialect::Anthropic => anthropic::HEADERS,
        }
    }

    /// A chat body as aiq lays it out (the OpenAI shape) in this dialect.
    pub fn request(self, body: Map<String, Value>) -> Map<String, Value> {
        match self {
            Dialect::Databricks | Dialect::OpenAi | Dialect::Azure => body,
            Dialect::Anthropic => anthropic::request(body),
            Dialect::Gemini => gemini::request(body),
            Dialect::Bedrock => bedrock::request(body),
        }
    }

    /// An embeddings body as aiq lays it out (OpenAI's `input`) in this
    /// dialect.
    pub fn embedding_request(self, body: Map<String, Value>) -> Map<String, Value> {
        match self {
            Dialect::Gemini => gemini::embed_request(body),
            Dialect::Bedrock => bedrock::embed_request(body),
            _ => body,
        }
    }

    /// A successful embeddings reply in the OpenAI shape aiq reads.
    pub fn embedding_reply(self, body: &[u8]) -> Result<EmbeddingResponse, String> {
        match self {
            Dialect::Gemini => gemini::embed_reply(body),
            Dialect::Bedrock => bedrock::embed_reply(body),
            _ => serde_json::from_slice(body).map_err(|e| e.to_string()),
        }
    }

    /// The output-token cap a chat body of this dialect sets, if any.
    pub fn max_tokens(self, body: &Map<String, Value>) -> Option<u64> {
        match self {
            Dialect::Gemini => gemini::max_output_tokens(body),
            Dialect::Bedrock => bedrock::max_tokens(body),
            _ => ["max_completion_tokens", "max_tokens"]
                .iter()
                .find_map(|k| body.get(*k).and_then(Value::as_u64)),
        }
    }

    /// Sets a chat body's output-token cap (a repair of a cut-off answer).
    pub fn set_max_tokens(self, body: &mut Map<String, Value>, n: u64) {
        match self {
            Dialect::Gemini => gemini::set_max_output_tokens(body, n),
            Dialect::Bedrock => bedrock::set_max_tokens(body, n),
            _ => {
                let key = match body.contains_key("max_completion_tokens") {
                    true => "max_completion_tokens",
                    false => "max_tokens",
                };
                body.insert(key.into(), Value::from(n));
            }
        }
    }

    /// Adds a user turn to a chat body (a repair's correction).
    pub fn push_user_turn(self, body: &mut Map<String, Value>, text: String) {
        match self {
            Dialect::Gemini => gemini::push_user_turn(body, text),
            Dialect::Bedrock => bedrock::push_user_turn(body, text),
            _ => {
                if let Some(Value::Array(messages)) = body.get_mut("messages") {
                    messages.push(serde_json::json!({"role": "user", "content": text}));
                }
            }
        }
    }

    /// A request body that reads its system prompt from the provider's
    /// explicit cache `name` instead of carrying it (Gemini's
    /// `cachedContent`); None where the dialect has no such cache.
    pub fn with_cached_system(self, body: &[u8], name: &str) -> Option<Vec<u8>> {
        match self {
            Dialect::Gemini => gemini::with_cache(body, name),
            _ => None,
        }
    }

    /// A successful chat reply in the OpenAI shape aiq reads.
    pub fn chat_reply(self, body: &[u8]) -> Result<ChatResponse, String> {
        match self {
            Dialect::Databricks | Dialect::OpenAi | Dialect::Azure => {
                serde_json::from_slice(body).map_err(|e| e.to_string())
            }
            Dialect::Anthropic => anthropic::reply(body),
            Dialect::Gemini => gemini::reply(body),
            Dialect::Bedrock => bedrock::reply(body),
        }
    }
}

/// Static settings that shape every body.
#[derive(Debug, Clone)]
pub struct BodySpec {
    /// The wire the bodies are for: they are laid out in the OpenAI shape,
    /// then turned into the dialect's ([`Dialect::request`]).
    pub dialect: Dialect,
    pub task: Task,
    /// `model` in the body (OpenAI-compatible servers).
    pub model: Option<String>,
    /// Model parameters (max_tokens, temperature, tools, ...), merged into the body.
    pub params: Map<String, Value>,
    pub response_format: Option<Value>,
    /// Claude-style `cache_control` breakpoint on the last static block.
    pub cache_control: bool,
    /// OpenAI-style `prompt_cache_key` from the static prefix hash.
    pub prompt_cache_key: bool,
    pub stream: bool,
    /// OpenAI wants `stream_options.include_usage` to report usage when streaming.
    pub stream_usage_option: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_per_dialect() {
        assert_eq!(
            Dialect::Anthropic.url("http://h", Task::Chat, "m"),
            "http://h/v1/messages"
        );
        assert_eq!(
            Dialect::Gemini.stream_url(&Dialect::Gemini.url("http://h", Task::Chat, "g")),
            "http://h/v1beta/models/g:streamGenerateContent?alt=sse"
        );
        assert_eq!(
            Dialect::OpenAi.url("http://h/v1", Task::Embeddings, "m"),
            "http://h/v1/embeddings"
        );
        assert_eq!(Dialect::named("anthropic"), Some(Dialect::Anthropic));
        assert_eq!(Dialect::named("databricks-claude"), None);
        assert!(!Dialect::Anthropic.supports(Task::Embeddings));
        assert_eq!(
            Dialect::Azure.url(
                "http://h/openai/deployments/d?api-version=2024-10-21",
                Task::Chat,
                "d"
            ),
            "http://h/openai/deployments/d/chat/completions?api-version=2024-10-21"
        );
        assert_eq!(
            Dialect::Azure.url("http://h/openai/v1", Task::Embeddings, "d"),
            "http://h/openai/v1/embeddings"
        );
    }
}
