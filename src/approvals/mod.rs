//! Holding requests for approval: the approval lifecycle, votes, expiry, and the
//! in-memory wake-up of parked requests.
//!
//! A parked request is a future waiting on a `watch` channel (no thread, no polling):
//! its memory is its buffered request plus a small constant. Every state change is a
//! compare-and-set in the [`Store`], so an approval is decided once and consumed once.
//! This module never forwards anything itself; it tells the proxy whether it may, and
//! it never lets an agent, or the agent's owner, approve the agent's own request.

use crate::audit::{AuditEvent, AuditLog};
use crate::config::Reviewer;
use crate::http::{AirlockError, Code};
use crate::identity::Reviewers;
use crate::metrics::Metrics;
use crate::rules::ApprovalPolicy;
use crate::store::{Approval, Decision, Status, Store, StoreError, Vote, VoteResult};
use chrono::{DateTime, Utc};
use dashmap::DashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How a decided approval ended, as told to parked requests.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Approved,
    Denied { reason: Option<String> },
    Expired,
}

/// Everything known about a request about to be held.
#[derive(Debug, Clone)]
pub struct HoldRequest {
    pub request_id: String,
    pub agent: String,
    pub owner: Option<String>,
    pub digest: String,
    pub body_sha256: String,
    pub rules: Vec<String>,
    pub policy: ApprovalPolicy,
    pub method: String,
    pub upstream: String,
    pub host: Option<String>,
    pub url: String,
    pub justification: Option<String>,
    pub show: Option<serde_json::Value>,
}

/// The result of opening a hold.
pub enum Opened {
    /// An earlier identical request was approved and its client went away: this
    /// request has consumed that approval and may be forwarded now.
    Reused(Approval),
    /// Parked until a decision.
    Waiting(Ticket),
}

/// A parked request's claim on an approval.
pub struct Ticket {
    pub approval: Approval,
    /// Whether this request joined an approval an identical request opened.
    pub joined: bool,
    rx: watch::Receiver<Option<Outcome>>,
}

/// How waiting ended.
pub enum Waited {
    /// Approved, and this request consumed the approval: forward it.
    Forward(Approval),
    /// Approved, but an identical request already used the approval.
    AlreadyUsed(Approval),
    Denied(Approval),
    Expired(Approval),
    ShuttingDown(Approval),
}

/// Counts held requests; releases its slot when dropped.
pub struct HeldSlot {
    approvals: Arc<Approvals>,
    agent: String,
}

impl Drop for HeldSlot {
    fn drop(&mut self) {
        let mut h = self
            .approvals
            .held
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        h.total = h.total.saturating_sub(1);
        if let Some(n) = h.by_agent.get_mut(&self.agent) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                h.by_agent.remove(&self.agent);
            }
        }
        self.approvals.metrics.held_now.dec();
    }
}

/// Held requests now, in all and per agent.
#[derive(Default)]
struct HeldCounts {
    total: usize,
    by_agent: std::collections::HashMap<String, usize>,
}

/// How many requests may be held at once.
#[derive(Debug, Clone, Copy)]
pub struct HoldLimits {
    /// `limits.max_held`.
    pub total: usize,
    /// `limits.max_held_per_agent`: one agent cannot take every slot.
    pub per_agent: usize,
}

/// Why a vote was refused.
#[derive(Debug, Clone, PartialEq)]
pub enum VoteError {
    NotFound,
    NotEligible,
    SelfApproval,
    AlreadyDecided(Status),
    AlreadyVoted,
    Store(String),
}

