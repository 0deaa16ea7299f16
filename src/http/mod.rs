//! HTTP details shared by the proxy, the admin listener and the rule tests: path
//! normalization, method overrides, hop-by-hop headers and airlock's own JSON errors.

pub mod error;
pub mod normalize;

pub use error::{AirlockError, Code};

use http::{HeaderMap, HeaderName};

/// Headers that name a method other than the request line's (and kin).
pub const METHOD_OVERRIDE_HEADERS: [&str; 3] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// The method a request acts as: the request line's, or the one a method-override
/// header names. Several override headers (or values) that disagree are refused.
pub fn effective_method(method: &str, headers: &HeaderMap) -> Result<String, AirlockError> {
    let mut named: Option<String> = None;
    for h in METHOD_OVERRIDE_HEADERS {
        for v in headers.get_all(h) {
            let v = v
                .to_str()
                .map_err(|_| AirlockError::new(Code::BadRequest, format!("{h} is not valid text")))?
                .trim()
                .to_ascii_uppercase();
            if v.is_empty() || !v.bytes().all(|b| b.is_ascii_alphabetic()) {
                return Err(AirlockError::new(
                    Code::BadRequest,
                    format!("{h} does not name a method"),
                ));
            }
            match &named {
                Some(prev) if *prev != v => {
                    return Err(AirlockError::new(
                        Code::BadRequest,
                        "method override headers disagree",
                    ));
                }
                _ => named = Some(v),
            }
        }
    }
    Ok(named.unwrap_or_else(|| method.to_string()))
}

/// Hop-by-hop headers (RFC 9110 7.6.1) never forwarded as they are.
pub const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
];

/// Removes hop-by-hop headers, including every header the `Connection` header names.
/// `Upgrade` is removed too unless `keep_upgrade` (a WebSocket pass-through).
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let named: Vec<HeaderName> = headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for n in named {
        if keep_upgrade && n == http::header::UPGRADE {
            continue;
        }
        headers.remove(n);
    }
    for h in HOP_BY_HOP {
        headers.remove(h);
    }
    if !keep_upgrade {
        headers.remove(http::header::UPGRADE);
    }
}
