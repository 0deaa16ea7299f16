//! Limits on held requests and what the admin listener reports about them.

mod common;
use common::*;

const RULES: &str = "rules:\n  - name: hold-deletes\n    when: {method: [DELETE, POST]}\n    then: approve\n    approval: {approvers: [group:sre], timeout: 1m}\n";

/// deploy-bot's `DELETE path` is refused with 429 `too_many_held`; returns the error.
async fn refused_as_too_many_held(a: &impl Listeners, path: &str) -> serde_json::Value {
    let r = agent_request(a, AGENT_KEY, "DELETE", path)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"], "too_many_held");
    v
}

#[tokio::test]
async fn a_held_body_over_max_body_is_refused_with_413() {
    let (up, _ws, a) =
        setup_with_rules(RULES, "limits: {max_body: 1KiB, inspect_body: 512}\n").await;
    let r = agent_request(&a, AGENT_KEY, "POST", "/api/things")
        .body(vec![b'x'; 2048])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"], "body_too_large");
    assert_eq!(v["rule"][0], "hold-deletes");
    assert!(pending(&a, BOB).await.is_empty(), "nothing may be held");
    assert_eq!(up.count(), 0);
    // Within the limit it is held as usual.
    let held =
        spawn_request(agent_request(&a, AGENT_KEY, "POST", "/api/things").body(vec![b'x'; 1000]));
    let list = wait_any_pending(&a).await;
    let (s, _) = vote(&a, BOB, list[0]["id"].as_str().unwrap(), "deny", Some("no")).await;
    assert_eq!(s, 200);
    assert_eq!(held.await.unwrap().status(), 403);
}

