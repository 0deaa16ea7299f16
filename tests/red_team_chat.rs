//! Red team: the chat callbacks (`POST /slack/actions`, Slack Socket Mode envelopes,
//! `POST /teams/actions`) attacked as a real attacker would, over real HTTP against an
//! in-process airlock and the stand-ins of `tests/standins/` (reused, unchanged).
//!
//! Every case asserts the safe outcome a reviewer or an auditor would check: no vote
//! recorded (the approval stays pending and its votes list is empty) and a clean
//! answer (a 4xx, or a 200 with an explanation) — never a 5xx, a dropped connection
//! or a hang. Each attack table ends with a positive control (the honest request is
//! accepted), so a table cannot pass because nothing works at all.

mod common;
#[path = "standins/slack.rs"]
mod slack_standin;
#[allow(dead_code)]
#[path = "standins/teams.rs"]
mod teams_standin;

use base64::Engine;
use common::*;
use jsonwebtoken::{Algorithm, EncodingKey};
use rsa::pkcs1::EncodeRsaPrivateKey;
use serde_json::{json, Value};
use slack_standin::{click, form, sign, submit, Slack, APP, APP_TOKEN, BOT_TOKEN, CHANNEL, TEAM};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use teams_standin::{
    claims, invoke, keys, Microsoft, APP_ID, APP_PASSWORD, CONVERSATION, ISSUER, TENANT,
};

const SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5-red";
const U_BOB: &str = "U0BOB";
const U_CAROL: &str = "U0CAROL";
const U_ALICE: &str = "U0ALICE";
const U_DAVE: &str = "U0DAVE";
const U_STRANGER: &str = "U0NOBODY";

const AAD_BOB: &str = "1f6a3c2e-0b9d-4c51-8e7a-b0b0b0b0b0b0";
const AAD_CAROL: &str = "2c4e6a8b-1d3f-4a5c-9e7b-ca401ca401ca";
const AAD_ALICE: &str = "3a1ce000-2b4d-4e6f-8a0c-a11ce0a11ce0";
const AAD_DAVE: &str = "4dae0000-3c5e-4f70-9b1d-da7eda7eda7e";
const AAD_STRANGER: &str = "5e000000-4d6f-4081-ac2e-000000000005";

