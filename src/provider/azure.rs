//! Azure OpenAI (`--endpoint azure`): where a deployment's API is and how
//! aiq logs in to it, behind [`crate::provider::dialect::Dialect`].
//!
//! The wire is OpenAI's (bodies, replies, streams, usage with cached
//! tokens, `retry-after-ms` and `x-ratelimit-remaining-*`), so the dialect's
//! request and reply arms are the identity; what differs is the URL and the
//! credentials:
//!
//! - **Where**: the resource endpoint from `--base-url`, else
//!   [`ENDPOINT_VAR`] (`https://NAME.openai.azure.com`); `--model` is the
//!   deployment's name. `--api-version` picks the path style
//!   ([`api_base`]): a dated version (default [`DEFAULT_API_VERSION`], the
//!   latest GA one) is the deployments path,
//!   `/openai/deployments/{deployment}/chat/completions?api-version=…`; `v1`
//!   is the v1 API, `/openai/v1/chat/completions` with the deployment as
//!   the body's `model` and no dated version. An endpoint given as
//!   `…/openai/v1` is the v1 API too.
//! - **Credentials** ([`credentials`]), the first source set wins: the key
//!   in `--api-key-env` or [`KEY_VAR`], sent as `api-key`; a Microsoft Entra
//!   ID token in [`AD_TOKEN_VAR`], sent as a bearer token; or a service
//!   principal's client credentials ([`TENANT_VAR`], [`CLIENT_ID_VAR`],
//!   [`CLIENT_SECRET_VAR`]), exchanged at
//!   `{authority}/{tenant}/oauth2/v2.0/token` for tokens of [`SCOPE`] and
//!   refreshed before they expire (the OAuth cache of
//!   [`crate::provider::auth::OAuthM2M`], shared with Databricks). The
//!   authority is [`AUTHORITY_HOST_VAR`] (as azure-identity reads it), else
//!   [`DEFAULT_AUTHORITY_HOST`].
//!
//! A deployment's limits come back as `x-ratelimit-remaining-requests` and
//! `-tokens` (Azure sends no `-limit-` or `-reset-` headers) and a 429's
//! `retry-after-ms`/`retry-after`, which [`crate::provider::limit`] and
//! [`crate::provider::retry`] read as for OpenAI.

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::provider::auth::{Credentials, OAuthM2M, Secret};

/// The variable the SDKs read the resource endpoint from.
pub const ENDPOINT_VAR: &str = "AZURE_OPENAI_ENDPOINT";
/// The variable holding the resource's API key.
pub const KEY_VAR: &str = "AZURE_OPENAI_API_KEY";
/// The header the key is sent in.
pub const KEY_HEADER: &str = "api-key";
/// The variable holding a Microsoft Entra ID access token.
pub const AD_TOKEN_VAR: &str = "AZURE_OPENAI_AD_TOKEN";
/// A service principal's tenant, client id and secret (azure-identity's
/// `EnvironmentCredential` names).
pub const TENANT_VAR: &str = "AZURE_TENANT_ID";
pub const CLIENT_ID_VAR: &str = "AZURE_CLIENT_ID";
pub const CLIENT_SECRET_VAR: &str = "AZURE_CLIENT_SECRET";
/// Where Entra ID is, for sovereign clouds (and tests).
pub const AUTHORITY_HOST_VAR: &str = "AZURE_AUTHORITY_HOST";
pub const DEFAULT_AUTHORITY_HOST: &str = "https://login.microsoftonline.com";
/// The scope of tokens for Azure OpenAI (Cognitive Services).
pub const SCOPE: &str = "https://cognitiveservices.azure.com/.default";

/// The api-version sent when `--api-version` is not given: the latest GA
/// version of the deployments path. A dated version pins the API's
/// behaviour until the user moves it; `v1` follows Azure's latest.
pub const DEFAULT_API_VERSION: &str = "2024-10-21";
/// `--api-version v1`: the v1 API.
pub const V1: &str = "v1";

