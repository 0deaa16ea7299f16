//! What every forwarded request and response gets: the upstream's URI, hop-by-hop
//! headers removed, `Host` set to the upstream, `X-Forwarded-*` and `Via`, and the
//! upstream's `inject` credentials.

use crate::config::{Target, Upstream};
use crate::http::body::{boxed, ProxyBody};
use crate::http::strip_hop_by_hop;
use http::{header, HeaderMap, HeaderValue, Response, Uri};

/// What the proxy knows about the client connection, for `X-Forwarded-*`.
#[derive(Debug, Clone, Copy)]
pub struct ClientInfo<'a> {
    pub ip: std::net::IpAddr,
    pub host: Option<&'a str>,
    pub tls: bool,
}

/// The URI the upstream will see: its base path, the routed path, the original query.
pub fn upstream_uri(
    u: &Upstream,
    path: &str,
    query: Option<&str>,
) -> Result<Uri, http::uri::InvalidUri> {
    let (scheme, authority, base) = match &u.target {
        Target::Http {
            https,
            authority,
            base_path,
        } => (
            if *https { "https" } else { "http" },
            authority.as_str(),
            base_path.as_str(),
        ),
        Target::Demo => ("http", "demo.airlock.invalid", ""),
    };
    let mut s = String::with_capacity(
        scheme.len() + authority.len() + base.len() + path.len() + 8 + query.map_or(0, str::len),
    );
    s.push_str(scheme);
    s.push_str("://");
    s.push_str(authority);
    s.push_str(base);
    s.push_str(path);
    if let Some(q) = query {
        s.push('?');
        s.push_str(q);
    }
    s.parse::<Uri>()
}

/// Rewrites request headers for the upstream: hop-by-hop removed, `Host` set to the
/// upstream, `X-Forwarded-For/-Proto/-Host` and `Via` set, `inject` headers added.
/// The caller has already removed the agent's airlock credential.
pub fn rewrite_request_headers(
    h: &mut HeaderMap,
    u: &Upstream,
    client: ClientInfo<'_>,
    upgrade: bool,
    version: http::Version,
) {
    strip_hop_by_hop(h, upgrade);
    if upgrade {
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    h.remove("x-airlock-justification");
    // airlock is the edge agents connect to: what a client claims about earlier hops
    // is not passed on as fact.
    h.remove("forwarded");
    if let Ok(v) = HeaderValue::from_str(&client.ip.to_string()) {
        h.insert("x-forwarded-for", v);
    }
    h.insert(
        "x-forwarded-proto",
        HeaderValue::from_static(if client.tls { "https" } else { "http" }),
    );
    // The Host the client asked for, port included (HTTP/2: the authority's host).
    let original = h
        .get(header::HOST)
        .cloned()
        .or_else(|| client.host.and_then(|x| HeaderValue::from_str(x).ok()));
    if let Some(host) = original {
        h.insert("x-forwarded-host", host);
    }
    append_via(h, version);
    if let Target::Http { authority, .. } = &u.target {
        if let Ok(v) = HeaderValue::from_str(authority.as_str()) {
            h.insert(header::HOST, v);
        }
    }
    for (k, v) in &u.inject {
        h.insert(k.clone(), v.clone());
    }
}

fn append_via(h: &mut HeaderMap, version: http::Version) {
    let me = match version {
        http::Version::HTTP_2 => "2 airlock",
        http::Version::HTTP_10 => "1.0 airlock",
        _ => "1.1 airlock",
    };
    let via = match h.get(header::VIA).and_then(|v| v.to_str().ok()) {
        Some(prev) => format!("{prev}, {me}"),
        None => me.to_string(),
    };
    if let Ok(v) = HeaderValue::from_str(&via) {
        h.insert(header::VIA, v);
    }
}

/// Rewrites an upstream response for the client: hop-by-hop removed (kept for a 101
/// upgrade), `Via` added, body boxed.
pub fn rewrite_response(resp: Response<hyper::body::Incoming>) -> Response<ProxyBody> {
    let (mut parts, body) = resp.into_parts();
    let upgrade = parts.status == http::StatusCode::SWITCHING_PROTOCOLS;
    strip_hop_by_hop(&mut parts.headers, upgrade);
    if upgrade {
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    append_via(&mut parts.headers, parts.version);
    Response::from_parts(parts, boxed(body))
}
