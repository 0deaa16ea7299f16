//! Compiling: raw rules (serde shapes) into [`Rule`]s. Globs become anchored regexes,
//! `re:` values are compiled once, method names are uppercased, durations parsed, and
//! approvers checked against the configured reviewers. Every problem is a located
//! [`Diagnostic`]; a running proxy never meets an uncompiled pattern.

use super::matcher::{Alt, StrMatcher};
use super::raw;
use super::rule::{ApprovalPolicy, Requirement, Rule, Verdict};
use crate::config::{Config, Diagnostic, Source};
use regex::Regex;
use std::time::Duration;

/// Compiles the rules of one file, collecting errors and warnings located in it.
pub(super) struct Compiler<'a> {
    pub(super) src: &'a Source,
    /// Where the rule starts (`name: NAME`), to locate its problems.
    pub(super) anchor: &'a str,
    pub(super) rule: &'a str,
    pub(super) errs: Vec<Diagnostic>,
    pub(super) warnings: Vec<Diagnostic>,
}

impl Compiler<'_> {
    fn err(&mut self, needle: Option<&str>, message: String) {
        let d = self
            .src
            .diag_at(Some(self.anchor), needle.unwrap_or(self.anchor), message);
        self.errs.push(d);
    }

    pub(super) fn warn(&mut self, needle: Option<&str>, message: String) {
        let d = self.src.diag_at(
            Some(self.anchor),
            needle.unwrap_or(self.anchor),
            format!("warning: {message}"),
        );
        self.warnings.push(d);
    }

    /// A YAML scalar or list of scalars as strings.
    fn strings(&mut self, what: &str, v: &serde_yaml::Value) -> Vec<String> {
        use serde_yaml::Value as V;
        let scalar = |v: &V| -> Option<String> {
            match v {
                V::String(s) => Some(s.clone()),
                V::Bool(b) => Some(b.to_string()),
                V::Number(n) => Some(n.to_string()),
                V::Null => Some("null".into()),
                _ => None,
            }
        };
        match v {
            V::Sequence(items) => {
                let mut out = Vec::new();
                for it in items {
                    match scalar(it) {
                        Some(s) => out.push(s),
                        None => self.err(
                            Some(what),
                            format!(
                                "rule {}: {what}: expected a string or a list of strings",
                                self.rule
                            ),
                        ),
                    }
                }
                if out.is_empty() {
                    self.err(
                        Some(what),
                        format!("rule {}: {what}: empty list can never match", self.rule),
                    );
                }
                out
            }
            other => match scalar(other) {
                Some(s) => vec![s],
                None => {
                    self.err(
                        Some(what),
                        format!(
                            "rule {}: {what}: expected a string or a list of strings",
                            self.rule
                        ),
                    );
                    Vec::new()
                }
            },
        }
    }

    fn regex(&mut self, what: &str, pattern: &str) -> Option<Regex> {
        match Regex::new(pattern) {
            Ok(r) => Some(r),
            Err(e) => {
                let first = e
                    .to_string()
                    .lines()
                    .last()
                    .unwrap_or("")
                    .trim()
                    .to_string();
                self.err(
                    Some(pattern),
                    format!(
                        "rule {}: {what}: invalid regex {pattern:?}: {first}",
                        self.rule
                    ),
                );
                None
            }
        }
    }

    fn matcher(&mut self, what: &str, v: &serde_yaml::Value, upper: bool) -> StrMatcher {
        let mut alts = Vec::new();
        for s in self.strings(what, v) {
            if let Some(re) = s.strip_prefix("re:") {
                if let Some(r) = self.regex(what, re) {
                    alts.push(Alt::Re(r));
                }
            } else if upper {
                alts.push(Alt::Exact(s.to_ascii_uppercase()));
            } else {
                alts.push(Alt::Exact(s));
            }
        }
        StrMatcher { alts }
    }

    /// Compiles one rule; `None` when it cannot be (the reason is in `errs`). The
    /// second value lists the regex sources of its path patterns.
    pub(super) fn rule(&mut self, cfg: &Config, r: &raw::RawRule) -> Option<(Rule, Vec<String>)> {
        let verdict = match Verdict::parse(&r.then) {
            Some(v) => v,
            None => {
                self.err(
                    Some(&r.then),
                    format!(
                        "rule {}: then: expected allow, deny or approve, got {:?}",
                        r.name, r.then
                    ),
                );
                return None;
            }
        };
        let w = &r.when;
        let upstream = w
            .upstream
            .as_ref()
            .map(|v| self.matcher("upstream", v, false));
        if let Some(m) = &upstream {
            let known = cfg.upstreams.iter().any(|u| m.is_match(&u.name));
            if !known {
                self.warn(Some("upstream:"), format!("rule {} can never match: no configured upstream matches its upstream condition", r.name));
            }
        }
        let methods = w.method.as_ref().map(|v| self.matcher("method", v, true));
        let agent = w.agent.as_ref().map(|v| self.matcher("agent", v, false));
        let mut paths = Vec::new();
        let mut path_regexes = Vec::new();
        if let Some(v) = &w.path {
            for p in self.strings("path", v) {
                let re = if let Some(re) = p.strip_prefix("re:") {
                    re.to_string()
                } else {
                    if !p.starts_with('/') {
                        self.warn(
                            Some(&p),
                            format!(
                                "rule {} path {p:?} can never match: paths start with '/'",
                                r.name
                            ),
                        );
                    }
                    if p.contains("//")
                        || p.contains("/./")
                        || p.contains("/../")
                        || p.ends_with("/..")
                    {
                        self.warn(Some(&p), format!("rule {} path {p:?} can never match: requests are normalized (no '//', '.' or '..' segments)", r.name));
                    }
                    glob_to_regex(&p)
                };
                if self.regex("path", &re).is_some() {
                    path_regexes.push(re);
                }
                paths.push(p);
            }
        }
        let mut headers = Vec::new();
        for (k, v) in &w.headers {
            match http::HeaderName::from_bytes(k.as_bytes()) {
                Ok(n) => {
                    let m = self.matcher(k, v, false);
                    headers.push((n, m));
                }
                Err(_) => self.err(
                    Some(k),
                    format!("rule {}: headers: invalid header name {k:?}", r.name),
                ),
            }
        }
        let query = w
            .query
            .iter()
            .map(|(k, v)| (k.clone(), self.matcher(k, v, false)))
            .collect();
        let mut json = Vec::new();
        for (k, v) in &w.json {
            if !k.is_empty() && !k.starts_with('/') {
                self.err(
                    Some(k),
                    format!(
                        "rule {}: json: {k:?} is not a JSON pointer (it must start with '/')",
                        r.name
                    ),
                );
            }
            json.push((k.clone(), self.matcher(k, v, false)));
        }
        let form = w
            .form
            .iter()
            .map(|(k, v)| (k.clone(), self.matcher(k, v, false)))
            .collect();

        let approval = match (verdict, &r.approval) {
            (Verdict::Approve, Some(a)) => Some(self.policy(cfg, a)),
            (Verdict::Approve, None) => {
                self.err(
                    None,
                    format!(
                        "rule {}: then: approve needs an approval: block with approvers",
                        r.name
                    ),
                );
                None
            }
            (_, Some(_)) => {
                self.warn(
                    Some("approval:"),
                    format!("rule {}: approval: is ignored unless then: approve", r.name),
                );
                None
            }
            _ => None,
        };
        Some((
            Rule {
                name: r.name.clone(),
                description: r.description.clone(),
                verdict,
                upstream,
                methods,
                paths,
                headers,
                query,
                json,
                form,
                agent,
                approval,
            },
            path_regexes,
        ))
    }

    fn policy(&mut self, cfg: &Config, a: &raw::RawApproval) -> ApprovalPolicy {
        if a.approvers.is_empty() {
            self.err(
                Some("approval:"),
                format!(
                    "rule {}: approval.approvers is empty: nobody could ever approve",
                    self.rule
                ),
            );
        }
        let separate = a
            .approvers
            .iter()
            .any(|ap| matches!(ap, raw::RawApprover::Requirement(_)));
        let mut requirements = Vec::new();
        let mut plain = Vec::new();
        for ap in &a.approvers {
            match ap {
                raw::RawApprover::Name(n) if separate => requirements.push((vec![n.clone()], None)),
                raw::RawApprover::Name(n) => plain.push(n.clone()),
                raw::RawApprover::Requirement(r) => {
                    let who = match (&r.group, &r.reviewer) {
                        (Some(g), None) => format!("group:{g}"),
                        (None, Some(id)) => id.clone(),
                        _ => {
                            self.err(
                                Some("approvers:"),
                                format!(
                                    "rule {}: approval.approvers: a requirement names exactly one of group: or reviewer:",
                                    self.rule
                                ),
                            );
                            continue;
                        }
                    };
                    requirements.push((vec![who], r.quorum));
                }
            }
        }
        if !plain.is_empty() {
            requirements.push((plain, a.quorum));
        } else if separate && a.quorum.is_some() {
            self.err(
                Some("quorum"),
                format!(
                    "rule {}: approval.quorum: with requirements in approvers, give each its own quorum",
                    self.rule
                ),
            );
        }
        let mut reqs = Vec::new();
        for (approvers, quorum) in requirements {
            let quorum = quorum.unwrap_or(1);
            self.check_requirement(cfg, &approvers, quorum);
            reqs.push(Requirement {
                rule: self.rule.to_string(),
                approvers,
                quorum: quorum.max(1),
            });
        }
        let approvers: Vec<String> = reqs.iter().flat_map(|r| r.approvers.clone()).collect();
        let quorum = reqs.iter().map(|r| r.quorum).max().unwrap_or(1);
        let mut dur = |field: &str, v: &Option<String>, def| match v {
            None => def,
            Some(s) => crate::config::parse_duration(s).unwrap_or_else(|e| {
                self.err(
                    Some(s),
                    format!("rule {}: approval.{field}: {e}", self.rule),
                );
                def
            }),
        };
        let timeout = dur("timeout", &a.timeout, cfg.approval.timeout);
        let reuse = dur("reuse", &a.reuse, cfg.approval.reuse);
        for ch in &a.channels {
            if !matches!(
                ch.as_str(),
                "api" | "cli" | "console" | "slack" | "teams" | "webhook"
            ) {
                self.err(
                    Some(ch),
                    format!(
                        "rule {}: approval.channels: unknown channel {ch:?}",
                        self.rule
                    ),
                );
            }
        }
        for p in &a.show {
            if !p.starts_with('/') {
                self.err(
                    Some(p),
                    format!(
                        "rule {}: approval.show: {p:?} is not a JSON pointer",
                        self.rule
                    ),
                );
            }
        }
        let remind = a.remind.as_ref().map(|r| {
            crate::config::parse_duration(r)
                .ok()
                .filter(|d| d.as_secs() >= 1)
                .unwrap_or_else(|| {
                    self.err(
                        Some(r),
                        format!(
                            "rule {}: approval.remind: {r:?} is not a duration of at least 1s",
                            self.rule
                        ),
                    );
                    Duration::from_secs(600)
                })
                .as_secs()
        });
        let escalate = a.escalate.as_ref().map(|e| {
            let after = crate::config::parse_duration(&e.after).unwrap_or_else(|err| {
                self.err(
                    Some(&e.after),
                    format!("rule {}: approval.escalate.after: {err}", self.rule),
                );
                Duration::from_secs(1800)
            });
            if e.to.is_empty() {
                self.err(
                    Some("escalate"),
                    format!("rule {}: approval.escalate.to names nobody", self.rule),
                );
            }
            let known = cfg
                .reviewers
                .iter()
                .any(|r| crate::identity::Reviewers::eligible(r, &e.to));
            if !known {
                self.warn(
                    Some("escalate"),
                    format!(
                        "rule {}: approval.escalate.to {:?} matches no configured reviewer",
                        self.rule, e.to
                    ),
                );
            }
            crate::rules::rule::Escalation {
                after: after.as_secs(),
                to: e.to.clone(),
            }
        });
        ApprovalPolicy {
            remind,
            escalate,
            approvers,
            quorum,
            requirements: reqs,
            timeout,
            reuse,
            // None named: every configured channel (and the API, always).
            channels: a.channels.clone(),
            show: a.show.clone(),
            require_reason: a.require_reason,
        }
    }
}

