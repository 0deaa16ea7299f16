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
//!
//! A forwarded request's outcome is the whole response's, not just its head's: the
//! upstream's body streams to the agent through a [`Watched`] body, and the outcome
//! is recorded when that body ends (as nginx logs a request when its response is
//! done), with `bytes`, the response body bytes the upstream delivered:
//! - all of it: `passed` / `observed` / `forwarded`;
//! - the upstream failed mid-body (reset, closed early, malformed framing):
//!   `upstream_reset`, the cause in `reason`;
//! - the upstream sent nothing for its `idle_timeout`: `upstream_timeout`; the body
//!   is cut, so the agent sees an incomplete response (a connection closed short of
//!   its `Content-Length` or its last chunk), never a complete-looking one;
//! - the agent hung up before the body was delivered: `client_gone` (audited as the
//!   `client_gone` of a request still in its phases is: at `held` only when the
//!   request was not a plain pass-through), or `cut_at_shutdown` when a shutdown's
//!   grace ran out. Its status is the upstream's (the head did reach the agent),
//!   unlike the 499 of an agent that left before any answer.
//!
//! Those three failures carry the upstream's status (200 …), telling them apart from
//! the `upstream_timeout` (504) of an upstream that sent no head at all.
//!
//! An approved request is the exception to "one event": its `forwarded` event (with
//! the upstream's status) is durable before the agent sees the response head, since
//! the upstream has acted by then. If the body then fails, one follow-up event
//! records it — `upstream_reset`, `upstream_timeout` or `client_gone`, naming the
//! approval, with `bytes` — so a reviewer can tell the agent may not have the
//! upstream's whole answer. The access log line and the outcome metric say how the
//! request ended (one each).

use super::ProxyError;
use crate::approvals::forwarding::Sent;
use crate::audit::{AuditEvent, AuditLog};
use crate::http::body::{boxed, BodyEnd, ProxyBody, Watched};
use crate::metrics::Metrics;
use crate::request::{Refusal, RequestRecord};
use crate::state::{Airlock, Snapshot};
use crate::store::Approval;
use crate::upstream::{UpstreamError, UpstreamErrorKind};
use http::{HeaderValue, Response};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

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

/// The idle timeout of a response body whose upstream is not known (never expected:
/// a forwarded request is routed).
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Records the outcome of a request and returns its response. For a response from
/// the upstream, the outcome is recorded when its body ends (see the module docs).
pub async fn finish(
    airlock: &Airlock,
    snap: &Snapshot,
    record: &RequestRecord,
    result: PhasesResult,
) -> Response<ProxyBody> {
    match result {
        Ok((response, passage)) => streamed(airlock, snap, record, response, passage).await,
        Err((e, passage)) => answered(airlock, snap, record, e, passage).await,
    }
}

/// The request's verdict, counted per upstream.
fn count_verdict(snap: &Snapshot, record: &RequestRecord, unauthenticated: bool) {
    if let Some(i) = record.upstream {
        if let Some(v) = record.verdict {
            snap.metrics[i].verdict(v).inc();
        }
        if unauthenticated {
            snap.metrics[i].unauthenticated.inc();
        }
    }
}

