//! Slack's Web API as airlock calls it: one JSON `POST {api_base}/{method}` with a
//! bearer token, answered `{"ok": true, …}` or `{"ok": false, "error": "…"}`. Owns the
//! mapping of Slack's answers to [`ChannelError`] (what is worth retrying); never
//! logs or returns a token.

use crate::channels::ChannelError;
use serde_json::Value;
use std::time::Duration;

/// Slack errors that may pass on a retry; every other `error` is permanent
/// (`invalid_auth`, `channel_not_found`, `not_in_channel`, `invalid_blocks`, …).
const TRANSIENT: &[&str] = &[
    "ratelimited",
    "rate_limited",
    "internal_error",
    "fatal_error",
    "service_unavailable",
    "request_timeout",
    "team_added_to_org",
];

/// Calls `method` (`chat.postMessage`, `chat.update`, `views.open`, …) with `body` as
/// JSON and `token` as bearer; the answer's JSON when Slack says `ok`.
pub async fn call(
    client: &reqwest::Client,
    api_base: &str,
    token: &str,
    method: &str,
    body: &Value,
    timeout: Option<Duration>,
) -> Result<Value, ChannelError> {
    let url = format!("{}/{method}", api_base.trim_end_matches('/'));
    let mut req = client
        .post(&url)
        .bearer_auth(token)
        .header("content-type", "application/json; charset=utf-8")
        .body(serde_json::to_vec(body).unwrap_or_default());
    if let Some(t) = timeout {
        req = req.timeout(t);
    }
    let resp = req
        .send()
        .await
        .map_err(|e| ChannelError::from_reqwest(method, e))?;
    let status = resp.status();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let text = resp
        .text()
        .await
        .map_err(|e| ChannelError::from_reqwest(method, e))?;
    if !status.is_success() {
        let mut e = ChannelError::from_status(method, status, &text);
        if let (ChannelError::Transient(m), Some(r)) = (&mut e, retry_after) {
            m.push_str(&format!(" (Retry-After: {r})"));
        }
        return Err(e);
    }
    let v: Value = serde_json::from_str(&text).map_err(|_| {
        ChannelError::Transient(format!(
            "{method}: Slack's answer is not JSON: {}",
            text.chars().take(200).collect::<String>()
        ))
    })?;
    if v.get("ok").and_then(Value::as_bool) == Some(true) {
        return Ok(v);
    }
    let error = v
        .get("error")
        .and_then(Value::as_str)
        .unwrap_or("no error given")
        .to_string();
    let msg = format!("{method}: Slack said {error}");
    if TRANSIENT.contains(&error.as_str()) {
        Err(ChannelError::Transient(msg))
    } else {
        Err(ChannelError::Permanent(msg))
    }
}

/// The `error` code of a refused call, if that is what `e` is (`message_not_found`).
pub fn slack_error(e: &ChannelError) -> Option<&str> {
    let m = match e {
        ChannelError::Transient(m) | ChannelError::Permanent(m) => m,
    };
    m.split_once("Slack said ").map(|(_, code)| code)
}
