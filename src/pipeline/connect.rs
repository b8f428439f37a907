//! Connect: what a shell needs before its first request. [`open`]
//! resolves an endpoint and its credentials (starting the built-in
//! simulator when asked for) and opens its [`Pool`]: one HTTP pool sized for
//! the requests in flight and one limiter pacing them all, from which
//! [`Pool::client`] makes the clients that send. `aiq run` connects once per
//! job ([`connect`], from its plan); `aiq bench` connects once with its own
//! [`Reach`]: no limiter, as it offers the load it was told to; `aiq sql`
//! opens one pool for the whole query (its limits are the query's) and
//! resolves each call site's endpoint.

use std::path::Path;
use std::sync::Arc;

use crate::error::Result;
use crate::job::plan::{EndpointSpec, Plan};
use crate::pipeline::client::Client;
use crate::pipeline::http::HttpPool;
use crate::provider::endpoint::Endpoint;
use crate::provider::limit::{Limiter, Limits};
use crate::provider::reply::Shape;
use crate::provider::retry::RetryPolicy;
use crate::simulator::Simulator;

/// The `User-Agent` of every request aiq sends.
pub const AGENT: &str = concat!("aiq/", env!("CARGO_PKG_VERSION"));

/// One HTTP pool and one limiter, shared by every client made from them.
#[derive(Clone)]
pub struct Pool {
    pub http: HttpPool,
    pub limiter: Arc<Limiter>,
}

impl Pool {
    /// A pool for `concurrency` requests in flight to `url` (its scheme
    /// sizes the pool; see [`HttpPool::new`]), trusting `ca_cert` too, paced
    /// by `limits`.
    pub fn open(
        url: &str,
        concurrency: usize,
        ca_cert: Option<&Path>,
        limits: &Limits,
        agent: &str,
    ) -> Result<Pool> {
        Ok(Pool {
            http: HttpPool::new(url, concurrency, ca_cert, agent)?,
            limiter: Arc::new(Limiter::with_limits(limits)),
        })
    }

    /// A client sending to `endpoint` through this pool and limiter.
    pub fn client(
        &self,
        endpoint: Arc<Endpoint>,
        retry: RetryPolicy,
        shape: Shape,
        stream: bool,
    ) -> Result<Client> {
        Client::new(
            self.http.clone(),
            endpoint,
            self.limiter.clone(),
            retry,
            shape,
            stream,
        )
    }
}

/// A plan's endpoint, reached: see [`connect`].
pub struct Connection {
    pub endpoint: Arc<Endpoint>,
    /// The built-in simulator, when the plan asks for it: it serves as long
    /// as this is kept.
    pub simulator: Option<Simulator>,
    pub pool: Pool,
}

/// What [`open`] connects to, and how hard it may push.
pub struct Reach<'a> {
    pub endpoint: EndpointSpec<'a>,
    /// Requests in flight at most: what the HTTP pool is sized for.
    pub concurrency: usize,
    pub ca_cert: Option<&'a Path>,
    /// What the limiter paces (none set: no pacing).
    pub limits: Limits,
    /// The `User-Agent`.
    pub agent: &'a str,
}

/// Resolves the plan's endpoint and opens a pool for the plan's
/// concurrency, CA certificates and rate limits.
pub async fn connect(plan: &Plan) -> Result<Connection> {
    open(Reach {
        endpoint: plan.endpoint_spec(),
        concurrency: plan.concurrency,
        ca_cert: plan.ca_cert.as_deref(),
        limits: plan.limits(),
        agent: AGENT,
    })
    .await
}

/// Resolves `reach`'s endpoint and opens its pool and limiter.
pub async fn open(reach: Reach<'_>) -> Result<Connection> {
    let (endpoint, simulator) = reach.endpoint.resolve().await?;
    let pool = Pool::open(
        &endpoint.url,
        reach.concurrency,
        reach.ca_cert,
        &reach.limits,
        reach.agent,
    )?;
    Ok(Connection {
        endpoint: Arc::new(endpoint),
        simulator,
        pool,
    })
}

impl Connection {
    /// The client for this plan's calls, read as `shape`: the plan's
    /// retries, streaming and repairs.
    pub fn client(&self, plan: &Plan, shape: Shape) -> Result<Client> {
        let mut client = self.pool.client(
            self.endpoint.clone(),
            plan.retry.clone(),
            shape,
            plan.stream,
        )?;
        client.max_repairs = plan.max_repairs;
        Ok(client)
    }
}
