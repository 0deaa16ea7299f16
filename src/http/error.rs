//! Every answer airlock gives on its own behalf: one stable JSON `error` code and one
//! HTTP status per kind, decided here and nowhere else.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use serde::Serialize;

/// The stable error codes of SPEC "Request path" step 6 and the admin API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Code {
    NoRoute,
    Unauthenticated,
    BadPath,
    BadRequest,
    DeniedByRule,
    ApprovalRequired,
    Denied,
    ApprovalExpired,
    BodyTooLarge,
    BodyTimeout,
    TooManyHeld,
    UpstreamUnavailable,
    UpstreamTimeout,
    StoreUnavailable,
    ShuttingDown,
    /// An identical request went out on its approval, and whether the upstream received
    /// it is unknown: it is not sent again.
    OutcomeUnknown,
    /// Bodies held or being inspected fill `limits.max_held_bytes`: nothing was read or
    /// forwarded; retry later.
    Busy,
    // Admin API.
    NotFound,
    Forbidden,
    NotEligible,
    SelfApproval,
    AgentCredential,
    AlreadyDecided,
    AlreadyVoted,
    ReasonRequired,
    MethodNotAllowed,
    /// A reload found errors in the new config or rules; the old set stays in force.
    ReloadFailed,
}

impl Code {
    pub fn status(self) -> StatusCode {
        use Code::*;
        match self {
            NoRoute | NotFound => StatusCode::NOT_FOUND,
            Unauthenticated => StatusCode::UNAUTHORIZED,
            BadPath | BadRequest | ReasonRequired => StatusCode::BAD_REQUEST,
            DeniedByRule | ApprovalRequired | Denied | ApprovalExpired | Forbidden
            | NotEligible | SelfApproval | AgentCredential => StatusCode::FORBIDDEN,
            BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            TooManyHeld => StatusCode::TOO_MANY_REQUESTS,
            UpstreamUnavailable => StatusCode::BAD_GATEWAY,
            UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            StoreUnavailable | ShuttingDown | Busy => StatusCode::SERVICE_UNAVAILABLE,
            AlreadyDecided | AlreadyVoted | OutcomeUnknown => StatusCode::CONFLICT,
            MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ReloadFailed => StatusCode::UNPROCESSABLE_ENTITY,
        }
    }

    pub fn as_str(self) -> &'static str {
        use Code::*;
        match self {
            NoRoute => "no_route",
            Unauthenticated => "unauthenticated",
            BadPath => "bad_path",
            BadRequest => "bad_request",
            DeniedByRule => "denied_by_rule",
            ApprovalRequired => "approval_required",
            Denied => "denied",
            ApprovalExpired => "approval_expired",
            BodyTooLarge => "body_too_large",
            BodyTimeout => "body_timeout",
            TooManyHeld => "too_many_held",
            UpstreamUnavailable => "upstream_unavailable",
            UpstreamTimeout => "upstream_timeout",
            StoreUnavailable => "store_unavailable",
            ShuttingDown => "shutting_down",
            OutcomeUnknown => "outcome_unknown",
            Busy => "busy",
            NotFound => "not_found",
            Forbidden => "forbidden",
            NotEligible => "not_eligible",
            SelfApproval => "self_approval",
            AgentCredential => "agent_credential",
            AlreadyDecided => "already_decided",
            AlreadyVoted => "already_voted",
            ReasonRequired => "reason_required",
            MethodNotAllowed => "method_not_allowed",
            ReloadFailed => "reload_failed",
        }
    }
}

/// An answer from airlock itself.
#[derive(Debug, Clone, Serialize)]
pub struct AirlockError {
    pub error: Code,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approval_id: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rule: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl AirlockError {
    pub fn new(error: Code, message: impl Into<String>) -> AirlockError {
        AirlockError {
            error,
            message: message.into(),
            approval_id: None,
            rule: Vec::new(),
            reason: None,
        }
    }

    pub fn with_rules(mut self, rules: Vec<String>) -> Self {
        self.rule = rules;
        self
    }

    pub fn with_approval(mut self, id: impl Into<String>) -> Self {
        self.approval_id = Some(id.into());
        self
    }

    pub fn with_reason(mut self, reason: Option<String>) -> Self {
        self.reason = reason;
        self
    }

    pub fn status(&self) -> StatusCode {
        self.error.status()
    }

    /// The JSON response, with `X-Airlock-Approval-Id` when there is an approval.
    pub fn into_response(self) -> Response<super::body::ProxyBody> {
        self.into_response_with(super::body::full)
    }

    /// The JSON response with any body type.
    pub fn into_response_with<B>(self, body: impl FnOnce(Bytes) -> B) -> Response<B> {
        let json =
            serde_json::to_vec(&self).unwrap_or_else(|_| b"{\"error\":\"internal\"}".to_vec());
        let mut resp = Response::new(body(Bytes::from(json)));
        *resp.status_mut() = self.status();
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Some(id) = &self.approval_id {
            if let Ok(v) = HeaderValue::from_str(id) {
                h.insert("x-airlock-approval-id", v);
            }
        }
        resp
    }
}

impl std::fmt::Display for AirlockError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.error.as_str(), self.message)
    }
}

impl std::error::Error for AirlockError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_shape() {
        let e = AirlockError::new(Code::Denied, "no")
            .with_approval("ap_1")
            .with_rules(vec!["r".into()])
            .with_reason(Some("use staging".into()));
        let resp: Response<Bytes> = e.into_response_with(|b| b);
        assert_eq!(resp.status(), 403);
        assert_eq!(resp.headers()["x-airlock-approval-id"], "ap_1");
        let v: serde_json::Value = serde_json::from_slice(resp.body()).unwrap();
        assert_eq!(v["error"], "denied");
        assert_eq!(v["reason"], "use staging");
        assert_eq!(v["rule"][0], "r");
    }
}
