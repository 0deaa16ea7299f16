//! The admin listener: the reviewers' REST API, `/metrics`, `/healthz`, `/readyz`,
//! served by an `axum` [`Router`] on the same accept loop as the proxy
//! ([`crate::http::listen`]).
//!
//! Every `/api/` call needs a reviewer token or OIDC token ([`auth::Reviewer`]); an
//! agent's credential (key or JWT) is refused. Every answer is JSON, and every error is airlock's JSON error shape
//! ([`answer::ApiError`]), including unknown pages (`404 not_found`) and wrong methods
//! (`405 method_not_allowed`). This module never touches the agent-facing proxy.
//!
//! - [`answer`]: JSON answers and the error newtype;
//! - [`auth`]: the reviewer extractor;
//! - [`extract`]: path, query and JSON body extractors with JSON rejections;
//! - [`approvals`]: list, show and vote;
//! - [`reload`]: `POST /api/v1/reload`;
//! - [`health`]: `/healthz`, `/readyz`, `/metrics`;
//! - [`slack`], [`teams`]: the chat callbacks (`POST /slack/actions`,
//!   `POST /teams/actions`), verified by their channels' own proofs, not tokens.

pub mod answer;
pub mod approvals;
pub mod auth;
pub mod extract;
pub mod health;
pub mod reload;
pub mod slack;
pub mod teams;

use crate::http::listen::{serve, ConnInfo, ConnLimits};
use crate::http::tls::TlsHolder;
use crate::http::{AirlockError, Code};
use crate::state::Airlock;
use answer::ApiError;
use axum::extract::State;
use axum::routing::{get, post};
use axum::Router;
use http::{HeaderMap, Method, Uri};
use hyper_util::rt::TokioExecutor;
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

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
        .route("/slack/actions", post(slack::actions))
        .route("/teams/actions", post(teams::actions))
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
        .with_state(airlock)
}

/// Serves the admin listener (over TLS with `admin.tls`) until `shutdown` is cancelled, then stops accepting and
/// lets in-flight requests finish (up to a few seconds). Connections are limited as
/// the agents' are (`limits.header_timeout`, `limits.idle_timeout`), at most
/// `admin.max_connections` at once, with back-off when `accept` fails.
pub async fn run(
    listener: TcpListener,
    tls: Option<Arc<TlsHolder>>,
    airlock: Arc<Airlock>,
    shutdown: CancellationToken,
) {
    let limits = {
        let snap = airlock.snapshot();
        let cfg = snap.cfg();
        ConnLimits {
            max_connections: cfg.admin.as_ref().map_or(256, |a| a.max_connections),
            first_byte: cfg.limits.header_timeout,
            idle: cfg.limits.idle_timeout,
        }
    };
    let stats = airlock.metrics.for_listener("admin");
    let service = TowerToHyperService::new(router(airlock));
    serve(
        "admin",
        listener,
        tls,
        auto::Builder::new(TokioExecutor::new()),
        limits,
        stats,
        move |_: &ConnInfo| Some(service.clone()),
        shutdown,
        SHUTDOWN_GRACE,
    )
    .await;
}

/// Any path no route serves: `404 not_found`. Under `/api/` the caller must be a
/// reviewer first, so the API's shape is not shown to anyone else.
async fn not_found(State(airlock): State<Arc<Airlock>>, uri: Uri, headers: HeaderMap) -> ApiError {
    if let Err(e) = authenticate_api(&airlock, &uri, &headers).await {
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
    if let Err(e) = authenticate_api(&airlock, &uri, &headers).await {
        return e;
    }
    ApiError(AirlockError::new(
        Code::MethodNotAllowed,
        format!("{method} is not allowed on {}", uri.path()),
    ))
}

/// The reviewer check for fallbacks under `/api/`; other paths need none.
async fn authenticate_api(
    airlock: &Airlock,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<(), ApiError> {
    if uri.path().starts_with("/api/") {
        auth::authenticate(airlock, headers)
            .await
            .map_err(ApiError)?;
    }
    Ok(())
}
