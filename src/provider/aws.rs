//! AWS credentials, region, endpoints and SigV4 signing, for Amazon
//! Bedrock (`--endpoint bedrock`, [`crate::provider::bedrock`]) and its
//! batch-inference control plane. Resolved once per job ([`Aws::resolve`]);
//! every request is then signed with [`Aws::sign`].
//!
//! The signing and the credential providers that fetch temporary keys are
//! object_store's (already in the build for `s3://` paths: its
//! [`AwsAuthorizer`] signs for any service, and its providers cache
//! credentials and fetch new ones before they expire); this module picks
//! the source the way the AWS SDKs do and reads the shared config files,
//! which object_store does not (docs/internals/dependencies.md).
//!
//! **Credentials**, first source found wins (the AWS SDKs' default chain):
//! 1. `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY` (with
//!    `AWS_SESSION_TOKEN` for temporary keys);
//! 2. the profile `AWS_PROFILE` (else `default`) in the shared files
//!    (`AWS_SHARED_CREDENTIALS_FILE`, default `~/.aws/credentials`, and
//!    `AWS_CONFIG_FILE`, default `~/.aws/config`): static keys with an
//!    optional session token; `role_arn` with `source_profile` (STS
//!    `AssumeRole`, [`crate::provider::aws_fetch`]); `role_arn` with
//!    `web_identity_token_file`; or `credential_process`
//!    ([`crate::provider::aws_fetch`]); profiles with `credential_source`
//!    or SSO are refused with what to do;
//! 3. web identity (EKS IRSA): `AWS_WEB_IDENTITY_TOKEN_FILE` with
//!    `AWS_ROLE_ARN` (`AWS_ROLE_SESSION_NAME`, `AWS_ENDPOINT_URL_STS`);
//! 4. container credentials (ECS task roles, EKS Pod Identity):
//!    `AWS_CONTAINER_CREDENTIALS_RELATIVE_URI`, or
//!    `AWS_CONTAINER_CREDENTIALS_FULL_URI` with
//!    `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE`;
//! 5. the EC2 instance metadata service (IMDSv2; at
//!    `AWS_EC2_METADATA_SERVICE_ENDPOINT` if set, IPv6's address with
//!    `AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE=IPv6`), unless
//!    `AWS_EC2_METADATA_DISABLED=true`.
//!
//! **Region**: `AWS_REGION`, else `AWS_DEFAULT_REGION`, else the profile's
//! `region`; none stops the job before anything is sent.
//!
//! **Endpoints** ([`Service`]), as the SDKs read them: `--base-url`, else
//! `AWS_ENDPOINT_URL_BEDROCK_RUNTIME` (runtime) or
//! `AWS_ENDPOINT_URL_BEDROCK` (control plane), else `AWS_ENDPOINT_URL`,
//! else the profile's `endpoint_url`, else
//! `https://bedrock-runtime.{region}.amazonaws.com` (or `bedrock.`); the
//! variables and the profile are skipped when
//! `AWS_IGNORE_CONFIGURED_ENDPOINT_URLS=true`. Both are signed for the
//! service `bedrock`.
//!
//! **Secrets**: access key ids, secret keys and session tokens live in
//! object_store's [`AwsCredential`] (whose `Debug` hides them) and are
//! never formatted; [`Aws::secrets`] lists every one used so far, for the
//! job's [`crate::provider::auth::Scrubber`].

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hyper::header::{HeaderName, HeaderValue};
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey, AwsAuthorizer, AwsCredential};
use object_store::client::HttpRequestBody;
use object_store::{BackoffConfig, CredentialProvider, RetryConfig};

use crate::error::{Error, Result};
use crate::provider::aws_fetch::{Fetch, Refreshing};

/// The SigV4 signing name of Bedrock, for the runtime and the control
/// plane alike (the `bedrock-runtime` host signs as `bedrock`).
pub const SIGNING_NAME: &str = "bedrock";

/// Which of Bedrock's APIs a request is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// Bedrock Runtime: Converse, InvokeModel.
    Runtime,
    /// The control plane: batch inference jobs.
    Control,
}

impl Service {
    /// The variable the SDKs read this service's endpoint from (the
    /// service id, upper-cased, spaces as `_`).
    pub fn endpoint_var(self) -> &'static str {
        match self {
            Service::Runtime => "AWS_ENDPOINT_URL_BEDROCK_RUNTIME",
            Service::Control => "AWS_ENDPOINT_URL_BEDROCK",
        }
    }

    fn host_prefix(self) -> &'static str {
        match self {
            Service::Runtime => "bedrock-runtime",
            Service::Control => "bedrock",
        }
    }
}

