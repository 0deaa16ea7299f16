//! The PostgreSQL store (`store: postgres://…`), for several airlock replicas sharing
//! one database. Same contract as SQLite: every approval state change is a
//! compare-and-set inside a transaction (`SELECT … FOR UPDATE`), and audit appends
//! take a transaction-scoped advisory lock, read the chain head and seal the batch on it
//! in that same transaction, so any number of replicas append to one chain and never
//! interleave, fork or conflict.
//!
//! Migrations are `migrations/postgres/*.sql`, applied under an advisory lock.

use super::outbox::{is_lifecycle, OutboxCounts, OutboxItem, Settle};
use super::{
    Approval, Approver, Decision, Quorum, Requester, Status, Store, StoreError, Vote, VoteAudit,
    VoteResult,
};
use crate::audit::{
    format_time, AuditEvent, Chain, Checkpoint, CheckpointSigner, StoredRow, GENESIS_HASH,
};
use chrono::{DateTime, Utc};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::Mutex;
use tokio_postgres::{Client, NoTls, Row};

const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../../migrations/postgres/0001_init.sql")),
    (
        2,
        include_str!("../../migrations/postgres/0002_forwarding.sql"),
    ),
    (3, include_str!("../../migrations/postgres/0003_outbox.sql")),
    (
        4,
        include_str!("../../migrations/postgres/0004_requester.sql"),
    ),
];
/// Advisory lock keys (arbitrary constants): migrations and the audit chain.
const MIGRATION_LOCK: i64 = 0x6169_726c_6f63_6b01;
const AUDIT_LOCK: i64 = 0x6169_726c_6f63_6b02;
/// The class of the session advisory locks that mark running airlock instances
/// (two-key form: this class and 32 bits of the instance id's SHA-256).
const INSTANCE_LOCK_CLASS: i32 = 0x6169_726c;
/// The class of the transaction advisory locks that serialize opening approvals for one
/// agent and digest (two-key form, like [`INSTANCE_LOCK_CLASS`]).
const OPEN_LOCK_CLASS: i32 = 0x6169_726d;

/// The advisory lock key of an airlock instance.
fn instance_key(id: &str) -> i32 {
    use sha2::Digest;
    let d = sha2::Sha256::digest(id.as_bytes());
    i32::from_be_bytes([d[0], d[1], d[2], d[3]])
}

/// Seals `events` onto the chain under the audit lock, inside `tx`, and inserts them.
async fn seal_in(
    tx: &tokio_postgres::Transaction<'_>,
    events: &mut [AuditEvent],
    signer: Option<&CheckpointSigner>,
    outbox: &[String],
) -> Result<(), StoreError> {
    if events.is_empty() {
        return Ok(());
    }
    // Held until commit or rollback: every writer on every replica reads the head and
    // appends after the one before it has committed.
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&AUDIT_LOCK])
        .await?;
    let (seq, hash) = audit_head_of(tx).await?;
    let checkpoints = Chain::new(seq, &hash).seal_batch(events, signer, Utc::now());
    insert_audit(tx, events, &checkpoints).await?;
    insert_outbox(tx, events, outbox).await
}

/// Writes an outbox row per channel for every lifecycle event among `events` (sealed),
/// inside the transaction that sealed them.
async fn insert_outbox(
    tx: &tokio_postgres::Transaction<'_>,
    events: &[AuditEvent],
    channels: &[String],
) -> Result<(), StoreError> {
    if channels.is_empty() {
        return Ok(());
    }
    let now = Utc::now();
    for ev in events.iter().filter(|e| is_lifecycle(e)) {
        let line = crate::audit::to_jsonl_line(ev);
        for ch in channels {
            tx.execute(
                "INSERT INTO outbox (approval_id, channel, seq, event, line, created, next_at) VALUES ($1, $2, $3, $4, $5, $6, $6)",
                &[&ev.approval_id, ch, &(ev.seq as i64), &ev.event, &line, &now],
            )
            .await?;
        }
    }
    Ok(())
}

/// Commits a transaction that sealed audit events. A commit whose answer was lost may
/// have been stored: never report it as retryable, or a retry would write it twice.
async fn commit_sealed(tx: tokio_postgres::Transaction<'_>) -> Result<(), StoreError> {
    tx.commit().await.map_err(|e| {
        if e.as_db_error().is_some() {
            StoreError::Postgres(e)
        } else {
            StoreError::CommitUnknown(describe(&e))
        }
    })
}
const POOL_SIZE: usize = 4;

/// A PostgreSQL error as an operator reads it: the server's message when there is one.
pub(super) fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => db.message().to_string(),
        None => e.to_string(),
    }
}