impl VoteError {
    pub fn into_error(self, id: &str) -> AirlockError {
        let e = match self {
            VoteError::NotFound => AirlockError::new(Code::NotFound, format!("no approval {id}")),
            VoteError::NotEligible => AirlockError::new(
                Code::NotEligible,
                "you are not an approver for the rule that held this request",
            ),
            VoteError::SelfApproval => AirlockError::new(
                Code::SelfApproval,
                "nobody may approve their own request (you are the agent or its owner)",
            ),
            VoteError::AlreadyDecided(s) => AirlockError::new(
                Code::AlreadyDecided,
                format!("approval is already {}", s.as_str()),
            ),
            VoteError::AlreadyVoted => AirlockError::new(
                Code::AlreadyVoted,
                "you have already voted on this approval",
            ),
            VoteError::Store(m) => AirlockError::new(
                Code::StoreUnavailable,
                format!("the store is unavailable: {m}"),
            ),
        };
        e.with_approval(id)
    }
}

/// The approvals engine.
pub struct Approvals {
    store: Arc<dyn Store>,
    audit: AuditLog,
    metrics: Arc<Metrics>,
    limits: std::sync::Mutex<HoldLimits>,
    held: std::sync::Mutex<HeldCounts>,
    waiters: DashMap<String, watch::Sender<Option<Outcome>>>,
}

fn new_approval_id() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyz23456789";
    let mut rng = rand::thread_rng();
    let s: String = (0..16)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect();
    format!("ap_{s}")
}

fn store_err(e: StoreError) -> AirlockError {
    tracing::error!(error = %e, "store unavailable");
    AirlockError::new(
        Code::StoreUnavailable,
        "the approval store is unavailable; the request was not forwarded",
    )
}

impl Approvals {
    pub fn new(
        store: Arc<dyn Store>,
        audit: AuditLog,
        metrics: Arc<Metrics>,
        limits: HoldLimits,
    ) -> Arc<Approvals> {
        Arc::new(Approvals {
            store,
            audit,
            metrics,
            limits: std::sync::Mutex::new(limits),
            held: std::sync::Mutex::new(HeldCounts::default()),
            waiters: DashMap::new(),
        })
    }

    pub fn set_limits(&self, limits: HoldLimits) {
        if let Ok(mut l) = self.limits.lock() {
            *l = limits;
        }
    }

    /// Takes a held slot for `agent`, or says which limit is reached.
    pub fn reserve(self: &Arc<Self>, agent: &str) -> Result<HeldSlot, String> {
        let limits = *self.limits.lock().unwrap_or_else(|p| p.into_inner());
        let mut h = self.held.lock().unwrap_or_else(|p| p.into_inner());
        if h.total >= limits.total {
            return Err(format!(
                "{} requests are held, the most allowed (limits.max_held)",
                h.total
            ));
        }
        let mine = h.by_agent.get(agent).copied().unwrap_or(0);
        if mine >= limits.per_agent {
            return Err(format!(
                "{agent} already has {mine} requests held (limits.max_held_per_agent)"
            ));
        }
        h.total += 1;
        *h.by_agent.entry(agent.to_string()).or_insert(0) += 1;
        drop(h);
        self.metrics.held_now.inc();
        Ok(HeldSlot {
            approvals: self.clone(),
            agent: agent.to_string(),
        })
    }

    fn subscribe(&self, id: &str) -> watch::Receiver<Option<Outcome>> {
        self.waiters
            .entry(id.to_string())
            .or_insert_with(|| watch::channel(None).0)
            .subscribe()
    }

    fn notify(&self, id: &str, outcome: Outcome) {
        if let Some((_, tx)) = self.waiters.remove(id) {
            tx.send_replace(Some(outcome));
        }
    }

