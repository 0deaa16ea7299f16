//! Parameters and headers as the laxest upstream reads them. A strict rule (deny,
//! approve) sees every reading; an allow rule sees only the plain one.
//!
//! - Parameter names are compared as ASP.NET binds them (case-insensitively, under
//!   Unicode folding), with Rails' and PHP's array suffix dropped (`force[]`, `force[0]`)
//!   and PHP's mangling of `.` and spaces to `_`.
//! - A query string is also split at `;`, as Python before 3.9.2 and Go before 1.17 did.
//! - A header's name with `_` is the same header to CGI, WSGI and PHP (`X_Env` is
//!   `HTTP_X_ENV`, as is `X-Env`); a value is also read as a comma-separated list.

use super::json::fold;
use http::{HeaderMap, HeaderName};
use std::borrow::Cow;

/// A parameter name as a lax binder keys it.
pub fn canonical_param(name: &str) -> String {
    // PHP registers names as C strings: `force%00junk` is `force`.
    let name = name.split('\0').next().unwrap_or("");
    let mut n = name.trim_start();
    // `force[]`, `force[0]`: the same parameter, as an array.
    if let Some(open) = n.find('[') {
        if n.ends_with(']') && open > 0 {
            let inner = &n[open + 1..n.len() - 1];
            if inner.is_empty() || inner.bytes().all(|b| b.is_ascii_digit()) {
                n = &n[..open];
            }
        }
    }
    fold(&n.replace(['.', ' '], "_"))
}

/// Whether a request's parameter `name` is `key`: exactly, or (`want`, its canonical
/// name, given for strict rules) as [`same_param`] reads it.
fn is_key(name: &str, key: &str, want: Option<&str>) -> bool {
    name == key || want.is_some_and(|w| same_param(name, w))
}

/// Whether a request's parameter name is the one whose canonical name is `want`:
/// itself, or (ASP.NET binds `request.force` to a parameter `request`'s `force`) its
/// last `.`-separated part.
fn same_param(name: &str, want: &str) -> bool {
    canonical_param(name) == want
        || name
            .rsplit_once('.')
            .is_some_and(|(_, last)| canonical_param(last) == want)
}

/// Every `(name, value)` pair of a query string or form body. With `strict`, the text
/// is read a second time with `;` as a separator too (only when it holds one).
pub fn pairs(text: &[u8], strict: bool) -> Vec<(Cow<'_, str>, Cow<'_, str>)> {
    let mut out: Vec<_> = form_urlencoded::parse(text).collect();
    if strict && text.contains(&b';') {
        for piece in text.split(|&b| b == b'&') {
            if piece.contains(&b';') {
                for sub in piece.split(|&b| b == b';') {
                    out.extend(form_urlencoded::parse(sub));
                }
            }
        }
    }
    out
}

/// The values of parameter `key` among `pairs`: an exact name for allow rules, the
/// canonical name for strict ones.
pub fn values_of<'p>(
    pairs: &'p [(Cow<'p, str>, Cow<'p, str>)],
    key: &'p str,
    strict: bool,
) -> impl Iterator<Item = &'p str> + 'p {
    let want = strict.then(|| canonical_param(key));
    pairs
        .iter()
        .filter(move |(k, _)| is_key(k, key, want.as_deref()))
        .map(|(_, v)| v.as_ref())
}

/// The values of header `name`: for allow rules every line as it is; for strict rules
/// also the lines of names that differ by `_` for `-`, and each element of a
/// comma-separated value. Allocates only when some header name holds `_`.
pub fn header_values<'h>(
    headers: &'h HeaderMap,
    name: &'h HeaderName,
    strict: bool,
) -> impl Iterator<Item = &'h str> + 'h {
    let text = |v: &'h http::HeaderValue| v.to_str().unwrap_or("\u{fffd}");
    let alike: Vec<&'h str> = if strict && headers.keys().any(|k| k.as_str().contains('_')) {
        let want = name.as_str().replace('_', "-");
        headers
            .iter()
            .filter(|(k, _)| *k != name && k.as_str().replace('_', "-") == want)
            .map(|(_, v)| text(v))
            .collect()
    } else {
        Vec::new()
    };
    headers
        .get_all(name)
        .iter()
        .map(text)
        .chain(alike)
        .flat_map(move |line| {
            let elements = (strict && line.contains(','))
                .then(|| line.split(',').map(str::trim))
                .into_iter()
                .flatten();
            std::iter::once(line).chain(elements)
        })
}

/// The values of cookie `key` (its name compared as a parameter's).
pub fn cookie_values<'h>(
    headers: &'h HeaderMap,
    key: &'h str,
) -> impl Iterator<Item = &'h str> + 'h {
    let want = canonical_param(key);
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.split_once('='))
        .filter(move |(k, _)| same_param(k.trim(), &want))
        .map(|(_, v)| v.trim())
}

/// The values of parameter `key` in a query string (see [`pairs`] and
/// [`values_of`]), without collecting the pairs first.
pub fn query_values<'q>(
    query: &'q [u8],
    key: &'q str,
    strict: bool,
) -> impl Iterator<Item = Cow<'q, str>> + 'q {
    let want = strict.then(|| canonical_param(key));
    let semicolons = strict && query.contains(&b';');
    let extra = semicolons
        .then(|| {
            query
                .split(|&b| b == b'&')
                .filter(|p| p.contains(&b';'))
                .flat_map(|p| p.split(|&b| b == b';'))
                .flat_map(form_urlencoded::parse)
        })
        .into_iter()
        .flatten();
    form_urlencoded::parse(query)
        .chain(extra)
        .filter(move |(k, _)| is_key(k, key, want.as_deref()))
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_names_fold_as_lax_binders_read_them() {
        for n in ["force", "FORCE", "Force", "force[]", "force[0]", " force"] {
            assert_eq!(canonical_param(n), canonical_param("force"), "{n:?}");
        }
        assert_eq!(canonical_param("user.id"), canonical_param("user_id"));
        assert_eq!(canonical_param("ſort"), canonical_param("sort"));
        assert_eq!(canonical_param("force\0junk"), canonical_param("force"));
        assert_ne!(canonical_param("force[x]"), canonical_param("force"));
    }

    #[test]
    fn semicolons_are_a_second_reading() {
        let p = pairs(b"a=1;force=true", true);
        assert!(values_of(&p, "force", true).any(|v| v == "true"));
        let p = pairs(b"a=1;force=true", false);
        assert!(values_of(&p, "force", false).next().is_none());
    }

    #[test]
    fn header_lists_and_underscores() {
        let mut h = HeaderMap::new();
        h.insert("x-environment", "dev, prod".parse().unwrap());
        h.insert("x_tier", "prod".parse().unwrap());
        let env = HeaderName::from_static("x-environment");
        let all = |name: &HeaderName, strict: bool| -> Vec<String> {
            header_values(&h, name, strict)
                .map(str::to_string)
                .collect()
        };
        assert!(all(&env, true).contains(&"prod".to_string()));
        assert_eq!(all(&env, false), ["dev, prod"]);
        let tier = HeaderName::from_static("x-tier");
        assert_eq!(all(&tier, true), ["prod"]);
        assert!(all(&tier, false).is_empty());
        let q: Vec<_> = query_values(b"a=1;FORCE[]=true", "force", true).collect();
        assert_eq!(q, ["true"]);
    }
}
