//! The store contract, run against both backends: the embedded SQLite store and
//! PostgreSQL (127.0.0.1:5432, database `test`, one fresh schema per test; or
//! `AIRLOCK_TEST_PG_URL`). Without a reachable PostgreSQL its tests are skipped with a
//! message on stderr, except in CI (`CI` set), where they fail.

mod common;

use airlock::audit::{
    generate_signing_key_pem, verify, AuditEvent, Chain, CheckpointSigner, GENESIS_HASH,
};
use airlock::rules::ApprovalPolicy;
use airlock::store::{self, Approval, Decision, Status, Store, Vote, VoteAudit, VoteResult};
use chrono::{Duration as CDuration, Utc};
use std::sync::Arc;
use std::time::Duration;

/// A PostgreSQL store in a schema of its own: (store, its URL); `None` when the test is
/// skipped for want of a server (see [`common::postgres_or_skip`]).
async fn postgres_store(name: &str) -> Option<(Arc<dyn Store>, String)> {
    let url = common::postgres_schema(
        &format!("airlock_t_{name}"),
        &format!("store_contract postgres {name}"),
    )
    .await?;
    let tmp = std::env::temp_dir();
    Some((store::open(&url, &tmp).await.unwrap(), url))
}

fn sqlite_store() -> (Arc<dyn Store>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("airlock.db");
    let s: Arc<dyn Store> = Arc::new(store::sqlite::SqliteStore::open(&path).unwrap());
    (s, dir)
}

fn approval(id: &str, quorum: u32, expires_in: i64) -> Approval {
    let now = Utc::now();
    Approval {
        id: id.into(),
        status: Status::Pending,
        agent: "deploy-bot".into(),
        owner: Some("alice@example.com".into()),
        digest: format!("digest-{id}"),
        body_sha256: "e3b0".into(),
        rules: vec!["prod-delete".into()],
        policy: ApprovalPolicy {
            approvers: vec!["group:sre".into()],
            quorum,
            requirements: vec![],
            timeout: Duration::from_secs(60),
            reuse: Duration::from_secs(600),
            channels: vec!["api".into()],
            show: vec![],
            require_reason: false,
            remind: None,
            escalate: None,
        },
        method: "DELETE".into(),
        upstream: "cloud".into(),
        host: None,
        url: "/v1/x".into(),
        justification: Some("why".into()),
        show: Some(serde_json::json!({"/name": "vm-7"})),
        request_id: "req_1".into(),
        created: now,
        expires: now + CDuration::seconds(expires_in),
        decided: None,
        decided_by: None,
        reason: None,
        consumed: None,
        forwarder: None,
        requester: Default::default(),
        votes: vec![],
    }
}

/// Casts a vote the way the approvals engine does: with the events it seals.
async fn cast(
    s: &Arc<dyn Store>,
    id: &str,
    v: &Vote,
    quorum: u32,
    now: chrono::DateTime<Utc>,
) -> VoteResult {
    let ev = |name: &str| {
        let mut e = AuditEvent::new(name);
        e.approval_id = Some(id.to_string());
        e.reviewer = Some(v.reviewer.clone());
        e
    };
    let audit = VoteAudit {
        vote: ev("vote"),
        approved: ev("approved"),
        denied: ev("denied"),
        expired: ev("expired"),
    };
    s.vote(
        id,
        v,
        &airlock::store::Quorum::any(quorum),
        now,
        &audit,
        None,
    )
    .await
    .unwrap()
}

/// The names of the audit events naming an approval, in order.
async fn events_of(s: &Arc<dyn Store>, id: &str) -> Vec<String> {
    s.audit_events_of(id)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.event)
        .collect()
}

fn vote(who: &str, d: Decision) -> Vote {
    Vote {
        reviewer: who.into(),
        decision: d,
        reason: Some(format!("{who} says so")),
        time: Utc::now(),
        groups: vec![],
    }
}

