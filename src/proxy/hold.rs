//! Holding a request for approval: take a held slot, buffer the body (up to
//! `limits.max_body`, counted against `limits.max_held_bytes`), bind the request to a
//! digest, open or join the approval (a new one only while the agent has fewer than
//! `limits.max_held_per_agent` pending), and wait for the decision. Only the exact
//! request that was approved comes out, once.

use super::ProxyError;
use crate::approvals::{
    new_approval_id, Claim, HoldError, HoldRequest, LimitReached, Opened, Waited,
};
use crate::http::body::BoxError;
use crate::request::record::with_query;
use crate::request::{Inspected, Prepared, RequestRecord};
use crate::rules::{ApprovalPolicy, Decision};
use crate::state::{Airlock, Snapshot};
use crate::store::Approval;
use bytes::Bytes;
use http::request::Parts;
use http::HeaderMap;
use sha2::{Digest, Sha256};

/// Headers never part of a request's digest: they differ between identical retries
/// or are added by airlock itself.
const VOLATILE: [&str; 13] = [
    "host",
    "content-length",
    "user-agent",
    "accept-encoding",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "via",
    "traceparent",
    "tracestate",
    "x-request-id",
    "x-airlock-justification",
    "date",
];

/// SHA-256 binding a held request: method, `upstream` (its name and the host the agent
/// named, forwarded as `X-Forwarded-Host`, which multi-tenant upstreams route by),
/// URL, the forwarded headers that matter (sorted), the body, and what it is held
/// under (`held_under`: the matched rules' requirements). An identical request the rules now judge differently (after
/// a reload added a rule) never joins or reuses an approval given under weaker ones.
pub fn request_digest(
    method: &str,
    upstream: &str,
    held_under: &str,
    url: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> String {
    let mut h = Sha256::new();
    h.update(b"airlock-request-v2\n");
    for part in [method, upstream, held_under, url] {
        h.update(part.as_bytes());
        h.update(b"\n");
    }
    let mut names: Vec<&str> = headers
        .keys()
        .map(|k| k.as_str())
        .filter(|k| {
            !VOLATILE.contains(k) && !crate::http::HOP_BY_HOP.contains(k) && *k != "upgrade"
        })
        .collect();
    names.sort_unstable();
    names.dedup();
    for n in names {
        for v in headers.get_all(n) {
            h.update(n.as_bytes());
            h.update(b": ");
            h.update(v.as_bytes());
            h.update(b"\n");
        }
    }
    h.update(b"\n");
    h.update(body);
    hex::encode(h.finalize())
}

/// Holds a request until it is decided. Returns the request to forward (credentials
/// stripped, body buffered) and the approval it was forwarded on.
pub async fn hold<B>(
    airlock: &Airlock,
    snap: &Snapshot,
    prepared: &Prepared,
    mut parts: Parts,
    body: Inspected<B>,
    decision: &Decision,
    record: &mut RequestRecord,
) -> Result<(Parts, Bytes, Approval, Claim), ProxyError>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    let policy = &snap.policy;
    let limits = &policy.cfg.limits;
    // The slot is taken before buffering, so max_held also bounds held memory.
    let slot = airlock
        .approvals
        .slots
        .reserve(&prepared.caller.id, snap.hold_limits())?;
    // Bytes not read yet are reserved before reading (limits.max_held_bytes); a body
    // read for inspection already carries its reservation.
    let reservation = match &body {
        Inspected::Bytes(_) => None,
        _ => Some(
            airlock
                .budget
                .reserve(limits.max_body, limits.max_held_bytes)
                .map_err(LimitReached::from)?,
        ),
    };
    let body = body
        .read_all(limits.max_body, limits.body_timeout)
        .await?
        .ok_or(ProxyError::BodyTooLarge {
            limit: limits.max_body,
        })?;
    let body = match reservation {
        Some(r) => r.attach(body),
        None => body,
    };
    strip_agent_credential(snap, &mut parts.headers);
    let justification = parts
        .headers
        .get("x-airlock-justification")
        .and_then(|v| v.to_str().ok())
        .map(|s| s.chars().take(2000).collect::<String>());
    let upstream = &policy.cfg.upstreams[prepared.upstream];
    let url = with_query(&prepared.path, parts.uri.query());
    // With a method override both methods are bound and shown: "POST as DELETE".
    let method = record.method_label().into_owned();
    let body_sha256 = hex::encode(Sha256::digest(&body));
    record.body_sha256 = Some(body_sha256.clone());
    // Every matched approve rule's approval must be satisfied.
    let approval_policy = ApprovalPolicy::combine(
        decision
            .policy_rules
            .iter()
            .filter_map(|&i| policy.rules.rules[i].approval.as_ref()),
    )
    .ok_or_else(|| ProxyError::NoPolicy {
        rules: record.rules.clone(),
    })?;
    let held_under = serde_json::to_string(&approval_policy.requirements()).unwrap_or_default();
    let target = format!(
        "{} {}",
        upstream.name,
        prepared.host.as_deref().unwrap_or("-")
    );
    let digest = request_digest(&method, &target, &held_under, &url, &parts.headers, &body);
    let content_type = parts
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let mut show = show_fields(&approval_policy.show, &body, content_type);
    // Reviewers are told when a rule matched without reading the body, or on a body
    // two parsers read differently: what they see is not the only reading.
    if let Some(why) = record.fail_closed {
        let note = format!("held because {why}; every reading of a field is shown");
        if let serde_json::Value::Object(m) = show.get_or_insert_with(|| serde_json::json!({})) {
            m.insert("note".into(), serde_json::Value::String(note));
        }
    }
    let request = HoldRequest {
        id: new_approval_id(),
        request_id: record.request_id.clone(),
        agent: prepared.caller.id.clone(),
        owner: prepared.caller.owner.clone(),
        digest: digest.clone(),
        body_sha256,
        rules: record.rules.clone(),
        policy: approval_policy,
        method: method.clone(),
        upstream: upstream.name.clone(),
        host: prepared.host.clone(),
        url: record.url.clone().unwrap_or_default(),
        justification,
        show,
        requester: prepared.caller.requester(prepared.client),
    };
    // Named before it exists: a request that ends while its hold is being opened is
    // recorded with the approval it was opening (or joining, set below).
    record.approval_id = Some(request.id.clone());
    // Pending approvals count against the agent's limit even once their client is gone.
    let opened = airlock
        .approvals
        .open_within(request, limits.max_held_per_agent)
        .await
        .map_err(|e| match e {
            HoldError::Limit(l) => ProxyError::TooManyHeld(l),
            e => ProxyError::Hold(e),
        })?;
    let (approval, claim) = match opened {
        Opened::Reused(a, claim) => (a, claim),
        Opened::OutcomeUnknown(a) => return Err(ProxyError::OutcomeUnknown(Box::new(a))),
        Opened::Waiting(ticket) => {
            record.approval_id = Some(ticket.approval.id.clone());
            match airlock.approvals.wait(ticket, &airlock.shutdown).await? {
                Waited::Forward(a, claim) => (a, claim),
                Waited::AlreadyUsed(a) => return Err(ProxyError::AlreadyUsed(Box::new(a))),
                Waited::Denied(a) => return Err(ProxyError::Denied(Box::new(a))),
                Waited::Expired(a) => return Err(ProxyError::Expired(Box::new(a))),
                Waited::ShuttingDown(a) => return Err(ProxyError::ShuttingDown(Box::new(a))),
            }
        }
    };
    record.approval_id = Some(approval.id.clone());
    drop(slot);
    // Digest checked again: only the exact request that was approved goes out.
    let again = request_digest(&method, &target, &held_under, &url, &parts.headers, &body);
    if again != approval.digest {
        tracing::error!(approval = %approval.id, "digest mismatch after approval; refusing to forward");
        return Err(ProxyError::DigestMismatch {
            approval_id: approval.id,
        });
    }
    Ok((parts, body, approval, claim))
}

