//! Shared test harness: a real upstream (a small hyper server), airlock, and a
//! temporary directory with a config, all on 127.0.0.1 ephemeral ports.
//!
//! airlock runs one of two ways, behind one trait ([`Listeners`]) that every helper
//! takes:
//! - [`InProcess`] (the default, what [`setup_with_rules`] starts): the library's
//!   `airlock::start` on the test's own runtime, as mini-redis tests its server;
//! - [`Airlock`]: the real `airlock serve` binary, for what needs the process: restarts
//!   and crashes, signals, per-process environment variables, the process's resources.
//!
//! Waiting: tests wait on signals a user could observe (the admin API, the
//! `airlock_held` gauge, the audit file, the upstream's recorded requests), each with the
//! generous [`DEADLINE`]; never on a sleep.
//!
//! PostgreSQL: [`postgres_or_skip`] finds the server or skips (fails in CI).
#![allow(dead_code)]

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;

pub mod pki;

pub const AGENT_KEY: &str = "test-agent-key-deploy-bot";
pub const OTHER_AGENT_KEY: &str = "test-agent-key-etl";
pub const BOB: &str = "test-token-bob";
pub const CAROL: &str = "test-token-carol";
pub const ALICE: &str = "test-token-alice";
pub const DAVE: &str = "test-token-dave";

pub fn digest(s: &str) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(s.as_bytes())))
}

/// What the test upstream saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

/// A boxed handler for custom upstream behaviour.
pub type Handler = Arc<dyn Fn(Seen) -> Response<Full<Bytes>> + Send + Sync>;

/// A real HTTP upstream that records every request and echoes it back as JSON.
pub struct Upstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

impl Upstream {
    /// Starts an echo upstream.
    pub async fn start() -> Upstream {
        Upstream::with_handler(Arc::new(|s: Seen| {
            let v = serde_json::json!({
                "method": s.method,
                "uri": s.uri,
                "body": String::from_utf8_lossy(&s.body),
            });
            Response::new(Full::new(Bytes::from(v.to_string())))
        }))
        .await
    }

    /// Starts an upstream answering with `handler`.
    pub async fn with_handler(handler: Handler) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen2 = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let seen = seen2.clone();
                let handler = handler.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let seen = seen.clone();
                        let handler = handler.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|c| c.to_bytes())
                                .unwrap_or_default();
                            let s = Seen {
                                method: parts.method.to_string(),
                                uri: parts.uri.to_string(),
                                headers: parts.headers,
                                body,
                            };
                            seen.lock().unwrap().push(s.clone());
                            Ok::<_, std::convert::Infallible>(handler(s))
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Upstream { addr, seen }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

/// A temporary directory holding `airlock.yaml`, `rules/` and the store.
pub struct Workspace {
    pub dir: tempfile::TempDir,
}

impl Workspace {
    pub fn new() -> Workspace {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("rules")).unwrap();
        Workspace { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&p, text).unwrap();
        p
    }

    pub fn config(&self) -> PathBuf {
        self.dir.path().join("airlock.yaml")
    }

    /// A standard config: upstream `api` at `/api` → `upstream_url`, agents
    /// deploy-bot (owner alice) and etl-agent, reviewers bob/carol (sre), alice (sre,
    /// owner of deploy-bot), dave (no groups). `extra` is appended verbatim.
    pub fn standard_config(&self, upstream_url: &str, extra: &str) -> PathBuf {
        let text = format!(
            r#"listen: 127.0.0.1:0
admin:
  listen: 127.0.0.1:0
store: sqlite://airlock.db
rules: rules/
upstreams:
  - name: api
    prefix: /api
    url: {upstream_url}
    timeout: 5s
{identities}{extra}
"#,
            identities = identities_yaml(),
        );
        self.write("airlock.yaml", &text)
    }
}

/// The `airlock` binary built for this test run.
pub fn airlock_bin() -> &'static str {
    env!("CARGO_BIN_EXE_airlock")
}

