//! A stand-in for Slack on 127.0.0.1: the Web API methods airlock calls
//! (`chat.postMessage`, `chat.update`, `chat.postEphemeral`, `views.open`,
//! `apps.connections.open`) at `/api/{method}`, and a Socket Mode WebSocket server.
//! It checks what Slack checks (the bearer token: the bot token for `chat.*` and
//! `views.*`, the app-level token for `apps.connections.open`; the JSON shape: a
//! channel, text or a blocks array of typed blocks within Slack's limits, unique
//! action ids, a known `ts` to update, a modal with a title and a trigger) and answers
//! as Slack does: HTTP 200 with `{"ok": true, …}` or `{"ok": false, "error": …}`.
//! Everything airlock sent is recorded for the test to assert on.
#![allow(dead_code)]

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use sha2::Sha256;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Notify};
use tokio_tungstenite::tungstenite::Message;

pub const BOT_TOKEN: &str = "xoxb-test-bot-token";
pub const APP_TOKEN: &str = "xapp-1-test-app-token";
pub const CHANNEL: &str = "C0APPROVALS";
/// The workspace and app the tests' callbacks come from.
pub const TEAM: &str = "T0AIRLOCK";
pub const APP: &str = "A0AIRLOCK";

/// One Web API call airlock made.
#[derive(Debug, Clone)]
pub struct Call {
    pub method: String,
    pub body: Value,
}

#[derive(Default)]
struct State {
    calls: Vec<Call>,
    /// ts of every message posted (the ones chat.update may name).
    messages: HashSet<String>,
    next_ts: u64,
    /// Calls refused (method → error) before they are looked at.
    fail: HashMap<String, String>,
    /// Calls answered late (method → delay), as a slow Slack would.
    delay: HashMap<String, Duration>,
    ws_url: Option<String>,
    connections_opened: usize,
}

/// The stand-in Slack.
#[derive(Clone)]
pub struct Slack {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    changed: Arc<Notify>,
    sockets: Arc<tokio::sync::Mutex<mpsc::Receiver<SocketConn>>>,
}

