//! Certificates made at test time (rcgen): a CA, server certificates for
//! `localhost`/`127.0.0.1`, client certificates with a chosen subject and SANs, and
//! ones already expired. Written as PEM files where airlock's config can name them.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};
use std::path::{Path, PathBuf};

/// A certificate authority that signs the others.
pub struct Ca {
    pub cert: rcgen::Certificate,
    pub key: KeyPair,
    pub pem: String,
}

/// A leaf certificate with its key, as PEM.
#[derive(Clone)]
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: Vec<u8>,
}

/// What a client certificate says.
#[derive(Default, Clone)]
pub struct ClientId<'a> {
    pub cn: Option<&'a str>,
    pub org: Option<&'a str>,
    pub dns: &'a [&'a str],
    pub uri: &'a [&'a str],
    pub email: &'a [&'a str],
    /// Already expired (not_after a day ago).
    pub expired: bool,
}

impl Ca {
    /// A fresh CA named `name`.
    pub fn new(name: &str) -> Ca {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = p.self_signed(&key).unwrap();
        let pem = cert.pem();
        Ca { cert, key, pem }
    }

    /// An intermediate CA named `name`, signed by this one.
    pub fn intermediate(&self, name: &str) -> Ca {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.cert, &self.key).unwrap();
        let pem = cert.pem();
        Ca { cert, key, pem }
    }

    /// This CA itself as a client identity (its certificate and key).
    pub fn as_leaf(&self) -> Leaf {
        Leaf {
            cert_pem: self.pem.clone(),
            key_pem: self.key.serialize_pem(),
            der: self.cert.der().to_vec(),
        }
    }

    /// A server certificate for `localhost` and `127.0.0.1` (plus `extra` DNS names).
    pub fn server(&self, extra: &[&str]) -> Leaf {
        let mut names = vec!["localhost".to_string()];
        names.extend(extra.iter().map(|s| s.to_string()));
        let mut p = CertificateParams::new(names).unwrap();
        p.subject_alt_names
            .push(SanType::IpAddress(std::net::IpAddr::from([127, 0, 0, 1])));
        p.distinguished_name.push(DnType::CommonName, "localhost");
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(p)
    }

    /// A client certificate.
    pub fn client(&self, id: &ClientId<'_>) -> Leaf {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        // Encoded as most CAs do (organization, then common name), so the subject
        // reads `CN=…,O=…` (RFC 4514 prints the names in reverse).
        p.distinguished_name = rcgen::DistinguishedName::new();
        if let Some(o) = id.org {
            p.distinguished_name.push(DnType::OrganizationName, o);
        }
        if let Some(cn) = id.cn {
            p.distinguished_name.push(DnType::CommonName, cn);
        }
        for d in id.dns {
            p.subject_alt_names
                .push(SanType::DnsName((*d).try_into().unwrap()));
        }
        for u in id.uri {
            p.subject_alt_names
                .push(SanType::URI((*u).try_into().unwrap()));
        }
        for e in id.email {
            p.subject_alt_names
                .push(SanType::Rfc822Name((*e).try_into().unwrap()));
        }
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        if id.expired {
            let now = time_now();
            p.not_before = now - time::Duration::days(30);
            p.not_after = now - time::Duration::days(1);
        }
        self.sign(p)
    }

    fn sign(&self, p: CertificateParams) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.cert, &self.key).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }

    /// Writes the CA certificate to `dir/name`.
    pub fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, &self.pem).unwrap();
        p
    }
}

impl Leaf {
    /// Writes `dir/{name}.pem` and `dir/{name}-key.pem`; returns both paths.
    pub fn write(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let c = dir.join(format!("{name}.pem"));
        let k = dir.join(format!("{name}-key.pem"));
        std::fs::write(&c, &self.cert_pem).unwrap();
        std::fs::write(&k, &self.key_pem).unwrap();
        (c, k)
    }
}

fn time_now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

