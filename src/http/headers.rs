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

/// Words that make a query parameter's name credential-like: a name is split into
/// words at `-`, `_`, `.`, spaces and camelCase (`accessToken`, `X-Goog-Signature`,
/// `AWSAccessKeyId`, `private_token`, `token[]`) and is secret when any word is one of
/// these. Redacting too much only hides a value from the log; the digest still binds it.
const SECRET_WORDS: [&str; 33] = [
    "token",
    "accesstoken",
    "apikey",
    "key",
    "secret",
    "password",
    "passwd",
    "pwd",
    "pass",
    "passphrase",
    "passcode",
    "pin",
    "auth",
    "authorization",
    "jwt",
    "bearer",
    "signature",
    "sig",
    "credential",
    "credentials",
    "session",
    "sessionid",
    "sid",
    "cookie",
    "assertion",
    "otp",
    "code",
    "ticket",
    "nonce",
    "hmac",
    "private",
    "sas",
    "saml",
];

/// Parts that make a name credential-like wherever they appear in it, even inside
/// one lowercase word (`authtoken`, `clientsecret`, `jsessionid`, `PHPSESSID`,
/// `csrfmiddlewaretoken`, `oauth_verifier`).
const SECRET_PARTS: [&str; 13] = [
    "token",
    "secret",
    "passw",
    "passphrase",
    "pwd",
    "sess",
    "auth",
    "cred",
    "apikey",
    "accesskey",
    "privatekey",
    "verifier",
    "csrf",
];

/// The words of a parameter name, lowercased (see [`SECRET_WORDS`]).
fn name_words(name: &str) -> Vec<String> {
    let name = match name.find('[') {
        Some(i) if i > 0 => &name[..i],
        _ => name,
    };
    let chars: Vec<char> = name.chars().collect();
    let mut words = Vec::new();
    let mut cur = String::new();
    for (i, &c) in chars.iter().enumerate() {
        if !c.is_alphanumeric() {
            if !cur.is_empty() {
                words.push(std::mem::take(&mut cur));
            }
            continue;
        }
        let prev = i.checked_sub(1).map(|j| chars[j]);
        let next = chars.get(i + 1).copied();
        let boundary = c.is_uppercase()
            && prev.is_some_and(|p| {
                p.is_lowercase()
                    || p.is_ascii_digit()
                    || (p.is_uppercase() && next.is_some_and(char::is_lowercase))
            });
        if boundary && !cur.is_empty() {
            words.push(std::mem::take(&mut cur));
        }
        cur.extend(c.to_lowercase());
    }
    if !cur.is_empty() {
        words.push(cur);
    }
    words
}

/// Whether a query parameter's name is credential-like: the built-in words, or a name
/// in `extra` (`audit.redact_query`, compared without regard to case).
pub fn is_secret_param(name: &str, extra: &[String]) -> bool {
    if extra.iter().any(|e| e.eq_ignore_ascii_case(name.trim())) {
        return true;
    }
    let words = name_words(name);
    let joined: String = words.concat();
    words
        .iter()
        .chain(std::iter::once(&joined))
        .any(|w| SECRET_WORDS.contains(&w.as_str()))
        || SECRET_PARTS.iter().any(|p| joined.contains(p))
}

/// Whether a value is a JSON Web Token (`eyJ…`, three base64url parts): one is
/// redacted whatever its parameter is called.
fn looks_like_jwt(v: &str) -> bool {
    v.starts_with("eyJ")
        && v.split('.').count() == 3
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'='))
}

