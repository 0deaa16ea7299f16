//! The audit trail of a hold, as an auditor checks it: `airlock audit export` shows
//! held → vote → approved → forwarded for the approval, never a secret; `airlock audit
//! verify` passes on the untouched log and names the first bad seq after the SQLite file
//! is tampered with directly. (tests/audit_anchor.rs: the tail anchored by checkpoints.)

mod common;
use common::*;
use rusqlite::{params, Connection};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;

const RULES: &str = r#"rules:
  - name: thing-change
    when:
      upstream: api
      method: [POST, DELETE]
      path: /v1/things/**
    then: approve
    approval:
      approvers: [group:sre]
      timeout: 30s
      show: [/name]
"#;

/// An upstream credential airlock injects; it must never reach the audit log.
const UPSTREAM_SECRET: &str = "upstream-secret-value-7c1f";
const COOKIE_SECRET: &str = "session-cookie-secret-9d2e";
const ENVS: &[(&str, &str)] = &[("AIRLOCK_TEST_UPSTREAM_TOKEN", UPSTREAM_SECRET)];

struct Logged {
    up: Upstream,
    ws: Workspace,
    cfg: PathBuf,
    /// Approval ids: the approved one, then the denied one.
    approved: String,
    denied: String,
    body: String,
}

async fn cli(args: &[&str]) -> (i32, String, String) {
    run_cli_blocking(args, ENVS).await
}

/// `airlock audit verify` as an auditor runs it: without the upstream credential's
/// variable in the environment.
async fn verify(cfg: &Path) -> (i32, String) {
    let (code, out, err) =
        run_cli_blocking(&["audit", "verify", "-c", cfg.to_str().unwrap()], &[]).await;
    (code, format!("{out}{err}"))
}

/// `airlock audit export` (without the upstream credential's variable) plus `extra` args.
async fn export_with(cfg: &Path, extra: &[&str]) -> String {
    let mut args = vec![
        "audit",
        "export",
        "-c",
        cfg.to_str().unwrap(),
        "--format",
        "jsonl",
    ];
    args.extend_from_slice(extra);
    let (code, out, err) = run_cli_blocking(&args, &[]).await;
    assert_eq!(code, 0, "export {extra:?}: {err}");
    out
}

async fn export(cfg: &Path) -> String {
    export_with(cfg, &[]).await
}

/// The events of an export or copy (checkpoint lines left out).
fn events(jsonl: &str) -> Vec<Value> {
    jsonl
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v.get("checkpoint").is_none())
        .collect()
}

fn db(ws: &Workspace) -> Connection {
    let c = Connection::open(ws.path().join("airlock.db")).unwrap();
    c.busy_timeout(Duration::from_secs(5)).unwrap();
    c
}

/// One approved-and-forwarded hold and one denied hold, then a clean stop (the audit
/// log is flushed on SIGTERM).
async fn lifecycle(signed: bool) -> Logged {
    let up = Upstream::start().await;
    let ws = Workspace::new();
    ws.write("rules/r.yaml", RULES);
    let mut extra = String::from("audit:\n  level: held\n  file: audit.jsonl\n");
    if signed {
        // `keys new audit` writes both halves and prints the lines to paste.
        let out_path = ws.path().join("audit-key.pem");
        let (code, out, err) =
            cli(&["keys", "new", "audit", "--out", out_path.to_str().unwrap()]).await;
        assert_eq!(code, 0, "{err}");
        let private = std::fs::read_to_string(&out_path).unwrap();
        assert!(private.contains("PRIVATE KEY"), "{private}");
        assert!(ws.path().join("audit-key.pub.pem").exists(), "{out}");
        extra.push_str("  signing_key: audit-key.pem\n  verify_key: audit-key.pub.pem\n");
    }
    let cfg = ws.standard_config(&up.url(), &extra);
    // The upstream gets an injected credential from the environment.
    let text = std::fs::read_to_string(&cfg).unwrap();
    let with_inject = text.replacen(
        "    timeout: 5s\n",
        "    timeout: 5s\n    inject:\n      x-upstream-token: \"${AIRLOCK_TEST_UPSTREAM_TOKEN}\"\n",
        1,
    );
    assert_ne!(text, with_inject);
    std::fs::write(&cfg, with_inject).unwrap();

    let a = Airlock::start_with_env(&cfg, ENVS);
    let body = r#"{"name":"vm-7","size":"xl"}"#.to_string();
    let url = a.url("/api/v1/things/vm-7");
    let b2 = body.clone();
    let held = tokio::spawn(async move {
        let r = client()
            .post(url)
            .bearer_auth(AGENT_KEY)
            .header("content-type", "application/json")
            .header("cookie", format!("sid={COOKIE_SECRET}"))
            .header("x-airlock-justification", "ticket OPS-1")
            .body(b2)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    });
    let approved = id_of(&wait_pending(&a, 1).await[0]);
    let (s, v) = vote(&a, BOB, &approved, "approve", Some("change window open")).await;
    assert_eq!(s, 200, "{v}");
    let (status, text) = held.await.unwrap();
    assert_eq!(status, 200, "{text}");
    let seen = up.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].headers["x-upstream-token"], UPSTREAM_SECRET);

    let (denied_req, denied) = agent_hold(&a, "DELETE", "/api/v1/things/vm-8", "").await;
    assert_eq!(vote(&a, CAROL, &denied, "deny", Some("no")).await.0, 200);
    assert_eq!(denied_req.await.unwrap().status, 403);

    let st = tokio::task::spawn_blocking(move || a.stop()).await.unwrap();
    assert!(st.success());
    Logged {
        up,
        ws,
        cfg,
        approved,
        denied,
        body,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_shows_the_lifecycle_without_secrets_and_verifies() {
    let l = lifecycle(false).await;
    let (code, out) = verify(&l.cfg).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("intact"), "{out}");

    let jsonl = export(&l.cfg).await;
    let all = events(&jsonl);
    // seq 1, 2, 3, … with linked hashes.
    for (i, e) in all.iter().enumerate() {
        assert_eq!(e["seq"], (i + 1) as u64, "{e}");
        if i > 0 {
            assert_eq!(e["prev_hash"], all[i - 1]["hash"]);
        }
    }

    let mine: Vec<&Value> = all
        .iter()
        .filter(|e| e["approval_id"] == l.approved.as_str())
        .collect();
    let kinds: Vec<&str> = mine.iter().map(|e| e["event"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["held", "vote", "approved", "forwarded"], "{jsonl}");
    let request_id = &mine[0]["request_id"];
    assert!(request_id.is_string());
    for e in &mine {
        assert_eq!(&e["request_id"], request_id, "one request: {e}");
        assert_eq!(e["agent"], "deploy-bot");
        // How it authenticated and where from, on every event of the request.
        assert_eq!(e["auth"], "key", "{e}");
        assert_eq!(e["client"], "127.0.0.1", "{e}");
        assert!(e.get("acting_for").is_none(), "{e}");
        assert_eq!(e["method"], "POST");
        assert_eq!(e["path"], "/v1/things/vm-7");
        assert_eq!(e["rules"], serde_json::json!(["thing-change"]));
        assert_eq!(e["body_sha256"], sha256_hex(&l.body));
    }
    assert_eq!(mine[0]["show"], serde_json::json!({"/name": "vm-7"}));
    assert_eq!(mine[1]["reviewer"], "bob@example.com");
    assert_eq!(mine[1]["decision"], "approve");
    assert_eq!(mine[1]["reason"], "change window open");
    assert_eq!(mine[2]["reviewer"], "bob@example.com");
    assert_eq!(mine[3]["status"], 200);

    let theirs: Vec<&Value> = all
        .iter()
        .filter(|e| e["approval_id"] == l.denied.as_str())
        .collect();
    let kinds: Vec<&str> = theirs
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    // The approval's lifecycle, then the held request's own outcome: answered 403.
    assert_eq!(
        kinds,
        ["held", "vote", "denied", "not_forwarded"],
        "{jsonl}"
    );
    assert_eq!(theirs[3]["status"], 403);
    assert_eq!(theirs[3]["request_id"], theirs[0]["request_id"]);

    // No secret anywhere: agent key, reviewer tokens, injected credential, cookie, body.
    let live = std::fs::read_to_string(l.ws.path().join("audit.jsonl")).unwrap();
    for text in [&jsonl, &live] {
        for secret in [
            AGENT_KEY,
            BOB,
            CAROL,
            UPSTREAM_SECRET,
            COOKIE_SECRET,
            "\"size\":\"xl\"",
        ] {
            assert!(!text.contains(secret), "audit log contains {secret:?}");
        }
        let lower = text.to_ascii_lowercase();
        assert!(!lower.contains("authorization"), "{text}");
        assert!(!lower.contains("bearer"), "{text}");
        assert!(!lower.contains("cookie"), "{text}");
    }

    // The live JSONL copy is the same log, and verifies on its own.
    assert_eq!(live, jsonl, "audit.file matches the export");
    let (code, out, err) = cli(&[
        "audit",
        "verify",
        "-c",
        l.cfg.to_str().unwrap(),
        "--file",
        l.ws.path().join("audit.jsonl").to_str().unwrap(),
    ])
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(l.up.count(), 1);

    // --since takes an RFC 3339 time, a date, or a duration meaning that long ago.
    let time =
        |e: &Value| chrono::DateTime::parse_from_rfc3339(e["time"].as_str().unwrap()).unwrap();
    let third = all[2]["time"].as_str().unwrap();
    let since_third = events(&export_with(&l.cfg, &["--since", third]).await);
    let expected: Vec<&Value> = all.iter().filter(|e| time(e) >= time(&all[2])).collect();
    assert!(expected.len() >= all.len() - 2, "{jsonl}");
    assert_eq!(
        since_third.iter().collect::<Vec<_>>(),
        expected,
        "--since {third}"
    );
    assert_eq!(events(&export_with(&l.cfg, &["--since", "24h"]).await), all);
    assert_eq!(
        events(&export_with(&l.cfg, &["--since", "2000-01-01"]).await),
        all
    );
    assert!(events(&export_with(&l.cfg, &["--since", "2999-01-01"]).await).is_empty());
    let (code, _, err) = run_cli_blocking(
        &[
            "audit",
            "export",
            "-c",
            l.cfg.to_str().unwrap(),
            "--since",
            "yesterday",
        ],
        &[],
    )
    .await;
    assert_eq!(code, 2, "{err}");
    for format in ["RFC 3339", "2026-01-02T03:04:05Z", "2026-01-02", "24h"] {
        assert!(
            err.contains(format),
            "--since error should name {format}: {err}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verification_needs_neither_credentials_nor_the_private_key() {
    let l = lifecycle(true).await;
    let ws = l.ws.path();
    let cfg_text = std::fs::read_to_string(&l.cfg).unwrap();

    // Serving needs the upstream credential, and says which variable is missing …
    let (code, _, err) = run_cli_blocking(&["serve", "-c", l.cfg.to_str().unwrap()], &[]).await;
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("AIRLOCK_TEST_UPSTREAM_TOKEN is not set"),
        "{err}"
    );

    // … verifying needs neither it nor the private key: the public key checks the
    // checkpoints.
    std::fs::remove_file(ws.join("audit-key.pem")).unwrap();
    let (code, out) = verify(&l.cfg).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("intact"), "{out}");
    assert!(
        !out.contains(" 0 checkpoints"),
        "checkpoints were written: {out}"
    );
    assert!(!out.contains("NOT checked"), "{out}");
    assert!(out.contains("checked with audit.verify_key"), "{out}");
    let n = events(&export(&l.cfg).await).len() as i64;
    assert!(n >= 5, "{n} events");

    // Without any key the chain is still verified, and the output says the
    // signatures were not.
    std::fs::write(
        &l.cfg,
        cfg_text.replace("  verify_key: audit-key.pub.pem\n", ""),
    )
    .unwrap();
    let (code, out) = verify(&l.cfg).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("NOT checked"), "{out}");
    assert!(out.contains("set audit.verify_key"), "{out}");

    // Somebody else's public key does not vouch for these checkpoints.
    let (code, _, err) = run_cli_blocking(
        &[
            "keys",
            "new",
            "audit",
            "--out",
            ws.join("other.pem").to_str().unwrap(),
        ],
        &[],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    std::fs::write(
        &l.cfg,
        cfg_text.replace("verify_key: audit-key.pub.pem", "verify_key: other.pub.pem"),
    )
    .unwrap();
    let (code, out) = verify(&l.cfg).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("invalid signature"), "{out}");
    std::fs::write(&l.cfg, &cfg_text).unwrap();

    // A truncated tail is caught against the signed checkpoints …
    let keep = n - 2;
    let c = db(&l.ws);
    assert_eq!(
        c.execute("DELETE FROM audit_events WHERE seq > ?1", [keep])
            .unwrap(),
        2
    );
    let (code, out) = verify(&l.cfg).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.to_lowercase().contains("truncated"), "{out}");
    assert!(out.contains(&format!("at seq {}:", keep + 1)), "{out}");

    // … and an edited event is named by its seq.
    c.execute(
        "UPDATE audit_events SET line = replace(line, '\"agent\":\"deploy-bot\"', '\"agent\":\"etl-agent\"') WHERE seq = 2",
        [],
    )
    .unwrap();
    drop(c);
    let (code, out) = verify(&l.cfg).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("at seq 2:"), "{out}");
    assert!(out.contains("edited"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_event_is_named_by_seq() {
    let l = lifecycle(false).await;
    let all = events(&export(&l.cfg).await);
    let seq = all
        .iter()
        .find(|e| e["event"] == "vote" && e["approval_id"] == l.approved.as_str())
        .unwrap()["seq"]
        .as_i64()
        .unwrap();
    let c = db(&l.ws);
    c.execute(
        "UPDATE audit_events SET line = replace(line, '\"reviewer\":\"bob@example.com\"', '\"reviewer\":\"mallory@example.com\"') WHERE seq = ?1",
        params![seq],
    )
    .unwrap();
    let line: String = c
        .query_row("SELECT line FROM audit_events WHERE seq = ?1", [seq], |r| {
            r.get(0)
        })
        .unwrap();
    assert!(line.contains("mallory"), "the edit took: {line}");
    drop(c);

    let (code, out) = verify(&l.cfg).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&format!("at seq {seq}:")), "{out}");
    assert!(out.contains("edited"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_middle_event_is_named_by_seq() {
    let l = lifecycle(false).await;
    let n = events(&export(&l.cfg).await).len() as i64;
    assert!(n >= 5, "{n} events");
    let gone = n / 2;
    let c = db(&l.ws);
    assert_eq!(
        c.execute("DELETE FROM audit_events WHERE seq = ?1", [gone])
            .unwrap(),
        1
    );
    drop(c);
    let (code, out) = verify(&l.cfg).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&format!("at seq {gone}:")), "{out}");
    assert!(out.contains("deleted"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reordered_events_are_detected() {
    let l = lifecycle(false).await;
    let c = db(&l.ws);
    let line = |seq: i64| -> String {
        c.query_row("SELECT line FROM audit_events WHERE seq = ?1", [seq], |r| {
            r.get(0)
        })
        .unwrap()
    };
    let (two, three) = (line(2), line(3));
    c.execute(
        "UPDATE audit_events SET line = ?2 WHERE seq = ?1",
        params![2, three],
    )
    .unwrap();
    c.execute(
        "UPDATE audit_events SET line = ?2 WHERE seq = ?1",
        params![3, two],
    )
    .unwrap();
    drop(c);
    let (code, out) = verify(&l.cfg).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("at seq 2:"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_tail_is_detected_by_signed_checkpoints() {
    let l = lifecycle(true).await;
    let (code, out) = verify(&l.cfg).await;
    assert_eq!(code, 0, "{out}");
    assert!(
        !out.contains(" 0 checkpoints"),
        "checkpoints were written: {out}"
    );
    assert!(
        !out.contains("NOT checked"),
        "signatures checked with the key: {out}"
    );

    let n = events(&export(&l.cfg).await).len() as i64;
    let keep = n - 2;
    let c = db(&l.ws);
    assert_eq!(
        c.execute("DELETE FROM audit_events WHERE seq > ?1", [keep])
            .unwrap(),
        2
    );
    let (code, out) = verify(&l.cfg).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.to_lowercase().contains("truncated"), "{out}");
    assert!(out.contains(&format!("at seq {}:", keep + 1)), "{out}");

    // Deleting the checkpoints beyond the cut too leaves a shorter log that is
    // consistent inside the database, but the JSONL copy kept apart from it holds a
    // later signed checkpoint (tests/audit_anchor.rs has every other form of the cut).
    c.execute("DELETE FROM audit_checkpoints WHERE seq > ?1", [keep])
        .unwrap();
    drop(c);
    let (code, out) = verify(&l.cfg).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("truncated"), "{out}");
    assert!(out.contains("the JSONL copy"), "{out}");
    assert!(out.contains(&format!("log ends at seq {keep}")), "{out}");
    let live = events(&std::fs::read_to_string(l.ws.path().join("audit.jsonl")).unwrap());
    assert_eq!(live.len() as i64, n, "the SIEM copy still has every event");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewritten_tail_with_recomputed_hashes_is_detected_by_signed_checkpoints() {
    use airlock::audit::{compute_hash, to_jsonl_line, AuditEvent};
    let l = lifecycle(true).await;
    let c = db(&l.ws);
    let (seq, line): (i64, String) = c
        .query_row(
            "SELECT seq, line FROM audit_events ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    // Rewrite the last event (the deny becomes an approval, say) and re-hash it.
    let mut ev: AuditEvent = serde_json::from_str(&line).unwrap();
    ev.event = "approved".into();
    ev.hash = compute_hash(&ev.prev_hash, &ev);
    c.execute(
        "UPDATE audit_events SET line = ?2, hash = ?3 WHERE seq = ?1",
        params![seq, to_jsonl_line(&ev), ev.hash],
    )
    .unwrap();
    let (code, out) = verify(&l.cfg).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&format!("at seq {seq}:")), "{out}");
    assert!(out.contains("rewritten"), "{out}");

    // Moving the checkpoint along without the key does not help: its signature fails.
    c.execute(
        "UPDATE audit_checkpoints SET hash = ?2 WHERE seq = ?1",
        params![seq, ev.hash],
    )
    .unwrap();
    drop(c);
    let (code, out) = verify(&l.cfg).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("invalid signature"), "{out}");
}
