//! A generic webhook: each lifecycle event as a CloudEvents 1.0 JSON event, signed
//! with HMAC-SHA256 (`X-Airlock-Signature`). (Being built.)

use super::{Channel, ChannelError, Notice};
use crate::config::WebhookConfig;

/// POSTs lifecycle events to one URL.
pub struct WebhookChannel {
    #[allow(dead_code)]
    cfg: WebhookConfig,
    #[allow(dead_code)]
    client: reqwest::Client,
}

impl WebhookChannel {
    pub fn new(cfg: WebhookConfig, client: reqwest::Client) -> WebhookChannel {
        WebhookChannel { cfg, client }
    }
}

#[async_trait::async_trait]
impl Channel for WebhookChannel {
    fn name(&self) -> &'static str {
        "webhook"
    }

    async fn deliver(
        &self,
        _notice: &Notice,
        _message: Option<&str>,
    ) -> Result<Option<String>, ChannelError> {
        Err(ChannelError::Permanent("webhook: not built yet".into()))
    }
}
