//! Databricks OAuth machine-to-machine token exchange (`POST
//! /oidc/v1/token`), so the client's service-principal login can be tested
//! end to end without a workspace.
//!
//! Accepts `grant_type=client_credentials` with the client id and secret
//! either in the form body or as HTTP Basic auth, like the real endpoint.
//! Only `sim-client` / `sim-secret` are valid. The access token handed out
//! is the simulator's bearer token, so the next inference call passes.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use serde_json::json;

use super::stats::bump;
use super::ServerState;

/// The client id the simulator accepts.
pub const CLIENT_ID: &str = "sim-client";
/// The client secret the simulator accepts.
pub const CLIENT_SECRET: &str = "sim-secret";
/// The token handed out when the simulator has no bearer token configured.
const DEFAULT_TOKEN: &str = "sim-token";

pub(crate) async fn token(
    State(st): State<Arc<ServerState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form = parse_form(&String::from_utf8_lossy(&body));
    let field = |name: &str| form.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    if field("grant_type").as_deref() != Some("client_credentials") {
        let body = json!({"error": "unsupported_grant_type", "error_description": "use grant_type=client_credentials"});
        return (StatusCode::BAD_REQUEST, Json(body)).into_response();
    }
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| base64_decode(b.trim()))
        .and_then(|raw| String::from_utf8(raw).ok())
        .and_then(|s| {
            s.split_once(':')
                .map(|(id, secret)| (id.to_string(), secret.to_string()))
        });
    let creds = basic.or_else(|| Some((field("client_id")?, field("client_secret")?)));
    if creds.as_ref().map(|(id, s)| (id.as_str(), s.as_str())) != Some((CLIENT_ID, CLIENT_SECRET)) {
        let body =
            json!({"error": "invalid_client", "error_description": "Client authentication failed"});
        return (StatusCode::UNAUTHORIZED, Json(body)).into_response();
    }
    bump(&st.counters.oauth_tokens);
    let token = issued_token(&st.cfg);
    Json(json!({"access_token": token, "token_type": "Bearer", "expires_in": 3600, "scope": "all-apis"})).into_response()
}

/// The access token handed out: the simulator's bearer token, so the next
/// inference call passes.
pub(super) fn issued_token(cfg: &super::SimConfig) -> String {
    cfg.token
        .clone()
        .unwrap_or_else(|| DEFAULT_TOKEN.to_string())
}

/// `application/x-www-form-urlencoded` pairs, percent-decoded.
pub(super) fn parse_form(body: &str) -> Vec<(String, String)> {
    body.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex_val(bytes[i + 1]), hex_val(bytes[i + 2])) {
                (Some(hi), Some(lo)) => {
                    out.push(hi << 4 | lo);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex_val(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

/// Standard base64 (with or without padding); `None` on bad input.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    fn val(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        } as u32)
    }
    let s = s.trim_end_matches('=').as_bytes();
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    for chunk in s.chunks(4) {
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            n |= val(*c)? << (18 - 6 * i);
        }
        let bytes = n.to_be_bytes();
        match chunk.len() {
            4 => out.extend_from_slice(&bytes[1..4]),
            3 => out.extend_from_slice(&bytes[1..3]),
            2 => out.push(bytes[1]),
            _ => return None,
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_forms_and_basic_auth() {
        let f = parse_form("grant_type=client_credentials&scope=all-apis&client_id=a%2Bb+c");
        assert_eq!(f[2], ("client_id".to_string(), "a+b c".to_string()));
        assert_eq!(
            base64_decode("c2ltLWNsaWVudDpzaW0tc2VjcmV0").unwrap(),
            b"sim-client:sim-secret"
        );
        assert_eq!(base64_decode("YQ==").unwrap(), b"a");
        assert_eq!(percent_decode("100%"), "100%");
        assert!(base64_decode("!!").is_none());
    }
}
