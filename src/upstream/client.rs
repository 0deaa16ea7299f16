//! One pooled keep-alive client per upstream (system roots, plus the upstream's own
//! `ca:` file), and upstream failures classified by cause: refused, TLS, reset,
//! timeout. A client is reused across reloads while its upstream is unchanged.
//!
//! TLS towards an upstream always sends SNI and always verifies the certificate's
//! chain and its name against the URL's host (a DNS name, or an IP address against an
//! IP SAN for `https://127.0.0.1:…`); there is no option to turn either off. An
//! upstream that demands mTLS gets the `client_cert`/`client_key` pair; a PEM that does
//! not parse, or a key that does not belong to the certificate, stops the start (or a
//! reload) with a message naming the upstream and the file.
//!
//! A request that failed on a stale pooled connection is sent once more, on a fresh
//! connection, when [`super::retry`] says it may be (it never left, or it is idempotent
//! and no response byte came back); nothing else is ever sent twice. Idle pooled
//! connections are dropped after [`POOL_IDLE`], below the keep-alive timeout of most
//! servers, so the race with an upstream closing them is rare to begin with.

use super::conn::Watching;
use super::retry::{self, Tape};
use super::{UpstreamError, UpstreamErrorKind};
use crate::config::Upstream;
use crate::http::body::ProxyBody;
use http::{Request, Response};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub(super) type Https = hyper_rustls::HttpsConnector<HttpConnector>;

/// How long an idle pooled connection is kept: below the keep-alive timeout of common
/// servers (Node, Apache, uvicorn: 5 s), so airlock rarely reuses a connection the
/// upstream is closing.
pub const POOL_IDLE: Duration = Duration::from_secs(4);

/// The pooled client of one upstream.
#[derive(Clone)]
pub struct UpstreamClient {
    client: Client<Watching, ProxyBody>,
    /// The same connector without a pool: a retry always gets a fresh connection.
    fresh: Client<Watching, ProxyBody>,
    /// SHA-256 of the `ca:` file the client trusts and the client certificate it
    /// presents (none without either).
    trust: Option<[u8; 32]>,
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
    #[error("upstream {upstream}: cannot use client certificate {path}: {reason}")]
    ClientCert {
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

/// The certificate chain and private key an upstream's `client_cert`/`client_key`
/// name, read from their PEM files.
fn client_identity(
    u: &Upstream,
    cert: &Path,
    key: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), ClientError> {
    let err = |path: &Path, reason: String| ClientError::ClientCert {
        upstream: u.name.clone(),
        path: path.display().to_string(),
        reason,
    };
    let pem = std::fs::read(cert).map_err(|e| err(cert, e.to_string()))?;
    let chain = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(cert, format!("not a PEM certificate: {e}")))?;
    if chain.is_empty() {
        return Err(err(cert, "no PEM certificate in file".into()));
    }
    let pem = std::fs::read(key).map_err(|e| err(key, e.to_string()))?;
    let key_der = rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|e| err(key, format!("not a PEM private key: {e}")))?
        .ok_or_else(|| err(key, "no PEM private key in file".into()))?;
    Ok((chain, key_der))
}

/// The rustls configuration of one upstream: its roots, and its client certificate
/// when it has one. SNI stays on (the rustls default) and server verification is
/// rustls's WebPKI verifier: nothing here can weaken either.
fn tls_config(u: &Upstream) -> Result<rustls::ClientConfig, ClientError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Tls(e.to_string()))?
        .with_root_certificates(root_store(u)?);
    let tls = match &u.client_cert {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let (chain, key_der) = client_identity(u, cert, key)?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| ClientError::ClientCert {
                    upstream: u.name.clone(),
                    path: key.display().to_string(),
                    reason: match e {
                        rustls::Error::InconsistentKeys(_) => {
                            format!("the key does not belong to {}", cert.display())
                        }
                        e => e.to_string(),
                    },
                })?
        }
    };
    debug_assert!(tls.enable_sni);
    Ok(tls)
}

