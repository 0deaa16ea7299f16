//! Opening a hold and waiting for its decision: join an identical pending approval,
//! claim an identical approved one within its `reuse` window, or create a new
//! approval; then park until it is decided, expires, or airlock shuts down. An approved
//! request is claimed for forwarding (`forwarding`, durable) before it may leave.

use super::{event_for, Approvals, HoldError, LimitReached, Outcome};
use crate::rules::ApprovalPolicy;
use crate::store::{Approval, Status, StoreError};
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Everything known about a request about to be held.
#[derive(Debug, Clone)]
pub struct HoldRequest {
    /// The id a new approval gets ([`new_approval_id`]); chosen by the caller so that
    /// its record names the approval even if the request ends while it is opened.
    pub id: String,
    pub request_id: String,
    pub agent: String,
    pub owner: Option<String>,
    pub digest: String,
    pub body_sha256: String,
    pub rules: Vec<String>,
    pub policy: ApprovalPolicy,
    pub method: String,
    pub upstream: String,
    pub host: Option<String>,
    pub url: String,
    pub justification: Option<String>,
    pub show: Option<serde_json::Value>,
    /// Who sent it and how.
    pub requester: crate::store::Requester,
}

/// The result of opening a hold.
pub enum Opened {
    /// An earlier identical request was approved and its client went away: this
    /// request has claimed that approval and may be forwarded now.
    Reused(Approval, Claim),
    /// An identical request was forwarded on an approval within its `reuse` window, and
    /// whether the upstream received it is unknown (`outcome_unknown`): this one is not
    /// sent, so the action is never silently done twice.
    OutcomeUnknown(Approval),
    /// Parked until a decision.
    Waiting(Ticket),
}

/// A parked request's claim on an approval.
pub struct Ticket {
    pub approval: Approval,
    /// Whether this request joined an approval an identical request opened.
    pub joined: bool,
    rx: watch::Receiver<Option<Outcome>>,
}

/// How waiting ended.
pub enum Waited {
    /// Approved, and this request claimed the approval: forward it.
    Forward(Approval, Claim),
    /// Approved, but an identical request already used the approval.
    AlreadyUsed(Approval),
    Denied(Approval),
    Expired(Approval),
    ShuttingDown(Approval),
}

/// This request's claim on an approved approval, from the moment it is claimed until
/// its forward starts ([`Claim::started`]). Dropped before that — the agent went away,
/// the request failed before it left — the approval is given back (`approved` again,
/// for an identical retry within `reuse`): nothing was sent on it.
pub struct Claim {
    store: std::sync::Arc<dyn crate::store::Store>,
    id: String,
    armed: bool,
}

impl Claim {
    /// The forward has started: from here it settles the claim, or recovery does.
    pub fn started(mut self) {
        self.armed = false;
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let (store, id) = (self.store.clone(), std::mem::take(&mut self.id));
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let now = chrono::Utc::now();
                if let Err(e) = store
                    .transition(&id, Status::Forwarding, Status::Approved, now, None)
                    .await
                {
                    tracing::warn!(error = %e, approval = %id, "could not give back an unused claim; recovery will settle it");
                }
            });
        }
    }
}

impl Approvals {
    fn claimed(&self, id: &str) -> Claim {
        Claim {
            store: self.store.clone(),
            id: id.to_string(),
            armed: true,
        }
    }
}

/// The outcome parked requests are told for an approval as stored (`None`: pending).
pub(super) fn outcome_of(a: &Approval) -> Option<Outcome> {
    match a.status {
        Status::Approved | Status::Forwarding | Status::Consumed | Status::OutcomeUnknown => {
            Some(Outcome::Approved)
        }
        Status::Denied => Some(Outcome::Denied {
            reason: a.reason.clone(),
        }),
        Status::Expired | Status::Cancelled => Some(Outcome::Expired),
        Status::Pending => None,
    }
}