/// Runs `airlock ARGS` to completion: (exit code, stdout, stderr).
pub fn run_cli(args: &[&str], envs: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(airlock_bin());
    cmd.args(args);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// How long a test waits for something that must happen (a hold to show up, a held
/// client to be answered, a process to exit). Generous on purpose: a loaded 2-core CI
/// machine can be slow, and a deadline on a positive condition costs nothing when the
/// condition is met early.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// The listeners of a running airlock, however it runs (in this process or as the real
/// binary): all the helpers below need.
pub trait Listeners {
    /// Where agents connect.
    fn proxy_addr(&self) -> SocketAddr;
    /// The admin listener, when the config has one.
    fn admin_addr(&self) -> Option<SocketAddr>;

    /// `http://PROXY{path}`.
    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.proxy_addr(), path)
    }

    /// `http://ADMIN{path}`; panics when the config has no admin listener.
    fn admin_url(&self, path: &str) -> String {
        let admin = self
            .admin_addr()
            .expect("this airlock has no admin listener (admin: in the config)");
        format!("http://{admin}{path}")
    }
}

/// Installs a tracing subscriber writing to the test's output, once per test binary,
/// when `RUST_LOG` is set (e.g. `RUST_LOG=airlock=debug cargo test --test proxy`).
/// Without it an in-process airlock logs nothing.
fn init_test_tracing() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

/// An airlock running inside the test process, as `airlock serve` would run it:
/// `airlock::config::Config::load` then `airlock::start`, both listeners on the ports the
/// config names (`127.0.0.1:0` in the workspaces here). The default for suites: it
/// starts in milliseconds, needs no stdout parsing, and runs on the test's runtime.
///
/// Not for tests that need the process itself: a restart or a crash (SIGTERM, SIGKILL),
/// SIGHUP, environment variables for `${VAR}` in the config (the environment is
/// process-global, so an in-process test must never set it), or the process's own
/// resources. Those use [`Airlock`], the real binary.
pub struct InProcess {
    /// Where agents connect.
    pub proxy: SocketAddr,
    /// The admin listener, when the config has one.
    pub admin: Option<SocketAddr>,
    running: Option<airlock::Running>,
}

impl InProcess {
    /// Loads `config` and starts airlock on the current runtime; panics with the
    /// configuration's diagnostics or the start error.
    pub async fn start(config: &Path) -> InProcess {
        init_test_tracing();
        let cfg = airlock::config::Config::load(config)
            .unwrap_or_else(|d| panic!("invalid configuration {}:\n{d}", config.display()));
        let running = airlock::start(cfg)
            .await
            .unwrap_or_else(|e| panic!("airlock did not start: {e}"));
        InProcess {
            proxy: running.proxy_addr,
            admin: running.admin_addr,
            running: Some(running),
        }
    }

    /// Stops as SIGTERM would: stops accepting, answers held requests `503`, lets
    /// in-flight forwards finish and flushes the audit log; returns when all of that is
    /// done (so the store and the audit file can be read right after).
    pub async fn stop(mut self) {
        if let Some(running) = self.running.take() {
            tokio::time::timeout(DEADLINE, running.stop())
                .await
                .expect("the in-process airlock did not stop within the deadline");
        }
    }
}

impl Listeners for InProcess {
    fn proxy_addr(&self) -> SocketAddr {
        self.proxy
    }
    fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin
    }
}

impl Drop for InProcess {
    /// Dropped without [`InProcess::stop`] (a test that ends or panics): shut down in
    /// the background; the test runtime's end aborts whatever is left.
    fn drop(&mut self) {
        if let (Some(running), Ok(rt)) =
            (self.running.take(), tokio::runtime::Handle::try_current())
        {
            rt.spawn(running.stop());
        }
    }
}

/// A running `airlock serve` process: the real binary, for tests where the process
/// matters (see [`InProcess`] for which).
pub struct Airlock {
    pub child: Child,
    pub proxy: SocketAddr,
    pub admin: Option<SocketAddr>,
    /// Everything the process wrote to stderr so far (its log).
    pub stderr: Arc<Mutex<String>>,
}

impl Airlock {
    /// Starts `airlock serve -c config` and waits for its "listening" lines.
    pub fn start(config: &Path) -> Airlock {
        Airlock::start_with_env(config, &[])
    }

