//! Accepting agents' connections: HTTP/1.1 and h2c on one listener (with upgrades),
//! or HTTP/1.1 and HTTP/2 over TLS with `tls:` (a client certificate verified against
//! `tls.client_ca` is read once per connection and identifies the agent),
//! under the connection limits of [`crate::http::listen`] (`limits.max_connections`,
//! `limits.header_timeout` for the first byte and the request head,
//! `limits.idle_timeout`), and graceful shutdown driven by a cancellation token.
//! Every request carries the shared [`crate::http::budget::ByteBudget`] in its
//! extensions, so whatever buffers its body counts it.

use super::handle::{handle, Peer};
use crate::http::listen::{serve, ConnInfo, ConnLimits};
use crate::http::tls::TlsHolder;
use crate::identity::PeerCert;
use crate::state::Airlock;
use hyper::service::service_fn;
use hyper_util::rt::TokioExecutor;
use hyper_util::server::conn::auto;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Serves agents on `listener` (over TLS with `tls`) until `shutdown` is cancelled,
/// then lets in-flight requests finish (up to `grace`).
pub async fn run(
    listener: TcpListener,
    tls: Option<Arc<TlsHolder>>,
    airlock: Arc<Airlock>,
    shutdown: CancellationToken,
    grace: Duration,
) {
    let limits = {
        let snap = airlock.snapshot();
        let l = &snap.cfg().limits;
        ConnLimits {
            max_connections: l.max_connections,
            first_byte: l.header_timeout,
            idle: l.idle_timeout,
        }
    };
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http2().max_concurrent_streams(100);
    let stats = airlock.metrics.for_listener("proxy");
    let service = move |info: &ConnInfo| {
        let cert = match &info.client_cert {
            Some(der) => match PeerCert::from_der(der) {
                Ok(c) => Some(Arc::new(c)),
                Err(e) => {
                    // Verified by the handshake yet unreadable: fail closed.
                    tracing::warn!(peer = %info.peer, error = %e, "closing a connection whose client certificate cannot be read");
                    return None;
                }
            },
            None => None,
        };
        let peer = Peer {
            addr: info.peer,
            tls: info.tls,
            cert,
        };
        let airlock = airlock.clone();
        Some(service_fn(move |mut req| {
            let airlock = airlock.clone();
            let peer = peer.clone();
            async move {
                req.extensions_mut().insert(airlock.budget.clone());
                Ok::<_, std::convert::Infallible>(handle(airlock, req, peer).await)
            }
        }))
    };
    serve(
        "proxy", listener, tls, builder, limits, stats, service, shutdown, grace,
    )
    .await;
}
