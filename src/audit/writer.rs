//! The single audit writer task (group commit), the storage abstraction, the JSONL
//! copy the writer keeps, and the witness file it publishes the latest signed
//! checkpoint to (`audit.witness`, replaced atomically after an append moved it).
//!
//! The writer never dies of a fault it can meet: a store that refuses a batch fails the
//! callers waiting for it (they fail closed), keeps recorded events for a retry, and
//! is probed in the background until it takes writes again; a JSONL copy that cannot be
//! written falls behind and catches up from the store. What it knows of its own health
//! — stopped, last write failed, copy behind — [`AuditLog`] reports for `/readyz`.
//!
//! The JSONL copy holds whole lines only, every event of the chain in seq order, with no
//! gap and no duplicate, each stored checkpoint on a line of its own right after the
//! event it covers (read back with the events, [`AuditSink::checkpoints_between`]): a write that fails is cut back to the last whole line, and the
//! events the copy missed (a failed write, a full disk, batches sealed by another
//! replica) are read back from the store ([`AuditSink::events_after`]) in bounded steps
//! between live batches. At start a half-written last line is cut off and the copy
//! catches up; a copy whose last event is not the store's event at that seq belongs to
//! another log and is left untouched (logged, and named by `/readyz`).

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

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
    /// The default reads [`AuditSink::head`] and then calls [`AuditSink::append`] with the
    /// checkpoint over the new head only: right only for a sink with one writer, taking
    /// batches no larger than the signer's policy allows. Shared sinks, and sinks that
    /// keep every checkpoint of a large batch, override it.
    async fn seal_append(
        &self,
        mut events: Vec<AuditEvent>,
        signer: Option<&CheckpointSigner>,
    ) -> Result<Vec<AuditEvent>, AuditError> {
        let (seq, hash) = self.head().await?;
        let checkpoints = Chain::new(seq, &hash).seal_batch(&mut events, signer, Utc::now());
        self.append(&events, checkpoints.last()).await?;
        Ok(events)
    }
    /// Up to `limit` stored events with a seq above `after`, in seq order: what a JSONL
    /// copy that fell behind catches up with. The default cannot read events back, so
    /// a copy behind such a sink stays behind.
    async fn events_after(&self, after: u64, limit: usize) -> Result<Vec<AuditEvent>, AuditError> {
        let _ = (after, limit);
        Err(AuditError::Store(
            "this audit sink cannot read its events back".into(),
        ))
    }
    /// The stored checkpoints with a seq above `after` and at most `upto`, in seq order:
    /// what the JSONL copy writes next to those events. The default has none.
    async fn checkpoints_between(
        &self,
        after: u64,
        upto: u64,
    ) -> Result<Vec<Checkpoint>, AuditError> {
        let _ = (after, upto);
        Ok(Vec::new())
    }
    /// The stored checkpoint with the highest seq: what the witness publishes. The
    /// default has none.
    async fn last_checkpoint(&self) -> Result<Option<Checkpoint>, AuditError> {
        Ok(None)
    }
    /// Whether the sink takes writes again after a failed one (a small real write where
    /// the sink has one). The default reads the head.
    async fn probe(&self) -> Result<(), AuditError> {
        self.head().await.map(drop)
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
    /// Try the failing sink again now.
    Recheck(oneshot::Sender<()>),
    /// Events were sealed elsewhere: bring the JSONL copy up to date.
    CatchUp,
}

/// What the writer knows about itself, shared with every [`AuditLog`] handle.
#[derive(Debug, Default)]
struct Health {
    /// Why the last write to the sink failed; `None` once a write or a probe succeeds.
    store: Mutex<Option<String>>,
    /// Why the JSONL copy is behind the sink; `None` while it keeps up.
    copy: Mutex<Option<String>>,
}

fn get(m: &Mutex<Option<String>>) -> Option<String> {
    m.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

fn set(m: &Mutex<Option<String>>, v: Option<String>) {
    *m.lock().unwrap_or_else(|p| p.into_inner()) = v;
}

/// Handle to the audit writer. Cheap to clone; the writer task ends when every handle has
/// been dropped and the queue is drained.
#[derive(Clone)]
pub struct AuditLog {
    tx: mpsc::UnboundedSender<Msg>,
    health: Arc<Health>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("closed", &self.tx.is_closed())
            .finish()
    }
}

