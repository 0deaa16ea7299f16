//! Accepting connections: HTTP/1.1 and h2c on one listener (hyper-util's auto
//! builder, with upgrades), a cap on concurrent connections, a header read timeout,
//! and graceful shutdown driven by a cancellation token.

use super::handle::{handle, Peer};
use crate::state::Airlock;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// Serves agents on `listener` until `shutdown` is cancelled, then lets in-flight
/// requests finish (up to `grace`).
pub async fn run(
    listener: TcpListener,
    airlock: Arc<Airlock>,
    shutdown: CancellationToken,
    grace: Duration,
) {
    let (max_conns, header_timeout) = {
        let snap = airlock.snapshot();
        (
            snap.cfg().limits.max_connections,
            snap.cfg().limits.header_timeout,
        )
    };
    let permits = Arc::new(Semaphore::new(max_conns.max(1)));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(100);
    // Every connection's task, so that what is still running when the grace period is
    // over can be cut deliberately (each cut request is then recorded by its exit guard).
    let mut conns = tokio::task::JoinSet::new();
    loop {
        while conns.try_join_next().is_some() {}
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            _ = shutdown.cancelled() => break,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let airlock = airlock.clone();
        let svc = service_fn(move |req| {
            let airlock = airlock.clone();
            async move {
                let peer = Peer {
                    addr: peer,
                    tls: false,
                };
                Ok::<_, std::convert::Infallible>(handle(airlock, req, peer).await)
            }
        });
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
        let conn = graceful.watch(conn.into_owned());
        conns.spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, %peer, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            connections = conns.len(),
            "shutdown grace period (limits.shutdown_grace) over; cutting the remaining connections"
        );
    }
    conns.abort_all();
    while conns.join_next().await.is_some() {}
}
