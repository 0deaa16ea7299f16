//! Requests built to slip past the rules: each is matched like its plain form,
//! refused, or held, and never reaches the upstream unchecked.

mod common;
use common::*;

const RULES: &str = r#"rules:
  - name: no-deletes
    when: {method: DELETE, path: /v1/things/*}
    then: deny
  - name: terminate
    when:
      path: /ec2
      form: {Action: TerminateInstances}
    then: deny
  - name: prod-tier
    when:
      path: /v1/deploy
      json: {/spec/tier: prod}
    then: deny
  - name: dry-run-only
    when:
      path: /v1/deploy
      headers: {x-dry-run: "true"}
    then: allow
  - name: upload
    when: {method: PUT, path: /v1/blobs/*}
    then: approve
    approval: {approvers: [group:sre]}
"#;

async fn setup(extra: &str, default_deny: bool) -> (Upstream, Workspace, InProcess) {
    let mut extra = extra.to_string();
    if default_deny {
        extra.push_str("default: deny\n");
    }
    setup_with_rules(RULES, &extra).await
}

fn auth() -> String {
    format!("Authorization: Bearer {AGENT_KEY}\r\n")
}

#[tokio::test]
async fn a_broken_host_header_is_a_clean_400_not_a_crash() {
    let (up, _ws, a) = setup("", false).await;
    for host in ["[", "[::1", "[::1:80"] {
        let req = format!(
            "GET /api/x HTTP/1.1\r\nHost: {host}\r\n{}Connection: close\r\n\r\n",
            auth()
        );
        let (status, _, body) = raw_http(a.proxy, req.as_bytes()).await;
        assert_eq!(status, 400, "Host {host:?}: {body}");
    }
    // Still serving.
    let r = agent_request(&a, AGENT_KEY, "GET", "/api/x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(up.count(), 1);
}

#[tokio::test]
async fn only_websocket_upgrades_pass_and_h2c_is_not_tunneled() {
    let (up, _ws, a) = setup("", false).await;
    let req = format!(
        "GET /api/v1/x HTTP/1.1\r\nHost: t\r\n{}Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\nConnection: Upgrade, HTTP2-Settings\r\n\r\n",
        auth()
    );
    let (status, _, _) = raw_http_first_response(a.proxy, req.as_bytes()).await;
    assert_eq!(status, 200, "an h2c upgrade is answered as a plain request");
    let seen = up.requests();
    assert_eq!(seen.len(), 1);
    assert!(
        seen[0].headers.get("upgrade").is_none(),
        "{:?}",
        seen[0].headers
    );
    assert!(seen[0].headers.get("http2-settings").is_none());
}

/// Sends a request and reads until the end of the first response head.
async fn raw_http_first_response(
    addr: std::net::SocketAddr,
    request: &[u8],
) -> (u16, String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !String::from_utf8_lossy(&buf).contains("\r\n\r\n") {
        let n = s.read(&mut chunk).await.unwrap();
        assert!(n > 0, "connection closed before a response");
        buf.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|x| x.parse().ok())
        .unwrap_or(0);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (status, head.to_string(), body.to_string())
}

#[tokio::test]
async fn a_header_the_connection_header_names_is_gone_before_the_rules_look() {
    // default: deny; only `x-dry-run: true` deploys are allowed. Naming the header in
    // Connection would make airlock drop it after an allow: the rules must not see it.
    let (up, _ws, a) = setup("", true).await;
    let r = agent_request(&a, AGENT_KEY, "POST", "/api/v1/deploy")
        .header("x-dry-run", "true")
        .header("connection", "x-dry-run")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(up.count(), 0);
    let r = agent_request(&a, AGENT_KEY, "POST", "/api/v1/deploy")
        .header("x-dry-run", "true")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(up.requests()[0].headers["x-dry-run"], "true");
}

#[tokio::test]
async fn method_overrides_in_the_query_are_matched_as_the_method_they_name() {
    let (up, _ws, a) = setup("", false).await;
    let r = agent_request(&a, AGENT_KEY, "POST", "/api/v1/things/7?_method=DELETE")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = agent_request(&a, AGENT_KEY, "POST", "/api/v1/things/7?_method=PUT")
        .header("x-http-method-override", "DELETE")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "disagreeing overrides are refused");
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn form_fields_are_found_in_the_query_and_other_body_types_fail_closed() {
    let (up, _ws, a) = setup("", false).await;
    let denied = |r: reqwest::Response| async move {
        assert_eq!(r.status(), 403);
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["rule"][0], "terminate");
    };
    // The field in the query string, empty body.
    denied(
        agent_request(
            &a,
            AGENT_KEY,
            "POST",
            "/api/ec2?Action=TerminateInstances&InstanceId.1=i-1",
        )
        .send()
        .await
        .unwrap(),
    )
    .await;
    // A multipart body cannot be read as a form: the rule applies.
    denied(
        agent_request(&a, AGENT_KEY, "POST", "/api/ec2")
            .header("content-type", "multipart/form-data; boundary=X")
            .body("--X\r\nContent-Disposition: form-data; name=\"Action\"\r\n\r\nTerminateInstances\r\n--X--\r\n")
            .send()
            .await
            .unwrap(),
    )
    .await;
    // A urlencoded body that asks for something else passes.
    let r = agent_request(&a, AGENT_KEY, "POST", "/api/ec2")
        .header("content-type", "application/x-www-form-urlencoded")
        .body("Action=DescribeInstances")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(up.count(), 1);
}

#[tokio::test]
async fn json_keys_differing_only_in_case_do_not_dodge_a_rule() {
    let (up, _ws, a) = setup("", false).await;
    for body in [
        r#"{"Spec":{"Tier":"prod"}}"#,
        r#"{"spec":{"tier":"dev","TIER":"prod"}}"#,
    ] {
        let r = agent_request(&a, AGENT_KEY, "POST", "/api/v1/deploy")
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{body}");
    }
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn every_content_encoding_header_counts() {
    let (up, _ws, a) = setup("", false).await;
    let r = agent_request(&a, AGENT_KEY, "POST", "/api/v1/deploy")
        .header("content-type", "application/json")
        .header("content-encoding", "identity")
        .header("content-encoding", "gzip")
        .body(r#"{"spec":{"tier":"dev"}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "a possibly compressed body fails closed");
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn an_approval_is_bound_to_the_request_line_method_too() {
    let (up, _ws, a) = setup("", false).await;
    let held = spawn_request(
        agent_request(&a, AGENT_KEY, "POST", "/api/v1/blobs/b1")
            .header("x-http-method-override", "PUT")
            .body("data"),
    );
    let list = wait_pending(&a, 1).await;
    assert_eq!(
        list[0]["method"], "POST as PUT",
        "reviewers see both methods"
    );
    bob_decides(&a, &list[0], "approve").await;
    assert_eq!(held.await.unwrap().status(), 200);
    assert_eq!(up.requests()[0].method, "POST");
}

#[tokio::test]
async fn a_body_that_trickles_in_too_slowly_is_refused() {
    let (up, _ws, a) = setup("limits: {body_timeout: 1s}\n", false).await;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(a.proxy).await.unwrap();
    let head = format!(
        "PUT /api/v1/blobs/b2 HTTP/1.1\r\nHost: t\r\n{}Content-Length: 100\r\n\r\nonly-a-little",
        auth()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(DEADLINE, s.read(&mut buf))
        .await
        .expect("answered after the body timeout")
        .unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("body_timeout"), "{text}");
    assert!(pending(&a, BOB).await.is_empty());
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn credentials_in_the_query_never_reach_reviewers_or_the_audit_log() {
    let (up, ws, a) = setup("audit: {level: all, file: audit.jsonl}\n", false).await;
    let held = spawn_request(
        agent_request(
            &a,
            AGENT_KEY,
            "PUT",
            "/api/v1/blobs/b3?api_key=supersecret-123&x=1",
        )
        .body("d"),
    );
    let list = wait_pending(&a, 1).await;
    assert_eq!(list[0]["url"], "/v1/blobs/b3?api_key=REDACTED&x=1");
    bob_decides(&a, &list[0], "approve").await;
    assert_eq!(held.await.unwrap().status(), 200);
    // The upstream got the real query; nothing else kept it.
    assert!(up.requests()[0].uri.contains("api_key=supersecret-123"));
    let r = agent_request(&a, AGENT_KEY, "GET", "/api/plain?token=supersecret-123")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    a.stop().await;
    let cfg = ws.config();
    let (code, export, _) = run_cli(&["audit", "export", "-c", cfg.to_str().unwrap()], &[]);
    assert_eq!(code, 0);
    assert!(export.contains("api_key=REDACTED"), "{export}");
    assert!(!export.contains("supersecret"), "{export}");
    let jsonl = std::fs::read_to_string(ws.path().join("audit.jsonl")).unwrap();
    assert!(!jsonl.contains("supersecret"));
}

#[tokio::test]
async fn every_spelling_of_a_credential_in_the_query_is_redacted_in_the_log() {
    let (up, ws, a) = setup(
        "audit: {level: all, file: audit.jsonl, redact_query: [tenant_cookie_x]}\n",
        false,
    )
    .await;
    // The issue's list, and the spellings around it.
    let names = [
        "api-key",
        "private_token",
        "accessToken",
        "auth",
        "jwt",
        "X-Goog-Signature",
        "pwd",
        "session",
        "passphrase",
        "client_assertion",
        "token[]",
        "AWSAccessKeyId",
        "X-Amz-Credential",
        "refresh_token",
        "Signature",
        "sessionId",
        "tenant_cookie_x",
        "%74oken",
    ];
    for (i, name) in names.iter().enumerate() {
        let path = format!("/api/plain/{i}?{name}=hunter2-{i}&page=2;sid=hunter2-semi-{i}");
        let r = agent_request(&a, AGENT_KEY, "GET", &path)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{name}");
    }
    // A JWT is redacted whatever its parameter is called.
    let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJib2IifQ.c2lnbmF0dXJl";
    let r = agent_request(&a, AGENT_KEY, "GET", &format!("/api/plain/jwt?state={jwt}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(up.count(), names.len() + 1);
    // The upstream got every real value.
    assert!(up.requests().iter().any(|s| s.uri.contains("hunter2-0")));
    a.stop().await;
    let jsonl = std::fs::read_to_string(ws.path().join("audit.jsonl")).unwrap();
    assert!(!jsonl.contains("hunter2"), "{jsonl}");
    assert!(!jsonl.contains("eyJzdWIi"), "{jsonl}");
    assert!(jsonl.contains("page=2"), "{jsonl}");
    let cfg = ws.config();
    let (code, export, _) = run_cli(&["audit", "export", "-c", cfg.to_str().unwrap()], &[]);
    assert_eq!(code, 0);
    assert!(!export.contains("hunter2"), "{export}");
}

#[tokio::test]
async fn reviewers_see_every_reading_of_an_ambiguous_body_and_why_it_was_held() {
    const AMBIGUOUS_RULES: &str = r#"rules:
  - name: sql-drop
    when: {method: POST, path: /v1/query, json: {/sql: "re:(?i)\\bdrop\\b"}}
    then: approve
    approval: {approvers: [group:sre], show: [/sql]}
"#;
    let (up, _ws, a) = setup_with_rules(AMBIGUOUS_RULES, "").await;
    // Go takes the last `sql`, other parsers the first; case-insensitive binders fold SQL.
    let body = r#"{"sql":"select 1","SQL":"drop table t"}"#;
    let (held, id) = agent_hold(&a, "POST", "/api/v1/query", body).await;
    let (_, ap) = approval_get(&a, BOB, &id).await;
    assert_eq!(
        ap["show"]["/sql"]["ambiguous"],
        serde_json::json!(["select 1", "drop table t"]),
        "{ap}"
    );
    let note = ap["show"]["note"].as_str().unwrap_or_default();
    assert!(note.contains("equal but for case"), "{ap}");
    let (status, _) = vote(&a, BOB, &id, "deny", Some("which one?")).await;
    assert_eq!(status, 200);
    assert_eq!(held.await.unwrap().status, 403);
    assert_eq!(up.count(), 0);
}