/// A group quorum: votes count when their recorded groups name the group (a group
/// an OIDC token gave the reviewer), and the store keeps who asked and how.
async fn groups_and_requester(s: &Arc<dyn Store>) {
    let mut a = approval("ap_g", 2, 60);
    a.requester = airlock::store::Requester {
        auth: "jwt".into(),
        acting_for: Some("alice@example.com".into()),
        client: Some("10.0.0.7".into()),
    };
    s.insert_approval(&a).await.unwrap();
    assert_eq!(
        s.approval("ap_g").await.unwrap().unwrap().requester,
        a.requester
    );
    let quorum = airlock::store::Quorum {
        needs: vec![airlock::store::Need {
            quorum: 2,
            eligible: vec![],
            groups: vec!["dba".into()],
        }],
    };
    let audit = VoteAudit {
        vote: AuditEvent::new("vote"),
        approved: AuditEvent::new("approved"),
        denied: AuditEvent::new("denied"),
        expired: AuditEvent::new("expired"),
    };
    let as_member = |who: &str, groups: &[&str]| Vote {
        groups: groups.iter().map(|g| g.to_string()).collect(),
        ..vote(who, Decision::Approve)
    };
    let cast = |v: Vote| {
        let (s, quorum, audit) = (s.clone(), quorum.clone(), audit.clone());
        async move {
            s.vote("ap_g", &v, &quorum, Utc::now(), &audit, None)
                .await
                .unwrap()
        }
    };
    assert_eq!(
        cast(as_member("x", &["dba"])).await,
        VoteResult::Recorded(Status::Pending)
    );
    assert_eq!(
        cast(as_member("y", &["readers"])).await,
        VoteResult::Recorded(Status::Pending),
        "a vote outside the group does not count"
    );
    assert_eq!(
        cast(as_member("z", &["readers", "dba"])).await,
        VoteResult::Recorded(Status::Approved)
    );
    let got = s.approval("ap_g").await.unwrap().unwrap();
    let x = got.votes.iter().find(|v| v.reviewer == "x").unwrap();
    assert_eq!(x.groups, ["dba"]);
}

