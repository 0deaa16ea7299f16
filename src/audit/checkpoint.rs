//! Ed25519-signed checkpoints.
//!
//! A checkpoint signs exactly the ASCII bytes `airlock-checkpoint:v1:{seq}:{hash}` (seq in
//! decimal, hash as the 64-char lowercase hex of the event with that seq). `time` is
//! informational and NOT signed. The signature is stored as 128 lowercase hex chars.
//!
//! How densely a writer checkpoints is its [`CheckpointPolicy`] (`audit.checkpoint_every`,
//! `audit.checkpoint_interval`); `audit verify` requires the same density. A checkpoint
//! travels outside the database as a JSONL line of its own kind
//! ([`Checkpoint::to_jsonl_line`]) and as a witness note ([`Checkpoint::to_note`]),
//! modelled on C2SP signed-note checkpoints.

use std::path::Path;
use std::time::Duration;

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

/// Origin line of a witness note: names what the note is a checkpoint of.
pub const NOTE_ORIGIN: &str = "airlock audit log";

/// Name on a witness note's signature line.
const NOTE_SIGNER: &str = "airlock-audit";

/// A checkpoint as one line of the JSONL copy: `{"checkpoint":{...}}`.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckpointLine {
    checkpoint: Checkpoint,
}

impl Checkpoint {
    /// The signed bytes of this checkpoint.
    pub fn message(&self) -> Vec<u8> {
        checkpoint_message(self.seq, &self.hash)
    }

    /// The checkpoint as a line of the JSONL copy (no trailing newline):
    /// `{"checkpoint":{"seq":…,"hash":…,"time":…,"signature":…}}`. It never parses as an
    /// audit event, nor an event as a checkpoint.
    pub fn to_jsonl_line(&self) -> String {
        // Serializing plain strings and integers cannot fail.
        serde_json::to_string(&CheckpointLine {
            checkpoint: self.clone(),
        })
        .unwrap_or_default()
    }

    /// Parses a line written by [`Checkpoint::to_jsonl_line`].
    pub fn from_jsonl_line(line: &[u8]) -> Result<Checkpoint, serde_json::Error> {
        serde_json::from_slice::<CheckpointLine>(line).map(|l| l.checkpoint)
    }

    /// The checkpoint as a witness note, in the spirit of a C2SP signed-note checkpoint:
    ///
    /// ```text
    /// airlock audit log
    /// 1234
    /// 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
    /// 2026-01-02T03:04:05.123456Z
    ///
    /// — airlock-audit 1a2b3c4d 5e6f…(128 hex)
    /// ```
    ///
    /// Origin line, seq of the last event covered, that event's hash, the (unsigned)
    /// time, a blank line, then one signature line: the signer's name, the key id (first
    /// 4 bytes of SHA-256 of the raw public key, hex) and the Ed25519 signature over
    /// [`checkpoint_message`] in hex.
    pub fn to_note(&self, key: &VerifyingKey) -> String {
        format!(
            "{NOTE_ORIGIN}\n{}\n{}\n{}\n\n\u{2014} {NOTE_SIGNER} {} {}\n",
            self.seq,
            self.hash,
            super::format_time(&self.time),
            key_id(key),
            self.signature
        )
    }

    /// Parses a witness note written by [`Checkpoint::to_note`] (the signature is not
    /// checked here: see [`verify_checkpoint`]).
    pub fn from_note(text: &str) -> Result<Checkpoint, AuditError> {
        let bad = |why: &str| AuditError::Parse(format!("not an airlock checkpoint note: {why}"));
        let mut lines = text.split('\n');
        let mut next = |what: &str| lines.next().ok_or_else(|| bad(&format!("no {what} line")));
        if next("origin")? != NOTE_ORIGIN {
            return Err(bad(&format!("the first line is not {NOTE_ORIGIN:?}")));
        }
        let seq: u64 = next("seq")?
            .parse()
            .map_err(|_| bad("the second line is not a seq"))?;
        let hash = next("hash")?.to_string();
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad("the third line is not a 64-hex hash"));
        }
        let time = super::parse_time(next("time")?)
            .map_err(|e| bad(&format!("the fourth line is not a time: {e}")))?;
        if !next("blank")?.is_empty() {
            return Err(bad("no blank line after the time"));
        }
        let sig_line = next("signature")?;
        let mut parts = sig_line.split(' ');
        let (Some("\u{2014}"), Some(NOTE_SIGNER), Some(_key_id), Some(signature), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(bad(&format!(
                "the signature line is not \"\u{2014} {NOTE_SIGNER} KEYID SIGNATURE\""
            )));
        };
        Ok(Checkpoint {
            seq,
            hash,
            time,
            signature: signature.to_string(),
        })
    }
}

/// The key id on a witness note: the first 4 bytes of SHA-256 of the raw public key, hex.
pub fn key_id(key: &VerifyingKey) -> String {
    use sha2::Digest;
    hex::encode(&sha2::Sha256::digest(key.as_bytes())[..4])
}

/// How densely checkpoints are made (`audit.checkpoint_every`,
/// `audit.checkpoint_interval`), and required by `audit verify` when a key is given.
///
/// The log is cut into groups, each ended by a checkpoint on its last event: a group
/// holds at most `every` events, and the times of its events lie within `interval` of
/// each other. Every batch a writer seals ends with a checkpoint, so the last event of
/// the log is always covered; a batch larger than a group gets checkpoints inside it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckpointPolicy {
    /// Most events in one group (at least 1).
    pub every: u64,
    /// Largest spread of event times in one group.
    pub interval: Duration,
}

impl Default for CheckpointPolicy {
    fn default() -> Self {
        CheckpointPolicy {
            every: 100,
            interval: Duration::from_secs(60),
        }
    }
}

/// A group of events between two checkpoints, as it grows: see [`CheckpointPolicy`].
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Group {
    pub count: u64,
    earliest: Option<DateTime<Utc>>,
    latest: Option<DateTime<Utc>>,
}

impl Group {
    /// Whether the group with an event at `time` added would still keep to `policy`.
    pub fn fits(&self, time: DateTime<Utc>, policy: &CheckpointPolicy) -> bool {
        if self.count + 1 > policy.every.max(1) {
            return false;
        }
        let lo = self.earliest.map_or(time, |t| t.min(time));
        let hi = self.latest.map_or(time, |t| t.max(time));
        (hi - lo).to_std().unwrap_or_default() <= policy.interval
    }

    pub fn add(&mut self, time: DateTime<Utc>) {
        self.count += 1;
        self.earliest = Some(self.earliest.map_or(time, |t| t.min(time)));
        self.latest = Some(self.latest.map_or(time, |t| t.max(time)));
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
    policy: CheckpointPolicy,
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
        Ok(CheckpointSigner {
            key,
            policy: CheckpointPolicy::default(),
        })
    }

    /// A fresh random key (for `airlock keys new audit`).
    pub fn generate() -> Self {
        CheckpointSigner {
            key: SigningKey::generate(&mut rand::rngs::OsRng),
            policy: CheckpointPolicy::default(),
        }
    }

    /// This signer checkpointing as densely as `policy` says (default: 100 events, 60 s).
    pub fn with_policy(mut self, policy: CheckpointPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// How densely this signer checkpoints.
    pub fn policy(&self) -> CheckpointPolicy {
        self.policy
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
