//! Stale pooled connections (issue 7, item 1): an upstream that closes an idle
//! keep-alive connection just as airlock reuses it must not cost a request, nor an
//! approval; and a request that may have reached the upstream is never sent twice.
//!
//! The upstream here is a raw TCP server that counts every request it executes by its
//! `x-test-id`. Armed, it closes (sends FIN on) every idle connection of its own — one
//! with no byte of a next request received — the moment airlock takes a connection from
//! its pool: hyper-util's `reuse idle connection` event, seen through a subscriber on
//! this thread. Everything (airlock, upstream, agents) runs on the test's
//! current-thread runtime, so no request byte can be in flight when the upstream
//! closes: each request airlock sends afterwards on such a connection provably never
//! reached the upstream, and airlock has not yet noticed the close (tokio learns of it
//! only at its next poll of the I/O driver). That is the race of the issue, every time.

mod common;
use common::*;
use futures_util::future::join_all;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Concurrent requests per burst: as many pooled connections.
const N: usize = 40;

/// One connection as the upstream's closer sees it.
struct Conn {
    /// A duplicate of the server's socket, to send FIN from outside its task.
    socket: std::net::TcpStream,
    /// Waiting for a request, with no byte of it read.
    idle: AtomicBool,
    /// Has answered a request: a keep-alive connection (a new one is never closed).
    served: AtomicBool,
    /// Closed by the upstream: whatever arrives later is never executed.
    closed: AtomicBool,
}

/// An HTTP/1.1 keep-alive upstream that executes each request (counts its
/// `x-test-id`) and answers `200 {"id": ...}`; with `x-test-drop: once` it reads the
/// first request carrying that id and closes the connection without an answer.
#[derive(Clone)]
struct IdleClosing {
    addr: std::net::SocketAddr,
    executed: Arc<Mutex<HashMap<String, usize>>>,
    conns: Arc<Mutex<Vec<Arc<Conn>>>>,
    armed: Arc<AtomicBool>,
    /// Idle connections closed while armed.
    closed: Arc<AtomicUsize>,
}

impl IdleClosing {
    async fn start() -> IdleClosing {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let up = IdleClosing {
            addr: listener.local_addr().unwrap(),
            executed: Arc::default(),
            conns: Arc::default(),
            armed: Arc::default(),
            closed: Arc::default(),
        };
        let server = up.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let std = stream.into_std().unwrap();
                let conn = Arc::new(Conn {
                    socket: std.try_clone().unwrap(),
                    idle: AtomicBool::new(true),
                    served: AtomicBool::new(false),
                    closed: AtomicBool::new(false),
                });
                server.conns.lock().unwrap().push(conn.clone());
                let stream = TcpStream::from_std(std).unwrap();
                let server = server.clone();
                tokio::spawn(async move {
                    server.serve(stream, &conn).await;
                    // Closed for good: the duplicate must not keep the socket open.
                    conn.closed.store(true, Ordering::SeqCst);
                    server
                        .conns
                        .lock()
                        .unwrap()
                        .retain(|c| !Arc::ptr_eq(c, &conn));
                });
            }
        });
        up
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    async fn serve(&self, mut stream: TcpStream, conn: &Conn) {
        let mut buf = Vec::new();
        loop {
            conn.idle.store(buf.is_empty(), Ordering::SeqCst);
            let mut chunk = [0u8; 8192];
            let n = stream.read(&mut chunk).await.unwrap_or(0);
            conn.idle.store(false, Ordering::SeqCst);
            if n == 0 || conn.closed.load(Ordering::SeqCst) {
                return;
            }
            buf.extend_from_slice(&chunk[..n]);
            while let Some((head, len)) = parse_request(&buf) {
                buf.drain(..len);
                let id = header(&head, "x-test-id").unwrap_or_default();
                let drop_it = header(&head, "x-test-drop").as_deref() == Some("once");
                let times = {
                    let mut executed = self.executed.lock().unwrap();
                    let times = executed.entry(id.clone()).or_default();
                    *times += 1;
                    *times
                };
                if drop_it && times == 1 {
                    return; // read, executed, never answered: the connection closes
                }
                let body = format!(r#"{{"id":"{id}"}}"#);
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                if stream.write_all(resp.as_bytes()).await.is_err() {
                    return;
                }
                conn.served.store(true, Ordering::SeqCst);
            }
        }
    }

    /// From now on, close every idle connection whenever airlock reuses one.
    fn arm(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }

    /// Sends FIN on every connection that is idle with nothing received: no request
    /// can be lost in the kernel's buffers by this close.
    fn close_idle(&self) {
        if !self.armed.load(Ordering::SeqCst) {
            return;
        }
        for conn in self.conns.lock().unwrap().iter() {
            let mut one = [0u8; 1];
            let nothing_pending = matches!(conn.socket.peek(&mut one), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
            if conn.idle.load(Ordering::SeqCst)
                && conn.served.load(Ordering::SeqCst)
                && !conn.closed.load(Ordering::SeqCst)
                && nothing_pending
            {
                conn.closed.store(true, Ordering::SeqCst);
                let _ = conn.socket.shutdown(std::net::Shutdown::Write);
                self.closed.fetch_add(1, Ordering::SeqCst);
            }
        }
    }

    /// How many times the upstream executed the request `id`.
    fn executed(&self, id: &str) -> usize {
        self.executed.lock().unwrap().get(id).copied().unwrap_or(0)
    }

    /// Closes idle connections whenever airlock takes one from its pool (while armed),
    /// for as long as the guard lives on this thread.
    fn close_idle_on_reuse(&self) -> tracing::subscriber::DefaultGuard {
        use tracing_subscriber::layer::SubscriberExt;
        use tracing_subscriber::Layer;
        let up = self.clone();
        let hook = OnReuse(Box::new(move || up.close_idle()));
        let log = std::env::var_os("RUST_LOG").map(|_| {
            tracing_subscriber::fmt::layer()
                .with_test_writer()
                .with_filter(tracing_subscriber::EnvFilter::from_default_env())
        });
        tracing::subscriber::set_default(tracing_subscriber::registry().with(hook).with(log))
    }
}

/// A complete request at the start of `buf`: (its head, its length with the body).
fn parse_request(buf: &[u8]) -> Option<(String, usize)> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    assert!(
        header(&head, "transfer-encoding").is_none(),
        "this upstream reads only content-length bodies: {head}"
    );
    let len: usize = header(&head, "content-length").map_or(0, |v| v.parse().unwrap());
    (buf.len() >= end + len).then_some((head, end + len))
}

