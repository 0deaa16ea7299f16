//! The rule engine: a pure function from a request view (and, when asked for, its
//! body) to a [`Decision`]. No I/O, no clock, no globals.
//!
//! Matching happens in two steps so the proxy reads a body only when it matters:
//! [`RuleSet::head`] checks everything but the body and says whether a remaining
//! candidate inspects it; [`RuleSet::finish`] completes the decision with the body.
//! All path patterns of all rules live in one [`regex::RegexSet`], so the cost per
//! request grows slowly with the number of rules.

use super::json::{self, StrictJson};
use http::HeaderMap;
use regex::{Regex, RegexSet};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// What happens to a request. Ordered by strictness: `Deny > Approve > Allow`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Allow,
    Approve,
    Deny,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Approve => "approve",
            Verdict::Deny => "deny",
        }
    }

    pub fn parse(s: &str) -> Option<Verdict> {
        match s {
            "allow" => Some(Verdict::Allow),
            "approve" => Some(Verdict::Approve),
            "deny" => Some(Verdict::Deny),
            _ => None,
        }
    }
}

/// One alternative of a string matcher.
#[derive(Debug, Clone)]
pub enum Alt {
    Exact(String),
    Re(Regex),
}

/// A value matcher: exact string, `re:` regex, or a list of them (any-of).
#[derive(Debug, Clone)]
pub struct StrMatcher {
    pub alts: Vec<Alt>,
}

impl StrMatcher {
    pub fn is_match(&self, v: &str) -> bool {
        self.alts.iter().any(|a| match a {
            Alt::Exact(e) => e == v,
            Alt::Re(r) => r.is_match(v),
        })
    }

    /// Matches a multi-valued input. A strict rule (deny, approve) matches when any
    /// value matches; an allow rule only when every value matches, so a repeated
    /// parameter can never smuggle a request past a stricter reading.
    fn is_match_values<'v>(&self, strict: bool, values: impl Iterator<Item = &'v str>) -> bool {
        let mut seen = false;
        for v in values {
            seen = true;
            let m = self.is_match(v);
            if strict && m {
                return true;
            }
            if !strict && !m {
                return false;
            }
        }
        seen && !strict
    }
}

/// How a held request is approved; set by the first matching approve rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalPolicy {
    /// Reviewer ids and `group:NAME` entries.
    pub approvers: Vec<String>,
    pub quorum: u32,
    #[serde(with = "secs")]
    pub timeout: Duration,
    #[serde(with = "secs")]
    pub reuse: Duration,
    pub channels: Vec<String>,
    /// JSON pointers of body fields shown to reviewers.
    pub show: Vec<String>,
}

mod secs {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_secs())
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_secs(u64::deserialize(d)?))
    }
}

/// A compiled rule.
#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    pub description: Option<String>,
    pub verdict: Verdict,
    pub upstream: Option<StrMatcher>,
    pub methods: Option<StrMatcher>,
    /// Path patterns as written (their regexes live in the rule set's `RegexSet`).
    pub paths: Vec<String>,
    pub headers: Vec<(http::HeaderName, StrMatcher)>,
    pub query: Vec<(String, StrMatcher)>,
    pub json: Vec<(String, StrMatcher)>,
    pub form: Vec<(String, StrMatcher)>,
    pub agent: Option<StrMatcher>,
    pub approval: Option<ApprovalPolicy>,
}

impl Rule {
    /// Whether this rule needs the request body to decide.
    pub fn inspects_body(&self) -> bool {
        !self.json.is_empty() || !self.form.is_empty()
    }

    fn strict(&self) -> bool {
        self.verdict != Verdict::Allow
    }
}

/// What the rules see of a request. The path is normalized, with the route prefix removed.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    pub upstream: &'a str,
    /// The method the request will act as (a method-override header already applied).
    pub method: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    pub agent: &'a str,
}

