//! Slack, end to end over real HTTP both ways: airlock (in process) between agents, a
//! recording upstream and a stand-in Slack (`tests/standins/slack.rs`: the Web API
//! airlock posts to, checking the bot token and the Block Kit shape). Reviewers click
//! through signed interactivity callbacks (`POST /slack/actions`, signed here with
//! Slack's algorithm, independently of airlock's code), and what a reviewer or an
//! auditor would check is asserted: the message, the vote, the agent's answer, the
//! updated message and the audit log's evidence.

mod common;
#[path = "standins/slack.rs"]
mod standin;

use common::*;
use serde_json::{json, Value};
use standin::{click, form, sign, submit, Slack, APP, BOT_TOKEN, CHANNEL, TEAM};
use std::path::PathBuf;

const SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5-test";
const U_BOB: &str = "U0BOB";
const U_CAROL: &str = "U0CAROL";
const U_ALICE: &str = "U0ALICE";
const U_DAVE: &str = "U0DAVE";
const U_STRANGER: &str = "U0NOBODY";
const PUBLIC: &str = "https://airlock.example.com";

const RULES: &str = r#"rules:
  - name: delete-vm
    description: Deleting a production VM
    when:
      upstream: api
      method: [POST, DELETE]
      path: /v1/things/**
    then: approve
    approval:
      approvers: [group:sre]
      timeout: 30s
      show: [/name]
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
      timeout: 30s
  - name: reasoned
    description: Changing billing
    when:
      upstream: api
      method: POST
      path: /v1/billing/**
    then: approve
    approval:
      approvers: [group:sre]
      timeout: 30s
      require_reason: true
  - name: quick-expiry
    description: Something nobody will look at
    when:
      upstream: api
      method: POST
      path: /v1/expiring/**
    then: approve
    approval:
      approvers: [group:sre]
      timeout: 2s
"#;

/// airlock, its upstream and the stand-in Slack.
struct Env {
    up: Upstream,
    ws: Workspace,
    a: InProcess,
    slack: Slack,
}

impl Env {
    fn audit_file(&self) -> PathBuf {
        self.ws.path().join("audit.jsonl")
    }
}

/// The config: the standard upstream and identities, reviewers with Slack ids, a link
/// base, the audit file, and `channels.slack` pointed at the stand-in.
fn config(ws: &Workspace, upstream: &str, slack: &Slack) -> PathBuf {
    let text = format!(
        r#"listen: 127.0.0.1:0
admin:
  listen: 127.0.0.1:0
  public_url: {PUBLIC}
store: sqlite://airlock.db
rules: rules/
audit:
  file: audit.jsonl
upstreams:
  - name: api
    prefix: /api
    url: {upstream}
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
  - id: carol@example.com
    groups: [sre]
    token: {carol}
    slack: {U_CAROL}
  - id: alice@example.com
    groups: [sre]
    token: {alice}
    slack: {U_ALICE}
  - id: dave@example.com
    token: {dave}
    slack: {U_DAVE}
channels:
  slack:
    bot_token: {BOT_TOKEN}
    signing_secret: {SECRET}
    channel: {CHANNEL}
    api_base: {api}
    app_id: {APP}
    team_id: {TEAM}
"#,
        agent = digest(AGENT_KEY),
        bob = digest(BOB),
        carol = digest(CAROL),
        alice = digest(ALICE),
        dave = digest(DAVE),
        api = slack.api_base(),
    );
    ws.write("airlock.yaml", &text)
}

async fn start() -> Env {
    let slack = Slack::start().await;
    let up = Upstream::start().await;
    let ws = Workspace::new();
    ws.write("rules/r.yaml", RULES);
    let a = InProcess::start(&config(&ws, &up.url(), &slack)).await;
    Env { up, ws, a, slack }
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// A signed callback as Slack would send it.
struct Signed {
    body: String,
    ts: String,
    sig: String,
}

fn signed(payload: &Value) -> Signed {
    let body = form(payload);
    let ts = now();
    Signed {
        sig: sign(SECRET, ts, &body),
        ts: ts.to_string(),
        body,
    }
}

/// POSTs a callback with the given headers: (status, body).
async fn post_raw(a: &InProcess, body: &str, ts: Option<&str>, sig: Option<&str>) -> (u16, String) {
    let mut r = client()
        .post(a.admin_url("/slack/actions"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body.to_string());
    if let Some(ts) = ts {
        r = r.header("x-slack-request-timestamp", ts);
    }
    if let Some(sig) = sig {
        r = r.header("x-slack-signature", sig);
    }
    let r = r.send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

async fn post(a: &InProcess, s: &Signed) -> (u16, String) {
    post_raw(a, &s.body, Some(&s.ts), Some(&s.sig)).await
}

/// The message posted for approval `id` (its chat.postMessage body).
async fn posted_for(slack: &Slack, id: &str) -> Value {
    slack
        .wait_for("chat.postMessage for the approval", |c| {
            c.method == "chat.postMessage"
                && c.body["thread_ts"].is_null()
                && c.body["blocks"].to_string().contains(id)
        })
        .await
        .body
}

/// The `ts` Slack gave the message of approval `id`.
async fn ts_of(slack: &Slack, id: &str) -> String {
    let posted = posted_for(slack, id).await;
    // The stand-in numbers messages in order; find the answer by the post's position.
    let posts: Vec<Value> = slack
        .calls_of("chat.postMessage")
        .into_iter()
        .filter(|b| b["thread_ts"].is_null())
        .collect();
    let n = posts.iter().position(|b| *b == posted).unwrap() as u64;
    format!("{}.000100", 1_700_000_000 + n + 1)
}

/// The `actions` block of a message, if it has one.
fn buttons(blocks: &Value) -> Option<Value> {
    blocks
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["type"] == "actions")
        .cloned()
}

/// Waits for a chat.update of `ts` whose blocks satisfy `want`.
async fn wait_update<F: Fn(&str, &Value) -> bool>(
    slack: &Slack,
    ts: &str,
    what: &str,
    want: F,
) -> Value {
    slack
        .wait_for(what, |c| {
            c.method == "chat.update"
                && c.body["ts"] == ts
                && want(&c.body["blocks"].to_string(), &c.body["blocks"])
        })
        .await
        .body
}

async fn votes_of(a: &InProcess, id: &str) -> Vec<Value> {
    let (s, v) = approval_get(a, BOB, id).await;
    assert_eq!(s, 200, "{v}");
    v["votes"].as_array().cloned().unwrap_or_default()
}

async fn status_of(a: &InProcess, id: &str) -> String {
    approval_get(a, BOB, id).await.1["status"]
        .as_str()
        .unwrap()
        .to_string()
}

/// deploy-bot's request, held: (the agent's task, the approval id).
async fn hold(
    env: &Env,
    path: &str,
    body: &str,
    justification: &str,
) -> (tokio::task::JoinHandle<AgentReply>, String) {
    let url = env.a.url(path);
    let (body, justification) = (body.to_string(), justification.to_string());
    let before: Vec<String> = pending(&env.a, BOB).await.iter().map(id_of).collect();
    let task = tokio::spawn(async move {
        let r = client()
            .post(&url)
            .bearer_auth(AGENT_KEY)
            .header("content-type", "application/json")
            .header("x-airlock-justification", justification)
            .body(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let approval_header = r
            .headers()
            .get("x-airlock-approval-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        AgentReply {
            status,
            approval_header,
            text: r.text().await.unwrap_or_default(),
        }
    });
    let id = eventually(DEADLINE.as_secs(), || {
        let before = before.clone();
        async move {
            pending(&env.a, BOB)
                .await
                .iter()
                .map(id_of)
                .find(|id| !before.contains(id))
        }
    })
    .await;
    (task, id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_request_is_posted_with_what_reviewers_decide_on() {
    let env = start().await;
    let (held, id) = hold(
        &env,
        "/api/v1/things/vm-7",
        r#"{"name":"vm-7","size":3}"#,
        "ticket OPS-7: retire <!channel> vm-7",
    )
    .await;
    let msg = posted_for(&env.slack, &id).await;
    assert_eq!(msg["channel"], CHANNEL);
    let text = msg["text"].as_str().unwrap();
    assert!(
        text.contains("deploy-bot") && text.contains("/v1/things/vm-7"),
        "{text}"
    );
    let blocks = msg["blocks"].to_string();
    for want in [
        "deploy-bot",
        "alice@example.com", // the owner
        "Authenticated by",
        "key",
        "delete-vm",
        "Deleting a production VM",        // the rule's description
        "0 of 1 approvals from group:sre", // its progress
        "POST",
        "/v1/things/vm-7",
        "/name",                                    // the show field …
        "vm-7",                                     // … and its value
        "ticket OPS-7: retire",                     // the justification
        &sha256_hex(r#"{"name":"vm-7","size":3}"#), // the body digest
        "<!date^",                                  // the expiry, in each reader's time zone
        &format!("{PUBLIC}/approvals/{id}"),        // the link
        "<@U0BOB>",                                 // eligible reviewers are mentioned
        "<@U0CAROL>",
    ] {
        assert!(blocks.contains(want), "message lacks {want:?}: {blocks}");
    }
    // The owner is never asked to approve their own agent's request, nor is someone who
    // is not an approver; and the agent's text cannot ping the channel.
    assert!(!blocks.contains("<@U0ALICE>"), "{blocks}");
    assert!(!blocks.contains("<@U0DAVE>"), "{blocks}");
    assert!(!blocks.contains("<!channel>"), "{blocks}");
    assert!(blocks.contains("&lt;!channel&gt;"), "{blocks}");
    let actions = buttons(&msg["blocks"]).expect("Approve and Deny buttons");
    let els = actions["elements"].as_array().unwrap();
    let by_action = |a: &str| {
        els.iter()
            .find(|e| e["action_id"] == a)
            .cloned()
            .unwrap_or_else(|| panic!("no {a}: {actions}"))
    };
    for a in ["airlock_approve", "airlock_deny"] {
        let b = by_action(a);
        assert_eq!(b["type"], "button");
        assert_eq!(
            b["value"],
            id.as_str(),
            "the button carries the approval id only"
        );
    }
    assert_eq!(by_action("airlock_approve")["style"], "primary");
    assert_eq!(by_action("airlock_deny")["style"], "danger");

    assert_eq!(
        vote(&env.a, BOB, &id, "deny", Some("not today")).await.0,
        200
    );
    assert_eq!(held.await.unwrap().status, 403);
    assert_eq!(env.up.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approve_click_votes_forwards_and_updates_the_message() {
    let env = start().await;
    let (held, id) = hold(&env, "/api/v1/things/vm-8", r#"{"name":"vm-8"}"#, "OPS-8").await;
    let ts = ts_of(&env.slack, &id).await;

    let cb = signed(&click(U_BOB, "airlock_approve", &id));
    let started = std::time::Instant::now();
    let (s, body) = post(&env.a, &cb).await;
    assert_eq!(s, 200, "{body}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(3),
        "Slack's 3 seconds"
    );

    held.await.unwrap().assert_forwarded_on(&id);
    assert_eq!(env.up.count(), 1);

    // The message now says who approved, and has no buttons left.
    let update = wait_update(
        &env.slack,
        &ts,
        "chat.update with the outcome",
        |b, blocks| {
            b.contains("Approved") && b.contains("bob@example.com") && buttons(blocks).is_none()
        },
    )
    .await;
    assert_eq!(update["channel"], CHANNEL);

    // The vote's audit event: who, through Slack, and what proves it.
    let ev = wait_audit_event(&env.audit_file(), "the Slack vote", |e| {
        e["event"] == "vote" && e["approval_id"] == id.as_str()
    })
    .await;
    assert_eq!(ev["reviewer"], "bob@example.com");
    assert_eq!(ev["channel"], "slack");
    assert_eq!(ev["decision"], "approve");
    let d = &ev["detail"];
    assert_eq!(d["callback_sha256"], sha256_hex(&cb.body), "{ev}");
    assert_eq!(d["x_slack_signature"], cb.sig.as_str());
    assert_eq!(d["x_slack_request_timestamp"], cb.ts.as_str());
    assert_eq!(d["slack_user"], U_BOB);
    assert_eq!(d["team"], TEAM);

    // The next request of the same agent and rule shows this decision.
    let (held2, id2) = hold(&env, "/api/v1/things/vm-9", r#"{"name":"vm-9"}"#, "OPS-9").await;
    let msg = posted_for(&env.slack, &id2).await;
    let blocks = msg["blocks"].to_string();
    assert!(blocks.contains("Recent decisions"), "{blocks}");
    assert!(blocks.contains("• approved by bob@example.com"), "{blocks}");
    assert_eq!(vote(&env.a, BOB, &id2, "deny", None).await.0, 200);
    assert_eq!(held2.await.unwrap().status, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deny_asks_for_a_reason_that_reaches_the_agent() {
    let env = start().await;
    let (held, id) = hold(
        &env,
        "/api/v1/things/vm-10",
        r#"{"name":"vm-10"}"#,
        "OPS-10",
    )
    .await;
    let ts = ts_of(&env.slack, &id).await;

    let (s, body) = post(&env.a, &signed(&click(U_CAROL, "airlock_deny", &id))).await;
    assert_eq!(s, 200, "{body}");
    let open = env
        .slack
        .wait_for("views.open", |c| c.method == "views.open")
        .await
        .body;
    assert_eq!(
        open["trigger_id"],
        format!("{U_CAROL}.airlock_deny.trigger")
    );
    assert_eq!(open["view"]["private_metadata"], id.as_str());
    assert_eq!(open["view"]["callback_id"], "airlock_deny");
    assert!(open["view"]["blocks"]
        .to_string()
        .contains("plain_text_input"));
    // Opening the form decides nothing.
    assert_eq!(status_of(&env.a, &id).await, "pending");
    assert!(votes_of(&env.a, &id).await.is_empty());

    let (s, body) = post(
        &env.a,
        &signed(&submit(
            U_CAROL,
            "airlock_deny",
            &id,
            "change freeze until Monday",
        )),
    )
    .await;
    assert_eq!(s, 200);
    assert!(body.is_empty(), "an empty answer closes the modal: {body}");
    let r = held.await.unwrap();
    assert_eq!(r.status, 403, "{}", r.text);
    assert!(r.text.contains("change freeze until Monday"), "{}", r.text);
    assert_eq!(env.up.count(), 0);

    wait_update(
        &env.slack,
        &ts,
        "chat.update with the denial",
        |b, blocks| {
            b.contains("Denied")
                && b.contains("carol@example.com")
                && b.contains("change freeze until Monday")
                && buttons(blocks).is_none()
        },
    )
    .await;
    let ev = wait_audit_event(&env.audit_file(), "the Slack deny", |e| {
        e["event"] == "vote" && e["approval_id"] == id.as_str()
    })
    .await;
    assert_eq!(ev["channel"], "slack");
    assert_eq!(ev["decision"], "deny");
    assert_eq!(ev["reason"], "change freeze until Monday");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_required_reason_is_asked_for_before_approving() {
    let env = start().await;
    let (held, id) = hold(&env, "/api/v1/billing/plan", r#"{"plan":"pro"}"#, "upgrade").await;
    posted_for(&env.slack, &id).await;
    let (s, _) = post(&env.a, &signed(&click(U_BOB, "airlock_approve", &id))).await;
    assert_eq!(s, 200);
    let open = env
        .slack
        .wait_for("views.open", |c| c.method == "views.open")
        .await
        .body;
    assert_eq!(open["view"]["callback_id"], "airlock_approve");
    assert!(votes_of(&env.a, &id).await.is_empty());

    // An empty reason is refused in the modal itself.
    let (s, body) = post(
        &env.a,
        &signed(&submit(U_BOB, "airlock_approve", &id, "  ")),
    )
    .await;
    assert_eq!(s, 200);
    let v: Value =
        serde_json::from_str(&body).unwrap_or_else(|_| panic!("modal errors expected: {body}"));
    assert_eq!(v["response_action"], "errors");
    assert!(
        v["errors"]["airlock_reason"]
            .as_str()
            .unwrap()
            .contains("reason"),
        "{v}"
    );
    assert!(votes_of(&env.a, &id).await.is_empty());

    let (s, body) = post(
        &env.a,
        &signed(&submit(
            U_BOB,
            "airlock_approve",
            &id,
            "budget approved in FIN-3",
        )),
    )
    .await;
    assert_eq!((s, body.as_str()), (200, ""));
    held.await.unwrap().assert_forwarded_on(&id);
}

/// A callback that must be refused: (what, body, timestamp header, signature header,
/// status, error code).
type Refusal<'a> = (
    &'a str,
    String,
    Option<String>,
    Option<String>,
    u16,
    &'a str,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_stale_foreign_and_ineligible_clicks_record_nothing() {
    let env = start().await;
    let (held, id) = hold(
        &env,
        "/api/v1/things/vm-11",
        r#"{"name":"vm-11"}"#,
        "OPS-11",
    )
    .await;
    posted_for(&env.slack, &id).await;
    let approve = |user: &str| click(user, "airlock_approve", &id);

    // Refused before anything is read: airlock's JSON error, no vote.
    let good = signed(&approve(U_BOB));
    let t = now();
    let cases: Vec<Refusal> = vec![
        (
            "signed with another secret",
            good.body.clone(),
            Some(good.ts.clone()),
            Some(sign("not-the-secret", t, &good.body)),
            401,
            "unauthenticated",
        ),
        (
            "signature of another body",
            form(&approve(U_CAROL)),
            Some(good.ts.clone()),
            Some(good.sig.clone()),
            401,
            "unauthenticated",
        ),
        (
            "no signature",
            good.body.clone(),
            Some(good.ts.clone()),
            None,
            401,
            "unauthenticated",
        ),
        (
            "no timestamp",
            good.body.clone(),
            None,
            Some(good.sig.clone()),
            401,
            "unauthenticated",
        ),
        (
            "stale: signed 6 minutes ago",
            good.body.clone(),
            Some((t - 360).to_string()),
            Some(sign(SECRET, t - 360, &good.body)),
            401,
            "unauthenticated",
        ),
        (
            "from the future: 6 minutes ahead",
            good.body.clone(),
            Some((t + 360).to_string()),
            Some(sign(SECRET, t + 360, &good.body)),
            401,
            "unauthenticated",
        ),
        (
            "not v0",
            good.body.clone(),
            Some(good.ts.clone()),
            Some(good.sig.replace("v0=", "v1=")),
            401,
            "unauthenticated",
        ),
    ];
    let mut foreign_team = approve(U_BOB);
    foreign_team["team"]["id"] = json!("T0ELSEWHERE");
    foreign_team["user"]["team_id"] = json!("T0ELSEWHERE");
    let mut foreign_app = approve(U_BOB);
    foreign_app["api_app_id"] = json!("A0OTHERAPP");
    let signed_cases = [
        ("another workspace", form(&foreign_team), 403, "forbidden"),
        ("another app", form(&foreign_app), 403, "forbidden"),
        (
            "no payload field",
            "text=hello".to_string(),
            400,
            "bad_request",
        ),
        (
            "payload not JSON",
            "payload=%7Bnot+json".to_string(),
            400,
            "bad_request",
        ),
    ];
    let mut all = cases;
    for (what, body, status, code) in signed_cases {
        let sig = sign(SECRET, t, &body);
        all.push((what, body, Some(t.to_string()), Some(sig), status, code));
    }
    for (what, body, ts, sig, status, code) in &all {
        let (s, answer) = post_raw(&env.a, body, ts.as_deref(), sig.as_deref()).await;
        assert_eq!(s, *status, "{what}: {answer}");
        let v: Value = serde_json::from_str(&answer)
            .unwrap_or_else(|_| panic!("{what}: JSON error expected: {answer}"));
        assert_eq!(v["error"], *code, "{what}: {v}");
    }

    // Signed, but the clicker may not vote: 200 and an explanation only they see.
    for (user, says) in [
        (U_STRANGER, "not a reviewer"),
        (U_DAVE, "not an approver"),
        (U_ALICE, "own"),
    ] {
        let (s, body) = post(&env.a, &signed(&approve(user))).await;
        assert_eq!(s, 200, "{user}: {body}");
        let e = env
            .slack
            .wait_for("chat.postEphemeral", |c| {
                c.method == "chat.postEphemeral" && c.body["user"] == user
            })
            .await
            .body;
        assert_eq!(e["channel"], CHANNEL);
        assert!(e["text"].as_str().unwrap().contains(says), "{user}: {e}");
    }
    // Dave's deny does not even open the reason form.
    let (s, _) = post(&env.a, &signed(&click(U_DAVE, "airlock_deny", &id))).await;
    assert_eq!(s, 200);
    env.slack
        .wait_for("a second ephemeral for dave", |c| {
            c.method == "chat.postEphemeral"
                && c.body["user"] == U_DAVE
                && env
                    .slack
                    .calls_of("chat.postEphemeral")
                    .iter()
                    .filter(|b| b["user"] == U_DAVE)
                    .count()
                    == 2
        })
        .await;
    assert!(env.slack.calls_of("views.open").is_empty());

    assert!(
        votes_of(&env.a, &id).await.is_empty(),
        "no vote was recorded"
    );
    assert_eq!(status_of(&env.a, &id).await, "pending");
    assert_eq!(env.up.count(), 0);
    // The refusals of reviewers are in the audit log (self-approval, not eligible).
    let ev = wait_audit_event(&env.audit_file(), "the refused self-approval", |e| {
        e["event"] == "vote_refused" && e["reviewer"] == "alice@example.com"
    })
    .await;
    assert_eq!(ev["channel"], "slack");

    assert_eq!(vote(&env.a, BOB, &id, "deny", None).await.0, 200);
    assert_eq!(held.await.unwrap().status, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_click_counts_once_and_a_forged_button_value_finds_nothing() {
    let env = start().await;
    let (held, id) = hold(&env, "/api/v1/keys/root", r#"{"k":1}"#, "rotation").await;
    let ts = ts_of(&env.slack, &id).await;
    let cb = signed(&click(U_BOB, "airlock_approve", &id));
    assert_eq!(post(&env.a, &cb).await.0, 200);
    // One of two approvals: the message shows the progress, buttons still there.
    wait_update(&env.slack, &ts, "chat.update with 1 of 2", |b, blocks| {
        b.contains("1 of 2 approvals") && b.contains("bob@example.com") && buttons(blocks).is_some()
    })
    .await;
    // The same request again (same body, same signature, within the window).
    let (s, _) = post(&env.a, &cb).await;
    assert_eq!(s, 200);
    let e = env
        .slack
        .wait_for("an ephemeral about the replay", |c| {
            c.method == "chat.postEphemeral" && c.body["user"] == U_BOB
        })
        .await
        .body;
    assert!(e["text"].as_str().unwrap().contains("already voted"), "{e}");
    assert_eq!(votes_of(&env.a, &id).await.len(), 1);
    assert_eq!(status_of(&env.a, &id).await, "pending");

    // Carol decides; a late click is told the outcome.
    assert_eq!(
        post(&env.a, &signed(&click(U_CAROL, "airlock_approve", &id)))
            .await
            .0,
        200
    );
    held.await.unwrap().assert_forwarded_on(&id);
    wait_update(
        &env.slack,
        &ts,
        "chat.update with the outcome",
        |b, blocks| b.contains("Approved") && buttons(blocks).is_none(),
    )
    .await;
    // An unknown approval (a forged button value) is explained, never a vote.
    let (s, _) = post(
        &env.a,
        &signed(&click(U_CAROL, "airlock_approve", "apr_does_not_exist")),
    )
    .await;
    assert_eq!(s, 200);
    let e = env
        .slack
        .wait_for("an ephemeral about the unknown approval", |c| {
            c.method == "chat.postEphemeral"
                && c.body["text"]
                    .as_str()
                    .unwrap_or("")
                    .contains("no approval")
        })
        .await
        .body;
    assert_eq!(e["user"], U_CAROL);
    assert_eq!(votes_of(&env.a, &id).await.len(), 2);
    assert_eq!(env.up.count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn votes_through_the_api_and_expiry_update_the_message() {
    let env = start().await;
    let (held, id) = hold(&env, "/api/v1/keys/api", r#"{"k":2}"#, "rotation").await;
    let ts = ts_of(&env.slack, &id).await;
    assert_eq!(vote(&env.a, BOB, &id, "approve", None).await.0, 200);
    wait_update(&env.slack, &ts, "chat.update after an API vote", |b, _| {
        b.contains("1 of 2 approvals") && b.contains("bob@example.com")
    })
    .await;
    assert_eq!(
        vote(&env.a, CAROL, &id, "deny", Some("not both keys"))
            .await
            .0,
        200
    );
    assert_eq!(held.await.unwrap().status, 403);
    wait_update(
        &env.slack,
        &ts,
        "chat.update after the API denial",
        |b, blocks| {
            b.contains("Denied") && b.contains("not both keys") && buttons(blocks).is_none()
        },
    )
    .await;

    // Nobody decides in time: the message says it expired, without buttons.
    let (held, id) = hold(&env, "/api/v1/expiring/x", r#"{"x":1}"#, "whenever").await;
    let ts = ts_of(&env.slack, &id).await;
    assert_eq!(held.await.unwrap().status, 403);
    wait_update(&env.slack, &ts, "chat.update after expiry", |b, blocks| {
        b.contains("Expired") && buttons(blocks).is_none()
    })
    .await;
    // A click that comes too late is told so, and counts for nothing.
    let (s, _) = post(&env.a, &signed(&click(U_CAROL, "airlock_approve", &id))).await;
    assert_eq!(s, 200);
    let e = env
        .slack
        .wait_for("an ephemeral about the late click", |c| {
            c.method == "chat.postEphemeral" && c.body["user"] == U_CAROL
        })
        .await
        .body;
    assert!(
        e["text"].as_str().unwrap().contains("already expired"),
        "{e}"
    );
    assert!(votes_of(&env.a, &id).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_refusing_every_post_leaves_the_api_deciding() {
    let env = start().await;
    env.slack.fail("chat.postMessage", "channel_not_found");
    let (held, id) = hold(
        &env,
        "/api/v1/things/vm-12",
        r#"{"name":"vm-12"}"#,
        "OPS-12",
    )
    .await;
    env.slack
        .wait_for("the refused post", |c| c.method == "chat.postMessage")
        .await;
    assert_eq!(vote(&env.a, BOB, &id, "approve", None).await.0, 200);
    held.await.unwrap().assert_forwarded_on(&id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_slack_configured_the_callback_is_not_found() {
    let (_up, _ws, a) = setup_with_rules(RULES, "").await;
    let s = signed(&click(U_BOB, "airlock_approve", "apr_x"));
    let (status, body) = post(&a, &s).await;
    assert_eq!(status, 404, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"], "not_found");
}

/// A pending approval as the store holds it, for driving the channel directly.
fn pending_approval(id: &str) -> airlock::store::Approval {
    let now = chrono::Utc::now();
    airlock::store::Approval {
        id: id.into(),
        status: airlock::store::Status::Pending,
        agent: "deploy-bot".into(),
        owner: Some("alice@example.com".into()),
        digest: "d".repeat(64),
        body_sha256: "0".repeat(64),
        rules: vec!["delete-vm".into()],
        policy: serde_json::from_value(json!({
            "approvers": ["group:sre"], "quorum": 1, "timeout": 900, "reuse": 600,
            "channels": [], "show": [], "remind": 600,
            "escalate": {"after": 1800, "to": ["group:leads"]}
        }))
        .unwrap(),
        method: "DELETE".into(),
        upstream: "api".into(),
        host: Some("cloud.example.com".into()),
        url: "/v1/things/vm-7".into(),
        justification: None,
        show: None,
        request_id: "req_1".into(),
        created: now,
        expires: now + chrono::Duration::minutes(15),
        decided: None,
        decided_by: None,
        reason: None,
        consumed: None,
        forwarder: None,
        requester: Default::default(),
        votes: vec![],
    }
}

fn notice(
    what: airlock::approvals::Lifecycle,
    mention: &[(&str, &str)],
) -> airlock::channels::Notice {
    let approval = pending_approval("ap_direct");
    airlock::channels::Notice {
        event: airlock::approvals::LifecycleEvent {
            approval_id: approval.id.clone(),
            seq: 1,
            time: chrono::Utc::now(),
            what,
        },
        approval,
        auth: "key".into(),
        rules: vec![],
        mention: mention
            .iter()
            .map(|(id, slack)| airlock::config::Reviewer {
                id: id.to_string(),
                groups: vec![],
                token_digest: None,
                subject: None,
                slack: Some(slack.to_string()),
                teams: None,
            })
            .collect(),
        recent: vec![],
        link: None,
        full_url: "https://cloud.example.com/v1/projects/p1/instances/vm-7".into(),
    }
}

fn slack_config(slack: &Slack, token: &str) -> airlock::config::SlackConfig {
    airlock::config::SlackConfig {
        bot_token: token.into(),
        signing_secret: Some(SECRET.into()),
        channel: CHANNEL.into(),
        api_base: slack.api_base(),
        app_id: None,
        team_id: None,
        app_token: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reminders_and_escalations_reply_in_the_thread_and_slack_errors_are_classified() {
    use airlock::approvals::Lifecycle;
    use airlock::channels::slack::SlackChannel;
    use airlock::channels::{Channel, ChannelError};
    let slack = Slack::start().await;
    let ch = SlackChannel::new(slack_config(&slack, BOT_TOKEN), reqwest::Client::new());

    let stored = ch
        .deliver(
            &notice(Lifecycle::Opened, &[("bob@example.com", U_BOB)]),
            None,
        )
        .await
        .unwrap()
        .expect("a message reference to store");
    let r: Value = serde_json::from_str(&stored).unwrap();
    assert_eq!(r["channel"], CHANNEL);
    let ts = r["ts"].as_str().unwrap().to_string();

    // A reminder: a thread reply mentioning who is asked, and the message refreshed.
    let kept = ch
        .deliver(
            &notice(Lifecycle::Reminded, &[("bob@example.com", U_BOB)]),
            Some(&stored),
        )
        .await
        .unwrap();
    assert_eq!(kept, None, "the same message: nothing new to store");
    let reply = slack
        .wait_for("the reminder in the thread", |c| {
            c.method == "chat.postMessage" && c.body["thread_ts"] == ts.as_str()
        })
        .await
        .body;
    let text = reply["text"].as_str().unwrap();
    assert!(
        text.contains("<@U0BOB>") && text.contains("reminder"),
        "{text}"
    );
    assert_eq!(slack.calls_of("chat.update").len(), 1);

    // An escalation names who was added and mentions them.
    ch.deliver(
        &notice(
            Lifecycle::Escalated {
                to: vec!["group:leads".into()],
            },
            &[("erin@example.com", "U0ERIN")],
        ),
        Some(&stored),
    )
    .await
    .unwrap();
    let reply = slack
        .wait_for("the escalation in the thread", |c| {
            c.method == "chat.postMessage"
                && c.body["text"].as_str().unwrap_or("").contains("escalated")
        })
        .await
        .body;
    assert_eq!(reply["thread_ts"], ts.as_str());
    let text = reply["text"].as_str().unwrap();
    assert!(
        text.contains("<@U0ERIN>") && text.contains("group:leads"),
        "{text}"
    );

    // A message deleted in Slack is posted again, and its new reference stored.
    let gone = json!({"channel": CHANNEL, "ts": "1600000000.000001"}).to_string();
    let again = ch
        .deliver(&notice(Lifecycle::Expired, &[]), Some(&gone))
        .await
        .unwrap()
        .expect("a new reference");
    assert_ne!(again, gone);

    // Slack's errors: a rate limit is retried, bad credentials are not.
    slack.fail("chat.update", "ratelimited");
    let e = ch
        .deliver(&notice(Lifecycle::Expired, &[]), Some(&stored))
        .await
        .unwrap_err();
    assert!(matches!(e, ChannelError::Transient(_)), "{e:?}");
    let bad = SlackChannel::new(slack_config(&slack, "xoxb-revoked"), reqwest::Client::new());
    let e = bad
        .deliver(&notice(Lifecycle::Opened, &[]), None)
        .await
        .unwrap_err();
    assert!(
        matches!(e, ChannelError::Permanent(ref m) if m.contains("invalid_auth")),
        "{e:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_slack_does_not_make_the_callback_miss_its_three_seconds() {
    let env = start().await;
    let (held, id) = hold(
        &env,
        "/api/v1/things/vm-13",
        r#"{"name":"vm-13"}"#,
        "OPS-13",
    )
    .await;
    posted_for(&env.slack, &id).await;
    env.slack
        .delay("views.open", std::time::Duration::from_secs(20));
    let started = std::time::Instant::now();
    let (s, _) = post(&env.a, &signed(&click(U_CAROL, "airlock_deny", &id))).await;
    assert_eq!(s, 200);
    // Bounded well below the 20 s Slack takes here (the bound is under 3 s; the margin
    // is for a loaded machine).
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "answered after {:?}",
        started.elapsed()
    );
    let e = env
        .slack
        .wait_for("the ephemeral about the form", |c| {
            c.method == "chat.postEphemeral" && c.body["user"] == U_CAROL
        })
        .await
        .body;
    assert!(
        e["text"].as_str().unwrap().contains("could not open"),
        "{e}"
    );
    assert!(votes_of(&env.a, &id).await.is_empty());
    assert_eq!(vote(&env.a, BOB, &id, "deny", None).await.0, 200);
    assert_eq!(held.await.unwrap().status, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_message_says_whom_the_agent_acts_for_and_how_it_signed_in() {
    use airlock::channels::slack::SlackChannel;
    use airlock::channels::Channel;
    let slack = Slack::start().await;
    let ch = SlackChannel::new(slack_config(&slack, BOT_TOKEN), reqwest::Client::new());
    let mut n = notice(airlock::approvals::Lifecycle::Opened, &[]);
    n.approval.requester = airlock::store::Requester {
        auth: "jwt".into(),
        acting_for: Some("alice@example.com".into()),
        client: Some("10.0.0.7".into()),
    };
    n.auth = "jwt".into();
    ch.deliver(&n, None).await.unwrap();
    let posted = slack.calls_of("chat.postMessage");
    let blocks = posted[0]["blocks"].to_string();
    assert!(
        blocks.contains("deploy-bot acting for alice@example.com"),
        "the headline: {blocks}"
    );
    assert!(
        blocks.contains("acting for *alice@example.com*"),
        "the agent field: {blocks}"
    );
    assert!(blocks.contains("*Authenticated by*\\njwt"), "how: {blocks}");
}
