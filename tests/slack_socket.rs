//! Slack Socket Mode, end to end: airlock (in process) asks the stand-in Slack's
//! `apps.connections.open` for a WebSocket URL with its app-level token, connects, and
//! receives interaction envelopes as Slack sends them. Each envelope must be
//! acknowledged with its `envelope_id`, and its click must count exactly as one through
//! the interactivity URL would (same eligibility checks, same evidence in the audit
//! log). `disconnect` makes airlock reconnect with a fresh URL.

mod common;
#[path = "standins/slack.rs"]
mod standin;

use common::*;
use serde_json::{json, Value};
use standin::{Slack, APP_TOKEN, BOT_TOKEN, CHANNEL};
use std::path::PathBuf;

const TEAM: &str = "T0AIRLOCK";
const APP: &str = "A0AIRLOCK";

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
"#;

fn config(ws: &Workspace, upstream: &str, slack: &Slack) -> PathBuf {
    config_with(ws, upstream, slack, &format!("app_token: {APP_TOKEN}"))
}

/// The config with `how` (`app_token: …` or `signing_secret: …`) in `channels.slack`.
fn config_with(ws: &Workspace, upstream: &str, slack: &Slack, how: &str) -> PathBuf {
    let text = format!(
        r#"listen: 127.0.0.1:0
admin:
  listen: 127.0.0.1:0
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
    slack: U0BOB
  - id: carol@example.com
    groups: [sre]
    token: {carol}
    slack: U0CAROL
  - id: dave@example.com
    token: {dave}
    slack: U0DAVE
channels:
  slack:
    bot_token: {BOT_TOKEN}
    {how}
    channel: {CHANNEL}
    api_base: {api}
    app_id: {APP}
    team_id: {TEAM}
"#,
        agent = digest(AGENT_KEY),
        bob = digest(BOB),
        carol = digest(CAROL),
        dave = digest(DAVE),
        api = slack.api_base(),
    );
    ws.write("airlock.yaml", &text)
}

/// An `interactive` envelope carrying a `block_actions` click, as Socket Mode sends it.
fn envelope(envelope_id: &str, user: &str, action_id: &str, approval: &str) -> Value {
    json!({
        "envelope_id": envelope_id,
        "type": "interactive",
        "accepts_response_payload": false,
        "retry_attempt": 0,
        "retry_reason": "",
        "payload": {
            "type": "block_actions",
            "user": {"id": user, "team_id": TEAM},
            "api_app_id": APP,
            "team": {"id": TEAM, "domain": "example"},
            "trigger_id": format!("{user}.trigger"),
            "channel": {"id": CHANNEL, "name": "approvals"},
            "container": {"type": "message", "channel_id": CHANNEL, "message_ts": "1700000001.000100"},
            "actions": [{"action_id": action_id, "block_id": "airlock_vote", "type": "button", "value": approval, "action_ts": "1700000002.1"}]
        }
    })
}

