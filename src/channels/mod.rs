//! Where reviewers are asked: Slack ([`slack`]), Microsoft Teams ([`teams`]) and a
//! signed CloudEvents webhook ([`webhook`]).
//!
//! Channels are reached only through the store's outbox: a lifecycle event's outbox
//! rows are written in the transaction that makes the change, and the [`dispatch`]er
//! claims them (one airlock replica per row), builds the [`Notice`] a reviewer needs
//! ([`notice`]: the request, its rules and their progress, recent decisions, a link)
//! and hands it to the channel, with retries and back-off. A channel that is down
//! delays only its own rows; the proxy, the other channels and the REST API go on,
//! and an approval whose notifications all fail is still decided through the API.
//!
//! A channel never decides anything itself: a vote arriving from chat (a signed
//! callback, checked here) goes through [`crate::approvals::Approvals::vote_via`], the
//! same eligibility and self-approval checks as the API, with the callback's evidence.

pub mod dispatch;
pub mod notice;
pub mod slack;
pub mod teams;
pub mod webhook;

pub use dispatch::Dispatcher;
pub use notice::{Notice, Recent};

use crate::config::Channels;
use std::sync::Arc;

/// Why a delivery failed.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// Worth trying again later (a connection failure, a timeout, `429`, `5xx`).
    #[error("{0}")]
    Transient(String),
    /// Will fail the same way again (bad credentials, a refused payload): not retried.
    #[error("{0}")]
    Permanent(String),
}

impl ChannelError {
    /// An HTTP client error, by whether it may pass on a retry.
    pub fn from_reqwest(what: &str, e: reqwest::Error) -> ChannelError {
        ChannelError::Transient(format!("{what}: {e}"))
    }

    /// A non-success HTTP status, by whether it may pass on a retry (`408`, `429`, `5xx`).
    pub fn from_status(what: &str, status: reqwest::StatusCode, body: &str) -> ChannelError {
        let text: String = body.chars().take(300).collect();
        let msg = format!("{what}: HTTP {status}: {text}");
        if status.is_server_error() || status.as_u16() == 429 || status.as_u16() == 408 {
            ChannelError::Transient(msg)
        } else {
            ChannelError::Permanent(msg)
        }
    }
}

/// A place reviewers are told about approvals.
#[async_trait::async_trait]
pub trait Channel: Send + Sync {
    /// Its name in `approval.channels` and the outbox (`slack`, `teams`, `webhook`).
    fn name(&self) -> &'static str;
    /// Delivers one notice. `message` is what this channel stored about the message
    /// it posted for the approval before (for example Slack's channel and `ts`), if
    /// any; the answer is what to store now (`None`: keep what is stored).
    async fn deliver(
        &self,
        notice: &Notice,
        message: Option<&str>,
    ) -> Result<Option<String>, ChannelError>;
}

/// The channels a configuration names, ready to deliver (with the HTTP client they
/// share).
pub fn build(cfg: &Channels, client: &reqwest::Client) -> Vec<Arc<dyn Channel>> {
    let mut out: Vec<Arc<dyn Channel>> = Vec::new();
    if let Some(s) = &cfg.slack {
        out.push(Arc::new(slack::SlackChannel::new(
            s.clone(),
            client.clone(),
        )));
    }
    if let Some(t) = &cfg.teams {
        out.push(Arc::new(teams::TeamsChannel::new(
            t.clone(),
            client.clone(),
        )));
    }
    if let Some(w) = &cfg.webhook {
        out.push(Arc::new(webhook::WebhookChannel::new(
            w.clone(),
            client.clone(),
        )));
    }
    out
}

/// The HTTP client channels call out with (TLS with the system's roots, timeouts).
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(5))
        .timeout(std::time::Duration::from_secs(15))
        .user_agent(concat!("airlock/", env!("CARGO_PKG_VERSION")))
        // A redirect would turn a POST into a GET, or lead somewhere the config does
        // not name: a channel's URL must be the real one.
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap_or_else(|_| reqwest::Client::new())
}

/// Whether an approval whose policy lists `channels` is told on `channel`: a rule
/// that names no channels is told on every configured one.
pub fn wants(channels: &[String], channel: &str) -> bool {
    channels.is_empty() || channels.iter().any(|c| c == channel)
}
