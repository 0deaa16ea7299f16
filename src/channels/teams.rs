//! Microsoft Teams: Adaptive Cards through the Bot Connector (Action.Execute buttons,
//! verified callbacks) or a Workflows webhook. (Being built.)

use super::{Channel, ChannelError, Notice};
use crate::config::TeamsConfig;

/// Posts and updates approval messages in one Teams conversation.
pub struct TeamsChannel {
    #[allow(dead_code)]
    cfg: TeamsConfig,
    #[allow(dead_code)]
    client: reqwest::Client,
}

impl TeamsChannel {
    pub fn new(cfg: TeamsConfig, client: reqwest::Client) -> TeamsChannel {
        TeamsChannel { cfg, client }
    }
}

#[async_trait::async_trait]
impl Channel for TeamsChannel {
    fn name(&self) -> &'static str {
        "teams"
    }

    async fn deliver(
        &self,
        _notice: &Notice,
        _message: Option<&str>,
    ) -> Result<Option<String>, ChannelError> {
        Err(ChannelError::Permanent("teams: not built yet".into()))
    }
}
