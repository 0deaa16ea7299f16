//! Forwarding a decided request: the agent's credential removed, the upstream's
//! headers and URI set, sent on the upstream's pooled client (or answered by the demo
//! upstream), and a WebSocket upgrade spliced through when the upstream agrees.

use super::handle::Peer;
use super::hold::strip_agent_credential;
use super::ProxyError;
use crate::config::Target;
use crate::http::body::ProxyBody;
use crate::request::{Prepared, RequestRecord};
use crate::state::Snapshot;
use crate::upstream::demo;
use crate::upstream::headers::{
    rewrite_request_headers, rewrite_response, upstream_uri, ClientInfo,
};
use http::request::Parts;
use http::{Request, Response};
use std::time::Instant;

/// Sends a decided request upstream and returns the upstream's response head (the
/// body streams on).
pub async fn forward(
    snap: &Snapshot,
    prepared: &Prepared,
    peer: Peer,
    mut parts: Parts,
    body: ProxyBody,
    on_upgrade: Option<hyper::upgrade::OnUpgrade>,
    record: &RequestRecord,
) -> Result<Response<ProxyBody>, ProxyError> {
    let up = &snap.policy.cfg.upstreams[prepared.upstream];
    let version = parts.version;
    strip_agent_credential(snap, &mut parts.headers);
    rewrite_request_headers(
        &mut parts.headers,
        up,
        ClientInfo {
            ip: peer.addr.ip(),
            host: prepared.host.as_deref(),
            tls: peer.tls,
        },
        on_upgrade.is_some(),
        version,
    );
    parts.uri = upstream_uri(up, &prepared.path, parts.uri.query())?;
    parts.version = http::Version::HTTP_11;
    let req = Request::from_parts(parts, body);
    let started = Instant::now();
    let result = match &up.target {
        Target::Demo => Ok(demo::answer(req).await),
        Target::Http { .. } => match snap.clients[prepared.upstream].send(up, req).await {
            Ok(mut resp) => {
                if let Some(client_side) = on_upgrade {
                    if resp.status() == http::StatusCode::SWITCHING_PROTOCOLS {
                        splice(client_side, hyper::upgrade::on(&mut resp));
                    }
                }
                Ok(rewrite_response(resp))
            }
            Err(e) => {
                tracing::warn!(request = %record.request_id, upstream = %up.name, cause = e.kind.as_str(), error = %e.cause, "upstream request failed");
                Err(e.into())
            }
        },
    };
    snap.metrics[prepared.upstream]
        .latency
        .observe(started.elapsed().as_secs_f64());
    result
}

/// Copies bytes both ways between an upgraded client and upstream connection.
fn splice(client: hyper::upgrade::OnUpgrade, upstream: hyper::upgrade::OnUpgrade) {
    tokio::spawn(async move {
        if let (Ok(c), Ok(u)) = (client.await, upstream.await) {
            let mut c = hyper_util::rt::TokioIo::new(c);
            let mut u = hyper_util::rt::TokioIo::new(u);
            let _ = tokio::io::copy_bidirectional(&mut c, &mut u).await;
        }
    });
}
