//! Persistence behind one trait: approvals, votes, audit events and checkpoints.
//!
//! The proxy and the approvals engine only see [`Store`]; the embedded default is
//! SQLite ([`sqlite`]). A PostgreSQL backend implements the same trait for several
//! replicas. Every state change of an approval is a compare-and-set in one
//! transaction, so two replicas (or two reviewers) can never both decide it.
//! A store error is never papered over: callers fail closed.

pub mod outbox;
pub mod postgres;
pub mod sqlite;

pub use outbox::{OutboxCounts, OutboxItem, Settle};

use crate::audit::{format_time, AuditError, AuditEvent, Checkpoint, CheckpointSigner, StoredRow};
use crate::rules::ApprovalPolicy;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Where an approval is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Pending,
    Approved,
    Denied,
    Expired,
    /// Approved and claimed by one request, which is being forwarded now (claimed by
    /// the airlock instance named in `forwarder`).
    Forwarding,
    /// Approved and forwarded: can never be used again.
    Consumed,
    /// Claimed for forwarding, but airlock cannot tell whether the upstream received it
    /// (a crash mid-forward, or a connection lost after the request was sent). Never
    /// forwarded again on this approval; an identical retry within `reuse` is told so.
    OutcomeUnknown,
    /// Abandoned before anyone was asked (the audit log could not be written).
    Cancelled,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Approved => "approved",
            Status::Denied => "denied",
            Status::Expired => "expired",
            Status::Forwarding => "forwarding",
            Status::Consumed => "consumed",
            Status::OutcomeUnknown => "outcome_unknown",
            Status::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        Some(match s {
            "pending" => Status::Pending,
            "approved" => Status::Approved,
            "denied" => Status::Denied,
            "expired" => Status::Expired,
            "forwarding" => Status::Forwarding,
            "consumed" => Status::Consumed,
            "outcome_unknown" => Status::OutcomeUnknown,
            "cancelled" => Status::Cancelled,
            _ => return None,
        })
    }
}

impl Status {
    /// The status after a vote, given the distinct reviewers who approved so far
    /// (this vote included), each with the groups they voted as members of: any deny
    /// denies; approvals that meet `quorum` approve.
    pub fn after_vote(decision: Decision, approvers: &[Approver], quorum: &Quorum) -> Status {
        match decision {
            Decision::Deny => Status::Denied,
            Decision::Approve if quorum.met(approvers) => Status::Approved,
            Decision::Approve => Status::Pending,
        }
    }
}

/// What approves an approval: every [`Need`] met by distinct approving reviewers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quorum {
    pub needs: Vec<Need>,
}

/// `quorum` distinct approvals from the reviewers in `eligible` (ids as votes record
/// them), or from reviewers who voted as members of one of `groups` (a group their
/// OIDC token gave them, which the configured reviewer table does not know).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Need {
    pub quorum: u32,
    pub eligible: Vec<String>,
    pub groups: Vec<String>,
}

/// A reviewer who approved, with the groups they voted as members of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Approver {
    pub id: String,
    pub groups: Vec<String>,
}

impl Approver {
    /// An approver with no groups recorded.
    pub fn named(id: &str) -> Approver {
        Approver {
            id: id.to_string(),
            groups: Vec::new(),
        }
    }
}

#[cfg(test)]
mod quorum_tests {
    use super::*;

    #[test]
    fn every_need_must_be_met_and_one_approver_counts_for_each() {
        let q = Quorum {
            needs: vec![
                Need {
                    quorum: 1,
                    eligible: vec!["bob".into(), "dave".into()],
                    groups: vec![],
                },
                Need {
                    quorum: 1,
                    eligible: vec!["carol".into(), "dave".into()],
                    groups: vec!["dba".into()],
                },
            ],
        };
        let a = Approver::named;
        assert!(!q.met(&[a("bob")]));
        assert!(q.met(&[a("bob"), a("carol")]));
        assert!(q.met(&[a("dave")]), "dave is in both");
        assert!(!q.met(&[a("eve")]));
        let erin = Approver {
            id: "erin".into(),
            groups: vec!["dba".into()],
        };
        assert!(q.met(&[a("bob"), erin.clone()]), "erin voted as a dba");
        assert!(!q.met(&[erin]), "but dba meets only the second need");
        assert!(Quorum::any(2).met(&[a("x"), a("y")]));
        assert!(!Quorum::any(2).met(&[a("x")]));
    }
}

