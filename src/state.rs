//! The running service's shared state: the [`Snapshot`] in force (policy, upstream
//! clients, metric handles), swapped whole and atomically on reload, and the engines
//! every request shares (approvals, audit log, store, metrics).
//!
//! A reload builds the complete new snapshot first; nothing is applied unless all of
//! it is good, and a request sees either the old snapshot or the new one, never a mix.

use crate::approvals::{Approvals, HoldLimits};
use crate::audit::{AuditEvent, AuditLog};
use crate::config::{AuditLevel, Config, Diagnostics};
use crate::http::budget::ByteBudget;
use crate::metrics::{Metrics, UpstreamMetrics};
use crate::request::Policy;
use crate::rules::RuleSet;
use crate::store::Store;
use crate::upstream::{ClientError, UpstreamClient};
use arc_swap::ArcSwap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Everything derived from one config and rules load. Swapped whole on reload.
pub struct Snapshot {
    pub policy: Policy,
    /// Pooled clients, in `cfg.upstreams` order.
    pub clients: Vec<UpstreamClient>,
    /// Metric handles per upstream, in `cfg.upstreams` order.
    pub metrics: Vec<UpstreamMetrics>,
}

impl Snapshot {
    /// Builds a snapshot; clients of upstreams unchanged since `previous` keep their
    /// connection pools.
    pub fn new(
        cfg: Arc<Config>,
        rules: Arc<RuleSet>,
        metrics: &Metrics,
        previous: Option<&Snapshot>,
    ) -> Result<Snapshot, ClientError> {
        let clients = cfg
            .upstreams
            .iter()
            .map(|u| {
                let kept = previous.and_then(|p| {
                    p.policy
                        .cfg
                        .upstreams
                        .iter()
                        .zip(&p.clients)
                        .find(|(o, c)| c.serves(o, u))
                        .map(|(_, c)| c.clone())
                });
                match kept {
                    Some(c) => Ok(c),
                    None => UpstreamClient::new(u),
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Snapshot {
            metrics: cfg
                .upstreams
                .iter()
                .map(|u| metrics.for_upstream(&u.name))
                .collect(),
            clients,
            policy: Policy::new(cfg, rules),
        })
    }

    /// The config in force.
    pub fn cfg(&self) -> &Config {
        &self.policy.cfg
    }

    /// The hold limits in force.
    pub fn hold_limits(&self) -> HoldLimits {
        HoldLimits {
            total: self.policy.cfg.limits.max_held,
            per_agent: self.policy.cfg.limits.max_held_per_agent,
        }
    }

    /// Whether a plain pass-through is audited.
    pub fn audits_everything(&self) -> bool {
        self.policy.cfg.audit.level == AuditLevel::All
    }
}

/// Why a reload was refused (the running configuration stays in force).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The config file has errors.
    #[error("{0}")]
    Config(Diagnostics),
    /// A rules file has errors.
    #[error("{0}")]
    Rules(Diagnostics),
    /// An upstream client could not be built (a bad `ca:` file).
    #[error("{0}")]
    Client(#[from] ClientError),
}

/// What a reload changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadReport {
    /// Number of rules now in force.
    pub rules: usize,
    pub rules_version: String,
    pub rules_added: Vec<String>,
    pub rules_removed: Vec<String>,
    pub rules_changed: Vec<String>,
    pub upstreams_added: Vec<String>,
    pub upstreams_removed: Vec<String>,
    pub upstreams_changed: Vec<String>,
    /// Settings that only a restart applies (listeners, store, workers).
    pub needs_restart: Vec<&'static str>,
    /// Warnings from the new rules (shadowed rules and the like).
    pub warnings: Vec<String>,
}

impl ReloadReport {
    /// One line for the log: what changed.
    pub fn summary(&self) -> String {
        let mut parts = vec![format!(
            "{} rules (version {})",
            self.rules, self.rules_version
        )];
        for (what, list) in [
            ("rules added", &self.rules_added),
            ("rules removed", &self.rules_removed),
            ("rules changed", &self.rules_changed),
            ("upstreams added", &self.upstreams_added),
            ("upstreams removed", &self.upstreams_removed),
            ("upstreams changed", &self.upstreams_changed),
        ] {
            if !list.is_empty() {
                parts.push(format!("{what}: {}", list.join(", ")));
            }
        }
        if self.changed() {
            parts.join("; ")
        } else {
            format!("{}; nothing changed", parts.join("; "))
        }
    }

