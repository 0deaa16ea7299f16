//! The embedded SQLite store (`store: sqlite://airlock.db`), created on first start.
//!
//! One connection in WAL mode behind an async mutex; a call takes the mutex first and
//! only then runs on tokio's blocking pool, so the async runtime never waits on disk
//! and a burst of thousands of held requests queues as cheap futures, not as
//! blocking threads. The readiness check ([`Store::ping`]) writes through a second
//! connection of its own with a short busy timeout, so a full disk or a lock another
//! process holds shows within about half a second. Schema migrations are the numbered
//! files in `migrations/sqlite/`, applied in order and recorded in `schema_migrations`.

use super::outbox::{is_lifecycle, OutboxCounts, OutboxItem, Settle};
use super::{
    Approval, Approver, Decision, Quorum, Requester, Status, Store, StoreError, Vote, VoteAudit,
    VoteResult,
};
use crate::audit::{
    format_time, AuditEvent, Chain, Checkpoint, CheckpointSigner, StoredRow, GENESIS_HASH,
};
use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;

/// Schema migrations, in order. Never edit one that has shipped; add a new file.
const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../../migrations/sqlite/0001_init.sql")),
    (
        2,
        include_str!("../../migrations/sqlite/0002_forwarding.sql"),
    ),
    (3, include_str!("../../migrations/sqlite/0003_outbox.sql")),
    (
        4,
        include_str!("../../migrations/sqlite/0004_requester.sql"),
    ),
];

/// How long a write waits for a lock held by another process before failing.
const BUSY_TIMEOUT: Duration = Duration::from_millis(1500);

/// How long the readiness check waits for the write lock: a lock another process
/// holds shows in `/readyz` within about half a second.
const PING_BUSY_TIMEOUT: Duration = Duration::from_millis(500);

/// Whether a SQLite failure may pass if the call is tried again: the database was busy or
/// locked by another connection or process.
pub(super) fn is_transient(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

/// Inserts sealed events and their checkpoints inside `tx`.
fn insert_audit(
    tx: &rusqlite::Transaction<'_>,
    events: &[AuditEvent],
    checkpoints: &[Checkpoint],
) -> Result<(), StoreError> {
    {
        let mut st = tx.prepare_cached(
            "INSERT INTO audit_events (seq, time, event, hash, line) VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        for ev in events {
            st.execute(params![
                ev.seq as i64,
                format_time(&ev.time),
                ev.event,
                ev.hash,
                crate::audit::to_jsonl_line(ev)
            ])?;
        }
    }
    for cp in checkpoints {
        tx.execute(
            "INSERT OR REPLACE INTO audit_checkpoints (seq, hash, time, signature) VALUES (?1, ?2, ?3, ?4)",
            params![cp.seq as i64, cp.hash, format_time(&cp.time), cp.signature],
        )?;
    }
    Ok(())
}

/// (last seq, last hash) of the audit log, read with `c` (inside a transaction or not).
fn audit_head_of(c: &Connection) -> Result<(u64, String), StoreError> {
    let row: Option<(i64, String)> = c
        .query_row(
            "SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    Ok(row
        .map(|(s, h)| (s as u64, h))
        .unwrap_or((0, GENESIS_HASH.to_string())))
}

/// Seals `events` onto the chain head read inside `tx` and inserts them (with a signed
/// checkpoint when `signer` is given). The caller's IMMEDIATE transaction holds the write
/// lock, so nothing can append in between.
fn seal_in(
    tx: &rusqlite::Transaction<'_>,
    events: &mut [AuditEvent],
    signer: Option<&CheckpointSigner>,
    outbox: &[String],
) -> Result<(), StoreError> {
    if events.is_empty() {
        return Ok(());
    }
    let (seq, hash) = audit_head_of(tx)?;
    let checkpoints = Chain::new(seq, &hash).seal_batch(events, signer, Utc::now());
    insert_audit(tx, events, &checkpoints)?;
    insert_outbox(tx, events, outbox)
}

/// Writes an outbox row per channel for every lifecycle event among `events` (sealed),
/// inside the transaction that sealed them.
fn insert_outbox(
    tx: &rusqlite::Transaction<'_>,
    events: &[AuditEvent],
    channels: &[String],
) -> Result<(), StoreError> {
    if channels.is_empty() {
        return Ok(());
    }
    let now = ts(&Utc::now());
    let mut st = tx.prepare_cached(
        "INSERT INTO outbox (approval_id, channel, seq, event, line, created, next_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)",
    )?;
    for ev in events.iter().filter(|e| is_lifecycle(e)) {
        let line = crate::audit::to_jsonl_line(ev);
        for ch in channels {
            st.execute(params![
                ev.approval_id,
                ch,
                ev.seq as i64,
                ev.event,
                line,
                now
            ])?;
        }
    }
    Ok(())
}

/// A SQLite database file (or an in-memory one) holding everything airlock persists.
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
    /// A second connection to the file for the readiness check ([`Store::ping`]), so it
    /// never queues behind requests waiting for a lock; `None` in memory.
    probe: Option<Arc<std::sync::Mutex<Connection>>>,
    /// The database file (none in memory).
    path: Option<std::path::PathBuf>,
    /// This process's instance and the lock file marking it alive.
    instance: std::sync::Mutex<Option<(String, Option<std::fs::File>)>>,
    /// The channels lifecycle events are written to the outbox for.
    outbox: std::sync::RwLock<Arc<Vec<String>>>,
}

