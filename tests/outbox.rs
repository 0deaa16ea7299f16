//! The notification outbox, against both stores (SQLite and PostgreSQL; skipped
//! without PostgreSQL except in CI): every approval lifecycle event sealed onto the
//! audit chain leaves one row per configured channel, in the same transaction;
//! non-lifecycle events leave none; rows of one
//! approval and channel are handed out in order, one at a time, each to one airlock
//! instance (replicas claiming at once never both get a row); a failed attempt waits
//! for its retry time; a lease that ran out lets another instance retry; and
//! `mark_once` records a reminder or escalation once across replicas.

mod common;

use airlock::audit::AuditEvent;
use airlock::rules::ApprovalPolicy;
use airlock::store::{self, Approval, Decision, Settle, Status, Store, Vote, VoteAudit};
use chrono::{Duration as CDuration, Utc};
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

fn approval(id: &str) -> Approval {
    let now = Utc::now();
    Approval {
        id: id.into(),
        status: Status::Pending,
        agent: "deploy-bot".into(),
        owner: None,
        digest: format!("digest-{id}"),
        body_sha256: "e3b0".into(),
        rules: vec!["prod-delete".into()],
        policy: ApprovalPolicy {
            approvers: vec!["group:sre".into()],
            quorum: 1,
            requirements: vec![],
            timeout: Duration::from_secs(60),
            reuse: Duration::from_secs(600),
            channels: vec![],
            show: vec![],
            require_reason: false,
            remind: None,
            escalate: None,
        },
        method: "DELETE".into(),
        upstream: "cloud".into(),
        host: None,
        url: "/v1/x".into(),
        justification: None,
        show: None,
        request_id: format!("req-{id}"),
        created: now,
        expires: now + CDuration::seconds(60),
        decided: None,
        decided_by: None,
        reason: None,
        consumed: None,
        forwarder: None,
        requester: Default::default(),
        votes: vec![],
    }
}

fn event(name: &str, id: &str) -> AuditEvent {
    let mut e = AuditEvent::new(name);
    e.approval_id = Some(id.to_string());
    e
}

/// Holds `id` (its `held` event sealed with it).
async fn hold(s: &Arc<dyn Store>, id: &str) {
    let opened = s
        .open_approval(&approval(id), Some(event("held", id)), None)
        .await
        .unwrap();
    assert!(opened.is_none(), "a fresh approval");
}

/// Approves `id` with one vote (its `vote` and `approved` events).
async fn approve(s: &Arc<dyn Store>, id: &str) {
    let v = Vote {
        reviewer: "bob".into(),
        decision: Decision::Approve,
        reason: None,
        time: Utc::now(),
        groups: vec![],
    };
    let audit = VoteAudit {
        vote: event("vote", id),
        approved: event("approved", id),
        denied: event("denied", id),
        expired: event("expired", id),
    };
    s.vote(
        id,
        &v,
        &airlock::store::Quorum::any(1),
        Utc::now(),
        &audit,
        None,
    )
    .await
    .unwrap();
}

fn done() -> Settle {
    Settle::Done {
        outcome: "delivered",
    }
}

/// Claims everything claimable now for `me` (with a one-minute lease).
async fn claim(s: &Arc<dyn Store>, me: &str) -> Vec<airlock::store::OutboxItem> {
    let now = Utc::now();
    s.outbox_claim(me, now, now + CDuration::seconds(60), 100)
        .await
        .unwrap()
}

