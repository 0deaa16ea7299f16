//! Resources a client can hold: silent and idle connections on both listeners, the
//! connection caps, accept back-off when file descriptors run out, and the byte
//! budget of bodies kept in memory (`limits.max_held_bytes`).

mod common;
use common::*;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const RULES: &str = "rules:\n  - name: hold-deletes\n    when: {method: DELETE}\n    then: approve\n    approval: {approvers: [group:sre], timeout: 1m}\n  - name: inspect-sql\n    when: {method: POST, path: /api/sql, json: {/sql: \"re:(?i)drop\"}}\n    then: deny\n";

/// The value of the metric line starting with `name` (labels included), 0 when absent.
async fn metric(a: &impl Listeners, name: &str) -> i64 {
    let text = metrics_text(a).await;
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as i64)
}

/// Opens `n` connections to `addr` that never send anything.
async fn silent(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(TcpStream::connect(addr).await.unwrap());
    }
    out
}

/// Waits (within the deadline) until `s` reads end-of-file: airlock closed it.
async fn closed_by_airlock(s: &mut TcpStream) {
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(DEADLINE, s.read(&mut buf))
        .await
        .expect("airlock did not close the connection within the deadline")
        .unwrap_or(0);
    assert_eq!(n, 0, "expected EOF, got {n} bytes");
}

/// The standard config with `admin_extra` lines added to its `admin:` block.
fn with_admin(ws: &Workspace, up: &Upstream, admin_extra: &str, extra: &str) -> std::path::PathBuf {
    let cfg = ws.standard_config(&up.url(), extra);
    let text = std::fs::read_to_string(&cfg).unwrap();
    let text = text.replacen(
        "admin:\n  listen: 127.0.0.1:0\n",
        &format!("admin:\n  listen: 127.0.0.1:0\n{admin_extra}"),
        1,
    );
    assert!(text.contains(admin_extra));
    ws.write("airlock.yaml", &text)
}

#[tokio::test]
async fn thousands_of_silent_connections_do_not_starve_an_agent_and_are_closed() {
    let (up, _ws, a) = setup_with_rules(RULES, "limits: {header_timeout: 4s}\n").await;
    let mut quiet = silent(a.proxy, 2000).await;
    eventually(DEADLINE.as_secs(), || async {
        let open = metric(&a, "airlock_connections{listener=\"proxy\"}").await;
        (open >= 2000).then_some(())
    })
    .await;
    let r = tokio::time::timeout(
        Duration::from_secs(3),
        agent_request(&a, AGENT_KEY, "GET", "/api/ok").send(),
    )
    .await
    .expect("the agent was not served promptly")
    .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(up.count(), 1);
    // Every silent connection is closed by airlock once header_timeout has passed.
    for s in &mut quiet {
        closed_by_airlock(s).await;
    }
    let closed = metric(
        &a,
        "airlock_connections_closed_total{listener=\"proxy\",reason=\"silent\"}",
    )
    .await;
    assert_eq!(closed, 2000);
}

#[tokio::test]
async fn at_the_connection_cap_an_agent_is_served_once_the_silent_ones_time_out() {
    let (up, _ws, a) = setup_with_rules(
        RULES,
        "limits: {header_timeout: 1s, max_connections: 20}\n",
    )
    .await;
    let quiet = silent(a.proxy, 20).await;
    // The agent's connection waits for a slot; it gets one when a silent one is closed.
    let r = tokio::time::timeout(
        Duration::from_secs(15),
        agent_request(&a, AGENT_KEY, "GET", "/api/ok").send(),
    )
    .await
    .expect("the agent was never served")
    .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(up.count(), 1);
    // It was served only once a silent connection had been closed (within 1 s of
    // connecting, none would be without the cap): the cap held.
    let closed = metric(
        &a,
        "airlock_connections_closed_total{listener=\"proxy\",reason=\"silent\"}",
    )
    .await;
    assert!(closed >= 1, "the agent was served before any silent connection closed");
    drop(quiet);
}

#[tokio::test]
async fn an_idle_http1_keep_alive_connection_is_closed_after_idle_timeout() {
    let (_up, _ws, a) = setup_with_rules(
        RULES,
        "limits: {header_timeout: 20s, idle_timeout: 1s}\n",
    )
    .await;
    let mut s = TcpStream::connect(a.proxy).await.unwrap();
    let req = format!(
        "GET /api/ok HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {AGENT_KEY}\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    // Read the whole answer, then nothing more is sent: airlock closes the connection.
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let eof = tokio::time::timeout(DEADLINE, async {
        loop {
            let n = s.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    assert!(eof.is_ok(), "the idle connection was not closed");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let idle = metric(
        &a,
        "airlock_connections_closed_total{listener=\"proxy\",reason=\"idle\"}",
    )
    .await;
    assert_eq!(idle, 1, "closed for idleness, not by the 20 s header timeout");
}

#[tokio::test]
async fn an_idle_http2_connection_is_closed_but_not_while_a_request_is_held() {
    use http_body_util::BodyExt;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let (_up, _ws, a) = setup_with_rules(
        RULES,
        "limits: {header_timeout: 20s, idle_timeout: 1s}\n",
    )
    .await;
    let stream = TcpStream::connect(a.proxy).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    let conn = tokio::spawn(conn);
    let req = |method: &str, path: &str| {
        http::Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", a.proxy))
            .header("authorization", format!("Bearer {AGENT_KEY}"))
            .body(test_body(""))
            .unwrap()
    };
    // A held request keeps the connection busy longer than idle_timeout.
    let held = sender.send_request(req("DELETE", "/api/things/1"));
    let held = tokio::spawn(held);
    let list = wait_pending(&a, 1).await;
    // Still held and its connection still open after several idle periods: the
    // approval is decided only now, and its answer arrives on that connection.
    tokio::time::sleep(Duration::from_secs(3)).await; // three idle periods pass: the wait is the point
    bob_decides(&a, &list[0], "deny").await;
    let resp = held.await.unwrap().expect("the held request's stream was cut");
    assert_eq!(resp.status(), 403);
    let _ = resp.into_body().collect().await;
    // Now nothing is in flight: the connection is closed (GOAWAY, then EOF).
    tokio::time::timeout(DEADLINE, conn)
        .await
        .expect("the idle HTTP/2 connection was not closed")
        .unwrap()
        .ok();
    let idle = metric(
        &a,
        "airlock_connections_closed_total{listener=\"proxy\",reason=\"idle\"}",
    )
    .await;
    assert_eq!(idle, 1);
}

#[tokio::test]
async fn silent_admin_connections_over_the_cap_do_not_lock_reviewers_out() {
    let up = Upstream::start().await;
    let ws = Workspace::new();
    ws.write("rules/r.yaml", RULES);
    let cfg = with_admin(
        &ws,
        &up,
        "  max_connections: 10\n",
        "limits: {header_timeout: 1s}\n",
    );
    let a = InProcess::start(&cfg).await;
    let admin = a.admin.unwrap();
    let mut quiet = silent(admin, 30).await;
    let r = tokio::time::timeout(
        Duration::from_secs(20),
        client()
            .get(a.admin_url("/api/v1/approvals"))
            .bearer_auth(BOB)
            .send(),
    )
    .await
    .expect("the reviewer was never served")
    .unwrap();
    assert_eq!(r.status(), 200);
    for s in &mut quiet {
        closed_by_airlock(s).await;
    }
    let closed = metric(
        &a,
        "airlock_connections_closed_total{listener=\"admin\",reason=\"silent\"}",
    )
    .await;
    assert_eq!(closed, 30);
}
