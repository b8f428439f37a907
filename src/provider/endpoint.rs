//! Endpoints: where requests go and how they authenticate.
//!
//! `--endpoint` takes a Databricks serving endpoint name, an OpenAI-compatible
//! base URL, or `simulator`. This module turns that into a full URL for the
//! job's task and the credentials to send; how providers differ is
//! [`crate::provider::quirks`]'s business. [`resolve`] is the one place a
//! target becomes an endpoint with credentials; the in-process simulator,
//! which job planning starts, gets its endpoint from [`Endpoint::simulator`].

use std::collections::BTreeMap;
use std::fmt;

use crate::error::{Error, Result};
use crate::provider::auth::{
    openai_key_variable, redact_url, resolve_databricks, resolve_openai, split_user_info,
    Credentials, DatabricksTarget, Secret,
};
use crate::provider::wire::Task;

/// The default model name the simulator serves, as on Databricks.
pub const SIMULATOR_MODEL: &str = "databricks-meta-llama-3-3-70b-instruct";

/// The in-process simulator checks a token like a real endpoint would.
pub const SIMULATOR_TOKEN: &str = "aiq-simulator-token";

/// Where requests go, before credentials are resolved.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// The built-in simulator, started in-process.
    Simulator,
    /// A Databricks serving endpoint by name.
    Databricks(String),
    /// An OpenAI-compatible base URL.
    OpenAi(EndpointUrl),
}

/// An endpoint URL as given, which may carry a `user:password@`: shown and
/// stored (messages, logs, the journal's manifest) only with its user-info
/// redacted ([`redact_url`]), so that it cannot be printed by accident. The
/// URL as given is [`EndpointUrl::expose`]d only to resolve credentials.
#[derive(Clone, PartialEq)]
pub struct EndpointUrl(String);

impl EndpointUrl {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EndpointUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact_url(&self.0))
    }
}

/// As a string's: the journal's manifest records the target this way.
impl fmt::Debug for EndpointUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", redact_url(&self.0))
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Simulator => f.write_str("the built-in simulator (Databricks-compatible)"),
            Target::Databricks(name) => write!(f, "Databricks endpoint `{name}`"),
            Target::OpenAi(url) => write!(f, "OpenAI-compatible endpoint {url}"),
        }
    }
}

impl Target {
    /// `--endpoint` as given: `simulator`, a base URL, or an endpoint name.
    pub fn parse(endpoint: &str) -> Result<Target> {
        if endpoint == "simulator" {
            Ok(Target::Simulator)
        } else if is_url(endpoint) {
            Ok(Target::OpenAi(EndpointUrl(endpoint.to_string())))
        } else if endpoint.is_empty() || endpoint.contains(['/', ' ']) {
            Err(Error::Config(format!(
                "--endpoint `{}` is neither a Databricks endpoint name nor an http(s):// URL",
                redact_url(endpoint)
            )))
        } else {
            Ok(Target::Databricks(endpoint.to_string()))
        }
    }
}

/// Environment variables handed to a run in place of its process's own
/// environment and config file: its credentials resolve from these alone
/// ([`handover`] makes them).
pub type Handed = BTreeMap<String, Secret>;

/// Resolve a target to a URL and credentials, from the process's
/// environment (and the config file it names) or from `handed`. The
/// built-in simulator is not this layer's to start: job planning starts it
/// and makes its endpoint with [`Endpoint::simulator`]
/// (`crate::job::plan::resolve_endpoint`).
pub fn resolve(
    target: &Target,
    model: Option<&str>,
    task: Task,
    profile: Option<&str>,
    api_key_env: Option<&str>,
    handed: Option<&Handed>,
) -> Result<Endpoint> {
    let from_process = |k: &str| std::env::var(k).ok();
    let from_handed = |k: &str| handed.and_then(|h| h.get(k)).map(|s| s.expose().to_owned());
    let env: &dyn Fn(&str) -> Option<String> = match handed {
        Some(_) => &from_handed,
        None => &from_process,
    };
    match target {
        Target::Simulator => Err(Error::Config(
            "the built-in simulator's endpoint is made when it starts (job planning)".into(),
        )),
        Target::Databricks(name) => {
            let target = resolve_databricks(profile, env)?;
            Ok(Endpoint::databricks(target, name))
        }
        Target::OpenAi(url) => {
            let (url, credentials, from) = openai_credentials(url, api_key_env, env)?;
            Ok(Endpoint {
                credentials_from: from,
                ..Endpoint::openai(&url, task, model, credentials)
            })
        }
    }
}

