//! The audit event record, its canonical form, hashing and JSONL encoding.

use std::io::BufRead;

use chrono::{DateTime, SubsecRound, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::AuditError;

/// One audit record. Only chosen, non-secret fields: see the module docs.
///
/// `seq`, `prev_hash` and `hash` are set by [`super::Chain::seal`] (the writer does it);
/// whatever the caller puts there is overwritten.
///
/// Unknown fields are rejected when parsing, so a field injected into an exported line
/// (which the hash would not cover) makes the line unreadable instead of silently ignored.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct AuditEvent {
    pub seq: u64,
    /// Serialized as RFC 3339 UTC with microseconds and `Z` (see [`format_time`]).
    #[serde(with = "time_serde")]
    pub time: DateTime<Utc>,
    pub event: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub request_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub approval_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub agent: Option<String>,
    /// How the agent authenticated (`key`, `jwt`, `mtls`, `none`); absent on events
    /// older than identities, so they hash as before.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub auth: Option<String>,
    /// The person the agent acted for, from its token.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub acting_for: Option<String>,
    /// The client's address.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub client: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub reviewer: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub rules: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub method: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub upstream: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub host: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub body_sha256: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub reason: Option<String>,
    /// Response body bytes the upstream delivered, on the outcome of a request whose
    /// response head came back (absent elsewhere, so older events hash as before).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub decision: Option<String>,
    /// Body fields chosen by the matching rule's `show` (never the whole body).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub show: Option<Value>,
    /// Where a vote came from (`api`, `slack`, `teams`, `console`); absent elsewhere,
    /// so older events hash as before.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub channel: Option<String>,
    /// Evidence and particulars: for a vote from chat, the SHA-256 of the signed
    /// callback and its signature headers; for an escalation, who was added (`to`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub detail: Option<Value>,
    pub prev_hash: String,
    pub hash: String,
}

impl AuditEvent {
    /// A new event of kind `event` stamped with the current time (microsecond precision).
    /// Set the other fields directly; `seq`/`prev_hash`/`hash` are filled in when sealed.
    pub fn new(event: &str) -> Self {
        AuditEvent {
            time: Utc::now().trunc_subsecs(6),
            event: event.to_string(),
            ..Default::default()
        }
    }

    /// Normalizes the event so that it is byte-for-byte what a reader will parse back:
    /// time truncated to microseconds, `show` brought to a JSON text fixpoint (serde_json's
    /// default float parser is not guaranteed to round-trip every float exactly).
    pub(crate) fn normalize(&mut self) {
        self.time = self.time.trunc_subsecs(6);
        self.show = self.show.take().map(fixpoint);
        self.detail = self.detail.take().map(fixpoint);
    }
}

/// A JSON value brought to the fixpoint of printing and parsing it back.
fn fixpoint(mut v: Value) -> Value {
    for _ in 0..4 {
        let text = v.to_string();
        match serde_json::from_str::<Value>(&text) {
            Ok(back) if back == v => break,
            Ok(back) => v = back,
            Err(_) => break,
        }
    }
    v
}

/// Formats a time exactly as audit events store it: `2024-05-01T12:00:00.123456Z`.
pub fn format_time(t: &DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

/// Parses any RFC 3339 time (any offset) into UTC.
pub fn parse_time(s: &str) -> Result<DateTime<Utc>, AuditError> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| AuditError::Parse(format!("invalid time {s:?}: {e}")))
}

pub(crate) mod time_serde {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_time(t))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let s = String::deserialize(d)?;
        super::parse_time(&s).map_err(serde::de::Error::custom)
    }
}

/// The event as canonical JSON without `hash`: keys sorted lexicographically (also inside
/// `show`), no whitespace, absent optional fields omitted. Sorting is done here, so the
/// result does not depend on serde_json's `preserve_order` feature.
pub fn canonical_json(ev: &AuditEvent) -> String {
    let mut out = String::with_capacity(256);
    match serde_json::to_value(ev) {
        Ok(Value::Object(mut map)) => {
            map.remove("hash");
            write_canonical(&Value::Object(map), &mut out);
        }
        // Unreachable: the struct always serializes to an object with string keys.
        Ok(other) => write_canonical(&other, &mut out),
        Err(e) => {
            tracing::error!(error = %e, "audit event did not serialize");
        }
    }
    out
}

fn write_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write_canonical(&map[k], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// `lowercase hex( sha256( prev_hash as ASCII || canonical_json(ev) ) )`.
/// The `prev_hash` argument is used, not `ev.prev_hash` (they are equal for a sealed event).
pub fn compute_hash(prev_hash: &str, ev: &AuditEvent) -> String {
    let mut h = Sha256::new();
    h.update(prev_hash.as_bytes());
    h.update(canonical_json(ev).as_bytes());
    hex::encode(h.finalize())
}

/// One JSONL line (no trailing newline): the full event including `hash`, keys sorted.
pub fn to_jsonl_line(ev: &AuditEvent) -> String {
    match serde_json::to_value(ev) {
        Ok(v) => {
            let mut out = String::with_capacity(320);
            write_canonical(&v, &mut out);
            out
        }
        Err(e) => {
            tracing::error!(error = %e, "audit event did not serialize");
            String::new()
        }
    }
}

/// Reads the events of a JSONL export or copy (one event per line; blank lines and
/// checkpoint lines skipped). Does not verify.
pub fn read_jsonl(reader: impl BufRead) -> Result<Vec<AuditEvent>, AuditError> {
    let mut events = Vec::new();
    for (i, line) in reader.lines().enumerate() {
        let line = line?;
        let trimmed = line.trim();
        if trimmed.is_empty() {
            continue;
        }
        match serde_json::from_str::<AuditEvent>(trimmed) {
            Ok(ev) => events.push(ev),
            // Checkpoint lines of a JSONL copy are not events.
            Err(_) if super::Checkpoint::from_jsonl_line(trimmed.as_bytes()).is_ok() => {}
            Err(e) => return Err(AuditError::Parse(format!("line {}: {e}", i + 1))),
        }
    }
    Ok(events)
}