async fn lifecycle(s: Arc<dyn Store>) {
    s.ping().await.unwrap();
    let a = approval("ap_1", 2, 60);
    s.insert_approval(&a).await.unwrap();
    let got = s.approval("ap_1").await.unwrap().unwrap();
    assert_eq!(got.show, a.show);
    assert_eq!(got.policy, a.policy);
    assert_eq!(
        s.find_active("deploy-bot", "digest-ap_1")
            .await
            .unwrap()
            .unwrap()
            .id,
        "ap_1"
    );
    assert!(s
        .find_active("other", "digest-ap_1")
        .await
        .unwrap()
        .is_none());

    let now = Utc::now();
    assert_eq!(
        cast(&s, "ap_1", &vote("bob", Decision::Approve), 2, now).await,
        VoteResult::Recorded(Status::Pending)
    );
    assert_eq!(
        cast(&s, "ap_1", &vote("bob", Decision::Approve), 2, now).await,
        VoteResult::AlreadyVoted
    );
    assert_eq!(
        cast(&s, "ap_1", &vote("carol", Decision::Approve), 2, now).await,
        VoteResult::Recorded(Status::Approved)
    );
    assert_eq!(
        cast(&s, "ap_1", &vote("dan", Decision::Deny), 2, now).await,
        VoteResult::AlreadyDecided(Status::Approved)
    );
    let got = s.approval("ap_1").await.unwrap().unwrap();
    assert_eq!(got.status, Status::Approved);
    assert_eq!(got.votes.len(), 2);
    assert_eq!(got.decided_by.as_deref(), Some("carol"));
    assert_eq!(
        s.approvals(Some(Status::Approved), 10).await.unwrap().len(),
        1
    );
    assert_eq!(
        s.approvals(Some(Status::Pending), 10).await.unwrap().len(),
        0
    );

    // The vote, the decision and their events are one transaction; a repeated vote
    // writes nothing.
    assert_eq!(events_of(&s, "ap_1").await, ["vote", "vote", "approved"]);

    // Claimed for forwarding exactly once, even when raced; the claim names its forwarder.
    let mut tasks = Vec::new();
    for i in 0..8 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            s.claim("ap_1", &format!("inst-{i}"), Utc::now())
                .await
                .unwrap()
        }));
    }
    let mut won = 0;
    for t in tasks {
        won += t.await.unwrap() as usize;
    }
    assert_eq!(won, 1, "an approval must be claimed exactly once");
    let claimed = s.approval("ap_1").await.unwrap().unwrap();
    assert_eq!(claimed.status, Status::Forwarding);
    assert!(claimed.forwarder.is_some_and(|f| f.starts_with("inst-")));
    assert!(claimed.consumed.is_some());
    let decided = claimed.decided;
    // Settled: consumed; the decision keeps its time.
    assert!(s
        .transition(
            "ap_1",
            Status::Forwarding,
            Status::Consumed,
            Utc::now(),
            None
        )
        .await
        .unwrap());
    assert_eq!(s.approval("ap_1").await.unwrap().unwrap().decided, decided);
    assert!(s
        .find_active("deploy-bot", "digest-ap_1")
        .await
        .unwrap()
        .is_none());

    // One deny denies; the reason is kept.
    s.insert_approval(&approval("ap_2", 2, 60)).await.unwrap();
    assert_eq!(
        cast(&s, "ap_2", &vote("bob", Decision::Deny), 2, Utc::now()).await,
        VoteResult::Recorded(Status::Denied)
    );
    assert_eq!(
        s.approval("ap_2").await.unwrap().unwrap().reason.as_deref(),
        Some("bob says so")
    );

    // Past its expiry: a vote expires it instead of counting.
    s.insert_approval(&approval("ap_3", 1, -1)).await.unwrap();
    assert_eq!(s.due(Utc::now()).await.unwrap(), vec!["ap_3".to_string()]);
    assert_eq!(
        cast(&s, "ap_3", &vote("bob", Decision::Approve), 1, Utc::now()).await,
        VoteResult::ExpiredNow
    );
    assert!(s.due(Utc::now()).await.unwrap().is_empty());
    assert_eq!(events_of(&s, "ap_3").await, ["expired"]);

    // A state change and its event in one transaction; no event when the change lost.
    let mut ev = AuditEvent::new("outcome_unknown");
    ev.approval_id = Some("ap_2".into());
    assert!(!s
        .transition_audited(
            "ap_2",
            Status::Forwarding,
            Status::OutcomeUnknown,
            Utc::now(),
            None,
            Some(ev.clone()),
            None
        )
        .await
        .unwrap());
    assert_eq!(events_of(&s, "ap_2").await, ["vote", "denied"]);

    // An approval whose forward has an unknown outcome is what an identical retry finds.
    s.insert_approval(&approval("ap_5", 1, 60)).await.unwrap();
    cast(&s, "ap_5", &vote("bob", Decision::Approve), 1, Utc::now()).await;
    assert!(s.claim("ap_5", "inst-x", Utc::now()).await.unwrap());
    let mut ev = AuditEvent::new("outcome_unknown");
    ev.approval_id = Some("ap_5".into());
    assert!(s
        .transition_audited(
            "ap_5",
            Status::Forwarding,
            Status::OutcomeUnknown,
            Utc::now(),
            None,
            Some(ev),
            None
        )
        .await
        .unwrap());
    assert_eq!(
        events_of(&s, "ap_5").await,
        ["vote", "approved", "outcome_unknown"]
    );
    let found = s
        .find_active("deploy-bot", "digest-ap_5")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.status, Status::OutcomeUnknown);
    assert_eq!(
        cast(&s, "nope", &vote("bob", Decision::Approve), 1, Utc::now()).await,
        VoteResult::NotFound
    );

    // Identical requests open one approval, even when raced (on any replica), and
    // only that one's `held` event is written.
    let mut tasks = Vec::new();
    for i in 0..6 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let mut a = approval(&format!("ap_same_{i}"), 1, 60);
            a.digest = "digest-same".into();
            let mut held = AuditEvent::new("held");
            held.approval_id = Some(a.id.clone());
            s.open_approval(&a, Some(held), None).await.unwrap()
        }));
    }
    let mut opened = Vec::new();
    let mut joined = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            None => opened.push(()),
            Some(id) => joined.push(id),
        }
    }
    assert_eq!(opened.len(), 1, "one approval opened");
    let the_one = s
        .find_active("deploy-bot", "digest-same")
        .await
        .unwrap()
        .unwrap()
        .id;
    assert!(joined.iter().all(|id| *id == the_one), "{joined:?}");
    let helds = s
        .audit_events(None)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| {
            e.approval_id
                .as_deref()
                .is_some_and(|a| a.starts_with("ap_same_"))
        })
        .count();
    assert_eq!(helds, 1);

    // Racing reviewers on quorum 1: exactly one decides it.
    s.insert_approval(&approval("ap_4", 1, 60)).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..8 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            cast(
                &s,
                "ap_4",
                &vote(&format!("r{i}"), Decision::Approve),
                1,
                Utc::now(),
            )
            .await
        }));
    }
    let mut approved = 0;
    for t in tasks {
        if t.await.unwrap() == VoteResult::Recorded(Status::Approved) {
            approved += 1;
        }
    }
    assert_eq!(approved, 1);
}

