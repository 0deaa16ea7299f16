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

/// How a held request is approved; set by the first matching approve rule. Stored with
/// each approval, so fields added later carry `#[serde(default)]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalPolicy {
    /// Reviewer ids and `group:NAME` entries.
    pub approvers: Vec<String>,
    /// Distinct approvers needed.
    pub quorum: u32,
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
