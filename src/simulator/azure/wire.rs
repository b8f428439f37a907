//! Azure OpenAI's error bodies and rate-limit headers, as the shared
//! pipeline ([`super::super::handler`]) writes them for Azure's routes.

use axum::http::{HeaderMap, StatusCode};
use serde_json::{json, Value};

use super::super::answer::Api;
use super::super::limits::Admission;

/// An error body as Azure writes it: 401 and 429 coded by their status,
/// with Azure's messages; others with their code and message.
pub(crate) fn error_body(status: StatusCode, code: &str, message: &str) -> Value {
    let (code, message) = match status.as_u16() {
        401 => (
            "401",
            "Access denied due to invalid subscription key or wrong API endpoint. Make sure to \
             provide a valid key for an active subscription and use a correct regional API \
             endpoint for your resource."
                .to_string(),
        ),
        429 => (
            "429",
            format!(
                "Requests to the ChatCompletions_Create Operation under Azure OpenAI API have \
                 exceeded the rate limit of your current pricing tier ({message})."
            ),
        ),
        _ => (code, message.to_string()),
    };
    json!({"error": {"code": code, "message": message, "param": null, "type": null}})
}

/// Rate-limit headers as Azure sends them: the remaining requests and
/// tokens only (no limits, no resets); `retry-after(-ms)` stay.
pub(crate) fn admission(api: &Api, a: Admission) -> Admission {
    let only_remaining = |mut h: HeaderMap| {
        let drop: Vec<_> = h
            .keys()
            .filter(|k| {
                let k = k.as_str();
                k.starts_with("x-ratelimit-") && !k.starts_with("x-ratelimit-remaining-")
            })
            .cloned()
            .collect();
        for k in drop {
            h.remove(k);
        }
        h
    };
    match (api, a) {
        (Api::Azure, Admission::Admitted(h)) => Admission::Admitted(only_remaining(h)),
        (Api::Azure, Admission::Refused(h)) => Admission::Refused(only_remaining(h)),
        (_, a) => a,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_and_headers_take_azure_shapes() {
        let e = error_body(StatusCode::UNAUTHORIZED, "invalid_api_key", "x");
        assert_eq!(e["error"]["code"], "401");
        assert!(e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Access denied"));
        let e = error_body(StatusCode::NOT_FOUND, "DeploymentNotFound", "gone");
        assert_eq!(e["error"]["code"], "DeploymentNotFound");
        let mut h = HeaderMap::new();
        for n in [
            "x-ratelimit-limit-requests",
            "x-ratelimit-remaining-requests",
            "x-ratelimit-reset-tokens",
            "retry-after-ms",
        ] {
            h.insert(
                axum::http::HeaderName::from_static(n),
                axum::http::HeaderValue::from_static("1"),
            );
        }
        let Admission::Refused(h) = admission(&Api::Azure, Admission::Refused(h)) else {
            panic!("still refused")
        };
        let mut names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        names.sort();
        assert_eq!(names, ["retry-after-ms", "x-ratelimit-remaining-requests"]);
    }
}
