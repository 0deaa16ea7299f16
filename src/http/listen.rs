//! The accept loop both listeners share: HTTP/1.1 and h2c on one port (hyper-util's
//! auto builder), or HTTP/1.1 and HTTP/2 over TLS when the listener has a
//! [`TlsHolder`] (h2 by ALPN; the auto builder also knows it by its preface), and the
//! limits that keep silent or idle clients from starving the
//! others:
//!
//! - at most `max_connections` open at once; beyond that, new connections wait in the
//!   kernel's backlog until one closes;
//! - a new connection that sends no byte within `first_byte` is closed (hyper's own
//!   HTTP/1 header timeout does not cover the wait before the version is known), and
//!   so is one whose TLS handshake is not done within `first_byte` of the accept;
//! - a connection with no request in flight for `idle` is closed gracefully (HTTP/1
//!   keep-alive and HTTP/2 alike; HTTP/2 gets a `GOAWAY`), and HTTP/2 peers that stop
//!   answering pings are dropped;
//! - when `accept` fails (out of file descriptors), the loop backs off exponentially
//!   instead of spinning, and says so once per episode ([`Backoff`]);
//! - on shutdown every connection is closed gracefully and given `grace` to finish.

use super::tls::TlsHolder;
use crate::metrics::ListenerMetrics;
use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::service::Service;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use prometheus_client::metrics::gauge::Gauge;
use rustls::pki_types::CertificateDer;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The limits of one listener.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// Open connections at once.
    pub max_connections: usize,
    /// How long a new connection may stay silent; also hyper's HTTP/1 header timeout.
    pub first_byte: Duration,
    /// How long a connection may stay open with no request in flight.
    pub idle: Duration,
}

/// Exponential back-off for a failing `accept`: the first failure waits `MIN`, each
/// further one twice as long, up to `MAX`; a success resets it.
#[derive(Debug, Default)]
pub struct Backoff {
    next: Option<Duration>,
}

impl Backoff {
    const MIN: Duration = Duration::from_millis(5);
    const MAX: Duration = Duration::from_secs(1);

    /// The pause after one more failure, and whether it starts an episode (the one
    /// failure of the episode worth logging).
    pub fn failed(&mut self) -> (Duration, bool) {
        let first = self.next.is_none();
        let now = self.next.unwrap_or(Self::MIN);
        self.next = Some((now * 2).min(Self::MAX));
        (now, first)
    }

    /// `accept` worked: the episode is over. Returns whether there was one.
    pub fn succeeded(&mut self) -> bool {
        self.next.take().is_some()
    }
}

/// What the service factory learns about a new connection.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The client's address.
    pub peer: SocketAddr,
    /// Whether the connection is TLS (the listener has a [`TlsHolder`]).
    pub tls: bool,
    /// The client certificate the handshake verified (the leaf, DER), if one was
    /// presented; only a listener whose TLS has a `client_cert` CA asks for one.
    pub client_cert: Option<CertificateDer<'static>>,
}

