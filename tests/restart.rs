//! Holds, votes and decisions survive a restart: they live in the store, not in the
//! process. SIGTERM answers held clients 503; a new process on the same workspace
//! (same SQLite file) still knows every approval. These drive the real binary: the
//! process is what is stopped, killed and started again.

mod common;
use common::*;
use serde_json::json;

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
  - name: critical-change
    when:
      upstream: api
      method: POST
      path: /v1/critical/**
    then: approve
    approval:
      approvers: [group:sre]
      quorum: 2
      timeout: 60s
"#;

/// SIGTERM without blocking the runtime (the held client must keep being polled).
async fn stop(a: Airlock) -> std::process::ExitStatus {
    tokio::task::spawn_blocking(move || a.stop()).await.unwrap()
}

/// A clean SIGTERM exit, then an intact audit chain.
async fn stop_and_verify_audit(a: Airlock, cfg: &std::path::Path) {
    assert!(stop(a).await.success());
    verify_audit(cfg).await;
}

async fn verify_audit(cfg: &std::path::Path) {
    assert_audit_intact(cfg, "across restarts").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_approval_survives_sigterm_and_is_forwarded_on_retry() {
    let (up, ws, a) = setup_process_with_rules(RULES, "").await;
    let cfg = ws.config();
    let path = "/api/v1/things/vm-9";
    let body = r#"{"op":"resize"}"#;

    let (held, id) = agent_hold(&a, "POST", path, body).await;

    let status = stop(a).await;
    assert!(
        status.success(),
        "airlock exits cleanly on SIGTERM: {status:?}"
    );
    let r = tokio::time::timeout(DEADLINE, held)
        .await
        .expect("the held client is answered on shutdown")
        .unwrap();
    assert_eq!(r.status, 503, "{}", r.text);
    let v = r.json();
    assert_eq!(v["error"], "shutting_down");
    assert_eq!(v["approval_id"], id.as_str());
    assert_eq!(r.approval_header.as_deref(), Some(id.as_str()));
    assert_eq!(up.count(), 0);

    // A new process on the same store.
    let a = Airlock::start(&cfg);
    let list = pending(&a, BOB).await;
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(id_of(&list[0]), id);
    assert_eq!(list[0]["status"], "pending");
    assert_eq!(list[0]["url"], "/v1/things/vm-9");

    let (s, v) = vote(&a, BOB, &id, "approve", None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["status"], "approved");
    assert_eq!(up.count(), 0);

    // The agent retries the identical request: forwarded once on the approval.
    let retry = agent_send_within(
        &a,
        DEADLINE.as_secs(),
        "POST",
        path,
        body,
        "the retry is not held again",
    )
    .await;
    retry.assert_forwarded_on(&id);
    assert_eq!(up.count(), 1);
    assert_eq!(&up.requests()[0].body[..], body.as_bytes());
    assert_eq!(approval_get(&a, BOB, &id).await.1["status"], "consumed");

    // And only once: a further identical request needs a new approval.
    let (again, next) = agent_hold(&a, "POST", path, body).await;
    assert_ne!(next, id);
    assert_eq!(vote(&a, BOB, &next, "deny", None).await.0, 200);
    assert_eq!(again.await.unwrap().status, 403);
    assert_eq!(up.count(), 1);

    stop_and_verify_audit(a, &cfg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn votes_survive_restart_and_complete_the_quorum() {
    let (up, ws, a) = setup_process_with_rules(RULES, "").await;
    let cfg = ws.config();
    let path = "/api/v1/critical/db";
    let body = r#"{"sql":"drop table t"}"#;

    let (held, id) = agent_hold(&a, "POST", path, body).await;
    let (s, v) = vote(&a, BOB, &id, "approve", Some("first")).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["status"], "pending");

    assert!(stop(a).await.success());
    let r = held.await.unwrap();
    assert_eq!(r.status, 503, "{}", r.text);
    assert_eq!(r.json()["error"], "shutting_down");

    let a = Airlock::start(&cfg);
    let list = pending(&a, BOB).await;
    assert_eq!(list.len(), 1);
    assert_eq!(id_of(&list[0]), id);
    assert_eq!(
        list[0]["votes"].as_array().unwrap().len(),
        1,
        "bob's vote survived: {}",
        list[0]
    );
    assert_eq!(list[0]["votes"][0]["reviewer"], "bob@example.com");
    assert_eq!(list[0]["votes"][0]["decision"], "approve");
    assert_eq!(list[0]["votes"][0]["reason"], "first");

    // The surviving vote still counts as bob's.
    let (s, v) = vote(&a, BOB, &id, "approve", None).await;
    assert_eq!(s, 409, "{v}");
    assert_eq!(v["error"], "already_voted");

    let (s, v) = vote(&a, CAROL, &id, "approve", None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v["status"], "approved",
        "two distinct approvers across the restart"
    );
    let voters: Vec<_> = v["votes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["reviewer"].clone())
        .collect();
    assert_eq!(voters.len(), 2);
    assert!(
        voters.contains(&json!("bob@example.com")) && voters.contains(&json!("carol@example.com"))
    );
    assert_eq!(up.count(), 0);

    let retry = agent_send_within(
        &a,
        DEADLINE.as_secs(),
        "POST",
        path,
        body,
        "the retry is not held again",
    )
    .await;
    retry.assert_forwarded_on(&id);
    assert_eq!(up.count(), 1);

    stop_and_verify_audit(a, &cfg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approval_survives_a_crash() {
    let (up, ws, a) = setup_process_with_rules(RULES, "").await;
    let cfg = ws.config();
    let path = "/api/v1/things/crash";
    let body = r#"{"op":"delete"}"#;

    let (held, id) = agent_hold(&a, "POST", path, body).await;
    // SIGKILL: no graceful anything. The client sees its connection drop.
    tokio::task::spawn_blocking(move || a.kill()).await.unwrap();
    let _ = held.await; // the request future panics on the reset connection: fine

    let a = Airlock::start(&cfg);
    let list = pending(&a, BOB).await;
    assert_eq!(list.len(), 1);
    assert_eq!(id_of(&list[0]), id);
    assert_eq!(vote(&a, CAROL, &id, "approve", None).await.0, 200);
    let retry = agent_send(&client(), &a.url(path), "POST", AGENT_KEY, body).await;
    retry.assert_forwarded_on(&id);
    assert_eq!(up.count(), 1);

    stop_and_verify_audit(a, &cfg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_restart_joins_the_surviving_approval() {
    let (up, ws, a) = setup_process_with_rules(RULES, "").await;
    let cfg = ws.config();
    let path = "/api/v1/things/join";
    let body = r#"{"op":"rotate"}"#;

    let (held, id) = agent_hold(&a, "POST", path, body).await;
    assert!(stop(a).await.success());
    assert_eq!(held.await.unwrap().status, 503);

    // The agent retries at once, before anyone voted: it parks on the same approval.
    let a = Airlock::start(&cfg);
    let retry = agent_spawn(&a, "POST", path, body);
    wait_held_gauge(&a, 1).await;
    let list = pending(&a, BOB).await;
    assert_eq!(list.len(), 1, "no second approval: {list:?}");
    assert_eq!(id_of(&list[0]), id);
    assert!(!retry.is_finished());
    assert_eq!(up.count(), 0);

    assert_eq!(vote(&a, BOB, &id, "approve", None).await.0, 200);
    let r = tokio::time::timeout(DEADLINE, retry)
        .await
        .unwrap()
        .unwrap();
    r.assert_forwarded_on(&id);
    assert_eq!(up.count(), 1);
}
