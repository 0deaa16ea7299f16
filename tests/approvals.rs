//! Holding requests for approval, end to end over real HTTP: airlock (in process; the
//! real binary where the process itself is checked) between a recording upstream and
//! agents, reviewers voting through the admin REST API (and the CLI).

mod common;
use common::*;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

const RULES: &str = r#"rules:
  - name: thing-change
    description: Changing a thing
    when:
      upstream: api
      method: [POST, DELETE]
      path: /v1/things/**
    then: approve
    approval:
      approvers: [group:sre]
      timeout: 30s
  - name: critical-change
    when:
      upstream: api
      method: POST
      path: /v1/critical/**
    then: approve
    approval:
      approvers: [group:sre]
      quorum: 2
      timeout: 30s
  - name: quick-expiry
    when:
      upstream: api
      method: POST
      path: /v1/expiring/**
    then: approve
    approval:
      approvers: [group:sre]
      timeout: 2s
"#;

async fn setup() -> (Upstream, Workspace, InProcess) {
    setup_with_rules(RULES, "").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_request_is_forwarded_once_after_approval() {
    let (up, _ws, a) = setup().await;
    let body = r#"{"name":"vm-7","tier":"prod"}"#;
    let held = agent_spawn(&a, "POST", "/api/v1/things/vm-7?force=true", body);

    let list = wait_pending(&a, 1).await;
    let ap = &list[0];
    let id = id_of(ap);
    assert!(id.starts_with("ap_"), "approval id {id}");
    assert_eq!(ap["status"], "pending");
    assert_eq!(ap["agent"], "deploy-bot");
    assert_eq!(ap["method"], "POST");
    assert_eq!(ap["url"], "/v1/things/vm-7?force=true");
    assert_eq!(ap["rules"], json!(["thing-change"]));
    assert!(ap["created"].is_string() && ap["expires"].is_string());
    assert_eq!(ap["votes"], json!([]));

    // Full context for a reviewer.
    let (s, full) = approval_get(&a, BOB, &id).await;
    assert_eq!(s, 200);
    assert_eq!(full["owner"], "alice@example.com");
    assert_eq!(full["body_sha256"], sha256_hex(body));
    assert_eq!(full["can_vote"], true);

    // Held: the client is still waiting and nothing reached the upstream.
    assert!(!held.is_finished(), "the held client must still be waiting");
    assert_eq!(
        up.count(),
        0,
        "nothing may be forwarded before the approval"
    );

    let (s, v) = vote(&a, BOB, &id, "approve", Some("looks fine")).await;
    assert_eq!(s, 200, "vote: {v}");
    assert!(
        v["status"] == "approved" || v["status"] == "consumed",
        "status after the deciding vote: {v}"
    );

    let r = tokio::time::timeout(DEADLINE, held)
        .await
        .expect("the held client gets its answer after the approval")
        .unwrap();
    r.assert_forwarded_on(&id);
    assert_eq!(
        r.json(),
        json!({"method": "POST", "uri": "/v1/things/vm-7?force=true", "body": body}),
        "the client gets the upstream's response"
    );

    let seen = up.requests();
    assert_eq!(seen.len(), 1, "forwarded exactly once");
    assert_eq!(seen[0].method, "POST");
    assert_eq!(seen[0].uri, "/v1/things/vm-7?force=true");
    assert_eq!(&seen[0].body[..], body.as_bytes());
    assert!(
        seen[0].headers.get("authorization").is_none(),
        "the agent's credential must be removed: {:?}",
        seen[0].headers
    );
    for (name, value) in seen[0].headers.iter() {
        assert!(
            !String::from_utf8_lossy(value.as_bytes()).contains(AGENT_KEY),
            "agent key leaked upstream in {name}"
        );
    }

    assert!(pending(&a, BOB).await.is_empty());
    let (_, after) = approval_get(&a, BOB, &id).await;
    assert_eq!(after["status"], "consumed");
    assert_eq!(after["decided_by"], "bob@example.com");
    assert_eq!(up.count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_holds_all_approved_and_forwarded() {
    const N: usize = 200;
    // The real binary: the thread count below is the server process's own.
    let (up, _ws, a) = setup_process_with_rules(RULES, "").await;
    let c = client();
    let url = a.url("/api/v1/things/batch");
    let mut handles = Vec::with_capacity(N);
    for i in 0..N {
        let (c, url) = (c.clone(), url.clone());
        handles.push(tokio::spawn(async move {
            let body = format!(r#"{{"n":{i}}}"#);
            (
                body.clone(),
                agent_send(&c, &url, "POST", AGENT_KEY, &body).await,
            )
        }));
    }

    let a_ref = &a;
    let list = eventually(60, || async move {
        let p = pending(a_ref, BOB).await;
        (p.len() == N).then_some(p)
    })
    .await;
    let ids: HashSet<String> = list.iter().map(id_of).collect();
    assert_eq!(ids.len(), N, "every distinct request has its own approval");
    assert!(
        handles.iter().all(|h| !h.is_finished()),
        "all clients are held"
    );
    assert_eq!(up.count(), 0);
    // Parked requests are futures, not threads.
    let status = std::fs::read_to_string(format!("/proc/{}/status", a.child.id())).unwrap();
    let threads: usize = status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|t| t.trim().parse().ok())
        .unwrap();
    assert!(threads < 40, "{threads} threads for {N} held requests");

    // Which approval belongs to which body (by body_sha256), to check that each
    // client gets its own approval back.
    let mut by_body: HashMap<String, String> = HashMap::new();
    let fulls = futures_util::future::join_all(ids.iter().map(|id| {
        let c = c.clone();
        let url = a.admin_url(&format!("/api/v1/approvals/{id}"));
        async move {
            let v: Value = c
                .get(url)
                .bearer_auth(BOB)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            v
        }
    }))
    .await;
    for v in &fulls {
        by_body.insert(v["body_sha256"].as_str().unwrap().to_string(), id_of(v));
    }
    assert_eq!(by_body.len(), N);

    let votes = futures_util::future::join_all(
        ids.iter()
            .map(|id| vote_with(&c, &a, BOB, id, "approve", None)),
    )
    .await;
    for (s, v) in &votes {
        assert_eq!(*s, 200, "vote: {v}");
    }

    let results = tokio::time::timeout(
        Duration::from_secs(60),
        futures_util::future::join_all(handles),
    )
    .await
    .expect("all held clients answered");
    for r in results {
        let (body, reply) = r.unwrap();
        assert_eq!(reply.status, 200, "{body}: {}", reply.text);
        assert_eq!(reply.json()["body"], body.as_str());
        assert_eq!(
            reply.approval_header.as_deref(),
            Some(by_body[&sha256_hex(&body)].as_str()),
            "{body} was forwarded on its own approval"
        );
    }
    let seen = up.requests();
    assert_eq!(
        seen.len(),
        N,
        "each approved request forwarded exactly once"
    );
    let bodies: HashSet<_> = seen.iter().map(|s| s.body.clone()).collect();
    assert_eq!(bodies.len(), N);
    assert!(pending(&a, BOB).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_of_two_needs_two_distinct_approvers() {
    let (up, _ws, a) = setup().await;
    let (held, id) = agent_hold(&a, "POST", "/api/v1/critical/db", r#"{"drop":"users"}"#).await;

    let (s, v) = vote(&a, BOB, &id, "approve", None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v["status"], "pending",
        "one approve of two leaves it pending"
    );
    assert_eq!(v["votes"].as_array().unwrap().len(), 1);
    assert_eq!(v["quorum"], 2);

    // The same reviewer cannot count twice, nor change their vote.
    for decision in ["approve", "deny"] {
        let (s, v) = vote(&a, BOB, &id, decision, None).await;
        assert_eq!(s, 409, "{decision} again: {v}");
        assert_eq!(v["error"], "already_voted");
        assert_eq!(v["approval_id"], id.as_str());
    }

    let list = pending(&a, BOB).await;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["votes"].as_array().unwrap().len(), 1);
    assert_eq!(list[0]["votes"][0]["reviewer"], "bob@example.com");
    assert!(!held.is_finished(), "still waiting for the second approver");
    assert_eq!(up.count(), 0);

    let (s, v) = vote(&a, CAROL, &id, "approve", None).await;
    assert_eq!(s, 200, "{v}");
    assert!(
        v["status"] == "approved" || v["status"] == "consumed",
        "{v}"
    );

    let r = tokio::time::timeout(DEADLINE, held).await.unwrap().unwrap();
    r.assert_forwarded_on(&id);
    assert_eq!(up.count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ineligible_owner_agent_and_anonymous_votes_are_refused() {
    let (up, _ws, a) = setup().await;
    let (held, id) = agent_hold(&a, "DELETE", "/api/v1/things/vm-1", "").await;

    // dave is a reviewer but not in the rule's approvers.
    let (s, v) = vote(&a, DAVE, &id, "approve", None).await;
    assert_eq!(s, 403, "{v}");
    assert_eq!(v["error"], "not_eligible");
    assert_eq!(v["approval_id"], id.as_str());

    // alice is in group sre but owns deploy-bot.
    let (s, v) = vote(&a, ALICE, &id, "approve", None).await;
    assert_eq!(s, 403, "{v}");
    assert_eq!(v["error"], "self_approval");
    let (_, full) = approval_get(&a, ALICE, &id).await;
    assert_eq!(full["can_vote"], false, "the owner is not offered a vote");

    // Agent keys are refused by the admin API, the requester's own and any other agent's.
    for key in [AGENT_KEY, OTHER_AGENT_KEY] {
        let (s, v) = vote(&a, key, &id, "approve", None).await;
        assert_eq!(s, 403, "{v}");
        assert_eq!(v["error"], "agent_credential");
        let r = client()
            .get(a.admin_url("/api/v1/approvals?status=pending"))
            .bearer_auth(key)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"], "agent_credential");
    }

    // No token, or a token nobody has.
    let r = client()
        .post(a.admin_url(&format!("/api/v1/approvals/{id}/votes")))
        .json(&json!({"decision": "approve"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"], "unauthenticated");
    let (s, v) = vote(&a, "not-a-token", &id, "approve", None).await;
    assert_eq!(s, 401, "{v}");
    assert_eq!(v["error"], "unauthenticated");

    // An approval that does not exist.
    let (s, v) = vote(&a, BOB, "ap_doesnotexist2345", "approve", None).await;
    assert_eq!(s, 404, "{v}");
    assert_eq!(v["error"], "not_found");

    // None of that counted.
    let list = pending(&a, BOB).await;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["votes"], json!([]));
    assert!(!held.is_finished());
    assert_eq!(up.count(), 0);

    // An eligible reviewer still decides it.
    let (s, _) = vote(&a, CAROL, &id, "approve", None).await;
    assert_eq!(s, 200);
    let r = held.await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(up.count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn votes_after_the_decision_conflict() {
    let (up, _ws, a) = setup().await;

    // Approved and forwarded.
    let (held, id) = agent_hold(&a, "POST", "/api/v1/things/a", r#"{"a":1}"#).await;
    assert_eq!(vote(&a, BOB, &id, "approve", None).await.0, 200);
    assert_eq!(held.await.unwrap().status, 200);
    for (token, decision) in [(CAROL, "approve"), (CAROL, "deny"), (BOB, "deny")] {
        let (s, v) = vote(&a, token, &id, decision, None).await;
        assert_eq!(s, 409, "{decision} after approval: {v}");
        assert_eq!(v["error"], "already_decided", "{v}");
        assert_eq!(v["approval_id"], id.as_str());
    }
    assert_eq!(up.count(), 1);

    // Denied: a late approve does not resurrect it.
    let (held, id) = agent_hold(&a, "POST", "/api/v1/things/b", r#"{"b":1}"#).await;
    assert_eq!(vote(&a, BOB, &id, "deny", None).await.0, 200);
    let r = held.await.unwrap();
    assert_eq!(r.status, 403);
    let (s, v) = vote(&a, CAROL, &id, "approve", None).await;
    assert_eq!(s, 409, "{v}");
    assert_eq!(v["error"], "already_decided");
    let (_, full) = approval_get(&a, BOB, &id).await;
    assert_eq!(full["status"], "denied");
    assert_eq!(
        up.count(),
        1,
        "the denied request never reached the upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unanswered_approval_expires_and_refuses_late_votes() {
    let (up, ws, a) = setup().await;
    let started = Instant::now();
    let (held, id) = agent_hold(&a, "POST", "/api/v1/expiring/job", r#"{"x":1}"#).await;

    let r = tokio::time::timeout(DEADLINE, held)
        .await
        .expect("an expired hold is answered")
        .unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "expired too early: {:?}",
        started.elapsed()
    );
    assert_eq!(r.status, 403, "{}", r.text);
    let v = r.json();
    assert_eq!(v["error"], "approval_expired");
    assert_eq!(v["approval_id"], id.as_str());
    assert_eq!(r.approval_header.as_deref(), Some(id.as_str()));

    let (_, full) = approval_get(&a, BOB, &id).await;
    assert_eq!(full["status"], "expired");
    assert!(
        full["expires_in"].is_null(),
        "no countdown once decided: {full}"
    );
    assert!(pending(&a, BOB).await.is_empty());

    let (s, v) = vote(&a, BOB, &id, "approve", None).await;
    assert_eq!(s, 409, "{v}");
    assert_eq!(v["error"], "already_decided");
    assert_eq!(up.count(), 0);

    // The audit log says so: held, then expired, and no vote.
    let cfg = ws.config().to_str().unwrap().to_string();
    let (id_ref, cfg_ref) = (&id, &cfg);
    let kinds = eventually(DEADLINE.as_secs(), || async move {
        let (code, out, _) = run_cli_blocking(&["audit", "export", "-c", cfg_ref], &[]).await;
        let kinds: Vec<String> = out
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|e| e["approval_id"] == id_ref.as_str())
            .map(|e| e["event"].as_str().unwrap().to_string())
            .collect();
        (code == 0 && kinds.iter().any(|k| k == "not_forwarded")).then_some(kinds)
    })
    .await;
    // The approval expired, then the held request itself was answered 403.
    assert_eq!(kinds, ["held", "expired", "not_forwarded"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deny_reason_reaches_the_agent() {
    let (up, _ws, a) = setup().await;
    let (held, id) = agent_hold(&a, "DELETE", "/api/v1/things/prod-db", "").await;
    let reason = "not during business hours; use the staging project instead";
    let (s, v) = vote(&a, CAROL, &id, "deny", Some(reason)).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["status"], "denied");

    let r = tokio::time::timeout(DEADLINE, held).await.unwrap().unwrap();
    assert_eq!(r.status, 403, "{}", r.text);
    let body = r.json();
    assert_eq!(body["error"], "denied");
    assert_eq!(body["reason"], reason);
    assert_eq!(body["approval_id"], id.as_str());
    assert_eq!(r.approval_header.as_deref(), Some(id.as_str()));
    assert_eq!(up.count(), 0, "a denied request never reaches the upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_pending_requests_join_one_approval_and_forward_once() {
    let (up, ws, a) = setup().await;
    let body = r#"{"name":"same"}"#;
    let (first, id) = agent_hold(&a, "POST", "/api/v1/things/same", body).await;
    let second = agent_spawn(&a, "POST", "/api/v1/things/same", body);
    // Both are parked (the gauge counts parked requests), yet one approval is listed.
    // The gauge counts the second request from just before it looks for its twin, so
    // this listing alone cannot prove that it joined; what does is below: the vote
    // answers both clients, and the audit log has one `held` event.
    wait_held_gauge(&a, 2).await;
    let list = pending(&a, BOB).await;
    assert_eq!(list.len(), 1, "the identical request joined: {list:?}");
    assert_eq!(id_of(&list[0]), id);
    assert!(!first.is_finished() && !second.is_finished());

    assert_eq!(vote(&a, BOB, &id, "approve", None).await.0, 200);
    let r1 = tokio::time::timeout(DEADLINE, first)
        .await
        .unwrap()
        .unwrap();
    let r2 = tokio::time::timeout(DEADLINE, second)
        .await
        .unwrap()
        .unwrap();
    let (ok, other) = if r1.status == 200 { (r1, r2) } else { (r2, r1) };
    assert_eq!(ok.status, 200, "one of them is forwarded: {}", ok.text);
    assert_eq!(ok.approval_header.as_deref(), Some(id.as_str()));
    // The other learns the approval was used by its twin (403 `denied`).
    assert_eq!(other.status, 403, "{}", other.text);
    let v = other.json();
    assert_eq!(v["error"], "denied");
    assert_eq!(v["approval_id"], id.as_str());
    assert_eq!(up.count(), 1, "exactly one forward for one approval");

    // Reviewers were asked once: one `held` event in the audit log.
    let (code, out, err) = run_cli_blocking(
        &["audit", "export", "-c", ws.config().to_str().unwrap()],
        &[],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let held_events = out
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|e| e["event"] == "held")
        .count();
    assert_eq!(held_events, 1, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approval_is_reused_once_after_the_client_left() {
    let (up, _ws, a) = setup().await;
    let body = r#"{"name":"gone"}"#;
    let path = "/api/v1/things/gone";
    let (held, id) = agent_hold(&a, "POST", path, body).await;
    wait_held_gauge(&a, 1).await;

    // The agent gives up: its connection closes, airlock drops the parked request.
    held.abort();
    wait_held_gauge(&a, 0).await;
    assert_eq!(pending(&a, BOB).await.len(), 1, "leaving does not cancel");

    let (s, v) = vote(&a, BOB, &id, "approve", None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v["status"], "approved",
        "approved but nobody to forward it yet"
    );
    assert_eq!(up.count(), 0, "nothing forwarded while the client is gone");

    // The retry of the identical request is forwarded at once on that approval.
    let retry = agent_send_within(
        &a,
        DEADLINE.as_secs(),
        "POST",
        path,
        body,
        "the retry must not be held again",
    )
    .await;
    retry.assert_forwarded_on(&id);
    assert_eq!(up.count(), 1);
    assert_eq!(&up.requests()[0].body[..], body.as_bytes());
    assert!(
        pending(&a, BOB).await.is_empty(),
        "no new approval was opened"
    );
    assert_eq!(approval_get(&a, BOB, &id).await.1["status"], "consumed");

    // Used once: the next identical request is held again, on a new approval.
    let third = agent_spawn(&a, "POST", path, body);
    let list = wait_pending(&a, 1).await;
    let id3 = id_of(&list[0]);
    assert_ne!(id3, id);
    assert!(!third.is_finished());
    assert_eq!(up.count(), 1);
    assert_eq!(vote(&a, BOB, &id3, "deny", None).await.0, 200);
    assert_eq!(third.await.unwrap().status, 403);
    assert_eq!(up.count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approval_binds_the_exact_request() {
    let (up, _ws, a) = setup().await;
    let path = "/api/v1/things/db";
    let body_a = r#"{"size":"small"}"#;
    let body_b = r#"{"size":"huge"}"#;

    // A is held, its client leaves, and A is approved (reusable by an identical A).
    let (ha, id_a) = agent_hold(&a, "POST", path, body_a).await;
    wait_held_gauge(&a, 1).await;
    ha.abort();
    wait_held_gauge(&a, 0).await;
    assert_eq!(vote(&a, BOB, &id_a, "approve", None).await.0, 200);

    // B: same agent, method and path, other body → its own approval, not A's.
    let hb = agent_spawn(&a, "POST", path, body_b);
    let list = wait_pending(&a, 1).await;
    let id_b = id_of(&list[0]);
    assert_ne!(id_b, id_a);
    assert_eq!(list[0]["status"], "pending");

    // C: A's body with one more material header → also its own approval.
    let hc = spawn_request(
        agent_request(&a, AGENT_KEY, "POST", path)
            .header("content-type", "application/json")
            .header("x-environment", "prod")
            .body(body_a),
    );
    let list = wait_pending(&a, 2).await;
    let id_c = list.iter().map(id_of).find(|i| *i != id_b).unwrap();
    assert_ne!(id_c, id_a);
    assert!(!hb.is_finished() && !hc.is_finished());
    assert_eq!(up.count(), 0, "A's approval forwards neither B nor C");

    // The identical A is forwarded on A's approval.
    let ra = agent_send(&client(), &a.url(path), "POST", AGENT_KEY, body_a).await;
    ra.assert_forwarded_on(&id_a);

    assert_eq!(vote(&a, BOB, &id_b, "deny", None).await.0, 200);
    assert_eq!(vote(&a, BOB, &id_c, "deny", None).await.0, 200);
    assert_eq!(hb.await.unwrap().status, 403);
    assert_eq!(hc.await.unwrap().status(), 403);

    let seen = up.requests();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(&seen[0].body[..], body_a.as_bytes());
    assert!(seen[0].headers.get("x-environment").is_none());
    assert!(!seen.iter().any(|s| &s.body[..] == body_b.as_bytes()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reviewer_cli_lists_and_approves() {
    let (up, _ws, a) = setup().await;
    let (held, id) = agent_hold(&a, "DELETE", "/api/v1/things/cli", "").await;
    let admin = format!("http://{}", a.admin.unwrap());
    let cli = |args: Vec<String>, token: &'static str| {
        let admin = admin.clone();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            run_cli(&args, &[("AIRLOCK_URL", &admin), ("AIRLOCK_TOKEN", token)])
        })
    };

    let (code, out, err) = cli(vec!["pending".into()], BOB).await.unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&id), "{out}");
    assert!(
        out.contains("DELETE") && out.contains("/v1/things/cli"),
        "{out}"
    );

    let (code, _, err) = cli(vec!["approve".into(), id.clone()], DAVE).await.unwrap();
    assert_eq!(code, 1, "dave may not approve: {err}");
    assert!(err.contains("not_eligible"), "{err}");
    assert!(!held.is_finished());

    let (code, out, err) = cli(
        vec!["approve".into(), id.clone(), "--reason".into(), "ok".into()],
        CAROL,
    )
    .await
    .unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&id), "{out}");
    let r = held.await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(up.count(), 1);

    let (code, _, err) = cli(vec!["deny".into(), id.clone()], BOB).await.unwrap();
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("409") && err.contains("already_decided"),
        "{err}"
    );
}