impl Slack {
    /// Starts the Web API (and the Socket Mode server, whose URL
    /// `apps.connections.open` hands out).
    pub async fn start() -> Slack {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let ws_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ws_addr = ws_listener.local_addr().unwrap();
        let (conn_tx, conn_rx) = mpsc::channel(8);
        let slack = Slack {
            addr,
            state: Arc::new(Mutex::new(State {
                next_ts: 1_700_000_000,
                ws_url: Some(format!("ws://{ws_addr}/link/?ticket=test-ticket")),
                ..State::default()
            })),
            changed: Arc::new(Notify::new()),
            sockets: Arc::new(tokio::sync::Mutex::new(conn_rx)),
        };
        let me = slack.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let me = me.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let me = me.clone();
                        async move { Ok::<_, std::convert::Infallible>(me.serve(req).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = ws_listener.accept().await else {
                    return;
                };
                let Ok(ws) = tokio_tungstenite::accept_async(stream).await else {
                    continue;
                };
                let (mut sink, mut stream) = ws.split();
                let (to_airlock, mut outgoing) = mpsc::channel::<Value>(16);
                let (from_airlock_tx, from_airlock) = mpsc::channel::<Value>(16);
                tokio::spawn(async move {
                    // Slack greets each connection.
                    let hello = json!({"type": "hello", "num_connections": 1, "connection_info": {"app_id": "A0AIRLOCK"}, "debug_info": {"host": "standin"}});
                    if sink.send(Message::Text(hello.to_string())).await.is_err() {
                        return;
                    }
                    loop {
                        tokio::select! {
                            out = outgoing.recv() => match out {
                                Some(v) => if sink.send(Message::Text(v.to_string())).await.is_err() { return },
                                None => { let _ = sink.send(Message::Close(None)).await; return }
                            },
                            msg = stream.next() => match msg {
                                Some(Ok(Message::Text(t))) => {
                                    let v: Value = serde_json::from_str(&t).unwrap_or(json!({"unparsable": t}));
                                    if from_airlock_tx.send(v).await.is_err() { return }
                                }
                                Some(Ok(_)) => {}
                                _ => return,
                            }
                        }
                    }
                });
                let _ = conn_tx
                    .send(SocketConn {
                        to_airlock,
                        from_airlock,
                    })
                    .await;
            }
        });
        slack
    }

    /// The Web API base to put in `channels.slack.api_base`.
    pub fn api_base(&self) -> String {
        format!("http://{}/api", self.addr)
    }

    /// Makes every later call of `method` fail with Slack's `error`.
    pub fn fail(&self, method: &str, error: &str) {
        self.state
            .lock()
            .unwrap()
            .fail
            .insert(method.into(), error.into());
    }

    /// Makes every later call of `method` take `by` before it is answered.
    pub fn delay(&self, method: &str, by: Duration) {
        self.state.lock().unwrap().delay.insert(method.into(), by);
    }

    /// Answers every method normally again.
    pub fn heal(&self) {
        self.state.lock().unwrap().fail.clear();
    }

    /// Every call so far.
    pub fn calls(&self) -> Vec<Call> {
        self.state.lock().unwrap().calls.clone()
    }

    /// The calls of `method` so far.
    pub fn calls_of(&self, method: &str) -> Vec<Value> {
        self.calls()
            .into_iter()
            .filter(|c| c.method == method)
            .map(|c| c.body)
            .collect()
    }

    /// How many times `apps.connections.open` was answered.
    pub fn connections_opened(&self) -> usize {
        self.state.lock().unwrap().connections_opened
    }

    /// Waits (30 s at most) until a recorded call satisfies `want`; returns it.
    pub async fn wait_for<F>(&self, what: &str, want: F) -> Call
    where
        F: Fn(&Call) -> bool,
    {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let notified = self.changed.notified();
            if let Some(c) = self.calls().into_iter().find(|c| want(c)) {
                return c;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!(
                    "Slack stand-in: no {what} within 30s; calls: {:#?}",
                    self.calls()
                );
            }
        }
    }

    /// The next Socket Mode connection airlock opens (30 s at most).
    pub async fn next_socket(&self) -> SocketConn {
        tokio::time::timeout(Duration::from_secs(30), self.sockets.lock().await.recv())
            .await
            .expect("airlock opened no Socket Mode connection within 30s")
            .expect("socket server gone")
    }

    async fn serve(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let (parts, body) = req.into_parts();
        let body = body
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        let Some(method) = parts.uri.path().strip_prefix("/api/") else {
            let mut r = Response::new(Full::new(Bytes::from_static(b"not found")));
            *r.status_mut() = http::StatusCode::NOT_FOUND;
            return r;
        };
        let method = method.to_string();
        let delay = self.state.lock().unwrap().delay.get(&method).copied();
        if let Some(d) = delay {
            tokio::time::sleep(d).await;
        }
        let bearer = parts
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default()
            .to_string();
        let content_type = parts
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let answer = self.answer(&method, &bearer, &content_type, &body);
        self.changed.notify_waiters();
        Response::builder()
            .header("content-type", "application/json; charset=utf-8")
            .body(Full::new(Bytes::from(answer.to_string())))
            .unwrap()
    }

    fn answer(&self, method: &str, bearer: &str, content_type: &str, body: &[u8]) -> Value {
        let err = |e: &str| json!({"ok": false, "error": e});
        let want_token = if method == "apps.connections.open" {
            APP_TOKEN
        } else {
            BOT_TOKEN
        };
        if bearer.is_empty() {
            return err("not_authed");
        }
        if bearer != want_token {
            return err("invalid_auth");
        }
        let v: Value = if content_type.starts_with("application/json") {
            match serde_json::from_slice(body) {
                Ok(v) => v,
                Err(_) => return err("invalid_json"),
            }
        } else if body.is_empty() {
            json!({})
        } else {
            return err("invalid_form_data");
        };
        let mut st = self.state.lock().unwrap();
        st.calls.push(Call {
            method: method.to_string(),
            body: v.clone(),
        });
        if let Some(e) = st.fail.get(method) {
            return err(&e.clone());
        }
        let s = |k: &str| v.get(k).and_then(Value::as_str).filter(|s| !s.is_empty());
        match method {
            "chat.postMessage" | "chat.update" | "chat.postEphemeral" => {
                let Some(channel) = s("channel") else {
                    return err("channel_not_found");
                };
                if channel != CHANNEL {
                    return err("channel_not_found");
                }
                if s("text").is_none() && v.get("blocks").is_none() {
                    return err("no_text");
                }
                if let Some(b) = v.get("blocks") {
                    if let Err(e) = check_blocks(b) {
                        return json!({"ok": false, "error": "invalid_blocks", "errors": [e]});
                    }
                }
                match method {
                    "chat.postMessage" => {
                        if let Some(t) = s("thread_ts") {
                            if !st.messages.contains(t) {
                                return err("thread_not_found");
                            }
                        }
                        st.next_ts += 1;
                        let ts = format!("{}.000100", st.next_ts);
                        st.messages.insert(ts.clone());
                        json!({"ok": true, "channel": channel, "ts": ts, "message": {"text": v["text"], "ts": ts}})
                    }
                    "chat.update" => {
                        let Some(ts) = s("ts") else {
                            return err("message_not_found");
                        };
                        if !st.messages.contains(ts) {
                            return err("message_not_found");
                        }
                        json!({"ok": true, "channel": channel, "ts": ts, "text": v["text"]})
                    }
                    _ => {
                        if s("user").is_none() {
                            return err("user_not_in_channel");
                        }
                        json!({"ok": true, "message_ts": "1700000000.999999"})
                    }
                }
            }
            "views.open" => {
                if s("trigger_id").is_none() {
                    return err("invalid_trigger_id");
                }
                let view = &v["view"];
                if view["type"] != "modal" {
                    return err("invalid_arguments");
                }
                for k in ["title", "submit", "close"] {
                    let t = &view[k];
                    if k == "title" && t.is_null() {
                        return err("invalid_arguments");
                    }
                    if !t.is_null()
                        && (t["type"] != "plain_text"
                            || t["text"].as_str().map_or(0, |x| x.chars().count()) > 24)
                    {
                        return json!({"ok": false, "error": "invalid_arguments", "response_metadata": {"messages": [format!("{k} must be plain_text of at most 24 characters")]}});
                    }
                }
                if let Err(e) = check_blocks(&view["blocks"]) {
                    return json!({"ok": false, "error": "invalid_arguments", "response_metadata": {"messages": [e]}});
                }
                json!({"ok": true, "view": {"id": "V0STANDIN", "type": "modal", "callback_id": view["callback_id"], "private_metadata": view["private_metadata"]}})
            }
            "apps.connections.open" => {
                st.connections_opened += 1;
                json!({"ok": true, "url": st.ws_url})
            }
            _ => err("unknown_method"),
        }
    }
}

