//! The agent-facing proxy: accept, identify, normalize, decide, then forward, deny
//! or hold. [`server`] owns connections; [`handle`] walks one request through the
//! steps of SPEC "Request path" in order; [`forward`] talks to upstreams.
//!
//! Invariant: nothing reaches [`forward`] that the rules did not allow (or, in
//! `observe` mode, that they would have held or denied, which is logged), and a held
//! request is forwarded only by the approval path, once.

pub mod body;
pub mod demo;
pub mod forward;
pub mod handle;
pub mod route;
pub mod server;

use crate::config::Config;
use crate::identity::Agents;
use crate::rules::RuleSet;
use forward::{ClientError, UpstreamClient};
use route::Router;
use std::sync::Arc;

/// Everything derived from one config + rules load. Swapped whole on reload.
pub struct Snapshot {
    pub cfg: Arc<Config>,
    pub rules: Arc<RuleSet>,
    pub router: Router,
    pub agents: Agents,
    pub clients: Vec<UpstreamClient>,
    /// Metric handles per upstream, in `cfg.upstreams` order.
    pub metrics: Vec<crate::metrics::UpstreamMetrics>,
}

impl Snapshot {
    /// Builds routing, identities and pooled clients for a config and its rules.
    pub fn new(
        cfg: Arc<Config>,
        rules: Arc<RuleSet>,
        metrics: &crate::metrics::Metrics,
    ) -> Result<Snapshot, ClientError> {
        let clients = cfg
            .upstreams
            .iter()
            .map(UpstreamClient::new)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Snapshot {
            router: Router::new(&cfg.upstreams),
            agents: Agents::new(&cfg.agents),
            clients,
            metrics: cfg
                .upstreams
                .iter()
                .map(|u| metrics.for_upstream(&u.name))
                .collect(),
            cfg,
            rules,
        })
    }
}
