//! The decision: a pure function from a request view (and, when asked for, its body)
//! to a [`Decision`]. No I/O, no clock, no globals.
//!
//! Matching happens in two steps so the proxy reads a body only when it matters:
//! [`RuleSet::head`] checks everything but the body and says whether a remaining
//! candidate inspects it; [`RuleSet::finish`] completes the decision with the body.
//! All path patterns of all rules live in one [`regex::RegexSet`], so the cost per
//! request grows slowly with the number of rules. A request whose path matches no
//! pattern and that no path-less rule matches is decided without allocating.

use super::body::{check_body, is_form, Body, ParsedBody};
use super::rule::{Rule, Verdict};
use http::HeaderMap;
use regex::RegexSet;

/// What the rules see of a request. The path is normalized, with the route prefix removed.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    /// The upstream's name.
    pub upstream: &'a str,
    /// The method the request will act as (a method-override header already applied).
    pub method: &'a str,
    /// The normalized path the upstream will see.
    pub path: &'a str,
    /// The raw query string, without `?`.
    pub query: Option<&'a str>,
    /// The request headers as received.
    pub headers: &'a HeaderMap,
    /// The agent's id ("" when no agent was identified).
    pub agent: &'a str,
}

/// The outcome of evaluating the rules for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The strictest verdict of the matching rules, or the default.
    pub verdict: Verdict,
    /// Indices of every matching rule, in file order.
    pub matched: Vec<usize>,
    /// The approve rule whose policy applies (first matching approve rule).
    pub policy_rule: Option<usize>,
    /// Why body conditions were taken as matching without inspection, if they were.
    pub fail_closed: Option<&'static str>,
}

/// The result of the first step: everything but the body checked.
#[derive(Debug, Clone)]
pub struct Head {
    matched: Vec<usize>,
    body_candidates: Vec<usize>,
    /// The query string, kept for `form` conditions (many servers merge query
    /// parameters and form fields). Only captured when a body candidate exists.
    query: Option<String>,
    /// Whether the body may be read as a form (no content type, or urlencoded).
    form_body: bool,
}

/// Whether one rule matched a request, for `rules explain`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// Every condition holds.
    Matched,
    /// Matched because the body could not be inspected (fail closed).
    MatchedFailClosed(&'static str),
    /// The first condition that failed.
    Missed(String),
}

/// All rules, compiled.
#[derive(Debug, Clone)]
pub struct RuleSet {
    /// The rules, in file order.
    pub rules: Vec<Rule>,
    /// The first 16 hex digits of a SHA-256 over the rule files and the config's
    /// `mode` and `default`: the same files give the same version.
    pub version: String,
    path_set: RegexSet,
    /// For each regex in `path_set`, the rule it belongs to (non-decreasing).
    path_owner: Vec<usize>,
    /// Rules with no path condition (always path candidates), ascending.
    pathless: Vec<usize>,
    default: Verdict,
}

impl RuleSet {
    /// Builds a rule set. `path_regexes[i]` lists the regex sources of `rules[i]`'s
    /// paths (already translated from globs and validated by the loader).
    pub fn new(
        rules: Vec<Rule>,
        path_regexes: Vec<Vec<String>>,
        default: Verdict,
        version: String,
    ) -> Result<RuleSet, regex::Error> {
        let mut sources = Vec::new();
        let mut path_owner = Vec::new();
        let mut pathless = Vec::new();
        for (i, srcs) in path_regexes.iter().enumerate() {
            if srcs.is_empty() {
                pathless.push(i);
            }
            for s in srcs {
                sources.push(s.as_str());
                path_owner.push(i);
            }
        }
        let path_set = RegexSet::new(sources)?;
        Ok(RuleSet {
            rules,
            version,
            path_set,
            path_owner,
            pathless,
            default,
        })
    }

    /// The verdict for requests no rule matches.
    pub fn default_verdict(&self) -> Verdict {
        self.default
    }

