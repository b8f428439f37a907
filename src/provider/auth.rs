//! Endpoint credentials: where they come from, and the token each request
//! carries.
//!
//! This module owns finding credentials (Databricks: environment and
//! `~/.databrickscfg` profiles, resolved the way the Databricks SDKs do it;
//! OpenAI-compatible servers: one environment variable, or a `user:password@`
//! in the URL), fetching and caching OAuth machine-to-machine tokens, and
//! keeping every secret out of logs, output and error messages:
//!
//! - a [`Secret`] prints as `[redacted]`; the only way to its text is
//!   [`Secret::expose`], called where the `Authorization` header is built
//!   ([`Credentials::authorization`]);
//! - a URL is shown or stored only through [`redact_url`], which hides its
//!   user-info;
//! - server text (error bodies, replies) passes a [`Scrubber`] before aiq
//!   prints or stores any of it: a server that echoes the request's
//!   headers would otherwise hand the token back into the journal, the
//!   output and the terminal.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::provider::wire;

/// A secret string (token, client secret). `Debug` and `Display` print
/// `[redacted]`, so a secret can sit in structs that get logged.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    /// The secret's text: only for the header or form that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// How requests to an endpoint authenticate.
#[derive(Debug, Clone)]
pub enum Credentials {
    /// No `Authorization` header (local servers, the simulator).
    None,
    /// A fixed bearer token (API key, Databricks personal access token).
    Bearer(Secret),
    /// HTTP Basic: `user:password` (percent-decoded) from the user-info of
    /// an endpoint URL, as curl and browsers send it.
    Basic(Secret),
    /// OAuth client credentials exchanged for short-lived tokens.
    OAuth(Arc<OAuthM2M>),
    /// An API key sent in a provider's own header rather than
    /// `Authorization` (Anthropic's `x-api-key`, Gemini's
    /// `x-goog-api-key`).
    ApiKey { header: &'static str, key: Secret },
    /// AWS SigV4: each request signed with the account's credentials
    /// ([`crate::provider::aws`]).
    Aws(Arc<crate::provider::aws::Aws>),
}

impl fmt::Display for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::None => f.write_str("no credentials"),
            Credentials::Bearer(_) => f.write_str("a bearer token"),
            Credentials::Basic(_) => f.write_str("the user and password of the URL"),
            Credentials::OAuth(o) => write!(f, "OAuth client {}", o.client_id),
            Credentials::ApiKey { header, .. } => write!(f, "an API key in `{header}`"),
            Credentials::Aws(aws) => write!(f, "AWS credentials from {}", aws.source()),
        }
    }
}

impl Credentials {
    /// The credentials header to send, if any (`Authorization`, or a
    /// provider's key header), its value marked sensitive (kept out of any
    /// debug output of the request). For OAuth this may fetch a new token;
    /// concurrent callers wait for one fetch.
    pub async fn authorization(
        &self,
        http: &reqwest::Client,
    ) -> Result<Option<(reqwest::header::HeaderName, reqwest::header::HeaderValue)>> {
        let mut name = reqwest::header::AUTHORIZATION;
        let value = match self {
            Credentials::None => return Ok(None),
            Credentials::Bearer(token) => format!("Bearer {}", token.expose()),
            Credentials::Basic(login) => format!("Basic {}", base64_of(login.expose())),
            Credentials::OAuth(oauth) => format!("Bearer {}", oauth.token(http).await?.expose()),
            Credentials::ApiKey { header, key } => {
                name = reqwest::header::HeaderName::from_static(header);
                key.expose().to_owned()
            }
            Credentials::Aws(_) => {
                return Err(Error::Credentials(
                    "AWS credentials sign each request: use Credentials::headers".into(),
                ))
            }
        };
        let mut value = reqwest::header::HeaderValue::from_str(&value).map_err(|_| {
            Error::Credentials("the token contains characters not allowed in an HTTP header".into())
        })?;
        value.set_sensitive(true);
        Ok(Some((name, value)))
    }

    /// The credentials headers for a `method` request of `body` to `uri`:
    /// the one of [`Credentials::authorization`], or an AWS request's
    /// signature headers, which cover the method, the URL and the body.
    pub async fn headers(
        &self,
        http: &reqwest::Client,
        method: &hyper::Method,
        uri: &hyper::Uri,
        body: &bytes::Bytes,
    ) -> Result<Vec<(reqwest::header::HeaderName, reqwest::header::HeaderValue)>> {
        match self {
            Credentials::Aws(aws) => aws.sign(method, uri, body).await,
            other => Ok(other.authorization(http).await?.into_iter().collect()),
        }
    }

    /// What hides these credentials in server text (see [`Scrubber`]).
    pub fn scrubber(&self) -> Scrubber {
        let mut s = Scrubber::default();
        match self {
            Credentials::None => {}
            Credentials::Bearer(token) | Credentials::ApiKey { key: token, .. } => {
                s.add(token.expose())
            }
            Credentials::Basic(login) => s.add_login(login.expose()),
            Credentials::OAuth(oauth) => {
                s = oauth.scrubber();
                s.oauth = Some(oauth.clone());
            }
            Credentials::Aws(aws) => s.aws = Some(aws.clone()),
        }
        // A proxy may quote the Proxy-Authorization it was sent.
        for var in PROXY_VARS {
            let login = std::env::var(var)
                .ok()
                .and_then(|url| split_user_info(&url).1);
            if let Some(login) = login {
                s.add_login(login.expose());
            }
        }
        s
    }
}

fn base64_of(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// Hides secrets in text that came from a server, before aiq prints or
/// stores it: each secret the job's credentials hold (token, password,
/// OAuth client secret and every access token fetched with it), in each
/// form a server could echo (as sent in `Authorization: Bearer …` or
/// `Basic …`, and JSON-escaped), becomes `[redacted]`. Server text enters
/// aiq in a few places, and each passes its bytes through here first: the
/// client's reply and error bodies ([`crate::pipeline::client`]), streamed
/// reply text ([`crate::provider::stream`]), the Batch API's replies
/// ([`crate::provider::batch_api`]) and the OAuth token endpoint's errors.
#[derive(Clone, Default)]
pub struct Scrubber {
    /// Each form of each secret, its searcher built once (building it per
    /// search doubled the cost): a clean 1 KB reply takes ~130 ns for a
    /// token, ~700 ns for the five forms of a login, against ~1.2 µs to
    /// parse it (`cargo bench --bench pipeline -- reply_`).
    needles: Vec<memchr::memmem::Finder<'static>>,
    /// Tokens fetched with these credentials are secrets too; they arrive
    /// while the job runs.
    oauth: Option<Arc<OAuthM2M>>,
    /// AWS keys and session tokens, which may change while the job runs.
    aws: Option<Arc<crate::provider::aws::Aws>>,
}

impl fmt::Debug for Scrubber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Scrubber({} forms)", self.needles.len())
    }
}

