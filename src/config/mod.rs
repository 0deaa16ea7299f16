//! Configuration: `airlock.yaml` parsed in two stages.
//!
//! [`raw`] holds the serde shapes (unknown keys rejected); [`Config::load`] turns them
//! into validated, compiled values: socket addresses, durations, byte sizes, header
//! names, `${VAR}` expanded from the environment. A running proxy never meets an
//! unchecked value. Every problem is a [`Diagnostic`] with `file:line:col`.

pub mod raw;

use http::{HeaderName, HeaderValue};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// One problem found in a config or rules file, printed as `file:line:col: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub line: usize,
    pub col: usize,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.line,
            self.col,
            self.message
        )
    }
}

/// A list of diagnostics, the error type of every loader.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

/// Source text of one YAML file, kept to turn a value back into `line:col`.
pub struct Source {
    pub file: PathBuf,
    pub text: String,
}

impl Source {
    pub fn read(file: &Path) -> Result<Source, Diagnostics> {
        match std::fs::read_to_string(file) {
            Ok(text) => Ok(Source {
                file: file.to_path_buf(),
                text,
            }),
            Err(e) => Err(Diagnostics(vec![Diagnostic {
                file: file.to_path_buf(),
                line: 1,
                col: 1,
                message: format!("cannot read: {e}"),
            }])),
        }
    }

    /// A diagnostic at the first place `needle` appears after `after` (both searched
    /// outside comments), or at 1:1 when it cannot be found.
    pub fn diag_at(&self, after: Option<&str>, needle: &str, message: String) -> Diagnostic {
        let (line, col) = self.locate(after, needle).unwrap_or((1, 1));
        Diagnostic {
            file: self.file.clone(),
            line,
            col,
            message,
        }
    }

    /// A diagnostic at the `n`-th (0-based) place `needle` appears after `after`.
    pub fn diag_nth(&self, after: &str, needle: &str, n: usize, message: String) -> Diagnostic {
        let mut at = self.find_from(0, after);
        for _ in 0..=n {
            at = at.and_then(|a| self.find_from(a + 1, needle));
        }
        let (line, col) = at.map(|a| self.line_col(a)).unwrap_or((1, 1));
        Diagnostic {
            file: self.file.clone(),
            line,
            col,
            message,
        }
    }

    fn line_col(&self, at: usize) -> (usize, usize) {
        let before = &self.text[..at];
        let line = before.matches('\n').count() + 1;
        let col = at - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
        (line, col)
    }

    fn locate(&self, after: Option<&str>, needle: &str) -> Option<(usize, usize)> {
        let mut start = 0;
        if let Some(anchor) = after {
            start = self.find_from(0, anchor)?;
        }
        let at = self.find_from(start, needle).or_else(|| {
            if after.is_some() {
                Some(start)
            } else {
                None
            }
        })?;
        Some(self.line_col(at))
    }

    fn find_from(&self, from: usize, needle: &str) -> Option<usize> {
        if needle.is_empty() {
            return None;
        }
        let mut offset = from;
        while let Some(rel) = self.text.get(offset..)?.find(needle) {
            let at = offset + rel;
            let line_start = self.text[..at].rfind('\n').map(|i| i + 1).unwrap_or(0);
            if !self.text[line_start..at].contains('#') {
                return Some(at);
            }
            offset = at + needle.len();
        }
        None
    }

    /// Converts a serde_yaml error into a located diagnostic.
    pub fn yaml_error(&self, e: &serde_yaml::Error) -> Diagnostic {
        let (line, col) = e
            .location()
            .map(|l| (l.line(), l.column()))
            .unwrap_or((1, 1));
        let mut message = e.to_string();
        // serde_yaml appends " at line X column Y"; the location is already in front.
        if let Some(i) = message.find(" at line ") {
            message.truncate(i);
        }
        Diagnostic {
            file: self.file.clone(),
            line,
            col,
            message,
        }
    }
}

/// `enforce` holds and denies; `observe` forwards everything and logs what it would have done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Enforce,
    Observe,
}