    /// Like [`Airlock::start`], with environment variables for the process only.
    pub fn start_with_env(config: &Path, envs: &[(&str, &str)]) -> Airlock {
        let mut cmd = Command::new(airlock_bin());
        cmd.args(["serve", "-c"])
            .arg(config)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let err_buf = Arc::new(Mutex::new(String::new()));
        let eb = err_buf.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut b = eb.lock().unwrap();
                b.push_str(&line);
                b.push('\n');
            }
        });
        let mut lines = BufReader::new(stdout).lines();
        let mut proxy = None;
        let mut admin = None;
        let has_admin = std::fs::read_to_string(config).unwrap().contains("admin:");
        while let Some(Ok(line)) = lines.next() {
            if let Some(a) = line.strip_prefix("airlock: proxy listening on http://") {
                proxy = Some(a.parse().unwrap());
            }
            if let Some(a) = line.strip_prefix("airlock: admin listening on http://") {
                admin = Some(a.parse().unwrap());
            }
            if proxy.is_some() && (admin.is_some() || !has_admin) {
                break;
            }
        }
        std::thread::spawn(move || for _ in lines {});
        let Some(proxy) = proxy else {
            let _ = child.wait();
            panic!("airlock did not start:\n{}", err_buf.lock().unwrap());
        };
        Airlock {
            child,
            proxy,
            admin,
            stderr: err_buf,
        }
    }

    /// Sends SIGTERM and waits (at most [`DEADLINE`]) for the process to exit. Blocks:
    /// call it from `spawn_blocking` when held clients must keep being polled.
    pub fn stop(mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = std::time::Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if std::time::Instant::now() > deadline {
                panic!(
                    "airlock did not exit within {DEADLINE:?} of SIGTERM:\n{}",
                    self.stderr.lock().unwrap()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the process at once (a crash).
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Listeners for Airlock {
    fn proxy_addr(&self) -> SocketAddr {
        self.proxy
    }
    fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin
    }
}

impl Drop for Airlock {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A reqwest client for agents (with the agent key) and reviewers.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
}

/// Waits until `f` returns Some, polling the admin API (an external observer has no
/// other signal); panics after `secs`.
pub async fn eventually<T, F, Fut>(secs: u64, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("condition not met within {secs}s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Pending approvals as the admin API lists them.
pub async fn pending(a: &impl Listeners, token: &str) -> Vec<serde_json::Value> {
    let v: serde_json::Value = client()
        .get(a.admin_url("/api/v1/approvals?status=pending"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["approvals"].as_array().cloned().unwrap_or_default()
}

/// Casts a vote: (status, body).
pub async fn vote(
    a: &impl Listeners,
    token: &str,
    id: &str,
    decision: &str,
    reason: Option<&str>,
) -> (u16, serde_json::Value) {
    vote_with(&client(), a, token, id, decision, reason).await
}

// ---------------------------------------------------------------------------------
// Helpers for the proxy / rule-engine tests (streaming bodies, raw upstreams,
// hand-written configs). Appended; nothing above depends on them.
// ---------------------------------------------------------------------------------

/// The error type of [`TestBody`].
pub type TestBodyError = Box<dyn std::error::Error + Send + Sync>;
/// A boxed body for hand-built requests and responses (streaming or complete).
pub type TestBody = http_body_util::combinators::BoxBody<Bytes, TestBodyError>;

/// A complete [`TestBody`].
pub fn test_body(b: impl Into<Bytes>) -> TestBody {
    Full::new(b.into()).map_err(|e| match e {}).boxed()
}

/// A streaming [`TestBody`] fed chunk by chunk through the returned sender; the body
/// ends when the sender is dropped. It has no length, so HTTP/1.1 sends it chunked.
pub fn channel_body() -> (tokio::sync::mpsc::Sender<Bytes>, TestBody) {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, TestBodyError>(hyper::body::Frame::data(b)), rx))
    });
    (tx, http_body_util::StreamBody::new(stream).boxed())
}

/// Starts an upstream whose handler gets the raw hyper request (its body unread), for
/// streaming responses, early signals and upgrades. Connections are served with
/// upgrades enabled. Returns the bound address.
pub async fn raw_upstream<F, Fut>(handler: F) -> SocketAddr
where
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<TestBody>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let handler = Arc::new(handler);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let handler = handler.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let fut = handler(req);
                    async move { Ok::<_, std::convert::Infallible>(fut.await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

/// Sends one request over a fresh HTTP/1.1 connection with hyper (no URL rewriting,
/// streaming bodies allowed). `req`'s URI is the origin-form target.
pub async fn h1_send(addr: SocketAddr, req: Request<TestBody>) -> Response<Incoming> {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender.send_request(req).await.unwrap()
}

/// Sends one request over a fresh HTTP/2 prior-knowledge (h2c) connection.
pub async fn h2c_send(addr: SocketAddr, req: Request<TestBody>) -> Response<Incoming> {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender.send_request(req).await.unwrap()
}

/// The `agents:` and `reviewers:` blocks of [`Workspace::standard_config`], for tests
/// that write the rest of the config themselves.
pub fn identities_yaml() -> String {
    format!(
        r#"agents:
  - id: deploy-bot
    key: {agent}
    owner: alice@example.com
  - id: etl-agent
    key: {other}
reviewers:
  - id: bob@example.com
    groups: [sre]
    token: {bob}
  - id: carol@example.com
    groups: [sre]
    token: {carol}
  - id: alice@example.com
    groups: [sre]
    token: {alice}
  - id: dave@example.com
    token: {dave}
"#,
        agent = digest(AGENT_KEY),
        other = digest(OTHER_AGENT_KEY),
        bob = digest(BOB),
        carol = digest(CAROL),
        alice = digest(ALICE),
        dave = digest(DAVE),
    )
}

/// Sends raw bytes as one HTTP/1.1 request (the test writes `Connection: close`) and
/// returns (status, head, body). Nothing is normalized on the way: the request target
/// reaches airlock byte for byte.
pub async fn raw_http(addr: SocketAddr, request: &[u8]) -> (u16, String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, s.read_to_end(&mut buf))
        .await
        .expect("raw_http: no complete answer within the deadline");
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_string(), body.to_string())
}

// ---- Helpers for the hold / approval / audit tests (approvals.rs, restart.rs,
// ---- audit_verify.rs, store_outage.rs). Appended; nothing above is changed.

/// What an agent got back from airlock.
#[derive(Debug, Clone)]
pub struct AgentReply {
    pub status: u16,
    /// The `X-Airlock-Approval-Id` response header, if any.
    pub approval_header: Option<String>,
    pub text: String,
}

impl AgentReply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.text).unwrap_or(serde_json::Value::Null)
    }

    /// Checks that the request was forwarded (200) on the approval `id`.
    #[track_caller]
    pub fn assert_forwarded_on(&self, id: &str) {
        assert_eq!(self.status, 200, "{}", self.text);
        assert_eq!(self.approval_header.as_deref(), Some(id));
    }
}