/// Every variable [`Aws::resolve`] reads, for handing the same credentials
/// to runs elsewhere ([`crate::provider::endpoint::handover`]).
pub const VARIABLES: &[&str] = &[
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_CONFIG_FILE",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ROLE_ARN",
    "AWS_ROLE_SESSION_NAME",
    "AWS_ENDPOINT_URL_STS",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
    "AWS_EC2_METADATA_SERVICE_ENDPOINT",
    "AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE",
    "AWS_EC2_METADATA_DISABLED",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_BEDROCK_RUNTIME",
    "AWS_ENDPOINT_URL_BEDROCK",
    "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS",
    "HOME",
];

/// Fetching temporary credentials (STS, container, instance metadata):
/// a few quick attempts, so a job with no credentials anywhere stops in
/// seconds rather than object_store's three minutes.
const FETCH_RETRIES: usize = 2;
const FETCH_TIMEOUT: Duration = Duration::from_secs(20);

/// An AWS account's credentials and region, resolved once for a job.
pub struct Aws {
    region: String,
    /// Where the credentials come from, for messages: never a secret.
    source: String,
    provider: Arc<dyn CredentialProvider<Credential = AwsCredential>>,
    /// The endpoints the environment or profile set, by service.
    endpoints: HashMap<&'static str, String>,
    /// Every credential used so far (temporary ones change while a job
    /// runs), for [`Aws::secrets`].
    used: Mutex<Vec<Arc<AwsCredential>>>,
}

