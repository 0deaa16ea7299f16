//! TLS on the listeners (`tls:` for agents, `admin.tls:` for reviewers): a rustls
//! [`ServerConfig`] built from a [`TlsConfig`], and a [`TlsHolder`] that keeps the one
//! in force and swaps in a new one when the certificate, key or client CA files change.
//!
//! - ring, TLS 1.2 and 1.3 only, rustls' default suites (AEAD with ECDHE only);
//! - ALPN `h2` then `http/1.1`;
//! - with `client_ca`, a client certificate is *optional* (agents that authenticate with
//!   a key or a JWT connect over TLS too), but any certificate presented must verify
//!   against that CA: an expired one or one from another CA fails the handshake. What a
//!   verified certificate maps to is [`crate::identity::mtls`]'s business.
//!
//! Reload: the files' folders are watched (editors and `mv` replace files by renaming,
//! which only a folder watch sees); after a quiet period the files are read again. A
//! set that does not load (a half-written file, a key that does not match the
//! certificate) is logged and the previous configuration stays. New connections take
//! the configuration in force when they arrive; open connections keep theirs.

use crate::config::TlsConfig;
use arc_swap::ArcSwap;
use notify::{RecursiveMode, Watcher};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How long the files must stay unchanged before they are read again.
const QUIET: Duration = Duration::from_millis(300);

/// Why a listener's TLS files could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{section}.{field} {}: cannot read: {source}", path.display())]
    Read {
        section: &'static str,
        field: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{section}.{field} {}: not valid PEM: {detail}", path.display())]
    BadPem {
        section: &'static str,
        field: &'static str,
        path: PathBuf,
        detail: String,
    },
    #[error("{section}.cert {}: no CERTIFICATE block in the file", path.display())]
    NoCertificate {
        section: &'static str,
        path: PathBuf,
    },
    #[error("{section}.key {}: no private key (PKCS#8, PKCS#1 or SEC1 PEM block) in the file", path.display())]
    NoKey {
        section: &'static str,
        path: PathBuf,
    },
    #[error("{section}.key {}: the key does not match the certificate {}", key.display(), cert.display())]
    KeyMismatch {
        section: &'static str,
        cert: PathBuf,
        key: PathBuf,
    },
    #[error("{section}.key {}: unusable key: {detail}", path.display())]
    BadKey {
        section: &'static str,
        path: PathBuf,
        detail: String,
    },
    #[error("{section}: {detail}")]
    Settings {
        section: &'static str,
        detail: String,
    },
    #[error("{section}.client_ca {}: no CA certificate in the file", path.display())]
    EmptyCa {
        section: &'static str,
        path: PathBuf,
    },
    #[error("{section}.client_ca {}: unusable CA certificate: {detail}", path.display())]
    BadCa {
        section: &'static str,
        path: PathBuf,
        detail: String,
    },
}

fn read(section: &'static str, field: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        section,
        field,
        path: path.to_path_buf(),
        source,
    })
}

/// Every `CERTIFICATE` block of a PEM file (other blocks are skipped).
fn certs(
    section: &'static str,
    field: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(section, field, path)?;
    rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::BadPem {
            section,
            field,
            path: path.to_path_buf(),
            detail: e.to_string(),
        })
}

fn private_key(section: &'static str, path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(section, "key", path)?;
    match rustls_pemfile::private_key(&mut pem.as_slice()) {
        Ok(Some(k)) => Ok(k),
        Ok(None) => Err(TlsError::NoKey {
            section,
            path: path.to_path_buf(),
        }),
        Err(e) => Err(TlsError::BadPem {
            section,
            field: "key",
            path: path.to_path_buf(),
            detail: e.to_string(),
        }),
    }
}

