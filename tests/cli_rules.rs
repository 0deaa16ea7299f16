//! The rule tooling a platform team uses before rolling out: `airlock rules check`,
//! `rules test`, `rules explain`, and `airlock keys new`.

mod common;
use common::*;

use sha2::{Digest, Sha256};
use std::path::PathBuf;

/// The demo configuration shipped in the repository.
fn shipped_config() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("airlock.yaml")
}

fn shipped() -> String {
    shipped_config().to_str().unwrap().to_string()
}

/// Test cases written in the shipped rule files.
fn shipped_test_cases() -> usize {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("rules");
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .map(|p| {
            std::fs::read_to_string(p)
                .unwrap()
                .lines()
                .filter(|l| l.trim_start().starts_with("- request:"))
                .count()
        })
        .sum()
}

#[test]
fn the_shipped_rules_check_clean() {
    let (code, out, err) = run_cli(&["rules", "check", "-c", &shipped()], &[]);
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.starts_with("ok: "), "{out}");
}

#[test]
fn the_shipped_rule_tests_all_pass() {
    let n = shipped_test_cases();
    assert!(n > 10, "only {n} test cases found in rules/");
    let (code, out, err) = run_cli(&["rules", "test", "-c", &shipped()], &[]);
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert!(
        out.lines().any(|l| l == format!("{n} passed, 0 failed")),
        "expected \"{n} passed, 0 failed\" in:\n{out}"
    );
}