/// Every variable `--endpoint azure` reads, for handing over to runs
/// elsewhere ([`crate::provider::endpoint::handover`]).
pub const VARIABLES: [&str; 7] = [
    ENDPOINT_VAR,
    KEY_VAR,
    AD_TOKEN_VAR,
    TENANT_VAR,
    CLIENT_ID_VAR,
    CLIENT_SECRET_VAR,
    AUTHORITY_HOST_VAR,
];

/// The base every route of the job's deployment hangs from, with the
/// query each request carries: `{endpoint}/openai/deployments/{deployment}
/// ?api-version={version}` or, for `v1` (or an endpoint given as
/// `…/openai/v1`), `{endpoint}/openai/v1`. [`url`] puts a route in it.
pub fn api_base(endpoint: &str, deployment: &str, api_version: Option<&str>) -> Result<String> {
    let (resource, v1_endpoint) = resource(endpoint);
    match (api_version, v1_endpoint) {
        (Some(V1), _) | (None, true) => Ok(format!("{resource}/openai/v1")),
        (Some(dated), true) => Err(Error::Config(format!(
            "--api-version {dated} is for the deployments path, but the endpoint {endpoint} is the v1 API: \
             give the resource endpoint (https://NAME.openai.azure.com), or --api-version v1"
        ))),
        (version, false) => {
            let version = version.unwrap_or(DEFAULT_API_VERSION);
            check_version(version)?;
            check_deployment(deployment)?;
            Ok(format!(
                "{resource}/openai/deployments/{deployment}?api-version={version}"
            ))
        }
    }
}

/// The base of the Files and Batch APIs: the resource's, beside the
/// deployments (`{endpoint}/openai?api-version=…`), or the v1 API's.
pub fn files_base(api_base: &str) -> String {
    let (path, query) = split_query(api_base);
    match path.find("/openai/deployments/") {
        Some(at) => format!("{}/openai{query}", &path[..at]),
        None => api_base.to_string(),
    }
}

/// `base` (from [`api_base`]) split before its query: the path, and the
/// query with its `?` (or nothing). A route goes between them.
pub fn split_query(base: &str) -> (&str, &str) {
    match base.find('?') {
        Some(at) => base.split_at(at),
        None => (base, ""),
    }
}

/// The resource endpoint without a trailing slash or `/openai` part, and
/// whether it was given as the v1 API's base (`…/openai/v1`).
fn resource(endpoint: &str) -> (&str, bool) {
    let e = endpoint.trim().trim_end_matches('/');
    if let Some(r) = e.strip_suffix("/openai/v1") {
        (r, true)
    } else {
        (e.strip_suffix("/openai").unwrap_or(e), false)
    }
}

/// Is `version` a dated api-version, `YYYY-MM-DD` maybe with `-preview`?
/// (The simulator checks requests with this too.)
pub fn is_dated_version(version: &str) -> bool {
    let date = version.strip_suffix("-preview").unwrap_or(version);
    let digits = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit());
    let parts: Vec<&str> = date.split('-').collect();
    matches!(parts.as_slice(), [y, m, d] if digits(y, 4) && digits(m, 2) && digits(d, 2))
}

/// A dated api-version; anything else is a typo the service would answer
/// with an error for every row.
fn check_version(version: &str) -> Result<()> {
    if is_dated_version(version) {
        return Ok(());
    }
    Err(Error::Config(format!(
        "--api-version `{version}` is neither a dated version (YYYY-MM-DD or YYYY-MM-DD-preview, \
         default {DEFAULT_API_VERSION}) nor `v1`"
    )))
}

/// A deployment name goes into the URL's path: letters, digits, `_`, `.`
/// and `-` only, as Azure allows.
fn check_deployment(deployment: &str) -> Result<()> {
    let fits = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-');
    if !deployment.is_empty() && deployment.bytes().all(fits) {
        return Ok(());
    }
    Err(Error::Config(format!(
        "--model `{deployment}` is not an Azure OpenAI deployment name (letters, digits, `_`, `.` and `-`)"
    )))
}

