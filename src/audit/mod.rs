//! Tamper-evident audit log.
//!
//! This module owns:
//! - the audit event record ([`AuditEvent`]) and its canonical JSON form,
//! - the hash chain (`hash = sha256(prev_hash || canonical JSON without hash)`, see
//!   [`compute_hash`] and [`Chain`]),
//! - Ed25519-signed checkpoints over `(seq, hash)` ([`Checkpoint`], [`CheckpointSigner`]),
//!   made as densely as a [`CheckpointPolicy`] says, and their forms outside the database
//!   (a JSONL line of their own kind, a witness note),
//! - offline verification of an exported or stored log, its stored columns and its
//!   anchors ([`verify`], [`verify_log`], [`verify_rows`], [`verify_jsonl`]),
//! - the single writer task that group-commits events in arrival order to an
//!   [`AuditSink`] and mirrors the sealed result (events and checkpoints) to an optional
//!   JSONL file, publishing the latest checkpoint to an optional witness file ([`AuditLog`]).
//!
//! It must never write secrets. Callers fill in chosen fields only: no `Authorization`
//! header, no cookies, no injected upstream credentials, no airlock agent keys, and never a
//! request or response body — bodies appear only as `body_sha256` and as the fields a rule
//! selects with `show`. Nothing in this module copies headers or bodies on its own.
//!
//! Storage is abstracted behind [`AuditSink`]; the store owns durability and atomicity of
//! one batch, and the chain head: a batch is sealed (seq, `prev_hash`, hash, checkpoint)
//! inside the store's transaction, under its audit lock, on the head it has just read
//! ([`AuditSink::seal_append`]). So any number of writers — several replicas on one
//! database — append to one unbroken chain and never conflict.

mod chain;
mod checkpoint;
mod event;
mod verify;
mod writer;

#[cfg(test)]
mod tests;

pub use chain::Chain;
pub use checkpoint::{
    checkpoint_message, generate_signing_key_pem, key_id, verify_checkpoint,
    verifying_key_from_pem_str, Checkpoint, CheckpointPolicy, CheckpointSigner, NOTE_ORIGIN,
};
pub use ed25519_dalek::VerifyingKey;
pub use event::{
    canonical_json, compute_hash, format_time, parse_time, read_jsonl, to_jsonl_line, AuditEvent,
};
pub use verify::{
    read_records, verify, verify_jsonl, verify_log, verify_rows, Anchor, JsonlRecords, StoredRow,
    VerifyOptions, VerifyReport,
};
pub use writer::{AuditLog, AuditSink, BatchObserver, BatchStats, MemorySink, MAX_BATCH};

/// `prev_hash` of the first event (seq 1): 64 ASCII zeros.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Errors of the audit subsystem.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The store refused or failed the write (the event is NOT durable).
    #[error("audit store error: {0}")]
    Store(String),
    /// The store failed in a way a retry may fix (connection lost, serialization failure,
    /// database busy); the event is NOT durable.
    #[error("audit store unavailable: {0}")]
    Unavailable(String),
    /// The JSONL copy or another file could not be written.
    #[error("audit i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// Signing key could not be read or parsed.
    #[error("audit signing key: {0}")]
    Key(String),
    /// An exported log or stored row could not be parsed.
    #[error("audit parse error: {0}")]
    Parse(String),
    /// The writer task has stopped.
    #[error("audit log closed")]
    Closed,
}

impl AuditError {
    /// Whether trying the same write again may succeed (see [`AuditError::Unavailable`]).
    pub fn is_transient(&self) -> bool {
        matches!(self, AuditError::Unavailable(_))
    }
}
