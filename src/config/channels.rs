//! The `channels:` section: where reviewers are asked (Slack, Microsoft Teams, a
//! signed webhook), raw as written and validated. Secrets may be `${VAR}`; a channel
//! missing what it needs is an error with its location, never a channel that silently
//! does nothing.

use super::build::Build;
use super::values::{expand_env, parse_duration};
use serde::Deserialize;
use std::time::Duration;

/// `channels:` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawChannels {
    pub slack: Option<RawSlack>,
    pub teams: Option<RawTeams>,
    pub webhook: Option<RawWebhook>,
    /// How many earlier decisions for the same agent and rule a message shows.
    pub recent: Option<usize>,
}

/// `channels.slack`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSlack {
    pub bot_token: String,
    pub signing_secret: Option<String>,
    pub channel: String,
    pub api_base: Option<String>,
    pub app_id: Option<String>,
    pub team_id: Option<String>,
    /// An app-level token (`xapp-…`): Socket Mode instead of an interactivity URL.
    pub app_token: Option<String>,
}

/// `channels.teams`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTeams {
    pub app_id: Option<String>,
    pub app_password: Option<String>,
    pub tenant_id: Option<String>,
    pub service_url: Option<String>,
    pub conversation: Option<String>,
    pub authority: Option<String>,
    pub openid_metadata: Option<String>,
    pub jwks: Option<String>,
    pub webhook_url: Option<String>,
}

/// `channels.webhook`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWebhook {
    pub url: String,
    pub secret: String,
    pub timeout: Option<String>,
}

/// The channels configured.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Channels {
    pub slack: Option<SlackConfig>,
    pub teams: Option<TeamsConfig>,
    pub webhook: Option<WebhookConfig>,
    /// How many earlier decisions for the same agent and rule a message shows (3).
    pub recent: usize,
}

impl Channels {
    /// The names of the configured channels (`slack`, `teams`, `webhook`).
    pub fn names(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.slack.is_some() {
            out.push("slack".to_string());
        }
        if self.teams.is_some() {
            out.push("teams".to_string());
        }
        if self.webhook.is_some() {
            out.push("webhook".to_string());
        }
        out
    }
}

/// `channels.slack`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct SlackConfig {
    /// Bot token (`xoxb-…`) with `chat:write`.
    pub bot_token: String,
    /// Verifies `X-Slack-Signature` on `POST /slack/actions` (required unless Socket Mode).
    pub signing_secret: Option<String>,
    /// The channel approval messages are posted to.
    pub channel: String,
    /// The Web API base (`https://slack.com/api`).
    pub api_base: String,
    /// The app's id: callbacks for another app are refused.
    pub app_id: Option<String>,
    /// The workspace's id: callbacks from another workspace are refused.
    pub team_id: Option<String>,
    /// Socket Mode's app-level token, when airlock cannot be reached by Slack.
    pub app_token: Option<String>,
}

/// `channels.teams`, validated: bot mode, Workflows webhook mode, or both.
#[derive(Debug, Clone, PartialEq)]
pub struct TeamsConfig {
    pub bot: Option<TeamsBot>,
    /// A Workflows ("When a Teams webhook request is received") URL.
    pub webhook_url: Option<String>,
}

/// A single-tenant Bot Framework app posting proactive cards.
#[derive(Debug, Clone, PartialEq)]
pub struct TeamsBot {
    /// The bot's Microsoft App ID (the audience of Bot Framework's tokens).
    pub app_id: String,
    /// Its client secret.
    pub app_password: String,
    /// The tenant the app and the reviewers belong to.
    pub tenant_id: String,
    /// The Bot Connector service URL of the conversation (`https://smba.trafficmanager.net/…`).
    pub service_url: String,
    /// The conversation (channel or chat) cards are posted to.
    pub conversation: String,
    /// Where tokens come from (`https://login.microsoftonline.com`); the token endpoint
    /// is `{authority}/{tenant_id}/oauth2/v2.0/token`.
    pub authority: String,
    /// Bot Framework's OpenID metadata, whose `jwks_uri` verifies callback tokens.
    pub openid_metadata: String,
    /// A JWKS URL to use instead of the metadata's `jwks_uri`.
    pub jwks: Option<String>,
}

/// `channels.webhook`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookConfig {
    pub url: String,
    /// Signs each delivery (`X-Airlock-Signature`).
    pub secret: String,
    /// How long one delivery may take (10s).
    pub timeout: Duration,
}

