//! The one exit hook every request ends in, whatever path it took: it records the
//! outcome exactly once — the audit event (at the configured level), the metrics and
//! the access log line — and turns a failure into airlock's JSON answer.
//!
//! Outcome names, also the audit event names: `passed` (allowed and forwarded),
//! `observed` (observe mode forwarded what enforce would hold or deny), `forwarded`
//! (forwarded on an approval), `not_sent` (decided to go, but the upstream could not
//! be reached: refused, no connection, TLS handshake), `upstream_reset` /
//! `upstream_timeout` (sent, or maybe sent, and no response: the upstream may have
//! acted; an approval forwarded so is `outcome_unknown`), `not_forwarded` (held, then
//! denied, expired, already used, or interrupted by shutdown), or airlock's error code for a refusal
//! (`denied_by_rule`, `unauthenticated`, `bad_path`, `bad_request`, `no_route`,
//! `body_too_large`, `body_timeout`, `too_many_held`, `store_unavailable`, …).
//! At `audit.level: held` every outcome but `passed` and `no_route` is audited; at
//! `all`, every one. An approved request's outcome is durable before the agent sees it.

use super::ProxyError;
use crate::approvals::forwarding::Sent;
use crate::audit::AuditEvent;
use crate::http::body::ProxyBody;
use crate::request::{Refusal, RequestRecord};
use crate::state::{Airlock, Snapshot};
use crate::store::Approval;
use crate::upstream::UpstreamErrorKind;
use http::{HeaderValue, Response};

/// How a request went upstream.
#[derive(Debug, Clone, PartialEq)]
pub enum Passage {
    /// Allowed by the rules.
    Passed,
    /// Observe mode: the rules would have held or denied it.
    Observed,
    /// On this approval.
    Approved(Box<Approval>),
}

impl Passage {
    fn outcome(&self) -> &'static str {
        match self {
            Passage::Passed => "passed",
            Passage::Observed => "observed",
            Passage::Approved(_) => "forwarded",
        }
    }
}

/// What a request's phases produced: the upstream's response and how it got there,
/// or why airlock answered itself (and how far towards the upstream it had got).
pub type PhasesResult = Result<(Response<ProxyBody>, Passage), (ProxyError, Option<Passage>)>;

/// Records the outcome of a request and returns its response.
pub async fn finish(
    airlock: &Airlock,
    snap: &Snapshot,
    record: &RequestRecord,
    result: PhasesResult,
) -> Response<ProxyBody> {
    let (answered, passage) = match result {
        Ok((r, p)) => (Ok(r), Some(p)),
        Err((e, p)) => (Err(e), p),
    };
    let error = answered.as_ref().err();
    // The approval the request concerns: the one it went out on, the one its failure
    // names, or the one it was holding on.
    let approval_id: Option<String> = match &passage {
        Some(Passage::Approved(a)) => Some(a.id.clone()),
        _ => error
            .and_then(ProxyError::approval)
            .map(|a| a.id.clone())
            .or_else(|| record.approval_id.clone()),
    };
    let outcome = match (&passage, error) {
        // The upstream was never reached (refused, no connection, TLS handshake): the
        // request was decided to go, but nothing of it was sent.
        (Some(_), Some(ProxyError::Upstream(u))) if !u.kind.may_have_sent() => "not_sent",
        // Sent (or maybe sent), and no answer: the upstream may have acted.
        (Some(_), Some(ProxyError::Upstream(u))) if u.kind == UpstreamErrorKind::Timeout => {
            "upstream_timeout"
        }
        (Some(_), Some(ProxyError::Upstream(_))) => "upstream_reset",
        (Some(p), _) => p.outcome(),
        (None, Some(e)) if e.approval().is_some() => "not_forwarded",
        (None, Some(ProxyError::DigestMismatch { .. })) => "not_forwarded",
        (None, Some(e)) => e.code().as_str(),
        (None, None) => "passed",
    };
    let reason = error.and_then(reason_for);
    // How far an approved request got: settles its claim.
    let upstream_error = match error {
        Some(ProxyError::Upstream(u)) => Some(u),
        _ => None,
    };
    let sent = Sent::of(upstream_error, error.is_some());
    let unauthenticated = matches!(
        error,
        Some(ProxyError::Refused(Refusal::Unauthenticated(_)))
    );
    let upstream_answered = answered.is_ok();
    let mut response = match answered {
        Ok(r) => r,
        Err(e) => {
            let mut answer = e.answer(&record.rules);
            // Whenever an approval is known, the agent learns which one it concerns.
            if answer.approval_id.is_none() {
                if let Some(id) = &approval_id {
                    answer = answer.with_approval(id.clone());
                }
            }
            answer.into_response()
        }
    };
    let status = response.status().as_u16();

    // The audit event.
    let audited = match outcome {
        "passed" | "no_route" => snap.audits_everything(),
        _ => true,
    };
    if audited {
        let mut ev = outcome_event(record, outcome, approval_id.clone());
        ev.status = Some(status);
        ev.reason = reason
            .clone()
            .or_else(|| record.fail_closed.map(str::to_string));
        if passage == Some(Passage::Observed) {
            ev.decision = record.verdict.map(|v| v.as_str().to_string());
        }
        if let Some(Passage::Approved(a)) = &passage {
            // An approved request's outcome is durable before the agent sees it, in one
            // transaction with the settling of its claim.
            airlock.approvals.settle(&a.id, sent, ev).await;
        } else {
            airlock.audit.record(ev);
        }
    }

    // The metrics.
    if let Some(i) = record.upstream {
        if let Some(v) = record.verdict {
            snap.metrics[i].verdict(v).inc();
        }
        if unauthenticated {
            snap.metrics[i].unauthenticated.inc();
        }
    }
    airlock.metrics.outcome(outcome);

    access_line(
        record,
        outcome,
        status,
        approval_id.as_deref(),
        reason.as_deref().unwrap_or(""),
    );

    if let (Some(Passage::Approved(a)), true) = (&passage, upstream_answered) {
        if let Ok(v) = HeaderValue::from_str(&a.id) {
            response.headers_mut().insert("x-airlock-approval-id", v);
        }
    }
    response
}

