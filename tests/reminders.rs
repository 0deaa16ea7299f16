//! Reminders and escalation, end to end: an undecided approval whose rule says
//! `approval.remind` re-notifies reviewers (a `reminded` event through the webhook
//! channel, on the audit chain) until it is decided; one whose rule says
//! `approval.escalate` lets more approvers vote once it has waited long enough, and
//! tells them (`escalated`, naming who was added). airlock runs in process; the
//! receiver checks every delivery's signature.

mod common;
#[path = "standins/webhook_receiver.rs"]
mod receiver;

use common::*;
use receiver::{kinds, Receiver};
use serde_json::{json, Value};
use std::path::PathBuf;

const SECRET: &str = "whsec-reminders-41c2";

const RULES: &str = r#"rules:
  - name: thing-change
    description: Changing a thing
    when:
      upstream: api
      method: POST
      path: /v1/things/**
    then: approve
    approval:
      approvers: [group:sre]
      timeout: 60s
      remind: 1s
  - name: db-drop
    description: Dropping a database
    when:
      upstream: api
      method: POST
      path: /v1/db/**
    then: approve
    approval:
      approvers: [group:sre]
      timeout: 60s
      escalate: {after: 4s, to: [group:leads]}
"#;

/// The standard identities, with dave in the `leads` group; the webhook channel
/// pointed at `hook`; the live audit copy in `audit.jsonl`.
fn config(ws: &Workspace, upstream: &str, hook: &str) -> PathBuf {
    config_named(ws, "airlock.yaml", "sqlite://airlock.db", upstream, hook)
}

/// [`config`] in file `name`, on `store`.
fn config_named(ws: &Workspace, name: &str, store: &str, upstream: &str, hook: &str) -> PathBuf {
    ws.write("rules/r.yaml", RULES);
    let identities = identities_yaml().replace(
        "  - id: dave@example.com\n",
        "  - id: dave@example.com\n    groups: [leads]\n",
    );
    assert!(identities.contains("groups: [leads]"));
    let audit = name.replace(".yaml", "-audit.jsonl");
    ws.write(
        name,
        &format!(
            r#"listen: 127.0.0.1:0
admin:
  listen: 127.0.0.1:0
store: "{store}"
rules: rules/
upstreams:
  - name: api
    prefix: /api
    url: {upstream}
    timeout: 5s
{identities}channels:
  webhook:
    url: {hook}
    secret: {SECRET}
audit:
  file: {audit}
"#
        ),
    )
}

async fn start(r: &Receiver) -> (Upstream, Workspace, InProcess, PathBuf) {
    let up = Upstream::start().await;
    let ws = Workspace::new();
    let cfg = config(&ws, &up.url(), &r.url());
    let a = InProcess::start(&cfg).await;
    (up, ws, a, cfg)
}

/// The id of the pending approval whose URL is `url`.
fn id_for(list: &[Value], url: &str) -> String {
    id_of(
        list.iter()
            .find(|ap| ap["url"] == url)
            .unwrap_or_else(|| panic!("no pending approval for {url} in {list:?}")),
    )
}

/// Accepted `reminded` events about `id`.
fn reminders(r: &Receiver, id: &str) -> Vec<Value> {
    r.events_of(id)
        .into_iter()
        .filter(|e| e["type"] == "dev.airlock.approval.reminded")
        .collect()
}

/// The whole audit log, as `airlock audit export` writes it.
async fn audit_export(cfg: &std::path::Path) -> Vec<Value> {
    let (code, out, err) =
        run_cli_blocking(&["audit", "export", "-c", cfg.to_str().unwrap()], &[]).await;
    assert_eq!(code, 0, "audit export: {err}");
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecided_approvals_are_reminded_until_decided() {
    let r = Receiver::start(SECRET).await;
    let (_up, ws, a, cfg) = start(&r).await;
    let first = agent_spawn(&a, "POST", "/api/v1/things/a", r#"{"name":"a"}"#);
    let second = agent_spawn(&a, "POST", "/api/v1/things/b", r#"{"name":"b"}"#);
    let list = wait_pending(&a, 2).await;
    let (a_id, b_id) = (id_for(&list, "/v1/things/a"), id_for(&list, "/v1/things/b"));

    // Reminded while undecided, more than once.
    let got = r
        .wait_for("two reminders", |_| {
            let got = reminders(&r, &a_id);
            (got.len() >= 2).then_some(got)
        })
        .await;
    for e in &got {
        assert_eq!(e["subject"], a_id.as_str());
        assert_eq!(e["data"]["status"], "pending");
        assert_eq!(e["data"]["event"]["kind"], "reminded");
        let mention = e["data"]["mention"].to_string();
        assert!(
            mention.contains("bob@example.com") && mention.contains("carol@example.com"),
            "reviewers are asked again: {mention}"
        );
    }
    assert_ne!(got[0]["id"], got[1]["id"], "each reminder is its own event");
    // On the audit log.
    let audited = wait_audit_event(&ws.path().join("airlock-audit.jsonl"), "reminded", |e| {
        e["event"] == "reminded" && e["approval_id"] == a_id.as_str()
    })
    .await;
    assert!(audited["detail"]["reminder"].as_u64().unwrap() >= 1);

    // Decided: no more reminders for it, while the other one is still reminded.
    let (s, _) = vote(&a, BOB, &a_id, "approve", None).await;
    assert_eq!(s, 200);
    assert_eq!(first.await.unwrap().status, 200);
    r.wait_event(&a_id, "forwarded").await;
    let b_before = reminders(&r, &b_id).len();
    r.wait_for("two more reminders of the other approval", |_| {
        (reminders(&r, &b_id).len() >= b_before + 2).then_some(())
    })
    .await;
    let a_kinds = kinds(&r.events_of(&a_id));
    let decided_at = a_kinds.iter().position(|k| k == "decided").unwrap();
    assert!(
        !a_kinds[decided_at..].iter().any(|k| k == "reminded"),
        "no reminder after the decision: {a_kinds:?}"
    );
    r.assert_all_signed();
    a.stop().await;
    drop(second);

    // The audit log agrees: the other approval was reminded at least twice after the
    // decision, the decided one never.
    let log = audit_export(&cfg).await;
    let approved_seq = log
        .iter()
        .find(|e| e["event"] == "approved" && e["approval_id"] == a_id.as_str())
        .and_then(|e| e["seq"].as_u64())
        .unwrap();
    let later = |id: &str| {
        log.iter()
            .filter(|e| e["event"] == "reminded" && e["approval_id"] == id)
            .filter(|e| e["seq"].as_u64().unwrap() > approved_seq)
            .count()
    };
    assert_eq!(later(&a_id), 0);
    assert!(later(&b_id) >= 2);
    assert_audit_intact(&cfg, "after reminders").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_escalation_lets_more_approvers_vote_and_tells_them() {
    let r = Receiver::start(SECRET).await;
    let (up, ws, a, cfg) = start(&r).await;
    let held = agent_spawn(&a, "POST", "/api/v1/db/orders", r#"{"name":"orders"}"#);
    let id = id_of(&wait_pending(&a, 1).await[0]);
    let (_, full) = approval_get(&a, BOB, &id).await;
    let created = chrono::DateTime::parse_from_rfc3339(full["created"].as_str().unwrap()).unwrap();

    // Before the escalation a lead may not vote.
    let (s, body) = vote(&a, DAVE, &id, "approve", None).await;
    let elapsed = chrono::Utc::now().signed_duration_since(created);
    assert!(
        elapsed < chrono::Duration::seconds(4),
        "the machine took {elapsed} to hold and vote: too slow to see the time before the escalation"
    );
    assert_eq!(s, 403, "{body}");
    assert_eq!(body["error"], "not_eligible", "{body}");

    // After it: the leads are told, and it is on the audit log.
    let escalated = r.wait_event(&id, "escalated").await;
    assert_eq!(escalated["data"]["event"]["to"], json!(["group:leads"]));
    assert_eq!(escalated["data"]["mention"], json!(["dave@example.com"]));
    assert_eq!(escalated["data"]["status"], "pending");
    let approvers = escalated["data"]["rules"][0]["progress"][0]["approvers"].to_string();
    assert!(approvers.contains("group:leads"), "{approvers}");
    let audited = wait_audit_event(&ws.path().join("airlock-audit.jsonl"), "escalated", |e| {
        e["event"] == "escalated" && e["approval_id"] == id.as_str()
    })
    .await;
    assert_eq!(audited["detail"]["to"], json!(["group:leads"]));

    // The lead's vote approves it now.
    let (s, body) = vote(&a, DAVE, &id, "approve", Some("lead on call")).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(held.await.unwrap().status, 200);
    assert_eq!(up.count(), 1);
    let decided = r.wait_event(&id, "decided").await;
    assert_eq!(decided["data"]["event"]["by"], "dave@example.com");
    r.wait_event(&id, "forwarded").await;
    assert_eq!(
        kinds(&r.events_of(&id)),
        ["opened", "escalated", "vote", "decided", "forwarded"]
    );
    r.assert_all_signed();
    a.stop().await;

    let log = audit_export(&cfg).await;
    let n = log
        .iter()
        .filter(|e| e["event"] == "escalated" && e["approval_id"] == id.as_str())
        .count();
    assert_eq!(n, 1, "escalated once");
    assert_audit_intact(&cfg, "after an escalation").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_postgres_remind_and_escalate_once() {
    let test = "reminders two_replicas_on_postgres";
    let Some(store) = postgres_schema("airlock_remind_pg", test).await else {
        return;
    };
    let r = Receiver::start(SECRET).await;
    let up = Upstream::start().await;
    let ws = Workspace::new();
    let cfg_a = config_named(&ws, "a.yaml", &store, &up.url(), &r.url());
    let cfg_b = config_named(&ws, "b.yaml", &store, &up.url(), &r.url());
    let a = InProcess::start(&cfg_a).await;
    let b = InProcess::start(&cfg_b).await;

    // Held on A; both replicas follow it up.
    let held = agent_spawn(&a, "POST", "/api/v1/db/orders", r#"{"name":"orders"}"#);
    let id = id_of(&wait_pending(&a, 1).await[0]);
    r.wait_event(&id, "escalated").await;
    // Reminders too (the db rule has none; a things approval held on B has).
    let other = agent_spawn(&b, "POST", "/api/v1/things/c", r#"{"name":"c"}"#);
    let other_id = id_for(&wait_pending(&b, 2).await, "/v1/things/c");
    r.wait_for("three reminders", |_| {
        (reminders(&r, &other_id).len() >= 3).then_some(())
    })
    .await;

    // Decided on B: released on A.
    let (s, body) = vote(&b, DAVE, &id, "approve", None).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(held.await.unwrap().status, 200);
    let (s, _) = vote(&a, BOB, &other_id, "deny", None).await;
    assert_eq!(s, 200);
    assert_eq!(other.await.unwrap().status, 403);
    r.wait_event(&id, "forwarded").await;
    r.wait_event(&other_id, "decided").await;
    a.stop().await;
    b.stop().await;

    // Each event delivered once, by one replica.
    let mut ids: Vec<String> = r
        .accepted()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect();
    let all = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), all, "an event was delivered twice");
    let escalations: Vec<Value> = r
        .events_of(&id)
        .into_iter()
        .filter(|e| e["type"] == "dev.airlock.approval.escalated")
        .collect();
    assert_eq!(escalations.len(), 1);
    // One audit event per escalation and per reminder, whichever replica wrote it.
    let log = audit_export(&cfg_a).await;
    let of = |kind: &str, ap: &str| -> Vec<Value> {
        log.iter()
            .filter(|e| e["event"] == kind && e["approval_id"] == ap)
            .cloned()
            .collect()
    };
    assert_eq!(of("escalated", &id).len(), 1);
    let mut ks: Vec<u64> = of("reminded", &other_id)
        .iter()
        .map(|e| e["detail"]["reminder"].as_u64().unwrap())
        .collect();
    let n = ks.len();
    assert!(n >= 3);
    ks.sort();
    ks.dedup();
    assert_eq!(ks.len(), n, "a reminder was recorded twice: {ks:?}");
    // Every reminder sealed before the decision was delivered (those after it, if a
    // pass raced the vote, may still be in the outbox when the replicas stopped).
    let denied = of("denied", &other_id)[0]["seq"].as_u64().unwrap();
    let delivered: Vec<String> = reminders(&r, &other_id)
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect();
    for e in of("reminded", &other_id) {
        let seq = e["seq"].as_u64().unwrap();
        if seq < denied {
            assert!(
                delivered.contains(&format!("{other_id}-{seq}")),
                "reminder {seq} not delivered: {delivered:?}"
            );
        }
    }
    assert_audit_intact(&cfg_a, "after two replicas followed up").await;
}