const RULES: &str = r#"rules:
  - name: delete-vm
    description: Deleting a production VM
    when:
      upstream: api
      method: POST
      path: /v1/things/**
    then: approve
    approval:
      approvers: [group:sre]
      timeout: 10m
  - name: two-keys
    description: Rotating the root keys
    when:
      upstream: api
      method: POST
      path: /v1/keys/**
    then: approve
    approval:
      approvers: [group:sre]
      quorum: 2
      timeout: 10m
  - name: reasoned
    description: Changing billing
    when:
      upstream: api
      method: POST
      path: /v1/billing/**
    then: approve
    approval:
      approvers: [group:sre]
      timeout: 10m
      require_reason: true
  - name: leads-only
    description: Something only leads decide
    when:
      upstream: api
      method: POST
      path: /v1/leads/**
    then: approve
    approval:
      approvers: [group:leads]
      timeout: 10m
"#;

/// Request headers, as (name, value), repeated names kept in order.
type Headers<'a> = Vec<(&'a str, String)>;

// ---------------------------------------------------------------------------------
// Environment: airlock with Slack and/or Teams pointed at the stand-ins.

#[derive(Clone, Copy, PartialEq)]
enum SlackMode {
    Off,
    /// The interactivity URL, with the signing secret.
    Signed,
    /// Socket Mode only (no signing secret).
    Socket,
}

#[derive(Clone, PartialEq)]
enum TeamsMode {
    Off,
    /// Bot mode with the stand-in's OpenID metadata.
    Bot,
    /// Bot mode with `jwks:` pointing at this URL.
    BotWithJwks(String),
    /// Workflows webhook only (no bot).
    Workflows,
}

struct Env {
    _up: Upstream,
    _ws: Workspace,
    a: InProcess,
    slack: Slack,
    /// The Microsoft stand-in, when Teams is configured.
    ms: Option<Microsoft>,
}

impl Env {
    fn ms(&self) -> &Microsoft {
        self.ms.as_ref().expect("Teams is configured")
    }
}

/// The stand-in's RSA keys, generated off the runtime's threads (slow in debug builds).
async fn ensure_keys() {
    tokio::task::spawn_blocking(keys).await.unwrap();
}

fn config(
    ws: &Workspace,
    up: &str,
    slack: &Slack,
    ms: Option<&Microsoft>,
    s: SlackMode,
    t: &TeamsMode,
) -> PathBuf {
    let mut channels = String::new();
    if s != SlackMode::Off {
        let how = match s {
            SlackMode::Socket => format!("app_token: {APP_TOKEN}"),
            _ => format!("signing_secret: {SECRET}"),
        };
        channels.push_str(&format!(
            r#"  slack:
    bot_token: {BOT_TOKEN}
    {how}
    channel: {CHANNEL}
    api_base: {api}
    app_id: {APP}
    team_id: {TEAM}
"#,
            api = slack.api_base()
        ));
    }
    let bot = |jwks: Option<&str>| {
        let ms = ms.expect("the Microsoft stand-in");
        let mut b = format!(
            r#"  teams:
    app_id: {APP_ID}
    app_password: "{APP_PASSWORD}"
    tenant_id: {TENANT}
    service_url: {service}
    conversation: "{CONVERSATION}"
    authority: {base}
    openid_metadata: {base}/v1/.well-known/openidconfiguration?run={run}
"#,
            service = ms.service_url(),
            base = ms.base(),
            run = uuid::Uuid::new_v4().simple(),
        );
        if let Some(j) = jwks {
            b.push_str(&format!("    jwks: {j}\n"));
        }
        b
    };
    match t {
        TeamsMode::Off => {}
        TeamsMode::Bot => channels.push_str(&bot(None)),
        TeamsMode::BotWithJwks(j) => channels.push_str(&bot(Some(j))),
        TeamsMode::Workflows => channels.push_str(&format!(
            "  teams:\n    webhook_url: {}\n",
            ms.expect("the Microsoft stand-in").workflow_url()
        )),
    }
    let channels = if channels.is_empty() {
        String::new()
    } else {
        format!("channels:\n{channels}")
    };
    let text = format!(
        r#"listen: 127.0.0.1:0
admin:
  listen: 127.0.0.1:0
  public_url: https://airlock.example.com
store: sqlite://airlock.db
rules: rules/
audit:
  file: audit.jsonl
upstreams:
  - name: api
    prefix: /api
    url: {up}
    timeout: 5s
agents:
  - id: deploy-bot
    key: {agent}
    owner: alice@example.com
reviewers:
  - id: bob@example.com
    groups: [sre]
    token: {bob}
    slack: {U_BOB}
    teams: {AAD_BOB}
  - id: carol@example.com
    groups: [sre]
    token: {carol}
    slack: {U_CAROL}
    teams: {AAD_CAROL}
  - id: alice@example.com
    groups: [sre]
    token: {alice}
    slack: {U_ALICE}
    teams: {AAD_ALICE}
  - id: dave@example.com
    groups: [leads]
    token: {dave}
    slack: {U_DAVE}
    teams: {AAD_DAVE}
{channels}"#,
        agent = digest(AGENT_KEY),
        bob = digest(BOB),
        carol = digest(CAROL),
        alice = digest(ALICE),
        dave = digest(DAVE),
    );
    ws.write("rules/r.yaml", RULES);
    ws.write("airlock.yaml", &text)
}

async fn start(s: SlackMode, t: TeamsMode) -> Env {
    let slack = Slack::start().await;
    let ms = match t {
        TeamsMode::Off => None,
        _ => Some(Microsoft::start().await),
    };
    let up = Upstream::start().await;
    let ws = Workspace::new();
    let cfg = config(&ws, &up.url(), &slack, ms.as_ref(), s, &t);
    let a = InProcess::start(&cfg).await;
    Env {
        _up: up,
        _ws: ws,
        a,
        slack,
        ms,
    }
}

/// deploy-bot's request `POST path`, held: (the agent's task, the approval id).
async fn hold(a: &InProcess, path: &str) -> (tokio::task::JoinHandle<AgentReply>, String) {
    let before: Vec<String> = pending(a, BOB).await.iter().map(id_of).collect();
    let task = agent_spawn(a, "POST", path, r#"{"name":"x"}"#);
    let id = eventually(DEADLINE.as_secs(), || {
        let before = before.clone();
        async move {
            pending(a, BOB)
                .await
                .iter()
                .map(id_of)
                .find(|id| !before.contains(id))
        }
    })
    .await;
    (task, id)
}

async fn approval(a: &InProcess, id: &str) -> Value {
    let (s, v) = approval_get(a, BOB, id).await;
    assert_eq!(s, 200, "{v}");
    v
}

/// Nothing was recorded on `id`: still pending, no votes.
async fn assert_no_vote(a: &InProcess, id: &str, what: &str) {
    let v = approval(a, id).await;
    assert_eq!(
        v["status"], "pending",
        "{what}: a vote decided the approval: {v}"
    );
    assert_eq!(v["votes"], json!([]), "{what}: a vote was recorded: {v}");
}

/// The reviewers who voted on `id`.
async fn voters(a: &InProcess, id: &str) -> Vec<String> {
    approval(a, id).await["votes"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|v| v["reviewer"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// Sends `req`; the answer within the deadline (status, body) — a dropped connection
/// (a panic in the handler) or no answer (a hang) fails the test with `what`.
async fn send(req: reqwest::RequestBuilder, what: &str) -> (u16, String) {
    let r = tokio::time::timeout(DEADLINE, req.send())
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within {DEADLINE:?} (hang)"))
        .unwrap_or_else(|e| {
            panic!("{what}: the connection ended without an HTTP answer (a panic in the handler?): {e:?}")
        });
    let s = r.status().as_u16();
    let body = tokio::time::timeout(DEADLINE, r.text())
        .await
        .unwrap_or_else(|_| panic!("{what}: the body did not end within {DEADLINE:?} (hang)"))
        .unwrap_or_default();
    (s, body)
}

/// airlock's JSON error code of an answer.
fn error_code(body: &str) -> Value {
    serde_json::from_str::<Value>(body).unwrap_or(Value::Null)["error"].clone()
}

// ---------------------------------------------------------------------------------
// Slack wire helpers (signed independently of airlock's code).

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// POSTs `body` to `/slack/actions{query}` with `headers`.
async fn slack_post(
    a: &InProcess,
    query: &str,
    body: &str,
    headers: &[(&str, String)],
    what: &str,
) -> (u16, String) {
    let mut r = client()
        .post(a.admin_url(&format!("/slack/actions{query}")))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body.to_string());
    for (k, v) in headers {
        r = r.header(*k, v.as_str());
    }
    send(r, what).await
}

/// POSTs `body` signed now with the signing secret.
async fn slack_signed(a: &InProcess, body: &str, what: &str) -> (u16, String) {
    let ts = now().to_string();
    let sig = sign(SECRET, &ts, body);
    slack_post(
        a,
        "",
        body,
        &[
            ("x-slack-request-timestamp", ts),
            ("x-slack-signature", sig),
        ],
        what,
    )
    .await
}

// ---------------------------------------------------------------------------------
// Slack: signature forgery.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_forged_signatures_and_timestamps_record_nothing() {
    let env = start(SlackMode::Signed, TeamsMode::Off).await;
    let (_held, id) = hold(&env.a, "/api/v1/things/vm-1").await;
    let payload = click(U_BOB, "airlock_approve", &id);
    let body = form(&payload);
    let t = now();
    let ts = t.to_string();
    let good = sign(SECRET, &ts, &body);
    let hexpart = good.trim_start_matches("v0=").to_string();
    let h = |ts: &str, sig: &str| {
        vec![
            ("x-slack-request-timestamp", ts.to_string()),
            ("x-slack-signature", sig.to_string()),
        ]
    };
    let pretty = form_urlencoded::Serializer::new(String::new())
        .append_pair("payload", &serde_json::to_string_pretty(&payload).unwrap())
        .finish();
    // (what, query, body, headers): each must be refused 401 with nothing recorded.
    let cases: Vec<(&str, &str, String, Headers)> = vec![
        ("no headers at all", "", body.clone(), vec![]),
        ("empty signature and timestamp", "", body.clone(), h("", "")),
        (
            "signature only",
            "",
            body.clone(),
            vec![("x-slack-signature", good.clone())],
        ),
        (
            "timestamp only",
            "",
            body.clone(),
            vec![("x-slack-request-timestamp", ts.clone())],
        ),
        (
            "garbage signature",
            "",
            body.clone(),
            h(&ts, "v0=not-hex-at-all"),
        ),
        (
            "v1= scheme with the right digest",
            "",
            body.clone(),
            h(&ts, &format!("v1={hexpart}")),
        ),
        (
            "V0= (upper case scheme)",
            "",
            body.clone(),
            h(&ts, &format!("V0={hexpart}")),
        ),
        ("the digest without v0=", "", body.clone(), h(&ts, &hexpart)),
        (
            "the digest and an extra byte",
            "",
            body.clone(),
            h(&ts, &format!("{good}00")),
        ),
        (
            "the digest one byte short",
            "",
            body.clone(),
            h(&ts, &good[..good.len() - 2]),
        ),
        (
            "the digest twice",
            "",
            body.clone(),
            h(&ts, &format!("{good},{good}")),
        ),
        (
            "signed with an empty secret",
            "",
            body.clone(),
            h(&ts, &sign("", &ts, &body)),
        ),
        (
            "signed with another app's secret",
            "",
            body.clone(),
            h(&ts, &sign("another-apps-signing-secret", &ts, &body)),
        ),
        (
            "one byte of the body changed",
            "",
            body.replacen("trigger", "triggeR", 1),
            h(&ts, &good),
        ),
        (
            "a trailing newline added",
            "",
            format!("{body}\n"),
            h(&ts, &good),
        ),
        (
            "a field put before the payload",
            "",
            format!("a=1&{body}"),
            h(&ts, &good),
        ),
        (
            "percent escapes in lower case",
            "",
            body.replace("%3A", "%3a"),
            h(&ts, &good),
        ),
        (
            "the payload JSON re-serialized",
            "",
            pretty.clone(),
            h(&ts, &good),
        ),
        ("timestamp +t", "", body.clone(), h(&format!("+{t}"), &good)),
        (
            "timestamp with a leading zero",
            "",
            body.clone(),
            h(&format!("0{t}"), &good),
        ),
        (
            "timestamp t.0",
            "",
            body.clone(),
            h(&format!("{t}.0"), &good),
        ),
        ("timestamp 1e9", "", body.clone(), h("1e9", &good)),
        ("timestamp -t", "", body.clone(), h(&format!("-{t}"), &good)),
        (
            "timestamp in hex",
            "",
            body.clone(),
            h(&format!("{t:#x}"), &good),
        ),
        (
            "timestamp beyond i64",
            "",
            body.clone(),
            h("99999999999999999999", &good),
        ),
        (
            "timestamp as a date",
            "",
            body.clone(),
            h("Sat, 28 Nov 2026 10:00:00 GMT", &good),
        ),
        (
            "correctly signed 400 s ago (stale)",
            "",
            body.clone(),
            h(&(t - 400).to_string(), &sign(SECRET, t - 400, &body)),
        ),
        (
            "correctly signed 400 s ahead (future)",
            "",
            body.clone(),
            h(&(t + 400).to_string(), &sign(SECRET, t + 400, &body)),
        ),
        (
            "correctly signed a day ahead",
            "",
            body.clone(),
            h(&(t + 86400).to_string(), &sign(SECRET, t + 86400, &body)),
        ),
        (
            "two signatures, a forged one first",
            "",
            body.clone(),
            vec![
                ("x-slack-request-timestamp", ts.clone()),
                ("x-slack-signature", sign("forged", &ts, &body)),
                ("x-slack-signature", good.clone()),
            ],
        ),
        (
            "two timestamps, a stale one first",
            "",
            body.clone(),
            vec![
                ("x-slack-request-timestamp", (t - 400).to_string()),
                ("x-slack-request-timestamp", ts.clone()),
                ("x-slack-signature", good.clone()),
            ],
        ),
        (
            "signature and timestamp in the query string",
            "",
            body.clone(),
            vec![],
        ),
        (
            "a reviewer's token instead of a signature",
            "",
            body.clone(),
            vec![("authorization", format!("Bearer {BOB}"))],
        ),
        (
            "the agent's key instead of a signature",
            "",
            body.clone(),
            vec![("authorization", format!("Bearer {AGENT_KEY}"))],
        ),
    ];
    let query = format!(
        "?x-slack-request-timestamp={ts}&x-slack-signature={}",
        good.replace('=', "%3D")
    );
    for (what, q, b, headers) in &cases {
        let q = if what.contains("query string") {
            query.as_str()
        } else {
            q
        };
        let (s, answer) = slack_post(&env.a, q, b, headers, what).await;
        assert_eq!(s, 401, "{what}: {answer}");
        assert_eq!(error_code(&answer), "unauthenticated", "{what}: {answer}");
        assert_no_vote(&env.a, &id, what).await;
    }
    // Control: the honest callback counts.
    let (s, answer) = slack_post(&env.a, "", &body, &h(&ts, &good), "the signed click").await;
    assert_eq!(s, 200, "{answer}");
    assert_eq!(voters(&env.a, &id).await, ["bob@example.com"]);
}

/// Timestamps at the ends of i64, each correctly signed (only the 5-minute window can
/// refuse them): refused 401, not a panic (overflow in `now - ts`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_timestamps_at_the_ends_of_i64_are_refused_cleanly() {
    let env = start(SlackMode::Signed, TeamsMode::Off).await;
    let (_held, id) = hold(&env.a, "/api/v1/things/vm-2").await;
    let body = form(&click(U_BOB, "airlock_approve", &id));
    for ts in [
        "9223372036854775807",
        "-9223372036854775808",
        "-9223372036854775807",
        "-9000000000000000000",
    ] {
        let what = format!("timestamp {ts}");
        let headers = [
            ("x-slack-request-timestamp", ts.to_string()),
            ("x-slack-signature", sign(SECRET, ts, &body)),
        ];
        let (s, answer) = slack_post(&env.a, "", &body, &headers, &what).await;
        assert_eq!(s, 401, "{what}: {answer}");
        assert_eq!(error_code(&answer), "unauthenticated", "{what}: {answer}");
        assert_no_vote(&env.a, &id, &what).await;
    }
}

// ---------------------------------------------------------------------------------
// Slack: correctly signed bodies that are not one interaction payload of this app.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_signed_bodies_that_are_not_one_payload_of_this_app_record_nothing() {
    let env = start(SlackMode::Signed, TeamsMode::Off).await;
    let (_held, id) = hold(&env.a, "/api/v1/things/vm-3").await;
    let bob = click(U_BOB, "airlock_approve", &id);
    let with = |f: &dyn Fn(&mut Value)| {
        let mut p = bob.clone();
        f(&mut p);
        form(&p)
    };
    let raw = |p: &str| {
        form_urlencoded::Serializer::new(String::new())
            .append_pair("payload", p)
            .finish()
    };
    let big = with(&|p| p["padding"] = json!("x".repeat(3 * 1024 * 1024)));
    // (what, body, expected status, expected error code)
    let cases: Vec<(&str, String, u16, &str)> = vec![
        (
            "the payload as a JSON body",
            bob.to_string(),
            400,
            "bad_request",
        ),
        ("an empty body", String::new(), 400, "bad_request"),
        ("an empty payload", "payload=".into(), 400, "bad_request"),
        ("payload null", raw("null"), 400, "bad_request"),
        (
            "payload a string",
            raw("\"block_actions\""),
            400,
            "bad_request",
        ),
        (
            "payload an array",
            raw(&json!([bob.clone()]).to_string()),
            400,
            "bad_request",
        ),
        (
            "no type",
            with(&|p| {
                p.as_object_mut().unwrap().remove("type");
            }),
            400,
            "bad_request",
        ),
        (
            "no user",
            with(&|p| {
                p.as_object_mut().unwrap().remove("user");
            }),
            400,
            "bad_request",
        ),
        (
            "user.id a number",
            with(&|p| p["user"]["id"] = json!(42)),
            400,
            "bad_request",
        ),
        (
            "no api_app_id",
            with(&|p| {
                p.as_object_mut().unwrap().remove("api_app_id");
            }),
            403,
            "forbidden",
        ),
        (
            "api_app_id in lower case",
            with(&|p| p["api_app_id"] = json!(APP.to_lowercase())),
            403,
            "forbidden",
        ),
        (
            "api_app_id an array holding ours",
            with(&|p| p["api_app_id"] = json!([APP])),
            403,
            "forbidden",
        ),
        (
            "no team at all",
            with(&|p| {
                p["team"] = Value::Null;
                p["user"].as_object_mut().unwrap().remove("team_id");
            }),
            403,
            "forbidden",
        ),
        (
            "team.id another, user.team_id ours",
            with(&|p| p["team"]["id"] = json!("T0ELSEWHERE")),
            403,
            "forbidden",
        ),
        (
            "team null, user.team_id another",
            with(&|p| {
                p["team"] = Value::Null;
                p["user"]["team_id"] = json!("T0ELSEWHERE");
            }),
            403,
            "forbidden",
        ),
    ];
    for (what, body, status, code) in &cases {
        let (s, answer) = slack_signed(&env.a, body, what).await;
        assert_eq!(s, *status, "{what}: {answer}");
        assert_eq!(error_code(&answer), *code, "{what}: {answer}");
        assert_no_vote(&env.a, &id, what).await;
    }
    // Larger than any interaction: refused before it is read as one.
    let (s, answer) = slack_signed(&env.a, &big, "a 3 MB body").await;
    assert!((400..500).contains(&s), "a 3 MB body: {s} {answer}");
    assert_no_vote(&env.a, &id, "a 3 MB body").await;

    // The payload in the query string, the signed body empty: no payload.
    let ts = now().to_string();
    let q = format!("?{}", form(&bob));
    let headers = [
        ("x-slack-request-timestamp", ts.clone()),
        ("x-slack-signature", sign(SECRET, &ts, "")),
    ];
    let (s, answer) = slack_post(&env.a, &q, "", &headers, "payload in the query").await;
    assert_eq!(s, 400, "payload in the query: {answer}");
    assert_no_vote(&env.a, &id, "payload in the query").await;

    // Two payload fields: a benign one first, Bob's approval second. One is read, and
    // it is the benign one (a stranger's click): no vote.
    let two = format!(
        "{}&{}",
        form(&click(U_STRANGER, "airlock_approve", &id)),
        form(&bob)
    );
    let (s, answer) = slack_signed(&env.a, &two, "two payload fields").await;
    assert!(s < 500, "two payload fields: {s} {answer}");
    assert_no_vote(&env.a, &id, "two payload fields").await;

    // Control.
    let (s, answer) = slack_signed(&env.a, &form(&bob), "the signed click").await;
    assert_eq!(s, 200, "{answer}");
    assert_eq!(voters(&env.a, &id).await, ["bob@example.com"]);
}

// ---------------------------------------------------------------------------------
// Slack: identity confusion in correctly signed callbacks.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_signed_clicks_by_the_wrong_people_record_nothing() {
    let env = start(SlackMode::Signed, TeamsMode::Off).await;
    let (held, id) = hold(&env.a, "/api/v1/things/vm-4").await;
    let users = [
        ("unknown user", U_STRANGER.to_string()),
        ("not an approver (dave)", U_DAVE.to_string()),
        ("the agent's owner (alice)", U_ALICE.to_string()),
        ("bob's id in lower case", U_BOB.to_lowercase()),
        ("bob's id with a leading space", format!(" {U_BOB}")),
        (
            "bob's id with a zero-width space",
            format!("{U_BOB}\u{200b}"),
        ),
        ("bob's id in full-width letters", "Ｕ０ＢＯＢ".to_string()),
        (
            "bob's id, one letter short",
            U_BOB[..U_BOB.len() - 1].to_string(),
        ),
        ("bob's email as the Slack id", "bob@example.com".to_string()),
        ("bob's API token as the Slack id", BOB.to_string()),
        ("an empty user id", String::new()),
    ];
    for (what, user) in &users {
        let (s, answer) =
            slack_signed(&env.a, &form(&click(user, "airlock_approve", &id)), what).await;
        assert_eq!(s, 200, "{what}: {answer}");
        assert_no_vote(&env.a, &id, what).await;
        // The reason modal, submitted as them: an error under the reason, no vote.
        let what = format!("{what} (modal)");
        let (s, answer) = slack_signed(
            &env.a,
            &form(&submit(user, "airlock_approve", &id, "looks fine")),
            &what,
        )
        .await;
        assert_eq!(s, 200, "{what}: {answer}");
        let v: Value = serde_json::from_str(&answer).unwrap_or(Value::Null);
        assert_eq!(v["response_action"], "errors", "{what}: {answer}");
        assert_no_vote(&env.a, &id, &what).await;
    }
    // Control: Bob's click approves.
    let (s, answer) =
        slack_signed(&env.a, &form(&click(U_BOB, "airlock_approve", &id)), "bob").await;
    assert_eq!(s, 200, "{answer}");
    held.await.unwrap().assert_forwarded_on(&id);
    assert_eq!(voters(&env.a, &id).await, ["bob@example.com"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_button_values_action_ids_and_modals_are_never_authority() {
    let env = start(SlackMode::Signed, TeamsMode::Off).await;
    let (_h1, vm) = hold(&env.a, "/api/v1/things/vm-5").await;
    let (_h2, leads) = hold(&env.a, "/api/v1/leads/l-1").await;
    let (_h3, billing) = hold(&env.a, "/api/v1/billing/b-1").await;
    let (_h4, keys) = hold(&env.a, "/api/v1/keys/k-1").await;
    let all = [&vm, &leads, &billing, &keys];
    let with_actions = |actions: Value| {
        let mut p = click(U_BOB, "airlock_approve", &vm);
        p["actions"] = actions;
        form(&p)
    };
    let button = |action_id: &str, value: Value| json!([{"action_id": action_id, "block_id": "airlock_vote", "type": "button", "value": value, "action_ts": "1.2"}]);
    let kind = |t: &str| {
        let mut p = click(U_BOB, "airlock_approve", &vm);
        p["type"] = json!(t);
        form(&p)
    };
    let cases: Vec<(&str, String)> = vec![
        (
            "an unknown action id",
            with_actions(button("airlock_approve_all", json!(vm))),
        ),
        (
            "the action id in another case",
            with_actions(button("Airlock_Approve", json!(vm))),
        ),
        (
            "the action id with a trailing space",
            with_actions(button("airlock_approve ", json!(vm))),
        ),
        (
            "no action id",
            with_actions(json!([{"type": "button", "value": vm}])),
        ),
        ("no actions", with_actions(json!([]))),
        (
            "actions not an array",
            with_actions(json!({"action_id": "airlock_approve", "value": vm})),
        ),
        (
            "the value a number",
            with_actions(button("airlock_approve", json!(42))),
        ),
        (
            "the value an object",
            with_actions(button("airlock_approve", json!({"approval": vm}))),
        ),
        (
            "the value an array of ids",
            with_actions(button("airlock_approve", json!(all))),
        ),
        (
            "the value with a trailing space",
            with_actions(button("airlock_approve", json!(format!("{vm} ")))),
        ),
        (
            "the value a path",
            with_actions(button("airlock_approve", json!(format!("../{vm}")))),
        ),
        (
            "the value a LIKE pattern",
            with_actions(button("airlock_approve", json!("%"))),
        ),
        (
            "the value an SQL injection",
            with_actions(button("airlock_approve", json!(format!("{vm}' OR '1'='1")))),
        ),
        ("a view_closed", kind("view_closed")),
        ("a shortcut", kind("shortcut")),
        ("a message_action", kind("message_action")),
        ("a block_suggestion", kind("block_suggestion")),
        (
            "an approval bob may not vote on (leads-only)",
            form(&click(U_BOB, "airlock_approve", &leads)),
        ),
        (
            "approve on a rule that requires a reason (opens the form)",
            form(&click(U_BOB, "airlock_approve", &billing)),
        ),
        (
            "a modal with another app's callback id",
            form(&submit(U_BOB, "other_app_modal", &vm, "ok")),
        ),
        (
            "the approve modal with no reason where one is required",
            form(&submit(U_BOB, "airlock_approve", &billing, "")),
        ),
        (
            "the approve modal with a blank reason where one is required",
            form(&submit(U_BOB, "airlock_approve", &billing, " \n\t ")),
        ),
        (
            "a modal naming an approval bob may not vote on",
            form(&submit(U_BOB, "airlock_approve", &leads, "sure")),
        ),
        (
            "a modal naming no approval",
            form(&submit(U_BOB, "airlock_approve", "", "sure")),
        ),
        (
            "a modal naming an unknown approval",
            form(&submit(U_BOB, "airlock_deny", "apr_does_not_exist", "no")),
        ),
    ];
    for (what, body) in &cases {
        let (s, answer) = slack_signed(&env.a, body, what).await;
        assert_eq!(s, 200, "{what}: {answer}");
        for id in all {
            assert_no_vote(&env.a, id, what).await;
        }
    }
    // Controls: the real buttons and modal count.
    let (s, answer) = slack_signed(
        &env.a,
        &form(&click(U_BOB, "airlock_approve", &vm)),
        "bob approves vm",
    )
    .await;
    assert_eq!(s, 200, "{answer}");
    assert_eq!(voters(&env.a, &vm).await, ["bob@example.com"]);
    let (s, answer) = slack_signed(
        &env.a,
        &form(&submit(U_BOB, "airlock_approve", &billing, "budget ok")),
        "bob approves billing",
    )
    .await;
    assert_eq!(s, 200, "{answer}");
    assert_eq!(voters(&env.a, &billing).await, ["bob@example.com"]);
    // A click on a decided approval adds nothing.
    let (s, answer) = slack_signed(
        &env.a,
        &form(&click(U_CAROL, "airlock_deny", &vm)),
        "carol on decided",
    )
    .await;
    assert_eq!(s, 200, "{answer}");
    let (s, answer) = slack_signed(
        &env.a,
        &form(&submit(U_CAROL, "airlock_deny", &vm, "too late")),
        "carol's modal on decided",
    )
    .await;
    assert_eq!(s, 200, "{answer}");
    assert_eq!(voters(&env.a, &vm).await, ["bob@example.com"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_a_replayed_callback_counts_once_however_it_is_dressed() {
    let env = start(SlackMode::Signed, TeamsMode::Off).await;
    let (_held, id) = hold(&env.a, "/api/v1/keys/root").await;
    let payload = click(U_BOB, "airlock_approve", &id);
    let body = form(&payload);
    let ts = now().to_string();
    let sig = sign(SECRET, &ts, &body);
    let h = |sig: &str| {
        vec![
            ("x-slack-request-timestamp", ts.clone()),
            ("x-slack-signature", sig.to_string()),
        ]
    };
    let (s, answer) = slack_post(&env.a, "", &body, &h(&sig), "first").await;
    assert_eq!(s, 200, "{answer}");
    assert_eq!(voters(&env.a, &id).await, ["bob@example.com"]);
    let upper = format!("v0={}", sig.trim_start_matches("v0=").to_uppercase());
    let replays: Vec<(&str, String, Headers)> = vec![
        ("the same request again", body.clone(), h(&sig)),
        (
            "the same request, digest in upper-case hex",
            body.clone(),
            h(&upper),
        ),
        (
            "the same click, freshly signed (a Slack retry)",
            body.clone(),
            {
                let t = (now() + 1).to_string();
                vec![
                    ("x-slack-request-timestamp", t.clone()),
                    ("x-slack-signature", sign(SECRET, &t, &body)),
                ]
            },
        ),
        (
            "the same click through the approve modal",
            form(&submit(U_BOB, "airlock_approve", &id, "again")),
            {
                let b = form(&submit(U_BOB, "airlock_approve", &id, "again"));
                let t = now().to_string();
                vec![
                    ("x-slack-request-timestamp", t.clone()),
                    ("x-slack-signature", sign(SECRET, &t, &b)),
                ]
            },
        ),
        (
            "bob's deny after his approve",
            form(&submit(U_BOB, "airlock_deny", &id, "changed my mind")),
            {
                let b = form(&submit(U_BOB, "airlock_deny", &id, "changed my mind"));
                let t = now().to_string();
                vec![
                    ("x-slack-request-timestamp", t.clone()),
                    ("x-slack-signature", sign(SECRET, &t, &b)),
                ]
            },
        ),
    ];
    for (what, b, headers) in &replays {
        let (s, answer) = slack_post(&env.a, "", b, headers, what).await;
        assert!(s < 500, "{what}: {s} {answer}");
        let v = approval(&env.a, &id).await;
        assert_eq!(v["status"], "pending", "{what}: {v}");
        assert_eq!(v["votes"].as_array().map(Vec::len), Some(1), "{what}: {v}");
        assert_eq!(v["votes"][0]["decision"], "approve", "{what}: {v}");
    }
}

// ---------------------------------------------------------------------------------
// Slack Socket Mode.

fn envelope(envelope_id: &str, kind: &str, payload: Value) -> Value {
    json!({
        "envelope_id": envelope_id,
        "type": kind,
        "accepts_response_payload": false,
        "retry_attempt": 0,
        "retry_reason": "",
        "payload": payload,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_mode_envelopes_for_others_or_garbage_record_nothing_and_are_acknowledged() {
    let env = start(SlackMode::Socket, TeamsMode::Off).await;
    let mut conn = env.slack.next_socket().await;
    let (held, id) = hold(&env.a, "/api/v1/things/vm-6").await;

    // No interactivity URL in Socket Mode, whatever the signature (even one made with
    // an empty secret, the one a missing secret could fall back to).
    let body = form(&click(U_BOB, "airlock_approve", &id));
    let ts = now().to_string();
    let (s, answer) = slack_post(
        &env.a,
        "",
        &body,
        &[
            ("x-slack-request-timestamp", ts.clone()),
            ("x-slack-signature", sign("", &ts, &body)),
        ],
        "signed with an empty secret in Socket Mode",
    )
    .await;
    assert_eq!(s, 404, "{answer}");

    // Carol's clicks in disguise (so a late vote from any of them would show as hers).
    let carol = click(U_CAROL, "airlock_approve", &id);
    let with = |f: &dyn Fn(&mut Value)| {
        let mut p = carol.clone();
        f(&mut p);
        p
    };
    let acked = vec![
        (
            "another app",
            envelope(
                "e-app",
                "interactive",
                with(&|p| p["api_app_id"] = json!("A0OTHERAPP")),
            ),
        ),
        (
            "another workspace",
            envelope(
                "e-team",
                "interactive",
                with(&|p| {
                    p["team"]["id"] = json!("T0ELSEWHERE");
                    p["user"]["team_id"] = json!("T0ELSEWHERE");
                }),
            ),
        ),
        (
            "no app id",
            envelope(
                "e-noapp",
                "interactive",
                with(&|p| {
                    p.as_object_mut().unwrap().remove("api_app_id");
                }),
            ),
        ),
        (
            "an events_api envelope carrying a click",
            envelope("e-events", "events_api", carol.clone()),
        ),
        (
            "a slash_commands envelope carrying a click",
            envelope("e-slash", "slash_commands", carol.clone()),
        ),
        (
            "an envelope without a type",
            json!({"envelope_id": "e-notype", "payload": carol.clone()}),
        ),
        (
            "an interactive envelope with a null payload",
            envelope("e-null", "interactive", Value::Null),
        ),
        (
            "an interactive envelope with a string payload",
            envelope("e-str", "interactive", json!(carol.to_string())),
        ),
        (
            "an unknown user",
            envelope(
                "e-stranger",
                "interactive",
                click(U_STRANGER, "airlock_approve", &id),
            ),
        ),
        (
            "an ineligible user",
            envelope(
                "e-dave",
                "interactive",
                click(U_DAVE, "airlock_approve", &id),
            ),
        ),
        (
            "the owner",
            envelope(
                "e-alice",
                "interactive",
                click(U_ALICE, "airlock_approve", &id),
            ),
        ),
        (
            "an unknown action id",
            envelope(
                "e-action",
                "interactive",
                click(U_CAROL, "airlock_approve_all", &id),
            ),
        ),
        (
            "a modal of another app",
            envelope("e-modal-app", "interactive", {
                let mut p = submit(U_CAROL, "airlock_approve", &id, "ok");
                p["api_app_id"] = json!("A0OTHERAPP");
                p
            }),
        ),
        (
            "a modal by an unknown user",
            envelope(
                "e-modal-stranger",
                "interactive",
                submit(U_STRANGER, "airlock_approve", &id, "ok"),
            ),
        ),
    ];
    let unacked = vec![
        json!("not an object"),
        json!({"type": "interactive", "payload": carol.clone()}),
        json!({"envelope_id": 42, "type": "interactive", "payload": carol.clone()}),
        json!({"envelope_id": null, "type": "interactive", "payload": carol.clone()}),
    ];
    for frame in &unacked {
        conn.send(frame.clone()).await;
    }
    for (_, e) in &acked {
        conn.send(e.clone()).await;
    }
    // Every envelope with an id is acknowledged with that id (and nothing else is).
    let mut want: std::collections::BTreeSet<String> = acked
        .iter()
        .map(|(_, e)| e["envelope_id"].as_str().unwrap().to_string())
        .collect();
    while !want.is_empty() {
        let ack = conn.recv().await;
        let eid = ack["envelope_id"].as_str().unwrap_or_default().to_string();
        assert!(
            want.remove(&eid),
            "unexpected frame from airlock: {ack} (still waiting for {want:?})"
        );
        if eid == "e-modal-stranger" {
            assert_eq!(ack["payload"]["response_action"], "errors", "{ack}");
        } else {
            assert!(
                ack.get("payload").is_none() || ack["payload"].is_null(),
                "{ack}"
            );
        }
    }
    assert_no_vote(
        &env.a,
        &id,
        "envelopes for others, garbage, or people who may not vote",
    )
    .await;

    // Control, on the same connection: Bob's click counts, and only it.
    conn.send(envelope(
        "e-bob",
        "interactive",
        click(U_BOB, "airlock_approve", &id),
    ))
    .await;
    let ack = conn.recv().await;
    assert_eq!(ack["envelope_id"], "e-bob", "{ack}");
    held.await.unwrap().assert_forwarded_on(&id);
    assert_eq!(voters(&env.a, &id).await, ["bob@example.com"]);
}

// ---------------------------------------------------------------------------------
// Teams: JWT forgery.

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A JWT with exactly `header` and `claims`, signed with `key` under `alg`.
fn forge(header: &Value, claims: &Value, key: &EncodingKey, alg: Algorithm) -> String {
    let msg = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let sig = jsonwebtoken::crypto::sign(msg.as_bytes(), key, alg).unwrap();
    format!("{msg}.{sig}")
}

fn rsa_key(i: usize) -> EncodingKey {
    EncodingKey::from_rsa_der(keys()[i].private.to_pkcs1_der().unwrap().as_bytes())
}

/// A JWKS server of the test's own: `keys` at `/keys`, counting fetches.
struct Jwks {
    url: String,
    hits: Arc<AtomicUsize>,
}

async fn jwks_server(keys: Vec<Value>) -> Jwks {
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let doc = json!({"keys": keys}).to_string();
    let app = axum::Router::new().fallback(move || {
        let h = h.clone();
        let doc = doc.clone();
        async move {
            h.fetch_add(1, Ordering::SeqCst);
            ([("content-type", "application/json")], doc)
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let svc = hyper_util::service::TowerToHyperService::new(app.clone());
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await;
            });
        }
    });
    Jwks {
        url: format!("http://{addr}/keys?run={}", uuid::Uuid::new_v4().simple()),
        hits,
    }
}

/// POSTs `body` to `/teams/actions` with `headers`: (status, body).
async fn teams_post(
    a: &InProcess,
    headers: &[(&str, String)],
    body: &Value,
    what: &str,
) -> (u16, String) {
    let mut r = client()
        .post(a.admin_url("/teams/actions"))
        .header("content-type", "application/json")
        .body(serde_json::to_vec(body).unwrap());
    for (k, v) in headers {
        r = r.header(*k, v.as_str());
    }
    send(r, what).await
}

fn bearer(token: &str) -> Vec<(&'static str, String)> {
    vec![("authorization", format!("Bearer {token}"))]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn teams_forged_tokens_and_authorization_headers_record_nothing() {
    ensure_keys().await;
    let env = start(SlackMode::Off, TeamsMode::Bot).await;
    let attacker = jwks_server(vec![{
        let mut k = keys()[2].jwk();
        k["kid"] = json!("attacker-key");
        k
    }])
    .await;
    let (held, id) = hold(&env.a, "/api/v1/things/vm-7").await;
    let service = env.ms().service_url();
    let t = now();
    let good = claims(&service);
    let signed_good = keys()[0].sign(&good);
    let with = |f: &dyn Fn(&mut Value)| {
        let mut c = good.clone();
        f(&mut c);
        keys()[0].sign(&c)
    };
    let hdr = |extra: Value| {
        let mut h = json!({"alg": "RS256", "typ": "JWT", "kid": "bf-key-1"});
        for (k, v) in extra.as_object().unwrap() {
            if v.is_null() {
                h.as_object_mut().unwrap().remove(k);
            } else {
                h[k] = v.clone();
            }
        }
        h
    };
    let ec_pem = rcgen::KeyPair::generate().unwrap().serialize_pem();
    let ec = EncodingKey::from_ec_pem(ec_pem.as_bytes()).unwrap();
    let pem = keys()[0].public_pem();
    let unsigned = |alg: &str| {
        format!(
            "{}.{}.",
            b64(json!({"alg": alg, "typ": "JWT", "kid": "bf-key-1"})
                .to_string()
                .as_bytes()),
            b64(good.to_string().as_bytes())
        )
    };
    let parts: Vec<&str> = signed_good.split('.').collect();
    let mut evil_claims = good.clone();
    evil_claims["aud"] = json!("someone-else");
    let swapped_payload = format!(
        "{}.{}.{}",
        parts[0],
        b64(evil_claims.to_string().as_bytes()),
        parts[2]
    );
    let attacker_kid = hdr(json!({"kid": "attacker-key"}));
    let cases: Vec<(&str, Vec<(&str, String)>)> = vec![
        ("alg none", bearer(&unsigned("none"))),
        ("alg None", bearer(&unsigned("None"))),
        ("alg NONE", bearer(&unsigned("NONE"))),
        (
            "alg none with a signature kept",
            bearer(&format!("{}{}", unsigned("none"), parts[2])),
        ),
        (
            "HS256 keyed with the RSA public key (PEM)",
            bearer(&forge(
                &hdr(json!({"alg": "HS256"})),
                &good,
                &EncodingKey::from_secret(pem.as_bytes()),
                Algorithm::HS256,
            )),
        ),
        (
            "HS256 keyed with the app password",
            bearer(&forge(
                &hdr(json!({"alg": "HS256"})),
                &good,
                &EncodingKey::from_secret(APP_PASSWORD.as_bytes()),
                Algorithm::HS256,
            )),
        ),
        (
            "RS512 by the published key",
            bearer(&forge(
                &hdr(json!({"alg": "RS512"})),
                &good,
                &rsa_key(0),
                Algorithm::RS512,
            )),
        ),
        (
            "PS256 by the published key",
            bearer(&forge(
                &hdr(json!({"alg": "PS256"})),
                &good,
                &rsa_key(0),
                Algorithm::PS256,
            )),
        ),
        (
            "ES256 by a foreign key, a published kid",
            bearer(&forge(
                &hdr(json!({"alg": "ES256"})),
                &good,
                &ec,
                Algorithm::ES256,
            )),
        ),
        (
            "RS256 header, signed by an unpublished key under a published kid",
            bearer(&forge(
                &hdr(json!({})),
                &good,
                &rsa_key(2),
                Algorithm::RS256,
            )),
        ),
        (
            "no kid",
            bearer(&forge(
                &hdr(json!({"kid": null})),
                &good,
                &rsa_key(0),
                Algorithm::RS256,
            )),
        ),
        (
            "an empty kid",
            bearer(&forge(
                &hdr(json!({"kid": ""})),
                &good,
                &rsa_key(0),
                Algorithm::RS256,
            )),
        ),
        (
            "a kid that is a number",
            bearer(&forge(
                &hdr(json!({"kid": 1})),
                &good,
                &rsa_key(0),
                Algorithm::RS256,
            )),
        ),
        (
            "a path-like kid",
            bearer(&forge(
                &hdr(json!({"kid": "../../v1/.well-known/keys"})),
                &good,
                &rsa_key(0),
                Algorithm::RS256,
            )),
        ),
        (
            "a kid in another case",
            bearer(&forge(
                &hdr(json!({"kid": "BF-KEY-1"})),
                &good,
                &rsa_key(0),
                Algorithm::RS256,
            )),
        ),
        (
            "jku pointing at the attacker's keys",
            bearer(&forge(
                &{
                    let mut h = attacker_kid.clone();
                    h["jku"] = json!(attacker.url);
                    h
                },
                &good,
                &rsa_key(2),
                Algorithm::RS256,
            )),
        ),
        (
            "x5u pointing at the attacker's keys",
            bearer(&forge(
                &{
                    let mut h = attacker_kid.clone();
                    h["x5u"] = json!(attacker.url);
                    h
                },
                &good,
                &rsa_key(2),
                Algorithm::RS256,
            )),
        ),
        (
            "the attacker's key embedded as jwk",
            bearer(&forge(
                &{
                    let mut h = attacker_kid.clone();
                    h["jwk"] = keys()[2].jwk();
                    h
                },
                &good,
                &rsa_key(2),
                Algorithm::RS256,
            )),
        ),
        (
            "jwk embedded under a published kid",
            bearer(&forge(
                &hdr(json!({"jwk": keys()[2].jwk()})),
                &good,
                &rsa_key(2),
                Algorithm::RS256,
            )),
        ),
        (
            "jku under a published kid",
            bearer(&forge(
                &hdr(json!({"jku": attacker.url})),
                &good,
                &rsa_key(2),
                Algorithm::RS256,
            )),
        ),
        (
            "aud: an array without the app id",
            bearer(&with(&|c| {
                c["aud"] = json!([
                    "00000000-0000-0000-0000-000000000000",
                    "https://api.botframework.com"
                ])
            })),
        ),
        (
            "aud: an empty array",
            bearer(&with(&|c| c["aud"] = json!([]))),
        ),
        (
            "aud: the app id in upper case",
            bearer(&with(&|c| c["aud"] = json!(APP_ID.to_uppercase()))),
        ),
        (
            "aud: api://app id",
            bearer(&with(&|c| c["aud"] = json!(format!("api://{APP_ID}")))),
        ),
        (
            "aud: missing",
            bearer(&with(&|c| {
                c.as_object_mut().unwrap().remove("aud");
            })),
        ),
        (
            "iss: a trailing slash",
            bearer(&with(&|c| c["iss"] = json!(format!("{ISSUER}/")))),
        ),
        (
            "iss: http://",
            bearer(&with(&|c| c["iss"] = json!("http://api.botframework.com"))),
        ),
        (
            "iss: upper-case host",
            bearer(&with(&|c| c["iss"] = json!("https://API.BOTFRAMEWORK.COM"))),
        ),
        (
            "iss: a longer host",
            bearer(&with(&|c| {
                c["iss"] = json!("https://api.botframework.com.evil.example")
            })),
        ),
        (
            "iss: an array holding the issuer",
            bearer(&with(&|c| c["iss"] = json!([ISSUER]))),
        ),
        (
            "iss: missing",
            bearer(&with(&|c| {
                c.as_object_mut().unwrap().remove("iss");
            })),
        ),
        (
            "exp: missing",
            bearer(&with(&|c| {
                c.as_object_mut().unwrap().remove("exp");
            })),
        ),
        (
            "exp: 400 s ago (beyond the skew)",
            bearer(&with(&|c| {
                c["exp"] = json!(t - 400);
                c["nbf"] = json!(t - 4000);
            })),
        ),
        (
            "exp: a string",
            bearer(&with(&|c| c["exp"] = json!("99999999999"))),
        ),
        (
            "nbf: 15 minutes ahead",
            bearer(&with(&|c| c["nbf"] = json!(t + 900))),
        ),
        (
            "serviceurl: another host",
            bearer(&with(&|c| {
                c["serviceurl"] = json!("https://smba.evil.example/amer/")
            })),
        ),
        (
            "serviceurl: upper case",
            bearer(&with(&|c| c["serviceurl"] = json!(service.to_uppercase()))),
        ),
        (
            "serviceurl: a path below",
            bearer(&with(&|c| {
                c["serviceurl"] = json!(format!("{service}../evil/"))
            })),
        ),
        (
            "serviceurl: a longer host",
            bearer(&with(&|c| {
                c["serviceurl"] = json!(service.replace("127.0.0.1", "127.0.0.1.evil.example"))
            })),
        ),
        (
            "serviceurl: an array",
            bearer(&with(&|c| c["serviceurl"] = json!([service.clone()]))),
        ),
        (
            "serviceUrl claim spelled in camel case only",
            bearer(&with(&|c| {
                c.as_object_mut().unwrap().remove("serviceurl");
                c["serviceUrl"] = json!(service.clone());
            })),
        ),
        (
            "the signature stripped",
            bearer(&format!("{}.{}.", parts[0], parts[1])),
        ),
        (
            "another payload under a valid signature",
            bearer(&swapped_payload),
        ),
        (
            "four segments",
            bearer(&format!("{signed_good}.{}", parts[2])),
        ),
        (
            "the token's header and payload only",
            bearer(&format!("{}.{}", parts[0], parts[1])),
        ),
        (
            "BEARER in upper case",
            vec![("authorization", format!("BEARER {signed_good}"))],
        ),
        (
            "scheme Token",
            vec![("authorization", format!("Token {signed_good}"))],
        ),
        ("no scheme", vec![("authorization", signed_good.clone())]),
        (
            "Bearer and nothing",
            vec![("authorization", "Bearer".into())],
        ),
        (
            "Basic credentials",
            vec![(
                "authorization",
                format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD
                        .encode(format!("{APP_ID}:{APP_PASSWORD}"))
                ),
            )],
        ),
        (
            "the token in another header",
            vec![("x-ms-token", signed_good.clone())],
        ),
        (
            "two Authorization headers, a forged one first",
            vec![
                ("authorization", format!("Bearer {}", unsigned("none"))),
                ("authorization", format!("Bearer {signed_good}")),
            ],
        ),
        ("a reviewer's API token", bearer(BOB)),
        ("the agent's key", bearer(AGENT_KEY)),
    ];
    let activity = invoke(&service, AAD_BOB, TENANT, "approve", &id, None);
    for (what, headers) in &cases {
        let (s, answer) = teams_post(&env.a, headers, &activity, what).await;
        assert_eq!(s, 401, "{what}: {answer}");
        assert_eq!(error_code(&answer), "unauthenticated", "{what}: {answer}");
        assert_no_vote(&env.a, &id, what).await;
    }
    assert_eq!(
        attacker.hits.load(Ordering::SeqCst),
        0,
        "airlock fetched keys from a URL a token named (jku/x5u)"
    );
    // Bogus kids do not turn airlock into a load generator for the real key source.
    assert!(
        env.ms().jwks_fetches() <= 2,
        "JWKS fetched {} times",
        env.ms().jwks_fetches()
    );

    // Control: the honest token counts.
    let (s, answer) =
        teams_post(&env.a, &bearer(&signed_good), &activity, "the signed click").await;
    assert_eq!(s, 200, "{answer}");
    held.await.unwrap().assert_forwarded_on(&id);
    assert_eq!(voters(&env.a, &id).await, ["bob@example.com"]);
}

// ---------------------------------------------------------------------------------
// Teams: activities, under a valid token, that must not vote.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn teams_signed_activities_that_are_not_a_vote_record_nothing() {
    let env = start(SlackMode::Off, TeamsMode::Bot).await;
    let (held, vm) = hold(&env.a, "/api/v1/things/vm-8").await;
    let (_h2, leads) = hold(&env.a, "/api/v1/leads/l-2").await;
    let (_h3, billing) = hold(&env.a, "/api/v1/billing/b-2").await;
    let all = [&vm, &leads, &billing];
    let service = env.ms().service_url();
    let token = keys()[0].sign(&claims(&service));
    let bob = invoke(&service, AAD_BOB, TENANT, "approve", &vm, None);
    let with = |f: &dyn Fn(&mut Value)| {
        let mut a = bob.clone();
        f(&mut a);
        a
    };
    const OTHER_TENANT: &str = "0000aaaa-1111-2222-3333-444455556666";
    // (what, activity, allowed statuses)
    let cases: Vec<(&str, Value, &[u16])> = vec![
        (
            "name adaptiveCard/submit",
            with(&|a| a["name"] = json!("adaptiveCard/submit")),
            &[200],
        ),
        (
            "name composeExtension/submitAction",
            with(&|a| a["name"] = json!("composeExtension/submitAction")),
            &[200],
        ),
        (
            "no name",
            with(&|a| {
                a.as_object_mut().unwrap().remove("name");
            }),
            &[200],
        ),
        (
            "a message activity carrying the action",
            with(&|a| a["type"] = json!("message")),
            &[200],
        ),
        (
            "no type",
            with(&|a| {
                a.as_object_mut().unwrap().remove("type");
            }),
            &[200],
        ),
        (
            "Action.Submit",
            with(&|a| a["value"]["action"]["type"] = json!("Action.Submit")),
            &[200],
        ),
        (
            "no action type",
            with(&|a| {
                a["value"]["action"].as_object_mut().unwrap().remove("type");
            }),
            &[200],
        ),
        (
            "verb APPROVE",
            with(&|a| a["value"]["action"]["verb"] = json!("APPROVE")),
            &[200],
        ),
        (
            "verb approve with a space",
            with(&|a| a["value"]["action"]["verb"] = json!("approve ")),
            &[200],
        ),
        (
            "verb approve_all",
            with(&|a| a["value"]["action"]["verb"] = json!("approve_all")),
            &[200],
        ),
        (
            "verb a number",
            with(&|a| a["value"]["action"]["verb"] = json!(1)),
            &[200],
        ),
        (
            "no data",
            with(&|a| {
                a["value"]["action"].as_object_mut().unwrap().remove("data");
            }),
            &[200],
        ),
        (
            "data.approval a number",
            with(&|a| a["value"]["action"]["data"]["approval"] = json!(7)),
            &[200],
        ),
        (
            "data.approval an array",
            with(&|a| a["value"]["action"]["data"]["approval"] = json!(all)),
            &[200],
        ),
        (
            "data.approval unknown",
            with(&|a| a["value"]["action"]["data"]["approval"] = json!("apr_does_not_exist")),
            &[200],
        ),
        (
            "data.approval with a trailing space",
            with(&|a| a["value"]["action"]["data"]["approval"] = json!(format!("{vm} "))),
            &[200],
        ),
        (
            "an approval bob may not vote on (leads-only)",
            invoke(&service, AAD_BOB, TENANT, "approve", &leads, None),
            &[200],
        ),
        (
            "a required reason missing",
            invoke(&service, AAD_BOB, TENANT, "approve", &billing, None),
            &[200],
        ),
        (
            "a required reason blank",
            invoke(
                &service,
                AAD_BOB,
                TENANT,
                "approve",
                &billing,
                Some(" \n\t "),
            ),
            &[200],
        ),
        (
            "an unknown user",
            invoke(&service, AAD_STRANGER, TENANT, "approve", &vm, None),
            &[200],
        ),
        (
            "an ineligible user (dave)",
            invoke(&service, AAD_DAVE, TENANT, "approve", &vm, None),
            &[200],
        ),
        (
            "the owner (alice)",
            invoke(&service, AAD_ALICE, TENANT, "approve", &vm, None),
            &[200],
        ),
        (
            "no aadObjectId",
            with(&|a| {
                a["from"].as_object_mut().unwrap().remove("aadObjectId");
            }),
            &[200],
        ),
        (
            "aadObjectId an empty string",
            with(&|a| a["from"]["aadObjectId"] = json!("")),
            &[200],
        ),
        (
            "aadObjectId a number",
            with(&|a| a["from"]["aadObjectId"] = json!(1)),
            &[200],
        ),
        (
            "aadObjectId one character short",
            with(&|a| a["from"]["aadObjectId"] = json!(&AAD_BOB[..AAD_BOB.len() - 1])),
            &[200],
        ),
        (
            "bob's email as aadObjectId",
            with(&|a| a["from"]["aadObjectId"] = json!("bob@example.com")),
            &[200],
        ),
        (
            "another tenant in both places",
            invoke(&service, AAD_BOB, OTHER_TENANT, "approve", &vm, None),
            &[403],
        ),
        (
            "another tenant in the conversation, ours in channelData",
            with(&|a| a["conversation"]["tenantId"] = json!(OTHER_TENANT)),
            &[403],
        ),
        (
            "no tenant",
            with(&|a| {
                a["conversation"]
                    .as_object_mut()
                    .unwrap()
                    .remove("tenantId");
                a["channelData"] = json!({});
            }),
            &[403],
        ),
        (
            "the tenant a number",
            with(&|a| {
                a["conversation"]["tenantId"] = json!(1);
                a["channelData"]["tenant"]["id"] = json!(1);
            }),
            &[403],
        ),
        (
            "no serviceUrl",
            with(&|a| {
                a.as_object_mut().unwrap().remove("serviceUrl");
            }),
            &[401],
        ),
        (
            "an activity that is a JSON array",
            json!([bob.clone()]),
            &[400, 401],
        ),
        (
            "an activity that is a JSON string",
            json!(bob.to_string()),
            &[400, 401],
        ),
    ];
    for (what, activity, ok) in &cases {
        let (s, answer) = teams_post(&env.a, &bearer(&token), activity, what).await;
        assert!(ok.contains(&s), "{what}: {s} {answer}");
        for id in all {
            assert_no_vote(&env.a, id, what).await;
        }
    }
    // Not JSON at all.
    let r = client()
        .post(env.a.admin_url("/teams/actions"))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body("{\"type\": \"invoke\",");
    let (s, answer) = send(r, "a body that is not JSON").await;
    assert!(
        (400..500).contains(&s),
        "a body that is not JSON: {s} {answer}"
    );

    // Replays count once: the same token and body twice, then a fresh activity id.
    let (s, answer) = teams_post(&env.a, &bearer(&token), &bob, "bob").await;
    assert_eq!(s, 200, "{answer}");
    held.await.unwrap().assert_forwarded_on(&vm);
    for what in ["the same activity again", "a fresh activity id"] {
        let again = if what.contains("fresh") {
            invoke(
                &service,
                AAD_BOB,
                TENANT,
                "deny",
                &vm,
                Some("changed my mind"),
            )
        } else {
            bob.clone()
        };
        let (s, answer) = teams_post(&env.a, &bearer(&token), &again, what).await;
        assert_eq!(s, 200, "{what}: {answer}");
        assert_eq!(voters(&env.a, &vm).await, ["bob@example.com"], "{what}");
    }
    // Control: a reason typed in the card approves the reasoned request.
    let (s, answer) = teams_post(
        &env.a,
        &bearer(&token),
        &invoke(
            &service,
            AAD_BOB,
            TENANT,
            "approve",
            &billing,
            Some("budget ok"),
        ),
        "bob with a reason",
    )
    .await;
    assert_eq!(s, 200, "{answer}");
    assert_eq!(voters(&env.a, &billing).await, ["bob@example.com"]);
}

/// Bot Framework signs the activities of every channel a bot is enabled on with the
/// same keys, and its published keys are endorsed for many channels (Web Chat, Direct
/// Line, the Emulator …), where the *client* writes `from` and `channelData`. Only on
/// `msteams` does Teams vouch for `from.aadObjectId` and the tenant: an invoke from any
/// other channel must not vote, whatever the key's endorsements say.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn teams_votes_only_come_from_the_msteams_channel() {
    ensure_keys().await;
    let mut jwk = keys()[0].jwk();
    jwk["endorsements"] = json!([
        "msteams",
        "skype",
        "webchat",
        "directline",
        "emulator",
        "slack"
    ]);
    let jwks = jwks_server(vec![jwk]).await;
    let env = start(SlackMode::Off, TeamsMode::BotWithJwks(jwks.url.clone())).await;

    // Control first: from Teams, the click counts with these keys.
    let (held, id) = hold(&env.a, "/api/v1/things/vm-9").await;
    let service = env.ms().service_url();
    let token = keys()[0].sign(&claims(&service));
    let (s, answer) = teams_post(
        &env.a,
        &bearer(&token),
        &invoke(&service, AAD_BOB, TENANT, "approve", &id, None),
        "from msteams",
    )
    .await;
    assert_eq!(s, 200, "{answer}");
    held.await.unwrap().assert_forwarded_on(&id);

    let mut recorded = Vec::new();
    for (channel, service_url) in [
        ("webchat", "https://webchat.botframework.com/"),
        ("directline", "https://directline.botframework.com/"),
        ("emulator", "http://localhost:52173/"),
        ("", "https://directline.botframework.com/"),
    ] {
        let (_held, id) = hold(&env.a, &format!("/api/v1/things/ch-{channel}")).await;
        let token = keys()[0].sign(&claims(service_url));
        let mut activity = invoke(service_url, AAD_BOB, TENANT, "approve", &id, None);
        activity["channelId"] = json!(channel);
        let what = format!("an invoke from channel {channel:?}");
        let (s, answer) = teams_post(&env.a, &bearer(&token), &activity, &what).await;
        assert!(s < 500, "{what}: {s} {answer}");
        let v = approval(&env.a, &id).await;
        if v["votes"] != json!([]) {
            recorded.push(format!("{what}: HTTP {s}, votes {}", v["votes"]));
        } else {
            eprintln!("{what}: HTTP {s} {answer}");
        }
    }
    assert!(
        recorded.is_empty(),
        "votes recorded from channels other than msteams:\n{}",
        recorded.join("\n")
    );
}

// ---------------------------------------------------------------------------------
// The admin listener: callbacks of channels that are not configured.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callbacks_of_unconfigured_channels_are_not_found() {
    let env = start(SlackMode::Off, TeamsMode::Workflows).await;
    let (_held, id) = hold(&env.a, "/api/v1/things/vm-10").await;
    // Slack not configured: a correctly signed callback (with any secret), a reviewer
    // token or an agent key are all 404.
    let body = form(&click(U_BOB, "airlock_approve", &id));
    let ts = now().to_string();
    for (what, headers) in [
        (
            "signed with the secret",
            vec![
                ("x-slack-request-timestamp", ts.clone()),
                ("x-slack-signature", sign(SECRET, &ts, &body)),
            ],
        ),
        (
            "signed with an empty secret",
            vec![
                ("x-slack-request-timestamp", ts.clone()),
                ("x-slack-signature", sign("", &ts, &body)),
            ],
        ),
        (
            "a reviewer token",
            vec![("authorization", format!("Bearer {BOB}"))],
        ),
        (
            "the agent key",
            vec![("authorization", format!("Bearer {AGENT_KEY}"))],
        ),
    ] {
        let (s, answer) = slack_post(&env.a, "", &body, &headers, what).await;
        assert_eq!(s, 404, "slack, {what}: {answer}");
        assert_eq!(error_code(&answer), "not_found", "slack, {what}: {answer}");
    }
    // Teams in Workflows mode only (no bot): the callback is not found, even with a
    // token Bot Framework would sign.
    let service = env.ms().service_url();
    let activity = invoke(&service, AAD_BOB, TENANT, "approve", &id, None);
    for (what, token) in [
        ("a signed token", keys()[0].sign(&claims(&service))),
        ("a reviewer token", BOB.to_string()),
        ("the agent key", AGENT_KEY.to_string()),
    ] {
        let (s, answer) = teams_post(&env.a, &bearer(&token), &activity, what).await;
        assert_eq!(s, 404, "teams, {what}: {answer}");
        assert_eq!(error_code(&answer), "not_found", "teams, {what}: {answer}");
    }
    // Other methods on the callback routes.
    for path in ["/slack/actions", "/teams/actions"] {
        let (s, answer) = send(
            client().get(env.a.admin_url(path)).bearer_auth(BOB),
            &format!("GET {path}"),
        )
        .await;
        assert!((400..500).contains(&s), "GET {path}: {s} {answer}");
    }
    assert_no_vote(&env.a, &id, "unconfigured callbacks").await;
}

/// The reviewer is who `from.aadObjectId` says: an activity whose `from.id` names a
/// reviewer while its `aadObjectId` names someone else is not that reviewer's vote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn teams_an_activity_naming_two_people_is_not_the_reviewers_vote() {
    let env = start(SlackMode::Off, TeamsMode::Bot).await;
    let (_held, id) = hold(&env.a, "/api/v1/things/vm-11").await;
    let service = env.ms().service_url();
    let token = keys()[0].sign(&claims(&service));
    let mut activity = invoke(&service, AAD_STRANGER, TENANT, "approve", &id, None);
    activity["from"]["id"] = json!(AAD_BOB);
    let what = "aadObjectId a stranger's, from.id bob's AAD id";
    let (s, answer) = teams_post(&env.a, &bearer(&token), &activity, what).await;
    assert!(s < 500, "{what}: {s} {answer}");
    assert_no_vote(&env.a, &id, what).await;
}

// ---------------------------------------------------------------------------------
// A chat proof is not an API credential.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_proofs_are_not_api_credentials() {
    let env = start(SlackMode::Signed, TeamsMode::Bot).await;
    let (_held, id) = hold(&env.a, "/api/v1/things/vm-12").await;
    let votes = env.a.admin_url(&format!("/api/v1/approvals/{id}/votes"));
    let vote_body = json!({"decision": "approve"}).to_string();
    // A token Bot Framework signed for the bot, as a reviewer token.
    let jwt = keys()[0].sign(&claims(&env.ms().service_url()));
    let (s, answer) = send(
        client()
            .post(&votes)
            .bearer_auth(&jwt)
            .header("content-type", "application/json")
            .body(vote_body.clone()),
        "a Bot Framework token on the votes API",
    )
    .await;
    assert_eq!(s, 401, "{answer}");
    let (s, answer) = send(
        client()
            .get(env.a.admin_url("/api/v1/approvals"))
            .bearer_auth(&jwt),
        "a Bot Framework token listing approvals",
    )
    .await;
    assert_eq!(s, 401, "{answer}");
    // Slack's signature headers on the votes API.
    let ts = now().to_string();
    let (s, answer) = send(
        client()
            .post(&votes)
            .header("content-type", "application/json")
            .header("x-slack-request-timestamp", ts.clone())
            .header("x-slack-signature", sign(SECRET, &ts, &vote_body))
            .body(vote_body.clone()),
        "a Slack signature on the votes API",
    )
    .await;
    assert_eq!(s, 401, "{answer}");
    // Near-miss paths for the callbacks.
    for path in ["/slack/actions/", "/SLACK/actions", "/teams/actions/"] {
        let body = form(&click(U_BOB, "airlock_approve", &id));
        let (s, answer) = send(
            client()
                .post(env.a.admin_url(path))
                .header("x-slack-request-timestamp", ts.clone())
                .header("x-slack-signature", sign(SECRET, &ts, &body))
                .bearer_auth(&jwt)
                .body(body),
            path,
        )
        .await;
        assert!(s < 500, "{path}: {s} {answer}");
    }
    assert_no_vote(&env.a, &id, "chat proofs on the API").await;
}

/// JSON nested deeper than any parser should follow: a clean 4xx, not a stack
/// overflow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deeply_nested_callback_bodies_are_refused_cleanly() {
    let env = start(SlackMode::Signed, TeamsMode::Bot).await;
    let (_held, id) = hold(&env.a, "/api/v1/things/vm-13").await;
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let body = form_urlencoded::Serializer::new(String::new())
        .append_pair("payload", &deep)
        .finish();
    let (s, answer) = slack_signed(&env.a, &body, "a deeply nested Slack payload").await;
    assert_eq!(s, 400, "{answer}");
    let token = keys()[0].sign(&claims(&env.ms().service_url()));
    let (s, answer) = send(
        client()
            .post(env.a.admin_url("/teams/actions"))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body(deep),
        "a deeply nested Teams activity",
    )
    .await;
    assert!((400..500).contains(&s), "{s} {answer}");
    assert_no_vote(&env.a, &id, "deeply nested bodies").await;
}

// ---------------------------------------------------------------------------------
// Teams: the signing-key source down or hanging.

/// A key source that fails: bogus callbacks do not make airlock ask it once each (it
/// would be a load generator against Bot Framework during an outage), and each is
/// refused cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn teams_a_failing_key_source_is_not_asked_once_per_callback() {
    ensure_keys().await;
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let app = axum::Router::new().fallback(move || {
        let h = h.clone();
        async move {
            h.fetch_add(1, Ordering::SeqCst);
            (axum::http::StatusCode::SERVICE_UNAVAILABLE, "down")
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let svc = hyper_util::service::TowerToHyperService::new(app.clone());
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await;
            });
        }
    });
    let url = format!("http://{addr}/keys?run={}", uuid::Uuid::new_v4().simple());
    let env = start(SlackMode::Off, TeamsMode::BotWithJwks(url)).await;
    let (_held, id) = hold(&env.a, "/api/v1/things/vm-14").await;
    let service = env.ms().service_url();
    for i in 0..20 {
        let mut c = claims(&service);
        c["jti"] = json!(i);
        let token = keys()[2].sign(&c);
        let activity = invoke(&service, AAD_BOB, TENANT, "approve", &id, None);
        let what = format!("bogus callback {i}");
        let (s, answer) = teams_post(&env.a, &bearer(&token), &activity, &what).await;
        assert_eq!(s, 401, "{what}: {answer}");
    }
    let n = hits.load(Ordering::SeqCst);
    assert!(
        n <= 3,
        "20 callbacks made airlock fetch the failing key source {n} times"
    );
    assert_no_vote(&env.a, &id, "a failing key source").await;
}

/// A key source that accepts connections and never answers: callbacks arriving
/// together are each answered within the deadline (not queued one key fetch after
/// another).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn teams_callbacks_are_answered_while_the_key_source_hangs() {
    ensure_keys().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let url = format!("http://{addr}/keys?run={}", uuid::Uuid::new_v4().simple());
    let env = start(SlackMode::Off, TeamsMode::BotWithJwks(url)).await;
    let (_held, id) = hold(&env.a, "/api/v1/things/vm-15").await;
    let service = env.ms().service_url();
    let token = keys()[0].sign(&claims(&service));
    let activity = invoke(&service, AAD_BOB, TENANT, "approve", &id, None);
    let calls: Vec<_> = (0..4)
        .map(|i| {
            let (url, token, activity) = (
                env.a.admin_url("/teams/actions"),
                token.clone(),
                activity.clone(),
            );
            tokio::spawn(async move {
                let r = client()
                    .post(url)
                    .bearer_auth(token)
                    .header("content-type", "application/json")
                    .body(activity.to_string());
                send(r, &format!("callback {i} while the key source hangs")).await
            })
        })
        .collect();
    for c in calls {
        let (s, answer) = c.await.unwrap();
        assert!((400..500).contains(&s), "{s} {answer}");
    }
    assert_no_vote(&env.a, &id, "a hanging key source").await;
}

// ---------------------------------------------------------------------------------
// Webhook: the receiver's documented check (the README's webhook section, Python) given odd
// `X-Airlock-Signature` headers. A receiver runs it on whatever arrives: it must say
// "no" (False), never raise (an exception is a 500 in the receiver, or worse, a
// handler that treats "did not raise" as "verified").

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

#[test]
fn webhook_the_documented_python_check_says_no_to_odd_headers_without_raising() {
    let have_python = std::process::Command::new("python3")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !have_python {
        assert!(!in_ci(), "python3 is needed in CI");
        eprintln!("SKIPPED: no python3 on this machine");
        return;
    }
    const WH_SECRET: &str = "whsec-red-7f3a9c";
    let ws = Workspace::new();
    let body = br#"{"specversion":"1.0","id":"evt_1","type":"airlock.approval.opened"}"#;
    let body_file = ws.path().join("body.json");
    std::fs::write(&body_file, body).unwrap();
    let script = ws.write(
        "verify.py",
        &format!(
            "{}\nimport sys\nbody = open(sys.argv[3], 'rb').read()\n\
             try:\n    ok = verify_airlock(sys.argv[1].encode(), sys.argv[2], body)\n\
             except Exception as e:\n    print(repr(e))\n    sys.exit(2)\n\
             sys.exit(0 if ok else 1)\n",
            doc_block("python", "def verify_airlock")
        ),
    );
    let t = now();
    let good = airlock::channels::webhook::signature(WH_SECRET, t, body);
    let hex_sig = good.split("v1=").nth(1).unwrap().to_string();
    let arabic: String = t
        .to_string()
        .chars()
        .map(|c| char::from_u32(0x0660 + c.to_digit(10).unwrap()).unwrap())
        .collect();
    let cases: Vec<(&str, String, i32)> = vec![
        ("the genuine header", good.clone(), 0),
        ("v1 before t", format!("v1={hex_sig},t={t}"), 0),
        (
            "a superscript digit as the timestamp",
            format!("t=²,v1={hex_sig}"),
            1,
        ),
        (
            "the timestamp in Arabic-Indic digits",
            format!("t={arabic},v1={hex_sig}"),
            1,
        ),
        (
            "a 5000-digit timestamp",
            format!("t={},v1={hex_sig}", "9".repeat(5000)),
            1,
        ),
        (
            "a non-ASCII signature",
            format!("t={t},v1=é{}", &hex_sig[1..]),
            1,
        ),
        (
            "the signature in upper-case hex",
            format!("t={t},v1={}", hex_sig.to_uppercase()),
            1,
        ),
        ("timestamp +t", format!("t=+{t},v1={hex_sig}"), 1),
        ("timestamp -t", format!("t=-{t},v1={hex_sig}"), 1),
        ("timestamp 1e9", format!("t=1e9,v1={hex_sig}"), 1),
        (
            "correctly signed 10 minutes ago",
            airlock::channels::webhook::signature(WH_SECRET, t - 600, body),
            1,
        ),
        (
            "correctly signed 10 minutes ahead",
            airlock::channels::webhook::signature(WH_SECRET, t + 600, body),
            1,
        ),
        (
            "signed with another secret",
            airlock::channels::webhook::signature("whsec-other", t, body),
            1,
        ),
        ("no v1", format!("t={t}"), 1),
        ("no t", format!("v1={hex_sig}"), 1),
        ("empty v1", format!("t={t},v1="), 1),
        ("an empty header", String::new(), 1),
        ("garbage", "garbage".into(), 1),
    ];
    let mut wrong = Vec::new();
    for (what, header, want) in &cases {
        let out = std::process::Command::new("python3")
            .arg(&script)
            .args([WH_SECRET, header.as_str()])
            .arg(&body_file)
            .output()
            .unwrap();
        let code = out.status.code().unwrap_or(-1);
        if code != *want {
            wrong.push(format!(
                "{what} ({header:.60}): exit {code}, want {want} {}",
                String::from_utf8_lossy(&out.stdout).trim()
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "the documented Python check (exit 0 accepted, 1 refused, 2 raised):\n{}",
        wrong.join("\n")
    );
}

// ---------------------------------------------------------------------------------
// Races: one reviewer clicking in Slack and Teams at once, many times.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_clicks_by_one_reviewer_in_slack_and_teams_count_once() {
    ensure_keys().await;
    let env = start(SlackMode::Signed, TeamsMode::Bot).await;
    let (_held, id) = hold(&env.a, "/api/v1/keys/race").await;
    let body = form(&click(U_BOB, "airlock_approve", &id));
    let ts = now().to_string();
    let sig = sign(SECRET, &ts, &body);
    let service = env.ms().service_url();
    let token = keys()[0].sign(&claims(&service));
    let mut calls = Vec::new();
    for i in 0..8 {
        let r = client()
            .post(env.a.admin_url("/slack/actions"))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("x-slack-request-timestamp", ts.clone())
            .header("x-slack-signature", sig.clone())
            .body(body.clone());
        calls.push(tokio::spawn(async move {
            send(r, &format!("slack click {i}")).await
        }));
        let r = client()
            .post(env.a.admin_url("/teams/actions"))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body(invoke(&service, AAD_BOB, TENANT, "approve", &id, None).to_string());
        calls.push(tokio::spawn(async move {
            send(r, &format!("teams click {i}")).await
        }));
    }
    for c in calls {
        let (s, answer) = c.await.unwrap();
        assert_eq!(s, 200, "{answer}");
    }
    let v = approval(&env.a, &id).await;
    assert_eq!(v["status"], "pending", "{v}");
    assert_eq!(voters(&env.a, &id).await, ["bob@example.com"], "{v}");
}
