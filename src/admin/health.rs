//! What monitoring reads without a token: `/healthz` (the process answers),
//! `/readyz` (the store answers and rules are loaded; also the mode and the rules'
//! version in force) and
//! `/metrics` (Prometheus text). Nothing here reveals approvals or identities.

use super::answer::json;
use crate::state::Airlock;
use axum::body::Body;
use axum::extract::State;
use axum::response::Response;
use http::{header, HeaderValue, StatusCode};
use serde_json::json;
use std::sync::Arc;

/// `GET /healthz`: `{"status": "ok"}` while the process serves.
pub async fn healthz() -> Response {
    json(StatusCode::OK, &json!({"status": "ok"}))
}

/// `GET /readyz`: `200 {"status": "ready", "rules": N, "store": "ok", "mode": …}`, or
/// `503 {"status": "not_ready", …}` with the store's error when it does not answer.
pub async fn readyz(State(airlock): State<Arc<Airlock>>) -> Response {
    let snap = airlock.snapshot();
    let rules = snap.policy.rules.rules.len();
    let mode = snap.cfg().mode.as_str();
    let version = snap.policy.rules.version.clone();
    match airlock.store.ping().await {
        Ok(()) => json(
            StatusCode::OK,
            &json!({"status": "ready", "rules": rules, "rules_version": version, "store": "ok", "mode": mode}),
        ),
        Err(e) => json(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"status": "not_ready", "rules": rules, "rules_version": version, "store": e.to_string(), "mode": mode}),
        ),
    }
}

/// `GET /metrics`: the Prometheus / OpenMetrics text.
pub async fn metrics(State(airlock): State<Arc<Airlock>>) -> Response {
    let mut r = Response::new(Body::from(airlock.metrics.render()));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    r
}
