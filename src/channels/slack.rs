//! Slack: approval messages with Block Kit, Approve/Deny buttons, signed interactivity
//! callbacks and Socket Mode. (Being built.)

pub mod socket;

use super::{Channel, ChannelError, Notice};
use crate::config::SlackConfig;

/// Posts and updates approval messages in one Slack channel.
pub struct SlackChannel {
    #[allow(dead_code)]
    cfg: SlackConfig,
    #[allow(dead_code)]
    client: reqwest::Client,
}

impl SlackChannel {
    pub fn new(cfg: SlackConfig, client: reqwest::Client) -> SlackChannel {
        SlackChannel { cfg, client }
    }
}

#[async_trait::async_trait]
impl Channel for SlackChannel {
    fn name(&self) -> &'static str {
        "slack"
    }

    async fn deliver(
        &self,
        _notice: &Notice,
        _message: Option<&str>,
    ) -> Result<Option<String>, ChannelError> {
        Err(ChannelError::Permanent("slack: not built yet".into()))
    }
}
