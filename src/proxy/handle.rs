//! One request, top to bottom: route → identify → normalize → decide → forward,
//! deny or hold. Every answer airlock gives itself is an [`AirlockError`].

use super::body::{boxed, full, read_limited, Prefixed, ProxyBody, Read};
use super::forward::{rewrite_request_headers, rewrite_response, upstream_uri, ClientInfo};
use super::{demo, Snapshot};
use crate::airlock::Airlock;
use crate::approvals::{event_for, HoldRequest, Opened, Waited};
use crate::audit::AuditEvent;
use crate::config::{Mode, Target};
use crate::http::normalize::normalize_path;
use crate::http::{effective_method, AirlockError, Code};
use crate::identity::Caller;
use crate::proxy::route::request_host;
use crate::rules::{Body, Decision, RequestView, Verdict};
use bytes::Bytes;
use http::request::Parts;
use http::{header, HeaderMap, Request, Response};
use hyper::body::Incoming;
use sha2::{Digest, Sha256};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

/// The body as the proxy holds it after deciding.
enum Held {
    Stream(Incoming),
    Bytes(Bytes),
    Partial(VecDeque<Bytes>, Incoming),
}

impl Held {
    fn into_body(self) -> ProxyBody {
        match self {
            Held::Stream(b) => boxed(b),
            Held::Bytes(b) => full(b),
            Held::Partial(pre, rest) => boxed(Prefixed::new(pre, rest)),
        }
    }
}

/// Context of one request shared by the steps after routing.
struct Ctx<'a> {
    snap: &'a Snapshot,
    request_id: String,
    upstream: usize,
    path: String,
    host: Option<String>,
    peer: SocketAddr,
    tls: bool,
    caller: Caller,
    method: String,
}

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