    /// Opens a hold: joins an identical pending approval, consumes an identical
    /// approved one (within its `reuse` window), or creates a new approval. The
    /// `held` audit event is durable before this returns; if it cannot be written
    /// the approval is cancelled and the request refused.
    pub async fn open(&self, req: HoldRequest) -> Result<Opened, AirlockError> {
        let now = Utc::now();
        if let Some(existing) = self
            .store
            .find_active(&req.agent, &req.digest)
            .await
            .map_err(store_err)?
        {
            match existing.status {
                Status::Pending if existing.expires > now => {
                    let rx = self.subscribe(&existing.id);
                    let mut ticket = Ticket {
                        approval: existing,
                        joined: true,
                        rx,
                    };
                    self.refresh(&mut ticket).await.map_err(store_err)?;
                    return Ok(Opened::Waiting(ticket));
                }
                Status::Approved => {
                    let window_open = existing
                        .decided
                        .map(|d| {
                            d + chrono::Duration::from_std(existing.policy.reuse)
                                .unwrap_or_default()
                                >= now
                        })
                        .unwrap_or(false);
                    if window_open
                        && self
                            .store
                            .transition(&existing.id, Status::Approved, Status::Consumed, now, None)
                            .await
                            .map_err(store_err)?
                    {
                        return Ok(Opened::Reused(existing));
                    }
                }
                _ => {}
            }
        }
        let timeout =
            chrono::Duration::from_std(req.policy.timeout).unwrap_or(chrono::Duration::minutes(15));
        let approval = Approval {
            id: new_approval_id(),
            status: Status::Pending,
            agent: req.agent,
            owner: req.owner,
            digest: req.digest,
            body_sha256: req.body_sha256,
            rules: req.rules,
            policy: req.policy,
            method: req.method,
            upstream: req.upstream,
            host: req.host,
            url: req.url,
            justification: req.justification,
            show: req.show,
            request_id: req.request_id,
            created: now,
            expires: now + timeout,
            decided: None,
            decided_by: None,
            reason: None,
            consumed: None,
            votes: Vec::new(),
        };
        let rx = self.subscribe(&approval.id);
        if let Err(e) = self.store.insert_approval(&approval).await {
            self.waiters.remove(&approval.id);
            return Err(store_err(e));
        }
        let mut ev = event_for("held", &approval);
        ev.reason = approval.justification.clone();
        ev.show = approval.show.clone();
        if let Err(e) = self.audit_durable(ev).await {
            self.waiters.remove(&approval.id);
            let _ = self
                .store
                .transition(
                    &approval.id,
                    Status::Pending,
                    Status::Cancelled,
                    Utc::now(),
                    Some("audit log unavailable"),
                )
                .await;
            return Err(store_err(StoreError(e)));
        }
        tracing::info!(approval = %approval.id, agent = %approval.agent, rules = ?approval.rules, "request held for approval");
        Ok(Opened::Waiting(Ticket {
            approval,
            joined: false,
            rx,
        }))
    }

    async fn audit_durable(&self, ev: AuditEvent) -> Result<u64, String> {
        let started = std::time::Instant::now();
        let r = self.audit.append(ev).await.map_err(|e| e.to_string());
        self.metrics
            .audit_append
            .observe(started.elapsed().as_secs_f64());
        r
    }

    /// Re-reads a ticket's approval and turns a decision already made into an outcome.
    async fn refresh(&self, t: &mut Ticket) -> Result<(), StoreError> {
        if let Some(a) = self.store.approval(&t.approval.id).await? {
            let outcome = match a.status {
                Status::Approved | Status::Consumed => Some(Outcome::Approved),
                Status::Denied => Some(Outcome::Denied {
                    reason: a.reason.clone(),
                }),
                Status::Expired | Status::Cancelled => Some(Outcome::Expired),
                Status::Pending => None,
            };
            t.approval = a;
            if let Some(o) = outcome {
                self.notify(&t.approval.id, o);
            }
        }
        Ok(())
    }

