use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use chrono::{TimeZone, Utc};
use ed25519_dalek::VerifyingKey;
use serde_json::json;
use tokio::sync::{Notify, Semaphore};

use super::*;

fn sample(i: u64) -> AuditEvent {
    let mut ev = AuditEvent::new(if i.is_multiple_of(2) {
        "held"
    } else {
        "approved"
    });
    ev.request_id = Some(format!("req-{i}"));
    ev.agent = Some("ci-bot".into());
    ev.rules = vec!["prod-delete".into(), format!("r{i}")];
    ev.method = Some("DELETE".into());
    ev.host = Some("api.example.com".into());
    ev.path = Some(format!("/v1/things/{i}"));
    ev.status = Some(202);
    ev.show = Some(json!({"name": format!("thing-{i}"), "size": 1.1 * i as f64}));
    ev
}

fn sealed_log(n: u64) -> Vec<AuditEvent> {
    let mut chain = Chain::genesis();
    (1..=n)
        .map(|i| {
            let mut ev = sample(i);
            chain.seal(&mut ev);
            ev
        })
        .collect()
}

fn signer() -> CheckpointSigner {
    CheckpointSigner::from_pem_str(&generate_signing_key_pem()).unwrap()
}

fn checkpoints_for(events: &[AuditEvent], at: &[u64], s: &CheckpointSigner) -> Vec<Checkpoint> {
    at.iter()
        .map(|&seq| {
            let ev = &events[seq as usize - 1];
            s.sign(ev.seq, &ev.hash, Utc::now())
        })
        .collect()
}

fn bad_seq(events: &[AuditEvent]) -> Option<u64> {
    verify(events, &[], None).first_bad_seq
}

#[test]
fn chain_seals_and_verifies() {
    let log = sealed_log(10);
    assert_eq!(log[0].seq, 1);
    assert_eq!(log[0].prev_hash, GENESIS_HASH);
    for w in log.windows(2) {
        assert_eq!(w[1].prev_hash, w[0].hash);
        assert_eq!(w[1].seq, w[0].seq + 1);
    }
    let r = verify(&log, &[], None);
    assert!(r.ok(), "{r}");
    assert_eq!(r.events, 10);
    assert!(verify(&[], &[], None).ok());
}

#[test]
fn chain_resumes_from_head() {
    let log = sealed_log(3);
    let mut chain = Chain::new(3, &log[2].hash);
    assert_eq!(chain.next_seq(), 4);
    let mut ev = sample(4);
    chain.seal(&mut ev);
    let mut all = log.clone();
    all.push(ev);
    assert!(verify(&all, &[], None).ok());
    assert_eq!(chain.last_seq(), 4);
    assert_eq!(chain.head(), all[3].hash);
}

#[test]
fn canonical_json_is_sorted_compact_without_hash() {
    let mut ev = AuditEvent::new("vote");
    ev.time = Utc.with_ymd_and_hms(2024, 5, 1, 12, 0, 0).unwrap();
    ev.seq = 3;
    ev.reviewer = Some("alice".into());
    ev.show = Some(json!({"z": 1, "a": {"y": true, "b": null}}));
    ev.prev_hash = GENESIS_HASH.into();
    ev.hash = "deadbeef".into();
    let c = canonical_json(&ev);
    assert_eq!(
        c,
        format!(
            "{{\"event\":\"vote\",\"prev_hash\":\"{GENESIS_HASH}\",\"reviewer\":\"alice\",\
             \"seq\":3,\"show\":{{\"a\":{{\"b\":null,\"y\":true}},\"z\":1}},\
             \"time\":\"2024-05-01T12:00:00.000000Z\"}}"
        )
    );
    // hash = sha256(prev_hash || canonical)
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(GENESIS_HASH.as_bytes());
    h.update(c.as_bytes());
    assert_eq!(compute_hash(GENESIS_HASH, &ev), hex::encode(h.finalize()));
}

