//! Shutdown: in-flight requests get `limits.shutdown_grace` to finish; what is still
//! running then is cut, and every cut request is in the audit log.

mod common;
use common::*;
use std::sync::Arc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forward_still_running_after_the_grace_period_is_cut_and_recorded() {
    let (arrived_tx, mut arrived) = tokio::sync::mpsc::unbounded_channel::<()>();
    let never = Arc::new(tokio::sync::Notify::new());
    let gate = never.clone();
    let upstream = raw_upstream(move |_req| {
        let (arrived_tx, gate) = (arrived_tx.clone(), gate.clone());
        async move {
            let _ = arrived_tx.send(());
            gate.notified().await;
            hyper::Response::new(test_body("too late"))
        }
    })
    .await;
    let ws = Workspace::new();
    ws.write("rules/r.yaml", "rules: []\n");
    let cfg = ws.standard_config(
        &format!("http://{upstream}"),
        "audit:\n  file: audit.jsonl\nlimits: {shutdown_grace: 1s}\n",
    );
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("    timeout: 5s\n", "    timeout: 120s\n");
    std::fs::write(&cfg, text).unwrap();
    let a = InProcess::start(&cfg).await;
    let slow = spawn_request(agent_request(&a, AGENT_KEY, "GET", "/api/v1/slow-report"));
    arrived
        .recv()
        .await
        .expect("the request reaches the upstream");

    let started = std::time::Instant::now();
    a.stop().await;
    let took = started.elapsed();
    assert!(
        took < std::time::Duration::from_secs(10),
        "the grace period is 1s, not the upstream's 120s timeout: {took:?}"
    );
    let _ = slow.await; // the agent's connection was closed
    let ev = wait_audit_event(&ws.path().join("audit.jsonl"), "cut_at_shutdown", |e| {
        e["event"] == "cut_at_shutdown"
    })
    .await;
    assert_eq!(ev["path"], "/v1/slow-report");
    assert_eq!(ev["agent"], "deploy-bot");
    never.notify_waiters();
}
