//! The decision: a pure function from a request view (and, when asked for, its body)
//! to a [`Decision`]. No I/O, no clock, no globals.
//!
//! Matching happens in two steps so the proxy reads a body only when it matters:
//! [`RuleSet::head`] checks everything but the body and says whether a remaining
//! candidate inspects it; [`RuleSet::finish`] completes the decision with the body.
//! All path patterns of all rules live in one [`regex::RegexSet`], so the cost per
//! request grows slowly with the number of rules. A request whose path matches no
//! pattern and that no path-less rule matches is decided without allocating.

use super::body::{check_body, Body, ParsedBody};
use super::params::{cookie_values, header_values, query_values};
use super::rule::{Rule, Verdict};
use http::HeaderMap;
use regex::RegexSet;

/// A `body_method` that stands for "any method the body might name": strict rules
/// with a method condition match it, allow rules do not.
pub const ANY_METHOD: &str = "*";

/// What the rules see of a request. The path is normalized, with the route prefix removed.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    /// The upstream's name.
    pub upstream: &'a str,
    /// The method the request will act as (a method-override header already applied).
    pub method: &'a str,
    /// The request line's method. With an override, strict rules match either method
    /// and allow rules must match both.
    pub line_method: &'a str,
    /// A `_method` the body names ([`ANY_METHOD`] while the body is unread), weighed
    /// like an override header.
    pub body_method: Option<&'a str>,
    /// The normalized path the upstream will see.
    pub path: &'a str,
    /// Other readings of the path an upstream may take (percent-decoded, `;`
    /// parameters stripped); usually none.
    pub path_readings: &'a [String],
    /// Whether the upstream routes paths case-sensitively (`path_case: sensitive`).
    /// When it does not, strict rules match paths without regard to case.
    pub path_case_sensitive: bool,
    /// The raw query string, without `?`.
    pub query: Option<&'a str>,
    /// The request headers as received.
    pub headers: &'a HeaderMap,
    /// The agent's id ("" when no agent was identified).
    pub agent: &'a str,
    /// Whether the request may have a body (its fields count for strict `query` rules).
    pub has_body: bool,
}

impl<'a> RequestView<'a> {
    /// A view of a request with no override, no other readings and no body, upstream
    /// paths case-sensitive (for tests and tools).
    pub fn plain(
        upstream: &'a str,
        method: &'a str,
        path: &'a str,
        query: Option<&'a str>,
        headers: &'a HeaderMap,
        agent: &'a str,
    ) -> RequestView<'a> {
        RequestView {
            upstream,
            method,
            line_method: method,
            body_method: None,
            path,
            path_readings: &[],
            path_case_sensitive: true,
            query,
            headers,
            agent,
            has_body: false,
        }
    }
}

/// The outcome of evaluating the rules for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The strictest verdict of the matching rules, or the default.
    pub verdict: Verdict,
    /// Indices of every matching rule, in file order.
    pub matched: Vec<usize>,
    /// Every matched approve rule: each one's approval must be satisfied.
    pub policy_rules: Vec<usize>,
    /// Why body conditions were taken as matching without inspection (or on one of
    /// two readings), if they were.
    pub fail_closed: Option<&'static str>,
}

/// The result of the first step: everything but the body checked.
#[derive(Debug, Clone)]
pub struct Head {
    matched: Vec<usize>,
    body_candidates: Vec<usize>,
    /// The query string, kept for body conditions (many servers merge query
    /// parameters and form fields). Only captured when a body candidate exists.
    query: Option<String>,
    /// The `Content-Type` header, when a body candidate exists.
    content_type: Option<String>,
    /// The `Cookie` headers joined with `;`, when a body candidate exists.
    cookies: String,
}

impl Head {
    /// Whether an allow rule with a method condition matched or may match: a method
    /// the body names could undo it.
    pub fn allows_by_method(&self, rules: &RuleSet) -> bool {
        self.matched
            .iter()
            .chain(&self.body_candidates)
            .any(|i| !rules.rules[*i].strict() && rules.rules[*i].methods.is_some())
    }

