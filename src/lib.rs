//! airlock: a reverse proxy that stands between AI agents and the APIs they could
//! hurt. Requests that YAML rules mark as privileged are held until a human approves
//! them; then exactly the approved request is forwarded, once. Everything else
//! streams straight through. Every request, vote and outcome lands in a hash-chained
//! audit log.
//!
//! # Layout
//! A request reads top to bottom through the modules in the order it lives; a module
//! imports only modules listed below it.
//!
//! - [`cli`] is the command line; [`start`] wires a configuration into running
//!   listeners and [`watch`] reloads it when its files change;
//! - [`proxy`] serves agents: [`proxy::server`] accepts connections,
//!   [`proxy::handle`] walks one request through the phases — [`request::prepare`]
//!   (host, [`http::normalize`], [`http::route`], [`identity`], method override) →
//!   [`request::decide`] ([`rules`]) → deny, hold ([`proxy::hold`] over
//!   [`approvals`]) or forward ([`proxy::forward`] over [`upstream`]) — and ends in
//!   the one exit hook [`proxy::exit`] (audit event, metrics, access log line);
//!   [`proxy::simulate`] runs the same phases for `rules test` and `rules explain`;
//! - [`admin`] serves reviewers (REST API, votes into [`approvals`]), the Slack and
//!   Teams callbacks, `/metrics` and health checks;
//! - [`channels`] tells reviewers where they work (Slack, Teams, a signed webhook):
//!   its dispatcher delivers the store's outbox, which [`approvals`]' lifecycle events
//!   fill; a vote from chat is verified there and cast through [`approvals`];
//! - [`state`] holds the shared [`state::Airlock`] and the [`state::Snapshot`] in
//!   force (policy, upstream clients), swapped whole on reload;
//! - [`request`] (the phases and the [`request::Policy`] they decide against),
//!   [`approvals`] (holds, votes, expiry, claims on approved requests and the recovery
//!   of claims a crash left, decisions made on other replicas) and [`upstream`] (pooled
//!   clients that retry a request a stale connection never sent, the demo upstream)
//!   are the steps of the request path;
//! - [`rules`] is the pure rule engine; [`identity`] knows agents (keys, JWTs from the
//!   organisation's IdP, client certificates) and reviewers (tokens, OIDC JWTs);
//!   [`http`] owns bodies, routing, normalization, the listeners' TLS and airlock's
//!   JSON answers;
//! - [`audit`] seals every event into the hash chain; [`store`] persists approvals,
//!   votes and the audit log behind one trait (SQLite or PostgreSQL); [`metrics`] are
//!   the Prometheus metrics;
//! - [`config`] parses `airlock.yaml` into validated types.

pub mod admin;
pub mod approvals;
pub mod audit;
pub mod channels;
pub mod cli;
pub mod config;
pub mod http;
pub mod identity;
pub mod metrics;
pub mod proxy;
pub mod request;
pub mod rules;
pub mod state;
pub mod store;
pub mod upstream;
pub mod watch;

use crate::approvals::{Approvals, Clock};
use crate::audit::{AuditLog, CheckpointSigner};
use crate::config::{Config, Diagnostics};
use crate::state::{Airlock, Snapshot};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A started airlock: its bound addresses and the handle that stops it.
pub struct Running {
    pub proxy_addr: SocketAddr,
    pub admin_addr: Option<SocketAddr>,
    pub airlock: Arc<Airlock>,
    /// Delivers the notification outbox to the chat and webhook channels.
    pub dispatcher: Arc<channels::Dispatcher>,
    /// The rules loaded at start (for the startup report).
    pub warnings: Vec<config::Diagnostic>,
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
        // Approved requests already on their way upstream finish and are recorded.
        let grace = self.airlock.snapshot().cfg().limits.shutdown_grace;
        self.airlock.forwards.close();
        if tokio::time::timeout(grace, self.airlock.forwards.wait())
            .await
            .is_err()
        {
            tracing::warn!("approved forwards still running after limits.shutdown_grace");
        }
        // Everything recorded so far is written before we return; the writer task
        // itself ends when the last handle to the log is dropped.
        self.airlock.audit.flush().await;
        drop(self.audit_task);
    }
}