async fn audit_chain(s: Arc<dyn Store>) {
    assert_eq!(s.audit_head().await.unwrap(), (0, GENESIS_HASH.to_string()));
    let mut chain = Chain::genesis();
    let mut batch = Vec::new();
    for i in 0..5 {
        let mut ev = AuditEvent::new("held");
        ev.approval_id = Some(format!("ap_{i}"));
        chain.seal(&mut ev);
        batch.push(ev);
    }
    s.audit_append(&batch, None).await.unwrap();
    let (seq, hash) = s.audit_head().await.unwrap();
    assert_eq!((seq, hash.as_str()), (5, chain.head()));
    // A batch that does not continue the chain is refused (another writer got there first).
    assert!(s.audit_append(&batch[..1], None).await.is_err());
    let events = s.audit_events(None).await.unwrap();
    assert_eq!(events, batch);
    assert!(verify(&events, &[], None).ok());
    let later = s
        .audit_events(Some(Utc::now() + CDuration::hours(1)))
        .await
        .unwrap();
    assert!(later.is_empty());

    // A live writer hands the store unsealed events: it seals them on the stored head,
    // inside its transaction, and signs a checkpoint over the new head.
    let signer = CheckpointSigner::from_pem_str(&generate_signing_key_pem()).unwrap();
    let unsealed: Vec<AuditEvent> = (0..3)
        .map(|i| {
            let mut ev = AuditEvent::new("passed");
            ev.request_id = Some(format!("req_{i}"));
            ev
        })
        .collect();
    let sealed = s.audit_seal_append(unsealed, Some(&signer)).await.unwrap();
    let seqs: Vec<u64> = sealed.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [6, 7, 8]);
    assert_eq!(sealed[0].prev_hash, chain.head());
    assert_eq!(s.audit_head().await.unwrap(), (8, sealed[2].hash.clone()));
    assert!(s
        .audit_seal_append(Vec::new(), Some(&signer))
        .await
        .unwrap()
        .is_empty());
    let events = s.audit_events(None).await.unwrap();
    assert_eq!(&events[5..], &sealed[..]);
    let checkpoints = s.audit_checkpoints().await.unwrap();
    assert_eq!(
        checkpoints.len(),
        1,
        "one checkpoint, none for the empty batch"
    );
    assert_eq!(
        (checkpoints[0].seq, &checkpoints[0].hash),
        (8, &sealed[2].hash)
    );
    let report = verify(&events, &checkpoints, Some(&signer.verifying_key()));
    assert!(report.ok(), "{report}");
}

#[tokio::test]
async fn sqlite_store_keeps_the_contract() {
    let (s, _dir) = sqlite_store();
    lifecycle(s.clone()).await;
    groups_and_requester(&s).await;
}

#[tokio::test]
async fn sqlite_audit_chain() {
    let (s, _dir) = sqlite_store();
    audit_chain(s).await;
}

#[tokio::test]
async fn sqlite_survives_reopen() {
    let (s, dir) = sqlite_store();
    s.insert_approval(&approval("ap_r", 1, 60)).await.unwrap();
    drop(s);
    let again = store::sqlite::SqliteStore::open(&dir.path().join("airlock.db")).unwrap();
    assert_eq!(
        again.approval("ap_r").await.unwrap().unwrap().status,
        Status::Pending
    );
}

#[tokio::test]
async fn postgres_store_keeps_the_contract() {
    let Some((s, _)) = postgres_store("contract").await else {
        return;
    };
    lifecycle(s.clone()).await;
    groups_and_requester(&s).await;
}

#[tokio::test]
async fn postgres_audit_chain() {
    let Some((s, _)) = postgres_store("audit").await else {
        return;
    };
    audit_chain(s).await;
}

#[tokio::test]
async fn postgres_survives_reconnect_and_migrates_once() {
    let Some((s, url)) = postgres_store("reopen").await else {
        return;
    };
    s.insert_approval(&approval("ap_r", 1, 60)).await.unwrap();
    drop(s);
    let again = store::open(&url, &std::env::temp_dir()).await.unwrap();
    assert_eq!(
        again.approval("ap_r").await.unwrap().unwrap().status,
        Status::Pending
    );
}

