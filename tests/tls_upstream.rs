//! `https://` upstreams: verified (chain and name, SNI sent) against the system roots
//! plus the upstream's `ca:` file (IP addresses against IP SANs); upstreams that demand
//! mTLS get `client_cert`/`client_key`. Certificates are generated at test time (rcgen).

mod common;
use common::*;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::sync::Arc;
use tokio::net::TcpListener;

/// An HTTPS upstream for `localhost` signed by a fresh CA; returns (port, CA PEM).
async fn https_upstream() -> (u16, String) {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "airlock test CA");
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &ca, &ca_key)
        .unwrap();
    let cert = rustls::pki_types::CertificateDer::from(leaf.der().to_vec());
    let key = rustls::pki_types::PrivateKeyDer::try_from(leaf_key.serialize_der()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap();
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
                    let body = format!("secure {} {:?}", req.uri().path(), req.version());
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(
                        http_body_util::Full::new(bytes::Bytes::from(body)),
                    ))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    (port, ca.pem())
}

/// A workspace whose upstream `api` is `https://localhost:{port}`, trusted through
/// `ca: certs/upstream-ca.pem` holding `ca_pem`.
fn workspace_trusting(port: u16, ca_pem: &str) -> (Workspace, std::path::PathBuf) {
    let ws = Workspace::new();
    ws.write("rules/r.yaml", "rules: []\n");
    ws.write("certs/upstream-ca.pem", ca_pem);
    let cfg = ws.standard_config(&format!("https://localhost:{port}"), "");
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "    timeout: 5s\n",
        "    timeout: 5s\n    ca: certs/upstream-ca.pem\n",
    );
    std::fs::write(&cfg, text).unwrap();
    (ws, cfg)
}

#[tokio::test]
async fn https_upstream_is_trusted_through_its_ca_file() {
    let (port, ca_pem) = https_upstream().await;
    let (_ws, cfg) = workspace_trusting(port, &ca_pem);
    let a = InProcess::start(&cfg).await;
    let r = client()
        .get(a.url("/api/hello"))
        .bearer_auth(AGENT_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body = r.text().await.unwrap();
    assert!(body.starts_with("secure /hello"), "{body}");
}

#[tokio::test]
async fn https_upstream_with_an_unknown_ca_is_refused_with_502() {
    let (port, _ca_pem) = https_upstream().await;
    let ws = Workspace::new();
    ws.write("rules/r.yaml", "rules: []\n");
    let cfg = ws.standard_config(&format!("https://localhost:{port}"), "");
    let a = InProcess::start(&cfg).await;
    let r = client()
        .get(a.url("/api/hello"))
        .bearer_auth(AGENT_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"], "upstream_unavailable");
}

#[tokio::test]
async fn a_missing_ca_file_is_a_config_error() {
    let ws = Workspace::new();
    ws.write("rules/r.yaml", "rules: []\n");
    let cfg = ws.standard_config("https://localhost:1", "");
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "    timeout: 5s\n",
        "    timeout: 5s\n    ca: certs/nope.pem\n",
    );
    std::fs::write(&cfg, text).unwrap();
    let (code, _, err) = run_cli(&["rules", "check", "-c", cfg.to_str().unwrap()], &[]);
    assert_eq!(code, 1);
    assert!(
        err.contains("airlock.yaml:") && err.contains("nope.pem"),
        "{err}"
    );
}

#[tokio::test]
async fn a_rotated_ca_file_is_trusted_anew_after_a_reload() {
    let (port, ca_pem) = https_upstream().await;
    let (_, other_ca) = https_upstream().await;
    let (ws, cfg) = workspace_trusting(port, &ca_pem);
    let a = InProcess::start(&cfg).await;
    let get = || async { agent_send(&client(), &a.url("/api/hello"), "GET", AGENT_KEY, "").await };
    assert_eq!(get().await.status, 200);

    // The same `ca:` path now holds another CA: the upstream's certificate is no
    // longer trusted, and a reload must not keep the old trust in a pooled client.
    ws.write("certs/upstream-ca.pem", &other_ca);
    let r = client()
        .post(a.admin_url("/api/v1/reload"))
        .bearer_auth(BOB)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = get().await;
    assert_eq!(r.status, 502, "{}", r.text);
    assert!(r.text.contains("(tls)"), "the cause is named: {}", r.text);
}

// ---- Private CAs, IP SANs, hostname verification and upstream mTLS (common::pki) ----

use common::pki::{Ca, ClientId, Leaf};

/// An HTTPS upstream presenting `leaf`; with `client_ca`, it demands a client
/// certificate signed by that CA (and answers with the subject it saw). Returns the port.
async fn tls_upstream(leaf: &Leaf, client_ca: Option<&Ca>) -> u16 {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cert = rustls::pki_types::CertificateDer::from(leaf.der.clone());
    let key = rustls_pemfile::private_key(&mut leaf.key_pem.as_bytes())
        .unwrap()
        .unwrap();
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            roots
                .add(rustls::pki_types::CertificateDer::from(
                    ca.cert.der().to_vec(),
                ))
                .unwrap();
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut server = builder.with_single_cert(vec![cert], key).unwrap();
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let (_, conn) = tls.get_ref();
                let sni = conn.server_name().unwrap_or("-").to_string();
                let peer = conn.peer_certificates().map_or(0, |certs| certs.len());
                let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let body = format!("secure {} sni={sni} client_certs={peer}", req.uri().path());
                    async move {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(
                            http_body_util::Full::new(bytes::Bytes::from(body)),
                        ))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    port
}

/// A workspace whose upstream `api` is `url`, with `upstream_lines` (indented under
/// the upstream) added, e.g. `ca:` and `client_cert:`.
fn workspace_with(url: &str, upstream_lines: &str) -> (Workspace, std::path::PathBuf) {
    let ws = Workspace::new();
    ws.write("rules/r.yaml", "rules: []\n");
    let cfg = ws.standard_config(url, "");
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "    timeout: 5s\n",
        &format!("    timeout: 5s\n{upstream_lines}"),
    );
    std::fs::write(&cfg, text).unwrap();
    (ws, cfg)
}

