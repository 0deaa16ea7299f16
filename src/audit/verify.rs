//! Offline verification of a log (from the store or a JSONL export).
//!
//! What is detected:
//! - an edited event (hash mismatch at its seq),
//! - a deleted, inserted or reordered event (seq not 1, 2, 3, … or prev_hash break),
//! - a rewritten tail whose hashes were recomputed (only with checkpoints: the event at a
//!   checkpoint's seq no longer has the signed hash),
//! - a truncated tail (only with checkpoints: a checkpoint names a seq beyond the last event),
//! - forged or altered checkpoints (only when a verifying key is given),
//! - in a JSONL file ([`verify_jsonl`]), a line that is not a whole event (half written
//!   or corrupt), named by the seq it should have held.
//!
//! Limitation: without checkpoints, dropping the last events leaves a perfectly valid
//! shorter chain, and an attacker who can rewrite the whole log can recompute every hash.
//! Checkpoints help only if they are kept where the attacker cannot also delete them (e.g.
//! the JSONL/SIEM copy, or a verifier that remembers the last checkpoint it saw).

use std::collections::HashMap;
use std::fmt;
use std::io::BufRead;

use ed25519_dalek::VerifyingKey;

use super::{compute_hash, verify_checkpoint, AuditEvent, Checkpoint, GENESIS_HASH};

/// Outcome of [`verify`]. `first_bad_seq`/`problem` describe the lowest-seq problem found.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct VerifyReport {
    /// Number of events examined.
    pub events: u64,
    /// Number of checkpoints examined.
    pub checkpoints: u64,
    pub first_bad_seq: Option<u64>,
    pub problem: Option<String>,
    /// False when checkpoints were present but no key was given: their signatures were not
    /// checked (their hashes were still compared against the events).
    pub signatures_checked: bool,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.first_bad_seq.is_none() && self.problem.is_none()
    }
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.first_bad_seq, &self.problem) {
            (None, None) => write!(
                f,
                "audit log intact: {} events, {} checkpoints",
                self.events, self.checkpoints
            )?,
            (seq, problem) => {
                write!(f, "audit log BROKEN")?;
                if let Some(seq) = seq {
                    write!(f, " at seq {seq}")?;
                }
                if let Some(p) = problem {
                    write!(f, ": {p}")?;
                }
            }
        }
        if self.checkpoints > 0 && !self.signatures_checked {
            write!(f, " (checkpoint signatures NOT checked: no key)")?;
        }
        Ok(())
    }
}

/// Verifies the chain of `events` (which must be given in stored order) and `checkpoints`.
/// With `key == None`, checkpoint signatures are not checked but checkpoint hashes are
/// still compared with the events.
pub fn verify(
    events: &[AuditEvent],
    checkpoints: &[Checkpoint],
    key: Option<&VerifyingKey>,
) -> VerifyReport {
    let mut report = VerifyReport {
        events: events.len() as u64,
        checkpoints: checkpoints.len() as u64,
        signatures_checked: key.is_some() || checkpoints.is_empty(),
        ..Default::default()
    };
    let mut worst: Option<(u64, String)> = None;
    let mut note = |seq: u64, msg: String| {
        if worst.as_ref().is_none_or(|(s, _)| seq < *s) {
            worst = Some((seq, msg));
        }
    };

    // 1. The chain itself; stop at its first break.
    let mut prev: &str = GENESIS_HASH;
    for (i, ev) in events.iter().enumerate() {
        let n = i as u64 + 1;
        if ev.seq != n {
            note(
                n,
                format!(
                    "seq {n}: expected seq {n}, found {} (event deleted or reordered)",
                    ev.seq
                ),
            );
            break;
        }
        if ev.prev_hash != prev {
            let msg = if n == 1 {
                "seq 1: prev_hash is not the genesis hash".to_string()
            } else {
                format!("seq {n}: prev_hash does not match seq {}", n - 1)
            };
            note(n, msg);
            break;
        }
        if compute_hash(&ev.prev_hash, ev) != ev.hash {
            note(n, format!("seq {n}: hash mismatch (event edited)"));
            break;
        }
        prev = &ev.hash;
    }

    // 2. Checkpoints.
    if !checkpoints.is_empty() {
        let last_seq = events.iter().map(|e| e.seq).max().unwrap_or(0);
        let mut by_seq: HashMap<u64, &str> = HashMap::with_capacity(events.len());
        for ev in events {
            by_seq.entry(ev.seq).or_insert(ev.hash.as_str());
        }
        for cp in checkpoints {
            if let Some(key) = key {
                if !verify_checkpoint(cp, key) {
                    note(
                        cp.seq,
                        format!(
                            "checkpoint at seq {}: invalid signature (forged or altered checkpoint)",
                            cp.seq
                        ),
                    );
                    continue;
                }
            }
            if cp.seq > last_seq {
                note(
                    last_seq + 1,
                    format!(
                        "truncated: checkpoint at seq {} but log ends at seq {last_seq}",
                        cp.seq
                    ),
                );
                continue;
            }
            match by_seq.get(&cp.seq) {
                None => note(
                    cp.seq,
                    format!("seq {}: missing but covered by a checkpoint", cp.seq),
                ),
                Some(h) if *h != cp.hash => note(
                    cp.seq,
                    format!(
                        "seq {}: hash differs from the {}checkpoint (log rewritten)",
                        cp.seq,
                        if key.is_some() { "signed " } else { "" }
                    ),
                ),
                Some(_) => {}
            }
        }
    }

    if let Some((seq, msg)) = worst {
        report.first_bad_seq = Some(seq);
        report.problem = Some(msg);
    }
    report
}

