//! Approval lifecycle events, the seam between deciding and telling: opened, vote
//! recorded, decided, expired, cancelled, forwarded (with the upstream's status),
//! reminded and escalated.
//!
//! Each is an audit event first, sealed in the store transaction that makes the change
//! (which also writes its outbox rows, [`crate::store::outbox`]); once that commits,
//! [`Approvals::emit`] turns it into a typed [`LifecycleEvent`] for this process's
//! subscribers: the parked requests it wakes, the metrics it counts, the outbox
//! dispatcher it nudges, and anyone following [`Approvals::subscribe_events`] (the
//! console's live view). Chat and webhook channels are only ever reached through the
//! outbox, never called from here.

use super::{Approvals, Outcome};
use crate::audit::AuditEvent;
use crate::store::outbox::is_lifecycle;
use crate::store::Decision;
use chrono::{DateTime, Utc};
use serde::Serialize;

/// What happened to an approval.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Lifecycle {
    /// A request was held and reviewers are asked.
    Opened,
    /// A reviewer's vote was recorded (through `channel`: api, slack, teams, console).
    Voted {
        reviewer: String,
        decision: Decision,
        reason: Option<String>,
        channel: Option<String>,
    },
    /// Approved or denied (by the vote that decided it).
    Decided {
        approved: bool,
        by: Option<String>,
        reason: Option<String>,
    },
    /// Nobody decided in time.
    Expired,
    /// Abandoned before anyone was asked.
    Cancelled { reason: Option<String> },
    /// Forwarded once; the upstream answered `status`.
    Forwarded { status: Option<u16> },
    /// Claimed for forwarding, but whether the upstream acted is unknown.
    OutcomeUnknown { reason: Option<String> },
    /// Still undecided: reviewers are reminded.
    Reminded,
    /// Undecided for long enough that more approvers were added (`to`).
    Escalated { to: Vec<String> },
}

impl Lifecycle {
    /// The lifecycle event an audit event records, if it is one.
    pub fn from_audit(ev: &AuditEvent) -> Option<Lifecycle> {
        if !is_lifecycle(ev) {
            return None;
        }
        Some(match ev.event.as_str() {
            "held" => Lifecycle::Opened,
            "vote" => Lifecycle::Voted {
                reviewer: ev.reviewer.clone().unwrap_or_default(),
                decision: match ev.decision.as_deref() {
                    Some("deny") => Decision::Deny,
                    _ => Decision::Approve,
                },
                reason: ev.reason.clone(),
                channel: ev.channel.clone(),
            },
            "approved" | "denied" => Lifecycle::Decided {
                approved: ev.event == "approved",
                by: ev.reviewer.clone(),
                reason: ev.reason.clone(),
            },
            "expired" => Lifecycle::Expired,
            "cancelled" => Lifecycle::Cancelled {
                reason: ev.reason.clone(),
            },
            "forwarded" => Lifecycle::Forwarded { status: ev.status },
            "outcome_unknown" => Lifecycle::OutcomeUnknown {
                reason: ev.reason.clone(),
            },
            "reminded" => Lifecycle::Reminded,
            "escalated" => Lifecycle::Escalated {
                to: ev
                    .detail
                    .as_ref()
                    .and_then(|d| d.get("to"))
                    .and_then(|t| t.as_array())
                    .map(|t| {
                        t.iter()
                            .filter_map(|s| s.as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default(),
            },
            _ => return None,
        })
    }

    /// The word events and webhooks name it by (`opened`, `vote`, `decided`, …).
    pub fn kind(&self) -> &'static str {
        match self {
            Lifecycle::Opened => "opened",
            Lifecycle::Voted { .. } => "vote",
            Lifecycle::Decided { .. } => "decided",
            Lifecycle::Expired => "expired",
            Lifecycle::Cancelled { .. } => "cancelled",
            Lifecycle::Forwarded { .. } => "forwarded",
            Lifecycle::OutcomeUnknown { .. } => "outcome_unknown",
            Lifecycle::Reminded => "reminded",
            Lifecycle::Escalated { .. } => "escalated",
        }
    }
}

/// A lifecycle event of one approval, as sealed in the audit log.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LifecycleEvent {
    pub approval_id: String,
    /// The audit event's sequence number and time.
    pub seq: u64,
    pub time: DateTime<Utc>,
    #[serde(flatten)]
    pub what: Lifecycle,
}

impl LifecycleEvent {
    /// The lifecycle event a sealed audit event records, if it is one.
    pub fn from_audit(ev: &AuditEvent) -> Option<LifecycleEvent> {
        Some(LifecycleEvent {
            approval_id: ev.approval_id.clone()?,
            seq: ev.seq,
            time: ev.time,
            what: Lifecycle::from_audit(ev)?,
        })
    }
}

impl Approvals {
    /// Tells this process's subscribers about lifecycle events just made durable (the
    /// audit events a store transaction sealed): parked requests are woken by a
    /// decision, metrics count votes and decisions, the outbox dispatcher is nudged,
    /// and followers of [`Approvals::subscribe_events`] get each event.
    pub fn emit(&self, sealed: &[AuditEvent]) {
        let mut any = false;
        for ev in sealed {
            let Some(le) = LifecycleEvent::from_audit(ev) else {
                continue;
            };
            any = true;
            match &le.what {
                Lifecycle::Voted { decision, .. } => self.metrics.vote(decision.as_str()),
                Lifecycle::Decided { approved: true, .. } => {
                    self.metrics.decision("approved");
                    self.notify(&le.approval_id, Outcome::Approved);
                }
                Lifecycle::Decided {
                    approved: false,
                    reason,
                    ..
                } => {
                    self.metrics.decision("denied");
                    self.notify(
                        &le.approval_id,
                        Outcome::Denied {
                            reason: reason.clone(),
                        },
                    );
                }
                Lifecycle::Expired => {
                    self.metrics.decision("expired");
                    self.notify(&le.approval_id, Outcome::Expired);
                }
                Lifecycle::OutcomeUnknown { .. } => self.metrics.decision("outcome_unknown"),
                _ => {}
            }
            // Nobody listening is fine.
            let _ = self.events.send(le);
        }
        if any {
            self.outbox_kick.notify_one();
        }
    }

    /// Follows this process's lifecycle events from now on.
    pub fn subscribe_events(&self) -> tokio::sync::broadcast::Receiver<LifecycleEvent> {
        self.events.subscribe()
    }

    /// Woken whenever lifecycle events (and so outbox rows) were written here.
    pub fn outbox_kick(&self) -> std::sync::Arc<tokio::sync::Notify> {
        self.outbox_kick.clone()
    }
}