impl fmt::Debug for Aws {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Aws")
            .field("region", &self.region)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// A secret (key or token) on its way to object_store's provider: prints
/// as `[redacted]`. (aiq's `Secret` lives in the module that imports this
/// one.)
#[derive(Clone, PartialEq)]
struct Hidden(String);

impl fmt::Debug for Hidden {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Where the chain found credentials ([`Aws::resolve`]'s list).
#[derive(Debug, PartialEq)]
enum Source {
    Keys {
        key_id: String,
        secret: Hidden,
        token: Option<Hidden>,
    },
    WebIdentity {
        token_file: String,
        role_arn: String,
        session_name: Option<String>,
    },
    ContainerRelative(String),
    ContainerFull {
        uri: String,
        token_file: String,
    },
    Instance {
        endpoint: Option<String>,
    },
    /// STS `AssumeRole` signed with `source`'s credentials.
    AssumeRole {
        role_arn: String,
        session_name: Option<String>,
        external_id: Option<String>,
        duration_seconds: Option<u32>,
        source: Box<Source>,
    },
    /// A profile's `credential_process`.
    Process(String),
}

/// How deep `source_profile` may chain roles (the SDKs stop loops too).
const MAX_ROLE_CHAIN: usize = 4;

/// A profile's keys from the shared config and credentials files.
#[derive(Debug, Default)]
struct Profile {
    name: String,
    /// The credentials file's keys override the config file's.
    keys: HashMap<String, String>,
    /// The files it was read from, for messages.
    files: Vec<String>,
}

impl Aws {
    /// The region, credentials source and endpoints `env` gives (see the
    /// module's list). Stops the job before anything is sent when no region
    /// is set, a source is half set (a key id without its secret), or a
    /// profile asked for by name is missing or of a kind aiq cannot use.
    pub fn resolve(env: &dyn Fn(&str) -> Option<String>) -> Result<Aws> {
        let get = |k: &str| {
            env(k)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let profile = read_profile(&get)?;
        let region = get("AWS_REGION")
            .or_else(|| get("AWS_DEFAULT_REGION"))
            .or_else(|| profile.as_ref().and_then(|p| p.keys.get("region").cloned()))
            .ok_or_else(|| {
                Error::Config(
                    "--endpoint bedrock needs an AWS region: set AWS_REGION (or AWS_DEFAULT_REGION, \
                     or `region` in the AWS profile)"
                        .into(),
                )
            })?;
        if !region
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(Error::Config(format!(
                "AWS region `{region}` is not a region name"
            )));
        }
        let (source, from) = source(&get, profile.as_ref())?;
        let provider = provider(&source, &region, &get)?;
        let mut endpoints = HashMap::new();
        let ignore = get("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS")
            .or_else(|| {
                profile
                    .as_ref()
                    .and_then(|p| p.keys.get("ignore_configured_endpoint_urls").cloned())
            })
            .is_some_and(|v| v.eq_ignore_ascii_case("true"));
        if !ignore {
            let global = get("AWS_ENDPOINT_URL").or_else(|| {
                profile
                    .as_ref()
                    .and_then(|p| p.keys.get("endpoint_url").cloned())
            });
            for service in [Service::Runtime, Service::Control] {
                let var = service.endpoint_var();
                if let Some(url) = get(var).or_else(|| global.clone()) {
                    endpoints.insert(var, url);
                }
            }
        }
        Ok(Aws {
            region,
            source: from,
            provider,
            endpoints,
            used: Mutex::new(Vec::new()),
        })
    }

    pub fn region(&self) -> &str {
        &self.region
    }

    /// Where the credentials come from ("the keys in AWS_ACCESS_KEY_ID",
    /// "profile dev in ~/.aws/credentials"): for messages.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The provider the requests are signed with, for an S3 store that
    /// must use the same credentials (Bedrock's batch staging bucket).
    pub fn credential_provider(&self) -> Arc<dyn CredentialProvider<Credential = AwsCredential>> {
        self.provider.clone()
    }

    /// The base URL of `service` (no trailing slash): a configured one (see
    /// the module's list) or AWS's for the region.
    pub fn endpoint(&self, service: Service) -> String {
        match self.endpoints.get(service.endpoint_var()) {
            Some(url) => url.trim_end_matches('/').to_string(),
            None => format!(
                "https://{}.{}.{}",
                service.host_prefix(),
                self.region,
                domain(&self.region)
            ),
        }
    }

    /// The credentials to sign with now: the provider's cached ones, or
    /// fresh ones when they are about to expire.
    async fn credential(&self) -> Result<Arc<AwsCredential>> {
        let credential = self.provider.get_credential().await.map_err(|e| {
            let message = self.scrub(&e.to_string());
            Error::Credentials(format!("AWS credentials from {}: {message}", self.source))
        })?;
        // Checked once per credential: object_store's signer would panic on
        // a key or token that cannot go in a header.
        let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        if !used.iter().any(|c| Arc::ptr_eq(c, &credential)) {
            let fits = |s: &str| HeaderValue::from_str(s).is_ok() && !s.contains(['/', ' ']);
            if !fits(&credential.key_id)
                || credential
                    .token
                    .as_deref()
                    .is_some_and(|t| HeaderValue::from_str(t).is_err())
            {
                return Err(Error::Credentials(format!(
                    "the AWS credentials from {} hold characters not allowed in a request header",
                    self.source
                )));
            }
            used.push(credential.clone());
        }
        Ok(credential)
    }

    /// The headers that sign a request of `method` to `uri` with `body` by
    /// SigV4 for [`SIGNING_NAME`] in the job's region: `authorization`,
    /// `x-amz-date`, `x-amz-content-sha256` and, for temporary credentials,
    /// `x-amz-security-token` (the last two and `authorization` marked
    /// sensitive). The signature covers `host` as the URL has it (without a
    /// default port), which the HTTP client sends from the same URL.
    pub async fn sign(
        &self,
        method: &hyper::Method,
        uri: &hyper::Uri,
        body: &Bytes,
    ) -> Result<Vec<(HeaderName, HeaderValue)>> {
        let credential = self.credential().await?;
        let text = uri.to_string();
        if url::Url::parse(&text).is_err() {
            return Err(Error::Config(format!("cannot sign a request to {text}")));
        }
        let mut request = hyper::Request::new(HttpRequestBody::from(body.clone()));
        *request.method_mut() = method.clone();
        *request.uri_mut() = uri.clone();
        AwsAuthorizer::new(&credential, SIGNING_NAME, &self.region).authorize(&mut request, None);
        let (parts, _) = request.into_parts();
        Ok(parts
            .headers
            .into_iter()
            .filter_map(|(name, mut value)| {
                let name = name?;
                if name == hyper::header::HOST {
                    return None;
                }
                if name == hyper::header::AUTHORIZATION || name.as_str() == "x-amz-security-token" {
                    value.set_sensitive(true);
                }
                Some((name, value))
            })
            .collect())
    }

    /// Every access key id, secret key and session token used so far, for
    /// the job's scrubber: in the clear, to be searched for, never shown.
    pub fn secrets(&self) -> Vec<String> {
        let used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        used.iter()
            .flat_map(|c| {
                [Some(&c.key_id), Some(&c.secret_key), c.token.as_ref()]
                    .into_iter()
                    .flatten()
                    .cloned()
            })
            .collect()
    }

    fn scrub(&self, text: &str) -> String {
        let mut text = text.to_string();
        for s in self.secrets() {
            if !s.is_empty() {
                text = text.replace(&s, "[redacted]");
            }
        }
        text
    }
}

/// The first credentials source of the chain that is set, and how to say
/// where they came from.
fn source(
    get: &dyn Fn(&str) -> Option<String>,
    profile: Option<&Profile>,
) -> Result<(Source, String)> {
    match (get("AWS_ACCESS_KEY_ID"), get("AWS_SECRET_ACCESS_KEY")) {
        (Some(key_id), Some(secret)) => {
            let token = get("AWS_SESSION_TOKEN").map(Hidden);
            let from = match token {
                Some(_) => {
                    "the keys in AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN"
                }
                None => "the keys in AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
            };
            let secret = Hidden(secret);
            return Ok((
                Source::Keys {
                    key_id,
                    secret,
                    token,
                },
                from.into(),
            ));
        }
        (Some(_), None) | (None, Some(_)) => {
            return Err(Error::Credentials(
                "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY go together: one of them is not set"
                    .into(),
            ))
        }
        (None, None) => {}
    }
    if let Some(p) = profile {
        if let Some(found) = profile_source(p, get, 0)? {
            return Ok(found);
        }
    }
    if let (Some(token_file), Some(role_arn)) =
        (get("AWS_WEB_IDENTITY_TOKEN_FILE"), get("AWS_ROLE_ARN"))
    {
        let from = format!("web identity (AWS_WEB_IDENTITY_TOKEN_FILE) for role {role_arn}");
        let session_name = get("AWS_ROLE_SESSION_NAME");
        return Ok((
            Source::WebIdentity {
                token_file,
                role_arn,
                session_name,
            },
            from,
        ));
    }
    if let Some(uri) = get("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI") {
        let from = "the container credentials (AWS_CONTAINER_CREDENTIALS_RELATIVE_URI)".into();
        return Ok((Source::ContainerRelative(uri), from));
    }
    if let Some(uri) = get("AWS_CONTAINER_CREDENTIALS_FULL_URI") {
        let Some(token_file) = get("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE") else {
            return Err(Error::Credentials(
                "AWS_CONTAINER_CREDENTIALS_FULL_URI is set without AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE, \
                 which aiq needs with it (EKS Pod Identity sets both)"
                    .into(),
            ));
        };
        let from = format!("the container credentials at {uri}");
        return Ok((Source::ContainerFull { uri, token_file }, from));
    }
    if get("AWS_EC2_METADATA_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        return Err(Error::Credentials(
            "--endpoint bedrock found no AWS credentials: set AWS_ACCESS_KEY_ID and \
             AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN), AWS_PROFILE, or \
             AWS_WEB_IDENTITY_TOKEN_FILE with AWS_ROLE_ARN"
                .into(),
        ));
    }
    // object_store appends `/latest/…` to the endpoint: no trailing slash.
    let endpoint = get("AWS_EC2_METADATA_SERVICE_ENDPOINT")
        .map(|e| e.trim_end_matches('/').to_string())
        .or_else(|| {
            get("AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE")
                .filter(|m| m.eq_ignore_ascii_case("ipv6"))
                .map(|_| "http://[fd00:ec2::254]".to_string())
        });
    let from = "the EC2 instance metadata service (no AWS_ACCESS_KEY_ID, AWS_PROFILE, \
                web identity or container credentials are set)"
        .into();
    Ok((Source::Instance { endpoint }, from))
}

/// A profile's credentials, if it has any; an error for the kinds aiq
/// does not read (they would otherwise be skipped silently for the next
/// source in the chain, which is not what the user configured).
fn profile_source(
    p: &Profile,
    get: &dyn Fn(&str) -> Option<String>,
    depth: usize,
) -> Result<Option<(Source, String)>> {
    let k = |key: &str| p.keys.get(key).cloned();
    let files = p.files.join(" and ");
    for (key, what) in [
        (
            "credential_source",
            "assumes a role with credentials from elsewhere",
        ),
        ("sso_session", "logs in by SSO"),
        ("sso_start_url", "logs in by SSO"),
        ("login_session", "logs in by `aws login`"),
    ] {
        if p.keys.contains_key(key) {
            return Err(Error::Credentials(format!(
                "AWS profile {} in {files} {what} ({key}), which aiq does not do: export the \
                 credentials first (`eval \"$(aws configure export-credentials --profile {} --format env)\"`) \
                 and run aiq with those",
                p.name, p.name
            )));
        }
    }
    // A role assumed with another profile's credentials comes before the
    // profile's own keys, as in the SDKs (its own keys sign the call when
    // it names itself).
    if let (Some(role_arn), Some(from_name)) = (k("role_arn"), k("source_profile")) {
        let (source, from) = match from_name == p.name {
            true => {
                let mut keys_only = Profile {
                    name: p.name.clone(),
                    files: p.files.clone(),
                    keys: p.keys.clone(),
                };
                keys_only.keys.remove("role_arn");
                keys_only.keys.remove("source_profile");
                profile_source(&keys_only, get, depth + 1)?
            }
            false if depth < MAX_ROLE_CHAIN => {
                let Some(other) = load_profile(get, &from_name, false)? else {
                    return Err(Error::Credentials(format!(
                        "AWS profile {}: its source_profile {from_name} is in neither AWS file",
                        p.name
                    )));
                };
                profile_source(&other, get, depth + 1)?
            }
            false => {
                return Err(Error::Credentials(format!(
                    "AWS profile {} in {files}: source_profile chains more than {MAX_ROLE_CHAIN} \
                     profiles (a loop?)",
                    p.name
                )))
            }
        }
        .ok_or_else(|| {
            Error::Credentials(format!(
                "AWS profile {}: its source_profile {from_name} has no credentials",
                p.name
            ))
        })?;
        let duration_seconds = match k("duration_seconds") {
            None => None,
            Some(d) => Some(d.parse::<u32>().map_err(|_| {
                Error::Config(format!(
                    "AWS profile {} in {files}: duration_seconds `{d}` is not a number of seconds",
                    p.name
                ))
            })?),
        };
        let from = format!(
            "role {role_arn} (AWS profile {}) assumed with {from}",
            p.name
        );
        let source = Source::AssumeRole {
            role_arn,
            session_name: k("role_session_name"),
            external_id: k("external_id"),
            duration_seconds,
            source: Box::new(source),
        };
        return Ok(Some((source, from)));
    }
    match (k("aws_access_key_id"), k("aws_secret_access_key")) {
        (Some(key_id), Some(secret)) => {
            let source = Source::Keys {
                key_id,
                secret: Hidden(secret),
                token: k("aws_session_token").map(Hidden),
            };
            return Ok(Some((source, format!("AWS profile {} in {files}", p.name))));
        }
        (Some(_), None) | (None, Some(_)) => {
            return Err(Error::Credentials(format!(
            "AWS profile {} in {files}: aws_access_key_id and aws_secret_access_key go together",
            p.name
        )))
        }
        (None, None) => {}
    }
    if let (Some(role_arn), Some(token_file)) = (k("role_arn"), k("web_identity_token_file")) {
        let from = format!("web identity for role {role_arn} (AWS profile {})", p.name);
        let source = Source::WebIdentity {
            token_file,
            role_arn,
            session_name: k("role_session_name"),
        };
        return Ok(Some((source, from)));
    }
    if let Some(command) = k("credential_process") {
        let from = format!(
            "the credential_process of AWS profile {} in {files}",
            p.name
        );
        return Ok(Some((Source::Process(command), from)));
    }
    Ok(None)
}

/// The profile `AWS_PROFILE` names (else `default`) from the shared config
/// and credentials files; None when neither file has it and it was not
/// asked for by name.
fn read_profile(get: &dyn Fn(&str) -> Option<String>) -> Result<Option<Profile>> {
    let named = get("AWS_PROFILE").or_else(|| get("AWS_DEFAULT_PROFILE"));
    let name = named.clone().unwrap_or_else(|| "default".into());
    load_profile(get, &name, named.is_some())
}

/// The profile `name` from the shared config and credentials files; None
/// when neither has it and it was not asked for by name (`named`).
fn load_profile(
    get: &dyn Fn(&str) -> Option<String>,
    name: &str,
    named: bool,
) -> Result<Option<Profile>> {
    let name = name.to_string();
    let home = get("HOME").or_else(|| get("USERPROFILE"));
    let file = |var: &str, default: &str| -> Option<PathBuf> {
        get(var)
            .map(PathBuf::from)
            .or_else(|| home.as_ref().map(|h| PathBuf::from(h).join(default)))
    };
    let config = file("AWS_CONFIG_FILE", ".aws/config");
    let credentials = file("AWS_SHARED_CREDENTIALS_FILE", ".aws/credentials");
    let mut profile = Profile {
        name: name.clone(),
        ..Profile::default()
    };
    // The config file names profiles `[profile NAME]` (`[default]` too);
    // the credentials file `[NAME]`. The credentials file wins.
    let config_sections = [format!("profile {name}"), name.clone()];
    let reads = [
        (config, &config_sections[..]),
        (credentials, std::slice::from_ref(&name)),
    ];
    for (path, sections) in reads {
        let Some(path) = path.filter(|p| p.is_file()) else {
            continue;
        };
        let options = ini::ParseOption {
            enabled_quote: false,
            enabled_escape: false,
            ..Default::default()
        };
        let ini = ini::Ini::load_from_file_opt(&path, options).map_err(|e| {
            Error::Config(format!(
                "cannot read AWS config file {}: {e}",
                path.display()
            ))
        })?;
        let Some(section) = sections.iter().find_map(|s| ini.section(Some(s.as_str()))) else {
            continue;
        };
        profile.files.push(path.display().to_string());
        for (k, v) in section.iter() {
            let v = v.trim();
            if !v.is_empty() {
                profile
                    .keys
                    .insert(k.trim().to_ascii_lowercase(), v.to_string());
            }
        }
    }
    match (profile.files.is_empty(), named) {
        (false, _) => Ok(Some(profile)),
        (true, false) => Ok(None),
        (true, true) => Err(Error::Config(format!(
            "AWS profile {name} (AWS_PROFILE) is in neither the AWS config file nor the credentials \
             file (AWS_CONFIG_FILE, AWS_SHARED_CREDENTIALS_FILE; default ~/.aws/config and ~/.aws/credentials)"
        ))),
    }
}

/// The object_store credential provider for `source`. The store it is
/// built with is never used: it is how object_store hands out its
/// providers (a bucket name is required to build it).
fn provider(
    source: &Source,
    region: &str,
    get: &dyn Fn(&str) -> Option<String>,
) -> Result<Arc<dyn CredentialProvider<Credential = AwsCredential>>> {
    match source {
        Source::AssumeRole {
            role_arn,
            session_name,
            external_id,
            duration_seconds,
            source,
        } => {
            let fetch = Fetch::AssumeRole {
                source: provider(source, region, get)?,
                sts: sts_endpoint(region, get),
                region: region.to_string(),
                role_arn: role_arn.clone(),
                session_name: session_name.clone().unwrap_or_else(|| "aiq-session".into()),
                external_id: external_id.clone(),
                duration_seconds: *duration_seconds,
            };
            return Ok(Arc::new(Refreshing::new(fetch)));
        }
        Source::Process(command) => {
            let fetch = Fetch::Process {
                command: command.clone(),
            };
            return Ok(Arc::new(Refreshing::new(fetch)));
        }
        _ => {}
    }
    let retry = RetryConfig {
        backoff: BackoffConfig::default(),
        max_retries: FETCH_RETRIES,
        retry_timeout: FETCH_TIMEOUT,
    };
    let mut b = AmazonS3Builder::new()
        .with_bucket_name("aiq-credentials-only")
        .with_region(region)
        .with_retry(retry);
    let set = |b: AmazonS3Builder, key, value: &str| b.with_config(key, value);
    match source {
        Source::Keys {
            key_id,
            secret,
            token,
        } => {
            b = set(b, AmazonS3ConfigKey::AccessKeyId, key_id);
            b = set(b, AmazonS3ConfigKey::SecretAccessKey, &secret.0);
            if let Some(t) = token {
                b = set(b, AmazonS3ConfigKey::Token, &t.0);
            }
        }
        Source::WebIdentity {
            token_file,
            role_arn,
            session_name,
        } => {
            b = set(b, AmazonS3ConfigKey::WebIdentityTokenFile, token_file);
            b = set(b, AmazonS3ConfigKey::RoleArn, role_arn);
            if let Some(n) = session_name {
                b = set(b, AmazonS3ConfigKey::RoleSessionName, n);
            }
            if let Some(sts) = get("AWS_ENDPOINT_URL_STS") {
                b = set(b, AmazonS3ConfigKey::StsEndpoint, &sts);
            }
        }
        Source::ContainerRelative(uri) => {
            b = set(b, AmazonS3ConfigKey::ContainerCredentialsRelativeUri, uri);
        }
        Source::ContainerFull { uri, token_file } => {
            b = set(b, AmazonS3ConfigKey::ContainerCredentialsFullUri, uri);
            b = set(
                b,
                AmazonS3ConfigKey::ContainerAuthorizationTokenFile,
                token_file,
            );
        }
        Source::Instance { endpoint } => {
            if let Some(e) = endpoint {
                b = set(b, AmazonS3ConfigKey::MetadataEndpoint, e);
            }
        }
        Source::AssumeRole { .. } | Source::Process(_) => {}
    }
    let store = b
        .build()
        .map_err(|e| Error::Credentials(format!("AWS credentials: {e}")))?;
    Ok(store.credentials().clone())
}

/// STS's base URL for `AssumeRole`, as the SDKs read it:
/// `AWS_ENDPOINT_URL_STS`, else `AWS_ENDPOINT_URL` (neither when
/// `AWS_IGNORE_CONFIGURED_ENDPOINT_URLS=true`), else the region's.
fn sts_endpoint(region: &str, get: &dyn Fn(&str) -> Option<String>) -> String {
    let ignore =
        get("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS").is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let configured = get("AWS_ENDPOINT_URL_STS").or_else(|| get("AWS_ENDPOINT_URL"));
    match configured.filter(|_| !ignore) {
        Some(url) => url,
        None => format!("https://sts.{region}.{}", domain(region)),
    }
}

/// AWS's domain in `region`'s partition.
fn domain(region: &str) -> &'static str {
    match region.starts_with("cn-") {
        true => "amazonaws.com.cn",
        false => "amazonaws.com",
    }
}