    /// Whether some strict rule is a candidate here that is not one in `other`.
    pub fn adds_strict(&self, other: &Head, rules: &RuleSet) -> bool {
        self.matched.iter().chain(&self.body_candidates).any(|i| {
            rules.rules[*i].strict()
                && !other.matched.contains(i)
                && !other.body_candidates.contains(i)
        })
    }
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
    /// The strict rules' patterns, case-insensitive, and their owners.
    path_set_i: RegexSet,
    path_owner_i: Vec<usize>,
    /// No strict pattern holds an uppercase letter: on a path without one,
    /// case-insensitive matching finds what case-sensitive matching finds.
    strict_patterns_lowercase: bool,
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
        let mut sources_i = Vec::new();
        let mut path_owner_i = Vec::new();
        let mut pathless = Vec::new();
        for (i, srcs) in path_regexes.iter().enumerate() {
            if srcs.is_empty() {
                pathless.push(i);
            }
            for s in srcs {
                sources.push(s.as_str());
                path_owner.push(i);
                if rules.get(i).is_some_and(Rule::strict) {
                    sources_i.push(format!("(?i:{s})"));
                    path_owner_i.push(i);
                }
            }
        }
        let strict_patterns_lowercase = path_regexes
            .iter()
            .enumerate()
            .filter(|(i, _)| rules.get(*i).is_some_and(Rule::strict))
            .all(|(_, srcs)| {
                srcs.iter()
                    .all(|s| !s.bytes().any(|b| b.is_ascii_uppercase()))
            });
        let path_set = RegexSet::new(sources)?;
        let path_set_i = RegexSet::new(sources_i)?;
        Ok(RuleSet {
            rules,
            version,
            path_set,
            path_owner,
            path_set_i,
            path_owner_i,
            strict_patterns_lowercase,
            pathless,
            default,
        })
    }

    /// The verdict for requests no rule matches.
    pub fn default_verdict(&self) -> Verdict {
        self.default
    }

    /// Calls `f` with every rule whose path condition admits the request's path, in
    /// ascending order, each once. Allocates only when some path pattern matches, or
    /// when the path has several readings.
    fn for_each_candidate(&self, req: &RequestView<'_>, mut f: impl FnMut(usize)) {
        let fold = !req.path_case_sensitive;
        // Lowercase patterns read a path without uppercase letters the same either way.
        let folding_changes_nothing =
            self.strict_patterns_lowercase && !req.path.bytes().any(|b| b.is_ascii_uppercase());
        if req.path_readings.is_empty() && (!fold || folding_changes_nothing) {
            return self.for_each_candidate_of(req.path, f);
        }
        let mut hit = vec![false; self.rules.len()];
        for path in std::iter::once(req.path).chain(req.path_readings.iter().map(String::as_str)) {
            self.for_each_candidate_of(path, |i| hit[i] = true);
            if fold {
                for m in self.path_set_i.matches(path).iter() {
                    hit[self.path_owner_i[m]] = true;
                }
            }
        }
        hit.iter()
            .enumerate()
            .filter(|(_, h)| **h)
            .for_each(|(i, _)| f(i));
    }

    fn for_each_candidate_of(&self, path: &str, mut f: impl FnMut(usize)) {
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
        self.for_each_candidate(req, |i| match check_head(&self.rules[i], req) {
            Ok(Needs::Nothing) => matched.push(i),
            Ok(Needs::Body) => body_candidates.push(i),
            Err(_) => {}
        });
        let (query, content_type, cookies) = if body_candidates.is_empty() {
            (None, None, String::new())
        } else {
            (
                req.query.map(str::to_string),
                req.headers
                    .get(http::header::CONTENT_TYPE)
                    .map(|v| v.to_str().unwrap_or("\u{fffd}").to_string()),
                cookie_text(req.headers),
            )
        };
        Head {
            matched,
            body_candidates,
            query,
            content_type,
            cookies,
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
            let parsed = ParsedBody::new(body, head.query.as_deref(), head.content_type.as_deref())
                .with_cookies(&head.cookies);
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
        let policy_rules = if verdict == Verdict::Approve {
            matched
                .iter()
                .copied()
                .filter(|&i| self.rules[i].verdict == Verdict::Approve)
                .collect()
        } else {
            Vec::new()
        };
        Decision {
            verdict,
            matched,
            policy_rules,
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
        self.for_each_candidate(req, |i| cand[i] = true);
        let content_type = req
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        let cookies = cookie_text(req.headers);
        let parsed = ParsedBody::new(body, req.query, content_type).with_cookies(&cookies);
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
                match check_head(rule, req) {
                    Err(why) => (i, Check::Missed(why.describe(req))),
                    Ok(Needs::Nothing) => (i, Check::Matched),
                    Ok(Needs::Body) => (i, check_body(rule, &parsed)),
                }
            })
            .collect()
    }

    /// Names of the given rules.
    pub fn names(&self, idx: &[usize]) -> Vec<String> {
        idx.iter().map(|&i| self.rules[i].name.clone()).collect()
    }
}

