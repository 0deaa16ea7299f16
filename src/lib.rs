//! airlock: a reverse proxy that stands between AI agents and the APIs they could
//! hurt. Requests that YAML rules mark as privileged are held until a human approves
//! them; then exactly the approved request is forwarded, once. Everything else
//! streams straight through. Every request, vote and outcome lands in a hash-chained
//! audit log.
//!
//! # Layout
//! A request reads top to bottom through the modules in the order it lives:
//!
//! - [`proxy::server`] accepts connections (HTTP/1.1 and h2c);
//! - [`proxy::handle`] walks one request: route ([`proxy::route`]) → identify
//!   ([`identity`]) → normalize ([`http::normalize`]) → decide ([`rules`]) →
//!   forward ([`proxy::forward`]), deny, or hold ([`approvals`]);
//! - [`admin`] serves the reviewers' REST API, metrics and health checks;
//! - [`audit`] seals every event into the hash chain; [`store`] persists approvals,
//!   votes and the audit log behind one trait (SQLite by default);
//! - [`config`] parses `airlock.yaml` into validated types; [`cli`] is the command line;
//! - [`airlock`] holds the shared state; [`metrics`] the Prometheus metrics.

pub mod admin;
pub mod airlock;
pub mod approvals;
pub mod audit;
pub mod cli;
pub mod config;
pub mod http;
pub mod identity;
pub mod metrics;
pub mod proxy;
pub mod rules;
pub mod store;

use crate::airlock::Airlock;
use crate::audit::{AuditLog, CheckpointSigner};
use crate::config::Config;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A started airlock: its bound addresses and the handle that stops it.
pub struct Running {
    pub proxy_addr: SocketAddr,
    pub admin_addr: Option<SocketAddr>,
    pub airlock: Arc<Airlock>,
    pub shutdown: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    audit_task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Stops accepting, answers held requests `503`, lets in-flight forwards finish,
    /// and flushes the audit log.
    pub async fn stop(self) {
        self.shutdown.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
        // Everything recorded so far is written before we return; the writer task
        // itself ends when the last handle to the log is dropped.
        self.airlock.audit.flush().await;
        drop(self.audit_task);
    }
}

/// Re-reads a config file and its rules and puts them in force; returns the number of
/// rules. Any error leaves the running configuration untouched.
pub fn reload(airlock: &Airlock, path: &std::path::Path) -> anyhow::Result<usize> {
    let cfg = Config::load(path).map_err(|d| anyhow::anyhow!("{d}"))?;
    let loaded = rules::load(&cfg).map_err(|d| anyhow::anyhow!("{d}"))?;
    let n = loaded.set.rules.len();
    airlock.approvals.set_limits(approvals::HoldLimits {
        total: cfg.limits.max_held,
        per_agent: cfg.limits.max_held_per_agent,
    });
    airlock
        .reload(Arc::new(cfg), Arc::new(loaded.set))
        .map_err(|e| anyhow::anyhow!(e))?;
    Ok(n)
}

/// Loads everything a config names and starts the listeners.
pub async fn start(cfg: Config) -> anyhow::Result<Running> {
    let loaded = rules::load(&cfg).map_err(|d| anyhow::anyhow!("{d}"))?;
    for w in &loaded.warnings {
        tracing::warn!("{w}");
    }
    let cfg = Arc::new(cfg);
    let base = cfg
        .file
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_default();
    let store = store::open(&cfg.store, &base)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let signer = match &cfg.audit.signing_key {
        Some(p) => Some(
            CheckpointSigner::from_pem_file(p)
                .map_err(|e| anyhow::anyhow!("audit.signing_key: {e}"))?,
        ),
        None => None,
    };
    let metrics = Arc::new(metrics::Metrics::new());
    let m = metrics.clone();
    let observer: audit::BatchObserver = Arc::new(move |b: audit::BatchStats| {
        m.audit_append.observe(b.elapsed.as_secs_f64());
    });
    let (audit, audit_task) = AuditLog::start_with(
        Arc::new(store::StoreSink(store.clone())),
        signer,
        cfg.audit.file.clone(),
        Some(observer),
    )
    .await
    .map_err(|e| anyhow::anyhow!("audit log: {e}"))?;
    let snapshot = proxy::Snapshot::new(cfg.clone(), Arc::new(loaded.set), &metrics)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let shutdown = CancellationToken::new();
    let airlock = Airlock::new(snapshot, store, audit, metrics, shutdown.clone());

    let listener = TcpListener::bind(cfg.listen)
        .await
        .map_err(|e| anyhow::anyhow!("listen {}: {e}", cfg.listen))?;
    let proxy_addr = listener.local_addr()?;
    let mut tasks = Vec::new();
    let admin_addr = match &cfg.admin {
        Some(a) => {
            let l = TcpListener::bind(a.listen)
                .await
                .map_err(|e| anyhow::anyhow!("admin.listen {}: {e}", a.listen))?;
            let addr = l.local_addr()?;
            tasks.push(tokio::spawn(admin::run(
                l,
                airlock.clone(),
                shutdown.clone(),
            )));
            Some(addr)
        }
        None => None,
    };
    tasks.push(tokio::spawn(proxy::server::run(
        listener,
        airlock.clone(),
        shutdown.clone(),
        Duration::from_secs(30),
    )));
    tasks.push(airlock.approvals.spawn_sweeper(shutdown.clone()));
    Ok(Running {
        proxy_addr,
        admin_addr,
        airlock,
        shutdown,
        tasks,
        audit_task,
    })
}