/// `id` (a model id, an inference profile id or an ARN) as one segment
/// of a URL's path: every byte but the unreserved ones percent-encoded,
/// as the AWS SDKs encode a `{modelId}` label (`:` → `%3A`, `/` → `%2F`).
pub fn path_segment(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for b in id.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: Vec<(&'static str, String)>) -> impl Fn(&str) -> Option<String> {
        move |k| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone())
    }

    fn keys() -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE".into()),
            (
                "AWS_SECRET_ACCESS_KEY",
                "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
            ),
            ("AWS_REGION", "us-east-1".into()),
        ]
    }

    #[test]
    fn chain_order_and_sources() {
        let dir = tempdir();
        let creds = dir.join("credentials");
        std::fs::write(
            &creds,
            "[default]\naws_access_key_id = AKIDDEFAULT\naws_secret_access_key = s1\n\
             [dev]\naws_access_key_id = AKIDDEV\naws_secret_access_key = s2\naws_session_token = t2\n\
             [sso]\nsso_session = corp\n",
        )
        .unwrap();
        let config = dir.join("config");
        std::fs::write(
            &config,
            "[default]\nregion = eu-west-1\n[profile dev]\nregion = eu-central-1\n\
             endpoint_url = http://127.0.0.1:9\n[profile irsa]\nrole_arn = arn:aws:iam::1:role/r\n\
             web_identity_token_file = /var/token\nregion = us-west-2\n\
             [profile role]\nrole_arn = arn:aws:iam::1:role/r2\nsource_profile = dev\n\
             [profile self]\nrole_arn = arn:aws:iam::1:role/r3\nsource_profile = self\n\
             aws_access_key_id = AKIDSELF\naws_secret_access_key = s3\n\
             [profile loop]\nrole_arn = arn:aws:iam::1:role/r4\nsource_profile = loop2\n\
             [profile loop2]\nrole_arn = arn:aws:iam::1:role/r5\nsource_profile = loop\n\
             [profile proc]\ncredential_process = /bin/creds --user me\n",
        )
        .unwrap();
        let files = |profile: Option<&str>| {
            let mut e = vec![
                ("AWS_CONFIG_FILE", config.display().to_string()),
                ("AWS_SHARED_CREDENTIALS_FILE", creds.display().to_string()),
            ];
            if let Some(p) = profile {
                e.push(("AWS_PROFILE", p.to_string()));
            }
            e
        };
        let get = |pairs: Vec<(&'static str, String)>| {
            let env = env_of(pairs);
            let profile = read_profile(&|k| env(k)).unwrap();
            source(&|k| env(k), profile.as_ref()).map(|(s, from)| (s, from))
        };
        // Env keys come first, even with a profile set.
        let mut e = keys();
        e.extend(files(Some("dev")));
        let (s, from) = get(e).unwrap();
        assert!(
            matches!(s, Source::Keys { ref key_id, .. } if key_id == "AKIDEXAMPLE"),
            "{s:?}"
        );
        assert!(from.contains("AWS_ACCESS_KEY_ID"), "{from}");
        // The named profile, with its session token, region and endpoint.
        let (s, from) = get(files(Some("dev"))).unwrap();
        let Source::Keys { key_id, token, .. } = s else {
            panic!()
        };
        assert_eq!(
            (key_id.as_str(), token.unwrap().0.as_str()),
            ("AKIDDEV", "t2")
        );
        assert!(from.contains("profile dev"), "{from}");
        let aws = Aws::resolve(&env_of(files(Some("dev")))).unwrap();
        assert_eq!(aws.region(), "eu-central-1");
        assert_eq!(aws.endpoint(Service::Runtime), "http://127.0.0.1:9");
        // The default profile without AWS_PROFILE.
        let aws = Aws::resolve(&env_of(files(None))).unwrap();
        assert_eq!(aws.region(), "eu-west-1");
        assert_eq!(
            aws.endpoint(Service::Runtime),
            "https://bedrock-runtime.eu-west-1.amazonaws.com"
        );
        assert_eq!(
            aws.endpoint(Service::Control),
            "https://bedrock.eu-west-1.amazonaws.com"
        );
        // Web identity from a profile.
        let (s, _) = get(files(Some("irsa"))).unwrap();
        assert!(
            matches!(s, Source::WebIdentity { ref role_arn, .. } if role_arn.ends_with("role/r"))
        );
        // A role assumed with another profile's keys, or its own.
        for (name, inner) in [("role", "AKIDDEV"), ("self", "AKIDSELF")] {
            let (s, from) = get(files(Some(name))).unwrap();
            let Source::AssumeRole { source, .. } = s else {
                panic!("{s:?}")
            };
            assert!(
                matches!(*source, Source::Keys { ref key_id, .. } if key_id == inner),
                "{source:?}"
            );
            assert!(from.contains("assumed with AWS profile"), "{from}");
        }
        let err = get(files(Some("loop"))).unwrap_err();
        assert!(err.to_string().contains("a loop?"), "{err}");
        let (s, _) = get(files(Some("proc"))).unwrap();
        assert_eq!(s, Source::Process("/bin/creds --user me".into()));
        // Kinds aiq does not read, and a missing profile, are refused.
        let err = get(files(Some("sso"))).unwrap_err();
        assert!(err.to_string().contains("export-credentials"), "{err}");
        let env = env_of(files(Some("nope")));
        let err = read_profile(&|k| env(k)).unwrap_err();
        assert_eq!(err.exit_code(), 2, "{err}");
        // Web identity and container credentials from the environment.
        let (s, _) = get(vec![
            ("AWS_WEB_IDENTITY_TOKEN_FILE", "/t".into()),
            ("AWS_ROLE_ARN", "arn:aws:iam::1:role/x".into()),
        ])
        .unwrap();
        assert!(matches!(s, Source::WebIdentity { .. }));
        let (s, _) = get(vec![(
            "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
            "/v2/c".into(),
        )])
        .unwrap();
        assert_eq!(s, Source::ContainerRelative("/v2/c".into()));
        assert!(get(vec![(
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
            "http://x".into()
        )])
        .is_err());
        let (s, _) = get(vec![]).unwrap();
        assert_eq!(s, Source::Instance { endpoint: None });
        assert!(get(vec![("AWS_EC2_METADATA_DISABLED", "true".into())]).is_err());
        assert!(get(vec![("AWS_ACCESS_KEY_ID", "A".into())]).is_err());
        // No region anywhere.
        let err = Aws::resolve(&env_of(vec![
            ("AWS_ACCESS_KEY_ID", "A".into()),
            ("AWS_SECRET_ACCESS_KEY", "B".into()),
        ]))
        .unwrap_err();
        assert!(err.to_string().contains("AWS_REGION"), "{err}");
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn endpoints_as_the_sdks_read_them() {
        let mut e = keys();
        e.push(("AWS_ENDPOINT_URL", "http://global:1/".into()));
        e.push((
            "AWS_ENDPOINT_URL_BEDROCK_RUNTIME",
            "http://runtime:2".into(),
        ));
        let aws = Aws::resolve(&env_of(e.clone())).unwrap();
        assert_eq!(aws.endpoint(Service::Runtime), "http://runtime:2");
        assert_eq!(aws.endpoint(Service::Control), "http://global:1");
        e.push(("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "true".into()));
        let aws = Aws::resolve(&env_of(e)).unwrap();
        assert_eq!(
            aws.endpoint(Service::Runtime),
            "https://bedrock-runtime.us-east-1.amazonaws.com"
        );
        let mut cn = keys();
        cn[2].1 = "cn-north-1".into();
        let aws = Aws::resolve(&env_of(cn)).unwrap();
        assert_eq!(
            aws.endpoint(Service::Control),
            "https://bedrock.cn-north-1.amazonaws.com.cn"
        );
        assert_eq!(
            path_segment("us.anthropic.claude-3-5-haiku-20241022-v1:0"),
            "us.anthropic.claude-3-5-haiku-20241022-v1%3A0"
        );
        assert_eq!(path_segment("arn:aws:x/y"), "arn%3Aaws%3Ax%2Fy");
    }

    #[tokio::test]
    async fn signs_with_the_session_token_and_lists_secrets() {
        let mut e = keys();
        e.push(("AWS_SESSION_TOKEN", "FwoGZXIvYXdzEXAMPLETOKEN".into()));
        let aws = Aws::resolve(&env_of(e)).unwrap();
        assert!(aws.secrets().is_empty());
        let uri: hyper::Uri =
            "https://bedrock-runtime.us-east-1.amazonaws.com/model/a%3A0/converse"
                .parse()
                .unwrap();
        let headers = aws
            .sign(&hyper::Method::POST, &uri, &Bytes::from_static(b"{}"))
            .await
            .unwrap();
        let get = |n: &str| {
            headers
                .iter()
                .find(|(h, _)| h.as_str() == n)
                .map(|(_, v)| v.to_str().unwrap().to_string())
        };
        let auth = get("authorization").unwrap();
        assert!(
            auth.starts_with("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/")
                && auth.contains("/us-east-1/bedrock/aws4_request")
                && auth.contains(
                    "SignedHeaders=host;x-amz-content-sha256;x-amz-date;x-amz-security-token"
                ),
            "{auth}"
        );
        assert_eq!(
            get("x-amz-security-token").unwrap(),
            "FwoGZXIvYXdzEXAMPLETOKEN"
        );
        assert!(get("host").is_none());
        let secrets = aws.secrets();
        assert!(secrets.contains(&"wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".to_string()));
        assert!(!format!("{aws:?}").contains("wJalr"));
    }

    fn tempdir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "aiq-aws-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