impl AuditLog {
    /// Checks that `sink` can read its head and spawns the writer task. `jsonl_file` is opened
    /// (created if missing, a half-written last line cut off) before the task starts; the
    /// task then catches it up with the sink.
    pub async fn start(
        sink: Arc<dyn AuditSink>,
        signer: Option<CheckpointSigner>,
        jsonl_file: Option<PathBuf>,
    ) -> Result<(AuditLog, JoinHandle<()>), AuditError> {
        Self::start_with(sink, signer, jsonl_file, None, None).await
    }

    /// Like [`AuditLog::start`], with a witness file the latest signed checkpoint is
    /// published to (`audit.witness`, atomically replaced; needs a `signer`) and a
    /// callback run after each batch (metrics).
    pub async fn start_with(
        sink: Arc<dyn AuditSink>,
        signer: Option<CheckpointSigner>,
        jsonl_file: Option<PathBuf>,
        witness: Option<PathBuf>,
        on_batch: Option<BatchObserver>,
    ) -> Result<(AuditLog, JoinHandle<()>), AuditError> {
        // Fail at start when the store cannot even be read; the head itself is read
        // again under the store's lock for every batch.
        sink.head().await?;
        let health = Arc::new(Health::default());
        let copy = match jsonl_file {
            Some(path) => {
                let mut copy = tokio::task::spawn_blocking(move || JsonlCopy::open(&path))
                    .await
                    .map_err(|e| AuditError::Io(std::io::Error::other(e)))??;
                if let Err(why) = copy.matches(sink.as_ref()).await {
                    tracing::error!(
                        file = %copy.path.display(),
                        "audit JSONL copy belongs to another log ({why}): it is left as it is and no longer written; move it away and restart to rebuild it"
                    );
                    set(&health.copy, Some(why));
                    copy.foreign = true;
                }
                Some(copy)
            }
            None => None,
        };
        let witness = match (witness, &signer) {
            (Some(path), Some(s)) => Some(Witness {
                path,
                key: s.verifying_key(),
                published: 0,
                failing: false,
            }),
            _ => None,
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let writer = Writer {
            sink,
            signer,
            witness,
            copy_due: copy.as_ref().map(|_| Instant::now()),
            copy,
            on_batch,
            retry: Vec::new(),
            health: health.clone(),
            store_due: None,
            store_backoff: MIN_BACKOFF,
            copy_backoff: MIN_BACKOFF,
        };
        let handle = tokio::spawn(writer.run(rx));
        Ok((AuditLog { tx, health }, handle))
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

    /// Events were sealed in a store transaction of their own (a vote, an expiry, a
    /// settled forward): the JSONL copy catches up from the store now, without waiting.
    pub fn sealed_elsewhere(&self) {
        let _ = self.tx.send(Msg::CatchUp);
    }

    /// Waits until everything queued before this call has been attempted (stored or
    /// failed), and the JSONL copy has caught up with the sink as far as it can.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::Flush(tx)).is_ok() {
            let _ = rx.await;
        }
    }

    /// Asks the writer to try a failing sink again now (write the events it keeps, or
    /// probe the sink) instead of at its next background attempt, and waits for that:
    /// [`AuditLog::ready`] is current afterwards. Nothing to do when the sink is fine.
    pub async fn recheck(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::Recheck(tx)).is_ok() {
            let _ = rx.await;
        }
    }

    /// Whether the writer task still runs. It ends only once every handle is gone, so a
    /// handle that sees it stopped sees it died: nothing can be made durable any more.
    pub fn alive(&self) -> bool {
        !self.tx.is_closed()
    }

    /// Whether events can be made durable now; `Err` says why not: the writer has
    /// stopped, or its last write to the sink failed and neither a write nor a probe has
    /// succeeded since.
    pub fn ready(&self) -> Result<(), String> {
        if !self.alive() {
            return Err("the audit writer has stopped".into());
        }
        match get(&self.health.store) {
            Some(why) => Err(format!("the audit log cannot be written: {why}")),
            None => Ok(()),
        }
    }

    /// Why the JSONL copy (`audit.file`) is behind the sink, while it is. It catches up
    /// by itself once it can be written, unless it belongs to another log.
    pub fn copy_behind(&self) -> Option<String> {
        get(&self.health.copy)
    }
}