// ---- A TLS client for airlock's listeners (tokio-rustls + hyper), for tests that
// ---- need to choose ALPN, present a client certificate or see the server's
// ---- certificate.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use std::sync::Arc;

/// A client configuration trusting `ca_pem`, presenting `identity` when given, offering
/// `alpn` (e.g. `[b"h2", b"http/1.1"]`).
pub fn client_config(
    ca_pem: &str,
    identity: Option<&Leaf>,
    alpn: &[&[u8]],
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let b = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut cfg = match identity {
        Some(id) => {
            let chain = vec![rustls::pki_types::CertificateDer::from(id.der.clone())];
            let key = rustls_pemfile::private_key(&mut id.key_pem.as_bytes())
                .unwrap()
                .unwrap();
            b.with_client_auth_cert(chain, key).unwrap()
        }
        None => b.with_no_client_auth(),
    };
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(cfg)
}

/// A TLS connection to `addr` as `localhost`.
pub async fn tls_connect(
    addr: SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await
}

/// The answer to one request over TLS.
#[derive(Debug)]
pub struct TlsReply {
    pub status: u16,
    pub version: http::Version,
    pub headers: http::HeaderMap,
    pub body: String,
    /// The serial number of the certificate the server presented (hex).
    pub server_serial: String,
}

impl TlsReply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// Sends `req` on a new TLS connection to `addr` (HTTP/2 when the server picked `h2`
/// by ALPN, else HTTP/1.1). Any failure (handshake, a certificate the server refuses,
/// a closed connection) is an `Err` with what went wrong.
pub async fn tls_send(
    addr: SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
    req: http::Request<Full<Bytes>>,
) -> Result<TlsReply, String> {
    let fut = async move {
        let tls = tls_connect(addr, cfg)
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        let (_, conn) = tls.get_ref();
        let h2 = conn.alpn_protocol() == Some(b"h2");
        let server_serial = conn
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| serial_of(c))
            .unwrap_or_default();
        let io = TokioIo::new(tls);
        let resp = if h2 {
            let (mut sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                    .await
                    .map_err(|e| format!("h2 handshake: {e}"))?;
            tokio::spawn(conn);
            let mut req = req;
            *req.version_mut() = http::Version::HTTP_2;
            sender.send_request(req).await
        } else {
            let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
                .await
                .map_err(|e| format!("http1 handshake: {e}"))?;
            tokio::spawn(conn);
            // HTTP/1.1 sends the path and a Host header, not the absolute form.
            let mut req = req;
            let path = req
                .uri()
                .path_and_query()
                .map_or("/".to_string(), |p| p.to_string());
            *req.uri_mut() = path.parse().unwrap();
            if !req.headers().contains_key(http::header::HOST) {
                req.headers_mut()
                    .insert(http::header::HOST, "localhost".parse().unwrap());
            }
            sender.send_request(req).await
        }
        .map_err(|e| format!("request: {e}"))?;
        let (parts, body) = resp.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?
            .to_bytes();
        Ok(TlsReply {
            status: parts.status.as_u16(),
            version: parts.version,
            headers: parts.headers,
            body: String::from_utf8_lossy(&body).into_owned(),
            server_serial,
        })
    };
    tokio::time::timeout(std::time::Duration::from_secs(30), fut)
        .await
        .unwrap_or_else(|_| Err("timed out".to_string()))
}

/// A request `method path` to `https://localhost` with `headers`.
pub fn tls_request(
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> http::Request<Full<Bytes>> {
    let mut b = http::Request::builder()
        .method(method)
        .uri(format!("https://localhost{path}"));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(Bytes::new())).unwrap()
}

/// The serial number of a DER certificate, as hex.
pub fn serial_of(der: &[u8]) -> String {
    use x509_parser::prelude::FromDer;
    let (_, c) = x509_parser::certificate::X509Certificate::from_der(der).unwrap();
    hex::encode(c.raw_serial())
}

/// Writes `text` to `path` as editors and deploy tools do: a new file renamed over the
/// old one.
pub fn replace_file(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}
