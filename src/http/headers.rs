//! Header rules every forwarded request and response follows: hop-by-hop headers,
//! content codings, and the credential-like query values nobody may read in a log.

use http::{HeaderMap, HeaderName};

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
