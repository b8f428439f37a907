//! The HTTP connections a job sends over: enough of them that the server
//! sees the concurrency the job asked for, at as little CPU per request as
//! the protocol allows.
//!
//! Model calls go straight to hyper's pooled client (hyper-util), with the
//! request's URI and headers built once per job ([`Post`]). reqwest, which
//! aiq used before, re-parsed the URL of every reply, merged and cloned the
//! header map three times (defaults, retry layer, redirect layer) and boxed
//! each layer's future: ~5 µs of the ~30 µs of CPU a small row cost
//! (benches/memory.sh). Side requests (OAuth tokens, Batch API uploads)
//! stay on reqwest ([`HttpPool::side`]), where forms and multipart matter
//! more than microseconds.
//!
//! What reqwest gave and this keeps:
//! - TLS by rustls with the platform's roots (rustls-platform-verifier, as
//!   reqwest), plus `--ca-cert PATH` (a PEM bundle; `SSL_CERT_FILE` works
//!   too, through the platform verifier); HTTP/2 when the server offers it
//!   (ALPN).
//! - Proxies from `HTTPS_PROXY` / `HTTP_PROXY` / `ALL_PROXY` / `NO_PROXY`
//!   (read as reqwest reads them): https:// through a CONNECT tunnel,
//!   http:// as absolute-form requests to the proxy, with the credentials of
//!   the proxy URL.
//! - A 30 s connect timeout, TCP keepalive every 15 s, idle connections
//!   closed after 90 s; the whole-attempt timeout is the caller's
//!   ([`crate::pipeline::client`]).
//!
//! HTTP/2 stream caps: servers cap the streams of a connection (about 100:
//! hypercorn's default, nginx 128, load balancers 100–128), and hyper's pool
//! does not open a second connection when the cap is reached (hyper #2197,
//! #3623): requests beyond it queue inside the client, and
//! `--concurrency 400` became ~110 in flight at the server. So a job holds
//! one client per [`STREAMS_PER_CONNECTION`] requests of its concurrency
//! and sends each request on the one with the fewest in flight, which keeps
//! every connection under any common cap. Plain HTTP/1.1 opens a connection
//! per request in flight anyway; one client serves it.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{
    HeaderMap, HeaderValue, ACCEPT, CONTENT_TYPE, LOCATION, PROXY_AUTHORIZATION, USER_AGENT,
};
use hyper::{Method, Request, Response, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use crate::error::{Error, Result};

/// Requests one HTTP/2 connection carries at once: half the lowest common
/// server cap (100), so uneven latencies cannot push one over it.
pub const STREAMS_PER_CONNECTION: usize = 50;

/// Redirects a call follows (307 and 308) before the last one is its reply.
pub const MAX_REDIRECTS: usize = 5;

/// How long a TCP connect (to the server or a proxy) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// TCP keepalive time and interval, and how long an idle pooled connection
/// is kept: reqwest's defaults, which aiq had before.
const KEEPALIVE: Duration = Duration::from_secs(15);
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

type Sender = hyper_util::client::legacy::Client<HttpsConnector<Connector>, Full<Bytes>>;

/// Clients to spread model calls over, each with its own connection(s),
/// and one reqwest client for side requests.
#[derive(Clone)]
pub struct HttpPool {
    senders: Arc<Vec<(Sender, AtomicUsize)>>,
    side: reqwest::Client,
    /// Set when a proxy is configured: plain-HTTP requests it intercepts
    /// carry its credentials.
    proxies: Option<Arc<Matcher>>,
    agent: HeaderValue,
}

/// A POST to one URL with fixed headers, built once and sent many times.
#[derive(Clone, Debug)]
pub struct Post {
    pub uri: Uri,
    pub headers: HeaderMap,
}

/// Why a request got no response.
#[derive(Debug)]
pub struct TransportError {
    /// The connection was never made (the request did not go out).
    pub connect: bool,
    /// The error and its causes, `: `-joined.
    pub message: String,
}

/// One request's use of a client: counts it in flight until dropped, which
/// the caller does once the reply is read whole (a stream occupies its
/// connection until then).
pub struct Lease<'a> {
    sender: &'a Sender,
    count: &'a AtomicUsize,
    pool: &'a HttpPool,
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Lease<'_> {
    /// Send `body` as `post`, with `extra` headers (credentials) added.
    /// Redirects that keep the method and body (307 and 308, RFC 9110
    /// 15.4.8–9) are followed, up to [`MAX_REDIRECTS`], as reqwest did;
    /// the credentials go only to the scheme and host they were for. Any
    /// other redirect comes back as the response (the caller stops the job
    /// with where it points).
    pub async fn send(
        &self,
        post: &Post,
        mut extra: Vec<(hyper::header::HeaderName, HeaderValue)>,
        body: Bytes,
    ) -> std::result::Result<Response<Incoming>, TransportError> {
        let mut uri = post.uri.clone();
        let mut redirects = 0;
        loop {
            let response = self
                .send_once(&uri, &post.headers, extra.clone(), body.clone())
                .await?;
            let status = response.status().as_u16();
            if !matches!(status, 307 | 308) || redirects == MAX_REDIRECTS {
                return Ok(response);
            }
            let Some(next) = redirect_target(&uri, response.headers()) else {
                return Ok(response);
            };
            if (next.scheme(), next.authority()) != (uri.scheme(), uri.authority()) {
                extra.clear();
            }
            uri = next;
            redirects += 1;
        }
    }

    async fn send_once(
        &self,
        uri: &Uri,
        headers: &HeaderMap,
        extra: Vec<(hyper::header::HeaderName, HeaderValue)>,
        body: Bytes,
    ) -> std::result::Result<Response<Incoming>, TransportError> {
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = uri.clone();
        let sent = request.headers_mut();
        *sent = headers.clone();
        for (name, value) in extra {
            sent.insert(name, value);
        }
        if let Some(auth) = self.pool.http_proxy_auth(uri) {
            sent.insert(PROXY_AUTHORIZATION, auth);
        }
        self.sender
            .request(request)
            .await
            .map_err(|e| TransportError {
                connect: e.is_connect(),
                message: chain(&e),
            })
    }
}

