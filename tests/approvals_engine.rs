//! The approvals engine in-process, over a real (in-memory) SQLite store and a real
//! audit log: expiry against tokio's clock, paused (a 15-minute timeout is tested in
//! milliseconds, with no real waiting and no timing luck), `require_reason`, and what
//! happens when the audit log cannot record a hold or a decision (fail closed).

use airlock::approvals::{Approvals, Clock, HoldRequest, Opened, VoteError, Waited};
use airlock::audit::{AuditLog, MemorySink};
use airlock::config::Reviewer;
use airlock::metrics::Metrics;
use airlock::rules::ApprovalPolicy;
use airlock::store::sqlite::SqliteStore;
use airlock::store::{Decision, Status, Store};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const TIMEOUT: Duration = Duration::from_secs(15 * 60);

struct Engine {
    approvals: Arc<Approvals>,
    store: Arc<dyn Store>,
    sink: Arc<MemorySink>,
    audit: AuditLog,
}

async fn engine() -> Engine {
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open_memory().unwrap());
    let sink = Arc::new(MemorySink::new());
    let (audit, _task) = AuditLog::start(sink.clone(), None, None).await.unwrap();
    let approvals = Approvals::new(
        store.clone(),
        audit.clone(),
        Arc::new(Metrics::new()),
        Clock::tokio(),
    );
    Engine {
        approvals,
        store,
        sink,
        audit,
    }
}

fn policy() -> ApprovalPolicy {
    policy_with(false)
}

fn policy_with(require_reason: bool) -> ApprovalPolicy {
    serde_json::from_value(serde_json::json!({
        "require_reason": require_reason,
        "approvers": ["group:sre"],
        "quorum": 1,
        "timeout": TIMEOUT.as_secs(),
        "reuse": 600,
        "channels": ["api"],
        "show": [],
    }))
    .unwrap()
}

fn request(digest: &str) -> HoldRequest {
    HoldRequest {
        request_id: "req_1".into(),
        agent: "deploy-bot".into(),
        owner: Some("alice@example.com".into()),
        digest: digest.into(),
        body_sha256: "0".repeat(64),
        rules: vec!["prod-delete".into()],
        policy: policy(),
        method: "DELETE".into(),
        upstream: "api".into(),
        host: None,
        url: "/v1/things/prod".into(),
        justification: None,
        show: None,
    }
}

fn bob() -> Reviewer {
    Reviewer {
        id: "bob@example.com".into(),
        groups: vec!["sre".into()],
        token_digest: None,
        slack: None,
        teams: None,
    }
}

async fn status(e: &Engine, id: &str) -> Status {
    e.store.approval(id).await.unwrap().unwrap().status
}

async fn events(e: &Engine) -> Vec<String> {
    e.audit.flush().await;
    e.sink.events().into_iter().map(|ev| ev.event).collect()
}

#[tokio::test(start_paused = true)]
async fn an_unanswered_approval_expires_at_its_timeout_not_before() {
    let e = engine().await;
    let Opened::Waiting(ticket) = e.approvals.open(request("d1")).await.unwrap() else {
        panic!("a new request is parked");
    };
    let id = ticket.approval.id.clone();
    let shutdown = CancellationToken::new();
    let approvals = e.approvals.clone();
    let parked = tokio::spawn(async move { approvals.wait(ticket, &shutdown).await });

    tokio::time::advance(TIMEOUT - Duration::from_secs(1)).await;
    assert_eq!(status(&e, &id).await, Status::Pending, "expired early");

    tokio::time::advance(Duration::from_secs(2)).await;
    let waited = parked.await.unwrap().unwrap();
    assert!(
        matches!(waited, Waited::Expired(_)),
        "parked request told it expired"
    );
    assert_eq!(status(&e, &id).await, Status::Expired);
    assert_eq!(events(&e).await, ["held", "expired"]);
}

