//! `POST /api/v1/reload` (what `airlock reload` calls): re-reads the config file the
//! server was started with, and its rules, and puts them in force. A new set with
//! errors is refused with `422 reload_failed` naming each `file:line:col`; the old
//! set stays in force. Listener addresses and the store are not reloaded.

use super::answer::{json, ApiError};
use super::auth::Reviewer;
use crate::airlock::Airlock;
use crate::http::{AirlockError, Code};
use axum::extract::State;
use axum::response::Response;
use http::StatusCode;
use serde_json::json;
use std::path::PathBuf;
use std::sync::Arc;

/// Reloads, as the reviewer who asked: `200 {"status": "reloaded", "rules": N}`.
pub async fn reload(
    State(airlock): State<Arc<Airlock>>,
    Reviewer(who): Reviewer,
) -> Result<Response, ApiError> {
    let path = airlock.snapshot().cfg.file.clone();
    match reload_from(airlock, path.clone()).await {
        Ok(rules) => {
            tracing::info!(reviewer = %who.id, rules, config = %path.display(), "configuration reloaded");
            Ok(json(
                StatusCode::OK,
                &json!({"status": "reloaded", "rules": rules}),
            ))
        }
        Err(diagnostics) => {
            tracing::error!(
                reviewer = %who.id,
                "reload refused, the previous configuration stays in force:\n{diagnostics}"
            );
            Err(ApiError(AirlockError::new(Code::ReloadFailed, diagnostics)))
        }
    }
}

/// The one call into the library's reload: the number of rules now in force, or
/// why the new set was refused (one `file:line:col: message` per line). Reading and
/// compiling rules is blocking work, so it runs off the async workers.
async fn reload_from(airlock: Arc<Airlock>, path: PathBuf) -> Result<usize, String> {
    tokio::task::spawn_blocking(move || {
        crate::reload(&airlock, &path).map_err(|e| format!("{e:#}"))
    })
    .await
    .map_err(|e| format!("reload did not finish: {e}"))?
}