/// Whether a PostgreSQL failure may pass if the call is tried again: the connection broke
/// or could not be made, the server is shutting down or starting, or the transaction lost
/// a serialization, deadlock or lock race.
pub(super) fn is_transient(e: &tokio_postgres::Error) -> bool {
    let Some(db) = e.as_db_error() else {
        // No server answer at all: I/O, a closed connection, a refused connect.
        return true;
    };
    let code = db.code().code();
    code.starts_with("08") // connection exception
        || code.starts_with("40") // transaction rollback: serialization, deadlock
        || code.starts_with("53") // insufficient resources: too many connections
        || code.starts_with("57P") // admin shutdown, crash shutdown, cannot connect now
        || code == "55P03" // lock not available
}

/// Inserts sealed events and their checkpoints inside `tx`.
async fn insert_audit(
    tx: &tokio_postgres::Transaction<'_>,
    events: &[AuditEvent],
    checkpoints: &[Checkpoint],
) -> Result<(), StoreError> {
    let st = tx
        .prepare(
            "INSERT INTO audit_events (seq, time, event, hash, line) VALUES ($1, $2, $3, $4, $5)",
        )
        .await?;
    for ev in events {
        tx.execute(
            &st,
            &[
                &(ev.seq as i64),
                &ev.time,
                &ev.event,
                &ev.hash,
                &crate::audit::to_jsonl_line(ev),
            ],
        )
        .await?;
    }
    for cp in checkpoints {
        tx.execute(
            "INSERT INTO audit_checkpoints (seq, hash, time, signature) VALUES ($1, $2, $3, $4) ON CONFLICT (seq) DO UPDATE SET hash = EXCLUDED.hash, time = EXCLUDED.time, signature = EXCLUDED.signature",
            &[&(cp.seq as i64), &cp.hash, &cp.time, &cp.signature],
        )
        .await?;
    }
    Ok(())
}

/// (last seq, last hash) of the audit log, read through `c` (a client or a transaction).
async fn audit_head_of(
    c: &impl tokio_postgres::GenericClient,
) -> Result<(u64, String), StoreError> {
    let row = c
        .query_opt(
            "SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1",
            &[],
        )
        .await?;
    Ok(match row {
        Some(r) => (r.try_get::<_, i64>(0)? as u64, r.try_get(1)?),
        None => (0, GENESIS_HASH.to_string()),
    })
}

/// A pool of connections to one PostgreSQL database shared by every replica.
pub struct PostgresStore {
    url: String,
    clients: Vec<Mutex<Option<Client>>>,
    next: AtomicUsize,
    /// The session holding this instance's advisory lock ([`Store::register_instance`]),
    /// also listening for other replicas' status changes.
    instance: Mutex<Option<Client>>,
    /// Status changes heard on the instance session ([`Store::changes`]).
    changes: tokio::sync::broadcast::Sender<String>,
    /// The channels lifecycle events are written to the outbox for.
    outbox: std::sync::RwLock<Arc<Vec<String>>>,
}

/// The channel status changes are announced on (NOTIFY payload: the approval id).
const CHANGES: &str = "airlock_approvals";

/// A session whose notifications (NOTIFY on [`CHANGES`]) are passed on to `changes`.
async fn listen(
    url: &str,
    changes: tokio::sync::broadcast::Sender<String>,
) -> Result<Client, StoreError> {
    let (client, mut conn) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| conn.poll_message(cx)).await {
                Some(Ok(tokio_postgres::AsyncMessage::Notification(n))) => {
                    let _ = changes.send(n.payload().to_string());
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "postgres listening session closed");
                    return;
                }
                None => return,
            }
        }
    });
    Ok(client)
}

async fn connect(url: &str) -> Result<Client, StoreError> {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::warn!(error = %e, "postgres connection closed");
        }
    });
    Ok(client)
}