/// The stored checkpoints `tail` (a WHERE/ORDER BY clause) selects.
fn checkpoints_where(
    c: &Connection,
    tail: &str,
    params: &[&dyn rusqlite::ToSql],
) -> Result<Vec<Checkpoint>, StoreError> {
    let mut st = c.prepare_cached(&format!(
        "SELECT seq, hash, time, signature FROM audit_checkpoints {tail}"
    ))?;
    let rows = st.query_map(params, |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (seq, hash, time, signature) = row?;
        out.push(Checkpoint {
            seq: seq as u64,
            hash,
            time: parse_ts(&time)?,
            signature,
        });
    }
    Ok(out)
}

/// An audit event from its stored line.
fn decode_line(line: &str) -> Result<AuditEvent, StoreError> {
    serde_json::from_str(line).map_err(|e| StoreError::Corrupt(format!("audit event: {e}")))
}

fn ts(t: &DateTime<Utc>) -> String {
    format_time(t)
}

fn parse_ts(s: &str) -> Result<DateTime<Utc>, StoreError> {
    crate::audit::parse_time(s).map_err(|e| StoreError::Corrupt(format!("bad time {s:?}: {e}")))
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and migrates it.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        if let Some(dir) = path.parent() {
            if !dir.as_os_str().is_empty() && !dir.exists() {
                std::fs::create_dir_all(dir).map_err(|e| StoreError::Open {
                    path: dir.to_path_buf(),
                    reason: e.to_string(),
                })?;
            }
        }
        let conn = Connection::open(path).map_err(|e| StoreError::Open {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // FULL: a commit (a vote, a held event) survives power loss, not just a crash.
        conn.pragma_update(None, "synchronous", "FULL")?;
        let mut store = SqliteStore::init(conn)?;
        let probe = Connection::open(path).map_err(|e| StoreError::Open {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        probe.busy_timeout(PING_BUSY_TIMEOUT)?;
        probe.pragma_update(None, "synchronous", "FULL")?;
        store.probe = Some(Arc::new(std::sync::Mutex::new(probe)));
        store.path = Some(path.to_path_buf());
        Ok(store)
    }

    /// The lock file marking instance `id` alive: `<db>-instances/<id>.lock`.
    fn instance_file(&self, id: &str) -> Option<std::path::PathBuf> {
        let db = self.path.as_ref()?;
        let safe: String = id
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
            .collect();
        let mut dir = db.clone().into_os_string();
        dir.push("-instances");
        Some(std::path::PathBuf::from(dir).join(format!("{safe}.lock")))
    }

    /// An in-memory database (tests, `rules` tooling).
    pub fn open_memory() -> Result<SqliteStore, StoreError> {
        SqliteStore::init(Connection::open_in_memory()?)
    }

    fn init(mut conn: Connection) -> Result<SqliteStore, StoreError> {
        conn.busy_timeout(BUSY_TIMEOUT)?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.execute_batch("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied TEXT NOT NULL)")?;
        let current: i64 = conn.query_row(
            "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
            [],
            |r| r.get(0),
        )?;
        for (version, sql) in MIGRATIONS {
            if *version <= current {
                continue;
            }
            let tx = conn.transaction()?;
            tx.execute_batch(sql)?;
            tx.execute(
                "INSERT INTO schema_migrations (version, applied) VALUES (?1, ?2)",
                params![version, ts(&Utc::now())],
            )?;
            tx.commit()?;
        }
        let latest = MIGRATIONS.last().map(|m| m.0).unwrap_or(0);
        if current > latest {
            return Err(StoreError::SchemaTooNew {
                found: current,
                latest,
            });
        }
        Ok(SqliteStore {
            conn: Arc::new(Mutex::new(conn)),
            probe: None,
            path: None,
            instance: std::sync::Mutex::new(None),
            outbox: std::sync::RwLock::new(Arc::new(Vec::new())),
        })
    }

    /// The channels lifecycle events are written to the outbox for.
    fn outbox(&self) -> Arc<Vec<String>> {
        match self.outbox.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    async fn with<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let mut guard = self.conn.clone().lock_owned().await;
        tokio::task::spawn_blocking(move || f(&mut guard)).await?
    }
}

const APPROVAL_COLS: &str = "id, status, agent, owner, digest, body_sha256, rules, policy, method, upstream, host, url, justification, show, request_id, created, expires, decided, decided_by, reason, consumed, forwarder, requester";

fn row_to_approval(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawApproval> {
    Ok(RawApproval {
        id: r.get(0)?,
        status: r.get(1)?,
        agent: r.get(2)?,
        owner: r.get(3)?,
        digest: r.get(4)?,
        body_sha256: r.get(5)?,
        rules: r.get(6)?,
        policy: r.get(7)?,
        method: r.get(8)?,
        upstream: r.get(9)?,
        host: r.get(10)?,
        url: r.get(11)?,
        justification: r.get(12)?,
        show: r.get(13)?,
        request_id: r.get(14)?,
        created: r.get(15)?,
        expires: r.get(16)?,
        decided: r.get(17)?,
        decided_by: r.get(18)?,
        reason: r.get(19)?,
        consumed: r.get(20)?,
        forwarder: r.get(21)?,
        requester: r.get(22)?,
    })
}

/// Columns as stored, before decoding.
struct RawApproval {
    id: String,
    status: String,
    agent: String,
    owner: Option<String>,
    digest: String,
    body_sha256: String,
    rules: String,
    policy: String,
    method: String,
    upstream: String,
    host: Option<String>,
    url: String,
    justification: Option<String>,
    show: Option<String>,
    request_id: String,
    created: String,
    expires: String,
    decided: Option<String>,
    decided_by: Option<String>,
    reason: Option<String>,
    consumed: Option<String>,
    forwarder: Option<String>,
    requester: Option<String>,
}

impl RawApproval {
    fn decode(self, votes: Vec<Vote>) -> Result<Approval, StoreError> {
        let json_err = |what: &str, e: serde_json::Error| {
            StoreError::Corrupt(format!("approval {}: bad {what}: {e}", self.id))
        };
        Ok(Approval {
            status: Status::parse(&self.status)
                .ok_or_else(|| StoreError::Corrupt(format!("bad status {:?}", self.status)))?,
            rules: serde_json::from_str(&self.rules).map_err(|e| json_err("rules", e))?,
            policy: serde_json::from_str(&self.policy).map_err(|e| json_err("policy", e))?,
            show: match &self.show {
                Some(s) => Some(serde_json::from_str(s).map_err(|e| json_err("show", e))?),
                None => None,
            },
            created: parse_ts(&self.created)?,
            expires: parse_ts(&self.expires)?,
            decided: self.decided.as_deref().map(parse_ts).transpose()?,
            consumed: self.consumed.as_deref().map(parse_ts).transpose()?,
            requester: match &self.requester {
                Some(s) => serde_json::from_str(s).map_err(|e| json_err("requester", e))?,
                None => Requester::default(),
            },
            id: self.id,
            agent: self.agent,
            owner: self.owner,
            digest: self.digest,
            body_sha256: self.body_sha256,
            method: self.method,
            upstream: self.upstream,
            host: self.host,
            url: self.url,
            justification: self.justification,
            request_id: self.request_id,
            decided_by: self.decided_by,
            reason: self.reason,
            forwarder: self.forwarder,
            votes,
        })
    }
}

/// A vote's `groups` column: a JSON array, or NULL for none.
fn decode_groups(text: Option<&str>) -> Result<Vec<String>, StoreError> {
    match text {
        None => Ok(Vec::new()),
        Some(t) => serde_json::from_str(t)
            .map_err(|e| StoreError::Corrupt(format!("bad vote groups: {e}"))),
    }
}

fn load_votes(conn: &Connection, id: &str) -> Result<Vec<Vote>, StoreError> {
    let mut stmt = conn.prepare_cached("SELECT reviewer, decision, reason, time, groups FROM votes WHERE approval_id = ?1 ORDER BY time, reviewer")?;
    let rows = stmt.query_map([id], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, Option<String>>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, Option<String>>(4)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (reviewer, decision, reason, time, groups) = row?;
        out.push(Vote {
            groups: decode_groups(groups.as_deref())?,
            reviewer,
            decision: if decision == "deny" {
                Decision::Deny
            } else {
                Decision::Approve
            },
            reason,
            time: parse_ts(&time)?,
        });
    }
    Ok(out)
}

fn load_approval(conn: &Connection, id: &str) -> Result<Option<Approval>, StoreError> {
    let raw = conn
        .prepare_cached(&format!(
            "SELECT {APPROVAL_COLS} FROM approvals WHERE id = ?1"
        ))?
        .query_row([id], row_to_approval)
        .optional()?;
    match raw {
        Some(raw) => {
            let votes = load_votes(conn, &raw.id)?;
            Ok(Some(raw.decode(votes)?))
        }
        None => Ok(None),
    }
}

#[async_trait::async_trait]
impl Store for SqliteStore {
    /// Readiness means writable: takes the write lock (waiting at most
    /// [`PING_BUSY_TIMEOUT`] on a file) and commits a real write, so a full disk or a
    /// lock held by another process fails it.
    async fn ping(&self) -> Result<(), StoreError> {
        match &self.probe {
            Some(probe) => {
                let probe = probe.clone();
                tokio::task::spawn_blocking(move || {
                    heartbeat(&mut probe.lock().unwrap_or_else(|p| p.into_inner()))
                })
                .await?
            }
            None => self.with(heartbeat).await,
        }
    }

    async fn open_approval(
        &self,
        a: &Approval,
        held: Option<AuditEvent>,
        signer: Option<&CheckpointSigner>,
    ) -> Result<Option<String>, StoreError> {
        let outbox = self.outbox();
        let (a, signer) = (a.clone(), signer.cloned());
        self.with(move |c| {
            let rules = serde_json::to_string(&a.rules).map_err(|source| StoreError::Encode { what: "rules", source })?;
            let policy = serde_json::to_string(&a.policy).map_err(|source| StoreError::Encode { what: "policy", source })?;
            let show = a.show.as_ref().map(|s| s.to_string());
            let requester = serde_json::to_string(&a.requester).map_err(|source| StoreError::Encode { what: "requester", source })?;
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let existing: Option<String> = tx
                .prepare_cached("SELECT id FROM approvals WHERE agent = ?1 AND digest = ?2 AND status = 'pending' AND expires > ?3 ORDER BY created DESC LIMIT 1")?
                .query_row(params![a.agent, a.digest, ts(&a.created)], |r| r.get(0))
                .optional()?;
            if existing.is_some() {
                return Ok(existing);
            }
            tx.execute(
                &format!("INSERT INTO approvals ({APPROVAL_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, NULL, NULL, NULL, NULL, NULL, ?18)"),
                params![
                    a.id, a.status.as_str(), a.agent, a.owner, a.digest, a.body_sha256, rules, policy,
                    a.method, a.upstream, a.host, a.url, a.justification, show, a.request_id,
                    ts(&a.created), ts(&a.expires), requester
                ],
            )?;
            seal_in(&tx, &mut Vec::from_iter(held), signer.as_ref(), &outbox)?;
            tx.commit()?;
            Ok(None)
        })
        .await
    }

    async fn approval(&self, id: &str) -> Result<Option<Approval>, StoreError> {
        let id = id.to_string();
        self.with(move |c| load_approval(c, &id)).await
    }

    async fn approvals(
        &self,
        status: Option<Status>,
        limit: usize,
    ) -> Result<Vec<Approval>, StoreError> {
        self.with(move |c| {
            let limit = limit as i64;
            let raws: Vec<RawApproval> = match status {
                Some(s) => {
                    let mut st = c.prepare_cached(&format!("SELECT {APPROVAL_COLS} FROM approvals WHERE status = ?1 ORDER BY created DESC, id LIMIT ?2"))?;
                    let rows = st.query_map(params![s.as_str(), limit], row_to_approval)?;
                    rows.collect::<rusqlite::Result<_>>()?
                }
                None => {
                    let mut st = c.prepare_cached(&format!("SELECT {APPROVAL_COLS} FROM approvals ORDER BY created DESC, id LIMIT ?1"))?;
                    let rows = st.query_map(params![limit], row_to_approval)?;
                    rows.collect::<rusqlite::Result<_>>()?
                }
            };
            raws.into_iter()
                .map(|r| {
                    let votes = load_votes(c, &r.id)?;
                    r.decode(votes)
                })
                .collect()
        })
        .await
    }

    async fn find_active(&self, agent: &str, digest: &str) -> Result<Option<Approval>, StoreError> {
        let (agent, digest) = (agent.to_string(), digest.to_string());
        self.with(move |c| {
            let id: Option<String> = c
                .prepare_cached("SELECT id FROM approvals WHERE agent = ?1 AND digest = ?2 AND status IN ('pending', 'approved', 'outcome_unknown') ORDER BY created DESC LIMIT 1")?
                .query_row(params![agent, digest], |r| r.get(0))
                .optional()?;
            match id {
                Some(id) => load_approval(c, &id),
                None => Ok(None),
            }
        })
        .await
    }

    async fn vote(
        &self,
        id: &str,
        vote: &Vote,
        quorum: &Quorum,
        now: DateTime<Utc>,
        audit: &VoteAudit,
        signer: Option<&CheckpointSigner>,
    ) -> Result<VoteResult, StoreError> {
        let outbox = self.outbox();
        let (id, vote, audit, signer) =
            (id.to_string(), vote.clone(), audit.clone(), signer.cloned());
        let quorum = quorum.clone();
        self.with(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let row: Option<(String, String)> = tx
                .query_row("SELECT status, expires FROM approvals WHERE id = ?1", [&id], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            let Some((status, expires)) = row else {
                return Ok(VoteResult::NotFound);
            };
            let status = Status::parse(&status).ok_or_else(|| StoreError::Corrupt(format!("bad status {status:?}")))?;
            if status != Status::Pending {
                return Ok(VoteResult::AlreadyDecided(status));
            }
            let result = if parse_ts(&expires)? <= now {
                tx.execute(
                    "UPDATE approvals SET status = 'expired', decided = ?2 WHERE id = ?1 AND status = 'pending'",
                    params![id, ts(&now)],
                )?;
                VoteResult::ExpiredNow
            } else {
                let groups = (!vote.groups.is_empty())
                    .then(|| serde_json::to_string(&vote.groups))
                    .transpose()
                    .map_err(|source| StoreError::Encode { what: "groups", source })?;
                let inserted = tx.execute(
                    "INSERT OR IGNORE INTO votes (approval_id, reviewer, decision, reason, time, groups) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![id, vote.reviewer, vote.decision.as_str(), vote.reason, ts(&vote.time), groups],
                )?;
                if inserted == 0 {
                    return Ok(VoteResult::AlreadyVoted);
                }
                let rows: Vec<(String, Option<String>)> = tx
                    .prepare("SELECT reviewer, groups FROM votes WHERE approval_id = ?1 AND decision = 'approve'")?
                    .query_map([&id], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<Result<_, _>>()?;
                let approvers = rows
                    .into_iter()
                    .map(|(id, g)| Ok(Approver { id, groups: decode_groups(g.as_deref())? }))
                    .collect::<Result<Vec<_>, StoreError>>()?;
                let new = Status::after_vote(vote.decision, &approvers, &quorum);
                if new != Status::Pending {
                    tx.execute(
                        "UPDATE approvals SET status = ?2, decided = ?3, decided_by = ?4, reason = ?5 WHERE id = ?1 AND status = 'pending'",
                        params![id, new.as_str(), ts(&now), vote.reviewer, vote.reason],
                    )?;
                }
                VoteResult::Recorded(new)
            };
            seal_in(&tx, &mut audit.for_result(&result), signer.as_ref(), &outbox)?;
            tx.commit()?;
            Ok(result)
        })
        .await
    }

    async fn transition_audited(
        &self,
        id: &str,
        from: Status,
        to: Status,
        now: DateTime<Utc>,
        reason: Option<&str>,
        event: Option<AuditEvent>,
        signer: Option<&CheckpointSigner>,
    ) -> Result<bool, StoreError> {
        let outbox = self.outbox();
        let (id, reason, signer) = (id.to_string(), reason.map(str::to_string), signer.cloned());
        self.with(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let n = if to == Status::Consumed {
                tx.execute(
                    "UPDATE approvals SET status = ?3, consumed = ?4 WHERE id = ?1 AND status = ?2",
                    params![id, from.as_str(), to.as_str(), ts(&now)],
                )?
            } else if from == Status::Forwarding {
                tx.execute(
                    "UPDATE approvals SET status = ?3, reason = COALESCE(?4, reason) WHERE id = ?1 AND status = ?2",
                    params![id, from.as_str(), to.as_str(), reason],
                )?
            } else {
                tx.execute(
                    "UPDATE approvals SET status = ?3, decided = ?4, reason = COALESCE(?5, reason) WHERE id = ?1 AND status = ?2",
                    params![id, from.as_str(), to.as_str(), ts(&now), reason],
                )?
            };
            if n == 1 {
                seal_in(&tx, &mut Vec::from_iter(event), signer.as_ref(), &outbox)?;
            }
            tx.commit()?;
            Ok(n == 1)
        })
        .await
    }

    async fn claim(
        &self,
        id: &str,
        forwarder: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let (id, forwarder) = (id.to_string(), forwarder.to_string());
        self.with(move |c| {
            let n = c.execute(
                "UPDATE approvals SET status = 'forwarding', consumed = ?3, forwarder = ?2 WHERE id = ?1 AND status = 'approved'",
                params![id, forwarder, ts(&now)],
            )?;
            Ok(n == 1)
        })
        .await
    }

    /// Takes an exclusive lock on `<db>-instances/<id>.lock` for the life of the process
    /// (released by the kernel when it dies, kill -9 included). In memory: just noted.
    async fn register_instance(&self, id: &str) -> Result<(), StoreError> {
        let mut me = self.instance.lock().unwrap_or_else(|p| p.into_inner());
        if me.as_ref().is_some_and(|(mine, _)| mine == id) {
            return Ok(());
        }
        let lock = match self.instance_file(id) {
            Some(file) => {
                let open_err = |e: std::io::Error| StoreError::Open {
                    path: file.clone(),
                    reason: e.to_string(),
                };
                if let Some(dir) = file.parent() {
                    std::fs::create_dir_all(dir).map_err(open_err)?;
                }
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(&file)
                    .map_err(open_err)?;
                f.lock().map_err(open_err)?;
                Some(f)
            }
            None => None,
        };
        *me = Some((id.to_string(), lock));
        Ok(())
    }

    /// Alive while some process holds its lock file: another airlock on the same
    /// database file (it must not take over that one's forwards) or this one.
    async fn instance_alive(&self, id: &str) -> Result<bool, StoreError> {
        {
            let me = self.instance.lock().unwrap_or_else(|p| p.into_inner());
            if me.as_ref().is_some_and(|(mine, _)| mine == id) {
                return Ok(true);
            }
        }
        let Some(file) = self.instance_file(id) else {
            return Ok(false);
        };
        let f = match std::fs::OpenOptions::new().write(true).open(&file) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => {
                return Err(StoreError::Open {
                    path: file,
                    reason: e.to_string(),
                })
            }
        };
        match f.try_lock() {
            Ok(()) => {
                // Nobody holds it: that instance is gone. Its file goes too.
                let _ = std::fs::remove_file(&file);
                Ok(false)
            }
            Err(std::fs::TryLockError::WouldBlock) => Ok(true),
            Err(std::fs::TryLockError::Error(e)) => Err(StoreError::Open {
                path: file,
                reason: e.to_string(),
            }),
        }
    }

    async fn decided_among(&self, ids: &[String]) -> Result<Vec<String>, StoreError> {
        let ids = serde_json::to_string(ids).map_err(|source| StoreError::Encode {
            what: "approval ids",
            source,
        })?;
        self.with(move |c| {
            let mut st = c.prepare_cached(
                "SELECT id FROM approvals WHERE status <> 'pending' AND id IN (SELECT value FROM json_each(?1))",
            )?;
            let rows = st.query_map([ids], |r| r.get::<_, String>(0))?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn audit_events_of(&self, approval_id: &str) -> Result<Vec<AuditEvent>, StoreError> {
        // The stored line is the event's canonical JSON: match its approval_id member.
        let pattern = format!("%\"approval_id\":{}%", serde_json::Value::from(approval_id));
        let id = approval_id.to_string();
        self.with(move |c| {
            let mut st =
                c.prepare("SELECT line FROM audit_events WHERE line LIKE ?1 ORDER BY seq")?;
            let rows = st.query_map([pattern], |r| r.get::<_, String>(0))?;
            let mut out = Vec::new();
            for line in rows {
                let ev = decode_line(&line?)?;
                if ev.approval_id.as_deref() == Some(id.as_str()) {
                    out.push(ev);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn pending_of(&self, agent: &str, now: DateTime<Utc>) -> Result<usize, StoreError> {
        let agent = agent.to_string();
        self.with(move |c| {
            let n: i64 = c
                .prepare_cached("SELECT COUNT(*) FROM approvals WHERE agent = ?1 AND status = 'pending' AND expires > ?2")?
                .query_row(params![agent, ts(&now)], |r| r.get(0))?;
            Ok(usize::try_from(n).unwrap_or(0))
        })
        .await
    }

    async fn due(&self, now: DateTime<Utc>) -> Result<Vec<String>, StoreError> {
        self.with(move |c| {
            // Times are fixed-width RFC 3339 UTC strings, so text order is time order.
            let mut st = c.prepare_cached(
                "SELECT id FROM approvals WHERE status = 'pending' AND expires <= ?1",
            )?;
            let rows = st.query_map([ts(&now)], |r| r.get::<_, String>(0))?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn audit_append(
        &self,
        events: &[AuditEvent],
        checkpoint: Option<&Checkpoint>,
    ) -> Result<(), StoreError> {
        let events = events.to_vec();
        let checkpoint = checkpoint.cloned();
        self.with(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let last: i64 =
                tx.query_row("SELECT COALESCE(MAX(seq), 0) FROM audit_events", [], |r| {
                    r.get(0)
                })?;
            if let Some(first) = events.first() {
                if first.seq as i64 != last + 1 {
                    return Err(StoreError::ChainConflict(format!(
                        "next seq is {} but the batch starts at {}",
                        last + 1,
                        first.seq
                    )));
                }
            }
            insert_audit(&tx, &events, checkpoint.as_slice())?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    fn set_outbox_channels(&self, channels: Vec<String>) {
        match self.outbox.write() {
            Ok(mut g) => *g = Arc::new(channels),
            Err(p) => *p.into_inner() = Arc::new(channels),
        }
    }

    async fn outbox_claim(
        &self,
        instance: &str,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<OutboxItem>, StoreError> {
        let instance = instance.to_string();
        self.with(move |c| {
            let now = ts(&now);
            // Polled often: look without the write lock first.
            let due: Option<i64> = c
                .prepare_cached("SELECT id FROM outbox WHERE done IS NULL AND next_at <= ?1 AND (claimed_until IS NULL OR claimed_until <= ?1) LIMIT 1")?
                .query_row(params![now], |r| r.get(0))
                .optional()?;
            if due.is_none() {
                return Ok(Vec::new());
            }
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let rows: Vec<(i64, String, String, String, i64, String)> = {
                let mut st = tx.prepare_cached(
                    "SELECT id, approval_id, channel, line, attempts, created FROM outbox o \
                     WHERE done IS NULL AND next_at <= ?1 \
                       AND (claimed_until IS NULL OR claimed_until <= ?1) \
                       AND id = (SELECT MIN(id) FROM outbox p WHERE p.approval_id = o.approval_id AND p.channel = o.channel AND p.done IS NULL) \
                     ORDER BY id LIMIT ?2",
                )?;
                let rows = st.query_map(params![now, limit as i64], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?))
                })?;
                rows.collect::<Result<_, _>>()?
            };
            let mut out = Vec::with_capacity(rows.len());
            for (id, approval_id, channel, line, attempts, created) in rows {
                tx.execute(
                    "UPDATE outbox SET claimed_by = ?2, claimed_until = ?3 WHERE id = ?1",
                    params![id, instance, ts(&lease_until)],
                )?;
                out.push(OutboxItem {
                    id,
                    approval_id,
                    channel,
                    event: decode_line(&line)?,
                    attempts: attempts as u32,
                    created: parse_ts(&created)?,
                });
            }
            tx.commit()?;
            Ok(out)
        })
        .await
    }

    async fn outbox_settle(
        &self,
        id: i64,
        instance: &str,
        now: DateTime<Utc>,
        how: &Settle,
    ) -> Result<(), StoreError> {
        let (instance, how) = (instance.to_string(), how.clone());
        self.with(move |c| {
            let now = ts(&now);
            match how {
                Settle::Done { outcome } => c.execute(
                    "UPDATE outbox SET done = ?3, outcome = ?4, attempts = attempts + 1, claimed_by = NULL, claimed_until = NULL WHERE id = ?1 AND claimed_by = ?2",
                    params![id, instance, now, outcome],
                )?,
                Settle::Retry { at, error } => c.execute(
                    "UPDATE outbox SET next_at = ?3, last_error = ?4, attempts = attempts + 1, claimed_by = NULL, claimed_until = NULL WHERE id = ?1 AND claimed_by = ?2",
                    params![id, instance, ts(&at), error],
                )?,
                Settle::Failed { error } => c.execute(
                    "UPDATE outbox SET done = ?3, outcome = 'failed', last_error = ?4, attempts = attempts + 1, claimed_by = NULL, claimed_until = NULL WHERE id = ?1 AND claimed_by = ?2",
                    params![id, instance, now, error],
                )?,
            };
            Ok(())
        })
        .await
    }

    async fn outbox_counts(&self) -> Result<OutboxCounts, StoreError> {
        self.with(|c| {
            let (pending, delivered, failed): (i64, i64, i64) = c.query_row(
                "SELECT COALESCE(SUM(done IS NULL), 0), COALESCE(SUM(done IS NOT NULL AND outcome <> 'failed'), 0), COALESCE(SUM(outcome = 'failed'), 0) FROM outbox",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )?;
            Ok(OutboxCounts {
                pending: pending as u64,
                delivered: delivered as u64,
                failed: failed as u64,
            })
        })
        .await
    }

    async fn recent_decisions(
        &self,
        agent: &str,
        rule: &str,
        except: &str,
        limit: usize,
    ) -> Result<Vec<Approval>, StoreError> {
        let (agent, rule, except) = (agent.to_string(), rule.to_string(), except.to_string());
        self.with(move |c| {
            let ids: Vec<(String, String)> = {
                let mut st = c.prepare_cached("SELECT id, rules FROM approvals WHERE agent = ?1 AND id <> ?2 AND status NOT IN ('pending', 'cancelled') ORDER BY created DESC LIMIT 200")?;
                let rows = st.query_map(params![agent, except], |r| Ok((r.get(0)?, r.get(1)?)))?;
                rows.collect::<rusqlite::Result<_>>()?
            };
            let mut out = Vec::new();
            for (id, rules) in ids {
                let rules: Vec<String> = serde_json::from_str(&rules).unwrap_or_default();
                if !rules.iter().any(|r| r == &rule) {
                    continue;
                }
                if let Some(a) = load_approval(c, &id)? {
                    out.push(a);
                }
                if out.len() >= limit {
                    break;
                }
            }
            Ok(out)
        })
        .await
    }

    async fn outbox_prune(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        self.with(move |c| {
            let n = c.execute(
                "DELETE FROM outbox WHERE done IS NOT NULL AND done < ?1",
                params![ts(&before)],
            )?;
            Ok(n as u64)
        })
        .await
    }

    async fn message_ref(
        &self,
        approval_id: &str,
        channel: &str,
    ) -> Result<Option<String>, StoreError> {
        let (a, ch) = (approval_id.to_string(), channel.to_string());
        self.with(move |c| {
            Ok(c.query_row(
                "SELECT ref FROM channel_messages WHERE approval_id = ?1 AND channel = ?2",
                params![a, ch],
                |r| r.get(0),
            )
            .optional()?)
        })
        .await
    }

    async fn set_message_ref(
        &self,
        approval_id: &str,
        channel: &str,
        reference: &str,
    ) -> Result<(), StoreError> {
        let (a, ch, r) = (
            approval_id.to_string(),
            channel.to_string(),
            reference.to_string(),
        );
        self.with(move |c| {
            c.execute(
                "INSERT INTO channel_messages (approval_id, channel, ref) VALUES (?1, ?2, ?3) ON CONFLICT (approval_id, channel) DO UPDATE SET ref = excluded.ref",
                params![a, ch, r],
            )?;
            Ok(())
        })
        .await
    }

    async fn mark_once(
        &self,
        approval_id: &str,
        mark: &str,
        now: DateTime<Utc>,
        event: AuditEvent,
        signer: Option<&CheckpointSigner>,
    ) -> Result<bool, StoreError> {
        let outbox = self.outbox();
        let (a, m, signer) = (approval_id.to_string(), mark.to_string(), signer.cloned());
        self.with(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let n = tx.execute(
                "INSERT OR IGNORE INTO approval_marks (approval_id, mark, time) SELECT ?1, ?2, ?3 WHERE EXISTS (SELECT 1 FROM approvals WHERE id = ?1 AND status = 'pending')",
                params![a, m, ts(&now)],
            )?;
            if n == 1 {
                seal_in(&tx, &mut [event], signer.as_ref(), &outbox)?;
            }
            tx.commit()?;
            Ok(n == 1)
        })
        .await
    }

    async fn following_up(&self, limit: usize) -> Result<Vec<Approval>, StoreError> {
        self.with(move |c| {
            let raws: Vec<RawApproval> = {
                let mut st = c.prepare_cached(&format!("SELECT {APPROVAL_COLS} FROM approvals WHERE status = 'pending' AND (json_extract(policy, '$.remind') IS NOT NULL OR json_extract(policy, '$.escalate') IS NOT NULL) ORDER BY created DESC, id LIMIT ?1"))?;
                let rows = st.query_map(params![limit.min(i64::MAX as usize) as i64], row_to_approval)?;
                rows.collect::<rusqlite::Result<_>>()?
            };
            raws.into_iter()
                .map(|r| {
                    let votes = load_votes(c, &r.id)?;
                    r.decode(votes)
                })
                .collect()
        })
        .await
    }

    async fn marks_of(&self, approval_id: &str) -> Result<Vec<String>, StoreError> {
        let a = approval_id.to_string();
        self.with(move |c| {
            let mut st = c.prepare_cached(
                "SELECT mark FROM approval_marks WHERE approval_id = ?1 ORDER BY time, mark",
            )?;
            let rows = st.query_map([a], |r| r.get::<_, String>(0))?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn audit_seal_append(
        &self,
        events: Vec<AuditEvent>,
        signer: Option<&CheckpointSigner>,
    ) -> Result<Vec<AuditEvent>, StoreError> {
        if events.is_empty() {
            return Ok(events);
        }
        let outbox = self.outbox();
        let signer = signer.cloned();
        self.with(move |c| {
            let mut events = events;
            // IMMEDIATE takes the write lock first: no other connection or process can
            // append between reading the head and committing.
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            seal_in(&tx, &mut events, signer.as_ref(), &outbox)?;
            tx.commit()?;
            Ok(events)
        })
        .await
    }

    async fn audit_head(&self) -> Result<(u64, String), StoreError> {
        self.with(|c| audit_head_of(c)).await
    }

    async fn audit_events(
        &self,
        since: Option<DateTime<Utc>>,
    ) -> Result<Vec<AuditEvent>, StoreError> {
        self.with(move |c| {
            let mut st =
                c.prepare("SELECT line FROM audit_events WHERE time >= ?1 ORDER BY seq")?;
            let from = since.map(|t| ts(&t)).unwrap_or_default();
            let rows = st.query_map([from], |r| r.get::<_, String>(0))?;
            let mut out = Vec::new();
            for line in rows {
                out.push(decode_line(&line?)?);
            }
            Ok(out)
        })
        .await
    }

    async fn audit_checkpoints(&self) -> Result<Vec<Checkpoint>, StoreError> {
        self.audit_checkpoints_between(0, i64::MAX as u64).await
    }

    async fn audit_checkpoints_between(
        &self,
        after: u64,
        upto: u64,
    ) -> Result<Vec<Checkpoint>, StoreError> {
        let upto = upto.min(i64::MAX as u64);
        self.with(move |c| {
            checkpoints_where(
                c,
                "WHERE seq > ?1 AND seq <= ?2 ORDER BY seq",
                params![after as i64, upto as i64],
            )
        })
        .await
    }

    async fn audit_last_checkpoint(&self) -> Result<Option<Checkpoint>, StoreError> {
        self.with(|c| checkpoints_where(c, "ORDER BY seq DESC LIMIT 1", params![]))
            .await
            .map(|mut found| found.pop())
    }

    async fn audit_rows(&self) -> Result<Vec<StoredRow>, StoreError> {
        self.with(|c| {
            let mut st =
                c.prepare("SELECT seq, time, event, hash, line FROM audit_events ORDER BY seq")?;
            let rows = st.query_map([], |r| {
                Ok(StoredRow {
                    seq: r.get::<_, i64>(0)? as u64,
                    time: r.get(1)?,
                    event: r.get(2)?,
                    hash: r.get(3)?,
                    line: r.get(4)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn audit_events_after(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<AuditEvent>, StoreError> {
        self.with(move |c| {
            let mut st = c.prepare_cached(
                "SELECT line FROM audit_events WHERE seq > ?1 ORDER BY seq LIMIT ?2",
            )?;
            let rows = st.query_map(params![after as i64, limit as i64], |r| {
                r.get::<_, String>(0)
            })?;
            rows.map(|line| decode_line(&line?)).collect()
        })
        .await
    }
}

/// A write that changes nothing, committed: `user_version` set to what it is (it
/// rewrites the database header, so the commit writes a page).
fn heartbeat(c: &mut Connection) -> Result<(), StoreError> {
    let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    tx.pragma_update(None, "user_version", version)?;
    tx.commit()?;
    Ok(())
}
