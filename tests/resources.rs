//! Resources a client can hold: silent and idle connections on both listeners, the
//! connection caps, accept back-off when file descriptors run out, and the byte
//! budget of bodies kept in memory (`limits.max_held_bytes`).

mod common;
use common::*;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const RULES: &str = "rules:\n  - name: hold-deletes\n    when: {method: DELETE}\n    then: approve\n    approval: {approvers: [group:sre], timeout: 1m}\n  - name: inspect-sql\n    when: {method: POST, path: /sql, json: {/sql: \"re:(?i)drop\"}}\n    then: deny\n";

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

/// This process's (soft, hard) limits on open descriptors.
fn nofile_limits() -> (usize, usize) {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let mut n = line
        .split_whitespace()
        .skip(3)
        .map(|v| v.parse::<usize>().unwrap_or(usize::MAX));
    (n.next().unwrap(), n.next().unwrap())
}

/// How many silent sockets this test can open, up to `wanted`: both ends live in this
/// process (the in-process airlock accepts them), so the soft descriptor limit is
/// raised towards the hard one when it is too low (`prlimit`), and the number is
/// lowered only if that is not enough.
fn silent_capacity(wanted: usize) -> usize {
    let need = wanted * 2 + 512;
    let (soft, hard) = nofile_limits();
    if soft < need && hard > soft {
        let _ = std::process::Command::new("prlimit")
            .arg(format!("--pid={}", std::process::id()))
            .arg(format!("--nofile={}:", hard.min(need)))
            .status();
    }
    let (soft, _) = nofile_limits();
    wanted.min(soft.saturating_sub(512) / 2)
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
    let n = silent_capacity(2000);
    assert!(n >= 200, "only {n} descriptors to spare: raise ulimit -n");
    let (up, _ws, a) = setup_with_rules(RULES, "limits: {header_timeout: 8s}\n").await;
    let mut quiet = silent(a.proxy, n).await;
    eventually(DEADLINE.as_secs(), || async {
        let open = metric(&a, "airlock_connections{listener=\"proxy\"}").await;
        (open >= n as i64).then_some(())
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
    let silent_closed = "airlock_connections_closed_total{listener=\"proxy\",reason=\"silent\"}";
    assert_eq!(
        metric(&a, silent_closed).await,
        0,
        "served while every silent connection was still open"
    );
    // Every silent connection is closed by airlock once header_timeout has passed.
    for s in &mut quiet {
        closed_by_airlock(s).await;
    }
    assert_eq!(metric(&a, silent_closed).await, n as i64);
}

#[tokio::test]
async fn at_the_connection_cap_an_agent_is_served_once_the_silent_ones_time_out() {
    let (up, _ws, a) =
        setup_with_rules(RULES, "limits: {header_timeout: 1s, max_connections: 20}\n").await;
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
    assert!(
        closed >= 1,
        "the agent was served before any silent connection closed"
    );
    drop(quiet);
}

#[tokio::test]
async fn an_idle_http1_keep_alive_connection_is_closed_after_idle_timeout() {
    let (_up, _ws, a) =
        setup_with_rules(RULES, "limits: {header_timeout: 20s, idle_timeout: 1s}\n").await;
    let mut s = TcpStream::connect(a.proxy).await.unwrap();
    let req =
        format!("GET /api/ok HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {AGENT_KEY}\r\n\r\n");
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
    assert_eq!(
        idle, 1,
        "closed for idleness, not by the 20 s header timeout"
    );
}

#[tokio::test]
async fn an_idle_http2_connection_is_closed_but_not_while_a_request_is_held() {
    use http_body_util::BodyExt;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let (_up, _ws, a) =
        setup_with_rules(RULES, "limits: {header_timeout: 20s, idle_timeout: 1s}\n").await;
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
    let resp = held
        .await
        .unwrap()
        .expect("the held request's stream was cut");
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

#[tokio::test]
async fn a_body_to_inspect_is_refused_503_busy_while_held_bodies_fill_the_budget() {
    let (up, _ws, a) = setup_with_rules(
        RULES,
        "limits: {max_body: 1KiB, inspect_body: 1KiB, max_held_bytes: 2KiB}\n",
    )
    .await;
    let mut held = Vec::new();
    for i in 0..2 {
        let path = format!("/api/things/{i}");
        held.push(spawn_request(
            agent_request(&a, AGENT_KEY, "DELETE", &path).body(vec![b'x'; 1000]),
        ));
        wait_pending(&a, i + 1).await;
    }
    let sql = |q: &str| {
        agent_request(&a, OTHER_AGENT_KEY, "POST", "/api/sql")
            .header("content-type", "application/json")
            .body(format!("{{\"sql\":\"{q}\"}}"))
            .send()
    };
    // Inspecting would reserve inspect_body more than is left: refused before reading.
    let r = sql("select 1").await.unwrap();
    assert_eq!(r.status(), 503);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"], "busy", "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("limits.max_held_bytes"),
        "{v}"
    );
    assert_eq!(up.count(), 0, "nothing was forwarded");
    // A request whose body is not read still flows.
    let ok = agent_request(&a, AGENT_KEY, "GET", "/api/ok")
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    deny_each(&a, &pending(&a, BOB).await).await;
    for h in held {
        assert_eq!(h.await.unwrap().status(), 403);
    }
    eventually(DEADLINE.as_secs(), || async {
        (metric(&a, "airlock_held_bytes").await == 0).then_some(())
    })
    .await;
    // With the budget free again, bodies are inspected as usual.
    assert_eq!(sql("select 1").await.unwrap().status(), 200);
    assert_eq!(sql("DROP TABLE t").await.unwrap().status(), 403);
    assert_eq!(up.count(), 2);
    assert_eq!(metric(&a, "airlock_held_bytes").await, 0);
}

#[tokio::test]
async fn out_of_file_descriptors_the_admin_listener_backs_off_and_recovers() {
    let up = Upstream::start().await;
    let ws = Workspace::new();
    ws.write("rules/r.yaml", RULES);
    let cfg = with_admin(
        &ws,
        &up,
        "  max_connections: 256\n",
        "limits: {header_timeout: 1s}\n",
    );
    let a = tokio::task::spawn_blocking(move || Airlock::start(&cfg))
        .await
        .unwrap();
    let admin = a.admin.unwrap();
    // Leave the process 8 free descriptors.
    let pid = a.child.id();
    let open = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    let limit = open + 8;
    let st = std::process::Command::new("prlimit")
        .arg(format!("--pid={pid}"))
        .arg(format!("--nofile={limit}:{limit}"))
        .status()
        .expect("prlimit (util-linux) is needed to lower airlock's descriptor limit");
    assert!(st.success());
    // Far more silent connections than descriptors: accept fails until they time out.
    let mut quiet = silent(admin, 24).await;
    let r = tokio::time::timeout(
        Duration::from_secs(25),
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
    let errors = metric(&a, "airlock_accept_errors_total{listener=\"admin\"}").await;
    assert!(
        errors >= 1,
        "accept never failed: descriptors were not exhausted"
    );
    // Backing off (5 ms doubling to 1 s) makes a few failed accepts per second of
    // exhaustion; a spinning loop makes thousands.
    assert!(
        errors <= 100,
        "{errors} failed accepts: the accept loop spins"
    );
    let log = a.stderr.lock().unwrap().clone();
    let logged = log.matches("accept failed").count();
    eprintln!("{errors} failed accepts, logged {logged} times");
    assert!(logged >= 1, "the exhaustion was not logged:\n{log}");
    assert!(
        logged <= 10 && logged < errors.max(2) as usize,
        "logged {logged} times for {errors} failures (once per episode expected):\n{log}"
    );
}
