//! TLS on the listeners (`tls:`, `admin.tls:`) over real sockets, with certificates
//! made at test time: agents reach the upstream over HTTPS with HTTP/1.1 and HTTP/2
//! (ALPN), the upstream learns the client spoke HTTPS, plain HTTP and TLS 1.1 are
//! refused, a stalled handshake is closed, the admin API answers over TLS, and a
//! certificate that does not load stops the start with a clear message.

mod common;
use common::pki::*;
use common::*;

use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const RULES: &str = "rules: []\n";

/// An echo upstream and an airlock with `tls:` (and `admin.tls:` when `admin_tls`),
/// certificates signed by the returned CA.
async fn setup(admin_tls: bool, extra: &str) -> (Upstream, Workspace, InProcess, Ca) {
    let up = Upstream::start().await;
    let ws = Workspace::new();
    ws.write("rules/r.yaml", RULES);
    std::fs::create_dir_all(ws.path().join("certs")).unwrap();
    let ca = Ca::new("airlock test CA");
    ca.server(&[]).write(&ws.path().join("certs"), "airlock");
    ca.server(&[]).write(&ws.path().join("certs"), "admin");
    let cfg = ws.standard_config(
        &up.url(),
        &format!("tls:\n  cert: certs/airlock.pem\n  key: certs/airlock-key.pem\n{extra}"),
    );
    if admin_tls {
        let text = std::fs::read_to_string(&cfg).unwrap().replace(
            "admin:\n  listen: 127.0.0.1:0\n",
            "admin:\n  listen: 127.0.0.1:0\n  tls:\n    cert: certs/admin.pem\n    key: certs/admin-key.pem\n",
        );
        std::fs::write(&cfg, text).unwrap();
    }
    let a = InProcess::start(&cfg).await;
    (up, ws, a, ca)
}

fn bearer(key: &str) -> String {
    format!("Bearer {key}")
}

#[tokio::test]
async fn agents_reach_the_upstream_over_https_with_http1_and_http2() {
    let (up, _ws, a, ca) = setup(false, "").await;
    let auth = bearer(AGENT_KEY);
    let h1 = tls_send(
        a.proxy,
        client_config(&ca.pem, None, &[b"http/1.1"]),
        tls_request("GET", "/api/v1/things?n=1", &[("authorization", &auth)]),
    )
    .await
    .unwrap();
    assert_eq!(h1.status, 200, "{}", h1.body);
    assert_eq!(h1.version, http::Version::HTTP_11);
    assert_eq!(h1.json()["uri"], "/v1/things?n=1");

    let h2 = tls_send(
        a.proxy,
        client_config(&ca.pem, None, &[b"h2", b"http/1.1"]),
        tls_request("GET", "/api/v1/other", &[("authorization", &auth)]),
    )
    .await
    .unwrap();
    assert_eq!(h2.status, 200, "{}", h2.body);
    assert_eq!(h2.version, http::Version::HTTP_2, "ALPN h2 gives HTTP/2");
    assert_eq!(h2.json()["uri"], "/v1/other");

    // The upstream learns the agent spoke HTTPS, and never sees the agent's key.
    let seen = up.requests();
    assert_eq!(seen.len(), 2);
    for s in &seen {
        assert_eq!(s.headers["x-forwarded-proto"], "https", "{:?}", s.headers);
        assert!(s.headers.get("authorization").is_none());
    }
    // No credential over TLS is still 401.
    let none = tls_send(
        a.proxy,
        client_config(&ca.pem, None, &[b"http/1.1"]),
        tls_request("GET", "/api/v1/things", &[]),
    )
    .await
    .unwrap();
    assert_eq!(none.status, 401);
    assert_eq!(none.json()["error"], "unauthenticated", "{}", none.body);
    assert_eq!(up.count(), 2);
    a.stop().await;
}

