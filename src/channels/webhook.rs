//! A generic webhook: each approval lifecycle event POSTed to one URL as a CloudEvents
//! 1.0 event in structured mode (`application/cloudevents+json`), signed with
//! HMAC-SHA256 so the receiver can tell it came from this airlock and was not altered:
//! `X-Airlock-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.
//!
//! This module owns the event's shape ([`cloud_event`]) and the signature
//! ([`signature`], [`verify`]); the receiver's side is documented in the README (section "Webhook: signed CloudEvents").
//! It never decides or votes: a webhook only tells. Each delivery is signed afresh (a
//! retry carries a new `t`), and the event `id` stays the same across retries, so a
//! receiver can drop a duplicate (the outbox delivers at least once).

use super::{Channel, ChannelError, Notice};
use crate::audit::format_time;
use crate::config::WebhookConfig;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

/// The header carrying the signature.
pub const SIGNATURE_HEADER: &str = "X-Airlock-Signature";
/// The content type of a structured-mode CloudEvent in JSON.
pub const CONTENT_TYPE: &str = "application/cloudevents+json; charset=utf-8";
/// The prefix of every event `type` (`dev.airlock.approval.opened`, …).
pub const TYPE_PREFIX: &str = "dev.airlock.approval.";

/// POSTs lifecycle events to one URL.
pub struct WebhookChannel {
    cfg: WebhookConfig,
    client: reqwest::Client,
    /// `source` when no `admin.public_url` is configured: `urn:airlock:<host name>`.
    fallback_source: String,
}

impl WebhookChannel {
    /// A webhook channel posting to `cfg.url` with `client`.
    pub fn new(cfg: WebhookConfig, client: reqwest::Client) -> WebhookChannel {
        WebhookChannel {
            cfg,
            client,
            fallback_source: format!("urn:airlock:{}", host_name()),
        }
    }
}

/// This machine's host name (for the events' `source`), or `localhost`.
fn host_name() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .find_map(|p| {
            std::fs::read_to_string(p)
                .ok()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
        })
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| "localhost".to_string())
}

/// The event's `source`: `admin.public_url` when configured (read back from the
/// notice's link), else `fallback`.
fn source_of(notice: &Notice, fallback: &str) -> String {
    let suffix = format!("/approvals/{}", notice.approval.id);
    notice
        .link
        .as_deref()
        .and_then(|l| l.strip_suffix(&suffix))
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .unwrap_or_else(|| fallback.to_string())
}

/// What happened, as `data.event`: `kind` (the `type` suffix), the audit sequence
/// number and time, and the event's particulars (`reviewer`, `decision`, `reason`,
/// `channel` for a vote; `approved`, `by`, `reason` for a decision; the upstream's
/// `status` once forwarded; `to` for an escalation).
fn event_data(notice: &Notice) -> Value {
    let ev = &notice.event;
    let mut out = match serde_json::to_value(&ev.what) {
        Ok(Value::Object(m)) => m,
        _ => serde_json::Map::new(),
    };
    out.remove("type");
    out.insert("kind".into(), json!(ev.what.kind()));
    out.insert("seq".into(), json!(ev.seq));
    out.insert("time".into(), json!(format_time(&ev.time)));
    Value::Object(out)
}

/// The CloudEvents 1.0 structured-mode event for one notice. `source` is the airlock
/// it comes from; `id` is `<approval id>-<audit sequence number>`, unique per event
/// and the same on every retry.
pub fn cloud_event(notice: &Notice, source: &str) -> Value {
    let a = &notice.approval;
    let ev = &notice.event;
    let rules: Vec<Value> = notice
        .rules
        .iter()
        .map(|r| {
            json!({
                "name": r.name,
                "description": r.description,
                "progress": r.progress,
            })
        })
        .collect();
    let votes: Vec<Value> = a
        .votes
        .iter()
        .map(|v| {
            json!({
                "reviewer": v.reviewer,
                "decision": v.decision.as_str(),
                "reason": v.reason,
                "time": format_time(&v.time),
            })
        })
        .collect();
    let recent: Vec<Value> = notice
        .recent
        .iter()
        .map(|r| {
            json!({
                "id": r.id,
                "status": r.status,
                "by": r.by,
                "reason": r.reason,
                "when": r.when.as_ref().map(format_time),
            })
        })
        .collect();
    json!({
        "specversion": "1.0",
        "id": format!("{}-{}", a.id, ev.seq),
        "source": source,
        "type": format!("{TYPE_PREFIX}{}", ev.what.kind()),
        "subject": a.id,
        "time": format_time(&ev.time),
        "datacontenttype": "application/json",
        "data": {
            "id": a.id,
            "status": a.status.as_str(),
            "agent": a.agent,
            "owner": a.owner,
            "auth": notice.auth,
            "acting_for": a.requester.acting_for,
            "client": a.requester.client,
            "rules": rules,
            "method": a.method,
            "upstream": a.upstream,
            // As the API shows it: the path and query the upstream sees; `host` is
            // the host the agent called.
            "url": a.url,
            "host": a.host,
            "show": a.show,
            "justification": a.justification,
            "body_sha256": a.body_sha256,
            "request_id": a.request_id,
            "created": format_time(&a.created),
            "expires": format_time(&a.expires),
            "votes": votes,
            "decided": a.decided.as_ref().map(format_time),
            "decided_by": a.decided_by,
            "reason": a.reason,
            "link": notice.link,
            "recent": recent,
            "mention": notice.mention.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
            "event": event_data(notice),
        },
    })
}