/// SHA-256 binding a held request: method, upstream, URL, the forwarded headers that
/// matter (sorted), and the body.
pub fn request_digest(
    method: &str,
    upstream: &str,
    url: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> String {
    let mut h = Sha256::new();
    h.update(b"airlock-request-v1\n");
    for part in [method, upstream, url] {
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

impl Airlock {
    /// Handles one agent request; never fails (errors become JSON answers).
    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: SocketAddr,
        tls: bool,
    ) -> Response<ProxyBody> {
        let snap = self.snapshot();
        match self.proxy(&snap, req, peer, tls).await {
            Ok(r) => r,
            Err(e) => e.into_response(),
        }
    }

    fn event(&self, ctx: &Ctx<'_>, event: &str, parts: &Parts) -> AuditEvent {
        let mut ev = AuditEvent::new(event);
        ev.request_id = Some(ctx.request_id.clone());
        ev.agent = Some(ctx.caller.id.clone());
        ev.method = Some(ctx.method.clone());
        ev.upstream = Some(ctx.snap.cfg.upstreams[ctx.upstream].name.clone());
        ev.host = ctx.host.clone();
        ev.path = Some(shown_url(&ctx.path, parts.uri.query()));
        ev
    }

    async fn proxy(
        &self,
        snap: &Snapshot,
        mut req: Request<Incoming>,
        peer: SocketAddr,
        tls: bool,
    ) -> Result<Response<ProxyBody>, AirlockError> {
        let request_id = self.next_request_id();
        let host = request_host(req.uri(), req.headers())
            .map_err(|_| {
                AirlockError::new(
                    Code::BadRequest,
                    "the Host header and the request target name different hosts",
                )
            })?
            .map(str::to_string);
        let path = match normalize_path(req.uri().path()) {
            Ok(p) => p,
            Err(e) => {
                let mut ev = AuditEvent::new("bad_path");
                ev.request_id = Some(request_id);
                ev.method = Some(req.method().to_string());
                ev.host = host;
                ev.reason = Some(e.to_string());
                self.audit.record(ev);
                return Err(AirlockError::new(
                    Code::BadPath,
                    format!("the path cannot be normalized safely: {e}"),
                ));
            }
        };
        let Some((upstream, upath)) = snap.router.route(host.as_deref(), &path) else {
            return Err(AirlockError::new(
                Code::NoRoute,
                format!("no upstream is configured for {path}"),
            ));
        };
        let upath = upath.to_string();
        let on_upgrade = is_upgrade(&req).then(|| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();
        // Rules, digest and upstream all see the same headers: what the Connection
        // header names (and every other hop-by-hop header) goes before matching.
        crate::http::strip_hop_by_hop(&mut parts.headers, on_upgrade.is_some());
        let caller = match snap.agents.identify(&parts.headers, peer.ip()) {
            Ok(c) => c,
            Err(e) => {
                let mut ev = AuditEvent::new("unauthenticated");
                ev.request_id = Some(request_id);
                ev.method = Some(parts.method.to_string());
                ev.upstream = Some(snap.cfg.upstreams[upstream].name.clone());
                ev.host = host;
                ev.path = Some(shown_url(&upath, parts.uri.query()));
                ev.reason = Some(e.to_string());
                self.audit.record(ev);
                snap.metrics[upstream].unauthenticated.inc();
                return Err(AirlockError::new(
                    Code::Unauthenticated,
                    format!("{e}: send your airlock key as Authorization: Bearer <key>"),
                ));
            }
        };
        let method = effective_method(parts.method.as_str(), &parts.headers, parts.uri.query())?;
        let ctx = Ctx {
            snap,
            request_id,
            upstream,
            path: upath,
            host,
            peer,
            tls,
            caller,
            method,
        };
        let up = &snap.cfg.upstreams[upstream];

        // Decide, reading the body only if a remaining candidate rule inspects it.
        let (decision, held) = {
            let view = RequestView {
                upstream: &up.name,
                method: &ctx.method,
                path: &ctx.path,
                query: parts.uri.query(),
                headers: &parts.headers,
                agent: &ctx.caller.id,
            };
            // With a method override, the rules weigh the request line's method too.
            let head = snap
                .rules
                .head_with_line_method(&view, parts.method.as_str());
            let encoding = crate::http::content_encoding(&parts.headers);
            if snap.rules.needs_body(&head) {
                if encoding.is_some() {
                    (
                        snap.rules.finish(
                            head,
                            Body::Uninspectable("the body is compressed"),
                            None,
                        ),
                        Held::Stream(body),
                    )
                } else {
                    match read_body(
                        body,
                        snap.cfg.limits.inspect_body,
                        snap.cfg.limits.body_timeout,
                    )
                    .await?
                    {
                        Read::Complete(b) => {
                            let d = snap.rules.finish(head, Body::Bytes(&b), encoding);
                            (d, Held::Bytes(b))
                        }
                        Read::Over(pre, rest) => (
                            snap.rules.finish(
                                head,
                                Body::Uninspectable("the body is larger than limits.inspect_body"),
                                None,
                            ),
                            Held::Partial(pre, rest),
                        ),
                    }
                }
            } else {
                (
                    snap.rules.finish(head, Body::NotRead, encoding),
                    Held::Stream(body),
                )
            }
        };
        let verdict = decision.verdict;
        snap.metrics[upstream].verdict(verdict).inc();
        let rule_names = snap.rules.names(&decision.matched);

        if snap.cfg.mode == Mode::Observe && verdict != Verdict::Allow {
            tracing::warn!(request = %ctx.request_id, agent = %ctx.caller.id, verdict = verdict.as_str(), rules = ?rule_names, "observe mode: forwarding a request enforce mode would {}", if verdict == Verdict::Deny { "deny" } else { "hold" });
            let mut ev = self.event(&ctx, "observed", &parts);
            ev.rules = rule_names;
            ev.decision = Some(verdict.as_str().into());
            ev.reason = decision.fail_closed.map(str::to_string);
            self.audit.record(ev);
            return self
                .forward(&ctx, parts, held.into_body(), on_upgrade, None)
                .await;
        }
        match verdict {
            Verdict::Deny => {
                let mut ev = self.event(&ctx, "denied_by_rule", &parts);
                ev.rules = rule_names.clone();
                ev.reason = decision.fail_closed.map(str::to_string);
                self.audit.record(ev);
                let mut msg = format!("denied by rule {}", rule_names.join(", "));
                if let Some(why) = decision.fail_closed {
                    msg.push_str(&format!(" ({why}, so the rule applies)"));
                }
                Err(AirlockError::new(Code::DeniedByRule, msg).with_rules(rule_names))
            }
            Verdict::Approve => self.hold(&ctx, parts, held, &decision, rule_names).await,
            Verdict::Allow => {
                self.forward(&ctx, parts, held.into_body(), on_upgrade, None)
                    .await
            }
        }
    }

    /// Holds a request until it is decided, then forwards it once or refuses it.
    async fn hold(
        &self,
        ctx: &Ctx<'_>,
        mut parts: Parts,
        held: Held,
        decision: &Decision,
        rules: Vec<String>,
    ) -> Result<Response<ProxyBody>, AirlockError> {
        let snap = ctx.snap;
        let max = snap.cfg.limits.max_body;
        // The slot is taken before buffering, so max_held also bounds held memory.
        let slot = self.approvals.reserve(&ctx.caller.id).map_err(|why| {
            AirlockError::new(Code::TooManyHeld, format!("{why}; try again later"))
                .with_rules(rules.clone())
        })?;
        let too_large = || {
            AirlockError::new(
                Code::BodyTooLarge,
                format!("a request held for approval may carry at most {max} bytes"),
            )
            .with_rules(rules.clone())
        };
        let timeout = snap.cfg.limits.body_timeout;
        let body = match held {
            Held::Bytes(b) if b.len() <= max => b,
            Held::Bytes(_) => return Err(too_large()),
            Held::Stream(s) => match read_body(s, max, timeout).await? {
                Read::Complete(b) => b,
                Read::Over(..) => return Err(too_large()),
            },
            Held::Partial(pre, rest) => {
                match read_body(Prefixed::new(pre, rest), max, timeout).await? {
                    Read::Complete(b) => b,
                    Read::Over(..) => return Err(too_large()),
                }
            }
        };
        strip_agent_credential(snap, &mut parts.headers);
        let justification = parts
            .headers
            .get("x-airlock-justification")
            .and_then(|v| v.to_str().ok())
            .map(|s| s.chars().take(2000).collect::<String>());
        let up = &snap.cfg.upstreams[ctx.upstream];
        let url = with_query(&ctx.path, parts.uri.query());
        // With a method override both methods are bound and shown: "POST as DELETE".
        let method_label = if parts.method.as_str() == ctx.method {
            ctx.method.clone()
        } else {
            format!("{} as {}", parts.method, ctx.method)
        };
        let digest = request_digest(&method_label, &up.name, &url, &parts.headers, &body);
        let policy = decision
            .policy_rule
            .and_then(|i| snap.rules.rules[i].approval.clone())
            .ok_or_else(|| {
                AirlockError::new(Code::DeniedByRule, "no approval policy applies; refusing")
                    .with_rules(rules.clone())
            })?;
        let show = show_fields(&policy.show, &body);
        let hold = HoldRequest {
            request_id: ctx.request_id.clone(),
            agent: ctx.caller.id.clone(),
            owner: ctx.caller.owner.clone(),
            digest: digest.clone(),
            body_sha256: hex::encode(Sha256::digest(&body)),
            rules: rules.clone(),
            policy,
            method: method_label.clone(),
            upstream: up.name.clone(),
            host: ctx.host.clone(),
            url: shown_url(&ctx.path, parts.uri.query()),
            justification,
            show,
        };
        let approval = match self.approvals.open(hold).await? {
            Opened::Reused(a) => a,
            Opened::Waiting(ticket) => match self.approvals.wait(ticket, &self.shutdown).await? {
                Waited::Forward(a) => a,
                Waited::AlreadyUsed(a) => {
                    return Err(AirlockError::new(Code::Denied, "this approval was already used by an identical request; send the request again to ask anew")
                        .with_approval(a.id)
                        .with_rules(a.rules));
                }
                Waited::Denied(a) => {
                    let by = a.decided_by.clone().unwrap_or_else(|| "a reviewer".into());
                    return Err(AirlockError::new(Code::Denied, format!("denied by {by}"))
                        .with_approval(a.id)
                        .with_rules(a.rules)
                        .with_reason(a.reason));
                }
                Waited::Expired(a) => {
                    return Err(AirlockError::new(
                        Code::ApprovalExpired,
                        "nobody approved the request in time",
                    )
                    .with_approval(a.id)
                    .with_rules(a.rules));
                }
                Waited::ShuttingDown(a) => {
                    return Err(AirlockError::new(Code::ShuttingDown, "airlock is shutting down; the approval stays pending, retry the identical request later")
                        .with_approval(a.id)
                        .with_rules(a.rules));
                }
            },
        };
        drop(slot);
        // Digest checked again: only the exact request that was approved goes out.
        let again = request_digest(
            &method_label,
            &up.name,
            &with_query(&ctx.path, parts.uri.query()),
            &parts.headers,
            &body,
        );
        if again != approval.digest {
            tracing::error!(approval = %approval.id, "digest mismatch after approval; refusing to forward");
            return Err(AirlockError::new(
                Code::Denied,
                "the request does not match the approved request",
            )
            .with_approval(approval.id));
        }
        let id = approval.id.clone();
        let resp = self
            .forward(ctx, parts, full(body), None, Some(&approval))
            .await;
        resp.map(|mut r| {
            if let Ok(v) = http::HeaderValue::from_str(&id) {
                r.headers_mut().insert("x-airlock-approval-id", v);
            }
            r
        })
    }

    /// Sends a decided request upstream and streams the answer back.
    async fn forward(
        &self,
        ctx: &Ctx<'_>,
        mut parts: Parts,
        body: ProxyBody,
        on_upgrade: Option<hyper::upgrade::OnUpgrade>,
        approval: Option<&crate::store::Approval>,
    ) -> Result<Response<ProxyBody>, AirlockError> {
        let snap = ctx.snap;
        let up = &snap.cfg.upstreams[ctx.upstream];
        let version = parts.version;
        strip_agent_credential(snap, &mut parts.headers);
        rewrite_request_headers(
            &mut parts.headers,
            up,
            ClientInfo {
                ip: ctx.peer.ip(),
                host: ctx.host.as_deref(),
                tls: ctx.tls,
            },
            on_upgrade.is_some(),
            version,
        );
        parts.uri = upstream_uri(up, &ctx.path, parts.uri.query())?;
        parts.version = http::Version::HTTP_11;
        let audit_pass = approval.is_some() || self.audits_everything(snap);
        // The query is kept for the audit event: the request itself goes upstream.
        let audit_query = audit_pass.then(|| parts.uri.query().map(str::to_string));
        let req = Request::from_parts(parts, body);
        let started = Instant::now();
        let result = match &up.target {
            Target::Demo => Ok(demo::answer(req).await),
            Target::Http { .. } => match snap.clients[ctx.upstream].send(up, req).await {
                Ok(mut resp) => {
                    if let Some(client_up) = on_upgrade {
                        if resp.status() == http::StatusCode::SWITCHING_PROTOCOLS {
                            let upstream_up = hyper::upgrade::on(&mut resp);
                            tokio::spawn(async move {
                                if let (Ok(c), Ok(u)) = (client_up.await, upstream_up.await) {
                                    let mut c = hyper_util::rt::TokioIo::new(c);
                                    let mut u = hyper_util::rt::TokioIo::new(u);
                                    let _ = tokio::io::copy_bidirectional(&mut c, &mut u).await;
                                }
                            });
                        }
                    }
                    Ok(rewrite_response(resp))
                }
                Err(e) => Err(e),
            },
        };
        snap.metrics[ctx.upstream]
            .latency
            .observe(started.elapsed().as_secs_f64());
        if let Some(query) = audit_query {
            let status = match &result {
                Ok(r) => r.status().as_u16(),
                Err(e) => e.status().as_u16(),
            };
            let mut ev = match approval {
                Some(a) => event_for("forwarded", a),
                None => {
                    let mut ev = AuditEvent::new("passed");
                    ev.request_id = Some(ctx.request_id.clone());
                    ev.agent = Some(ctx.caller.id.clone());
                    ev.method = Some(ctx.method.clone());
                    ev.upstream = Some(up.name.clone());
                    ev.host = ctx.host.clone();
                    ev.path = Some(shown_url(&ctx.path, query.as_deref()));
                    ev
                }
            };
            ev.status = Some(status);
            if let Err(e) = &result {
                ev.reason = Some(e.message.clone());
            }
            if approval.is_some() {
                // An approved request's outcome is durable before the agent sees it.
                if let Err(e) = self.audit.append(ev).await {
                    tracing::error!(error = %e, "could not write the forwarded event to the audit log");
                }
            } else {
                self.audit.record(ev);
            }
        }
        result
    }
}

fn strip_agent_credential(snap: &Snapshot, headers: &mut HeaderMap) {
    if snap.agents.required() {
        snap.agents.strip_credentials(headers);
    }
}

/// Reads a body up to `limit` bytes within `timeout`.
async fn read_body<B>(
    body: B,
    limit: usize,
    timeout: std::time::Duration,
) -> Result<Read<B>, AirlockError>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<super::body::BoxError>,
{
    match tokio::time::timeout(timeout, read_limited(body, limit)).await {
        Err(_) => Err(AirlockError::new(
            Code::BodyTimeout,
            format!("the request body did not arrive within {timeout:?}"),
        )),
        Ok(Err(e)) => Err(AirlockError::new(
            Code::BadRequest,
            format!("could not read the request body: {e}"),
        )),
        Ok(Ok(r)) => Ok(r),
    }
}

/// A WebSocket handshake (the only upgrade airlock passes through: any other
/// protocol, h2c above all, would open a tunnel no rule could see into).
fn is_upgrade<B>(req: &Request<B>) -> bool {
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

/// The URL as reviewers and the audit log see it: query values that look like
/// credentials are replaced with `REDACTED` (the digest still binds the real ones).
fn shown_url(path: &str, query: Option<&str>) -> String {
    with_query(path, crate::http::redact_query(query).as_deref())
}

fn with_query(path: &str, query: Option<&str>) -> String {
    match query {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    }
}

/// The body fields a rule's `show` names, for reviewers (`None` when there are none).
fn show_fields(pointers: &[String], body: &[u8]) -> Option<serde_json::Value> {
    if pointers.is_empty() {
        return None;
    }
    let doc: serde_json::Value = serde_json::from_slice(body).ok()?;
    let mut out = serde_json::Map::new();
    for p in pointers {
        if let Some(v) = doc.pointer(p) {
            let v = match v {
                serde_json::Value::String(s) if s.len() > 500 => serde_json::Value::String(
                    format!("{}…", s.chars().take(500).collect::<String>()),
                ),
                other => other.clone(),
            };
            out.insert(p.clone(), v);
        }
    }
    Some(serde_json::Value::Object(out))
}