/// What a secret becomes in scrubbed text.
const REDACTED: &str = "[redacted]";

impl Scrubber {
    /// Hide `secret` as it is and as JSON may escape it.
    fn add(&mut self, secret: &str) {
        if secret.is_empty() {
            return;
        }
        let json = serde_json::to_string(secret).unwrap_or_default();
        let json = json.trim_matches('"');
        for form in [secret, json, &json.replace('/', "\\/")] {
            if !self.needles.iter().any(|n| n.needle() == form.as_bytes()) {
                self.needles
                    .push(memchr::memmem::Finder::new(form.as_bytes()).into_owned());
            }
        }
    }

    /// Hide a `user:password`: the password alone (or, with none, the user,
    /// which is then a token), the pair, and its Basic form.
    fn add_login(&mut self, login: &str) {
        match login.split_once(':') {
            Some((_, password)) if !password.is_empty() => self.add(password),
            Some((user, _)) => self.add(user),
            None => self.add(login),
        }
        self.add(login);
        self.add(&base64_of(login));
    }

    /// `body` with every secret hidden; the same bytes (no copy) when it
    /// holds none, which is nearly always.
    pub fn bytes(&self, body: bytes::Bytes) -> bytes::Bytes {
        match self.scrubbed(&body) {
            Some(clean) => clean.into(),
            None => body,
        }
    }

    /// [`Scrubber::bytes`] for text.
    pub fn text<'a>(&self, text: &'a str) -> std::borrow::Cow<'a, str> {
        match self.scrubbed(text.as_bytes()) {
            // Only whole secrets were replaced, by ASCII: still UTF-8.
            Some(clean) => String::from_utf8_lossy(&clean).into_owned().into(),
            None => text.into(),
        }
    }

    /// `data` with every secret replaced, or None when it holds none.
    fn scrubbed(&self, data: &[u8]) -> Option<Vec<u8>> {
        let issued = self
            .oauth
            .as_ref()
            .map(|o| o.issued.lock().unwrap_or_else(|e| e.into_inner()));
        // AWS secret keys hold `/`, which JSON may write as `\/`.
        let aws: Vec<String> = self
            .aws
            .iter()
            .flat_map(|a| a.secrets())
            .flat_map(|s| [s.replace('/', "\\/"), s])
            .collect();
        let issued: Vec<memchr::memmem::Finder<'_>> = issued
            .iter()
            .flat_map(|tokens| tokens.iter())
            .map(|t| t.expose())
            .chain(aws.iter().map(String::as_str))
            .filter(|t| !t.is_empty())
            .map(|t| memchr::memmem::Finder::new(t.as_bytes()))
            .collect();
        let mut clean: Option<Vec<u8>> = None;
        for finder in self.needles.iter().chain(&issued) {
            let needle = finder.needle();
            let current = clean.as_deref().unwrap_or(data);
            if needle.is_empty() || finder.find(current).is_none() {
                continue;
            }
            let mut out = Vec::with_capacity(current.len());
            let mut at = 0;
            for found in finder.find_iter(current) {
                // Overlapping matches (a secret like `aaa`) are one.
                if found < at {
                    continue;
                }
                out.extend_from_slice(&current[at..found]);
                out.extend_from_slice(REDACTED.as_bytes());
                at = found + needle.len();
            }
            out.extend_from_slice(&current[at..]);
            clean = Some(out);
        }
        clean
    }
}

/// OAuth client-credentials (machine-to-machine, service principal)
/// credentials, and the token they last produced: Databricks' (`POST
/// {host}/oidc/v1/token`, the client in HTTP Basic) or Microsoft Entra ID's
/// for Azure OpenAI ([`OAuthM2M::entra`]: the client in the form, as
/// azure-identity sends it). One cache and refresh for both.
pub struct OAuthM2M {
    token_url: String,
    /// The `scope` asked for.
    scope: String,
    /// The client id and secret go in the form body rather than in HTTP
    /// Basic.
    client_in_form: bool,
    client_id: String,
    client_secret: Secret,
    /// Held across the fetch, so that a hundred workers finding the token
    /// stale make one request, not a hundred.
    cached: tokio::sync::Mutex<Option<CachedToken>>,
    /// Every token fetched, for [`Scrubber`]: a server may echo an old one.
    issued: std::sync::Mutex<Vec<Secret>>,
    retry_delay: Duration,
}

struct CachedToken {
    token: Secret,
    refresh_at: Instant,
}

impl fmt::Debug for OAuthM2M {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OAuthM2M")
            .field("token_url", &self.token_url)
            .field("client_id", &self.client_id)
            .field("client_secret", &self.client_secret)
            .finish_non_exhaustive()
    }
}

/// Attempts at the token endpoint before giving up: transport errors, 429
/// and 5xx are retried (a blip there should not stop a long job); other
/// replies mean the credentials are wrong and are not.
const TOKEN_ATTEMPTS: u32 = 3;
/// A token endpoint that does not answer within this is treated as down.
const TOKEN_TIMEOUT: Duration = Duration::from_secs(30);
/// Lifetime assumed when the reply has no `expires_in` (it is optional in
/// OAuth); Databricks tokens last an hour.
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);
/// Longest lifetime believed, whatever the server says.
const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// Longest time before expiry at which a token is replaced.
const MAX_REFRESH_MARGIN: Duration = Duration::from_secs(5 * 60);

/// How long before expiry a token of `lifetime` is replaced: 5 minutes, or a
/// tenth of its lifetime if that is less (so a short-lived token is still
/// used for most of its life), leaving room for requests in flight and for
/// clock drift.
fn refresh_margin(lifetime: Duration) -> Duration {
    MAX_REFRESH_MARGIN.min(lifetime / 10)
}

#[derive(Deserialize)]
struct TokenReply {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

impl OAuthM2M {
    /// `host` as normalised by [`normalise_host`] (scheme, no trailing slash).
    pub fn new(
        host: impl Into<String>,
        client_id: impl Into<String>,
        client_secret: Secret,
    ) -> Self {
        OAuthM2M {
            token_url: format!("{}/oidc/v1/token", host.into()),
            scope: "all-apis".into(),
            client_in_form: false,
            client_id: client_id.into(),
            client_secret,
            cached: tokio::sync::Mutex::new(None),
            issued: std::sync::Mutex::new(Vec::new()),
            retry_delay: Duration::from_millis(500),
        }
    }

    /// Microsoft Entra ID's client credentials: tokens for `scope` from
    /// `token_url` (`{authority}/{tenant}/oauth2/v2.0/token`).
    pub fn entra(
        token_url: impl Into<String>,
        scope: impl Into<String>,
        client_id: impl Into<String>,
        client_secret: Secret,
    ) -> Self {
        OAuthM2M {
            token_url: token_url.into(),
            scope: scope.into(),
            client_in_form: true,
            ..OAuthM2M::new("", client_id, client_secret)
        }
    }