/// Serves `listener` until `shutdown` is cancelled: each connection gets the service
/// `service(&info)` makes once the connection is set up (after the TLS handshake when
/// `tls` is given); `None` closes the connection. Then stops accepting, closes every
/// connection gracefully and waits up to `grace` before cutting what still runs.
///
/// With `tls`, the handshake runs in the connection's own task and must be done within
/// `first_byte` of the accept, like the first byte of a plain connection; it uses the
/// configuration the holder has when it starts, so a reloaded certificate applies to
/// new connections and open ones keep theirs.
#[allow(clippy::too_many_arguments)]
pub async fn serve<F, S, B>(
    what: &'static str,
    listener: TcpListener,
    tls: Option<Arc<TlsHolder>>,
    builder: auto::Builder<TokioExecutor>,
    limits: ConnLimits,
    stats: ListenerMetrics,
    service: F,
    shutdown: CancellationToken,
    grace: Duration,
) where
    F: Fn(&ConnInfo) -> Option<S> + Send + Sync + 'static,
    S: Service<Request<Incoming>, Response = Response<B>> + Send + Sync + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let mut builder = builder;
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.first_byte)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(limits.idle))
        .keep_alive_timeout(limits.first_byte);
    let builder = Arc::new(builder);
    let service = Arc::new(service);
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut backoff = Backoff::default();
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
                    stats.accept_errors.inc();
                    let (pause, first) = backoff.failed();
                    if first {
                        tracing::warn!(listener = what, error = %e, "accept failed (out of file descriptors?); backing off until it works again");
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = shutdown.cancelled() => break,
                    }
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        if backoff.succeeded() {
            tracing::info!(listener = what, "accepting connections again");
        }
        let _ = stream.set_nodelay(true);
        let deadline = Instant::now() + limits.first_byte;
        let (builder, stats, shutdown) = (builder.clone(), stats.clone(), shutdown.clone());
        let (service, tls) = (service.clone(), tls.clone());
        conns.spawn(async move {
            let _open = Open::new(permit, stats.open.clone());
            let mut first = [0u8; 1];
            let spoke = tokio::select! {
                r = tokio::time::timeout_at(deadline, stream.peek(&mut first)) => r,
                _ = shutdown.cancelled() => return,
            };
            match spoke {
                Ok(Ok(n)) if n > 0 => {}
                Ok(_) => return,
                Err(_) => {
                    // Closed before its slot is given back (a waiting client is
                    // accepted only once this one is gone).
                    drop(stream);
                    stats.silent_closed.inc();
                    tracing::debug!(listener = what, %peer, "closed a connection that sent nothing");
                    return;
                }
            }
            let Some(tls) = tls else {
                let info = ConnInfo {
                    peer,
                    tls: false,
                    client_cert: None,
                };
                if let Some(svc) = service(&info) {
                    drive(what, peer, stream, &builder, svc, limits, &stats, &shutdown).await;
                }
                return;
            };
            let acceptor = tokio_rustls::TlsAcceptor::from(tls.current());
            let handshake = tokio::select! {
                r = tokio::time::timeout_at(deadline, acceptor.accept(stream)) => r,
                _ = shutdown.cancelled() => return,
            };
            let stream = match handshake {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(listener = what, %peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    stats.silent_closed.inc();
                    tracing::debug!(listener = what, %peer, "closed a connection that stalled its TLS handshake");
                    return;
                }
            };
            let info = ConnInfo {
                peer,
                tls: true,
                client_cert: stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .map(|c| c.clone().into_owned()),
            };
            if let Some(svc) = service(&info) {
                drive(what, peer, stream, &builder, svc, limits, &stats, &shutdown).await;
            }
        });
    }
    drop(listener);
    let drained = async { while conns.join_next().await.is_some() {} };
    if tokio::time::timeout(grace, drained).await.is_err() {
        tracing::warn!(
            listener = what,
            connections = conns.len(),
            "shutdown grace period over; cutting the remaining connections"
        );
    }
    conns.abort_all();
    while conns.join_next().await.is_some() {}
}

