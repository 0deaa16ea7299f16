//! `POST /api/v1/reload` (what `airlock reload` calls): re-reads the config file the
//! server was started with, and its rules, and puts them in force. A new set with
//! errors is refused with `422 reload_failed` naming each `file:line:col`; the old
//! set stays in force. Listener addresses and the store are not reloaded.

use super::answer::{json, ApiError};
use super::auth::Reviewer;
use crate::http::{AirlockError, Code};
use crate::state::Airlock;
use axum::extract::State;
use axum::response::Response;
use http::StatusCode;
use serde_json::json;
use std::sync::Arc;

/// Reloads, as the reviewer who asked: `200 {"status": "reloaded", "rules": N, …}`
/// with what changed (rules and upstreams added, removed, changed).
pub async fn reload(
    State(airlock): State<Arc<Airlock>>,
    Reviewer(who): Reviewer,
) -> Result<Response, ApiError> {
    match airlock.reload().await {
        Ok(r) => {
            tracing::info!(reviewer = %who.id, rules = r.rules, "configuration reloaded through the API");
            Ok(json(
                StatusCode::OK,
                &json!({
                    "status": "reloaded",
                    "rules": r.rules,
                    "rules_version": r.rules_version,
                    "changed": r.changed(),
                    "rules_added": r.rules_added,
                    "rules_removed": r.rules_removed,
                    "rules_changed": r.rules_changed,
                    "upstreams_added": r.upstreams_added,
                    "upstreams_removed": r.upstreams_removed,
                    "upstreams_changed": r.upstreams_changed,
                    "needs_restart": r.needs_restart,
                    "warnings": r.warnings,
                }),
            ))
        }
        Err(e) => {
            tracing::error!(
                reviewer = %who.id,
                "reload refused, the previous configuration stays in force:\n{e}"
            );
            Err(ApiError(AirlockError::new(
                Code::ReloadFailed,
                e.to_string(),
            )))
        }
    }
}
