//! Slack Socket Mode, for an airlock Slack cannot reach: with `channels.slack.app_token`
//! (an app-level `xapp-…` token with `connections:write`), airlock asks
//! `apps.connections.open` for a WebSocket URL, connects, and receives interaction
//! payloads in envelopes (`{"envelope_id", "type": "interactive", "payload"}`). Each
//! envelope is acknowledged (`{"envelope_id"}`) and its payload handled exactly as the
//! interactivity URL's ([`interact`]); the WebSocket, opened with airlock's own app
//! token over TLS, vouches for it instead of a signature, and the vote's evidence is
//! the envelope id and the envelope's SHA-256.
//!
//! An envelope is acknowledged as soon as it is read, except a modal's submission,
//! whose acknowledgement carries the answer (errors shown under the reason) and so
//! waits for the vote, never longer than Slack's 3 seconds. `disconnect` (Slack
//! rotating the connection) reconnects at once with a fresh URL; errors reconnect
//! with back-off. The config in force is read again on every connection and checked
//! while connected, so a reload that changes or removes the token takes effect.
//! Never votes itself, and never runs when no app token is configured.

use super::interact::{self, sha256_hex, Answer};
use super::{api, web_client};
use crate::config::SlackConfig;
use crate::state::Airlock;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

/// How long `apps.connections.open` and the WebSocket handshake may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the config is looked at while connected (a reload may change it).
const CONFIG_CHECK: Duration = Duration::from_secs(2);
/// How long a modal submission may take before it is acknowledged without an answer.
const ANSWER_WITHIN: Duration = Duration::from_millis(2500);
/// The longest wait between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Why a connection ended.
enum End {
    Shutdown,
    /// Slack asked (`disconnect`), closed the socket, or the config changed.
    Reconnect,
}

/// Runs Socket Mode while `channels.slack.app_token` is configured, until `shutdown`.
pub fn spawn(airlock: Arc<Airlock>, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
    tokio::spawn(run(airlock, shutdown))
}

/// The Slack config when it asks for Socket Mode.
fn socket_config(airlock: &Airlock) -> Option<SlackConfig> {
    airlock
        .snapshot()
        .cfg()
        .channels
        .slack
        .clone()
        .filter(|s| s.app_token.is_some())
}

/// 1 s doubling to a minute, with jitter, after `failures` failed attempts in a row.
fn backoff(failures: u32) -> Duration {
    let base = Duration::from_secs(1u64 << failures.min(6)).min(MAX_BACKOFF);
    base + Duration::from_millis(rand::random::<u64>() % (base.as_millis() as u64 / 4 + 1))
}

async fn run(airlock: Arc<Airlock>, shutdown: CancellationToken) {
    let mut failures = 0u32;
    loop {
        let Some(cfg) = socket_config(&airlock) else {
            // Not in Socket Mode (now): look again after a reload.
            tokio::select! {
                _ = tokio::time::sleep(CONFIG_CHECK) => continue,
                _ = shutdown.cancelled() => return,
            }
        };
        match session(&airlock, &cfg, &shutdown).await {
            Ok(End::Shutdown) => return,
            Ok(End::Reconnect) => failures = 0,
            Err(e) => {
                failures += 1;
                let wait = backoff(failures - 1);
                tracing::warn!(error = %e, retry_in = ?wait, "Slack Socket Mode connection failed");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.cancelled() => return,
                }
            }
        }
    }
}

