//! Holding requests for approval: the approval lifecycle ([`hold`]: open, join, reuse,
//! wait, claim), votes ([`vote`]), expiry ([`expiry`]), settling forwards and recovering
//! what a crash left half done ([`forwarding`]), the held-request limits ([`limits`])
//! and the time it all runs by ([`clock`]).
//!
//! Every step is durable before the next one acts, and a state change and its audit
//! event are one store transaction (a vote and its `vote`/`approved`/`denied` events, an
//! expiry and `expired`): a crash can never leave a decision the log does not show. An
//! approved request is claimed (`forwarding`, naming this airlock instance) before it
//! leaves, and settled after: `consumed` once `forwarded` is durable, back to `approved`
//! when provably nothing was sent, `outcome_unknown` when it may have been. At start-up
//! (and every sweep) a claim whose instance is gone is settled from the audit log, or
//! marked `outcome_unknown`: never silently sent again. A decision made on another
//! replica wakes the requests parked here ([`elsewhere`]).
//!
//! A parked request is a future waiting on a `watch` channel (no thread, no polling):
//! its memory is its buffered request plus a small constant. Every state change is a
//! compare-and-set in the [`Store`], so an approval is decided once and consumed once.
//! This module never forwards anything itself; it tells the proxy whether it may, and
//! it never lets an agent, or the agent's owner, approve the agent's own request.
//! Its errors are its own ([`HoldError`], [`VoteError`]); callers decide what to answer.

pub mod clock;
pub mod elsewhere;
pub mod error;
pub mod events;
pub mod expiry;
pub mod forwarding;
pub mod hold;
pub mod limits;
pub mod remind;
pub mod vote;

pub use clock::Clock;
pub use error::{HoldError, LimitReached, VoteError};
pub use events::{Lifecycle, LifecycleEvent};
pub use hold::{new_approval_id, Claim, HoldRequest, Opened, Ticket, Waited};
pub use limits::{HeldSlot, HeldSlots, HoldLimits};
pub use vote::{may_vote, may_vote_at, progress, requirements_at, Progress, Via};

use crate::audit::{AuditEvent, AuditLog, CheckpointSigner};
use crate::metrics::Metrics;
use crate::store::{Approval, Store};
use chrono::{DateTime, Utc};
use dashmap::DashMap;
use std::sync::Arc;
use tokio::sync::watch;

/// How a decided approval ended, as told to parked requests.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Approved,
    Denied { reason: Option<String> },
    Expired,
}

/// The approvals engine.
pub struct Approvals {
    store: Arc<dyn Store>,
    audit: AuditLog,
    metrics: Arc<Metrics>,
    clock: Clock,
    /// Held requests now (for `limits.max_held`).
    pub slots: HeldSlots,
    waiters: DashMap<String, watch::Sender<Option<Outcome>>>,
    /// Signs checkpoints over events sealed in the store's own transactions.
    signer: Option<CheckpointSigner>,
    /// This airlock instance, as forwarding claims name it (random per process).
    instance: String,
    /// This process's lifecycle events ([`Approvals::emit`]).
    events: tokio::sync::broadcast::Sender<LifecycleEvent>,
    /// Nudges the outbox dispatcher when lifecycle events were written here.
    outbox_kick: Arc<tokio::sync::Notify>,
    /// Reminders and escalations this process has seen recorded
    /// (`<approval id>\n<mark>`), so a pass does not write them again ([`remind`]).
    followed_up: dashmap::DashSet<String>,
}

impl Approvals {
    /// The engine over a store and an audit log, reading time from `clock`.
    pub fn new(
        store: Arc<dyn Store>,
        audit: AuditLog,
        signer: Option<CheckpointSigner>,
        metrics: Arc<Metrics>,
        clock: Clock,
    ) -> Arc<Approvals> {
        Arc::new(Approvals {
            store,
            audit,
            slots: HeldSlots::new(metrics.clone()),
            metrics,
            clock,
            waiters: DashMap::new(),
            signer,
            instance: format!("airlock-{}", &new_approval_id()[3..]),
            events: tokio::sync::broadcast::channel(1024).0,
            outbox_kick: Arc::new(tokio::sync::Notify::new()),
            followed_up: dashmap::DashSet::new(),
        })
    }

    /// This airlock instance's id (what its forwarding claims name).
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// The time approvals are decided by.
    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    fn subscribe(&self, id: &str) -> watch::Receiver<Option<Outcome>> {
        self.waiters
            .entry(id.to_string())
            .or_insert_with(|| watch::channel(None).0)
            .subscribe()
    }

    /// The store approvals are kept in.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    fn notify(&self, id: &str, outcome: Outcome) {
        if let Some((_, tx)) = self.waiters.remove(id) {
            tx.send_replace(Some(outcome));
        }
    }
}

/// An audit event describing an approval.
pub fn event_for(event: &str, a: &Approval) -> AuditEvent {
    let mut ev = AuditEvent::new(event);
    ev.request_id = Some(a.request_id.clone());
    ev.approval_id = Some(a.id.clone());
    ev.agent = Some(a.agent.clone());
    ev.rules = a.rules.clone();
    ev.method = Some(a.method.clone());
    ev.upstream = Some(a.upstream.clone());
    ev.host = a.host.clone();
    ev.path = Some(a.url.clone());
    ev.body_sha256 = Some(a.body_sha256.clone());
    ev.auth = (!a.requester.auth.is_empty()).then(|| a.requester.auth.clone());
    ev.acting_for.clone_from(&a.requester.acting_for);
    ev.client.clone_from(&a.requester.client);
    ev
}

/// Seconds left before an approval expires (for listings).
pub fn seconds_left(a: &Approval, now: DateTime<Utc>) -> i64 {
    (a.expires - now).num_seconds().max(0)
}
