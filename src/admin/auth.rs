//! Who is calling the admin API: the [`Reviewer`] extractor. A request gets past it
//! only with a reviewer token (`Authorization: Bearer …`, matched against the
//! `sha256:` digests in the config) or an OIDC token naming a configured reviewer
//! (`admin.oidc`). An agent's credential of any kind (a key, or a JWT that verifies as
//! an agent's) is refused outright, so an agent can never vote, reload or read
//! approvals, not even another agent's.

use super::answer::ApiError;
use crate::config;
use crate::http::{AirlockError, Code};
use crate::state::Airlock;
use axum::extract::FromRequestParts;
use http::request::Parts;
use http::{header, HeaderMap};
use std::sync::Arc;

/// The reviewer whose bearer token the request carries.
#[derive(Debug, Clone)]
pub struct Reviewer(pub config::Reviewer);

impl FromRequestParts<Arc<Airlock>> for Reviewer {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        airlock: &Arc<Airlock>,
    ) -> Result<Self, Self::Rejection> {
        authenticate(airlock, &parts.headers)
            .await
            .map(Reviewer)
            .map_err(ApiError)
    }
}

/// The reviewer a request's headers name: `401 unauthenticated` without a bearer
/// token or with one nobody has (or an OIDC token naming no configured reviewer, or
/// one that does not verify), `403 agent_credential` for an agent's key or JWT.
pub async fn authenticate(
    airlock: &Airlock,
    headers: &HeaderMap,
) -> Result<config::Reviewer, AirlockError> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim())
        .ok_or_else(|| {
            AirlockError::new(
                Code::Unauthenticated,
                "send a reviewer token as Authorization: Bearer <token>",
            )
        })?;
    let snap = airlock.snapshot();
    if snap.policy.agents.is_agent_credential(token).await {
        return Err(AirlockError::new(
            Code::AgentCredential,
            "agent credentials are not accepted by the admin API",
        ));
    }
    snap.policy
        .reviewers
        .by_bearer(token)
        .await
        .ok_or_else(|| AirlockError::new(Code::Unauthenticated, "unknown reviewer token"))
}