/// What resolving `target` in this process finds, as the environment
/// variables that give the same endpoint anywhere, without this process's
/// environment or config file: `DATABRICKS_HOST` with a token or a client
/// pair, or the API key variable; nothing for the simulator or a server
/// without a key. For runs elsewhere (aiq.spark's tasks, aiq.ray's actors)
/// that cannot see them; the values are secrets, in the clear. Fails as
/// resolving fails here (no host, no credentials).
pub fn handover(
    target: &Target,
    profile: Option<&str>,
    api_key_env: Option<&str>,
) -> Result<Handed> {
    let env = |k: &str| std::env::var(k).ok();
    Ok(match target {
        Target::Simulator => Handed::new(),
        Target::Databricks(_) => resolve_databricks(profile, &env)?.variables(),
        // A login in the URL travels with the URL, in the settings.
        Target::OpenAi(url) => match openai_credentials(url, api_key_env, &env)?.1 {
            Credentials::Bearer(key) => {
                Handed::from([(openai_key_variable(api_key_env).to_owned(), key)])
            }
            _ => Handed::new(),
        },
    })
}

/// An OpenAI-compatible URL without its user-info, its credentials and
/// where they came from. A `user:password@` in the URL is how the user
/// chose to log in (as curl does): Basic auth, and no key from the
/// environment (a request carries one `Authorization`).
fn openai_credentials(
    url: &EndpointUrl,
    api_key_env: Option<&str>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(String, Credentials, String)> {
    let (url, login) = split_user_info(url.expose());
    let (credentials, from) = match login {
        Some(login) => (
            Credentials::Basic(login),
            "the user and password in the URL".to_owned(),
        ),
        None => resolve_openai(api_key_env, env)?,
    };
    Ok((url, credentials, from))
}

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
    /// Where the credentials were read from ("the key in OPENAI_API_KEY",
    /// "no key: OPENAI_API_KEY is not set"), said when the endpoint
    /// refuses them: never the secret.
    pub credentials_from: String,
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
    /// The in-process simulator at `base_url`, spoken to as a Databricks
    /// serving endpoint with the token it was started with.
    pub fn simulator(base_url: String, model: Option<&str>) -> Endpoint {
        let target = DatabricksTarget {
            host: base_url,
            credentials: Credentials::Bearer(Secret::new(SIMULATOR_TOKEN)),
            source: "the built-in simulator".into(),
            credentials_from: "the built-in simulator's token".into(),
        };
        Endpoint::databricks(target, model.unwrap_or(SIMULATOR_MODEL))
    }

    pub fn databricks(target: DatabricksTarget, name: &str) -> Endpoint {
        Endpoint {
            flavor: Flavor::Databricks,
            url: format!("{}/serving-endpoints/{}/invocations", target.host, name),
            base: None,
            label: format!(
                "Databricks endpoint `{name}` at {} (credentials from {})",
                target.host, target.source
            ),
            name: name.to_string(),
            credentials: target.credentials,
            credentials_from: target.credentials_from,
        }
    }

    pub fn openai(
        base_url: &str,
        task: Task,
        model: Option<&str>,
        credentials: Credentials,
    ) -> Endpoint {
        let base = base_url.trim_end_matches('/');
        Endpoint {
            flavor: Flavor::OpenAi,
            url: format!("{base}/{}", route(task)),
            base: Some(base.to_string()),
            label: format!("OpenAI-compatible endpoint {base}"),
            name: model.unwrap_or_default().to_string(),
            credentials_from: credentials.to_string(),
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
    use crate::provider::auth::Secret;

    #[test]
    fn urls_per_flavor_and_task() {
        let e = Endpoint::openai(
            "http://localhost:8000/v1/",
            Task::Embeddings,
            Some("m"),
            Credentials::None,
        );
        assert_eq!(e.url, "http://localhost:8000/v1/embeddings");
        assert_eq!(
            e.url_for(Some(Task::Chat)),
            "http://localhost:8000/v1/chat/completions"
        );
        assert_eq!(e.url_for(None), e.url);
        let target = DatabricksTarget {
            host: "https://example.cloud.databricks.com".into(),
            credentials: Credentials::Bearer(Secret::new("dapi-secret")),
            source: "environment".into(),
            credentials_from: "DATABRICKS_TOKEN".into(),
        };
        let d = Endpoint::databricks(target, "databricks-claude-sonnet-4");
        assert_eq!(d.url, "https://example.cloud.databricks.com/serving-endpoints/databricks-claude-sonnet-4/invocations");
        assert_eq!(d.url_for(Some(Task::Embeddings)), d.url);
        assert!(!format!("{d:?}").contains("dapi-secret"));
        assert!(is_url("https://x") && !is_url("databricks-meta-llama"));
    }
}
