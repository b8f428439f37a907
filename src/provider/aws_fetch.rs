//! AWS credentials aiq fetches itself, for the profile kinds object_store
//! has no provider for ([`crate::provider::aws`] picks the source):
//!
//! - a profile with `role_arn` and `source_profile`: STS `AssumeRole`
//!   (a form `POST`, SigV4-signed for the service `sts` with the source
//!   profile's credentials), the reply's temporary key used;
//! - a profile with `credential_process`: the command run by the shell,
//!   its standard output the JSON AWS documents (`Version` 1,
//!   `AccessKeyId`, `SecretAccessKey`, optional `SessionToken` and
//!   `Expiration`).
//!
//! Both are cached and fetched again [`EARLY`] before they expire, as
//! object_store's providers do for the other sources. No message holds a
//! key, a secret or a token: STS's errors are its code and message, a
//! failed command's is its exit status and standard error (with any
//! value of its output taken out), never its standard output.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use object_store::aws::{AwsAuthorizer, AwsCredential};
use object_store::client::HttpRequestBody;
use object_store::CredentialProvider;
use tokio::sync::Mutex;

/// Fetched again this long before they expire (the SDKs' window).
const EARLY: Duration = Duration::from_secs(5 * 60);

/// How long a credential process or an STS call may take.
const TIMEOUT: Duration = Duration::from_secs(60);

/// The most of a failed command's standard error a message quotes.
const STDERR_SHOWN: usize = 2000;

/// Where the credentials are fetched from.
pub enum Fetch {
    AssumeRole {
        /// The source profile's credentials, which sign the call.
        source: Arc<dyn CredentialProvider<Credential = AwsCredential>>,
        /// STS's base URL.
        sts: String,
        region: String,
        role_arn: String,
        session_name: String,
        external_id: Option<String>,
        duration_seconds: Option<u32>,
    },
    Process {
        command: String,
    },
}

type Fetched = (Arc<AwsCredential>, Option<SystemTime>);

/// A [`Fetch`] with its last credentials, as object_store's
/// [`CredentialProvider`].
pub struct Refreshing {
    fetch: Fetch,
    cached: Mutex<Option<Fetched>>,
}

impl fmt::Debug for Refreshing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.fetch {
            Fetch::AssumeRole { role_arn, .. } => format!("AssumeRole {role_arn}"),
            Fetch::Process { .. } => "credential_process".into(),
        };
        f.debug_struct("Refreshing")
            .field("fetch", &kind)
            .finish_non_exhaustive()
    }
}

impl Refreshing {
    pub fn new(fetch: Fetch) -> Refreshing {
        Refreshing {
            fetch,
            cached: Mutex::new(None),
        }
    }

    async fn get(&self) -> Result<Arc<AwsCredential>, String> {
        let mut cached = self.cached.lock().await;
        if let Some((credential, expires)) = cached.as_ref() {
            let fresh = expires.is_none_or(|e| SystemTime::now() + EARLY < e);
            if fresh {
                return Ok(credential.clone());
            }
        }
        let fetched = match &self.fetch {
            Fetch::AssumeRole { .. } => self.assume_role().await?,
            Fetch::Process { command } => process(command).await?,
        };
        let credential = fetched.0.clone();
        *cached = Some(fetched);
        Ok(credential)
    }