/// On SQLite an instance is alive while its process holds its lock file: another
/// process on the same database file sees it alive, and gone once it stops.
#[tokio::test]
async fn sqlite_tells_a_live_instance_from_a_gone_one() {
    let (a, dir) = sqlite_store();
    let b = store::sqlite::SqliteStore::open(&dir.path().join("airlock.db")).unwrap();
    a.register_instance("airlock-a").await.unwrap();
    a.register_instance("airlock-a").await.unwrap();
    assert!(a.instance_alive("airlock-a").await.unwrap());
    assert!(b.instance_alive("airlock-a").await.unwrap());
    assert!(b.instance_alive("airlock-a").await.unwrap());
    assert!(!b.instance_alive("airlock-crashed").await.unwrap());
    drop(a);
    assert!(!b.instance_alive("airlock-a").await.unwrap());
}

/// On PostgreSQL an instance is alive while its session lives: another replica sees it
/// alive, and gone as soon as its connections close (a crash, kill -9).
#[tokio::test]
async fn postgres_tells_a_live_instance_from_a_gone_one() {
    let Some((a, url)) = postgres_store("instances").await else {
        return;
    };
    let b = store::open(&url, &std::env::temp_dir()).await.unwrap();
    a.register_instance("airlock-a").await.unwrap();
    // Idempotent: registering again keeps one mark.
    a.register_instance("airlock-a").await.unwrap();
    assert!(b.instance_alive("airlock-a").await.unwrap());
    // Asking does not take the mark: still alive for a second look.
    assert!(b.instance_alive("airlock-a").await.unwrap());
    assert!(!b.instance_alive("airlock-never-ran").await.unwrap());
    drop(a);
    let deadline = tokio::time::Instant::now() + common::DEADLINE;
    while b.instance_alive("airlock-a").await.unwrap() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "instance still alive after its store was dropped"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The proxy runs unchanged on PostgreSQL: hold, approve, forward, verify.
#[tokio::test]
async fn airlock_holds_and_forwards_with_a_postgres_store() {
    use common::*;
    let Some((_, url)) = postgres_store("e2e").await else {
        return;
    };
    let up = Upstream::start().await;
    let ws = Workspace::new();
    ws.write(
        "rules/r.yaml",
        "rules:\n  - name: del\n    when: {method: DELETE}\n    then: approve\n    approval: {approvers: [group:sre]}\n",
    );
    let cfg = ws.standard_config(&up.url(), "");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("store: sqlite://airlock.db", &format!("store: \"{url}\""));
    std::fs::write(&cfg, text).unwrap();
    let a = InProcess::start(&cfg).await;
    let held = spawn_request(agent_request(&a, AGENT_KEY, "DELETE", "/api/things/1"));
    let list = wait_any_pending(&a).await;
    assert_eq!(up.count(), 0);
    let id = id_of(&list[0]);
    let (status, _) = vote(&a, BOB, &id, "approve", None).await;
    assert_eq!(status, 200);
    let resp = held.await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(up.count(), 1);
    a.stop().await;
    let (code, out, _) = run_cli(&["audit", "verify", "-c", cfg.to_str().unwrap()], &[]);
    assert_eq!(code, 0, "{out}");
    let (_, export, _) = run_cli(&["audit", "export", "-c", cfg.to_str().unwrap()], &[]);
    let kinds: Vec<String> = export
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["event"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(kinds, ["held", "vote", "approved", "forwarded"]);
}

/// Two airlock replicas writing one PostgreSQL audit log: every event lands, in one
/// unbroken chain.
#[tokio::test]
async fn two_replicas_share_one_audit_chain_on_postgres() {
    use airlock::audit::AuditLog;
    use airlock::store::StoreSink;
    let Some((_, url)) = postgres_store("replicas").await else {
        return;
    };
    let a = store::open(&url, &std::env::temp_dir()).await.unwrap();
    let b = store::open(&url, &std::env::temp_dir()).await.unwrap();
    let (log_a, _ta) = AuditLog::start(Arc::new(StoreSink(a.clone())), None, None)
        .await
        .unwrap();
    let (log_b, _tb) = AuditLog::start(Arc::new(StoreSink(b)), None, None)
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..200 {
        let log = if i % 2 == 0 {
            log_a.clone()
        } else {
            log_b.clone()
        };
        tasks.push(tokio::spawn(async move {
            let mut ev = AuditEvent::new("passed");
            ev.request_id = Some(format!("req_{i}"));
            log.append(ev).await
        }));
    }
    for t in tasks {
        t.await.unwrap().expect("every append lands");
    }
    let events = a.audit_events(None).await.unwrap();
    assert_eq!(events.len(), 200);
    let report = verify(&events, &[], None);
    assert!(report.ok(), "{report}");
}
