//! The running service: the current [`Snapshot`] (config, rules, clients), the
//! approvals engine, the audit log and metrics, shared by the proxy and admin
//! listeners. [`Airlock::start`] wires them; [`crate::serve`] runs the listeners.

use crate::approvals::Approvals;
use crate::audit::{AuditEvent, AuditLog};
use crate::config::{AuditLevel, Config};
use crate::identity::Reviewers;
use crate::metrics::Metrics;
use crate::proxy::Snapshot;
use crate::rules::RuleSet;
use crate::store::Store;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use tokio_util::sync::CancellationToken;

/// Shared state of one airlock process.
pub struct Airlock {
    snapshot: RwLock<Arc<Snapshot>>,
    pub reviewers: RwLock<Arc<Reviewers>>,
    pub metrics: Arc<Metrics>,
    pub audit: AuditLog,
    pub approvals: Arc<Approvals>,
    pub store: Arc<dyn Store>,
    pub shutdown: CancellationToken,
    request_prefix: u32,
    request_seq: AtomicU64,
}

impl Airlock {
    pub fn new(
        snapshot: Snapshot,
        store: Arc<dyn Store>,
        audit: AuditLog,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> Arc<Airlock> {
        let reviewers = Arc::new(Reviewers::new(&snapshot.cfg.reviewers));
        let approvals = Approvals::new(
            store.clone(),
            audit.clone(),
            metrics.clone(),
            crate::approvals::HoldLimits {
                total: snapshot.cfg.limits.max_held,
                per_agent: snapshot.cfg.limits.max_held_per_agent,
            },
        );
        Arc::new(Airlock {
            snapshot: RwLock::new(Arc::new(snapshot)),
            reviewers: RwLock::new(reviewers),
            metrics,
            audit,
            approvals,
            store,
            shutdown,
            request_prefix: rand::random(),
            request_seq: AtomicU64::new(1),
        })
    }

    /// The config and rules in force.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        match self.snapshot.read() {
            Ok(s) => s.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// The reviewers in force.
    pub fn reviewers(&self) -> Arc<Reviewers> {
        match self.reviewers.read() {
            Ok(s) => s.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Puts a new config and rule set in force (the old one stays if building fails).
    pub fn reload(&self, cfg: Arc<Config>, rules: Arc<RuleSet>) -> Result<(), String> {
        let snap = Snapshot::new(cfg.clone(), rules, &self.metrics).map_err(|e| e.to_string())?;
        let reviewers = Arc::new(Reviewers::new(&cfg.reviewers));
        match self.snapshot.write() {
            Ok(mut s) => *s = Arc::new(snap),
            Err(p) => *p.into_inner() = Arc::new(snap),
        }
        match self.reviewers.write() {
            Ok(mut r) => *r = reviewers,
            Err(p) => *p.into_inner() = reviewers,
        }
        self.audit.record(AuditEvent::new("rules_reloaded"));
        Ok(())
    }

    /// A new request id, unique within this process and unlikely to repeat across restarts.
    pub fn next_request_id(&self) -> String {
        let n = self.request_seq.fetch_add(1, Ordering::Relaxed);
        format!("req_{:08x}{:08x}", self.request_prefix, n)
    }

    /// Whether a plain pass-through is audited.
    pub fn audits_everything(&self, snap: &Snapshot) -> bool {
        snap.cfg.audit.level == AuditLevel::All
    }
}
