//! What a click in Slack does, once the transport vouched for it (the signed HTTP
//! callback, or a Socket Mode envelope): the interaction payload is checked against the
//! config (`api_app_id`, `team.id`), its Slack user mapped to a reviewer
//! (`reviewers[].slack`), and the vote cast through
//! [`Approvals::vote_via`](crate::approvals::Approvals::vote_via) with the callback's
//! evidence: the same eligibility and self-approval checks as the API, never a check
//! of its own that could let more through.
//!
//! The button's `value` (and a modal's `private_metadata`) is only the approval id,
//! a key to look it up: who may vote comes from the Slack user the callback is signed
//! for. A refused click (unknown or ineligible user, the owner, a second vote, a
//! decided or unknown approval, a missing reason) records no vote and is explained to
//! the clicker with an ephemeral message (or, in a modal, an error under the reason).

use super::blocks::{self, APPROVE, APPROVE_MODAL, DENY, DENY_MODAL, REASON_BLOCK, REASON_INPUT};
use super::{api, web_client};
use crate::approvals::{may_vote, Via, VoteError};
use crate::config::{Reviewer, SlackConfig};
use crate::identity::same_identity;
use crate::state::Airlock;
use crate::store::{Approval, Decision, Status};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

/// How long `views.open` may take: Slack's `trigger_id` is good for 3 seconds, and the
/// callback must be answered within them.
const VIEWS_OPEN_TIMEOUT: Duration = Duration::from_millis(2500);

/// Why an interaction was refused before anything was looked up (nothing recorded).
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// Not an interaction payload airlock can read.
    #[error("unreadable interaction payload: {0}")]
    BadPayload(String),
    /// Sent for another Slack app than `channels.slack.app_id`.
    #[error("the interaction is for Slack app {got:?}, not {want:?} (channels.slack.app_id)")]
    WrongApp { got: Option<String>, want: String },
    /// Sent from another workspace than `channels.slack.team_id`.
    #[error(
        "the interaction comes from Slack workspace {got:?}, not {want:?} (channels.slack.team_id)"
    )]
    WrongTeam { got: Option<String>, want: String },
}

/// What to answer Slack (the HTTP response's body, or a Socket Mode ack's `payload`).
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// Acknowledged; nothing to say (an empty `200`; for a modal: close it).
    Ack,
    /// A response payload: a modal's `{"response_action": "errors", …}`.
    Payload(Value),
}

/// The parts of an interaction payload airlock reads.
struct Interaction<'a> {
    kind: &'a str,
    user: &'a str,
    team: Option<&'a str>,
    payload: &'a Value,
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> Option<&'a str> {
    v.pointer(pointer).and_then(Value::as_str)
}

/// Reads the payload's type, user and team, and checks app and team against `cfg`.
fn interaction<'a>(cfg: &SlackConfig, payload: &'a Value) -> Result<Interaction<'a>, Refused> {
    let kind = str_at(payload, "/type").ok_or_else(|| Refused::BadPayload("no type".into()))?;
    if let Some(want) = &cfg.app_id {
        let got = str_at(payload, "/api_app_id");
        if got != Some(want.as_str()) {
            return Err(Refused::WrongApp {
                got: got.map(str::to_string),
                want: want.clone(),
            });
        }
    }
    let team = str_at(payload, "/team/id").or_else(|| str_at(payload, "/user/team_id"));
    if let Some(want) = &cfg.team_id {
        if team != Some(want.as_str()) {
            return Err(Refused::WrongTeam {
                got: team.map(str::to_string),
                want: want.clone(),
            });
        }
    }
    let user =
        str_at(payload, "/user/id").ok_or_else(|| Refused::BadPayload("no user.id".into()))?;
    Ok(Interaction {
        kind,
        user,
        team,
        payload,
    })
}