#[tokio::test]
async fn a_tls12_client_is_served_with_a_modern_suite() {
    let (_up, _ws, a, ca) = setup(false, "").await;
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut ca.pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tls = tls_connect(a.proxy, std::sync::Arc::new(cfg))
        .await
        .unwrap();
    let conn = tls.get_ref().1;
    assert_eq!(
        conn.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    let suite = format!("{:?}", conn.negotiated_cipher_suite().unwrap().suite());
    assert!(
        suite.starts_with("TLS_ECDHE_") && (suite.contains("GCM") || suite.contains("CHACHA20")),
        "{suite}"
    );
    a.stop().await;
}

/// A TLS 1.1 ClientHello (no extensions, two TLS 1.1 suites), as an old client sends.
fn tls11_client_hello() -> Vec<u8> {
    let mut body = vec![0x03, 0x02];
    body.extend_from_slice(&[7u8; 32]); // random
    body.push(0); // session id
    body.extend_from_slice(&[0x00, 0x04, 0xc0, 0x13, 0x00, 0x2f]); // suites
    body.extend_from_slice(&[0x01, 0x00]); // null compression
    let mut hs = vec![0x01, 0, (body.len() >> 8) as u8, body.len() as u8];
    hs.extend_from_slice(&body);
    let mut rec = vec![0x16, 0x03, 0x02, (hs.len() >> 8) as u8, hs.len() as u8];
    rec.extend_from_slice(&hs);
    rec
}

/// Writes `bytes` to a new connection to `addr` and reads what comes back until the
/// server closes it (within the test deadline).
async fn exchange(addr: std::net::SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(DEADLINE, async {
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .expect("airlock closes a connection it refuses");
    out
}

#[tokio::test]
async fn plain_http_and_tls11_on_the_tls_port_are_refused() {
    let (up, _ws, a, _ca) = setup(false, "").await;
    let plain = format!(
        "GET /api/v1/things HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {AGENT_KEY}\r\nConnection: close\r\n\r\n"
    );
    let got = exchange(a.proxy, plain.as_bytes()).await;
    assert!(
        !got.starts_with(b"HTTP/"),
        "plain HTTP got an HTTP answer: {}",
        String::from_utf8_lossy(&got)
    );
    // TLS 1.1: at most an alert (content type 21), never a ServerHello (22).
    let got = exchange(a.proxy, &tls11_client_hello()).await;
    assert!(
        got.is_empty() || got[0] == 0x15,
        "TLS 1.1 got a handshake answer: {got:02x?}"
    );
    assert_eq!(up.count(), 0, "nothing reached the upstream");
    a.stop().await;
}

#[tokio::test]
async fn a_client_that_stalls_the_handshake_is_closed() {
    let (_up, _ws, a, ca) = setup(false, "limits: {header_timeout: 1s}\n").await;
    // The first bytes of a ClientHello record, then silence.
    let mut s = tokio::net::TcpStream::connect(a.proxy).await.unwrap();
    s.write_all(&[0x16, 0x03, 0x01, 0x00, 0xff]).await.unwrap();
    let started = tokio::time::Instant::now();
    let mut buf = [0u8; 64];
    let r = tokio::time::timeout(DEADLINE, s.read(&mut buf))
        .await
        .expect("a stalled handshake is closed");
    assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
    assert!(started.elapsed() >= Duration::from_millis(500));
    // The listener still serves others.
    let ok = tls_send(
        a.proxy,
        client_config(&ca.pem, None, &[b"http/1.1"]),
        tls_request("GET", "/api/x", &[("authorization", &bearer(AGENT_KEY))]),
    )
    .await
    .unwrap();
    assert_eq!(ok.status, 200);
    a.stop().await;
}

#[tokio::test]
async fn the_admin_listener_serves_over_tls() {
    let (_up, _ws, a, ca) = setup(true, "").await;
    let admin = a.admin.unwrap();
    let cfg = client_config(&ca.pem, None, &[b"h2", b"http/1.1"]);
    let health = tls_send(admin, cfg.clone(), tls_request("GET", "/healthz", &[]))
        .await
        .unwrap();
    assert_eq!(health.status, 200, "{}", health.body);
    let list = tls_send(
        admin,
        cfg,
        tls_request(
            "GET",
            "/api/v1/approvals",
            &[("authorization", &bearer(BOB))],
        ),
    )
    .await
    .unwrap();
    assert_eq!(list.status, 200, "{}", list.body);
    assert_eq!(list.json()["approvals"], serde_json::json!([]));
    // Plain HTTP to the admin port gets no answer.
    let got = exchange(
        admin,
        b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(!got.starts_with(b"HTTP/"));
    a.stop().await;
}

#[tokio::test]
async fn a_key_that_does_not_match_the_certificate_stops_the_start() {
    let ws = Workspace::new();
    ws.write("rules/r.yaml", RULES);
    std::fs::create_dir_all(ws.path().join("certs")).unwrap();
    let ca = Ca::new("airlock test CA");
    let (cert, _) = ca.server(&[]).write(&ws.path().join("certs"), "airlock");
    let (_, other_key) = ca.server(&[]).write(&ws.path().join("certs"), "other");
    let cfg = ws.standard_config(
        "http://127.0.0.1:9",
        &format!(
            "tls:\n  cert: {}\n  key: {}\n",
            cert.display(),
            other_key.display()
        ),
    );
    let loaded = airlock::config::Config::load(&cfg).unwrap();
    let err = match airlock::start(loaded).await {
        Ok(_) => panic!("started with a key that does not match its certificate"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("tls.key") && err.contains("other-key.pem") && err.contains("does not match"),
        "{err}"
    );
}
