//! A reviewer's click on a card's Approve or Deny button: Bot Framework's invoke
//! activity (`type: invoke`, `name: adaptiveCard/action`, `value.action` an
//! `Action.Execute` with a verb and data) posted to `POST /teams/actions`.
//!
//! Order of checks, all before anything is recorded: the bearer token ([`verify`]:
//! signature, issuer, audience, expiry, `serviceurl` = the activity's `serviceUrl`),
//! the tenant (`conversation.tenantId` or `channelData.tenant.id` = the configured
//! one), the reviewer (`from.aadObjectId` = a reviewer's `teams` id). A refused token
//! or tenant is an HTTP error; everything a reviewer can act on (unknown user, not
//! eligible, self-approval, already decided, reason missing) is an invoke response
//! explaining it, with no vote. The vote itself goes only through
//! [`Approvals::vote_via`](crate::approvals::Approvals::vote_via), with the callback's
//! evidence; the button's data is a lookup key, never authority.

use super::card::{self, Mode, APPROVE, DENY, REASON_INPUT};
use super::verify::KeySet;
use crate::approvals::{Lifecycle, LifecycleEvent, Via, VoteError};
use crate::channels::Notice;
use crate::http::{AirlockError, Code};
use crate::identity::same_identity;
use crate::state::Airlock;
use crate::store::{Decision, Status};
use http::HeaderMap;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::sync::Arc;

/// The longest vote reason kept, in characters (as the API).
const MAX_REASON_CHARS: usize = 2000;

/// The invoke response for an `Action.Execute`: the card that replaces the clicked one.
pub fn card_response(card: Value) -> Value {
    json!({"statusCode": 200, "type": card::CONTENT_TYPE, "value": card})
}

/// The invoke response that only tells the reviewer something (no vote).
pub fn message_response(text: impl Into<String>) -> Value {
    json!({
        "statusCode": 200,
        "type": "application/vnd.microsoft.activity.message",
        "value": text.into(),
    })
}

fn refused(code: Code, message: impl Into<String>) -> AirlockError {
    AirlockError::new(code, message)
}

