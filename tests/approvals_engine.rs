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
use airlock::store::{Decision, Status, Store, StoreError};
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
        id: airlock::approvals::new_approval_id(),
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

/// An audit sink that holds the write of an `approved` event until the test says
/// whether it succeeds: the window between the store deciding and the log recording.
struct GatedSink {
    inner: MemorySink,
    gate: tokio::sync::Mutex<Option<tokio::sync::oneshot::Receiver<bool>>>,
}

#[async_trait::async_trait]
impl airlock::audit::AuditSink for GatedSink {
    async fn append(
        &self,
        events: &[airlock::audit::AuditEvent],
        checkpoint: Option<&airlock::audit::Checkpoint>,
    ) -> Result<(), airlock::audit::AuditError> {
        if events.iter().any(|e| e.event == "approved") {
            if let Some(rx) = self.gate.lock().await.take() {
                if !rx.await.unwrap_or(false) {
                    return Err(airlock::audit::AuditError::Store("gated: refused".into()));
                }
            }
        }
        self.inner.append(events, checkpoint).await
    }

    async fn head(&self) -> Result<(u64, String), airlock::audit::AuditError> {
        self.inner.head().await
    }
}

/// While a vote's `approved` event is not yet durable, an identical retry is not
/// forwarded on the approval: it waits for the outcome, and if the log refuses the
/// decision, nothing at all is forwarded.
async fn retry_during_an_unrecorded_decision(log_accepts: bool) {
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open_memory().unwrap());
    let (release, gate) = tokio::sync::oneshot::channel();
    let sink = Arc::new(GatedSink {
        inner: MemorySink::new(),
        gate: tokio::sync::Mutex::new(Some(gate)),
    });
    let (audit, _task) = AuditLog::start(sink, None, None).await.unwrap();
    let approvals = Approvals::new(
        store.clone(),
        audit,
        Arc::new(Metrics::new()),
        Clock::tokio(),
    );
    let Opened::Waiting(ticket) = approvals.open(request("d7")).await.unwrap() else {
        panic!("a new request is parked");
    };
    let id = ticket.approval.id.clone();
    let shutdown = CancellationToken::new();
    let first = {
        let (approvals, shutdown) = (approvals.clone(), shutdown.clone());
        tokio::spawn(async move { approvals.wait(ticket, &shutdown).await })
    };
    let voting = {
        let (approvals, id) = (approvals.clone(), id.clone());
        tokio::spawn(async move { approvals.vote(&id, &bob(), Decision::Approve, None).await })
    };
    // The store says approved; the log does not have it yet.
    while store.approval(&id).await.unwrap().unwrap().status != Status::Approved {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let retry = match approvals.open(request("d7")).await.unwrap() {
        Opened::Reused(_) => panic!("forwarded on a decision the log does not have yet"),
        Opened::Waiting(t) => {
            assert_eq!(t.approval.id, id, "the retry joins the approval");
            let (approvals, shutdown) = (approvals.clone(), shutdown.clone());
            tokio::spawn(async move { approvals.wait(t, &shutdown).await })
        }
    };
    release.send(log_accepts).unwrap();
    let vote = voting.await.unwrap();
    let outcomes = [first.await.unwrap().unwrap(), retry.await.unwrap().unwrap()];
    let forwarded = outcomes
        .iter()
        .filter(|w| matches!(w, Waited::Forward(_)))
        .count();
    if log_accepts {
        assert!(vote.is_ok(), "{vote:?}");
        assert_eq!(forwarded, 1, "exactly one of the two goes out");
        assert_eq!(
            status2(&Engine2(store.clone()), &id).await,
            Status::Consumed
        );
    } else {
        assert!(matches!(vote, Err(VoteError::Audit(_))), "{vote:?}");
        assert_eq!(forwarded, 0, "nothing goes out on an unrecorded decision");
        assert_eq!(
            status2(&Engine2(store.clone()), &id).await,
            Status::Cancelled
        );
    }
}

struct Engine2(Arc<dyn Store>);

async fn status2(e: &Engine2, id: &str) -> Status {
    e.0.approval(id).await.unwrap().unwrap().status
}

#[tokio::test(start_paused = true)]
async fn a_retry_waits_while_the_decision_is_being_recorded() {
    retry_during_an_unrecorded_decision(true).await;
}

#[tokio::test(start_paused = true)]
async fn a_retry_is_not_forwarded_when_the_log_refuses_the_decision() {
    retry_during_an_unrecorded_decision(false).await;
}

/// A store whose writes of a status can be made to fail (a full disk, a lock held
/// elsewhere), counting the attempts; everything else goes to a real SQLite store.
struct FaultyStore {
    inner: SqliteStore,
    failing: std::sync::atomic::AtomicBool,
    transitions: std::sync::atomic::AtomicUsize,
}