/// Where a redirect from `from` points: its `Location`, absolute or a path
/// on the same server; None when there is none or it is not http(s).
pub fn redirect_target(from: &Uri, headers: &HeaderMap) -> Option<Uri> {
    let location = headers.get(LOCATION)?.to_str().ok()?;
    let uri: Uri = location.parse().ok()?;
    if uri.scheme().is_some() {
        return matches!(uri.scheme_str(), Some("http") | Some("https")).then_some(uri);
    }
    if !location.starts_with('/') {
        return None;
    }
    Uri::builder()
        .scheme(from.scheme()?.clone())
        .authority(from.authority()?.clone())
        .path_and_query(location)
        .build()
        .ok()
}

impl Post {
    /// A JSON POST to `url` (no User-Agent: [`HttpPool::post`] adds it).
    pub fn json(url: &str) -> Result<Post> {
        let uri: Uri = url
            .parse()
            .map_err(|e| Error::Config(format!("endpoint URL {url}: {e}")))?;
        match uri.scheme_str() {
            Some("http") | Some("https") if uri.host().is_some() => {}
            _ => {
                return Err(Error::Config(format!(
                    "endpoint URL {url}: not an http:// or https:// URL"
                )))
            }
        }
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(ACCEPT, HeaderValue::from_static("*/*"));
        Ok(Post { uri, headers })
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
            Some(path) => read_certificates(path)?,
            None => Vec::new(),
        };
        let agent = HeaderValue::from_str(agent)
            .map_err(|_| Error::Config(format!("user agent {agent:?}: not a header value")))?;
        let proxies = proxies_from_env();
        let tls = tls_config(&certs)?;
        let https = url.trim_start().to_ascii_lowercase().starts_with("https:");
        let n = if https {
            concurrency.div_ceil(STREAMS_PER_CONNECTION).max(1)
        } else {
            1
        };
        let senders = (0..n)
            .map(|_| {
                let mut tcp = HttpConnector::new();
                tcp.enforce_http(false);
                tcp.set_nodelay(true);
                tcp.set_connect_timeout(Some(CONNECT_TIMEOUT));
                // As reqwest: TCP keepalive finds connections a NAT or load
                // balancer dropped while a long call was running.
                tcp.set_keepalive(Some(KEEPALIVE));
                tcp.set_keepalive_interval(Some(KEEPALIVE));
                let connector = hyper_rustls::HttpsConnectorBuilder::new()
                    .with_tls_config(tls.clone())
                    .https_or_http()
                    .enable_http1()
                    .enable_http2()
                    .wrap_connector(Connector {
                        tcp,
                        proxies: proxies.clone(),
                    });
                // Idle connections close after a while, as reqwest's do, so
                // a pool never keeps sockets the server has long forgotten.
                let sender = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
                    .timer(TokioTimer::new())
                    .pool_timer(TokioTimer::new())
                    .pool_idle_timeout(POOL_IDLE_TIMEOUT)
                    .pool_max_idle_per_host(concurrency.div_ceil(n))
                    .build(connector);
                (sender, AtomicUsize::new(0))
            })
            .collect();
        let mut side = reqwest::Client::builder()
            .tcp_nodelay(true)
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(agent.clone());
        if !certs.is_empty() {
            let pem = certs
                .iter()
                .map(|c| reqwest::Certificate::from_der(c))
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| Error::Config(format!("--ca-cert: {e}")))?;
            side = side.tls_certs_merge(pem);
        }
        let side = side
            .build()
            .map_err(|e| Error::Config(format!("HTTP client: {e}")))?;
        Ok(HttpPool {
            senders: Arc::new(senders),
            side,
            proxies,
            agent,
        })
    }

    /// The client with the fewest requests in flight, counted until the
    /// lease is dropped.
    pub fn lease(&self) -> Lease<'_> {
        let (sender, count) = self
            .senders
            .iter()
            .min_by_key(|(_, n)| n.load(Ordering::Relaxed))
            .unwrap_or(&self.senders[0]);
        count.fetch_add(1, Ordering::Relaxed);
        Lease {
            sender,
            count,
            pool: self,
        }
    }

    /// A JSON POST to `url` from this pool's User-Agent.
    pub fn post(&self, url: &str) -> Result<Post> {
        let mut post = Post::json(url)?;
        post.headers.insert(USER_AGENT, self.agent.clone());
        Ok(post)
    }

    /// The client for side requests (OAuth tokens, Batch API files).
    pub fn side(&self) -> &reqwest::Client {
        &self.side
    }

    pub fn connections(&self) -> usize {
        self.senders.len()
    }

    /// The proxy credentials a plain-HTTP request to `uri` carries, when a
    /// proxy intercepts it (an https:// request sends them in its CONNECT).
    fn http_proxy_auth(&self, uri: &Uri) -> Option<HeaderValue> {
        if uri.scheme_str() != Some("http") {
            return None;
        }
        let proxy = self.proxies.as_ref()?.intercept(uri)?;
        proxy.basic_auth().cloned()
    }
}

