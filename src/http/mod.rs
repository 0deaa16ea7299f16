//! HTTP details below the proxy, shared by the proxy, the admin listener and the rule
//! tests: the accept loop and its connection limits ([`listen`]), bodies ([`body`])
//! and the byte budget of those kept in memory ([`budget`]), case folding
//! ([`fold`]), routing ([`route`]), path normalization ([`normalize`]), method
//! overrides ([`method`]), hop-by-hop headers and redaction ([`headers`]), and
//! airlock's own JSON answers ([`error`]). Nothing here knows about rules, approvals
//! or the proxy.

pub mod body;
pub mod budget;
pub mod error;
pub mod headers;
pub mod listen;
pub mod method;
pub mod normalize;
pub mod route;

/// Unicode case folding as Go's `encoding/json` compares field names (each character
/// lowered, then raised: `ſ` and `s` both become `S`, the Kelvin sign and `k` both
/// `K`); used wherever a lax upstream or an IdP compares names without regard to
/// case. Full mappings are used, so the fold is, if anything, broader than Go's.
pub fn fold(s: &str) -> String {
    s.chars()
        .flat_map(char::to_lowercase)
        .flat_map(char::to_uppercase)
        .collect()
}

pub use error::{AirlockError, Code};
pub use headers::{content_encoding, is_secret_param, redact_query, strip_hop_by_hop, HOP_BY_HOP};
pub use method::{effective_method, MethodError, METHOD_OVERRIDE_HEADERS};