#[async_trait::async_trait]
impl Store for FaultyStore {
    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }
    async fn insert_approval(&self, a: &airlock::store::Approval) -> Result<(), StoreError> {
        self.inner.insert_approval(a).await
    }
    async fn approval(&self, id: &str) -> Result<Option<airlock::store::Approval>, StoreError> {
        self.inner.approval(id).await
    }
    async fn approvals(
        &self,
        status: Option<Status>,
        limit: usize,
    ) -> Result<Vec<airlock::store::Approval>, StoreError> {
        self.inner.approvals(status, limit).await
    }
    async fn find_active(
        &self,
        agent: &str,
        digest: &str,
    ) -> Result<Option<airlock::store::Approval>, StoreError> {
        self.inner.find_active(agent, digest).await
    }
    async fn vote(
        &self,
        id: &str,
        vote: &airlock::store::Vote,
        quorum: u32,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<airlock::store::VoteResult, StoreError> {
        self.inner.vote(id, vote, quorum, now).await
    }
    async fn transition(
        &self,
        id: &str,
        from: Status,
        to: Status,
        now: chrono::DateTime<chrono::Utc>,
        reason: Option<&str>,
    ) -> Result<bool, StoreError> {
        self.transitions
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if self.failing.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(StoreError::NoConnection("test: the disk is full"));
        }
        self.inner.transition(id, from, to, now, reason).await
    }
    async fn due(&self, now: chrono::DateTime<chrono::Utc>) -> Result<Vec<String>, StoreError> {
        self.inner.due(now).await
    }
    async fn audit_append(
        &self,
        events: &[airlock::audit::AuditEvent],
        checkpoint: Option<&airlock::audit::Checkpoint>,
    ) -> Result<(), StoreError> {
        self.inner.audit_append(events, checkpoint).await
    }
    async fn audit_seal_append(
        &self,
        events: Vec<airlock::audit::AuditEvent>,
        signer: Option<&airlock::audit::CheckpointSigner>,
    ) -> Result<Vec<airlock::audit::AuditEvent>, StoreError> {
        self.inner.audit_seal_append(events, signer).await
    }
    async fn audit_head(&self) -> Result<(u64, String), StoreError> {
        self.inner.audit_head().await
    }
    async fn audit_events(
        &self,
        since: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Result<Vec<airlock::audit::AuditEvent>, StoreError> {
        self.inner.audit_events(since).await
    }
    async fn audit_checkpoints(&self) -> Result<Vec<airlock::audit::Checkpoint>, StoreError> {
        self.inner.audit_checkpoints().await
    }
}

#[tokio::test(start_paused = true)]
async fn an_expiry_the_store_cannot_record_is_retried_with_back_off_not_in_a_loop() {
    use std::sync::atomic::Ordering;
    let faulty = Arc::new(FaultyStore {
        inner: SqliteStore::open_memory().unwrap(),
        failing: false.into(),
        transitions: 0.into(),
    });
    let store: Arc<dyn Store> = faulty.clone();
    let sink = Arc::new(MemorySink::new());
    let (audit, _task) = AuditLog::start(sink, None, None).await.unwrap();
    let approvals = Approvals::new(store, audit, Arc::new(Metrics::new()), Clock::tokio());
    let Opened::Waiting(ticket) = approvals.open(request("d8")).await.unwrap() else {
        panic!("a new request is parked");
    };
    let id = ticket.approval.id.clone();
    let shutdown = CancellationToken::new();
    let parked = {
        let (approvals, shutdown) = (approvals.clone(), shutdown.clone());
        tokio::spawn(async move { approvals.wait(ticket, &shutdown).await })
    };
    faulty.failing.store(true, Ordering::SeqCst);
    tokio::time::advance(TIMEOUT + Duration::from_millis(1)).await;
    // Real time passes with tokio's clock standing still (a blocking task holds it):
    // a loop without back-off would try hundreds of times meanwhile.
    tokio::task::spawn_blocking(|| std::thread::sleep(Duration::from_millis(300)))
        .await
        .unwrap();
    let attempts = faulty.transitions.load(Ordering::SeqCst);
    assert!(attempts <= 2, "no tight loop: {attempts} attempts");
    // Ten seconds with the store refusing every write: a handful of attempts.
    tokio::time::advance(Duration::from_secs(10)).await;
    let attempts = faulty.transitions.load(Ordering::SeqCst);
    assert!(
        (1..=12).contains(&attempts),
        "backed off, not spun: {attempts} attempts in 10 s"
    );
    assert!(!parked.is_finished(), "still held, never forwarded");
    // The store recovers: the next attempt expires it.
    faulty.failing.store(false, Ordering::SeqCst);
    tokio::time::advance(Duration::from_secs(6)).await;
    let waited = parked.await.unwrap().unwrap();
    assert!(matches!(waited, Waited::Expired(_)));
    assert_eq!(
        faulty.inner.approval(&id).await.unwrap().unwrap().status,
        Status::Expired
    );
}
