//! Routing: which upstream a request is for, by `Host` header or path prefix.
//! Pure and allocation-free per request.

use crate::config::{Route, Upstream};
use std::collections::HashMap;

/// The routing table built once from the configured upstreams.
#[derive(Debug, Clone, Default)]
pub struct Router {
    hosts: HashMap<String, usize>,
    /// Prefix routes, longest prefix first.
    prefixes: Vec<(String, usize)>,
}

impl Router {
    pub fn new(upstreams: &[Upstream]) -> Router {
        let mut r = Router::default();
        for (i, u) in upstreams.iter().enumerate() {
            match &u.route {
                Route::Host(h) => {
                    // The first upstream with a host wins, as for prefixes (`rules
                    // check` warns about the second). A trailing dot is dropped, as it
                    // is from requests.
                    let h = h.trim_end_matches('.').to_ascii_lowercase();
                    r.hosts.entry(h).or_insert(i);
                }
                Route::Prefix(p) => r.prefixes.push((p.clone(), i)),
            }
        }
        r.prefixes.sort_by_key(|p| std::cmp::Reverse(p.0.len()));
        r
    }

    /// The upstream index and the path it will see (prefix removed). `path` must
    /// already be normalized; `host` is the request's host without port.
    pub fn route<'p>(&self, host: Option<&str>, path: &'p str) -> Option<(usize, &'p str)> {
        if let Some(h) = host {
            let h = h.trim_end_matches('.');
            let found = if h.bytes().any(|b| b.is_ascii_uppercase()) {
                self.hosts.get(&h.to_ascii_lowercase())
            } else {
                self.hosts.get(h)
            };
            if let Some(&i) = found {
                return Some((i, path));
            }
        }
        for (p, i) in &self.prefixes {
            if let Some(rest) = path.strip_prefix(p.as_str()) {
                if rest.is_empty() {
                    return Some((*i, "/"));
                }
                if rest.starts_with('/') {
                    return Some((*i, rest));
                }
            }
        }
        None
    }
}

/// The `Host` header and the request target name different hosts (ambiguous).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the Host header and the request target name different hosts")]
pub struct HostMismatch;

/// The host a request names: `Host` header, or the URI authority (HTTP/2), without port.
/// Both present and different is ambiguous and refused.
pub fn request_host<'a>(
    uri: &'a http::Uri,
    headers: &'a http::HeaderMap,
) -> Result<Option<&'a str>, HostMismatch> {
    let header = match headers.get(http::header::HOST) {
        Some(v) => Some(v.to_str().map_err(|_| HostMismatch)?),
        None => None,
    };
    let strip = |h: &'a str| -> Result<&'a str, HostMismatch> {
        if h.starts_with('[') {
            // An IPv6 literal: keep "[…]", drop the port.
            return h.find(']').map(|i| &h[..=i]).ok_or(HostMismatch);
        }
        Ok(h.rsplit_once(':').map(|(a, _)| a).unwrap_or(h))
    };
    match (header, uri.host()) {
        (Some(h), Some(a)) => {
            let h = strip(h)?;
            if !h.eq_ignore_ascii_case(a) {
                return Err(HostMismatch);
            }
            Ok(Some(h))
        }
        (Some(h), None) => Ok(Some(strip(h)?)),
        (None, Some(a)) => Ok(Some(a)),
        (None, None) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(h: &str) -> Result<Option<String>, HostMismatch> {
        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::HOST, h.parse().unwrap());
        request_host(&"/".parse().unwrap(), &headers).map(|o| o.map(str::to_string))
    }

    #[test]
    fn hosts_with_ports_and_ipv6_literals() {
        assert_eq!(host("example.com:8080"), Ok(Some("example.com".into())));
        assert_eq!(host("[::1]:8080"), Ok(Some("[::1]".into())));
        assert_eq!(host("[::1"), Err(HostMismatch));
        assert_eq!(host("["), Err(HostMismatch));
    }
}