/// Sends one agent request (bearer `key`, JSON `body`) and reads the whole answer.
pub async fn agent_send(
    c: &reqwest::Client,
    url: &str,
    method: &str,
    key: &str,
    body: &str,
) -> AgentReply {
    let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let r = c
        .request(m, url)
        .bearer_auth(key)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap_or_else(|e| panic!("agent request {method} {url} failed: {e}"));
    let status = r.status().as_u16();
    let approval_header = r
        .headers()
        .get("x-airlock-approval-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let text = r.text().await.unwrap_or_default();
    AgentReply {
        status,
        approval_header,
        text,
    }
}

/// Starts deploy-bot's request `method path` with `body` in the background (it may be held).
pub fn agent_spawn(
    a: &impl Listeners,
    method: &str,
    path: &str,
    body: &str,
) -> tokio::task::JoinHandle<AgentReply> {
    let url = a.url(path);
    let (method, body) = (method.to_string(), body.to_string());
    tokio::spawn(async move { agent_send(&client(), &url, &method, AGENT_KEY, &body).await })
}

/// The `airlock_held` gauge (requests parked right now) from the admin `/metrics`.
pub async fn held_gauge(a: &impl Listeners) -> Option<i64> {
    let text = client()
        .get(a.admin_url("/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("airlock_held "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as i64)
}

/// Waits until the `airlock_held` gauge reads `n`: the signal that a held request took
/// its slot, or that a decided one gave it back.
pub async fn wait_held_gauge(a: &impl Listeners, n: i64) {
    eventually(DEADLINE.as_secs(), || async move {
        (held_gauge(a).await == Some(n)).then_some(())
    })
    .await
}

/// Waits until exactly `n` approvals are pending and returns them.
pub async fn wait_pending(a: &impl Listeners, n: usize) -> Vec<serde_json::Value> {
    wait_pending_within(a, n, DEADLINE.as_secs()).await
}

/// Casts a vote with a given client: (status, body).
pub async fn vote_with(
    c: &reqwest::Client,
    a: &impl Listeners,
    token: &str,
    id: &str,
    decision: &str,
    reason: Option<&str>,
) -> (u16, serde_json::Value) {
    let r = c
        .post(a.admin_url(&format!("/api/v1/approvals/{id}/votes")))
        .bearer_auth(token)
        .json(&serde_json::json!({"decision": decision, "reason": reason}))
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(serde_json::Value::Null))
}

/// `GET /api/v1/approvals/{id}` as `token`: (status, body).
pub async fn approval_get(a: &impl Listeners, token: &str, id: &str) -> (u16, serde_json::Value) {
    let r = client()
        .get(a.admin_url(&format!("/api/v1/approvals/{id}")))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(serde_json::Value::Null))
}

/// Hex SHA-256 of `s` (no prefix), as approvals show `body_sha256`.
pub fn sha256_hex(s: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(s.as_bytes()))
}