    /// Whether any rule or upstream changed.
    pub fn changed(&self) -> bool {
        !(self.rules_added.is_empty()
            && self.rules_removed.is_empty()
            && self.rules_changed.is_empty()
            && self.upstreams_added.is_empty()
            && self.upstreams_removed.is_empty()
            && self.upstreams_changed.is_empty())
    }
}

/// Names in `new` not in `old`, in `old` not in `new`, and in both but different.
fn diff<T, K: Fn(&T) -> &str, D: Fn(&T) -> String>(
    old: &[T],
    new: &[T],
    name: K,
    describe: D,
) -> (Vec<String>, Vec<String>, Vec<String>) {
    let find = |list: &[T], n: &str| list.iter().position(|x| name(x) == n);
    let added = new
        .iter()
        .filter(|x| find(old, name(x)).is_none())
        .map(|x| name(x).to_string())
        .collect();
    let removed = old
        .iter()
        .filter(|x| find(new, name(x)).is_none())
        .map(|x| name(x).to_string())
        .collect();
    let changed = new
        .iter()
        .filter(|x| find(old, name(x)).is_some_and(|i| describe(&old[i]) != describe(x)))
        .map(|x| name(x).to_string())
        .collect();
    (added, removed, changed)
}

/// Shared state of one airlock process.
pub struct Airlock {
    snapshot: ArcSwap<Snapshot>,
    pub metrics: Arc<Metrics>,
    pub audit: AuditLog,
    pub approvals: Arc<Approvals>,
    pub store: Arc<dyn Store>,
    pub shutdown: CancellationToken,
    /// Forwards of approved requests, which run in tasks of their own: a shutdown
    /// waits for them (up to `limits.shutdown_grace`).
    pub forwards: tokio_util::task::TaskTracker,
    /// Bytes of request bodies kept in memory (`limits.max_held_bytes`).
    pub budget: ByteBudget,
    /// One reload at a time (file watch, SIGHUP and the API may race).
    reloading: tokio::sync::Mutex<()>,
    request_prefix: u32,
    request_seq: AtomicU64,
}

impl Airlock {
    /// The shared state around a first snapshot.
    pub fn new(
        snapshot: Snapshot,
        store: Arc<dyn Store>,
        audit: AuditLog,
        metrics: Arc<Metrics>,
        approvals: Arc<Approvals>,
        shutdown: CancellationToken,
    ) -> Arc<Airlock> {
        metrics.set_config(snapshot.cfg().mode.as_str(), &snapshot.policy.rules.version);
        let budget = ByteBudget::counted(metrics.held_bytes.clone());
        Arc::new(Airlock {
            snapshot: ArcSwap::from_pointee(snapshot),
            metrics,
            audit,
            approvals,
            store,
            shutdown,
            forwards: tokio_util::task::TaskTracker::new(),
            budget,
            reloading: tokio::sync::Mutex::new(()),
            request_prefix: rand::random(),
            request_seq: AtomicU64::new(1),
        })
    }

    /// The snapshot in force.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Re-reads the config file this snapshot came from and its rules, and puts them
    /// in force as one snapshot. Any error leaves the running configuration untouched.
    pub async fn reload(&self) -> Result<ReloadReport, ReloadError> {
        let _one = self.reloading.lock().await;
        let old = self.snapshot();
        let path = old.cfg().file.clone();
        let cfg = Config::load(&path).map_err(ReloadError::Config)?;
        let loaded = crate::rules::load(&cfg).map_err(ReloadError::Rules)?;
        let new = Snapshot::new(
            Arc::new(cfg),
            Arc::new(loaded.set),
            &self.metrics,
            Some(&old),
        )?;
        let report = report(&old, &new, &loaded.warnings);
        self.metrics
            .set_config(new.cfg().mode.as_str(), &new.policy.rules.version);
        self.snapshot.store(Arc::new(new));
        let mut ev = AuditEvent::new("rules_reloaded");
        ev.reason = Some(report.summary());
        self.audit.record(ev);
        tracing::info!(config = %path.display(), "reloaded: {}", report.summary());
        for w in &report.warnings {
            tracing::warn!("{w}");
        }
        for w in &report.needs_restart {
            tracing::warn!("{w} changed; it takes effect after a restart");
        }
        Ok(report)
    }

    /// A new request id, unique within this process and unlikely to repeat across restarts.
    pub fn next_request_id(&self) -> String {
        let n = self.request_seq.fetch_add(1, Ordering::Relaxed);
        format!("req_{:08x}{:08x}", self.request_prefix, n)
    }
}

fn report(old: &Snapshot, new: &Snapshot, warnings: &[crate::config::Diagnostic]) -> ReloadReport {
    let (o, n) = (old.cfg(), new.cfg());
    let (rules_added, rules_removed, rules_changed) = diff(
        &old.policy.rules.rules,
        &new.policy.rules.rules,
        |r| r.name.as_str(),
        |r| format!("{r:?}"),
    );
    let (upstreams_added, upstreams_removed, upstreams_changed) = diff(
        &o.upstreams,
        &n.upstreams,
        |u| u.name.as_str(),
        |u| format!("{u:?}"),
    );
    let mut needs_restart = Vec::new();
    if o.listen != n.listen {
        needs_restart.push("listen");
    }
    if o.admin.as_ref().map(|a| a.listen) != n.admin.as_ref().map(|a| a.listen) {
        needs_restart.push("admin.listen");
    }
    if o.store != n.store {
        needs_restart.push("store");
    }
    if o.workers != n.workers {
        needs_restart.push("workers");
    }
    if o.audit.signing_key != n.audit.signing_key || o.audit.file != n.audit.file {
        needs_restart.push("audit");
    }
    ReloadReport {
        rules: new.policy.rules.rules.len(),
        rules_version: new.policy.rules.version.clone(),
        rules_added,
        rules_removed,
        rules_changed,
        upstreams_added,
        upstreams_removed,
        upstreams_changed,
        needs_restart,
        warnings: warnings.iter().map(|w| w.to_string()).collect(),
    }
}
