//! What a channel tells reviewers about one lifecycle event: the approval as it
//! stands, the event, each rule's description and approval progress, who should look
//! (the eligible reviewers, or those an escalation added), the agent's recent
//! decisions for the same rules, and a link to the approval on the admin listener.

use crate::approvals::{progress, LifecycleEvent, Progress};
use crate::config::Reviewer;
use crate::identity::Reviewers;
use crate::state::Snapshot;
use crate::store::{Approval, Status, Store, StoreError};
use chrono::{DateTime, Utc};
use serde::Serialize;

/// One lifecycle event of one approval, with everything a reviewer needs to decide.
#[derive(Debug, Clone)]
pub struct Notice {
    /// What happened.
    pub event: LifecycleEvent,
    /// The approval as it stands now (votes, status, decision).
    pub approval: Approval,
    /// How the agent authenticated (`key`, `jwt`, `mtls`, `none`).
    pub auth: String,
    /// Each matched rule: its description and approval progress.
    pub rules: Vec<RuleNotice>,
    /// Who should look: reviewers eligible to vote (for `opened` and `reminded`), or
    /// those an escalation added (for `escalated`); never the agent, its owner or the
    /// person it acts for.
    pub mention: Vec<Reviewer>,
    /// The last few decided approvals of the same agent and rules, newest first.
    pub recent: Vec<Recent>,
    /// The approval on the admin listener (`admin.public_url` + `/approvals/{id}`).
    pub link: Option<String>,
    /// Where the request goes when approved ([`Notice::url`]).
    pub full_url: String,
}

/// A matched rule as reviewers see it.
#[derive(Debug, Clone, Serialize)]
pub struct RuleNotice {
    pub name: String,
    pub description: Option<String>,
    /// Its requirements and their progress (empty for a rule without one of its own).
    pub progress: Vec<Progress>,
}

/// An earlier decision for the same agent and rule.
#[derive(Debug, Clone, Serialize)]
pub struct Recent {
    pub id: String,
    /// `approved`, `denied`, `expired`, `consumed` (approved and forwarded), …
    pub status: String,
    pub by: Option<String>,
    pub reason: Option<String>,
    pub when: Option<DateTime<Utc>>,
}

impl Notice {
    /// Builds the notice for `event` on `approval` against the config and rules in
    /// force.
    pub async fn build(
        store: &dyn Store,
        snap: &Snapshot,
        event: LifecycleEvent,
        approval: Approval,
    ) -> Result<Notice, StoreError> {
        let cfg = snap.cfg();
        let reviewers = &snap.policy.reviewers;
        let all = progress(&approval, reviewers);
        let rules = approval
            .rules
            .iter()
            .map(|name| RuleNotice {
                name: name.clone(),
                description: snap
                    .policy
                    .rules
                    .rules
                    .iter()
                    .find(|r| &r.name == name)
                    .and_then(|r| r.description.clone()),
                progress: all.iter().filter(|p| &p.rule == name).cloned().collect(),
            })
            .collect();
        let mention = match &event.what {
            crate::approvals::Lifecycle::Escalated { to } => reviewers
                .all()
                .iter()
                .filter(|r| Reviewers::eligible(r, to))
                .filter(|r| crate::approvals::may_vote_at(r, &approval, event.time).is_ok())
                .cloned()
                .collect(),
            _ => reviewers
                .all()
                .iter()
                .filter(|r| crate::approvals::may_vote_at(r, &approval, event.time).is_ok())
                .cloned()
                .collect(),
        };
        let mut recent: Vec<Recent> = Vec::new();
        if cfg.channels.recent > 0 {
            for rule in &approval.rules {
                for a in store
                    .recent_decisions(&approval.agent, rule, &approval.id, cfg.channels.recent)
                    .await?
                {
                    if recent.iter().any(|r| r.id == a.id) {
                        continue;
                    }
                    recent.push(Recent {
                        status: a.status.as_str().to_string(),
                        by: a.decided_by.clone(),
                        reason: a.reason.clone(),
                        when: a.decided,
                        id: a.id,
                    });
                }
            }
            recent.sort_by_key(|r| std::cmp::Reverse(r.when));
            recent.truncate(cfg.channels.recent);
        }
        // Approvals older than identities did not record how the agent authenticated.
        let auth = if approval.requester.auth.is_empty() {
            match cfg.agents.iter().find(|a| a.id == approval.agent) {
                Some(a) if a.key_digest.is_some() => "key",
                Some(a) if a.jwt.is_some() => "jwt",
                Some(a) if a.mtls.is_some() => "mtls",
                _ => "none",
            }
            .to_string()
        } else {
            approval.requester.auth.clone()
        };
        let link = cfg
            .admin
            .as_ref()
            .and_then(|a| a.public_url.as_deref())
            .map(|u| format!("{}/approvals/{}", u.trim_end_matches('/'), approval.id));
        let (path, query) = match approval.url.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (approval.url.as_str(), None),
        };
        let full_url = cfg
            .upstreams
            .iter()
            .find(|u| u.name == approval.upstream)
            .and_then(|u| crate::upstream::headers::upstream_uri(u, path, query).ok())
            .map(|u| u.to_string())
            .unwrap_or_else(|| match &approval.host {
                Some(h) => format!("{h}{}", approval.url),
                None => approval.url.clone(),
            });
        Ok(Notice {
            full_url,
            event,
            approval,
            auth,
            rules,
            mention,
            recent,
            link,
        })
    }

    /// The agent as reviewers read it: `deploy-bot`, or `deploy-bot acting for
    /// alice@example.com` when its token names a person.
    pub fn agent_line(&self) -> String {
        match &self.approval.requester.acting_for {
            Some(p) => format!("{} acting for {p}", self.approval.agent),
            None => self.approval.agent.clone(),
        }
    }

    /// Whether the approval is still waiting for votes.
    pub fn undecided(&self) -> bool {
        self.approval.status == Status::Pending
    }

    /// The full URL the request goes to when approved: the upstream's scheme, host
    /// and base path with the normalized path and query.
    pub fn url(&self) -> String {
        self.full_url.clone()
    }
}
