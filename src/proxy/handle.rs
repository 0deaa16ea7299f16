//! One request, top to bottom: prepare → decide → deny, hold or forward → exit hook.
//! This file only orders the phases; each lives in its own module.

use super::exit::{self, Passage};
use super::forward::forward;
use super::hold::hold;
use super::ProxyError;
use crate::config::Mode;
use crate::http::body::{full, ProxyBody};
use crate::request::{decide, prepare, Identify, RequestRecord};
use crate::rules::Verdict;
use crate::state::{Airlock, Snapshot};
use http::{header, Request, Response};
use hyper::body::Incoming;
use std::net::SocketAddr;
use std::sync::Arc;

/// The connection a request arrived on.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    pub addr: SocketAddr,
    pub tls: bool,
}

/// Handles one agent request; never fails (errors become JSON answers), and every
/// request, whatever path it takes, ends in the exit hook.
pub async fn handle(
    airlock: Arc<Airlock>,
    req: Request<Incoming>,
    peer: Peer,
) -> Response<ProxyBody> {
    let snap = airlock.snapshot();
    let mut record = RequestRecord::new(airlock.next_request_id(), req.method().as_str());
    let result = phases(&airlock, &snap, req, peer, &mut record).await;
    exit::finish(&airlock, &snap, &record, result).await
}

/// The phases in order. Returns the upstream's response and how it got there.
async fn phases(
    airlock: &Airlock,
    snap: &Snapshot,
    mut req: Request<Incoming>,
    peer: Peer,
    record: &mut RequestRecord,
) -> Result<(Response<ProxyBody>, Passage), (ProxyError, Option<Passage>)> {
    let policy = &snap.policy;
    let on_upgrade = is_websocket_upgrade(&req).then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    let who = Identify::Credentials {
        peer: peer.addr.ip(),
    };
    let prepared = prepare(policy, &mut parts, who, on_upgrade.is_some(), record)
        .map_err(|e| (e.into(), None))?;
    let (decision, body) = decide(policy, &prepared, &parts, body, record)
        .await
        .map_err(|e| (e.into(), None))?;
    let passage = match (policy.cfg.mode, decision.verdict) {
        (_, Verdict::Allow) => Passage::Passed,
        (Mode::Observe, _) => Passage::Observed,
        (Mode::Enforce, Verdict::Deny) => {
            return Err((
                ProxyError::DeniedByRule {
                    rules: record.rules.clone(),
                    fail_closed: decision.fail_closed,
                },
                None,
            ))
        }
        (Mode::Enforce, Verdict::Approve) => {
            let (parts, body, approval) =
                hold(airlock, snap, &prepared, parts, body, &decision, record)
                    .await
                    .map_err(|e| (e, None))?;
            let passage = Passage::Approved(Box::new(approval));
            return forward(snap, &prepared, peer, parts, full(body), None, record)
                .await
                .map(|r| (r, passage.clone()))
                .map_err(|e| (e, Some(passage)));
        }
    };
    if passage == Passage::Observed {
        tracing::warn!(request = %record.request_id, agent = %prepared.caller.id, verdict = decision.verdict.as_str(), rules = ?record.rules, "observe mode: forwarding a request enforce mode would {}", if decision.verdict == Verdict::Deny { "deny" } else { "hold" });
    }
    let body = body.into_body();
    forward(snap, &prepared, peer, parts, body, on_upgrade, record)
        .await
        .map(|r| (r, passage.clone()))
        .map_err(|e| (e, Some(passage)))
}

/// A WebSocket handshake (the only upgrade airlock passes through: any other
/// protocol, h2c above all, would open a tunnel no rule could see into).
fn is_websocket_upgrade<B>(req: &Request<B>) -> bool {
    req.version() == http::Version::HTTP_11
        && req.method() == http::Method::GET
        && req
            .headers()
            .get_all(header::UPGRADE)
            .iter()
            .map(|v| v.to_str().unwrap_or(""))
            .collect::<Vec<_>>()
            == ["websocket"]
        && req
            .headers()
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
}
