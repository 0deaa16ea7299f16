//! Slack: one message per approval in `channels.slack.channel`, posted when a request
//! is held (`chat.postMessage`, Block Kit with Approve and Deny buttons) and updated in
//! place on every later lifecycle event (`chat.update`: progress, then the outcome,
//! who and why, with the buttons gone), whatever channel the vote came through;
//! reminders and escalations are thread replies that mention who is asked.
//!
//! Clicks come back as interaction payloads, through the signed interactivity URL
//! (`POST /slack/actions`, checked by [`verify`]) or through Socket Mode ([`socket`]);
//! both hand them to [`interact`], which casts votes only through
//! [`Approvals::vote_via`](crate::approvals::Approvals::vote_via).
//!
//! Layout: [`api`] (Web API calls and their errors), [`blocks`] (the message, pure),
//! [`verify`] (request signatures, pure), [`interact`] (payload → vote), [`socket`].
//! This module never decides an approval and never trusts a button's value for more
//! than finding the approval.

pub mod api;
pub mod blocks;
pub mod interact;
pub mod socket;
pub mod verify;

use super::{Channel, ChannelError, Notice};
use crate::approvals::Lifecycle;
use crate::config::SlackConfig;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::sync::OnceLock;

/// The HTTP client interaction handling and Socket Mode call Slack with.
pub(crate) fn web_client() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(super::http_client)
}

/// What airlock stores about the message it posted for an approval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageRef {
    /// The channel id Slack answered (`C…`).
    pub channel: String,
    /// The message's `ts`, its id within the channel.
    pub ts: String,
}

impl MessageRef {
    /// The stored reference, if it is one.
    pub fn parse(stored: &str) -> Option<MessageRef> {
        serde_json::from_str(stored).ok()
    }

    fn stored(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Posts and updates approval messages in one Slack channel.
pub struct SlackChannel {
    cfg: SlackConfig,
    client: reqwest::Client,
}

impl SlackChannel {
    /// A channel posting with `cfg`'s bot token through `client`.
    pub fn new(cfg: SlackConfig, client: reqwest::Client) -> SlackChannel {
        SlackChannel { cfg, client }
    }

    async fn call(&self, method: &str, body: &Value) -> Result<Value, ChannelError> {
        api::call(
            &self.client,
            &self.cfg.api_base,
            &self.cfg.bot_token,
            method,
            body,
            None,
        )
        .await
    }

    /// Posts the approval's message; its reference.
    async fn post(&self, notice: &Notice) -> Result<MessageRef, ChannelError> {
        let v = self
            .call(
                "chat.postMessage",
                &json!({
                    "channel": self.cfg.channel,
                    "text": blocks::fallback(notice),
                    "blocks": blocks::blocks(notice),
                    "unfurl_links": false,
                    "unfurl_media": false,
                }),
            )
            .await?;
        message_ref(&v)
    }

    /// Replaces the message `at` with the approval as it stands; a message that is gone
    /// (deleted in Slack) is posted again.
    async fn update(&self, notice: &Notice, at: &MessageRef) -> Result<MessageRef, ChannelError> {
        let r = self
            .call(
                "chat.update",
                &json!({
                    "channel": at.channel,
                    "ts": at.ts,
                    "text": blocks::fallback(notice),
                    "blocks": blocks::blocks(notice),
                }),
            )
            .await;
        match r {
            Ok(_) => Ok(at.clone()),
            Err(e) if api::slack_error(&e) == Some("message_not_found") => {
                tracing::info!(approval = %notice.approval.id, "the Slack message is gone; posting it again");
                self.post(notice).await
            }
            Err(e) => Err(e),
        }
    }

    /// A reply in the message's thread (reminders, escalations).
    async fn reply(&self, notice: &Notice, at: &MessageRef) -> Result<(), ChannelError> {
        self.call(
            "chat.postMessage",
            &json!({
                "channel": at.channel,
                "thread_ts": at.ts,
                "text": blocks::thread_text(notice),
            }),
        )
        .await
        .map(|_| ())
    }
}

/// The `{channel, ts}` of `chat.postMessage`'s answer.
fn message_ref(v: &Value) -> Result<MessageRef, ChannelError> {
    match (
        v.get("channel").and_then(Value::as_str),
        v.get("ts").and_then(Value::as_str),
    ) {
        (Some(channel), Some(ts)) => Ok(MessageRef {
            channel: channel.to_string(),
            ts: ts.to_string(),
        }),
        _ => Err(ChannelError::Permanent(
            "chat.postMessage: Slack's answer has no channel and ts".into(),
        )),
    }
}

#[async_trait::async_trait]
impl Channel for SlackChannel {
    fn name(&self) -> &'static str {
        "slack"
    }

    async fn deliver(
        &self,
        notice: &Notice,
        message: Option<&str>,
    ) -> Result<Option<String>, ChannelError> {
        let stored = message.and_then(MessageRef::parse);
        // No message yet (the post failed for good, or this is the first event): post
        // one, showing the approval as it stands.
        let Some(at) = stored else {
            return Ok(Some(self.post(notice).await?.stored()));
        };
        if matches!(
            notice.event.what,
            Lifecycle::Reminded | Lifecycle::Escalated { .. }
        ) && notice.undecided()
        {
            self.reply(notice, &at).await?;
        }
        // `opened` again (a row delivered twice) updates rather than posting twice.
        let now = self.update(notice, &at).await?;
        Ok((now != at).then(|| now.stored()))
    }
}
