//! Expiry: a pending approval past its `timeout` is expired once (the compare-and-set
//! and its `expired` event are one store transaction) and its parked requests are told.
//! A sweeper expires approvals whose clients went away, settles forwards a crashed
//! airlock left claimed ([`super::forwarding`]), and checks parked requests for
//! decisions made elsewhere ([`super::elsewhere`]).

use super::{event_for, Approvals, Outcome};
use crate::store::Status;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

impl Approvals {
    /// Expires a pending approval (once; the audit event is written by the winner).
    /// Returns false when the store could not be written (the caller backs off).
    pub async fn expire(&self, id: &str) -> bool {
        let a = match self.store.approval(id).await {
            Ok(Some(a)) => a,
            Ok(None) => return true,
            Err(e) => {
                tracing::error!(error = %e, approval = id, "could not expire approval");
                return false;
            }
        };
        let ev = event_for("expired", &a);
        let r = self
            .store
            .transition_audited(
                id,
                Status::Pending,
                Status::Expired,
                self.now(),
                None,
                Some(ev.clone()),
                self.signer.as_ref(),
            )
            .await;
        match r {
            Ok(true) => {
                self.audit.sealed_elsewhere();
                self.emit(&[ev]);
                true
            }
            Ok(false) => {
                // Decided meanwhile (a vote, another replica's expiry): read the truth.
                if let Ok(Some(now)) = self.store.approval(id).await {
                    if now.status == Status::Expired {
                        self.notify(id, Outcome::Expired);
                    }
                }
                true
            }
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
            let mut ticks: u64 = 0;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = shutdown.cancelled() => return,
                }
                ticks += 1;
                me.recover().await;
                // A decision made elsewhere whose notice was lost: found within 3 s.
                if ticks.is_multiple_of(3) {
                    me.check_parked().await;
                }
                if ticks.is_multiple_of(super::remind::FOLLOW_UP_EVERY_SECS) {
                    me.follow_up().await; // reminders and escalations that are due
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
