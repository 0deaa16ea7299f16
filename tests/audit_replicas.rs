//! Two airlock replicas writing one audit log: every durable append lands, in one
//! unbroken, verifiable chain with seqs 1..=N and no gap or duplicate, on PostgreSQL
//! (one fresh schema per test; skipped without a server, except in CI) and on one SQLite
//! file opened twice.

mod common;

use airlock::audit::{
    generate_signing_key_pem, verify, AuditError, AuditEvent, AuditLog, AuditSink, Checkpoint,
    CheckpointSigner,
};
use airlock::store::{self, Store, StoreSink};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// A replica's sink that counts the writes its store refused, so the test can tell
/// "never conflicted" from "conflicted and was retried".
struct Replica {
    store: StoreSink,
    refused: AtomicUsize,
}

impl Replica {
    fn new(store: Arc<dyn Store>) -> Arc<Replica> {
        Arc::new(Replica {
            store: StoreSink(store),
            refused: AtomicUsize::new(0),
        })
    }
}

#[async_trait::async_trait]
impl AuditSink for Replica {
    async fn append(
        &self,
        events: &[AuditEvent],
        checkpoint: Option<&Checkpoint>,
    ) -> Result<(), AuditError> {
        self.store.append(events, checkpoint).await
    }
    async fn head(&self) -> Result<(u64, String), AuditError> {
        self.store.head().await
    }
    async fn seal_append(
        &self,
        events: Vec<AuditEvent>,
        signer: Option<&CheckpointSigner>,
    ) -> Result<Vec<AuditEvent>, AuditError> {
        let result = self.store.seal_append(events, signer).await;
        if let Err(e) = &result {
            eprintln!("store refused a batch: {e}");
            self.refused.fetch_add(1, Ordering::SeqCst);
        }
        result
    }
}

/// Concurrent clients, and durable appends each makes (alternating between replicas).
const TASKS: usize = 8;
const PER_TASK: usize = 50;

/// Two writers (`AuditLog`s, one per replica) over stores `a` and `b` of one database;
/// `TASKS` clients append `PER_TASK` events each, alternating between the replicas.
async fn two_replicas_append(a: Arc<dyn Store>, b: Arc<dyn Store>) {
    let signer = CheckpointSigner::from_pem_str(&generate_signing_key_pem()).unwrap();
    let key = signer.verifying_key();
    let replicas = [Replica::new(a.clone()), Replica::new(b)];
    let (log_a, _ta) = AuditLog::start(replicas[0].clone(), Some(signer.clone()), None)
        .await
        .unwrap();
    let (log_b, _tb) = AuditLog::start(replicas[1].clone(), Some(signer), None)
        .await
        .unwrap();
    let logs = [log_a, log_b];
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let logs = logs.clone();
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            for j in 0..PER_TASK {
                let id = format!("req_{t}_{j}");
                let mut ev = AuditEvent::new("passed");
                ev.request_id = Some(id.clone());
                let seq = logs[(t + j) % 2]
                    .append(ev)
                    .await
                    .unwrap_or_else(|e| panic!("append of {id} failed: {e}"));
                got.push((id, seq));
            }
            got
        }));
    }
    let mut answered: HashMap<String, u64> = HashMap::new();
    for t in tasks {
        answered.extend(t.await.unwrap());
    }
    for (name, r) in ["a", "b"].iter().zip(&replicas) {
        assert_eq!(
            r.refused.load(Ordering::SeqCst),
            0,
            "replica {name}: writers sealing in the store never conflict, not even once"
        );
    }
    let total = (TASKS * PER_TASK) as u64;
    let mut seqs: Vec<u64> = answered.values().copied().collect();
    seqs.sort_unstable();
    assert_eq!(
        seqs,
        (1..=total).collect::<Vec<_>>(),
        "seqs answered to callers"
    );

    let events = a.audit_events(None).await.unwrap();
    let stored: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(stored, (1..=total).collect::<Vec<_>>(), "seqs stored");
    for ev in &events {
        let id = ev.request_id.as_deref().unwrap_or_default();
        assert_eq!(
            answered.get(id),
            Some(&ev.seq),
            "the seq answered for {id} is the one stored"
        );
    }
    let checkpoints = a.audit_checkpoints().await.unwrap();
    assert!(!checkpoints.is_empty(), "signed checkpoints are stored");
    let report = verify(&events, &checkpoints, Some(&key));
    assert!(report.ok(), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_on_postgres_never_conflict() {
    let Some(url) = common::postgres_schema("airlock_r_pg", "audit_replicas pg").await else {
        return;
    };
    let tmp = std::env::temp_dir();
    let a = store::open(&url, &tmp).await.unwrap();
    let b = store::open(&url, &tmp).await.unwrap();
    two_replicas_append(a, b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_on_one_sqlite_file_never_conflict() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("airlock.db");
    let a: Arc<dyn Store> = Arc::new(store::sqlite::SqliteStore::open(&path).unwrap());
    let b: Arc<dyn Store> = Arc::new(store::sqlite::SqliteStore::open(&path).unwrap());
    two_replicas_append(a, b).await;
}