async fn contract(s: Arc<dyn Store>) {
    s.set_outbox_channels(vec!["slack".into(), "webhook".into()]);
    hold(&s, "ap_1").await;
    approve(&s, "ap_1").await;
    // Not lifecycle events: no rows.
    s.audit_seal_append(
        vec![AuditEvent::new("passed"), event("vote_refused", "ap_1")],
        None,
    )
    .await
    .unwrap();
    let counts = s.outbox_counts().await.unwrap();
    assert_eq!(
        counts.pending, 6,
        "held, vote, approved × slack, webhook: {counts:?}"
    );

    // One row per approval and channel at a time, the oldest first.
    let a = claim(&s, "airlock-a").await;
    let got: Vec<(String, String)> = a
        .iter()
        .map(|i| (i.channel.clone(), i.event.event.clone()))
        .collect();
    assert_eq!(
        got,
        [
            ("slack".to_string(), "held".to_string()),
            ("webhook".to_string(), "held".to_string())
        ]
    );
    assert!(
        a.iter()
            .all(|i| i.event.seq > 0 && i.event.hash.len() == 64),
        "sealed events"
    );
    // Leased: another instance gets nothing, and neither does the next row.
    assert!(claim(&s, "airlock-b").await.is_empty());

    // Settled: the next row of that approval and channel comes out, in order.
    let slack_held = a.iter().find(|i| i.channel == "slack").unwrap();
    s.outbox_settle(slack_held.id, "airlock-a", Utc::now(), &done())
        .await
        .unwrap();
    let b = claim(&s, "airlock-b").await;
    assert_eq!(b.len(), 1);
    assert_eq!(
        (b[0].channel.as_str(), b[0].event.event.as_str()),
        ("slack", "vote")
    );

    // A settle by an instance that does not hold the lease changes nothing.
    s.outbox_settle(b[0].id, "airlock-a", Utc::now(), &done())
        .await
        .unwrap();
    assert_eq!(s.outbox_counts().await.unwrap().delivered, 1);

    // A failed attempt waits for its retry time, then comes out again, counted.
    s.outbox_settle(
        b[0].id,
        "airlock-b",
        Utc::now(),
        &Settle::Retry {
            at: Utc::now() + CDuration::milliseconds(300),
            error: "HTTP 503".into(),
        },
    )
    .await
    .unwrap();
    assert!(
        claim(&s, "airlock-a").await.is_empty(),
        "not before its time"
    );
    let again = common::eventually(10, || {
        let s = s.clone();
        async move {
            let c = claim(&s, "airlock-a").await;
            (!c.is_empty()).then_some(c)
        }
    })
    .await;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].id, b[0].id);
    assert_eq!(again[0].attempts, 1);

    // A lease that ran out (its instance died mid-delivery) lets another retry.
    let now = Utc::now();
    s.outbox_settle(again[0].id, "airlock-a", now, &done())
        .await
        .unwrap();
    let short = s
        .outbox_claim("airlock-a", now, now - CDuration::seconds(1), 100)
        .await
        .unwrap();
    assert_eq!(short.len(), 1, "slack approved");
    let taken = claim(&s, "airlock-b").await;
    assert_eq!(taken.len(), 1);
    assert_eq!(taken[0].id, short[0].id);

    // Given up: done, counted as failed, and the next row may go.
    s.outbox_settle(
        taken[0].id,
        "airlock-b",
        Utc::now(),
        &Settle::Failed {
            error: "invalid_auth".into(),
        },
    )
    .await
    .unwrap();
    let c = s.outbox_counts().await.unwrap();
    assert_eq!((c.delivered, c.failed), (2, 1), "{c:?}");

    // Message references: stored per approval and channel, replaced.
    assert_eq!(s.message_ref("ap_1", "slack").await.unwrap(), None);
    s.set_message_ref("ap_1", "slack", r#"{"ts":"1"}"#)
        .await
        .unwrap();
    s.set_message_ref("ap_1", "slack", r#"{"ts":"2"}"#)
        .await
        .unwrap();
    assert_eq!(
        s.message_ref("ap_1", "slack").await.unwrap().as_deref(),
        Some(r#"{"ts":"2"}"#)
    );
    assert_eq!(s.message_ref("ap_1", "teams").await.unwrap(), None);

    // A mark is recorded once, with its event (and that event's outbox rows), and
    // only while the approval is pending.
    let mark = |id: &'static str, m: &'static str, ev: &'static str| {
        let s = s.clone();
        async move {
            s.mark_once(id, m, Utc::now(), event(ev, id), None)
                .await
                .unwrap()
        }
    };
    assert!(
        !mark("ap_1", "remind:1", "reminded").await,
        "ap_1 is decided"
    );
    hold(&s, "ap_4").await;
    let before = s.outbox_counts().await.unwrap().pending;
    assert!(mark("ap_4", "remind:1", "reminded").await);
    assert!(!mark("ap_4", "remind:1", "reminded").await);
    assert_eq!(s.marks_of("ap_4").await.unwrap(), ["remind:1"]);
    assert!(s.marks_of("ap_1").await.unwrap().is_empty());
    assert_eq!(s.outbox_counts().await.unwrap().pending, before + 2);
    let reminded = s
        .audit_events_of("ap_4")
        .await
        .unwrap()
        .iter()
        .filter(|e| e.event == "reminded")
        .count();
    assert_eq!(reminded, 1);

    // Settled rows are pruned once old enough; pending ones never.
    let c = s.outbox_counts().await.unwrap();
    assert_eq!(
        s.outbox_prune(Utc::now() - CDuration::hours(1))
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        s.outbox_prune(Utc::now() + CDuration::seconds(1))
            .await
            .unwrap(),
        c.delivered + c.failed
    );
    assert_eq!(s.outbox_counts().await.unwrap().pending, c.pending);

    // Recent decisions of the same agent and rule: decided ones only, not `except`.
    hold(&s, "ap_3").await;
    let recent = s
        .recent_decisions("deploy-bot", "prod-delete", "ap_3", 5)
        .await
        .unwrap();
    let ids: Vec<&str> = recent.iter().map(|a| a.id.as_str()).collect();
    assert_eq!(ids, ["ap_1"], "ap_3 is pending");
    assert!(s
        .recent_decisions("deploy-bot", "other-rule", "ap_3", 5)
        .await
        .unwrap()
        .is_empty());

    // No channels configured: no rows.
    s.set_outbox_channels(vec![]);
    let before = s.outbox_counts().await.unwrap().pending;
    hold(&s, "ap_2").await;
    assert_eq!(s.outbox_counts().await.unwrap().pending, before);
}

/// Two instances drain one outbox at once: every row delivered exactly once, and the
/// rows of each approval and channel in seq order.
async fn racing_instances(a: Arc<dyn Store>, b: Arc<dyn Store>) {
    a.set_outbox_channels(vec!["slack".into(), "webhook".into()]);
    for i in 0..12 {
        let id = format!("race_{i}");
        hold(&a, &id).await;
        approve(&a, &id).await;
    }
    let total = a.outbox_counts().await.unwrap().pending;
    assert_eq!(total, 12 * 3 * 2);
    let drain = |s: Arc<dyn Store>, me: &'static str| async move {
        let mut got = Vec::new();
        let deadline = std::time::Instant::now() + common::DEADLINE;
        loop {
            let items = claim(&s, me).await;
            if items.is_empty() {
                if s.outbox_counts().await.unwrap().pending == 0 {
                    return got;
                }
                assert!(std::time::Instant::now() < deadline, "outbox not drained");
                tokio::task::yield_now().await;
                continue;
            }
            for it in items {
                s.outbox_settle(it.id, me, Utc::now(), &done())
                    .await
                    .unwrap();
                got.push(it);
            }
        }
    };
    let (x, y) = tokio::join!(
        tokio::spawn(drain(a.clone(), "airlock-a")),
        tokio::spawn(drain(b.clone(), "airlock-b"))
    );
    let (x, y) = (x.unwrap(), y.unwrap());
    let mut ids = HashSet::new();
    for it in x.iter().chain(&y) {
        assert!(ids.insert(it.id), "row {} delivered twice", it.id);
    }
    assert_eq!(ids.len() as u64, total, "every row delivered");
    // Per approval and channel, deliveries happen in seq order (settled before the
    // next is handed out, so the union ordered by row id is the delivery order).
    let mut by_key: BTreeMap<(String, String), Vec<u64>> = BTreeMap::new();
    let mut all: Vec<_> = x.iter().chain(&y).collect();
    all.sort_by_key(|i| i.id);
    for it in all {
        by_key
            .entry((it.approval_id.clone(), it.channel.clone()))
            .or_default()
            .push(it.event.seq);
    }
    for (k, seqs) in by_key {
        let mut sorted = seqs.clone();
        sorted.sort();
        assert_eq!(seqs, sorted, "{k:?} out of order");
        assert_eq!(seqs.len(), 3, "{k:?}");
    }
    // And a mark racing on both instances is recorded once.
    hold(&a, "race_pending").await;
    let (m1, m2) = tokio::join!(
        a.mark_once(
            "race_pending",
            "escalate",
            Utc::now(),
            event("escalated", "race_pending"),
            None
        ),
        b.mark_once(
            "race_pending",
            "escalate",
            Utc::now(),
            event("escalated", "race_pending"),
            None
        )
    );
    assert!(
        m1.unwrap() ^ m2.unwrap(),
        "exactly one instance recorded it"
    );
}