#[tokio::test(start_paused = true)]
async fn a_late_vote_finds_the_approval_expired_even_with_no_sweeper() {
    let e = engine().await;
    let Opened::Waiting(ticket) = e.approvals.open(request("d2")).await.unwrap() else {
        panic!("a new request is parked");
    };
    let id = ticket.approval.id.clone();
    drop(ticket); // the client went away

    tokio::time::advance(TIMEOUT + Duration::from_secs(1)).await;
    let late = e
        .approvals
        .vote(&id, &bob(), Decision::Approve, Some("ok".into()))
        .await;
    assert!(
        matches!(late, Err(VoteError::AlreadyDecided(Status::Expired))),
        "{late:?}"
    );
    assert_eq!(status(&e, &id).await, Status::Expired);
    assert!(!events(&e).await.contains(&"approved".to_string()));
}

#[tokio::test(start_paused = true)]
async fn a_vote_in_time_releases_the_parked_request_once() {
    let e = engine().await;
    let Opened::Waiting(ticket) = e.approvals.open(request("d3")).await.unwrap() else {
        panic!("a new request is parked");
    };
    let id = ticket.approval.id.clone();
    let shutdown = CancellationToken::new();
    let approvals = e.approvals.clone();
    let parked = tokio::spawn(async move { approvals.wait(ticket, &shutdown).await });

    tokio::time::advance(TIMEOUT - Duration::from_secs(60)).await;
    let a = e
        .approvals
        .vote(&id, &bob(), Decision::Approve, None)
        .await
        .unwrap();
    assert_eq!(a.status, Status::Approved);
    let waited = parked.await.unwrap().unwrap();
    assert!(matches!(waited, Waited::Forward(_)));
    assert_eq!(status(&e, &id).await, Status::Consumed);
    assert_eq!(events(&e).await, ["held", "vote", "approved"]);
}

#[tokio::test(start_paused = true)]
async fn a_rule_that_requires_a_reason_refuses_a_vote_without_one() {
    let e = engine().await;
    let mut req = request("d4");
    req.policy = policy_with(true);
    let Opened::Waiting(ticket) = e.approvals.open(req).await.unwrap() else {
        panic!("a new request is parked");
    };
    let id = ticket.approval.id.clone();
    for empty in [None, Some("   ".to_string())] {
        let r = e
            .approvals
            .vote(&id, &bob(), Decision::Approve, empty)
            .await;
        assert!(matches!(r, Err(VoteError::ReasonRequired)), "{r:?}");
    }
    assert_eq!(status(&e, &id).await, Status::Pending);
    let a = e
        .approvals
        .vote(&id, &bob(), Decision::Approve, Some("change window".into()))
        .await
        .unwrap();
    assert_eq!(a.status, Status::Approved);
    assert_eq!(a.votes[0].reason.as_deref(), Some("change window"));
}

#[tokio::test(start_paused = true)]
async fn a_hold_the_log_cannot_record_leaves_nothing_to_approve() {
    let e = engine().await;
    e.sink.set_failing(true);
    let r = e.approvals.open(request("d5")).await;
    assert!(r.is_err(), "the hold is refused");
    e.sink.set_failing(false);
    let pending = e.store.approvals(Some(Status::Pending), 10).await.unwrap();
    assert!(
        pending.is_empty(),
        "no approval a reviewer could act on: {pending:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_decision_the_log_cannot_record_is_withdrawn_and_never_used() {
    let e = engine().await;
    let Opened::Waiting(ticket) = e.approvals.open(request("d6")).await.unwrap() else {
        panic!("a new request is parked");
    };
    let id = ticket.approval.id.clone();
    let shutdown = CancellationToken::new();
    let approvals = e.approvals.clone();
    let parked = tokio::spawn(async move { approvals.wait(ticket, &shutdown).await });

    // The vote event gets in; then the log fails before the decision is recorded.
    e.sink.fail_after(events(&e).await.len() + 1);
    let r = e.approvals.vote(&id, &bob(), Decision::Approve, None).await;
    e.sink.fail_after(0);
    assert!(matches!(r, Err(VoteError::Audit(_))), "{r:?}");
    assert!(
        matches!(parked.await.unwrap().unwrap(), Waited::Denied(_)),
        "the parked request is not forwarded"
    );
    assert_eq!(status(&e, &id).await, Status::Cancelled);
    // An identical retry opens a new approval instead of using the withdrawn one.
    match e.approvals.open(request("d6")).await.unwrap() {
        Opened::Reused(_) => panic!("forwarded on a decision the log does not show"),
        Opened::Waiting(t) => assert_ne!(t.approval.id, id),
    }
}
