//! Accepting agents' connections: HTTP/1.1 and h2c on one listener (with upgrades),
//! under the connection limits of [`crate::http::listen`] (`limits.max_connections`,
//! `limits.header_timeout` for the first byte and the request head,
//! `limits.idle_timeout`), and graceful shutdown driven by a cancellation token.
//! Every request carries the shared [`crate::http::budget::ByteBudget`] in its
//! extensions, so whatever buffers its body counts it.

use super::handle::{handle, Peer};
use crate::http::listen::{serve, ConnLimits};
use crate::state::Airlock;
use hyper::service::service_fn;
use hyper_util::rt::TokioExecutor;
use hyper_util::server::conn::auto;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Serves agents on `listener` until `shutdown` is cancelled, then lets in-flight
/// requests finish (up to `grace`).
pub async fn run(
    listener: TcpListener,
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
    let service = move |addr| {
        let airlock = airlock.clone();
        service_fn(move |mut req| {
            let airlock = airlock.clone();
            async move {
                req.extensions_mut().insert(airlock.budget.clone());
                let peer = Peer {
                    addr,
                    tls: false,
                    cert: None,
                };
                Ok::<_, std::convert::Infallible>(handle(airlock, req, peer).await)
            }
        })
    };
    serve(
        "proxy", listener, builder, limits, stats, service, shutdown, grace,
    )
    .await;
}