fn header(head: &str, name: &str) -> Option<String> {
    head.lines().skip(1).find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

/// Calls its hook on hyper-util's "reuse idle connection" debug event.
struct OnReuse(Box<dyn Fn() + Send + Sync>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for OnReuse {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        struct Message(String);
        impl tracing::field::Visit for Message {
            fn record_debug(&mut self, f: &tracing::field::Field, v: &dyn std::fmt::Debug) {
                if f.name() == "message" {
                    self.0 = format!("{v:?}");
                }
            }
        }
        if !event
            .metadata()
            .target()
            .starts_with("hyper_util::client::legacy::pool")
        {
            return;
        }
        let mut m = Message(String::new());
        event.record(&mut m);
        if m.0.starts_with("reuse idle connection") {
            (self.0)();
        }
    }
}

const HOLD_POST_X: &str = r#"rules:
  - name: x-change
    when:
      upstream: api
      method: POST
      path: /x
    then: approve
    approval:
      approvers: [group:sre]
      timeout: 60s
"#;

async fn airlock_for(up: &IdleClosing, rules: &str) -> (Workspace, InProcess) {
    let ws = Workspace::new();
    ws.write("rules/r.yaml", rules);
    let cfg = ws.standard_config(&up.url(), "");
    let a = InProcess::start(&cfg).await;
    (ws, a)
}

/// One agent client for the whole file (building one per request loads the system's
/// roots each time: seconds per burst).
fn agents() -> &'static reqwest::Client {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    CLIENT.get_or_init(client)
}

/// deploy-bot's request `method path`, on the shared client.
fn agent_req(a: &InProcess, method: &str, path: &str) -> reqwest::RequestBuilder {
    let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    agents().request(m, a.url(path)).bearer_auth(AGENT_KEY)
}