impl Compiler<'_> {
    /// Warns of approvers no reviewer matches; refuses a quorum nobody could reach.
    /// With `admin.oidc.groups_claim`, a reviewer's groups may also come from their
    /// token: any configured reviewer may turn out to be in a group the rule names.
    fn check_requirement(&mut self, cfg: &Config, approvers: &[String], quorum: u32) {
        let token_groups = cfg
            .admin
            .as_ref()
            .and_then(|a| a.oidc.as_ref())
            .is_some_and(|o| o.groups_claim.is_some());
        let by_token = |ap: &String| token_groups && ap.starts_with("group:");
        let eligible = cfg
            .reviewers
            .iter()
            .filter(|r| {
                crate::identity::Reviewers::eligible(r, approvers) || approvers.iter().any(by_token)
            })
            .count();
        for ap in approvers {
            let known = by_token(ap)
                || cfg
                    .reviewers
                    .iter()
                    .any(|r| crate::identity::Reviewers::eligible(r, std::slice::from_ref(ap)));
            if !known {
                self.warn(
                    Some(ap),
                    format!(
                        "rule {}: approver {ap:?} matches no configured reviewer",
                        self.rule
                    ),
                );
            }
        }
        if quorum == 0 {
            self.err(
                Some("quorum"),
                format!("rule {}: approval.quorum must be at least 1", self.rule),
            );
        } else if (quorum as usize) > eligible && !approvers.is_empty() {
            self.err(Some("quorum"), format!("rule {}: approval.quorum {quorum} exceeds the {eligible} eligible reviewer(s) of {approvers:?}: it could never be approved", self.rule));
        }
    }
}