/// A request airlock answered itself (refused it, or the upstream gave no response).
async fn answered(
    airlock: &Airlock,
    snap: &Snapshot,
    record: &RequestRecord,
    e: ProxyError,
    passage: Option<Passage>,
) -> Response<ProxyBody> {
    // The approval the request concerns: the one it went out on, the one its failure
    // names, or the one it was holding on.
    let approval_id: Option<String> = match &passage {
        Some(Passage::Approved(a)) => Some(a.id.clone()),
        _ => e
            .approval()
            .map(|a| a.id.clone())
            .or_else(|| record.approval_id.clone()),
    };
    let outcome = match (&passage, &e) {
        // The upstream was never reached (refused, no connection, TLS handshake): the
        // request was decided to go, but nothing of it was sent.
        (Some(_), ProxyError::Upstream(u)) if !u.kind.may_have_sent() => "not_sent",
        // Sent (or maybe sent), and no answer: the upstream may have acted.
        (Some(_), ProxyError::Upstream(u)) if u.kind == UpstreamErrorKind::Timeout => {
            "upstream_timeout"
        }
        (Some(_), ProxyError::Upstream(_)) => "upstream_reset",
        (Some(p), _) => p.outcome(),
        (None, e) if e.approval().is_some() => "not_forwarded",
        (None, ProxyError::DigestMismatch { .. }) => "not_forwarded",
        (None, e) => e.code().as_str(),
    };
    let reason = reason_for(&e);
    // How far an approved request got: settles its claim.
    let sent = match &e {
        ProxyError::Upstream(u) => Sent::of(Some(u), true),
        _ => Sent::of(None, true),
    };
    let unauthenticated = matches!(e, ProxyError::Refused(Refusal::Unauthenticated(_)));
    let mut answer = e.answer(&record.rules);
    // Whenever an approval is known, the agent learns which one it concerns.
    if answer.approval_id.is_none() {
        if let Some(id) = &approval_id {
            answer = answer.with_approval(id.clone());
        }
    }
    let mut response = answer.into_response();
    // A response to HEAD carries no body (HTTP/2 clients reset a stream that does).
    if record.method.eq_ignore_ascii_case("HEAD") {
        *response.body_mut() = crate::http::body::full(bytes::Bytes::new());
    }
    let status = response.status().as_u16();

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
    count_verdict(snap, record, unauthenticated);
    airlock.metrics.outcome(outcome);
    access_line(
        record,
        End {
            outcome,
            status,
            approval: approval_id.as_deref(),
            reason: reason.as_deref().unwrap_or(""),
            bytes: http_body::Body::size_hint(response.body())
                .exact()
                .unwrap_or(0),
        },
    );
    response
}

/// A response from the upstream: its body is watched, and the outcome recorded when
/// it ends. An approved request's `forwarded` event is durable first.
async fn streamed(
    airlock: &Airlock,
    snap: &Snapshot,
    record: &RequestRecord,
    response: Response<ProxyBody>,
    passage: Passage,
) -> Response<ProxyBody> {
    count_verdict(snap, record, false);
    let status = response.status().as_u16();
    let approval_id = match &passage {
        Passage::Approved(a) => Some(a.id.clone()),
        _ => record.approval_id.clone(),
    };
    let (mut parts, body) = response.into_parts();
    if let Passage::Approved(a) = &passage {
        let mut ev = outcome_event(record, "forwarded", approval_id.clone());
        ev.status = Some(status);
        ev.reason = record.fail_closed.map(str::to_string);
        // Durable, in one transaction with the settling of its claim.
        airlock.approvals.settle(&a.id, Sent::Answered, ev).await;
        if let Ok(v) = HeaderValue::from_str(&a.id) {
            parts.headers.insert("x-airlock-approval-id", v);
        }
    }
    let upstream = record.upstream.and_then(|i| snap.cfg().upstreams.get(i));
    let idle = upstream.map_or(IDLE_TIMEOUT, |u| u.idle_timeout);
    let ending = Ending {
        audit: airlock.audit.clone(),
        metrics: airlock.metrics.clone(),
        shutdown: airlock.shutdown.clone(),
        audit_all: snap.audits_everything(),
        record: record.clone(),
        passage,
        approval_id,
        status,
    };
    let body = Watched::new(
        body,
        idle,
        Box::new(move |how, bytes| ending.end(how, bytes)),
    );
    Response::from_parts(parts, boxed(body))
}

/// What records a streamed request's outcome when its response body ends.
struct Ending {
    audit: AuditLog,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    audit_all: bool,
    record: RequestRecord,
    passage: Passage,
    approval_id: Option<String>,
    /// The upstream's status, which the agent got.
    status: u16,
}

