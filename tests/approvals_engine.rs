//! The approvals engine in-process, over a real (in-memory) SQLite store that also holds
//! the audit log: expiry against tokio's clock, paused (a 15-minute timeout is tested in
//! milliseconds, with no real waiting and no timing luck), `require_reason`, what
//! happens when the store cannot record a hold, a vote or an expiry (fail closed), and
//! recovery of a forward a crashed airlock left claimed.

use airlock::approvals::{Approvals, Clock, HoldRequest, Opened, VoteError, Waited};
use airlock::audit::AuditLog;
use airlock::config::Reviewer;
use airlock::metrics::Metrics;
use airlock::rules::ApprovalPolicy;
use airlock::store::sqlite::SqliteStore;
use airlock::store::{Decision, Status, Store, StoreError, StoreSink};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const TIMEOUT: Duration = Duration::from_secs(15 * 60);

struct Engine {
    approvals: Arc<Approvals>,
    store: Arc<dyn Store>,
    faults: Arc<FaultyStore>,
    audit: AuditLog,
}

async fn engine() -> Engine {
    let faults = Arc::new(FaultyStore::new());
    let store: Arc<dyn Store> = faults.clone();
    let (audit, _task) = AuditLog::start(Arc::new(StoreSink(store.clone())), None, None)
        .await
        .unwrap();
    let approvals = another_instance(&store, &audit);
    Engine {
        approvals,
        store,
        faults,
        audit,
    }
}

/// An approvals engine over the same store: another airlock process (after a restart).
fn another_instance(store: &Arc<dyn Store>, audit: &AuditLog) -> Arc<Approvals> {
    Approvals::new(
        store.clone(),
        audit.clone(),
        None,
        Arc::new(Metrics::new()),
        Clock::tokio(),
    )
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
        requester: Default::default(),
    }
}

fn reviewers() -> airlock::identity::Reviewers {
    airlock::identity::Reviewers::new(&[bob()])
}

fn bob() -> Reviewer {
    Reviewer {
        id: "bob@example.com".into(),
        groups: vec!["sre".into()],
        token_digest: None,
        subject: None,
        slack: None,
        teams: None,
    }
}

async fn status(e: &Engine, id: &str) -> Status {
    e.store.approval(id).await.unwrap().unwrap().status
}

async fn events(e: &Engine) -> Vec<String> {
    e.audit.flush().await;
    let all = e.store.audit_events(None).await.unwrap();
    all.into_iter().map(|ev| ev.event).collect()
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
        .vote(
            &id,
            &bob(),
            &reviewers(),
            Decision::Approve,
            Some("ok".into()),
        )
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
        .vote(&id, &bob(), &reviewers(), Decision::Approve, None)
        .await
        .unwrap();
    assert_eq!(a.status, Status::Approved);
    let waited = parked.await.unwrap().unwrap();
    assert!(matches!(waited, Waited::Forward(..)));
    // Claimed for forwarding by this instance, durably, before anything is sent.
    let a = e.store.approval(&id).await.unwrap().unwrap();
    assert_eq!(a.status, Status::Forwarding);
    assert_eq!(a.forwarder.as_deref(), Some(e.approvals.instance()));
    assert_eq!(events(&e).await, ["held", "vote", "approved"]);
    // The agent goes away before the forward starts: nothing was sent, so the approval
    // is given back for an identical retry within `reuse`.
    drop(waited);
    while status(&e, &id).await != Status::Approved {
        tokio::task::yield_now().await;
    }
    match e.approvals.open(request("d3")).await.unwrap() {
        Opened::Reused(a, claim) => {
            assert_eq!(a.id, id);
            claim.started();
        }
        _ => panic!("the identical retry is forwarded on the given-back approval"),
    }
    assert_eq!(status(&e, &id).await, Status::Forwarding);
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
            .vote(&id, &bob(), &reviewers(), Decision::Approve, empty)
            .await;
        assert!(matches!(r, Err(VoteError::ReasonRequired)), "{r:?}");
    }
    assert_eq!(status(&e, &id).await, Status::Pending);
    let a = e
        .approvals
        .vote(
            &id,
            &bob(),
            &reviewers(),
            Decision::Approve,
            Some("change window".into()),
        )
        .await
        .unwrap();
    assert_eq!(a.status, Status::Approved);
    assert_eq!(a.votes[0].reason.as_deref(), Some("change window"));
}

