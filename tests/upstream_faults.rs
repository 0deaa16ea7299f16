//! An upstream that fails after its response head — resets mid-body, closes short of
//! its `Content-Length` or its last chunk, stalls — is recorded as what happened:
//! `upstream_reset` / `upstream_timeout` with the upstream's status and the bytes it
//! delivered, never `passed 200`. A stalled body is cut after the upstream's
//! `idle_timeout`, so the agent sees an incomplete response instead of waiting
//! forever. A complete response is one `passed` event with its bytes, and its access
//! log line, written when the body is done, carries them too.

mod common;
use common::*;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::Value;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// How the misbehaving upstream answers every request.
#[derive(Clone, Copy)]
enum Reply {
    /// `Content-Length: n`, all of it.
    Whole(usize),
    /// `Content-Length: 1000`, 100 bytes, then (on the cue) a TCP reset.
    ResetAfter100,
    /// Chunked, one chunk of 100 bytes, then (on the cue) a close without the last chunk.
    ClosedChunkedAfter100,
    /// Chunked, one chunk of 100 bytes, then nothing, the connection kept open.
    StallChunkedAfter100,
    /// Chunked, one chunk of 100 bytes, then 10 bytes every 50ms, never ending.
    Trickle,
}

/// An upstream written on raw TCP so that it can misbehave. `cue` tells it when to
/// fail: after the agent has received the first 100 bytes, so that what airlock
/// delivered before the fault is known exactly.
struct BadUpstream {
    addr: SocketAddr,
    cue: Arc<Notify>,
}

impl BadUpstream {
    async fn start(reply: Reply) -> BadUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cue = Arc::new(Notify::new());
        let cue2 = cue.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(answer(stream, reply, cue2.clone()));
            }
        });
        BadUpstream { addr, cue }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// Reads one request (head and `Content-Length` body) and answers it as `reply` says.