#[tokio::test]
async fn more_than_max_held_gets_429_and_a_slot_frees_when_one_is_decided() {
    let (up, _ws, a) =
        setup_with_rules(RULES, "limits: {max_held: 3, max_held_per_agent: 3}\n").await;
    let mut held = Vec::new();
    for i in 0..3 {
        let path = format!("/api/things/{i}");
        held.push(spawn_request(agent_request(&a, AGENT_KEY, "DELETE", &path)));
    }
    let list = wait_pending(&a, 3).await;
    refused_as_too_many_held(&a, "/api/things/4").await;

    // The metrics show three held right now.
    let m = metrics_text(&a).await;
    assert!(m.lines().any(|l| l == "airlock_held 3"), "{m}");

    let id = list[0]["id"].as_str().unwrap();
    assert_eq!(vote(&a, BOB, id, "approve", None).await.0, 200);
    // That one completes and frees its slot: a new request can be held again. (The
    // approval leaves the pending list as soon as it is decided, a moment before the
    // parked request gives its slot back: the gauge is the signal for the slot.)
    wait_held_gauge(&a, 2).await;
    let again = spawn_request(agent_request(&a, AGENT_KEY, "DELETE", "/api/things/5"));
    wait_pending(&a, 3).await;
    deny_each(&a, &pending(&a, BOB).await).await;
    assert_eq!(again.await.unwrap().status(), 403);
    let mut statuses: Vec<u16> = Vec::new();
    for h in held {
        statuses.push(h.await.unwrap().status().as_u16());
    }
    statuses.sort();
    assert_eq!(statuses, [200, 403, 403]);
    assert_eq!(up.count(), 1);
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let (_up, _ws, a) = setup_with_rules(RULES, "").await;
    let h = client().get(a.admin_url("/healthz")).send().await.unwrap();
    assert_eq!(h.status(), 200);
    let r = admin_json(&a, "/readyz").await;
    assert_eq!(r["status"], "ready");
    assert_eq!(r["rules"], 1);
    assert_eq!(
        agent_request(&a, AGENT_KEY, "GET", "/api/ok")
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let held = spawn_request(agent_request(&a, AGENT_KEY, "DELETE", "/api/x"));
    let list = wait_any_pending(&a).await;
    vote(&a, BOB, list[0]["id"].as_str().unwrap(), "approve", None).await;
    assert_eq!(held.await.unwrap().status(), 200);
    let m = metrics_text(&a).await;
    for needle in [
        "airlock_requests_total{verdict=\"allow\",upstream=\"api\"} 1",
        "airlock_requests_total{verdict=\"approve\",upstream=\"api\"} 1",
        "airlock_held 0",
        "airlock_hold_wait_seconds_count 1",
        "airlock_votes_total{outcome=\"approve\"} 1",
        "airlock_decisions_total{outcome=\"approved\"} 1",
        "airlock_upstream_latency_seconds_count{upstream=\"api\"} 2",
        "airlock_audit_append_seconds_count",
    ] {
        assert!(m.contains(needle), "metrics lack {needle:?}:\n{m}");
    }
}

#[tokio::test]
async fn one_agent_cannot_take_every_held_slot() {
    let (up, _ws, a) =
        setup_with_rules(RULES, "limits: {max_held: 10, max_held_per_agent: 2}\n").await;
    let mut held = Vec::new();
    for i in 0..2 {
        let path = format!("/api/mine/{i}");
        held.push(spawn_request(agent_request(&a, AGENT_KEY, "DELETE", &path)));
    }
    wait_pending(&a, 2).await;
    let v = refused_as_too_many_held(&a, "/api/mine/3").await;
    assert!(v["message"].as_str().unwrap().contains("deploy-bot"), "{v}");
    // Another agent still gets its request held.
    let other = spawn_request(agent_request(
        &a,
        OTHER_AGENT_KEY,
        "DELETE",
        "/api/theirs/1",
    ));
    let list = wait_pending(&a, 3).await;
    deny_each(&a, &list).await;
    assert_eq!(other.await.unwrap().status(), 403);
    for h in held {
        assert_eq!(h.await.unwrap().status(), 403);
    }
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn by_default_one_agent_may_hold_a_tenth_of_max_held() {
    let (up, _ws, a) = setup_with_rules(RULES, "limits: {max_held: 20}\n").await;
    let mut held = Vec::new();
    for i in 0..2 {
        let path = format!("/api/mine/{i}");
        held.push(spawn_request(agent_request(&a, AGENT_KEY, "DELETE", &path)));
    }
    wait_pending(&a, 2).await;
    let v = refused_as_too_many_held(&a, "/api/mine/3").await;
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("max_held_per_agent"),
        "{v}"
    );
    let other = spawn_request(agent_request(&a, OTHER_AGENT_KEY, "DELETE", "/api/theirs"));
    let list = wait_pending(&a, 3).await;
    deny_each(&a, &list).await;
    assert_eq!(other.await.unwrap().status(), 403);
    for h in held {
        assert_eq!(h.await.unwrap().status(), 403);
    }
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn approvals_left_pending_by_clients_that_went_away_count_against_the_agent() {
    let (up, _ws, a) =
        setup_with_rules(RULES, "limits: {max_held: 100, max_held_per_agent: 2}\n").await;
    // Two held requests whose clients then give up: their approvals stay pending.
    for i in 0..2 {
        let path = format!("/api/gone/{i}");
        let gone = spawn_request(agent_request(&a, AGENT_KEY, "DELETE", &path));
        wait_pending(&a, i + 1).await;
        gone.abort();
        let _ = gone.await;
    }
    wait_held_gauge(&a, 0).await;
    assert_eq!(
        pending(&a, BOB).await.len(),
        2,
        "the approvals outlive their clients"
    );
    // A new request of that agent is refused: it would open a third approval.
    let v = refused_as_too_many_held(&a, "/api/gone/new").await;
    let msg = v["message"].as_str().unwrap();
    assert!(
        msg.contains("approvals pending") && msg.contains("deploy-bot"),
        "{v}"
    );
    // An identical retry still joins its pending approval.
    let retry = spawn_request(agent_request(&a, AGENT_KEY, "DELETE", "/api/gone/0"));
    wait_held_gauge(&a, 1).await;
    let list = pending(&a, BOB).await;
    assert_eq!(list.len(), 2, "the retry joined instead of opening one");
    // Another agent is not affected.
    let other = spawn_request(agent_request(&a, OTHER_AGENT_KEY, "DELETE", "/api/gone/0"));
    let list = wait_pending(&a, 3).await;
    // Once one is decided, the agent may open a new one.
    let first = list
        .iter()
        .find(|ap| ap["agent"] == "deploy-bot" && ap["url"].as_str().unwrap().ends_with("/gone/0"))
        .unwrap_or_else(|| panic!("no pending approval for /gone/0: {list:?}"));
    bob_decides(&a, first, "deny").await;
    assert_eq!(retry.await.unwrap().status(), 403);
    let fresh = spawn_request(agent_request(&a, AGENT_KEY, "DELETE", "/api/gone/new"));
    let list = wait_pending(&a, 3).await;
    deny_each(&a, &list).await;
    assert_eq!(fresh.await.unwrap().status(), 403);
    assert_eq!(other.await.unwrap().status(), 403);
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn held_bodies_share_one_byte_budget() {
    let (up, _ws, a) = setup_with_rules(
        RULES,
        "limits: {max_body: 1KiB, inspect_body: 512, max_held_bytes: 2KiB}\n",
    )
    .await;
    let mut held = Vec::new();
    for i in 0..2 {
        let path = format!("/api/big/{i}");
        held.push(spawn_request(
            agent_request(&a, AGENT_KEY, "POST", &path).body(vec![b'x'; 1000]),
        ));
        wait_pending(&a, i + 1).await;
    }
    assert_eq!(held_bytes(&a).await, 2000);
    // A third would reserve max_body more than the budget has left: refused, not held.
    // (A binary body: one that could name a `_method` is read for inspection first,
    // and refused there, `503 busy`.)
    let r = agent_request(&a, OTHER_AGENT_KEY, "POST", "/api/big/3")
        .header("content-type", "application/octet-stream")
        .body("small")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"], "too_many_held");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("limits.max_held_bytes"),
        "{v}"
    );
    assert_eq!(pending(&a, BOB).await.len(), 2);
    // Requests whose bodies are not kept still flow.
    let ok = agent_request(&a, AGENT_KEY, "GET", "/api/ok")
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let list = pending(&a, BOB).await;
    bob_decides(&a, &list[0], "approve").await;
    bob_decides(&a, &list[1], "deny").await;
    let mut statuses: Vec<u16> = Vec::new();
    for h in held {
        statuses.push(h.await.unwrap().status().as_u16());
    }
    statuses.sort();
    assert_eq!(statuses, [200, 403]);
    assert_eq!(up.count(), 2, "the GET and the approved POST");
    // Every byte is given back once the requests are over.
    eventually(DEADLINE.as_secs(), || async {
        (held_bytes(&a).await == 0).then_some(())
    })
    .await;
}

/// The `airlock_held_bytes` gauge.
async fn held_bytes(a: &impl Listeners) -> i64 {
    let m = metrics_text(a).await;
    m.lines()
        .find_map(|l| l.strip_prefix("airlock_held_bytes "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as i64)
        .unwrap_or_else(|| panic!("no airlock_held_bytes in\n{m}"))
}