    async fn assume_role(&self) -> Result<Fetched, String> {
        let Fetch::AssumeRole {
            source,
            sts,
            region,
            role_arn,
            session_name,
            external_id,
            duration_seconds,
        } = &self.fetch
        else {
            return Err("not an AssumeRole source".into());
        };
        let signer = source
            .get_credential()
            .await
            .map_err(|e| format!("the source profile's credentials: {e}"))?;
        let body = {
            // Built in a block: the serializer is not `Send`.
            let mut form = url::form_urlencoded::Serializer::new(String::new());
            form.append_pair("Action", "AssumeRole")
                .append_pair("Version", "2011-06-15")
                .append_pair("RoleArn", role_arn)
                .append_pair("RoleSessionName", session_name);
            if let Some(id) = external_id {
                form.append_pair("ExternalId", id);
            }
            if let Some(d) = duration_seconds {
                form.append_pair("DurationSeconds", &d.to_string());
            }
            Bytes::from(form.finish())
        };
        // A bare host gets the path `/`; a path given is kept.
        let url = url::Url::parse(sts)
            .map_err(|_| format!("the STS endpoint {sts} is not a URL"))?
            .to_string();
        let uri: hyper::Uri = url
            .parse()
            .map_err(|_| format!("the STS endpoint {url} is not a URL"))?;
        let mut request = hyper::Request::new(HttpRequestBody::from(body.clone()));
        *request.method_mut() = hyper::Method::POST;
        *request.uri_mut() = uri;
        AwsAuthorizer::new(&signer, "sts", region).authorize(&mut request, None);
        let client = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .build()
            .map_err(|e| format!("an HTTP client for STS: {e}"))?;
        let mut call = client.post(&url).body(body).header(
            "content-type",
            "application/x-www-form-urlencoded; charset=utf-8",
        );
        for (name, value) in request.headers() {
            if name != hyper::header::HOST {
                call = call.header(name.as_str(), value.as_bytes());
            }
        }
        let reply = call
            .send()
            .await
            .map_err(|e| format!("STS AssumeRole at {url}: {}", e.without_url()))?;
        let status = reply.status();
        let text = reply
            .text()
            .await
            .map_err(|e| format!("STS AssumeRole at {url}: {}", e.without_url()))?;
        if !status.is_success() {
            let StsError { code, message } = quick_xml::de::from_str::<ErrorResponse>(&text)
                .map(|r| r.error)
                .unwrap_or_default();
            return Err(format!(
                "STS AssumeRole at {url} for {role_arn}: HTTP {status}: {code} {message}"
            ));
        }
        // The reply's own text is never quoted: it holds the secret.
        let reply: AssumeRoleResponse = quick_xml::de::from_str(&text).map_err(|_| {
            format!("STS AssumeRole at {url} for {role_arn}: the reply is not an AssumeRoleResponse with Credentials")
        })?;
        let c = reply.assume_role_result.credentials;
        let expires = expiration(&c.expiration)
            .ok_or_else(|| format!("STS AssumeRole for {role_arn}: Expiration is not a time"))?;
        let credential = AwsCredential {
            key_id: c.access_key_id,
            secret_key: c.secret_access_key,
            token: Some(c.session_token),
        };
        Ok((Arc::new(credential), Some(expires)))
    }
}

impl CredentialProvider for Refreshing {
    type Credential = AwsCredential;

    // `#[async_trait]` written out: the crate is not in every build.
    fn get_credential<'a, 'b>(
        &'a self,
    ) -> Pin<Box<dyn Future<Output = object_store::Result<Arc<AwsCredential>>> + Send + 'b>>
    where
        'a: 'b,
        Self: 'b,
    {
        Box::pin(async move {
            self.get()
                .await
                .map_err(|message| object_store::Error::Generic {
                    store: "aws",
                    source: message.into(),
                })
        })
    }
}

/// An RFC 3339 time (`2026-12-07T01:00:00Z`, fractions of a second and
/// an offset allowed): the form STS and credential processes give. chrono
/// is already built for arrow's timestamps.
fn expiration(text: &str) -> Option<SystemTime> {
    chrono::DateTime::parse_from_rfc3339(text.trim())
        .ok()
        .map(SystemTime::from)
}

/// STS's Query API replies (XML: `AssumeRoleResponse`, or `ErrorResponse`
/// with `Code` and `Message`), read by quick-xml's serde support, which
/// object_store already builds for S3's XML. Other elements are ignored.
#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct AssumeRoleResponse {
    assume_role_result: AssumeRoleResult,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct AssumeRoleResult {
    credentials: StsCredentials,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct StsCredentials {
    access_key_id: String,
    secret_access_key: String,
    session_token: String,
    expiration: String,
}

#[derive(serde::Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct ErrorResponse {
    error: StsError,
}

#[derive(serde::Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct StsError {
    code: String,
    message: String,
}

/// The JSON a credential process prints (AWS's "Sourcing credentials with
/// an external process").
#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ProcessOutput {
    version: Option<serde_json::Value>,
    access_key_id: Option<String>,
    secret_access_key: Option<String>,
    session_token: Option<String>,
    expiration: Option<String>,
}

