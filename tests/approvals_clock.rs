//! Approval expiry against tokio's clock, paused: a 15-minute timeout is tested in
//! milliseconds, with no real waiting and no timing luck. The approvals engine runs
//! in-process over a real (in-memory) SQLite store and a real audit log.

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
    serde_json::from_value(serde_json::json!({
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
