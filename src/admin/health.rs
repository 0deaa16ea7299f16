//! What monitoring reads without a token: `/healthz` (the process answers),
//! `/readyz` (the store takes writes, the audit writer runs and its last write
//! succeeded, rules are loaded; also the mode and the rules' version in force) and
//! `/metrics` (Prometheus text). Nothing here reveals approvals or identities.
//!
//! A JSONL copy (`audit.file`) that is behind the store — a full disk, a file that
//! cannot be written — leaves airlock ready: the store is the system of record and
//! every event is in it; `/readyz` names the copy's fault in `audit_file`, and the copy
//! catches up by itself once it can be written.

use super::answer::json;
use crate::state::Airlock;
use axum::body::Body;
use axum::extract::State;
use axum::response::Response;
use http::{header, HeaderValue, StatusCode};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

/// The longest `/readyz` waits for the store: a store that answers slower is not ready.
const PING_TIMEOUT: Duration = Duration::from_secs(1);

/// `GET /healthz`: `{"status": "ok"}` while the process serves.
pub async fn healthz() -> Response {
    json(StatusCode::OK, &json!({"status": "ok"}))
}

/// `GET /readyz`: `200 {"status": "ready", "rules": N, "store": "ok", "mode": …}`, or
/// `503 {"status": "not_ready", …}` when the store cannot be written (its error in
/// `store`) or the audit log cannot be (the reason in `audit`: the writer has stopped,
/// or its last write failed). With `audit.file` set, `audit_file` is `"ok"` or why the
/// JSONL copy is behind.
pub async fn readyz(State(airlock): State<Arc<Airlock>>) -> Response {
    let snap = airlock.snapshot();
    let rules = snap.policy.rules.rules.len();
    let mode = snap.cfg().mode.as_str();
    let version = snap.policy.rules.version.clone();
    let store = match tokio::time::timeout(PING_TIMEOUT, airlock.store.ping()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {PING_TIMEOUT:?}")),
    };
    let mut audit = airlock.audit.ready();
    if store.is_ok() && audit.is_err() && airlock.audit.alive() {
        // The store takes writes again: let the writer find out now, not at its next
        // background attempt.
        let _ = tokio::time::timeout(PING_TIMEOUT, airlock.audit.recheck()).await;
        audit = airlock.audit.ready();
    }
    let ready = store.is_ok() && audit.is_ok();
    let mut body = json!({
        "status": if ready { "ready" } else { "not_ready" },
        "rules": rules,
        "rules_version": version,
        "store": store.err().unwrap_or_else(|| "ok".to_string()),
        "mode": mode,
    });
    if let Err(why) = audit {
        body["audit"] = why.into();
    }
    if snap.cfg().audit.file.is_some() {
        body["audit_file"] = match airlock.audit.copy_behind() {
            None => "ok".into(),
            Some(why) => format!("behind the store: {why}").into(),
        };
    }
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json(status, &body)
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