/// Verifies a JSONL export or copy (`audit verify --file`): like [`verify`] on its
/// events, and a line that is not a whole audit event (half written, corrupt) is a
/// problem at the seq it should have held, one past the event before it. Blank lines
/// are skipped. `Err` only when the file cannot be read.
pub fn verify_jsonl(
    reader: impl BufRead,
    checkpoints: &[Checkpoint],
    key: Option<&VerifyingKey>,
) -> std::io::Result<VerifyReport> {
    let mut events: Vec<AuditEvent> = Vec::new();
    let mut bad: Option<(u64, String)> = None;
    for (i, line) in reader.split(b'\n').enumerate() {
        let line = line?;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice::<AuditEvent>(&line) {
            Ok(ev) => events.push(ev),
            Err(e) => {
                let seq = events.last().map_or(1, |ev| ev.seq + 1);
                bad = Some((
                    seq,
                    format!(
                        "seq {seq}: line {} is not a whole audit event (half written or corrupt): {e}",
                        i + 1
                    ),
                ));
                break;
            }
        }
    }
    let mut report = verify(&events, checkpoints, key);
    if let Some((seq, problem)) = bad {
        if report.first_bad_seq.is_none_or(|s| seq < s) {
            report.first_bad_seq = Some(seq);
            report.problem = Some(problem);
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{to_jsonl_line, Chain};

    fn sealed(n: usize) -> Vec<AuditEvent> {
        let mut events: Vec<AuditEvent> = (0..n).map(|_| AuditEvent::new("passed")).collect();
        Chain::genesis().seal_batch(&mut events, None, chrono::Utc::now());
        events
    }

    #[test]
    fn a_half_written_or_corrupt_line_is_named_by_its_seq() {
        let events = sealed(4);
        let lines: Vec<String> = events.iter().map(to_jsonl_line).collect();
        let check = |text: String| verify_jsonl(std::io::Cursor::new(text), &[], None).unwrap();

        let whole = lines.iter().map(|l| format!("{l}\n")).collect::<String>();
        assert!(check(whole.clone()).ok());

        let half = format!("{}\n{}\n{}", lines[0], lines[1], &lines[2][..40]);
        let r = check(half);
        assert_eq!(r.first_bad_seq, Some(3), "{r}");
        assert!(r.to_string().contains("seq 3: line 3"), "{r}");

        let corrupt = whole.replacen(&lines[0], "{\"seq\":1,", 1);
        assert_eq!(check(corrupt).first_bad_seq, Some(1));

        // A break in the chain before the bad line is the first problem.
        let edited = format!(
            "{}\n{}\n{}\nnot json\n",
            lines[0],
            lines[1].replacen("passed", "denied", 1),
            lines[2]
        );
        assert_eq!(check(edited).first_bad_seq, Some(2));
    }
}
