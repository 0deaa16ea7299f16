//! Raw → validated: turns the serde shapes of [`super::raw`] into a [`Config`], one
//! function per section, collecting every problem as a located [`Diagnostic`] instead
//! of stopping at the first.
//!
//! It reads the environment only for `${VAR}` (the store URL, and upstream `inject`
//! values when [`LoadOptions::inject_credentials`] is set) and the file system only to
//! check that named files exist. It never returns a partly valid config: any
//! diagnostic makes the whole load fail.

use super::raw::{
    RawAdmin, RawAgent, RawApprovalDefaults, RawAudit, RawConfig, RawLimits, RawLog, RawReviewer,
    RawUpstream,
};
use super::values::{expand_env, parse_digest, parse_duration, parse_size, parse_target, resolve};
use super::{
    AdminConfig, Agent, ApprovalDefaults, AuditConfig, AuditLevel, Config, Diagnostic, Diagnostics,
    Limits, LoadOptions, LogFormat, Mode, Reading, Reviewer, Route, Source, Target, Upstream,
    REFUSED_METHODS,
};
use http::{HeaderName, HeaderValue};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Validates `raw` (read from `src`) into a [`Config`].
pub(super) fn build(
    src: &Source,
    raw: RawConfig,
    options: LoadOptions,
) -> Result<Config, Diagnostics> {
    let mut b = Build {
        src,
        base: src.file.parent().map(Path::to_path_buf).unwrap_or_default(),
        options,
        errs: Vec::new(),
    };
    let listen = b.listen(raw.listen.as_deref());
    let tls = raw.tls.and_then(|t| b.tls(t, "tls", "tls:", true));
    let admin = raw.admin.and_then(|a| b.admin(a));
    let mode = b.mode(raw.mode.as_deref());
    let default_allow = b.default_allow(raw.default.as_deref());
    let store = b.store(raw.store.as_deref());
    let upstreams = b.upstreams(raw.upstreams);
    let mut ids = HashSet::new();
    let have_client_ca = tls.as_ref().is_some_and(|t| t.client_ca.is_some());
    let agents = b.agents(raw.agents, &mut ids, have_client_ca);
    let reviewers = b.reviewers(raw.reviewers, &mut ids);
    b.no_shared_secrets(&agents, &reviewers);
    let audit = b.audit(raw.audit);
    let limits = b.limits(raw.limits.as_ref());
    let approval = b.approval(raw.approval.as_ref());
    let (log_format, log_level) = b.log(raw.log);
    let channels = b.channels(raw.channels);
    let rules = raw.rules.as_deref().map(|r| resolve(&b.base, r));

    if !b.errs.is_empty() {
        return Err(Diagnostics(b.errs));
    }
    Ok(Config {
        file: src.file.clone(),
        listen,
        tls,
        admin,
        workers: raw.workers,
        mode,
        default_allow,
        store,
        upstreams,
        rules,
        agents,
        reviewers,
        audit,
        limits,
        approval,
        log_format,
        log_level,
        channels,
    })
}

/// The state of one validation: where the file is and what is wrong so far.
pub(super) struct Build<'a> {
    src: &'a Source,
    /// The config file's folder: relative paths are taken from here.
    pub(super) base: PathBuf,
    options: LoadOptions,
    errs: Vec<Diagnostic>,
}

