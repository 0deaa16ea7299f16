//! `airlock certs dev`: a local CA, a server certificate for airlock and a client
//! certificate for one agent, for trying TLS and mTLS on a laptop in a minute.
//!
//! Everything is made with rcgen (ECDSA P-256): no crypto here. The six files
//! (`dev-ca.pem`, `dev-ca-key.pem`, `airlock.pem`, `airlock-key.pem`, `agent.pem`,
//! `agent-key.pem`) are created with mode 0600 from the moment they exist, and an
//! existing file is never overwritten unless `--force` (which removes it and creates
//! it afresh, so its mode is 0600 too). Every name is checked before anything is
//! written, so a refusal leaves nothing half-made. These are development certificates:
//! the CA key sits next to them, and nothing here is meant to be committed (`certs/*.pem`
//! is in `.gitignore`).

use anyhow::{anyhow, bail, Context};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use std::fs::File;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// The SPIFFE-like trust domain of the agent certificate's URI SAN.
const AGENT_URI_PREFIX: &str = "spiffe://airlock.dev/agent/";

/// The longest validity `--days` accepts (these are throwaway certificates).
const MAX_DAYS: u32 = 825;

/// What `airlock certs dev` was asked for.
pub(super) struct DevOptions {
    /// The folder the files go to.
    pub out: PathBuf,
    /// The agent's name: the client certificate's CN and URI SAN.
    pub agent: String,
    /// Extra server names (DNS names or IP addresses) beyond localhost, 127.0.0.1, ::1.
    pub hosts: Vec<String>,
    /// Validity from today, in days.
    pub days: u32,
    /// Replace existing files.
    pub force: bool,
}

/// One file `certs dev` writes, and what it is for.
struct Output {
    name: &'static str,
    about: &'static str,
    pem: String,
}

/// `airlock certs dev`.
pub(super) fn dev(o: &DevOptions) -> anyhow::Result<ExitCode> {
    check_agent_name(&o.agent)?;
    if o.days == 0 || o.days > MAX_DAYS {
        bail!("--days {}: give 1 to {MAX_DAYS} days", o.days);
    }
    let files = make(o)?;
    write_all(&o.out, &files, o.force)?;

    let dir = o.out.display().to_string();
    let dir = dir.trim_end_matches('/');
    for f in &files {
        println!("wrote {dir}/{} ({})", f.name, f.about);
    }
    println!();
    println!(
        "Add to airlock.yaml (the agent goes into your agents: list; relative paths are taken from the config file's folder, here the folder you ran this in):"
    );
    println!();
    print!("{}", config_lines(dir, &o.agent));
    println!();
    println!("Then run `airlock serve` and, as the agent:");
    println!();
    println!("{}", curl_line(dir));
    Ok(ExitCode::SUCCESS)
}

/// The `listen:`, `tls:` and `agents:` lines to add to airlock.yaml.
fn config_lines(dir: &str, agent: &str) -> String {
    format!(
        "listen: 127.0.0.1:8443\n\
         tls:\n  \
           cert: {dir}/airlock.pem\n  \
           key: {dir}/airlock-key.pem\n  \
           client_ca: {dir}/dev-ca.pem\n\
         agents:\n  \
           - id: {agent}\n    \
             mtls: {{subject: \"CN={agent}\"}}\n"
    )
}

/// The curl an agent would run over mTLS against the demo upstream.
fn curl_line(dir: &str) -> String {
    format!(
        "curl --cacert {dir}/dev-ca.pem --cert {dir}/agent.pem --key {dir}/agent-key.pem https://localhost:8443/cloud/v1/projects/p1/instances"
    )
}

/// Agent names become a certificate CN, a URI path segment and an RFC 4514 subject
/// string (`CN=NAME`) matched exactly: only characters that need no escaping in any of
/// them.
fn check_agent_name(name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && !name.starts_with(['-', '.']);
    if ok {
        Ok(())
    } else {
        bail!(
            "--agent {name:?}: use 1 to 64 letters, digits, '-', '_' or '.', starting with a letter or digit"
        )
    }
}

/// Makes the CA, the server and the agent certificates.
fn make(o: &DevOptions) -> anyhow::Result<Vec<Output>> {
    let (from, until) = validity(o.days)?;
    // Midnight UTC of each date; months and days always fit in u8.
    let stamp = |d: chrono::NaiveDate| {
        use chrono::Datelike;
        rcgen::date_time_ymd(d.year(), d.month() as u8, d.day() as u8)
    };
    let (not_before, not_after) = (stamp(from), stamp(until));
    let key =
        |what: &str| KeyPair::generate().with_context(|| format!("generating the {what} key"));

    let mut ca = CertificateParams::default();
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.distinguished_name = name("airlock dev CA");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca.not_before = not_before;
    ca.not_after = not_after;
    let ca_key = key("CA")?;
    let ca_cert = ca
        .self_signed(&ca_key)
        .context("making the CA certificate")?;

    let mut server =
        CertificateParams::new(server_names(&o.hosts)?).map_err(|e| anyhow!("--host: {e}"))?;
    server.distinguished_name = name("localhost");
    server.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    server.not_before = not_before;
    server.not_after = not_after;
    let server_key = key("server")?;
    let server_cert = server
        .signed_by(&server_key, &ca_cert, &ca_key)
        .context("making the server certificate")?;

    let mut agent = CertificateParams::default();
    agent.distinguished_name = name(&o.agent);
    let uri = format!("{AGENT_URI_PREFIX}{}", o.agent);
    agent.subject_alt_names = vec![SanType::URI(
        uri.as_str()
            .try_into()
            .map_err(|e| anyhow!("--agent: {e}"))?,
    )];
    agent.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    agent.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    agent.not_before = not_before;
    agent.not_after = not_after;
    let agent_key = key("agent")?;
    let agent_cert = agent
        .signed_by(&agent_key, &ca_cert, &ca_key)
        .context("making the agent certificate")?;

    Ok(vec![
        Output {
            name: "dev-ca.pem",
            about: "the local CA: curl --cacert trusts it, tls.client_ca verifies agents with it",
            pem: ca_cert.pem(),
        },
        Output {
            name: "dev-ca-key.pem",
            about: "the CA's private key: only for making more certificates; keep it private",
            pem: ca_key.serialize_pem(),
        },
        Output {
            name: "airlock.pem",
            about: "airlock's server certificate: localhost, 127.0.0.1, ::1 and --host names",
            pem: server_cert.pem(),
        },
        Output {
            name: "airlock-key.pem",
            about: "its private key: tls.key",
            pem: server_key.serialize_pem(),
        },
        Output {
            name: "agent.pem",
            about: "the agent's client certificate",
            pem: agent_cert.pem(),
        },
        Output {
            name: "agent-key.pem",
            about: "its private key: give both to the agent",
            pem: agent_key.serialize_pem(),
        },
    ])
}

