//! Following up undecided approvals: reminders (`approval.remind: 10m`) and escalation
//! (`approval.escalate: {after: 30m, to: [group:sre-leads]}`).
//!
//! The sweeper ([`super::expiry`]) runs [`Approvals::follow_up`] every
//! [`FOLLOW_UP_EVERY_SECS`] seconds. For each pending, unexpired approval whose policy
//! asks for it:
//! - the `k`-th reminder is due at `created + k × remind` (`k ≥ 1`); only the latest
//!   due one is sent, so an airlock that was down does not send a burst of old ones;
//! - the escalation is due at `created + after`; from then on the reviewers it names
//!   may vote on every requirement ([`super::requirements_at`]), and they are told.
//!
//! Each is recorded once, whatever the replica, with the store's
//! [`crate::store::Store::mark_once`] (`remind:<k>`, `escalate`): the mark, its audit
//! event (`reminded`, or `escalated` with `detail.to`) and the event's outbox rows are
//! one transaction, so every reminder and escalation is on the audit hash chain and
//! reaches the channels like any other lifecycle event.
//!
//! Cost: a pass reads the pending approvals (one store query, every
//! [`FOLLOW_UP_EVERY_SECS`] s, at most [`SCAN_LIMIT`]); it writes only when a reminder
//! or an escalation is newly due, and remembers in memory which marks it has already
//! seen. A pass that finds no pending approval with `remind` or `escalate` does
//! nothing else.
//!
//! This module never decides, votes or expires anything, and never calls a channel;
//! a store error is logged and the next pass tries again.

use super::{event_for, Approvals};
use crate::store::{Approval, Status};
use chrono::{DateTime, Utc};
use std::collections::HashSet;

/// How often the sweeper follows up approvals, in seconds (so a reminder or an
/// escalation goes out at most this late).
pub const FOLLOW_UP_EVERY_SECS: u64 = 2;

/// The most pending approvals one pass looks at (newest first); far above
/// `limits.max_held`'s default of 10 000.
pub const SCAN_LIMIT: usize = 100_000;

/// What is due for `a` at `now`, newest reminder only: the marks and the events
/// recording them.
fn due(a: &Approval, now: DateTime<Utc>) -> Vec<(String, crate::audit::AuditEvent)> {
    let mut out = Vec::new();
    let elapsed = (now - a.created).num_seconds().max(0) as u64;
    if let Some(e) = &a.policy.escalate {
        if elapsed >= e.after {
            let mut ev = event_for("escalated", a);
            ev.detail = Some(serde_json::json!({ "to": e.to }));
            out.push(("escalate".to_string(), ev));
        }
    }
    if let Some(every) = a.policy.remind.filter(|r| *r > 0) {
        let k = elapsed / every;
        if k >= 1 {
            let mut ev = event_for("reminded", a);
            ev.detail = Some(serde_json::json!({ "reminder": k }));
            out.push((format!("remind:{k}"), ev));
        }
    }
    out
}

impl Approvals {
    /// Sends the reminders and escalations that are due (see the module docs). Run by
    /// the sweeper every [`FOLLOW_UP_EVERY_SECS`] seconds; never fails: a store error
    /// is logged and the next pass tries again.
    pub async fn follow_up(&self) {
        let pending = match self.store.following_up(SCAN_LIMIT).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "could not read pending approvals to remind or escalate");
                return;
            }
        };
        let now = self.now();
        let key = |id: &str, mark: &str| format!("{id}\n{mark}");
        let mut live: HashSet<&str> = HashSet::new();
        for a in pending
            .iter()
            .filter(|a| a.expires > now)
            .filter(|a| a.policy.remind.is_some() || a.policy.escalate.is_some())
        {
            live.insert(&a.id);
            for (mark, ev) in due(a, now) {
                let k = key(&a.id, &mark);
                if self.followed_up.contains(&k) {
                    continue;
                }
                match self.follow_up_one(a, &mark, ev).await {
                    Ok(()) => {
                        self.followed_up.insert(k);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, approval = %a.id, mark, "could not record a reminder or escalation; trying again on the next pass");
                        return;
                    }
                }
            }
        }
        // Forget what no longer needs remembering (decided, expired or gone).
        self.followed_up
            .retain(|k| k.split('\n').next().is_some_and(|id| live.contains(id)));
    }

    /// Records `mark` on `a` with its event once (across replicas) and, when this call
    /// recorded it, tells this process's subscribers and the outbox dispatcher.
    async fn follow_up_one(
        &self,
        a: &Approval,
        mark: &str,
        ev: crate::audit::AuditEvent,
    ) -> Result<(), crate::store::StoreError> {
        // Read it again right before writing: a vote or an expiry since the list was
        // read means no reminder and no escalation.
        match self.store.approval(&a.id).await? {
            Some(now) if now.status == Status::Pending && now.expires > self.now() => {}
            _ => return Ok(()),
        }
        if self
            .store
            .mark_once(&a.id, mark, self.now(), ev.clone(), self.signer.as_ref())
            .await?
        {
            tracing::info!(approval = %a.id, mark, "approval followed up");
            self.audit.sealed_elsewhere();
            self.emit(&[ev]);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::rule::Escalation;

    fn approval(remind: Option<u64>, escalate: Option<Escalation>) -> Approval {
        let created = Utc::now();
        Approval {
            id: "ap_1".into(),
            status: Status::Pending,
            agent: "deploy-bot".into(),
            owner: None,
            requester: Default::default(),
            digest: "d".into(),
            body_sha256: "b".into(),
            rules: vec!["r".into()],
            policy: crate::rules::ApprovalPolicy {
                approvers: vec!["group:sre".into()],
                quorum: 1,
                requirements: Vec::new(),
                timeout: std::time::Duration::from_secs(3600),
                reuse: std::time::Duration::ZERO,
                channels: Vec::new(),
                show: Vec::new(),
                require_reason: false,
                remind,
                escalate,
            },
            method: "POST".into(),
            upstream: "api".into(),
            host: None,
            url: "/x".into(),
            justification: None,
            show: None,
            request_id: "req".into(),
            created,
            expires: created + chrono::Duration::hours(1),
            decided: None,
            decided_by: None,
            reason: None,
            consumed: None,
            forwarder: None,
            votes: Vec::new(),
        }
    }

    fn marks(a: &Approval, after_secs: i64) -> Vec<String> {
        due(a, a.created + chrono::Duration::seconds(after_secs))
            .into_iter()
            .map(|(m, _)| m)
            .collect()
    }

    #[test]
    fn only_the_latest_due_reminder_is_sent() {
        let a = approval(Some(600), None);
        assert!(marks(&a, 599).is_empty());
        assert_eq!(marks(&a, 600), vec!["remind:1"]);
        assert_eq!(marks(&a, 1199), vec!["remind:1"]);
        // After an hour of downtime: the sixth, not the first five again.
        assert_eq!(marks(&a, 3650), vec!["remind:6"]);
    }

    #[test]
    fn escalation_is_due_after_its_delay_and_names_who_was_added() {
        let to = vec!["group:leads".to_string()];
        let a = approval(
            None,
            Some(Escalation {
                after: 1800,
                to: to.clone(),
            }),
        );
        assert!(marks(&a, 1799).is_empty());
        let d = due(&a, a.created + chrono::Duration::seconds(1800));
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].0, "escalate");
        assert_eq!(d[0].1.event, "escalated");
        assert_eq!(d[0].1.detail, Some(serde_json::json!({ "to": to })));
    }

    #[test]
    fn nothing_is_due_without_remind_or_escalate() {
        assert!(marks(&approval(None, None), 100_000).is_empty());
    }
}