#[test]
fn editing_any_field_is_detected_at_that_seq() {
    type Edit = Box<dyn Fn(&mut AuditEvent)>;
    let edits: Vec<(&str, Edit)> = vec![
        ("seq", Box::new(|e| e.seq = 50)),
        (
            "time",
            Box::new(|e| e.time += chrono::Duration::microseconds(1)),
        ),
        ("event", Box::new(|e| e.event = "forwarded".into())),
        ("request_id", Box::new(|e| e.request_id = None)),
        (
            "approval_id",
            Box::new(|e| e.approval_id = Some("a".into())),
        ),
        ("agent", Box::new(|e| e.agent = Some("other".into()))),
        (
            "reviewer",
            Box::new(|e| e.reviewer = Some("mallory".into())),
        ),
        ("rules", Box::new(|e| e.rules.pop().map(drop).unwrap_or(()))),
        ("method", Box::new(|e| e.method = Some("GET".into()))),
        ("upstream", Box::new(|e| e.upstream = Some("cloud".into()))),
        ("host", Box::new(|e| e.host = Some("evil".into()))),
        ("path", Box::new(|e| e.path = Some("/".into()))),
        (
            "body_sha256",
            Box::new(|e| e.body_sha256 = Some("00".into())),
        ),
        ("status", Box::new(|e| e.status = Some(200))),
        ("reason", Box::new(|e| e.reason = Some("ok".into()))),
        ("decision", Box::new(|e| e.decision = Some("allow".into()))),
        ("show", Box::new(|e| e.show = Some(json!({"name": "x"})))),
        ("prev_hash", Box::new(|e| e.prev_hash = GENESIS_HASH.into())),
        ("hash", Box::new(|e| e.hash = GENESIS_HASH.into())),
    ];
    for (field, edit) in edits {
        let mut log = sealed_log(8);
        edit(&mut log[4]);
        let r = verify(&log, &[], None);
        assert_eq!(r.first_bad_seq, Some(5), "field {field}: {r}");
        let p = r.problem.unwrap();
        assert!(p.starts_with("seq 5: "), "field {field}: {p}");
    }
    let mut log = sealed_log(8);
    log[6].reason = Some("edited".into());
    assert_eq!(
        verify(&log, &[], None).problem.as_deref(),
        Some("seq 7: hash mismatch (event edited)")
    );
    let mut log = sealed_log(9);
    log[8].prev_hash = log[6].hash.clone();
    assert_eq!(
        verify(&log, &[], None).problem.as_deref(),
        Some("seq 9: prev_hash does not match seq 8")
    );
}

#[test]
fn deletion_is_detected() {
    let mut log = sealed_log(8);
    log.remove(4);
    let r = verify(&log, &[], None);
    assert_eq!(r.first_bad_seq, Some(5));
    assert_eq!(
        r.problem.as_deref(),
        Some("seq 5: expected seq 5, found 6 (event deleted or reordered)")
    );
    let mut log = sealed_log(3);
    log.remove(0);
    assert_eq!(bad_seq(&log), Some(1));
}

#[test]
fn deletion_with_renumbering_is_detected() {
    let mut log = sealed_log(8);
    log.remove(4);
    for (i, ev) in log.iter_mut().enumerate() {
        ev.seq = i as u64 + 1;
    }
    assert_eq!(bad_seq(&log), Some(5));
}

#[test]
fn swapping_is_detected() {
    let mut log = sealed_log(8);
    log.swap(2, 3);
    let r = verify(&log, &[], None);
    assert_eq!(r.first_bad_seq, Some(3), "{r}");
    // even if the seqs are swapped back, the links break
    let (a, b) = (log[2].seq, log[3].seq);
    log[2].seq = b;
    log[3].seq = a;
    assert_eq!(bad_seq(&log), Some(3));
}

#[test]
fn truncation_detected_only_with_checkpoints() {
    let s = signer();
    let key = s.verifying_key();
    let full = sealed_log(10);
    let cps = checkpoints_for(&full, &[4, 8, 10], &s);
    assert!(verify(&full, &cps, Some(&key)).ok());

    let truncated = &full[..7];
    // Limitation: a truncated log is still a valid chain on its own.
    assert!(verify(truncated, &[], None).ok());
    let r = verify(truncated, &cps, Some(&key));
    assert_eq!(r.first_bad_seq, Some(8));
    assert_eq!(
        r.problem.as_deref(),
        Some("truncated: checkpoint at seq 8 but log ends at seq 7")
    );
    // without a key the (unsigned) checkpoints still reveal it
    let r = verify(truncated, &cps, None);
    assert_eq!(r.first_bad_seq, Some(8));
    assert!(!r.signatures_checked);
    // everything deleted
    let r = verify(&[], &cps, Some(&key));
    assert_eq!(r.first_bad_seq, Some(1));
}

