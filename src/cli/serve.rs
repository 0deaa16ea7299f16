//! `airlock serve`: loads the config, starts the proxy and the admin listener, prints
//! where they listen, reloads on SIGHUP and stops cleanly on SIGTERM or Ctrl-C.
//!
//! It never starts with an invalid config or an unset `${VAR}`: the error names the
//! variable and the command exits 2.

use super::{load_config, runtime};
use crate::config::{Config, LogFormat};
use std::path::PathBuf;
use std::process::ExitCode;

/// Logs through `tracing` to stderr, as the config says (`AIRLOCK_LOG` overrides the level).
fn init_tracing(cfg: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("AIRLOCK_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!("airlock={},warn", cfg.log_level))
    });
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match cfg.log_format {
        LogFormat::Json => b.json().try_init(),
        LogFormat::Human => b.try_init(),
    };
}

/// `airlock serve`: runs until SIGTERM or Ctrl-C.
pub(super) fn serve(path: &std::path::Path) -> anyhow::Result<ExitCode> {
    let cfg = load_config(path)?;
    init_tracing(&cfg);
    let rt = runtime(cfg.workers)?;
    rt.block_on(async move {
        let running = crate::start(cfg).await?;
        println!("airlock: proxy listening on http://{}", running.proxy_addr);
        if let Some(a) = running.admin_addr {
            println!("airlock: admin listening on http://{a}");
        }
        use std::io::Write;
        let _ = std::io::stdout().flush();
        spawn_reload_on_sighup(running.airlock.clone(), path.to_path_buf());
        wait_for_signal().await;
        tracing::info!("shutting down");
        running.stop().await;
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Reloads config and rules on `SIGHUP`; an invalid new set is refused and logged,
/// and the old one stays in force. Listener addresses and the store are not reloaded.
fn spawn_reload_on_sighup(airlock: std::sync::Arc<crate::airlock::Airlock>, path: PathBuf) {
    #[cfg(unix)]
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            return;
        };
        while hup.recv().await.is_some() {
            match crate::reload(&airlock, &path) {
                Ok(n) => tracing::info!(rules = n, "configuration reloaded"),
                Err(e) => tracing::error!(
                    "reload refused, the previous configuration stays in force:\n{e}"
                ),
            }
        }
    });
    #[cfg(not(unix))]
    let _ = (airlock, path);
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
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
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