impl PostgresStore {
    /// Connects and migrates.
    pub async fn open(url: &str) -> Result<PostgresStore, StoreError> {
        let mut first = connect(url).await?;
        migrate(&mut first).await?;
        let mut clients = vec![Mutex::new(Some(first))];
        for _ in 1..POOL_SIZE {
            clients.push(Mutex::new(None));
        }
        Ok(PostgresStore {
            url: url.to_string(),
            clients,
            next: AtomicUsize::new(0),
            instance: Mutex::new(None),
            changes: tokio::sync::broadcast::channel(1024).0,
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

    /// A pooled connection, reconnecting a closed one.
    async fn client(&self) -> Result<tokio::sync::MutexGuard<'_, Option<Client>>, StoreError> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.clients.len();
        let mut guard = self.clients[i].lock().await;
        if guard.as_ref().is_none_or(|c| c.is_closed()) {
            *guard = Some(connect(&self.url).await?);
        }
        Ok(guard)
    }
}

async fn migrate(c: &mut Client) -> Result<(), StoreError> {
    let tx = c.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied TIMESTAMPTZ NOT NULL)")
        .await?;
    let current: i64 = tx
        .query_one(
            "SELECT COALESCE(MAX(version), 0)::BIGINT FROM schema_migrations",
            &[],
        )
        .await?
        .get(0);
    let latest = MIGRATIONS.last().map(|m| m.0).unwrap_or(0);
    if current > latest {
        return Err(StoreError::SchemaTooNew {
            found: current,
            latest,
        });
    }
    for (version, sql) in MIGRATIONS {
        if *version > current {
            tx.batch_execute(sql).await?;
            tx.execute(
                "INSERT INTO schema_migrations (version, applied) VALUES ($1, now())",
                &[version],
            )
            .await?;
        }
    }
    tx.commit().await?;
    Ok(())
}

const COLS: &str = "id, status, agent, owner, digest, body_sha256, rules, policy, method, upstream, host, url, justification, show, request_id, created, expires, decided, decided_by, reason, consumed, forwarder, requester";

fn decode(r: &Row, votes: Vec<Vote>) -> Result<Approval, StoreError> {
    let bad = |what: &str, e: String| StoreError::Corrupt(format!("approval: bad {what}: {e}"));
    let status: String = r.try_get(1)?;
    Ok(Approval {
        id: r.try_get(0)?,
        status: Status::parse(&status).ok_or_else(|| bad("status", status.clone()))?,
        agent: r.try_get(2)?,
        owner: r.try_get(3)?,
        digest: r.try_get(4)?,
        body_sha256: r.try_get(5)?,
        rules: serde_json::from_value(r.try_get(6)?).map_err(|e| bad("rules", e.to_string()))?,
        policy: serde_json::from_value(r.try_get(7)?).map_err(|e| bad("policy", e.to_string()))?,
        method: r.try_get(8)?,
        upstream: r.try_get(9)?,
        host: r.try_get(10)?,
        url: r.try_get(11)?,
        justification: r.try_get(12)?,
        show: r.try_get(13)?,
        request_id: r.try_get(14)?,
        created: r.try_get(15)?,
        expires: r.try_get(16)?,
        decided: r.try_get(17)?,
        decided_by: r.try_get(18)?,
        reason: r.try_get(19)?,
        consumed: r.try_get(20)?,
        forwarder: r.try_get(21)?,
        requester: match r.try_get::<_, Option<serde_json::Value>>(22)? {
            Some(v) => serde_json::from_value(v).map_err(|e| bad("requester", e.to_string()))?,
            None => Requester::default(),
        },
        votes,
    })
}

/// A vote's `groups` column: a JSON array, or NULL for none.
fn decode_groups(v: Option<serde_json::Value>) -> Result<Vec<String>, StoreError> {
    match v {
        None => Ok(Vec::new()),
        Some(v) => serde_json::from_value(v)
            .map_err(|e| StoreError::Corrupt(format!("bad vote groups: {e}"))),
    }
}

async fn votes_of(
    c: &impl tokio_postgres::GenericClient,
    id: &str,
) -> Result<Vec<Vote>, StoreError> {
    let rows = c
        .query("SELECT reviewer, decision, reason, time, groups FROM votes WHERE approval_id = $1 ORDER BY time, reviewer", &[&id])
        .await?;
    rows.iter()
        .map(|r| {
            let d: String = r.try_get(1)?;
            Ok(Vote {
                reviewer: r.try_get(0)?,
                decision: if d == "deny" {
                    Decision::Deny
                } else {
                    Decision::Approve
                },
                reason: r.try_get(2)?,
                time: r.try_get(3)?,
                groups: decode_groups(r.try_get(4)?)?,
            })
        })
        .collect()
}

async fn load(
    c: &impl tokio_postgres::GenericClient,
    id: &str,
) -> Result<Option<Approval>, StoreError> {
    let row = c
        .query_opt(
            &format!("SELECT {COLS} FROM approvals WHERE id = $1"),
            &[&id],
        )
        .await?;
    match row {
        Some(r) => {
            let votes = votes_of(c, id).await?;
            Ok(Some(decode(&r, votes)?))
        }
        None => Ok(None),
    }
}

macro_rules! client {
    ($self:ident, $g:ident) => {
        let mut $g = $self.client().await?;
        #[allow(unused_mut)]
        let $g = $g
            .as_mut()
            .ok_or(StoreError::NoConnection("postgres: no connection"))?;
    };
}

#[async_trait::async_trait]
impl Store for PostgresStore {
    async fn ping(&self) -> Result<(), StoreError> {
        client!(self, c);
        // Readiness means writable: a read-only standby is not ready.
        let ro: bool = c.query_one("SELECT pg_is_in_recovery()", &[]).await?.get(0);
        if ro {
            return Err(StoreError::NoConnection(
                "postgres: the server is read-only (in recovery)",
            ));
        }
        c.query_one("SELECT COUNT(*) FROM schema_migrations", &[])
            .await?;
        Ok(())
    }

