//! A webhook receiver for airlock's signed CloudEvents, on 127.0.0.1:0: it checks each
//! delivery exactly as the README tells users to (the `X-Airlock-Signature`
//! timestamp within 5 minutes, the HMAC-SHA256 of `"<t>.<raw body>"` compared in
//! constant time) and records what it got. It can be told to answer `500` for a while,
//! as a receiver that is down.

#![allow(dead_code)]

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use hmac::{Hmac, Mac};
use serde_json::Value;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How far a signature's timestamp may be from now.
pub const TOLERANCE_SECS: i64 = 300;

/// Why a delivery's signature was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    Missing,
    Malformed,
    Stale,
    Mismatch,
}

/// Verifies an `X-Airlock-Signature` value against the raw body, as the README
/// says: parse `t=` and `v1=`, refuse a timestamp more than 5 minutes from `now`,
/// recompute HMAC-SHA256(secret, "<t>.<body>") and compare in constant time.
pub fn verify(secret: &[u8], header: Option<&str>, body: &[u8], now: i64) -> Result<(), Refused> {
    let header = header.ok_or(Refused::Missing)?;
    let mut t = None;
    let mut v1 = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = Some(v.parse::<i64>().map_err(|_| Refused::Malformed)?),
            Some(("v1", v)) => v1.push(hex::decode(v).map_err(|_| Refused::Malformed)?),
            _ => {}
        }
    }
    let t = t.ok_or(Refused::Malformed)?;
    if v1.is_empty() {
        return Err(Refused::Malformed);
    }
    if (now - t).abs() > TOLERANCE_SECS {
        return Err(Refused::Stale);
    }
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret).unwrap();
    mac.update(format!("{t}.").as_bytes());
    mac.update(body);
    // verify_slice compares in constant time.
    if v1.iter().any(|s| mac.clone().verify_slice(s).is_ok()) {
        Ok(())
    } else {
        Err(Refused::Mismatch)
    }
}

/// One POST the receiver got.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub content_type: Option<String>,
    pub signature: Option<String>,
    pub raw: Bytes,
    pub event: Value,
    pub verified: Result<(), Refused>,
    /// Whether it was answered 2xx (the receiver was up and the signature good).
    pub accepted: bool,
}

struct Shared {
    secret: Vec<u8>,
    down: AtomicBool,
    refused_while_down: AtomicUsize,
    deliveries: Mutex<Vec<Delivery>>,
    changed: tokio::sync::watch::Sender<usize>,
}

/// The running receiver.
pub struct Receiver {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

async fn hook(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let header = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let signature = header("x-airlock-signature");
    let verified = verify(
        &s.secret,
        signature.as_deref(),
        &body,
        chrono::Utc::now().timestamp(),
    );
    let down = s.down.load(Ordering::SeqCst);
    let status = if down {
        s.refused_while_down.fetch_add(1, Ordering::SeqCst);
        StatusCode::INTERNAL_SERVER_ERROR
    } else if verified.is_err() {
        StatusCode::UNAUTHORIZED
    } else {
        StatusCode::NO_CONTENT
    };
    let d = Delivery {
        content_type: header("content-type"),
        signature,
        event: serde_json::from_slice(&body).unwrap_or(Value::Null),
        raw: body,
        verified,
        accepted: status.is_success(),
    };
    s.deliveries.lock().unwrap().push(d);
    s.changed.send_modify(|n| *n += 1);
    status
}

impl Receiver {
    /// Starts a receiver checking signatures with `secret`.
    pub async fn start(secret: &str) -> Receiver {
        let shared = Arc::new(Shared {
            secret: secret.as_bytes().to_vec(),
            down: AtomicBool::new(false),
            refused_while_down: AtomicUsize::new(0),
            deliveries: Mutex::new(Vec::new()),
            changed: tokio::sync::watch::channel(0).0,
        });
        let app = axum::Router::new()
            .route("/hooks/airlock", axum::routing::post(hook))
            .with_state(shared.clone());
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
        Receiver { addr, shared }
    }

    /// The URL to configure as `channels.webhook.url`.
    pub fn url(&self) -> String {
        format!("http://{}/hooks/airlock", self.addr)
    }

    /// Answers `500` to everything while `down`.
    pub fn set_down(&self, down: bool) {
        self.shared.down.store(down, Ordering::SeqCst);
    }

    /// Deliveries answered `500` because the receiver was down.
    pub fn refused_while_down(&self) -> usize {
        self.shared.refused_while_down.load(Ordering::SeqCst)
    }

    /// Every POST so far.
    pub fn deliveries(&self) -> Vec<Delivery> {
        self.shared.deliveries.lock().unwrap().clone()
    }

    /// The events accepted (answered 2xx), in arrival order.
    pub fn accepted(&self) -> Vec<Value> {
        self.deliveries()
            .into_iter()
            .filter(|d| d.accepted)
            .map(|d| d.event)
            .collect()
    }

    /// The accepted events about approval `id`, in arrival order.
    pub fn events_of(&self, id: &str) -> Vec<Value> {
        self.accepted()
            .into_iter()
            .filter(|e| e["subject"] == id)
            .collect()
    }

    /// Waits (30 s at most) until `f` finds what it wants in the deliveries so far;
    /// woken by each delivery, no polling.
    pub async fn wait_for<T>(&self, what: &str, f: impl Fn(&[Delivery]) -> Option<T>) -> T {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let mut rx = self.shared.changed.subscribe();
        loop {
            rx.borrow_and_update();
            if let Some(v) = f(&self.deliveries()) {
                return v;
            }
            if tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_err()
            {
                let got: Vec<String> = self
                    .deliveries()
                    .iter()
                    .map(|d| {
                        format!(
                            "{} {} accepted={}",
                            d.event["type"], d.event["subject"], d.accepted
                        )
                    })
                    .collect();
                panic!(
                    "the webhook receiver got no {what} within 30s; it got:\n{}",
                    got.join("\n")
                );
            }
        }
    }

    /// Waits for an accepted event of `kind` (`opened`, `vote`, …) about approval `id`.
    pub async fn wait_event(&self, id: &str, kind: &str) -> Value {
        let ty = format!("dev.airlock.approval.{kind}");
        self.wait_for(&format!("{kind} event for {id}"), |ds| {
            ds.iter()
                .filter(|d| d.accepted)
                .find(|d| d.event["subject"] == id && d.event["type"] == ty.as_str())
                .map(|d| d.event.clone())
        })
        .await
    }

    /// Checks every delivery so far carried a valid signature and the CloudEvents
    /// content type.
    #[track_caller]
    pub fn assert_all_signed(&self) {
        for d in self.deliveries() {
            assert_eq!(
                d.verified,
                Ok(()),
                "signature of {} ({:?})",
                d.event["id"],
                d.signature
            );
            assert_eq!(
                d.content_type.as_deref(),
                Some("application/cloudevents+json; charset=utf-8")
            );
        }
    }
}

/// The kinds (`opened`, `vote`, …) of `events`, in order.
pub fn kinds(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| {
            e["type"]
                .as_str()
                .unwrap_or_default()
                .trim_start_matches("dev.airlock.approval.")
                .to_string()
        })
        .collect()
}