struct Writer {
    sink: Arc<dyn AuditSink>,
    signer: Option<CheckpointSigner>,
    /// Where the latest signed checkpoint is published (`audit.witness`).
    witness: Option<Witness>,
    copy: Option<JsonlCopy>,
    on_batch: Option<BatchObserver>,
    /// Fire-and-forget events of a failed batch, written first in the next one.
    retry: Vec<AuditEvent>,
    health: Arc<Health>,
    /// When the kept events are retried or the failing sink probed next.
    store_due: Option<Instant>,
    store_backoff: Duration,
    /// When the JSONL copy next reads the sink for events it lacks.
    copy_due: Option<Instant>,
    copy_backoff: Duration,
}

/// Most fire-and-forget events kept for a retry while the store is failing.
const MAX_RETRY: usize = 100_000;

/// Pauses before the second and third attempt at a batch a durable caller waits for,
/// when the store failed in a way a retry may fix: three attempts over about 0.8 s,
/// then the callers are told (they fail closed).
const APPEND_BACKOFF: [Duration; 2] = [Duration::from_millis(200), Duration::from_millis(600)];

/// Pauses between background attempts after a failure (store retry or probe, JSONL
/// copy write), doubling from the first to the last.
const MIN_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// How often a JSONL copy that keeps up looks for events other replicas sealed.
const COPY_POLL: Duration = Duration::from_secs(1);

/// Most events one catch-up step of the JSONL copy reads and writes.
const COPY_STEP: usize = 512;

fn next_backoff(b: &mut Duration) -> Duration {
    let now = *b;
    *b = (*b * 2).min(MAX_BACKOFF);
    now
}

impl Writer {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Msg>) {
        let mut events: Vec<AuditEvent> = Vec::with_capacity(MAX_BATCH);
        let mut replies: Vec<Option<Reply>> = Vec::with_capacity(MAX_BATCH);
        let mut flushes: Vec<oneshot::Sender<()>> = Vec::new();
        let mut rechecks: Vec<oneshot::Sender<()>> = Vec::new();
        let mut catch_up = false;