impl Quorum {
    /// `n` approvals from anyone.
    pub fn any(n: u32) -> Quorum {
        Quorum {
            needs: vec![Need {
                quorum: n,
                eligible: Vec::new(),
                groups: Vec::new(),
            }],
        }
    }

    /// Whether these approvers meet every need. A need with neither an eligible list
    /// nor groups counts every approver.
    pub fn met(&self, approvers: &[Approver]) -> bool {
        self.needs.iter().all(|n| {
            let count = approvers
                .iter()
                .filter(|a| {
                    (n.eligible.is_empty() && n.groups.is_empty())
                        || n.eligible.contains(&a.id)
                        || a.groups.iter().any(|g| n.groups.contains(g))
                })
                .count();
            count >= n.quorum as usize
        })
    }
}

/// A reviewer's decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    Approve,
    Deny,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Approve => "approve",
            Decision::Deny => "deny",
        }
    }
}

/// One vote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vote {
    pub reviewer: String,
    pub decision: Decision,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub time: DateTime<Utc>,
    /// The groups the reviewer voted as a member of (from the config and, signed in
    /// with OIDC, from their token): what made the vote count.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
}

/// A held request's approval, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Approval {
    pub id: String,
    pub status: Status,
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
    pub request_id: String,
    pub created: DateTime<Utc>,
    pub expires: DateTime<Utc>,
    pub decided: Option<DateTime<Utc>>,
    pub decided_by: Option<String>,
    pub reason: Option<String>,
    /// When a request claimed it for forwarding.
    pub consumed: Option<DateTime<Utc>>,
    /// The airlock instance that claimed it for forwarding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forwarder: Option<String>,
    /// Who sent the request and how.
    #[serde(default)]
    pub requester: Requester,
    pub votes: Vec<Vote>,
}

/// Who sent a held request and how: shown to reviewers, never allowed to approve it
/// (the person an agent acts for counts as an owner).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Requester {
    /// How the agent authenticated: `key`, `jwt`, `mtls`, or `none`; empty when not
    /// recorded (approvals older than this field).
    #[serde(default)]
    pub auth: String,
    /// The person the agent acts for (from its token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acting_for: Option<String>,
    /// The client's address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
}

/// The audit events a vote may write, sealed onto the chain in the vote's own
/// transaction, so a decision is never in the store without its event (or the other way
/// round): `vote` always, plus `approved` or `denied` when the vote decides the approval;
/// `expired` alone when the vote found the approval past its expiry and expired it.
#[derive(Debug, Clone)]
pub struct VoteAudit {
    pub vote: AuditEvent,
    pub approved: AuditEvent,
    pub denied: AuditEvent,
    pub expired: AuditEvent,
}

impl VoteAudit {
    /// The events to seal for a vote's result.
    pub fn for_result(&self, r: &VoteResult) -> Vec<AuditEvent> {
        match r {
            VoteResult::Recorded(Status::Approved) => {
                vec![self.vote.clone(), self.approved.clone()]
            }
            VoteResult::Recorded(Status::Denied) => vec![self.vote.clone(), self.denied.clone()],
            VoteResult::Recorded(_) => vec![self.vote.clone()],
            VoteResult::ExpiredNow => vec![self.expired.clone()],
            _ => Vec::new(),
        }
    }
}

/// What casting a vote did.
#[derive(Debug, Clone, PartialEq)]
pub enum VoteResult {
    /// Recorded; the approval is now in this status (still pending, approved or denied).
    Recorded(Status),
    /// The approval was already decided (or had expired): nothing recorded.
    AlreadyDecided(Status),
    /// The approval was past its expiry: this call expired it (and sealed `expired`).
    ExpiredNow,
    /// This reviewer already voted on it.
    AlreadyVoted,
    NotFound,
}

