//! The single audit writer task (group commit) and the storage abstraction.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::{
    to_jsonl_line, AuditError, AuditEvent, Chain, Checkpoint, CheckpointSigner, GENESIS_HASH,
};

/// Most events sealed and written in one batch.
pub const MAX_BATCH: usize = 512;

/// Durable storage of the audit log.
///
/// The writer calls [`AuditSink::seal_append`]: the sink seals the batch on the head it
/// holds and stores it in one step. A sink that several writers share (a database behind
/// several replicas) must override it to read its head and append under one lock.
#[async_trait::async_trait]
pub trait AuditSink: Send + Sync + 'static {
    /// Appends already sealed events (and optionally one checkpoint) atomically, in order,
    /// refusing a batch that does not continue the stored chain.
    /// Either everything is stored or nothing is (one transaction).
    async fn append(
        &self,
        events: &[AuditEvent],
        checkpoint: Option<&Checkpoint>,
    ) -> Result<(), AuditError>;
    /// (last seq, last hash) of the stored log, (0, GENESIS) when empty.
    async fn head(&self) -> Result<(u64, String), AuditError>;
    /// Seals `events` onto the stored chain (seq, `prev_hash`, hash), signs a checkpoint
    /// over the new head when `signer` is given, stores both atomically and returns the
    /// sealed events.
    ///
    /// The default reads [`AuditSink::head`] and then calls [`AuditSink::append`]: right
    /// only for a sink with one writer. Shared sinks override it.
    async fn seal_append(
        &self,
        mut events: Vec<AuditEvent>,
        signer: Option<&CheckpointSigner>,
    ) -> Result<Vec<AuditEvent>, AuditError> {
        let (seq, hash) = self.head().await?;
        let checkpoint = Chain::new(seq, &hash).seal_batch(&mut events, signer, Utc::now());
        self.append(&events, checkpoint.as_ref()).await?;
        Ok(events)
    }
}

/// Reported after every batch the writer attempted (for the audit append latency metric).
#[derive(Clone, Copy, Debug)]
pub struct BatchStats {
    /// Events in the batch.
    pub events: usize,
    /// Time spent in `sink.append` plus the JSONL copy.
    pub elapsed: Duration,
    /// Whether the sink accepted the batch.
    pub ok: bool,
}

/// Callback invoked by the writer task after each batch. Must be cheap and non-blocking.
pub type BatchObserver = Arc<dyn Fn(BatchStats) + Send + Sync>;

type Reply = oneshot::Sender<Result<u64, AuditError>>;

enum Msg {
    Append(Box<AuditEvent>, Option<Reply>),
    Flush(oneshot::Sender<()>),
}

/// Handle to the audit writer. Cheap to clone; the writer task ends when every handle has
/// been dropped and the queue is drained.
#[derive(Clone)]
pub struct AuditLog {
    tx: mpsc::UnboundedSender<Msg>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("closed", &self.tx.is_closed())
            .finish()
    }
}

impl AuditLog {
    /// Checks that `sink` can read its head and spawns the writer task. `jsonl_file` is opened in
    /// append mode (created if missing) before the task starts.
    pub async fn start(
        sink: Arc<dyn AuditSink>,
        signer: Option<CheckpointSigner>,
        jsonl_file: Option<PathBuf>,
    ) -> Result<(AuditLog, JoinHandle<()>), AuditError> {
        Self::start_with(sink, signer, jsonl_file, None).await
    }

    /// Like [`AuditLog::start`], with a callback run after each batch (metrics).
    pub async fn start_with(
        sink: Arc<dyn AuditSink>,
        signer: Option<CheckpointSigner>,
        jsonl_file: Option<PathBuf>,
        on_batch: Option<BatchObserver>,
    ) -> Result<(AuditLog, JoinHandle<()>), AuditError> {
        // Fail at start when the store cannot even be read; the head itself is read
        // again under the store's lock for every batch.
        sink.head().await?;
        let jsonl = match jsonl_file {
            Some(path) => Some(
                tokio::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .await?,
            ),
            None => None,
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let writer = Writer {
            sink,
            signer,
            jsonl,
            on_batch,
            retry: Vec::new(),
        };
        let handle = tokio::spawn(writer.run(rx));
        Ok((AuditLog { tx }, handle))
    }

    /// Queues `ev` and waits until it is durable in the sink; returns its seq.
    /// `Err(AuditError::Store)` means it was NOT stored (fail closed).
    pub async fn append(&self, ev: AuditEvent) -> Result<u64, AuditError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::Append(Box::new(ev), Some(reply)))
            .map_err(|_| AuditError::Closed)?;
        rx.await.map_err(|_| AuditError::Closed)?
    }

    /// Queues `ev` without waiting; a failure is logged by the writer via `tracing::error!`.
    pub fn record(&self, ev: AuditEvent) {
        if self.tx.send(Msg::Append(Box::new(ev), None)).is_err() {
            tracing::error!("audit log closed; event dropped");
        }
    }

    /// Events were sealed in a store transaction of their own (a vote, an expiry): the
    /// JSONL copy catches up from the store.
    pub fn sealed_elsewhere(&self) {
        // Wired to the JSONL catch-up when it lands.
    }

    /// Waits until everything queued before this call has been attempted (stored or failed).
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::Flush(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}