    /// The pause before the second attempt at the token endpoint (doubling
    /// after); tests set it to zero.
    pub fn with_retry_delay(mut self, delay: Duration) -> Self {
        self.retry_delay = delay;
        self
    }

    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// Hides the client secret (alone, and in the Basic header the token
    /// request carries).
    fn scrubber(&self) -> Scrubber {
        let mut s = Scrubber::default();
        s.add_login(&format!(
            "{}:{}",
            self.client_id,
            self.client_secret.expose()
        ));
        // As the form carries it, should a server quote the form.
        let encoded: String =
            url::form_urlencoded::byte_serialize(self.client_secret.expose().as_bytes()).collect();
        s.add(&encoded);
        s
    }

    /// A token valid for a while yet: the cached one, or a fresh one.
    pub async fn token(&self, http: &reqwest::Client) -> Result<Secret> {
        let mut cached = self.cached.lock().await;
        if let Some(c) = cached.as_ref() {
            if Instant::now() < c.refresh_at {
                return Ok(c.token.clone());
            }
        }
        // Measured from before the request, so the expiry we compute is
        // never later than the server's.
        let asked_at = Instant::now();
        let reply = self.fetch(http).await?;
        // Capped, so that an absurd `expires_in` cannot overflow the clock
        // or keep a token past any sensible life.
        let lifetime = reply
            .expires_in
            .map(Duration::from_secs)
            .unwrap_or(DEFAULT_TOKEN_LIFETIME)
            .min(MAX_TOKEN_LIFETIME);
        let token = Secret::new(reply.access_token);
        self.issued
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(token.clone());
        *cached = Some(CachedToken {
            token: token.clone(),
            refresh_at: asked_at + lifetime - refresh_margin(lifetime),
        });
        Ok(token)
    }

    async fn fetch(&self, http: &reqwest::Client) -> Result<TokenReply> {
        let url = self.token_url.clone();
        let mut delay = self.retry_delay;
        let mut attempt = 1;
        loop {
            let (retryable, message) = match self.fetch_once(http, &url).await {
                Ok(reply) => return Ok(reply),
                Err(e) => e,
            };
            if !retryable {
                return Err(Error::Credentials(format!(
                    "OAuth token request to {url} for client {} failed: {message} (check the service principal's client id and secret)",
                    self.client_id
                )));
            }
            if attempt >= TOKEN_ATTEMPTS {
                return Err(Error::Aborted(format!(
                    "OAuth token request to {url} failed {TOKEN_ATTEMPTS} times: {message}"
                )));
            }
            tracing::warn!(%url, attempt, "OAuth token request failed, retrying: {message}");
            tokio::time::sleep(delay).await;
            delay *= 2;
            attempt += 1;
        }
    }

    /// The token request's form: the grant, the scope, and the client when
    /// it goes in the form.
    fn form(&self) -> String {
        let mut form = url::form_urlencoded::Serializer::new(String::new());
        form.append_pair("grant_type", "client_credentials");
        if self.client_in_form {
            form.append_pair("client_id", &self.client_id);
            form.append_pair("client_secret", self.client_secret.expose());
        }
        form.append_pair("scope", &self.scope);
        form.finish()
    }

    /// One token request: the reply, or whether to retry and what went wrong.
    async fn fetch_once(
        &self,
        http: &reqwest::Client,
        url: &str,
    ) -> std::result::Result<TokenReply, (bool, String)> {
        let mut request = http.post(url);
        if !self.client_in_form {
            request = request.basic_auth(&self.client_id, Some(self.client_secret.expose()));
        }
        let response = request
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .header(reqwest::header::ACCEPT, "application/json")
            .body(self.form())
            .timeout(TOKEN_TIMEOUT)
            .send()
            .await
            .map_err(|e| (true, format!("no reply: {}", error_chain(&e))))?;
        let status = response.status();
        if !status.is_success() {
            let retryable = status.is_server_error() || status.as_u16() == 429;
            let headers = response.headers().clone();
            let (head, len) = wire::error_body(&headers, reqwest::Body::from(response)).await;
            let body = self.scrubber().bytes(head);
            let message = server_message(&String::from_utf8_lossy(&body), len);
            return Err((retryable, format!("HTTP {status}: {message}")));
        }
        let body = response.text().await.map_err(|e| {
            (
                true,
                format!("HTTP {status}, reply unreadable: {}", error_chain(&e)),
            )
        })?;
        let body = self.scrubber().text(&body).into_owned();
        serde_json::from_str(&body).map_err(|e| {
            (
                false,
                format!(
                    "HTTP {status}, but the reply is not a token ({e}): {}",
                    server_message(&body, wire::BodyLen::Exact(body.len() as u64))
                ),
            )
        })
    }
}

/// An error with its causes (reqwest's own message hides whether it was DNS,
/// TLS or a refused connection).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

/// What the server said: the OAuth `error_description`/`error` (or a
/// `message`) when the body is JSON, else the body; cut to
/// [`wire::MAX_SERVER_MESSAGE`].
fn server_message(body: &str, len: wire::BodyLen) -> String {
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(body) {
        let field = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_owned);
        let parts: Vec<String> = [
            field("error"),
            field("error_description").or_else(|| field("message")),
        ]
        .into_iter()
        .flatten()
        .collect();
        if !parts.is_empty() {
            return wire::cut_message(&parts.join(": "), len);
        }
    }
    let body = body.trim();
    if body.is_empty() {
        return "(empty reply)".into();
    }
    wire::cut_message(body, len)
}

/// The environment variables that name proxies (read as reqwest and
/// hyper-util read them); their URLs may carry a `user:password@`.
pub const PROXY_VARS: [&str; 6] = [
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "ALL_PROXY",
    "all_proxy",
];

/// Where the user-info (`user:password`) of `url` is, as a byte range.
fn user_info(url: &str) -> Option<std::ops::Range<usize>> {
    let start = url.find("://")? + 3;
    let rest = &url[start..];
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    Some(start..start + authority.rfind('@')?)
}

/// A URL as it may be shown or stored: its user-info (`user:password@`, or
/// a token given as the user) replaced by `…`. The one redaction of URLs:
/// every message, log line, status file and journal that names an endpoint
/// or a store shows it through this.
pub fn redact_url(url: &str) -> std::borrow::Cow<'_, str> {
    match user_info(url) {
        Some(range) => format!("{}…{}", &url[..range.start], &url[range.end..]).into(),
        None => url.into(),
    }
}

