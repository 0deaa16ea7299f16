//! Votes: who may vote (never the agent, its owner or the person it acts for; only
//! the rule's approvers), and
//! casting one. A vote, the decision it makes and their audit events are one store
//! transaction: nothing is ever released on a vote the log does not show, and a crash
//! cannot leave a decision without its event.

use super::{event_for, Approvals, VoteError};
use crate::config::Reviewer;
use crate::identity::{same_identity, Reviewers};
use crate::rules::Requirement;
use crate::store::{Approval, Decision, Need, Quorum, Status, Vote, VoteAudit, VoteResult};
use chrono::{DateTime, Utc};
use std::sync::Arc;

/// Where a vote came from, and what proves who cast it.
#[derive(Debug, Clone, PartialEq)]
pub struct Via {
    /// `api`, `cli`, `slack`, `teams`, `console`.
    pub channel: String,
    /// For a chat callback: the SHA-256 of the signed request and its signature
    /// headers (kept in the vote's audit event).
    pub evidence: Option<serde_json::Value>,
}

impl Via {
    /// The REST API (and the CLI over it).
    pub fn api() -> Via {
        Via {
            channel: "api".into(),
            evidence: None,
        }
    }
}

/// One requirement of an approval and its progress: the reviewers whose approvals
/// count for it so far.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Progress {
    pub rule: String,
    pub approvers: Vec<String>,
    pub quorum: u32,
    pub approved_by: Vec<String>,
    pub met: bool,
}

/// The requirements `a` must meet at `now` (an escalation that is due adds its
/// reviewers to each).
pub fn requirements_at(a: &Approval, now: DateTime<Utc>) -> Vec<Requirement> {
    let elapsed = (now - a.created).to_std().unwrap_or_default();
    a.policy.requirements_after(elapsed)
}

/// Every requirement of `a` with its progress.
pub fn progress(a: &Approval, reviewers: &Reviewers) -> Vec<Progress> {
    requirements_at(a, chrono::Utc::now())
        .iter()
        .map(|r| {
            let approved_by: Vec<String> = a
                .votes
                .iter()
                .filter(|v| v.decision == Decision::Approve)
                .filter(|v| counts_for(v, &r.approvers, reviewers))
                .map(|v| v.reviewer.clone())
                .collect();
            Progress {
                rule: r.rule.clone(),
                approvers: r.approvers.clone(),
                quorum: r.quorum,
                met: approved_by.len() >= r.quorum as usize,
                approved_by,
            }
        })
        .collect()
}

/// Whether an approving vote counts for a requirement naming `approvers`: its reviewer
/// is eligible as configured, or voted as a member of a group it names (a group from
/// their OIDC token).
fn counts_for(v: &Vote, approvers: &[String], reviewers: &Reviewers) -> bool {
    let as_configured = reviewers
        .all()
        .iter()
        .any(|rv| rv.id == v.reviewer && Reviewers::eligible(rv, approvers));
    as_configured || groups_named(approvers).any(|g| v.groups.iter().any(|x| x == g))
}

/// The groups an approvers list names (`group:NAME`).
fn groups_named(approvers: &[String]) -> impl Iterator<Item = &str> {
    approvers.iter().filter_map(|a| a.strip_prefix("group:"))
}

/// Whether `reviewer` may vote on `a` at all: never on their own request (as the agent
/// or its owner), and only when the rule's approvers name them. Identities are compared
/// as emails are: without regard to case.
pub fn may_vote(reviewer: &Reviewer, a: &Approval) -> Result<(), VoteError> {
    may_vote_at(reviewer, a, chrono::Utc::now())
}

/// [`may_vote`] at `now`: an escalation that is due makes its reviewers eligible.
pub fn may_vote_at(reviewer: &Reviewer, a: &Approval, now: DateTime<Utc>) -> Result<(), VoteError> {
    let same = |x: &str| {
        same_identity(x, &reviewer.id)
            || reviewer
                .subject
                .as_deref()
                .is_some_and(|s| same_identity(x, s))
    };
    // The person the agent acts for is an owner of the request too.
    if same(&a.agent)
        || a.owner.as_deref().is_some_and(same)
        || a.requester.acting_for.as_deref().is_some_and(same)
    {
        return Err(VoteError::SelfApproval);
    }
    let eligible = requirements_at(a, now)
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
pub fn quorum_of(a: &Approval, reviewers: &Reviewers, now: DateTime<Utc>) -> Quorum {
    Quorum {
        needs: requirements_at(a, now)
            .iter()
            .map(|r| Need {
                quorum: r.quorum,
                eligible: reviewers
                    .all()
                    .iter()
                    .filter(|rv| Reviewers::eligible(rv, &r.approvers))
                    .map(|rv| rv.id.clone())
                    .collect(),
                // A reviewer signed in with OIDC may be eligible by a group their
                // token lists, which the configured reviewer table does not know:
                // their vote records it.
                groups: groups_named(&r.approvers).map(str::to_string).collect(),
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
        self.vote_via(id, reviewer, reviewers, decision, reason, &Via::api())
            .await
    }

    /// [`Approvals::vote`] through a channel: the channel and its evidence (what
    /// proves who clicked) go into the vote's audit event.
    pub async fn vote_via(
        self: &Arc<Self>,
        id: &str,
        reviewer: &Reviewer,
        reviewers: &Reviewers,
        decision: Decision,
        reason: Option<String>,
        via: &Via,
    ) -> Result<Approval, VoteError> {
        let a = self.store.approval(id).await?.ok_or(VoteError::NotFound)?;
        let refused = |why: String| {
            let mut ev = event_for("vote_refused", &a);
            ev.reviewer = Some(reviewer.id.clone());
            ev.reason = Some(why);
            ev.channel = Some(via.channel.clone());
            ev.detail = via.evidence.clone();
            ev
        };
        if let Err(e) = may_vote_at(reviewer, &a, self.now()) {
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
        vote_ev.channel = Some(via.channel.clone());
        vote_ev.detail = via.evidence.clone();
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
            groups: reviewer.groups.clone(),
        };
        let started = std::time::Instant::now();
        let result = self
            .store
            .vote(
                id,
                &vote,
                &quorum_of(&a, reviewers, now),
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
        // Events sealed in the store's transaction: let the JSONL copy catch up, and
        // tell this process's subscribers (parked requests, metrics, the outbox).
        self.audit.sealed_elsewhere();
        // The answer shows the approval as this vote left it: read before the parked
        // request is woken and claims it.
        let after = match result {
            VoteResult::Recorded(_) => Some(self.store.approval(id).await),
            _ => None,
        };
        self.emit(&audit.for_result(&result));
        match result {
            VoteResult::NotFound => Err(VoteError::NotFound),
            VoteResult::AlreadyVoted => Err(VoteError::AlreadyVoted),
            // This vote discovered the expiry (and told parked requests).
            VoteResult::ExpiredNow => Err(VoteError::AlreadyDecided(Status::Expired)),
            VoteResult::AlreadyDecided(s) => {
                self.audit
                    .record(refused(format!("already {}", s.as_str())));
                Err(VoteError::AlreadyDecided(s))
            }
            VoteResult::Recorded(_) => match after {
                Some(Ok(Some(a))) => Ok(a),
                Some(Err(e)) => Err(e.into()),
                _ => Err(VoteError::NotFound),
            },
        }
    }
}
