//! Votes: who may vote (never the agent or its owner; only the rule's approvers), and
//! casting one. A vote is in the audit log before it can take effect, and a decision
//! the log cannot show is withdrawn, so nothing is ever released on an unrecorded vote.

use super::{event_for, Approvals, Outcome, VoteError};
use crate::config::Reviewer;
use crate::identity::Reviewers;
use crate::store::{Approval, Decision, Status, Vote, VoteResult};
use std::sync::Arc;

/// Whether `reviewer` may vote on `a` at all: never on their own request (as the agent
/// or its owner), and only when the rule's approvers name them. Identities are compared
/// as emails are: without regard to case.
pub fn may_vote(reviewer: &Reviewer, a: &Approval) -> Result<(), VoteError> {
    let same = |x: &str| x.eq_ignore_ascii_case(&reviewer.id);
    if same(&a.agent) || a.owner.as_deref().is_some_and(same) {
        return Err(VoteError::SelfApproval);
    }
    if !Reviewers::eligible(reviewer, &a.policy.approvers) {
        return Err(VoteError::NotEligible);
    }
    Ok(())
}

impl Approvals {
    /// Marks a decision the log could not record as cancelled in the store, retrying in
    /// the background while the store refuses; until then [`Approvals::withdrawn`]
    /// keeps anything from being forwarded on it.
    async fn withdraw(self: &Arc<Self>, id: &str, status: Status) {
        const WHY: &str = "the decision could not be written to the audit log";
        match self
            .store
            .transition(id, status, Status::Cancelled, self.now(), Some(WHY))
            .await
        {
            Ok(_) => {
                self.withdrawn.remove(id);
            }
            Err(e) => {
                tracing::error!(error = %e, approval = id, "could not withdraw an unrecorded decision yet; retrying");
                let me = self.clone();
                let id = id.to_string();
                tokio::spawn(async move {
                    let mut wait = std::time::Duration::from_millis(200);
                    loop {
                        tokio::time::sleep(wait).await;
                        wait = (wait * 2).min(std::time::Duration::from_secs(10));
                        let r = me
                            .store
                            .transition(&id, status, Status::Cancelled, me.now(), Some(WHY))
                            .await;
                        if r.is_ok() {
                            me.withdrawn.remove(&id);
                            return;
                        }
                    }
                });
            }
        }
    }