/// A distinguished name with one CN.
fn name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

/// localhost, 127.0.0.1 and ::1, then each `--host` once (IP addresses become IP SANs).
fn server_names(hosts: &[String]) -> anyhow::Result<Vec<String>> {
    let mut names: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
    for h in hosts {
        let h = h.trim();
        let h = match h.parse::<IpAddr>() {
            Ok(ip) => ip.to_string(),
            Err(_) => {
                let dns = h.to_ascii_lowercase();
                let valid = !dns.is_empty()
                    && dns.len() <= 253
                    && dns.split('.').enumerate().all(|(i, label)| {
                        (!label.is_empty() && label.len() <= 63)
                            && (label
                                .bytes()
                                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                                || (i == 0 && label == "*"))
                            && !label.starts_with('-')
                            && !label.ends_with('-')
                    });
                if !valid {
                    bail!("--host {h:?}: not a DNS name or an IP address");
                }
                dns
            }
        };
        if !names.contains(&h) {
            names.push(h);
        }
    }
    Ok(names)
}

/// From yesterday (clocks disagree) to `days` days from today.
fn validity(days: u32) -> anyhow::Result<(chrono::NaiveDate, chrono::NaiveDate)> {
    let today = chrono::Utc::now().date_naive();
    let from = today
        .pred_opt()
        .ok_or_else(|| anyhow!("the date is out of range"))?;
    let until = today
        .checked_add_days(chrono::Days::new(u64::from(days)))
        .ok_or_else(|| anyhow!("--days {days}: the date is out of range"))?;
    Ok((from, until))
}

/// Writes every file into `dir` (created if missing), each 0600 from creation. Without
/// `force`, any existing file stops everything before a byte is written.
fn write_all(dir: &Path, files: &[Output], force: bool) -> anyhow::Result<()> {
    if !dir.as_os_str().is_empty() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let paths: Vec<PathBuf> = files.iter().map(|f| dir.join(f.name)).collect();
    if !force {
        let existing: Vec<String> = paths
            .iter()
            .filter(|p| p.symlink_metadata().is_ok())
            .map(|p| p.display().to_string())
            .collect();
        if !existing.is_empty() {
            bail!(
                "{} already exist{}: certificates and keys are never overwritten; choose another folder with --out, move them away, or pass --force to replace them",
                existing.join(", "),
                if existing.len() == 1 { "s" } else { "" }
            );
        }
    }
    for (f, path) in files.iter().zip(&paths) {
        if force {
            match std::fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => bail!("cannot replace {}: {e}", path.display()),
            }
        }
        let mut file = create_private(path)?;
        file.write_all(f.pem.as_bytes())
            .and_then(|()| file.sync_all())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Creates `path`, which must not exist, readable and writable by its owner only.
fn create_private(path: &Path) -> anyhow::Result<File> {
    super::keys::create_private(
        path,
        "certificates and keys are never overwritten; pass --force to replace them",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_names_need_no_escaping() {
        for ok in ["demo-agent", "deploy-bot", "a", "etl_2.prod"] {
            assert!(check_agent_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a,b", "CN=x", "a b", "-x", ".x", "x/y", "é"] {
            assert!(check_agent_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn server_names_always_cover_the_loopback_and_take_hosts_once() {
        let names = server_names(&[
            "Airlock.Local".into(),
            "10.0.0.2".into(),
            "localhost".into(),
        ])
        .unwrap();
        assert_eq!(
            names,
            ["localhost", "127.0.0.1", "::1", "airlock.local", "10.0.0.2"]
        );
        assert!(server_names(&["bad name".into()]).is_err());
        assert!(server_names(&["-x.example".into()]).is_err());
    }

    #[test]
    fn the_printed_config_names_the_files_and_the_exact_subject() {
        let c = config_lines("certs", "demo-agent");
        assert!(c.contains("  cert: certs/airlock.pem\n"), "{c}");
        assert!(c.contains("  key: certs/airlock-key.pem\n"), "{c}");
        assert!(c.contains("  client_ca: certs/dev-ca.pem\n"), "{c}");
        assert!(c.contains("mtls: {subject: \"CN=demo-agent\"}"), "{c}");
    }
}
