//! Offline verification of a log (from the store or a JSONL export).
//!
//! What is detected:
//! - an edited event (hash mismatch at its seq),
//! - a deleted, inserted or reordered event (seq not 1, 2, 3, … or prev_hash break),
//! - a stored column (`seq`, `time`, `event`, `hash`) that says something else than the
//!   sealed line it sits next to ([`verify_rows`]): queries such as `export --since` read
//!   the columns, so an edited `time` could hide an event from them,
//! - a rewritten tail whose hashes were recomputed (only with checkpoints: the event at a
//!   checkpoint's seq no longer has the signed hash),
//! - a truncated tail: a checkpoint names a seq beyond the last event; with a key and a
//!   [`CheckpointPolicy`] ([`VerifyOptions::policy`]), also a last event no valid signed
//!   checkpoint covers and a stretch of events longer than the policy allows without one
//!   (deleted checkpoints),
//! - a log cut below, or rewritten at, a checkpoint kept outside it
//!   ([`VerifyOptions::anchors`]: the witness file, `--checkpoint FILE`, the JSONL copy),
//! - forged or altered checkpoints (only when a verifying key is given),
//! - in a JSONL file ([`verify_jsonl`]), a line that is neither a whole event nor a
//!   checkpoint (half written or corrupt), named by the seq it should have held.
//!
//! Limitation: a log cut exactly after one of its own signed checkpoints, with the events
//! and checkpoints beyond deleted, is a valid shorter log; only a checkpoint kept
//! elsewhere (an anchor) shows the cut. Without a key nothing anchors the tail at all,
//! and an attacker who can rewrite the whole log can recompute every hash.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::io::BufRead;

use ed25519_dalek::VerifyingKey;

use super::checkpoint::Group;
use super::{
    compute_hash, format_time, verify_checkpoint, AuditEvent, Checkpoint, CheckpointPolicy,
    GENESIS_HASH,
};

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
    /// How the tail was anchored (or why it was not), for the report.
    pub tail: Option<String>,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.first_bad_seq.is_none() && self.problem.is_none()
    }

    /// Records a problem at `seq` when it is the lowest so far.
    fn note(&mut self, seq: u64, problem: String) {
        if self.first_bad_seq.is_none_or(|s| seq < s) {
            self.first_bad_seq = Some(seq);
            self.problem = Some(problem);
        }
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
        if let Some(tail) = self
            .tail
            .as_ref()
            .filter(|t| self.problem.as_ref() != Some(t))
        {
            write!(f, "; {tail}")?;
        }
        Ok(())
    }
}

/// A checkpoint kept outside the log (the witness file, `--checkpoint FILE`, the JSONL
/// copy's last checkpoint): the log must hold its seq with its hash.
#[derive(Clone, Debug)]
pub struct Anchor {
    /// What it is, for messages ("the witness /var/lib/airlock/witness").
    pub source: String,
    pub checkpoint: Checkpoint,
}

/// What [`verify_log`] checks beyond the chain.
#[derive(Clone, Debug, Default)]
pub struct VerifyOptions<'a> {
    /// Checks checkpoint signatures.
    pub key: Option<&'a VerifyingKey>,
    /// With a key: a valid signed checkpoint must cover the last event, and no group of
    /// events between two checkpoints may be larger than this policy allows.
    pub policy: Option<CheckpointPolicy>,
    /// Checkpoints kept outside the log; their signatures must be valid under `key`.
    pub anchors: Vec<Anchor>,
}

/// One stored audit row: the columns a store keeps next to the sealed line (`time` as
/// [`format_time`] writes it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredRow {
    pub seq: u64,
    pub time: String,
    pub event: String,
    pub hash: String,
    pub line: String,
}

/// Verifies the chain of `events` (which must be given in stored order) and `checkpoints`.
/// With `key == None`, checkpoint signatures are not checked but checkpoint hashes are
/// still compared with the events. Nothing anchors the tail: see [`verify_log`].
pub fn verify(
    events: &[AuditEvent],
    checkpoints: &[Checkpoint],
    key: Option<&VerifyingKey>,
) -> VerifyReport {
    verify_log(
        events,
        checkpoints,
        &VerifyOptions {
            key,
            ..Default::default()
        },
    )
}