    /// Casts a reviewer's vote and returns the approval as it now stands.
    pub async fn vote(
        self: &Arc<Self>,
        id: &str,
        reviewer: &Reviewer,
        decision: Decision,
        reason: Option<String>,
    ) -> Result<Approval, VoteError> {
        let a = self.store.approval(id).await?.ok_or(VoteError::NotFound)?;
        let refused = |why: String| {
            let mut ev = event_for("vote_refused", &a);
            ev.reviewer = Some(reviewer.id.clone());
            ev.reason = Some(why);
            ev
        };
        if let Err(e) = may_vote(reviewer, &a) {
            let why = match e {
                VoteError::SelfApproval => "self-approval",
                _ => "not an eligible approver",
            };
            self.audit.record(refused(why.into()));
            return Err(e);
        }
        match a.status {
            Status::Pending if a.votes.iter().any(|v| v.reviewer == reviewer.id) => {
                return Err(VoteError::AlreadyVoted)
            }
            Status::Pending if a.expires <= self.now() => {
                self.expire(id).await;
                return Err(VoteError::AlreadyDecided(Status::Expired));
            }
            Status::Pending => {}
            other => return Err(VoteError::AlreadyDecided(other)),
        }
        let reason = reason.filter(|r| !r.trim().is_empty());
        if a.policy.require_reason && reason.is_none() {
            return Err(VoteError::ReasonRequired);
        }
        // The vote is in the audit log before it can take effect: a decision the log
        // does not show can never release a request.
        let mut ev = event_for("vote", &a);
        ev.reviewer = Some(reviewer.id.clone());
        ev.decision = Some(decision.as_str().into());
        ev.reason = reason.clone();
        self.audit_durable(ev).await?;
        let now = self.now();
        let vote = Vote {
            reviewer: reviewer.id.clone(),
            decision,
            reason: reason.clone(),
            time: now,
        };
        // From before the store can say approved until the decision is durable (or
        // withdrawn), nothing may be forwarded on this approval.
        let _deciding = Unconfirmed::new(self, id);
        let result = match self.store.vote(id, &vote, a.policy.quorum, now).await {
            Ok(r) => r,
            Err(e) => {
                self.audit.record(refused(format!("not recorded: {e}")));
                return Err(e.into());
            }
        };
        match result {
            VoteResult::NotFound => Err(VoteError::NotFound),
            VoteResult::AlreadyVoted => {
                self.audit.record(refused("already voted".into()));
                Err(VoteError::AlreadyVoted)
            }
            VoteResult::AlreadyDecided(Status::Expired) => {
                // This vote discovered the expiry: tell parked requests.
                self.audit
                    .record(refused("the approval had expired".into()));
                self.metrics.decision("expired");
                self.audit.record(event_for("expired", &a));
                self.notify(id, Outcome::Expired);
                Err(VoteError::AlreadyDecided(Status::Expired))
            }
            VoteResult::AlreadyDecided(s) => {
                self.audit
                    .record(refused(format!("already {}", s.as_str())));
                Err(VoteError::AlreadyDecided(s))
            }
            VoteResult::Recorded(status) => {
                self.metrics.vote(decision.as_str());
                if matches!(status, Status::Approved | Status::Denied) {
                    self.decided(id, &a, status, reviewer, reason).await?;
                }
                self.store.approval(id).await?.ok_or(VoteError::NotFound)
            }
        }
    }

    /// A vote decided the approval: the decision is made durable in the audit log, then
    /// parked requests are told. If the log cannot take it, the decision is withdrawn
    /// (fail closed) and nothing is forwarded on it.
    async fn decided(
        self: &Arc<Self>,
        id: &str,
        a: &Approval,
        status: Status,
        reviewer: &Reviewer,
        reason: Option<String>,
    ) -> Result<(), VoteError> {
        let word = if status == Status::Approved {
            "approved"
        } else {
            "denied"
        };
        let mut ev = event_for(word, a);
        ev.reviewer = Some(reviewer.id.clone());
        ev.reason = reason.clone();
        if let Err(e) = self.audit_durable(ev).await {
            // Fail closed: the decision is withdrawn here at once, and in the store as
            // soon as the store takes the write.
            self.withdrawn.insert(id.to_string(), ());
            self.withdraw(id, status).await;
            self.notify(
                id,
                Outcome::Denied {
                    reason: Some(
                        "the decision could not be written to the audit log; ask again".into(),
                    ),
                },
            );
            return Err(e.into());
        }
        // The decision is durable: it may be acted on from now (before parked requests
        // are told, so they find it usable).
        self.unconfirmed.remove(id);
        self.metrics.decision(word);
        self.notify(
            id,
            if status == Status::Approved {
                Outcome::Approved
            } else {
                Outcome::Denied { reason }
            },
        );
        Ok(())
    }
}

/// Marks an approval as possibly decided but not yet recorded, for as long as it lives.
struct Unconfirmed<'a> {
    approvals: &'a Approvals,
    id: String,
}

impl<'a> Unconfirmed<'a> {
    fn new(approvals: &'a Approvals, id: &str) -> Self {
        *approvals.unconfirmed.entry(id.to_string()).or_insert(0) += 1;
        Unconfirmed {
            approvals,
            id: id.to_string(),
        }
    }
}

impl Drop for Unconfirmed<'_> {
    fn drop(&mut self) {
        self.approvals.unconfirmed.remove_if_mut(&self.id, |_, n| {
            *n = n.saturating_sub(1);
            *n == 0
        });
    }
}