/// Every `Cookie` header's text, joined with `;`.
fn cookie_text(headers: &HeaderMap) -> String {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join(";")
}

/// What a rule that passed its head conditions still needs.
enum Needs {
    Nothing,
    /// Its body conditions, or (a strict rule) a query field the body may hold.
    Body,
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

/// Whether a rule's method condition admits the request. A strict rule matches any
/// method an upstream may act on (the override, the request line's, the body's, and
/// `GET` for `HEAD`, as Go, Rails and Express route it, `PUT` for `PATCH`, as Rails
/// routes both to `update`); an allow rule must match all
/// of them.
fn method_matches(m: &super::matcher::StrMatcher, strict: bool, req: &RequestView<'_>) -> bool {
    // Rules name methods in uppercase; a `delete` on the wire is matched as DELETE,
    // since an upstream may well read it so.
    let is = |method: &str| {
        if method.bytes().any(|b| b.is_ascii_lowercase()) {
            m.is_match(&method.to_ascii_uppercase())
        } else {
            m.is_match(method)
        }
    };
    let methods = [Some(req.method), Some(req.line_method), req.body_method];
    let methods = methods.iter().flatten();
    if strict {
        // Rails routes PATCH and PUT to one `update` action.
        methods.clone().any(|&x| {
            x == ANY_METHOD
                || is(x)
                || (x.eq_ignore_ascii_case("HEAD") && is("GET"))
                || (x.eq_ignore_ascii_case("PATCH") && is("PUT"))
        })
    } else {
        methods.clone().all(|&x| x != ANY_METHOD && is(x))
    }
}

fn check_head<'r>(rule: &'r Rule, req: &RequestView<'_>) -> Result<Needs, Miss<'r>> {
    let strict = rule.strict();
    if let Some(m) = &rule.upstream {
        if !m.is_match(req.upstream) {
            return Err(Miss::Upstream);
        }
    }
    if let Some(m) = &rule.methods {
        if !method_matches(m, strict, req) {
            return Err(Miss::Method);
        }
    }
    if let Some(m) = &rule.agent {
        if !m.is_match(req.agent) {
            return Err(Miss::Agent);
        }
    }
    for (name, m) in &rule.headers {
        // Every reading of the header: a strict rule matches any, an allow rule all.
        if !m.is_match_values(strict, header_values(req.headers, name, true)) {
            return Err(Miss::Header(name));
        }
    }
    let mut needs = if rule.inspects_body() {
        Needs::Body
    } else {
        Needs::Nothing
    };
    if !rule.query.is_empty() {
        let q = req.query.unwrap_or("").as_bytes();
        for (key, m) in &rule.query {
            // PHP's `$_REQUEST` (no php.ini: variables_order EGPCS) and ASP.NET
            // Framework's `Request[...]` read cookies as parameters too.
            let cookies = strict
                .then(|| cookie_values(req.headers, key))
                .into_iter()
                .flatten()
                .map(std::borrow::Cow::Borrowed);
            if !m.is_match_values(strict, query_values(q, key, true).chain(cookies)) {
                // A strict rule's parameter may come in a form body (Spring, PHP and
                // Laravel merge the two).
                if strict && req.has_body {
                    needs = Needs::Body;
                } else {
                    return Err(Miss::Query(key));
                }
            } else if !strict && req.has_body {
                // An allow rule must hold for the body's fields of that name too.
                needs = Needs::Body;
            }
        }
    }
    Ok(needs)
}
