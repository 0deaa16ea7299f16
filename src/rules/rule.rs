//! A compiled rule: its conditions, its [`Verdict`] and, for `then: approve`, its
//! [`ApprovalPolicy`]. Plain data; compiling is [`super::compile`]'s job, matching is
//! [`super::decide`]'s.

use super::matcher::StrMatcher;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// What happens to a request. Ordered by strictness: `Deny > Approve > Allow`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Forward the request.
    Allow,
    /// Hold the request until reviewers approve it.
    Approve,
    /// Refuse the request (`403 denied_by_rule`).
    Deny,
}

impl Verdict {
    /// The verdict as written in rule files (`allow`, `approve`, `deny`).
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Approve => "approve",
            Verdict::Deny => "deny",
        }
    }

    /// Parses a verdict as written in rule files.
    pub fn parse(s: &str) -> Option<Verdict> {
        match s {
            "allow" => Some(Verdict::Allow),
            "approve" => Some(Verdict::Approve),
            "deny" => Some(Verdict::Deny),
            _ => None,
        }
    }
}

/// One thing an approval needs: `quorum` distinct approvers among `approvers`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Requirement {
    /// The rule that asks for it.
    pub rule: String,
    /// Reviewer ids and `group:NAME` entries.
    pub approvers: Vec<String>,
    /// Distinct approvers needed.
    pub quorum: u32,
}

/// How a held request is approved. When several approve rules match, their policies
/// are [combined](ApprovalPolicy::combine): every rule's requirements must be met.
/// Stored with each approval, so fields added later carry `#[serde(default)]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalPolicy {
    /// Everyone who may vote: every requirement's approvers.
    pub approvers: Vec<String>,
    /// The largest quorum of any requirement (the fewest distinct approvals that can
    /// approve, when one reviewer meets every requirement).
    pub quorum: u32,
    /// Every one must be met. Empty in policies stored before requirements existed:
    /// then `approvers` and `quorum` are the one requirement.
    #[serde(default)]
    pub requirements: Vec<Requirement>,
    /// How long the request waits before it is denied as expired.
    #[serde(with = "secs")]
    pub timeout: Duration,
    /// How long an approved request may be forwarded on an identical retry.
    #[serde(with = "secs")]
    pub reuse: Duration,
    /// Where reviewers are asked (`api`, `slack`, …).
    pub channels: Vec<String>,
    /// JSON pointers of body fields shown to reviewers.
    pub show: Vec<String>,
    /// Whether a vote must give a reason (`approval.require_reason`).
    #[serde(default)]
    pub require_reason: bool,
    /// Re-notify reviewers this often while undecided (`approval.remind`), in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remind: Option<u64>,
    /// Add approvers once undecided for long enough (`approval.escalate`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escalate: Option<Escalation>,
}

/// `approval.escalate: {after: 30m, to: [group:sre-leads]}`: once an approval has been
/// undecided for `after`, the reviewers `to` names may approve it too (each of its
/// requirements), and they are notified.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Escalation {
    /// Seconds after the request was held.
    pub after: u64,
    /// Reviewer ids and `group:NAME` entries.
    pub to: Vec<String>,
}

impl ApprovalPolicy {
    /// The requirements to meet at `elapsed` after the request was held: once an
    /// escalation is due, its reviewers count for every requirement.
    pub fn requirements_after(&self, elapsed: Duration) -> Vec<Requirement> {
        let mut reqs = self.requirements().into_owned();
        if let Some(e) = &self.escalate {
            if elapsed >= Duration::from_secs(e.after) {
                for r in &mut reqs {
                    for t in &e.to {
                        if !r.approvers.contains(t) {
                            r.approvers.push(t.clone());
                        }
                    }
                }
            }
        }
        reqs
    }

