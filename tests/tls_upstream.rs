//! `https://` upstreams: verified against the system roots plus the upstream's `ca:`
//! file. Certificates are generated at test time (rcgen).

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
