//! Agents identified by a client certificate (`tls.client_ca`, `agents[].mtls`) over
//! real sockets, with certificates made at test time: a subject, a DNS SAN and a URI
//! SAN (a SPIFFE id) each name their agent, and a held request records `auth: mtls`;
//! an expired certificate or one from another CA fails the handshake; a certificate
//! that verifies but maps to no agent is `401`, and so are no credential at all and a
//! certificate for one agent with the key of another. Key agents still connect over
//! TLS without a certificate.

mod common;
use common::pki::*;
use common::*;

use std::path::PathBuf;

const RULES: &str = r#"rules:
  - name: change-things
    when: {method: POST, path: /v1/things/**}
    then: approve
    approval: {approvers: [group:sre], timeout: 1h}
"#;

const SPIFFE: &str = "spiffe://example.org/ns/prod/sa/spiffe-bot";

struct Setup {
    up: Upstream,
    ws: Workspace,
    a: InProcess,
    ca: Ca,
}

impl Setup {
    fn audit(&self) -> PathBuf {
        self.ws.path().join("audit.jsonl")
    }

    /// A client trusting airlock's CA, presenting `id` when given.
    fn client(&self, id: Option<&Leaf>) -> std::sync::Arc<rustls::ClientConfig> {
        client_config(&self.ca.pem, id, &[b"h2", b"http/1.1"])
    }
}

/// airlock with TLS, client certificates verified against a fresh CA, and agents
/// `reporter` (subject), `crawler` (DNS SAN) and `spiffe-bot` (URI SAN) besides the
/// standard key agents; every request audited into `audit.jsonl`.
async fn setup() -> Setup {
    let up = Upstream::start().await;
    let ws = Workspace::new();
    ws.write("rules/r.yaml", RULES);
    let certs = ws.path().join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    let ca = Ca::new("airlock agents CA");
    ca.server(&[]).write(&certs, "airlock");
    ca.write(&certs, "agents-ca.pem");
    let cfg = ws.standard_config(
        &up.url(),
        "tls:\n  cert: certs/airlock.pem\n  key: certs/airlock-key.pem\n  client_ca: certs/agents-ca.pem\naudit: {level: all, file: audit.jsonl}\n",
    );
    let text = std::fs::read_to_string(&cfg).unwrap().replacen(
        "agents:\n",
        &format!(
            "agents:\n  - id: reporter\n    mtls: {{subject: \"CN=reporter,O=Example\"}}\n  - id: crawler\n    mtls: {{dns: crawler.agents.example.com}}\n  - id: spiffe-bot\n    mtls: {{uri: \"{SPIFFE}\"}}\n"
        ),
        1,
    );
    std::fs::write(&cfg, text).unwrap();
    let a = InProcess::start(&cfg).await;
    Setup { up, ws, a, ca }
}

fn get(path: &str) -> http::Request<http_body_util::Full<bytes::Bytes>> {
    tls_request("GET", path, &[])
}

/// Waits for the `passed` audit event of `path` (as the agent wrote it; the event
/// has the upstream's path) and returns it.
async fn passed(s: &Setup, path: &str) -> serde_json::Value {
    let p = path.trim_start_matches("/api").to_string();
    wait_audit_event(&s.audit(), "passed event", move |e| {
        e["event"] == "passed" && e["path"] == p.as_str()
    })
    .await
}

#[tokio::test]
async fn subject_dns_and_uri_sans_name_their_agents() {
    let s = setup().await;
    let cases = [
        (
            s.ca.client(&ClientId {
                cn: Some("reporter"),
                org: Some("Example"),
                ..Default::default()
            }),
            "reporter",
            "/api/v1/by-subject",
        ),
        (
            s.ca.client(&ClientId {
                cn: Some("crawler"),
                dns: &["crawler.agents.example.com"],
                ..Default::default()
            }),
            "crawler",
            "/api/v1/by-dns",
        ),
        (
            s.ca.client(&ClientId {
                uri: &[SPIFFE],
                ..Default::default()
            }),
            "spiffe-bot",
            "/api/v1/by-uri",
        ),
    ];
    for (cert, agent, path) in &cases {
        let r = tls_send(s.a.proxy, s.client(Some(cert)), get(path))
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{agent}: {}", r.body);
        let ev = passed(&s, path).await;
        assert_eq!(ev["agent"], *agent, "{ev}");
        assert_eq!(ev["auth"], "mtls", "{ev}");
    }
    assert_eq!(s.up.count(), 3);
    // A key agent still connects over TLS without a certificate.
    let r = tls_send(
        s.a.proxy,
        s.client(None),
        tls_request(
            "GET",
            "/api/v1/by-key",
            &[("authorization", &format!("Bearer {AGENT_KEY}"))],
        ),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let ev = passed(&s, "/api/v1/by-key").await;
    assert_eq!(ev["agent"], "deploy-bot");
    assert_eq!(ev["auth"], "key");
    s.a.stop().await;
}

#[tokio::test]
async fn a_held_request_records_that_the_agent_came_by_certificate() {
    let s = setup().await;
    let cert = s.ca.client(&ClientId {
        cn: Some("reporter"),
        org: Some("Example"),
        ..Default::default()
    });
    let cfg = s.client(Some(&cert));
    let addr = s.a.proxy;
    let held = tokio::spawn(async move {
        tls_send(addr, cfg, tls_request("POST", "/api/v1/things/7", &[])).await
    });
    let list = wait_pending(&s.a, 1).await;
    assert_eq!(list[0]["agent"], "reporter");
    let id = id_of(&list[0]);
    let ev = wait_audit_event(&s.audit(), "held event", |e| {
        e["approval_id"] == id.as_str() && e["event"] != "passed"
    })
    .await;
    assert_eq!(ev["agent"], "reporter", "{ev}");
    assert_eq!(ev["auth"], "mtls", "{ev}");
    bob_decides(&s.a, &list[0], "approve").await;
    let r = held.await.unwrap().unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(s.up.count(), 1);
    s.a.stop().await;
}

#[tokio::test]
async fn expired_and_foreign_certificates_fail_the_handshake() {
    let s = setup().await;
    let expired = s.ca.client(&ClientId {
        cn: Some("reporter"),
        org: Some("Example"),
        expired: true,
        ..Default::default()
    });
    let other_ca = Ca::new("someone else's CA");
    let foreign = other_ca.client(&ClientId {
        cn: Some("reporter"),
        org: Some("Example"),
        ..Default::default()
    });
    for (what, cert) in [("expired", &expired), ("wrong CA", &foreign)] {
        let r = tls_send(s.a.proxy, s.client(Some(cert)), get("/api/v1/x")).await;
        assert!(r.is_err(), "{what} certificate was served: {r:?}");
        // With a key as well: still no request gets through.
        let r = tls_send(
            s.a.proxy,
            s.client(Some(cert)),
            tls_request(
                "GET",
                "/api/v1/x",
                &[("authorization", &format!("Bearer {AGENT_KEY}"))],
            ),
        )
        .await;
        assert!(
            r.is_err(),
            "{what} certificate with a key was served: {r:?}"
        );
    }
    assert_eq!(s.up.count(), 0);
    s.a.stop().await;
}

#[tokio::test]
async fn unmapped_certificates_missing_credentials_and_mixed_agents_are_401() {
    let s = setup().await;
    let stranger = s.ca.client(&ClientId {
        cn: Some("stranger"),
        org: Some("Example"),
        dns: &["stranger.agents.example.com"],
        ..Default::default()
    });
    // A look-alike subject is not the reporter's (exact match).
    let lookalike = s.ca.client(&ClientId {
        cn: Some("reporter"),
        org: Some("Example Ltd"),
        ..Default::default()
    });
    let reporter = s.ca.client(&ClientId {
        cn: Some("reporter"),
        org: Some("Example"),
        ..Default::default()
    });
    let key = format!("Bearer {AGENT_KEY}");
    type Case<'a> = (&'a str, Option<&'a Leaf>, &'a [(&'a str, &'a str)]);
    let cases: [Case; 5] = [
        ("verified but unmapped", Some(&stranger), &[]),
        ("look-alike subject", Some(&lookalike), &[]),
        (
            "unmapped with a valid key",
            Some(&stranger),
            &[("authorization", &key)],
        ),
        ("no certificate, no key", None, &[]),
        (
            "reporter's certificate, deploy-bot's key",
            Some(&reporter),
            &[("authorization", &key)],
        ),
    ];
    for (what, cert, headers) in cases {
        let r = tls_send(
            s.a.proxy,
            s.client(cert),
            tls_request("GET", "/api/v1/x", headers),
        )
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(r.status, 401, "{what}: {}", r.body);
        assert_eq!(r.json()["error"], "unauthenticated", "{what}: {}", r.body);
    }
    assert_eq!(s.up.count(), 0);
    s.a.stop().await;
}