        loop {
            let due = match (self.store_due, self.copy_due) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let msg = match due {
                Some(at) => tokio::select! {
                    biased;
                    msg = rx.recv() => msg,
                    () = tokio::time::sleep_until(at) => {
                        self.background().await;
                        continue;
                    }
                },
                None => rx.recv().await,
            };
            let Some(first) = msg else { break };
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
                    Msg::Recheck(done) => rechecks.push(done),
                    Msg::CatchUp => catch_up = true,
                }
                if events.len() >= MAX_BATCH {
                    break;
                }
                next = rx.try_recv().ok();
            }

            if !events.is_empty() {
                self.commit(&mut events, &mut replies).await;
            }
            if !rechecks.is_empty() {
                if self.store_due.is_some() {
                    self.retry_store().await;
                }
                for done in rechecks.drain(..) {
                    let _ = done.send(());
                }
            }
            if !flushes.is_empty() || std::mem::take(&mut catch_up) {
                self.catch_up().await;
                self.publish().await;
            }
            for done in flushes.drain(..) {
                let _ = done.send(());
            }
        }
        tracing::debug!("audit writer stopped");
    }

    /// The work due between batches: retry the kept events or probe the failing sink,
    /// and one step of the JSONL copy's catch-up.
    async fn background(&mut self) {
        let now = Instant::now();
        if self.store_due.is_some_and(|at| at <= now) {
            self.retry_store().await;
        }
        if self.copy_due.is_some_and(|at| at <= now) {
            self.copy_step().await;
        }
    }

    /// After a failed write: writes the kept events, or else probes the sink.
    async fn retry_store(&mut self) {
        self.store_due = None;
        if !self.retry.is_empty() {
            let mut events: Vec<AuditEvent> = self.retry.drain(..).collect();
            let mut replies: Vec<Option<Reply>> = events.iter().map(|_| None).collect();
            self.commit(&mut events, &mut replies).await;
        } else if get(&self.health.store).is_some() {
            match self.sink.probe().await {
                Ok(()) => self.store_ok(),
                Err(e) => self.store_failed(e.to_string()),
            }
        }
    }

    fn store_ok(&mut self) {
        if get(&self.health.store).is_some() {
            tracing::info!("audit store takes writes again");
        }
        set(&self.health.store, None);
        self.store_backoff = MIN_BACKOFF;
        self.store_due = None;
    }

    fn store_failed(&mut self, why: String) {
        set(&self.health.store, Some(why));
        self.store_due = Some(Instant::now() + next_backoff(&mut self.store_backoff));
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
                self.store_ok();
                self.copy_sealed(&sealed).await;
                self.publish().await;
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
                self.store_failed(msg.clone());
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

    /// Copies a batch just sealed. A batch that continues the copy is written at once;
    /// after a gap (events another replica sealed, or a write that failed) the copy
    /// catches up from the sink instead, in steps between batches.
    async fn copy_sealed(&mut self, sealed: &[AuditEvent]) {
        let (Some(copy), Some(first)) = (&self.copy, sealed.first()) else {
            return;
        };
        if copy.foreign {
            return;
        }
        if first.seq == copy.seq + 1 {
            if self.write_copy(sealed.to_vec()).await {
                self.copy_due = Some(Instant::now() + COPY_POLL);
            }
        } else if first.seq > copy.seq + 1 && get(&self.health.copy).is_none() {
            self.copy_due = Some(Instant::now());
        }
        // Otherwise the copy is behind after a failure: the background catch-up, at
        // its pace, has it.
    }

    /// Steps the JSONL copy's catch-up until it has reached the sink's head or cannot go on.
    async fn catch_up(&mut self) {
        while self.copy_step().await {}
    }

    /// One step of the copy's catch-up: when the sink's head is past the copy, reads up
    /// to [`COPY_STEP`] events after the copy's last seq and appends them. True when it
    /// made progress (more may be waiting).
    async fn copy_step(&mut self) -> bool {
        let Some(copy) = self.copy.as_ref().filter(|c| !c.foreign) else {
            self.copy_due = None;
            return false;
        };
        let after = copy.seq;
        let head = match self.sink.head().await {
            Ok((seq, _)) => seq,
            Err(e) => {
                self.copy_failed(format!("cannot read the store: {e}"));
                return false;
            }
        };
        if head <= after {
            if get(&self.health.copy).is_some() {
                tracing::info!("audit JSONL copy caught up with the store");
                set(&self.health.copy, None);
            }
            self.copy_backoff = MIN_BACKOFF;
            self.copy_due = Some(Instant::now() + COPY_POLL);
            return false;
        }
        let events = match self.sink.events_after(after, COPY_STEP).await {
            Ok(events) => events,
            Err(e) => {
                self.copy_failed(format!("cannot read the store: {e}"));
                return false;
            }
        };
        if !self.write_copy(events).await {
            return false;
        }
        if self.copy.as_ref().is_some_and(|c| c.seq > after) {
            self.copy_due = Some(Instant::now());
            true
        } else {
            self.copy_failed(format!(
                "the store's head is seq {head} but it gave no event after seq {after}"
            ));
            false
        }
    }

    /// Publishes the latest stored checkpoint to the witness file when it is newer than
    /// the one published last (write to a temporary file, then rename over the witness).
    async fn publish(&mut self) {
        let Some(w) = self.witness.as_mut() else {
            return;
        };
        let latest = match self.sink.last_checkpoint().await {
            Ok(Some(cp)) if cp.seq > w.published => cp,
            Ok(_) => return,
            Err(e) => {
                w.failed(format!("cannot read the latest checkpoint: {e}"));
                return;
            }
        };
        let note = latest.to_note(&w.key);
        let path = w.path.clone();
        let written = tokio::task::spawn_blocking(move || publish_note(&path, &note))
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r);
        match written {
            Ok(()) => {
                if w.failing {
                    tracing::info!(file = %w.path.display(), "audit witness written again");
                }
                w.failing = false;
                w.published = latest.seq;
            }
            Err(e) => w.failed(e.to_string()),
        }
    }

    /// Appends `events` (sealed, in seq order) to the copy, skipping what it already
    /// holds, with the stored checkpoints among them when checkpoints are signed. False
    /// when the copy could not take them (it is behind until it catches up).
    async fn write_copy(&mut self, events: Vec<AuditEvent>) -> bool {
        let Some(mut copy) = self.copy.take() else {
            return false;
        };
        let events: Vec<AuditEvent> = events.into_iter().filter(|e| e.seq > copy.seq).collect();
        let Some(first) = events.first() else {
            self.copy = Some(copy);
            return true;
        };
        let upto = events.last().map_or(copy.seq, |e| e.seq);
        let checkpoints = match &self.signer {
            Some(_) => match self.sink.checkpoints_between(copy.seq, upto).await {
                Ok(cps) => cps,
                Err(e) => {
                    self.copy = Some(copy);
                    self.copy_failed(format!("cannot read the store's checkpoints: {e}"));
                    return false;
                }
            },
            None => Vec::new(),
        };
        if first.seq != copy.seq + 1 || (copy.seq > 0 && first.prev_hash != copy.hash) {
            let why = format!(
                "the store's seq {} does not continue the copy's last event (seq {})",
                first.seq, copy.seq
            );
            self.copy = Some(copy);
            self.copy_failed(why);
            return false;
        }
        let written = tokio::task::spawn_blocking(move || {
            let result = copy.append(&events, &checkpoints);
            (copy, result)
        })
        .await;
        match written {
            Ok((copy, result)) => {
                self.copy = Some(copy);
                match result {
                    Ok(()) => true,
                    Err(e) => {
                        self.copy_failed(e.to_string());
                        false
                    }
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "audit JSONL copy: the write task failed; the copy is no longer written");
                set(
                    &self.health.copy,
                    Some(format!("the copy's writer failed: {e}")),
                );
                false
            }
        }
    }

    fn copy_failed(&mut self, why: String) {
        if get(&self.health.copy).is_none() {
            let file = self.copy.as_ref().map(|c| c.path.display().to_string());
            tracing::error!(file = ?file, error = %why, "audit JSONL copy write failed; it catches up from the store once it can");
        }
        set(&self.health.copy, Some(why));
        self.copy_due = Some(Instant::now() + next_backoff(&mut self.copy_backoff));
    }
}

