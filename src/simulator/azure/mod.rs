//! The simulator's Azure OpenAI: OpenAI's wire at Azure's paths, with
//! Azure's credentials and error shapes, over the shared pipeline of
//! [`super::handler`].
//!
//! - Deployments path: `POST /openai/deployments/{deployment}/{chat/completions,
//!   completions,embeddings}?api-version=YYYY-MM-DD[-preview]`; without an
//!   api-version Azure answers 404 `Resource not found`, with one it does
//!   not know 400 `API version not supported`.
//! - v1 API: `POST /openai/v1/{route}`, the deployment as the body's
//!   `model`; an api-version is optional (`preview`, `latest`).
//! - Deployments that exist: `--endpoints` (empty: every name); another
//!   answers 404 `DeploymentNotFound`.
//! - Credentials: the simulator's token as the `api-key` header or as a
//!   bearer token (a Microsoft Entra ID token); anything else answers 401
//!   with Azure's message. Microsoft Entra ID's token endpoint, `POST
//!   /{tenant}/oauth2/v2.0/token` (client credentials in the form, scope
//!   `https://cognitiveservices.azure.com/.default`), hands out that token
//!   to [`super::CLIENT_ID`]/[`super::CLIENT_SECRET`].
//! - Files and Batch APIs (OpenAI's, [`super::batch`]) at
//!   `/openai/{files,batches}?api-version=…` and `/openai/v1/…`.
//! - Errors `{"error": {"code", "message"}}`, 401 and 429 coded by their
//!   status as Azure codes them; rate-limit headers as Azure sends them:
//!   `x-ratelimit-remaining-requests`/`-tokens` only ([`admission`]), and
//!   `retry-after-ms`/`retry-after` on a 429 ([`wire`]: the shared
//!   pipeline writes them).

pub(crate) mod wire;

use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use serde_json::{json, Value};

use super::answer::{Api, Task};
use super::handler::{authorized, error, handle};
use super::stats::bump;
use super::{batch, oauth, ServerState};
use crate::provider::azure::{is_dated_version, SCOPE};

/// The routes, each task under both path styles, and the token endpoint.
pub(crate) fn routes() -> Router<Arc<ServerState>> {
    let mut router = Router::new();
    for (route, task) in [
        ("chat/completions", Task::Chat),
        ("completions", Task::Completion),
        ("embeddings", Task::Embedding),
    ] {
        router = router
            .route(
                &format!("/openai/deployments/{{deployment}}/{route}"),
                post(
                    move |State(st): State<Arc<ServerState>>,
                          Path(deployment): Path<String>,
                          RawQuery(query): RawQuery,
                          headers: HeaderMap,
                          body: Bytes| async move {
                        let version = api_version(query.as_deref());
                        let call = Call::Deployment(deployment, version);
                        serve(st, call, task, headers, body).await
                    },
                ),
            )
            .route(
                &format!("/openai/v1/{route}"),
                post(
                    move |State(st): State<Arc<ServerState>>,
                          RawQuery(query): RawQuery,
                          headers: HeaderMap,
                          body: Bytes| async move {
                        let call = Call::V1(api_version(query.as_deref()));
                        serve(st, call, task, headers, body).await
                    },
                ),
            );
    }
    // Files and batches: the resource's, with a dated version, or the
    // v1 API's.
    let dated = files_and_batches("/openai").route_layer(axum::middleware::from_fn(dated_version));
    router
        .merge(dated)
        .merge(files_and_batches("/openai/v1"))
        .route("/{tenant}/oauth2/v2.0/token", post(token))
}

/// The Files and Batch APIs ([`super::batch`]: OpenAI's, which Azure's
/// are) under `prefix`.
fn files_and_batches(prefix: &str) -> Router<Arc<ServerState>> {
    Router::new()
        .route(&format!("{prefix}/files"), post(batch::upload))
        .route(&format!("{prefix}/files/{{id}}"), get(batch::file_info))
        .route(
            &format!("{prefix}/files/{{id}}/content"),
            get(batch::file_content),
        )
        .route(
            &format!("{prefix}/batches"),
            post(batch::create).get(batch::list),
        )
        .route(&format!("{prefix}/batches/{{id}}"), get(batch::get))
        .route(
            &format!("{prefix}/batches/{{id}}/cancel"),
            post(batch::cancel),
        )
}

/// The resource's own routes need a dated api-version, as the
/// deployments' do.
async fn dated_version(
    RawQuery(query): RawQuery,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match api_version(query.as_deref()) {
        Some(v) if is_dated_version(&v) => next.run(request).await,
        Some(_) => error(
            &Api::Azure,
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "API version not supported",
        ),
        None => error(
            &Api::Azure,
            StatusCode::NOT_FOUND,
            "404",
            "Resource not found",
        ),
    }
}

