//! The generic webhook channel, end to end over real HTTP: airlock (in process) between
//! an agent, a recording upstream and a webhook receiver that checks every delivery's
//! signature as the README's webhook section tells users to. Each approval lifecycle event arrives
//! as a signed CloudEvents 1.0 event with the approval's context; a receiver that is
//! down delays its events (retried, none lost) but never the approval.

mod common;
#[path = "standins/webhook_receiver.rs"]
mod receiver;

use common::*;
use receiver::{kinds, verify, Receiver, Refused};
use serde_json::json;
use std::collections::HashMap;
use std::path::PathBuf;

const SECRET: &str = "whsec-test-7f3a9c";

const RULES: &str = r#"rules:
  - name: thing-change
    description: Changing a thing
    when:
      upstream: api
      method: [POST, DELETE]
      path: /v1/things/**
    then: approve
    approval:
      approvers: [group:sre]
      timeout: 30s
      show: [/name]
  - name: quick-expiry
    when:
      upstream: api
      method: POST
      path: /v1/expiring/**
    then: approve
    approval:
      approvers: [group:sre]
      timeout: 2s
"#;

/// A config with the webhook channel pointed at `hook`, `admin.public_url` set and the
/// live audit copy in `audit.jsonl`.
fn config(ws: &Workspace, upstream: &str, hook: &str) -> PathBuf {
    ws.write("rules/r.yaml", RULES);
    ws.write(
        "airlock.yaml",
        &format!(
            r#"listen: 127.0.0.1:0
admin:
  listen: 127.0.0.1:0
  public_url: https://airlock.example.com
store: sqlite://airlock.db
rules: rules/
upstreams:
  - name: api
    prefix: /api
    url: {upstream}
    timeout: 5s
{identities}channels:
  webhook:
    url: {hook}
    secret: {SECRET}
    timeout: 5s
audit:
  file: audit.jsonl
"#,
            identities = identities_yaml(),
        ),
    )
}

async fn start(r: &Receiver) -> (Upstream, Workspace, InProcess) {
    let up = Upstream::start().await;
    let ws = Workspace::new();
    let cfg = config(&ws, &up.url(), &r.url());
    let a = InProcess::start(&cfg).await;
    (up, ws, a)
}

/// Sends deploy-bot's `POST path` with `body` and a justification in the background,
/// and waits until it is the one pending approval.
async fn hold(
    a: &InProcess,
    path: &str,
    body: &str,
) -> (tokio::task::JoinHandle<reqwest::Response>, String) {
    let held = spawn_request(
        agent_request(a, AGENT_KEY, "POST", path)
            .header("content-type", "application/json")
            .header("x-airlock-justification", "ticket OPS-1: retire vm-7")
            .body(body.to_string()),
    );
    let id = id_of(&wait_pending(a, 1).await[0]);
    (held, id)
}

/// The `airlock_notifications_total` counter of the webhook channel for `result`.
async fn webhook_notifications(a: &InProcess, result: &str) -> u64 {
    let want = format!("result=\"{result}\"");
    metrics_text(a)
        .await
        .lines()
        .filter(|l| l.contains("notifications_total{") && l.contains("channel=\"webhook\""))
        .filter(|l| l.contains(&want))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_lifecycle_event_arrives_signed_as_a_cloudevent_with_the_approval_context() {
    let r = Receiver::start(SECRET).await;
    let (up, _ws, a) = start(&r).await;
    let body = r#"{"name":"vm-7","tier":"prod"}"#;
    let (held, id) = hold(&a, "/api/v1/things/vm-7?force=true", body).await;

    let opened = r.wait_event(&id, "opened").await;
    // CloudEvents 1.0, structured mode.
    assert_eq!(opened["specversion"], "1.0");
    assert_eq!(opened["type"], "dev.airlock.approval.opened");
    assert_eq!(opened["source"], "https://airlock.example.com");
    assert_eq!(opened["subject"], id.as_str());
    assert_eq!(opened["datacontenttype"], "application/json");
    let seq = opened["data"]["event"]["seq"].as_u64().unwrap();
    assert!(seq > 0, "{opened:#}");
    assert_eq!(opened["id"], format!("{id}-{seq}"));
    let time = opened["time"].as_str().unwrap();
    assert!(
        chrono::DateTime::parse_from_rfc3339(time).is_ok(),
        "time {time:?} is RFC 3339"
    );
    // What a reviewer needs to decide.
    let d = &opened["data"];
    assert_eq!(d["id"], id.as_str());
    assert_eq!(d["status"], "pending");
    assert_eq!(d["agent"], "deploy-bot");
    assert_eq!(d["owner"], "alice@example.com");
    assert_eq!(d["auth"], "key");
    assert_eq!(d["rules"][0]["name"], "thing-change");
    assert_eq!(d["rules"][0]["description"], "Changing a thing");
    assert_eq!(
        d["rules"][0]["progress"][0]["approvers"],
        json!(["group:sre"])
    );
    assert_eq!(d["rules"][0]["progress"][0]["quorum"], 1);
    assert_eq!(d["rules"][0]["progress"][0]["approved_by"], json!([]));
    assert_eq!(d["method"], "POST");
    assert!(
        d["url"]
            .as_str()
            .unwrap()
            .ends_with("/v1/things/vm-7?force=true"),
        "{d:#}"
    );
    assert!(d["show"].to_string().contains("vm-7"), "show: {d:#}");
    assert_eq!(d["justification"], "ticket OPS-1: retire vm-7");
    assert_eq!(d["body_sha256"], sha256_hex(body));
    assert!(chrono::DateTime::parse_from_rfc3339(d["expires"].as_str().unwrap()).is_ok());
    assert_eq!(d["votes"], json!([]));
    assert_eq!(
        d["link"],
        format!("https://airlock.example.com/approvals/{id}")
    );
    assert_eq!(d["event"]["kind"], "opened");
    let mention = d["mention"].to_string();
    assert!(mention.contains("bob@example.com") && mention.contains("carol@example.com"));
    assert!(
        !mention.contains("alice@example.com"),
        "the agent's owner is never asked: {mention}"
    );

    // A vote through the API: `vote`, `decided`, then `forwarded` with the upstream's
    // status.
    let (s, _) = vote(&a, BOB, &id, "approve", Some("looks fine")).await;
    assert_eq!(s, 200);
    let v = r.wait_event(&id, "vote").await;
    assert_eq!(v["data"]["event"]["reviewer"], "bob@example.com");
    assert_eq!(v["data"]["event"]["decision"], "approve");
    assert_eq!(v["data"]["event"]["reason"], "looks fine");
    assert_eq!(v["data"]["event"]["channel"], "api");
    let decided = r.wait_event(&id, "decided").await;
    assert_eq!(decided["data"]["event"]["approved"], true);
    assert_eq!(decided["data"]["event"]["by"], "bob@example.com");
    let reply = held.await.unwrap();
    assert_eq!(reply.status(), 200);
    let forwarded = r.wait_event(&id, "forwarded").await;
    assert_eq!(forwarded["data"]["event"]["status"], 200);
    assert_eq!(up.count(), 1);

    // In order, once each, every one signed.
    let events = r.events_of(&id);
    assert_eq!(kinds(&events), ["opened", "vote", "decided", "forwarded"]);
    let mut ids: Vec<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    ids.dedup();
    assert_eq!(ids.len(), 4, "distinct ids: {ids:?}");
    r.assert_all_signed();

    // The example in the README's webhook section has the fields a real event has.
    let example: serde_json::Value =
        serde_json::from_str(&doc_block("json", "\"specversion\"")).unwrap();
    let keys = |v: &serde_json::Value| {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(
        keys(&example),
        keys(&opened),
        "the README's webhook section example"
    );
    assert_eq!(
        keys(&example["data"]),
        keys(&opened["data"]),
        "the README's webhook section example data"
    );

    // A real delivery, altered on the way or checked with another secret, fails the
    // receiver's check.
    let real = r.deliveries()[0].clone();
    let now = chrono::Utc::now().timestamp();
    let sig = real.signature.as_deref();
    assert_eq!(verify(SECRET.as_bytes(), sig, &real.raw, now), Ok(()));
    let tampered = String::from_utf8(real.raw.to_vec())
        .unwrap()
        .replace("deploy-bot", "deploy-bos");
    assert_eq!(
        verify(SECRET.as_bytes(), sig, tampered.as_bytes(), now),
        Err(Refused::Mismatch)
    );
    assert_eq!(
        verify(b"not-the-secret", sig, &real.raw, now),
        Err(Refused::Mismatch)
    );
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denial_arrives_with_its_reason_and_an_expiry_as_expired() {
    let r = Receiver::start(SECRET).await;
    let (up, _ws, a) = start(&r).await;

    let (held, id) = hold(&a, "/api/v1/things/vm-8", r#"{"name":"vm-8"}"#).await;
    r.wait_event(&id, "opened").await;
    let (s, _) = vote(&a, CAROL, &id, "deny", Some("not during the freeze")).await;
    assert_eq!(s, 200);
    let decided = r.wait_event(&id, "decided").await;
    assert_eq!(decided["data"]["event"]["approved"], false);
    assert_eq!(decided["data"]["event"]["by"], "carol@example.com");
    assert_eq!(decided["data"]["event"]["reason"], "not during the freeze");
    assert_eq!(decided["data"]["status"], "denied");
    assert_eq!(decided["data"]["reason"], "not during the freeze");
    assert_eq!(held.await.unwrap().status(), 403);

    // Nobody answers the quick one in time.
    let (held, id) = hold(&a, "/api/v1/expiring/x", r#"{"name":"x"}"#).await;
    let expired = r.wait_event(&id, "expired").await;
    assert_eq!(expired["data"]["status"], "expired");
    assert_eq!(expired["type"], "dev.airlock.approval.expired");
    assert_ne!(held.await.unwrap().status(), 200);
    assert_eq!(kinds(&r.events_of(&id)), ["opened", "expired"]);
    assert_eq!(up.count(), 0, "nothing was forwarded");
    r.assert_all_signed();
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_is_down_delays_its_events_but_never_the_approval() {
    let r = Receiver::start(SECRET).await;
    r.set_down(true);
    let (up, _ws, a) = start(&r).await;
    let (held, id) = hold(&a, "/api/v1/things/vm-9", r#"{"name":"vm-9"}"#).await;
    // The channel is down: its first attempt failed.
    r.wait_for("a first attempt", |ds| (!ds.is_empty()).then_some(()))
        .await;

    // The API decides all the same, and the agent's request completes.
    let (s, body) = vote(&a, BOB, &id, "approve", None).await;
    assert_eq!(s, 200, "{body}");
    let reply = tokio::time::timeout(DEADLINE, held)
        .await
        .expect("the agent's request completes while the webhook is down")
        .unwrap();
    assert_eq!(reply.status(), 200);
    assert_eq!(up.count(), 1);
    // Retried (the first retry comes about a second later), still refused.
    r.wait_for("a retry", |ds| (ds.len() >= 2).then_some(()))
        .await;
    assert!(r.accepted().is_empty());

    // Back up: every event arrives, in order, each accepted once.
    r.set_down(false);
    r.wait_event(&id, "forwarded").await;
    let events = r.events_of(&id);
    assert_eq!(kinds(&events), ["opened", "vote", "decided", "forwarded"]);
    let mut per_id: HashMap<String, usize> = HashMap::new();
    for e in &events {
        *per_id
            .entry(e["id"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    assert!(per_id.values().all(|n| *n == 1), "{per_id:?}");
    assert_eq!(per_id.len(), 4);
    // The outbox agrees: four delivered, some retried, none given up.
    eventually(DEADLINE.as_secs(), || async {
        (webhook_notifications(&a, "delivered").await == 4).then_some(())
    })
    .await;
    assert!(webhook_notifications(&a, "retried").await >= 2);
    assert_eq!(webhook_notifications(&a, "failed").await, 0);
    assert!(r.refused_while_down() >= 2);
    // Every attempt, refused or not, was signed.
    r.assert_all_signed();
    a.stop().await;
}

#[test]
fn the_receivers_check_refuses_a_tampered_body_a_wrong_secret_and_a_stale_timestamp() {
    let body = br#"{"specversion":"1.0","id":"ap_1-7","data":{"status":"pending"}}"#;
    let now = chrono::Utc::now().timestamp();
    // Signed by airlock's own signer.
    let header = airlock::channels::webhook::signature(SECRET, now, body);
    let sig = Some(header.as_str());
    assert_eq!(verify(SECRET.as_bytes(), sig, body, now), Ok(()));
    // Some clock skew is fine.
    assert_eq!(verify(SECRET.as_bytes(), sig, body, now + 299), Ok(()));

    let tampered = br#"{"specversion":"1.0","id":"ap_1-7","data":{"status":"approved"}}"#;
    assert_eq!(
        verify(SECRET.as_bytes(), sig, tampered, now),
        Err(Refused::Mismatch)
    );
    assert_eq!(
        verify(b"whsec-other", sig, body, now),
        Err(Refused::Mismatch)
    );
    // A replay six minutes later.
    assert_eq!(
        verify(SECRET.as_bytes(), sig, body, now + 360),
        Err(Refused::Stale)
    );
    // A fresh timestamp on an old signature.
    let moved = header.replacen(&format!("t={now}"), &format!("t={}", now + 360), 1);
    assert_eq!(
        verify(SECRET.as_bytes(), Some(&moved), body, now + 360),
        Err(Refused::Mismatch)
    );
    assert_eq!(
        verify(SECRET.as_bytes(), None, body, now),
        Err(Refused::Missing)
    );
    assert_eq!(
        verify(SECRET.as_bytes(), Some("t=abc,v1=00"), body, now),
        Err(Refused::Malformed)
    );
    assert_eq!(
        verify(SECRET.as_bytes(), Some(&format!("t={now}")), body, now),
        Err(Refused::Malformed)
    );
}

/// The first ```` ```lang ```` block of the README's webhook section that contains
/// `marker`.
fn doc_block(lang: &str, marker: &str) -> String {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let doc = readme
        .split("### Webhook: signed CloudEvents")
        .nth(1)
        .expect("the README's webhook section");
    doc.split(&format!("```{lang}\n"))
        .skip(1)
        .filter_map(|b| b.split("```").next())
        .find(|b| b.contains(marker))
        .unwrap_or_else(|| panic!("the README's webhook section has no {lang} block with {marker}"))
        .to_string()
}

/// Whether `tool --version` runs; outside CI a missing tool skips the test (said on
/// stderr), in CI it fails.
fn have(tool: &str, test: &str) -> bool {
    let ok = std::process::Command::new(tool)
        .arg(if tool == "openssl" {
            "version"
        } else {
            "--version"
        })
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(!in_ci(), "{test}: {tool} is needed in CI");
        eprintln!("SKIPPED {test}: no {tool} on this machine");
    }
    ok
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_python_and_shell_checks_accept_a_real_delivery_and_refuse_a_forged_one() {
    let test = "documented snippets";
    if !have("python3", test) || !have("openssl", test) {
        return;
    }
    let r = Receiver::start(SECRET).await;
    let (_up, ws, a) = start(&r).await;
    let (held, id) = hold(&a, "/api/v1/things/vm-1", r#"{"name":"vm-1"}"#).await;
    r.wait_event(&id, "opened").await;
    let real = r.deliveries()[0].clone();
    let header = real.signature.clone().unwrap();
    let genuine = ws.write("genuine.json", std::str::from_utf8(&real.raw).unwrap());
    let forged = ws.write(
        "forged.json",
        &std::str::from_utf8(&real.raw)
            .unwrap()
            .replace("\"pending\"", "\"approved\""),
    );
    assert_ne!(
        std::fs::read(&genuine).unwrap(),
        std::fs::read(&forged).unwrap()
    );
    // Correctly signed, ten minutes ago.
    let stale = airlock::channels::webhook::signature(
        SECRET,
        chrono::Utc::now().timestamp() - 600,
        &real.raw,
    );

    let python = ws.write(
        "verify.py",
        &format!(
            "{}\nimport sys\nbody = open(sys.argv[3], 'rb').read()\n\
             sys.exit(0 if verify_airlock(sys.argv[1].encode(), sys.argv[2], body) else 1)\n",
            doc_block("python", "def verify_airlock")
        ),
    );
    let shell = ws.write(
        "verify.sh",
        &format!(
            "{}\nverify_airlock \"$1\" \"$2\"\n",
            doc_block("sh", "verify_airlock()")
        ),
    );
    let run = |secret: &str, header: &str, body: &PathBuf| {
        let py = std::process::Command::new("python3")
            .arg(&python)
            .args([secret, header])
            .arg(body)
            .status()
            .unwrap()
            .success();
        let sh = std::process::Command::new("sh")
            .arg(&shell)
            .arg(header)
            .arg(body)
            .env("AIRLOCK_WEBHOOK_SECRET", secret)
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap()
            .success();
        (py, sh)
    };
    assert_eq!(run(SECRET, &header, &genuine), (true, true), "genuine");
    assert_eq!(run(SECRET, &header, &forged), (false, false), "forged body");
    assert_eq!(
        run("whsec-other", &header, &genuine),
        (false, false),
        "wrong secret"
    );
    assert_eq!(run(SECRET, &stale, &genuine), (false, false), "stale");
    assert_eq!(run(SECRET, "v1=00", &genuine), (false, false), "malformed");
    drop(held);
    a.stop().await;
}