/// A rustls server configuration for `tls` (`section` names it in errors: `tls` or
/// `admin.tls`).
pub fn server_config(tls: &TlsConfig, section: &'static str) -> Result<ServerConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = certs(section, "cert", &tls.cert)?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            section,
            path: tls.cert.clone(),
        });
    }
    let key = private_key(section, &tls.key)?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Settings {
            section,
            detail: e.to_string(),
        })?;
    let builder = match &tls.client_ca {
        Some(ca) => {
            let ca_certs = certs(section, "client_ca", ca)?;
            if ca_certs.is_empty() {
                return Err(TlsError::EmptyCa {
                    section,
                    path: ca.clone(),
                });
            }
            let mut roots = RootCertStore::empty();
            for c in ca_certs {
                roots.add(c).map_err(|e| TlsError::BadCa {
                    section,
                    path: ca.clone(),
                    detail: e.to_string(),
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .map_err(|e| TlsError::BadCa {
                    section,
                    path: ca.clone(),
                    detail: e.to_string(),
                })?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => TlsError::KeyMismatch {
            section,
            cert: tls.cert.clone(),
            key: tls.key.clone(),
        },
        e => TlsError::BadKey {
            section,
            path: tls.key.clone(),
            detail: e.to_string(),
        },
    })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// The TLS configuration of one listener, swapped whole when its files change.
pub struct TlsHolder {
    section: &'static str,
    files: TlsConfig,
    current: ArcSwap<ServerConfig>,
}

impl std::fmt::Debug for TlsHolder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsHolder")
            .field("section", &self.section)
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl TlsHolder {
    /// Loads `files` (`section` is `tls` or `admin.tls`, for messages).
    pub fn load(files: &TlsConfig, section: &'static str) -> Result<Arc<TlsHolder>, TlsError> {
        let config = server_config(files, section)?;
        Ok(Arc::new(TlsHolder {
            section,
            files: files.clone(),
            current: ArcSwap::from_pointee(config),
        }))
    }

    /// The configuration new connections use.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.current.load_full()
    }

    /// Reads the files again; on success new connections use them, on failure the
    /// previous configuration stays and the error is returned.
    pub fn reload(&self) -> Result<(), TlsError> {
        let config = server_config(&self.files, self.section)?;
        self.current.store(Arc::new(config));
        Ok(())
    }

    /// The files, made absolute through their folders.
    fn paths(&self) -> Vec<PathBuf> {
        let mut v = vec![canon(&self.files.cert), canon(&self.files.key)];
        if let Some(ca) = &self.files.client_ca {
            v.push(canon(ca));
        }
        v
    }

    /// Watches the files until `shutdown`, reloading after each burst of changes.
    pub fn watch(self: &Arc<Self>, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<PathBuf>();
        let files = self.paths();
        let wanted = files.clone();
        let watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
            if let Ok(ev) = ev {
                if !ev.kind.is_access() {
                    for p in ev.paths {
                        let _ = tx.send(p);
                    }
                }
            }
        });
        let section = self.section;
        let mut watcher = match watcher {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(section, error = %e, "cannot watch the TLS files; a new certificate takes a restart");
                None
            }
        };
        if let Some(w) = watcher.as_mut() {
            let mut dirs: Vec<PathBuf> = files
                .iter()
                .filter_map(|f| f.parent().map(Path::to_path_buf))
                .collect();
            dirs.sort();
            dirs.dedup();
            for d in dirs {
                if let Err(e) = w.watch(&d, RecursiveMode::NonRecursive) {
                    tracing::warn!(section, path = %d.display(), error = %e, "cannot watch for certificate changes");
                }
            }
        }
        let holder = self.clone();
        tokio::spawn(async move {
            let _keep = watcher;
            let ours = |p: &Path| wanted.iter().any(|w| *w == canon(p));
            loop {
                let first = tokio::select! {
                    p = rx.recv() => match p { Some(p) => p, None => return },
                    _ = shutdown.cancelled() => return,
                };
                let mut any = ours(&first);
                loop {
                    tokio::select! {
                        p = rx.recv() => match p {
                            Some(p) => any |= ours(&p),
                            None => return,
                        },
                        _ = tokio::time::sleep(QUIET) => break,
                        _ = shutdown.cancelled() => return,
                    }
                }
                if any {
                    match holder.reload() {
                        Ok(()) => tracing::info!(section, "TLS certificate reloaded"),
                        Err(e) => tracing::error!(
                            section,
                            "TLS files refused, the previous certificate stays in force: {e}"
                        ),
                    }
                }
            }
        })
    }
}

/// A path made absolute through its folder (the file itself may be gone mid-rename).
fn canon(p: &Path) -> PathBuf {
    let (dir, name) = match (p.parent(), p.file_name()) {
        (Some(d), Some(n)) => (d, n),
        _ => return p.to_path_buf(),
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    std::fs::canonicalize(dir)
        .map(|d| d.join(name))
        .unwrap_or_else(|_| p.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn pair() -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn errors_name_the_file_and_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let (c1, k1) = pair();
        let (_, k2) = pair();
        let cert = write(dir.path(), "c.pem", &c1);
        let key = write(dir.path(), "k.pem", &k1);
        let other_key = write(dir.path(), "k2.pem", &k2);
        let junk = write(dir.path(), "junk.pem", "hello\n");
        let empty_ca = write(dir.path(), "ca.pem", "");
        let cfg = |cert: &Path, key: &Path, ca: Option<&Path>| TlsConfig {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            client_ca: ca.map(Path::to_path_buf),
        };
        assert!(server_config(&cfg(&cert, &key, None), "tls").is_ok());
        let msg = |c: TlsConfig| server_config(&c, "tls").unwrap_err().to_string();
        let m = msg(cfg(&cert, &other_key, None));
        assert!(m.contains("does not match") && m.contains("k2.pem"), "{m}");
        let m = msg(cfg(&junk, &key, None));
        assert!(
            m.contains("tls.cert") && m.contains("no CERTIFICATE"),
            "{m}"
        );
        let m = msg(cfg(&cert, &junk, None));
        assert!(m.contains("tls.key") && m.contains("no private key"), "{m}");
        let m = msg(cfg(&cert, &key, Some(&empty_ca)));
        assert!(m.contains("tls.client_ca") && m.contains("no CA"), "{m}");
        let m = msg(cfg(&dir.path().join("missing.pem"), &key, None));
        assert!(
            m.contains("missing.pem") && m.contains("cannot read"),
            "{m}"
        );
    }
}