/// Handles one interaction payload vouched for by its transport. `evidence` is what
/// proves it came from Slack (the signed request's digest and headers, or the Socket
/// Mode envelope); the Slack user and team are added to it.
pub async fn handle(
    airlock: &Arc<Airlock>,
    cfg: &SlackConfig,
    payload: &Value,
    evidence: Value,
) -> Result<Answer, Refused> {
    let i = interaction(cfg, payload)?;
    let mut evidence = evidence;
    if let Value::Object(m) = &mut evidence {
        m.insert("slack_user".into(), json!(i.user));
        m.insert("team".into(), json!(i.team));
    }
    let via = Via {
        channel: "slack".into(),
        evidence: Some(evidence),
    };
    match i.kind {
        "block_actions" => {
            block_action(airlock, cfg, &i, &via).await;
            Ok(Answer::Ack)
        }
        "view_submission" => Ok(view_submission(airlock, &i, &via).await),
        // view_closed, shortcuts, …: nothing to do.
        _ => Ok(Answer::Ack),
    }
}

/// The reviewer whose `slack` id is `user`.
fn reviewer_of(airlock: &Airlock, user: &str) -> Option<Reviewer> {
    airlock
        .snapshot()
        .policy
        .reviewers
        .all()
        .iter()
        .find(|r| r.slack.as_deref() == Some(user))
        .cloned()
}

fn unknown_user(user: &str) -> String {
    let user = blocks::escape(user);
    format!(
        "Your Slack account ({user}) is not a reviewer in airlock's configuration \
         (reviewers[].slack), so your click was not counted."
    )
}

/// A refused vote, as the clicker is told.
fn explain(e: &VoteError, reviewer: &Reviewer, id: &str) -> String {
    // The id comes from the button (or the modal): shown, never interpreted.
    let id = blocks::escape(id);
    match e {
        VoteError::NotFound => format!("airlock has no approval {id}; nothing was recorded."),
        VoteError::NotEligible => format!(
            "You ({}) are not an approver for the rule that held this request; your vote was not counted.",
            reviewer.id
        ),
        VoteError::SelfApproval => format!(
            "You ({}) cannot vote on this request: nobody may approve their own agent's request.",
            reviewer.id
        ),
        VoteError::AlreadyDecided(s) => {
            let word = match s {
                Status::Approved | Status::Forwarding | Status::Consumed => "approved",
                Status::OutcomeUnknown => "approved (and sent; its outcome is unknown)",
                other => other.as_str(),
            };
            format!("This request is already {word}; your vote was not counted.")
        }
        VoteError::AlreadyVoted => {
            "You have already voted on this request; your vote is counted once.".into()
        }
        VoteError::ReasonRequired => "A reason is required to vote on this request.".into(),
        VoteError::Store(_) | VoteError::Audit(_) => {
            "airlock could not record your vote right now; try again, or vote in airlock's console or CLI.".into()
        }
    }
}

/// Whether `reviewer` could vote on `a` now (what the vote itself checks again): the
/// check before a modal is opened, so nobody types a reason for nothing.
fn may_vote_now(reviewer: &Reviewer, a: &Approval) -> Result<(), VoteError> {
    may_vote(reviewer, a)?;
    if a.status != Status::Pending {
        return Err(VoteError::AlreadyDecided(a.status));
    }
    if a.votes
        .iter()
        .any(|v| same_identity(&v.reviewer, &reviewer.id))
    {
        return Err(VoteError::AlreadyVoted);
    }
    Ok(())
}

