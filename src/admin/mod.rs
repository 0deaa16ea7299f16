//! The admin listener: the reviewers' REST API, `/metrics`, `/healthz`, `/readyz`.
//!
//! Every API call needs a reviewer token (`Authorization: Bearer …`, matched against
//! the `sha256:` digests in the config). An agent's key is refused here outright, so
//! an agent can never vote, not even for another agent.

use crate::state::Airlock;
use crate::approvals::seconds_left;
use crate::http::{AirlockError, Code};
use crate::http::body::{full, read_limited, ProxyBody, Read};
use crate::store::{Approval, Decision, Status};
use chrono::Utc;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Serves the admin listener until `shutdown`.
pub async fn run(listener: TcpListener, airlock: Arc<Airlock>, shutdown: CancellationToken) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10));
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
            _ = shutdown.cancelled() => return,
        };
        let airlock = airlock.clone();
        let svc = service_fn(move |req| {
            let airlock = airlock.clone();
            async move { Ok::<_, std::convert::Infallible>(handle(airlock, req).await) }
        });
        let conn = builder
            .serve_connection(TokioIo::new(stream), svc)
            .into_owned();
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
}

async fn handle(airlock: Arc<Airlock>, req: Request<Incoming>) -> Response<ProxyBody> {
    match route(&airlock, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

fn json_response(status: StatusCode, v: &Value) -> Response<ProxyBody> {
    let mut r = Response::new(full(serde_json::to_vec(v).unwrap_or_default()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn text_response(
    status: StatusCode,
    content_type: &'static str,
    body: String,
) -> Response<ProxyBody> {
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

async fn route(
    airlock: &Arc<Airlock>,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, AirlockError> {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    match (method.clone(), path.as_str()) {
        (Method::GET, "/healthz") => Ok(json_response(StatusCode::OK, &json!({"status": "ok"}))),
        (Method::GET, "/readyz") => {
            let (rules, store) = (
                airlock.snapshot().policy.rules.rules.len(),
                airlock.store.ping().await,
            );
            match store {
                Ok(()) => Ok(json_response(
                    StatusCode::OK,
                    &json!({"status": "ready", "rules": rules, "store": "ok"}),
                )),
                Err(e) => Ok(json_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &json!({"status": "not_ready", "rules": rules, "store": e.to_string()}),
                )),
            }
        }
        (Method::GET, "/metrics") => Ok(text_response(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            airlock.metrics.render(),
        )),
        (_, p) if p.starts_with("/api/v1/") => api(airlock, req, &method, &path).await,
        _ => Err(AirlockError::new(
            Code::NotFound,
            format!("no such page: {path}"),
        )),
    }
}

/// The reviewer a request's bearer token belongs to.
fn reviewer(
    airlock: &Airlock,
    req: &Request<Incoming>,
) -> Result<crate::config::Reviewer, AirlockError> {
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(s, _)| s.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim())
        .ok_or_else(|| {
            AirlockError::new(
                Code::Unauthenticated,
                "send a reviewer token as Authorization: Bearer <token>",
            )
        })?;
    let snap = airlock.snapshot();
    if snap.policy.agents.is_agent_key(token) {
        return Err(AirlockError::new(
            Code::AgentCredential,
            "agent credentials are not accepted by the admin API",
        ));
    }
    snap.policy
        .reviewers
        .by_token(token)
        .cloned()
        .ok_or_else(|| AirlockError::new(Code::Unauthenticated, "unknown reviewer token"))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VoteBody {
    decision: String,
    reason: Option<String>,
}

async fn api(
    airlock: &Arc<Airlock>,
    req: Request<Incoming>,
    method: &Method,
    path: &str,
) -> Result<Response<ProxyBody>, AirlockError> {
    let who = reviewer(airlock, &req)?;
    let rest = path.trim_start_matches("/api/v1/");
    let segs: Vec<&str> = rest.split('/').collect();
    match (method, segs.as_slice()) {
        (&Method::GET, ["approvals"]) => {
            let status = query_param(req.uri().query(), "status");
            let status = match status.as_deref() {
                None | Some("") | Some("all") => None,
                Some(s) => Some(Status::parse(s).ok_or_else(|| {
                    AirlockError::new(Code::BadRequest, format!("unknown status {s:?}"))
                })?),
            };
            let limit = match query_param(req.uri().query(), "limit") {
                None => 500,
                Some(l) => l
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=10_000).contains(n))
                    .ok_or_else(|| AirlockError::new(Code::BadRequest, "limit must be 1..10000"))?,
            };
            let list = airlock.approvals_list(status, limit).await?;
            let items: Vec<Value> = list.iter().map(|a| approval_json(a, false, &who)).collect();
            Ok(json_response(
                StatusCode::OK,
                &json!({ "approvals": items }),
            ))
        }
        (&Method::GET, ["approvals", id]) => {
            let a = airlock
                .store
                .approval(id)
                .await
                .map_err(|e| AirlockError::new(Code::StoreUnavailable, e.to_string()))?
                .ok_or_else(|| AirlockError::new(Code::NotFound, format!("no approval {id}")))?;
            Ok(json_response(
                StatusCode::OK,
                &approval_json(&a, true, &who),
            ))
        }
        (&Method::POST, ["approvals", id, "votes"]) => {
            let body = match read_limited(req.into_body(), 64 * 1024).await {
                Ok(Read::Complete(b)) => b,
                Ok(Read::Over(..)) => {
                    return Err(AirlockError::new(Code::BodyTooLarge, "vote body too large"))
                }
                Err(e) => return Err(AirlockError::new(Code::BadRequest, e.to_string())),
            };
            let vb: VoteBody = serde_json::from_slice(&body).map_err(|e| {
                AirlockError::new(
                    Code::BadRequest,
                    format!("expected {{\"decision\": \"approve\"|\"deny\", \"reason\": …}}: {e}"),
                )
            })?;
            let decision = match vb.decision.as_str() {
                "approve" => Decision::Approve,
                "deny" => Decision::Deny,
                d => {
                    return Err(AirlockError::new(
                        Code::BadRequest,
                        format!("decision must be approve or deny, got {d:?}"),
                    ))
                }
            };
            let reason = vb.reason.map(|r| r.chars().take(2000).collect());
            let a = airlock
                .approvals
                .vote(id, &who, decision, reason)
                .await
                .map_err(|e| vote_error(e, id))?;
            Ok(json_response(
                StatusCode::OK,
                &approval_json(&a, true, &who),
            ))
        }
        (_, ["approvals", ..]) => Err(AirlockError::new(
            Code::MethodNotAllowed,
            format!("{method} is not allowed here"),
        )),
        _ => Err(AirlockError::new(
            Code::NotFound,
            format!("no such API: {path}"),
        )),
    }
}

impl Airlock {
    async fn approvals_list(
        &self,
        status: Option<Status>,
        limit: usize,
    ) -> Result<Vec<Approval>, AirlockError> {
        self.store
            .approvals(status, limit)
            .await
            .map_err(|e| AirlockError::new(Code::StoreUnavailable, e.to_string()))
    }
}

fn query_param(q: Option<&str>, key: &str) -> Option<String> {
    form_urlencoded::parse(q?.as_bytes())
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

/// An approval as the API shows it. `full` adds the context a reviewer decides on.
fn approval_json(a: &Approval, full: bool, viewer: &crate::config::Reviewer) -> Value {
    let now = Utc::now();
    let mut v = json!({
        "id": a.id,
        "status": a.status.as_str(),
        "agent": a.agent,
        "rules": a.rules,
        "method": a.method,
        "upstream": a.upstream,
        "url": a.url,
        "created": crate::audit::format_time(&a.created),
        "expires": crate::audit::format_time(&a.expires),
        "expires_in": seconds_left(a, now),
        "votes": a.votes.iter().map(|x| json!({
            "reviewer": x.reviewer, "decision": x.decision.as_str(), "reason": x.reason,
            "time": crate::audit::format_time(&x.time),
        })).collect::<Vec<_>>(),
        "quorum": a.policy.quorum,
        "justification": a.justification,
        "show": a.show,
        "can_vote": a.status == Status::Pending
            && crate::approvals::may_vote(viewer, a).is_ok()
            && !a.votes.iter().any(|v| v.reviewer == viewer.id),
    });
    if full {
        if let Some(o) = v.as_object_mut() {
            o.insert("owner".into(), json!(a.owner));
            o.insert("host".into(), json!(a.host));
            o.insert("digest".into(), json!(a.digest));
            o.insert("body_sha256".into(), json!(a.body_sha256));
            o.insert("approvers".into(), json!(a.policy.approvers));
            o.insert("request_id".into(), json!(a.request_id));
            o.insert(
                "decided".into(),
                json!(a.decided.map(|d| crate::audit::format_time(&d))),
            );
            o.insert("decided_by".into(), json!(a.decided_by));
            o.insert("reason".into(), json!(a.reason));
        }
    }
    v
}

/// The answer for a refused vote.
fn vote_error(e: crate::approvals::VoteError, id: &str) -> AirlockError {
    use crate::approvals::VoteError;
    let code = match &e {
        VoteError::NotFound => Code::NotFound,
        VoteError::NotEligible => Code::NotEligible,
        VoteError::SelfApproval => Code::SelfApproval,
        VoteError::AlreadyDecided(_) => Code::AlreadyDecided,
        VoteError::AlreadyVoted => Code::AlreadyVoted,
        VoteError::ReasonRequired => Code::BadRequest,
        VoteError::Store(_) | VoteError::Audit(_) => Code::StoreUnavailable,
    };
    if code == Code::StoreUnavailable {
        tracing::error!(error = %e, approval = id, "vote could not be recorded");
    }
    AirlockError::new(code, e.to_string()).with_approval(id)
}
