//! Criterion benchmarks of airlock's pure request-time code: the rule engine
//! (`airlock::rules::RuleSet`) over 10, 100 and 1000 generated rules, and path
//! normalization (`airlock::http::normalize::normalize_path`).
//!
//! Run: `cargo bench --bench rules` (see bench/README.md). Criterion is built with
//! `default-features = false`: no plots, no HTML, text summary only. Every group uses
//! short warm-up and measurement times so the whole run stays well under a minute.
//!
//! The rules are generated as YAML and loaded through `airlock::rules::load_files`, the
//! same path `airlock serve` takes (globs become regexes in one `RegexSet`).

use airlock::config::{Config, Source};
use airlock::http::normalize::normalize_path;
use airlock::rules::{glob_to_regex, load_files, Body, Decision, RequestView, RuleSet};
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode};
use http::{HeaderMap, HeaderValue};
use regex::RegexSet;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

const SIZES: [usize; 3] = [10, 100, 1000];

const CONFIG: &str = r#"
listen: 127.0.0.1:0
default: allow
store: "sqlite::memory:"
upstreams:
  - name: cloud
    prefix: /cloud
    url: http://127.0.0.1:9
reviewers:
  - id: bob@example.com
    groups: [sre]
  - id: carol@example.com
    groups: [sre]
"#;

/// `n` rules of five kinds, cycling, all on the `cloud` upstream:
///
/// * `i % 5 == 0`: glob path + method list → approve
/// * `i % 5 == 1`: `**` glob + method + header `x-environment: prod` → deny
/// * `i % 5 == 2`: `re:` path + method + JSON body matcher → approve (inspects the body)
/// * `i % 5 == 3`: glob path + methods + query `force=true` → deny
/// * `i % 5 == 4`: glob path + method + header regex → approve
///
/// plus, every 50th rule, one with no path at all (header + method only), which is a
/// candidate for every request and so is checked linearly.
fn rules_yaml(n: usize) -> String {
    let mut y = String::from("rules:\n");
    for i in 0..n {
        let _ = writeln!(y, "  - name: r{i}");
        y.push_str("    when:\n      upstream: cloud\n");
        if let Some(p) = rule_path(i) {
            let _ = writeln!(y, "      path: \"{p}\"");
        }
        let approval = "    then: approve\n    approval: {approvers: [group:sre], quorum: 1}\n";
        if i % 50 == 49 {
            y.push_str("      method: DELETE\n      headers: {x-break-glass: \"re:(?i)^yes$\"}\n    then: deny\n");
            continue;
        }
        match i % 5 {
            0 => {
                y.push_str("      method: [DELETE, POST]\n");
                y.push_str(approval);
            }
            1 => y.push_str(
                "      method: DELETE\n      headers: {x-environment: prod}\n    then: deny\n",
            ),
            2 => {
                y.push_str("      method: POST\n      json: {/spec/tier: prod}\n");
                y.push_str(approval);
            }
            3 => y.push_str(
                "      method: [PUT, PATCH]\n      query: {force: \"true\"}\n    then: deny\n",
            ),
            _ => {
                y.push_str(
                    "      method: PATCH\n      headers: {x-scope: \"re:^(admin|root)$\"}\n",
                );
                y.push_str(approval);
            }
        }
    }
    y
}

/// The path condition of generated rule `i`, as written in YAML (`None`: no path).
fn rule_path(i: usize) -> Option<String> {
    if i % 50 == 49 {
        return None;
    }
    Some(match i % 5 {
        0 => format!("/v1/svc{i}/items/*/actions/**"),
        1 => format!("/v1/svc{i}/**"),
        2 => format!("re:^/v1/svc{i}/jobs/[0-9]+$"),
        3 => format!("/v1/svc{i}/users/*"),
        _ => format!("/v1/svc{i}/config/*/keys/*"),
    })
}

struct Fixture {
    _dir: tempfile::TempDir,
    cfg: Config,
    files: Vec<PathBuf>,
}

fn fixture(n: usize) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg_path = dir.path().join("airlock.yaml");
    std::fs::write(&cfg_path, CONFIG).expect("write config");
    let cfg = Config::parse(&Source {
        file: cfg_path,
        text: CONFIG.to_string(),
    })
    .unwrap_or_else(|d| panic!("bench config does not parse:\n{d}"));
    let rules_path = dir.path().join("rules.yaml");
    std::fs::write(&rules_path, rules_yaml(n)).expect("write rules");
    Fixture {
        _dir: dir,
        cfg,
        files: vec![rules_path],
    }
}

