//! `airlock keys new audit`: an operator makes the checkpoint key pair, pastes the
//! printed lines into airlock.yaml, and hands the public key to auditors. Key files
//! are private to their owner from the moment they exist and are never overwritten.

mod common;
use common::*;

use airlock::audit::{verify_checkpoint, verifying_key_from_pem_str, CheckpointSigner};
use std::path::Path;

fn keys_new_audit(args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["keys", "new", "audit"];
    all.extend_from_slice(args);
    run_cli(&all, &[])
}

#[cfg(unix)]
fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn keys_new_audit_writes_a_private_pair_and_prints_the_config_lines() {
    let ws = Workspace::new();
    let private = ws.path().join("certs-audit.pem");
    let public = ws.path().join("certs-audit.pub.pem");
    let (code, out, err) = keys_new_audit(&["--out", private.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");

    #[cfg(unix)]
    {
        assert_eq!(mode(&private), 0o600, "private key file mode");
        assert_eq!(mode(&public), 0o600, "public key file mode");
    }
    let private_pem = std::fs::read_to_string(&private).unwrap();
    let public_pem = std::fs::read_to_string(&public).unwrap();
    assert!(
        private_pem.starts_with("-----BEGIN PRIVATE KEY-----"),
        "{private_pem}"
    );
    assert!(
        public_pem.starts_with("-----BEGIN PUBLIC KEY-----"),
        "{public_pem}"
    );

    // The public key is printed, and never the private one.
    assert!(out.contains(&public_pem), "public key not printed:\n{out}");
    assert!(!out.contains("PRIVATE KEY"), "{out}");
    // The exact lines to paste.
    let lines: Vec<&str> = out.lines().collect();
    let at = lines
        .iter()
        .position(|l| *l == "audit:")
        .unwrap_or_else(|| panic!("no `audit:` line in:\n{out}"));
    assert_eq!(
        lines[at + 1..at + 3],
        [
            format!("  signing_key: {}", private.display()),
            format!("  verify_key: {}", public.display()),
        ],
        "{out}"
    );

    // The two files are one pair: what the private key signs, the public key verifies.
    let cp = CheckpointSigner::from_pem_str(&private_pem).unwrap().sign(
        7,
        &"ab".repeat(32),
        chrono::Utc::now(),
    );
    assert!(verify_checkpoint(
        &cp,
        &verifying_key_from_pem_str(&public_pem).unwrap()
    ));

    // And the pasted lines are a valid config.
    let cfg = ws.write(
        "airlock.yaml",
        &format!(
            "listen: 127.0.0.1:0\nstore: sqlite://airlock.db\naudit:\n{}\n{}\n",
            lines[at + 1],
            lines[at + 2]
        ),
    );
    let (code, out, err) = run_cli(&["rules", "check", "-c", cfg.to_str().unwrap()], &[]);
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn an_existing_key_is_never_overwritten() {
    let ws = Workspace::new();
    let private = ws.path().join("audit.pem");
    let (code, _, err) = keys_new_audit(&["--out", private.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let before = std::fs::read_to_string(&private).unwrap();

    let (code, _, err) = keys_new_audit(&["--out", private.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("already exists"), "{err}");
    assert_eq!(std::fs::read_to_string(&private).unwrap(), before);

    // A clash on the public key leaves no new private key behind.
    let fresh = ws.path().join("fresh.pem");
    let (code, _, err) = keys_new_audit(&[
        "--out",
        fresh.to_str().unwrap(),
        "--public-out",
        ws.path().join("audit.pub.pem").to_str().unwrap(),
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("already exists"), "{err}");
    assert!(!fresh.exists(), "half a key pair was left behind");
}