/// A query string with the values of credential-like parameters replaced by
/// `REDACTED` (see [`is_secret_param`]; `extra` is `audit.redact_query`). Unchanged
/// (borrowed) when there are none. Every `&`- and `;`-separated piece is judged, so
/// no upstream's reading of the query shows a secret.
pub fn redact_query<'q>(
    query: Option<&'q str>,
    extra: &[String],
) -> Option<std::borrow::Cow<'q, str>> {
    let q = query?;
    let secret_piece = |piece: &str| -> bool {
        let mut kv = piece.splitn(2, '=');
        let name = kv.next().unwrap_or("");
        let value = kv.next().unwrap_or("");
        let decode = |s: &str| -> String {
            form_urlencoded::parse(format!("{s}=").as_bytes())
                .map(|(k, _)| k.into_owned())
                .next()
                .unwrap_or_default()
        };
        is_secret_param(&decode(name), extra) || looks_like_jwt(&decode(value))
    };
    let any = q
        .split(['&', ';'])
        .any(|piece| !piece.is_empty() && secret_piece(piece));
    if !any {
        return Some(std::borrow::Cow::Borrowed(q));
    }
    let mut out = String::with_capacity(q.len());
    for (i, pair) in q.split('&').enumerate() {
        if i > 0 {
            out.push('&');
        }
        for (j, piece) in pair.split(';').enumerate() {
            if j > 0 {
                out.push(';');
            }
            if !piece.is_empty() && secret_piece(piece) {
                out.push_str(piece.split('=').next().unwrap_or(""));
                out.push_str("=REDACTED");
            } else {
                out.push_str(piece);
            }
        }
    }
    Some(std::borrow::Cow::Owned(out))
}

#[cfg(test)]
mod redaction_tests {
    use super::*;

    #[test]
    fn credential_like_names_in_every_spelling() {
        for n in [
            "api-key",
            "private_token",
            "accessToken",
            "auth",
            "jwt",
            "X-Goog-Signature",
            "pwd",
            "session",
            "passphrase",
            "client_assertion",
            "token[]",
            "AWSAccessKeyId",
            "X-Amz-Credential",
            "X-Amz-Security-Token",
            "access_token",
            "id_token",
            "refresh_token",
            "client_secret",
            "password",
            "sig",
            "code",
            "apikey",
            "key",
            "SessionId",
            "PHPSESSID",
            "sessid",
            "authToken",
            "Authorization",
            "authtoken",
            "apitoken",
            "accesskey",
            "secretkey",
            "clientsecret",
            "refreshtoken",
            "sessiontoken",
            "privatetoken",
            "jsessionid",
            "csrfmiddlewaretoken",
            "oauth_verifier",
        ] {
            let q = format!("{n}=s3cr3t&page=2");
            let r = redact_query(Some(&q), &[]).unwrap();
            assert!(!r.contains("s3cr3t"), "{n}: {r}");
            assert!(r.contains("page=2"), "{n}: {r}");
        }
        // A name only audit.redact_query makes secret.
        let q = "tenant_x=s3cr3t";
        assert_eq!(redact_query(Some(q), &[]).unwrap(), q);
        let extra = vec!["TENANT_X".to_string()];
        assert_eq!(redact_query(Some(q), &extra).unwrap(), "tenant_x=REDACTED");
        for n in ["page", "limit", "sort", "q", "name", "region"] {
            let q = format!("{n}=visible");
            assert_eq!(redact_query(Some(&q), &[]).unwrap(), q.as_str(), "{n}");
        }
    }

    #[test]
    fn encoded_names_semicolons_and_jwts() {
        let r = redact_query(Some("%74oken=s3cr3t"), &[]).unwrap();
        assert!(!r.contains("s3cr3t"), "{r}");
        let r = redact_query(Some("a=1;token=s3cr3t"), &[]).unwrap();
        assert!(!r.contains("s3cr3t"), "{r}");
        let r = redact_query(Some("x=eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln"), &[]).unwrap();
        assert_eq!(r, "x=REDACTED");
    }
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
        assert_eq!(redact_query(None, &[]), None);
        assert_eq!(
            redact_query(Some("a=1&b=2"), &[]).as_deref(),
            Some("a=1&b=2")
        );
        assert_eq!(
            redact_query(Some("a=1&api_key=s3cret&X-Amz-Signature=abc&b"), &[]).as_deref(),
            Some("a=1&api_key=REDACTED&X-Amz-Signature=REDACTED&b")
        );
        assert_eq!(
            redact_query(Some("%74oken=x"), &[]).as_deref(),
            Some("%74oken=REDACTED")
        );
    }
}