async fn answer(mut s: TcpStream, reply: Reply, cue: Arc<Notify>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + length {
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let hundred = [b'a'; 100];
    match reply {
        Reply::Whole(n) => {
            let head =
                format!("HTTP/1.1 200 OK\r\ncontent-length: {n}\r\nconnection: close\r\n\r\n");
            let _ = s.write_all(head.as_bytes()).await;
            let _ = s.write_all(&vec![b'a'; n]).await;
            let _ = s.shutdown().await;
        }
        Reply::ResetAfter100 => {
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n")
                .await;
            let _ = s.write_all(&hundred).await;
            cue.notified().await;
            // Linger 0: closing sends a reset, not a FIN.
            let _ = s.set_zero_linger();
            drop(s);
        }
        Reply::Trickle => {
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n64\r\n")
                .await;
            let _ = s.write_all(&hundred).await;
            let _ = s.write_all(b"\r\n").await;
            while s.write_all(b"a\r\naaaaaaaaaa\r\n").await.is_ok() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Reply::ClosedChunkedAfter100 | Reply::StallChunkedAfter100 => {
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n64\r\n")
                .await;
            let _ = s.write_all(&hundred).await;
            let _ = s.write_all(b"\r\n").await;
            if let Reply::StallChunkedAfter100 = reply {
                // Never another byte; the connection stays open.
                std::future::pending::<()>().await;
            }
            cue.notified().await;
            let _ = s.shutdown().await;
        }
    }
}

const HOLD_RULES: &str = r#"rules:
  - name: change-things
    when: {method: POST, path: /v1/things/**}
    then: approve
    approval: {approvers: [group:sre], timeout: 1h}
"#;

/// A workspace with the upstream `api` at `/api` → `url` (idle_timeout 300ms), the
/// hold rule, `audit.level: all` into audit.jsonl, and JSON logs.
fn workspace(url: &str) -> Workspace {
    let ws = Workspace::new();
    ws.write("rules/r.yaml", HOLD_RULES);
    let cfg = ws.standard_config(
        url,
        "audit:\n  level: all\n  file: audit.jsonl\nlog:\n  format: json\n",
    );
    let text = std::fs::read_to_string(&cfg).unwrap().replacen(
        "    timeout: 5s\n",
        "    timeout: 5s\n    idle_timeout: 300ms\n",
        1,
    );
    ws.write("airlock.yaml", &text);
    ws
}

/// A misbehaving upstream answering as `reply`, and an in-process airlock before it.
async fn start(reply: Reply) -> (BadUpstream, Workspace, InProcess) {
    let up = BadUpstream::start(reply).await;
    let ws = workspace(&up.url());
    let a = InProcess::start(&ws.config()).await;
    (up, ws, a)
}

/// deploy-bot's request over a fresh HTTP/1.1 connection (hyper, so that an
/// incomplete body shows as an error, as any HTTP client reports it).
async fn agent(proxy: SocketAddr, method: &str, path: &str) -> hyper::Response<Incoming> {
    let body = if method == "POST" { "{}" } else { "" };
    let req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "x")
        .header("authorization", format!("Bearer {AGENT_KEY}"))
        .header("content-type", "application/json")
        .body(test_body(body))
        .unwrap();
    h1_send(proxy, req).await
}

/// Reads body frames until at least `n` bytes have come; returns how many did.
async fn read_at_least(body: &mut Incoming, n: usize) -> usize {
    let mut got = 0;
    while got < n {
        let frame = tokio::time::timeout(DEADLINE, body.frame())
            .await
            .expect("the first bytes of the body within the deadline")
            .expect("the body has its first bytes")
            .expect("the first bytes arrive intact");
        got += frame.data_ref().map_or(0, |d| d.len());
    }
    got
}

/// Reads the rest of the body: Err when it ends incomplete (as the agent sees it).
async fn rest_of(body: Incoming) -> Result<usize, String> {
    tokio::time::timeout(DEADLINE, body.collect())
        .await
        .expect("the body ends (complete or cut) within the deadline")
        .map(|c| c.to_bytes().len())
        .map_err(|e| e.to_string())
}

/// deploy-bot's `GET path` through `a` to `up`, which fails on its cue once the agent
/// has the first 100 bytes: what the rest of the body gave the agent.
async fn cut_after_100(a: &InProcess, up: &BadUpstream, path: &str) -> Result<usize, String> {
    let body = first_100(a, path).await;
    up.cue.notify_one();
    rest_of(body).await
}

/// deploy-bot's `GET path` through `a`: a 200 whose first 100 bytes have been read.
async fn first_100(a: &InProcess, path: &str) -> Incoming {
    let r = agent(a.proxy_addr(), "GET", path).await;
    assert_eq!(r.status(), 200);
    let mut body = r.into_body();
    assert_eq!(read_at_least(&mut body, 100).await, 100);
    body
}

/// Outcome events of requests (events that carry a status) in the audit file once the
/// event `want` is there, in log order.
async fn outcomes_once(ws: &Workspace, want: &str) -> Vec<Value> {
    let file = ws.path().join("audit.jsonl");
    wait_audit_event(&file, want, |e| e["event"] == want).await;
    read_events(&file)
        .into_iter()
        .filter(|e| !e["status"].is_null() && e["path"].as_str().is_some())
        .collect()
}

fn read_events(file: &Path) -> Vec<Value> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_mid_body_is_an_upstream_reset_with_the_bytes_delivered() {
    let (up, ws, a) = start(Reply::ResetAfter100).await;

    let rest = cut_after_100(&a, &up, "/api/v1/report").await;
    assert!(rest.is_err(), "the agent must see the body cut: {rest:?}");

    let evs = outcomes_once(&ws, "upstream_reset").await;
    assert_eq!(evs.len(), 1, "one outcome, no `passed`: {evs:#?}");
    let ev = &evs[0];
    assert_eq!(ev["event"], "upstream_reset");
    assert_eq!(ev["status"], 200);
    assert_eq!(ev["bytes"], 100);
    assert_eq!(ev["upstream"], "api");
    let reason = ev["reason"].as_str().unwrap_or("");
    assert!(reason.starts_with("reset"), "the cause is kept: {ev}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_body_closed_before_its_last_chunk_is_an_upstream_reset() {
    let (up, ws, a) = start(Reply::ClosedChunkedAfter100).await;

    let rest = cut_after_100(&a, &up, "/api/v1/stream").await;
    assert!(
        rest.is_err(),
        "a chunked body without its last chunk must not look complete: {rest:?}"
    );

    let evs = outcomes_once(&ws, "upstream_reset").await;
    assert_eq!(evs.len(), 1, "one outcome, no `passed`: {evs:#?}");
    assert_eq!(evs[0]["status"], 200);
    assert_eq!(evs[0]["bytes"], 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_body_is_cut_after_idle_timeout_and_is_an_upstream_timeout() {
    let (_up, ws, a) = start(Reply::StallChunkedAfter100).await;

    let body = first_100(&a, "/api/v1/slow").await;
    let stalled = Instant::now();
    let rest = rest_of(body).await;
    assert!(rest.is_err(), "the agent must see the body cut: {rest:?}");
    assert!(
        stalled.elapsed() >= Duration::from_millis(250),
        "cut after the idle timeout (300ms), not before: {:?}",
        stalled.elapsed()
    );

    let evs = outcomes_once(&ws, "upstream_timeout").await;
    assert_eq!(evs.len(), 1, "one outcome, no `passed`: {evs:#?}");
    let ev = &evs[0];
    assert_eq!(ev["status"], 200, "the upstream's status: {ev}");
    assert_eq!(ev["bytes"], 100);
    assert!(
        ev["reason"].as_str().unwrap_or("").contains("idle_timeout"),
        "{ev}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_hangs_up_mid_body_is_client_gone_with_the_bytes_sent() {
    let (_up, ws, a) = start(Reply::Trickle).await;
    let body = first_100(&a, "/api/v1/feed").await;
    // The agent hangs up (its connection closes with the body).
    drop(body);

    let evs = outcomes_once(&ws, "client_gone").await;
    assert_eq!(evs.len(), 1, "one outcome, no `passed`: {evs:#?}");
    assert_eq!(
        evs[0]["status"], 200,
        "the head reached the agent: {}",
        evs[0]
    );
    assert!(evs[0]["bytes"].as_u64() >= Some(100), "{}", evs[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approved_request_cut_mid_body_is_forwarded_then_upstream_reset() {
    let (up, ws, a) = start(Reply::ResetAfter100).await;

    let held = tokio::spawn(agent(a.proxy_addr(), "POST", "/api/v1/things/x"));
    let id = id_of(&wait_pending(&a, 1).await[0]);
    let (s, v) = vote(&a, BOB, &id, "approve", None).await;
    assert_eq!(s, 200, "{v}");
    let r = held.await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-airlock-approval-id"], id.as_str());
    let mut body = r.into_body();
    assert_eq!(read_at_least(&mut body, 100).await, 100);
    up.cue.notify_one();
    assert!(rest_of(body).await.is_err());

    let evs = outcomes_once(&ws, "upstream_reset").await;
    let names: Vec<&str> = evs.iter().filter_map(|e| e["event"].as_str()).collect();
    assert_eq!(names, ["forwarded", "upstream_reset"], "{evs:#?}");
    for ev in &evs {
        assert_eq!(ev["approval_id"], id.as_str(), "{ev}");
        assert_eq!(ev["status"], 200, "{ev}");
    }
    assert_eq!(evs[1]["bytes"], 100);
    assert!(evs[0]["seq"].as_u64() < evs[1]["seq"].as_u64());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_complete_response_is_one_passed_event_and_one_access_line_with_its_bytes() {
    let up = BadUpstream::start(Reply::Whole(1234)).await;
    let ws = workspace(&up.url());
    let a = Airlock::start(&ws.config());

    let r = agent(a.proxy_addr(), "GET", "/api/v1/whole").await;
    assert_eq!(r.status(), 200);
    assert_eq!(rest_of(r.into_body()).await, Ok(1234));

    let evs = outcomes_once(&ws, "passed").await;
    assert_eq!(evs.len(), 1, "{evs:#?}");
    assert_eq!(evs[0]["status"], 200);
    assert_eq!(evs[0]["bytes"], 1234);

    let line = eventually(DEADLINE.as_secs(), || {
        let stderr = a.stderr.clone();
        async move {
            let text = stderr.lock().unwrap().clone();
            text.lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .find(|l| l["target"] == "airlock::access")
        }
    })
    .await;
    let f = &line["fields"];
    assert_eq!(f["outcome"], "passed", "{line}");
    assert_eq!(f["status"], 200, "{line}");
    assert_eq!(f["bytes"], 1234, "{line}");
    assert!(f["latency_ms"].as_f64().is_some(), "{line}");
    let text = a.stderr.lock().unwrap().clone();
    let lines = text.matches("\"airlock::access\"").count();
    assert_eq!(lines, 1, "one access line per request:\n{text}");
}

#[test]
fn idle_timeout_must_be_a_positive_duration() {
    let ws = workspace("http://127.0.0.1:9");
    let cfg = airlock::config::Config::load(&ws.config())
        .unwrap_or_else(|d| panic!("idle_timeout: 300ms is refused:\n{d}"));
    assert_eq!(cfg.upstreams[0].idle_timeout, Duration::from_millis(300));

    for (bad, why) in [("0s", "longer than 0"), ("off", "invalid duration")] {
        let ws = workspace("http://127.0.0.1:9");
        let path = ws.config();
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace("idle_timeout: 300ms", &format!("idle_timeout: {bad}"));
        ws.write("airlock.yaml", &text);
        let line = text
            .lines()
            .position(|l| l.contains("idle_timeout:"))
            .unwrap()
            + 1;
        let err = match airlock::config::Config::load(&path) {
            Ok(_) => panic!("idle_timeout: {bad} was accepted"),
            Err(d) => d.to_string(),
        };
        let at = format!("airlock.yaml:{line}:");
        assert!(
            err.contains(&at) && err.contains("idle_timeout") && err.contains(why),
            "idle_timeout: {bad}: expected {at} in:\n{err}"
        );
    }
}
