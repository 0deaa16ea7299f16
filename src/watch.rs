//! Reload on change: watches the config file and the rules file or folder, and after
//! a short quiet period (editors write files in several steps) reloads. A new set with
//! errors is refused and logged; the old one stays in force.

use crate::state::Airlock;
use notify::{RecursiveMode, Watcher};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How long the files must stay unchanged before a reload.
const QUIET: Duration = Duration::from_millis(300);

/// The paths a config's reload depends on, with how to watch each: the config file's
/// folder, not recursively (editors replace files by renaming, which only a folder
/// watch sees), and the rules file or folder.
fn watched(airlock: &Airlock) -> Vec<(PathBuf, RecursiveMode)> {
    let snap = airlock.snapshot();
    let cfg = snap.cfg();
    let mut paths = Vec::new();
    if let Some(dir) = cfg.file.parent() {
        let dir = if dir.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            dir.to_path_buf()
        };
        paths.push((dir, RecursiveMode::NonRecursive));
    }
    if let Some(r) = &cfg.rules {
        let mode = if r.is_dir() {
            RecursiveMode::Recursive
        } else {
            RecursiveMode::NonRecursive
        };
        paths.push((r.clone(), mode));
    }
    paths
}

/// A cheap first filter, run for every file event (the store's database may live in
/// the same folder and change constantly): YAML files and the config file's name.
fn maybe_config(path: &std::path::Path, config_name: Option<&std::ffi::OsStr>) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml") | Some("yml")
    ) || (config_name.is_some() && path.file_name() == config_name)
}

/// A path made absolute through its folder (the file itself may be gone mid-rename).
fn canon(p: &std::path::Path) -> PathBuf {
    if let Ok(c) = std::fs::canonicalize(p) {
        return c;
    }
    match (p.parent(), p.file_name()) {
        (Some(dir), Some(name)) => {
            let dir = if dir.as_os_str().is_empty() {
                std::path::Path::new(".")
            } else {
                dir
            };
            std::fs::canonicalize(dir)
                .map(|d| d.join(name))
                .unwrap_or_else(|_| p.to_path_buf())
        }
        _ => p.to_path_buf(),
    }
}

/// Whether a changed path matters for the config (not the store's database files).
fn relevant(airlock: &Airlock, path: &std::path::Path) -> bool {
    let snap = airlock.snapshot();
    let cfg = snap.cfg();
    let path = canon(path);
    let is_yaml = matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml") | Some("yml")
    );
    let rules = cfg.rules.as_deref().map(canon);
    path == canon(&cfg.file)
        || rules
            .as_ref()
            .is_some_and(|r| *r == path || (path.starts_with(r) && is_yaml))
}

/// Watches the config and rules until `shutdown`; reloads after each burst of changes.
pub fn spawn(airlock: Arc<Airlock>, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<PathBuf>();
    let config_name = airlock
        .snapshot()
        .cfg()
        .file
        .file_name()
        .map(|n| n.to_os_string());
    let watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        if let Ok(ev) = ev {
            if !ev.kind.is_access() {
                for p in ev.paths {
                    if maybe_config(&p, config_name.as_deref()) {
                        let _ = tx.send(p);
                    }
                }
            }
        }
    });
    let mut watcher = match watcher {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the config for changes; reload with SIGHUP or `airlock reload`");
            None
        }
    };
    if let Some(w) = watcher.as_mut() {
        for (p, mode) in watched(&airlock) {
            if let Err(e) = w.watch(&p, mode) {
                tracing::warn!(path = %p.display(), error = %e, "cannot watch for changes");
            }
        }
    }
    tokio::spawn(async move {
        let _keep = watcher;
        loop {
            let first = tokio::select! {
                p = rx.recv() => match p { Some(p) => p, None => return },
                _ = shutdown.cancelled() => return,
            };
            let mut any = relevant(&airlock, &first);
            // Wait for a quiet period, collecting the rest of the burst.
            loop {
                tokio::select! {
                    p = rx.recv() => match p {
                        Some(p) => any |= relevant(&airlock, &p),
                        None => return,
                    },
                    _ = tokio::time::sleep(QUIET) => break,
                    _ = shutdown.cancelled() => return,
                }
            }
            if any {
                if let Err(e) = airlock.reload().await {
                    tracing::error!(
                        "reload refused, the previous configuration stays in force:\n{e}"
                    );
                }
            }
        }
    })
}
