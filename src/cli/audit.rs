//! `airlock audit verify|export`: what an auditor runs.
//!
//! Both load the config with [`Config::load_for_audit`]: they need the store and the
//! `audit:` section, never the upstreams' `inject` credentials, and verification needs
//! only the public key (`audit.verify_key`). They read the log; they never write to the
//! store or sign anything.
//!
//! With a key, `verify` requires the tail to be anchored: a valid signed checkpoint on the
//! last event, checkpoints as dense as `audit.checkpoint_every`/`checkpoint_interval`,
//! and the log must hold the checkpoints kept outside it (the `audit.witness` file, the
//! JSONL copy's last checkpoint, `--checkpoint FILE`). Stored columns are checked
//! against the sealed lines.

use super::{runtime, AuditCmd, ExportFormat, CHECK_FAILED};
use crate::audit::{self, VerifyingKey};
use crate::config::Config;
use anyhow::{anyhow, Context};
use chrono::{DateTime, NaiveDate, Utc};
use std::path::Path;
use std::process::ExitCode;

/// `airlock audit verify|export`.
pub(super) fn audit_cmd(cmd: AuditCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        AuditCmd::Verify {
            config,
            file,
            checkpoint,
        } => verify(&config, file.as_deref(), checkpoint.as_deref()),
        AuditCmd::Export {
            config,
            since,
            format: ExportFormat::Jsonl,
        } => export(&config, since),
    }
}

fn load(path: &Path) -> anyhow::Result<Config> {
    Config::load_for_audit(path).map_err(|d| anyhow!("invalid configuration:\n{d}"))
}

fn verify(
    config: &Path,
    file: Option<&Path>,
    checkpoint: Option<&Path>,
) -> anyhow::Result<ExitCode> {
    let cfg = load(config)?;
    let key = checkpoint_key(&cfg)?;
    if checkpoint.is_some() && key.key.is_none() {
        return Err(anyhow!(
            "--checkpoint needs the audit public key to check its signature ({}): set audit.verify_key",
            key.source
        ));
    }
    // Verifying the store, the JSONL copy kept apart from it anchors it too.
    let (anchors, anchor_problems) = outside_checkpoints(&cfg, &key, checkpoint, file.is_none())?;
    let opts = audit::VerifyOptions {
        key: key.key.as_ref(),
        policy: key.key.as_ref().map(|_| cfg.audit.checkpoints),
        anchors,
    };
    let mut report = match file {
        Some(f) => {
            // A half-written or corrupt line is reported at its seq, not as an error.
            let fh = std::fs::File::open(f).with_context(|| format!("{}", f.display()))?;
            audit::verify_jsonl(std::io::BufReader::new(fh), &[], &opts)
                .with_context(|| format!("{}", f.display()))?
        }
        None => {
            let rt = runtime(1)?;
            let (rows, checkpoints) = rt.block_on(async {
                let store = open_store(&cfg).await?;
                let rows = store.audit_rows().await.map_err(|e| anyhow!("{e}"))?;
                let cps = store
                    .audit_checkpoints()
                    .await
                    .map_err(|e| anyhow!("{e}"))?;
                Ok::<_, anyhow::Error>((rows, cps))
            })?;
            audit::verify_rows(&rows, &checkpoints, &opts)
        }
    };
    // A witness that should be there and is not: a problem once the log has events.
    if report.events > 0 && report.ok() {
        report.problem = anchor_problems.into_iter().next();
    }
    if report.ok() {
        println!("ok: {report}");
    } else {
        println!("BROKEN: {report}");
    }
    if report.checkpoints > 0 {
        match &key.key {
            Some(_) => println!("checkpoint signatures checked with {}", key.source),
            None => eprintln!(
                "note: checkpoint signatures were not checked ({}): set audit.verify_key to the audit public key file that `airlock keys new audit` wrote",
                key.source
            ),
        }
    }
    Ok(if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(CHECK_FAILED)
    })
}

