//! When the store cannot be written, held requests are refused, never forwarded (fail
//! closed); plain pass-through traffic is not affected; once the store is writable
//! again holds work normally. The outage is a real one: the test takes SQLite's write
//! lock on the workspace database with `BEGIN EXCLUSIVE` and keeps it.
//!
//! A request counts as held once its `held` audit event is durable: until then airlock
//! may still refuse it (fail closed) if the store fails. So the test waits for that event
//! in the live audit file before it takes the lock, not merely for the approval to be
//! listed (which happens a moment earlier).

mod common;
use common::*;
use rusqlite::Connection;
use std::time::Duration;

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

/// Takes the database's write lock and keeps it until the connection is dropped. (On
/// a blocking thread: it may wait for airlock's own write to finish, and airlock runs on
/// this test's runtime.)
async fn lock_store(ws: &Workspace) -> Connection {
    let db = ws.path().join("airlock.db");
    tokio::task::spawn_blocking(move || {
        let c = Connection::open(db).unwrap();
        c.busy_timeout(Duration::from_secs(10)).unwrap();
        c.execute_batch("BEGIN EXCLUSIVE").unwrap();
        c
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_fail_closed_while_the_store_is_locked() {
    let (up, ws, a) = setup_with_rules(RULES, "audit:\n  level: held\n  file: audit.jsonl\n").await;
    let cfg = ws.config();

    // Held before the outage: listed, and its `held` event is in the audit log.
    let (early, early_id) =
        agent_hold(&a, "POST", "/api/v1/things/early", r#"{"n":"early"}"#).await;
    wait_audit_event(&ws.path().join("audit.jsonl"), "held event", |e| {
        e["event"] == "held" && e["approval_id"] == early_id.as_str()
    })
    .await;

    let lock = lock_store(&ws).await;

    // A request that needs approval cannot be held: 503, nothing forwarded.
    let r = agent_send_within(
        &a,
        DEADLINE.as_secs(),
        "POST",
        "/api/v1/things/during",
        r#"{"n":"during"}"#,
        "refused, not held forever",
    )
    .await;
    assert_eq!(r.status, 503, "{}", r.text);
    assert_eq!(r.json()["error"], "store_unavailable");
    assert_eq!(up.count(), 0);

    // A vote cannot be recorded either, so the early request stays held.
    let (s, v) = vote(&a, BOB, &early_id, "approve", None).await;
    assert_eq!(s, 503, "{v}");
    assert_eq!(v["error"], "store_unavailable");
    assert!(!early.is_finished());
    assert_eq!(up.count(), 0);

    // Readiness says so: the store is not writable.
    let r = client().get(a.admin_url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["status"], "not_ready");

    // Pass-through traffic with `audit.level: held` needs no store write.
    let r = agent_send(&client(), &a.url("/api/v1/status"), "GET", AGENT_KEY, "").await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(up.count(), 1);
    assert_eq!(up.requests()[0].uri, "/v1/status");

    // The lock goes away: everything works again.
    lock.execute_batch("ROLLBACK").unwrap();
    drop(lock);

    let r = client().get(a.admin_url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 200);

    let list = pending(&a, BOB).await;
    assert_eq!(
        list.len(),
        1,
        "the refused request left no approval: {list:?}"
    );
    assert_eq!(id_of(&list[0]), early_id);

    let (s, v) = vote(&a, BOB, &early_id, "approve", None).await;
    assert_eq!(s, 200, "{v}");
    let r = early.await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text);

    let (after, id) = agent_hold(&a, "POST", "/api/v1/things/after", r#"{"n":"after"}"#).await;
    assert_ne!(id, early_id);
    assert!(!after.is_finished());
    assert_eq!(vote(&a, CAROL, &id, "approve", None).await.0, 200);
    assert_eq!(after.await.unwrap().status, 200);

    let seen = up.requests();
    assert_eq!(seen.len(), 3);
    assert!(
        !seen.iter().any(|s| &s.body[..] == br#"{"n":"during"}"#),
        "the request refused during the outage never reached the upstream"
    );

    // The audit chain is intact after the outage.
    let (code, out, err) =
        run_cli_blocking(&["audit", "verify", "-c", cfg.to_str().unwrap()], &[]).await;
    assert_eq!(code, 0, "{out}{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_reflects_store_reachability() {
    let (_up, _ws, a) = setup_with_rules(RULES, "").await;
    let r = client().get(a.admin_url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["status"], "ready");
    assert_eq!(v["rules"], 1);
    assert_eq!(v["store"], "ok");
    let r = client().get(a.admin_url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
}