/// Which path a request came by, with the api-version it named.
enum Call {
    Deployment(String, Option<String>),
    V1(Option<String>),
}

/// The `api-version` of a query string.
fn api_version(query: Option<&str>) -> Option<String> {
    let pairs = oauth::parse_form(query.unwrap_or_default());
    pairs
        .into_iter()
        .find(|(k, _)| k == "api-version")
        .map(|(_, v)| v)
}

/// Checks what Azure checks before the model sees the request (the
/// api-version, the credentials, the deployment), then answers through
/// the shared pipeline.
async fn serve(
    st: Arc<ServerState>,
    call: Call,
    task: Task,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let api = Api::Azure;
    let refuse = |status: StatusCode, code: &str, message: &str| error(&api, status, code, message);
    let version_ok = match &call {
        Call::Deployment(_, None) => {
            bump(&st.counters.not_found);
            return refuse(StatusCode::NOT_FOUND, "404", "Resource not found");
        }
        Call::Deployment(_, Some(v)) => is_dated_version(v),
        Call::V1(v) => v
            .as_deref()
            .is_none_or(|v| matches!(v, "preview" | "latest" | "v1")),
    };
    if !version_ok {
        bump(&st.counters.bad_request);
        return refuse(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "API version not supported",
        );
    }
    if !authorized(&st.cfg, &headers) {
        // The shared pipeline counts and answers it.
        return handle(st, api, Some(task), headers, body).await;
    }
    let (deployment, body) = match call {
        Call::Deployment(deployment, _) => {
            let body = with_model(&body, &deployment);
            (deployment, body)
        }
        Call::V1(_) => {
            let model = serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|v| v.get("model")?.as_str().map(str::to_string));
            let Some(model) = model else {
                bump(&st.counters.bad_request);
                return refuse(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    "model: the v1 API needs the deployment's name as `model`",
                );
            };
            (model, body)
        }
    };
    let deployments = &st.cfg.endpoints;
    if !deployments.is_empty() && !deployments.contains(&deployment) {
        bump(&st.counters.not_found);
        return refuse(
            StatusCode::NOT_FOUND,
            "DeploymentNotFound",
            "The API deployment for this resource does not exist. If you created the deployment \
             within the last 5 minutes, please wait a moment and try again.",
        );
    }
    handle(st, api, Some(task), headers, body).await
}

/// The body with the deployment as its `model` when it names none (the
/// deployments path does not need one), so replies name it.
fn with_model(body: &Bytes, deployment: &str) -> Bytes {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(mut b)) if !b.contains_key("model") => {
            b.insert("model".into(), json!(deployment));
            Bytes::from(Value::Object(b).to_string())
        }
        _ => body.clone(),
    }
}

/// Microsoft Entra ID's token endpoint, client credentials only: the
/// client id and secret in the form (or HTTP Basic), the scope Azure
/// OpenAI's. Answers with the simulator's token, as Entra's errors.
async fn token(
    State(st): State<Arc<ServerState>>,
    Path(tenant): Path<String>,
    body: Bytes,
) -> Response {
    let form = oauth::parse_form(&String::from_utf8_lossy(&body));
    let field = |name: &str| {
        form.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let entra_error = |status: StatusCode, error: &str, description: String| {
        let body = json!({"error": error, "error_description": description, "error_codes": [], "trace_id": "sim"});
        (status, Json(body)).into_response()
    };
    if field("grant_type") != Some("client_credentials") {
        return entra_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "AADSTS70003: The app requested an unsupported grant type".into(),
        );
    }
    if field("scope") != Some(SCOPE) {
        return entra_error(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            format!("AADSTS70011: The provided value for the input parameter 'scope' is not valid; this resource takes {SCOPE}"),
        );
    }
    let client = (field("client_id"), field("client_secret"));
    if client != (Some(oauth::CLIENT_ID), Some(oauth::CLIENT_SECRET)) {
        return entra_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            format!("AADSTS7000215: Invalid client secret provided for tenant '{tenant}'."),
        );
    }
    bump(&st.counters.oauth_tokens);
    let token = oauth::issued_token(&st.cfg);
    Json(json!({"token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599, "access_token": token}))
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_api_version_is_read_from_the_query() {
        assert_eq!(
            api_version(Some("a=1&api-version=2024-10-21")).as_deref(),
            Some("2024-10-21")
        );
        assert_eq!(api_version(None), None);
    }
}