/// Which requests reach the audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditLevel {
    /// Held, denied and failed-authentication requests (and everything about approvals).
    Held,
    /// Every request.
    All,
}

/// Where an upstream's requests go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The built-in echo upstream (`url: demo:`), served inside the process.
    Demo,
    /// A real HTTP(S) server.
    Http {
        https: bool,
        authority: http::uri::Authority,
        /// Path prefix of `url`, without a trailing slash ("" for none).
        base_path: String,
    },
}

/// How a request is routed to an upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Path prefix, stripped before forwarding ("/cloud").
    Prefix(String),
    /// Host header (lowercase, no port).
    Host(String),
}

#[derive(Debug, Clone)]
pub struct Upstream {
    pub name: String,
    pub route: Route,
    pub target: Target,
    pub url: String,
    pub inject: Vec<(HeaderName, HeaderValue)>,
    pub ca: Option<PathBuf>,
    pub timeout: Duration,
    pub connect_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct Agent {
    pub id: String,
    /// SHA-256 of the agent's key; `None` for agents identified another way (JWT, mTLS).
    pub key_digest: Option<[u8; 32]>,
    /// Header carrying the key; `authorization` means `Authorization: Bearer <key>`.
    pub header: HeaderName,
    pub owner: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Reviewer {
    pub id: String,
    pub groups: Vec<String>,
    pub token_digest: Option<[u8; 32]>,
    pub slack: Option<String>,
    pub teams: Option<String>,
}

#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    pub public_url: Option<String>,
}

#[derive(Debug, Clone)]
pub struct AuditConfig {
    pub level: AuditLevel,
    pub file: Option<PathBuf>,
    pub signing_key: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct Limits {
    pub max_body: usize,
    pub inspect_body: usize,
    pub header_timeout: Duration,
    /// How long a body that must be read (inspected or held) may take to arrive.
    pub body_timeout: Duration,
    pub max_held: usize,
    /// Held requests one agent may have at once (default: `max_held`).
    pub max_held_per_agent: usize,
    pub max_connections: usize,
}

#[derive(Debug, Clone)]
pub struct ApprovalDefaults {
    pub timeout: Duration,
    pub reuse: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Human,
    Json,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub file: PathBuf,
    pub listen: SocketAddr,
    pub admin: Option<AdminConfig>,
    pub workers: usize,
    pub mode: Mode,
    pub default_allow: bool,
    pub store: String,
    pub upstreams: Vec<Upstream>,
    pub rules: Option<PathBuf>,
    pub agents: Vec<Agent>,
    pub reviewers: Vec<Reviewer>,
    pub audit: AuditConfig,
    pub limits: Limits,
    pub approval: ApprovalDefaults,
    pub log_format: LogFormat,
    pub log_level: String,
}

/// Parses a duration such as `15m`, `10s`, `1h 30m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| format!("invalid duration {s:?}: {e}"))
}

/// Parses a byte size such as `10MiB`, `512KiB`, `1MB`, `4096`.
pub fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: usize = num
        .parse()
        .map_err(|_| format!("invalid size {s:?}: expected a number with an optional unit"))?;
    let mult: usize = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "K" | "k" => 1 << 10,
        "MiB" | "M" => 1 << 20,
        "GiB" | "G" => 1 << 30,
        "KB" | "kB" => 1000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        other => return Err(format!("invalid size {s:?}: unknown unit {other:?}")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("invalid size {s:?}: too large"))
}

