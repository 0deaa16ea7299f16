//! `airlock certs dev`, run as the real binary: six PEM files, each mode 0600, a CA
//! that verifies the server certificate (localhost, 127.0.0.1, ::1, `--host`) and the
//! agent's client certificate; never an overwrite without `--force`. And the README's
//! "TLS and mTLS in a minute", followed step by step: its config lines are what the
//! command prints, and with them `airlock serve` answers the README's curl over mTLS.

mod common;
use common::*;

use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

const FILES: [&str; 6] = [
    "dev-ca.pem",
    "dev-ca-key.pem",
    "airlock.pem",
    "airlock-key.pem",
    "agent.pem",
    "agent-key.pem",
];

/// Runs `airlock certs dev ARGS` in `dir`: (exit code, stdout, stderr).
fn certs_dev(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(airlock_bin())
        .current_dir(dir)
        .args(["certs", "dev"])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn read_all(dir: &Path) -> Vec<String> {
    FILES
        .iter()
        .map(|f| std::fs::read_to_string(dir.join(f)).unwrap())
        .collect()
}

fn one_cert(path: &Path) -> CertificateDer<'static> {
    let pem = std::fs::read(path).unwrap();
    let mut certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(certs.len(), 1, "{}", path.display());
    certs.remove(0)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(ca: &Path) -> Arc<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(one_cert(ca)).unwrap();
    Arc::new(roots)
}

/// Whether the server certificate in `dir` verifies for `name` against the dev CA.
fn server_cert_valid_for(dir: &Path, name: &str) -> bool {
    let v = rustls::client::WebPkiServerVerifier::builder_with_provider(
        roots(&dir.join("dev-ca.pem")),
        provider(),
    )
    .build()
    .unwrap();
    v.verify_server_cert(
        &one_cert(&dir.join("airlock.pem")),
        &[],
        &ServerName::try_from(name.to_string()).unwrap(),
        &[],
        UnixTime::now(),
    )
    .is_ok()
}

/// Whether `cert` verifies as a client certificate against the CA in `ca`.
fn client_cert_valid(ca: &Path, cert: &Path) -> bool {
    let v = rustls::server::WebPkiClientVerifier::builder_with_provider(roots(ca), provider())
        .build()
        .unwrap();
    v.verify_client_cert(&one_cert(cert), &[], UnixTime::now())
        .is_ok()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(unix)]
fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn certs_dev_writes_a_ca_a_server_and_an_agent_certificate_that_verify() {
    let ws = Workspace::new();
    let (code, out, err) = certs_dev(
        ws.path(),
        &[
            "--out",
            "tmp",
            "--agent",
            "etl-bot",
            "--host",
            "airlock.test",
            "--host",
            "10.1.2.3",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    let dir = ws.path().join("tmp");
    for f in FILES {
        let p = dir.join(f);
        assert!(p.is_file(), "{} is written", p.display());
        #[cfg(unix)]
        assert_eq!(mode(&p), 0o600, "{f} is private");
        assert!(out.contains(&format!("wrote tmp/{f} ")), "{out}");
    }
    // The server certificate: always the loopback names, plus each --host.
    for name in ["localhost", "127.0.0.1", "::1", "airlock.test", "10.1.2.3"] {
        assert!(server_cert_valid_for(&dir, name), "valid for {name}");
    }
    assert!(!server_cert_valid_for(&dir, "example.com"));
    // The agent's client certificate: signed by the CA, named as the config says.
    assert!(client_cert_valid(
        &dir.join("dev-ca.pem"),
        &dir.join("agent.pem")
    ));
    let agent = one_cert(&dir.join("agent.pem"));
    assert!(contains(&agent, b"spiffe://airlock.dev/agent/etl-bot"));
    assert!(contains(&agent, b"etl-bot"));
    // Another CA does not vouch for it.
    let other = Workspace::new();
    assert_eq!(certs_dev(other.path(), &[]).0, 0);
    assert!(!client_cert_valid(
        &other.path().join("certs/dev-ca.pem"),
        &dir.join("agent.pem")
    ));
    // What to do next is printed: the config lines and the curl.
    for line in [
        "tls:",
        "  cert: tmp/airlock.pem",
        "  key: tmp/airlock-key.pem",
        "  client_ca: tmp/dev-ca.pem",
        "  - id: etl-bot",
        "    mtls: {subject: \"CN=etl-bot\"}",
    ] {
        assert!(out.lines().any(|l| l == line), "{line:?} in:\n{out}");
    }
    assert!(
        out.contains("curl --cacert tmp/dev-ca.pem --cert tmp/agent.pem --key tmp/agent-key.pem https://localhost:8443/"),
        "{out}"
    );
}

#[test]
fn certs_dev_never_overwrites_without_force() {
    let ws = Workspace::new();
    assert_eq!(certs_dev(ws.path(), &["--out", "tmp"]).0, 0);
    let dir = ws.path().join("tmp");
    let first = read_all(&dir);

    let (code, out, err) = certs_dev(ws.path(), &["--out", "tmp"]);
    assert_ne!(code, 0, "{out}");
    assert!(
        err.contains("already exist") && err.contains("--force") && err.contains("dev-ca.pem"),
        "{err}"
    );
    assert_eq!(read_all(&dir), first, "nothing was touched");

    // One file in the way is enough to refuse, and nothing else is written.
    let lone = ws.path().join("lone");
    std::fs::create_dir_all(&lone).unwrap();
    std::fs::write(lone.join("agent-key.pem"), "mine").unwrap();
    let (code, _, err) = certs_dev(ws.path(), &["--out", "lone"]);
    assert_ne!(code, 0);
    assert!(err.contains("agent-key.pem"), "{err}");
    assert_eq!(std::fs::read_dir(&lone).unwrap().count(), 1);

    let (code, out, err) = certs_dev(ws.path(), &["--out", "tmp", "--force"]);
    assert_eq!(code, 0, "{out}{err}");
    let second = read_all(&dir);
    for (i, f) in FILES.iter().enumerate() {
        assert_ne!(first[i], second[i], "{f} was replaced");
        #[cfg(unix)]
        assert_eq!(mode(&dir.join(f)), 0o600, "{f} is private");
    }
    assert!(client_cert_valid(
        &dir.join("dev-ca.pem"),
        &dir.join("agent.pem")
    ));
    assert!(server_cert_valid_for(&dir, "localhost"));
}

#[test]
fn certs_dev_refuses_names_it_cannot_put_in_a_certificate_as_is() {
    let ws = Workspace::new();
    for args in [
        &["--agent", "CN=x,O=y"][..],
        &["--agent", ""][..],
        &["--host", "not a host"][..],
        &["--days", "0"][..],
    ] {
        let (code, out, err) = certs_dev(ws.path(), args);
        assert_ne!(code, 0, "{args:?}: {out}");
        assert!(err.contains(args[0]), "{args:?}: {err}");
        assert!(!ws.path().join("certs").join("dev-ca.pem").exists());
    }
}

// ---- The README's "TLS and mTLS in a minute", step by step ----

/// The README's subsection, up to the next heading.
fn readme_subsection() -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let start = readme
        .find("### TLS and mTLS in a minute")
        .expect("a 'TLS and mTLS in a minute' subsection in README.md");
    let rest = &readme[start + 4..];
    let end = rest.find("\n#").unwrap_or(rest.len());
    rest[..end].to_string()
}

/// The fenced blocks of `lang` in `text`.
fn blocks(text: &str, lang: &str) -> Vec<String> {
    text.split(&format!("```{lang}\n"))
        .skip(1)
        .filter_map(|b| b.split("```").next())
        .map(str::to_string)
        .collect()
}

/// The README's curl: (cacert, cert, key, url).
fn readme_curl(section: &str) -> (String, String, String, String) {
    let sh = blocks(section, "sh").join("\n").replace("\\\n", " ");
    let line = sh
        .lines()
        .find(|l| l.trim_start().starts_with("curl "))
        .expect("a curl in the subsection");
    let words: Vec<&str> = line.split_whitespace().collect();
    let after = |flag: &str| {
        let i = words
            .iter()
            .position(|w| *w == flag)
            .unwrap_or_else(|| panic!("{flag} in {line}"));
        words[i + 1].to_string()
    };
    let url = words
        .iter()
        .find(|w| w.starts_with("https://"))
        .expect("an https URL")
        .to_string();
    (after("--cacert"), after("--cert"), after("--key"), url)
}

/// A running `airlock serve`, killed on drop; the proxy's address whatever its scheme.
struct Served {
    child: Child,
    proxy: std::net::SocketAddr,
    stderr: Arc<Mutex<String>>,
}

impl Served {
    fn start(cfg: &Path) -> Served {
        let mut child = Command::new(airlock_bin())
            .args(["serve", "-c"])
            .arg(cfg)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut proxy = None;
        for line in lines.by_ref().map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix("airlock: proxy listening on ") {
                let addr = rest.split("://").last().unwrap_or(rest);
                proxy = Some(addr.trim_end_matches('/').parse().unwrap());
                break;
            }
        }
        std::thread::spawn(move || for _ in lines {});
        let Some(proxy) = proxy else {
            let _ = child.wait();
            panic!(
                "airlock serve did not start with the README's config:\n{}",
                stderr.lock().unwrap()
            );
        };
        Served {
            child,
            proxy,
            stderr,
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The shipped airlock.yaml and rules in `ws`, with the README's lines merged in (the
/// listeners on ephemeral ports).
fn readme_config(ws: &Workspace, lines: &str) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for e in std::fs::read_dir(root.join("rules")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), ws.path().join("rules").join(e.file_name())).unwrap();
    }
    let shipped = std::fs::read_to_string(root.join("airlock.yaml")).unwrap();
    let mut cfg: serde_yaml::Value = serde_yaml::from_str(&shipped).unwrap();
    let add: serde_yaml::Value = serde_yaml::from_str(lines).unwrap();
    let add = add
        .as_mapping()
        .expect("the README's config lines are a mapping");
    let map = cfg.as_mapping_mut().unwrap();
    for (k, v) in add {
        match (k.as_str(), map.get_mut(k)) {
            (Some("agents"), Some(serde_yaml::Value::Sequence(agents))) => {
                agents.extend(v.as_sequence().unwrap().iter().cloned())
            }
            _ => {
                map.insert(k.clone(), v.clone());
            }
        }
    }
    assert!(map.contains_key("tls"), "the README's lines configure tls:");
    map.insert("listen".into(), "127.0.0.1:0".into());
    if let Some(admin) = map.get_mut("admin").and_then(|a| a.as_mapping_mut()) {
        admin.insert("listen".into(), "127.0.0.1:0".into());
    }
    ws.write("airlock.yaml", &serde_yaml::to_string(&cfg).unwrap())
}