/// Whether `since` (a decision or a claim) plus the approval's `reuse` window is still
/// ahead of `now`.
fn within_reuse(
    a: &Approval,
    since: Option<chrono::DateTime<chrono::Utc>>,
    now: chrono::DateTime<chrono::Utc>,
) -> bool {
    since.is_some_and(|t| t + chrono::Duration::from_std(a.policy.reuse).unwrap_or_default() >= now)
}

/// A fresh approval id: `ap_` and 16 unambiguous lowercase letters and digits.
pub fn new_approval_id() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyz23456789";
    let mut rng = rand::thread_rng();
    let s: String = (0..16)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect();
    format!("ap_{s}")
}

impl Approvals {
    /// Opens a hold: joins an identical pending approval, consumes an identical
    /// approved one (within its `reuse` window), or creates a new approval. The
    /// `held` audit event is durable before this returns; if it cannot be written
    /// the approval is cancelled and the request refused.
    pub async fn open(&self, req: HoldRequest) -> Result<Opened, HoldError> {
        self.open_within(req, usize::MAX).await
    }

    /// [`Approvals::open`], refusing to create a new approval ([`LimitReached::Pending`])
    /// when the agent already has `max_pending` approvals pending, whether or not their
    /// clients still wait (a client that went away leaves its approval pending, for an
    /// identical retry to join). Joining or reusing an existing approval is never
    /// refused. The count is read from the store, so it covers every replica; holds
    /// racing each other may overshoot it by the agent's concurrent holds.
    pub async fn open_within(
        &self,
        req: HoldRequest,
        max_pending: usize,
    ) -> Result<Opened, HoldError> {
        // Fail closed: without a running audit writer the request's later events (its
        // outcome, refused votes) could not be recorded.
        if !self.audit.alive() {
            return Err(HoldError::Audit(crate::audit::AuditError::Closed));
        }
        let now = self.now();
        if let Some(existing) = self.store.find_active(&req.agent, &req.digest).await? {
            match existing.status {
                Status::Pending if existing.expires > now => {
                    let rx = self.subscribe(&existing.id);
                    let mut ticket = Ticket {
                        approval: existing,
                        joined: true,
                        rx,
                    };
                    self.refresh(&mut ticket).await?;
                    return Ok(Opened::Waiting(ticket));
                }
                Status::Approved
                    if within_reuse(&existing, existing.decided, now)
                        && self.store.claim(&existing.id, &self.instance, now).await? =>
                {
                    let claim = self.claimed(&existing.id);
                    return Ok(Opened::Reused(existing, claim));
                }
                Status::OutcomeUnknown if within_reuse(&existing, existing.consumed, now) => {
                    return Ok(Opened::OutcomeUnknown(existing));
                }
                _ => {}
            }
        }
        if max_pending < usize::MAX {
            let pending = self.store.pending_of(&req.agent, now).await?;
            if pending >= max_pending {
                return Err(HoldError::Limit(LimitReached::Pending {
                    agent: req.agent,
                    pending,
                }));
            }
        }
        let timeout =
            chrono::Duration::from_std(req.policy.timeout).unwrap_or(chrono::Duration::minutes(15));
        let approval = Approval {
            id: req.id,
            status: Status::Pending,
            agent: req.agent,
            owner: req.owner,
            requester: req.requester,
            digest: req.digest,
            body_sha256: req.body_sha256,
            rules: req.rules,
            policy: req.policy,
            method: req.method,
            upstream: req.upstream,
            host: req.host,
            url: req.url,
            justification: req.justification,
            show: req.show,
            request_id: req.request_id,
            created: now,
            expires: now + timeout,
            decided: None,
            decided_by: None,
            reason: None,
            consumed: None,
            forwarder: None,
            votes: Vec::new(),
        };
        // The approval and its `held` event are one transaction: a pending approval the
        // log does not show can never exist, nor a `held` event without its approval.
        let mut ev = event_for("held", &approval);
        ev.reason = approval.justification.clone();
        ev.show = approval.show.clone();
        let rx = self.subscribe(&approval.id);
        let started = std::time::Instant::now();
        let opened = self
            .store
            .open_approval(&approval, Some(ev.clone()), self.signer.as_ref())
            .await;
        self.metrics
            .audit_append
            .observe(started.elapsed().as_secs_f64());
        match opened {
            Ok(None) => {
                self.audit.sealed_elsewhere();
                self.emit(&[ev]);
            }
            Ok(Some(_identical)) => {
                // An identical request opened one a moment ago (here or on another
                // replica): join it.
                self.waiters.remove(&approval.id);
                return Box::pin(self.open_within(
                    HoldRequest {
                        id: approval.id,
                        request_id: approval.request_id,
                        agent: approval.agent,
                        owner: approval.owner,
                        digest: approval.digest,
                        body_sha256: approval.body_sha256,
                        rules: approval.rules,
                        policy: approval.policy,
                        method: approval.method,
                        upstream: approval.upstream,
                        host: approval.host,
                        url: approval.url,
                        justification: approval.justification,
                        show: approval.show,
                        requester: approval.requester,
                    },
                    max_pending,
                ))
                .await;
            }
            Err(e) => {
                self.waiters.remove(&approval.id);
                return Err(e.into());
            }
        }
        tracing::info!(approval = %approval.id, agent = %approval.agent, rules = ?approval.rules, "request held for approval");
        Ok(Opened::Waiting(Ticket {
            approval,
            joined: false,
            rx,
        }))
    }

