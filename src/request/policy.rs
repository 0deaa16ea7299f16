//! Everything a request is decided against, built once per config and rules load.

use crate::config::Config;
use crate::http::route::Router;
use crate::identity::{Agents, Reviewers};
use crate::rules::RuleSet;
use std::sync::Arc;

/// Config, rules, routing table, agents and reviewers of one load. Immutable; a
/// reload builds a new one and swaps it in whole.
#[derive(Debug)]
pub struct Policy {
    pub cfg: Arc<Config>,
    pub rules: Arc<RuleSet>,
    pub router: Router,
    pub agents: Agents,
    pub reviewers: Reviewers,
}

impl Policy {
    /// Compiles the lookup tables of a config and its rules (no I/O).
    pub fn new(cfg: Arc<Config>, rules: Arc<RuleSet>) -> Policy {
        Policy {
            router: Router::new(&cfg.upstreams),
            agents: Agents::new(&cfg.agents),
            reviewers: Reviewers::with_oidc(
                &cfg.reviewers,
                cfg.admin.as_ref().and_then(|a| a.oidc.as_ref()),
            ),
            cfg,
            rules,
        }
    }
}
