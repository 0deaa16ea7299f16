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
#[async_trait::async_trait]
pub trait AuditSink: Send + Sync + 'static {
    /// Appends sealed events (and optionally one checkpoint) atomically, in order.
    /// Either everything is stored or nothing is (one transaction).
    async fn append(
        &self,
        events: &[AuditEvent],
        checkpoint: Option<&Checkpoint>,
    ) -> Result<(), AuditError>;
    /// (last seq, last hash) of the stored log, (0, GENESIS) when empty.
    async fn head(&self) -> Result<(u64, String), AuditError>;
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
    /// Reads the head from `sink` and spawns the writer task. `jsonl_file` is opened in
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
        let (last_seq, last_hash) = sink.head().await?;
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
            chain: Chain::new(last_seq, &last_hash),
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
    chain: Chain,
    /// Fire-and-forget events of a failed batch, written first in the next one.
    retry: Vec<AuditEvent>,
}

/// Most fire-and-forget events kept for a retry while the store is failing.
const MAX_RETRY: usize = 100_000;

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
        let mut attempt = 0;
        let (chain, result) = loop {
            // Seal into a copy; the real head only moves after the sink accepted the batch.
            let mut chain = self.chain.clone();
            for ev in events.iter_mut() {
                chain.seal(ev);
            }
            let checkpoint = self
                .signer
                .as_ref()
                .map(|s| s.sign(chain.last_seq(), chain.head(), Utc::now()));
            let result = self.sink.append(events, checkpoint.as_ref()).await;
            attempt += 1;
            if result.is_err() && attempt < 3 {
                // Another writer (a second replica on the same database) may have
                // appended first: continue the chain from the stored head and retry.
                if let Ok((seq, hash)) = self.sink.head().await {
                    if seq != self.chain.last_seq() || hash != self.chain.head() {
                        self.chain = Chain::new(seq, &hash);
                        continue;
                    }
                }
            }
            break (chain, result);
        };
        let ok = result.is_ok();
        match result {
            Ok(()) => {
                self.chain = chain;
                self.write_jsonl(events).await;
                for (ev, reply) in events.iter().zip(replies.drain(..)) {
                    if let Some(reply) = reply {
                        let _ = reply.send(Ok(ev.seq));
                    }
                }
            }
            Err(e) => {
                let msg = match e {
                    AuditError::Store(m) => m,
                    other => other.to_string(),
                };
                tracing::error!(error = %msg, events = n, "audit store append failed");
                // Callers that wait are told (they fail closed); recorded events are
                // kept and written with the next batch.
                for (ev, reply) in events.drain(..).zip(replies.drain(..)) {
                    match reply {
                        Some(reply) => {
                            let _ = reply.send(Err(AuditError::Store(msg.clone())));
                        }
                        None if self.retry.len() < MAX_RETRY => self.retry.push(ev),
                        None => {
                            tracing::error!(event = %ev.event, "audit retry queue full; event dropped")
                        }
                    }
                }
                // The sink is atomic, so its head should be unchanged; re-read it anyway in
                // case an ambiguous failure (e.g. a timeout after commit) did store the batch.
                match self.sink.head().await {
                    Ok((seq, hash)) => self.chain = Chain::new(seq, &hash),
                    Err(e) => tracing::warn!(error = %e, "audit store head unavailable"),
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
}

#[async_trait::async_trait]
impl AuditSink for MemorySink {
    async fn append(
        &self,
        events: &[AuditEvent],
        checkpoint: Option<&Checkpoint>,
    ) -> Result<(), AuditError> {
        let fail_at = self.fail_at.load(Ordering::SeqCst);
        if self.failing.load(Ordering::SeqCst)
            || (fail_at > 0 && self.lock().events.len() >= fail_at)
        {
            return Err(AuditError::Store("memory sink set to fail".into()));
        }
        let mut inner = self.lock();
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
}
