//! `POST /slack/actions`: Slack's interactivity request URL. Thin: the signature is
//! checked ([`verify`]) over the raw body before anything is read from it, the form's
//! `payload` parsed, and the interaction handed to [`interact`], which votes only
//! through the approvals engine. Answers within Slack's 3 seconds: a vote that takes
//! longer finishes in the background (its outcome shows in the message).
//!
//! Refused without recording anything: Slack not configured or in Socket Mode (404),
//! a missing, bad or stale signature (401), another app or workspace (403), a body
//! that is not an interaction (400), each with airlock's JSON error.

use super::answer::{json, ApiError};
use crate::channels::slack::interact::{self, sha256_hex, Answer, Refused};
use crate::channels::slack::verify;
use crate::http::{AirlockError, Code};
use crate::state::Airlock;
use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, StatusCode};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

/// How long the handler waits for the interaction before answering anyway (Slack
/// gives up after 3 seconds).
const ANSWER_WITHIN: Duration = Duration::from_millis(2700);

/// Verifies and handles one interactivity callback.
pub async fn actions(
    State(airlock): State<Arc<Airlock>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match answer(airlock, headers, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn answer(
    airlock: Arc<Airlock>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let snap = airlock.snapshot();
    let Some(cfg) = snap.cfg().channels.slack.clone() else {
        return Err(
            AirlockError::new(Code::NotFound, "Slack is not configured (channels.slack)").into(),
        );
    };
    let Some(secret) = cfg.signing_secret.as_deref() else {
        return Err(AirlockError::new(
            Code::NotFound,
            "Slack interactivity comes through Socket Mode here (channels.slack has no signing_secret)",
        )
        .into());
    };
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let (timestamp, signature) = (
        header("x-slack-request-timestamp"),
        header("x-slack-signature"),
    );
    if let Err(e) = verify::verify(
        secret,
        timestamp,
        signature,
        &body,
        chrono::Utc::now().timestamp(),
    ) {
        tracing::warn!(error = %e, "Slack callback refused");
        return Err(AirlockError::new(
            Code::Unauthenticated,
            format!("Slack signature refused: {e}"),
        )
        .into());
    }
    let payload = form_urlencoded::parse(&body)
        .find(|(k, _)| k == "payload")
        .map(|(_, v)| v.into_owned())
        .ok_or_else(|| AirlockError::new(Code::BadRequest, "no payload field in the form body"))?;
    let payload: serde_json::Value = serde_json::from_str(&payload)
        .map_err(|e| AirlockError::new(Code::BadRequest, format!("payload is not JSON: {e}")))?;
    let evidence = json!({
        "callback_sha256": sha256_hex(&body),
        "x_slack_signature": signature,
        "x_slack_request_timestamp": timestamp,
    });
    let task =
        tokio::spawn(async move { interact::handle(&airlock, &cfg, &payload, evidence).await });
    let answered = match tokio::time::timeout(ANSWER_WITHIN, task).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            tracing::error!(error = %e, "Slack interaction failed");
            Ok(Answer::Ack)
        }
        // Still running: it finishes in the background; Slack is answered now.
        Err(_) => Ok(Answer::Ack),
    };
    match answered {
        Ok(Answer::Ack) => Ok(StatusCode::OK.into_response()),
        Ok(Answer::Payload(v)) => Ok(json(StatusCode::OK, &v)),
        Err(r) => {
            tracing::warn!(error = %r, "Slack interaction refused");
            let code = match r {
                Refused::BadPayload(_) => Code::BadRequest,
                Refused::WrongApp { .. } | Refused::WrongTeam { .. } => Code::Forbidden,
            };
            Err(AirlockError::new(code, r.to_string()).into())
        }
    }
}