#[test]
fn rewritten_tail_detected_by_checkpoint() {
    let s = signer();
    let full = sealed_log(10);
    let cps = checkpoints_for(&full, &[5, 10], &s);
    // Rewrite seq 9 and recompute hashes from there: the chain alone is fine again.
    let mut log = full.clone();
    let mut chain = Chain::new(8, &log[7].hash);
    for ev in log[8..].iter_mut() {
        ev.reviewer = Some("mallory".into());
        chain.seal(ev);
    }
    assert!(verify(&log, &[], None).ok());
    let r = verify(&log, &cps, Some(&s.verifying_key()));
    assert_eq!(r.first_bad_seq, Some(10), "{r}");
    assert!(r.problem.unwrap().contains("log rewritten"));
}

#[test]
fn forged_checkpoint_detected() {
    let s = signer();
    let key = s.verifying_key();
    let log = sealed_log(10);
    let other = signer();

    let mut cps = checkpoints_for(&log, &[4], &s);
    cps.extend(checkpoints_for(&log, &[7], &other));
    let r = verify(&log, &cps, Some(&key));
    assert_eq!(r.first_bad_seq, Some(7), "{r}");
    assert_eq!(
        r.problem.as_deref(),
        Some("checkpoint at seq 7: invalid signature (forged or altered checkpoint)")
    );

    // altered seq / hash / garbage signature
    let mut cp = s.sign(6, &log[5].hash, Utc::now());
    cp.seq = 3;
    assert_eq!(verify(&log, &[cp], Some(&key)).first_bad_seq, Some(3));
    let mut cp = s.sign(6, &log[5].hash, Utc::now());
    cp.signature = "zz".into();
    assert_eq!(verify(&log, &[cp], Some(&key)).first_bad_seq, Some(6));
    // a forged checkpoint far past the end is reported as forged, not as truncation
    let cp = other.sign(99, GENESIS_HASH, Utc::now());
    let r = verify(&log, std::slice::from_ref(&cp), Some(&key));
    assert_eq!(r.first_bad_seq, Some(99));
    assert!(r.problem.unwrap().contains("invalid signature"));

    // no key: signatures not checked, noted
    let good = checkpoints_for(&log, &[10], &other);
    let r = verify(&log, &good, None);
    assert!(r.ok());
    assert!(!r.signatures_checked);
    assert!(r.to_string().contains("NOT checked"));
}

#[test]
fn checkpoint_message_and_keys() {
    assert_eq!(
        checkpoint_message(7, "ab"),
        b"airlock-checkpoint:v1:7:ab".to_vec()
    );
    let pem = generate_signing_key_pem();
    assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k.pem");
    std::fs::write(&path, &pem).unwrap();
    let s = CheckpointSigner::from_pem_file(&path).unwrap();
    let pubpem = s.public_key_pem().unwrap();
    let vk: VerifyingKey = verifying_key_from_pem_str(&pubpem).unwrap();
    assert_eq!(vk, s.verifying_key());
    let cp = s.sign(1, GENESIS_HASH, Utc::now());
    assert!(verify_checkpoint(&cp, &vk));
    assert_eq!(cp.signature.len(), 128);
    assert!(!format!("{s:?}").contains("PRIVATE"));
    // checkpoints round-trip through JSON
    let back: Checkpoint = serde_json::from_str(&serde_json::to_string(&cp).unwrap()).unwrap();
    assert_eq!(back, cp);

    assert!(matches!(
        CheckpointSigner::from_pem_str("nope"),
        Err(AuditError::Key(_))
    ));
    assert!(matches!(
        CheckpointSigner::from_pem_file(dir.path().join("missing.pem")),
        Err(AuditError::Key(_))
    ));
}

#[test]
fn time_and_floats_round_trip_through_jsonl() {
    let mut chain = Chain::genesis();
    let mut events = Vec::new();
    for i in 0..20u64 {
        let mut ev = sample(i);
        // nanosecond precision input is truncated to microseconds when sealed
        ev.time = Utc
            .with_ymd_and_hms(2024, 2, 29, 23, 59, 59)
            .unwrap()
            .checked_add_signed(chrono::Duration::nanoseconds(123_456_789 + i as i64))
            .unwrap();
        ev.show = Some(json!({"f": 0.1 + 0.2 * i as f64, "g": 1e-7 / (i as f64 + 3.0), "n": -5}));
        chain.seal(&mut ev);
        events.push(ev);
    }
    let line = to_jsonl_line(&events[0]);
    assert!(
        line.contains("\"time\":\"2024-02-29T23:59:59.123456Z\""),
        "{line}"
    );
    assert!(line.contains("\"hash\":"));
    assert!(!line.contains('\n'));

    let text: String = events.iter().map(|e| to_jsonl_line(e) + "\n\n").collect();
    let back = read_jsonl(std::io::Cursor::new(text)).unwrap();
    assert_eq!(back, events);
    assert!(verify(&back, &[], None).ok());
    // also through serde_json's own serializer
    let s = serde_json::to_string(&events[3]).unwrap();
    let ev: AuditEvent = serde_json::from_str(&s).unwrap();
    assert_eq!(ev, events[3]);
    assert_eq!(compute_hash(&ev.prev_hash, &ev), ev.hash);
}

