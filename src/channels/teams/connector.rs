//! Calls out to Microsoft: the bot's access token (OAuth 2.0 client credentials from
//! the configured authority, cached until shortly before it expires), the Bot
//! Connector's `POST`/`PUT …/v3/conversations/{id}/activities` and a Workflows
//! webhook.
//!
//! Owns the HTTP shapes and how failures are classed (network, `429`, `5xx`:
//! transient; `401`/`403`/`404` and other refusals: permanent). Never logs or returns
//! the client secret or a token.

use crate::channels::ChannelError;
use crate::config::TeamsBot;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

/// The scope of a token for the Bot Connector.
pub const BOT_SCOPE: &str = "https://api.botframework.com/.default";
/// A cached token is renewed this long before it expires.
const RENEW_BEFORE: Duration = Duration::from_secs(300);

/// Where the bot's card for one approval is, as stored in the outbox's message
/// reference.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CardRef {
    pub service_url: String,
    pub conversation: String,
    pub activity_id: String,
}

/// A token endpoint's answer.
#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    expires_in: Option<u64>,
}

/// A Bot Connector's answer to a posted or replaced activity.
#[derive(Deserialize)]
struct ResourceResponse {
    id: Option<String>,
}

/// The bot's side of the Bot Connector: a cached token and the activity calls.
pub struct Connector {
    bot: TeamsBot,
    client: reqwest::Client,
    token: Mutex<Option<(String, Instant)>>,
}

impl Connector {
    /// A connector for `bot`, calling out with `client`.
    pub fn new(bot: TeamsBot, client: reqwest::Client) -> Connector {
        Connector {
            bot,
            client,
            token: Mutex::new(None),
        }
    }

    /// A valid access token: the cached one, or a new one from the authority.
    async fn token(&self) -> Result<String, ChannelError> {
        let mut cached = self.token.lock().await;
        if let Some((t, until)) = cached.as_ref() {
            if Instant::now() < *until {
                return Ok(t.clone());
            }
        }
        let url = format!(
            "{}/{}/oauth2/v2.0/token",
            self.bot.authority, self.bot.tenant_id
        );
        let r = self
            .client
            .post(&url)
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", self.bot.app_id.as_str()),
                ("client_secret", self.bot.app_password.as_str()),
                ("scope", BOT_SCOPE),
            ])
            .send()
            .await
            .map_err(|e| ChannelError::from_reqwest("teams token", e))?;
        let status = r.status();
        let text = r
            .text()
            .await
            .map_err(|e| ChannelError::from_reqwest("teams token", e))?;
        if !status.is_success() {
            // 400/401 from the authority: a wrong app id, secret or tenant.
            return Err(ChannelError::from_status("teams token", status, &text));
        }
        let answer: TokenAnswer = serde_json::from_str(&text)
            .map_err(|e| ChannelError::Permanent(format!("teams token: unreadable answer: {e}")))?;
        let life = Duration::from_secs(answer.expires_in.unwrap_or(3600));
        let until = Instant::now() + life.saturating_sub(RENEW_BEFORE.min(life / 2));
        *cached = Some((answer.access_token.clone(), until));
        Ok(answer.access_token)
    }

    /// Forgets the cached token (the connector refused it).
    async fn forget_token(&self) {
        *self.token.lock().await = None;
    }

    /// Posts `activity` to the configured conversation; answers where it is.
    pub async fn post(&self, activity: &Value) -> Result<CardRef, ChannelError> {
        let url = format!(
            "{}/v3/conversations/{}/activities",
            self.bot.service_url,
            encode(&self.bot.conversation)
        );
        let answer = self.send(reqwest::Method::POST, &url, activity).await?;
        let id = answer.id.filter(|i| !i.is_empty()).ok_or_else(|| {
            ChannelError::Permanent("teams: the connector answered without an activity id".into())
        })?;
        Ok(CardRef {
            service_url: self.bot.service_url.clone(),
            conversation: self.bot.conversation.clone(),
            activity_id: id,
        })
    }

    /// Replaces the activity at `at` with `activity`, for everyone in the conversation.
    pub async fn replace(&self, at: &CardRef, activity: &Value) -> Result<(), ChannelError> {
        let url = format!(
            "{}/v3/conversations/{}/activities/{}",
            at.service_url.trim_end_matches('/'),
            encode(&at.conversation),
            encode(&at.activity_id)
        );
        let mut activity = activity.clone();
        activity["id"] = Value::String(at.activity_id.clone());
        self.send(reqwest::Method::PUT, &url, &activity).await?;
        Ok(())
    }

    /// One authenticated connector call; a refused token is renewed once.
    async fn send(
        &self,
        method: reqwest::Method,
        url: &str,
        activity: &Value,
    ) -> Result<ResourceResponse, ChannelError> {
        let mut renewed = false;
        loop {
            let token = self.token().await?;
            let r = self
                .client
                .request(method.clone(), url)
                .bearer_auth(&token)
                .json(activity)
                .send()
                .await
                .map_err(|e| ChannelError::from_reqwest("teams connector", e))?;
            let status = r.status();
            let text = r
                .text()
                .await
                .map_err(|e| ChannelError::from_reqwest("teams connector", e))?;
            if status == reqwest::StatusCode::UNAUTHORIZED && !renewed {
                self.forget_token().await;
                renewed = true;
                continue;
            }
            if !status.is_success() {
                return Err(ChannelError::from_status("teams connector", status, &text));
            }
            if text.trim().is_empty() {
                return Ok(ResourceResponse { id: None });
            }
            return serde_json::from_str(&text).map_err(|e| {
                ChannelError::Permanent(format!("teams connector: unreadable answer: {e}"))
            });
        }
    }
}

/// Posts `message` to a Workflows webhook.
pub async fn post_webhook(
    client: &reqwest::Client,
    url: &str,
    message: &Value,
) -> Result<(), ChannelError> {
    let r = client
        .post(url)
        .json(message)
        .send()
        .await
        .map_err(|e| ChannelError::from_reqwest("teams webhook", e))?;
    let status = r.status();
    if !status.is_success() {
        let text = r.text().await.unwrap_or_default();
        return Err(ChannelError::from_status("teams webhook", status, &text));
    }
    Ok(())
}

/// A path segment percent-encoded as `encodeURIComponent` does (Teams conversation ids
/// hold `:`, `@` and `;`).
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z'
            | b'a'..=b'z'
            | b'0'..=b'9'
            | b'-'
            | b'_'
            | b'.'
            | b'!'
            | b'~'
            | b'*'
            | b'\''
            | b'('
            | b')' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::encode;

    #[test]
    fn conversation_ids_are_encoded_as_one_segment() {
        assert_eq!(
            encode("19:abc@thread.tacv2;messageid=1"),
            "19%3Aabc%40thread.tacv2%3Bmessageid%3D1"
        );
        assert_eq!(encode("a/b c"), "a%2Fb%20c");
    }
}