impl UpstreamClient {
    /// Builds the client for one upstream.
    pub fn new(u: &Upstream) -> Result<UpstreamClient, ClientError> {
        let tls = tls_config(u)?;
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
        let connector = Watching(https);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(POOL_IDLE)
            .pool_max_idle_per_host(256)
            .build(connector.clone());
        let fresh = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build(connector);
        Ok(UpstreamClient {
            client,
            fresh,
            trust: trust_fingerprint(u),
        })
    }

    /// Whether this client can serve `u` as it is configured now: same URL, connect
    /// timeout, trust and client certificate (the files' current contents, not just
    /// their paths, so a rotated CA or client certificate is picked up by a reload).
    pub fn serves(&self, old: &Upstream, u: &Upstream) -> bool {
        old.url == u.url
            && old.ca == u.ca
            && old.client_cert == u.client_cert
            && old.connect_timeout == u.connect_timeout
            && self.trust == trust_fingerprint(u)
    }

    /// Sends a prepared request, bounded by the upstream's timeout for response headers
    /// (a retry included).
    pub async fn send(
        &self,
        u: &Upstream,
        req: Request<ProxyBody>,
    ) -> Result<Response<hyper::body::Incoming>, UpstreamError> {
        match tokio::time::timeout(u.timeout, self.send_retrying(u, req)).await {
            Err(_) => Err(UpstreamError {
                upstream: u.name.clone(),
                kind: UpstreamErrorKind::Timeout,
                cause: format!("no response headers within {:?}", u.timeout),
            }),
            Ok(Err(e)) => Err(UpstreamError::classify(&u.name, &e)),
            Ok(Ok(resp)) => Ok(resp),
        }
    }

    /// Sends on a pooled connection; when that fails in a way [`retry::reason`] allows,
    /// once more on a fresh connection with the body replayed.
    async fn send_retrying(
        &self,
        u: &Upstream,
        req: Request<ProxyBody>,
    ) -> Result<Response<hyper::body::Incoming>, hyper_util::client::legacy::Error> {
        let (parts, body) = req.into_parts();
        let mut again = Request::new(());
        *again.method_mut() = parts.method.clone();
        *again.uri_mut() = parts.uri.clone();
        *again.version_mut() = parts.version;
        *again.headers_mut() = parts.headers.clone();
        let (tape, body) = Tape::new(body);
        let e = match self.client.request(Request::from_parts(parts, body)).await {
            Ok(resp) => return Ok(resp),
            Err(e) => e,
        };
        let Some(why) = retry::reason(again.method(), again.headers(), &e) else {
            return Err(e);
        };
        let Some(body) = tape.replay() else {
            tracing::info!(upstream = %u.name, method = %again.method(), cause = why.as_str(), "not retrying: too much of the request body was sent to keep it");
            return Err(e);
        };
        tracing::info!(upstream = %u.name, method = %again.method(), cause = why.as_str(), error = %e, "retrying the request on a fresh connection");
        self.fresh.request(again.map(|()| body)).await
    }
}

/// SHA-256 over an upstream's `ca:`, `client_cert:` and `client_key:` files as they
/// are now (`None` without any; a file that cannot be read counts as empty: building
/// the client then reports why).
fn trust_fingerprint(u: &Upstream) -> Option<[u8; 32]> {
    use sha2::Digest;
    let files: Vec<&Path> =
        u.ca.iter()
            .map(|p| p.as_path())
            .chain(
                u.client_cert
                    .iter()
                    .flat_map(|(c, k)| [c.as_path(), k.as_path()]),
            )
            .collect();
    if files.is_empty() {
        return None;
    }
    let mut h = sha2::Sha256::new();
    for f in files {
        let bytes = std::fs::read(f).unwrap_or_default();
        h.update((bytes.len() as u64).to_be_bytes());
        h.update(bytes);
    }
    Some(h.finalize().into())
}
