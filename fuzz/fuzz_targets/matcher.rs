//! The matcher never panics on any request, and `RuleSet::evaluate` (what `serve`
//! decides) and `RuleSet::explain` (what `rules explain` prints) agree on which rules
//! matched, and the verdict is the strictest matched one or the default.
#![no_main]

use airlock::config::{Config, LoadOptions, Source};
use airlock::rules::{Body, Check, RequestView, RuleSet, Verdict};
use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

const CONFIG: &str = "listen: 127.0.0.1:0\nstore: sqlite://airlock.db\nupstreams:\n  - name: api\n    prefix: /api\n    url: http://127.0.0.1:9\n  - name: billing\n    prefix: /billing\n    url: http://127.0.0.1:9\nreviewers:\n  - id: bob@example.com\n    groups: [sre]\n  - id: carol@example.com\n    groups: [sre]\n";

fn rules() -> &'static RuleSet {
    static SET: OnceLock<RuleSet> = OnceLock::new();
    SET.get_or_init(|| {
        let file = concat!(env!("CARGO_MANIFEST_DIR"), "/rules/matcher.yaml");
        let src = Source {
            file: "airlock.yaml".into(),
            text: format!("{CONFIG}rules: {file}\n"),
        };
        let cfg = Config::parse_with(&src, LoadOptions::AUDIT).expect("config");
        airlock::rules::load(&cfg).expect("rules").set
    })
}

const METHODS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "delete",
];
const PATHS: [&str; 8] = [
    "/v1/projects/p1",
    "/v1/projects/p1/keys/k/x",
    "/v1/sql",
    "/v1/users/u1/",
    "/v1/exports/e",
    "/v1/",
    "/",
    "/V1/Projects/P1",
];
const HEADERS: [&str; 6] = [
    "x-environment",
    "content-type",
    "content-encoding",
    "x-http-method-override",
    "x-other",
    "accept",
];
const UPSTREAMS: [&str; 3] = ["api", "billing", ""];
const AGENTS: [&str; 3] = ["deploy-bot", "etl-agent", ""];

#[derive(Debug, Arbitrary)]
struct Input {
    upstream: u8,
    agent: u8,
    /// Index into METHODS, or (past its end) `raw_method`.
    method: u8,
    raw_method: String,
    /// Index into PATHS, or (past its end) `raw_path`.
    path: u8,
    raw_path: String,
    query: Option<String>,
    headers: Vec<(u8, String, String)>,
    body: Option<Vec<u8>>,
    uninspectable: bool,
}

fn pick<'a>(list: &[&'a str], i: u8, raw: &'a str) -> &'a str {
    list.get(usize::from(i)).copied().unwrap_or(raw)
}

fuzz_target!(|input: Input| {
    let set = rules();
    let mut headers = HeaderMap::new();
    for (i, raw_name, value) in &input.headers {
        let name = match HEADERS.get(usize::from(*i) % 8) {
            Some(n) => HeaderName::from_static(n),
            None => match HeaderName::from_bytes(raw_name.as_bytes()) {
                Ok(n) => n,
                Err(_) => continue,
            },
        };
        // Values as the wire may carry them, not only visible ASCII.
        let Ok(value) = HeaderValue::from_bytes(value.as_bytes()) else {
            continue;
        };
        headers.append(name, value);
    }
    let view = RequestView {
        upstream: pick(&UPSTREAMS, input.upstream, ""),
        method: pick(&METHODS, input.method, &input.raw_method),
        path: pick(&PATHS, input.path, &input.raw_path),
        query: input.query.as_deref(),
        headers: &headers,
        agent: pick(&AGENTS, input.agent, ""),
    };
    let body = match (&input.body, input.uninspectable) {
        (_, true) => Body::Uninspectable("fuzz"),
        (Some(b), false) => Body::Bytes(b),
        (None, false) => Body::NotRead,
    };
    let decision = set.evaluate(&view, body);
    // `evaluate` takes a compressed non-empty body as uninspectable; explain is handed
    // what the proxy would have inspected.
    let explained_body = match body {
        Body::Bytes(b) if !b.is_empty() && airlock::http::content_encoding(&headers).is_some() => {
            Body::Uninspectable("the body is compressed")
        }
        b => b,
    };
    let checks = set.explain(&view, explained_body);
    assert_eq!(checks.len(), set.rules.len());
    let explained: Vec<usize> = checks
        .iter()
        .filter(|(_, c)| matches!(c, Check::Matched | Check::MatchedFailClosed(_)))
        .map(|(i, _)| *i)
        .collect();
    assert_eq!(decision.matched, explained, "{view:?} {checks:?}");
    let strictest = decision
        .matched
        .iter()
        .map(|&i| set.rules[i].verdict)
        .max()
        .unwrap_or(set.default_verdict());
    assert_eq!(decision.verdict, strictest);
    if decision.verdict == Verdict::Approve {
        assert!(decision.policy_rule.is_some());
    }
});