// ---- Helpers shared by the hold tests (setup, agent requests, waiting for holds,
// ---- voting). Appended; nothing above is changed.

/// Starts an echo upstream and an in-process airlock on a fresh workspace: `rules` in
/// `rules/r.yaml`, the config [`Workspace::standard_config`] with `extra` appended.
pub async fn setup_with_rules(rules: &str, extra: &str) -> (Upstream, Workspace, InProcess) {
    let (up, ws, cfg) = workspace_with_rules(rules, extra).await;
    let a = InProcess::start(&cfg).await;
    (up, ws, a)
}

/// Like [`setup_with_rules`], with the real `airlock serve` binary.
pub async fn setup_process_with_rules(rules: &str, extra: &str) -> (Upstream, Workspace, Airlock) {
    let (up, ws, cfg) = workspace_with_rules(rules, extra).await;
    let a = Airlock::start(&cfg);
    (up, ws, a)
}

/// An echo upstream and a workspace with `rules` and the standard config: (upstream,
/// workspace, config path).
async fn workspace_with_rules(rules: &str, extra: &str) -> (Upstream, Workspace, PathBuf) {
    let up = Upstream::start().await;
    let ws = Workspace::new();
    ws.write("rules/r.yaml", rules);
    let cfg = ws.standard_config(&up.url(), extra);
    (up, ws, cfg)
}

/// The `id` of a listed approval.
pub fn id_of(v: &serde_json::Value) -> String {
    v["id"].as_str().expect("approval id").to_string()
}

/// A request from agent `key` to airlock's proxy, `method path` with the bearer key set
/// and nothing else: add headers or a body, then send it.
pub fn agent_request(
    a: &impl Listeners,
    key: &str,
    method: &str,
    path: &str,
) -> reqwest::RequestBuilder {
    let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    client().request(m, a.url(path)).bearer_auth(key)
}

/// Sends `req` in the background (it may be held) and returns the raw response.
pub fn spawn_request(req: reqwest::RequestBuilder) -> tokio::task::JoinHandle<reqwest::Response> {
    tokio::spawn(async move { req.send().await.unwrap() })
}

/// Starts deploy-bot's request `method path` with `body` in the background and waits
/// until it is the one pending approval: (the agent's task, the approval id).
pub async fn agent_hold(
    a: &impl Listeners,
    method: &str,
    path: &str,
    body: &str,
) -> (tokio::task::JoinHandle<AgentReply>, String) {
    let held = agent_spawn(a, method, path, body);
    let id = id_of(&wait_pending(a, 1).await[0]);
    (held, id)
}

/// Sends deploy-bot's request `method path` with `body` and waits at most `secs` for
/// the answer; panics with `what` when there is none by then.
pub async fn agent_send_within(
    a: &impl Listeners,
    secs: u64,
    method: &str,
    path: &str,
    body: &str,
    what: &str,
) -> AgentReply {
    tokio::time::timeout(
        Duration::from_secs(secs),
        agent_send(&client(), &a.url(path), method, AGENT_KEY, body),
    )
    .await
    .expect(what)
}

/// Waits (at most `secs`) until exactly `n` approvals are pending and returns them.
pub async fn wait_pending_within(
    a: &impl Listeners,
    n: usize,
    secs: u64,
) -> Vec<serde_json::Value> {
    eventually(secs, || async move {
        let p = pending(a, BOB).await;
        (p.len() == n).then_some(p)
    })
    .await
}

/// Waits until at least one approval is pending and returns the list.
pub async fn wait_any_pending(a: &impl Listeners) -> Vec<serde_json::Value> {
    eventually(DEADLINE.as_secs(), || async {
        let l = pending(a, BOB).await;
        (!l.is_empty()).then_some(l)
    })
    .await
}

/// Bob casts `decision` on the listed approval `ap`; the vote must be accepted (200).
pub async fn bob_decides(a: &impl Listeners, ap: &serde_json::Value, decision: &str) {
    assert_eq!(
        vote(a, BOB, ap["id"].as_str().unwrap(), decision, None)
            .await
            .0,
        200
    );
}