/// `url` without its user-info, and the user-info as Basic credentials
/// (`user:password`, percent-decoded), if it has any.
pub fn split_user_info(url: &str) -> (String, Option<Secret>) {
    match user_info(url) {
        Some(range) => (
            format!("{}{}", &url[..range.start], &url[range.end + 1..]),
            Some(Secret::new(percent_decode(&url[range]))),
        ),
        None => (url.to_string(), None),
    }
}

/// `%XX` escapes decoded (as a URL's user-info is written); anything else,
/// `+` included, kept as it is.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
            .and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A Databricks workspace to call, and how.
#[derive(Debug, Clone)]
pub struct DatabricksTarget {
    /// `https://…` (or `http://` if given so), no path, no trailing slash.
    pub host: String,
    pub credentials: Credentials,
    /// Where the settings came from, for messages: "environment",
    /// "profile DEFAULT in /root/.databrickscfg", or both.
    pub source: String,
    /// Which variable or profile key the credentials were read from
    /// ("DATABRICKS_TOKEN"), for the message when the workspace refuses
    /// them: never the value.
    pub credentials_from: String,
}

impl fmt::Display for DatabricksTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} with {} (from {})",
            self.host, self.credentials, self.source
        )
    }
}

impl DatabricksTarget {
    /// The environment variables that resolve to this target from an
    /// environment alone (no config file): the host, and the token or the
    /// client pair. Secrets, in the clear.
    pub fn variables(&self) -> BTreeMap<String, Secret> {
        let mut vars = BTreeMap::from([(env_name("host"), Secret::new(&self.host))]);
        match &self.credentials {
            // Not from a Databricks resolution.
            Credentials::None
            | Credentials::Basic(_)
            | Credentials::ApiKey { .. }
            | Credentials::Aws(_) => {}
            Credentials::Bearer(token) => {
                vars.insert(env_name("token"), token.clone());
            }
            Credentials::OAuth(o) => {
                vars.insert(env_name("client_id"), Secret::new(&o.client_id));
                vars.insert(env_name("client_secret"), o.client_secret.clone());
            }
        }
        vars
    }
}

/// `https://` added when there is no scheme, and only scheme, host and port
/// kept: workspace URLs pasted from a browser carry paths and `?o=…`, which
/// the SDKs drop too.
pub fn normalise_host(raw: &str) -> Result<String> {
    let raw = raw.trim();
    let with_scheme = if raw.contains("://") {
        raw.to_owned()
    } else {
        format!("https://{raw}")
    };
    let bad = |why: &str| Error::Credentials(format!("Databricks host {raw:?} {why}"));
    let url = reqwest::Url::parse(&with_scheme).map_err(|e| bad(&format!("is not a URL: {e}")))?;
    if !matches!(url.scheme(), "https" | "http") {
        return Err(bad("must be an https:// URL"));
    }
    let host = url
        .host_str()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| bad("has no host name"))?;
    Ok(match url.port() {
        Some(port) => format!("{}://{host}:{port}", url.scheme()),
        None => format!("{}://{host}", url.scheme()),
    })
}

/// The settings aiq reads from the environment or a profile.
const KEYS: [&str; 4] = ["host", "token", "client_id", "client_secret"];

/// Where a setting came from.
#[derive(Clone, Copy, PartialEq)]
enum Origin {
    Env,
    Profile,
}

/// Settings found so far: value and origin per key of [`KEYS`].
struct Found {
    values: [Option<(String, Origin)>; 4],
    profile_desc: String,
}

impl Found {
    fn get(&self, key: &str) -> Option<&(String, Origin)> {
        let i = KEYS.iter().position(|k| *k == key)?;
        self.values[i].as_ref()
    }

    fn value(&self, key: &str) -> Option<&str> {
        self.get(key).map(|(v, _)| v.as_str())
    }

    /// "DATABRICKS_TOKEN" or "`token` in profile P in F", for messages.
    fn describe(&self, key: &str) -> String {
        match self.get(key) {
            Some((_, Origin::Profile)) => format!("`{key}` in {}", self.profile_desc),
            _ => env_name(key),
        }
    }
}

fn env_name(key: &str) -> String {
    format!("DATABRICKS_{}", key.to_ascii_uppercase())
}

/// `~/…` expanded with `home`.
fn expand_home(path: &str, home: Option<&str>) -> PathBuf {
    match (
        path.strip_prefix("~/")
            .or_else(|| (path == "~").then_some("")),
        home,
    ) {
        (Some(rest), Some(home)) => Path::new(home).join(rest),
        _ => PathBuf::from(path),
    }
}

