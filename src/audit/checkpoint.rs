//! Ed25519-signed checkpoints.
//!
//! A checkpoint signs exactly the ASCII bytes `airlock-checkpoint:v1:{seq}:{hash}` (seq in
//! decimal, hash as the 64-char lowercase hex of the event with that seq). `time` is
//! informational and NOT signed. The signature is stored as 128 lowercase hex chars.

use std::path::Path;

use chrono::{DateTime, SubsecRound, Utc};
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::spki::der::zeroize::Zeroizing;
use ed25519_dalek::pkcs8::spki::{DecodePublicKey, EncodePublicKey};
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

use super::AuditError;

/// A signed statement "the log had `hash` at `seq`".
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Checkpoint {
    /// The seq of the event whose hash is signed.
    pub seq: u64,
    /// That event's hash (64 lowercase hex).
    pub hash: String,
    /// When the checkpoint was made (not signed).
    #[serde(with = "super::event::time_serde")]
    pub time: DateTime<Utc>,
    /// Hex-encoded Ed25519 signature over [`checkpoint_message`].
    pub signature: String,
}

impl Checkpoint {
    /// The signed bytes of this checkpoint.
    pub fn message(&self) -> Vec<u8> {
        checkpoint_message(self.seq, &self.hash)
    }
}

/// The exact bytes signed for a checkpoint: `airlock-checkpoint:v1:{seq}:{hash}`.
pub fn checkpoint_message(seq: u64, hash: &str) -> Vec<u8> {
    format!("airlock-checkpoint:v1:{seq}:{hash}").into_bytes()
}

/// True iff the checkpoint's signature is a valid Ed25519 signature by `key`.
pub fn verify_checkpoint(cp: &Checkpoint, key: &VerifyingKey) -> bool {
    let Ok(bytes) = hex::decode(&cp.signature) else {
        return false;
    };
    let Ok(sig) = Signature::from_slice(&bytes) else {
        return false;
    };
    key.verify(&cp.message(), &sig).is_ok()
}

/// Holds the audit signing key. `Debug` prints only the public key.
#[derive(Clone)]
pub struct CheckpointSigner {
    key: SigningKey,
}

impl std::fmt::Debug for CheckpointSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointSigner")
            .field(
                "public_key",
                &hex::encode(self.key.verifying_key().as_bytes()),
            )
            .finish()
    }
}

impl CheckpointSigner {
    /// Loads a PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`) Ed25519 key file.
    pub fn from_pem_file(path: impl AsRef<Path>) -> Result<Self, AuditError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .map_err(|e| AuditError::Key(format!("{}: {e}", path.display())))?;
        Self::from_pem_str(&text).map_err(|e| match e {
            AuditError::Key(m) => AuditError::Key(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    /// Parses a PKCS#8 PEM Ed25519 private key.
    pub fn from_pem_str(pem: &str) -> Result<Self, AuditError> {
        let key = SigningKey::from_pkcs8_pem(pem)
            .map_err(|e| AuditError::Key(format!("not a PKCS#8 PEM Ed25519 private key: {e}")))?;
        Ok(CheckpointSigner { key })
    }

    /// A fresh random key (for `airlock keys new audit`).
    pub fn generate() -> Self {
        CheckpointSigner {
            key: SigningKey::generate(&mut rand::rngs::OsRng),
        }
    }

    /// The private key as PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`), wiped from
    /// memory when dropped. Only `keys new` writes it out.
    pub fn private_key_pem(&self) -> Result<Zeroizing<String>, AuditError> {
        self.key
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| AuditError::Key(e.to_string()))
    }

    /// Signs `(seq, hash)`; `time` is recorded (truncated to microseconds) but not signed.
    pub fn sign(&self, seq: u64, hash: &str, time: DateTime<Utc>) -> Checkpoint {
        let sig = self.key.sign(&checkpoint_message(seq, hash));
        Checkpoint {
            seq,
            hash: hash.to_string(),
            time: time.trunc_subsecs(6),
            signature: hex::encode(sig.to_bytes()),
        }
    }

    /// The public half, which verifies this signer's checkpoints.
    pub fn verifying_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// The public key as SPKI PEM (`-----BEGIN PUBLIC KEY-----`), to hand to auditors.
    pub fn public_key_pem(&self) -> Result<String, AuditError> {
        self.key
            .verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| AuditError::Key(e.to_string()))
    }
}

/// Parses an SPKI PEM Ed25519 public key (as printed by [`CheckpointSigner::public_key_pem`]).
pub fn verifying_key_from_pem_str(pem: &str) -> Result<VerifyingKey, AuditError> {
    VerifyingKey::from_public_key_pem(pem)
        .map_err(|e| AuditError::Key(format!("not an SPKI PEM Ed25519 public key: {e}")))
}

/// A fresh random Ed25519 key as PKCS#8 PEM (for tests).
pub fn generate_signing_key_pem() -> String {
    // Encoding a valid in-memory 32-byte key cannot fail (no input involved).
    let pem = CheckpointSigner::generate()
        .private_key_pem()
        .expect("encoding an Ed25519 key as PKCS#8 PEM");
    pem.to_string()
}