/// The credentials `--endpoint azure` sends and where they came from (for
/// the message when the service refuses them): see the module's list. No
/// source set, or one half set (a client id without its secret), stops
/// the job before anything is sent, naming what to set.
pub fn credentials(
    api_key_env: Option<&str>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(Credentials, String)> {
    let get = |var: &str| {
        env(var)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    if let Some(var) = api_key_env.map(str::trim) {
        let key = get(var).ok_or_else(|| {
            Error::Credentials(format!("--api-key-env {var}: the variable is not set"))
        })?;
        return Ok((api_key(key), format!("the key in {var}")));
    }
    if let Some(key) = get(KEY_VAR) {
        return Ok((api_key(key), format!("the key in {KEY_VAR}")));
    }
    if let Some(token) = get(AD_TOKEN_VAR) {
        return Ok((
            Credentials::Bearer(Secret::new(token)),
            format!("the Entra ID token in {AD_TOKEN_VAR}"),
        ));
    }
    let client = [TENANT_VAR, CLIENT_ID_VAR, CLIENT_SECRET_VAR].map(get);
    match client {
        [Some(tenant), Some(id), Some(secret)] => {
            check_tenant(&tenant)?;
            let authority = authority(get(AUTHORITY_HOST_VAR).as_deref())?;
            let url = format!("{authority}/{tenant}/oauth2/v2.0/token");
            let from = format!("Entra ID client {id} of tenant {tenant} (from {CLIENT_ID_VAR})");
            let oauth = OAuthM2M::entra(url, SCOPE, id, Secret::new(secret));
            Ok((Credentials::OAuth(Arc::new(oauth)), from))
        }
        [None, None, None] => Err(Error::Credentials(format!(
            "--endpoint azure needs credentials: set {KEY_VAR} (or --api-key-env), {AD_TOKEN_VAR}, \
             or {TENANT_VAR}, {CLIENT_ID_VAR} and {CLIENT_SECRET_VAR}"
        ))),
        _ => {
            let vars = [TENANT_VAR, CLIENT_ID_VAR, CLIENT_SECRET_VAR];
            let missing: Vec<&str> = vars
                .iter()
                .zip(&client)
                .filter(|(_, v)| v.is_none())
                .map(|(var, _)| *var)
                .collect();
            Err(Error::Credentials(format!(
                "--endpoint azure: Entra ID client credentials need {TENANT_VAR}, {CLIENT_ID_VAR} \
                 and {CLIENT_SECRET_VAR}; {} not set",
                missing.join(" and ")
            )))
        }
    }
}

fn api_key(key: String) -> Credentials {
    Credentials::ApiKey {
        header: KEY_HEADER,
        key: Secret::new(key),
    }
}

/// A tenant id (a GUID or a domain) goes into the token URL's path.
fn check_tenant(tenant: &str) -> Result<()> {
    let fits = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-');
    if tenant.bytes().all(fits) {
        return Ok(());
    }
    Err(Error::Credentials(format!(
        "{TENANT_VAR} `{tenant}` is not a tenant id or domain"
    )))
}

/// The Entra ID authority: `https://` added when no scheme is given (as
/// azure-identity's host names are written), no trailing slash.
fn authority(host: Option<&str>) -> Result<String> {
    let host = host.unwrap_or(DEFAULT_AUTHORITY_HOST).trim_end_matches('/');
    let url = if host.contains("://") {
        host.to_string()
    } else {
        format!("https://{host}")
    };
    match reqwest::Url::parse(&url) {
        Ok(u) if matches!(u.scheme(), "https" | "http") && u.host_str().is_some() => Ok(url),
        _ => Err(Error::Credentials(format!(
            "{AUTHORITY_HOST_VAR} `{host}` is not an https:// URL"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn both_path_styles() {
        let e = "https://res.openai.azure.com/";
        assert_eq!(
            api_base(e, "gpt4o", None).unwrap(),
            "https://res.openai.azure.com/openai/deployments/gpt4o?api-version=2024-10-21"
        );
        assert_eq!(
            api_base(e, "d", Some("2025-04-01-preview")).unwrap(),
            "https://res.openai.azure.com/openai/deployments/d?api-version=2025-04-01-preview"
        );
        assert_eq!(
            api_base(e, "d", Some("v1")).unwrap(),
            "https://res.openai.azure.com/openai/v1"
        );
        assert_eq!(
            api_base("https://res.openai.azure.com/openai/v1/", "d", None).unwrap(),
            "https://res.openai.azure.com/openai/v1"
        );
        assert_eq!(
            api_base("https://res.openai.azure.com/openai", "d", None).unwrap(),
            "https://res.openai.azure.com/openai/deployments/d?api-version=2024-10-21"
        );
        let base = api_base(e, "d", None).unwrap();
        assert_eq!(
            files_base(&base),
            "https://res.openai.azure.com/openai?api-version=2024-10-21"
        );
        assert_eq!(files_base("http://h/openai/v1"), "http://h/openai/v1");
        for bad in ["2024-10", "latest", "2024-10-21?x=1", ""] {
            let err = api_base(e, "d", Some(bad)).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{bad}: {err}");
        }
        assert!(api_base(e, "my/dep", None).is_err());
        assert!(api_base("http://h/openai/v1", "d", Some("2024-10-21")).is_err());
    }

    #[test]
    fn credentials_in_order_and_missing_ones_named() {
        let (c, from) = credentials(None, &env_of(&[(KEY_VAR, "k"), (AD_TOKEN_VAR, "t")])).unwrap();
        assert!(
            matches!(
                c,
                Credentials::ApiKey {
                    header: "api-key",
                    ..
                }
            ) && from.contains(KEY_VAR)
        );
        let (c, _) = credentials(None, &env_of(&[(AD_TOKEN_VAR, "t")])).unwrap();
        assert!(matches!(c, Credentials::Bearer(t) if t.expose() == "t"));
        let (c, from) = credentials(Some("MY_KEY"), &env_of(&[("MY_KEY", "k2")])).unwrap();
        assert!(matches!(c, Credentials::ApiKey { key, .. } if key.expose() == "k2"));
        assert!(from.contains("MY_KEY"));
        let sp = env_of(&[
            (TENANT_VAR, "contoso.onmicrosoft.com"),
            (CLIENT_ID_VAR, "app-1"),
            (CLIENT_SECRET_VAR, "s3cr3t~x"),
            (AUTHORITY_HOST_VAR, "http://127.0.0.1:9/"),
        ]);
        let (c, from) = credentials(None, &sp).unwrap();
        let Credentials::OAuth(o) = c else {
            panic!("{c:?}")
        };
        assert_eq!(o.client_id(), "app-1");
        let shown = format!("{o:?} {from}");
        assert!(
            shown.contains("http://127.0.0.1:9/contoso.onmicrosoft.com/oauth2/v2.0/token"),
            "{shown}"
        );
        assert!(!shown.contains("s3cr3t"), "{shown}");
        let half = credentials(None, &env_of(&[(CLIENT_ID_VAR, "app-1")])).unwrap_err();
        let msg = half.to_string();
        assert!(
            msg.contains(TENANT_VAR) && msg.contains("AZURE_CLIENT_SECRET not set"),
            "{msg}"
        );
        let none = credentials(None, &env_of(&[])).unwrap_err().to_string();
        assert!(
            none.contains(KEY_VAR) && none.contains(AD_TOKEN_VAR),
            "{none}"
        );
        assert_eq!(authority(None).unwrap(), DEFAULT_AUTHORITY_HOST);
        assert_eq!(
            authority(Some("login.microsoftonline.us")).unwrap(),
            "https://login.microsoftonline.us"
        );
    }
}
