//! The agent-facing proxy. [`server`] accepts connections; [`handle`] walks one
//! request through the phases in order — prepare and decide ([`crate::request`]),
//! then deny, hold ([`hold`]) or forward ([`forward`]) — and ends every request in
//! the one exit hook ([`exit`]), which records the outcome: the audit event, the
//! metrics and the access log line. [`error`] decides, in one place, what the agent
//! is answered for each way a request can fail. [`simulate`] runs the same phases
//! without the network, for `airlock rules test` and `rules explain`.
//!
//! Invariant: nothing reaches [`forward`] that the rules did not allow (or, in
//! `observe` mode, that they would have held or denied, which is logged), and a held
//! request is forwarded only by the approval path, once.

pub mod error;
pub mod exit;
pub mod forward;
pub mod handle;
pub mod hold;
pub mod server;
pub mod simulate;

pub use error::ProxyError;