struct Writer {
    sink: Arc<dyn AuditSink>,
    signer: Option<CheckpointSigner>,
    jsonl: Option<tokio::fs::File>,
    on_batch: Option<BatchObserver>,
    /// Fire-and-forget events of a failed batch, written first in the next one.
    retry: Vec<AuditEvent>,
}

/// Most fire-and-forget events kept for a retry while the store is failing.
const MAX_RETRY: usize = 100_000;

/// Pauses before the second and third attempt at a batch a durable caller waits for,
/// when the store failed in a way a retry may fix: three attempts over about 0.8 s,
/// then the callers are told (they fail closed).
const APPEND_BACKOFF: [Duration; 2] = [Duration::from_millis(200), Duration::from_millis(600)];

impl Writer {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Msg>) {
        let mut events: Vec<AuditEvent> = Vec::with_capacity(MAX_BATCH);
        let mut replies: Vec<Option<Reply>> = Vec::with_capacity(MAX_BATCH);
        let mut flushes: Vec<oneshot::Sender<()>> = Vec::new();

        while let Some(first) = rx.recv().await {
            // Events recorded while the store was failing go first, in their order.
            for ev in self.retry.drain(..) {
                events.push(ev);
                replies.push(None);
            }
            let mut next = Some(first);
            while let Some(msg) = next.take() {
                match msg {
                    Msg::Append(ev, reply) => {
                        events.push(*ev);
                        replies.push(reply);
                    }
                    Msg::Flush(done) => flushes.push(done),
                }
                if events.len() >= MAX_BATCH {
                    break;
                }
                next = rx.try_recv().ok();
            }

            if !events.is_empty() {
                self.commit(&mut events, &mut replies).await;
            }
            for done in flushes.drain(..) {
                let _ = done.send(());
            }
        }
        tracing::debug!("audit writer stopped");
    }

    async fn commit(&mut self, events: &mut Vec<AuditEvent>, replies: &mut Vec<Option<Reply>>) {
        let started = Instant::now();
        let n = events.len();
        // Someone waits for this batch: give a transient fault a few chances before
        // failing them closed. A batch of recorded events alone is kept for the next one.
        let durable = replies.iter().any(Option::is_some);
        let mut pauses = APPEND_BACKOFF.iter();
        let result = loop {
            let result = self
                .sink
                .seal_append(events.clone(), self.signer.as_ref())
                .await;
            match (&result, pauses.next()) {
                (Err(e), Some(pause)) if durable && e.is_transient() => {
                    tracing::warn!(error = %e, events = n, "audit store append failed; retrying");
                    tokio::time::sleep(*pause).await;
                }
                _ => break result,
            }
        };
        let ok = result.is_ok();
        match result {
            Ok(sealed) => {
                self.write_jsonl(&sealed).await;
                for (ev, reply) in sealed.iter().zip(replies.drain(..)) {
                    if let Some(reply) = reply {
                        let _ = reply.send(Ok(ev.seq));
                    }
                }
            }
            Err(e) => {
                tracing::error!(error = %e, events = n, "audit store append failed");
                let transient = e.is_transient();
                let msg = match e {
                    AuditError::Store(m) | AuditError::Unavailable(m) => m,
                    other => other.to_string(),
                };
                // Callers that wait are told (they fail closed); recorded events are
                // kept and written with the next batch.
                for (ev, reply) in events.drain(..).zip(replies.drain(..)) {
                    match reply {
                        Some(reply) => {
                            let err = if transient {
                                AuditError::Unavailable(msg.clone())
                            } else {
                                AuditError::Store(msg.clone())
                            };
                            let _ = reply.send(Err(err));
                        }
                        None if self.retry.len() < MAX_RETRY => self.retry.push(ev),
                        None => {
                            tracing::error!(event = %ev.event, "audit retry queue full; event dropped")
                        }
                    }
                }
            }
        }
        events.clear();
        replies.clear();
        if let Some(cb) = &self.on_batch {
            cb(BatchStats {
                events: n,
                elapsed: started.elapsed(),
                ok,
            });
        }
    }

    async fn write_jsonl(&mut self, events: &[AuditEvent]) {
        let Some(file) = self.jsonl.as_mut() else {
            return;
        };
        let mut buf = String::with_capacity(events.len() * 320);
        for ev in events {
            buf.push_str(&to_jsonl_line(ev));
            buf.push('\n');
        }
        let res = async {
            file.write_all(buf.as_bytes()).await?;
            file.flush().await
        }
        .await;
        if let Err(e) = res {
            // The store is the system of record; the JSONL copy is best effort.
            tracing::error!(error = %e, "audit JSONL copy write failed");
        }
    }
}