const RULES_WITH_TESTS: &str = r#"rules:
  - name: no-project-delete
    when: {method: DELETE, path: /v1/projects/*}
    then: deny
    tests:
      - request: {method: DELETE, url: /api/v1/projects/p1, agent: etl-agent}
        expect: deny
      - request: {method: DELETE, url: /api/v1/projects/p1, agent: deploy-bot}
        expect: allow
      - request: {method: GET, url: /api/v1/projects/p1, agent: etl-agent}
        expect: allow
"#;

#[test]
fn a_failing_rule_test_fails_the_run() {
    let ws = Workspace::new();
    ws.standard_config("http://127.0.0.1:9", "");
    ws.write("rules/r.yaml", RULES_WITH_TESTS);
    let cfg = ws.config();
    let (code, out, _) = run_cli(&["rules", "test", "-c", cfg.to_str().unwrap()], &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.lines().any(|l| l == "2 passed, 1 failed"), "{out}");
    let fail = out
        .lines()
        .find(|l| l.starts_with("FAIL"))
        .unwrap_or_else(|| panic!("no FAIL line in:\n{out}"));
    // The failure points at the case (second `request:` of the rule) and says why.
    let line = RULES_WITH_TESTS
        .lines()
        .position(|l| l.contains("agent: deploy-bot"))
        .unwrap()
        + 1;
    assert!(fail.contains(&format!("r.yaml:{line}:")), "{fail}");
    assert!(fail.contains("expected allow, got deny"), "{fail}");

    // Fixed, the same file passes.
    ws.write(
        "rules/r.yaml",
        &RULES_WITH_TESTS.replacen(
            "agent: deploy-bot}\n        expect: allow",
            "agent: deploy-bot}\n        expect: deny",
            1,
        ),
    );
    let (code, out, _) = run_cli(&["rules", "test", "-c", cfg.to_str().unwrap()], &[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.lines().any(|l| l == "3 passed, 0 failed"), "{out}");
}

#[test]
fn expected_rule_names_are_checked() {
    let ws = Workspace::new();
    ws.standard_config("http://127.0.0.1:9", "");
    ws.write(
        "rules/r.yaml",
        r#"rules:
  - name: a
    when: {path: /x/**}
    then: deny
    tests:
      - request: {method: GET, url: /api/x/1, agent: deploy-bot}
        expect: deny
        rules: [a, b]
  - name: b
    when: {path: /x/1}
    then: deny
    tests:
      - request: {method: GET, url: /api/x/2, agent: deploy-bot}
        expect: deny
        rules: [a, b]
"#,
    );
    let (code, out, _) = run_cli(&["rules", "test", "-c", ws.config().to_str().unwrap()], &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.lines().any(|l| l == "1 passed, 1 failed"), "{out}");
}

#[test]
fn explain_prints_the_verdict_and_the_matching_rules() {
    let explain = |args: &[&str]| {
        let cfg = shipped();
        let mut all = vec!["rules", "explain", "-c", cfg.as_str()];
        all.extend_from_slice(args);
        let (code, out, err) = run_cli(&all, &[]);
        // Exit 0 only when the proxy would let the request through.
        let allowed = out.lines().next() == Some("verdict: allow");
        assert_eq!(code, if allowed { 0 } else { 1 }, "{args:?}: {out}{err}");
        out
    };

    let out = explain(&["DELETE", "/cloud/v1/projects/p1", "--agent", "deploy-bot"]);
    assert!(out.lines().next() == Some("verdict: deny"), "{out}");
    assert!(out.contains("match  project-delete -> deny"), "{out}");
    assert!(!out.contains("match  prod-instance-delete"), "{out}");

    let out = explain(&[
        "POST",
        "/db/v1/query",
        "-H",
        "content-type: application/json",
        "-d",
        r#"{"sql":"DROP TABLE customers"}"#,
        "--agent",
        "deploy-bot",
    ]);
    assert!(out.lines().next() == Some("verdict: approve"), "{out}");
    assert!(out.contains("match  sql-destructive -> approve"), "{out}");
    assert!(out.contains("sql-grant: JSON /sql does not match"), "{out}");

    let out = explain(&[
        "GET",
        "/cloud/v1/projects/p1/instances/vm-7",
        "--agent",
        "deploy-bot",
    ]);
    assert!(out.lines().next() == Some("verdict: allow"), "{out}");
    assert!(out.contains("no rule matched"), "{out}");

    let out = explain(&[
        "DELETE",
        "/cloud/v1/projects/p1/instances%2Fvm-7",
        "--agent",
        "deploy-bot",
    ]);
    assert!(out.starts_with("verdict: bad_path"), "{out}");

    // The normalized path is what the rules see.
    let out = explain(&[
        "DELETE",
        "/cloud/v1/projects/./p1//instances/%76m-7",
        "--agent",
        "deploy-bot",
    ]);
    assert!(out.lines().next() == Some("verdict: approve"), "{out}");
    assert!(
        out.contains("path: /v1/projects/p1/instances/vm-7"),
        "{out}"
    );

    // A method override cannot talk a POST out of its rule.
    let out = explain(&[
        "POST",
        "/db/v1/query",
        "-H",
        "X-HTTP-Method: GET",
        "-d",
        r#"{"sql":"DROP TABLE customers"}"#,
        "--agent",
        "deploy-bot",
    ]);
    assert!(out.lines().next() == Some("verdict: approve"), "{out}");
    // … and explain shows the rule that holds it as matched, not as missed.
    assert!(out.contains("match  sql-destructive -> approve"), "{out}");
}

#[test]
fn new_keys_hash_to_the_printed_digest() {
    let mut seen = Vec::new();
    for kind in ["agent", "reviewer", "agent"] {
        let (code, out, err) = run_cli(&["keys", "new", kind], &[]);
        assert_eq!(code, 0, "{err}");
        let field = |name: &str| {
            out.lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_string())
                .unwrap_or_else(|| panic!("no {name} line in:\n{out}"))
        };
        let key = field("key:");
        let printed = field("digest:");
        assert!(key.len() >= 32, "key too short: {key:?}");
        assert_eq!(
            printed,
            format!("sha256:{}", hex::encode(Sha256::digest(key.as_bytes())))
        );
        assert!(!seen.contains(&key), "the same key twice");
        seen.push(key);
    }
}

#[test]
fn a_generated_key_works_as_an_agent_key() {
    let (_, out, _) = run_cli(&["keys", "new", "agent"], &[]);
    let key = out
        .lines()
        .find_map(|l| l.strip_prefix("key:"))
        .unwrap()
        .trim()
        .to_string();
    let printed = out
        .lines()
        .find_map(|l| l.strip_prefix("digest:"))
        .unwrap()
        .trim()
        .to_string();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let up = Upstream::start().await;
        let ws = Workspace::new();
        let cfg = ws.write(
            "airlock.yaml",
            &format!(
                "listen: 127.0.0.1:0\nstore: sqlite://airlock.db\nupstreams:\n  - name: api\n    prefix: /api\n    url: {}\nagents:\n  - id: fresh-bot\n    key: {printed}\n",
                up.url()
            ),
        );
        let a = Airlock::start(&cfg);
        let r = client().get(a.url("/api/x")).bearer_auth(&key).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let r = client().get(a.url("/api/x")).bearer_auth(printed.as_str()).send().await.unwrap();
        assert_eq!(r.status(), 401, "the digest itself must not work as a key");
        assert_eq!(up.count(), 1);
    });
}

#[test]
fn strict_check_fails_on_warnings() {
    let ws = Workspace::new();
    ws.standard_config("http://127.0.0.1:9", "");
    let cfg = ws.config();
    let check = |strict: bool| {
        let mut args = vec!["rules", "check", "-c", cfg.to_str().unwrap()];
        if strict {
            args.push("--strict");
        }
        run_cli(&args, &[])
    };

    // A rule without tests is a warning: reported, but only --strict fails on it.
    ws.write(
        "rules/r.yaml",
        "rules:\n  - name: untested\n    when: {path: /x/**}\n    then: deny\n",
    );
    let (code, out, err) = check(false);
    assert_eq!(code, 0, "{out}{err}");
    assert!(err.contains("warning: rule untested has no tests"), "{err}");
    assert!(
        out.starts_with("ok: ") && out.contains("1 warning(s)"),
        "{out}"
    );
    let (code, out, err) = check(true);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("warning: rule untested has no tests"), "{err}");
    assert!(out.contains("1 warning(s) (--strict)"), "{out}");

    // Without warnings, --strict passes.
    ws.write(
        "rules/r.yaml",
        RULES_WITH_TESTS
            .replacen(
                "agent: deploy-bot}\n        expect: allow",
                "agent: deploy-bot}\n        expect: deny",
                1,
            )
            .as_str(),
    );
    let (code, out, err) = check(true);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("ok: ") && !out.contains("warning"), "{out}");
    assert!(err.is_empty(), "{err}");
}
