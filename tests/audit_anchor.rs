//! The head of a signed audit log is anchored: `airlock audit verify` (the real binary,
//! on a log a real airlock wrote to SQLite or PostgreSQL) fails, naming what it found,
//! when the newest events are deleted with their checkpoints, when checkpoints are
//! deleted, when a stored column (`time`, `event`, `hash`) no longer says what the sealed
//! line says, when the JSONL copy's tail is cut, and when the log is cut below or
//! rewritten at a checkpoint kept outside it (the witness, `--checkpoint FILE`). The
//! untouched log verifies.

mod common;
use common::*;
use std::path::{Path, PathBuf};

const RULES: &str = r#"rules:
  - name: thing-change
    when:
      upstream: api
      method: POST
      path: /v1/things/**
    then: approve
    approval:
      approvers: [group:sre]
      timeout: 30s
"#;

/// At most 3 events between two checkpoints: a burst of requests makes batches larger
/// than that, so the writer must sign checkpoints inside them.
const AUDIT: &str = "audit:
  level: all
  file: audit.jsonl
  signing_key: audit-key.pem
  verify_key: audit-key.pub.pem
  witness: witness.txt
  checkpoint_every: 3
  checkpoint_interval: 60s
";

/// The database behind the log, as an attacker with write access to it sees it.
enum Db {
    Sqlite(PathBuf),
    Postgres(String),
}

impl Db {
    async fn exec(&self, sql: &str) {
        match self {
            Db::Sqlite(p) => {
                let c = rusqlite::Connection::open(p).unwrap();
                c.execute_batch(sql).unwrap();
            }
            Db::Postgres(url) => {
                let (c, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
                    .await
                    .unwrap();
                tokio::spawn(conn);
                c.batch_execute(sql).await.unwrap();
            }
        }
    }

    /// The first column of `sql`'s rows, as text.
    async fn column(&self, sql: &str) -> Vec<String> {
        match self {
            Db::Sqlite(p) => {
                let c = rusqlite::Connection::open(p).unwrap();
                let mut st = c.prepare(sql).unwrap();
                st.query_map([], |r| {
                    Ok(match r.get_ref(0)? {
                        rusqlite::types::ValueRef::Integer(i) => i.to_string(),
                        v => v.as_str().unwrap().to_string(),
                    })
                })
                .unwrap()
                .map(Result::unwrap)
                .collect()
            }
            Db::Postgres(url) => {
                let (c, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
                    .await
                    .unwrap();
                tokio::spawn(conn);
                c.query(sql, &[])
                    .await
                    .unwrap()
                    .iter()
                    .map(|r| {
                        r.try_get::<_, i64>(0)
                            .map(|i| i.to_string())
                            .unwrap_or_else(|_| r.get::<_, String>(0))
                    })
                    .collect()
            }
        }
    }

    async fn seqs(&self, sql: &str) -> Vec<u64> {
        let col = self.column(sql).await;
        col.iter().map(|s| s.parse().unwrap()).collect()
    }

    /// Keeps a copy of both audit tables, for [`Db::restore`].
    async fn snapshot(&self) {
        self.exec(
            "CREATE TABLE ev_keep AS SELECT * FROM audit_events;
             CREATE TABLE cp_keep AS SELECT * FROM audit_checkpoints;",
        )
        .await;
    }

    /// Puts both audit tables back as [`Db::snapshot`] found them.
    async fn restore(&self) {
        self.exec(
            "DELETE FROM audit_events; INSERT INTO audit_events SELECT * FROM ev_keep;
             DELETE FROM audit_checkpoints; INSERT INTO audit_checkpoints SELECT * FROM cp_keep;",
        )
        .await;
    }
}

struct Logged {
    _up: Upstream,
    ws: Workspace,
    /// The full config: key, JSONL copy, witness.
    cfg: PathBuf,
    /// The auditor has the key and the database only (no copy, no witness).
    db_only: PathBuf,
}

/// A real airlock writes a signed log: a burst of plain requests and one held request
/// approved by a vote (its events sealed inside the store's own transactions), then a
/// clean stop.
async fn write_log(store: Option<&str>) -> Logged {
    let up = Upstream::start().await;
    let ws = Workspace::new();
    ws.write("rules/r.yaml", RULES);
    let key = ws.path().join("audit-key.pem");
    let (code, _, err) = run_cli_blocking(
        &["keys", "new", "audit", "--out", key.to_str().unwrap()],
        &[],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let cfg = ws.standard_config(&up.url(), AUDIT);
    if let Some(url) = store {
        let text = std::fs::read_to_string(&cfg).unwrap();
        let text = text.replacen(
            "store: sqlite://airlock.db",
            &format!("store: \"{url}\""),
            1,
        );
        std::fs::write(&cfg, text).unwrap();
    }
    let text = std::fs::read_to_string(&cfg).unwrap();
    let db_only = ws.write(
        "db-only.yaml",
        &text
            .replace("  file: audit.jsonl\n", "")
            .replace("  witness: witness.txt\n", ""),
    );

    let a = Airlock::start(&cfg);
    let burst: Vec<_> = (0..12)
        .map(|i| {
            spawn_request(agent_request(
                &a,
                AGENT_KEY,
                "GET",
                &format!("/api/v1/things/t{i}"),
            ))
        })
        .collect();
    for r in burst {
        assert_eq!(r.await.unwrap().status(), 200);
    }
    let (held, id) = agent_hold(&a, "POST", "/api/v1/things/vm-1", r#"{"name":"vm-1"}"#).await;
    assert_eq!(vote(&a, BOB, &id, "approve", None).await.0, 200);
    assert_eq!(held.await.unwrap().status, 200);
    for i in 0..3 {
        let r = agent_request(&a, AGENT_KEY, "GET", &format!("/api/v1/after/{i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let st = tokio::task::spawn_blocking(move || a.stop()).await.unwrap();
    assert!(st.success());
    Logged {
        _up: up,
        ws,
        cfg,
        db_only,
    }
}

/// `airlock audit verify -c cfg EXTRA…`: (exit code, everything it printed).
async fn verify(cfg: &Path, extra: &[&str]) -> (i32, String) {
    let mut args = vec!["audit", "verify", "-c", cfg.to_str().unwrap()];
    args.extend_from_slice(extra);
    let (code, out, err) = run_cli_blocking(&args, &[]).await;
    (code, format!("{out}{err}"))
}

async fn assert_broken(cfg: &Path, extra: &[&str], want: &[&str], what: &str) {
    let (code, out) = verify(cfg, extra).await;
    assert_eq!(code, 1, "{what}: {out}");
    assert!(out.contains("BROKEN"), "{what}: {out}");
    for w in want {
        assert!(out.contains(w), "{what}: expected {w:?} in: {out}");
    }
}

/// The SQL text literal of `s`.
fn quoted(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Every attack on the stored log, each on the untouched log put back before it.
async fn attacks(l: &Logged, db: &Db) {
    let (cfg, db_only) = (&l.cfg, &l.db_only);
    let events = db.seqs("SELECT seq FROM audit_events ORDER BY seq").await;
    let cps = db
        .seqs("SELECT seq FROM audit_checkpoints ORDER BY seq")
        .await;
    let last = *events.last().unwrap();
    assert_eq!(events, (1..=last).collect::<Vec<_>>());
    assert!(last >= 16, "{last} events");

    // The writer checkpointed as the policy says: the last event, and never more than 3
    // events without a checkpoint (also inside the burst's batches).
    assert_eq!(cps.last(), Some(&last), "{cps:?}");
    let mut prev = 0;
    for c in &cps {
        assert!(c - prev <= 3, "checkpoints {cps:?}: gap after seq {prev}");
        prev = *c;
    }

    let (code, out) = verify(cfg, &[]).await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!(
            "tail anchored by a signed checkpoint at seq {last}"
        )),
        "{out}"
    );
    assert!(out.contains("matches the witness"), "{out}");
    let witness = std::fs::read_to_string(l.ws.path().join("witness.txt")).unwrap();
    assert!(
        witness.starts_with(&format!("airlock audit log\n{last}\n")),
        "{witness}"
    );
    let kept = l.ws.write("kept-checkpoint.txt", &witness);
    let kept_arg = ["--checkpoint", kept.to_str().unwrap()];
    let (code, out) = verify(db_only, &kept_arg).await;
    assert_eq!(code, 0, "{out}");
    db.snapshot().await;

    // 1. The newest events deleted together with their checkpoints, cut right after a
    // checkpoint: consistent inside the database, but the witness and the JSONL copy
    // hold a later one.
    let keep = cps[cps.len() - 2];
    let cut = format!(
        "DELETE FROM audit_events WHERE seq > {keep}; DELETE FROM audit_checkpoints WHERE seq > {keep};"
    );
    db.exec(&cut).await;
    assert_broken(
        cfg,
        &[],
        &[
            "truncated",
            "witness",
            &format!("at seq {last} but log ends at seq {keep}"),
        ],
        "tail cut at a checkpoint",
    )
    .await;
    // … and below the checkpoint an auditor kept (`--checkpoint`).
    assert_broken(
        db_only,
        &kept_arg,
        &["truncated", "kept-checkpoint.txt"],
        "tail cut below the kept checkpoint",
    )
    .await;

    // The auditor with the database alone: a cut no checkpoint ends is caught (the
    // tail cut, and the checkpoint on the new last event deleted too).
    db.restore().await;
    let mid = last - 1;
    let covered = cps.iter().filter(|c| **c < mid).max().copied().unwrap_or(0);
    db.exec(&format!(
        "DELETE FROM audit_events WHERE seq > {mid}; DELETE FROM audit_checkpoints WHERE seq >= {mid};"
    ))
    .await;
    assert_broken(
        db_only,
        &[],
        &[&format!(
            "the last seq covered by a valid signed checkpoint is {covered} but the last event is seq {mid}"
        )],
        "tail cut between checkpoints",
    )
    .await;

    // 2. Every checkpoint deleted.
    db.restore().await;
    db.exec("DELETE FROM audit_checkpoints").await;
    assert_broken(
        db_only,
        &[],
        &[
            "no signed checkpoint between seq 1 and seq 4",
            "no event is covered by a valid signed checkpoint",
            &format!("the last event is seq {last}"),
        ],
        "all checkpoints deleted",
    )
    .await;
    // Every checkpoint but the last: too many events without one.
    db.restore().await;
    db.exec(&format!("DELETE FROM audit_checkpoints WHERE seq < {last}"))
        .await;
    assert_broken(
        db_only,
        &[],
        &["at seq 4:", "no signed checkpoint between seq 1 and seq 4"],
        "checkpoints thinned",
    )
    .await;

    // 3. A stored column edited: the `time` hides the event from `export --since`.
    db.restore().await;
    db.exec("UPDATE audit_events SET time = '2000-01-01T00:00:00.000000Z' WHERE seq = 2")
        .await;
    let (code, out, err) = run_cli_blocking(
        &[
            "audit",
            "export",
            "-c",
            cfg.to_str().unwrap(),
            "--since",
            "2020-01-01",
        ],
        &[],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains("\"seq\":2,"), "hidden from export --since");
    assert_broken(
        db_only,
        &[],
        &["at seq 2:", "stored column time"],
        "time column edited",
    )
    .await;
    db.restore().await;
    db.exec("UPDATE audit_events SET event = 'denied' WHERE seq = 3")
        .await;
    assert_broken(
        db_only,
        &[],
        &["at seq 3:", "stored column event is \"denied\""],
        "event column edited",
    )
    .await;
    db.restore().await;
    db.exec(&format!(
        "UPDATE audit_events SET hash = '{}' WHERE seq = 5",
        "0".repeat(64)
    ))
    .await;
    assert_broken(
        db_only,
        &[],
        &["at seq 5:", "stored column hash"],
        "hash column edited",
    )
    .await;

    // 4. The event at the kept checkpoint's seq rewritten and re-hashed (its checkpoint,
    // which no longer matches, deleted): the kept checkpoint names it.
    db.restore().await;
    let line = db
        .column(&format!("SELECT line FROM audit_events WHERE seq = {last}"))
        .await
        .remove(0);
    let mut ev: airlock::audit::AuditEvent = serde_json::from_str(&line).unwrap();
    ev.event = "denied".into();
    ev.hash = airlock::audit::compute_hash(&ev.prev_hash, &ev);
    db.exec(&format!(
        "UPDATE audit_events SET line = {}, event = 'denied', hash = '{}' WHERE seq = {last};
         DELETE FROM audit_checkpoints WHERE seq = {last};",
        quoted(&airlock::audit::to_jsonl_line(&ev)),
        ev.hash
    ))
    .await;
    assert_broken(
        db_only,
        &kept_arg,
        &[
            &format!("at seq {last}:"),
            "hash differs from the checkpoint file",
        ],
        "rewritten at the kept checkpoint",
    )
    .await;
    // A kept checkpoint whose hash was changed is not signed by the key.
    db.restore().await;
    let signed_hash = witness.lines().nth(2).unwrap();
    let forged = l.ws.write(
        "forged-checkpoint.txt",
        &witness.replacen(signed_hash, &ev.hash, 1),
    );
    assert_broken(
        db_only,
        &["--checkpoint", forged.to_str().unwrap()],
        &["invalid signature"],
        "forged kept checkpoint",
    )
    .await;

    // Put back, the log verifies again, with and without the outside checkpoints.
    db.restore().await;
    let (code, out) = verify(cfg, &kept_arg).await;
    assert_eq!(code, 0, "{out}");
    let (code, out) = verify(db_only, &[]).await;
    assert_eq!(code, 0, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_sqlite_log_is_anchored() {
    let l = write_log(None).await;
    let db = Db::Sqlite(l.ws.path().join("airlock.db"));
    attacks(&l, &db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_postgres_log_is_anchored() {
    let Some(url) = postgres_schema("airlock_anchor", "audit_anchor postgres").await else {
        return;
    };
    let l = write_log(Some(&url)).await;
    attacks(&l, &Db::Postgres(url)).await;
}

/// The JSONL copy carries the checkpoints as lines of their own; `verify --file` requires
/// them and the witness.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_jsonl_copy_is_anchored_too() {
    let l = write_log(None).await;
    let copy = l.ws.path().join("audit.jsonl");
    let text = std::fs::read_to_string(&copy).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let is_cp = |l: &str| l.starts_with("{\"checkpoint\":");
    assert!(is_cp(lines.last().unwrap()), "ends in a checkpoint: {text}");
    assert!(lines.iter().filter(|l| is_cp(l)).count() >= 6, "{text}");
    let file_arg = |p: &Path| vec!["--file".to_string(), p.to_str().unwrap().to_string()];
    let run = |cfg: PathBuf, p: PathBuf| async move {
        let args = file_arg(&p);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        verify(&cfg, &args).await
    };

    let (code, out) = run(l.cfg.clone(), copy.clone()).await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("tail anchored by a signed checkpoint"),
        "{out}"
    );
    assert!(out.contains("matches the witness"), "{out}");
    // An export carries the checkpoint lines as well, and verifies the same way.
    let (code, export, err) =
        run_cli_blocking(&["audit", "export", "-c", l.cfg.to_str().unwrap()], &[]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(export, text, "the export is the copy");

    // The tail cut, ending in an event whose checkpoint line is cut off too.
    let event_lines: Vec<usize> = (0..lines.len()).filter(|&i| !is_cp(lines[i])).collect();
    let i = event_lines[event_lines.len() - 2];
    let cut = l.ws.write("cut.jsonl", &(lines[..=i].join("\n") + "\n"));
    let (code, out) = run(l.db_only.clone(), cut).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("tail not anchored"), "{out}");

    // The tail cut right after a checkpoint line: the witness has a later one.
    let j = (0..lines.len() - 1)
        .rev()
        .find(|&j| is_cp(lines[j]))
        .unwrap();
    let cut = l.ws.write("cut2.jsonl", &(lines[..=j].join("\n") + "\n"));
    let (code, out) = run(l.cfg.clone(), cut).await;
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("truncated") && out.contains("witness"),
        "{out}"
    );

    // Every checkpoint line removed.
    let bare: String = lines
        .iter()
        .filter(|l| !is_cp(l))
        .map(|l| format!("{l}\n"))
        .collect();
    let bare = l.ws.write("bare.jsonl", &bare);
    let (code, out) = run(l.db_only.clone(), bare).await;
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("no event is covered by a valid signed checkpoint"),
        "{out}"
    );
    assert!(out.contains("at seq 4:"), "{out}");
}

/// Without a key nothing anchors the tail, and verify says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_key_the_tail_is_reported_unanchored() {
    let l = write_log(None).await;
    let text = std::fs::read_to_string(&l.db_only).unwrap();
    let no_key = l.ws.write(
        "no-key.yaml",
        &text
            .replace("  signing_key: audit-key.pem\n", "")
            .replace("  verify_key: audit-key.pub.pem\n", ""),
    );
    let (code, out) = verify(&no_key, &[]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("tail NOT anchored (no key)"), "{out}");
    // `--checkpoint` cannot be checked without the public key.
    let (code, out) = verify(&no_key, &["--checkpoint", "witness.txt"]).await;
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains("--checkpoint needs the audit public key"),
        "{out}"
    );
}

/// The anchoring keys are checked like every other: a bad one is a clear error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_anchoring_keys_are_refused() {
    let ws = Workspace::new();
    ws.write("rules/r.yaml", RULES);
    for (audit, want) in [
        (
            "audit:\n  checkpoint_every: 0\n",
            "audit.checkpoint_every: must be at least 1",
        ),
        (
            "audit:\n  checkpoint_interval: soon\n",
            "audit.checkpoint_interval: expected a duration",
        ),
        (
            "audit:\n  witness: witness.txt\n",
            "audit.witness: needs audit.signing_key",
        ),
    ] {
        let cfg = ws.standard_config("http://127.0.0.1:9", audit);
        let (code, out) = verify(&cfg, &[]).await;
        assert_ne!(code, 0, "{audit}: {out}");
        assert!(out.contains(want), "{audit}: expected {want:?} in {out}");
    }
}
