//! Path normalization and method overrides end to end, over raw HTTP/1.1 so the
//! request target reaches airlock byte for byte (an HTTP client library would
//! normalize it first). A denied request must stay denied however it is spelled:
//! every variant is denied like its plain form or refused as `bad_path`, and the
//! upstream sees none of them.

mod common;
use common::*;

use std::net::SocketAddr;

const RULES: &str = r#"rules:
  - name: instance-delete
    when: {method: DELETE, path: /v1/projects/*/instances/*}
    then: deny
  - name: sql-write
    when: {method: POST, path: /v1/sql}
    then: deny
"#;

/// Sends `METHOD target` with the agent key and `extra` header lines; returns
/// (status, body).
async fn send(proxy: SocketAddr, method: &str, target: &str, extra: &str) -> (u16, String) {
    let req = format!(
        "{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {AGENT_KEY}\r\n{extra}Content-Length: 0\r\nConnection: close\r\n\r\n"
    );
    let (status, _head, body) = raw_http(proxy, req.as_bytes()).await;
    (status, body)
}

async fn start(up: &Upstream) -> (Workspace, InProcess) {
    let ws = Workspace::new();
    ws.write("rules/r.yaml", RULES);
    let a = InProcess::start(&ws.standard_config(&up.url(), "")).await;
    (ws, a)
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Want {
    /// 403 denied_by_rule, like the plain form.
    Denied,
    /// 400 bad_path.
    BadPath,
}

#[tokio::test]
async fn spellings_of_a_denied_path_are_denied_or_refused_never_forwarded() {
    use Want::*;
    let up = Upstream::start().await;
    let (_ws, a) = start(&up).await;
    let plain = "/api/v1/projects/p1/instances/vm-7";
    let absolute = format!("http://127.0.0.1{plain}");
    let variants: Vec<(&str, Want)> = vec![
        (plain, Denied),
        ("/api/v1//projects/p1/instances/vm-7", Denied),
        ("/api/v1/projects/p1/instances//vm-7", Denied),
        ("//api/v1/projects/p1/instances/vm-7", Denied),
        ("/api/v1/projects/p1/instances/vm-7#fragment", Denied),
        ("/api///v1///projects//p1//instances///vm-7", Denied),
        ("/api/./v1/projects/p1/instances/vm-7", Denied),
        ("/api/v1/projects/./p1/instances/vm-7", Denied),
        ("/api/v1/x/../projects/p1/instances/vm-7", Denied),
        ("/api/v1/projects/p1/instances/x/../vm-7", Denied),
        ("/api/x/../v1/projects/p1/instances/vm-7", Denied),
        ("/x/../api/v1/projects/p1/instances/vm-7", Denied),
        ("/api/v1/projects/p1/instances/vm-7/", Denied),
        ("/api/v1/projects/p1/instances/vm-7?force=1", Denied),
        ("/api/v1/projects/p1/instances/%76m-7", Denied),
        ("/api/v1/projects/p1/%69nstances/vm-7", Denied),
        ("/api/v1/projects/p1/instances/vm%2D7", Denied),
        ("/api/v1/projects/p1/instances/vm%2d7", Denied),
        ("/api/%76%31/projects/%70%31/instances/vm-7", Denied),
        ("/%61pi/v1/projects/p1/instances/vm-7", Denied),
        ("/api/v1/%2e/projects/p1/instances/vm-7", Denied),
        ("/api/v1/projects/p1/x/%2E%2E/instances/vm-7", Denied),
        ("/api/v1/projects/p1/x/.%2e/instances/vm-7", Denied),
        ("/api/v1/projects/p1/x/%2e./instances/vm-7", Denied),
        (
            "/api/v1///projects//p1/./instances/../instances/vm-7",
            Denied,
        ),
        ("/api/v1/projects/p1/instances/%252Fvm-7", Denied),
        (absolute.as_str(), Denied),
        ("/api/v1/projects/p1/instances%2Fvm-7", BadPath),
        ("/api/v1/projects/p1%2finstances/vm-7", BadPath),
        ("/api/v1/projects/p1/instances/..%2fvm-7", BadPath),
        ("/api/v1/projects/p1/instances/%5Cvm-7", BadPath),
        ("/api/v1/projects/p1/instances/vm-7%00", BadPath),
        ("/api/v1/projects/p1/instances/vm-7%0a", BadPath),
        ("/api/v1/projects/p1/instances/vm-7%FF", BadPath),
        ("/api/v1/projects/p1/instances/vm-7%zz", BadPath),
        ("/api/v1/projects/p1/instances/..;/vm-7", BadPath),
        ("/api/v1/projects/p1/instances/.%3B/vm-7", BadPath),
        ("/api/../../v1/projects/p1/instances/vm-7", BadPath),
        ("/../api/v1/projects/p1/instances/vm-7", BadPath),
        ("/api/v1\\projects/p1/instances/vm-7", BadPath),
        ("/api/v1/projects/p1/instances\\vm-7", BadPath),
        ("/api/v1/projects/p1/instances/vm-7\\", BadPath),
        ("*", BadPath),
    ];
    assert!(variants.len() >= 30);
    let mut failures = Vec::new();
    for (target, want) in &variants {
        let (status, body) = send(a.proxy, "DELETE", target, "").await;
        let ok = match want {
            Denied => status == 403 && body.contains(r#""error":"denied_by_rule""#),
            BadPath => status == 400 && body.contains(r#""error":"bad_path""#),
        };
        if !ok {
            failures.push(format!("{target}: wanted {want:?}, got {status} {body}"));
        }
    }
    assert_eq!(
        up.count(),
        0,
        "variants reached the upstream: {:#?}",
        up.requests().iter().map(|s| &s.uri).collect::<Vec<_>>()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test]
async fn targets_the_http_parser_refuses_never_reach_the_upstream() {
    // Raw spaces and control bytes are refused before airlock sees a request.
    let up = Upstream::start().await;
    let (_ws, a) = start(&up).await;
    for target in [
        "/api/v1/projects/p1/instances/vm 7",
        "/api/v1/projects/p1/instances/vm-7\x01",
        "/api/v1/projects/p1/instances/vm-7\x7f",
    ] {
        let (status, body) = send(a.proxy, "DELETE", target, "").await;
        assert_eq!(status, 400, "{target:?}: {body}");
    }
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn the_normalized_path_is_what_the_upstream_receives() {
    let up = Upstream::start().await;
    let (_ws, a) = start(&up).await;
    for (target, upstream_sees) in [
        ("/api/a/./b//c", "/a/b/c"),
        ("/api/a/x/../b/%63", "/a/b/c"),
        ("/api//a/b/c/", "/a/b/c/"),
        ("/api/caf%c3%a9/%7euser", "/caf%C3%A9/~user"),
        ("/api/a%20b?q=%2F..%2F", "/a%20b?q=%2F..%2F"),
        ("/api/%252F", "/%252F"),
        (
            "/%61pi/v1/projects/p1/instances/vm-7",
            "/v1/projects/p1/instances/vm-7",
        ),
    ] {
        let before = up.count();
        let (status, body) = send(a.proxy, "GET", target, "").await;
        assert_eq!(status, 200, "{target}: {body}");
        assert_eq!(up.count(), before + 1);
        assert_eq!(up.requests().pop().unwrap().uri, upstream_sees, "{target}");
    }
}

#[tokio::test]
async fn method_overrides_are_matched_as_the_method_they_name() {
    let up = Upstream::start().await;
    let (_ws, a) = start(&up).await;
    let target = "/api/v1/projects/p1/instances/vm-7";
    for header in [
        "X-HTTP-Method-Override: DELETE\r\n",
        "X-HTTP-Method: DELETE\r\n",
        "X-Method-Override: delete\r\n",
        "x-http-method-override:  Delete \r\n",
        "X-HTTP-Method-Override: DELETE\r\nX-HTTP-Method: DELETE\r\n",
    ] {
        let (status, body) = send(a.proxy, "POST", target, header).await;
        assert_eq!(status, 403, "POST with {header:?}: {body}");
        assert!(body.contains("denied_by_rule"), "{body}");
    }
    // Overrides that disagree, or name no method, are refused.
    for header in [
        "X-HTTP-Method-Override: GET\r\nX-HTTP-Method: DELETE\r\n",
        "X-HTTP-Method-Override: DELETE\r\nX-HTTP-Method-Override: GET\r\n",
        "X-HTTP-Method-Override: GET, DELETE\r\n",
        "X-HTTP-Method-Override: \r\n",
    ] {
        let (status, body) = send(a.proxy, "POST", target, header).await;
        assert_eq!(status, 400, "POST with {header:?}: {body}");
        assert!(body.contains(r#""error":"bad_request""#), "{body}");
    }
    assert_eq!(up.count(), 0);

    // An override naming a harmless method passes (the rule is about DELETE).
    let (status, body) = send(a.proxy, "POST", target, "X-HTTP-Method-Override: GET\r\n").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(up.count(), 1);
}

#[tokio::test]
async fn an_override_cannot_hide_the_request_line_method() {
    // An upstream that ignores override headers acts on the request line: a DELETE
    // dressed up as a GET, or a POST dressed up as a GET, must not get through.
    let up = Upstream::start().await;
    let (_ws, a) = start(&up).await;
    let (status, body) = send(
        a.proxy,
        "DELETE",
        "/api/v1/projects/p1/instances/vm-7",
        "X-HTTP-Method-Override: GET\r\n",
    )
    .await;
    assert!(
        matches!(status, 400 | 403),
        "DELETE disguised as GET: {status} {body}"
    );
    let (status, body) = send(a.proxy, "POST", "/api/v1/sql", "X-HTTP-Method: GET\r\n").await;
    assert!(
        matches!(status, 400 | 403),
        "POST disguised as GET: {status} {body}"
    );
    assert_eq!(
        up.count(),
        0,
        "{:?}",
        up.requests()
            .iter()
            .map(|s| (&s.method, &s.uri))
            .collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn a_lowercase_method_is_not_a_way_around_a_method_rule() {
    // Methods are case-sensitive on the wire, but upstreams that uppercase them exist;
    // a `delete` must not slip past a DELETE rule.
    let up = Upstream::start().await;
    let (_ws, a) = start(&up).await;
    let (status, body) = send(a.proxy, "delete", "/api/v1/projects/p1/instances/vm-7", "").await;
    assert!(
        matches!(status, 400 | 403 | 405),
        "lowercase delete: {status} {body}"
    );
    assert_eq!(up.count(), 0);
}
