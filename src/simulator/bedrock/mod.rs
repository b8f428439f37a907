//! The simulator's Amazon Bedrock Runtime, over the shared pipeline of
//! [`super::handler`]:
//!
//! - `POST /model/{modelId}/converse` (JSON), `/converse-stream` (an AWS
//!   event stream, `application/vnd.amazon.eventstream`), and `/invoke`
//!   for embedding models (Titan's `inputText`, Cohere's `texts`);
//! - every request's SigV4 signature is recomputed and checked
//!   ([`verify`]): the key id must be one of [`KEYS`] (with its session
//!   token when it has one), the scope's service `bedrock`, the signature
//!   that of the request as received. A refusal is Bedrock's: 403
//!   `UnrecognizedClientException` (unknown key or token) or
//!   `InvalidSignatureException`;
//! - a Converse request is checked as Bedrock checks it (unknown top-level
//!   keys, roles, content blocks) and read into the OpenAI shape the shared
//!   pipeline answers ([`wire::to_openai`]); a `cachePoint` block marks the end
//!   of the cached prefix as Anthropic's `cache_control` does, so repeated
//!   prefixes report `cacheReadInputTokens`;
//! - errors are `{"message"}` with the type in `x-amzn-ErrorType`
//!   (`ThrottlingException` for a 429, `ServiceUnavailableException` for a
//!   503, …), so the fault options reach Bedrock clients too;
//! - `GET /aws/container-credentials` is an ECS/EKS container credentials
//!   endpoint handing out the temporary key of [`KEYS`] to a request that
//!   carries [`CONTAINER_TOKEN`], and `POST /aws/sts` STS's
//!   `AssumeRoleWithWebIdentity` handing it out for [`WEB_IDENTITY_TOKEN`]
//!   (object_store calls STS over HTTPS only: the simulator's `--tls`), and
//!   `AssumeRole` (a form body) to a request signed for the service `sts`
//!   with a key of [`KEYS`];
//! - `PUT /latest/api/token` and `GET /latest/meta-data/iam/security-credentials/`
//!   (then `…/{role}`) are the EC2 instance metadata service, IMDSv2 only:
//!   a session token for a request with `X-aws-ec2-metadata-token-ttl-seconds`,
//!   then the role [`INSTANCE_ROLE`] and its temporary key of [`KEYS`] to
//!   requests carrying that token (401 without it, as with IMDSv1 off).

pub(crate) mod wire;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use serde_json::json;

use super::answer::{Api, BedrockOp, Task};
use super::handler::handle;
use super::stats::bump;
use super::ServerState;

/// The AWS keys the simulator knows: `(access key id, secret key, session
/// token)`. The first is a long-term key, whose secret is the simulator's
/// token instead when it has one (`--token`); the second is temporary
/// (its session token must come with it).
pub const KEYS: [(&str, &str, Option<&str>); 2] = [
    ("AKIDAIQSIMULATOR", "aiq/simulator+SecretAccessKey0", None),
    (
        "ASIAAIQSIMULATOR",
        "aiq/simulator+TemporarySecret1",
        Some("aiq-simulator-session-token/FwoGZXIvYXdzEXAMPLE"),
    ),
];

/// The token a container credentials request must carry (`Authorization`).
pub const CONTAINER_TOKEN: &str = "aiq-simulator-container-token";

/// The web identity token (an OIDC JWT at AWS) STS takes.
pub const WEB_IDENTITY_TOKEN: &str = "aiq-simulator-web-identity-token";

/// The role the instance metadata service names.
pub const INSTANCE_ROLE: &str = "aiq-simulator-instance-role";

/// The IMDSv2 session token the metadata service hands out.
const IMDS_TOKEN: &str = "aiq-simulator-imds-session-token";

pub(crate) fn routes() -> Router<Arc<ServerState>> {
    let route = |op: BedrockOp| {
        post(
            move |State(st): State<Arc<ServerState>>,
                  Path(model): Path<String>,
                  uri: Uri,
                  headers: HeaderMap,
                  body: Bytes| async move { serve(st, op, model, uri, headers, body).await },
        )
    };
    Router::new()
        .route("/model/{model}/converse", route(BedrockOp::Converse))
        .route("/model/{model}/converse-stream", route(BedrockOp::Stream))
        .route("/model/{model}/invoke", route(BedrockOp::Invoke))
        .route("/aws/container-credentials", get(container_credentials))
        .route("/aws/sts", post(sts))
        .route("/latest/api/token", axum::routing::put(imds_token))
        .route(
            "/latest/meta-data/iam/security-credentials/",
            get(
                |State(st): State<Arc<ServerState>>, headers: HeaderMap| async move {
                    imds_get(&st, &headers, None)
                },
            ),
        )
        .route(
            "/latest/meta-data/iam/security-credentials/{role}",
            get(
                |State(st): State<Arc<ServerState>>,
                 Path(role): Path<String>,
                 headers: HeaderMap| async move { imds_get(&st, &headers, Some(role)) },
            ),
        )
}