/// [`verify`], plus the anchoring `opts` asks for: with a key and a policy, a valid signed
/// checkpoint must cover the last event and checkpoints must be as dense as the policy
/// says; every anchor's seq must be in the log with the anchor's hash.
pub fn verify_log(
    events: &[AuditEvent],
    checkpoints: &[Checkpoint],
    opts: &VerifyOptions<'_>,
) -> VerifyReport {
    let key = opts.key;
    let mut report = VerifyReport {
        events: events.len() as u64,
        checkpoints: checkpoints.len() as u64,
        signatures_checked: key.is_some() || checkpoints.is_empty(),
        ..Default::default()
    };

    // 1. The chain itself; stop at its first break.
    let mut prev: &str = GENESIS_HASH;
    for (i, ev) in events.iter().enumerate() {
        let n = i as u64 + 1;
        if ev.seq != n {
            report.note(
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
            report.note(n, msg);
            break;
        }
        if compute_hash(&ev.prev_hash, ev) != ev.hash {
            report.note(n, format!("seq {n}: hash mismatch (event edited)"));
            break;
        }
        prev = &ev.hash;
    }

    // 2. Checkpoints, in the log and kept outside it.
    let last_seq = events.iter().map(|e| e.seq).max().unwrap_or(0);
    let mut by_seq: HashMap<u64, &str> = HashMap::with_capacity(events.len());
    for ev in events {
        by_seq.entry(ev.seq).or_insert(ev.hash.as_str());
    }
    let signed = if key.is_some() { "signed " } else { "" };
    // Seqs of the checkpoints that hold (signature valid, hash matches).
    let mut valid: BTreeSet<u64> = BTreeSet::new();
    let from = format!("the {signed}checkpoint");
    for cp in checkpoints {
        if check_checkpoint(
            cp,
            ("checkpoint", &from),
            key,
            last_seq,
            &by_seq,
            &mut report,
        ) {
            valid.insert(cp.seq);
        }
    }
    for a in &opts.anchors {
        let name = format!("the checkpoint of {}", a.source);
        let labels = (name.as_str(), a.source.as_str());
        check_checkpoint(&a.checkpoint, labels, key, last_seq, &by_seq, &mut report);
    }

    // 3. The tail: covered by a signed checkpoint, with none missing in between.
    match (key, opts.policy) {
        (Some(_), Some(policy)) => {
            anchor_tail(events, &valid, &policy, last_seq, &mut report);
        }
        (None, _) if !events.is_empty() => {
            report.tail = Some(
                "tail NOT anchored (no key): deleting the newest events would not be detected"
                    .into(),
            );
        }
        _ => {}
    }
    if !opts.anchors.is_empty() && report.ok() {
        let seqs: Vec<String> = opts
            .anchors
            .iter()
            .map(|a| format!("{} at seq {}", a.source, a.checkpoint.seq))
            .collect();
        let tail = report
            .tail
            .take()
            .map_or(String::new(), |t| format!("{t}; "));
        report.tail = Some(format!("{tail}matches {}", seqs.join(", ")));
    }
    report
}

/// Checks one checkpoint against the events; true when it holds. `labels` name it in
/// messages: as a subject ("checkpoint") and as what the log differs from.
fn check_checkpoint(
    cp: &Checkpoint,
    (what, from): (&str, &str),
    key: Option<&VerifyingKey>,
    last_seq: u64,
    by_seq: &HashMap<u64, &str>,
    report: &mut VerifyReport,
) -> bool {
    if let Some(key) = key {
        if !verify_checkpoint(cp, key) {
            report.note(
                cp.seq,
                format!(
                    "{what} at seq {}: invalid signature (forged or altered checkpoint)",
                    cp.seq
                ),
            );
            return false;
        }
    }
    if cp.seq > last_seq {
        report.note(
            last_seq + 1,
            format!(
                "truncated: {what} at seq {} but log ends at seq {last_seq}",
                cp.seq
            ),
        );
        return false;
    }
    match by_seq.get(&cp.seq) {
        None => {
            report.note(
                cp.seq,
                format!(
                    "seq {}: missing but covered by {}",
                    cp.seq,
                    if what == "checkpoint" {
                        "a checkpoint"
                    } else {
                        what
                    }
                ),
            );
            false
        }
        Some(h) if *h != cp.hash => {
            report.note(
                cp.seq,
                format!("seq {}: hash differs from {from} (log rewritten)", cp.seq),
            );
            false
        }
        Some(_) => true,
    }
}

/// With a key: the last event must be covered by a valid checkpoint, and between two
/// checkpoints the events must keep to `policy`.
fn anchor_tail(
    events: &[AuditEvent],
    valid: &BTreeSet<u64>,
    policy: &CheckpointPolicy,
    last_seq: u64,
    report: &mut VerifyReport,
) {
    if events.is_empty() {
        report.tail = Some("empty log".into());
        return;
    }
    let mut group = Group::default();
    let mut covered = 0;
    for ev in events {
        if group.count > 0 && !group.fits(ev.time, policy) {
            report.note(
                ev.seq,
                format!(
                    "seq {}: no signed checkpoint between seq {} and seq {} (at least one per {} events and per {} of event time is required: checkpoints deleted, or events written without the key)",
                    ev.seq,
                    covered + 1,
                    ev.seq,
                    policy.every,
                    humantime::format_duration(policy.interval)
                ),
            );
            break;
        }
        group.add(ev.time);
        if valid.contains(&ev.seq) {
            covered = ev.seq;
            group = Group::default();
        }
    }
    let last_cp = valid.last().copied().unwrap_or(0);
    if last_cp < last_seq {
        let covered = if last_cp == 0 {
            "no event is covered by a valid signed checkpoint".to_string()
        } else {
            format!("the last seq covered by a valid signed checkpoint is {last_cp}")
        };
        // Named one past the log's end, as a cut tail is: what follows seq
        // `last_seq` is not vouched for (a checkpoint beyond the end tells more, and wins).
        let msg = format!(
            "tail not anchored: {covered} but the last event is seq {last_seq} (checkpoints deleted, or events added or cut without the key)"
        );
        // Said even when a lower problem is the one reported.
        report.note(last_seq + 1, msg.clone());
        report.tail = Some(msg);
    } else {
        report.tail = Some(format!(
            "tail anchored by a signed checkpoint at seq {last_seq}"
        ));
    }
}

/// Verifies stored rows: each row's columns must say what its sealed line says (the
/// hash covers only the line), then the events of the lines as [`verify_log`] does.
pub fn verify_rows(
    rows: &[StoredRow],
    checkpoints: &[Checkpoint],
    opts: &VerifyOptions<'_>,
) -> VerifyReport {
    let mut events = Vec::with_capacity(rows.len());
    let mut bad: Option<(u64, String)> = None;
    for row in rows {
        let ev: AuditEvent = match serde_json::from_str(&row.line) {
            Ok(ev) => ev,
            Err(e) => {
                bad = Some((
                    row.seq,
                    format!(
                        "seq {}: the stored line is not an audit event: {e}",
                        row.seq
                    ),
                ));
                break;
            }
        };
        let columns = [
            ("seq", row.seq.to_string(), ev.seq.to_string()),
            ("time", row.time.clone(), format_time(&ev.time)),
            ("event", row.event.clone(), ev.event.clone()),
            ("hash", row.hash.clone(), ev.hash.clone()),
        ];
        if let Some((name, stored, sealed)) = columns.iter().find(|(_, a, b)| a != b) {
            let seq = row.seq.min(ev.seq);
            if bad.as_ref().is_none_or(|(s, _)| seq < *s) {
                bad = Some((
                    seq,
                    format!(
                        "seq {}: stored column {name} is {stored:?} but the sealed line says {sealed:?} (column edited; queries such as export --since read it)",
                        ev.seq
                    ),
                ));
            }
        }
        events.push(ev);
    }
    let mut report = verify_log(&events, checkpoints, opts);
    if let Some((seq, problem)) = bad {
        report.note(seq, problem);
    }
    report.events = rows.len() as u64;
    report
}

/// Verifies a JSONL export or copy (`audit verify --file`): like [`verify_log`] on its
/// events and checkpoint lines (plus `checkpoints` given separately), and a line that is
/// neither a whole audit event nor a checkpoint (half written, corrupt) is a problem at
/// the seq it should have held, one past the event before it. Blank lines are skipped.
/// `Err` only when the file cannot be read.
pub fn verify_jsonl(
    reader: impl BufRead,
    checkpoints: &[Checkpoint],
    opts: &VerifyOptions<'_>,
) -> std::io::Result<VerifyReport> {
    let (events, mut in_file, bad) = read_records(reader)?;
    in_file.extend_from_slice(checkpoints);
    let mut report = verify_log(&events, &in_file, opts);
    if let Some((seq, problem)) = bad {
        report.note(seq, problem);
    }
    Ok(report)
}

/// What a JSONL file parsed to: the events, the checkpoints, and the first line that was
/// neither (named by the seq it should have held, one past the event before it).
pub type JsonlRecords = (Vec<AuditEvent>, Vec<Checkpoint>, Option<(u64, String)>);

/// Reads the events and checkpoint lines of a JSONL file, stopping at the first line that
/// is neither. `Err` only when the file cannot be read.
pub fn read_records(reader: impl BufRead) -> std::io::Result<JsonlRecords> {
    let mut events: Vec<AuditEvent> = Vec::new();
    let mut checkpoints: Vec<Checkpoint> = Vec::new();
    for (i, line) in reader.split(b'\n').enumerate() {
        let line = line?;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice::<AuditEvent>(&line) {
            Ok(ev) => events.push(ev),
            Err(e) => match Checkpoint::from_jsonl_line(&line) {
                Ok(cp) => checkpoints.push(cp),
                Err(_) => {
                    let seq = events.last().map_or(1, |ev| ev.seq + 1);
                    let bad = (
                        seq,
                        format!(
                            "seq {seq}: line {} is not a whole audit event (half written or corrupt): {e}",
                            i + 1
                        ),
                    );
                    return Ok((events, checkpoints, Some(bad)));
                }
            },
        }
    }
    Ok((events, checkpoints, None))
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
        let check = |text: String| {
            verify_jsonl(std::io::Cursor::new(text), &[], &VerifyOptions::default()).unwrap()
        };

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
