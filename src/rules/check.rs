//! Lint warnings for `airlock rules check` (and the log at start): things that load
//! fine but are almost certainly not what the author meant. Rules shadowed by an
//! earlier one or without tests, rules that deny or hold every request, unknown HTTP
//! methods, two upstreams on the same route, and agent owners whose id differs from a
//! reviewer's only in case. (Problems found while compiling a value, such as a path
//! that can never match or an unknown approver, are warned about in `compile`.)
//!
//! Every warning is a [`Diagnostic`] whose message starts with `warning: `, located in
//! the file it is about. This module only reports; it never refuses a rule set.

use super::raw::RawRule;
use super::rule::Verdict;
use crate::config::{Config, Diagnostic, Route, Source};
use std::collections::HashMap;

/// The methods `method:` may name without a warning: RFC 9110's, PATCH, and WebDAV's.
pub const KNOWN_METHODS: &[&str] = &[
    "GET",
    "HEAD",
    "POST",
    "PUT",
    "DELETE",
    "PATCH",
    "OPTIONS",
    "TRACE",
    "CONNECT",
    "PROPFIND",
    "PROPPATCH",
    "MKCOL",
    "COPY",
    "MOVE",
    "LOCK",
    "UNLOCK",
    "REPORT",
    "SEARCH",
];

/// A warning at the place reached by finding each of `steps` in turn (outside
/// comments); when a step cannot be found, at the last place that was.
pub(super) fn warning_at(src: &Source, steps: &[&str], message: String) -> Diagnostic {
    let mut at = None;
    for step in steps {
        match find(&src.text, at.unwrap_or(0), step) {
            Some(i) => at = Some(i),
            None => break,
        }
    }
    let (line, col) = at.map(|a| line_col(&src.text, a)).unwrap_or((1, 1));
    Diagnostic {
        file: src.file.clone(),
        line,
        col,
        message: format!("warning: {message}"),
    }
}

/// The first place at or after `from` where `needle` appears outside a comment and is
/// not the start of a longer word (`name: api` does not find `name: api2`).
fn find(text: &str, from: usize, needle: &str) -> Option<usize> {
    if needle.is_empty() {
        return None;
    }
    let word = |c: char| c.is_alphanumeric() || matches!(c, '-' | '_' | '.' | '@');
    let ends_in_word = needle.chars().next_back().is_some_and(word);
    let mut offset = from;
    while let Some(rel) = text.get(offset..)?.find(needle) {
        let at = offset + rel;
        let line_start = text[..at].rfind('\n').map(|i| i + 1).unwrap_or(0);
        let after = text[at + needle.len()..].chars().next();
        let commented = text[line_start..at].contains('#');
        let longer_word = ends_in_word && after.is_some_and(word);
        if !commented && !longer_word {
            return Some(at);
        }
        offset = at + needle.len();
    }
    None
}

fn line_col(text: &str, at: usize) -> (usize, usize) {
    let before = &text[..at];
    let line = before.matches('\n').count() + 1;
    let col = at - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
    (line, col)
}

/// Warnings about one rule as written; `anchor` is where it starts (`name: NAME`).
pub(super) fn rule_warnings(src: &Source, anchor: &str, r: &RawRule) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    if r.when.is_empty() {
        let what = match Verdict::parse(&r.then) {
            Some(Verdict::Deny) => Some("denies every request"),
            Some(Verdict::Approve) => Some("holds every request for approval"),
            _ => None,
        };
        if let Some(what) = what {
            out.push(warning_at(
                src,
                &[anchor],
                format!(
                    "rule {} has no `when` conditions: it {what} on every upstream",
                    r.name
                ),
            ));
        }
    }
    if let Some(v) = &r.when.method {
        let written: Vec<&str> = match v {
            serde_yaml::Value::String(s) => vec![s.as_str()],
            serde_yaml::Value::Sequence(items) => items.iter().filter_map(|i| i.as_str()).collect(),
            _ => Vec::new(),
        };
        for m in written {
            if m.starts_with("re:") {
                continue;
            }
            let upper = m.to_ascii_uppercase();
            if !KNOWN_METHODS.contains(&upper.as_str()) {
                out.push(warning_at(
                    src,
                    &[anchor, "method:", m],
                    format!(
                        "rule {}: method {m:?} is not a known HTTP method ({}); check the spelling",
                        r.name,
                        KNOWN_METHODS.join(" ")
                    ),
                ));
            }
        }
    }
    if r.tests.is_empty() {
        out.push(warning_at(
            src,
            &[anchor],
            format!("rule {} has no tests", r.name),
        ));
    }
    out
}

