//! The phases every agent request goes through before anything is sent anywhere,
//! shared by the proxy and by `airlock rules test` / `rules explain`, so the two can
//! never disagree:
//!
//! 1. [`prepare`]: host, path normalization, route, hop-by-hop headers, identity,
//!    method override — each step may refuse the request ([`Refusal`]);
//! 2. [`decide`]: the rules, reading the body only when a remaining candidate rule
//!    inspects it.
//!
//! What the request is decided against is one immutable [`Policy`] (config, rules,
//! routing table, agents, reviewers), swapped whole on reload. Every phase writes
//! what it learned into the request's [`RequestRecord`], which the proxy's exit hook
//! turns into the audit event, the metrics and the access log line.
//! This module performs no network I/O and never forwards anything.

pub mod decide;
pub mod policy;
pub mod prepare;
pub mod record;

pub use decide::{decide, view, DecideError, Inspected};
pub use policy::Policy;
pub use prepare::{prepare, Identify, Prepared, Refusal};
pub use record::RequestRecord;