    async fn open_approval(
        &self,
        a: &Approval,
        held: Option<AuditEvent>,
        signer: Option<&CheckpointSigner>,
    ) -> Result<Option<String>, StoreError> {
        client!(self, c);
        let rules = serde_json::to_value(&a.rules).map_err(|source| StoreError::Encode {
            what: "rules",
            source,
        })?;
        let policy = serde_json::to_value(&a.policy).map_err(|source| StoreError::Encode {
            what: "policy",
            source,
        })?;
        let requester =
            serde_json::to_value(&a.requester).map_err(|source| StoreError::Encode {
                what: "requester",
                source,
            })?;
        let tx = c.transaction().await?;
        // Identical requests on any replica open one approval: serialized per agent
        // and digest until commit.
        tx.execute(
            "SELECT pg_advisory_xact_lock($1, $2)",
            &[
                &OPEN_LOCK_CLASS,
                &instance_key(&format!("{}\n{}", a.agent, a.digest)),
            ],
        )
        .await?;
        let existing = tx
            .query_opt(
                "SELECT id FROM approvals WHERE agent = $1 AND digest = $2 AND status = 'pending' AND expires > $3 ORDER BY created DESC LIMIT 1",
                &[&a.agent, &a.digest, &a.created],
            )
            .await?;
        if let Some(row) = existing {
            return Ok(Some(row.try_get(0)?));
        }
        tx.execute(
            &format!("INSERT INTO approvals ({COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, NULL, NULL, NULL, NULL, NULL, $18)"),
            &[
                &a.id, &a.status.as_str(), &a.agent, &a.owner, &a.digest, &a.body_sha256, &rules, &policy,
                &a.method, &a.upstream, &a.host, &a.url, &a.justification, &a.show, &a.request_id,
                &a.created, &a.expires, &requester,
            ],
        )
        .await?;
        seal_in(&tx, &mut Vec::from_iter(held), signer, &self.outbox()).await?;
        commit_sealed(tx).await?;
        Ok(None)
    }

    async fn approval(&self, id: &str) -> Result<Option<Approval>, StoreError> {
        client!(self, c);
        load(&*c, id).await
    }

    async fn approvals(
        &self,
        status: Option<Status>,
        limit: usize,
    ) -> Result<Vec<Approval>, StoreError> {
        client!(self, c);
        let limit = limit as i64;
        let rows = match status {
            Some(s) => {
                c.query(&format!("SELECT {COLS} FROM approvals WHERE status = $1 ORDER BY created DESC, id LIMIT $2"), &[&s.as_str(), &limit])
                    .await?
            }
            None => c.query(&format!("SELECT {COLS} FROM approvals ORDER BY created DESC, id LIMIT $1"), &[&limit]).await?,
        };
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let id: String = r.try_get(0)?;
            let votes = votes_of(&*c, &id).await?;
            out.push(decode(r, votes)?);
        }
        Ok(out)
    }

