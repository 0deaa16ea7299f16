//! Microsoft Teams: approval cards in a Teams conversation, two ways.
//!
//! - **Bot mode** (a single-tenant Bot Framework app): a proactive Adaptive Card
//!   ([`card`]) posted through the Bot Connector ([`connector`]) with `Action.Execute`
//!   Approve / Deny buttons; every later event replaces the card for everyone
//!   (`PUT …/activities/{id}`) with the approval as it stands. Clicks arrive at
//!   `POST /teams/actions` ([`action`]), verified by Bot Framework's signed token
//!   ([`verify`]).
//! - **Workflows mode** (no bot): the same card with an "Open in airlock" link, posted
//!   to a Workflows webhook when an approval opens, is reminded or escalated, and when
//!   it is decided or expires (a webhook cannot update what it posted).
//!
//! With both configured, both are done. This module only tells; it never decides: a
//! click becomes a vote only through the approvals layer, with the same checks as the
//! API.

pub mod action;
pub mod card;
pub mod connector;
pub mod verify;

use super::{Channel, ChannelError, Notice};
use crate::approvals::Lifecycle;
use crate::config::TeamsConfig;
use card::Mode;
use connector::{CardRef, Connector};
use std::collections::HashMap;
use std::sync::Mutex;

/// Posts and updates approval cards in one Teams conversation (and/or a Workflows
/// webhook).
pub struct TeamsChannel {
    cfg: TeamsConfig,
    client: reqwest::Client,
    connector: Option<Connector>,
    /// Cards the bot posted for a delivery that then failed (the webhook half): the
    /// retry replaces them instead of posting a second card.
    posted: Mutex<HashMap<String, CardRef>>,
}

impl TeamsChannel {
    /// The channel for `cfg`, calling out with `client`.
    pub fn new(cfg: TeamsConfig, client: reqwest::Client) -> TeamsChannel {
        let connector = cfg.bot.clone().map(|b| Connector::new(b, client.clone()));
        TeamsChannel {
            cfg,
            client,
            connector,
            posted: Mutex::new(HashMap::new()),
        }
    }

    fn posted(&self) -> std::sync::MutexGuard<'_, HashMap<String, CardRef>> {
        match self.posted.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Posts or replaces the bot's card; answers the reference to store when it posted.
    async fn deliver_bot(
        &self,
        connector: &Connector,
        notice: &Notice,
        message: Option<&str>,
    ) -> Result<Option<CardRef>, ChannelError> {
        let activity = card::activity(card::card(notice, Mode::Bot));
        let known = message
            .and_then(|m| serde_json::from_str::<CardRef>(m).ok())
            .or_else(|| self.posted().get(&notice.approval.id).cloned());
        match known {
            Some(at) => {
                connector.replace(&at, &activity).await?;
                Ok(None)
            }
            None => Ok(Some(connector.post(&activity).await?)),
        }
    }
}

/// Whether a Workflows webhook is told about `event` (it cannot update a card, so only
/// what needs a reviewer's eye, and the end).
fn webhook_wants(event: &Lifecycle) -> bool {
    matches!(
        event,
        Lifecycle::Opened
            | Lifecycle::Reminded
            | Lifecycle::Escalated { .. }
            | Lifecycle::Decided { .. }
            | Lifecycle::Expired
    )
}

#[async_trait::async_trait]
impl Channel for TeamsChannel {
    fn name(&self) -> &'static str {
        "teams"
    }

    async fn deliver(
        &self,
        notice: &Notice,
        message: Option<&str>,
    ) -> Result<Option<String>, ChannelError> {
        let mut posted = None;
        if let Some(connector) = &self.connector {
            posted = self.deliver_bot(connector, notice, message).await?;
        }
        if let Some(url) = &self.cfg.webhook_url {
            if webhook_wants(&notice.event.what) {
                let message = card::webhook_message(card::card(notice, Mode::Webhook));
                if let Err(e) = connector::post_webhook(&self.client, url, &message).await {
                    if let Some(at) = posted {
                        self.posted().insert(notice.approval.id.clone(), at);
                    }
                    return Err(e);
                }
            }
        }
        self.posted().remove(&notice.approval.id);
        match posted {
            Some(at) => serde_json::to_string(&at)
                .map(Some)
                .map_err(|e| ChannelError::Permanent(format!("teams: {e}"))),
            None => Ok(None),
        }
    }
}