/// In-memory [`AuditSink`] for tests and `store: memory`-style setups.
#[derive(Debug, Default)]
pub struct MemorySink {
    inner: Mutex<MemoryInner>,
    failing: AtomicBool,
    /// Appends fail once this many events are stored (0: never).
    fail_at: std::sync::atomic::AtomicUsize,
}

#[derive(Debug, Default)]
struct MemoryInner {
    events: Vec<AuditEvent>,
    checkpoints: Vec<Checkpoint>,
    appends: usize,
}

impl MemorySink {
    pub fn new() -> Self {
        Self::default()
    }

    /// While set, every `append` fails with `AuditError::Store` and stores nothing.
    pub fn set_failing(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }

    /// Every `append` fails once `n` events are stored (a fault in the middle of a flow).
    pub fn fail_after(&self, n: usize) {
        self.fail_at.store(n, Ordering::SeqCst);
    }

    pub fn events(&self) -> Vec<AuditEvent> {
        self.lock().events.clone()
    }

    pub fn checkpoints(&self) -> Vec<Checkpoint> {
        self.lock().checkpoints.clone()
    }

    /// Number of successful `append` calls (batches).
    pub fn batches(&self) -> usize {
        self.lock().appends
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The contents, locked for a write, or the failure a test asked for.
    fn writable(&self) -> Result<std::sync::MutexGuard<'_, MemoryInner>, AuditError> {
        let inner = self.lock();
        let fail_at = self.fail_at.load(Ordering::SeqCst);
        if self.failing.load(Ordering::SeqCst) || (fail_at > 0 && inner.events.len() >= fail_at) {
            return Err(AuditError::Store("memory sink set to fail".into()));
        }
        Ok(inner)
    }
}

#[async_trait::async_trait]
impl AuditSink for MemorySink {
    async fn append(
        &self,
        events: &[AuditEvent],
        checkpoint: Option<&Checkpoint>,
    ) -> Result<(), AuditError> {
        let mut inner = self.writable()?;
        let expected = inner.events.last().map_or(1, |e| e.seq + 1);
        if events.first().is_some_and(|e| e.seq != expected) {
            return Err(AuditError::Store(format!(
                "seq conflict: expected {expected}, got {}",
                events[0].seq
            )));
        }
        inner.events.extend_from_slice(events);
        if let Some(cp) = checkpoint {
            inner.checkpoints.push(cp.clone());
        }
        inner.appends += 1;
        Ok(())
    }

    async fn head(&self) -> Result<(u64, String), AuditError> {
        let inner = self.lock();
        Ok(inner
            .events
            .last()
            .map_or((0, GENESIS_HASH.to_string()), |e| (e.seq, e.hash.clone())))
    }

    /// Seals and stores under the sink's mutex, so writers sharing it never conflict.
    async fn seal_append(
        &self,
        mut events: Vec<AuditEvent>,
        signer: Option<&CheckpointSigner>,
    ) -> Result<Vec<AuditEvent>, AuditError> {
        let mut inner = self.writable()?;
        let mut chain = inner
            .events
            .last()
            .map_or_else(Chain::genesis, |e| Chain::new(e.seq, &e.hash));
        let checkpoint = chain.seal_batch(&mut events, signer, Utc::now());
        inner.events.extend_from_slice(&events);
        if let Some(cp) = checkpoint {
            inner.checkpoints.push(cp);
        }
        inner.appends += 1;
        Ok(events)
    }
}