async fn get_api(a: &InProcess) -> (u16, String) {
    let r = client()
        .get(a.url("/api/hello"))
        .bearer_auth(AGENT_KEY)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

fn assert_unavailable(status: u16, body: &str) {
    assert_eq!(status, 502, "{body}");
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(v["error"], "upstream_unavailable", "{body}");
}

#[tokio::test]
async fn a_private_ca_upstream_gets_sni_and_is_verified_by_name() {
    let ca = Ca::new("private CA");
    let port = tls_upstream(&ca.server(&[]), None).await;
    let (ws, cfg) = workspace_with(
        &format!("https://localhost:{port}"),
        "    ca: certs/private-ca.pem\n",
    );
    std::fs::create_dir_all(ws.path().join("certs")).unwrap();
    ca.write(&ws.path().join("certs"), "private-ca.pem");
    let a = InProcess::start(&cfg).await;
    let (status, body) = get_api(&a).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("secure /hello"), "{body}");
    assert!(body.contains("sni=localhost"), "SNI is sent: {body}");
    assert!(body.contains("client_certs=0"), "{body}");
}

#[tokio::test]
async fn an_ip_address_upstream_is_verified_against_its_ip_san() {
    let ca = Ca::new("private CA");
    let port = tls_upstream(&ca.server(&[]), None).await;
    let (ws, cfg) = workspace_with(
        &format!("https://127.0.0.1:{port}"),
        "    ca: certs/private-ca.pem\n",
    );
    std::fs::create_dir_all(ws.path().join("certs")).unwrap();
    ca.write(&ws.path().join("certs"), "private-ca.pem");
    let a = InProcess::start(&cfg).await;
    let (status, body) = get_api(&a).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("secure /hello"), "{body}");
}

#[tokio::test]
async fn a_certificate_for_another_name_is_refused_even_from_a_trusted_ca() {
    let ca = Ca::new("private CA");
    // Signed by the trusted CA, but for another host (and no IP SAN).
    let mut p = rcgen::CertificateParams::new(vec!["api.other.example".to_string()]).unwrap();
    p.distinguished_name
        .push(rcgen::DnType::CommonName, "api.other.example");
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = p.signed_by(&key, &ca.cert, &ca.key).unwrap();
    let other = Leaf {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        der: cert.der().to_vec(),
    };
    let port = tls_upstream(&other, None).await;
    for url in [
        format!("https://localhost:{port}"),
        format!("https://127.0.0.1:{port}"),
    ] {
        let (ws, cfg) = workspace_with(&url, "    ca: certs/private-ca.pem\n");
        std::fs::create_dir_all(ws.path().join("certs")).unwrap();
        ca.write(&ws.path().join("certs"), "private-ca.pem");
        let a = InProcess::start(&cfg).await;
        let (status, body) = get_api(&a).await;
        assert_unavailable(status, &body);
        a.stop().await;
    }
}

