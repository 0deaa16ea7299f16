//! `airlock serve`: loads the config, starts the proxy and the admin listener, prints
//! what runs (version, PID, config, mode, rules, upstreams, store, listeners), reloads
//! when the config or rules change, on SIGHUP and on `airlock reload`, and stops
//! cleanly on SIGTERM or Ctrl-C.
//!
//! It never starts with an invalid config or an unset `${VAR}`: the error names the
//! variable and the command exits 2.

use super::{load_config, runtime};
use crate::config::{Config, LogFormat};
use std::io::Write;
use std::process::ExitCode;

/// Logs through `tracing` to stderr, as the config says (`AIRLOCK_LOG` overrides the level).
///
/// A log line that cannot be written (stderr a closed pipe, a full disk) is dropped:
/// logging never fails, so it can never take down the audit writer or a request.
fn init_tracing(cfg: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("AIRLOCK_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!("airlock={},warn", cfg.log_level))
    });
    use std::io::IsTerminal;
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        // tracing-subscriber reports a failed write with `eprintln!`, which panics
        // when stderr is broken: never report, just drop the line.
        .log_internal_errors(false)
        .with_writer(|| Lossy(std::io::stderr()));
    let _ = match cfg.log_format {
        LogFormat::Json => b.json().try_init(),
        LogFormat::Human => b.try_init(),
    };
}

/// A writer whose writes always succeed: what cannot be written is dropped. For log
/// output only, where losing a line beats failing the code that logs.
struct Lossy<W>(W);

impl<W: Write> Write for Lossy<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = self.0.write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = self.0.flush();
        Ok(())
    }
}

/// `airlock serve`: runs until SIGTERM or Ctrl-C; reloads on file change, SIGHUP
/// and `airlock reload`.
pub(super) fn serve(path: &std::path::Path) -> anyhow::Result<ExitCode> {
    let cfg = load_config(path)?;
    init_tracing(&cfg);
    let rt = runtime(cfg.workers)?;
    rt.block_on(async move {
        let opts = crate::StartOptions {
            watch: true,
            ..Default::default()
        };
        let running = crate::start_with(cfg, opts).await?;
        // Signal handlers exist before anyone is told we listen: a SIGHUP or SIGTERM
        // sent right after the startup lines must not kill the process.
        let stop = stop_signal();
        spawn_reload_on_sighup(running.airlock.clone());
        print_startup(&running);
        stop.await;
        tracing::info!("shutting down");
        running.stop().await;
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// What an operator needs to know at start: what runs, from which config, in which
/// mode, with which rules, upstreams, store and listeners, under which PID.
/// Written to stdout; a stdout that cannot be written loses the lines, nothing else.
fn print_startup(running: &crate::Running) {
    let snap = running.airlock.snapshot();
    let cfg = snap.cfg();
    let mut out = Lossy(std::io::stdout().lock());
    let _ = writeln!(
        out,
        "airlock {} (pid {})",
        env!("CARGO_PKG_VERSION"),
        std::process::id()
    );
    let _ = writeln!(out, "airlock: config {}", cfg.file.display());
    let _ = writeln!(
        out,
        "airlock: mode {}, default {}",
        cfg.mode.as_str(),
        if cfg.default_allow { "allow" } else { "deny" }
    );
    let _ = writeln!(
        out,
        "airlock: {} rule(s), version {}{}",
        snap.policy.rules.rules.len(),
        snap.policy.rules.version.clone(),
        if running.warnings.is_empty() {
            String::new()
        } else {
            format!(", {} warning(s)", running.warnings.len())
        }
    );
    for u in &cfg.upstreams {
        let route = match &u.route {
            crate::config::Route::Prefix(p) => format!("prefix {p}"),
            crate::config::Route::Host(h) => format!("host {h}"),
        };
        let _ = writeln!(out, "airlock: upstream {} ({route}) -> {}", u.name, u.url);
    }
    let _ = writeln!(
        out,
        "airlock: store {}",
        crate::store::redacted_url(&cfg.store)
    );
    let _ = writeln!(
        out,
        "airlock: proxy listening on http://{}",
        running.proxy_addr
    );
    if let Some(a) = running.admin_addr {
        let _ = writeln!(out, "airlock: admin listening on http://{a}");
    }
    let _ = out.flush();
}

/// Reloads config and rules on `SIGHUP`; an invalid new set is refused and logged,
/// and the old one stays in force. Listener addresses and the store are not reloaded.
fn spawn_reload_on_sighup(airlock: std::sync::Arc<crate::state::Airlock>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot install the SIGHUP handler; reload with `airlock reload`");
            return;
        };
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                if let Err(e) = airlock.reload().await {
                    tracing::error!(
                        "reload refused, the previous configuration stays in force:\n{e}"
                    );
                }
            }
        });
    }
    #[cfg(not(unix))]
    let _ = airlock;
}

/// Resolves on SIGTERM or SIGINT; the handlers are installed when this is called.
fn stop_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let handlers = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        );
        async move {
            match handlers {
                (Ok(mut term), Ok(mut int)) => {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = int.recv() => {}
                    }
                }
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}