/// Removes the agent's airlock credential (when agents are configured).
pub fn strip_agent_credential(snap: &Snapshot, headers: &mut HeaderMap) {
    if snap.policy.agents.required() {
        snap.policy.agents.strip_credentials(headers);
    }
}

/// The body fields a rule's `show` names, for reviewers (`None` when there are none).
/// Reviewers see what every upstream could read: a field that has several readings
/// (keys repeated, or equal but for case, as Go and ASP.NET bind them) is shown as
/// `{"ambiguous": [every reading]}`, and a form body is read through its fields.
fn show_fields(
    pointers: &[String],
    body: &[u8],
    content_type: Option<&str>,
) -> Option<serde_json::Value> {
    use crate::rules::json;
    if pointers.is_empty() {
        return None;
    }
    let doc = match json::parse(body) {
        Ok(doc) => doc,
        Err(_) => {
            let fields = crate::rules::params::pairs(body, false);
            let is_form = crate::rules::body::media_type_is_form(content_type);
            if !is_form || fields.is_empty() {
                return Some(serde_json::Value::Object(Default::default()));
            }
            json::from_fields(fields.iter().map(|(k, v)| (k.as_ref(), v.as_ref())))
        }
    };
    let shown = |v: &json::J| match json::to_value(v) {
        serde_json::Value::String(s) if s.len() > 500 => {
            serde_json::Value::String(format!("{}…", s.chars().take(500).collect::<String>()))
        }
        other => other,
    };
    let mut out = serde_json::Map::new();
    for p in pointers {
        let found = json::select(&doc.root, p, true);
        match found.as_slice() {
            [] => {}
            [one] => {
                out.insert(p.clone(), shown(one));
            }
            many => {
                let readings: Vec<serde_json::Value> = many.iter().map(|v| shown(v)).collect();
                out.insert(p.clone(), serde_json::json!({ "ambiguous": readings }));
            }
        }
    }
    Some(serde_json::Value::Object(out))
}