    /// Parks until the approval is decided, expires, or airlock shuts down.
    pub async fn wait(
        &self,
        mut t: Ticket,
        shutdown: &CancellationToken,
    ) -> Result<Waited, AirlockError> {
        let started = std::time::Instant::now();
        let deadline = {
            let left = (t.approval.expires - Utc::now())
                .to_std()
                .unwrap_or(Duration::ZERO);
            tokio::time::Instant::now() + left
        };
        let outcome = loop {
            if let Some(o) = t.rx.borrow_and_update().clone() {
                break o;
            }
            tokio::select! {
                changed = t.rx.changed() => {
                    if changed.is_err() {
                        // The sender was replaced; read the truth from the store.
                        t.rx = self.subscribe(&t.approval.id);
                        self.refresh(&mut t).await.map_err(store_err)?;
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {
                    self.expire(&t.approval.id).await;
                    self.refresh(&mut t).await.map_err(store_err)?;
                }
                _ = shutdown.cancelled() => return Ok(Waited::ShuttingDown(t.approval)),
            }
        };
        self.metrics
            .hold_wait
            .observe(started.elapsed().as_secs_f64());
        let id = t.approval.id.clone();
        let approval = self
            .store
            .approval(&id)
            .await
            .map_err(store_err)?
            .unwrap_or(t.approval);
        Ok(match outcome {
            Outcome::Approved => {
                if self
                    .store
                    .transition(&id, Status::Approved, Status::Consumed, Utc::now(), None)
                    .await
                    .map_err(store_err)?
                {
                    Waited::Forward(approval)
                } else {
                    Waited::AlreadyUsed(approval)
                }
            }
            Outcome::Denied { .. } => Waited::Denied(approval),
            Outcome::Expired => Waited::Expired(approval),
        })
    }

    /// Expires a pending approval (once; the audit event is written by the winner).
    pub async fn expire(&self, id: &str) {
        match self
            .store
            .transition(id, Status::Pending, Status::Expired, Utc::now(), None)
            .await
        {
            Ok(true) => {
                self.metrics.decision("expired");
                if let Ok(Some(a)) = self.store.approval(id).await {
                    self.audit.record(event_for("expired", &a));
                }
                self.notify(id, Outcome::Expired);
            }
            Ok(false) => {}
            Err(e) => tracing::error!(error = %e, approval = id, "could not expire approval"),
        }
    }

    /// Expires overdue approvals every second (those whose clients went away).
    pub fn spawn_sweeper(
        self: &Arc<Self>,
        shutdown: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = shutdown.cancelled() => return,
                }
                match me.store.due(Utc::now()).await {
                    Ok(ids) => {
                        for id in ids {
                            me.expire(&id).await;
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "expiry sweep failed"),
                }
            }
        })
    }

    /// Casts a reviewer's vote.
    pub async fn vote(
        &self,
        id: &str,
        reviewer: &Reviewer,
        decision: Decision,
        reason: Option<String>,
    ) -> Result<Approval, VoteError> {
        let a = self
            .store
            .approval(id)
            .await
            .map_err(|e| VoteError::Store(e.0))?
            .ok_or(VoteError::NotFound)?;
        let refused = |why: String| {
            let mut ev = event_for("vote_refused", &a);
            ev.reviewer = Some(reviewer.id.clone());
            ev.reason = Some(why);
            ev
        };
        if let Err(e) = may_vote(reviewer, &a) {
            let why = match e {
                VoteError::SelfApproval => "self-approval",
                _ => "not an eligible approver",
            };
            self.audit.record(refused(why.into()));
            return Err(e);
        }
        match a.status {
            Status::Pending if a.votes.iter().any(|v| v.reviewer == reviewer.id) => {
                return Err(VoteError::AlreadyVoted)
            }
            Status::Pending if a.expires <= Utc::now() => {
                self.expire(id).await;
                return Err(VoteError::AlreadyDecided(Status::Expired));
            }
            Status::Pending => {}
            other => return Err(VoteError::AlreadyDecided(other)),
        }
        // The vote is in the audit log before it can take effect: a decision the log
        // does not show can never release a request.
        let mut ev = event_for("vote", &a);
        ev.reviewer = Some(reviewer.id.clone());
        ev.decision = Some(decision.as_str().into());
        ev.reason = reason.clone();
        self.audit_durable(ev).await.map_err(VoteError::Store)?;
        let now = Utc::now();
        let vote = Vote {
            reviewer: reviewer.id.clone(),
            decision,
            reason: reason.clone(),
            time: now,
        };
        let result = match self.store.vote(id, &vote, a.policy.quorum, now).await {
            Ok(r) => r,
            Err(e) => {
                self.audit.record(refused(format!("not recorded: {e}")));
                return Err(VoteError::Store(e.0));
            }
        };
        match result {
            VoteResult::NotFound => Err(VoteError::NotFound),
            VoteResult::AlreadyVoted => {
                self.audit.record(refused("already voted".into()));
                Err(VoteError::AlreadyVoted)
            }
            VoteResult::AlreadyDecided(Status::Expired) => {
                // This vote discovered the expiry: tell parked requests.
                self.audit
                    .record(refused("the approval had expired".into()));
                self.metrics.decision("expired");
                self.audit.record(event_for("expired", &a));
                self.notify(id, Outcome::Expired);
                Err(VoteError::AlreadyDecided(Status::Expired))
            }
            VoteResult::AlreadyDecided(s) => {
                self.audit
                    .record(refused(format!("already {}", s.as_str())));
                Err(VoteError::AlreadyDecided(s))
            }
            VoteResult::Recorded(status) => {
                self.metrics.vote(decision.as_str());
                if matches!(status, Status::Approved | Status::Denied) {
                    let word = if status == Status::Approved {
                        "approved"
                    } else {
                        "denied"
                    };
                    let mut ev = event_for(word, &a);
                    ev.reviewer = Some(reviewer.id.clone());
                    ev.reason = reason.clone();
                    if let Err(e) = self.audit_durable(ev).await {
                        // Fail closed: the store decided but the log cannot show it, so
                        // the decision is withdrawn and nothing is forwarded on it.
                        let _ = self
                            .store
                            .transition(
                                id,
                                status,
                                Status::Cancelled,
                                Utc::now(),
                                Some("the decision could not be written to the audit log"),
                            )
                            .await;
                        self.notify(
                            id,
                            Outcome::Denied {
                                reason: Some(
                                    "the decision could not be written to the audit log; ask again"
                                        .into(),
                                ),
                            },
                        );
                        return Err(VoteError::Store(e));
                    }
                    self.metrics.decision(word);
                    self.notify(
                        id,
                        if status == Status::Approved {
                            Outcome::Approved
                        } else {
                            Outcome::Denied { reason }
                        },
                    );
                }
                self.store
                    .approval(id)
                    .await
                    .map_err(|e| VoteError::Store(e.0))?
                    .ok_or(VoteError::NotFound)
            }
        }
    }
}

