//! Expiry: a pending approval past its `timeout` is expired once (the winner of the
//! compare-and-set writes the audit event) and its parked requests are told. A sweeper
//! expires approvals whose clients went away.

use super::{event_for, Approvals, Outcome};
use crate::store::Status;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

impl Approvals {
    /// Expires a pending approval (once; the audit event is written by the winner).
    /// Returns false when the store could not be written (the caller backs off).
    pub async fn expire(&self, id: &str) -> bool {
        match self
            .store
            .transition(id, Status::Pending, Status::Expired, self.now(), None)
            .await
        {
            Ok(true) => {
                self.metrics.decision("expired");
                if let Ok(Some(a)) = self.store.approval(id).await {
                    self.audit.record(event_for("expired", &a));
                }
                self.notify(id, Outcome::Expired);
                true
            }
            Ok(false) => true,
            Err(e) => {
                tracing::error!(error = %e, approval = id, "could not expire approval");
                false
            }
        }
    }

    /// Expires overdue approvals every second (those whose clients went away).
    pub fn spawn_sweeper(
        self: &Arc<Self>,
        shutdown: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = shutdown.cancelled() => return,
                }
                match me.store.due(me.now()).await {
                    Ok(ids) => {
                        for id in ids {
                            if !me.expire(&id).await {
                                break; // the store refuses writes: try again next tick
                            }
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "expiry sweep failed"),
                }
            }
        })
    }
}