/// Remembers the conditions of the rules seen so far, to find shadowed rules.
#[derive(Default)]
pub(super) struct Shadowing {
    /// Conditions as written → the first rule with them.
    seen: HashMap<String, String>,
}

impl Shadowing {
    /// A warning when `r` has the same conditions as an earlier rule.
    pub(super) fn check(&mut self, src: &Source, anchor: &str, r: &RawRule) -> Option<Diagnostic> {
        let key = format!("{:?}", r.when);
        match self.seen.get(&key) {
            Some(other) => Some(warning_at(
                src,
                &[anchor],
                format!(
                    "rule {} has the same conditions as rule {other}; only the stricter verdict can ever take effect",
                    r.name
                ),
            )),
            None => {
                self.seen.insert(key, r.name.clone());
                None
            }
        }
    }
}

/// Warnings about the config as the rules see it: upstreams on the same route, and
/// agent owners whose id differs from a reviewer's only in case. Located in the config
/// file (`cfg.file`), read again here; at 1:1 when it cannot be read.
pub fn config_warnings(cfg: &Config) -> Vec<Diagnostic> {
    let src = Source::read(&cfg.file).unwrap_or_else(|_| Source {
        file: cfg.file.clone(),
        text: String::new(),
    });
    let mut out = upstream_warnings(cfg, &src);
    out.extend(owner_warnings(cfg, &src));
    out
}

/// How a route reads for comparison: kind, value as configured (without a trailing
/// `/` or `.`), and that value in lowercase.
fn route_key(route: &Route) -> (&'static str, &str, String) {
    let (kind, v) = match route {
        Route::Prefix(p) => ("prefix", p.trim_end_matches('/')),
        Route::Host(h) => ("host", h.trim_end_matches('.')),
    };
    (kind, v, v.to_lowercase())
}

fn upstream_warnings(cfg: &Config, src: &Source) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    for (j, b) in cfg.upstreams.iter().enumerate() {
        let (kind, bv, bkey) = route_key(&b.route);
        if bv.is_empty() && kind == "prefix" {
            continue;
        }
        let earlier = cfg.upstreams[..j].iter().find(|a| {
            let (k, _, key) = route_key(&a.route);
            k == kind && key == bkey
        });
        let Some(a) = earlier else { continue };
        let (_, av, _) = route_key(&a.route);
        let message = if av == bv {
            match kind {
                "prefix" => format!(
                    "upstream {} has the same prefix {bv:?} as upstream {}: requests for it go to {}, so {} can never be reached",
                    b.name, a.name, a.name, b.name
                ),
                _ => format!(
                    "upstream {} has the same host {bv:?} as upstream {}: requests for that host go to only one of them, so the other can never be reached",
                    b.name, a.name
                ),
            }
        } else {
            format!(
                "upstream {} has the prefix {bv:?}, which differs from upstream {}'s {av:?} only in case: routing tells them apart, but a server that ignores path case serves both, so which upstream (and which rules) a request gets depends on how the agent spells it",
                b.name, a.name
            )
        };
        let name = format!("name: {}", b.name);
        let key = format!("{kind}:");
        out.push(warning_at(src, &["upstreams:", &name, &key, bv], message));
    }
    out
}

fn owner_warnings(cfg: &Config, src: &Source) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    for agent in &cfg.agents {
        let Some(owner) = &agent.owner else { continue };
        for r in &cfg.reviewers {
            if r.id != *owner && crate::identity::same_identity(&r.id, owner) {
                let id = format!("id: {}", agent.id);
                out.push(warning_at(
                    src,
                    &["agents:", &id, "owner:", owner],
                    format!(
                        "agent {}'s owner {owner:?} and reviewer {:?} differ only in case: they are the same person (identities are compared without regard to case), so {} can never approve {}'s requests; write them the same way",
                        agent.id, r.id, r.id, agent.id
                    ),
                ));
            }
        }
    }
    out
}