/// Slack's Block Kit rules that airlock could break: an array of at most 50 typed
/// blocks; header text plain_text of at most 150 characters; section text at most
/// 3000, at most 10 fields of at most 2000; unique action ids; button values of at
/// most 2000 characters.
fn check_blocks(b: &Value) -> Result<(), String> {
    let blocks = b.as_array().ok_or("blocks is not an array")?;
    if blocks.len() > 50 {
        return Err("more than 50 blocks".into());
    }
    let mut action_ids = HashSet::new();
    let len = |v: &Value| v["text"].as_str().map_or(0, |t| t.chars().count());
    for block in blocks {
        let kind = block["type"].as_str().ok_or("a block has no type")?;
        match kind {
            "header" => {
                if block["text"]["type"] != "plain_text" || len(&block["text"]) > 150 {
                    return Err("header must be plain_text of at most 150 characters".into());
                }
            }
            "section" => {
                if block["text"].is_null() && block["fields"].is_null() {
                    return Err("a section needs text or fields".into());
                }
                if !block["text"].is_null()
                    && (len(&block["text"]) == 0 || len(&block["text"]) > 3000)
                {
                    return Err("section text must be 1..3000 characters".into());
                }
                if let Some(f) = block["fields"].as_array() {
                    if f.len() > 10 || f.iter().any(|x| len(x) == 0 || len(x) > 2000) {
                        return Err("at most 10 fields of 1..2000 characters".into());
                    }
                }
            }
            "actions" => {
                let els = block["elements"]
                    .as_array()
                    .ok_or("actions without elements")?;
                for e in els {
                    let id = e["action_id"]
                        .as_str()
                        .ok_or("an element without action_id")?;
                    if !action_ids.insert(id.to_string()) {
                        return Err(format!("duplicate action_id {id}"));
                    }
                    if e["value"].as_str().map_or(0, str::len) > 2000 {
                        return Err("button value over 2000 characters".into());
                    }
                }
            }
            "context" => {
                if block["elements"].as_array().map_or(0, Vec::len) == 0 {
                    return Err("context without elements".into());
                }
            }
            "input" => {
                if block["element"].is_null() || block["label"].is_null() {
                    return Err("input needs label and element".into());
                }
            }
            "divider" => {}
            other => return Err(format!("unknown block type {other}")),
        }
    }
    Ok(())
}