/// The `X-Airlock-Signature` value for `body` sent at unix time `t`:
/// `t=<t>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.
pub fn signature(secret: &str, t: i64, body: &[u8]) -> String {
    format!("t={t},v1={}", hex::encode(mac(secret, t, body)))
}

fn mac(secret: &str, t: i64, body: &[u8]) -> Vec<u8> {
    // HMAC takes a key of any length.
    let mut m = match Hmac::<Sha256>::new_from_slice(secret.as_bytes()) {
        Ok(m) => m,
        Err(_) => return Vec::new(),
    };
    m.update(t.to_string().as_bytes());
    m.update(b".");
    m.update(body);
    m.finalize().into_bytes().to_vec()
}

/// Why a signature was refused by [`verify`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the signature header is malformed")]
    Malformed,
    #[error("the signature's timestamp is outside the allowed window")]
    Stale,
    #[error("the signature does not match the body")]
    Mismatch,
}

/// Checks an `X-Airlock-Signature` value against the raw `body` as a receiver should:
/// the timestamp within `window_secs` of `now` (unix seconds), and some `v1` equal to
/// the HMAC in constant time. For receivers written in Rust, and for airlock's tests.
pub fn verify(
    secret: &str,
    header: &str,
    body: &[u8],
    now: i64,
    window_secs: i64,
) -> Result<(), SignatureError> {
    let mut t: Option<i64> = None;
    let mut sigs: Vec<Vec<u8>> = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = Some(v.parse().map_err(|_| SignatureError::Malformed)?),
            Some(("v1", v)) => sigs.push(hex::decode(v).map_err(|_| SignatureError::Malformed)?),
            _ => {}
        }
    }
    let t = t.ok_or(SignatureError::Malformed)?;
    if sigs.is_empty() {
        return Err(SignatureError::Malformed);
    }
    if (now - t).abs() > window_secs {
        return Err(SignatureError::Stale);
    }
    let mut m =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).map_err(|_| SignatureError::Malformed)?;
    m.update(t.to_string().as_bytes());
    m.update(b".");
    m.update(body);
    let ok = sigs.iter().any(|s| m.clone().verify_slice(s).is_ok());
    if ok {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

#[async_trait::async_trait]
impl Channel for WebhookChannel {
    fn name(&self) -> &'static str {
        "webhook"
    }

    /// POSTs the notice's event. `2xx` delivers it; `408`, `429`, `5xx`, a timeout
    /// (`channels.webhook.timeout`) or a connection failure is retried by the
    /// dispatcher with back-off; any other answer is a permanent failure. Nothing is
    /// stored about the message (a webhook has none to update).
    async fn deliver(
        &self,
        notice: &Notice,
        _message: Option<&str>,
    ) -> Result<Option<String>, ChannelError> {
        let event = cloud_event(notice, &source_of(notice, &self.fallback_source));
        let body = serde_json::to_vec(&event)
            .map_err(|e| ChannelError::Permanent(format!("webhook: event not encoded: {e}")))?;
        let t = chrono::Utc::now().timestamp();
        let r = self
            .client
            .post(&self.cfg.url)
            .timeout(self.cfg.timeout)
            .header(reqwest::header::CONTENT_TYPE, CONTENT_TYPE)
            .header(SIGNATURE_HEADER, signature(&self.cfg.secret, t, &body))
            .body(body)
            .send()
            .await
            .map_err(|e| ChannelError::from_reqwest("webhook", e))?;
        let status = r.status();
        if status.is_success() {
            return Ok(None);
        }
        let text = r.text().await.unwrap_or_default();
        Err(ChannelError::from_status("webhook", status, &text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_and_a_changed_body_or_secret_does_not() {
        let body = br#"{"specversion":"1.0"}"#;
        let now = 1_700_000_000;
        let sig = signature("s3cret", now, body);
        assert!(sig.starts_with("t=1700000000,v1="));
        assert_eq!(verify("s3cret", &sig, body, now, 300), Ok(()));
        assert_eq!(
            verify("s3cret", &sig, br#"{"specversion":"1.1"}"#, now, 300),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify("other", &sig, body, now, 300),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify("s3cret", &sig, body, now + 301, 300),
            Err(SignatureError::Stale)
        );
        assert_eq!(
            verify("s3cret", "v1=00", body, now, 300),
            Err(SignatureError::Malformed)
        );
        // The timestamp is signed: moving it breaks the signature.
        let moved = sig.replace("t=1700000000", "t=1700000001");
        assert_eq!(
            verify("s3cret", &moved, body, now, 300),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn the_signature_is_hmac_sha256_over_t_dot_body() {
        // Computed independently: printf '%s' '42.{}' | openssl dgst -sha256 -hmac key
        assert_eq!(
            signature("key", 42, b"{}"),
            "t=42,v1=479f5fabf373d659ed01b17cee79df2e457070f7b1795243f56bb889e667bdf7"
        );
    }
}
