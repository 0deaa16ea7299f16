//! The admin listener: the reviewers' REST API, `/metrics`, `/healthz`, `/readyz`,
//! served by an `axum` [`Router`] on the same hyper 1 connection builder as the proxy.
//!
//! Every `/api/` call needs a reviewer token ([`auth::Reviewer`]); an agent's key is
//! refused. Every answer is JSON, and every error is airlock's JSON error shape
//! ([`answer::ApiError`]), including unknown pages (`404 not_found`) and wrong methods
//! (`405 method_not_allowed`). This module never touches the agent-facing proxy.
//!
//! - [`answer`]: JSON answers and the error newtype;
//! - [`auth`]: the reviewer extractor;
//! - [`extract`]: path, query and JSON body extractors with JSON rejections;
//! - [`approvals`]: list, show and vote;
//! - [`reload`]: `POST /api/v1/reload`;
//! - [`health`]: `/healthz`, `/readyz`, `/metrics`.

pub mod answer;
pub mod approvals;
pub mod auth;
pub mod extract;
pub mod health;
pub mod reload;

use crate::http::{AirlockError, Code};
use crate::state::Airlock;
use answer::ApiError;
use axum::extract::State;
use axum::routing::{get, post};
use axum::Router;
use http::{HeaderMap, Method, Uri};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// How long a client may take to send a request's headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long in-flight admin requests may take to finish after shutdown begins.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Every admin route, with `airlock` as their state.
pub fn router(airlock: Arc<Airlock>) -> Router {
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .route("/api/v1/approvals", get(approvals::list))
        .route("/api/v1/approvals/{id}", get(approvals::show))
        .route("/api/v1/approvals/{id}/votes", post(approvals::vote))
        .route("/api/v1/reload", post(reload::reload))
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
        .with_state(airlock)
}

/// Serves the admin listener until `shutdown` is cancelled, then stops accepting and
/// lets in-flight requests finish (up to a few seconds).
pub async fn run(listener: TcpListener, airlock: Arc<Airlock>, shutdown: CancellationToken) {
    let service = TowerToHyperService::new(router(airlock));
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let conn = builder
            .serve_connection(TokioIo::new(stream), service.clone())
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, %peer, "admin connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("admin shutdown grace period over; closing remaining connections");
    }
}

/// Any path no route serves: `404 not_found`. Under `/api/` the caller must be a
/// reviewer first, so the API's shape is not shown to anyone else.
async fn not_found(State(airlock): State<Arc<Airlock>>, uri: Uri, headers: HeaderMap) -> ApiError {
    if let Err(e) = authenticate_api(&airlock, &uri, &headers) {
        return e;
    }
    ApiError(AirlockError::new(
        Code::NotFound,
        format!("no such page: {}", uri.path()),
    ))
}

/// A known path with a method it does not serve: `405 method_not_allowed` (under
/// `/api/`, after the reviewer check).
async fn method_not_allowed(
    State(airlock): State<Arc<Airlock>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> ApiError {
    if let Err(e) = authenticate_api(&airlock, &uri, &headers) {
        return e;
    }
    ApiError(AirlockError::new(
        Code::MethodNotAllowed,
        format!("{method} is not allowed on {}", uri.path()),
    ))
}

/// The reviewer check for fallbacks under `/api/`; other paths need none.
fn authenticate_api(airlock: &Airlock, uri: &Uri, headers: &HeaderMap) -> Result<(), ApiError> {
    if uri.path().starts_with("/api/") {
        auth::authenticate(airlock, headers).map_err(ApiError)?;
    }
    Ok(())
}