#[test]
fn read_jsonl_errors() {
    let err = read_jsonl(std::io::Cursor::new("\n{not json}\n")).unwrap_err();
    assert!(
        matches!(&err, AuditError::Parse(m) if m.starts_with("line 2:")),
        "{err}"
    );
    // a field the hash does not cover cannot be smuggled in
    let ev = &sealed_log(1)[0];
    let line = to_jsonl_line(ev).replacen('{', "{\"approved_by\":\"ceo\",", 1);
    assert!(read_jsonl(std::io::Cursor::new(line)).is_err());
}

// ---------------------------------------------------------------- writer

fn tagged(tag: String) -> AuditEvent {
    let mut ev = AuditEvent::new("passed");
    ev.reason = Some(tag);
    ev
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writer_preserves_order_and_chain_under_concurrency() {
    let sink = Arc::new(MemorySink::new());
    let s = signer();
    let key = s.verifying_key();
    let dir = tempfile::tempdir().unwrap();
    let jsonl = dir.path().join("audit.jsonl");
    let batches = Arc::new(AtomicUsize::new(0));
    let counted = Arc::new(AtomicUsize::new(0));
    let (b, c) = (batches.clone(), counted.clone());
    let (log, handle) = AuditLog::start_with(
        sink.clone(),
        Some(s),
        Some(jsonl.clone()),
        None,
        Some(Arc::new(move |st: BatchStats| {
            assert!(st.ok);
            b.fetch_add(1, Ordering::SeqCst);
            c.fetch_add(st.events, Ordering::SeqCst);
        })),
    )
    .await
    .unwrap();

    let mut tasks = Vec::new();
    for t in 0..50 {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..10 {
                seqs.push((log.append(tagged(format!("t{t}-{i}"))).await.unwrap(), i));
            }
            (t, seqs)
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        let (t, seqs) = task.await.unwrap();
        for w in seqs.windows(2) {
            assert!(w[0].0 < w[1].0, "per-task order kept");
        }
        all.extend(seqs.into_iter().map(|(seq, i)| (seq, format!("t{t}-{i}"))));
    }
    all.sort();
    assert_eq!(
        all.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        (1..=500).collect::<Vec<u64>>()
    );

    let stored = sink.events();
    assert_eq!(stored.len(), 500);
    for (seq, tag) in &all {
        assert_eq!(
            stored[*seq as usize - 1].reason.as_deref(),
            Some(tag.as_str())
        );
    }
    let cps = sink.checkpoints();
    assert_eq!(cps.len(), sink.batches());
    assert_eq!(cps.last().unwrap().seq, 500);
    let r = verify(&stored, &cps, Some(&key));
    assert!(r.ok(), "{r}");

    drop(log);
    handle.await.unwrap();
    assert_eq!(counted.load(Ordering::SeqCst), 500);
    assert_eq!(batches.load(Ordering::SeqCst), sink.batches());

    let file = std::io::BufReader::new(std::fs::File::open(&jsonl).unwrap());
    let from_file = read_jsonl(file).unwrap();
    assert_eq!(from_file, stored);
    assert!(verify(&from_file, &cps, Some(&key)).ok());
}

#[tokio::test]
async fn failing_sink_fails_every_waiter_and_keeps_head() {
    let sink = Arc::new(MemorySink::new());
    let (log, handle) = AuditLog::start(sink.clone(), Some(signer()), None)
        .await
        .unwrap();
    for i in 1..=3 {
        assert_eq!(log.append(tagged(format!("ok{i}"))).await.unwrap(), i);
    }

    sink.set_failing(true);
    log.record(tagged("recorded".into()));
    let waiters: Vec<_> = (0..20)
        .map(|i| {
            let log = log.clone();
            tokio::spawn(async move { log.append(tagged(format!("fail{i}"))).await })
        })
        .collect();
    for w in waiters {
        assert!(matches!(w.await.unwrap(), Err(AuditError::Store(_))));
    }
    log.flush().await;
    assert_eq!(sink.events().len(), 3);

    sink.set_failing(false);
    // The recorded event survived the outage and goes first; the waiters' events were
    // refused (they failed closed) and are not written.
    assert_eq!(log.append(tagged("after".into())).await.unwrap(), 5);
    let stored = sink.events();
    assert_eq!(stored.len(), 5);
    assert_eq!(stored[3].reason.as_deref(), Some("recorded"));
    assert_eq!(stored[4].reason.as_deref(), Some("after"));
    assert_eq!(stored[3].prev_hash, stored[2].hash);
    assert!(verify(&stored, &sink.checkpoints(), None).ok());

    drop(log);
    handle.await.unwrap();
}

#[tokio::test]
async fn restart_continues_the_chain() {
    let sink = Arc::new(MemorySink::new());
    let (log, handle) = AuditLog::start(sink.clone(), None, None).await.unwrap();
    log.append(tagged("a".into())).await.unwrap();
    log.append(tagged("b".into())).await.unwrap();
    drop(log);
    handle.await.unwrap();

    let (log, handle) = AuditLog::start(sink.clone(), None, None).await.unwrap();
    assert_eq!(log.append(tagged("c".into())).await.unwrap(), 3);
    drop(log);
    handle.await.unwrap();
    assert!(verify(&sink.events(), &[], None).ok());
}

#[tokio::test]
async fn append_after_writer_stopped_is_closed() {
    let sink = Arc::new(MemorySink::new());
    let (log, handle) = AuditLog::start(sink, None, None).await.unwrap();
    handle.abort();
    let _ = handle.await;
    assert!(matches!(
        log.append(tagged("x".into())).await,
        Err(AuditError::Closed)
    ));
    log.flush().await; // must not hang
}

/// A sink whose first append blocks until released, to observe group commit.
struct GateSink {
    inner: MemorySink,
    entered: Notify,
    gate: Semaphore,
}

#[async_trait::async_trait]
impl AuditSink for GateSink {
    async fn append(
        &self,
        events: &[AuditEvent],
        checkpoint: Option<&Checkpoint>,
    ) -> Result<(), AuditError> {
        self.entered.notify_one();
        self.gate.acquire().await.unwrap().forget();
        self.inner.append(events, checkpoint).await
    }
    async fn head(&self) -> Result<(u64, String), AuditError> {
        self.inner.head().await
    }
}

#[tokio::test]
async fn queued_events_are_group_committed() {
    let sink = Arc::new(GateSink {
        inner: MemorySink::new(),
        entered: Notify::new(),
        gate: Semaphore::new(0),
    });
    let (log, handle) = AuditLog::start(sink.clone(), None, None).await.unwrap();
    let first = {
        let log = log.clone();
        tokio::spawn(async move { log.append(tagged("first".into())).await })
    };
    sink.entered.notified().await; // writer is inside append with batch [first]
    for i in 0..10 {
        log.record(tagged(format!("queued{i}")));
    }
    sink.gate.add_permits(10);
    assert_eq!(first.await.unwrap().unwrap(), 1);
    log.flush().await;
    assert_eq!(sink.inner.batches(), 2);
    let stored = sink.inner.events();
    assert_eq!(stored.len(), 11);
    assert_eq!(stored[10].reason.as_deref(), Some("queued9"));
    assert!(verify(&stored, &[], None).ok());
    drop(log);
    handle.await.unwrap();
}

/// A sink that fails its next `faults` writes with a fault a retry may fix.
struct FlakySink {
    inner: MemorySink,
    faults: AtomicUsize,
    attempts: AtomicUsize,
}

impl FlakySink {
    fn new(faults: usize) -> Self {
        FlakySink {
            inner: MemorySink::new(),
            faults: AtomicUsize::new(faults),
            attempts: AtomicUsize::new(0),
        }
    }
}

#[async_trait::async_trait]
impl AuditSink for FlakySink {
    async fn append(
        &self,
        events: &[AuditEvent],
        checkpoint: Option<&Checkpoint>,
    ) -> Result<(), AuditError> {
        self.inner.append(events, checkpoint).await
    }
    async fn head(&self) -> Result<(u64, String), AuditError> {
        self.inner.head().await
    }
    async fn seal_append(
        &self,
        events: Vec<AuditEvent>,
        signer: Option<&CheckpointSigner>,
    ) -> Result<Vec<AuditEvent>, AuditError> {
        self.attempts.fetch_add(1, Ordering::SeqCst);
        let left = self.faults.load(Ordering::SeqCst);
        if left > 0 {
            self.faults.store(left - 1, Ordering::SeqCst);
            return Err(AuditError::Unavailable("connection reset".into()));
        }
        self.inner.seal_append(events, signer).await
    }
}

#[tokio::test(start_paused = true)]
async fn a_durable_append_outlasts_transient_faults() {
    let sink = Arc::new(FlakySink::new(2));
    let (log, _task) = AuditLog::start(sink.clone(), None, None).await.unwrap();
    assert_eq!(
        log.append(tagged("after two faults".into())).await.unwrap(),
        1
    );
    assert_eq!(sink.attempts.load(Ordering::SeqCst), 3);
    assert_eq!(sink.inner.events().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_durable_append_fails_closed_when_faults_persist() {
    let sink = Arc::new(FlakySink::new(3));
    let (log, _task) = AuditLog::start(sink.clone(), None, None).await.unwrap();
    let err = log.append(tagged("never stored".into())).await.unwrap_err();
    assert!(matches!(err, AuditError::Unavailable(_)), "{err}");
    assert_eq!(
        sink.attempts.load(Ordering::SeqCst),
        3,
        "three attempts, then no more"
    );
    assert!(sink.inner.events().is_empty());
    // The store is back: the next append lands at seq 1, the chain unbroken.
    assert_eq!(log.append(tagged("next".into())).await.unwrap(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_recorded_event_is_kept_not_retried_in_place() {
    let sink = Arc::new(FlakySink::new(1));
    let (log, _task) = AuditLog::start(sink.clone(), None, None).await.unwrap();
    log.record(tagged("recorded".into()));
    log.flush().await;
    assert_eq!(sink.attempts.load(Ordering::SeqCst), 1);
    assert!(sink.inner.events().is_empty());
    assert_eq!(log.append(tagged("durable".into())).await.unwrap(), 2);
    let stored = sink.inner.events();
    assert_eq!(stored[0].reason.as_deref(), Some("recorded"));
    assert!(verify(&stored, &[], None).ok());
}

// ---- Anchoring: checkpoint policy, tail, stored columns, notes, JSONL lines, witness ----

fn anchored(key: &VerifyingKey, policy: CheckpointPolicy) -> VerifyOptions<'_> {
    VerifyOptions {
        key: Some(key),
        policy: Some(policy),
        anchors: Vec::new(),
    }
}

/// Ten events whose times step by `step_s` seconds from a fixed start.
fn timed(n: usize, step_s: i64) -> Vec<AuditEvent> {
    let t0 = Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap();
    (0..n)
        .map(|i| {
            let mut ev = AuditEvent::new("passed");
            ev.time = t0 + chrono::Duration::seconds(step_s * i as i64);
            ev
        })
        .collect()
}

#[test]
fn a_batch_is_checkpointed_as_densely_as_the_policy_says() {
    let policy = CheckpointPolicy {
        every: 3,
        interval: std::time::Duration::from_secs(60),
    };
    let s = signer().with_policy(policy);
    let key = s.verifying_key();

    // By count: 3, 6, 9 and the end of the batch.
    let mut events = timed(10, 0);
    let cps = Chain::genesis().seal_batch(&mut events, Some(&s), Utc::now());
    let seqs: Vec<u64> = cps.iter().map(|c| c.seq).collect();
    assert_eq!(seqs, [3, 6, 9, 10]);
    assert!(verify_log(&events, &cps, &anchored(&key, policy)).ok());

    // By event time: 70 s apart, so no group may hold two events.
    let mut events = timed(4, 70);
    let cps = Chain::genesis().seal_batch(&mut events, Some(&s), Utc::now());
    assert_eq!(cps.iter().map(|c| c.seq).collect::<Vec<_>>(), [1, 2, 3, 4]);
    let r = verify_log(&events, &cps, &anchored(&key, policy));
    assert!(r.ok(), "{r}");
    assert!(r
        .to_string()
        .contains("tail anchored by a signed checkpoint at seq 4"));

    // A checkpoint deleted in the middle: too long a stretch without one.
    let r = verify_log(
        &events,
        &[cps[0].clone(), cps[3].clone()],
        &anchored(&key, policy),
    );
    assert_eq!(r.first_bad_seq, Some(3), "{r}");
    assert!(r
        .problem
        .unwrap()
        .contains("no signed checkpoint between seq 2 and seq 3"));

    // Without a signer there are no checkpoints.
    let mut events = timed(5, 0);
    assert!(Chain::genesis()
        .seal_batch(&mut events, None, Utc::now())
        .is_empty());
}

#[test]
fn with_a_key_the_last_event_must_be_covered() {
    let s = signer();
    let key = s.verifying_key();
    let policy = CheckpointPolicy::default();
    let mut events = timed(6, 1);
    let cps = Chain::genesis().seal_batch(&mut events, Some(&s), Utc::now());
    assert!(verify_log(&events, &cps, &anchored(&key, policy)).ok());

    // No checkpoint at all.
    let r = verify_log(&events, &[], &anchored(&key, policy));
    assert_eq!(r.first_bad_seq, Some(7), "{r}");
    assert!(r
        .to_string()
        .contains("no event is covered by a valid signed checkpoint but the last event is seq 6"));
    // Events added after the last checkpoint (or a checkpoint forged by another key).
    let early = checkpoints_for(&events, &[4], &s);
    let r = verify_log(&events, &early, &anchored(&key, policy));
    assert!(r.to_string().contains(
        "the last seq covered by a valid signed checkpoint is 4 but the last event is seq 6"
    ));
    let forged = checkpoints_for(&events, &[6], &signer());
    assert!(!verify_log(&events, &forged, &anchored(&key, policy)).ok());
    // Without a key, the report says that nothing anchors the tail.
    let r = verify(&events, &[], None);
    assert!(r.ok());
    assert!(r.to_string().contains("tail NOT anchored"), "{r}");
}

#[test]
fn an_anchor_catches_a_cut_below_it_and_a_rewrite_at_it() {
    let s = signer();
    let key = s.verifying_key();
    let log = sealed_log(8);
    let cps = checkpoints_for(&log, &[5, 8], &s);
    let witness = Anchor {
        source: "the witness w.txt".into(),
        checkpoint: cps[1].clone(),
    };
    let opts = VerifyOptions {
        key: Some(&key),
        policy: Some(CheckpointPolicy::default()),
        anchors: vec![witness],
    };
    let r = verify_log(&log, &cps, &opts);
    assert!(r.ok(), "{r}");
    assert!(
        r.to_string().contains("matches the witness w.txt at seq 8"),
        "{r}"
    );

    // Cut at seq 5 with its own checkpoint: only the anchor knows.
    let r = verify_log(&log[..5], &cps[..1], &opts);
    assert_eq!(r.first_bad_seq, Some(6), "{r}");
    assert!(r
        .to_string()
        .contains("truncated: the checkpoint of the witness w.txt at seq 8 but log ends at seq 5"));

    // Seq 8 rewritten and re-hashed, its checkpoint dropped.
    let mut rewritten = log.clone();
    rewritten[7].reviewer = Some("mallory".into());
    rewritten[7].hash = compute_hash(&rewritten[7].prev_hash, &rewritten[7]);
    let r = verify_log(&rewritten, &cps[..1], &opts);
    assert_eq!(r.first_bad_seq, Some(8), "{r}");
    assert!(
        r.to_string()
            .contains("hash differs from the witness w.txt"),
        "{r}"
    );
}

#[test]
fn stored_columns_must_say_what_the_line_says() {
    let log = sealed_log(4);
    let rows: Vec<StoredRow> = log
        .iter()
        .map(|ev| StoredRow {
            seq: ev.seq,
            time: format_time(&ev.time),
            event: ev.event.clone(),
            hash: ev.hash.clone(),
            line: to_jsonl_line(ev),
        })
        .collect();
    let check = |rows: &[StoredRow]| verify_rows(rows, &[], &VerifyOptions::default());
    assert!(check(&rows).ok());

    let mut edited = rows.clone();
    edited[1].time = "2000-01-01T00:00:00.000000Z".into();
    let r = check(&edited);
    assert_eq!(r.first_bad_seq, Some(2), "{r}");
    assert!(r.to_string().contains("stored column time"), "{r}");

    let mut edited = rows.clone();
    edited[2].event = "denied".into();
    assert!(check(&edited).to_string().contains("stored column event"));

    let mut edited = rows.clone();
    edited[3].hash = "0".repeat(64);
    assert!(check(&edited).to_string().contains("stored column hash"));

    let mut edited = rows.clone();
    edited[0].seq = 9;
    edited.rotate_left(1);
    assert!(!check(&edited).ok());

    let mut edited = rows;
    edited[2].line = "{\"seq\":3".into();
    let r = check(&edited);
    assert_eq!(r.first_bad_seq, Some(3), "{r}");
    assert!(r.to_string().contains("not an audit event"), "{r}");
}

#[test]
fn a_checkpoint_round_trips_as_a_note_and_as_a_jsonl_line() {
    let s = signer();
    let key = s.verifying_key();
    let log = sealed_log(3);
    let cp = s.sign(3, &log[2].hash, Utc::now());
    let note = cp.to_note(&key);
    assert!(
        note.starts_with(&format!("{NOTE_ORIGIN}\n3\n{}\n", log[2].hash)),
        "{note}"
    );
    assert!(note.contains(&format!("\n\n\u{2014} airlock-audit {} ", key_id(&key))));
    let back = Checkpoint::from_note(&note).unwrap();
    assert_eq!(back, cp);
    assert!(verify_checkpoint(&back, &key));
    for bad in [
        note.replacen(NOTE_ORIGIN, "other log", 1),
        note.replacen("\n3\n", "\nthree\n", 1),
        note.replacen("\n\n", "\n", 1),
        note.replacen("airlock-audit", "someone", 1),
        String::new(),
    ] {
        assert!(Checkpoint::from_note(&bad).is_err(), "{bad}");
    }

    let line = cp.to_jsonl_line();
    assert_eq!(Checkpoint::from_jsonl_line(line.as_bytes()).unwrap(), cp);
    assert!(serde_json::from_str::<AuditEvent>(&line).is_err());
    assert!(Checkpoint::from_jsonl_line(to_jsonl_line(&log[0]).as_bytes()).is_err());
    // read_jsonl gives the events of a copy with checkpoint lines.
    let text = format!(
        "{}\n{}\n{line}\n",
        to_jsonl_line(&log[0]),
        to_jsonl_line(&log[1])
    );
    assert_eq!(read_jsonl(std::io::Cursor::new(text)).unwrap(), log[..2]);
}

/// The writer puts each checkpoint in the JSONL copy after its event, reopens a copy
/// that ends in a checkpoint line, and publishes the latest checkpoint to the witness.
#[tokio::test]
async fn the_copy_carries_checkpoints_and_the_witness_the_latest() {
    let dir = tempfile::tempdir().unwrap();
    let (jsonl, witness) = (dir.path().join("audit.jsonl"), dir.path().join("witness"));
    let policy = CheckpointPolicy {
        every: 2,
        interval: std::time::Duration::from_secs(60),
    };
    let s = signer().with_policy(policy);
    let key = s.verifying_key();
    let sink = Arc::new(MemorySink::new());
    for round in 0..2 {
        let (log, task) = AuditLog::start_with(
            sink.clone(),
            Some(s.clone()),
            Some(jsonl.clone()),
            Some(witness.clone()),
            None,
        )
        .await
        .unwrap();
        for i in 0..5 {
            log.record(sample(round * 5 + i));
        }
        log.flush().await;
        drop(log);
        task.await.unwrap();
    }
    let stored = sink.events();
    assert_eq!(stored.len(), 10);
    let cps = sink.checkpoints();
    assert_eq!(cps.last().map(|c| c.seq), Some(10));

    let text = std::fs::read_to_string(&jsonl).unwrap();
    let (events, in_file, bad) = read_records(std::io::Cursor::new(&text)).unwrap();
    assert!(bad.is_none());
    assert_eq!(events, stored);
    assert_eq!(in_file, cps);
    assert!(text.ends_with(&format!("{}\n", cps.last().unwrap().to_jsonl_line())));
    let r = verify_jsonl(std::io::Cursor::new(&text), &[], &anchored(&key, policy)).unwrap();
    assert!(r.ok(), "{r}");

    let published = Checkpoint::from_note(&std::fs::read_to_string(&witness).unwrap()).unwrap();
    assert_eq!(&published, cps.last().unwrap());
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(!names.iter().any(|n| n.ends_with(".tmp")), "{names:?}");
}