impl Build<'_> {
    /// Validates `channels:`.
    pub(super) fn channels(&mut self, raw: Option<RawChannels>) -> Channels {
        let Some(raw) = raw else {
            return Channels {
                recent: 3,
                ..Channels::default()
            };
        };
        Channels {
            slack: raw.slack.and_then(|s| self.slack(s)),
            teams: raw.teams.and_then(|t| self.teams(t)),
            webhook: raw.webhook.and_then(|w| self.webhook(w)),
            recent: raw.recent.unwrap_or(3).min(20),
        }
    }

    /// `${VAR}` expanded, or an error at `key`.
    fn secret(&mut self, section: &str, key: &str, v: &str) -> Option<String> {
        match expand_env(v) {
            Ok(s) if s.is_empty() => {
                self.err(
                    Some(section),
                    key,
                    format!("channels.{}.{key} is empty", section.trim_end_matches(':')),
                );
                None
            }
            Ok(s) => Some(s),
            Err(e) => {
                self.err(
                    Some(section),
                    key,
                    format!("channels.{}.{key}: {e}", section.trim_end_matches(':')),
                );
                None
            }
        }
    }

    /// An `http(s)://` URL without a trailing slash, or an error at `key`.
    fn channel_url(&mut self, section: &str, key: &str, v: &str) -> Option<String> {
        let v = self.secret(section, key, v)?;
        if !(v.starts_with("https://") || v.starts_with("http://"))
            || v.parse::<http::Uri>().is_err()
        {
            self.err(
                Some(section),
                key,
                format!(
                    "channels.{}.{key}: {v:?} is not an http(s) URL",
                    section.trim_end_matches(':')
                ),
            );
            return None;
        }
        Some(v.trim_end_matches('/').to_string())
    }

    fn slack(&mut self, s: RawSlack) -> Option<SlackConfig> {
        let bot_token = self.secret("slack:", "bot_token", &s.bot_token);
        let signing_secret = match &s.signing_secret {
            Some(v) => self.secret("slack:", "signing_secret", v),
            None => None,
        };
        let app_token = match &s.app_token {
            Some(v) => self.secret("slack:", "app_token", v),
            None => None,
        };
        if signing_secret.is_none() && app_token.is_none() {
            self.err(
                None,
                "slack:",
                "channels.slack: give signing_secret (for the interactivity URL, POST /slack/actions) or app_token (Socket Mode)".into(),
            );
            return None;
        }
        let api_base = self.channel_url(
            "slack:",
            "api_base",
            s.api_base.as_deref().unwrap_or("https://slack.com/api"),
        );
        Some(SlackConfig {
            bot_token: bot_token?,
            signing_secret,
            channel: s.channel,
            api_base: api_base?,
            app_id: s.app_id,
            team_id: s.team_id,
            app_token,
        })
    }

    fn teams(&mut self, t: RawTeams) -> Option<TeamsConfig> {
        let webhook_url = match &t.webhook_url {
            Some(u) => Some(self.channel_url("teams:", "webhook_url", u)?),
            None => None,
        };
        let any_bot = t.app_id.is_some()
            || t.app_password.is_some()
            || t.tenant_id.is_some()
            || t.service_url.is_some()
            || t.conversation.is_some();
        let bot = if any_bot {
            let mut missing = Vec::new();
            for (name, v) in [
                ("app_id", &t.app_id),
                ("app_password", &t.app_password),
                ("tenant_id", &t.tenant_id),
                ("service_url", &t.service_url),
                ("conversation", &t.conversation),
            ] {
                if v.is_none() {
                    missing.push(name);
                }
            }
            if !missing.is_empty() {
                self.err(
                    None,
                    "teams:",
                    format!(
                        "channels.teams: bot mode also needs {} (or give only webhook_url for Workflows mode)",
                        missing.join(", ")
                    ),
                );
                return None;
            }
            let req = |v: &Option<String>| v.clone().unwrap_or_default();
            let app_password = self.secret("teams:", "app_password", &req(&t.app_password))?;
            let service_url = self.channel_url("teams:", "service_url", &req(&t.service_url))?;
            let authority = self.channel_url(
                "teams:",
                "authority",
                t.authority
                    .as_deref()
                    .unwrap_or("https://login.microsoftonline.com"),
            )?;
            let openid_metadata = self.channel_url(
                "teams:",
                "openid_metadata",
                t.openid_metadata
                    .as_deref()
                    .unwrap_or("https://login.botframework.com/v1/.well-known/openidconfiguration"),
            )?;
            let jwks = match &t.jwks {
                Some(j) => Some(self.channel_url("teams:", "jwks", j)?),
                None => None,
            };
            Some(TeamsBot {
                app_id: req(&t.app_id),
                app_password,
                tenant_id: req(&t.tenant_id),
                service_url,
                conversation: req(&t.conversation),
                authority,
                openid_metadata,
                jwks,
            })
        } else {
            None
        };
        if bot.is_none() && webhook_url.is_none() {
            self.err(
                None,
                "teams:",
                "channels.teams: give webhook_url (Workflows) or app_id, app_password, tenant_id, service_url and conversation (bot)".into(),
            );
            return None;
        }
        Some(TeamsConfig { bot, webhook_url })
    }

    fn webhook(&mut self, w: RawWebhook) -> Option<WebhookConfig> {
        let url = self.channel_url("webhook:", "url", &w.url);
        let secret = self.secret("webhook:", "secret", &w.secret);
        let timeout = match &w.timeout {
            Some(t) => match parse_duration(t) {
                Ok(d) => d,
                Err(e) => {
                    self.err(
                        Some("webhook:"),
                        "timeout",
                        format!("channels.webhook.timeout: {e}"),
                    );
                    return None;
                }
            },
            None => Duration::from_secs(10),
        };
        Some(WebhookConfig {
            url: url?,
            secret: secret?,
            timeout,
        })
    }
}