/// The proxy settings of the environment, or None when there are none
/// (the common case: no lookup per request).
fn proxies_from_env() -> Option<Arc<Matcher>> {
    let set = crate::provider::auth::PROXY_VARS
        .iter()
        .any(|k| std::env::var_os(k).is_some_and(|v| !v.is_empty()));
    set.then(|| Arc::new(Matcher::from_env()))
}

fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let pem = std::fs::read(path)
        .map_err(|e| Error::Config(format!("--ca-cert {}: {e}", path.display())))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| {
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
    Ok(certs)
}

/// rustls with the platform's verifier and `extra` roots, as reqwest builds
/// it (aws-lc-rs, the provider reqwest and the simulator use).
fn tls_config(extra: &[CertificateDer<'static>]) -> Result<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = if extra.is_empty() {
        rustls_platform_verifier::Verifier::new(provider.clone())
    } else {
        rustls_platform_verifier::Verifier::new_with_extra_roots(extra.to_vec(), provider.clone())
    }
    .map_err(|e| Error::Config(format!("TLS roots: {e}")))?;
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Config(format!("TLS: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth())
}

/// An error and its causes, as one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        // hyper repeats a cause in its own text at times; say it once.
        if !message.ends_with(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = s.source();
    }
    message
}

/// TCP to the server, or through the proxy the environment names for it.
#[derive(Clone)]
struct Connector {
    tcp: HttpConnector,
    proxies: Option<Arc<Matcher>>,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower_service::Service<Uri> for Connector {
    type Response = Conn;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = std::result::Result<Conn, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<std::result::Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let mut tcp = self.tcp.clone();
        let proxy = self.proxies.as_ref().and_then(|m| m.intercept(&dst));
        Box::pin(async move {
            match proxy {
                None => Ok(Conn {
                    io: tcp.call(dst).await?,
                    via_proxy: false,
                }),
                // TLS to the server, through the proxy: a CONNECT tunnel.
                Some(proxy) if dst.scheme_str() == Some("https") => {
                    let mut tunnel = Tunnel::new(proxy.uri().clone(), tcp);
                    if let Some(auth) = proxy.basic_auth() {
                        tunnel = tunnel.with_auth(auth.clone());
                    }
                    Ok(Conn {
                        io: tunnel.call(dst).await?,
                        via_proxy: false,
                    })
                }
                // Plain HTTP: requests go to the proxy in absolute form.
                Some(proxy) => Ok(Conn {
                    io: tcp.call(proxy.uri().clone()).await?,
                    via_proxy: true,
                }),
            }
        })
    }
}

/// A TCP connection, and whether it is to an HTTP proxy (then hyper sends
/// absolute-form request targets).
struct Conn {
    io: TokioIo<tokio::net::TcpStream>,
    via_proxy: bool,
}

impl Connection for Conn {
    fn connected(&self) -> Connected {
        self.io.connected().proxy(self.via_proxy)
    }
}

impl hyper::rt::Read for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
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
        for (_, n) in pool.senders.iter() {
            assert_eq!(n.load(Ordering::Relaxed), 50);
        }
        drop(leases);
        assert!(pool
            .senders
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

    #[test]
    fn redirect_targets_resolve_against_the_request() {
        let from: Uri = "https://api.example.com/v1/chat/completions"
            .parse()
            .unwrap();
        let at = |location: &str| {
            let mut h = HeaderMap::new();
            h.insert(LOCATION, HeaderValue::from_str(location).unwrap());
            redirect_target(&from, &h).map(|u| u.to_string())
        };
        assert_eq!(
            at("/v2/chat/completions").as_deref(),
            Some("https://api.example.com/v2/chat/completions")
        );
        assert_eq!(
            at("http://other:8000/x").as_deref(),
            Some("http://other:8000/x")
        );
        assert_eq!(at("ftp://other/x"), None);
        assert_eq!(at("relative/path"), None);
        assert_eq!(redirect_target(&from, &HeaderMap::new()), None);
    }

    #[test]
    fn posts_are_to_http_urls_only() {
        let post = Post::json("http://127.0.0.1:9/v1/chat/completions").unwrap();
        assert_eq!(post.uri.path(), "/v1/chat/completions");
        assert_eq!(post.headers[CONTENT_TYPE], "application/json");
        for bad in ["ftp://host/x", "/v1/chat", "not a url"] {
            assert!(Post::json(bad).is_err(), "{bad}");
        }
    }
}
