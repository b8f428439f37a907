//! Endpoints: where requests go and how they authenticate.
//!
//! `--endpoint` takes a Databricks serving endpoint name, an OpenAI-compatible
//! base URL, or `simulator`. This module turns that into a full URL for the
//! job's task and the credentials to send, and knows the provider quirks the
//! request layout depends on (Claude wants `cache_control`, OpenAI takes
//! `prompt_cache_key` and `stream_options`).

use std::fmt;

use crate::auth::{Credentials, DatabricksTarget};
use crate::settings::Task;

/// The protocol family of an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// Databricks Model Serving: `POST {host}/serving-endpoints/{name}/invocations`.
    Databricks,
    /// OpenAI-compatible: `POST {base}/chat/completions`, `/completions`, `/embeddings`.
    OpenAi,
}

/// A resolved endpoint.
pub struct Endpoint {
    pub flavor: Flavor,
    /// The full URL requests are posted to.
    pub url: String,
    /// OpenAI-compatible: the base URL, for calls that name their own
    /// route ([`Endpoint::url_for`]).
    pub base: Option<String>,
    /// How the endpoint is named in messages: `databricks endpoint X at HOST`.
    pub label: String,
    /// The serving endpoint name or model, for provider quirks.
    pub name: String,
    pub credentials: Credentials,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("flavor", &self.flavor)
            .field("url", &self.url)
            .field("credentials", &self.credentials)
            .finish()
    }
}

impl Endpoint {
    pub fn databricks(target: DatabricksTarget, name: &str) -> Endpoint {
        Endpoint {
            flavor: Flavor::Databricks,
            url: format!("{}/serving-endpoints/{}/invocations", target.host, name),
            base: None,
            label: format!("Databricks endpoint `{name}` at {} (credentials from {})", target.host, target.source),
            name: name.to_string(),
            credentials: target.credentials,
        }
    }

    pub fn openai(base_url: &str, task: Task, model: Option<&str>, credentials: Credentials) -> Endpoint {
        let base = base_url.trim_end_matches('/');
        Endpoint {
            flavor: Flavor::OpenAi,
            url: format!("{base}/{}", route(task)),
            base: Some(base.to_string()),
            label: format!("OpenAI-compatible endpoint {base}"),
            name: model.unwrap_or_default().to_string(),
            credentials,
        }
    }

    /// Where a call goes: the job's URL, or for a call that names its task
    /// (an OpenAI Batch line) that task's route. A Databricks endpoint has
    /// one URL for every task: the body says what it is.
    pub fn url_for(&self, task: Option<Task>) -> std::borrow::Cow<'_, str> {
        match (task, &self.base) {
            (Some(task), Some(base)) => format!("{base}/{}", route(task)).into(),
            _ => self.url.as_str().into(),
        }
    }

    /// Claude models cache only up to an explicit `cache_control` breakpoint.
    pub fn is_claude(&self) -> bool {
        self.name.to_ascii_lowercase().contains("claude")
    }

    /// Only OpenAI-compatible servers take `prompt_cache_key`; Databricks
    /// rejects unknown body keys for some models.
    pub fn takes_prompt_cache_key(&self) -> bool {
        self.flavor == Flavor::OpenAi
    }

    /// OpenAI reports usage while streaming only when asked to.
    pub fn wants_stream_options(&self) -> bool {
        self.flavor == Flavor::OpenAi
    }
}

/// The path of a task's API under an OpenAI-compatible base URL.
fn route(task: Task) -> &'static str {
    match task {
        Task::Chat => "chat/completions",
        Task::Completions => "completions",
        Task::Embeddings => "embeddings",
    }
}

/// Is `--endpoint` a base URL rather than a Databricks endpoint name?
pub fn is_url(endpoint: &str) -> bool {
    endpoint.starts_with("http://") || endpoint.starts_with("https://")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Secret;

    #[test]
    fn urls_per_flavor_and_task() {
        let e = Endpoint::openai("http://localhost:8000/v1/", Task::Embeddings, Some("m"), Credentials::None);
        assert_eq!(e.url, "http://localhost:8000/v1/embeddings");
        assert_eq!(e.url_for(Some(Task::Chat)), "http://localhost:8000/v1/chat/completions");
        assert_eq!(e.url_for(None), e.url);
        let target = DatabricksTarget {
            host: "https://example.cloud.databricks.com".into(),
            credentials: Credentials::Bearer(Secret::new("dapi-secret")),
            source: "environment".into(),
        };
        let d = Endpoint::databricks(target, "databricks-claude-sonnet-4");
        assert_eq!(d.url, "https://example.cloud.databricks.com/serving-endpoints/databricks-claude-sonnet-4/invocations");
        assert!(d.is_claude());
        assert_eq!(d.url_for(Some(Task::Embeddings)), d.url);
        assert!(!format!("{d:?}").contains("dapi-secret"));
        assert!(is_url("https://x") && !is_url("databricks-meta-llama"));
    }
}