/// Verifies and handles one callback: the invoke response to answer `200` with, or the
/// error to answer instead (nothing recorded).
pub async fn handle(
    airlock: &Arc<Airlock>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Value, AirlockError> {
    let snap = airlock.snapshot();
    let cfg = snap.cfg();
    let Some(bot) = cfg.channels.teams.as_ref().and_then(|t| t.bot.as_ref()) else {
        return Err(refused(
            Code::NotFound,
            "Teams bot mode is not configured (channels.teams.app_id …)",
        ));
    };
    let token = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| refused(Code::Unauthenticated, "no Bot Framework bearer token"))?;
    let activity: Value = serde_json::from_slice(body)
        .map_err(|e| refused(Code::BadRequest, format!("not a JSON activity: {e}")))?;
    if !activity.is_object() {
        return Err(refused(Code::BadRequest, "an activity is a JSON object"));
    }
    let str_at = |ptr: &str| activity.pointer(ptr).and_then(Value::as_str);
    let service_url = str_at("/serviceUrl").unwrap_or_default();
    let channel_id = str_at("/channelId").unwrap_or_default();
    let keys = KeySet::of(bot);
    let verified = keys
        .verify(bot, token, service_url, channel_id)
        .await
        .map_err(|e| {
            tracing::warn!(reason = %e, "Teams callback refused");
            refused(Code::Unauthenticated, e.to_string())
        })?;
    // Only Teams speaks for a reviewer: Web Chat, Direct Line and the Emulator let
    // their client write `from` and `channelData` itself.
    if channel_id != "msteams" {
        tracing::warn!(
            channel = channel_id,
            "Bot Framework activity from another channel refused"
        );
        return Err(refused(
            Code::Forbidden,
            "only activities from Microsoft Teams (channelId msteams) may vote",
        ));
    }
    let tenant = str_at("/conversation/tenantId").or_else(|| str_at("/channelData/tenant/id"));
    if !tenant.is_some_and(|t| same_identity(t, &bot.tenant_id)) {
        tracing::warn!(tenant = ?tenant, "Teams callback from another tenant refused");
        return Err(refused(
            Code::Forbidden,
            "the activity is not from the configured tenant",
        ));
    }
    let tenant = tenant.unwrap_or_default().to_string();
    if str_at("/type") != Some("invoke") || str_at("/name") != Some("adaptiveCard/action") {
        // Other activities (the app installed in a team, a message to the bot) need
        // no answer; their conversation and service URL are what the config needs.
        tracing::info!(
            activity = str_at("/type").unwrap_or_default(),
            conversation = str_at("/channelData/channel/id")
                .or_else(|| str_at("/conversation/id"))
                .unwrap_or_default(),
            service_url,
            "Teams activity that is not a card action (channels.teams.conversation / service_url)"
        );
        return Ok(json!({}));
    }
    let action = activity
        .pointer("/value/action")
        .cloned()
        .unwrap_or(Value::Null);
    if action.get("type").and_then(Value::as_str) != Some("Action.Execute") {
        return Ok(message_response(
            "airlock only handles its own Approve and Deny buttons.",
        ));
    }
    let Some(aad) = str_at("/from/aadObjectId") else {
        return Ok(message_response(
            "Teams did not say who clicked; nothing was recorded.",
        ));
    };
    let reviewers = &snap.policy.reviewers;
    // A reviewer's `teams` is their Entra object id, and only it names the clicker:
    // an activity's `from.id` is never read as a second, possibly different, person.
    let Some(reviewer) = reviewers
        .all()
        .iter()
        .find(|r| r.teams.as_deref().is_some_and(|t| same_identity(t, aad)))
    else {
        tracing::warn!(
            aad_object_id = aad,
            "Teams click by someone who is not a reviewer"
        );
        return Ok(message_response(
            "You are not an airlock reviewer (no reviewer has your Teams id); nothing was recorded.",
        ));
    };
    let decision = match action.get("verb").and_then(Value::as_str) {
        Some(APPROVE) => Decision::Approve,
        Some(DENY) => Decision::Deny,
        _ => return Ok(message_response("Unknown action; nothing was recorded.")),
    };
    let data = action.get("data").cloned().unwrap_or(Value::Null);
    let Some(id) = data.get("approval").and_then(Value::as_str) else {
        return Ok(message_response(
            "The card names no approval; nothing was recorded.",
        ));
    };
    let reason = data
        .get(REASON_INPUT)
        .and_then(Value::as_str)
        .map(|r| r.trim().chars().take(MAX_REASON_CHARS).collect::<String>())
        .filter(|r| !r.is_empty());
    let via = Via {
        channel: "teams".into(),
        evidence: Some(json!({
            "callback_sha256": hex::encode(Sha256::digest(body)),
            "token_sha256": hex::encode(Sha256::digest(token.as_bytes())),
            "kid": verified.kid,
            "iss": verified.iss,
            "service_url": verified.service_url,
            "aad_object_id": aad,
            "from_id": str_at("/from/id"),
            "tenant": tenant,
        })),
    };
    let voted = airlock
        .approvals
        .vote_via(id, reviewer, reviewers, decision, reason.clone(), &via)
        .await;
    let approval = match voted {
        Ok(a) => a,
        Err(e) => return Ok(message_response(explain(&e, id))),
    };
    let event = LifecycleEvent {
        approval_id: approval.id.clone(),
        seq: 0,
        time: chrono::Utc::now(),
        what: Lifecycle::Voted {
            reviewer: reviewer.id.clone(),
            decision,
            reason,
            channel: Some("teams".into()),
        },
    };
    match Notice::build(airlock.store.as_ref(), &snap, event, approval).await {
        Ok(n) => Ok(card_response(card::card(&n, Mode::Bot))),
        Err(e) => {
            tracing::warn!(error = %e, approval = id, "vote recorded; its card could not be built");
            Ok(message_response(format!(
                "Your vote ({}) on {id} was recorded.",
                decision.as_str()
            )))
        }
    }
}

/// What a reviewer is told when their click casts no vote.
fn explain(e: &VoteError, id: &str) -> String {
    match e {
        VoteError::NotFound => format!("There is no approval {id}; nothing was recorded."),
        VoteError::NotEligible => {
            format!("You are not an approver of {id}; nothing was recorded.")
        }
        VoteError::SelfApproval => format!(
            "You may not vote on {id}: it is your own request (you own the agent). Nothing was recorded."
        ),
        VoteError::AlreadyDecided(s) => match s {
            Status::Expired => format!("{id} has expired; nothing was recorded."),
            s => format!("{id} is already {}; nothing was recorded.", s.as_str()),
        },
        VoteError::AlreadyVoted => format!("You already voted on {id}."),
        VoteError::ReasonRequired => format!(
            "{id} needs a reason: type one in the card's Reason box, then click again. Nothing was recorded."
        ),
        VoteError::Store(_) | VoteError::Audit(_) => {
            tracing::error!(error = %e, approval = id, "Teams vote could not be recorded");
            format!("airlock could not record your vote on {id} right now; try again.")
        }
    }
}