    async fn find_active(&self, agent: &str, digest: &str) -> Result<Option<Approval>, StoreError> {
        client!(self, c);
        let row = c
            .query_opt(
                "SELECT id FROM approvals WHERE agent = $1 AND digest = $2 AND status IN ('pending', 'approved', 'outcome_unknown') ORDER BY created DESC LIMIT 1",
                &[&agent, &digest],
            )
            .await?;
        match row {
            Some(r) => {
                let id: String = r.try_get(0)?;
                load(&*c, &id).await
            }
            None => Ok(None),
        }
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
        client!(self, c);
        let tx = c.transaction().await?;
        let Some(row) = tx
            .query_opt(
                "SELECT status, expires FROM approvals WHERE id = $1 FOR UPDATE",
                &[&id],
            )
            .await?
        else {
            return Ok(VoteResult::NotFound);
        };
        let status: String = row.try_get(0)?;
        let expires: DateTime<Utc> = row.try_get(1)?;
        let status = Status::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("bad status {status:?}")))?;
        if status != Status::Pending {
            return Ok(VoteResult::AlreadyDecided(status));
        }
        let result = if expires <= now {
            tx.execute("UPDATE approvals SET status = 'expired', decided = $2 WHERE id = $1 AND status = 'pending'", &[&id, &now])
                .await?;
            VoteResult::ExpiredNow
        } else {
            let groups = (!vote.groups.is_empty())
                .then(|| serde_json::to_value(&vote.groups))
                .transpose()
                .map_err(|source| StoreError::Encode {
                    what: "groups",
                    source,
                })?;
            let inserted = tx
                .execute(
                    "INSERT INTO votes (approval_id, reviewer, decision, reason, time, groups) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
                    &[&id, &vote.reviewer, &vote.decision.as_str(), &vote.reason, &vote.time, &groups],
                )
                .await?;
            if inserted == 0 {
                return Ok(VoteResult::AlreadyVoted);
            }
            let approvers = tx
                .query("SELECT reviewer, groups FROM votes WHERE approval_id = $1 AND decision = 'approve'", &[&id])
                .await?
                .iter()
                .map(|r| {
                    Ok(Approver {
                        id: r.try_get(0)?,
                        groups: decode_groups(r.try_get(1)?)?,
                    })
                })
                .collect::<Result<Vec<_>, StoreError>>()?;
            let new = Status::after_vote(vote.decision, &approvers, quorum);
            if new != Status::Pending {
                tx.execute(
                    "UPDATE approvals SET status = $2, decided = $3, decided_by = $4, reason = $5 WHERE id = $1 AND status = 'pending'",
                    &[&id, &new.as_str(), &now, &vote.reviewer, &vote.reason],
                )
                .await?;
            }
            VoteResult::Recorded(new)
        };
        if matches!(
            result,
            VoteResult::ExpiredNow | VoteResult::Recorded(Status::Approved | Status::Denied)
        ) {
            tx.execute("SELECT pg_notify($1, $2)", &[&CHANGES, &id])
                .await?;
        }
        seal_in(&tx, &mut audit.for_result(&result), signer, &self.outbox()).await?;
        commit_sealed(tx).await?;
        Ok(result)
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
        client!(self, c);
        let tx = c.transaction().await?;
        let n = if to == Status::Consumed {
            tx.execute(
                "UPDATE approvals SET status = $3, consumed = $4 WHERE id = $1 AND status = $2",
                &[&id, &from.as_str(), &to.as_str(), &now],
            )
            .await?
        } else if from == Status::Forwarding {
            tx.execute(
                "UPDATE approvals SET status = $3, reason = COALESCE($4, reason) WHERE id = $1 AND status = $2",
                &[&id, &from.as_str(), &to.as_str(), &reason],
            )
            .await?
        } else {
            tx.execute(
                "UPDATE approvals SET status = $3, decided = $4, reason = COALESCE($5, reason) WHERE id = $1 AND status = $2",
                &[&id, &from.as_str(), &to.as_str(), &now, &reason],
            )
            .await?
        };
        if n == 1 {
            tx.execute("SELECT pg_notify($1, $2)", &[&CHANGES, &id])
                .await?;
            seal_in(&tx, &mut Vec::from_iter(event), signer, &self.outbox()).await?;
        }
        commit_sealed(tx).await?;
        Ok(n == 1)
    }

    async fn claim(
        &self,
        id: &str,
        forwarder: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        client!(self, c);
        let n = c
            .execute(
                "UPDATE approvals SET status = 'forwarding', consumed = $3, forwarder = $2 WHERE id = $1 AND status = 'approved'",
                &[&id, &forwarder, &now],
            )
            .await?;
        Ok(n == 1)
    }

    async fn register_instance(&self, id: &str) -> Result<(), StoreError> {
        let mut guard = self.instance.lock().await;
        if guard.as_ref().is_some_and(|c| !c.is_closed()) {
            return Ok(());
        }
        let c = listen(&self.url, self.changes.clone()).await?;
        c.execute(
            "SELECT pg_advisory_lock($1, $2)",
            &[&INSTANCE_LOCK_CLASS, &instance_key(id)],
        )
        .await?;
        c.batch_execute(&format!("LISTEN {CHANGES}")).await?;
        // Notices sent while no session listened are lost: check everything.
        let _ = self.changes.send(super::ANY_CHANGE.to_string());
        *guard = Some(c);
        Ok(())
    }

    fn changes(&self) -> Option<tokio::sync::broadcast::Receiver<String>> {
        Some(self.changes.subscribe())
    }

    async fn decided_among(&self, ids: &[String]) -> Result<Vec<String>, StoreError> {
        client!(self, c);
        let rows = c
            .query(
                "SELECT id FROM approvals WHERE status <> 'pending' AND id = ANY($1)",
                &[&ids],
            )
            .await?;
        rows.iter().map(|r| Ok(r.try_get(0)?)).collect()
    }

    async fn instance_alive(&self, id: &str) -> Result<bool, StoreError> {
        client!(self, c);
        let key = instance_key(id);
        // Free means no session holds it: the instance is gone. Let it go at once.
        let free: bool = c
            .query_one(
                "SELECT pg_try_advisory_lock($1, $2)",
                &[&INSTANCE_LOCK_CLASS, &key],
            )
            .await?
            .get(0);
        if free {
            c.execute(
                "SELECT pg_advisory_unlock($1, $2)",
                &[&INSTANCE_LOCK_CLASS, &key],
            )
            .await?;
        }
        Ok(!free)
    }

    async fn audit_events_of(&self, approval_id: &str) -> Result<Vec<AuditEvent>, StoreError> {
        client!(self, c);
        let rows = c
            .query(
                "SELECT line FROM audit_events WHERE (line::jsonb)->>'approval_id' = $1 ORDER BY seq",
                &[&approval_id],
            )
            .await?;
        rows.iter().map(event_of_row).collect()
    }

    async fn pending_of(&self, agent: &str, now: DateTime<Utc>) -> Result<usize, StoreError> {
        client!(self, c);
        let row = c
            .query_one(
                "SELECT COUNT(*) FROM approvals WHERE agent = $1 AND status = 'pending' AND expires > $2",
                &[&agent, &now],
            )
            .await?;
        let n: i64 = row.try_get(0)?;
        Ok(usize::try_from(n).unwrap_or(0))
    }

    async fn due(&self, now: DateTime<Utc>) -> Result<Vec<String>, StoreError> {
        client!(self, c);
        let rows = c
            .query(
                "SELECT id FROM approvals WHERE status = 'pending' AND expires <= $1",
                &[&now],
            )
            .await?;
        rows.iter().map(|r| Ok(r.try_get(0)?)).collect()
    }

    async fn audit_append(
        &self,
        events: &[AuditEvent],
        checkpoint: Option<&Checkpoint>,
    ) -> Result<(), StoreError> {
        client!(self, c);
        let tx = c.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&AUDIT_LOCK])
            .await?;
        let last: i64 = tx
            .query_one(
                "SELECT COALESCE(MAX(seq), 0)::BIGINT FROM audit_events",
                &[],
            )
            .await?
            .get(0);
        if let Some(first) = events.first() {
            if first.seq as i64 != last + 1 {
                return Err(StoreError::ChainConflict(format!(
                    "next seq is {} but the batch starts at {}",
                    last + 1,
                    first.seq
                )));
            }
        }
        insert_audit(&tx, events, &Vec::from_iter(checkpoint.cloned())).await?;
        tx.commit().await?;
        Ok(())
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
        client!(self, c);
        // SKIP LOCKED: replicas claiming at once take different rows; a row another
        // replica leased meanwhile fails the re-checked lease condition.
        let rows = c
            .query(
                "WITH heads AS (SELECT DISTINCT ON (approval_id, channel) id FROM outbox WHERE done IS NULL ORDER BY approval_id, channel, id) \
                 UPDATE outbox SET claimed_by = $1, claimed_until = $3 WHERE id IN ( \
                   SELECT o.id FROM outbox o JOIN heads h ON h.id = o.id \
                   WHERE o.done IS NULL AND o.next_at <= $2 AND (o.claimed_until IS NULL OR o.claimed_until <= $2) \
                   ORDER BY o.id LIMIT $4 FOR UPDATE OF o SKIP LOCKED) \
                 RETURNING id, approval_id, channel, line, attempts, created",
                &[&instance, &now, &lease_until, &(limit as i64)],
            )
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let line: String = r.try_get(3)?;
            out.push(OutboxItem {
                id: r.try_get(0)?,
                approval_id: r.try_get(1)?,
                channel: r.try_get(2)?,
                event: serde_json::from_str(&line)
                    .map_err(|e| StoreError::Corrupt(format!("outbox event: {e}")))?,
                attempts: r.try_get::<_, i32>(4)? as u32,
                created: r.try_get(5)?,
            });
        }
        out.sort_by_key(|i| i.id);
        Ok(out)
    }

    async fn outbox_settle(
        &self,
        id: i64,
        instance: &str,
        now: DateTime<Utc>,
        how: &Settle,
    ) -> Result<(), StoreError> {
        client!(self, c);
        match how {
            Settle::Done { outcome } => c.execute(
                "UPDATE outbox SET done = $3, outcome = $4, attempts = attempts + 1, claimed_by = NULL, claimed_until = NULL WHERE id = $1 AND claimed_by = $2",
                &[&id, &instance, &now, outcome],
            ).await?,
            Settle::Retry { at, error } => c.execute(
                "UPDATE outbox SET next_at = $3, last_error = $4, attempts = attempts + 1, claimed_by = NULL, claimed_until = NULL WHERE id = $1 AND claimed_by = $2",
                &[&id, &instance, at, error],
            ).await?,
            Settle::Failed { error } => c.execute(
                "UPDATE outbox SET done = $3, outcome = 'failed', last_error = $4, attempts = attempts + 1, claimed_by = NULL, claimed_until = NULL WHERE id = $1 AND claimed_by = $2",
                &[&id, &instance, &now, error],
            ).await?,
        };
        Ok(())
    }

    async fn outbox_counts(&self) -> Result<OutboxCounts, StoreError> {
        client!(self, c);
        let r = c
            .query_one(
                "SELECT COUNT(*) FILTER (WHERE done IS NULL), COUNT(*) FILTER (WHERE done IS NOT NULL AND outcome <> 'failed'), COUNT(*) FILTER (WHERE outcome = 'failed') FROM outbox",
                &[],
            )
            .await?;
        Ok(OutboxCounts {
            pending: r.try_get::<_, i64>(0)? as u64,
            delivered: r.try_get::<_, i64>(1)? as u64,
            failed: r.try_get::<_, i64>(2)? as u64,
        })
    }

    async fn recent_decisions(
        &self,
        agent: &str,
        rule: &str,
        except: &str,
        limit: usize,
    ) -> Result<Vec<Approval>, StoreError> {
        client!(self, c);
        let rows = c
            .query("SELECT id, rules FROM approvals WHERE agent = $1 AND id <> $2 AND status NOT IN ('pending', 'cancelled') ORDER BY created DESC LIMIT 200", &[&agent, &except])
            .await?;
        let mut out = Vec::new();
        for r in &rows {
            let rules: serde_json::Value = r.try_get(1)?;
            let named = rules
                .as_array()
                .is_some_and(|a| a.iter().any(|x| x.as_str() == Some(rule)));
            if !named {
                continue;
            }
            let id: String = r.try_get(0)?;
            if let Some(a) = load(&*c, &id).await? {
                out.push(a);
            }
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    async fn outbox_prune(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        client!(self, c);
        Ok(c.execute(
            "DELETE FROM outbox WHERE done IS NOT NULL AND done < $1",
            &[&before],
        )
        .await?)
    }

    async fn message_ref(
        &self,
        approval_id: &str,
        channel: &str,
    ) -> Result<Option<String>, StoreError> {
        client!(self, c);
        let row = c
            .query_opt(
                "SELECT ref FROM channel_messages WHERE approval_id = $1 AND channel = $2",
                &[&approval_id, &channel],
            )
            .await?;
        Ok(match row {
            Some(r) => Some(r.try_get(0)?),
            None => None,
        })
    }

    async fn set_message_ref(
        &self,
        approval_id: &str,
        channel: &str,
        reference: &str,
    ) -> Result<(), StoreError> {
        client!(self, c);
        c.execute(
            "INSERT INTO channel_messages (approval_id, channel, ref) VALUES ($1, $2, $3) ON CONFLICT (approval_id, channel) DO UPDATE SET ref = EXCLUDED.ref",
            &[&approval_id, &channel, &reference],
        )
        .await?;
        Ok(())
    }

    async fn mark_once(
        &self,
        approval_id: &str,
        mark: &str,
        now: DateTime<Utc>,
        event: AuditEvent,
        signer: Option<&CheckpointSigner>,
    ) -> Result<bool, StoreError> {
        client!(self, c);
        let tx = c.transaction().await?;
        // The approval's row lock orders this against a vote deciding it.
        let pending = tx
            .query_opt(
                "SELECT 1 FROM approvals WHERE id = $1 AND status = 'pending' FOR UPDATE",
                &[&approval_id],
            )
            .await?
            .is_some();
        if !pending {
            return Ok(false);
        }
        let n = tx
            .execute(
                "INSERT INTO approval_marks (approval_id, mark, time) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                &[&approval_id, &mark, &now],
            )
            .await?;
        if n == 1 {
            seal_in(&tx, &mut [event], signer, &self.outbox()).await?;
        }
        commit_sealed(tx).await?;
        Ok(n == 1)
    }

    async fn following_up(&self, limit: usize) -> Result<Vec<Approval>, StoreError> {
        client!(self, c);
        let limit = limit.min(i64::MAX as usize) as i64;
        let rows = c
            .query(&format!("SELECT {COLS} FROM approvals WHERE status = 'pending' AND (policy ? 'remind' OR policy ? 'escalate') ORDER BY created DESC, id LIMIT $1"), &[&limit])
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let id: String = r.try_get(0)?;
            let votes = votes_of(&*c, &id).await?;
            out.push(decode(r, votes)?);
        }
        Ok(out)
    }

    async fn marks_of(&self, approval_id: &str) -> Result<Vec<String>, StoreError> {
        client!(self, c);
        let rows = c
            .query(
                "SELECT mark FROM approval_marks WHERE approval_id = $1 ORDER BY time, mark",
                &[&approval_id],
            )
            .await?;
        rows.iter()
            .map(|r| r.try_get(0).map_err(StoreError::from))
            .collect()
    }

    async fn audit_seal_append(
        &self,
        mut events: Vec<AuditEvent>,
        signer: Option<&CheckpointSigner>,
    ) -> Result<Vec<AuditEvent>, StoreError> {
        if events.is_empty() {
            return Ok(events);
        }
        client!(self, c);
        let tx = c.transaction().await?;
        seal_in(&tx, &mut events, signer, &self.outbox()).await?;
        commit_sealed(tx).await?;
        Ok(events)
    }

    async fn audit_head(&self) -> Result<(u64, String), StoreError> {
        client!(self, c);
        audit_head_of(&*c).await
    }

    async fn audit_events(
        &self,
        since: Option<DateTime<Utc>>,
    ) -> Result<Vec<AuditEvent>, StoreError> {
        client!(self, c);
        let rows = c
            .query(
                "SELECT line FROM audit_events WHERE $1::timestamptz IS NULL OR time >= $1 ORDER BY seq",
                &[&since],
            )
            .await?;
        rows.iter().map(event_of_row).collect()
    }

    async fn audit_checkpoints(&self) -> Result<Vec<Checkpoint>, StoreError> {
        self.audit_checkpoints_between(0, i64::MAX as u64).await
    }

    async fn audit_checkpoints_between(
        &self,
        after: u64,
        upto: u64,
    ) -> Result<Vec<Checkpoint>, StoreError> {
        client!(self, c);
        let upto = upto.min(i64::MAX as u64);
        let rows = c
            .query(
                "SELECT seq, hash, time, signature FROM audit_checkpoints WHERE seq > $1 AND seq <= $2 ORDER BY seq",
                &[&(after as i64), &(upto as i64)],
            )
            .await?;
        rows.iter().map(checkpoint_of_row).collect()
    }

    async fn audit_last_checkpoint(&self) -> Result<Option<Checkpoint>, StoreError> {
        client!(self, c);
        let row = c
            .query_opt(
                "SELECT seq, hash, time, signature FROM audit_checkpoints ORDER BY seq DESC LIMIT 1",
                &[],
            )
            .await?;
        row.as_ref().map(checkpoint_of_row).transpose()
    }

    async fn audit_rows(&self) -> Result<Vec<StoredRow>, StoreError> {
        client!(self, c);
        let rows = c
            .query(
                "SELECT seq, time, event, hash, line FROM audit_events ORDER BY seq",
                &[],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(StoredRow {
                    seq: r.try_get::<_, i64>(0)? as u64,
                    time: format_time(&r.try_get::<_, DateTime<Utc>>(1)?),
                    event: r.try_get(2)?,
                    hash: r.try_get(3)?,
                    line: r.try_get(4)?,
                })
            })
            .collect()
    }

    async fn audit_events_after(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<AuditEvent>, StoreError> {
        client!(self, c);
        let rows = c
            .query(
                "SELECT line FROM audit_events WHERE seq > $1 ORDER BY seq LIMIT $2",
                &[&(after as i64), &(limit as i64)],
            )
            .await?;
        rows.iter().map(event_of_row).collect()
    }
}

/// A checkpoint from a row of `seq, hash, time, signature`.
fn checkpoint_of_row(r: &Row) -> Result<Checkpoint, StoreError> {
    Ok(Checkpoint {
        seq: r.try_get::<_, i64>(0)? as u64,
        hash: r.try_get(1)?,
        time: r.try_get(2)?,
        signature: r.try_get(3)?,
    })
}

/// The audit event a row's `line` column holds.
fn event_of_row(r: &Row) -> Result<AuditEvent, StoreError> {
    serde_json::from_str(r.try_get(0)?)
        .map_err(|e| StoreError::Corrupt(format!("audit event: {e}")))
}
