//! The matcher never panics on any request, and what `serve` decides agrees with what
//! `rules explain` prints: requests go through `proxy::simulate::simulate` (the
//! proxy's own prepare and decide phases, then `RuleSet::explain` on the same view),
//! whose verdict must be the strictest of the rules `explain` says matched (or the
//! default), and whose matched rules must be those, up to rules that cannot change the
//! verdict (see the README for that known difference).
#![no_main]

use airlock::config::{Config, LoadOptions, Source};
use airlock::proxy::simulate::{simulate, Simulated, Simulation};
use airlock::request::Policy;
use airlock::rules::Check;
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use std::sync::{Arc, OnceLock};

const CONFIG: &str = "listen: 127.0.0.1:0\nstore: sqlite://airlock.db\nupstreams:\n  - name: api\n    prefix: /api\n    url: http://127.0.0.1:9\n  - name: billing\n    prefix: /billing\n    url: http://127.0.0.1:9\nreviewers:\n  - id: bob@example.com\n    groups: [sre]\n  - id: carol@example.com\n    groups: [sre]\nagents:\n  - id: deploy-bot\n    key: sha256:0000000000000000000000000000000000000000000000000000000000000000\n  - id: etl-agent\n    key: sha256:1111111111111111111111111111111111111111111111111111111111111111\n";

fn policy() -> &'static Policy {
    static POLICY: OnceLock<Policy> = OnceLock::new();
    POLICY.get_or_init(|| {
        let file = concat!(env!("CARGO_MANIFEST_DIR"), "/rules/matcher.yaml");
        let src = Source {
            file: "airlock.yaml".into(),
            text: format!("{CONFIG}rules: {file}\n"),
        };
        let cfg = Config::parse_with(&src, LoadOptions::AUDIT).expect("config");
        let rules = airlock::rules::load(&cfg).expect("rules").set;
        Policy::new(Arc::new(cfg), Arc::new(rules))
    })
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    })
}

const METHODS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "delete",
];
const PREFIXES: [&str; 3] = ["/api", "/billing", ""];
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
const HEADERS: [&str; 8] = [
    "x-environment",
    "content-type",
    "content-encoding",
    "x-http-method-override",
    "x_environment",
    "x-other",
    "accept",
    "content-length",
];
const AGENTS: [&str; 2] = ["deploy-bot", "etl-agent"];

#[derive(Debug, Arbitrary)]
struct Input {
    /// Index into PREFIXES; past its end, no prefix at all.
    prefix: u8,
    /// Index into AGENTS; past its end, no agent.
    agent: u8,
    /// Index into METHODS or, past its end, `raw_method`.
    method: u8,
    raw_method: String,
    /// Index into PATHS or, past its end, `raw_path`.
    path: u8,
    raw_path: String,
    query: Option<String>,
    /// (index into HEADERS or, past its end, the raw name; value)
    headers: Vec<(u8, String, String)>,
    body: Vec<u8>,
}

fn pick<'a>(list: &[&'a str], i: u8, raw: &'a str) -> &'a str {
    list.get(usize::from(i)).copied().unwrap_or(raw)
}

fuzz_target!(|input: Input| {
    let policy = policy();
    let path = pick(&PATHS, input.path % 16, &input.raw_path);
    let mut url = format!("{}{path}", pick(&PREFIXES, input.prefix % 4, ""));
    if let Some(q) = &input.query {
        url.push('?');
        url.push_str(q);
    }
    let headers: Vec<(String, String)> = input
        .headers
        .iter()
        .map(|(i, name, value)| {
            let name = pick(&HEADERS, i % 16, name);
            (name.to_string(), value.clone())
        })
        .collect();
    let sim = Simulation {
        method: pick(&METHODS, input.method % 16, &input.raw_method),
        url: &url,
        headers: &headers,
        body: &input.body,
        agent: AGENTS.get(usize::from(input.agent % 3)).copied(),
    };
    let Ok(Simulated::Decided {
        decision, checks, ..
    }) = runtime().block_on(simulate(policy, sim))
    else {
        // Refused before the rules (bad path, bad override, no route, …) or not even a
        // request: nothing to compare.
        return;
    };
    let set = &policy.rules;
    assert_eq!(checks.len(), set.rules.len());
    let explained: Vec<usize> = checks
        .iter()
        .filter(|(_, c)| matches!(c, Check::Matched | Check::MatchedFailClosed(_)))
        .map(|(i, _)| *i)
        .collect();
    // Known difference (reported; see README): once a deny rule has matched, the proxy
    // does not read the body, and rules whose match depends on it may then be missing
    // from the decision or counted in it where `explain` (which always reads the body)
    // says otherwise. Such rules cannot change the verdict; every rule that could must
    // agree, and so must the verdict.
    let differ: Vec<usize> = (0..set.rules.len())
        .filter(|i| decision.matched.contains(i) != explained.contains(i))
        .collect();
    assert!(
        differ
            .iter()
            .all(|&i| set.rules[i].verdict < decision.verdict),
        "decided {:?}, explained {explained:?}: {sim:?}\n{checks:?}",
        decision.matched
    );
    let strictest = |matched: &[usize]| {
        matched
            .iter()
            .map(|&i| set.rules[i].verdict)
            .max()
            .unwrap_or(set.default_verdict())
    };
    assert_eq!(decision.verdict, strictest(&decision.matched), "{sim:?}");
    assert_eq!(
        decision.verdict,
        strictest(&explained),
        "{sim:?}\n{checks:?}"
    );
});
