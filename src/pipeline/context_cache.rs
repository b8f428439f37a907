//! An explicit context cache for the job's system prompt, where the
//! provider has one and it pays ([`crate::provider::gemini_cache`] says
//! when): made before the first call, renewed while the job runs, and
//! deleted when it ends, whether it finished or failed. Each call then
//! names the cache instead of carrying the prompt (the client rewrites the
//! body as it goes out, so journal keys do not depend on the cache).
//! A cache that cannot be made is no failure: the job goes on without, and
//! the provider's implicit caching still serves the shared prefix.

use std::sync::Arc;

use tokio::task::JoinHandle;

use crate::job::plan::Plan;
use crate::job::settings::Mode;
use crate::pipeline::connect::Connection;
use crate::pipeline::render::Templates;
use crate::provider::dialect::Dialect;
use crate::provider::endpoint::Endpoint;
use crate::provider::gemini_cache::{pays_off, CacheApi, ContextCache, TTL};
use crate::provider::wire::Task;

/// A cache made for this job, and the task that renews it.
pub struct JobCache {
    pub cache: ContextCache,
    http: reqwest::Client,
    endpoint: Arc<Endpoint>,
    renew: JoinHandle<()>,
}

/// Makes the job's cache if the endpoint has explicit caching, the system
/// prompt is the same for every row, and it pays over `rows` rows.
pub async fn open(
    plan: &Plan,
    connection: &Connection,
    templates: &Templates,
    rows: Option<u64>,
) -> Option<JobCache> {
    let endpoint = connection.endpoint.clone();
    if endpoint.dialect != Dialect::Gemini || plan.task != Task::Chat || plan.mode != Mode::Online {
        return None;
    }
    let system = templates.static_system()?;
    let prices = plan.prices.map(|p| (p.input, p.cached));
    let tokens = crate::ai::tokens::estimate(&system);
    if !pays_off(tokens, rows?, prices) {
        return None;
    }
    let base = endpoint.base.clone()?;
    let http = connection.pool.http.side().clone();
    let api = CacheApi {
        http: &http,
        base: &base,
        credentials: &endpoint.credentials,
    };
    let cache = match api.create(&endpoint.name, &system).await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!("no explicit cache for the system prompt ({e}); going on without");
            return None;
        }
    };
    tracing::info!(
        "the system prompt ({tokens} tokens) is in the explicit cache {}",
        cache.name
    );
    let renew = tokio::spawn({
        let (http, endpoint, cache) = (http.clone(), endpoint.clone(), cache.clone());
        async move {
            let every = TTL / 3;
            loop {
                tokio::time::sleep(every).await;
                let base = endpoint.base.clone().unwrap_or_default();
                let api = CacheApi {
                    http: &http,
                    base: &base,
                    credentials: &endpoint.credentials,
                };
                if let Err(e) = api.renew(&cache).await {
                    tracing::warn!("renewing the explicit cache {}: {e}", cache.name);
                }
            }
        }
    });
    Some(JobCache {
        cache,
        http,
        endpoint,
        renew,
    })
}

impl JobCache {
    /// Stops renewing the cache and deletes it (storage is billed while it
    /// lives); a failed delete is said, and the cache expires within its TTL.
    pub async fn close(self) {
        self.renew.abort();
        let base = self.endpoint.base.clone().unwrap_or_default();
        let api = CacheApi {
            http: &self.http,
            base: &base,
            credentials: &self.endpoint.credentials,
        };
        if let Err(e) = api.delete(&self.cache).await {
            tracing::warn!(
                "deleting the explicit cache {}: {e}; it expires within {} minutes",
                self.cache.name,
                TTL.as_secs() / 60
            );
        }
    }
}
