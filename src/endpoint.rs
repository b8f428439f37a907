//! Endpoints: where requests go and how they authenticate.
//!
//! `--endpoint` takes a Databricks serving endpoint name, an OpenAI-compatible
//! base URL, or `simulator`. This module turns that into a full URL for the
//! job's task and the credentials to send. (The provider quirks the request
//! layout depends on live with the plan: [`crate::plan::Plan::body_spec`].)

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
    /// How the endpoint is named in messages: `databricks endpoint X at HOST`.
    pub label: String,
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
            label: format!("Databricks endpoint `{name}` at {} (credentials from {})", target.host, target.source),
            credentials: target.credentials,
        }
    }

    pub fn openai(base_url: &str, task: Task, credentials: Credentials) -> Endpoint {
        let base = base_url.trim_end_matches('/');
        let route = match task {
            Task::Chat => "chat/completions",
            Task::Completions => "completions",
            Task::Embeddings => "embeddings",
        };
        Endpoint {
            flavor: Flavor::OpenAi,
            url: format!("{base}/{route}"),
            label: format!("OpenAI-compatible endpoint {base}"),
            credentials,
        }
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
        let e = Endpoint::openai("http://localhost:8000/v1/", Task::Embeddings, Credentials::None);
        assert_eq!(e.url, "http://localhost:8000/v1/embeddings");
        let target = DatabricksTarget {
            host: "https://example.cloud.databricks.com".into(),
            credentials: Credentials::Bearer(Secret::new("dapi-secret")),
            source: "environment".into(),
        };
        let d = Endpoint::databricks(target, "databricks-claude-sonnet-4");
        assert_eq!(d.url, "https://example.cloud.databricks.com/serving-endpoints/databricks-claude-sonnet-4/invocations");
        assert!(!format!("{d:?}").contains("dapi-secret"));
        assert!(is_url("https://x") && !is_url("databricks-meta-llama"));
    }
}