/// Translates a path glob into an anchored regex: `*` is one segment, `**` any tail
/// (a trailing `/**` also matches the folder itself); a trailing slash is optional.
pub fn glob_to_regex(glob: &str) -> String {
    let mut re = String::from("^");
    let trimmed = glob.strip_suffix('/').unwrap_or(glob);
    let (body, tail_any) = match trimmed.strip_suffix("/**") {
        Some(b) => (b, true),
        None => (trimmed, false),
    };
    let mut chars = body.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '*' {
            if chars.peek() == Some(&'*') {
                chars.next();
                re.push_str(".*");
            } else {
                re.push_str("[^/]+");
            }
        } else {
            re.push_str(&regex::escape(&c.to_string()));
        }
    }
    if tail_any {
        re.push_str("(?:/.*)?$");
    } else {
        re.push_str("/?$");
    }
    re
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        let r = Regex::new(&glob_to_regex("/v1/projects/*/instances/**")).unwrap();
        assert!(r.is_match("/v1/projects/p1/instances/vm-7"));
        assert!(r.is_match("/v1/projects/p1/instances/vm-7/disks/0"));
        assert!(r.is_match("/v1/projects/p1/instances"));
        assert!(!r.is_match("/v1/projects/p1/x/instances/vm-7"));
        assert!(!r.is_match("/v1/projects//instances/vm-7"));
        let r = Regex::new(&glob_to_regex("/v1/users/*")).unwrap();
        assert!(r.is_match("/v1/users/bob"));
        assert!(r.is_match("/v1/users/bob/"));
        assert!(!r.is_match("/v1/users/bob/keys"));
        let r = Regex::new(&glob_to_regex("/a.b")).unwrap();
        assert!(!r.is_match("/axb"));
    }
}