/// Serves HTTP on one set-up connection until it ends, closing it gracefully on
/// shutdown or after `limits.idle` with no request in flight.
#[allow(clippy::too_many_arguments)]
async fn drive<I, S, B>(
    what: &'static str,
    peer: SocketAddr,
    io: I,
    builder: &auto::Builder<TokioExecutor>,
    svc: S,
    limits: ConnLimits,
    stats: &ListenerMetrics,
    shutdown: &CancellationToken,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Service<Request<Incoming>, Response = Response<B>> + Send + Sync + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let svc = Tracked::new(svc);
    let activity = svc.activity.clone();
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
    tokio::pin!(conn);
    let mut closing = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(listener = what, error = %e, %peer, "connection ended with an error");
                }
                return;
            }
            _ = shutdown.cancelled(), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = activity.idle_for(limits.idle), if !closing => {
                closing = true;
                stats.idle_closed.inc();
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

/// One open connection: its slot under `max_connections`, counted in the gauge.
struct Open {
    _permit: OwnedSemaphorePermit,
    gauge: Gauge,
}

impl Open {
    fn new(permit: OwnedSemaphorePermit, gauge: Gauge) -> Open {
        gauge.inc();
        Open {
            _permit: permit,
            gauge,
        }
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// Requests in flight on one connection, and since when none has been.
#[derive(Clone)]
struct Activity(Arc<watch::Sender<(usize, Instant)>>);

impl Activity {
    fn new() -> Activity {
        Activity(Arc::new(watch::Sender::new((0, Instant::now()))))
    }

    fn start(&self) -> InFlight {
        self.0.send_modify(|(n, at)| {
            *n += 1;
            *at = Instant::now();
        });
        InFlight(self.clone())
    }

    /// Resolves once no request has been in flight for `idle`.
    async fn idle_for(&self, idle: Duration) {
        let mut rx = self.0.subscribe();
        loop {
            let (n, since) = *rx.borrow_and_update();
            if n > 0 {
                if rx.changed().await.is_err() {
                    return std::future::pending().await;
                }
                continue;
            }
            tokio::select! {
                _ = tokio::time::sleep_until(since + idle) => return,
                r = rx.changed() => if r.is_err() { return std::future::pending().await },
            }
        }
    }
}

/// One request in flight, until its response body is finished or dropped.
struct InFlight(Activity);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0 .0.send_modify(|(n, at)| {
            *n = n.saturating_sub(1);
            *at = Instant::now();
        });
    }
}

/// A service whose requests count as activity until their responses are sent.
struct Tracked<S> {
    inner: Arc<S>,
    activity: Activity,
}

impl<S> Tracked<S> {
    fn new(inner: S) -> Tracked<S> {
        Tracked {
            inner: Arc::new(inner),
            activity: Activity::new(),
        }
    }
}

impl<S, B> Service<Request<Incoming>> for Tracked<S>
where
    S: Service<Request<Incoming>, Response = Response<B>>,
    S::Future: Send + 'static,
{
    type Response = Response<TrackedBody<B>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let guard = self.activity.start();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let resp = fut.await?;
            Ok(resp.map(|body| TrackedBody {
                body,
                _guard: guard,
            }))
        })
    }
}

/// A response body that keeps its request in flight until it is done.
struct TrackedBody<B> {
    body: B,
    _guard: InFlight,
}

impl<B: Body + Unpin> Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_a_ceiling_logs_once_and_resets() {
        let mut b = Backoff::default();
        let pauses: Vec<(Duration, bool)> = (0..10).map(|_| b.failed()).collect();
        assert_eq!(pauses[0], (Duration::from_millis(5), true));
        assert_eq!(pauses[1], (Duration::from_millis(10), false));
        assert!(pauses[1..].iter().all(|(_, first)| !first));
        assert_eq!(pauses[9].0, Duration::from_secs(1));
        // Within any 10 s of failures, at most a few dozen accept calls: no spin.
        let mut b = Backoff::default();
        let (mut slept, mut calls) = (Duration::ZERO, 0);
        while slept < Duration::from_secs(10) {
            slept += b.failed().0;
            calls += 1;
        }
        assert!(calls <= 20, "{calls} accept calls in 10 s of failures");
        assert!(b.succeeded());
        assert!(!b.succeeded());
        assert_eq!(b.failed(), (Duration::from_millis(5), true));
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_is_idle_only_with_nothing_in_flight_for_the_whole_period() {
        let a = Activity::new();
        let idle = Duration::from_secs(10);
        let guard = a.start();
        let waited = tokio::time::timeout(Duration::from_secs(60), a.idle_for(idle)).await;
        assert!(waited.is_err(), "a request in flight keeps it busy");
        drop(guard);
        let t0 = Instant::now();
        a.idle_for(idle).await;
        assert!(t0.elapsed() >= idle);
    }
}
