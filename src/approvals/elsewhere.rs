//! Decisions made elsewhere: a vote or an expiry on another replica (or another process
//! on the same SQLite file) must wake the requests parked here. The store's change
//! notices (PostgreSQL LISTEN/NOTIFY) wake them at once; a check of every parked
//! approval every few seconds catches a notice that was lost.

use super::hold::outcome_of;
use super::Approvals;
use crate::store::ANY_CHANGE;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

impl Approvals {
    /// Follows the store's change notices, when it has them, until shutdown.
    pub fn spawn_listener(self: &Arc<Self>, shutdown: CancellationToken) {
        let Some(mut changes) = self.store.changes() else {
            return;
        };
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                let id = tokio::select! {
                    id = changes.recv() => id,
                    _ = shutdown.cancelled() => return,
                };
                match id {
                    Ok(id) if id == ANY_CHANGE => me.check_parked().await,
                    Ok(id) => me.check(&id).await,
                    // Notices were dropped while this task was slow: check everything.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        me.check_parked().await
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        });
    }

    /// Tells the requests parked on `id` if it was decided (by anyone).
    async fn check(&self, id: &str) {
        if !self.waiters.contains_key(id) {
            return;
        }
        match self.store.approval(id).await {
            Ok(Some(a)) => {
                if let Some(o) = outcome_of(&a) {
                    self.notify(id, o);
                }
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, approval = id, "could not read an approval decided elsewhere")
            }
        }
    }

    /// Checks every approval requests are parked on here, in one store query.
    pub async fn check_parked(&self) {
        let ids: Vec<String> = self.waiters.iter().map(|e| e.key().clone()).collect();
        if ids.is_empty() {
            return;
        }
        for chunk in ids.chunks(500) {
            match self.store.decided_among(chunk).await {
                Ok(decided) => {
                    for id in decided {
                        self.check(&id).await;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not check parked approvals");
                    return;
                }
            }
        }
    }
}
