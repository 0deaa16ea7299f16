//! Every way a proxied request can fail, and — in this one place — the status and
//! stable JSON `error` code the agent is answered with for each.

use crate::approvals::{HoldError, LimitReached};
use crate::http::body::BodyError;
use crate::http::MethodError;
use crate::http::{AirlockError, Code};
use crate::request::{DecideError, Refusal};
use crate::store::Approval;
use crate::upstream::{UpstreamError, UpstreamErrorKind};

/// Why a request got an answer from airlock instead of from its upstream.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// Refused before the rules saw it (host, path, route, identity, method).
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// The body that had to be read could not be.
    #[error(transparent)]
    Body(#[from] BodyError),
    /// A deny rule matched.
    #[error("denied by rule {}", .rules.join(", "))]
    DeniedByRule {
        rules: Vec<String>,
        fail_closed: Option<&'static str>,
    },
    /// An approve rule matched but no approval policy applies (never expected).
    #[error("no approval policy applies")]
    NoPolicy { rules: Vec<String> },
    /// No held slot is free.
    #[error(transparent)]
    TooManyHeld(#[from] LimitReached),
    /// A request to be held carries more than `limits.max_body`.
    #[error("a request held for approval may carry at most {limit} bytes")]
    BodyTooLarge { limit: usize },
    /// The hold could not be recorded (store or audit log unavailable).
    #[error(transparent)]
    Hold(#[from] HoldError),
    /// A reviewer denied the request.
    #[error("denied by {}", .0.decided_by.as_deref().unwrap_or("a reviewer"))]
    Denied(Box<Approval>),
    /// Nobody decided in time.
    #[error("nobody approved the request in time")]
    Expired(Box<Approval>),
    /// Approved, but an identical request already used the approval.
    #[error("this approval was already used by an identical request")]
    AlreadyUsed(Box<Approval>),
    /// An identical request was forwarded on this approval and its outcome is unknown.
    #[error("an identical request was forwarded on this approval and airlock cannot tell whether the upstream received it")]
    OutcomeUnknown(Box<Approval>),
    /// airlock is shutting down while the request was held.
    #[error("airlock is shutting down")]
    ShuttingDown(Box<Approval>),
    /// The request changed between approval and forwarding (never expected).
    #[error("the request does not match the approved request")]
    DigestMismatch { approval_id: String },
    /// The upstream URL could not be built from the routed path.
    #[error("cannot build the upstream url: {0}")]
    UpstreamUri(#[from] http::uri::InvalidUri),
    /// The upstream gave no response.
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
}

impl From<DecideError> for ProxyError {
    fn from(e: DecideError) -> ProxyError {
        match e {
            DecideError::Body(e) => ProxyError::Body(e),
            DecideError::Method(e) => ProxyError::Refused(Refusal::BadMethod(e)),
        }
    }
}

impl ProxyError {
    /// The stable code of this failure.
    pub fn code(&self) -> Code {
        match self {
            ProxyError::Refused(r) => match r {
                Refusal::BadMethod(MethodError::NotAllowed(_)) => Code::MethodNotAllowed,
                Refusal::BadHost(_)
                | Refusal::BadMethod(_)
                | Refusal::RewriteHeader(_)
                | Refusal::RepeatedHeader(_) => Code::BadRequest,
                Refusal::BadPath(_) => Code::BadPath,
                Refusal::NoRoute(_) => Code::NoRoute,
                Refusal::Unauthenticated(_) => Code::Unauthenticated,
            },
            ProxyError::Body(BodyError::Timeout(_)) => Code::BodyTimeout,
            ProxyError::Body(BodyError::Read(_)) => Code::BadRequest,
            ProxyError::Body(BodyError::Busy(_)) => Code::Busy,
            ProxyError::DeniedByRule { .. } | ProxyError::NoPolicy { .. } => Code::DeniedByRule,
            ProxyError::TooManyHeld(_) => Code::TooManyHeld,
            ProxyError::BodyTooLarge { .. } => Code::BodyTooLarge,
            ProxyError::Hold(HoldError::Limit(_)) => Code::TooManyHeld,
            ProxyError::Hold(_) => Code::StoreUnavailable,
            ProxyError::Denied(_)
            | ProxyError::AlreadyUsed(_)
            | ProxyError::DigestMismatch { .. } => Code::Denied,
            ProxyError::Expired(_) => Code::ApprovalExpired,
            ProxyError::OutcomeUnknown(_) => Code::OutcomeUnknown,
            ProxyError::ShuttingDown(_) => Code::ShuttingDown,
            ProxyError::UpstreamUri(_) => Code::BadRequest,
            ProxyError::Upstream(e) if e.kind == UpstreamErrorKind::Timeout => {
                Code::UpstreamTimeout
            }
            ProxyError::Upstream(_) => Code::UpstreamUnavailable,
        }
    }

    /// The approval this failure concerns, if any.
    pub fn approval(&self) -> Option<&Approval> {
        match self {
            ProxyError::Denied(a)
            | ProxyError::Expired(a)
            | ProxyError::AlreadyUsed(a)
            | ProxyError::OutcomeUnknown(a)
            | ProxyError::ShuttingDown(a) => Some(a),
            _ => None,
        }
    }

    /// What the agent is told.
    pub fn answer(&self, rules: &[String]) -> AirlockError {
        let code = self.code();
        let message = match self {
            ProxyError::Refused(Refusal::Unauthenticated(e)) => {
                format!("{e}: send your airlock key as Authorization: Bearer <key>")
            }
            ProxyError::DeniedByRule {
                fail_closed: Some(why),
                ..
            } => format!("{self} ({why}, so the rule applies)"),
            ProxyError::NoPolicy { .. } => "no approval policy applies; refusing".into(),
            ProxyError::TooManyHeld(e) => format!("{e}; try again later"),
            ProxyError::Hold(_) => {
                "the approval store is unavailable; the request was not forwarded".into()
            }
            ProxyError::AlreadyUsed(_) => format!(
                "{self}; send the request again to ask anew"
            ),
            ProxyError::OutcomeUnknown(_) => format!(
                "{self}; it is not sent again on this approval: check the upstream (once approval.reuse has passed, the identical request is held for a new approval)"
            ),
            ProxyError::ShuttingDown(_) => {
                "airlock is shutting down; the approval stays pending, retry the identical request later".into()
            }
            ProxyError::Upstream(e) if e.kind == UpstreamErrorKind::Timeout => {
                format!("upstream {} did not answer in time", e.upstream)
            }
            ProxyError::Upstream(e) => format!(
                "upstream {} is unavailable ({})",
                e.upstream,
                e.kind.as_str()
            ),
            other => other.to_string(),
        };
        let mut answer = AirlockError::new(code, message);
        // Rule names go to the agent only where a rule is why it was refused (not on an
        // upstream failure, where they would tell what observe mode watches).
        let rule_caused = matches!(
            self,
            ProxyError::DeniedByRule { .. }
                | ProxyError::NoPolicy { .. }
                | ProxyError::TooManyHeld(_)
                | ProxyError::BodyTooLarge { .. }
                | ProxyError::Hold(_)
        );
        if rule_caused && !rules.is_empty() {
            answer = answer.with_rules(rules.to_vec());
        }
        match self {
            ProxyError::DigestMismatch { approval_id } => answer.with_approval(approval_id),
            ProxyError::Denied(a) => answer
                .with_approval(a.id.clone())
                .with_rules(a.rules.clone())
                .with_reason(a.reason.clone()),
            _ => match self.approval() {
                Some(a) => answer
                    .with_approval(a.id.clone())
                    .with_rules(a.rules.clone()),
                None => answer,
            },
        }
    }
}