#[tokio::test(start_paused = true)]
async fn a_hold_the_log_cannot_record_leaves_nothing_to_approve() {
    let e = engine().await;
    e.faults.fail(&e.faults.audit, true);
    let r = e.approvals.open(request("d5")).await;
    assert!(r.is_err(), "the hold is refused");
    e.faults.fail(&e.faults.audit, false);
    let pending = e.store.approvals(Some(Status::Pending), 10).await.unwrap();
    assert!(
        pending.is_empty(),
        "no approval a reviewer could act on: {pending:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_vote_the_store_cannot_record_changes_nothing_and_writes_nothing() {
    let e = engine().await;
    let Opened::Waiting(ticket) = e.approvals.open(request("d6")).await.unwrap() else {
        panic!("a new request is parked");
    };
    let id = ticket.approval.id.clone();
    let shutdown = CancellationToken::new();
    let approvals = e.approvals.clone();
    let parked = tokio::spawn(async move { approvals.wait(ticket, &shutdown).await });

    e.faults.fail(&e.faults.votes, true);
    let r = e
        .approvals
        .vote(&id, &bob(), &reviewers(), Decision::Approve, None)
        .await;
    assert!(matches!(r, Err(VoteError::Store(_))), "{r:?}");
    assert_eq!(status(&e, &id).await, Status::Pending);
    assert!(
        !parked.is_finished(),
        "nothing released on an unrecorded vote"
    );
    let logged = events(&e).await;
    assert!(
        !logged.iter().any(|e| e == "vote" || e == "approved"),
        "{logged:?}"
    );
    // The store takes the vote again: the vote and its decision land together.
    e.faults.fail(&e.faults.votes, false);
    e.approvals
        .vote(&id, &bob(), &reviewers(), Decision::Approve, None)
        .await
        .unwrap();
    assert!(matches!(
        parked.await.unwrap().unwrap(),
        Waited::Forward(..)
    ));
    let logged = events(&e).await;
    assert_eq!(&logged[logged.len() - 2..], ["vote", "approved"]);
}

/// Two racing votes by one reviewer: one vote, one `vote` event, one decision.
#[tokio::test]
async fn two_racing_votes_by_one_reviewer_count_once() {
    let e = engine().await;
    let mut req = request("d9");
    req.policy.quorum = 2;
    let Opened::Waiting(ticket) = e.approvals.open(req).await.unwrap() else {
        panic!("a new request is parked");
    };
    let id = ticket.approval.id.clone();
    let votes: Vec<_> = (0..4)
        .map(|_| {
            let (approvals, id) = (e.approvals.clone(), id.clone());
            tokio::spawn(async move {
                approvals
                    .vote(&id, &bob(), &reviewers(), Decision::Approve, None)
                    .await
            })
        })
        .collect();
    let mut ok = 0;
    for v in votes {
        match v.await.unwrap() {
            Ok(_) => ok += 1,
            Err(VoteError::AlreadyVoted) => {}
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(ok, 1, "exactly one vote counts");
    let a = e.store.approval(&id).await.unwrap().unwrap();
    assert_eq!((a.status, a.votes.len()), (Status::Pending, 1));
    assert_eq!(events(&e).await, ["held", "vote"]);
}

/// Claims a fresh approval for forwarding with `e`'s instance; returns its id.
async fn claimed(e: &Engine, digest: &str) -> String {
    let Opened::Waiting(ticket) = e.approvals.open(request(digest)).await.unwrap() else {
        panic!("a new request is parked");
    };
    let id = ticket.approval.id.clone();
    let shutdown = CancellationToken::new();
    let approvals = e.approvals.clone();
    let parked = tokio::spawn(async move { approvals.wait(ticket, &shutdown).await });
    e.approvals
        .vote(&id, &bob(), &reviewers(), Decision::Approve, None)
        .await
        .unwrap();
    let Waited::Forward(_, claim) = parked.await.unwrap().unwrap() else {
        panic!("approved: forwarded");
    };
    claim.started();
    id
}

/// A crash between the claim and the `forwarded` event: the next airlock marks the
/// approval `outcome_unknown` (audited), never sends it again, and tells an identical
/// retry so; a claim whose `forwarded` event is in the log is settled as consumed.
#[tokio::test(start_paused = true)]
async fn a_forward_left_claimed_by_a_crash_is_recovered_not_resent() {
    let e = engine().await;
    let unknown = claimed(&e, "d10").await;
    let sent = claimed(&e, "d11").await;
    let mut ev = airlock::audit::AuditEvent::new("forwarded");
    ev.approval_id = Some(sent.clone());
    e.audit.append(ev).await.unwrap();

    // Recovery by the instance holding the claims changes nothing: they may be in flight.
    e.approvals.recover().await;
    assert_eq!(status(&e, &unknown).await, Status::Forwarding);

    // The process is gone; the next one starts.
    let next = another_instance(&e.store, &e.audit);
    next.recover().await;
    assert_eq!(status(&e, &unknown).await, Status::OutcomeUnknown);
    assert_eq!(status(&e, &sent).await, Status::Consumed);
    let of = |id: &str| {
        let store = e.store.clone();
        let id = id.to_string();
        async move {
            let evs = store.audit_events_of(&id).await.unwrap();
            evs.into_iter().map(|e| e.event).collect::<Vec<_>>()
        }
    };
    assert_eq!(
        of(&unknown).await,
        ["held", "vote", "approved", "outcome_unknown"]
    );
    assert_eq!(of(&sent).await, ["held", "vote", "approved", "forwarded"]);
    // Recovering again writes nothing more.
    next.recover().await;
    assert_eq!(of(&unknown).await.len(), 4);
    // An identical retry is told, not sent.
    match next.open(request("d10")).await.unwrap() {
        Opened::OutcomeUnknown(a) => assert_eq!(a.id, unknown),
        _ => panic!("an identical retry must learn the outcome is unknown"),
    }
}

/// A real SQLite store whose status changes, votes or audit appends can be made to fail
/// (a full disk, a lock held elsewhere), counting the status changes attempted.
struct FaultyStore {
    inner: SqliteStore,
    transitions_fail: std::sync::atomic::AtomicBool,
    votes: std::sync::atomic::AtomicBool,
    audit: std::sync::atomic::AtomicBool,
    transitions: std::sync::atomic::AtomicUsize,
}

impl FaultyStore {
    fn new() -> FaultyStore {
        FaultyStore {
            inner: SqliteStore::open_memory().unwrap(),
            transitions_fail: false.into(),
            votes: false.into(),
            audit: false.into(),
            transitions: 0.into(),
        }
    }

    fn fail(&self, what: &std::sync::atomic::AtomicBool, on: bool) {
        what.store(on, std::sync::atomic::Ordering::SeqCst);
    }

    fn check(what: &std::sync::atomic::AtomicBool) -> Result<(), StoreError> {
        if what.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(StoreError::NoConnection("test: the disk is full"));
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl Store for FaultyStore {
    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }
    fn set_outbox_channels(&self, channels: Vec<String>) {
        self.inner.set_outbox_channels(channels)
    }
    async fn outbox_claim(
        &self,
        instance: &str,
        now: chrono::DateTime<chrono::Utc>,
        lease_until: chrono::DateTime<chrono::Utc>,
        limit: usize,
    ) -> Result<Vec<airlock::store::OutboxItem>, StoreError> {
        self.inner
            .outbox_claim(instance, now, lease_until, limit)
            .await
    }
    async fn outbox_settle(
        &self,
        id: i64,
        instance: &str,
        now: chrono::DateTime<chrono::Utc>,
        how: &airlock::store::Settle,
    ) -> Result<(), StoreError> {
        self.inner.outbox_settle(id, instance, now, how).await
    }
    async fn outbox_counts(&self) -> Result<airlock::store::OutboxCounts, StoreError> {
        self.inner.outbox_counts().await
    }
    async fn outbox_prune(&self, before: chrono::DateTime<chrono::Utc>) -> Result<u64, StoreError> {
        self.inner.outbox_prune(before).await
    }
    async fn message_ref(&self, a: &str, ch: &str) -> Result<Option<String>, StoreError> {
        self.inner.message_ref(a, ch).await
    }
    async fn set_message_ref(&self, a: &str, ch: &str, r: &str) -> Result<(), StoreError> {
        self.inner.set_message_ref(a, ch, r).await
    }
    async fn mark_once(
        &self,
        a: &str,
        mark: &str,
        now: chrono::DateTime<chrono::Utc>,
        event: airlock::audit::AuditEvent,
        signer: Option<&airlock::audit::CheckpointSigner>,
    ) -> Result<bool, StoreError> {
        self.inner.mark_once(a, mark, now, event, signer).await
    }
    async fn marks_of(&self, a: &str) -> Result<Vec<String>, StoreError> {
        self.inner.marks_of(a).await
    }
    async fn open_approval(
        &self,
        a: &airlock::store::Approval,
        held: Option<airlock::audit::AuditEvent>,
        signer: Option<&airlock::audit::CheckpointSigner>,
    ) -> Result<Option<String>, StoreError> {
        Self::check(&self.audit)?;
        self.inner.open_approval(a, held, signer).await
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
        quorum: &airlock::store::Quorum,
        now: chrono::DateTime<chrono::Utc>,
        audit: &airlock::store::VoteAudit,
        signer: Option<&airlock::audit::CheckpointSigner>,
    ) -> Result<airlock::store::VoteResult, StoreError> {
        Self::check(&self.votes)?;
        self.inner.vote(id, vote, quorum, now, audit, signer).await
    }
    async fn transition_audited(
        &self,
        id: &str,
        from: Status,
        to: Status,
        now: chrono::DateTime<chrono::Utc>,
        reason: Option<&str>,
        event: Option<airlock::audit::AuditEvent>,
        signer: Option<&airlock::audit::CheckpointSigner>,
    ) -> Result<bool, StoreError> {
        self.transitions
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Self::check(&self.transitions_fail)?;
        self.inner
            .transition_audited(id, from, to, now, reason, event, signer)
            .await
    }
    async fn claim(
        &self,
        id: &str,
        forwarder: &str,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<bool, StoreError> {
        self.inner.claim(id, forwarder, now).await
    }
    async fn register_instance(&self, id: &str) -> Result<(), StoreError> {
        self.inner.register_instance(id).await
    }
    async fn instance_alive(&self, id: &str) -> Result<bool, StoreError> {
        self.inner.instance_alive(id).await
    }
    async fn audit_events_of(
        &self,
        approval_id: &str,
    ) -> Result<Vec<airlock::audit::AuditEvent>, StoreError> {
        self.inner.audit_events_of(approval_id).await
    }
    async fn decided_among(&self, ids: &[String]) -> Result<Vec<String>, StoreError> {
        self.inner.decided_among(ids).await
    }
    async fn due(&self, now: chrono::DateTime<chrono::Utc>) -> Result<Vec<String>, StoreError> {
        self.inner.due(now).await
    }
    async fn audit_append(
        &self,
        events: &[airlock::audit::AuditEvent],
        checkpoint: Option<&airlock::audit::Checkpoint>,
    ) -> Result<(), StoreError> {
        Self::check(&self.audit)?;
        self.inner.audit_append(events, checkpoint).await
    }
    async fn audit_seal_append(
        &self,
        events: Vec<airlock::audit::AuditEvent>,
        signer: Option<&airlock::audit::CheckpointSigner>,
    ) -> Result<Vec<airlock::audit::AuditEvent>, StoreError> {
        Self::check(&self.audit)?;
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
    let e = engine().await;
    let (faulty, approvals) = (e.faults.clone(), e.approvals.clone());
    let Opened::Waiting(ticket) = approvals.open(request("d8")).await.unwrap() else {
        panic!("a new request is parked");
    };
    let id = ticket.approval.id.clone();
    let shutdown = CancellationToken::new();
    let parked = {
        let (approvals, shutdown) = (approvals.clone(), shutdown.clone());
        tokio::spawn(async move { approvals.wait(ticket, &shutdown).await })
    };
    faulty.fail(&faulty.transitions_fail, true);
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
    faulty.fail(&faulty.transitions_fail, false);
    tokio::time::advance(Duration::from_secs(6)).await;
    let waited = parked.await.unwrap().unwrap();
    assert!(matches!(waited, Waited::Expired(_)));
    assert_eq!(
        faulty.inner.approval(&id).await.unwrap().unwrap().status,
        Status::Expired
    );
}