/// An outcome event carrying what the record knows of the request.
fn outcome_event(record: &RequestRecord, outcome: &str, approval_id: Option<String>) -> AuditEvent {
    let mut ev = AuditEvent::new(outcome);
    ev.request_id = Some(record.request_id.clone());
    ev.approval_id = approval_id;
    ev.agent = record.agent.clone();
    ev.rules = record.rules.clone();
    ev.method = Some(record.method_label().into_owned());
    ev.upstream = record.upstream_name.clone();
    ev.host = record.host.clone();
    ev.path = record.url.clone();
    ev.body_sha256 = record.body_sha256.clone();
    ev
}

/// The one access log line of a request.
fn access_line(
    record: &RequestRecord,
    outcome: &str,
    status: u16,
    approval_id: Option<&str>,
    reason: &str,
) {
    let latency_ms = (record.started.elapsed().as_secs_f64() * 1_000_000.0).round() / 1000.0;
    let method = record.method_label();
    let path = record.url.as_deref().unwrap_or("-");
    tracing::info!(
        target: "airlock::access",
        request = %record.request_id,
        method = %method,
        upstream = record.upstream_name.as_deref().unwrap_or("-"),
        path,
        agent = record.agent.as_deref().unwrap_or("-"),
        verdict = record.verdict.map_or("-", |v| v.as_str()),
        rules = %record.rules.join(","),
        outcome,
        status,
        latency_ms,
        approval = approval_id.unwrap_or("-"),
        reason,
        "{method} {path} {status}",
    );
}

/// The reason an audit event and the access log give for a failure: for an upstream
/// failure its cause (refused, TLS, reset, timeout) and the error chain.
fn reason_for(e: &ProxyError) -> Option<String> {
    Some(match e {
        ProxyError::Upstream(u) => format!("{}: {}", u.kind.as_str(), u.cause),
        ProxyError::DeniedByRule { fail_closed, .. } => return fail_closed.map(str::to_string),
        ProxyError::Denied(a) => match &a.reason {
            Some(r) => format!("{e}: {r}"),
            None => e.to_string(),
        },
        _ => e.to_string(),
    })
}

/// Records a request whose agent went away before it was answered (the request's
/// future was dropped mid-phase): outcome `client_gone`, status 499 in the access log.
/// Armed until [`Gone::disarm`]; the exit hook proper takes over from there.
pub struct Gone {
    airlock: std::sync::Arc<Airlock>,
    snap: std::sync::Arc<Snapshot>,
    /// The request's record, filled in by the phases.
    pub record: RequestRecord,
    armed: bool,
}

impl Gone {
    /// Arms the guard for one request.
    pub fn new(
        airlock: std::sync::Arc<Airlock>,
        snap: std::sync::Arc<Snapshot>,
        record: RequestRecord,
    ) -> Gone {
        Gone {
            airlock,
            snap,
            record,
            armed: true,
        }
    }

    /// The phases are over: the exit hook records the outcome.
    pub fn disarm(mut self) -> RequestRecord {
        self.armed = false;
        std::mem::replace(&mut self.record, RequestRecord::new(String::new(), ""))
    }
}

impl Drop for Gone {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let record = &self.record;
        // Cut by a shutdown whose grace period ran out, or the agent hung up.
        let cut = self.airlock.shutdown.is_cancelled();
        let (outcome, why) = if cut {
            (
                "cut_at_shutdown",
                "airlock shut down before the request finished (limits.shutdown_grace); the upstream may have acted",
            )
        } else {
            ("client_gone", "the agent went away before it was answered")
        };
        let audited = cut
            || self.snap.audits_everything()
            || record.approval_id.is_some()
            || record
                .verdict
                .is_some_and(|v| v != crate::rules::Verdict::Allow);
        if audited {
            let mut ev = outcome_event(record, outcome, record.approval_id.clone());
            ev.reason = Some(why.into());
            self.airlock.audit.record(ev);
        }
        self.airlock.metrics.outcome(outcome);
        access_line(record, outcome, 499, record.approval_id.as_deref(), why);
    }
}