    /// Calls `f` with every rule whose path condition admits `path`, in ascending
    /// order, each once. Allocates only when some path pattern matches.
    fn for_each_candidate(&self, path: &str, mut f: impl FnMut(usize)) {
        if self.path_owner.is_empty() || !self.path_set.is_match(path) {
            self.pathless.iter().copied().for_each(f);
            return;
        }
        let hits = self.path_set.matches(path);
        let mut pathless = self.pathless.iter().copied().peekable();
        let mut last = None;
        // Pattern indices ascend, so their owners never decrease; a rule with several
        // matching paths is reported once. Path-less rules own no pattern.
        for owner in hits.iter().map(|m| self.path_owner[m]) {
            if last == Some(owner) {
                continue;
            }
            while let Some(p) = pathless.next_if(|&p| p < owner) {
                f(p);
            }
            f(owner);
            last = Some(owner);
        }
        pathless.for_each(f);
    }

    /// Step one: checks every condition except the body.
    pub fn head(&self, req: &RequestView<'_>) -> Head {
        let mut matched = Vec::new();
        let mut body_candidates = Vec::new();
        self.for_each_candidate(req.path, |i| {
            let rule = &self.rules[i];
            if check_head(rule, req).is_err() {
                return;
            }
            if rule.inspects_body() {
                body_candidates.push(i);
            } else {
                matched.push(i);
            }
        });
        let (query, form_body) = if body_candidates.is_empty() {
            (None, true)
        } else {
            (req.query.map(str::to_string), is_form(req.headers))
        };
        Head {
            matched,
            body_candidates,
            query,
            form_body,
        }
    }

    /// Step one for a request whose method-override header names another method
    /// (`req.method`) than its request line (`line_method`). The upstream may act on
    /// either, so a strict rule (deny, approve) is a candidate when it matches either
    /// method, an allow rule only when it matches both.
    pub fn head_with_line_method(&self, req: &RequestView<'_>, line_method: &str) -> Head {
        if line_method.eq_ignore_ascii_case(req.method) {
            return self.head(req);
        }
        let a = self.head(req);
        let b = self.head(&RequestView {
            method: line_method,
            ..*req
        });
        let pick = |x: &[usize], y: &[usize]| -> Vec<usize> {
            let mut out: Vec<usize> = x
                .iter()
                .chain(y)
                .copied()
                .filter(|&i| self.rules[i].strict() || (x.contains(&i) && y.contains(&i)))
                .collect();
            out.sort_unstable();
            out.dedup();
            out
        };
        Head {
            matched: pick(&a.matched, &b.matched),
            body_candidates: pick(&a.body_candidates, &b.body_candidates),
            query: a.query.or(b.query),
            form_body: a.form_body && b.form_body,
        }
    }

    /// Whether reading the body could change the decision.
    pub fn needs_body(&self, head: &Head) -> bool {
        let current = head
            .matched
            .iter()
            .map(|&i| self.rules[i].verdict)
            .max()
            .unwrap_or(Verdict::Allow);
        // With nothing matched yet the default decides; under `default: deny` an allow
        // rule that inspects the body is what may let the request through.
        let opens_default_deny = head.matched.is_empty() && self.default != Verdict::Allow;
        head.body_candidates.iter().any(|&i| {
            let v = self.rules[i].verdict;
            v > current
                || (v == Verdict::Approve && current == Verdict::Approve)
                || (v == Verdict::Allow && opens_default_deny)
        })
    }

    /// Step two: completes the decision. Pass [`Body::NotRead`] when
    /// [`RuleSet::needs_body`] said no.
    pub fn finish(&self, head: Head, body: Body<'_>, content_encoding: Option<&str>) -> Decision {
        let mut matched = head.matched;
        let mut fail_closed = None;
        if !head.body_candidates.is_empty() {
            let body = match (body, content_encoding) {
                (Body::Bytes(b), Some(enc))
                    if !b.is_empty() && !enc.eq_ignore_ascii_case("identity") =>
                {
                    Body::Uninspectable("the body is compressed")
                }
                (b, _) => b,
            };
            let parsed = ParsedBody::new(body, head.query.as_deref(), head.form_body);
            for i in head.body_candidates {
                match check_body(&self.rules[i], &parsed) {
                    Check::Matched => matched.push(i),
                    Check::MatchedFailClosed(why) => {
                        fail_closed = Some(why);
                        matched.push(i);
                    }
                    Check::Missed(_) => {}
                }
            }
            matched.sort_unstable();
        }
        self.decide(matched, fail_closed)
    }

