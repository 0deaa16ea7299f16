//! `tests:` blocks in rule files and the request preparation they share with
//! `airlock rules explain`: route, normalize, apply method overrides, then evaluate.

use super::{raw, Body, Check, Decision, RequestView, RuleSet, Verdict};
use crate::config::{Config, Source};
use crate::http::{effective_method, normalize::normalize_path, Code};
use crate::proxy::route::Router;
use http::{HeaderMap, HeaderName, HeaderValue};

/// One test case from a rule file.
#[derive(Debug, Clone)]
pub struct RuleTest {
    /// `file:line:col` of the case, for failure messages.
    pub location: String,
    pub rule: String,
    pub method: String,
    pub url: String,
    pub agent: Option<String>,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub expect: String,
    pub expect_rules: Option<Vec<String>>,
}

impl RuleTest {
    pub fn from_raw(src: &Source, rule: &str, n: usize, t: &raw::RawTest) -> RuleTest {
        let d = src.diag_nth(&format!("name: {rule}"), "request:", n, String::new());
        let mut headers: Vec<(String, String)> = t
            .request
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut body = t.request.body.clone().unwrap_or_default().into_bytes();
        if let Some(j) = &t.request.json {
            body = serde_json::to_vec(j).unwrap_or_default();
            headers.push(("content-type".into(), "application/json".into()));
        }
        if let Some(f) = &t.request.form {
            body = form_urlencoded::Serializer::new(String::new())
                .extend_pairs(f.iter())
                .finish()
                .into_bytes();
            headers.push((
                "content-type".into(),
                "application/x-www-form-urlencoded".into(),
            ));
        }
        RuleTest {
            location: format!(
                "{}:{}:{} (rule {rule}, test {})",
                d.file.display(),
                d.line,
                d.col,
                n + 1
            ),
            rule: rule.to_string(),
            method: t.request.method.to_ascii_uppercase(),
            url: t.request.url.clone(),
            agent: t.request.agent.clone(),
            headers,
            body,
            expect: t.expect.clone(),
            expect_rules: t.rules.clone(),
        }
    }
}

/// What evaluating a synthetic request gave.
#[derive(Debug, Clone)]
pub enum Evaluated {
    /// Stopped before the rules (`no_route`, `bad_path`, `bad_request`).
    Refused(Code, String),
    Decided {
        upstream: String,
        path: String,
        decision: Decision,
        /// Every rule with whether it matched and why not (for `rules explain`).
        checks: Vec<(usize, Check)>,
    },
}

impl Evaluated {
    /// The word a test's `expect:` compares with.
    pub fn outcome(&self) -> &str {
        match self {
            Evaluated::Refused(c, _) => c.as_str(),
            Evaluated::Decided { decision, .. } => decision.verdict.as_str(),
        }
    }
}

/// Runs a request the way the proxy would, without the network.
#[allow(clippy::too_many_arguments)]
pub fn evaluate_request(
    cfg: &Config,
    rules: &RuleSet,
    router: &Router,
    method: &str,
    url: &str,
    headers: &[(String, String)],
    body: &[u8],
    agent: Option<&str>,
) -> Result<Evaluated, String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("invalid url {url:?}: {e}"))?;
    let mut map = HeaderMap::new();
    for (k, v) in headers {
        let name = HeaderName::from_bytes(k.as_bytes())
            .map_err(|_| format!("invalid header name {k:?}"))?;
        let value =
            HeaderValue::from_str(v).map_err(|_| format!("invalid header value for {k}"))?;
        map.append(name, value);
    }
    let path = match normalize_path(uri.path()) {
        Ok(p) => p,
        Err(e) => return Ok(Evaluated::Refused(Code::BadPath, e.to_string())),
    };
    let host = map
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or(uri.host());
    let Some((idx, upstream_path)) = router.route(host, &path) else {
        return Ok(Evaluated::Refused(
            Code::NoRoute,
            format!("no upstream for {path}"),
        ));
    };
    let line_method = method;
    let method = match effective_method(method, &map, uri.query()) {
        Ok(m) => m,
        Err(e) => return Ok(Evaluated::Refused(e.error, e.message)),
    };
    let upstream = &cfg.upstreams[idx];
    let view = RequestView {
        upstream: &upstream.name,
        method: &method,
        path: upstream_path,
        query: uri.query(),
        headers: &map,
        agent: agent.unwrap_or("anonymous@127.0.0.1"),
    };
    let body = if body.len() > cfg.limits.inspect_body {
        Body::Uninspectable("the body is larger than limits.inspect_body")
    } else {
        Body::Bytes(body)
    };
    let head = rules.head_with_line_method(&view, line_method);
    let decision = rules.finish(head, body, crate::http::content_encoding(&map));
    let checks = rules.explain(&view, body);
    Ok(Evaluated::Decided {
        upstream: upstream.name.clone(),
        path: upstream_path.to_string(),
        decision,
        checks,
    })
}

/// The result of one test case.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub test: RuleTest,
    pub passed: bool,
    pub detail: String,
}

/// Runs test cases and reports each.
pub fn run(cfg: &Config, rules: &RuleSet, tests: &[RuleTest]) -> Vec<Outcome> {
    let router = Router::new(&cfg.upstreams);
    tests
        .iter()
        .map(|t| {
            let valid = Verdict::parse(&t.expect).is_some()
                || matches!(t.expect.as_str(), "no_route" | "bad_path" | "bad_request");
            if !valid {
                return Outcome {
                    test: t.clone(),
                    passed: false,
                    detail: format!("expect: {:?} is not allow, deny, approve, no_route, bad_path or bad_request", t.expect),
                };
            }
            match evaluate_request(cfg, rules, &router, &t.method, &t.url, &t.headers, &t.body, t.agent.as_deref()) {
                Err(e) => Outcome {
                    test: t.clone(),
                    passed: false,
                    detail: e,
                },
                Ok(ev) => {
                    let got = ev.outcome().to_string();
                    let mut passed = got == t.expect;
                    let mut detail = format!("expected {}, got {got}", t.expect);
                    if let Evaluated::Decided { decision, .. } = &ev {
                        let names = rules.names(&decision.matched);
                        detail.push_str(&format!(" (matched: {})", if names.is_empty() { "none".into() } else { names.join(", ") }));
                        if let Some(want) = &t.expect_rules {
                            let mut a = want.clone();
                            let mut b = names.clone();
                            a.sort();
                            b.sort();
                            if a != b {
                                passed = false;
                                detail.push_str(&format!("; expected rules {}", want.join(", ")));
                            }
                        }
                    }
                    Outcome {
                        test: t.clone(),
                        passed,
                        detail,
                    }
                }
            }
        })
        .collect()
}