/// Which client certificate airlock is configured to present.
enum Presents {
    /// No `client_cert`/`client_key` at all.
    Nothing,
    /// One signed by the CA the upstream trusts for clients.
    TrustedCert,
    /// One signed by some other CA.
    OtherCaCert,
}

/// An upstream demanding client certificates from its own client CA, and a workspace
/// trusting its server CA and presenting what `presents` says.
async fn mtls_setup(presents: Presents) -> (Workspace, std::path::PathBuf) {
    let server_ca = Ca::new("upstream server CA");
    let client_ca = Ca::new("upstream client CA");
    let port = tls_upstream(&server_ca.server(&[]), Some(&client_ca)).await;
    let id = ClientId {
        cn: Some("airlock"),
        ..Default::default()
    };
    let client = match presents {
        Presents::Nothing => None,
        Presents::TrustedCert => Some(client_ca.client(&id)),
        Presents::OtherCaCert => Some(Ca::new("someone else's CA").client(&id)),
    };
    let mut lines = "    ca: certs/server-ca.pem\n".to_string();
    if client.is_some() {
        lines.push_str("    client_cert: certs/client.pem\n    client_key: certs/client-key.pem\n");
    }
    let ws = Workspace::new();
    let certs = ws.path().join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    server_ca.write(&certs, "server-ca.pem");
    if let Some(c) = &client {
        c.write(&certs, "client");
    }
    ws.write("rules/r.yaml", "rules: []\n");
    let cfg = ws.standard_config(&format!("https://localhost:{port}"), "");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("    timeout: 5s\n", &format!("    timeout: 5s\n{lines}"));
    std::fs::write(&cfg, text).unwrap();
    (ws, cfg)
}

#[tokio::test]
async fn an_upstream_demanding_mtls_gets_the_configured_client_certificate() {
    let (_ws, cfg) = mtls_setup(Presents::TrustedCert).await;
    let a = InProcess::start(&cfg).await;
    let (status, body) = get_api(&a).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("client_certs=1"), "{body}");
    assert!(body.contains("sni=localhost"), "{body}");
}

#[tokio::test]
async fn without_a_client_certificate_an_mtls_upstream_is_unavailable() {
    let (_ws, cfg) = mtls_setup(Presents::Nothing).await;
    let a = InProcess::start(&cfg).await;
    let (status, body) = get_api(&a).await;
    assert_unavailable(status, &body);
}

#[tokio::test]
async fn a_client_certificate_from_another_ca_is_refused_by_the_upstream() {
    let (_ws, cfg) = mtls_setup(Presents::OtherCaCert).await;
    let a = InProcess::start(&cfg).await;
    let (status, body) = get_api(&a).await;
    assert_unavailable(status, &body);
}

/// Starts airlock in process and returns why it did not start.
async fn start_error(cfg: &std::path::Path) -> String {
    let c = airlock::config::Config::load(cfg).unwrap_or_else(|d| panic!("{d}"));
    match airlock::start(c).await {
        Ok(_) => panic!("airlock started"),
        Err(e) => e.to_string(),
    }
}

#[tokio::test]
async fn a_client_key_that_does_not_match_its_certificate_stops_the_start() {
    let (ws, cfg) = mtls_setup(Presents::TrustedCert).await;
    let stranger = Ca::new("x").client(&ClientId {
        cn: Some("x"),
        ..Default::default()
    });
    ws.write("certs/client-key.pem", &stranger.key_pem);
    let err = start_error(&cfg).await;
    assert!(
        err.contains("upstream api")
            && err.contains("client-key.pem")
            && err.contains("does not belong"),
        "{err}"
    );
}

#[tokio::test]
async fn a_client_certificate_that_is_not_pem_stops_the_start() {
    let (ws, cfg) = mtls_setup(Presents::TrustedCert).await;
    ws.write("certs/client.pem", "not a certificate\n");
    let err = start_error(&cfg).await;
    assert!(
        err.contains("upstream api")
            && err.contains("client.pem")
            && err.contains("no PEM certificate"),
        "{err}"
    );
    ws.write("certs/client.pem", &Ca::new("y").pem);
    ws.write(
        "certs/client-key.pem",
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    );
    let err = start_error(&cfg).await;
    assert!(
        err.contains("upstream api") && err.contains("client-key.pem"),
        "{err}"
    );
}