/// One WebSocket connection, from `apps.connections.open` to its end.
async fn session(
    airlock: &Arc<Airlock>,
    cfg: &SlackConfig,
    shutdown: &CancellationToken,
) -> Result<End, String> {
    let token = cfg.app_token.as_deref().unwrap_or_default();
    let no_arguments = json!({});
    let opened = tokio::select! {
        r = api::call(web_client(), &cfg.api_base, token, "apps.connections.open", &no_arguments, Some(CONNECT_TIMEOUT)) => r.map_err(|e| e.to_string())?,
        _ = shutdown.cancelled() => return Ok(End::Shutdown),
    };
    let url = opened
        .get("url")
        .and_then(Value::as_str)
        .ok_or("apps.connections.open answered no url")?
        .to_string();
    let (ws, _) = tokio::select! {
        r = tokio::time::timeout(CONNECT_TIMEOUT, tokio_tungstenite::connect_async(url.as_str())) => r
            .map_err(|_| "the Socket Mode WebSocket handshake timed out".to_string())?
            .map_err(|e| format!("Socket Mode WebSocket: {e}"))?,
        _ = shutdown.cancelled() => return Ok(End::Shutdown),
    };
    tracing::info!("Slack Socket Mode connected");
    let (mut sink, mut stream) = ws.split();
    // Acknowledgements that wait for a modal's vote come back through here.
    let (acks, mut acks_rx) = tokio::sync::mpsc::channel::<String>(64);
    let mut check = tokio::time::interval(CONFIG_CHECK);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => {
                let _ = sink.send(Message::Close(None)).await;
                return Ok(End::Shutdown);
            }
            _ = check.tick() => {
                if socket_config(airlock).as_ref() != Some(cfg) {
                    tracing::info!("channels.slack changed: reconnecting Socket Mode");
                    let _ = sink.send(Message::Close(None)).await;
                    return Ok(End::Reconnect);
                }
            }
            Some(ack) = acks_rx.recv() => {
                sink.send(Message::Text(ack)).await.map_err(|e| format!("Socket Mode ack: {e}"))?;
            }
            frame = stream.next() => {
                let text = match frame {
                    None => return Ok(End::Reconnect),
                    Some(Err(e)) => return Err(format!("Socket Mode WebSocket: {e}")),
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Close(_))) => return Ok(End::Reconnect),
                    // Pings are answered by tungstenite on the next write or read.
                    Some(Ok(_)) => continue,
                };
                match envelope(airlock, cfg, &text, &acks) {
                    Step::Ack(ack) => sink
                        .send(Message::Text(ack))
                        .await
                        .map_err(|e| format!("Socket Mode ack: {e}"))?,
                    Step::Reconnect => {
                        let _ = sink.send(Message::Close(None)).await;
                        return Ok(End::Reconnect);
                    }
                    Step::Nothing => {}
                }
            }
        }
    }
}

/// What one frame asks of the connection.
enum Step {
    /// Send this acknowledgement now.
    Ack(String),
    /// Slack asked for a new connection.
    Reconnect,
    Nothing,
}

/// Reads one frame: `hello`, `disconnect`, or an envelope to acknowledge and handle
/// (in a task of its own; a modal's acknowledgement is sent through `acks`).
fn envelope(
    airlock: &Arc<Airlock>,
    cfg: &SlackConfig,
    text: &str,
    acks: &tokio::sync::mpsc::Sender<String>,
) -> Step {
    let Ok(frame) = serde_json::from_str::<Value>(text) else {
        tracing::warn!("Socket Mode sent a frame that is not JSON; ignored");
        return Step::Nothing;
    };
    let kind = frame
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or_default();
    match kind {
        "hello" => {
            tracing::debug!("Slack Socket Mode: hello");
            return Step::Nothing;
        }
        "disconnect" => {
            let reason = frame
                .get("reason")
                .and_then(Value::as_str)
                .unwrap_or_default();
            tracing::info!(reason, "Slack Socket Mode: disconnect; reconnecting");
            return Step::Reconnect;
        }
        _ => {}
    }
    let Some(id) = frame
        .get("envelope_id")
        .and_then(Value::as_str)
        .map(str::to_string)
    else {
        return Step::Nothing;
    };
    if kind != "interactive" {
        // Events and slash commands are not airlock's: acknowledged so Slack stops
        // resending them.
        return Step::Ack(ack(&id, None));
    }
    let payload = frame.get("payload").cloned().unwrap_or(Value::Null);
    let evidence = json!({
        "socket_mode": true,
        "envelope_id": &id,
        "envelope_sha256": sha256_hex(text.as_bytes()),
    });
    let submission = payload.get("type").and_then(Value::as_str) == Some("view_submission");
    let (airlock, cfg) = (airlock.clone(), cfg.clone());
    if !submission {
        tokio::spawn(async move {
            if let Err(e) = interact::handle(&airlock, &cfg, &payload, evidence).await {
                tracing::warn!(error = %e, "Slack interaction refused");
            }
        });
        return Step::Ack(ack(&id, None));
    }
    let acks = acks.clone();
    tokio::spawn(async move {
        let work =
            tokio::spawn(async move { interact::handle(&airlock, &cfg, &payload, evidence).await });
        let answer = match tokio::time::timeout(ANSWER_WITHIN, work).await {
            Ok(Ok(Ok(Answer::Payload(p)))) => Some(p),
            Ok(Ok(Err(e))) => {
                tracing::warn!(error = %e, "Slack interaction refused");
                None
            }
            _ => None,
        };
        let _ = acks.send(ack(&id, answer)).await;
    });
    Step::Nothing
}

/// The acknowledgement of envelope `id`, with a response `payload` if any.
fn ack(id: &str, payload: Option<Value>) -> String {
    let mut a = json!({"envelope_id": id});
    if let Some(p) = payload {
        a["payload"] = p;
    }
    a.to_string()
}
