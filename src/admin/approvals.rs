//! The reviewers' approval API: list, show and vote, and the JSON an approval is
//! shown as. Every handler here runs behind the [`Reviewer`] extractor; a vote only
//! goes through [`Approvals::vote`](crate::approvals::Approvals::vote), which decides
//! who may vote. Nothing here forwards, holds or decides a request itself.

use super::answer::{json, ApiError};
use super::auth::Reviewer;
use super::extract::{ApiJson, ApiPath, ApiQuery, Expected};
use crate::approvals::{may_vote, progress, seconds_left, Progress, VoteError};
use crate::audit::format_time;
use crate::config;
use crate::http::{AirlockError, Code};
use crate::identity::{same_identity, Reviewers};
use crate::state::Airlock;
use crate::store::{Approval, Decision, Status, Vote};
use axum::extract::State;
use axum::response::Response;
use chrono::{DateTime, Utc};
use http::StatusCode;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// How many approvals a list returns when the caller does not say.
const DEFAULT_LIMIT: usize = 500;
/// The most approvals one list returns.
const MAX_LIMIT: usize = 10_000;
/// The longest vote reason kept, in characters.
const MAX_REASON_CHARS: usize = 2000;

/// `GET /api/v1/approvals?status=&limit=`.
#[derive(Debug, Deserialize)]
pub struct ListQuery {
    /// `pending`, `approved`, …; empty or `all` for every status.
    status: Option<String>,
    /// 1 to 10000; 500 when absent.
    limit: Option<String>,
}

impl ListQuery {
    fn status(&self) -> Result<Option<Status>, AirlockError> {
        match self.status.as_deref() {
            None | Some("") | Some("all") => Ok(None),
            Some(s) => Status::parse(s).map(Some).ok_or_else(|| {
                AirlockError::new(Code::BadRequest, format!("unknown status {s:?}"))
            }),
        }
    }

    fn limit(&self) -> Result<usize, AirlockError> {
        let Some(l) = &self.limit else {
            return Ok(DEFAULT_LIMIT);
        };
        l.parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_LIMIT).contains(n))
            .ok_or_else(|| {
                AirlockError::new(Code::BadRequest, format!("limit must be 1..{MAX_LIMIT}"))
            })
    }
}

/// The body of `POST /api/v1/approvals/{id}/votes`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VoteBody {
    decision: Decision,
    reason: Option<String>,
}

impl Expected for VoteBody {
    const EXPECTED: &'static str = r#"{"decision": "approve"|"deny", "reason": …}"#;
}

/// Lists approvals, newest first.
pub async fn list(
    State(airlock): State<Arc<Airlock>>,
    Reviewer(who): Reviewer,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Response, ApiError> {
    let (status, limit) = (q.status()?, q.limit()?);
    let list = airlock
        .store
        .approvals(status, limit)
        .await
        .map_err(|e| AirlockError::new(Code::StoreUnavailable, e.to_string()))?;
    let now = Utc::now();
    let approvals: Vec<ApprovalView> = list
        .iter()
        .map(|a| ApprovalView::new(a, &who, &airlock.snapshot().policy.reviewers, now, false))
        .collect();
    Ok(json(StatusCode::OK, &ApprovalList { approvals }))
}

/// Shows one approval with the full context a reviewer decides on.
pub async fn show(
    State(airlock): State<Arc<Airlock>>,
    Reviewer(who): Reviewer,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let a = airlock
        .store
        .approval(&id)
        .await
        .map_err(|e| AirlockError::new(Code::StoreUnavailable, e.to_string()))?
        .ok_or_else(|| AirlockError::new(Code::NotFound, format!("no approval {id}")))?;
    Ok(json(
        StatusCode::OK,
        &ApprovalView::new(
            &a,
            &who,
            &airlock.snapshot().policy.reviewers,
            Utc::now(),
            true,
        ),
    ))
}

/// Casts the caller's vote and answers with the approval as it now stands.
pub async fn vote(
    State(airlock): State<Arc<Airlock>>,
    Reviewer(who): Reviewer,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<VoteBody>,
) -> Result<Response, ApiError> {
    let reason = body
        .reason
        .map(|r| r.chars().take(MAX_REASON_CHARS).collect());
    let a = airlock
        .approvals
        .vote(
            &id,
            &who,
            &airlock.snapshot().policy.reviewers,
            body.decision,
            reason,
        )
        .await
        .map_err(|e| vote_refused(e, &id))?;
    Ok(json(
        StatusCode::OK,
        &ApprovalView::new(
            &a,
            &who,
            &airlock.snapshot().policy.reviewers,
            Utc::now(),
            true,
        ),
    ))
}

/// The answer for a refused vote: the approvals layer's error, mapped here.
pub fn vote_refused(e: VoteError, id: &str) -> ApiError {
    let code = match &e {
        VoteError::NotFound => Code::NotFound,
        VoteError::NotEligible => Code::NotEligible,
        VoteError::SelfApproval => Code::SelfApproval,
        VoteError::AlreadyDecided(_) => Code::AlreadyDecided,
        VoteError::AlreadyVoted => Code::AlreadyVoted,
        VoteError::ReasonRequired => Code::ReasonRequired,
        VoteError::Store(_) | VoteError::Audit(_) => Code::StoreUnavailable,
    };
    if code == Code::StoreUnavailable {
        tracing::error!(error = %e, approval = id, "vote could not be recorded");
    }
    ApiError(AirlockError::new(code, e.to_string()).with_approval(id))
}

/// `{"approvals": […]}`.
#[derive(Serialize)]
struct ApprovalList<'a> {
    approvals: Vec<ApprovalView<'a>>,
}

