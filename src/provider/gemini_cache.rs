//! Gemini's explicit context cache for a job's shared system prompt: when
//! it pays ([`pays_off`]), one `cachedContents` resource holds the system
//! prompt, every request names it (`cachedContent`) instead of sending the
//! prompt, and it is deleted when the job ends, failed or not.
//!
//! Gemini also caches implicitly: a request whose start matches a recent
//! one's is billed the cached price for that start, with no storage fee,
//! but without a guarantee. aiq lays every body out with the shared prefix
//! first (system prompt, then the literal start of the user template), so
//! implicit caching works unasked; the explicit cache turns "often" into
//! "always" for a long prompt, at the price of its storage:
//!
//! - storage is billed per token-hour (Google lists about 3 to 10 times
//!   the model's input price per million tokens per hour), so aiq counts
//!   [`STORAGE_INPUT_PRICES`] input prices per hour the cache lives;
//! - each row then saves `input - cached` on the prompt (the job's
//!   `--price-in` and `--price-cached`, else Google's 90% discount);
//! - the cache lives [`TTL`], renewed while the job runs, so a killed job
//!   leaves a cache that expires within the hour.

use std::time::Duration;

use serde_json::{json, Value};

use crate::provider::auth::Credentials;

/// The shortest system prompt (estimated tokens) worth an explicit cache:
/// above every current model's minimum (1,024 on Flash models, up to
/// 4,096 on Pro ones), so creation is not refused for size.
pub const MIN_TOKENS: u64 = 4096;

/// Storage of a token for an hour, in input-token prices (an upper bound
/// over Google's price list).
pub const STORAGE_INPUT_PRICES: f64 = 10.0;

/// The cached price as a share of the input price when the job gives none
/// (Google's price for cache reads on Gemini 2.5 and later).
pub const DEFAULT_CACHED_SHARE: f64 = 0.1;

/// How long a cache lives unless renewed; aiq renews it every third of it.
pub const TTL: Duration = Duration::from_secs(3600);

/// Whether an explicit cache of `prompt_tokens` saves money over `rows`
/// rows in about an hour of storage, at `prices` (input, cached) per
/// million tokens, if known.
pub fn pays_off(prompt_tokens: u64, rows: u64, prices: Option<(f64, Option<f64>)>) -> bool {
    if prompt_tokens < MIN_TOKENS {
        return false;
    }
    let (input, cached) = match prices {
        Some((input, cached)) if input > 0.0 => {
            (input, cached.unwrap_or(input * DEFAULT_CACHED_SHARE))
        }
        _ => (1.0, DEFAULT_CACHED_SHARE),
    };
    let saved = rows as f64 * (input - cached);
    saved > STORAGE_INPUT_PRICES * input
}

/// A live explicit cache: its resource name (`cachedContents/...`).
#[derive(Debug, Clone)]
pub struct ContextCache {
    pub name: String,
    url: String,
}

/// What creating, renewing or deleting a cache needs.
pub struct CacheApi<'a> {
    pub http: &'a reqwest::Client,
    /// The API's base URL (`https://generativelanguage.googleapis.com`).
    pub base: &'a str,
    pub credentials: &'a Credentials,
}

impl CacheApi<'_> {
    async fn send(
        &self,
        method: reqwest::Method,
        url: &str,
        body: Option<Value>,
    ) -> Result<Value, String> {
        let mut request = self
            .http
            .request(method.clone(), url)
            .timeout(Duration::from_secs(60));
        if let Some((name, value)) = self
            .credentials
            .authorization(self.http)
            .await
            .map_err(|e| e.to_string())?
        {
            request = request.header(name, value);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let scrub = self.credentials.scrubber();
        // reqwest's messages name the URL, never headers: no key leaks.
        let response = request
            .send()
            .await
            .map_err(|e| format!("{method} {url}: {e}"))?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| format!("{method} {url}: {e}"))?;
        let bytes = scrub.bytes(bytes);
        if !status.is_success() {
            return Err(format!(
                "{method} {url}: HTTP {}: {}",
                status.as_u16(),
                crate::provider::wire::error_message(&bytes)
            ));
        }
        Ok(serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    /// Creates a cache of `system` for `model`.
    pub async fn create(&self, model: &str, system: &str) -> Result<ContextCache, String> {
        let url = format!(
            "{}/{}/cachedContents",
            self.base,
            crate::provider::gemini::API_VERSION
        );
        let body = json!({
            "model": format!("models/{}", crate::provider::gemini::model_id(model)),
            "systemInstruction": {"parts": [{"text": system}]},
            "ttl": format!("{}s", TTL.as_secs()),
            "displayName": "aiq system prompt",
        });
        let reply = self.send(reqwest::Method::POST, &url, Some(body)).await?;
        let name = reply
            .get("name")
            .and_then(Value::as_str)
            .ok_or("the cache created has no name")?
            .to_string();
        Ok(ContextCache {
            url: format!(
                "{}/{}/{name}",
                self.base,
                crate::provider::gemini::API_VERSION
            ),
            name,
        })
    }

    /// Gives `cache` another [`TTL`] from now.
    pub async fn renew(&self, cache: &ContextCache) -> Result<(), String> {
        let body = json!({"ttl": format!("{}s", TTL.as_secs())});
        let url = format!("{}?updateMask=ttl", cache.url);
        self.send(reqwest::Method::PATCH, &url, Some(body))
            .await
            .map(drop)
    }

    pub async fn delete(&self, cache: &ContextCache) -> Result<(), String> {
        self.send(reqwest::Method::DELETE, &cache.url, None)
            .await
            .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cache_pays_for_long_prompts_over_enough_rows() {
        assert!(!pays_off(MIN_TOKENS - 1, 1_000_000, None));
        // Google's discount: 90% saved a row, 10 input prices of storage.
        assert!(!pays_off(MIN_TOKENS, 11, None));
        assert!(pays_off(MIN_TOKENS, 12, None));
        // No discount at the prices given: never.
        assert!(!pays_off(MIN_TOKENS, 1_000_000, Some((1.0, Some(1.0)))));
        assert!(pays_off(MIN_TOKENS, 40, Some((0.3, Some(0.2)))));
    }
}
