//! Votes: who may vote (never the agent or its owner; only the rule's approvers), and
//! casting one. A vote, the decision it makes and their audit events are one store
//! transaction: nothing is ever released on a vote the log does not show, and a crash
//! cannot leave a decision without its event.

use super::{event_for, Approvals, Outcome, VoteError};
use crate::config::Reviewer;
use crate::identity::{same_identity, Reviewers};
use crate::store::{Approval, Decision, Need, Quorum, Status, Vote, VoteAudit, VoteResult};
use std::sync::Arc;

/// Whether `reviewer` may vote on `a` at all: never on their own request (as the agent
/// or its owner), and only when the rule's approvers name them. Identities are compared
/// as emails are: without regard to case.
pub fn may_vote(reviewer: &Reviewer, a: &Approval) -> Result<(), VoteError> {
    let same = |x: &str| same_identity(x, &reviewer.id);
    if same(&a.agent) || a.owner.as_deref().is_some_and(same) {
        return Err(VoteError::SelfApproval);
    }
    let eligible = a
        .policy
        .requirements()
        .iter()
        .any(|r| Reviewers::eligible(reviewer, &r.approvers));
    if !eligible {
        return Err(VoteError::NotEligible);
    }
    Ok(())
}

/// What approves `a`: every requirement of its policy, each met by distinct approvals
/// of the reviewers it names. One reviewer's approval counts for every requirement
/// that names them.
pub fn quorum_of(a: &Approval, reviewers: &Reviewers) -> Quorum {
    Quorum {
        needs: a
            .policy
            .requirements()
            .iter()
            .map(|r| Need {
                quorum: r.quorum,
                eligible: reviewers
                    .all()
                    .iter()
                    .filter(|rv| Reviewers::eligible(rv, &r.approvers))
                    .map(|rv| rv.id.clone())
                    .collect(),
            })
            .collect(),
    }
}

impl Approvals {
    /// Casts a reviewer's vote and returns the approval as it now stands. A repeated
    /// vote by the same reviewer (a double click, two racing requests) changes nothing
    /// and writes nothing: `AlreadyVoted`.
    pub async fn vote(
        self: &Arc<Self>,
        id: &str,
        reviewer: &Reviewer,
        reviewers: &Reviewers,
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
            Status::Pending
                if a.votes
                    .iter()
                    .any(|v| same_identity(&v.reviewer, &reviewer.id)) =>
            {
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
        let decided = |word: &str| {
            let mut ev = event_for(word, &a);
            ev.reviewer = Some(reviewer.id.clone());
            ev.reason = reason.clone();
            ev
        };
        let mut vote_ev = decided("vote");
        vote_ev.decision = Some(decision.as_str().into());
        let audit = VoteAudit {
            vote: vote_ev,
            approved: decided("approved"),
            denied: decided("denied"),
            expired: event_for("expired", &a),
        };
        let now = self.now();
        let vote = Vote {
            reviewer: reviewer.id.clone(),
            decision,
            reason: reason.clone(),
            time: now,
        };
        let started = std::time::Instant::now();
        let result = self
            .store
            .vote(
                id,
                &vote,
                &quorum_of(&a, reviewers),
                now,
                &audit,
                self.signer.as_ref(),
            )
            .await;
        self.metrics
            .audit_append
            .observe(started.elapsed().as_secs_f64());
        let result = match result {
            Ok(r) => r,
            Err(e) => {
                self.audit.record(refused(format!("not recorded: {e}")));
                return Err(e.into());
            }
        };
        // Events sealed in the store's transaction: let the JSONL copy catch up.
        self.audit.sealed_elsewhere();
        match result {
            VoteResult::NotFound => Err(VoteError::NotFound),
            VoteResult::AlreadyVoted => Err(VoteError::AlreadyVoted),
            VoteResult::ExpiredNow => {
                // This vote discovered the expiry: tell parked requests.
                self.metrics.decision("expired");
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
                match status {
                    Status::Approved => {
                        self.metrics.decision("approved");
                        self.notify(id, Outcome::Approved);
                    }
                    Status::Denied => {
                        self.metrics.decision("denied");
                        self.notify(id, Outcome::Denied { reason });
                    }
                    _ => {}
                }
                self.store.approval(id).await?.ok_or(VoteError::NotFound)
            }
        }
    }
}
