//! Faults under the audit log, over the real binary: a stderr that cannot be written
//! (a closed pipe, a full disk), a full disk under the JSONL copy or under the SQLite
//! file, a SQLite file locked by another process, and an audit writer that died.
//!
//! What a user sees: requests keep their correct answers and every event lands while
//! only the logs are lost; `/readyz` turns 503 within about a second when the store
//! cannot be written (full disk, foreign lock) or the audit writer is gone, and 200 again
//! when the fault clears; holds are refused with JSON errors meanwhile; the JSONL copy
//! never holds a half line and catches up from the store, so it ends up equal to
//! `airlock audit export` and `airlock audit verify --file` passes on it. A JSONL copy
//! that is behind leaves airlock ready (the store is the system of record); `/readyz`
//! names it in `audit_file`.
//!
//! Each test mounts a tiny tmpfs of its own (the machine runs the tests as root) and
//! fills it with a filler file to make the disk full; [`Tmpfs`] unmounts it at the end,
//! also when the test fails.

mod common;
use common::*;
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ChildStderr, Command, Stdio};
use std::time::{Duration, Instant};

const RULES: &str = r#"rules:
  - name: thing-change
    when:
      upstream: api
      method: [POST, DELETE]
      path: /v1/things/**
    then: approve
    approval:
      approvers: [group:sre]
      timeout: 60s
"#;

/// A tmpfs of `size` mounted on a fresh directory for one test; unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .unwrap()
            .success();
        assert!(ok, "mount -t tmpfs on {} failed", dir.path().display());
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn filler(&self) -> PathBuf {
        self.path().join("filler")
    }

    /// Takes every free block: a filler file grows until the file system is full.
    fn fill(&self) {
        let mut f = std::fs::File::create(self.filler()).unwrap();
        let chunk = vec![0u8; 4096];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.flush();
    }

    /// Frees the disk again.
    fn free(&self) {
        std::fs::remove_file(self.filler()).unwrap();
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.path()).status();
    }
}

/// `airlock serve` with its stderr where the test says: a pipe the test can close, or
/// a file. Stops and is killed as [`Airlock`] is.
struct Serve {
    airlock: Airlock,
    stderr: Option<ChildStderr>,
}

impl Serve {
    fn start(config: &Path, stderr: Stdio) -> Serve {
        let mut child = Command::new(airlock_bin())
            .args(["serve", "-c"])
            .arg(config)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let (mut proxy, mut admin) = (None, None);
        while let Some(Ok(line)) = lines.next() {
            if let Some(a) = line.strip_prefix("airlock: proxy listening on http://") {
                proxy = a.parse().ok();
            }
            if let Some(a) = line.strip_prefix("airlock: admin listening on http://") {
                admin = a.parse().ok();
            }
            if proxy.is_some() && admin.is_some() {
                break;
            }
        }
        std::thread::spawn(move || for _ in lines {});
        let stderr = child.stderr.take();
        Serve {
            airlock: Airlock {
                proxy: proxy.expect("airlock did not start"),
                admin,
                child,
                stderr: Default::default(),
            },
            stderr,
        }
    }

    /// Closes the read end of airlock's stderr pipe: every later log write fails (EPIPE).
    fn close_stderr(&mut self) {
        self.stderr = None;
    }

    /// SIGTERM, then waits for the exit (the audit log is flushed).
    fn stop(self) -> std::process::ExitStatus {
        self.airlock.stop()
    }
}

impl Listeners for Serve {
    fn proxy_addr(&self) -> SocketAddr {
        self.airlock.proxy
    }
    fn admin_addr(&self) -> Option<SocketAddr> {
        self.airlock.admin
    }
}

/// `/readyz`: (status, body).
async fn readyz(a: &impl Listeners) -> (u16, Value) {
    let r = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
        .get(a.admin_url("/readyz"))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

/// Polls `/readyz` until it answers `want`; returns how long that took and the body.
async fn wait_ready_status(a: &impl Listeners, want: u16) -> (Duration, Value) {
    let started = Instant::now();
    loop {
        let (status, body) = readyz(a).await;
        if status == want {
            return (started.elapsed(), body);
        }
        assert!(
            started.elapsed() < DEADLINE,
            "/readyz never answered {want}; last {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A plain (not held) request through the proxy; must be forwarded.
async fn pass_through(a: &impl Listeners, n: usize) {
    let path = format!("/api/v1/ping/{n}");
    let r = agent_send_within(a, 30, "GET", &path, "", "pass").await;
    assert_eq!(r.status, 200, "{}", r.text);
}

/// One held request approved by bob and forwarded: returns the approval id.
async fn hold_and_approve(a: &impl Listeners, name: &str) -> String {
    let path = format!("/api/v1/things/{name}");
    let body = format!(r#"{{"name":"{name}"}}"#);
    let held = agent_spawn(a, "POST", &path, &body);
    let id = id_of(&wait_any_pending(a).await[0]);
    let (s, v) = vote(a, BOB, &id, "approve", None).await;
    assert_eq!(s, 200, "{v}");
    let reply = held.await.unwrap();
    reply.assert_forwarded_on(&id);
    id
}

/// A hold refused as the store cannot take it: `503`, JSON error `store_unavailable`.
#[track_caller]
fn assert_refused(r: &AgentReply) {
    assert_eq!(r.status, 503, "{}", r.text);
    assert_eq!(r.json()["error"], "store_unavailable", "{}", r.text);
}

/// `airlock audit export` (the store's events) as text.
async fn export(cfg: &Path) -> String {
    let (code, out, err) = run_cli_blocking(
        &[
            "audit",
            "export",
            "-c",
            cfg.to_str().unwrap(),
            "--format",
            "jsonl",
        ],
        &[],
    )
    .await;
    assert_eq!(code, 0, "export: {err}");
    out
}

/// `airlock audit verify -c cfg [--file file]`: (exit code, stdout + stderr).
async fn verify(cfg: &Path, file: Option<&Path>) -> (i32, String) {
    let mut args = vec![
        "audit".to_string(),
        "verify".into(),
        "-c".into(),
        cfg.display().to_string(),
    ];
    if let Some(f) = file {
        args.push("--file".into());
        args.push(f.display().to_string());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, out, err) = run_cli_blocking(&args, &[]).await;
    (code, format!("{out}{err}"))
}

/// Waits until the JSONL copy equals the store's export, byte for byte.
async fn wait_copy_equals_store(cfg: &Path, file: &Path) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let store = export(cfg).await;
        let copy = std::fs::read_to_string(file).unwrap_or_default();
        if copy == store {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the JSONL copy never caught up with the store:\n--- copy\n{copy}\n--- store\n{store}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every line of the copy is a whole event, and the file ends with a newline.
fn assert_whole_lines(file: &Path) -> usize {
    let text = std::fs::read(file).unwrap();
    assert!(
        text.is_empty() || text.ends_with(b"\n"),
        "the JSONL copy ends in a half line:\n{}",
        String::from_utf8_lossy(&text)
    );
    let text = String::from_utf8(text).expect("the JSONL copy is UTF-8");
    for line in text.lines() {
        serde_json::from_str::<Value>(line)
            .unwrap_or_else(|e| panic!("not a whole event ({e}): {line:?}"));
    }
    text.lines().count()
}

fn event_names(jsonl: &str) -> Vec<String> {
    jsonl
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .map(|e| e["event"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// A workspace with the hold rule and `extra` config (the store line replaced when
/// `store` is given).
async fn workspace(extra: &str, store: Option<&Path>) -> (Upstream, Workspace, PathBuf) {
    let up = Upstream::start().await;
    let ws = Workspace::new();
    ws.write("rules/r.yaml", RULES);
    let cfg = ws.standard_config(&up.url(), extra);
    if let Some(db) = store {
        let text = std::fs::read_to_string(&cfg).unwrap();
        let text = text.replace(
            "store: sqlite://airlock.db",
            &format!("store: sqlite://{}", db.display()),
        );
        std::fs::write(&cfg, text).unwrap();
    }
    (up, ws, cfg)
}

/// A workspace auditing every request, its JSONL copy on a tmpfs of 64 KiB: (the
/// tmpfs, the copy, the upstream, the workspace, the config).
async fn copy_on_a_tmpfs() -> (Tmpfs, PathBuf, Upstream, Workspace, PathBuf) {
    let disk = Tmpfs::mount("64k");
    let file = disk.path().join("audit.jsonl");
    let (up, ws, cfg) = workspace(
        &format!("audit: {{level: all, file: {}}}\n", file.display()),
        None,
    )
    .await;
    (disk, file, up, ws, cfg)
}

/// Logging that cannot be written changes nothing a user sees: plain and held requests
/// get their answers, every event is stored and copied, airlock stays ready, and it
/// stops cleanly.
async fn serve_with_dead_stderr(stderr: Stdio, close_pipe: bool, disk: Option<&Tmpfs>) {
    let (up, ws, cfg) = workspace("audit: {level: all, file: audit.jsonl}\n", None).await;
    if let Some(disk) = disk {
        disk.fill();
    }
    let mut a = Serve::start(&cfg, stderr);
    if close_pipe {
        a.close_stderr();
    }
    for n in 0..3 {
        pass_through(&a, n).await;
    }
    // An unknown agent key: logged as a warning, audited, answered 401.
    let r = agent_request(&a, "no-such-key", "GET", "/api/v1/ping/x")
        .send()
        .await
        .expect("an answer, not a closed connection");
    assert_eq!(r.status(), 401);
    hold_and_approve(&a, "vm-1").await;
    let (status, body) = readyz(&a).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(up.count(), 4);

    assert!(a.stop().success());
    let file = ws.path().join("audit.jsonl");
    let store = export(&cfg).await;
    assert_eq!(std::fs::read_to_string(&file).unwrap(), store);
    let names = event_names(&store);
    for want in [
        "passed",
        "unauthenticated",
        "held",
        "vote",
        "approved",
        "forwarded",
    ] {
        assert!(names.iter().any(|n| n == want), "no {want} in {names:?}");
    }
    let (code, out) = verify(&cfg, None).await;
    assert_eq!(code, 0, "{out}");
}

#[tokio::test]
async fn a_closed_stderr_pipe_changes_nothing() {
    serve_with_dead_stderr(Stdio::piped(), true, None).await;
}

#[tokio::test]
async fn a_stderr_on_a_full_disk_changes_nothing() {
    let disk = Tmpfs::mount("256k");
    let log = std::fs::File::create(disk.path().join("airlock.log")).unwrap();
    serve_with_dead_stderr(Stdio::from(log), false, Some(&disk)).await;
}

/// A full disk under the JSONL copy: the copy never holds a half line, airlock stays
/// ready (the store is written) and says the copy is behind; once the disk has room
/// again the copy catches up from the store and equals it.
#[tokio::test]
async fn the_jsonl_copy_on_a_full_disk_keeps_whole_lines_and_catches_up() {
    let (disk, file, up, _ws, cfg) = copy_on_a_tmpfs().await;
    let a = Serve::start(&cfg, Stdio::null());
    for n in 0..3 {
        pass_through(&a, n).await;
    }
    wait_copy_equals_store(&cfg, &file).await;

    disk.fill();
    for n in 3..40 {
        pass_through(&a, n).await;
    }
    hold_and_approve(&a, "vm-full").await;
    assert_eq!(up.count(), 41);
    let store = export(&cfg).await;
    assert!(event_names(&store).len() >= 41, "{store}");
    let lines = assert_whole_lines(&file);
    assert!(lines < event_names(&store).len(), "the disk was never full");
    let (status, body) = readyz(&a).await;
    assert_eq!(status, 200, "the store is written: ready; {body}");
    assert!(
        body["audit_file"].as_str().is_some_and(|s| s != "ok"),
        "/readyz says the copy is behind: {body}"
    );

    disk.free();
    wait_copy_equals_store(&cfg, &file).await;
    let (_, body) = readyz(&a).await;
    assert_eq!(body["audit_file"], "ok", "{body}");
    let (code, out) = verify(&cfg, Some(&file)).await;
    assert_eq!(code, 0, "{out}");
    drop(a);
}

/// A copy left with a half-written last line and missing events (a crash, a full disk
/// before the fix): `audit verify --file` names the seq of the half line; the next
/// start repairs the copy and catches it up from the store.
#[tokio::test]
async fn a_half_written_copy_is_named_by_verify_and_repaired_at_start() {
    let (_up, ws, cfg) = workspace("audit: {level: all, file: audit.jsonl}\n", None).await;
    let file = ws.path().join("audit.jsonl");
    let a = Serve::start(&cfg, Stdio::null());
    for n in 0..6 {
        pass_through(&a, n).await;
    }
    assert!(a.stop().success());
    let full = std::fs::read_to_string(&file).unwrap();
    let lines: Vec<&str> = full.lines().collect();
    assert_eq!(lines.len(), 6, "{full}");
    // Seqs 1..=3 whole, seq 4 half written, 5 and 6 missing.
    let mut broken: String = lines[..3].iter().map(|l| format!("{l}\n")).collect();
    broken.push_str(&lines[3][..lines[3].len() / 2]);
    std::fs::write(&file, &broken).unwrap();

    let (code, out) = verify(&cfg, Some(&file)).await;
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("seq 4"),
        "verify names the half line's seq: {out}"
    );

    // A corrupt whole line in the middle is named too.
    let corrupt = full.replacen(lines[1], "{\"seq\":2,\"event\":", 1);
    let bad = ws.path().join("corrupt.jsonl");
    std::fs::write(&bad, corrupt).unwrap();
    let (code, out) = verify(&cfg, Some(&bad)).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("seq 2"), "{out}");

    let a = Serve::start(&cfg, Stdio::null());
    wait_copy_equals_store(&cfg, &file).await;
    pass_through(&a, 7).await;
    wait_copy_equals_store(&cfg, &file).await;
    assert!(a.stop().success());
    let (code, out) = verify(&cfg, Some(&file)).await;
    assert_eq!(code, 0, "{out}");
}

/// The SQLite file on a full disk: `/readyz` says 503 within about a second, holds are
/// refused with JSON errors, and when the disk has room again airlock is ready and
/// holds work, the log intact.
#[tokio::test]
async fn sqlite_on_a_full_disk_is_not_ready_and_refuses_holds() {
    let disk = Tmpfs::mount("4m");
    let db = disk.path().join("airlock.db");
    let (up, _ws, cfg) = workspace("audit: {level: held}\n", Some(&db)).await;
    let a = Serve::start(&cfg, Stdio::null());
    hold_and_approve(&a, "vm-before").await;
    let (status, body) = readyz(&a).await;
    assert_eq!(status, 200, "{body}");

    disk.fill();
    let (took, body) = wait_ready_status(&a, 503).await;
    assert!(
        took < Duration::from_millis(1500),
        "503 after {took:?}: {body}"
    );
    let path = "/api/v1/things/vm-full";
    assert_refused(&agent_send_within(&a, 30, "POST", path, "{}", "hold").await);
    assert_eq!(up.count(), 1, "nothing held was forwarded");

    disk.free();
    wait_ready_status(&a, 200).await;
    hold_and_approve(&a, "vm-after").await;
    assert_eq!(up.count(), 2);
    assert!(a.stop().success());
    let (code, out) = verify(&cfg, None).await;
    assert_eq!(code, 0, "{out}");
}

/// Another process holds the SQLite write lock: `/readyz` says 503 within about a
/// second even while held requests wait for the lock, holds are refused with JSON
/// errors, and airlock is ready again once the lock is released.
#[tokio::test]
async fn a_sqlite_lock_held_by_another_process_is_noticed_within_a_second() {
    let (up, ws, cfg) = workspace("audit: {level: held}\n", None).await;
    let a = Serve::start(&cfg, Stdio::null());
    let (status, body) = readyz(&a).await;
    assert_eq!(status, 200, "{body}");

    let locker = rusqlite::Connection::open(ws.path().join("airlock.db")).unwrap();
    locker.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let locked = Instant::now();
    // Held requests queue behind the lock.
    let waiting: Vec<_> = (0..4)
        .map(|n| agent_spawn(&a, "POST", &format!("/api/v1/things/locked-{n}"), "{}"))
        .collect();
    let (_, body) = wait_ready_status(&a, 503).await;
    let took = locked.elapsed();
    assert!(
        took < Duration::from_millis(1500),
        "503 after {took:?}: {body}"
    );
    for w in waiting {
        assert_refused(&w.await.unwrap());
    }

    locker.execute_batch("ROLLBACK").unwrap();
    let (took, body) = wait_ready_status(&a, 200).await;
    assert!(took < Duration::from_secs(5), "200 after {took:?}: {body}");
    hold_and_approve(&a, "vm-after").await;
    assert_eq!(up.count(), 1);
    drop(locker);
    assert!(a.stop().success());
    let (code, out) = verify(&cfg, None).await;
    assert_eq!(code, 0, "{out}");
}

/// A layer that panics on the first event the audit module logs: a logger that fails
/// inside the audit writer, as a broken stderr did.
struct PanicOnFirstAuditLog(std::sync::atomic::AtomicBool);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for PanicOnFirstAuditLog {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        if event.metadata().target().starts_with("airlock::audit")
            && !self.0.swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            panic!("the logger failed inside the audit writer");
        }
    }
}

/// Whatever kills the audit writer (here a logger that panics inside it) makes airlock
/// unready, naming the writer, and holds are refused with a JSON error, never a closed
/// connection. In process: the panicking logger is this thread's, which runs airlock.
#[tokio::test]
async fn a_dead_audit_writer_makes_airlock_unready_and_refuses_holds() {
    use tracing_subscriber::layer::SubscriberExt;
    let (disk, _file, up, _ws, cfg) = copy_on_a_tmpfs().await;
    let _logger = tracing::subscriber::set_default(
        tracing_subscriber::registry().with(PanicOnFirstAuditLog(Default::default())),
    );
    let a = InProcess::start(&cfg).await;
    pass_through(&a, 0).await;
    let (status, body) = readyz(&a).await;
    assert_eq!(status, 200, "{body}");

    // The copy's next failed write is logged, and the logger kills the writer.
    disk.fill();
    let mut n = 1;
    let body = loop {
        pass_through(&a, n).await;
        let (status, body) = readyz(&a).await;
        if status == 503 {
            break body;
        }
        n += 1;
        assert!(n < 200, "never unready: {body}");
    };
    assert!(
        body["audit"]
            .as_str()
            .is_some_and(|s| s.contains("audit writer")),
        "{body}"
    );
    let path = "/api/v1/things/vm-1";
    assert_refused(&agent_send_within(&a, 30, "POST", path, "{}", "hold").await);
    assert_eq!(up.count(), n + 1);
    a.stop().await;
}

/// Two replicas on one PostgreSQL, each with its own JSONL copy: each copy ends up
/// holding every event of the one chain, the other replica's included.
#[tokio::test]
async fn each_replica_copy_holds_the_whole_chain() {
    let Some(pg) = postgres_or_skip("audit_faults replicas").await else {
        return;
    };
    let schema = format!("airlock_faults_{}", std::process::id());
    let (c, conn) = tokio_postgres::connect(&pg, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    c.batch_execute(&format!(
        "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}"
    ))
    .await
    .unwrap();
    let url = format!("{pg}?options=-csearch_path%3D{schema}");
    let up = Upstream::start().await;
    let ws = Workspace::new();
    ws.write("rules/r.yaml", RULES);
    let mut replicas = Vec::new();
    for name in ["a", "b"] {
        let cfg = ws.standard_config(
            &up.url(),
            &format!("audit: {{level: all, file: {name}.jsonl}}\n"),
        );
        let text = std::fs::read_to_string(&cfg)
            .unwrap()
            .replace("store: sqlite://airlock.db", &format!("store: \"{url}\""));
        let cfg = ws.write(&format!("{name}.yaml"), &text);
        replicas.push((
            Serve::start(&cfg, Stdio::null()),
            cfg,
            ws.path().join(format!("{name}.jsonl")),
        ));
    }
    for n in 0..20 {
        pass_through(&replicas[n % 2].0, n).await;
    }
    // Each copy catches up with what the other replica sealed while it runs.
    let deadline = Instant::now() + DEADLINE;
    while event_names(&export(&replicas[0].1).await).len() < 20 {
        assert!(Instant::now() < deadline, "the store never held 20 events");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for (_, cfg, file) in &replicas {
        wait_copy_equals_store(cfg, file).await;
    }
    let store = export(&replicas[0].1).await;
    for (a, cfg, file) in replicas {
        assert!(a.stop().success());
        assert_eq!(
            std::fs::read_to_string(&file).unwrap(),
            store,
            "{}",
            file.display()
        );
        let (code, out) = verify(&cfg, Some(&file)).await;
        assert_eq!(code, 0, "{out}");
    }
    c.batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .await
        .unwrap();
}