fn load(f: &Fixture) -> RuleSet {
    load_files(&f.cfg, &f.files)
        .unwrap_or_else(|d| panic!("generated rules do not load:\n{d}"))
        .set
}

/// The decision exactly as `proxy::handle` takes it: head, then body only if needed.
fn decide(rules: &RuleSet, view: &RequestView<'_>, body: &[u8]) -> Decision {
    let head = rules.head(view);
    let encoding = view
        .headers
        .get(http::header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok());
    if rules.needs_body(&head) {
        rules.finish(head, Body::Bytes(body), encoding)
    } else {
        rules.finish(head, Body::NotRead, encoding)
    }
}

fn headers(extra: &[(&'static str, &'static str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in [
        ("host", "127.0.0.1:8080"),
        ("user-agent", "agent-sdk/1.4 python/3.12"),
        ("accept", "application/json"),
        ("content-type", "application/json"),
        ("x-environment", "staging"),
        (
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ),
    ]
    .into_iter()
    .chain(extra.iter().copied())
    {
        h.insert(k, HeaderValue::from_static(v));
    }
    h
}

struct Case {
    name: &'static str,
    method: &'static str,
    path: String,
    query: Option<&'static str>,
    headers: HeaderMap,
    body: &'static [u8],
    /// Expected verdict, checked once before measuring.
    expect: &'static str,
}

/// Requests for a set of `n` rules: one matching nothing, one matching an approve glob
/// rule (no body needed), one matching a JSON-body approve rule (body parsed).
impl Case {
    /// The request as the proxy sees it by default (upstream paths case-insensitive).
    fn view(&self) -> RequestView<'_> {
        RequestView {
            path_case_sensitive: false,
            has_body: !self.body.is_empty(),
            ..RequestView::plain(
                "cloud",
                self.method,
                &self.path,
                self.query,
                &self.headers,
                "deploy-bot",
            )
        }
    }
}

fn cases(n: usize) -> Vec<Case> {
    // A rule index of each kind in the middle of the set.
    let mid = |kind: usize| (n / 2) / 5 * 5 + kind;
    vec![
        Case {
            name: "miss",
            method: "GET",
            path: "/v2/projects/p1/instances/vm-7".into(),
            query: Some("view=full&page=2"),
            headers: headers(&[]),
            body: b"",
            expect: "allow",
        },
        Case {
            name: "hit",
            method: "DELETE",
            path: format!("/v1/svc{}/items/abc/actions/run", mid(0)),
            query: None,
            headers: headers(&[]),
            body: b"",
            expect: "approve",
        },
        Case {
            name: "hit_json_body",
            method: "POST",
            path: format!("/v1/svc{}/jobs/42", mid(2)),
            query: None,
            headers: headers(&[]),
            body: br#"{"spec":{"tier":"prod","name":"nightly-etl","replicas":3},"labels":{"team":"data"}}"#,
            expect: "approve",
        },
    ]
}

fn bench_rules(c: &mut Criterion) {
    let mut g = c.benchmark_group("rules_eval");
    for &n in &SIZES {
        let f = fixture(n);
        let rules = load(&f);
        assert_eq!(rules.rules.len(), n);
        for case in cases(n) {
            let view = case.view();
            let d = decide(&rules, &view, case.body);
            assert_eq!(
                d.verdict.as_str(),
                case.expect,
                "{} with {n} rules: matched {:?}",
                case.name,
                rules.names(&d.matched)
            );
            g.bench_with_input(BenchmarkId::new(case.name, n), &n, |b, _| {
                b.iter(|| decide(black_box(&rules), black_box(&view), black_box(case.body)))
            });
        }
    }
    g.finish();
}

/// The part of `rules_eval` spent in the path `RegexSet` alone: the same patterns the
/// loader builds (globs through `airlock::rules::glob_to_regex`), matched on the same
/// paths. The rest of `rules_eval` is the per-rule loop and the decision.
fn bench_path_set(c: &mut Criterion) {
    let mut g = c.benchmark_group("path_regexset");
    for &n in &SIZES {
        let sources: Vec<String> = (0..n)
            .filter_map(rule_path)
            .map(|p| match p.strip_prefix("re:") {
                Some(re) => re.to_string(),
                None => glob_to_regex(&p),
            })
            .collect();
        let set = RegexSet::new(&sources).expect("regex set");
        for case in cases(n).into_iter().take(2) {
            assert_eq!(set.is_match(&case.path), case.name != "miss");
            g.bench_with_input(BenchmarkId::new(case.name, n), &case.path, |b, p| {
                b.iter(|| set.matches(black_box(p)).iter().count())
            });
        }
    }
    g.finish();
}

/// A JSON body of about `size` bytes that the `r2`-kind rule of a 100-rule set matches
/// (`/spec/tier: prod`), padded with an array of small objects (mixed-case keys).
fn big_json(size: usize) -> Vec<u8> {
    let mut b = String::from(r#"{"spec":{"tier":"prod","name":"bulk-import"},"items":["#);
    let mut i = 0;
    while b.len() + 80 < size {
        if i > 0 {
            b.push(',');
        }
        let _ = write!(
            b,
            r#"{{"id":{i},"Name":"item-{i}","zone":"eu-west-1b","labels":{{"team":"data","Tier":"gold"}}}}"#
        );
        i += 1;
    }
    b.push_str("]}");
    b.into_bytes()
}

/// Body inspection cost: a matching JSON-body rule forces the proxy to parse the whole
/// body (up to `limits.inspect_body`, 1 MiB by default) strictly. 100 rules.
fn bench_body(c: &mut Criterion) {
    let mut g = c.benchmark_group("body_inspect");
    g.sampling_mode(SamplingMode::Flat).sample_size(20);
    let n = 100;
    let f = fixture(n);
    let rules = load(&f);
    let case = cases(n)
        .into_iter()
        .find(|c| c.name == "hit_json_body")
        .expect("case");
    let view = case.view();
    for (label, size) in [("4KiB", 4 << 10), ("64KiB", 64 << 10), ("1MiB", 1 << 20)] {
        let body = big_json(size);
        let d = decide(&rules, &view, &body);
        assert_eq!(
            d.verdict.as_str(),
            "approve",
            "{label}: {:?}",
            d.fail_closed
        );
        assert!(d.fail_closed.is_none(), "{label}: {:?}", d.fail_closed);
        g.throughput(criterion::Throughput::Bytes(body.len() as u64));
        g.bench_with_input(BenchmarkId::from_parameter(label), &body, |b, body| {
            b.iter(|| decide(black_box(&rules), black_box(&view), black_box(body)))
        });
        if size == 64 << 10 {
            // Baseline: plain serde_json into a Value, no duplicate-key checks.
            g.bench_with_input(
                BenchmarkId::new("serde_json_value_baseline", label),
                &body,
                |b, body| {
                    b.iter(|| serde_json::from_slice::<serde_json::Value>(black_box(body)).is_ok())
                },
            );
        }
    }
    g.finish();
}

fn bench_load(c: &mut Criterion) {
    // Compiling a rule set (what a reload costs): seconds-scale work per iteration at
    // 1000 rules, so flat sampling with few samples.
    let mut g = c.benchmark_group("rules_load");
    g.sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(3));
    for &n in &[100usize, 1000] {
        let f = fixture(n);
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| load(black_box(&f)))
        });
    }
    g.finish();
}

fn bench_normalize(c: &mut Criterion) {
    let mut g = c.benchmark_group("normalize_path");
    let cases: [(&str, &str); 3] = [
        // Fast path: already canonical.
        ("plain", "/v1/projects/p1/instances/vm-7/disks/0"),
        // Slow path: encoded unreserved chars, lowercase hex, `.`/`..`, `//`, UTF-8.
        (
            "encoded",
            "/v1/projects/p%31/./instances//%76m-7/caf%c3%a9/%7Euser/../disks/%30",
        ),
        // A long canonical path (fast path, 16 segments).
        (
            "plain_long",
            "/api/v2/organizations/acme-corp/projects/prod-eu-west-1/clusters/c-42/namespaces/payments/deployments/ledger-writer/replicas/3/status",
        ),
    ];
    for (name, p) in cases {
        assert!(normalize_path(p).is_ok(), "{name}: {p}");
        g.bench_with_input(BenchmarkId::from_parameter(name), p, |b, p| {
            b.iter(|| normalize_path(black_box(p)))
        });
    }
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_millis(1000))
        .sample_size(50)
        .without_plots()
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_rules, bench_path_set, bench_body, bench_normalize, bench_load
}
criterion_main!(benches);