/// One Socket Mode connection from airlock, seen from Slack's side.
pub struct SocketConn {
    to_airlock: mpsc::Sender<Value>,
    from_airlock: mpsc::Receiver<Value>,
}

impl SocketConn {
    /// Sends a frame (an envelope, `disconnect`).
    pub async fn send(&self, v: Value) {
        self.to_airlock.send(v).await.expect("socket closed");
    }

    /// Waits (30 s at most) until airlock closes the connection.
    pub async fn closed(&mut self) {
        let end = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            match tokio::time::timeout_at(end, self.from_airlock.recv()).await {
                Ok(None) => return,
                Ok(Some(_)) => continue,
                Err(_) => panic!("airlock kept the socket open for 30s"),
            }
        }
    }

    /// The next frame airlock sent (30 s at most).
    pub async fn recv(&mut self) -> Value {
        tokio::time::timeout(Duration::from_secs(30), self.from_airlock.recv())
            .await
            .expect("airlock sent nothing on the socket within 30s")
            .expect("airlock closed the socket")
    }
}

// ---- What Slack sends airlock: interactivity payloads, signed ----------------------

/// Slack's `block_actions` payload for a click on `action_id` (value `id`) by `user`.
pub fn click(user: &str, action_id: &str, id: &str) -> Value {
    json!({
        "type": "block_actions",
        "user": {"id": user, "username": user.to_lowercase(), "name": user.to_lowercase(), "team_id": TEAM},
        "api_app_id": APP,
        "token": "legacy-verification-token-ignored",
        "container": {"type": "message", "message_ts": "1700000001.000100", "channel_id": CHANNEL, "is_ephemeral": false},
        "trigger_id": format!("{}.{}.trigger", user, action_id),
        "team": {"id": TEAM, "domain": "example"},
        "enterprise": null,
        "is_enterprise_install": false,
        "channel": {"id": CHANNEL, "name": "approvals"},
        "response_url": "https://hooks.slack.com/actions/T0AIRLOCK/1/abc",
        "actions": [{
            "action_id": action_id,
            "block_id": "airlock_vote",
            "text": {"type": "plain_text", "text": "Approve", "emoji": true},
            "value": id,
            "type": "button",
            "action_ts": "1700000002.000200"
        }]
    })
}

/// Slack's `view_submission` payload for the reason modal `callback_id` of `id`.
pub fn submit(user: &str, callback_id: &str, id: &str, reason: &str) -> Value {
    json!({
        "type": "view_submission",
        "team": {"id": TEAM, "domain": "example"},
        "user": {"id": user, "username": user.to_lowercase(), "name": user.to_lowercase(), "team_id": TEAM},
        "api_app_id": APP,
        "token": "legacy-verification-token-ignored",
        "trigger_id": "3.4.trigger",
        "view": {
            "id": "V0STANDIN",
            "team_id": TEAM,
            "type": "modal",
            "callback_id": callback_id,
            "private_metadata": id,
            "state": {"values": {"airlock_reason": {"reason": {"type": "plain_text_input", "value": reason}}}},
            "hash": "1700000003.abc",
            "app_id": APP
        },
        "response_urls": []
    })
}

/// The form body Slack sends: `payload=<url-encoded JSON>`.
pub fn form(payload: &Value) -> String {
    form_urlencoded::Serializer::new(String::new())
        .append_pair("payload", &payload.to_string())
        .finish()
}

/// `v0=` HMAC-SHA256 of `v0:{ts}:{body}` with `secret`, as Slack signs.
pub fn sign(secret: &str, ts: impl std::fmt::Display, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("v0:{ts}:{body}").as_bytes());
    format!("v0={}", hex::encode(mac.finalize().into_bytes()))
}