/// The witness file (`audit.witness`) and what was published to it.
struct Witness {
    path: PathBuf,
    key: crate::audit::VerifyingKey,
    /// Seq of the checkpoint published last (0: none yet).
    published: u64,
    /// The last attempt failed (logged once until it works again).
    failing: bool,
}

impl Witness {
    fn failed(&mut self, why: String) {
        if !self.failing {
            tracing::error!(file = %self.path.display(), error = %why, "audit witness not written; retried after the next batch");
        }
        self.failing = true;
    }
}

/// Replaces `path` with `note` atomically: written to `PATH.PID.tmp` (so replicas on one
/// host never share it), synced, renamed over `PATH`.
fn publish_note(path: &Path, note: &str) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}.tmp", std::process::id()));
    let tmp = PathBuf::from(tmp);
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(note.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

/// The JSONL copy of the log (`audit.file`): whole lines, in seq order, each signed
/// checkpoint on a line of its own right after the event it covers.
struct JsonlCopy {
    path: PathBuf,
    file: std::fs::File,
    /// Seq and hash of the last event in the file ((0, GENESIS) when it has none).
    seq: u64,
    hash: String,
    /// Length to cut the file back to before the next write: a failed write may have
    /// left part of a line there, and cutting it failed too.
    cut_to: Option<u64>,
    /// The copy belongs to another log: never written.
    foreign: bool,
}

/// Longest last line [`JsonlCopy::open`] reads back.
const MAX_LINE: u64 = 64 << 20;

impl JsonlCopy {
    /// Opens (creating) the copy and cuts off a half-written last line. Fails when the
    /// file cannot be opened or does not end in an audit event.
    fn open(path: &Path) -> std::io::Result<JsonlCopy> {
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)?;
        let size = file.metadata()?.len();
        let (whole, last) = last_line(&mut file, size)?;
        let not_an_event = |what: String| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "{}: {what}; it is not an audit log airlock wrote: move it away",
                    path.display()
                ),
            )
        };
        let (seq, hash) = match last {
            Some(line) => match serde_json::from_slice::<AuditEvent>(&line) {
                Ok(ev) => (ev.seq, ev.hash),
                // A checkpoint line follows the event it covers: same seq and hash.
                Err(e) => match Checkpoint::from_jsonl_line(&line) {
                    Ok(cp) => (cp.seq, cp.hash),
                    Err(_) => {
                        return Err(not_an_event(format!(
                            "its last line is not an audit event ({e})"
                        )))
                    }
                },
            },
            None => (0, GENESIS_HASH.to_string()),
        };
        if whole < size {
            // A half-written line: what a write cut short by a crash or a full disk left.
            let mut half = Vec::new();
            file.seek(SeekFrom::Start(whole))?;
            Read::by_ref(&mut file).take(16).read_to_end(&mut half)?;
            if !half.iter().all(|b| *b == 0) && half.first() != Some(&b'{') {
                return Err(not_an_event(
                    "it ends in text that is not an audit event".into(),
                ));
            }
            file.set_len(whole)?;
            tracing::warn!(
                file = %path.display(),
                bytes = size - whole,
                "audit JSONL copy: cut off a half-written last line"
            );
        }
        Ok(JsonlCopy {
            path: path.to_path_buf(),
            file,
            seq,
            hash,
            cut_to: None,
            foreign: false,
        })
    }

    /// Checks that the copy's last event is the sink's event at that seq.
    async fn matches(&self, sink: &dyn AuditSink) -> Result<(), String> {
        if self.seq == 0 {
            return Ok(());
        }
        match sink.events_after(self.seq - 1, 1).await {
            Ok(found) => match found.first() {
                Some(ev) if ev.seq == self.seq && ev.hash == self.hash => Ok(()),
                Some(ev) if ev.seq == self.seq => Err(format!(
                    "its seq {} has another hash than the store's",
                    self.seq
                )),
                _ => Err(format!(
                    "it ends at seq {} but the store does not hold that seq",
                    self.seq
                )),
            },
            // A sink that cannot read back cannot be checked.
            Err(_) => Ok(()),
        }
    }

    /// Appends `events`, which continue the copy, as whole lines. On failure the file is
    /// cut back to its last whole line.
    fn append(&mut self, events: &[AuditEvent], checkpoints: &[Checkpoint]) -> std::io::Result<()> {
        if let Some(len) = self.cut_to {
            self.file.set_len(len)?;
            self.cut_to = None;
        }
        let Some(last) = events.last() else {
            return Ok(());
        };
        let mut buf = String::with_capacity(events.len() * 320);
        let mut cps = checkpoints.iter().peekable();
        for ev in events {
            buf.push_str(&to_jsonl_line(ev));
            buf.push('\n');
            while let Some(cp) = cps.next_if(|cp| cp.seq <= ev.seq) {
                if cp.seq == ev.seq && cp.hash == ev.hash {
                    buf.push_str(&cp.to_jsonl_line());
                    buf.push('\n');
                }
            }
        }
        let before = self.file.metadata()?.len();
        if let Err(e) = self
            .file
            .write_all(buf.as_bytes())
            .and_then(|()| self.file.flush())
        {
            if self.file.set_len(before).is_err() {
                self.cut_to = Some(before);
            }
            return Err(e);
        }
        self.seq = last.seq;
        self.hash = last.hash.clone();
        Ok(())
    }
}