    fn decide(&self, matched: Vec<usize>, fail_closed: Option<&'static str>) -> Decision {
        let verdict = matched
            .iter()
            .map(|&i| self.rules[i].verdict)
            .max()
            .unwrap_or(self.default);
        let policy_rule = if verdict == Verdict::Approve {
            matched
                .iter()
                .copied()
                .find(|&i| self.rules[i].verdict == Verdict::Approve)
        } else {
            None
        };
        Decision {
            verdict,
            matched,
            policy_rule,
            fail_closed,
        }
    }

    /// Both steps at once, for callers that already hold the whole body.
    pub fn evaluate(&self, req: &RequestView<'_>, body: Body<'_>) -> Decision {
        let head = self.head(req);
        self.finish(head, body, crate::http::content_encoding(req.headers))
    }

    /// Every rule with whether it matched and, if not, the first condition that failed.
    pub fn explain(&self, req: &RequestView<'_>, body: Body<'_>) -> Vec<(usize, Check)> {
        let mut cand = vec![false; self.rules.len()];
        self.for_each_candidate(req.path, |i| cand[i] = true);
        let parsed = ParsedBody::new(body, req.query, is_form(req.headers));
        self.rules
            .iter()
            .enumerate()
            .map(|(i, rule)| {
                if !cand[i] {
                    return (
                        i,
                        Check::Missed(format!(
                            "path {:?} does not match {:?}",
                            req.path, rule.paths
                        )),
                    );
                }
                if let Err(why) = check_head(rule, req) {
                    return (i, Check::Missed(why.describe(req)));
                }
                (i, check_body(rule, &parsed))
            })
            .collect()
    }

    /// Names of the given rules.
    pub fn names(&self, idx: &[usize]) -> Vec<String> {
        idx.iter().map(|&i| self.rules[i].name.clone()).collect()
    }
}

/// The first condition of a rule a request fails (no allocation: `head` runs this for
/// every candidate rule of every request; only `rules explain` formats it).
#[derive(Debug, Clone, Copy)]
enum Miss<'r> {
    Upstream,
    Method,
    Agent,
    Header(&'r http::HeaderName),
    Query(&'r str),
}

impl Miss<'_> {
    fn describe(self, req: &RequestView<'_>) -> String {
        match self {
            Miss::Upstream => format!("upstream {:?} does not match", req.upstream),
            Miss::Method => format!("method {} does not match", req.method),
            Miss::Agent => format!("agent {:?} does not match", req.agent),
            Miss::Header(name) => format!("header {name} does not match"),
            Miss::Query(key) => format!("query parameter {key:?} does not match"),
        }
    }
}

fn check_head<'r>(rule: &'r Rule, req: &RequestView<'_>) -> Result<(), Miss<'r>> {
    let strict = rule.strict();
    if let Some(m) = &rule.upstream {
        if !m.is_match(req.upstream) {
            return Err(Miss::Upstream);
        }
    }
    if let Some(m) = &rule.methods {
        // Rules name methods in uppercase; a `delete` on the wire is matched as DELETE,
        // since an upstream may well read it so.
        let upper;
        let method = if req.method.bytes().any(|b| b.is_ascii_lowercase()) {
            upper = req.method.to_ascii_uppercase();
            upper.as_str()
        } else {
            req.method
        };
        if !m.is_match(method) {
            return Err(Miss::Method);
        }
    }
    if let Some(m) = &rule.agent {
        if !m.is_match(req.agent) {
            return Err(Miss::Agent);
        }
    }
    for (name, m) in &rule.headers {
        let values = req
            .headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap_or("\u{fffd}"));
        if !m.is_match_values(strict, values) {
            return Err(Miss::Header(name));
        }
    }
    if !rule.query.is_empty() {
        let q = req.query.unwrap_or("");
        for (key, m) in &rule.query {
            // Values borrow from the query unless they were percent-encoded.
            let values = form_urlencoded::parse(q.as_bytes())
                .filter(|(k, _)| k == key)
                .map(|(_, v)| v);
            if !m.is_match_values(strict, values) {
                return Err(Miss::Query(key));
            }
        }
    }
    Ok(())
}
