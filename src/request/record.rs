//! The record of one request: what each phase learned, read once at the end by the
//! exit hook (audit event, metrics, access log line). Phases only fill it in.

use crate::rules::Verdict;
use std::time::Instant;

/// What is known about one request so far.
#[derive(Debug, Clone)]
pub struct RequestRecord {
    pub request_id: String,
    pub started: Instant,
    /// The request line's method.
    pub method: String,
    /// The method the request acts as, when an override names another one.
    pub acting_as: Option<String>,
    pub host: Option<String>,
    /// Index of the upstream in the config, once routed.
    pub upstream: Option<usize>,
    /// The upstream's name, once routed.
    pub upstream_name: Option<String>,
    /// The URL as reviewers and the log see it: normalized path (prefix removed once
    /// routed), credential-like query values redacted.
    pub url: Option<String>,
    pub agent: Option<String>,
    /// How the agent authenticated (`key`, `jwt`, `mtls`, `none`), once identified.
    pub auth: Option<&'static str>,
    /// The person the agent acts for, from its token.
    pub acting_for: Option<String>,
    /// The client's address.
    pub client: Option<std::net::IpAddr>,
    pub verdict: Option<Verdict>,
    pub rules: Vec<String>,
    /// Why body conditions were taken as matching without inspection.
    pub fail_closed: Option<&'static str>,
    pub approval_id: Option<String>,
    pub body_sha256: Option<String>,
}

impl RequestRecord {
    /// A fresh record for a request that just arrived.
    pub fn new(request_id: String, method: &str) -> RequestRecord {
        RequestRecord {
            request_id,
            started: Instant::now(),
            method: method.to_string(),
            acting_as: None,
            host: None,
            upstream: None,
            upstream_name: None,
            url: None,
            agent: None,
            auth: None,
            acting_for: None,
            client: None,
            verdict: None,
            rules: Vec::new(),
            fail_closed: None,
            approval_id: None,
            body_sha256: None,
        }
    }

    /// The method as reviewers see it: `DELETE`, or `POST as DELETE` with an override.
    pub fn method_label(&self) -> std::borrow::Cow<'_, str> {
        match &self.acting_as {
            Some(m) => format!("{} as {m}", self.method).into(),
            None => self.method.as_str().into(),
        }
    }

    /// The method the rules weighed.
    pub fn acting_method(&self) -> &str {
        self.acting_as.as_deref().unwrap_or(&self.method)
    }
}

/// The URL as reviewers and the audit log see it: query values that look like
/// credentials are replaced with `REDACTED` (the digest still binds the real ones).
pub fn shown_url(path: &str, query: Option<&str>, redact: &[String]) -> String {
    with_query(path, crate::http::redact_query(query, redact).as_deref())
}

/// `path?query`, or the path alone.
pub fn with_query(path: &str, query: Option<&str>) -> String {
    match query {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    }
}
