//! kill -9 at the wrong moment: the real binary is killed mid-forward and mid-votes,
//! started again on the same store, and what it finds must be whole: every decision
//! the store holds is in the audit log, a forward cut by the crash is `outcome_unknown`
//! (audited, shown to reviewers, told to the agent's retry) and never sent again, and
//! the chain verifies.

mod common;
use common::*;
use std::collections::HashMap;

const RULES: &str = r#"rules:
  - name: charge
    when:
      upstream: api
      method: POST
      path: /v1/charges/**
    then: approve
    approval:
      approvers: [group:sre]
      timeout: 60s
"#;

/// The store's audit events as `airlock audit export` prints them, by approval id.
async fn events_by_approval(cfg: &std::path::Path) -> HashMap<String, Vec<String>> {
    let (code, out, err) =
        run_cli_blocking(&["audit", "export", "-c", cfg.to_str().unwrap()], &[]).await;
    assert_eq!(code, 0, "{err}");
    let mut by: HashMap<String, Vec<String>> = HashMap::new();
    for line in out.lines().filter(|l| !l.trim().is_empty()) {
        let ev: serde_json::Value = serde_json::from_str(line).unwrap();
        if let Some(id) = ev["approval_id"].as_str() {
            by.entry(id.to_string())
                .or_default()
                .push(ev["event"].as_str().unwrap_or("").to_string());
        }
    }
    by
}

async fn verify_audit(cfg: &std::path::Path) {
    assert_audit_intact(cfg, "after kill -9").await;
}

/// An approved request is on its way to an upstream that has received it and not yet
/// answered when airlock is killed. The next airlock marks it `outcome_unknown`, an
/// identical retry is refused with that code, and the upstream never sees it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forward_cut_by_kill_9_is_outcome_unknown_and_never_sent_again() {
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let upstream = raw_upstream(move |req| {
        let seen = seen_tx.clone();
        async move {
            let _ = seen.send(req.uri().path().to_string());
            // Received, acting on it, never answering (until the test ends).
            std::future::pending::<()>().await;
            unreachable!()
        }
    })
    .await;
    let ws = Workspace::new();
    ws.write("rules/r.yaml", RULES);
    let cfg = ws.standard_config(&format!("http://{upstream}"), "");
    let a = Airlock::start(&cfg);
    let (agent, id) = agent_hold(&a, "POST", "/api/v1/charges/c-1", r#"{"eur":100}"#).await;
    assert_eq!(vote(&a, BOB, &id, "approve", None).await.0, 200);
    let path = tokio::time::timeout(DEADLINE, seen_rx.recv())
        .await
        .expect("the approved request reaches the upstream")
        .unwrap();
    assert_eq!(path, "/v1/charges/c-1");

    a.kill();
    assert!(
        agent.await.is_err(),
        "the agent's connection dies with airlock"
    );

    let a = Airlock::start(&cfg);
    let (code, ap) = approval_get(&a, BOB, &id).await;
    assert_eq!(code, 200, "{ap}");
    assert_eq!(ap["status"], "outcome_unknown", "{ap}");
    let by = events_by_approval(&cfg).await;
    assert_eq!(
        by[&id],
        ["held", "vote", "approved", "outcome_unknown"],
        "the crash is in the log"
    );
    verify_audit(&cfg).await;

    // The agent retries the identical request: told, not sent.
    let r = agent_send(
        &client(),
        &a.url("/api/v1/charges/c-1"),
        "POST",
        AGENT_KEY,
        r#"{"eur":100}"#,
    )
    .await;
    assert_eq!(r.status, 409, "{}", r.text);
    let v = r.json();
    assert_eq!(v["error"], "outcome_unknown");
    assert_eq!(v["approval_id"], id.as_str());
    assert!(
        seen_rx.try_recv().is_err(),
        "the upstream never sees the request a second time"
    );
    // The refusal is audited (written after the answer: wait for it to be stored).
    eventually(DEADLINE.as_secs(), || {
        let cfg = cfg.clone();
        let id = id.clone();
        async move {
            let by = events_by_approval(&cfg).await;
            (by[&id].last().map(String::as_str) == Some("not_forwarded")).then_some(())
        }
    })
    .await;
    verify_audit(&cfg).await;
}

/// Votes land on many held requests while airlock is killed. After a restart every
/// decision the store holds is in the log (no approved approval without `approved`), no
/// request reached the upstream twice, and an approved request whose agent retries is
/// forwarded at most once over both lives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_votes_leaves_every_decision_in_the_log() {
    const N: usize = 24;
    let (up, ws, a) = setup_process_with_rules(RULES, "").await;
    let cfg = ws.config();
    // The agents' connections die with airlock: they get errors, not answers.
    let agents: Vec<_> = (0..N)
        .map(|i| {
            let req = agent_request(&a, AGENT_KEY, "POST", &format!("/api/v1/charges/c-{i}"))
                .header("content-type", "application/json")
                .body(format!(r#"{{"n":{i}}}"#));
            tokio::spawn(async move { req.send().await.map(|r| r.status().as_u16()) })
        })
        .collect();
    let held = wait_pending(&a, N).await;
    // Every vote is sent at once; airlock is killed as soon as a few have been answered.
    let (answered_tx, mut answered) = tokio::sync::mpsc::unbounded_channel();
    let votes: Vec<_> = held
        .iter()
        .map(|ap| {
            let (url, id, tx) = (
                a.admin_url(&format!("/api/v1/approvals/{}/votes", id_of(ap))),
                id_of(ap),
                answered_tx.clone(),
            );
            tokio::spawn(async move {
                let r = client()
                    .post(url)
                    .bearer_auth(BOB)
                    .json(&serde_json::json!({"decision": "approve"}))
                    .send()
                    .await;
                let _ = tx.send(id);
                r.map(|r| r.status().as_u16())
            })
        })
        .collect();
    for _ in 0..4 {
        tokio::time::timeout(DEADLINE, answered.recv())
            .await
            .expect("votes are answered");
    }
    a.kill();
    for v in votes {
        let _ = v.await;
    }
    for ag in agents {
        let _ = ag.await;
    }

    let a = Airlock::start(&cfg);
    verify_audit(&cfg).await;
    let by = events_by_approval(&cfg).await;
    let mut approved = 0;
    for ap in &held {
        let id = id_of(ap);
        let (_, now) = approval_get(&a, BOB, &id).await;
        let status = now["status"].as_str().unwrap().to_string();
        let logged = by.get(&id).cloned().unwrap_or_default();
        let has = |e: &str| logged.iter().any(|x| x == e);
        match status.as_str() {
            "pending" => assert!(!has("approved"), "{id}: {logged:?}"),
            "approved" | "consumed" | "outcome_unknown" => {
                approved += 1;
                assert!(
                    has("approved"),
                    "{id} is {status} but the log has {logged:?}"
                );
                assert_eq!(logged.iter().filter(|e| *e == "vote").count(), 1);
            }
            other => panic!("{id}: unexpected status {other} after recovery ({logged:?})"),
        }
        if status == "consumed" {
            assert!(
                has("forwarded"),
                "{id} consumed without forwarded: {logged:?}"
            );
        }
    }
    assert!(approved >= 4, "the answered votes were decided: {approved}");
    // Retry every approved request: each reaches the upstream at most once over both lives.
    for ap in &held {
        let id = id_of(ap);
        let (_, this) = approval_get(&a, BOB, &id).await;
        let i = this["url"]
            .as_str()
            .and_then(|u| u.strip_prefix("/v1/charges/c-"))
            .unwrap()
            .to_string();
        let (_, now) = approval_get(&a, BOB, &id).await;
        // Approved and unused: forwarded on it now; outcome unknown: refused. (A
        // consumed one would be held anew, and a pending one joined.)
        if now["status"] != "approved" && now["status"] != "outcome_unknown" {
            continue;
        }
        let r = agent_send(
            &client(),
            &a.url(&format!("/api/v1/charges/c-{i}")),
            "POST",
            AGENT_KEY,
            &format!(r#"{{"n":{i}}}"#),
        )
        .await;
        let want = if now["status"] == "approved" {
            200
        } else {
            409
        };
        assert_eq!(r.status, want, "{i}: {}", r.text);
    }
    let mut hits: HashMap<String, usize> = HashMap::new();
    for s in up.requests() {
        *hits
            .entry(String::from_utf8_lossy(&s.body).into_owned())
            .or_default() += 1;
    }
    assert!(
        hits.values().all(|n| *n == 1),
        "no request reached the upstream twice: {hits:?}"
    );
    verify_audit(&cfg).await;
}

/// An approved request the upstream refused (nothing listened: not one byte left) is
/// not lost: `not_sent`, the approval is approved again, and the identical retry goes
/// out on it once the upstream is back — on the same approval, exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approved_request_never_sent_can_go_out_on_its_retry() {
    // A port nobody listens on yet.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let ws = Workspace::new();
    ws.write("rules/r.yaml", RULES);
    let cfg = ws.standard_config(
        &format!("http://127.0.0.1:{port}"),
        "audit: {level: all, file: audit.jsonl}\n",
    );
    let a = InProcess::start(&cfg).await;
    let (agent, id) = agent_hold(&a, "POST", "/api/v1/charges/c-9", r#"{"eur":9}"#).await;
    assert_eq!(vote(&a, BOB, &id, "approve", None).await.0, 200);
    let r = agent.await.unwrap();
    assert_eq!(r.status, 502, "{}", r.text);
    assert_eq!(r.json()["approval_id"], id.as_str());
    let (_, ap) = approval_get(&a, BOB, &id).await;
    assert_eq!(ap["status"], "approved", "given back: nothing was sent");

    // The upstream comes up; the agent retries the identical request.
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = hits.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let counted = counted.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| {
                    counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    async {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(test_body("done")))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    let r = agent_send(
        &client(),
        &a.url("/api/v1/charges/c-9"),
        "POST",
        AGENT_KEY,
        r#"{"eur":9}"#,
    )
    .await;
    r.assert_forwarded_on(&id);
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 1);
    let (_, ap) = approval_get(&a, BOB, &id).await;
    assert_eq!(ap["status"], "consumed");
    a.stop().await;
    let by = events_by_approval(&cfg).await;
    assert_eq!(
        by[&id],
        ["held", "vote", "approved", "not_sent", "forwarded"],
        "one approval, one request out"
    );
    verify_audit(&cfg).await;
}