/// Whether `reviewer` may vote on `a` at all: never on their own request (as the agent
/// or its owner), and only when the rule's approvers name them.
pub fn may_vote(reviewer: &Reviewer, a: &Approval) -> Result<(), VoteError> {
    if reviewer.id == a.agent || a.owner.as_deref() == Some(reviewer.id.as_str()) {
        return Err(VoteError::SelfApproval);
    }
    if !Reviewers::eligible(reviewer, &a.policy.approvers) {
        return Err(VoteError::NotEligible);
    }
    Ok(())
}

/// An audit event describing an approval.
pub fn event_for(event: &str, a: &Approval) -> AuditEvent {
    let mut ev = AuditEvent::new(event);
    ev.request_id = Some(a.request_id.clone());
    ev.approval_id = Some(a.id.clone());
    ev.agent = Some(a.agent.clone());
    ev.rules = a.rules.clone();
    ev.method = Some(a.method.clone());
    ev.upstream = Some(a.upstream.clone());
    ev.host = a.host.clone();
    ev.path = Some(a.url.clone());
    ev.body_sha256 = Some(a.body_sha256.clone());
    ev
}

/// Seconds left before an approval expires (for listings).
pub fn seconds_left(a: &Approval, now: DateTime<Utc>) -> i64 {
    (a.expires - now).num_seconds().max(0)
}
