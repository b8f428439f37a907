//! A hostile server's error replies: what a client must survive without
//! leaking a secret or filling its output. Off unless asked for.
//!
//! `--echo-headers` quotes the request's headers (`Authorization`
//! included) in the message of every error reply, as careless servers and
//! debugging proxies do; `--error-body-bytes N` pads that message to N
//! bytes. Both apply to every route (inference, OAuth token, Batch API) and
//! every error status, as one layer over the router, so each error source
//! (faults, limits, markers, authentication) keeps its own code.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use serde_json::Value;

use super::ServerState;

/// The error bodies the simulator makes are small: more than this is not
/// one of them, and is passed on unchanged.
const MAX_OWN_ERROR_BYTES: usize = 64 << 10;

/// The layer: error replies get the request's headers and the padding the
/// configuration asks for; everything else passes untouched.
pub(crate) async fn errors(
    State(st): State<Arc<ServerState>>,
    request: Request,
    next: Next,
) -> Response {
    let (echo, pad) = (st.cfg.echo_headers, st.cfg.error_body_bytes);
    if !echo && pad == 0 {
        return next.run(request).await;
    }
    let sent = echo.then(|| request.headers().clone());
    let response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_OWN_ERROR_BYTES).await else {
        return Response::from_parts(parts, Body::empty());
    };
    let mut value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let mut message = message_of(&value).unwrap_or_default();
    if let Some(sent) = &sent {
        message.push_str("; you sent ");
        message.push_str(&quote(sent));
    }
    if message.len() < pad {
        message.push(' ');
        let fill = pad - message.len();
        message.extend(std::iter::repeat_n('x', fill));
    }
    set_message(&mut value, message);
    let body = bytes::Bytes::from(serde_json::to_vec(&value).unwrap_or_default());
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    // Chunked, without a length: a client learns the size only by reading.
    let chunks = futures::stream::iter([Ok::<_, std::io::Error>(body)]);
    Response::from_parts(parts, Body::from_stream(chunks))
}

/// The message of an error body of any shape the simulator sends: OpenAI's
/// `error.message`, Databricks' `message`, OAuth's `error_description`.
fn message_of(v: &Value) -> Option<String> {
    ["/error/message", "/message", "/error_description"]
        .iter()
        .find_map(|p| v.pointer(p).and_then(Value::as_str))
        .map(str::to_string)
}

/// Puts `message` where [`message_of`] found it (OpenAI's shape when the
/// body was not JSON).
fn set_message(v: &mut Value, message: String) {
    for p in ["/error/message", "/message", "/error_description"] {
        if let Some(slot) = v.pointer_mut(p).filter(|s| s.is_string()) {
            *slot = Value::String(message);
            return;
        }
    }
    *v = serde_json::json!({"error": {"message": message, "type": "server_error"}});
}

/// `name: value` of every header, `, `-joined.
fn quote(headers: &HeaderMap) -> String {
    headers
        .iter()
        .map(|(k, v)| format!("{k}: {}", String::from_utf8_lossy(v.as_bytes())))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use crate::simulator::{SimConfig, Simulator};

    async fn post(s: &Simulator, route: &str, token: &str, text: &str) -> (u16, Value) {
        let resp = reqwest::Client::new()
            .post(format!("{}{route}", s.base_url()))
            .bearer_auth(token)
            .json(&json!({"messages": [{"role": "user", "content": text}]}))
            .send()
            .await
            .expect("sent");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    #[tokio::test]
    async fn error_replies_echo_the_request_headers_and_run_long() {
        let s = Simulator::start(SimConfig {
            token: Some("tok-right".into()),
            echo_headers: true,
            error_body_bytes: 5000,
            ..SimConfig::default()
        })
        .await
        .unwrap();
        let (status, v) = post(&s, "/v1/chat/completions", "tok-wrong", "a").await;
        let m = v["error"]["message"].as_str().unwrap();
        assert_eq!(status, 401);
        assert!(
            m.starts_with("missing or invalid bearer token; you sent ")
                && m.contains("authorization: Bearer tok-wrong"),
            "{m}"
        );
        assert!(m.len() >= 5000, "{}", m.len());
        // Databricks' shape, and a 400 from a marker.
        let (status, v) = post(
            &s,
            "/serving-endpoints/e/invocations",
            "tok-right",
            "[[sim:400]]",
        )
        .await;
        let m = v["message"].as_str().unwrap();
        assert_eq!(status, 400);
        assert!(m.contains("authorization: Bearer tok-right"), "{m}");
        // Answers are untouched.
        let (status, v) = post(&s, "/v1/chat/completions", "tok-right", "b").await;
        assert_eq!(
            (status, v["choices"][0]["message"]["content"].as_str()),
            (200, Some("echo: b"))
        );
    }

    #[tokio::test]
    async fn the_cut_fault_breaks_off_a_finished_reply() {
        let s = Simulator::start(SimConfig {
            fault_rate: 1.0,
            faults: "cut".into(),
            ..SimConfig::default()
        })
        .await
        .unwrap();
        let resp = reqwest::Client::new()
            .post(format!("{}/v1/chat/completions", s.base_url()))
            .json(&json!({"messages": [{"role": "user", "content": "a"}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert!(resp.bytes().await.is_err(), "the body must break off");
        // The call itself was answered (and would be billed).
        assert_eq!((s.stats().ok, s.stats().faults_injected), (1, 1));
    }
}