#[tokio::test]
async fn the_readme_tls_and_mtls_minute_works() {
    let section = readme_subsection();
    assert!(section.contains("airlock certs dev"), "{section}");
    assert!(section.contains("airlock serve"), "{section}");
    let yaml = blocks(&section, "yaml");
    let lines = yaml.first().expect("the config lines as a yaml block");
    let (cacert, cert, key, url) = readme_curl(&section);
    assert_eq!(
        (cacert.as_str(), cert.as_str(), key.as_str()),
        ("certs/dev-ca.pem", "certs/agent.pem", "certs/agent-key.pem")
    );
    let path = url
        .strip_prefix("https://localhost:8443")
        .expect("the curl goes to https://localhost:8443");

    // 1. `airlock certs dev`, where airlock.yaml is; it prints the README's lines.
    let ws = Workspace::new();
    let (code, out, err) = certs_dev(ws.path(), &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(lines.as_str()),
        "the README's config lines are what certs dev prints:\n{lines}\n---\n{out}"
    );
    assert!(out.contains(&url), "{out}");

    // 2. The lines in airlock.yaml, then `airlock serve`.
    let cfg = readme_config(&ws, lines);
    let served = Served::start(&cfg);

    // 3. The curl: the dev CA, the agent's certificate and key, over mTLS.
    let read = |p: &str| std::fs::read(ws.path().join(p)).unwrap();
    let mut identity = read(&cert);
    identity.extend(read(&key));
    let mtls = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&read(&cacert)).unwrap())
        .identity(reqwest::Identity::from_pem(&identity).unwrap())
        .resolve("localhost", served.proxy)
        .build()
        .unwrap();
    let target = format!("https://localhost:{}{path}", served.proxy.port());
    let r = mtls.get(&target).send().await.unwrap_or_else(|e| {
        panic!(
            "the README's curl failed: {e:?}\n{}",
            served.stderr.lock().unwrap()
        )
    });
    let status = r.status();
    let body = r.text().await.unwrap();
    assert_eq!(status, 200, "{body}");

    // Without the agent's certificate, the same request is not let through.
    let anonymous = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&read(&cacert)).unwrap())
        .resolve("localhost", served.proxy)
        .build()
        .unwrap();
    if let Ok(r) = anonymous.get(&target).send().await {
        assert_ne!(r.status(), 200, "no client certificate, no access");
    }
}