/// deploy-bot's request `id`: a POST with a small JSON body or a GET.
async fn agent(a: &InProcess, method: &str, path: &str, id: &str) -> (u16, String) {
    let mut req = agent_req(a, method, path).header("x-test-id", id);
    if method == "POST" {
        req = req
            .header("content-type", "application/json")
            .body(format!(r#"{{"id":"{id}"}}"#));
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.text().await.unwrap_or_default())
}

/// `N` concurrent requests, POST and GET in turn, ids `prefix-0..N`.
async fn burst(a: &InProcess, prefix: &str) -> Vec<(String, u16, String)> {
    join_all((0..N).map(|i| async move {
        let id = format!("{prefix}-{i}");
        let (method, path) = if i % 2 == 0 {
            ("POST", "/api/items".to_string())
        } else {
            ("GET", format!("/api/items?id={id}"))
        };
        let (status, body) = agent(a, method, &path, &id).await;
        (id, status, body)
    }))
    .await
}

fn assert_each_answered_and_executed_once(up: &IdleClosing, results: &[(String, u16, String)]) {
    let failed: Vec<_> = results.iter().filter(|(_, s, _)| *s != 200).collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed, e.g. {:?}",
        failed.len(),
        results.len(),
        failed.first()
    );
    for (id, _, body) in results {
        assert_eq!(
            body,
            &format!(r#"{{"id":"{id}"}}"#),
            "the agent gets its own answer"
        );
        assert_eq!(up.executed(id), 1, "request {id} executed once upstream");
    }
}

#[tokio::test]
async fn requests_on_connections_the_upstream_just_closed_are_sent_again_once() {
    let up = IdleClosing::start().await;
    let _hook = up.close_idle_on_reuse();
    let (_ws, a) = airlock_for(&up, "rules: []\n").await;

    // A burst fills airlock's pool; the next one reuses those connections, each closed
    // by the upstream just as airlock takes it.
    let warm = burst(&a, "warm").await;
    assert_each_answered_and_executed_once(&up, &warm);
    up.arm();
    for round in 0..3 {
        let results = burst(&a, &format!("round{round}")).await;
        assert_each_answered_and_executed_once(&up, &results);
    }
    assert!(
        up.closed.load(Ordering::SeqCst) >= N,
        "the upstream closed pooled connections under airlock ({} closed)",
        up.closed.load(Ordering::SeqCst)
    );
    a.stop().await;
}

#[tokio::test]
async fn approvals_forwarded_on_closed_connections_are_not_lost() {
    let up = IdleClosing::start().await;
    let _hook = up.close_idle_on_reuse();
    let (_ws, a) = airlock_for(&up, HOLD_POST_X).await;

    // Fill the pool, then hold N distinct POSTs (GETs pass).
    let warm = burst(&a, "warm").await;
    assert!(warm.iter().all(|(_, s, _)| *s == 200), "{warm:?}");
    let held: Vec<_> = (0..N)
        .map(|i| {
            let id = format!("held-{i}");
            let a_url = a.url("/api/x");
            tokio::spawn(async move {
                let r = agents()
                    .post(a_url)
                    .bearer_auth(AGENT_KEY)
                    .header("x-test-id", &id)
                    .header("content-type", "application/json")
                    .body(format!(r#"{{"id":"{id}"}}"#))
                    .send()
                    .await
                    .unwrap();
                let status = r.status().as_u16();
                (id, status, r.text().await.unwrap_or_default())
            })
        })
        .collect();
    let ids: Vec<String> = wait_pending(&a, N).await.iter().map(id_of).collect();
    assert_eq!(ids.len(), N);
    up.arm();

    // Approve them all at once; each forward reuses a connection the upstream closes.
    let votes = join_all(
        ids.iter()
            .map(|id| vote_with(agents(), &a, BOB, id, "approve", None)),
    )
    .await;
    assert!(votes.iter().all(|(s, _)| *s == 200), "{votes:?}");
    let mut results = Vec::new();
    for h in held {
        results.push(tokio::time::timeout(DEADLINE, h).await.unwrap().unwrap());
    }
    assert_each_answered_and_executed_once(&up, &results);
    assert!(
        up.closed.load(Ordering::SeqCst) > 0,
        "the upstream closed pooled connections"
    );
    a.stop().await;
}

#[tokio::test]
async fn a_request_the_upstream_read_before_closing_is_retried_only_if_idempotent() {
    let up = IdleClosing::start().await;
    let (_ws, a) = airlock_for(&up, "rules: []\n").await;
    let on_reused = |method: &'static str, id: &'static str, key: Option<&'static str>| {
        let a = &a;
        async move {
            // One request leaves a connection in the pool; the next reuses it, and the
            // upstream reads it, executes it and closes without an answer.
            assert_eq!(
                agent(a, "GET", "/api/warm", &format!("warm-{id}")).await.0,
                200
            );
            let mut req = agent_req(a, method, "/api/items")
                .header("x-test-id", id)
                .header("x-test-drop", "once");
            if let Some(key) = key {
                req = req.header("idempotency-key", key);
            }
            if method == "POST" {
                req = req
                    .header("content-type", "application/json")
                    .body(r#"{"a":1}"#);
            }
            req.send().await.unwrap().status().as_u16()
        }
    };

    // A POST may have been executed: never sent twice; the agent learns it failed.
    assert_eq!(on_reused("POST", "post-1", None).await, 502);
    assert_eq!(up.executed("post-1"), 1, "the POST is not sent again");
    // Idempotent ones are sent again on a fresh connection, as Go's client does.
    assert_eq!(on_reused("GET", "get-1", None).await, 200);
    assert_eq!(up.executed("get-1"), 2, "the GET was retried once");
    assert_eq!(on_reused("POST", "keyed-1", Some("k-1")).await, 200);
    assert_eq!(
        up.executed("keyed-1"),
        2,
        "a POST with an Idempotency-Key was retried"
    );
    a.stop().await;
}
