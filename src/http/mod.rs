//! HTTP details below the proxy, shared by the proxy, the admin listener and the rule
//! tests: the accept loop and its connection limits ([`listen`]), TLS on the
//! listeners with certificate reload ([`tls`]), bodies ([`body`])
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
pub mod tls;

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

/// An identity (reviewer id, agent owner, approver) as one person: NFKC-normalized
/// (`josé` composed or not, fullwidth `ａ`), invisible code points removed (zero-width
/// space, soft hyphen, byte-order mark, bidi controls), trimmed and [folded](fold).
pub fn canonical_identity(s: &str) -> String {
    use unicode_normalization::UnicodeNormalization;
    let visible: String = s.nfkc().filter(|c| !is_default_ignorable(*c)).collect();
    fold(visible.trim())
}

/// Unicode's Default_Ignorable_Code_Point: characters that render as nothing.
fn is_default_ignorable(c: char) -> bool {
    matches!(
        u32::from(c),
        0x00AD
            | 0x034F
            | 0x061C
            | 0x115F..=0x1160
            | 0x17B4..=0x17B5
            | 0x180B..=0x180F
            | 0x200B..=0x200F
            | 0x202A..=0x202E
            | 0x2060..=0x206F
            | 0x3164
            | 0xFE00..=0xFE0F
            | 0xFEFF
            | 0xFFA0
            | 0xFFF0..=0xFFF8
            | 0x1BCA0..=0x1BCA3
            | 0x1D173..=0x1D17A
            | 0xE0000..=0xE0FFF
    )
}

pub use error::{AirlockError, Code};
pub use headers::{content_encoding, is_secret_param, redact_query, strip_hop_by_hop, HOP_BY_HOP};
pub use method::{effective_method, MethodError, METHOD_OVERRIDE_HEADERS};
