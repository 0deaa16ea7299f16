//! `airlock keys new agent|reviewer|audit`: fresh secrets and what to put in the config.
//!
//! Agent keys and reviewer tokens are printed once with their `sha256:` digest; only the
//! digest goes into airlock.yaml. Audit keys are an Ed25519 pair written to two files.
//! Every key file is created with mode 0600 at creation (never widened, never chmod-ed
//! afterwards) and an existing file is never overwritten.

use super::KeyKind;
use crate::audit::CheckpointSigner;
use anyhow::{anyhow, Context};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// `airlock keys new KIND`.
pub(super) fn new(
    kind: KeyKind,
    out: &Path,
    public_out: Option<&Path>,
) -> anyhow::Result<ExitCode> {
    match kind {
        KeyKind::Agent => secret("agent"),
        KeyKind::Reviewer => secret("reviewer"),
        KeyKind::Audit => {
            let public_out = match public_out {
                Some(p) => p.to_path_buf(),
                None => public_key_path(out),
            };
            audit_pair(out, &public_out)
        }
    }
}

fn secret(word: &str) -> anyhow::Result<ExitCode> {
    let (key, digest) = crate::identity::new_key(word);
    println!("key:    {key}");
    println!("digest: {digest}");
    eprintln!("Give the key to the {word} (it is shown once); put the digest in airlock.yaml.");
    Ok(ExitCode::SUCCESS)
}

/// `audit-ed25519.pem` → `audit-ed25519.pub.pem`; other names get `.pub.pem` appended.
fn public_key_path(private: &Path) -> PathBuf {
    let name = private
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let public = match name.strip_suffix(".pem") {
        Some(stem) => format!("{stem}.pub.pem"),
        None => format!("{name}.pub.pem"),
    };
    private.with_file_name(public)
}

fn audit_pair(private: &Path, public: &Path) -> anyhow::Result<ExitCode> {
    if private == public {
        return Err(anyhow!(
            "--out and --public-out are both {}: give the public key its own file",
            private.display()
        ));
    }
    let signer = CheckpointSigner::generate();
    let private_pem = signer.private_key_pem().map_err(|e| anyhow!("{e}"))?;
    let public_pem = signer.public_key_pem().map_err(|e| anyhow!("{e}"))?;

    // Claim both names before writing either, so a clash leaves nothing half-made.
    let mut private_file = create_key_file(private)?;
    let mut public_file = match create_key_file(public) {
        Ok(f) => f,
        Err(e) => {
            drop(private_file);
            let _ = std::fs::remove_file(private);
            return Err(e);
        }
    };
    private_file
        .write_all(private_pem.as_bytes())
        .and_then(|()| private_file.sync_all())
        .with_context(|| format!("writing {}", private.display()))?;
    public_file
        .write_all(public_pem.as_bytes())
        .and_then(|()| public_file.sync_all())
        .with_context(|| format!("writing {}", public.display()))?;

    println!(
        "wrote {} (private key: only `airlock serve` needs it; keep it secret)",
        private.display()
    );
    println!(
        "wrote {} (public key: `airlock audit verify` needs only this one)",
        public.display()
    );
    println!();
    println!("public key:");
    print!("{public_pem}");
    println!();
    println!("Add to airlock.yaml (relative paths are taken from the config file's folder):");
    println!("audit:");
    println!("  signing_key: {}", private.display());
    println!("  verify_key: {}", public.display());
    Ok(ExitCode::SUCCESS)
}

/// Creates `path` for a key: it must not exist yet, and it is readable and writable
/// by its owner only from the moment it exists. `taken` says what to do when it exists.
pub(super) fn create_private(path: &Path, taken: &str) -> anyhow::Result<File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            anyhow!("{} already exists: {taken}", path.display())
        } else {
            anyhow!("cannot create {}: {e}", path.display())
        }
    })
}

/// Creates `path` for a key ([`create_private`]), never over an existing one.
fn create_key_file(path: &Path) -> anyhow::Result<File> {
    create_private(
        path,
        "keys are never overwritten; choose another path with --out / --public-out, or move the old key away first",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_public_key_sits_next_to_the_private_one() {
        assert_eq!(
            public_key_path(Path::new("certs/audit-ed25519.pem")),
            PathBuf::from("certs/audit-ed25519.pub.pem")
        );
        assert_eq!(
            public_key_path(Path::new("audit.key")),
            PathBuf::from("audit.key.pub.pem")
        );
    }
}
