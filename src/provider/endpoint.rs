//! Endpoints: where requests go and how they authenticate.
//!
//! `--endpoint` takes a Databricks serving endpoint name (`databricks:NAME`
//! for one named like a provider), an OpenAI-compatible base URL, a
//! provider's name (`anthropic`, `gemini`, `openai`; `--base-url` overrides where it
//! is), or `simulator`. This module turns that into a full URL for the
//! job's task and the credentials to send; how providers differ on the
//! wire is [`crate::provider::dialect`]'s business. [`resolve`] is the one place a
//! target becomes an endpoint with credentials; the in-process simulator,
//! which job planning starts, gets its endpoint from [`Endpoint::simulator`].

use std::collections::BTreeMap;
use std::fmt;

use crate::error::{Error, Result};
use crate::provider::auth::{
    openai_key_variable, redact_url, resolve_databricks, resolve_openai, split_user_info,
    Credentials, DatabricksTarget, Secret,
};
use crate::provider::dialect::Dialect;
use crate::provider::wire::Task;
use crate::provider::{aws, azure};

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
    /// A provider by name (`--endpoint anthropic`), at its own API or at
    /// `--base-url`.
    Native {
        dialect: Dialect,
        base_url: Option<EndpointUrl>,
        /// `--api-version` (Azure OpenAI).
        api_version: Option<String>,
    },
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
            Target::Native {
                dialect,
                base_url: None,
                ..
            } => write!(f, "the {dialect} API"),
            Target::Native {
                dialect,
                base_url: Some(url),
                ..
            } => write!(f, "the {dialect} API at {url}"),
        }
    }
}