/// An approval as the API shows it to one reviewer.
#[derive(Serialize)]
struct ApprovalView<'a> {
    id: &'a str,
    status: &'static str,
    agent: &'a str,
    /// How the agent authenticated: `key`, `jwt`, `mtls`, `none` (null for approvals
    /// recorded before airlock kept it).
    auth: Option<&'a str>,
    /// The person the agent acts for, from its token: never allowed to approve.
    acting_for: Option<&'a str>,
    /// The human who answers for the agent: never allowed to approve.
    owner: Option<&'a str>,
    /// The client's address.
    client: Option<&'a str>,
    rules: &'a [String],
    method: &'a str,
    upstream: &'a str,
    url: &'a str,
    created: String,
    expires: String,
    /// Seconds until it expires (0 once past); `null` once decided: no countdown.
    expires_in: Option<i64>,
    votes: Vec<VoteView<'a>>,
    quorum: u32,
    /// Every requirement the approval must meet (one per matched approve rule, or per
    /// group a rule names), with who has met it so far.
    requirements: Vec<Progress>,
    justification: Option<&'a str>,
    show: Option<&'a serde_json::Value>,
    /// Whether this reviewer may still vote on it.
    can_vote: bool,
    #[serde(flatten)]
    detail: Option<ApprovalDetail<'a>>,
}

/// What `GET /api/v1/approvals/{id}` and a vote's answer add to the list's view.
#[derive(Serialize)]
struct ApprovalDetail<'a> {
    host: Option<&'a str>,
    digest: &'a str,
    body_sha256: &'a str,
    approvers: &'a [String],
    request_id: &'a str,
    decided: Option<String>,
    decided_by: Option<&'a str>,
    reason: Option<&'a str>,
}

/// One vote as the API shows it.
#[derive(Serialize)]
struct VoteView<'a> {
    reviewer: &'a str,
    decision: &'static str,
    reason: Option<&'a str>,
    time: String,
}

impl<'a> ApprovalView<'a> {
    fn new(
        a: &'a Approval,
        viewer: &config::Reviewer,
        reviewers: &Reviewers,
        now: DateTime<Utc>,
        full: bool,
    ) -> ApprovalView<'a> {
        let requirements = progress(a, reviewers);
        ApprovalView {
            id: &a.id,
            status: a.status.as_str(),
            agent: &a.agent,
            auth: Some(a.requester.auth.as_str()).filter(|s| !s.is_empty()),
            acting_for: a.requester.acting_for.as_deref(),
            owner: a.owner.as_deref(),
            client: a.requester.client.as_deref(),
            rules: &a.rules,
            method: &a.method,
            upstream: &a.upstream,
            url: &a.url,
            created: format_time(&a.created),
            expires: format_time(&a.expires),
            expires_in: (a.status == Status::Pending).then(|| seconds_left(a, now)),
            votes: a.votes.iter().map(VoteView::new).collect(),
            quorum: a.policy.quorum,
            requirements,
            justification: a.justification.as_deref(),
            show: a.show.as_ref(),
            can_vote: a.status == Status::Pending
                && may_vote(viewer, a).is_ok()
                && !a
                    .votes
                    .iter()
                    .any(|v| same_identity(&v.reviewer, &viewer.id)),
            detail: full.then(|| ApprovalDetail {
                host: a.host.as_deref(),
                digest: &a.digest,
                body_sha256: &a.body_sha256,
                approvers: &a.policy.approvers,
                request_id: &a.request_id,
                decided: a.decided.as_ref().map(format_time),
                decided_by: a.decided_by.as_deref(),
                reason: a.reason.as_deref(),
            }),
        }
    }
}

impl<'a> VoteView<'a> {
    fn new(v: &'a Vote) -> VoteView<'a> {
        VoteView {
            reviewer: &v.reviewer,
            decision: v.decision.as_str(),
            reason: v.reason.as_deref(),
            time: format_time(&v.time),
        }
    }
}