impl Ending {
    fn end(self, how: BodyEnd<'_>, bytes: u64) {
        let record = &self.record;
        let (outcome, reason) = match how {
            BodyEnd::Complete => (self.passage.outcome(), record.fail_closed.map(str::to_string)),
            BodyEnd::Failed(e) => {
                let u = UpstreamError::classify(record.upstream_name.as_deref().unwrap_or("-"), e);
                let why = format!(
                    "{}: {} (after {bytes} bytes of the response body)",
                    u.kind.as_str(),
                    u.cause
                );
                ("upstream_reset", Some(why))
            }
            BodyEnd::Stalled(idle) => (
                "upstream_timeout",
                Some(format!(
                    "timeout: the upstream sent nothing for {idle:?} (idle_timeout) after {bytes} bytes of the response body"
                )),
            ),
            BodyEnd::Abandoned if self.shutdown.is_cancelled() => (
                "cut_at_shutdown",
                Some(format!(
                    "airlock shut down after {bytes} bytes of the response body (limits.shutdown_grace)"
                )),
            ),
            BodyEnd::Abandoned => (
                "client_gone",
                Some(format!(
                    "the agent went away after {bytes} bytes of the response body"
                )),
            ),
        };
        let audited = match (&self.passage, outcome) {
            // Durable before the head went out.
            (Passage::Approved(_), "forwarded") => false,
            (Passage::Passed, "passed" | "client_gone") => self.audit_all,
            _ => true,
        };
        if audited {
            let mut ev = outcome_event(record, outcome, self.approval_id.clone());
            ev.status = Some(self.status);
            ev.bytes = Some(bytes);
            ev.reason = reason.clone();
            if self.passage == Passage::Observed {
                ev.decision = record.verdict.map(|v| v.as_str().to_string());
            }
            self.audit.record(ev);
        }
        self.metrics.outcome(outcome);
        access_line(
            record,
            End {
                outcome,
                status: self.status,
                approval: self.approval_id.as_deref(),
                reason: reason.as_deref().unwrap_or(""),
                bytes,
            },
        );
    }
}

/// An outcome event carrying what the record knows of the request.
fn outcome_event(record: &RequestRecord, outcome: &str, approval_id: Option<String>) -> AuditEvent {
    let mut ev = AuditEvent::new(outcome);
    ev.request_id = Some(record.request_id.clone());
    ev.approval_id = approval_id;
    ev.agent = record.agent.clone();
    ev.auth = record.auth.map(str::to_string);
    ev.acting_for.clone_from(&record.acting_for);
    ev.client = record.client.map(|c| c.to_string());
    ev.rules = record.rules.clone();
    ev.method = Some(record.method_label().into_owned());
    ev.upstream = record.upstream_name.clone();
    ev.host = record.host.clone();
    ev.path = record.url.clone();
    ev.body_sha256 = record.body_sha256.clone();
    ev
}

/// How a request ended, as its access log line tells it.
struct End<'a> {
    outcome: &'a str,
    status: u16,
    approval: Option<&'a str>,
    reason: &'a str,
    /// Response body bytes sent to the agent (the upstream's, or airlock's answer).
    bytes: u64,
}

/// The one access log line of a request, written when it ends (for a forwarded
/// request, when its response body does); `latency_ms` is the whole time.
fn access_line(record: &RequestRecord, end: End<'_>) {
    let latency_ms = (record.started.elapsed().as_secs_f64() * 1_000_000.0).round() / 1000.0;
    let method = record.method_label();
    let path = record.url.as_deref().unwrap_or("-");
    let status = end.status;
    tracing::info!(
        target: "airlock::access",
        request = %record.request_id,
        method = %method,
        upstream = record.upstream_name.as_deref().unwrap_or("-"),
        path,
        agent = record.agent.as_deref().unwrap_or("-"),
        verdict = record.verdict.map_or("-", |v| v.as_str()),
        rules = %record.rules.join(","),
        outcome = end.outcome,
        status,
        bytes = end.bytes,
        latency_ms,
        approval = end.approval.unwrap_or("-"),
        reason = end.reason,
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
        access_line(
            record,
            End {
                outcome,
                status: 499,
                approval: record.approval_id.as_deref(),
                reason: why,
                bytes: 0,
            },
        );
    }
}
