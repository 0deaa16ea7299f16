//! The rule language: loading `rules/*.yaml`, compiling it once, and matching.
//!
//! [`load`] reads a file or a folder of YAML, reports every problem with
//! `file:line:col`, and returns a compiled [`RuleSet`] plus warnings (rules that can
//! never match or are shadowed). [`engine`] is the pure matcher; [`testing`] runs the
//! `tests:` blocks. Nothing here performs I/O at request time.

pub mod engine;
pub mod json;
pub mod raw;
pub mod testing;

pub use engine::{
    ApprovalPolicy, Body, Check, Decision, Head, RequestView, Rule, RuleSet, Verdict,
};

use crate::config::{Config, Diagnostic, Diagnostics, Source};
use engine::{Alt, StrMatcher};
use regex::Regex;
use std::path::{Path, PathBuf};

/// A loaded rule set with what it was made from.
#[derive(Debug, Clone)]
pub struct LoadedRules {
    pub set: RuleSet,
    /// The `tests:` blocks, with the file and rule they came from.
    pub tests: Vec<testing::RuleTest>,
    pub warnings: Vec<Diagnostic>,
    pub files: Vec<PathBuf>,
}

/// The YAML files a `rules:` setting names: the file itself, or every `*.yaml` /
/// `*.yml` directly in the folder, sorted by name.
pub fn rule_files(path: &Path) -> Result<Vec<PathBuf>, Diagnostics> {
    if path.is_dir() {
        let rd = std::fs::read_dir(path)
            .map_err(|e| one(path, format!("cannot read rules folder: {e}")))?;
        let mut files: Vec<PathBuf> = rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.is_file()
                    && matches!(
                        p.extension().and_then(|e| e.to_str()),
                        Some("yaml") | Some("yml")
                    )
            })
            .collect();
        files.sort();
        Ok(files)
    } else if path.is_file() {
        Ok(vec![path.to_path_buf()])
    } else {
        Err(one(path, "rules: no such file or folder".into()))
    }
}

fn one(file: &Path, message: String) -> Diagnostics {
    Diagnostics(vec![Diagnostic {
        file: file.to_path_buf(),
        line: 1,
        col: 1,
        message,
    }])
}

/// Loads the rules the config points at (an empty set when it names none).
pub fn load(cfg: &Config) -> Result<LoadedRules, Diagnostics> {
    let files = match &cfg.rules {
        Some(p) => rule_files(p)?,
        None => Vec::new(),
    };
    load_files(cfg, &files)
}

/// Loads the given rule files against a config.
pub fn load_files(cfg: &Config, files: &[PathBuf]) -> Result<LoadedRules, Diagnostics> {
    let mut errs = Vec::new();
    let mut warnings = Vec::new();
    let mut rules = Vec::new();
    let mut regexes = Vec::new();
    let mut tests = Vec::new();
    // Conditions already seen (as written), to warn about shadowed rules.
    let mut seen: std::collections::HashMap<String, String> = std::collections::HashMap::new();
    for file in files {
        let src = match Source::read(file) {
            Ok(s) => s,
            Err(d) => {
                errs.extend(d.0);
                continue;
            }
        };
        let raw: raw::RawRuleFile = match serde_yaml::from_str(&src.text) {
            Ok(r) => r,
            Err(e) => {
                errs.push(src.yaml_error(&e));
                continue;
            }
        };
        for r in raw.rules {
            let anchor = format!("name: {}", r.name);
            if rules.iter().any(|x: &Rule| x.name == r.name) {
                errs.push(src.diag_at(
                    None,
                    &anchor,
                    format!("rule {:?} is defined twice", r.name),
                ));
                continue;
            }
            let mut c = Compiler {
                src: &src,
                anchor: &anchor,
                rule: &r.name,
                errs: Vec::new(),
                warnings: Vec::new(),
            };
            if let Some((rule, paths)) = c.rule(cfg, &r) {
                // Shadowing: the same conditions as an earlier rule.
                let key = format!("{:?}", r.when);
                if let Some(other) = seen.get(&key) {
                    c.warn(None, format!("rule {} has the same conditions as rule {other}; only the stricter verdict can ever take effect", r.name));
                } else {
                    seen.insert(key, r.name.clone());
                }
                for (n, t) in r.tests.iter().enumerate() {
                    tests.push(testing::RuleTest::from_raw(&src, &r.name, n, t));
                }
                if r.tests.is_empty() {
                    c.warn(None, format!("rule {} has no tests", r.name));
                }
                rules.push(rule);
                regexes.push(paths);
            }
            errs.extend(c.errs);
            warnings.extend(c.warnings);
        }
    }
    let default = if cfg.default_allow {
        Verdict::Allow
    } else {
        Verdict::Deny
    };
    if !errs.is_empty() {
        return Err(Diagnostics(errs));
    }
    let set = RuleSet::new(rules, regexes, default).map_err(|e| {
        Diagnostics(vec![Diagnostic {
            file: files.first().cloned().unwrap_or_default(),
            line: 1,
            col: 1,
            message: format!("path patterns do not compile together: {e}"),
        }])
    })?;
    Ok(LoadedRules {
        set,
        tests,
        warnings,
        files: files.to_vec(),
    })
}

struct Compiler<'a> {
    src: &'a Source,
    anchor: &'a str,
    rule: &'a str,
    errs: Vec<Diagnostic>,
    warnings: Vec<Diagnostic>,
}

impl Compiler<'_> {
    fn err(&mut self, needle: Option<&str>, message: String) {
        let d = self
            .src
            .diag_at(Some(self.anchor), needle.unwrap_or(self.anchor), message);
        self.errs.push(d);
    }

    fn warn(&mut self, needle: Option<&str>, message: String) {
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

    fn rule(&mut self, cfg: &Config, r: &raw::RawRule) -> Option<(Rule, Vec<String>)> {
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
        let eligible: Vec<&str> = cfg
            .reviewers
            .iter()
            .filter(|r| {
                a.approvers
                    .iter()
                    .any(|ap| match ap.strip_prefix("group:") {
                        Some(g) => r.groups.iter().any(|x| x == g),
                        None => ap == &r.id,
                    })
            })
            .map(|r| r.id.as_str())
            .collect();
        for ap in &a.approvers {
            let known = match ap.strip_prefix("group:") {
                Some(g) => cfg
                    .reviewers
                    .iter()
                    .any(|r| r.groups.iter().any(|x| x == g)),
                None => cfg.reviewers.iter().any(|r| &r.id == ap),
            };
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
        let quorum = a.quorum.unwrap_or(1);
        if quorum == 0 {
            self.err(
                Some("quorum"),
                format!("rule {}: approval.quorum must be at least 1", self.rule),
            );
        } else if (quorum as usize) > eligible.len() && !a.approvers.is_empty() {
            self.err(Some("quorum"), format!("rule {}: approval.quorum {quorum} exceeds the {} eligible reviewer(s): it could never be approved", self.rule, eligible.len()));
        }
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
        ApprovalPolicy {
            approvers: a.approvers.clone(),
            quorum: quorum.max(1),
            timeout,
            reuse,
            channels: if a.channels.is_empty() {
                vec!["api".into()]
            } else {
                a.channels.clone()
            },
            show: a.show.clone(),
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