/// A `view_submission` envelope for the deny modal.
fn submission(envelope_id: &str, user: &str, approval: &str, reason: &str) -> Value {
    json!({
        "envelope_id": envelope_id,
        "type": "interactive",
        "accepts_response_payload": true,
        "payload": {
            "type": "view_submission",
            "user": {"id": user, "team_id": TEAM},
            "api_app_id": APP,
            "team": {"id": TEAM},
            "view": {
                "type": "modal",
                "callback_id": "airlock_deny",
                "private_metadata": approval,
                "state": {"values": {"airlock_reason": {"reason": {"type": "plain_text_input", "value": reason}}}}
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clicks_through_socket_mode_are_acknowledged_and_counted() {
    let slack = Slack::start().await;
    let up = Upstream::start().await;
    let ws = Workspace::new();
    ws.write("rules/r.yaml", RULES);
    let a = InProcess::start(&config(&ws, &up.url(), &slack)).await;
    let mut conn = slack.next_socket().await;
    assert_eq!(slack.connections_opened(), 1);

    // No interactivity URL in Socket Mode.
    let r = client()
        .post(a.admin_url("/slack/actions"))
        .body("payload=%7B%7D")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);

    let (held, id) = agent_hold(&a, "POST", "/api/v1/things/vm-1", r#"{"name":"vm-1"}"#).await;
    slack
        .wait_for("the approval's message", |c| {
            c.method == "chat.postMessage" && c.body["blocks"].to_string().contains(&id)
        })
        .await;

    // A click from someone who may not vote: acknowledged, explained, not counted.
    conn.send(envelope("env-dave", "U0DAVE", "airlock_approve", &id))
        .await;
    assert_eq!(conn.recv().await, json!({"envelope_id": "env-dave"}));
    let e = slack
        .wait_for("the ephemeral for dave", |c| {
            c.method == "chat.postEphemeral"
        })
        .await
        .body;
    assert_eq!(e["user"], "U0DAVE");
    assert!(
        e["text"].as_str().unwrap().contains("not an approver"),
        "{e}"
    );

    // Bob approves: acknowledged, counted, forwarded.
    conn.send(envelope("env-bob", "U0BOB", "airlock_approve", &id))
        .await;
    assert_eq!(conn.recv().await, json!({"envelope_id": "env-bob"}));
    held.await.unwrap().assert_forwarded_on(&id);
    let ev = wait_audit_event(&ws.path().join("audit.jsonl"), "the vote", |e| {
        e["event"] == "vote" && e["approval_id"] == id.as_str()
    })
    .await;
    assert_eq!(ev["reviewer"], "bob@example.com");
    assert_eq!(ev["channel"], "slack");
    assert_eq!(ev["detail"]["envelope_id"], "env-bob");
    assert_eq!(ev["detail"]["slack_user"], "U0BOB");
    assert_eq!(ev["detail"]["envelope_sha256"].as_str().unwrap().len(), 64);
    slack
        .wait_for("chat.update with the outcome", |c| {
            c.method == "chat.update"
                && c.body["blocks"].to_string().contains("Approved")
                && !c.body["blocks"].to_string().contains("airlock_approve")
        })
        .await;

    // Slack rotates the connection: airlock opens a new one with a fresh URL.
    conn.send(json!({"type": "disconnect", "reason": "refresh_requested", "debug_info": {"host": "standin"}}))
        .await;
    let mut conn = slack.next_socket().await;
    assert_eq!(slack.connections_opened(), 2);

    // Carol denies on the new connection: the button opens the modal, the
    // submission's acknowledgement closes it, the agent gets the reason.
    let (held, id) = agent_hold(&a, "POST", "/api/v1/things/vm-2", r#"{"name":"vm-2"}"#).await;
    conn.send(envelope("env-carol", "U0CAROL", "airlock_deny", &id))
        .await;
    assert_eq!(conn.recv().await, json!({"envelope_id": "env-carol"}));
    let open = slack
        .wait_for("views.open", |c| c.method == "views.open")
        .await
        .body;
    assert_eq!(open["view"]["private_metadata"], id.as_str());
    assert_eq!(open["trigger_id"], "U0CAROL.trigger");
    conn.send(submission("env-carol-2", "U0CAROL", &id, "wrong project"))
        .await;
    assert_eq!(conn.recv().await, json!({"envelope_id": "env-carol-2"}));
    let r = held.await.unwrap();
    assert_eq!(r.status, 403);
    assert!(r.text.contains("wrong project"), "{}", r.text);

    // A second submission (a double click) is answered in the modal, not counted.
    conn.send(submission("env-carol-3", "U0CAROL", &id, "again"))
        .await;
    let ack = conn.recv().await;
    assert_eq!(ack["envelope_id"], "env-carol-3");
    assert_eq!(ack["payload"]["response_action"], "errors", "{ack}");
    assert_eq!(up.count(), 1);
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_app_token_is_retried_and_the_api_still_decides() {
    let slack = Slack::start().await;
    slack.fail("apps.connections.open", "invalid_auth");
    let up = Upstream::start().await;
    let ws = Workspace::new();
    ws.write("rules/r.yaml", RULES);
    let a = InProcess::start(&config(&ws, &up.url(), &slack)).await;
    // airlock keeps serving, and the API still decides.
    slack
        .wait_for("apps.connections.open", |c| {
            c.method == "apps.connections.open"
        })
        .await;
    let (held, id) = agent_hold(&a, "POST", "/api/v1/things/vm-3", r#"{"name":"vm-3"}"#).await;
    assert_eq!(vote(&a, BOB, &id, "approve", None).await.0, 200);
    held.await.unwrap().assert_forwarded_on(&id);
    // It tries again, with back-off, and connects once Slack accepts the token.
    slack
        .wait_for("a second apps.connections.open", |_| {
            slack.calls_of("apps.connections.open").len() >= 2
        })
        .await;
    slack.heal();
    let mut conn = slack.next_socket().await;
    let (held, id) = agent_hold(&a, "POST", "/api/v1/things/vm-4", r#"{"name":"vm-4"}"#).await;
    conn.send(envelope("env-1", "U0BOB", "airlock_approve", &id))
        .await;
    assert_eq!(conn.recv().await, json!({"envelope_id": "env-1"}));
    held.await.unwrap().assert_forwarded_on(&id);
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_turns_socket_mode_off_and_on() {
    let slack = Slack::start().await;
    let up = Upstream::start().await;
    let ws = Workspace::new();
    ws.write("rules/r.yaml", RULES);
    let a = InProcess::start(&config(&ws, &up.url(), &slack)).await;
    let mut conn = slack.next_socket().await;
    let reload = || async {
        let r = client()
            .post(a.admin_url("/api/v1/reload"))
            .bearer_auth(BOB)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "{}", r.text().await.unwrap());
    };

    // The interactivity URL instead: the socket is closed, the URL answers.
    config_with(&ws, &up.url(), &slack, "signing_secret: a-signing-secret");
    reload().await;
    conn.closed().await;
    let r = client()
        .post(a.admin_url("/slack/actions"))
        .body("payload=%7B%7D")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401, "signature checked now, not 404");

    // Socket Mode again: a fresh connection.
    config(&ws, &up.url(), &slack);
    reload().await;
    let mut conn = slack.next_socket().await;
    assert_eq!(slack.connections_opened(), 2);
    let (held, id) = agent_hold(&a, "POST", "/api/v1/things/vm-5", r#"{"name":"vm-5"}"#).await;
    conn.send(envelope("env-5", "U0BOB", "airlock_approve", &id))
        .await;
    assert_eq!(conn.recv().await, json!({"envelope_id": "env-5"}));
    held.await.unwrap().assert_forwarded_on(&id);
    a.stop().await;
}
