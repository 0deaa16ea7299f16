//! Raw rule files as written in `rules/*.yaml`: serde shapes, unknown keys rejected.
//! Nothing here is checked beyond its YAML shape; [`super::compile`] does that.

use serde::Deserialize;
use serde_yaml::Value;
use std::collections::BTreeMap;

/// One rule file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRuleFile {
    /// Its rules, in order.
    #[serde(default)]
    pub rules: Vec<RawRule>,
}

/// One rule as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    /// Unique across all rule files.
    pub name: String,
    /// Shown to reviewers.
    pub description: Option<String>,
    /// `when:` left out, empty (`{}`) or null all mean no conditions.
    #[serde(default, deserialize_with = "null_as_default")]
    pub when: RawWhen,
    /// `allow`, `deny` or `approve`.
    pub then: String,
    /// Required for `then: approve`.
    pub approval: Option<RawApproval>,
    /// Cases run by `airlock rules test`.
    #[serde(default)]
    pub tests: Vec<RawTest>,
}

/// The conditions of a rule; every one written must hold. Values are matchers: a
/// string, `re:…`, or a list of them.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWhen {
    pub upstream: Option<Value>,
    pub method: Option<Value>,
    pub path: Option<Value>,
    #[serde(default)]
    pub headers: BTreeMap<String, Value>,
    #[serde(default)]
    pub query: BTreeMap<String, Value>,
    #[serde(default)]
    pub json: BTreeMap<String, Value>,
    #[serde(default)]
    pub form: BTreeMap<String, Value>,
    pub agent: Option<Value>,
}

impl RawWhen {
    /// Whether no condition is written: such a rule matches every request.
    pub fn is_empty(&self) -> bool {
        self.upstream.is_none()
            && self.method.is_none()
            && self.path.is_none()
            && self.headers.is_empty()
            && self.query.is_empty()
            && self.json.is_empty()
            && self.form.is_empty()
            && self.agent.is_none()
    }
}

/// Reads a YAML null (`when:` with nothing after it) as the default value.
fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// The `approval:` block of an approve rule.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApproval {
    #[serde(default)]
    pub approvers: Vec<RawApprover>,
    pub quorum: Option<u32>,
    pub timeout: Option<String>,
    pub reuse: Option<String>,
    #[serde(default)]
    pub channels: Vec<String>,
    #[serde(default)]
    pub show: Vec<String>,
    /// Whether a vote must give a reason.
    #[serde(default)]
    pub require_reason: bool,
    /// Re-notify while undecided, this often (`10m`).
    pub remind: Option<String>,
    /// `{after: 30m, to: [group:sre-leads]}`.
    pub escalate: Option<RawEscalate>,
}

/// `approval.escalate`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEscalate {
    pub after: String,
    pub to: Vec<String>,
}

/// One entry of `approvers:`: a reviewer id or `group:NAME` (all of them one
/// requirement, with the rule's `quorum`), or a requirement of its own
/// (`{group: sre, quorum: 2}`, `{reviewer: bob@example.com}`): every one must be met.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RawApprover {
    Name(String),
    Requirement(RawRequirement),
}

/// `{group: NAME, quorum: N}` or `{reviewer: ID, quorum: N}` in `approvers:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRequirement {
    pub group: Option<String>,
    pub reviewer: Option<String>,
    pub quorum: Option<u32>,
}

/// One `tests:` case.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTest {
    pub request: RawTestRequest,
    pub expect: String,
    /// Optional: the rule names that must match (in any order).
    pub rules: Option<Vec<String>>,
}

/// The request of a `tests:` case, with the URL the agent calls.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTestRequest {
    pub method: String,
    pub url: String,
    pub agent: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Raw body text.
    pub body: Option<String>,
    /// A JSON body given as YAML; sent with `content-type: application/json`.
    pub json: Option<Value>,
    /// A form body; sent as `application/x-www-form-urlencoded`.
    pub form: Option<BTreeMap<String, String>>,
}