/// The checkpoints kept outside the log that `verify` checks it against (only with a
/// key): `--checkpoint FILE`, the `audit.witness` file, and with `copy` the last
/// checkpoint line of the JSONL copy (`audit.file`). Also what is wrong with a
/// configured witness (missing, unreadable, not a note), which fails a log with events.
fn outside_checkpoints(
    cfg: &Config,
    key: &CheckpointKey,
    checkpoint: Option<&Path>,
    copy: bool,
) -> anyhow::Result<(Vec<audit::Anchor>, Vec<String>)> {
    let mut anchors = Vec::new();
    let mut problems = Vec::new();
    if key.key.is_none() {
        return Ok((anchors, problems));
    }
    if let Some(path) = checkpoint {
        let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
        let cp = audit::Checkpoint::from_note(&text)
            .map_err(|e| anyhow!("--checkpoint {}: {e}", path.display()))?;
        anchors.push(audit::Anchor {
            source: format!("the checkpoint file {}", path.display()),
            checkpoint: cp,
        });
    }
    if let Some(w) = &cfg.audit.witness {
        match std::fs::read_to_string(w) {
            Ok(text) => match audit::Checkpoint::from_note(&text) {
                Ok(cp) => anchors.push(audit::Anchor {
                    source: format!("the witness {}", w.display()),
                    checkpoint: cp,
                }),
                Err(e) => problems.push(format!("the witness {}: {e}", w.display())),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => problems.push(format!(
                "the witness {} is missing (audit.witness is set, so it was published; deleted?)",
                w.display()
            )),
            Err(e) => problems.push(format!("the witness {}: {e}", w.display())),
        }
    }
    if let (Some(path), true) = (&cfg.audit.file, copy) {
        if let Ok(fh) = std::fs::File::open(path) {
            let (_, cps, _) = audit::read_records(std::io::BufReader::new(fh))
                .with_context(|| format!("audit.file {}", path.display()))?;
            if let Some(cp) = cps.into_iter().max_by_key(|c| c.seq) {
                anchors.push(audit::Anchor {
                    source: format!("the JSONL copy {}", path.display()),
                    checkpoint: cp,
                });
            }
        }
    }
    Ok((anchors, problems))
}

/// The public key checkpoints are verified with, and where it came from.
struct CheckpointKey {
    key: Option<VerifyingKey>,
    /// Where the key came from, or why there is none.
    source: String,
}

/// `audit.verify_key` when given; else the public half of `audit.signing_key` when
/// that file is readable here; else none. A key file that exists but is not a key is
/// an error, and so is a `verify_key` that is not `signing_key`'s public half.
fn checkpoint_key(cfg: &Config) -> anyhow::Result<CheckpointKey> {
    let from_signing_key = match &cfg.audit.signing_key {
        Some(p) => match std::fs::read_to_string(p) {
            Ok(pem) => Some((
                p,
                audit::CheckpointSigner::from_pem_str(&pem)
                    .map_err(|e| anyhow!("audit.signing_key {}: {e}", p.display()))?
                    .verifying_key(),
            )),
            Err(e) if cfg.audit.verify_key.is_none() => {
                return Ok(CheckpointKey {
                    key: None,
                    source: format!(
                        "no audit.verify_key, and audit.signing_key {} cannot be read here: {e}",
                        p.display()
                    ),
                })
            }
            Err(_) => None,
        },
        None => None,
    };
    match (&cfg.audit.verify_key, from_signing_key) {
        (Some(v), signing) => {
            let pem = std::fs::read_to_string(v)
                .with_context(|| format!("audit.verify_key {}", v.display()))?;
            let key = audit::verifying_key_from_pem_str(&pem)
                .map_err(|e| anyhow!("audit.verify_key {}: {e}", v.display()))?;
            if let Some((s, derived)) = signing {
                if derived != key {
                    return Err(anyhow!(
                        "audit.verify_key {} is not the public key of audit.signing_key {}: point verify_key at the public key file `airlock keys new audit` wrote next to the private key",
                        v.display(),
                        s.display()
                    ));
                }
            }
            Ok(CheckpointKey {
                key: Some(key),
                source: format!("audit.verify_key {}", v.display()),
            })
        }
        (None, Some((s, key))) => Ok(CheckpointKey {
            key: Some(key),
            source: format!("the public half of audit.signing_key {}", s.display()),
        }),
        (None, None) => Ok(CheckpointKey {
            key: None,
            source: "no audit.verify_key or audit.signing_key in the config".into(),
        }),
    }
}

fn export(config: &Path, since: Option<DateTime<Utc>>) -> anyhow::Result<ExitCode> {
    let cfg = load(config)?;
    let rt = runtime(1)?;
    let (events, checkpoints) = rt.block_on(async {
        let store = open_store(&cfg).await?;
        let events = store
            .audit_events(since)
            .await
            .map_err(|e| anyhow!("{e}"))?;
        let (first, last) = match (events.first(), events.last()) {
            (Some(f), Some(l)) => (f.seq, l.seq),
            _ => (1, 0),
        };
        let checkpoints = store
            .audit_checkpoints_between(first.saturating_sub(1), last)
            .await
            .map_err(|e| anyhow!("{e}"))?;
        Ok::<_, anyhow::Error>((events, checkpoints))
    })?;
    use std::io::Write;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    // Each checkpoint on a line of its own after the event it covers, as in the copy.
    let mut cps = checkpoints.iter().peekable();
    for ev in &events {
        writeln!(out, "{}", audit::to_jsonl_line(ev))?;
        while let Some(cp) = cps.next_if(|cp| cp.seq <= ev.seq) {
            if cp.seq == ev.seq {
                writeln!(out, "{}", cp.to_jsonl_line())?;
            }
        }
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// Parses `--since`: an RFC 3339 time, a date (midnight UTC) or a duration meaning
/// that long before now.
pub(super) fn parse_since(s: &str) -> Result<DateTime<Utc>, String> {
    parse_since_at(s, Utc::now())
}

fn parse_since_at(s: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    let t = s.trim();
    if let Ok(at) = DateTime::parse_from_rfc3339(t) {
        return Ok(at.with_timezone(&Utc));
    }
    if let Ok(day) = NaiveDate::parse_from_str(t, "%Y-%m-%d") {
        return Ok(day.and_time(chrono::NaiveTime::MIN).and_utc());
    }
    if let Ok(ago) = humantime::parse_duration(t) {
        if let Some(at) = chrono::Duration::from_std(ago)
            .ok()
            .and_then(|d| now.checked_sub_signed(d))
        {
            return Ok(at);
        }
    }
    Err("expected an RFC 3339 time like 2026-01-02T03:04:05Z, a date like 2026-01-02 (midnight UTC), or a duration like 24h meaning that long ago".into())
}

async fn open_store(cfg: &Config) -> anyhow::Result<std::sync::Arc<dyn crate::store::Store>> {
    let base = cfg
        .file
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_default();
    crate::store::open(&cfg.store, &base)
        .await
        .map_err(|e| anyhow!("{e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_a_time_a_date_or_a_duration_ago() {
        let now = DateTime::parse_from_rfc3339("2026-01-03T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let at = |s: &str| parse_since_at(s, now).map(|t| t.to_rfc3339());
        assert_eq!(
            at("2026-01-02T03:04:05Z").as_deref(),
            Ok("2026-01-02T03:04:05+00:00")
        );
        assert_eq!(
            at("2026-01-02T03:04:05+02:00").as_deref(),
            Ok("2026-01-02T01:04:05+00:00")
        );
        assert_eq!(at("2026-01-02").as_deref(), Ok("2026-01-02T00:00:00+00:00"));
        assert_eq!(at("24h").as_deref(), Ok("2026-01-02T12:00:00+00:00"));
        assert_eq!(at("1h 30m").as_deref(), Ok("2026-01-03T10:30:00+00:00"));
        let err = at("yesterday").unwrap_err();
        assert!(err.contains("RFC 3339") && err.contains("24h"), "{err}");
        assert!(at("2026-13-01").is_err());
    }
}