impl Target {
    /// `--endpoint` as given: `simulator`, a base URL, a provider's name,
    /// or an endpoint name (`databricks:NAME` for one named like a
    /// provider).
    pub fn parse(endpoint: &str) -> Result<Target> {
        if endpoint == "simulator" {
            Ok(Target::Simulator)
        } else if let Some(dialect) = Dialect::named(endpoint) {
            Ok(Target::Native {
                dialect,
                base_url: None,
                api_version: None,
            })
        } else if let Some(name) = endpoint.strip_prefix("databricks:") {
            match Target::parse(name)? {
                Target::Databricks(_) | Target::Native { .. } => {
                    Ok(Target::Databricks(name.to_string()))
                }
                _ => Err(Error::Config(format!(
                    "--endpoint `databricks:{}` needs a serving endpoint's name",
                    redact_url(name)
                ))),
            }
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

    /// `--base-url`: where a provider named by `--endpoint` is, instead of
    /// its own API. Only a provider reached by name has one to move.
    pub fn with_base_url(self, base_url: Option<&str>) -> Result<Target> {
        let Some(url) = base_url else {
            return Ok(self);
        };
        if !is_url(url) {
            return Err(Error::Config(format!(
                "--base-url `{}` is not an http(s):// URL",
                redact_url(url)
            )));
        }
        match self {
            Target::Native {
                dialect,
                api_version,
                ..
            } => Ok(Target::Native {
                dialect,
                base_url: Some(EndpointUrl(url.to_string())),
                api_version,
            }),
            other => Err(Error::Config(format!(
                "--base-url applies to --endpoint anthropic, gemini, openai or azure, not to {other}; \
                 give an OpenAI-compatible URL as the --endpoint itself"
            ))),
        }
    }

    /// `--api-version`: the Azure OpenAI API version (and path style,
    /// [`azure::api_base`]).
    pub fn with_api_version(self, api_version: Option<&str>) -> Result<Target> {
        match (self, api_version) {
            (target, None) => Ok(target),
            (
                Target::Native {
                    dialect: Dialect::Azure,
                    base_url,
                    ..
                },
                Some(v),
            ) => Ok(Target::Native {
                dialect: Dialect::Azure,
                base_url,
                api_version: Some(v.trim().to_string()),
            }),
            (other, Some(_)) => Err(Error::Config(format!(
                "--api-version applies to --endpoint azure, not to {other}"
            ))),
        }
    }

    /// The dialect the target speaks.
    pub fn dialect(&self) -> Dialect {
        match self {
            Target::Simulator | Target::Databricks(_) => Dialect::Databricks,
            Target::OpenAi(_) => Dialect::OpenAi,
            Target::Native { dialect, .. } => *dialect,
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
/// (`crate::job::plan::EndpointSpec::resolve`).
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
        Target::Native {
            dialect: Dialect::Azure,
            base_url,
            api_version,
        } => azure_endpoint(
            base_url.as_ref(),
            api_version.as_deref(),
            task,
            model,
            api_key_env,
            env,
        ),
        Target::Native {
            dialect: Dialect::Bedrock,
            base_url,
            ..
        } => bedrock_endpoint(base_url.as_ref(), task, model, api_key_env, env),
        Target::Native {
            dialect, base_url, ..
        } => native(*dialect, base_url.as_ref(), task, model, api_key_env, env),
    }
}

/// Amazon Bedrock: the runtime endpoint (`--base-url`, else as the AWS
/// SDKs find it: [`aws::Aws::endpoint`]), the model id (`--model`) in the
/// path, and AWS credentials that sign each request.
fn bedrock_endpoint(
    base_url: Option<&EndpointUrl>,
    task: Task,
    model: Option<&str>,
    api_key_env: Option<&str>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Endpoint> {
    if api_key_env.is_some() {
        return Err(Error::Config(
            "--api-key-env does not apply to --endpoint bedrock: it signs with AWS credentials \
             (AWS_ACCESS_KEY_ID, AWS_PROFILE, ...)"
                .into(),
        ));
    }
    let model = model
        .map(str::trim)
        .filter(|m| !m.is_empty())
        .ok_or_else(|| {
            Error::Config(
                "--endpoint bedrock needs --model: the model id or inference profile \
             (e.g. anthropic.claude-3-5-haiku-20241022-v1:0)"
                    .into(),
            )
        })?;
    let aws = aws::Aws::resolve(env)?;
    let given = match base_url {
        Some(url) => url.expose().to_string(),
        None => aws.endpoint(aws::Service::Runtime),
    };
    // Written as the url crate writes it (no default port): the host the
    // signature covers is the one the request is sent to.
    let base = url::Url::parse(given.trim())
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
        .map(|u| u.as_str().trim_end_matches('/').to_string())
        .ok_or_else(|| {
            Error::Config(format!(
                "the Bedrock endpoint `{}` is not an http(s):// URL",
                redact_url(&given)
            ))
        })?;
    Ok(Endpoint {
        dialect: Dialect::Bedrock,
        url: Dialect::Bedrock.url(&base, task, model),
        label: format!(
            "the Amazon Bedrock model `{model}` in {} at {base}",
            aws.region()
        ),
        name: model.to_string(),
        credentials_from: aws.source().to_string(),
        credentials: Credentials::Aws(std::sync::Arc::new(aws)),
        base: Some(base),
    })
}

/// A provider reached by name: its base URL (`--base-url`, else the
/// variable its SDK reads, else its own API) and its key (from
/// `--api-key-env`, else its SDK's variables: one must be set).
fn native(
    dialect: Dialect,
    base_url: Option<&EndpointUrl>,
    task: Task,
    model: Option<&str>,
    api_key_env: Option<&str>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Endpoint> {
    let Some(n) = dialect.native() else {
        return Err(Error::Config(format!("{dialect} is not reached by name")));
    };
    let base = match base_url {
        Some(url) => url.expose().to_string(),
        None => n
            .base_url_var
            .and_then(env)
            .filter(|v| !v.trim().is_empty())
            .unwrap_or_else(|| n.base_url.to_string()),
    };
    let (base, login) = split_user_info(base.trim().trim_end_matches('/'));
    let (key, var) = native_key(dialect, api_key_env, env)?;
    let credentials = match (login, n.key_header) {
        // A login in the URL is a proxy's: it is the one Authorization.
        (Some(login), _) => Credentials::Basic(login),
        (None, Some(header)) => Credentials::ApiKey { header, key },
        (None, None) => Credentials::Bearer(key),
    };
    Ok(Endpoint {
        dialect,
        url: dialect.url(&base, task, model.unwrap_or_default()),
        label: format!("the {dialect} API at {base}"),
        name: model.unwrap_or_default().to_string(),
        credentials,
        credentials_from: format!("the key in {var}"),
        base: Some(base),
    })
}

/// Azure OpenAI: the resource endpoint (`--base-url`, else
/// `AZURE_OPENAI_ENDPOINT`: there is no public one), the deployment
/// (`--model`) and api-version made into the API's base, and the
/// credentials [`azure::credentials`] finds.
fn azure_endpoint(
    base_url: Option<&EndpointUrl>,
    api_version: Option<&str>,
    task: Task,
    model: Option<&str>,
    api_key_env: Option<&str>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Endpoint> {
    let endpoint = match base_url {
        Some(url) => url.expose().to_string(),
        None => env(azure::ENDPOINT_VAR)
            .filter(|v| !v.trim().is_empty())
            .ok_or_else(|| {
                Error::Config(format!(
                    "--endpoint azure needs the resource's endpoint: set {} \
                     (https://NAME.openai.azure.com) or give --base-url",
                    azure::ENDPOINT_VAR
                ))
            })?,
    };
    if !is_url(endpoint.trim()) {
        return Err(Error::Config(format!(
            "{} `{}` is not an http(s):// URL",
            azure::ENDPOINT_VAR,
            redact_url(&endpoint)
        )));
    }
    let deployment = model.unwrap_or_default();
    let base = azure::api_base(&endpoint, deployment, api_version)?;
    let (credentials, from) = azure::credentials(api_key_env, env)?;
    Ok(Endpoint {
        dialect: Dialect::Azure,
        url: Dialect::Azure.url(&base, task, deployment),
        label: format!(
            "the Azure OpenAI deployment `{deployment}` at {}",
            redact_url(&base)
        ),
        name: deployment.to_string(),
        credentials,
        credentials_from: from,
        base: Some(base),
    })
}

/// A named provider's key and the variable it came from: `--api-key-env`
/// if given, else the first of the provider's variables that is set. None
/// set stops the job before anything is sent, naming them.
fn native_key(
    dialect: Dialect,
    api_key_env: Option<&str>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(Secret, String)> {
    let vars: Vec<&str> = match api_key_env {
        Some(name) => vec![name.trim()],
        None => dialect
            .native()
            .map(|n| n.key_vars.to_vec())
            .unwrap_or_default(),
    };
    vars.iter()
        .find_map(|var| {
            env(var)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
                .map(|v| (Secret::new(v), var.to_string()))
        })
        .ok_or_else(|| {
            Error::Credentials(format!(
                "--endpoint {} needs an API key: set {}",
                dialect.name(),
                vars.join(" or ")
            ))
        })
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
        Target::Native {
            dialect: Dialect::Azure,
            ..
        } => {
            azure::credentials(api_key_env, &env)?;
            let vars = azure::VARIABLES.iter().copied().chain(api_key_env);
            vars.filter_map(|v| Some((v.to_string(), Secret::new(env(v)?))))
                .collect()
        }
        Target::Native {
            dialect: Dialect::Bedrock,
            ..
        } => {
            aws::Aws::resolve(&env)?;
            let vars = aws::VARIABLES.iter();
            vars.filter_map(|v| Some((v.to_string(), Secret::new(env(v)?))))
                .collect()
        }
        Target::Native { dialect, .. } => {
            let (key, var) = native_key(*dialect, api_key_env, &env)?;
            let mut handed = Handed::from([(var, key)]);
            let base_var = dialect.native().and_then(|n| n.base_url_var);
            if let Some((var, url)) = base_var.and_then(|v| Some((v, env(v)?))) {
                handed.insert(var.to_string(), Secret::new(url));
            }
            handed
        }
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

/// A resolved endpoint.
pub struct Endpoint {
    pub dialect: Dialect,
    /// The full URL requests are posted to.
    pub url: String,
    /// OpenAI-compatible and named providers: the base URL, for calls
    /// that name their own route ([`Endpoint::url_for`]).
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
            .field("dialect", &self.dialect)
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
            dialect: Dialect::Databricks,
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
            dialect: Dialect::OpenAi,
            url: Dialect::OpenAi.url(base, task, model.unwrap_or_default()),
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
            (Some(task), Some(base)) => self.dialect.url(base, task, &self.name).into(),
            _ => self.url.as_str().into(),
        }
    }
}

/// `PROVIDER:MODEL` (`anthropic:claude-haiku-4-5`): a provider named with
/// its model in one string, as `ai_query`'s first argument names both. The
/// provider's name and the model; None for anything else.
pub fn provider_model(endpoint: &str) -> Option<(&str, &str)> {
    let (provider, model) = endpoint.split_once(':')?;
    (Dialect::named(provider).is_some() && !model.trim().is_empty()).then_some((provider, model))
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
        assert_eq!(
            provider_model("anthropic:claude-haiku-4-5"),
            Some(("anthropic", "claude-haiku-4-5"))
        );
        for other in ["databricks:anthropic", "https://h/v1", "anthropic:", "name"] {
            assert_eq!(provider_model(other), None, "{other}");
        }
    }
}
