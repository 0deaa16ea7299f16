//! The hash chain head.

use chrono::{DateTime, Utc};

use super::checkpoint::Group;
use super::{compute_hash, AuditEvent, Checkpoint, CheckpointSigner, GENESIS_HASH};

/// Position of the chain: the seq the next event gets and the hash it links to.
///
/// `Chain` is `Clone`: to keep a failed store write from advancing the head, seal a batch
/// into a clone and replace the original only after the write succeeded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chain {
    next_seq: u64,
    head: String,
}

impl Chain {
    /// Chain continuing after the last stored event; `(0, GENESIS_HASH)` for an empty log.
    pub fn new(last_seq: u64, last_hash: &str) -> Self {
        Chain {
            next_seq: last_seq + 1,
            head: last_hash.to_string(),
        }
    }

    /// Chain of an empty log.
    pub fn genesis() -> Self {
        Chain::new(0, GENESIS_HASH)
    }

    /// Seq the next sealed event will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Seq of the last sealed event (0 if none).
    pub fn last_seq(&self) -> u64 {
        self.next_seq - 1
    }

    /// Hash of the last sealed event (GENESIS if none).
    pub fn head(&self) -> &str {
        &self.head
    }

    /// Sets `seq`, `prev_hash` and `hash` (normalizing `time` to microseconds first so the
    /// hash survives a JSON round trip) and advances the head.
    pub fn seal(&mut self, ev: &mut AuditEvent) {
        ev.normalize();
        ev.seq = self.next_seq;
        ev.prev_hash = self.head.clone();
        ev.hash = compute_hash(&self.head, ev);
        self.next_seq += 1;
        self.head = ev.hash.clone();
    }

    /// Seals `events` in order and, when a `signer` is given and the batch is not empty,
    /// signs checkpoints (`time` is their time): one over the new head, and inside the
    /// batch wherever the signer's [`super::CheckpointPolicy`] needs one. The batch is
    /// taken to start right after a checkpoint (the one ending the batch before).
    ///
    /// A store calls this inside its append transaction, under its audit lock, on a chain
    /// built from the head it just read: that is what keeps several writers in one line.
    pub fn seal_batch(
        &mut self,
        events: &mut [AuditEvent],
        signer: Option<&CheckpointSigner>,
        time: DateTime<Utc>,
    ) -> Vec<Checkpoint> {
        let mut checkpoints = Vec::new();
        let mut group = Group::default();
        for ev in events.iter_mut() {
            ev.normalize();
            if let Some(s) = signer {
                if group.count > 0 && !group.fits(ev.time, &s.policy()) {
                    checkpoints.push(s.sign(self.last_seq(), self.head(), time));
                    group = Group::default();
                }
                group.add(ev.time);
            }
            self.seal(ev);
        }
        if let (Some(s), false) = (signer, events.is_empty()) {
            checkpoints.push(s.sign(self.last_seq(), self.head(), time));
        }
        checkpoints
    }
}