/// Bob denies every approval in `list`; each vote must be accepted.
pub async fn deny_each(a: &impl Listeners, list: &[serde_json::Value]) {
    for ap in list {
        bob_decides(a, ap, "deny").await;
    }
}

/// `GET path` on the admin listener (no token) as JSON.
pub async fn admin_json(a: &impl Listeners, path: &str) -> serde_json::Value {
    client()
        .get(a.admin_url(path))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// The admin `/metrics` text.
pub async fn metrics_text(a: &impl Listeners) -> String {
    client()
        .get(a.admin_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Runs `airlock ARGS` with `envs` on a blocking thread, so that the runtime keeps
/// polling held clients meanwhile: (exit code, stdout, stderr).
pub async fn run_cli_blocking(
    args: &[&str],
    envs: &'static [(&'static str, &'static str)],
) -> (i32, String, String) {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_cli(&args, envs)
    })
    .await
    .unwrap()
}

/// Waits until the audit file (`audit.file` in the config, the live JSONL copy) has an
/// event matching `want`, and returns it. The copy is written after the batch is durable
/// in the store, so this is the signal that an event (a `held`, a `vote`) is recorded.
pub async fn wait_audit_event<F>(file: &Path, what: &str, want: F) -> serde_json::Value
where
    F: Fn(&serde_json::Value) -> bool,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let text = tokio::fs::read_to_string(file).await.unwrap_or_default();
        let found = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|e| want(e));
        if let Some(e) = found {
            return e;
        }
        if tokio::time::Instant::now() > deadline {
            panic!(
                "no {what} in {} within {DEADLINE:?}:\n{text}",
                file.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Where the PostgreSQL tests find their server: `AIRLOCK_TEST_PG_URL`, else the
/// machine's `postgres://postgres@127.0.0.1:5432/test` (trust auth).
pub fn postgres_url() -> String {
    std::env::var("AIRLOCK_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// Whether this run is CI: `CI` set to anything but empty, `0` or `false`.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
}

/// The PostgreSQL URL for `test`, once a server answers there. When none does, a run
/// outside CI skips the test: this says so on stderr (past the test harness's output
/// capture, so it shows in a plain `cargo test`) and returns `None`; in CI (see
/// [`in_ci`]) the test fails instead, since CI must never skip silently.
pub async fn postgres_or_skip(test: &str) -> Option<String> {
    let url = postgres_url();
    let why = match tokio::time::timeout(
        Duration::from_secs(10),
        tokio_postgres::connect(&url, tokio_postgres::NoTls),
    )
    .await
    {
        Ok(Ok(_)) => return Some(url),
        Ok(Err(e)) => {
            let mut why = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                why.push_str(&format!(": {s}"));
                source = s.source();
            }
            why
        }
        Err(_) => "no answer within 10s".to_string(),
    };
    let shown = without_credentials(&url);
    if in_ci() {
        panic!(
            "{test}: PostgreSQL is not reachable at {shown} ({why}), and CI is set: CI must \
             run the PostgreSQL tests. Start the server (.ci/run does) or point \
             AIRLOCK_TEST_PG_URL at one."
        );
    }
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {test}: no PostgreSQL at {shown} ({why}). Start one (127.0.0.1:5432, \
         database test) or set AIRLOCK_TEST_PG_URL to run it; with CI set this fails."
    );
    None
}

/// `url` without a `user:password@` part, for messages.
fn without_credentials(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}{}", &url[..scheme + 3], &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

/// A PostgreSQL URL whose `search_path` is a fresh schema of its own
/// (`<prefix>_<pid>`, dropped and created again); `None` when the test is skipped for
/// want of a server (see [`postgres_or_skip`]).
pub async fn postgres_schema(prefix: &str, test: &str) -> Option<String> {
    let schema = format!("{prefix}_{}", std::process::id());
    let pg = postgres_or_skip(test).await?;
    let (admin, conn) = tokio_postgres::connect(&pg, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL answered a moment ago: {e}"));
    tokio::spawn(conn);
    admin
        .batch_execute(&format!(
            "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}"
        ))
        .await
        .unwrap();
    Some(format!("{pg}?options=-csearch_path%3D{schema}"))
}

/// `airlock audit verify -c cfg` must exit 0; `what` says when, for the failure message.
pub async fn assert_audit_intact(cfg: &Path, what: &str) {
    let (code, out, err) =
        run_cli_blocking(&["audit", "verify", "-c", cfg.to_str().unwrap()], &[]).await;
    assert_eq!(code, 0, "audit chain intact {what}: {out}{err}");
}
