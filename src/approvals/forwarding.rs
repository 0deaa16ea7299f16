//! Forwarding on an approval, made crash-safe: a request is claimed (`forwarding`, naming
//! this airlock instance) before it leaves, and settled after it went
//! ([`Approvals::settle`]). A claim whose instance is gone (killed mid-forward) is
//! recovered ([`Approvals::recover`], at start-up and on every sweep): settled as the
//! audit log shows it (`forwarded` → consumed, `not_sent` → approved again), or, when
//! the log shows nothing, marked `outcome_unknown` with an audited event: the upstream
//! may or may not have acted, and nothing is ever sent again on that approval.

use super::{event_for, Approvals};
use crate::store::{Status, StoreError};
use std::sync::Arc;
use std::time::Duration;

/// Why a claim is marked `outcome_unknown` at recovery.
const CRASHED: &str = "airlock stopped while forwarding this approved request: the upstream may or may not have received it; it will not be sent again on this approval";

/// How an approved request's forward ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// The upstream answered (its `forwarded` event is durable): consumed.
    Answered,
    /// Provably nothing was sent (refused, no connection, TLS handshake): the approval
    /// may be used again by an identical retry within its `reuse` window.
    NotSent,
    /// The request may have reached the upstream, which gave no answer: never resent.
    Unknown,
}

impl Sent {
    fn status(self) -> Status {
        match self {
            Sent::Answered => Status::Consumed,
            Sent::NotSent => Status::Approved,
            Sent::Unknown => Status::OutcomeUnknown,
        }
    }
}

impl Approvals {
    /// Settles a claimed approval after its forward (the outcome event already written
    /// by the exit hook). If the store refuses, retried in the background with back-off;
    /// should airlock stop first, recovery settles it from the audit log.
    pub async fn settle(self: &Arc<Self>, id: &str, sent: Sent) {
        let to = sent.status();
        let r = self
            .store
            .transition(id, Status::Forwarding, to, self.now(), None)
            .await;
        if let Err(e) = r {
            tracing::warn!(error = %e, approval = id, "could not settle a forwarded approval yet; retrying");
            let me = self.clone();
            let id = id.to_string();
            tokio::spawn(async move {
                let mut wait = Duration::from_millis(200);
                loop {
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(10));
                    let r = me
                        .store
                        .transition(&id, Status::Forwarding, to, me.now(), None)
                        .await;
                    if r.is_ok() {
                        return;
                    }
                }
            });
        }
    }

    /// Registers this instance and settles every claim whose instance is gone. Errors
    /// are logged; the next sweep tries again.
    pub async fn recover(&self) {
        if let Err(e) = self.try_recover().await {
            tracing::warn!(error = %e, "could not recover forwards left by a stopped airlock yet");
        }
    }

    async fn try_recover(&self) -> Result<(), StoreError> {
        self.store.register_instance(&self.instance).await?;
        let claimed = self
            .store
            .approvals(Some(Status::Forwarding), 10_000)
            .await?;
        for a in claimed {
            let gone = match &a.forwarder {
                Some(f) if f == &self.instance => false,
                Some(f) => !self.store.instance_alive(f).await?,
                None => true,
            };
            if !gone {
                continue;
            }
            // What the log says happened last on this approval.
            let logged = self
                .store
                .audit_events_of(&a.id)
                .await?
                .iter()
                .rev()
                .find_map(|e| match e.event.as_str() {
                    "forwarded" => Some(Status::Consumed),
                    "not_sent" => Some(Status::Approved),
                    "outcome_unknown" => Some(Status::OutcomeUnknown),
                    _ => None,
                });
            let now = self.now();
            match logged {
                Some(to) => {
                    self.store
                        .transition(&a.id, Status::Forwarding, to, now, None)
                        .await?;
                }
                None => {
                    let mut ev = event_for("outcome_unknown", &a);
                    ev.reason = Some(CRASHED.into());
                    let done = self
                        .store
                        .transition_audited(
                            &a.id,
                            Status::Forwarding,
                            Status::OutcomeUnknown,
                            now,
                            None,
                            Some(ev),
                            self.signer.as_ref(),
                        )
                        .await?;
                    if done {
                        self.audit.sealed_elsewhere();
                        self.metrics.decision("outcome_unknown");
                        tracing::warn!(approval = %a.id, forwarder = a.forwarder.as_deref().unwrap_or("-"), "{CRASHED}");
                    }
                }
            }
        }
        Ok(())
    }
}
