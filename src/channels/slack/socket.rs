//! Slack Socket Mode: `apps.connections.open` with the app-level token, then a
//! WebSocket whose envelopes (interactive payloads) are acknowledged and handled as
//! the interactivity URL's are. (Being built.)

use crate::state::Airlock;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Runs Socket Mode while `channels.slack.app_token` is configured, until `shutdown`.
pub fn spawn(airlock: Arc<Airlock>, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
    let _ = airlock;
    tokio::spawn(async move { shutdown.cancelled().await })
}
