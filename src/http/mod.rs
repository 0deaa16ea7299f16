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
/// header (or a `_method` query parameter, as Rails, Laravel and Express read it)
/// names. Several overrides that disagree are refused.
pub fn effective_method(
    method: &str,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<String, AirlockError> {
    let mut named: Option<String> = None;
    let from_headers = METHOD_OVERRIDE_HEADERS.iter().flat_map(|h| {
        headers.get_all(*h).iter().map(move |v| {
            v.to_str()
                .map(str::to_string)
                .map_err(|_| AirlockError::new(Code::BadRequest, format!("{h} is not valid text")))
                .map(|v| (*h, v))
        })
    });
    let from_query = form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .filter(|(k, _)| k == "_method")
        .map(|(_, v)| Ok(("_method", v.into_owned())));
    for item in from_headers.chain(from_query) {
        let (h, v) = item?;
        {
            let v = v.trim().to_ascii_uppercase();
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

/// The body's content coding if it is anything but identity, looking at every
/// `Content-Encoding` header and every token in them (`identity` plus `gzip` is gzip).
/// An unreadable value counts as encoded.
pub fn content_encoding(headers: &HeaderMap) -> Option<&str> {
    for v in headers.get_all(http::header::CONTENT_ENCODING) {
        let Ok(s) = v.to_str() else {
            return Some("unreadable");
        };
        for t in s.split(',').map(str::trim) {
            if !t.is_empty() && !t.eq_ignore_ascii_case("identity") {
                return Some(t);
            }
        }
    }
    None
}

/// Query parameter names whose values are credentials, never shown or logged.
const SECRET_PARAMS: [&str; 16] = [
    "token",
    "access_token",
    "refresh_token",
    "id_token",
    "api_key",
    "apikey",
    "key",
    "secret",
    "client_secret",
    "password",
    "passwd",
    "signature",
    "sig",
    "code",
    "x-amz-signature",
    "x-amz-security-token",
];

/// A query string with the values of credential-like parameters replaced by
/// `REDACTED`. Unchanged (borrowed) when there are none.
pub fn redact_query(query: Option<&str>) -> Option<std::borrow::Cow<'_, str>> {
    let q = query?;
    let secret = |k: &str| SECRET_PARAMS.iter().any(|s| k.eq_ignore_ascii_case(s));
    if !form_urlencoded::parse(q.as_bytes()).any(|(k, _)| secret(&k)) {
        return Some(std::borrow::Cow::Borrowed(q));
    }
    let parts: Vec<String> = q
        .split('&')
        .map(|pair| {
            let name = pair.split('=').next().unwrap_or("");
            let decoded: String = form_urlencoded::parse(name.as_bytes())
                .map(|(k, _)| k.into_owned())
                .collect();
            if secret(&decoded) {
                format!("{name}=REDACTED")
            } else {
                pair.to_string()
            }
        })
        .collect();
    Some(std::borrow::Cow::Owned(parts.join("&")))
}

/// Hop-by-hop headers (RFC 9110 7.6.1, and HTTP2-Settings from RFC 7540 3.2.1)
/// never forwarded as they are.
pub const HOP_BY_HOP: [&str; 9] = [
    "http2-settings",
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_in_queries_are_redacted() {
        assert_eq!(redact_query(None), None);
        assert_eq!(redact_query(Some("a=1&b=2")).as_deref(), Some("a=1&b=2"));
        assert_eq!(
            redact_query(Some("a=1&api_key=s3cret&X-Amz-Signature=abc&b")).as_deref(),
            Some("a=1&api_key=REDACTED&X-Amz-Signature=REDACTED&b")
        );
        assert_eq!(
            redact_query(Some("%74oken=x")).as_deref(),
            Some("%74oken=REDACTED")
        );
    }
}
