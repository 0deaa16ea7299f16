//! One request, top to bottom: prepare → decide → deny, hold or forward → exit hook.
//! This file only orders the phases; each lives in its own module.

use super::exit::{self, Passage};
use super::forward::forward;
use super::hold::hold;
use super::ProxyError;
use crate::approvals::Claim;
use crate::config::Mode;
use crate::http::body::{full, ProxyBody};
use crate::http::{AirlockError, Code};
use crate::identity::PeerCert;
use crate::request::{decide, prepare, Identify, Prepared, RequestRecord};
use crate::rules::Verdict;
use crate::state::{Airlock, Snapshot};
use crate::store::Approval;
use bytes::Bytes;
use http::request::Parts;
use http::{header, Request, Response};
use hyper::body::Incoming;
use std::net::SocketAddr;
use std::sync::Arc;

/// The connection a request arrived on.
#[derive(Debug, Clone)]
pub struct Peer {
    pub addr: SocketAddr,
    pub tls: bool,
    /// The client certificate the TLS handshake verified, read once per connection.
    pub cert: Option<Arc<PeerCert>>,
}

/// Handles one agent request; never fails (errors become JSON answers), and every
/// request, whatever path it takes, ends in the exit hook — also when the agent goes
/// away before the answer ([`exit::Gone`] records that).
pub async fn handle(
    airlock: Arc<Airlock>,
    req: Request<Incoming>,
    peer: Peer,
) -> Response<ProxyBody> {
    let snap = airlock.snapshot();
    let record = RequestRecord::new(airlock.next_request_id(), req.method().as_str());
    let mut gone = exit::Gone::new(airlock.clone(), snap.clone(), record);
    let next = phases(&airlock, &snap, req, &peer, &mut gone.record).await;
    let record = gone.disarm();
    match next {
        Next::Done(result) => exit::finish(&airlock, &snap, &record, result).await,
        Next::Approved(approved) => {
            // The upstream acts on an approval from here: the forward and its durable
            // `forwarded` event complete even if the agent goes away meanwhile.
            let forwards = airlock.forwards.clone();
            let task = forwards.spawn(async move {
                let Approved {
                    prepared,
                    parts,
                    body,
                    approval,
                    claim,
                } = *approved;
                // Settled by the exit hook from here (or by recovery).
                claim.started();
                let passage = Passage::Approved(Box::new(approval));
                let result = forward(&snap, &prepared, peer, parts, full(body), None, &record)
                    .await
                    .map(|r| (r, passage.clone()))
                    .map_err(|e| (e, Some(passage)));
                exit::finish(&airlock, &snap, &record, result).await
            });
            task.await.unwrap_or_else(|e| {
                tracing::error!(error = %e, "the forward of an approved request failed");
                AirlockError::new(
                    Code::UpstreamUnavailable,
                    "the approved request could not be forwarded",
                )
                .into_response()
            })
        }
    }
}

/// An approved request, ready to forward.
struct Approved {
    prepared: Prepared,
    parts: Parts,
    body: Bytes,
    approval: Approval,
    /// Given back if the forward never starts.
    claim: Claim,
}

/// Where the phases leave a request: done (answered, or forwarded as it came), or
/// approved and to be forwarded by a task of its own.
enum Next {
    Done(exit::PhasesResult),
    Approved(Box<Approved>),
}

/// The phases in order: prepare, decide, then deny, hold or forward.
async fn phases(
    airlock: &Airlock,
    snap: &Snapshot,
    mut req: Request<Incoming>,
    peer: &Peer,
    record: &mut RequestRecord,
) -> Next {
    let policy = &snap.policy;
    let on_upgrade = is_websocket_upgrade(&req).then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    let who = Identify::Credentials {
        peer: peer.addr.ip(),
        cert: peer.cert.as_deref(),
    };
    let refused = |e: ProxyError| Next::Done(Err((e, None)));
    let prepared = match prepare(policy, &mut parts, who, on_upgrade.is_some(), record).await {
        Ok(p) => p,
        Err(e) => return refused(e.into()),
    };
    let (decision, body) = match decide(policy, &prepared, &parts, body, record).await {
        Ok(d) => d,
        Err(e) => return refused(e.into()),
    };
    let passage = match (policy.cfg.mode, decision.verdict) {
        (_, Verdict::Allow) => Passage::Passed,
        (Mode::Observe, _) => Passage::Observed,
        (Mode::Enforce, Verdict::Deny) => {
            return refused(ProxyError::DeniedByRule {
                rules: record.rules.clone(),
                fail_closed: decision.fail_closed,
            })
        }
        (Mode::Enforce, Verdict::Approve) => {
            return match hold(airlock, snap, &prepared, parts, body, &decision, record).await {
                Ok((parts, body, approval, claim)) => Next::Approved(Box::new(Approved {
                    prepared,
                    parts,
                    body,
                    approval,
                    claim,
                })),
                Err(e) => refused(e),
            };
        }
    };
    if passage == Passage::Observed {
        tracing::warn!(request = %record.request_id, agent = %prepared.caller.id, verdict = decision.verdict.as_str(), rules = ?record.rules, "observe mode: forwarding a request enforce mode would {}", if decision.verdict == Verdict::Deny { "deny" } else { "hold" });
    }
    let result = forward(
        snap,
        &prepared,
        peer.clone(),
        parts,
        body.into_body(),
        on_upgrade,
        record,
    )
    .await
    .map(|r| (r, passage.clone()))
    .map_err(|e| (e, Some(passage)));
    Next::Done(result)
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
