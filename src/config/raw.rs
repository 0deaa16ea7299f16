//! Raw configuration as written in `airlock.yaml`: serde types only.
//!
//! Every struct rejects unknown keys so a typo is an error with a location, never a
//! silently ignored setting. Nothing here is validated beyond its YAML shape; that is
//! `super::build`'s job.

use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub listen: Option<String>,
    pub tls: Option<super::identity::RawTls>,
    pub admin: Option<RawAdmin>,
    #[serde(default)]
    pub workers: usize,
    pub mode: Option<String>,
    pub default: Option<String>,
    pub store: Option<String>,
    #[serde(default)]
    pub upstreams: Vec<RawUpstream>,
    pub rules: Option<String>,
    #[serde(default)]
    pub agents: Vec<RawAgent>,
    #[serde(default)]
    pub reviewers: Vec<RawReviewer>,
    pub channels: Option<super::channels::RawChannels>,
    pub audit: Option<RawAudit>,
    pub limits: Option<RawLimits>,
    pub approval: Option<RawApprovalDefaults>,
    pub log: Option<RawLog>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub listen: Option<String>,
    pub public_url: Option<String>,
    pub max_connections: Option<usize>,
    pub tls: Option<super::identity::RawTls>,
    pub oidc: Option<super::identity::RawOidc>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    pub name: String,
    pub prefix: Option<String>,
    pub host: Option<String>,
    pub url: String,
    #[serde(default)]
    pub inject: BTreeMap<String, String>,
    pub ca: Option<String>,
    /// Client certificate and key airlock presents to an upstream that demands mTLS.
    pub client_cert: Option<String>,
    pub client_key: Option<String>,
    pub timeout: Option<String>,
    pub connect_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    /// How the upstream reads requests (issue: two parsers, two readings).
    pub path_case: Option<String>,
    pub path_params: Option<String>,
    pub encoded_slash: Option<String>,
    #[serde(default)]
    pub allow_methods: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAgent {
    pub id: String,
    pub key: Option<String>,
    pub header: Option<String>,
    pub owner: Option<String>,
    pub jwt: Option<super::identity::RawJwt>,
    pub mtls: Option<super::identity::RawMtls>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawReviewer {
    pub id: String,
    #[serde(default)]
    pub groups: Vec<String>,
    pub token: Option<String>,
    /// The OIDC `sub` this reviewer signs in as (when `admin.oidc.claim` is `sub`).
    pub subject: Option<String>,
    pub slack: Option<String>,
    pub teams: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAudit {
    pub level: Option<String>,
    pub file: Option<String>,
    /// Private key (PKCS#8 PEM) that signs checkpoints.
    pub signing_key: Option<String>,
    /// Public key (SPKI PEM) that `audit verify` checks checkpoints with.
    pub verify_key: Option<String>,
    /// Query parameter names redacted in the log, beyond the built-in pattern.
    #[serde(default)]
    pub redact_query: Vec<String>,
    /// Most events between two signed checkpoints.
    pub checkpoint_every: Option<u64>,
    /// Largest spread of event time between two signed checkpoints.
    pub checkpoint_interval: Option<String>,
    /// File the latest signed checkpoint is published to.
    pub witness: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub max_body: Option<String>,
    pub inspect_body: Option<String>,
    pub header_timeout: Option<String>,
    pub body_timeout: Option<String>,
    pub shutdown_grace: Option<String>,
    pub max_held: Option<usize>,
    pub max_held_per_agent: Option<usize>,
    pub max_connections: Option<usize>,
    pub idle_timeout: Option<String>,
    pub max_held_bytes: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApprovalDefaults {
    pub timeout: Option<String>,
    pub reuse: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    pub format: Option<String>,
    pub level: Option<String>,
}