/// The body as far as the proxy could read it.
#[derive(Debug, Clone, Copy)]
pub enum Body<'a> {
    /// The body was not read (no candidate inspects it).
    NotRead,
    /// The whole body, within `inspect_body`.
    Bytes(&'a [u8]),
    /// The body exists but cannot be inspected (too large, compressed, unreadable).
    Uninspectable(&'static str),
}

/// The outcome of evaluating the rules for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
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

/// Whether a body with these headers is `application/x-www-form-urlencoded` (or
/// untyped, which servers commonly parse as a form too).
fn is_form(headers: &HeaderMap) -> bool {
    match headers.get(http::header::CONTENT_TYPE) {
        None => true,
        Some(v) => v
            .to_str()
            .map(|s| {
                s.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .eq_ignore_ascii_case("application/x-www-form-urlencoded")
            })
            .unwrap_or(false),
    }
}

/// Why a rule did not match, for `rules explain`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    Matched,
    /// Matched because the body could not be inspected (fail closed).
    MatchedFailClosed(&'static str),
    Missed(String),
}

/// All rules, compiled.
#[derive(Debug, Clone)]
pub struct RuleSet {
    pub rules: Vec<Rule>,
    path_set: RegexSet,
    /// For each regex in `path_set`, the rule it belongs to.
    path_owner: Vec<usize>,
    /// Rules with no path condition (always path candidates).
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

    fn path_candidates(&self, path: &str) -> Vec<bool> {
        let mut cand = vec![false; self.rules.len()];
        for &i in &self.pathless {
            cand[i] = true;
        }
        if !self.path_owner.is_empty() {
            for m in self.path_set.matches(path).iter() {
                cand[self.path_owner[m]] = true;
            }
        }
        cand
    }

    /// Step one: checks every condition except the body.
    pub fn head(&self, req: &RequestView<'_>) -> Head {
        let cand = self.path_candidates(req.path);
        let mut matched = Vec::new();
        let mut body_candidates = Vec::new();
        for (i, rule) in self.rules.iter().enumerate() {
            if !cand[i] || check_head(rule, req).is_err() {
                continue;
            }
            if rule.inspects_body() {
                body_candidates.push(i);
            } else {
                matched.push(i);
            }
        }
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
        let cand = self.path_candidates(req.path);
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
            let values: Vec<String> = form_urlencoded::parse(q.as_bytes())
                .filter(|(k, _)| k == key)
                .map(|(_, v)| v.into_owned())
                .collect();
            if !m.is_match_values(strict, values.iter().map(String::as_str)) {
                return Err(Miss::Query(key));
            }
        }
    }
    Ok(())
}

/// The body, parsed once for all candidate rules.
struct ParsedBody<'a> {
    raw: Body<'a>,
    query: Option<&'a str>,
    form_body: bool,
    json: std::cell::OnceCell<Result<StrictJson, String>>,
}

impl<'a> ParsedBody<'a> {
    fn new(raw: Body<'a>, query: Option<&'a str>, form_body: bool) -> ParsedBody<'a> {
        ParsedBody {
            raw,
            query,
            form_body,
            json: std::cell::OnceCell::new(),
        }
    }
}

fn check_body(rule: &Rule, body: &ParsedBody<'_>) -> Check {
    if !rule.inspects_body() {
        return Check::Matched;
    }
    let strict = rule.strict();
    let bytes = match body.raw {
        Body::NotRead => return Check::Missed("body was not read".into()),
        Body::Uninspectable(why) => {
            // Fail closed: a strict rule that cannot look at the body matches; an allow
            // rule does not (it must never open a door it could not check).
            return if strict {
                Check::MatchedFailClosed(why)
            } else {
                Check::Missed(format!("body cannot be inspected: {why}"))
            };
        }
        Body::Bytes(b) => b,
    };
    if !rule.json.is_empty() {
        if bytes.iter().all(|b| b.is_ascii_whitespace()) {
            return Check::Missed("no JSON body".into());
        }
        let doc = match body.json.get_or_init(|| json::parse_strict(bytes)) {
            Ok(doc) => doc,
            Err(e) => {
                return if strict {
                    Check::MatchedFailClosed(if e.contains("duplicate") {
                        "the JSON body has duplicate keys"
                    } else {
                        "the body is not valid JSON"
                    })
                } else {
                    Check::Missed(format!("body is not valid JSON: {e}"))
                };
            }
        };
        for (pointer, m) in &rule.json {
            // Strict rules match keys case-insensitively, as Go and ASP.NET bind them.
            let values = json::select(&doc.0, pointer, strict);
            let texts: Vec<String> = values.iter().map(|v| json::as_text(v)).collect();
            if !m.is_match_values(strict, texts.iter().map(String::as_str)) {
                return Check::Missed(format!("JSON {pointer} does not match"));
            }
        }
    }
    if !rule.form.is_empty() && !bytes.is_empty() && !body.form_body {
        return if strict {
            Check::MatchedFailClosed("the body is not application/x-www-form-urlencoded")
        } else {
            Check::Missed("the body is not a form".into())
        };
    }
    let query = body.query.unwrap_or("").as_bytes();
    for (key, m) in &rule.form {
        // Query parameters count as form fields: many servers merge the two.
        let values: Vec<String> = form_urlencoded::parse(bytes)
            .chain(form_urlencoded::parse(query))
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.into_owned())
            .collect();
        if !m.is_match_values(strict, values.iter().map(String::as_str)) {
            return Check::Missed(format!("form field {key:?} does not match"));
        }
    }
    Check::Matched
}