/// A store failure, by kind. Always fail closed on it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite refused or failed an operation (locked, busy, I/O, constraint).
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The SQLite file or its folder could not be opened or created.
    #[error("cannot open {path}: {reason}")]
    Open {
        path: std::path::PathBuf,
        reason: String,
    },
    /// PostgreSQL refused or failed an operation, or the connection broke.
    #[error("postgres: {}", postgres::describe(.0))]
    Postgres(#[from] tokio_postgres::Error),
    /// The database cannot serve writes now (no connection, read-only standby).
    #[error("{0}")]
    NoConnection(&'static str),
    /// A stored row cannot be read back (bad status, time, JSON).
    #[error("unreadable stored data: {0}")]
    Corrupt(String),
    /// A record could not be encoded for storage.
    #[error("cannot encode {what}: {source}")]
    Encode {
        what: &'static str,
        source: serde_json::Error,
    },
    /// The database was migrated by a newer airlock.
    #[error(
        "database schema version {found} is newer than this airlock ({latest}); refusing to run"
    )]
    SchemaTooNew { found: i64, latest: i64 },
    /// Another writer appended audit events in between (the caller retries).
    #[error("audit chain out of step: {0}")]
    ChainConflict(String),
    /// The connection broke while a commit was under way: the write may or may not
    /// have been stored, so it must not simply be repeated.
    #[error("commit outcome unknown: {0}")]
    CommitUnknown(String),
    /// The blocking task running a SQLite call failed.
    #[error("store task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// The store URL names no backend airlock has.
    #[error("unknown store url {0:?} (use sqlite://PATH, sqlite::memory: or postgres://…)")]
    UnknownUrl(String),
}

impl StoreError {
    /// Whether the same call may succeed if tried again: a lost or refused connection,
    /// a serialization failure or deadlock, a busy or locked database, a chain conflict.
    /// Never true of [`StoreError::CommitUnknown`], whose write may already be stored.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Sqlite(e) => sqlite::is_transient(e),
            StoreError::Postgres(e) => postgres::is_transient(e),
            StoreError::NoConnection(_) | StoreError::ChainConflict(_) => true,
            StoreError::Open { .. }
            | StoreError::Corrupt(_)
            | StoreError::Encode { .. }
            | StoreError::SchemaTooNew { .. }
            | StoreError::CommitUnknown(_)
            | StoreError::Task(_)
            | StoreError::UnknownUrl(_) => false,
        }
    }
}

