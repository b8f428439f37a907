//! The HTTP connections a job sends over: enough of them that the server
//! sees the concurrency the job asked for.
//!
//! Over HTTPS reqwest negotiates HTTP/2 and multiplexes every request over
//! one connection per client. Servers cap the streams of a connection
//! (about 100: hypercorn's default, nginx 128, load balancers 100–128), and
//! hyper's pool does not open a second connection when the cap is reached
//! (hyper #2197, #3623): requests beyond it queue inside the client, and
//! `--concurrency 400` became ~110 in flight at the server. So a job holds
//! one client per [`STREAMS_PER_CONNECTION`] requests of its concurrency
//! and sends each request on the one with the fewest in flight, which keeps
//! every connection under any common cap. Plain HTTP/1.1 opens a
//! connection per request in flight anyway; one client serves it.
//!
//! Private CAs: `--ca-cert PATH` adds a PEM bundle to the platform's roots
//! (`SSL_CERT_FILE` works too, through the platform verifier).

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, Result};

/// Requests one HTTP/2 connection carries at once: half the lowest common
/// server cap (100), so uneven latencies cannot push one over it.
pub const STREAMS_PER_CONNECTION: usize = 50;

/// Clients to spread requests over, each with its own connection(s).
#[derive(Clone)]
pub struct HttpPool {
    clients: Arc<Vec<(reqwest::Client, AtomicUsize)>>,
}

impl From<reqwest::Client> for HttpPool {
    fn from(client: reqwest::Client) -> HttpPool {
        HttpPool {
            clients: Arc::new(vec![(client, AtomicUsize::new(0))]),
        }
    }
}

/// One request's use of a client: counts it in flight until dropped.
pub struct Lease<'a> {
    pub client: &'a reqwest::Client,
    count: &'a AtomicUsize,
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::Relaxed);
    }
}

impl HttpPool {
    /// Clients for `concurrency` requests in flight to `url`, trusting the
    /// extra roots in `ca_cert` (a PEM file). `agent` is the User-Agent.
    pub fn new(
        url: &str,
        concurrency: usize,
        ca_cert: Option<&Path>,
        agent: &str,
    ) -> Result<HttpPool> {
        let certs = match ca_cert {
            Some(path) => {
                let pem = std::fs::read(path)
                    .map_err(|e| Error::Config(format!("--ca-cert {}: {e}", path.display())))?;
                let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                    Error::Config(format!(
                        "--ca-cert {}: not a PEM certificate bundle: {e}",
                        path.display()
                    ))
                })?;
                if certs.is_empty() {
                    return Err(Error::Config(format!(
                        "--ca-cert {}: no certificate in the file",
                        path.display()
                    )));
                }
                certs
            }
            None => Vec::new(),
        };
        let https = url.trim_start().to_ascii_lowercase().starts_with("https:");
        let n = if https {
            concurrency.div_ceil(STREAMS_PER_CONNECTION).max(1)
        } else {
            1
        };
        let clients = (0..n)
            .map(|_| {
                let mut b = reqwest::Client::builder()
                    .pool_max_idle_per_host(concurrency.div_ceil(n))
                    .tcp_nodelay(true)
                    .connect_timeout(Duration::from_secs(30))
                    .user_agent(agent);
                if !certs.is_empty() {
                    b = b.tls_certs_merge(certs.iter().cloned());
                }
                b.build()
                    .map(|c| (c, AtomicUsize::new(0)))
                    .map_err(|e| Error::Config(format!("HTTP client: {e}")))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(HttpPool {
            clients: Arc::new(clients),
        })
    }

    /// The client with the fewest requests in flight, counted until the
    /// lease is dropped.
    pub fn lease(&self) -> Lease<'_> {
        let (client, count) = self
            .clients
            .iter()
            .min_by_key(|(_, n)| n.load(Ordering::Relaxed))
            .unwrap_or(&self.clients[0]);
        count.fetch_add(1, Ordering::Relaxed);
        Lease { client, count }
    }

    /// Any client, for side requests (OAuth tokens).
    pub fn first(&self) -> &reqwest::Client {
        &self.clients[0].0
    }

    pub fn connections(&self) -> usize {
        self.clients.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enough_connections_for_the_concurrency_over_https() {
        let pool = HttpPool::new("https://example.com/v1", 400, None, "t").unwrap();
        assert_eq!(pool.connections(), 8);
        let plain = HttpPool::new("http://127.0.0.1:1/v1", 400, None, "t").unwrap();
        assert_eq!(plain.connections(), 1);
        // Leases spread evenly: 400 held at once, 50 per client.
        let leases: Vec<_> = (0..400).map(|_| pool.lease()).collect();
        for (_, n) in pool.clients.iter() {
            assert_eq!(n.load(Ordering::Relaxed), 50);
        }
        drop(leases);
        assert!(pool
            .clients
            .iter()
            .all(|(_, n)| n.load(Ordering::Relaxed) == 0));
    }

    #[test]
    fn a_bad_ca_file_is_a_config_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ca.pem");
        std::fs::write(&p, "not a certificate").unwrap();
        let e = HttpPool::new("https://x", 1, Some(&p), "t").err().unwrap();
        assert!(e.to_string().contains("--ca-cert"), "{e}");
        let missing = dir.path().join("none.pem");
        assert!(HttpPool::new("https://x", 1, Some(&missing), "t").is_err());
    }
}
