//! Forwarding to upstreams: one pooled keep-alive client per trust configuration
//! (system roots, plus an upstream's own `ca:` file), the header rewrite every
//! forwarded request gets, and the mapping of upstream failures to `502`/`504`.
//!
//! This module forwards what it is given; deciding whether a request may go is the
//! caller's job, done before anything reaches here.

use super::body::{boxed, ProxyBody};
use crate::config::{Target, Upstream};
use crate::http::{strip_hop_by_hop, AirlockError, Code};
use http::{header, HeaderMap, HeaderValue, Request, Response, Uri};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::sync::Arc;
use std::time::Duration;

type Https = hyper_rustls::HttpsConnector<HttpConnector>;

/// The pooled client of one upstream.
#[derive(Clone)]
pub struct UpstreamClient {
    client: Client<Https, ProxyBody>,
}

/// Errors building a client (bad CA file, no usable roots).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("upstream {upstream}: cannot read ca file {path}: {reason}")]
    Ca {
        upstream: String,
        path: String,
        reason: String,
    },
    #[error("tls: {0}")]
    Tls(String),
}

fn root_store(u: &Upstream) -> Result<rustls::RootCertStore, ClientError> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for c in native.certs {
        let _ = roots.add(c);
    }
    if let Some(ca) = &u.ca {
        let err = |reason: String| ClientError::Ca {
            upstream: u.name.clone(),
            path: ca.display().to_string(),
            reason,
        };
        let pem = std::fs::read(ca).map_err(|e| err(e.to_string()))?;
        let mut n = 0;
        for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
            let cert = cert.map_err(|e| err(e.to_string()))?;
            roots.add(cert).map_err(|e| err(e.to_string()))?;
            n += 1;
        }
        if n == 0 {
            return Err(err("no PEM certificates in file".into()));
        }
    }
    Ok(roots)
}

impl UpstreamClient {
    /// Builds the client for one upstream.
    pub fn new(u: &Upstream) -> Result<UpstreamClient, ClientError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ClientError::Tls(e.to_string()))?
            .with_root_certificates(root_store(u)?)
            .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(u.connect_timeout));
        http.set_keepalive(Some(Duration::from_secs(60)));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(256)
            .build(https);
        Ok(UpstreamClient { client })
    }

    /// Sends a prepared request, bounded by the upstream's timeout for response headers.
    pub async fn send(
        &self,
        u: &Upstream,
        req: Request<ProxyBody>,
    ) -> Result<Response<hyper::body::Incoming>, AirlockError> {
        match tokio::time::timeout(u.timeout, self.client.request(req)).await {
            Err(_) => Err(AirlockError::new(
                Code::UpstreamTimeout,
                format!("upstream {} did not answer within {:?}", u.name, u.timeout),
            )),
            Ok(Err(e)) => {
                tracing::warn!(upstream = %u.name, error = %e, "upstream request failed");
                Err(AirlockError::new(
                    Code::UpstreamUnavailable,
                    format!("upstream {} is unavailable", u.name),
                ))
            }
            Ok(Ok(resp)) => Ok(resp),
        }
    }
}

/// What the proxy knows about the client connection, for `X-Forwarded-*`.
#[derive(Debug, Clone, Copy)]
pub struct ClientInfo<'a> {
    pub ip: std::net::IpAddr,
    pub host: Option<&'a str>,
    pub tls: bool,
}

/// The URI the upstream will see: its base path, the routed path, the original query.
pub fn upstream_uri(u: &Upstream, path: &str, query: Option<&str>) -> Result<Uri, AirlockError> {
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
        .map_err(|e| AirlockError::new(Code::BadRequest, format!("cannot build upstream url: {e}")))
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