    /// The requirements to meet (one built from `approvers` and `quorum` for a policy
    /// stored before requirements existed).
    pub fn requirements(&self) -> std::borrow::Cow<'_, [Requirement]> {
        if self.requirements.is_empty() {
            std::borrow::Cow::Owned(vec![Requirement {
                rule: String::new(),
                approvers: self.approvers.clone(),
                quorum: self.quorum,
            }])
        } else {
            std::borrow::Cow::Borrowed(&self.requirements)
        }
    }

    /// The policy for a request several approve rules matched: every rule's
    /// requirements, the shortest timeout and reuse, the union of channels and
    /// `show` fields, a reason required if any rule requires one.
    pub fn combine<'a>(
        policies: impl IntoIterator<Item = &'a ApprovalPolicy>,
    ) -> Option<ApprovalPolicy> {
        let mut out: Option<ApprovalPolicy> = None;
        for p in policies {
            let Some(o) = out.as_mut() else {
                out = Some(ApprovalPolicy {
                    requirements: p.requirements().into_owned(),
                    ..p.clone()
                });
                continue;
            };
            for r in p.requirements().iter() {
                if !o.requirements.contains(r) {
                    o.requirements.push(r.clone());
                }
            }
            for a in &p.approvers {
                if !o.approvers.contains(a) {
                    o.approvers.push(a.clone());
                }
            }
            o.quorum = o.quorum.max(p.quorum);
            o.timeout = o.timeout.min(p.timeout);
            o.reuse = o.reuse.min(p.reuse);
            for c in &p.channels {
                if !o.channels.contains(c) {
                    o.channels.push(c.clone());
                }
            }
            for s in &p.show {
                if !o.show.contains(s) {
                    o.show.push(s.clone());
                }
            }
            o.require_reason |= p.require_reason;
            o.remind = match (o.remind, p.remind) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            o.escalate = match (o.escalate.take(), &p.escalate) {
                (Some(mut a), Some(b)) => {
                    a.after = a.after.min(b.after);
                    for t in &b.to {
                        if !a.to.contains(t) {
                            a.to.push(t.clone());
                        }
                    }
                    Some(a)
                }
                (a, b) => a.or_else(|| b.clone()),
            };
        }
        out
    }
}

mod secs {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_secs())
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_secs(u64::deserialize(d)?))
    }
}

/// A compiled rule.
#[derive(Debug, Clone)]
pub struct Rule {
    /// The rule's unique name.
    pub name: String,
    /// What the rule is about, for reviewers.
    pub description: Option<String>,
    /// What a matching request gets.
    pub verdict: Verdict,
    /// `when.upstream`.
    pub upstream: Option<StrMatcher>,
    /// `when.method` (exact values uppercased).
    pub methods: Option<StrMatcher>,
    /// Path patterns as written (their regexes live in the rule set's `RegexSet`).
    pub paths: Vec<String>,
    /// `when.headers`: name and matcher.
    pub headers: Vec<(http::HeaderName, StrMatcher)>,
    /// `when.query`: parameter and matcher.
    pub query: Vec<(String, StrMatcher)>,
    /// `when.json`: JSON pointer and matcher.
    pub json: Vec<(String, StrMatcher)>,
    /// `when.form`: form field and matcher.
    pub form: Vec<(String, StrMatcher)>,
    /// `when.agent`.
    pub agent: Option<StrMatcher>,
    /// The approval policy of an approve rule.
    pub approval: Option<ApprovalPolicy>,
}

impl Rule {
    /// Whether this rule needs the request body to decide.
    pub fn inspects_body(&self) -> bool {
        !self.json.is_empty() || !self.form.is_empty()
    }

    /// Deny and approve rules are strict: ambiguity makes them match (fail closed).
    pub(crate) fn strict(&self) -> bool {
        self.verdict != Verdict::Allow
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(rule: &str, approvers: &[&str], quorum: u32, timeout: u64) -> ApprovalPolicy {
        ApprovalPolicy {
            approvers: approvers.iter().map(|s| s.to_string()).collect(),
            quorum,
            requirements: Vec::new(),
            timeout: Duration::from_secs(timeout),
            reuse: Duration::from_secs(600),
            channels: vec![format!("ch-{rule}")],
            show: vec![format!("/{rule}")],
            require_reason: rule == "b",
            remind: None,
            escalate: None,
        }
    }

    #[test]
    fn several_policies_combine_into_every_requirement() {
        let a = policy("a", &["group:sre"], 1, 900);
        let b = policy("b", &["group:dba", "carol"], 2, 300);
        let c = ApprovalPolicy::combine([&a, &b]).unwrap();
        assert_eq!(c.requirements().len(), 2);
        assert_eq!(c.requirements()[0].approvers, ["group:sre"]);
        assert_eq!(c.requirements()[1].quorum, 2);
        assert_eq!(c.timeout, Duration::from_secs(300), "the shortest timeout");
        assert_eq!(c.channels, ["ch-a", "ch-b"]);
        assert_eq!(c.show, ["/a", "/b"]);
        assert!(c.require_reason);
        assert_eq!(c.approvers, ["group:sre", "group:dba", "carol"]);
        assert!(ApprovalPolicy::combine([]).is_none());
        // One policy alone is itself (with its one requirement spelled out).
        let one = ApprovalPolicy::combine([&a]).unwrap();
        assert_eq!(one.requirements(), a.requirements());
    }

    #[test]
    fn policies_stored_before_require_reason_still_load() {
        let old = r#"{"approvers":["group:sre"],"quorum":1,"timeout":900,"reuse":600,"channels":["api"],"show":[]}"#;
        let p: ApprovalPolicy = serde_json::from_str(old).unwrap();
        assert!(!p.require_reason);
        assert_eq!(p.timeout, Duration::from_secs(900));
        let again: ApprovalPolicy =
            serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
        assert_eq!(again, p);
    }
}