/// The length of `file` up to and including its last newline, and its last non-blank
/// line before that (none when it has no whole line).
fn last_line(file: &mut std::fs::File, size: u64) -> std::io::Result<(u64, Option<Vec<u8>>)> {
    // `buf` holds the file's bytes from `pos` to `size`, read backwards in chunks.
    let mut buf: Vec<u8> = Vec::new();
    let mut pos = size;
    loop {
        if let Some(found) = scan_last_line(&buf, pos) {
            return Ok(found);
        }
        if size - pos > MAX_LINE {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "its last line is longer than 64 MiB",
            ));
        }
        let start = pos.saturating_sub(64 << 10);
        let mut chunk = vec![0; (pos - start) as usize];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(&mut chunk)?;
        chunk.extend_from_slice(&buf);
        buf = chunk;
        pos = start;
    }
}

/// [`last_line`] on the bytes `buf` read from offset `pos` to the end; `None` when more
/// of the file must be read first.
fn scan_last_line(buf: &[u8], pos: u64) -> Option<(u64, Option<Vec<u8>>)> {
    let Some(nl) = buf.iter().rposition(|b| *b == b'\n') else {
        return (pos == 0).then_some((0, None));
    };
    let whole = pos + nl as u64 + 1;
    let mut end = nl;
    loop {
        let start = match buf[..end].iter().rposition(|b| *b == b'\n') {
            Some(i) => i + 1,
            None if pos == 0 => 0,
            None => return None,
        };
        let line = &buf[start..end];
        if !line.iter().all(u8::is_ascii_whitespace) {
            return Some((whole, Some(line.to_vec())));
        }
        if start == 0 {
            return Some((whole, None));
        }
        end = start - 1;
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
        inner.checkpoints.extend(checkpoint.cloned());
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
        let checkpoints = chain.seal_batch(&mut events, signer, Utc::now());
        inner.events.extend_from_slice(&events);
        inner.checkpoints.extend(checkpoints);
        inner.appends += 1;
        Ok(events)
    }

    async fn events_after(&self, after: u64, limit: usize) -> Result<Vec<AuditEvent>, AuditError> {
        let inner = self.lock();
        Ok(inner
            .events
            .iter()
            .filter(|e| e.seq > after)
            .take(limit)
            .cloned()
            .collect())
    }

    async fn checkpoints_between(
        &self,
        after: u64,
        upto: u64,
    ) -> Result<Vec<Checkpoint>, AuditError> {
        let inner = self.lock();
        Ok(inner
            .checkpoints
            .iter()
            .filter(|c| c.seq > after && c.seq <= upto)
            .cloned()
            .collect())
    }

    async fn last_checkpoint(&self) -> Result<Option<Checkpoint>, AuditError> {
        Ok(self.lock().checkpoints.last().cloned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{read_jsonl, verify};

    fn event(tag: &str) -> AuditEvent {
        let mut ev = AuditEvent::new("passed");
        ev.reason = Some(tag.to_string());
        ev
    }

    #[test]
    fn the_last_line_is_found_past_blank_lines_and_a_half_line() {
        let scan = |text: &str| scan_last_line(text.as_bytes(), 0);
        assert_eq!(scan(""), Some((0, None)));
        assert_eq!(scan("{\"half"), Some((0, None)));
        assert_eq!(scan("a\n"), Some((2, Some(b"a".to_vec()))));
        assert_eq!(scan("a\nb\n{\"ha"), Some((4, Some(b"b".to_vec()))));
        assert_eq!(scan("a\nb\n\n  \n"), Some((8, Some(b"b".to_vec()))));
        assert_eq!(scan("\n\n"), Some((2, None)));
        // Read from the middle of a file: more is needed to see where the line starts.
        assert_eq!(scan_last_line(b"b\n", 10), None);
        assert_eq!(
            scan_last_line(b"x\nb\n", 10),
            Some((14, Some(b"b".to_vec())))
        );
    }

    #[test]
    fn opening_cuts_a_half_line_and_refuses_a_file_that_is_not_an_audit_log() {
        let dir = tempfile::tempdir().unwrap();
        let mut events = vec![event("a"), event("b")];
        Chain::genesis().seal_batch(&mut events, None, Utc::now());
        let whole: String = events.iter().map(|e| to_jsonl_line(e) + "\n").collect();
        let path = dir.path().join("audit.jsonl");
        std::fs::write(&path, format!("{whole}{{\"seq\":3,\"ev")).unwrap();
        let copy = JsonlCopy::open(&path).unwrap();
        assert_eq!((copy.seq, copy.hash.as_str()), (2, events[1].hash.as_str()));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), whole);

        let other = dir.path().join("notes.txt");
        std::fs::write(&other, "dear diary\n").unwrap();
        let err = JsonlCopy::open(&other).err().expect("refused");
        assert!(err.to_string().contains("not an audit event"), "{err}");
        std::fs::write(&other, format!("{whole}dear diary")).unwrap();
        assert!(JsonlCopy::open(&other).is_err());
        assert_eq!(
            std::fs::read_to_string(&other).unwrap(),
            format!("{whole}dear diary"),
            "left untouched"
        );
    }

    /// Two writers on one sink, each with its own copy: each copy ends up holding the
    /// whole chain, the other writer's events fetched from the sink.
    #[tokio::test]
    async fn copies_of_two_writers_on_one_sink_each_hold_the_whole_chain() {
        let dir = tempfile::tempdir().unwrap();
        let sink = Arc::new(MemorySink::new());
        let files = [dir.path().join("a.jsonl"), dir.path().join("b.jsonl")];
        let mut logs = Vec::new();
        for f in &files {
            logs.push(
                AuditLog::start(sink.clone(), None, Some(f.clone()))
                    .await
                    .unwrap()
                    .0,
            );
        }
        for i in 0..30 {
            logs[i % 2].append(event(&format!("e{i}"))).await.unwrap();
        }
        for log in &logs {
            log.flush().await;
            assert!(log.copy_behind().is_none());
        }
        let stored = sink.events();
        for f in &files {
            let copy =
                read_jsonl(std::io::BufReader::new(std::fs::File::open(f).unwrap())).unwrap();
            assert_eq!(copy, stored, "{}", f.display());
            assert!(verify(&copy, &[], None).ok());
        }
    }

    /// A copy that belongs to another log is left untouched and reported.
    #[tokio::test]
    async fn a_copy_of_another_log_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let mut foreign = vec![event("x"), event("y"), event("z")];
        Chain::genesis().seal_batch(&mut foreign, None, Utc::now());
        let text: String = foreign.iter().map(|e| to_jsonl_line(e) + "\n").collect();
        std::fs::write(&path, &text).unwrap();
        let sink = Arc::new(MemorySink::new());
        let (log, _task) = AuditLog::start(sink, None, Some(path.clone()))
            .await
            .unwrap();
        log.append(event("mine")).await.unwrap();
        log.flush().await;
        assert!(log.copy_behind().is_some_and(|w| w.contains("seq 3")));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
    }

    /// A writer that has stopped makes the log unready, and nothing is durable.
    #[tokio::test]
    async fn a_stopped_writer_is_not_ready() {
        let (log, task) = AuditLog::start(Arc::new(MemorySink::new()), None, None)
            .await
            .unwrap();
        assert!(log.alive() && log.ready().is_ok());
        task.abort();
        let _ = task.await;
        assert!(!log.alive());
        assert!(log.ready().is_err_and(|w| w.contains("stopped")));
    }

    /// A failed write makes the log unready until the sink takes writes again, and the
    /// kept events are written then without a new event to carry them.
    #[tokio::test(start_paused = true)]
    async fn a_failed_write_is_unready_until_the_sink_recovers() {
        let sink = Arc::new(MemorySink::new());
        let (log, _task) = AuditLog::start(sink.clone(), None, None).await.unwrap();
        sink.set_failing(true);
        log.record(event("kept"));
        log.flush().await;
        assert!(log.ready().is_err());
        sink.set_failing(false);
        tokio::time::sleep(MAX_BACKOFF * 2).await;
        assert!(log.ready().is_ok());
        assert_eq!(sink.events().len(), 1);
    }
}