/// Everything airlock persists.
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// Reachable and writable enough to serve (`/readyz`).
    async fn ping(&self) -> Result<(), StoreError>;

    /// Opens a held request's approval: inserts it and seals its `held` event (when
    /// given) onto the audit chain in one transaction — unless an identical approval
    /// (same agent and digest) is pending and unexpired: then nothing is written and
    /// that approval's id is returned, for the request to join it.
    async fn open_approval(
        &self,
        a: &Approval,
        held: Option<AuditEvent>,
        signer: Option<&CheckpointSigner>,
    ) -> Result<Option<String>, StoreError>;
    /// [`Store::open_approval`] without an event, ignoring an identical pending one.
    async fn insert_approval(&self, a: &Approval) -> Result<(), StoreError> {
        self.open_approval(a, None, None).await.map(|_| ())
    }
    /// One approval with its votes.
    async fn approval(&self, id: &str) -> Result<Option<Approval>, StoreError>;
    /// Approvals, newest first, optionally of one status.
    async fn approvals(
        &self,
        status: Option<Status>,
        limit: usize,
    ) -> Result<Vec<Approval>, StoreError>;
    /// The newest pending, approved or outcome-unknown approval of this agent and digest
    /// (one an identical request may join, use, or must be told about).
    async fn find_active(&self, agent: &str, digest: &str) -> Result<Option<Approval>, StoreError>;
    /// Records a vote and decides the approval in one transaction: any deny denies,
    /// distinct approves that meet `quorum` approve. An approval past its expiry is expired instead.
    /// The events `audit` gives for the result ([`VoteAudit::for_result`]) are sealed
    /// onto the audit chain in the same transaction (checkpoint signed with `signer`).
    async fn vote(
        &self,
        id: &str,
        vote: &Vote,
        quorum: &Quorum,
        now: DateTime<Utc>,
        audit: &VoteAudit,
        signer: Option<&CheckpointSigner>,
    ) -> Result<VoteResult, StoreError>;
    /// Compare-and-set of the status; true when this call made the change. When it did
    /// and `event` is given, the event is sealed onto the audit chain in the same
    /// transaction. Moving to `consumed` sets `consumed`; moving out of `forwarding`
    /// keeps the decision's time; any other move sets `decided`.
    #[allow(clippy::too_many_arguments)]
    async fn transition_audited(
        &self,
        id: &str,
        from: Status,
        to: Status,
        now: DateTime<Utc>,
        reason: Option<&str>,
        event: Option<AuditEvent>,
        signer: Option<&CheckpointSigner>,
    ) -> Result<bool, StoreError>;
    /// [`Store::transition_audited`] without an event.
    async fn transition(
        &self,
        id: &str,
        from: Status,
        to: Status,
        now: DateTime<Utc>,
        reason: Option<&str>,
    ) -> Result<bool, StoreError> {
        self.transition_audited(id, from, to, now, reason, None, None)
            .await
    }
    /// Claims an approved approval for one forward: `approved` → `forwarding`, naming the
    /// airlock instance that forwards it; durable before anything is sent. True when
    /// this call claimed it.
    async fn claim(
        &self,
        id: &str,
        forwarder: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError>;
    /// Marks this airlock instance as running for as long as the process lives (on
    /// PostgreSQL a session advisory lock that dies with the connection). Idempotent:
    /// called again, it re-takes a mark a broken connection lost.
    async fn register_instance(&self, id: &str) -> Result<(), StoreError>;
    /// Whether the airlock instance `id` still runs (its forwards may be in flight).
    async fn instance_alive(&self, id: &str) -> Result<bool, StoreError>;
    /// The audit events naming an approval, in seq order.
    async fn audit_events_of(&self, approval_id: &str) -> Result<Vec<AuditEvent>, StoreError>;
    /// Of these approvals, the ones no longer pending (decided on any replica).
    async fn decided_among(&self, ids: &[String]) -> Result<Vec<String>, StoreError>;
    /// Ids of approvals whose status another process (replica) changed, as they
    /// change; [`ANY_CHANGE`] when some may have been missed (a listener reconnected).
    /// `None` when the store has no such notices (then callers poll
    /// [`Store::decided_among`]). Available once [`Store::register_instance`] ran.
    fn changes(&self) -> Option<tokio::sync::broadcast::Receiver<String>> {
        None
    }
    /// Pending approvals whose expiry has passed.
    async fn due(&self, now: DateTime<Utc>) -> Result<Vec<String>, StoreError>;
    /// How many approvals of `agent` are pending and not yet expired at `now`, whether
    /// or not a client still waits on them (`limits.max_held_per_agent` bounds them).
    async fn pending_of(&self, agent: &str, now: DateTime<Utc>) -> Result<usize, StoreError> {
        let all = self.approvals(Some(Status::Pending), usize::MAX).await?;
        Ok(all
            .iter()
            .filter(|a| a.agent == agent && a.expires > now)
            .count())
    }

    /// The channels every approval lifecycle event is written to the outbox for, in
    /// the transaction that seals it (none until set).
    fn set_outbox_channels(&self, channels: Vec<String>);
    /// Claims up to `limit` due outbox rows for `instance` until `lease_until`: of each
    /// approval and channel only the oldest undelivered row, and only when it is due
    /// and no instance holds an unexpired lease on it. Each row goes to one instance.
    async fn outbox_claim(
        &self,
        instance: &str,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<OutboxItem>, StoreError>;
    /// Settles a delivery attempt of a row `instance` claimed.
    async fn outbox_settle(
        &self,
        id: i64,
        instance: &str,
        now: DateTime<Utc>,
        how: &Settle,
    ) -> Result<(), StoreError>;
    /// Outbox rows by state.
    async fn outbox_counts(&self) -> Result<OutboxCounts, StoreError>;
    /// Deletes settled outbox rows settled before `before` (the audit log keeps the
    /// events); returns how many.
    async fn outbox_prune(&self, before: DateTime<Utc>) -> Result<u64, StoreError>;
    /// What a channel stored about the message it posted for an approval.
    async fn message_ref(
        &self,
        approval_id: &str,
        channel: &str,
    ) -> Result<Option<String>, StoreError>;
    /// Stores (replacing) what a channel needs to update its message for an approval.
    async fn set_message_ref(
        &self,
        approval_id: &str,
        channel: &str,
        reference: &str,
    ) -> Result<(), StoreError>;
    /// Records `mark` for a pending approval once, whatever the replica; when this
    /// call recorded it, seals `event` in the same transaction (with its outbox rows).
    /// True when this call recorded it; false when it was recorded before or the
    /// approval is no longer pending (checked in the same transaction, so a reminder
    /// never follows a decision).
    async fn mark_once(
        &self,
        approval_id: &str,
        mark: &str,
        now: DateTime<Utc>,
        event: AuditEvent,
        signer: Option<&CheckpointSigner>,
    ) -> Result<bool, StoreError>;
    /// Up to `limit` pending approvals whose policy asks for reminders or an
    /// escalation, newest first.
    async fn following_up(&self, limit: usize) -> Result<Vec<Approval>, StoreError> {
        let all = self.approvals(Some(Status::Pending), limit).await?;
        Ok(all
            .into_iter()
            .filter(|a| a.policy.remind.is_some() || a.policy.escalate.is_some())
            .collect())
    }
    /// The marks recorded for an approval.
    async fn marks_of(&self, approval_id: &str) -> Result<Vec<String>, StoreError>;
    /// Up to `limit` decided approvals of `agent` that matched `rule`, newest first,
    /// other than `except` (what reviewers see as recent decisions).
    async fn recent_decisions(
        &self,
        agent: &str,
        rule: &str,
        except: &str,
        limit: usize,
    ) -> Result<Vec<Approval>, StoreError> {
        let all = self.approvals(None, 500).await?;
        Ok(all
            .into_iter()
            .filter(|a| {
                a.id != except
                    && a.agent == agent
                    && a.rules.iter().any(|r| r == rule)
                    && !matches!(a.status, Status::Pending | Status::Cancelled)
            })
            .take(limit)
            .collect())
    }

    /// Appends already sealed audit events (and a checkpoint) atomically; refuses with
    /// [`StoreError::ChainConflict`] a batch that does not continue the stored chain.
    /// For importing a sealed log; live writers use [`Store::audit_seal_append`].
    async fn audit_append(
        &self,
        events: &[AuditEvent],
        checkpoint: Option<&Checkpoint>,
    ) -> Result<(), StoreError>;
    /// Seals `events` onto the stored chain and appends them in ONE transaction under
    /// the store's audit lock: reads the head (last seq and hash), sets each event's seq,
    /// `prev_hash` and hash, inserts them, and when `signer` is given signs and inserts a
    /// checkpoint over the new head. Returns the sealed events. Writers on any number
    /// of replicas never conflict. An empty batch stores nothing.
    async fn audit_seal_append(
        &self,
        events: Vec<AuditEvent>,
        signer: Option<&CheckpointSigner>,
    ) -> Result<Vec<AuditEvent>, StoreError>;
    /// (last seq, last hash) of the audit log.
    async fn audit_head(&self) -> Result<(u64, String), StoreError>;
    /// Audit events in seq order, optionally from a time on.
    async fn audit_events(
        &self,
        since: Option<DateTime<Utc>>,
    ) -> Result<Vec<AuditEvent>, StoreError>;
    async fn audit_checkpoints(&self) -> Result<Vec<Checkpoint>, StoreError>;
    /// Every stored audit row with the columns kept next to its sealed line, in seq
    /// order: what `audit verify` checks the columns of. The default rebuilds the
    /// columns from the lines (a store that keeps none); backends read their columns.
    async fn audit_rows(&self) -> Result<Vec<StoredRow>, StoreError> {
        Ok(self
            .audit_events(None)
            .await?
            .into_iter()
            .map(|ev| StoredRow {
                seq: ev.seq,
                time: format_time(&ev.time),
                event: ev.event.clone(),
                hash: ev.hash.clone(),
                line: crate::audit::to_jsonl_line(&ev),
            })
            .collect())
    }
    /// The checkpoints with a seq above `after` and at most `upto`, in seq order: what
    /// the JSONL copy writes next to those events. The default reads them all.
    async fn audit_checkpoints_between(
        &self,
        after: u64,
        upto: u64,
    ) -> Result<Vec<Checkpoint>, StoreError> {
        let all = self.audit_checkpoints().await?;
        Ok(all
            .into_iter()
            .filter(|c| c.seq > after && c.seq <= upto)
            .collect())
    }
    /// The checkpoint with the highest seq (what the witness publishes). The default
    /// reads them all.
    async fn audit_last_checkpoint(&self) -> Result<Option<Checkpoint>, StoreError> {
        Ok(self.audit_checkpoints().await?.pop())
    }
    /// Up to `limit` audit events with a seq above `after`, in seq order: what the JSONL
    /// copy catches up with. The default reads the whole log; backends override it.
    async fn audit_events_after(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<AuditEvent>, StoreError> {
        let all = self.audit_events(None).await?;
        Ok(all
            .into_iter()
            .filter(|e| e.seq > after)
            .take(limit)
            .collect())
    }
}

/// What [`Store::changes`] sends when notices may have been missed: check everything.
pub const ANY_CHANGE: &str = "*";

/// Opens the store a config names (`sqlite://PATH`, `sqlite::memory:`,
/// `postgres://…`); relative SQLite paths are relative to `base`.
pub async fn open(url: &str, base: &std::path::Path) -> Result<Arc<dyn Store>, StoreError> {
    if let Some(rest) = url.strip_prefix("sqlite:") {
        let path = rest.trim_start_matches("//");
        if path == ":memory:" || path.is_empty() {
            return Ok(Arc::new(sqlite::SqliteStore::open_memory()?));
        }
        let p = std::path::Path::new(path);
        let p = if p.is_absolute() {
            p.to_path_buf()
        } else {
            base.join(p)
        };
        return Ok(Arc::new(sqlite::SqliteStore::open(&p)?));
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(Arc::new(postgres::PostgresStore::open(url).await?));
    }
    Err(StoreError::UnknownUrl(url.to_string()))
}

/// Adapts a [`Store`] to the audit writer's sink: batches are sealed inside the store's
/// transaction ([`Store::audit_seal_append`]).
pub struct StoreSink(pub Arc<dyn Store>);

/// A store error as the audit writer sees it: retryable or not.
fn audit_error(e: StoreError) -> AuditError {
    if e.is_transient() {
        AuditError::Unavailable(e.to_string())
    } else {
        AuditError::Store(e.to_string())
    }
}

#[async_trait::async_trait]
impl crate::audit::AuditSink for StoreSink {
    async fn append(
        &self,
        events: &[AuditEvent],
        checkpoint: Option<&Checkpoint>,
    ) -> Result<(), AuditError> {
        self.0
            .audit_append(events, checkpoint)
            .await
            .map_err(audit_error)
    }

    async fn head(&self) -> Result<(u64, String), AuditError> {
        self.0.audit_head().await.map_err(audit_error)
    }

    async fn seal_append(
        &self,
        events: Vec<AuditEvent>,
        signer: Option<&CheckpointSigner>,
    ) -> Result<Vec<AuditEvent>, AuditError> {
        self.0
            .audit_seal_append(events, signer)
            .await
            .map_err(audit_error)
    }

    async fn events_after(&self, after: u64, limit: usize) -> Result<Vec<AuditEvent>, AuditError> {
        self.0
            .audit_events_after(after, limit)
            .await
            .map_err(audit_error)
    }

    async fn checkpoints_between(
        &self,
        after: u64,
        upto: u64,
    ) -> Result<Vec<Checkpoint>, AuditError> {
        self.0
            .audit_checkpoints_between(after, upto)
            .await
            .map_err(audit_error)
    }

    async fn last_checkpoint(&self) -> Result<Option<Checkpoint>, AuditError> {
        self.0.audit_last_checkpoint().await.map_err(audit_error)
    }

    /// The store's readiness check, which writes.
    async fn probe(&self) -> Result<(), AuditError> {
        self.0.ping().await.map_err(audit_error)
    }
}

/// A store URL safe to print: a PostgreSQL password is replaced with `***`.
pub fn redacted_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (auth, host) = match rest.rsplit_once('@') {
        Some(x) => x,
        None => return url.to_string(),
    };
    match auth.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_string(),
    }
}
