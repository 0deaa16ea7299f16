//! `SIGHUP` reloads config and rules; an invalid new set is refused and the old one
//! stays in force. The real binary: a signal goes to a process.

mod common;
use common::*;

fn hup(a: &Airlock) {
    let ok = std::process::Command::new("kill")
        .args(["-HUP", &a.child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

async fn rule_count(a: &Airlock) -> u64 {
    let v = admin_json(a, "/readyz").await;
    v["rules"].as_u64().unwrap()
}

#[tokio::test]
async fn sighup_puts_new_rules_in_force_and_keeps_the_old_ones_when_the_new_are_bad() {
    let up = Upstream::start().await;
    let ws = Workspace::new();
    ws.write(
        "rules/a.yaml",
        "rules:\n  - name: ok\n    when: {path: /nothing}\n    then: allow\n",
    );
    let cfg = ws.standard_config(&up.url(), "");
    let a = Airlock::start(&cfg);
    assert_eq!(
        agent_request(&a, AGENT_KEY, "DELETE", "/api/x")
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    ws.write(
        "rules/b.yaml",
        "rules:\n  - name: no-deletes\n    when: {method: DELETE}\n    then: deny\n",
    );
    hup(&a);
    eventually(DEADLINE.as_secs(), || async {
        (rule_count(&a).await == 2).then_some(())
    })
    .await;
    let r = agent_request(&a, AGENT_KEY, "DELETE", "/api/x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);

    // A broken rule file: refused, logged with its location, old rules stay.
    ws.write(
        "rules/c.yaml",
        "rules:\n  - name: broken\n    when: {path: \"re:(\"}\n    then: deny\n",
    );
    hup(&a);
    eventually(DEADLINE.as_secs(), || async {
        a.stderr
            .lock()
            .unwrap()
            .contains("reload refused")
            .then_some(())
    })
    .await;
    assert!(
        a.stderr.lock().unwrap().contains("c.yaml:3:"),
        "{}",
        a.stderr.lock().unwrap()
    );
    assert_eq!(rule_count(&a).await, 2);
    let r = agent_request(&a, AGENT_KEY, "DELETE", "/api/x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(
        agent_request(&a, AGENT_KEY, "GET", "/api/x")
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}