#[tokio::test]
async fn sqlite_outbox_keeps_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    let s: Arc<dyn Store> =
        Arc::new(store::sqlite::SqliteStore::open(&dir.path().join("a.db")).unwrap());
    contract(s).await;
}

#[tokio::test]
async fn sqlite_outbox_rows_go_to_one_instance_each() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.db");
    let a: Arc<dyn Store> = Arc::new(store::sqlite::SqliteStore::open(&path).unwrap());
    let b: Arc<dyn Store> = Arc::new(store::sqlite::SqliteStore::open(&path).unwrap());
    racing_instances(a, b).await;
}

#[tokio::test]
async fn postgres_outbox_keeps_the_contract() {
    let Some(url) = common::postgres_schema("airlock_t_outbox", "outbox postgres").await else {
        return;
    };
    let s = store::open(&url, &std::env::temp_dir()).await.unwrap();
    contract(s).await;
}

#[tokio::test]
async fn postgres_outbox_rows_go_to_one_replica_each() {
    let Some(url) = common::postgres_schema("airlock_t_outbox_race", "outbox race").await else {
        return;
    };
    let a = store::open(&url, &std::env::temp_dir()).await.unwrap();
    let b = store::open(&url, &std::env::temp_dir()).await.unwrap();
    racing_instances(a, b).await;
}
