//! Why holding a request or casting a vote failed. These are the approvals layer's own
//! errors; the proxy and the admin listener map them to answers.

use crate::audit::AuditError;
use crate::store::{Status, StoreError};

/// A held-request limit was reached (`limits.max_held`, `limits.max_held_per_agent`,
/// `limits.max_held_bytes`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitReached {
    /// Every held slot is taken.
    #[error("{held} requests are held, the most allowed (limits.max_held)")]
    Total { held: usize },
    /// This agent has all the slots it may have.
    #[error("{agent} already has {held} requests held (limits.max_held_per_agent)")]
    PerAgent { agent: String, held: usize },
    /// This agent has as many pending approvals as it may (counting those whose client
    /// went away).
    #[error("{agent} already has {pending} approvals pending (limits.max_held_per_agent); a retry of an identical request joins its pending approval")]
    Pending { agent: String, pending: usize },
    /// Bodies in memory would exceed `limits.max_held_bytes`.
    #[error("{0}")]
    Bytes(#[from] crate::http::budget::OverBudget),
}

/// Why a request could not be held (it is then refused, never forwarded).
#[derive(Debug, thiserror::Error)]
pub enum HoldError {
    /// The store could not record or read the approval.
    #[error("the approval store is unavailable: {0}")]
    Store(#[from] StoreError),
    /// The `held` event could not be made durable, so the approval was cancelled.
    #[error("the audit log cannot record the hold: {0}")]
    Audit(#[from] AuditError),
    /// A new approval would exceed the agent's pending approvals.
    #[error(transparent)]
    Limit(#[from] LimitReached),
}

/// Why a vote was refused.
#[derive(Debug, thiserror::Error)]
pub enum VoteError {
    #[error("no such approval")]
    NotFound,
    #[error("you are not an approver for the rule that held this request")]
    NotEligible,
    #[error("nobody may approve their own request (you are the agent, its owner, or the person it acts for)")]
    SelfApproval,
    #[error("the approval is already {}", .0.as_str())]
    AlreadyDecided(Status),
    #[error("you have already voted on this approval")]
    AlreadyVoted,
    /// The rule says `approval.require_reason: true` and the vote has none.
    #[error("a reason is required to vote on this approval (approval.require_reason)")]
    ReasonRequired,
    #[error("the approval store is unavailable: {0}")]
    Store(#[from] StoreError),
    /// The vote (or the decision it made) could not be made durable in the audit log.
    #[error("the audit log cannot record the vote: {0}")]
    Audit(#[from] AuditError),
}
