//! HTTPS with HTTP/2, as hosted endpoints serve: a test certificate
//! authority made at start (rcgen), a server certificate for 127.0.0.1 and
//! localhost signed by it, ALPN offering h2 and http/1.1, and a cap on the
//! streams of each HTTP/2 connection (`--max-streams`, 100 like hypercorn's
//! default), the cap that hyper's client pool does not look past.
//!
//! Clients must trust the CA (`Simulator::ca_pem`, or the file `aiq
//! simulate --tls` writes) — without it they see what a private CA looks
//! like to a client that was not told about it.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_rustls::rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

use super::stats::Counters;

/// A CA and the server identity it signed.
pub(crate) struct TestCa {
    /// The CA certificate, PEM: what a client must trust.
    pub ca_pem: String,
    pub acceptor: TlsAcceptor,
}

fn tls_error(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(format!("simulator TLS setup: {e}"))
}

impl TestCa {
    pub fn new() -> std::io::Result<TestCa> {
        let ca_key = rcgen::KeyPair::generate().map_err(tls_error)?;
        let mut ca_params =
            rcgen::CertificateParams::new(Vec::<String>::new()).map_err(tls_error)?;
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "aiq simulator test CA");
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).map_err(tls_error)?;
        let key = rcgen::KeyPair::generate().map_err(tls_error)?;
        let params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
                .map_err(tls_error)?;
        let cert = params.signed_by(&key, &ca).map_err(tls_error)?;
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        // The provider named, not the process default: with both of rustls'
        // providers compiled in (object_store's reqwest brings ring), it
        // has no default to pick.
        let provider = Arc::new(tokio_rustls::rustls::crypto::aws_lc_rs::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(tls_error)?
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone(), ca.der().clone()], key_der)
            .map_err(tls_error)?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(TestCa {
            ca_pem: ca.pem(),
            acceptor: TlsAcceptor::from(Arc::new(config)),
        })
    }
}

/// Serve `app` over TLS on `listener` until `stopped` fires: HTTP/2 with at
/// most `max_streams` streams per connection when the client offers h2,
/// HTTP/1.1 otherwise. Failed handshakes (a client that does not trust the
/// CA) are counted and dropped.
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    acceptor: TlsAcceptor,
    max_streams: u32,
    counters: Arc<Counters>,
    mut stopped: oneshot::Receiver<()>,
) {
    loop {
        let accepted = tokio::select! {
            _ = &mut stopped => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((tcp, _)) = accepted else { continue };
        let (acceptor, app, counters) = (acceptor.clone(), app.clone(), counters.clone());
        tokio::spawn(async move {
            let tls = match acceptor.accept(tcp).await {
                Ok(tls) => tls,
                Err(_) => {
                    counters.tls_failures.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            };
            let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
            let io = TokioIo::new(tls);
            let service = TowerToHyperService::new(app);
            // A connection that breaks mid-request is the client's business.
            let _ = if h2 {
                hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .max_concurrent_streams(max_streams)
                    .serve_connection(io, service)
                    .await
            } else {
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, service)
                    .await
            };
        });
    }
}