/// An Approve or Deny button.
async fn block_action(airlock: &Arc<Airlock>, cfg: &SlackConfig, i: &Interaction<'_>, via: &Via) {
    let Some(action) = i
        .payload
        .pointer("/actions")
        .and_then(Value::as_array)
        .and_then(|a| {
            a.iter().find(|x| {
                matches!(
                    x.get("action_id").and_then(Value::as_str),
                    Some(APPROVE) | Some(DENY)
                )
            })
        })
    else {
        // The link button, or another app's element: acknowledged, nothing to do.
        return;
    };
    let decision = match action.get("action_id").and_then(Value::as_str) {
        Some(DENY) => Decision::Deny,
        _ => Decision::Approve,
    };
    let id = action
        .get("value")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let channel = str_at(i.payload, "/channel/id")
        .or_else(|| str_at(i.payload, "/container/channel_id"))
        .unwrap_or(&cfg.channel)
        .to_string();
    let tell = |text: String| ephemeral(cfg, &channel, i.user, text);
    let Some(reviewer) = reviewer_of(airlock, i.user) else {
        tracing::warn!(
            slack_user = i.user,
            approval = id,
            "Slack click from a user who is not a reviewer; not counted"
        );
        tell(unknown_user(i.user));
        return;
    };
    let a = match airlock.store.approval(id).await {
        Ok(Some(a)) => a,
        Ok(None) => return tell(explain(&VoteError::NotFound, &reviewer, id)),
        Err(e) => return tell(explain(&VoteError::Store(e), &reviewer, id)),
    };
    let needs_modal = decision == Decision::Deny || a.policy.require_reason;
    if !needs_modal {
        let snap = airlock.snapshot();
        let r = airlock
            .approvals
            .vote_via(id, &reviewer, &snap.policy.reviewers, decision, None, via)
            .await;
        if let Err(e) = r {
            tracing::info!(reviewer = %reviewer.id, approval = id, error = %e, "Slack vote refused");
            tell(explain(&e, &reviewer, id));
        }
        return;
    }
    if let Err(e) = may_vote_now(&reviewer, &a) {
        return tell(explain(&e, &reviewer, id));
    }
    let Some(trigger) = str_at(i.payload, "/trigger_id") else {
        return tell("Slack sent no trigger_id, so the reason form cannot open; vote in airlock's console or CLI.".into());
    };
    let view = blocks::reason_modal(id, &blocks::summary(&a), decision);
    let r = api::call(
        web_client(),
        &cfg.api_base,
        &cfg.bot_token,
        "views.open",
        &json!({"trigger_id": trigger, "view": view}),
        Some(VIEWS_OPEN_TIMEOUT),
    )
    .await;
    if let Err(e) = r {
        tracing::warn!(approval = id, error = %e, "views.open failed");
        tell(format!(
            "The reason form could not open ({e}); vote in airlock's console or CLI."
        ));
    }
}

/// The reason modal submitted: the vote with its reason.
async fn view_submission(airlock: &Arc<Airlock>, i: &Interaction<'_>, via: &Via) -> Answer {
    let decision = match str_at(i.payload, "/view/callback_id") {
        Some(DENY_MODAL) => Decision::Deny,
        Some(APPROVE_MODAL) => Decision::Approve,
        // Another app's modal.
        _ => return Answer::Ack,
    };
    let id = str_at(i.payload, "/view/private_metadata").unwrap_or_default();
    let reason = i
        .payload
        .pointer(&format!(
            "/view/state/values/{REASON_BLOCK}/{REASON_INPUT}/value"
        ))
        .and_then(Value::as_str)
        .map(|r| r.chars().take(2000).collect::<String>());
    let error = |text: String| {
        Answer::Payload(json!({
            "response_action": "errors",
            "errors": {REASON_BLOCK: text},
        }))
    };
    let Some(reviewer) = reviewer_of(airlock, i.user) else {
        tracing::warn!(
            slack_user = i.user,
            approval = id,
            "Slack modal from a user who is not a reviewer; not counted"
        );
        return error(unknown_user(i.user));
    };
    let snap = airlock.snapshot();
    match airlock
        .approvals
        .vote_via(id, &reviewer, &snap.policy.reviewers, decision, reason, via)
        .await
    {
        Ok(_) => Answer::Ack,
        Err(e) => {
            tracing::info!(reviewer = %reviewer.id, approval = id, error = %e, "Slack vote refused");
            error(explain(&e, &reviewer, id))
        }
    }
}

/// Tells `user` `text` in `channel`, visible to them only (`chat.postEphemeral`), in
/// the background: the callback is answered first.
fn ephemeral(cfg: &SlackConfig, channel: &str, user: &str, text: String) {
    let (api_base, token) = (cfg.api_base.clone(), cfg.bot_token.clone());
    let body = json!({"channel": channel, "user": user, "text": text});
    tokio::spawn(async move {
        if let Err(e) = api::call(
            web_client(),
            &api_base,
            &token,
            "chat.postEphemeral",
            &body,
            None,
        )
        .await
        {
            tracing::warn!(error = %e, "chat.postEphemeral failed");
        }
    });
}

/// Hex SHA-256 of `bytes` (the callback's evidence).
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}
