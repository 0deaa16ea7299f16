//! Forwarding on an approval, made crash-safe: a request is claimed (`forwarding`, naming
//! this airlock instance) before it leaves, and settled after it went
//! ([`Approvals::settle`]). A claim whose instance is gone (killed mid-forward) is
//! recovered ([`Approvals::recover`], at start-up and on every sweep): settled as the
//! audit log shows it (`forwarded` → consumed, `not_sent` → approved again), or, when
//! the log shows nothing, marked `outcome_unknown` with an audited event: the upstream
//! may or may not have acted, and nothing is ever sent again on that approval.

use super::{event_for, Approvals};
use crate::audit::AuditEvent;
use crate::store::{Status, StoreError};
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
    /// How a forward ended, from its error (none: the upstream answered).
    pub fn of(error: Option<&crate::upstream::UpstreamError>, failed: bool) -> Sent {
        match (failed, error) {
            (false, _) => Sent::Answered,
            (true, Some(u)) if !u.kind.may_have_sent() => Sent::NotSent,
            (true, _) => Sent::Unknown,
        }
    }

    fn status(self) -> Status {
        match self {
            Sent::Answered => Status::Consumed,
            Sent::NotSent => Status::Approved,
            Sent::Unknown => Status::OutcomeUnknown,
        }
    }
}

impl Approvals {
    /// Settles a claimed approval after its forward: the new status and the outcome
    /// event (`forwarded`, `not_sent`, …) are one store transaction, durable before the
    /// agent is answered. If the claim was already settled elsewhere (recovered by
    /// another replica), the event is still written. While the store refuses, the write
    /// is retried a few times; then the event is queued for the audit writer and the
    /// claim left for recovery, which settles it from the log.
    pub async fn settle(&self, id: &str, sent: Sent, event: AuditEvent) {
        let to = sent.status();
        let mut pause = Duration::from_millis(100);
        for attempt in 0..4 {
            let r = self
                .store
                .transition_audited(
                    id,
                    Status::Forwarding,
                    to,
                    self.now(),
                    None,
                    Some(event.clone()),
                    self.signer.as_ref(),
                )
                .await;
            match r {
                Ok(true) => {
                    self.audit.sealed_elsewhere();
                    self.emit(std::slice::from_ref(&event));
                    return;
                }
                Ok(false) => break,
                Err(e) if e.is_transient() && attempt < 3 => {
                    tracing::warn!(error = %e, approval = id, "could not settle a forwarded approval yet; retrying");
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                }
                Err(e) => {
                    tracing::error!(error = %e, approval = id, "could not settle a forwarded approval; the outcome event is queued and recovery will settle it");
                    break;
                }
            }
        }
        self.audit.record(event);
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
                    "outcome_unknown" | "upstream_reset" | "upstream_timeout" => {
                        Some(Status::OutcomeUnknown)
                    }
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
                            Some(ev.clone()),
                            self.signer.as_ref(),
                        )
                        .await?;
                    if done {
                        self.audit.sealed_elsewhere();
                        self.emit(&[ev]);
                        tracing::warn!(approval = %a.id, forwarder = a.forwarder.as_deref().unwrap_or("-"), "{CRASHED}");
                    }
                }
            }
        }
        Ok(())
    }
}