/// Finds the workspace and credentials as the Databricks SDKs do:
///
/// 1. `DATABRICKS_HOST`, `DATABRICKS_TOKEN`, `DATABRICKS_CLIENT_ID`,
///    `DATABRICKS_CLIENT_SECRET` from the environment;
/// 2. then a profile of the config file (`DATABRICKS_CONFIG_FILE`, default
///    `~/.databrickscfg`) fills the keys the environment left unset (keys
///    `host`, `token`, `client_id`, `client_secret`). The profile is
///    `profile`, else `DATABRICKS_CONFIG_PROFILE`, else `DEFAULT`. As in the
///    SDKs, when no profile is named and the environment already holds a
///    token or client credentials, the file is not read at all: a `DEFAULT`
///    profile's host must not be paired with a token meant for another
///    workspace.
///
/// A token and client credentials together are an error (the SDKs refuse
/// that too), as are a named profile that does not exist and a missing host
/// or credentials; each message says what to set and what was read.
pub fn resolve_databricks(
    profile: Option<&str>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<DatabricksTarget> {
    let get = |name: &str| {
        env(name)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    };
    let mut found = Found {
        values: KEYS.map(|k| get(&env_name(k)).map(|v| (v, Origin::Env))),
        profile_desc: String::new(),
    };
    let explicit = profile
        .map(|p| p.trim().to_owned())
        .filter(|p| !p.is_empty())
        .or_else(|| get("DATABRICKS_CONFIG_PROFILE"));
    let env_has_auth = found.values[1..].iter().any(Option::is_some);
    let home = get("HOME").or_else(|| get("USERPROFILE"));
    let config_file = match get("DATABRICKS_CONFIG_FILE") {
        Some(file) => Some(expand_home(&file, home.as_deref())),
        None => home.as_deref().map(|h| Path::new(h).join(".databrickscfg")),
    };

    // What was read, for the message if something is missing.
    let mut read = vec!["environment".to_owned()];
    let mut auth_type = None;
    if explicit.is_some() || !env_has_auth {
        let name = explicit.as_deref().unwrap_or("DEFAULT");
        match &config_file {
            None if explicit.is_some() => {
                return Err(Error::Credentials(format!(
                    "profile {name} was requested, but there is no config file to read it from: set DATABRICKS_CONFIG_FILE (or HOME)"
                )))
            }
            None => read.push("no config file (HOME is not set)".into()),
            Some(path) if !path.exists() => {
                if explicit.is_some() {
                    return Err(Error::Credentials(format!(
                        "profile {name} was requested, but {} does not exist",
                        path.display()
                    )));
                }
                read.push(format!("{} (does not exist)", path.display()));
            }
            Some(path) => {
                found.profile_desc = format!("profile {name} in {}", path.display());
                let props = read_profile(path, name, explicit.is_some())?;
                match props {
                    None => read.push(format!("{} (no [{name}] profile)", path.display())),
                    Some(props) => {
                        read.push(found.profile_desc.clone());
                        for (slot, key) in found.values.iter_mut().zip(KEYS) {
                            if slot.is_none() {
                                *slot = props.get(key).map(|v| (v.clone(), Origin::Profile));
                            }
                        }
                        auth_type = props.get("auth_type").cloned();
                    }
                }
            }
        }
    } else {
        read.push(
            "no profile (not read because the environment holds credentials; name a profile with --profile or DATABRICKS_CONFIG_PROFILE to use one)"
                .to_owned(),
        );
    }
    let read = read.join("; ");

    let Some(raw_host) = found.value("host") else {
        return Err(Error::Credentials(format!(
            "no Databricks host: set DATABRICKS_HOST, or `host` in a profile of ~/.databrickscfg (read: {read})"
        )));
    };
    let host = normalise_host(raw_host)?;

    let origins: Vec<Origin> = found.values.iter().flatten().map(|(_, o)| *o).collect();
    let source = match (
        origins.contains(&Origin::Env),
        origins.contains(&Origin::Profile),
    ) {
        (true, true) => format!("environment and {}", found.profile_desc),
        (false, true) => found.profile_desc.clone(),
        _ => "environment".to_owned(),
    };

    let token = found.value("token");
    let credentials_from = if token.is_some() {
        found.describe("token")
    } else {
        format!(
            "{} and {}",
            found.describe("client_id"),
            found.describe("client_secret")
        )
    };
    let client_id = found.value("client_id");
    let client_secret = found.value("client_secret");
    let credentials = match (token, client_id, client_secret) {
        (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
            let client = if client_id.is_some() {
                "client_id"
            } else {
                "client_secret"
            };
            return Err(Error::Credentials(format!(
                "more than one way to authenticate to {host}: a token ({}) and OAuth client credentials ({}); unset one",
                found.describe("token"),
                found.describe(client)
            )));
        }
        (Some(token), None, None) => Credentials::Bearer(Secret::new(token)),
        (None, Some(id), Some(secret)) => Credentials::OAuth(Arc::new(OAuthM2M::new(
            host.clone(),
            id,
            Secret::new(secret),
        ))),
        (None, Some(_), None) | (None, None, Some(_)) => {
            let (have, missing) = if client_id.is_some() {
                ("client_id", "client_secret")
            } else {
                ("client_secret", "client_id")
            };
            return Err(Error::Credentials(format!(
                "{} is set but its {missing} is not: set {} (or `{missing}` in the profile) (read: {read})",
                found.describe(have),
                env_name(missing)
            )));
        }
        (None, None, None) => {
            let unsupported = auth_type
                .map(|t| format!("; auth_type = {t} in the profile is not supported by aiq"))
                .unwrap_or_default();
            return Err(Error::Credentials(format!(
                "no credentials for {host}: set DATABRICKS_TOKEN (a personal access token), or DATABRICKS_CLIENT_ID and DATABRICKS_CLIENT_SECRET (a service principal), or the keys token / client_id + client_secret in the profile (read: {read}){unsupported}"
            )));
        }
    };
    Ok(DatabricksTarget {
        host,
        credentials,
        source,
        credentials_from,
    })
}

/// The keys of profile `name` in `path` (lowercased, as Python's configparser
/// and so the Databricks CLI treat them), or `None` if there is no such
/// profile and none was asked for by name.
fn read_profile(
    path: &Path,
    name: &str,
    explicit: bool,
) -> Result<Option<std::collections::HashMap<String, String>>> {
    // No quote or escape processing: configparser does none, and a secret
    // with a backslash must reach the server as written.
    let options = ini::ParseOption {
        enabled_quote: false,
        enabled_escape: false,
        ..Default::default()
    };
    let ini = ini::Ini::load_from_file_opt(path, options)
        .map_err(|e| Error::Credentials(format!("cannot read {}: {e}", path.display())))?;
    let Some(section) = ini.section(Some(name)) else {
        if !explicit {
            return Ok(None);
        }
        let names: Vec<&str> = ini.sections().flatten().collect();
        let there = if names.is_empty() {
            "none".to_owned()
        } else {
            names.join(", ")
        };
        return Err(Error::Credentials(format!(
            "profile {name} not found in {} (profiles there: {there})",
            path.display()
        )));
    };
    Ok(Some(
        section
            .iter()
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .filter(|(_, v)| !v.is_empty())
            .collect(),
    ))
}

/// The environment variable holding the OpenAI-compatible API key.
pub fn openai_key_variable(key_env: Option<&str>) -> &str {
    key_env.unwrap_or("OPENAI_API_KEY").trim()
}

/// Credentials for an OpenAI-compatible server: a bearer token from the
/// environment variable `key_env` (default `OPENAI_API_KEY`). Without the
/// default variable, no credentials (local servers need none); a variable
/// named explicitly but unset is an error, since naming it says a key is
/// needed. Returned with where the key came from (the variable's name and
/// whether it was set, never its value), for the message when the server
/// refuses the job.
pub fn resolve_openai(
    key_env: Option<&str>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(Credentials, String)> {
    let name = openai_key_variable(key_env);
    if name.is_empty() {
        return Err(Error::Config("the API key variable name is empty".into()));
    }
    let raw = env(name);
    match raw.as_deref().map(str::trim).filter(|v| !v.is_empty()) {
        Some(key) => Ok((
            Credentials::Bearer(Secret::new(key)),
            format!("the key in {name}"),
        )),
        None if key_env.is_some() => Err(Error::Credentials(format!(
            "environment variable {name} (named as the API key variable) is not set or empty: set it, or leave the key variable out for servers that need no key"
        ))),
        None => {
            let state = if raw.is_some() { "empty" } else { "not set" };
            Ok((
                Credentials::None,
                format!("no key: {name} is {state} (set it, or name another variable with --api-key-env)"),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    const SECRET: &str = "dapi-very-secret-0123";
    const CLIENT_SECRET: &str = "client-secret-xyz";

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    fn config(dir: &Path, text: &str) -> String {
        let path = dir.join("databrickscfg");
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    }

    fn creds_err(r: Result<DatabricksTarget>) -> String {
        match r {
            Err(e @ Error::Credentials(_)) => e.to_string(),
            other => panic!("expected a credentials error, got {other:?}"),
        }
    }

    fn bearer(t: &DatabricksTarget) -> &str {
        match &t.credentials {
            Credentials::Bearer(s) => s.expose(),
            other => panic!("expected a bearer token, got {other:?}"),
        }
    }

    const PROFILES: &str =
        "[DEFAULT]\nhost = default.cloud.databricks.com\ntoken = tok-default\n\n\
        [dev]\nhost = https://dev.cloud.databricks.com/\nTOKEN = tok-dev\\x\n\n\
        [sp]\nhost = sp.cloud.databricks.com\nclient_id = abc\nclient_secret = shh\n\n\
        [u2m]\nhost = u2m.cloud.databricks.com\nauth_type = databricks-cli\n";

    #[test]
    fn variables_resolve_to_the_same_target_without_the_profile() {
        let dir = tempfile::tempdir().unwrap();
        let file = config(dir.path(), PROFILES);
        // What authenticates: the token, or the client id and secret.
        let auth = |c: &Credentials| match c {
            Credentials::Bearer(t) => t.expose().to_owned(),
            Credentials::OAuth(o) => format!("{} {}", o.client_id, o.client_secret.expose()),
            _ => String::new(),
        };
        for profile in ["dev", "sp"] {
            let env = env_of(&[("DATABRICKS_CONFIG_FILE", &file)]);
            let here = resolve_databricks(Some(profile), &env).unwrap();
            let vars = here.variables();
            let there = |k: &str| vars.get(k).map(|s| s.expose().to_owned());
            let again = resolve_databricks(None, &there).unwrap();
            assert_eq!(again.host, here.host);
            assert_eq!(again.source, "environment");
            assert_eq!(auth(&again.credentials), auth(&here.credentials));
        }
    }

    #[test]
    fn environment_alone() {
        let env = env_of(&[
            ("DATABRICKS_HOST", "adb-1.azuredatabricks.net/?o=1#x"),
            ("DATABRICKS_TOKEN", " tok-env\n"),
        ]);
        let t = resolve_databricks(None, &env).unwrap();
        assert_eq!(t.host, "https://adb-1.azuredatabricks.net");
        assert_eq!(bearer(&t), "tok-env");
        assert_eq!(t.source, "environment");
    }

    #[test]
    fn default_profile_and_named_profiles() {
        let dir = tempfile::tempdir().unwrap();
        let file = config(dir.path(), PROFILES);
        let env = env_of(&[("DATABRICKS_CONFIG_FILE", &file)]);
        let t = resolve_databricks(None, &env).unwrap();
        assert_eq!(t.host, "https://default.cloud.databricks.com");
        assert_eq!(bearer(&t), "tok-default");
        assert_eq!(t.source, format!("profile DEFAULT in {file}"));

        // Keys are case-insensitive; values are taken as written.
        let t = resolve_databricks(Some("dev"), &env).unwrap();
        assert_eq!(t.host, "https://dev.cloud.databricks.com");
        assert_eq!(bearer(&t), "tok-dev\\x");

        let env = env_of(&[
            ("DATABRICKS_CONFIG_FILE", &file),
            ("DATABRICKS_CONFIG_PROFILE", "sp"),
        ]);
        let t = resolve_databricks(None, &env).unwrap();
        match &t.credentials {
            Credentials::OAuth(o) => assert_eq!(o.client_id(), "abc"),
            other => panic!("{other:?}"),
        }
        // The argument wins over DATABRICKS_CONFIG_PROFILE.
        let t = resolve_databricks(Some("dev"), &env).unwrap();
        assert_eq!(bearer(&t), "tok-dev\\x");
    }

    #[test]
    fn environment_overrides_profile_key_by_key() {
        let dir = tempfile::tempdir().unwrap();
        let file = config(dir.path(), PROFILES);
        // A host alone in the environment: the DEFAULT profile supplies the token.
        let env = env_of(&[
            ("DATABRICKS_CONFIG_FILE", &file),
            ("DATABRICKS_HOST", "h.example.com"),
        ]);
        let t = resolve_databricks(None, &env).unwrap();
        assert_eq!(t.host, "https://h.example.com");
        assert_eq!(bearer(&t), "tok-default");
        assert_eq!(
            t.source,
            format!("environment and profile DEFAULT in {file}")
        );

        // A named profile is read even with a token in the environment,
        // which wins over the profile's.
        let env = env_of(&[
            ("DATABRICKS_CONFIG_FILE", &file),
            ("DATABRICKS_TOKEN", "tok-env"),
        ]);
        let t = resolve_databricks(Some("dev"), &env).unwrap();
        assert_eq!(t.host, "https://dev.cloud.databricks.com");
        assert_eq!(bearer(&t), "tok-env");

        // Without a named profile, a token in the environment means the file
        // is not read: DEFAULT's host is not paired with a foreign token.
        let msg = creds_err(resolve_databricks(None, &env));
        assert!(
            msg.contains("DATABRICKS_HOST") && msg.contains("--profile"),
            "{msg}"
        );
    }

    #[test]
    fn home_config_file_is_the_default() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(".databrickscfg"), PROFILES).unwrap();
        let home = dir.path().display().to_string();
        let t = resolve_databricks(Some("dev"), &env_of(&[("HOME", &home)])).unwrap();
        assert_eq!(bearer(&t), "tok-dev\\x");
        let tilde = env_of(&[
            ("HOME", &home),
            ("DATABRICKS_CONFIG_FILE", "~/.databrickscfg"),
        ]);
        assert_eq!(
            bearer(&resolve_databricks(None, &tilde).unwrap()),
            "tok-default"
        );
    }

    #[test]
    fn missing_pieces_say_what_to_set() {
        let dir = tempfile::tempdir().unwrap();
        let file = config(dir.path(), PROFILES);
        let missing_file = dir.path().join("nope").display().to_string();

        let msg = creds_err(resolve_databricks(
            None,
            &env_of(&[("DATABRICKS_CONFIG_FILE", &missing_file)]),
        ));
        assert!(
            msg.contains("DATABRICKS_HOST") && msg.contains("does not exist"),
            "{msg}"
        );

        let msg = creds_err(resolve_databricks(
            Some("prod"),
            &env_of(&[("DATABRICKS_CONFIG_FILE", &missing_file)]),
        ));
        assert!(msg.contains("prod") && msg.contains(&missing_file), "{msg}");

        let msg = creds_err(resolve_databricks(
            Some("prod"),
            &env_of(&[("DATABRICKS_CONFIG_FILE", &file)]),
        ));
        assert!(
            msg.contains("profile prod not found") && msg.contains("dev, sp"),
            "{msg}"
        );

        let msg = creds_err(resolve_databricks(
            None,
            &env_of(&[("DATABRICKS_HOST", "h")]),
        ));
        assert!(
            msg.contains("DATABRICKS_TOKEN") && msg.contains("DATABRICKS_CLIENT_ID"),
            "{msg}"
        );

        let msg = creds_err(resolve_databricks(
            Some("u2m"),
            &env_of(&[("DATABRICKS_CONFIG_FILE", &file)]),
        ));
        assert!(msg.contains("auth_type = databricks-cli"), "{msg}");

        let env = env_of(&[("DATABRICKS_HOST", "h"), ("DATABRICKS_CLIENT_ID", "abc")]);
        let msg = creds_err(resolve_databricks(None, &env));
        assert!(msg.contains("DATABRICKS_CLIENT_SECRET"), "{msg}");

        let env = env_of(&[
            ("DATABRICKS_CONFIG_FILE", &file),
            ("DATABRICKS_CLIENT_ID", "abc"),
        ]);
        let msg = creds_err(resolve_databricks(Some("dev"), &env));
        assert!(
            msg.contains("more than one way") && msg.contains("`token` in profile dev"),
            "{msg}"
        );
        assert!(!msg.contains("tok-dev"), "{msg}");
    }

    #[test]
    fn host_normalisation() {
        assert_eq!(
            normalise_host("x.cloud.databricks.com").unwrap(),
            "https://x.cloud.databricks.com"
        );
        assert_eq!(normalise_host("https://x.com/").unwrap(), "https://x.com");
        assert_eq!(
            normalise_host("http://127.0.0.1:8080/serving").unwrap(),
            "http://127.0.0.1:8080"
        );
        assert_eq!(
            normalise_host("localhost:9000").unwrap(),
            "https://localhost:9000"
        );
        assert!(normalise_host("ftp://x.com").is_err());
        assert!(normalise_host("https://").is_err());
    }

    #[test]
    fn openai_key() {
        let env = env_of(&[("OPENAI_API_KEY", SECRET), ("MY_KEY", "k2")]);
        assert!(
            matches!(resolve_openai(None, &env).unwrap().0, Credentials::Bearer(s) if s.expose() == SECRET)
        );
        assert!(
            matches!(resolve_openai(Some("MY_KEY"), &env).unwrap().0, Credentials::Bearer(s) if s.expose() == "k2")
        );
        assert!(matches!(
            resolve_openai(None, &env_of(&[])).unwrap().0,
            Credentials::None
        ));
        let err = resolve_openai(Some("TYPO_KEY"), &env).unwrap_err();
        assert!(matches!(err, Error::Credentials(_)) && err.to_string().contains("TYPO_KEY"));
    }

    #[test]
    fn secrets_never_print() {
        let secret = Secret::new(SECRET);
        assert_eq!(format!("{secret:?} {secret}"), "[redacted] [redacted]");
        let bearer = Credentials::Bearer(secret.clone());
        let oauth = Credentials::OAuth(Arc::new(OAuthM2M::new(
            "https://h",
            "id-1",
            Secret::new(CLIENT_SECRET),
        )));
        for c in [&bearer, &oauth] {
            let target = DatabricksTarget {
                host: "https://h".into(),
                credentials: c.clone(),
                source: "environment".into(),
                credentials_from: "DATABRICKS_TOKEN".into(),
            };
            let shown = format!("{c:?} {c} {target:?} {target} {:#?}", target);
            assert!(
                !shown.contains(SECRET) && !shown.contains(CLIENT_SECRET),
                "{shown}"
            );
        }
        assert!(format!("{oauth}").contains("id-1"));
    }

    #[test]
    fn url_user_info_is_redacted_and_becomes_basic_auth() {
        let url = "http://alice:p%40ss+w@host:8000/v1?x=a@b";
        assert_eq!(redact_url(url), "http://…@host:8000/v1?x=a@b");
        assert_eq!(redact_url("https://tok@host"), "https://…@host");
        for plain in [
            "http://host/v1",
            "http://host/a@b",
            "not a url @ all",
            "s3://b/k",
        ] {
            assert_eq!(redact_url(plain), plain);
        }
        let (bare, login) = split_user_info(url);
        assert_eq!(bare, "http://host:8000/v1?x=a@b");
        assert_eq!(login.unwrap().expose(), "alice:p@ss+w");
        assert!(split_user_info("http://host/v1").1.is_none());
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }

    #[tokio::test]
    async fn the_authorization_header_per_kind_of_credentials() {
        let http = reqwest::Client::new();
        let header = |c: Credentials| {
            let http = http.clone();
            async move { c.authorization(&http).await.unwrap().map(|(_, v)| v) }
        };
        assert!(header(Credentials::None).await.is_none());
        let bearer = header(Credentials::Bearer(Secret::new("t1")))
            .await
            .unwrap();
        assert_eq!(bearer, "Bearer t1");
        assert!(bearer.is_sensitive());
        let basic = header(Credentials::Basic(Secret::new("alice:pw")))
            .await
            .unwrap();
        assert_eq!(basic, format!("Basic {}", base64_basic::encode("alice:pw")));
        let key = Credentials::ApiKey {
            header: "x-api-key",
            key: Secret::new("sk-ant-1"),
        };
        let (name, value) = key.authorization(&http).await.unwrap().unwrap();
        assert_eq!(
            (name.as_str(), value.to_str().unwrap()),
            ("x-api-key", "sk-ant-1")
        );
        assert!(value.is_sensitive());
        let bad = Credentials::Bearer(Secret::new("a\nb"))
            .authorization(&http)
            .await;
        assert!(matches!(bad, Err(Error::Credentials(_))));
    }

    #[test]
    fn the_scrubber_hides_every_form_of_every_secret() {
        let s = Credentials::Basic(Secret::new("alice:pa/ss\"word")).scrubber();
        let basic = base64_basic::encode("alice:pa/ss\"word");
        let text = format!(r#"{{"m": "you sent Basic {basic}, pa\/ss\"word and pa/ss"word"}}"#);
        let clean = s.text(&text);
        assert_eq!(
            clean,
            r#"{"m": "you sent Basic [redacted], [redacted] and [redacted]"}"#
        );
        // Clean text is not copied.
        assert!(matches!(
            s.text("nothing here"),
            std::borrow::Cow::Borrowed(_)
        ));
        let body = bytes::Bytes::from_static(b"no secret");
        assert_eq!(s.bytes(body.clone()).as_ptr(), body.as_ptr());
        // A token given as the URL's user is the secret.
        let s = Credentials::Basic(Secret::new("ghp_tok:")).scrubber();
        assert_eq!(s.text("ghp_tok"), "[redacted]");
        let s = Credentials::Bearer(Secret::new(SECRET)).scrubber();
        assert_eq!(
            s.text(&format!("Bearer {SECRET}{SECRET}")),
            "Bearer [redacted][redacted]"
        );
        assert_eq!(Credentials::None.scrubber().text(SECRET), SECRET);
    }

    #[tokio::test]
    async fn the_scrubber_hides_oauth_tokens_fetched_later() {
        let (host, _) = token_server(|n| token_reply(n, 0)).await;
        let o = Arc::new(oauth(&host));
        let scrub = Credentials::OAuth(o.clone()).scrubber();
        let http = reqwest::Client::new();
        assert_eq!(o.token(&http).await.unwrap().expose(), "tok-1");
        assert_eq!(o.token(&http).await.unwrap().expose(), "tok-2");
        let login = base64_basic::encode(&format!("my-client:{CLIENT_SECRET}"));
        let text = format!("tok-1 tok-2 {CLIENT_SECRET} Basic {login}");
        assert_eq!(
            scrub.text(&text),
            "[redacted] [redacted] [redacted] Basic [redacted]"
        );
    }

    #[test]
    fn refresh_margin_is_five_minutes_or_a_tenth() {
        assert_eq!(
            refresh_margin(Duration::from_secs(3600)),
            Duration::from_secs(300)
        );
        assert_eq!(
            refresh_margin(Duration::from_secs(600)),
            Duration::from_secs(60)
        );
        assert_eq!(refresh_margin(Duration::ZERO), Duration::ZERO);
    }

    /// What the fake token endpoint saw.
    #[derive(Default)]
    struct Seen {
        requests: AtomicUsize,
        auth: Mutex<Vec<String>>,
        bodies: Mutex<Vec<String>>,
    }

    type Reply = Arc<dyn Fn(usize) -> (u16, serde_json::Value) + Send + Sync>;

    #[derive(Clone)]
    struct Server {
        seen: Arc<Seen>,
        reply: Reply,
    }

    async fn handle(
        axum::extract::State(server): axum::extract::State<Server>,
        headers: axum::http::HeaderMap,
        body: String,
    ) -> (axum::http::StatusCode, axum::Json<serde_json::Value>) {
        let n = server.seen.requests.fetch_add(1, Ordering::SeqCst) + 1;
        let auth = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        server.seen.auth.lock().unwrap().push(auth.to_owned());
        server.seen.bodies.lock().unwrap().push(body);
        let (status, json) = (server.reply)(n);
        (
            axum::http::StatusCode::from_u16(status).unwrap(),
            axum::Json(json),
        )
    }

    /// A token endpoint on 127.0.0.1:0 answering the n-th request (1-based)
    /// with `reply(n)`: a status and a JSON body.
    async fn token_server(
        reply: impl Fn(usize) -> (u16, serde_json::Value) + Send + Sync + 'static,
    ) -> (String, Arc<Seen>) {
        let seen = Arc::new(Seen::default());
        let server = Server {
            seen: seen.clone(),
            reply: Arc::new(reply),
        };
        let app = axum::Router::new()
            .route("/oidc/v1/token", axum::routing::post(handle))
            .with_state(server);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (format!("http://{addr}"), seen)
    }

    fn oauth(host: &str) -> OAuthM2M {
        OAuthM2M::new(host, "my-client", Secret::new(CLIENT_SECRET))
            .with_retry_delay(Duration::ZERO)
    }

    fn token_reply(n: usize, expires_in: u64) -> (u16, serde_json::Value) {
        (
            200,
            serde_json::json!({"access_token": format!("tok-{n}"), "token_type": "Bearer", "expires_in": expires_in}),
        )
    }

    #[tokio::test]
    async fn oauth_token_is_fetched_with_basic_auth_and_cached() {
        let (host, seen) = token_server(|n| token_reply(n, 3600)).await;
        let creds = Credentials::OAuth(Arc::new(oauth(&host)));
        let http = reqwest::Client::new();
        let first = creds.authorization(&http).await.unwrap().unwrap().1;
        let second = creds.authorization(&http).await.unwrap().unwrap().1;
        assert!(first == "Bearer tok-1" && second == "Bearer tok-1");
        assert_eq!(
            seen.requests.load(Ordering::SeqCst),
            1,
            "the second call is served from the cache"
        );

        use base64_basic::encode;
        let expected = format!("Basic {}", encode(&format!("my-client:{CLIENT_SECRET}")));
        assert_eq!(seen.auth.lock().unwrap()[0], expected);
        assert_eq!(
            seen.bodies.lock().unwrap()[0],
            "grant_type=client_credentials&scope=all-apis"
        );
    }

    #[tokio::test]
    async fn oauth_token_is_refreshed_when_stale() {
        // A lifetime of 0 s is stale as soon as it arrives.
        let (host, seen) = token_server(|n| token_reply(n, 0)).await;
        let o = oauth(&host);
        let http = reqwest::Client::new();
        assert_eq!(o.token(&http).await.unwrap().expose(), "tok-1");
        assert_eq!(o.token(&http).await.unwrap().expose(), "tok-2");
        assert_eq!(seen.requests.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn oauth_retries_server_errors() {
        let (host, seen) = token_server(|n| {
            if n < 3 {
                (503, serde_json::json!({"message": "busy"}))
            } else {
                token_reply(n, 3600)
            }
        })
        .await;
        let o = oauth(&host);
        assert_eq!(
            o.token(&reqwest::Client::new()).await.unwrap().expose(),
            "tok-3"
        );
        assert_eq!(seen.requests.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn oauth_401_names_host_and_status_but_not_the_secret() {
        let (host, seen) = token_server(|_| {
            (401, serde_json::json!({"error": "invalid_client", "error_description": format!("bad secret {CLIENT_SECRET}")}))
        })
        .await;
        let err = oauth(&host)
            .token(&reqwest::Client::new())
            .await
            .unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, Error::Credentials(_)), "{err:?}");
        assert!(
            msg.contains(&host) && msg.contains("401") && msg.contains("invalid_client"),
            "{msg}"
        );
        assert!(!msg.contains(CLIENT_SECRET), "{msg}");
        assert_eq!(
            seen.requests.load(Ordering::SeqCst),
            1,
            "a 401 is not retried"
        );
    }

    /// Just enough base64 to check a Basic header without a dependency.
    mod base64_basic {
        pub fn encode(s: &str) -> String {
            const A: &[u8; 64] =
                b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
            let mut out = String::new();
            for chunk in s.as_bytes().chunks(3) {
                let b = [
                    chunk[0],
                    *chunk.get(1).unwrap_or(&0),
                    *chunk.get(2).unwrap_or(&0),
                ];
                let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
                for i in 0..4 {
                    if i <= chunk.len() {
                        out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
                    } else {
                        out.push('=');
                    }
                }
            }
            out
        }
    }
}