impl Build<'_> {
    /// Records a problem at the first `needle` after `after` (see [`Source::diag_at`]).
    pub(super) fn err(&mut self, after: Option<&str>, needle: &str, message: String) {
        self.errs.push(self.src.diag_at(after, needle, message));
    }

    fn listen(&mut self, raw: Option<&str>) -> SocketAddr {
        let listen_s = raw.unwrap_or("127.0.0.1:8080");
        listen_s.parse::<SocketAddr>().unwrap_or_else(|e| {
            self.err(
                Some("listen:"),
                listen_s,
                format!("listen: invalid address {listen_s:?}: {e}"),
            );
            SocketAddr::from(([127, 0, 0, 1], 8080))
        })
    }

    fn admin(&mut self, a: RawAdmin) -> Option<AdminConfig> {
        let l = a.listen.as_deref().unwrap_or("127.0.0.1:9090");
        let tls = a
            .tls
            .and_then(|t| self.tls(t, "admin.tls", "admin:", false));
        let oidc = a.oidc.map(|o| self.oidc(o));
        match l.parse::<SocketAddr>() {
            Ok(listen) => Some(AdminConfig {
                listen,
                public_url: a.public_url,
                max_connections: a.max_connections.unwrap_or(256).max(1),
                tls,
                oidc,
            }),
            Err(e) => {
                self.err(
                    Some("admin:"),
                    l,
                    format!("admin.listen: invalid address {l:?}: {e}"),
                );
                None
            }
        }
    }

    fn mode(&mut self, raw: Option<&str>) -> Mode {
        match raw {
            None | Some("enforce") => Mode::Enforce,
            Some("observe") => Mode::Observe,
            Some(m) => {
                self.err(
                    Some("mode:"),
                    m,
                    format!("mode: expected enforce or observe, got {m:?}"),
                );
                Mode::Enforce
            }
        }
    }

    fn default_allow(&mut self, raw: Option<&str>) -> bool {
        match raw {
            None | Some("allow") => true,
            Some("deny") => false,
            Some(d) => {
                self.err(
                    Some("default:"),
                    d,
                    format!("default: expected allow or deny, got {d:?}"),
                );
                true
            }
        }
    }

    /// The store URL, `${VAR}` expanded in every mode: the audit commands read the
    /// log from the store too.
    fn store(&mut self, raw: Option<&str>) -> String {
        let store = match expand_env(raw.unwrap_or("sqlite://airlock.db")) {
            Ok(s) => s,
            Err(e) => {
                self.err(Some("store:"), "${", format!("store: {e}"));
                String::new()
            }
        };
        if !(store.starts_with("sqlite:")
            || store.starts_with("postgres://")
            || store.starts_with("postgresql://"))
        {
            self.err(
                Some("store:"),
                &store,
                format!("store: expected sqlite://PATH or postgres://…, got {store:?}"),
            );
        }
        store
    }

    fn upstreams(&mut self, raw: Vec<RawUpstream>) -> Vec<Upstream> {
        let mut names = HashSet::new();
        let mut upstreams = Vec::with_capacity(raw.len());
        for u in raw {
            let anchor = format!("name: {}", u.name);
            if !names.insert(u.name.clone()) {
                self.err(
                    None,
                    &anchor,
                    format!("upstream {:?} is defined twice", u.name),
                );
            }
            upstreams.push(self.upstream(u, &anchor));
        }
        upstreams
    }

    fn upstream(&mut self, u: RawUpstream, anchor: &str) -> Upstream {
        let at = Some(anchor);
        let route = match (&u.prefix, &u.host) {
            (Some(p), None) => {
                if !p.starts_with('/') || p.len() < 2 || p.ends_with('/') {
                    self.err(
                        at,
                        p,
                        format!(
                            "upstream {}: prefix must start with '/' and not end with '/', got {p:?}",
                            u.name
                        ),
                    );
                }
                Route::Prefix(p.clone())
            }
            (None, Some(h)) => Route::Host(h.to_ascii_lowercase()),
            _ => {
                self.err(
                    None,
                    anchor,
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
                    self.err(at, &u.url, format!("upstream {}: {e}", u.name));
                    Target::Demo
                }
            }
        };
        let inject = self.inject(&u, anchor);
        let timeout = self.upstream_duration(at, u.timeout.as_deref(), "30s", &u.name, "timeout");
        let connect_timeout = self.upstream_duration(
            at,
            u.connect_timeout.as_deref(),
            "5s",
            &u.name,
            "connect_timeout",
        );
        let idle_timeout = self.upstream_duration(
            at,
            u.idle_timeout.as_deref(),
            "60s",
            &u.name,
            "idle_timeout",
        );
        if idle_timeout.is_zero() {
            self.err(
                at,
                "idle_timeout:",
                format!(
                    "upstream {}: idle_timeout: must be longer than 0 (a stalled response body is always cut)",
                    u.name
                ),
            );
        }
        let ca = u.ca.as_deref().map(|c| resolve(&self.base, c));
        if let Some(c) = &ca {
            if !c.exists() {
                self.err(
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
        let client_cert = self.client_cert(
            &u.name,
            anchor,
            u.client_cert.as_deref(),
            u.client_key.as_deref(),
        );
        let reading = self.reading(&u, anchor);
        Upstream {
            client_cert,
            reading,
            name: u.name,
            route,
            target,
            url: u.url,
            inject,
            ca,
            timeout,
            connect_timeout,
            idle_timeout,
        }
    }

    /// How the upstream reads requests: `path_case`, `path_params`, `encoded_slash`,
    /// `allow_methods`.
    fn reading(&mut self, u: &RawUpstream, anchor: &str) -> Reading {
        let at = Some(anchor);
        let mut choice = |key: &str, v: &Option<String>, yes: &str, no: &str| -> bool {
            match v.as_deref() {
                None => false,
                Some(x) if x == yes => true,
                Some(x) if x == no => false,
                Some(x) => {
                    self.err(
                        at,
                        &format!("{key}:"),
                        format!(
                            "upstream {}: {key}: expected {yes} or {no}, got {x:?}",
                            u.name
                        ),
                    );
                    false
                }
            }
        };
        let path_case_sensitive = choice("path_case", &u.path_case, "sensitive", "insensitive");
        let path_params = choice("path_params", &u.path_params, "allow", "refuse");
        let encoded_slash = choice("encoded_slash", &u.encoded_slash, "allow", "refuse");
        let mut allow_methods = Vec::new();
        for m in &u.allow_methods {
            let up = m.to_ascii_uppercase();
            if !REFUSED_METHODS.contains(&up.as_str()) {
                self.err(
                    at,
                    m,
                    format!(
                        "upstream {}: allow_methods: {m:?} is not refused by default (only {} are)",
                        u.name,
                        REFUSED_METHODS.join(", ")
                    ),
                );
            }
            allow_methods.push(up);
        }
        Reading {
            path_case_sensitive,
            path_params,
            encoded_slash,
            allow_methods,
        }
    }

    /// The upstream's `inject` headers. Header names are always checked; values are
    /// expanded (and an unset `${VAR}` reported) only when credentials are wanted,
    /// otherwise no header is returned.
    fn inject(&mut self, u: &RawUpstream, anchor: &str) -> Vec<(HeaderName, HeaderValue)> {
        let at = Some(anchor);
        let mut inject = Vec::new();
        for (k, v) in &u.inject {
            let name = match HeaderName::from_bytes(k.as_bytes()) {
                Ok(n) => n,
                Err(_) => {
                    self.err(
                        at,
                        k,
                        format!("upstream {}: invalid header name {k:?}", u.name),
                    );
                    continue;
                }
            };
            if !self.options.inject_credentials {
                continue;
            }
            match expand_env(v) {
                Ok(val) => match HeaderValue::from_str(&val) {
                    Ok(mut hv) => {
                        hv.set_sensitive(true);
                        inject.push((name, hv));
                    }
                    Err(_) => self.err(
                        at,
                        v,
                        format!(
                            "upstream {}: inject {k}: value is not a valid header value",
                            u.name
                        ),
                    ),
                },
                Err(e) => self.err(at, v, format!("upstream {}: inject {k}: {e}", u.name)),
            }
        }
        inject
    }

    fn upstream_duration(
        &mut self,
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
                self.err(at, s, format!("upstream {upstream}: {field}: {e}"));
                Duration::from_secs(30)
            }
        }
    }

    /// Agents; their ids go into `ids`, the namespace agents and reviewers share.
    fn agents(
        &mut self,
        raw: Vec<RawAgent>,
        ids: &mut HashSet<String>,
        have_client_ca: bool,
    ) -> Vec<Agent> {
        let mut agents = Vec::with_capacity(raw.len());
        for a in raw {
            let anchor = format!("id: {}", a.id);
            // Ids that differ only in case name the same identity (as an IdP reads them).
            if !ids.insert(crate::http::canonical_identity(&a.id)) {
                self.err(
                    None,
                    &anchor,
                    format!(
                        "agent {:?} is defined twice (ids are compared without regard to case)",
                        a.id
                    ),
                );
            }
            let key_digest = match &a.key {
                Some(k) => match parse_digest(k) {
                    Ok(d) => Some(d),
                    Err(e) => {
                        self.err(
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
                self.err(
                    None,
                    &anchor,
                    format!("agent {}: needs a key (or jwt / mtls)", a.id),
                );
            }
            let kinds = [a.key.is_some(), a.jwt.is_some(), a.mtls.is_some()];
            if kinds.iter().filter(|k| **k).count() > 1 {
                self.err(
                    None,
                    &anchor,
                    format!(
                        "agent {}: give one of key, jwt or mtls (one entry, one way to authenticate; define another agent for another way)",
                        a.id
                    ),
                );
            }
            if a.header.is_some() && a.key.is_none() {
                self.err(
                    Some(&anchor),
                    "header:",
                    format!(
                        "agent {}: header: names where a key is sent; this agent has no key",
                        a.id
                    ),
                );
            }
            let jwt = a.jwt.map(|j| self.agent_jwt(&a.id, &anchor, j));
            let mtls = a
                .mtls
                .map(|m| self.agent_mtls(&a.id, &anchor, m, have_client_ca));
            let header = match a.header.as_deref() {
                None => http::header::AUTHORIZATION,
                Some(h) => match HeaderName::from_bytes(h.as_bytes()) {
                    Ok(n) => n,
                    Err(_) => {
                        self.err(
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
                jwt,
                mtls,
            });
        }
        agents
    }

    /// Reviewers; an id already used by an agent or reviewer is an error.
    fn reviewers(&mut self, raw: Vec<RawReviewer>, ids: &mut HashSet<String>) -> Vec<Reviewer> {
        let mut reviewers = Vec::with_capacity(raw.len());
        for r in raw {
            let anchor = format!("id: {}", r.id);
            if !ids.insert(crate::http::canonical_identity(&r.id)) {
                self.err(
                    None,
                    &anchor,
                    format!(
                        "{:?} is defined twice (agent and reviewer ids share one namespace, and are compared without regard to case)",
                        r.id
                    ),
                );
            }
            let token_digest = match &r.token {
                Some(t) => match parse_digest(t) {
                    Ok(d) => Some(d),
                    Err(e) => {
                        self.err(
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
                subject: r.subject,
                slack: r.slack,
                teams: r.teams,
            });
        }
        reviewers
    }

    /// An agent key and a reviewer token must never be the same secret.
    fn no_shared_secrets(&mut self, agents: &[Agent], reviewers: &[Reviewer]) {
        for a in agents {
            for r in reviewers {
                if a.key_digest.is_some() && a.key_digest == r.token_digest {
                    self.err(
                        None,
                        &format!("id: {}", r.id),
                        format!("reviewer {} uses the same token as agent {}", r.id, a.id),
                    );
                }
            }
        }
    }

    fn audit(&mut self, raw: Option<RawAudit>) -> AuditConfig {
        let Some(a) = raw else {
            return AuditConfig {
                level: AuditLevel::Held,
                file: None,
                signing_key: None,
                verify_key: None,
                redact_query: Vec::new(),
                checkpoints: crate::audit::CheckpointPolicy::default(),
                witness: None,
            };
        };
        let level = match a.level.as_deref() {
            None | Some("held") => AuditLevel::Held,
            Some("all") => AuditLevel::All,
            Some(l) => {
                self.err(
                    Some("audit:"),
                    l,
                    format!("audit.level: expected held or all, got {l:?}"),
                );
                AuditLevel::Held
            }
        };
        let signing_key = a.signing_key.as_deref().map(|k| resolve(&self.base, k));
        if let Some(k) = &signing_key {
            if self.options.require_signing_key && !k.exists() {
                self.err(
                    Some("audit:"),
                    a.signing_key.as_deref().unwrap_or(""),
                    format!("audit.signing_key: {} does not exist", k.display()),
                );
            }
        }
        let verify_key = a.verify_key.as_deref().map(|k| resolve(&self.base, k));
        if let Some(k) = &verify_key {
            if !k.exists() {
                self.err(
                    Some("audit:"),
                    a.verify_key.as_deref().unwrap_or(""),
                    format!("audit.verify_key: {} does not exist", k.display()),
                );
            }
        }
        let mut checkpoints = crate::audit::CheckpointPolicy::default();
        if let Some(n) = a.checkpoint_every {
            if n == 0 {
                self.err(
                    Some("audit:"),
                    "checkpoint_every",
                    "audit.checkpoint_every: must be at least 1".to_string(),
                );
            }
            checkpoints.every = n.max(1);
        }
        if let Some(t) = &a.checkpoint_interval {
            match humantime::parse_duration(t) {
                Ok(d) => checkpoints.interval = d,
                Err(e) => self.err(
                    Some("audit:"),
                    t,
                    format!(
                        "audit.checkpoint_interval: expected a duration like 60s, got {t:?}: {e}"
                    ),
                ),
            }
        }
        let witness = a.witness.as_deref().map(|w| resolve(&self.base, w));
        if witness.is_some() && signing_key.is_none() && verify_key.is_none() {
            self.err(
                Some("audit:"),
                a.witness.as_deref().unwrap_or(""),
                "audit.witness: needs audit.signing_key (the witness publishes signed checkpoints)"
                    .to_string(),
            );
        }
        AuditConfig {
            level,
            file: a.file.as_deref().map(|f| resolve(&self.base, f)),
            signing_key,
            verify_key,
            redact_query: a.redact_query,
            checkpoints,
            witness,
        }
    }

    fn limits(&mut self, rl: Option<&RawLimits>) -> Limits {
        let errs_before = self.errs.len();
        let max_body = self.size("max_body", rl.and_then(|l| l.max_body.as_ref()), 10 << 20);
        let inspect_body = self.size(
            "inspect_body",
            rl.and_then(|l| l.inspect_body.as_ref()),
            1 << 20,
        );
        let header_timeout = self.duration(
            "header_timeout:",
            "limits.header_timeout",
            rl.and_then(|l| l.header_timeout.as_deref()),
            "10s",
            Duration::from_secs(10),
        );
        let body_timeout = self.duration(
            "body_timeout:",
            "limits.body_timeout",
            rl.and_then(|l| l.body_timeout.as_deref()),
            "30s",
            Duration::from_secs(30),
        );
        let shutdown_grace = self.duration(
            "shutdown_grace:",
            "limits.shutdown_grace",
            rl.and_then(|l| l.shutdown_grace.as_deref()),
            "30s",
            Duration::from_secs(30),
        );
        let idle_timeout = self.duration(
            "idle_timeout:",
            "limits.idle_timeout",
            rl.and_then(|l| l.idle_timeout.as_deref()),
            "60s",
            Duration::from_secs(60),
        );
        let max_held_bytes = self.size(
            "max_held_bytes",
            rl.and_then(|l| l.max_held_bytes.as_ref()),
            256 << 20,
        );
        let max_held = rl.and_then(|l| l.max_held).unwrap_or(10_000);
        let limits = Limits {
            max_body,
            inspect_body,
            header_timeout,
            body_timeout,
            shutdown_grace,
            max_held,
            // One agent cannot take every held slot unless told it may.
            max_held_per_agent: rl
                .and_then(|l| l.max_held_per_agent)
                .unwrap_or((max_held / 10).max(1)),
            max_connections: rl.and_then(|l| l.max_connections).unwrap_or(10_000),
            idle_timeout,
            max_held_bytes,
        };
        // Only comparable when both sizes parsed (and nothing else in limits failed).
        if limits.inspect_body > limits.max_body && self.errs.len() == errs_before {
            self.err(
                Some("limits:"),
                "inspect_body",
                "limits.inspect_body must not exceed limits.max_body".into(),
            );
        }
        // A hold reserves max_body before reading: a smaller budget could never hold one.
        if limits.max_held_bytes < limits.max_body && self.errs.len() == errs_before {
            self.err(
                Some("limits:"),
                "max_held_bytes",
                "limits.max_held_bytes must be at least limits.max_body".into(),
            );
        }
        limits
    }

    /// A byte size under `limits:`; `def` when absent or invalid.
    fn size(&mut self, field: &str, v: Option<&String>, def: usize) -> usize {
        match v {
            None => def,
            Some(v) => parse_size(v).unwrap_or_else(|e| {
                self.err(
                    Some(&format!("{field}:")),
                    v,
                    format!("limits.{field}: {e}"),
                );
                def
            }),
        }
    }

    /// A duration located after `anchor`, reported as `name: …`; `def` when absent,
    /// `fallback` when invalid.
    fn duration(
        &mut self,
        anchor: &str,
        name: &str,
        v: Option<&str>,
        def: &str,
        fallback: Duration,
    ) -> Duration {
        let s = v.unwrap_or(def);
        parse_duration(s).unwrap_or_else(|e| {
            self.err(Some(anchor), s, format!("{name}: {e}"));
            fallback
        })
    }

    fn approval(&mut self, a: Option<&RawApprovalDefaults>) -> ApprovalDefaults {
        let timeout = self.duration(
            "approval:",
            "approval.timeout",
            a.and_then(|a| a.timeout.as_deref()),
            "15m",
            Duration::from_secs(900),
        );
        let reuse = self.duration(
            "approval:",
            "approval.reuse",
            a.and_then(|a| a.reuse.as_deref()),
            "10m",
            Duration::from_secs(600),
        );
        ApprovalDefaults { timeout, reuse }
    }

    fn log(&mut self, raw: Option<RawLog>) -> (LogFormat, String) {
        let Some(l) = raw else {
            return (LogFormat::Human, "info".into());
        };
        let format = match l.format.as_deref() {
            None | Some("human") => LogFormat::Human,
            Some("json") => LogFormat::Json,
            Some(f) => {
                self.err(
                    Some("log:"),
                    f,
                    format!("log.format: expected human or json, got {f:?}"),
                );
                LogFormat::Human
            }
        };
        (format, l.level.unwrap_or_else(|| "info".into()))
    }
}

#[cfg(test)]
mod limits_tests {
    use crate::config::{Config, Source};
    use std::time::Duration;

    fn parse(text: &str) -> Result<Config, String> {
        let src = Source {
            file: "airlock.yaml".into(),
            text: text.into(),
        };
        Config::parse(&src).map_err(|d| d.to_string())
    }

    #[test]
    fn resource_limits_have_safe_defaults() {
        let cfg = parse("admin: {listen: 127.0.0.1:0}\n").unwrap();
        let l = &cfg.limits;
        assert_eq!(l.idle_timeout, Duration::from_secs(60));
        assert_eq!(l.max_held_bytes, 256 << 20);
        assert_eq!(l.max_held_per_agent, 1000, "a tenth of max_held");
        assert_eq!(cfg.admin.unwrap().max_connections, 256);
        let cfg = parse("limits: {max_held: 5}\n").unwrap();
        assert_eq!(cfg.limits.max_held_per_agent, 1, "at least one");
        let cfg = parse("limits: {max_held: 5, max_held_per_agent: 5}\n").unwrap();
        assert_eq!(cfg.limits.max_held_per_agent, 5, "an explicit value wins");
    }

    #[test]
    fn resource_limits_are_read_and_checked() {
        let cfg = parse(
            "admin: {listen: 127.0.0.1:0, max_connections: 7}\nlimits: {idle_timeout: 5s, max_held_bytes: 64MiB}\n",
        )
        .unwrap();
        assert_eq!(cfg.limits.idle_timeout, Duration::from_secs(5));
        assert_eq!(cfg.limits.max_held_bytes, 64 << 20);
        assert_eq!(cfg.admin.unwrap().max_connections, 7);
        let err = parse("limits: {max_body: 2MiB, max_held_bytes: 1MiB}\n").unwrap_err();
        assert!(
            err.contains("limits.max_held_bytes must be at least limits.max_body"),
            "{err}"
        );
        let err = parse("limits: {idle_timeout: soon}\n").unwrap_err();
        assert!(err.contains("limits.idle_timeout"), "{err}");
        let err = parse("admin: {max_conns: 3}\n").unwrap_err();
        assert!(err.contains("max_conns"), "{err}");
    }
}