/// Expands `${VAR}` from the environment. An unset variable is an error, never "".
pub fn expand_env(s: &str) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("unterminated ${{ in {s:?}"))?;
        let name = &after[..end];
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("invalid variable name ${{{name}}}"));
        }
        match std::env::var(name) {
            Ok(v) => out.push_str(&v),
            Err(_) => return Err(format!("environment variable {name} is not set")),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Parses `sha256:` + 64 lowercase hex digits.
pub fn parse_digest(s: &str) -> Result<[u8; 32], String> {
    let hexpart = s
        .strip_prefix("sha256:")
        .ok_or_else(|| "expected sha256: followed by 64 lowercase hex digits".to_string())?;
    if hexpart.len() != 64
        || !hexpart
            .chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
    {
        return Err("expected sha256: followed by 64 lowercase hex digits".into());
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(hexpart, &mut out).map_err(|e| e.to_string())?;
    Ok(out)
}

fn resolve(base: &Path, p: &str) -> PathBuf {
    let path = Path::new(p);
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        base.join(path)
    }
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(file: &Path) -> Result<Config, Diagnostics> {
        let src = Source::read(file)?;
        Config::parse(&src)
    }

    /// Parses and validates config text.
    pub fn parse(src: &Source) -> Result<Config, Diagnostics> {
        let raw: raw::RawConfig =
            serde_yaml::from_str(&src.text).map_err(|e| Diagnostics(vec![src.yaml_error(&e)]))?;
        Config::from_raw(src, raw)
    }

    fn from_raw(src: &Source, raw: raw::RawConfig) -> Result<Config, Diagnostics> {
        let mut errs = Vec::new();
        let base = src.file.parent().map(Path::to_path_buf).unwrap_or_default();
        let mut err = |after: Option<&str>, needle: &str, msg: String| {
            errs.push(src.diag_at(after, needle, msg));
        };

        let listen_s = raw.listen.as_deref().unwrap_or("127.0.0.1:8080");
        let listen = listen_s.parse::<SocketAddr>().unwrap_or_else(|e| {
            err(
                Some("listen:"),
                listen_s,
                format!("listen: invalid address {listen_s:?}: {e}"),
            );
            SocketAddr::from(([127, 0, 0, 1], 8080))
        });

        let admin = match raw.admin {
            Some(a) => {
                let l = a.listen.as_deref().unwrap_or("127.0.0.1:9090");
                match l.parse::<SocketAddr>() {
                    Ok(listen) => Some(AdminConfig {
                        listen,
                        public_url: a.public_url,
                    }),
                    Err(e) => {
                        err(
                            Some("admin:"),
                            l,
                            format!("admin.listen: invalid address {l:?}: {e}"),
                        );
                        None
                    }
                }
            }
            None => None,
        };

        let mode = match raw.mode.as_deref() {
            None | Some("enforce") => Mode::Enforce,
            Some("observe") => Mode::Observe,
            Some(m) => {
                err(
                    Some("mode:"),
                    m,
                    format!("mode: expected enforce or observe, got {m:?}"),
                );
                Mode::Enforce
            }
        };
        let default_allow = match raw.default.as_deref() {
            None | Some("allow") => true,
            Some("deny") => false,
            Some(d) => {
                err(
                    Some("default:"),
                    d,
                    format!("default: expected allow or deny, got {d:?}"),
                );
                true
            }
        };
        let store = match expand_env(raw.store.as_deref().unwrap_or("sqlite://airlock.db")) {
            Ok(s) => s,
            Err(e) => {
                err(Some("store:"), "${", format!("store: {e}"));
                String::new()
            }
        };
        if !(store.starts_with("sqlite:")
            || store.starts_with("postgres://")
            || store.starts_with("postgresql://"))
        {
            err(
                Some("store:"),
                &store,
                format!("store: expected sqlite://PATH or postgres://…, got {store:?}"),
            );
        }

        let mut upstreams = Vec::new();
        let mut names = std::collections::HashSet::new();
        for u in raw.upstreams {
            let anchor = format!("name: {}", u.name);
            let at = Some(anchor.as_str());
            if !names.insert(u.name.clone()) {
                err(
                    None,
                    &anchor,
                    format!("upstream {:?} is defined twice", u.name),
                );
            }
            let route = match (&u.prefix, &u.host) {
                (Some(p), None) => {
                    if !p.starts_with('/') || p.len() < 2 || p.ends_with('/') {
                        err(at, p, format!("upstream {}: prefix must start with '/' and not end with '/', got {p:?}", u.name));
                    }
                    Route::Prefix(p.clone())
                }
                (None, Some(h)) => Route::Host(h.to_ascii_lowercase()),
                _ => {
                    err(
                        None,
                        &anchor,
                        format!("upstream {}: set exactly one of prefix or host", u.name),
                    );
                    Route::Prefix(String::new())
                }
            };
            let target = if u.url == "demo:" {
                Target::Demo
            } else {
                match parse_target(&u.url) {
                    Ok(t) => t,
                    Err(e) => {
                        err(at, &u.url, format!("upstream {}: {e}", u.name));
                        Target::Demo
                    }
                }
            };
            let mut inject = Vec::new();
            for (k, v) in &u.inject {
                let name = match HeaderName::from_bytes(k.as_bytes()) {
                    Ok(n) => n,
                    Err(_) => {
                        err(
                            at,
                            k,
                            format!("upstream {}: invalid header name {k:?}", u.name),
                        );
                        continue;
                    }
                };
                match expand_env(v) {
                    Ok(val) => match HeaderValue::from_str(&val) {
                        Ok(mut hv) => {
                            hv.set_sensitive(true);
                            inject.push((name, hv));
                        }
                        Err(_) => err(
                            at,
                            v,
                            format!(
                                "upstream {}: inject {k}: value is not a valid header value",
                                u.name
                            ),
                        ),
                    },
                    Err(e) => err(at, v, format!("upstream {}: inject {k}: {e}", u.name)),
                }
            }
            let timeout = dur_or(
                &mut err,
                at,
                u.timeout.as_deref(),
                "30s",
                &u.name,
                "timeout",
            );
            let connect_timeout = dur_or(
                &mut err,
                at,
                u.connect_timeout.as_deref(),
                "5s",
                &u.name,
                "connect_timeout",
            );
            let ca = u.ca.as_deref().map(|c| resolve(&base, c));
            if let Some(c) = &ca {
                if !c.exists() {
                    err(
                        at,
                        u.ca.as_deref().unwrap_or(""),
                        format!(
                            "upstream {}: ca file {} does not exist",
                            u.name,
                            c.display()
                        ),
                    );
                }
            }
            upstreams.push(Upstream {
                name: u.name,
                route,
                target,
                url: u.url,
                inject,
                ca,
                timeout,
                connect_timeout,
            });
        }

        let mut agents = Vec::new();
        let mut ids = std::collections::HashSet::new();
        for a in raw.agents {
            let anchor = format!("id: {}", a.id);
            if !ids.insert(a.id.clone()) {
                err(None, &anchor, format!("agent {:?} is defined twice", a.id));
            }
            let key_digest = match &a.key {
                Some(k) => match parse_digest(k) {
                    Ok(d) => Some(d),
                    Err(e) => {
                        err(
                            Some(&anchor),
                            k,
                            format!("agent {}: key: {e} (run `airlock keys new agent`)", a.id),
                        );
                        None
                    }
                },
                None => None,
            };
            if a.key.is_none() && a.jwt.is_none() && a.mtls.is_none() {
                err(
                    None,
                    &anchor,
                    format!("agent {}: needs a key (or jwt / mtls)", a.id),
                );
            }
            if a.jwt.is_some() || a.mtls.is_some() {
                err(Some(&anchor), if a.jwt.is_some() { "jwt:" } else { "mtls:" }, format!("agent {}: jwt and mtls identities are not supported by this build yet; use key:", a.id));
            }
            let header = match a.header.as_deref() {
                None => http::header::AUTHORIZATION,
                Some(h) => match HeaderName::from_bytes(h.as_bytes()) {
                    Ok(n) => n,
                    Err(_) => {
                        err(
                            Some(&anchor),
                            h,
                            format!("agent {}: invalid header name {h:?}", a.id),
                        );
                        http::header::AUTHORIZATION
                    }
                },
            };
            agents.push(Agent {
                id: a.id,
                key_digest,
                header,
                owner: a.owner,
            });
        }

        let mut reviewers = Vec::new();
        for r in raw.reviewers {
            let anchor = format!("id: {}", r.id);
            if !ids.insert(r.id.clone()) {
                err(
                    None,
                    &anchor,
                    format!(
                        "{:?} is defined twice (agent and reviewer ids share one namespace)",
                        r.id
                    ),
                );
            }
            let token_digest = match &r.token {
                Some(t) => match parse_digest(t) {
                    Ok(d) => Some(d),
                    Err(e) => {
                        err(
                            Some(&anchor),
                            t,
                            format!(
                                "reviewer {}: token: {e} (run `airlock keys new reviewer`)",
                                r.id
                            ),
                        );
                        None
                    }
                },
                None => None,
            };
            reviewers.push(Reviewer {
                id: r.id,
                groups: r.groups,
                token_digest,
                slack: r.slack,
                teams: r.teams,
            });
        }
        // An agent key and a reviewer token must never be the same secret.
        for a in &agents {
            for r in &reviewers {
                if a.key_digest.is_some() && a.key_digest == r.token_digest {
                    err(
                        None,
                        &format!("id: {}", r.id),
                        format!("reviewer {} uses the same token as agent {}", r.id, a.id),
                    );
                }
            }
        }

        let audit = match raw.audit {
            Some(a) => {
                let level = match a.level.as_deref() {
                    None | Some("held") => AuditLevel::Held,
                    Some("all") => AuditLevel::All,
                    Some(l) => {
                        err(
                            Some("audit:"),
                            l,
                            format!("audit.level: expected held or all, got {l:?}"),
                        );
                        AuditLevel::Held
                    }
                };
                let signing_key = a.signing_key.as_deref().map(|k| resolve(&base, k));
                if let Some(k) = &signing_key {
                    if !k.exists() {
                        err(
                            Some("audit:"),
                            a.signing_key.as_deref().unwrap_or(""),
                            format!("audit.signing_key: {} does not exist", k.display()),
                        );
                    }
                }
                AuditConfig {
                    level,
                    file: a.file.as_deref().map(|f| resolve(&base, f)),
                    signing_key,
                }
            }
            None => AuditConfig {
                level: AuditLevel::Held,
                file: None,
                signing_key: None,
            },
        };

        let rl = raw.limits;
        let mut limit_errs = Vec::new();
        let mut size = |field: &str, v: Option<&String>, def: usize| -> usize {
            match v {
                None => def,
                Some(v) => parse_size(v).unwrap_or_else(|e| {
                    limit_errs.push(src.diag_at(
                        Some(&format!("{field}:")),
                        v,
                        format!("limits.{field}: {e}"),
                    ));
                    def
                }),
            }
        };
        let max_body = size(
            "max_body",
            rl.as_ref().and_then(|l| l.max_body.as_ref()),
            10 << 20,
        );
        let inspect_body = size(
            "inspect_body",
            rl.as_ref().and_then(|l| l.inspect_body.as_ref()),
            1 << 20,
        );
        let header_timeout_s = rl
            .as_ref()
            .and_then(|l| l.header_timeout.clone())
            .unwrap_or_else(|| "10s".into());
        let header_timeout = parse_duration(&header_timeout_s).unwrap_or_else(|e| {
            limit_errs.push(src.diag_at(
                Some("header_timeout:"),
                &header_timeout_s,
                format!("limits.header_timeout: {e}"),
            ));
            Duration::from_secs(10)
        });
        let body_timeout_s = rl
            .as_ref()
            .and_then(|l| l.body_timeout.clone())
            .unwrap_or_else(|| "30s".into());
        let body_timeout = parse_duration(&body_timeout_s).unwrap_or_else(|e| {
            limit_errs.push(src.diag_at(
                Some("body_timeout:"),
                &body_timeout_s,
                format!("limits.body_timeout: {e}"),
            ));
            Duration::from_secs(30)
        });
        let limits = Limits {
            max_body,
            inspect_body,
            header_timeout,
            body_timeout,
            max_held: rl.as_ref().and_then(|l| l.max_held).unwrap_or(10_000),
            max_held_per_agent: rl
                .as_ref()
                .and_then(|l| l.max_held_per_agent.or(l.max_held))
                .unwrap_or(10_000),
            max_connections: rl
                .as_ref()
                .and_then(|l| l.max_connections)
                .unwrap_or(10_000),
        };
        if limits.inspect_body > limits.max_body && limit_errs.is_empty() {
            limit_errs.push(src.diag_at(
                Some("limits:"),
                "inspect_body",
                "limits.inspect_body must not exceed limits.max_body".into(),
            ));
        }

        let approval = {
            let a = raw.approval;
            let t = a
                .as_ref()
                .and_then(|a| a.timeout.clone())
                .unwrap_or_else(|| "15m".into());
            let r = a
                .as_ref()
                .and_then(|a| a.reuse.clone())
                .unwrap_or_else(|| "10m".into());
            let timeout = parse_duration(&t).unwrap_or_else(|e| {
                limit_errs.push(src.diag_at(
                    Some("approval:"),
                    &t,
                    format!("approval.timeout: {e}"),
                ));
                Duration::from_secs(900)
            });
            let reuse = parse_duration(&r).unwrap_or_else(|e| {
                limit_errs.push(src.diag_at(Some("approval:"), &r, format!("approval.reuse: {e}")));
                Duration::from_secs(600)
            });
            ApprovalDefaults { timeout, reuse }
        };

        let (log_format, log_level) = match raw.log {
            Some(l) => {
                let f = match l.format.as_deref() {
                    None | Some("human") => LogFormat::Human,
                    Some("json") => LogFormat::Json,
                    Some(f) => {
                        limit_errs.push(src.diag_at(
                            Some("log:"),
                            f,
                            format!("log.format: expected human or json, got {f:?}"),
                        ));
                        LogFormat::Human
                    }
                };
                (f, l.level.unwrap_or_else(|| "info".into()))
            }
            None => (LogFormat::Human, "info".into()),
        };

        if raw.tls.is_some() {
            limit_errs.push(src.diag_at(
                None,
                "tls:",
                "tls: TLS on the agent listener is not supported by this build yet".into(),
            ));
        }
        if let Some(ch) = &raw.channels {
            if ch.as_mapping().map(|m| !m.is_empty()).unwrap_or(true) {
                limit_errs.push(src.diag_at(None, "channels:", "channels: chat channels are not supported by this build yet (use the REST API or CLI)".into()));
            }
        }

        errs.extend(limit_errs);
        if !errs.is_empty() {
            return Err(Diagnostics(errs));
        }
        Ok(Config {
            file: src.file.clone(),
            listen,
            admin,
            workers: raw.workers,
            mode,
            default_allow,
            store,
            upstreams,
            rules: raw.rules.as_deref().map(|r| resolve(&base, r)),
            agents,
            reviewers,
            audit,
            limits,
            approval,
            log_format,
            log_level,
        })
    }
}

fn dur_or(
    err: &mut impl FnMut(Option<&str>, &str, String),
    at: Option<&str>,
    v: Option<&str>,
    def: &str,
    upstream: &str,
    field: &str,
) -> Duration {
    let s = v.unwrap_or(def);
    match parse_duration(s) {
        Ok(d) => d,
        Err(e) => {
            err(at, s, format!("upstream {upstream}: {field}: {e}"));
            Duration::from_secs(30)
        }
    }
}

fn parse_target(url: &str) -> Result<Target, String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("invalid url {url:?}: {e}"))?;
    let https = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => {
            return Err(format!(
                "url {url:?} must start with http://, https:// or be demo:"
            ))
        }
    };
    let authority = uri
        .authority()
        .cloned()
        .ok_or_else(|| format!("url {url:?} has no host"))?;
    if uri.query().is_some() {
        return Err(format!("url {url:?} must not have a query"));
    }
    let base_path = uri.path().trim_end_matches('/').to_string();
    Ok(Target::Http {
        https,
        authority,
        base_path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_size("10MiB"), Ok(10 << 20));
        assert_eq!(parse_size("1 KiB"), Ok(1024));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("ten").is_err());
        assert!(parse_size("1XB").is_err());
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn env_expansion_fails_on_unset() {
        std::env::set_var("AIRLOCK_TEST_SET", "v");
        assert_eq!(
            expand_env("a ${AIRLOCK_TEST_SET} b").as_deref(),
            Ok("a v b")
        );
        assert!(expand_env("${AIRLOCK_TEST_UNSET_XYZ}").is_err());
        assert!(expand_env("${oops").is_err());
    }
}
