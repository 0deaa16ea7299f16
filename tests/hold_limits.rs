//! Limits on held requests and what the admin listener reports about them.

mod common;
use common::*;

const RULES: &str = "rules:\n  - name: hold-deletes\n    when: {method: [DELETE, POST]}\n    then: approve\n    approval: {approvers: [group:sre], timeout: 1m}\n";

#[tokio::test]
async fn a_held_body_over_max_body_is_refused_with_413() {
    let up = Upstream::start().await;
    let ws = Workspace::new();
    ws.write("rules/r.yaml", RULES);
    let cfg = ws.standard_config(&up.url(), "limits: {max_body: 1KiB, inspect_body: 512}\n");
    let a = Airlock::start(&cfg);
    let r = client()
        .post(a.url("/api/things"))
        .bearer_auth(AGENT_KEY)
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
    let held = tokio::spawn({
        let u = a.url("/api/things");
        async move {
            client()
                .post(u)
                .bearer_auth(AGENT_KEY)
                .body(vec![b'x'; 1000])
                .send()
                .await
                .unwrap()
        }
    });
    let list = eventually(10, || async {
        let l = pending(&a, BOB).await;
        (!l.is_empty()).then_some(l)
    })
    .await;
    let (s, _) = vote(&a, BOB, list[0]["id"].as_str().unwrap(), "deny", Some("no")).await;
    assert_eq!(s, 200);
    assert_eq!(held.await.unwrap().status(), 403);
}

#[tokio::test]
async fn more_than_max_held_gets_429_and_a_slot_frees_when_one_is_decided() {
    let up = Upstream::start().await;
    let ws = Workspace::new();
    ws.write("rules/r.yaml", RULES);
    let cfg = ws.standard_config(&up.url(), "limits: {max_held: 3}\n");
    let a = Airlock::start(&cfg);
    let mut held = Vec::new();
    for i in 0..3 {
        let u = a.url(&format!("/api/things/{i}"));
        held.push(tokio::spawn(async move {
            client()
                .delete(u)
                .bearer_auth(AGENT_KEY)
                .send()
                .await
                .unwrap()
        }));
    }
    let list = eventually(10, || async {
        let l = pending(&a, BOB).await;
        (l.len() == 3).then_some(l)
    })
    .await;
    let r = client()
        .delete(a.url("/api/things/4"))
        .bearer_auth(AGENT_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"], "too_many_held");

    // The metrics show three held right now.
    let m = client()
        .get(a.admin_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(m.lines().any(|l| l == "airlock_held 3"), "{m}");

    let id = list[0]["id"].as_str().unwrap();
    assert_eq!(vote(&a, BOB, id, "approve", None).await.0, 200);
    // That one completes and frees its slot: a new request can be held again.
    eventually(10, || async {
        (pending(&a, BOB).await.len() == 2).then_some(())
    })
    .await;
    let again = tokio::spawn({
        let u = a.url("/api/things/5");
        async move {
            client()
                .delete(u)
                .bearer_auth(AGENT_KEY)
                .send()
                .await
                .unwrap()
        }
    });
    eventually(10, || async {
        (pending(&a, BOB).await.len() == 3).then_some(())
    })
    .await;
    for l in pending(&a, BOB).await {
        assert_eq!(
            vote(&a, BOB, l["id"].as_str().unwrap(), "deny", None)
                .await
                .0,
            200
        );
    }
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
    let up = Upstream::start().await;
    let ws = Workspace::new();
    ws.write("rules/r.yaml", RULES);
    let cfg = ws.standard_config(&up.url(), "");
    let a = Airlock::start(&cfg);
    let h = client().get(a.admin_url("/healthz")).send().await.unwrap();
    assert_eq!(h.status(), 200);
    let r: serde_json::Value = client()
        .get(a.admin_url("/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["status"], "ready");
    assert_eq!(r["rules"], 1);
    assert_eq!(
        client()
            .get(a.url("/api/ok"))
            .bearer_auth(AGENT_KEY)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let held = tokio::spawn({
        let u = a.url("/api/x");
        async move {
            client()
                .delete(u)
                .bearer_auth(AGENT_KEY)
                .send()
                .await
                .unwrap()
        }
    });
    let list = eventually(10, || async {
        let l = pending(&a, BOB).await;
        (!l.is_empty()).then_some(l)
    })
    .await;
    vote(&a, BOB, list[0]["id"].as_str().unwrap(), "approve", None).await;
    assert_eq!(held.await.unwrap().status(), 200);
    let m = client()
        .get(a.admin_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
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
    let up = Upstream::start().await;
    let ws = Workspace::new();
    ws.write("rules/r.yaml", RULES);
    let cfg = ws.standard_config(&up.url(), "limits: {max_held: 10, max_held_per_agent: 2}\n");
    let a = Airlock::start(&cfg);
    let mut held = Vec::new();
    for i in 0..2 {
        let u = a.url(&format!("/api/mine/{i}"));
        held.push(tokio::spawn(async move {
            client()
                .delete(u)
                .bearer_auth(AGENT_KEY)
                .send()
                .await
                .unwrap()
        }));
    }
    wait_pending(&a, 2).await;
    let r = client()
        .delete(a.url("/api/mine/3"))
        .bearer_auth(AGENT_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"], "too_many_held");
    assert!(v["message"].as_str().unwrap().contains("deploy-bot"), "{v}");
    // Another agent still gets its request held.
    let other = tokio::spawn({
        let u = a.url("/api/theirs/1");
        async move {
            client()
                .delete(u)
                .bearer_auth(OTHER_AGENT_KEY)
                .send()
                .await
                .unwrap()
        }
    });
    let list = wait_pending(&a, 3).await;
    for l in list {
        assert_eq!(
            vote(&a, BOB, l["id"].as_str().unwrap(), "deny", None)
                .await
                .0,
            200
        );
    }
    assert_eq!(other.await.unwrap().status(), 403);
    for h in held {
        assert_eq!(h.await.unwrap().status(), 403);
    }
    assert_eq!(up.count(), 0);
}
