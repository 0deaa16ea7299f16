//! The notification outbox's records: which audit events become notifications, a
//! claimed row, and how a delivery attempt is settled.
//!
//! A row is written for every configured channel whenever an approval lifecycle event
//! ([`LIFECYCLE`]) is sealed onto the audit chain, in that same transaction: a change
//! is never stored without the notifications it causes, nor a notification without
//! its change. Rows are delivered in order per approval and channel, each by one
//! airlock instance at a time (a lease), and settled once.

use crate::audit::AuditEvent;
use chrono::{DateTime, Utc};

/// The audit events that are approval lifecycle events, and so notifications.
pub const LIFECYCLE: &[&str] = &[
    "held",
    "vote",
    "approved",
    "denied",
    "expired",
    "cancelled",
    "forwarded",
    "outcome_unknown",
    "reminded",
    "escalated",
];

/// Whether `ev` is an approval lifecycle event (it names an approval).
pub fn is_lifecycle(ev: &AuditEvent) -> bool {
    ev.approval_id.is_some() && LIFECYCLE.contains(&ev.event.as_str())
}

/// One claimed outbox row: a lifecycle event to deliver to one channel.
#[derive(Debug, Clone)]
pub struct OutboxItem {
    pub id: i64,
    pub approval_id: String,
    pub channel: String,
    /// The sealed audit event.
    pub event: AuditEvent,
    /// Delivery attempts made before this one.
    pub attempts: u32,
    pub created: DateTime<Utc>,
}

/// How a delivery attempt ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Settle {
    /// Delivered (or nothing to deliver: `skipped` names why).
    Done { outcome: &'static str },
    /// Failed; try again at `at`.
    Retry { at: DateTime<Utc>, error: String },
    /// Failed for good (not retried).
    Failed { error: String },
}

/// Outbox rows by state, for `/metrics` and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutboxCounts {
    pub pending: u64,
    pub delivered: u64,
    pub failed: u64,
}