async fn serve(
    st: Arc<ServerState>,
    op: BedrockOp,
    model: String,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let api = Api::Bedrock { model, op };
    let token = st.cfg.token.as_deref();
    if let Err((kind, message)) = verify(token, &Method::POST, &uri, &headers, &body) {
        bump(&st.counters.unauthorized);
        return wire::error_reply(StatusCode::FORBIDDEN, kind, &message);
    }
    let task = match op {
        BedrockOp::Invoke => Task::Embedding,
        BedrockOp::Converse | BedrockOp::Stream => Task::Chat,
    };
    handle(st, api, Some(task), headers, body).await
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn sha256_hex(data: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, data).as_ref())
}

fn hmac(key: &[u8], data: &str) -> Vec<u8> {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    ring::hmac::sign(&key, data.as_bytes()).as_ref().to_vec()
}

/// Every byte but the unreserved ones (and `/` when `keep_slash`)
/// percent-encoded, upper-case hex: SigV4's URI encoding.
fn uri_encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'_' | b'.' | b'~')
            || (keep_slash && b == b'/')
        {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Checks a request's SigV4 signature (AWS's "Create a signed AWS API
/// request": the canonical request, the string to sign, the signing key
/// derived from the secret, date, region and service). `Err` is the
/// error type and message Bedrock answers with. The request's time is not
/// checked against the clock.
pub(crate) fn verify(
    token: Option<&str>,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(), (&'static str, String)> {
    let service = crate::provider::aws::SIGNING_NAME;
    verify_for(service, token, method, uri, headers, body)
}

/// [`verify`] for a request signed for `signing_name`.
fn verify_for(
    signing_name: &str,
    token: Option<&str>,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(), (&'static str, String)> {
    let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
    let unrecognized = || {
        (
            "UnrecognizedClientException",
            "The security token included in the request is invalid.".to_string(),
        )
    };
    let bad = |m: &str| ("InvalidSignatureException", m.to_string());
    let auth = header("authorization").ok_or_else(|| {
        (
            "MissingAuthenticationTokenException",
            "Missing Authentication Token".to_string(),
        )
    })?;
    let rest = auth
        .strip_prefix("AWS4-HMAC-SHA256 ")
        .ok_or_else(|| bad("Authorization header requires the AWS4-HMAC-SHA256 algorithm."))?;
    let mut credential = None;
    let mut signed = None;
    let mut signature = None;
    for part in rest.split(',') {
        match part.trim().split_once('=') {
            Some(("Credential", v)) => credential = Some(v),
            Some(("SignedHeaders", v)) => signed = Some(v),
            Some(("Signature", v)) => signature = Some(v),
            _ => {}
        }
    }
    let (Some(credential), Some(signed), Some(signature)) = (credential, signed, signature) else {
        return Err(bad(
            "Authorization header requires Credential, SignedHeaders and Signature.",
        ));
    };
    let mut scope = credential.splitn(5, '/');
    let (key_id, date, region, service, terminal) = (
        scope.next().unwrap_or_default(),
        scope.next().unwrap_or_default(),
        scope.next().unwrap_or_default(),
        scope.next().unwrap_or_default(),
        scope.next().unwrap_or_default(),
    );
    let (_, secret, session) = KEYS
        .iter()
        .find(|(id, _, _)| *id == key_id)
        .ok_or_else(unrecognized)?;
    let secret = match (session, token) {
        (None, Some(token)) => token,
        _ => *secret,
    };
    if *session != header("x-amz-security-token") {
        return Err(unrecognized());
    }
    if service != signing_name || terminal != "aws4_request" {
        return Err(bad(&format!(
            "Credential should be scoped to correct service: '{signing_name}'."
        )));
    }
    let amz_date = header("x-amz-date").ok_or_else(|| bad("Missing X-Amz-Date."))?;
    if !amz_date.starts_with(date) {
        return Err(bad("Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP."));
    }
    let names: Vec<&str> = signed.split(';').collect();
    if !names.contains(&"host") {
        return Err(bad(
            "'Host' must be a 'SignedHeader' in the AWS Authorization.",
        ));
    }
    let canonical_headers = canonical_headers(&names, headers, uri).ok_or_else(|| {
        bad("The request signature we calculated does not match the signature you provided.")
    })?;
    let payload = sha256_hex(body);
    if let Some(claimed) = header("x-amz-content-sha256") {
        if claimed != payload && claimed != "UNSIGNED-PAYLOAD" {
            return Err(bad(
                "The provided 'x-amz-content-sha256' header does not match what was computed.",
            ));
        }
    }
    // Each path segment encoded again (every service but S3).
    let canonical = format!(
        "{method}\n{}\n{}\n{canonical_headers}\n{signed}\n{}",
        uri_encode(uri.path(), true),
        canonical_query(uri),
        header("x-amz-content-sha256").unwrap_or(&payload),
    );
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{date}/{region}/{service}/aws4_request\n{}",
        sha256_hex(canonical.as_bytes())
    );
    let key = [date, region, service, "aws4_request"]
        .iter()
        .fold(format!("AWS4{secret}").into_bytes(), |k, part| {
            hmac(&k, part)
        });
    if hex(&hmac(&key, &to_sign)) != signature {
        return Err(bad("The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details."));
    }
    Ok(())
}

/// The signed headers `names`, each `name:value` on its line (values
/// trimmed, inner runs of spaces one, repeats joined by `,`); None when one
/// is missing. `host` is the Host header, or HTTP/2's authority.
fn canonical_headers(names: &[&str], headers: &HeaderMap, uri: &Uri) -> Option<String> {
    let mut out = String::new();
    for name in names {
        let value = match *name {
            "host" => headers
                .get("host")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
                .or_else(|| uri.authority().map(|a| a.to_string())),
            n => {
                let values: Vec<String> = headers
                    .get_all(n)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
                    .collect();
                (!values.is_empty()).then(|| values.join(","))
            }
        }?;
        out.push_str(&format!("{name}:{}\n", value.trim()));
    }
    Some(out)
}

/// The query's parameters decoded, encoded again SigV4's way and sorted.
fn canonical_query(uri: &Uri) -> String {
    let decode = |s: &str| {
        url::form_urlencoded::parse(format!("x={s}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };
    let mut query: Vec<(String, String)> = uri
        .query()
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (uri_encode(&decode(k), false), uri_encode(&decode(v), false))
        })
        .collect();
    query.sort();
    let pairs: Vec<String> = query.iter().map(|(k, v)| format!("{k}={v}")).collect();
    pairs.join("&")
}

/// An ECS/EKS container credentials endpoint: the temporary key of
/// [`KEYS`], valid for an hour, to a request carrying [`CONTAINER_TOKEN`].
async fn container_credentials(State(st): State<Arc<ServerState>>, headers: HeaderMap) -> Response {
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(CONTAINER_TOKEN) {
        bump(&st.counters.unauthorized);
        return (
            StatusCode::UNAUTHORIZED,
            "container credentials: wrong or missing token",
        )
            .into_response();
    }
    temporary_key_json()
}

/// IMDSv2's session token, for a `PUT` that says how long it should live
/// (IMDS answers 400 without the TTL header).
async fn imds_token(headers: HeaderMap) -> Response {
    let ttl = headers
        .get("x-aws-ec2-metadata-token-ttl-seconds")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u32>().ok());
    match ttl {
        Some(1..=21600) => IMDS_TOKEN.into_response(),
        _ => (
            StatusCode::BAD_REQUEST,
            "X-aws-ec2-metadata-token-ttl-seconds must be 1 to 21600",
        )
            .into_response(),
    }
}

/// The instance's role name (`role` None: the listing) or that role's
/// credentials, to a request carrying the IMDSv2 token.
fn imds_get(st: &ServerState, headers: &HeaderMap, role: Option<String>) -> Response {
    if headers
        .get("x-aws-ec2-metadata-token")
        .and_then(|v| v.to_str().ok())
        != Some(IMDS_TOKEN)
    {
        bump(&st.counters.unauthorized);
        return StatusCode::UNAUTHORIZED.into_response();
    }
    match role.as_deref() {
        None => INSTANCE_ROLE.into_response(),
        Some(INSTANCE_ROLE) => temporary_key_json(),
        Some(_) => StatusCode::NOT_FOUND.into_response(),
    }
}

/// The temporary key of [`KEYS`], valid for an hour, as the container
/// and instance metadata endpoints give it.
fn temporary_key_json() -> Response {
    let (id, secret, token) = KEYS[1];
    Json(json!({
        "AccessKeyId": id,
        "SecretAccessKey": secret,
        "Token": token,
        "Expiration": super::anthropic::rfc3339_after(Duration::from_secs(3600)),
    }))
    .into_response()
}

/// STS: `AssumeRoleWithWebIdentity` (query parameters, as object_store
/// sends it) hands out the temporary key of [`KEYS`] for
/// [`WEB_IDENTITY_TOKEN`] and any role; `AssumeRole` (a form body, as the
/// SDKs send it) for a request SigV4-signed for `sts` with a known key.
async fn sts(
    State(st): State<Arc<ServerState>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let query = uri.query().unwrap_or_default();
    let params: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
        .chain(url::form_urlencoded::parse(&body))
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let param = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let fault = |status: StatusCode, code: &str, message: &str| {
        let body = format!(
            "<ErrorResponse><Error><Type>Sender</Type><Code>{code}</Code><Message>{message}</Message></Error></ErrorResponse>"
        );
        (status, [("content-type", "text/xml")], body).into_response()
    };
    let action = param("Action").unwrap_or_default().to_string();
    if !matches!(action.as_str(), "AssumeRole" | "AssumeRoleWithWebIdentity")
        || param("RoleArn").is_none()
    {
        return fault(
            StatusCode::BAD_REQUEST,
            "InvalidAction",
            "AssumeRole or AssumeRoleWithWebIdentity with a RoleArn",
        );
    }
    if action == "AssumeRole" {
        let token = st.cfg.token.as_deref();
        if let Err((code, message)) = verify_for("sts", token, &Method::POST, &uri, &headers, &body)
        {
            bump(&st.counters.unauthorized);
            return fault(StatusCode::FORBIDDEN, code, &message);
        }
    } else if param("WebIdentityToken").map(str::trim) != Some(WEB_IDENTITY_TOKEN) {
        bump(&st.counters.unauthorized);
        return fault(
            StatusCode::BAD_REQUEST,
            "InvalidIdentityToken",
            "Couldn't retrieve verification key from your identity provider",
        );
    }
    let (id, secret, token) = KEYS[1];
    let expires = super::anthropic::rfc3339_after(Duration::from_secs(3600));
    let body = format!(
        "<{action}Response xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\">\
         <{action}Result><Credentials><AccessKeyId>{id}</AccessKeyId>\
         <SecretAccessKey>{secret}</SecretAccessKey><SessionToken>{}</SessionToken>\
         <Expiration>{expires}</Expiration></Credentials></{action}Result>\
         </{action}Response>",
        token.unwrap_or_default()
    );
    (StatusCode::OK, [("content-type", "text/xml")], body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn the_verifier_takes_what_aiq_signs_and_nothing_else() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let (id, secret, _) = KEYS[0];
        let env = move |k: &str| match k {
            "AWS_ACCESS_KEY_ID" => Some(id.to_string()),
            "AWS_SECRET_ACCESS_KEY" => Some(secret.to_string()),
            "AWS_REGION" => Some("us-west-2".to_string()),
            _ => None,
        };
        let aws = crate::provider::aws::Aws::resolve(&env).unwrap();
        let uri: Uri =
            "http://127.0.0.1:8080/model/us.anthropic.claude-3-5-haiku-20241022-v1%3A0/converse"
                .parse()
                .unwrap();
        let body = Bytes::from_static(br#"{"messages":[]}"#);
        let signed = rt.block_on(aws.sign(&Method::POST, &uri, &body)).unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("host", HeaderValue::from_static("127.0.0.1:8080"));
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        for (n, v) in signed {
            headers.insert(n, v);
        }
        assert_eq!(verify(None, &Method::POST, &uri, &headers, &body), Ok(()));
        // Another body, path or key fails.
        let err = verify(None, &Method::POST, &uri, &headers, b"{}").unwrap_err();
        assert_eq!(err.0, "InvalidSignatureException");
        let other: Uri = "http://127.0.0.1:8080/model/x/converse".parse().unwrap();
        assert!(verify(None, &Method::POST, &other, &headers, &body).is_err());
        let mut forged = headers.clone();
        let auth = forged["authorization"]
            .to_str()
            .unwrap()
            .replace(id, "AKIDUNKNOWN");
        forged.insert("authorization", auth.parse().unwrap());
        assert_eq!(
            verify(None, &Method::POST, &uri, &forged, &body)
                .unwrap_err()
                .0,
            "UnrecognizedClientException"
        );
        assert!(verify(None, &Method::POST, &uri, &HeaderMap::new(), &body).is_err());
    }
}