/// Runs `command` by the shell (as the AWS CLI and SDKs do) and reads its
/// credentials. Messages do not quote the command (it may hold a
/// password); the caller names the profile.
async fn process(command: &str) -> Result<Fetched, String> {
    let mut cmd = match cfg!(windows) {
        true => {
            let mut c = tokio::process::Command::new("cmd");
            c.arg("/C");
            c
        }
        false => {
            let mut c = tokio::process::Command::new("sh");
            c.arg("-c");
            c
        }
    };
    cmd.arg(command)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(TIMEOUT, cmd.output())
        .await
        .map_err(|_| format!("credential_process did not finish in {TIMEOUT:?}"))?
        .map_err(|e| format!("cannot run the credential_process: {e}"))?;
    let parsed: Option<ProcessOutput> = serde_json::from_slice(&out.stdout).ok();
    let stderr = || {
        let mut text = String::from_utf8_lossy(&out.stderr).trim().to_string();
        // A command that echoes what it prints must not show it here.
        if let Some(p) = &parsed {
            for s in [&p.access_key_id, &p.secret_access_key, &p.session_token]
                .into_iter()
                .flatten()
                .filter(|s| !s.is_empty())
            {
                text = text.replace(s.as_str(), "[redacted]");
            }
        }
        match text.is_empty() {
            true => String::new(),
            false => format!(
                "; it said: {}",
                text.chars().take(STDERR_SHOWN).collect::<String>()
            ),
        }
    };
    if !out.status.success() {
        return Err(format!(
            "the credential_process failed ({}){}",
            out.status,
            stderr()
        ));
    }
    let bad = |what: &str| {
        format!(
            "the credential_process printed no credentials AWS's way ({what}: a JSON object \
             with Version 1, AccessKeyId, SecretAccessKey, SessionToken, Expiration){}",
            stderr()
        )
    };
    let Some(p) = &parsed else {
        return Err(bad("not a JSON object"));
    };
    if p.version.as_ref().and_then(serde_json::Value::as_i64) != Some(1) {
        return Err(bad("Version is not 1"));
    }
    let (Some(key_id), Some(secret_key)) = (&p.access_key_id, &p.secret_access_key) else {
        return Err(bad("AccessKeyId or SecretAccessKey missing"));
    };
    let expires = match &p.expiration {
        None => None,
        Some(e) => Some(expiration(e).ok_or_else(|| bad("Expiration is not an RFC 3339 time"))?),
    };
    let credential = AwsCredential {
        key_id: key_id.clone(),
        secret_key: secret_key.clone(),
        token: p.session_token.clone().filter(|t| !t.is_empty()),
    };
    Ok((Arc::new(credential), expires))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sts_replies_are_read() {
        let xml = "<AssumeRoleResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\">\
                   <AssumeRoleResult><AssumedRoleUser><Arn>arn</Arn></AssumedRoleUser><Credentials>\
                   <AccessKeyId>ASIA1</AccessKeyId><SecretAccessKey>s</SecretAccessKey>\
                   <SessionToken>a&amp;b</SessionToken><Expiration>2026-12-07T01:00:00Z</Expiration>\
                   </Credentials></AssumeRoleResult><ResponseMetadata><RequestId>r</RequestId>\
                   </ResponseMetadata></AssumeRoleResponse>";
        let c = quick_xml::de::from_str::<AssumeRoleResponse>(xml)
            .unwrap()
            .assume_role_result
            .credentials;
        assert_eq!(
            (c.access_key_id.as_str(), c.session_token.as_str()),
            ("ASIA1", "a&b")
        );
        let error = "<ErrorResponse><Error><Type>Sender</Type><Code>AccessDenied</Code>\
                     <Message>no &lt;role&gt;</Message></Error></ErrorResponse>";
        let e = quick_xml::de::from_str::<ErrorResponse>(error)
            .unwrap()
            .error;
        assert_eq!(
            (e.code.as_str(), e.message.as_str()),
            ("AccessDenied", "no <role>")
        );
        assert!(quick_xml::de::from_str::<AssumeRoleResponse>("<ErrorResponse/>").is_err());
        let at = |t: &str| {
            expiration(t).map(|t| t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs())
        };
        assert_eq!(at("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(at("2026-12-07T01:00:00Z"), Some(1_796_605_200));
        assert_eq!(at("2026-12-07T01:00:00.123Z"), Some(1_796_605_200));
        assert_eq!(at("2026-12-07T02:30:00+01:30"), Some(1_796_605_200));
        assert_eq!(at("2000-03-01T00:00:00Z"), Some(951_868_800));
        assert_eq!(at("tomorrow"), None);
        assert_eq!(at("2026-13-07T01:00:00Z"), None);
        assert_eq!(at("2026-12-07T01:00:00"), None);
    }

    #[tokio::test]
    async fn a_credential_process_is_read_and_its_failures_say_why() {
        let ok = process(
            r#"echo '{"Version": 1, "AccessKeyId": "AKID1", "SecretAccessKey": "s3cr3t", "SessionToken": "tok", "Expiration": "2099-01-01T00:00:00Z"}'"#,
        )
        .await
        .unwrap();
        assert_eq!(ok.0.key_id, "AKID1");
        assert_eq!(ok.0.token.as_deref(), Some("tok"));
        assert!(ok.1.is_some());
        let err = process("echo 'no session for alice' >&2; exit 3")
            .await
            .unwrap_err();
        assert!(
            err.contains("no session for alice") && err.contains('3'),
            "{err}"
        );
        let err = process(
            r#"echo '{"Version": 2, "AccessKeyId": "AKID1", "SecretAccessKey": "s3cr3t"}'; echo s3cr3t >&2"#,
        )
        .await
        .unwrap_err();
        assert!(err.contains("Version is not 1"), "{err}");
        assert!(!err.contains("s3cr3t"), "{err}");
        let err = process("echo not json").await.unwrap_err();
        assert!(
            err.contains("not a JSON object") && !err.contains("not json"),
            "{err}"
        );
    }
}