    /// Re-reads a ticket's approval and turns a decision already made into an outcome.
    async fn refresh(&self, t: &mut Ticket) -> Result<(), StoreError> {
        if let Some(a) = self.store.approval(&t.approval.id).await? {
            let outcome = outcome_of(&a);
            t.approval = a;
            if let Some(o) = outcome {
                self.notify(&t.approval.id, o);
            }
        }
        Ok(())
    }

    /// Parks until the approval is decided, expires, or airlock shuts down.
    pub async fn wait(
        &self,
        mut t: Ticket,
        shutdown: &CancellationToken,
    ) -> Result<Waited, HoldError> {
        let started = tokio::time::Instant::now();
        let mut deadline = {
            let left = (t.approval.expires - self.now())
                .to_std()
                .unwrap_or(Duration::ZERO);
            tokio::time::Instant::now() + left
        };
        // While the store cannot record the expiry, try again with back-off (never in
        // a tight loop): 100 ms, doubling, at most 5 s apart.
        let mut backoff = Duration::from_millis(100);
        let outcome = loop {
            if let Some(o) = t.rx.borrow_and_update().clone() {
                break o;
            }
            tokio::select! {
                changed = t.rx.changed() => {
                    if changed.is_err() {
                        // The sender was replaced; read the truth from the store.
                        t.rx = self.subscribe(&t.approval.id);
                        self.refresh(&mut t).await?;
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {
                    if !self.expire(&t.approval.id).await {
                        deadline = tokio::time::Instant::now() + backoff;
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                    self.refresh(&mut t).await?;
                }
                _ = shutdown.cancelled() => return Ok(Waited::ShuttingDown(t.approval)),
            }
        };
        self.metrics
            .hold_wait
            .observe(started.elapsed().as_secs_f64());
        let id = t.approval.id.clone();
        let approval = self.store.approval(&id).await?.unwrap_or(t.approval);
        Ok(match outcome {
            Outcome::Approved => {
                if self.store.claim(&id, &self.instance, self.now()).await? {
                    let claim = self.claimed(&id);
                    Waited::Forward(approval, claim)
                } else {
                    Waited::AlreadyUsed(approval)
                }
            }
            Outcome::Denied { .. } => Waited::Denied(approval),
            Outcome::Expired => Waited::Expired(approval),
        })
    }
}
