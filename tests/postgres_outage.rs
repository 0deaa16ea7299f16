//! A PostgreSQL of the test's own (initdb in a temporary directory, started and
//! stopped with pg_ctl) goes away under airlock and comes back: while it is down holds
//! are refused with JSON errors and never forwarded, `/readyz` says 503, plain traffic
//! still flows and its events wait in the writer; once it is back everything recovers
//! without a restart, every event is stored and the chain verifies.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

const RULES: &str = r#"rules:
  - name: thing-change
    when:
      upstream: api
      method: POST
      path: /v1/things/**
    then: approve
    approval:
      approvers: [group:sre]
      timeout: 60s
"#;

/// A private PostgreSQL cluster, run as the `postgres` user; stopped on drop.
struct PrivatePostgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
}

impl PrivatePostgres {
    /// `None` (skipped, or failed in CI) when the machine has no PostgreSQL binaries.
    fn create() -> Option<PrivatePostgres> {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .ok()
            .and_then(|mut d| d.next())
            .and_then(Result::ok)
            .map(|e| e.path().join("bin"))
            .filter(|b| b.join("initdb").exists());
        let Some(bin) = bin else {
            assert!(
                !in_ci(),
                "CI must run this test: no /usr/lib/postgresql/*/bin/initdb"
            );
            eprintln!("SKIPPED postgres_outage: no PostgreSQL binaries (initdb, pg_ctl)");
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        let uid = id("-u");
        let gid = id("-g");
        std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let pg = PrivatePostgres { dir, bin, port };
        pg.run(
            "initdb",
            &["-A", "trust", "-U", "postgres", "-D", &pg.data()],
        );
        Some(pg)
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Runs a PostgreSQL program as the `postgres` user; panics with its output on failure.
    fn run(&self, program: &str, args: &[&str]) {
        let out = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join(program))
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{program} {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn start(&self) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("log").display().to_string();
        self.run(
            "pg_ctl",
            &["-D", &self.data(), "-o", &opts, "-l", &log, "-w", "start"],
        );
    }

    fn stop(&self) {
        self.run("pg_ctl", &["-D", &self.data(), "-m", "fast", "-w", "stop"]);
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .args(["-D", &self.data(), "-m", "immediate", "-w", "stop"])
            .output();
    }
}

/// The `postgres` user's uid or gid (`id -u` / `id -g`).
fn id(flag: &str) -> u32 {
    let out = Command::new("id")
        .args([flag, "postgres"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

async fn readyz_status(a: &impl Listeners) -> u16 {
    match client().get(a.admin_url("/readyz")).send().await {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    }
}

async fn wait_ready(a: &impl Listeners, want: u16) {
    eventually(DEADLINE.as_secs(), || async move {
        (readyz_status(a).await == want).then_some(())
    })
    .await
}

/// The events `airlock audit export` prints for `cfg`.
async fn exported(cfg: &Path) -> Vec<serde_json::Value> {
    let (code, out, err) =
        run_cli_blocking(&["audit", "export", "-c", cfg.to_str().unwrap()], &[]).await;
    assert_eq!(code, 0, "{err}");
    out.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_outage_fails_closed_and_recovers_without_a_restart() {
    let Some(pg) = tokio::task::spawn_blocking(PrivatePostgres::create)
        .await
        .unwrap()
    else {
        return;
    };
    let pg = std::sync::Arc::new(pg);
    let p = pg.clone();
    tokio::task::spawn_blocking(move || p.start())
        .await
        .unwrap();

    let up = Upstream::start().await;
    let ws = Workspace::new();
    ws.write("rules/r.yaml", RULES);
    let cfg = ws.standard_config(&up.url(), "audit: {level: all, file: audit.jsonl}\n");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("sqlite://airlock.db", &pg.url());
    std::fs::write(&cfg, text).unwrap();
    let a = InProcess::start(&cfg).await;

    let ok = agent_send_within(&a, 30, "GET", "/api/v1/things", "", "pass").await;
    assert_eq!(ok.status, 200, "{}", ok.text);
    let (held, id) = agent_hold(&a, "POST", "/api/v1/things/before", "{}").await;
    assert_eq!(vote(&a, BOB, &id, "approve", None).await.0, 200);
    held.await.unwrap().assert_forwarded_on(&id);

    // PostgreSQL goes away.
    let p = pg.clone();
    tokio::task::spawn_blocking(move || p.stop()).await.unwrap();
    wait_ready(&a, 503).await;
    let refused = agent_send_within(&a, 30, "POST", "/api/v1/things/during", "{}", "hold").await;
    assert_eq!(refused.status, 503, "{}", refused.text);
    assert_eq!(
        refused.json()["error"],
        "store_unavailable",
        "{}",
        refused.text
    );
    let during = agent_send_within(&a, 30, "GET", "/api/v1/things?during=1", "", "pass").await;
    assert_eq!(
        during.status, 200,
        "plain traffic still flows: {}",
        during.text
    );
    let forwarded = up.count();

    // It comes back: no restart needed.
    let p = pg.clone();
    tokio::task::spawn_blocking(move || p.start())
        .await
        .unwrap();
    wait_ready(&a, 200).await;
    let (held, id2) = agent_hold(&a, "POST", "/api/v1/things/after", "{}").await;
    assert_eq!(vote(&a, BOB, &id2, "approve", None).await.0, 200);
    held.await.unwrap().assert_forwarded_on(&id2);
    assert_eq!(up.count(), forwarded + 1, "the refused hold never went out");
    assert!(
        !up.requests()
            .iter()
            .any(|s| s.uri.contains("during") && s.method == "POST"),
        "nothing held during the outage was forwarded"
    );
    a.stop().await;

    // Every event is stored, the outage's included, and the chain verifies.
    let events = exported(&cfg).await;
    let has = |event: &str, path: &str| {
        events
            .iter()
            .any(|e| e["event"] == event && e["path"].as_str().is_some_and(|p| p.contains(path)))
    };
    assert!(
        has("passed", "during=1"),
        "the outage's pass-through is recorded"
    );
    assert!(
        has("store_unavailable", "/v1/things/during"),
        "the refused hold is recorded"
    );
    assert!(has("forwarded", "/v1/things/after"));
    assert_audit_intact(&cfg, "after the outage").await;
}