/// Why airlock could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Rules(Diagnostics),
    #[error("store {url}: {source}")]
    Store {
        url: String,
        source: store::StoreError,
    },
    #[error("audit.signing_key: {0}")]
    SigningKey(audit::AuditError),
    #[error("audit log: {0}")]
    Audit(audit::AuditError),
    #[error("{0}")]
    Client(#[from] upstream::ClientError),
    #[error("{0}")]
    Tls(#[from] http::tls::TlsError),
    #[error("{what} {addr}: {source}")]
    Listen {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// How to start airlock beyond its configuration.
#[derive(Debug, Clone, Default)]
pub struct StartOptions {
    /// The clock approvals are decided by ([`Clock::tokio`] in tests with paused time).
    pub clock: Clock,
    /// Reload when the config file or the rules change.
    pub watch: bool,
}

/// Loads everything a config names and starts the listeners (no file watch).
pub async fn start(cfg: Config) -> Result<Running, StartError> {
    start_with(cfg, StartOptions::default()).await
}

/// Loads everything a config names and starts the listeners.
pub async fn start_with(cfg: Config, opts: StartOptions) -> Result<Running, StartError> {
    let loaded = rules::load(&cfg).map_err(StartError::Rules)?;
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
        .map_err(|source| StartError::Store {
            url: store::redacted_url(&cfg.store),
            source,
        })?;
    let signer = match &cfg.audit.signing_key {
        Some(p) => Some(
            CheckpointSigner::from_pem_file(p)
                .map_err(StartError::SigningKey)?
                .with_policy(cfg.audit.checkpoints),
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
        signer.clone(),
        cfg.audit.file.clone(),
        cfg.audit.witness.clone(),
        Some(observer),
    )
    .await
    .map_err(StartError::Audit)?;
    let snapshot = Snapshot::new(cfg.clone(), Arc::new(loaded.set), &metrics, None)?;
    let shutdown = CancellationToken::new();
    let approvals = Approvals::new(
        store.clone(),
        audit.clone(),
        signer,
        metrics.clone(),
        opts.clock,
    );
    // Before any request: settle what a crashed airlock left being forwarded.
    approvals.recover().await;
    let airlock = Airlock::new(snapshot, store, audit, metrics, approvals, shutdown.clone());

    let listen = |what: &'static str, addr: SocketAddr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Listen { what, addr, source })
    };
    // TLS files are read before anything listens; each holder then watches its files
    // and swaps in a new certificate when they change (changed paths in a reloaded
    // config are not re-wired: that takes a restart).
    let proxy_tls = match &cfg.tls {
        Some(t) => Some(http::tls::TlsHolder::load(t, "tls")?),
        None => None,
    };
    let admin_tls = match cfg.admin.as_ref().and_then(|a| a.tls.as_ref()) {
        Some(t) => Some(http::tls::TlsHolder::load(t, "admin.tls")?),
        None => None,
    };
    let tls_files: Vec<_> = proxy_tls.iter().chain(admin_tls.iter()).cloned().collect();
    let mut tasks = Vec::new();
    let listener = listen("listen", cfg.listen).await?;
    let proxy_addr = local_addr(&listener, "listen", cfg.listen)?;
    let admin_addr = match &cfg.admin {
        Some(a) => {
            let l = listen("admin.listen", a.listen).await?;
            let addr = local_addr(&l, "admin.listen", a.listen)?;
            tasks.push(tokio::spawn(admin::run(
                l,
                admin_tls,
                airlock.clone(),
                shutdown.clone(),
            )));
            Some(addr)
        }
        None => None,
    };
    // Before any request: the store learns which channels to write outbox rows for.
    let dispatcher = channels::Dispatcher::new(airlock.clone());
    tasks.push(dispatcher.spawn(shutdown.clone()));
    tasks.push(channels::slack::socket::spawn(
        airlock.clone(),
        shutdown.clone(),
    ));
    tasks.push(tokio::spawn(proxy::server::run(
        listener,
        proxy_tls,
        airlock.clone(),
        shutdown.clone(),
        cfg.limits.shutdown_grace,
    )));
    for h in tls_files {
        tasks.push(h.watch(shutdown.clone()));
    }
    tasks.push(airlock.approvals.spawn_sweeper(shutdown.clone()));
    airlock.approvals.spawn_listener(shutdown.clone());
    if opts.watch {
        tasks.push(watch::spawn(airlock.clone(), shutdown.clone()));
    }
    Ok(Running {
        proxy_addr,
        admin_addr,
        airlock,
        dispatcher,
        warnings: loaded.warnings,
        shutdown,
        tasks,
        audit_task,
    })
}

fn local_addr(
    l: &TcpListener,
    what: &'static str,
    addr: SocketAddr,
) -> Result<SocketAddr, StartError> {
    l.local_addr()
        .map_err(|source| StartError::Listen { what, addr, source })
}
