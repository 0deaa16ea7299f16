//! `airlock rules test`, `airlock rules explain` and `airlock serve` run one request
//! path: the same request gets the same answer from all three.

mod common;
use common::*;

const HOST_RULES: &str = r#"rules:
  - name: no-deletes
    when: {method: DELETE}
    then: deny
    tests:
      - request: {method: DELETE, url: "http://api.example.com:8080/v1/things/1", agent: deploy-bot}
        expect: deny
      - request: {method: DELETE, url: "http://elsewhere.example.com/v1/things/1", agent: deploy-bot}
        expect: no_route
      - request: {method: GET, url: "http://api.example.com:8080/v1/things/1"}
        expect: unauthenticated
      - request: {method: GET, url: "http://api.example.com:8080/v1/things/1", agent: nobody}
        expect: unauthenticated
      - request: {method: GET, url: "http://api.example.com/v1/../../x", agent: deploy-bot}
        expect: bad_path
"#;

fn host_config(ws: &Workspace, upstream: &str) -> std::path::PathBuf {
    ws.write(
        "airlock.yaml",
        &format!(
            "listen: 127.0.0.1:0\nadmin:\n  listen: 127.0.0.1:0\nstore: sqlite://airlock.db\nrules: rules/\nupstreams:\n  - name: api\n    host: api.example.com\n    url: {upstream}\n{}",
            identities_yaml()
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_test_and_the_proxy_agree_on_a_host_with_a_port() {
    let up = Upstream::start().await;
    let ws = Workspace::new();
    let cfg = host_config(&ws, &up.url());
    ws.write("rules/r.yaml", HOST_RULES);

    let (code, out, err) =
        run_cli_blocking(&["rules", "test", "-c", cfg.to_str().unwrap()], &[]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.lines().any(|l| l == "5 passed, 0 failed"), "{out}");

    // The proxy answers the same request the same way.
    let a = Airlock::start(&cfg);
    let (status, _, body) = raw_http(
        a.proxy,
        format!(
            "DELETE /v1/things/1 HTTP/1.1\r\nHost: api.example.com:8080\r\nAuthorization: Bearer {AGENT_KEY}\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("denied_by_rule"), "{body}");
    let (status, _, body) = raw_http(
        a.proxy,
        b"GET /v1/things/1 HTTP/1.1\r\nHost: api.example.com:8080\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(up.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_says_what_the_proxy_would_answer_and_exits_non_zero_unless_allowed() {
    let up = Upstream::start().await;
    let ws = Workspace::new();
    let cfg = host_config(&ws, &up.url());
    ws.write("rules/r.yaml", HOST_RULES);
    let cfg = cfg.to_str().unwrap().to_string();
    let explain = |args: &'static [&'static str]| {
        let cfg = cfg.clone();
        async move {
            let mut all = vec!["rules", "explain", "-c", cfg.as_str()];
            all.extend_from_slice(args);
            run_cli_blocking(&all, &[]).await
        }
    };

    // No agent named: the proxy would answer 401, and explain says so.
    let (code, out, _) = explain(&["GET", "http://api.example.com/v1/x"]).await;
    assert_eq!(code, 1, "{out}");
    assert_eq!(
        out.lines().next(),
        Some("verdict: unauthenticated"),
        "{out}"
    );
    assert!(out.contains("answer:  401 unauthenticated"), "{out}");

    // No route: 404.
    let (code, out, _) = explain(&[
        "GET",
        "http://other.example.com/v1/x",
        "--agent",
        "deploy-bot",
    ])
    .await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("answer:  404 no_route"), "{out}");

    // Denied: 403, exit 1.
    let (code, out, _) = explain(&[
        "DELETE",
        "http://api.example.com:8080/v1/x",
        "--agent",
        "deploy-bot",
    ])
    .await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("answer:  403 denied_by_rule"), "{out}");

    // Allowed: exit 0.
    let (code, out, _) = explain(&[
        "GET",
        "http://api.example.com:8080/v1/x",
        "--agent",
        "deploy-bot",
    ])
    .await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("answer:  forwarded to api"), "{out}");

    // JSON for scripts.
    let (code, out, _) = explain(&[
        "DELETE",
        "http://api.example.com/v1/x",
        "--agent",
        "deploy-bot",
        "--format",
        "json",
    ])
    .await;
    assert_eq!(code, 1, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["verdict"], "deny");
    assert_eq!(v["status"], 403);
    assert_eq!(v["error"], "denied_by_rule");
    assert_eq!(v["agent"], "deploy-bot");
    assert_eq!(v["rules"], serde_json::json!(["no-deletes"]));
    assert_eq!(v["checks"][0]["matched"], true);

    let (code, out, _) = explain(&["GET", "http://api.example.com/v1/x", "--format", "json"]).await;
    assert_eq!(code, 1, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["verdict"], "unauthenticated");
    assert_eq!(v["status"], 401);
}
