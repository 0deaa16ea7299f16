//! `airlock rules check` warns a platform team about what loads fine but will not do
//! what they meant: two upstreams on the same route, a rule that denies or holds every
//! request, a method no server knows, and an agent owner whose email differs from a
//! reviewer's only in case (self-approval compares them exactly). Each warning names
//! the file, line and column to fix; a clean config has none, and warnings alone do not
//! fail the check.

mod common;
use common::*;

/// Upstreams `api` (/api) and `cloud` (/cloud), the two agents, reviewers bob and
/// alice (sre). `upstreams` and `agents` replace those blocks when given.
fn config(upstreams: Option<&str>, agents: Option<&str>) -> String {
    let upstreams = upstreams.unwrap_or(
        "  - name: api\n    prefix: /api\n    url: http://127.0.0.1:9\n  - name: cloud\n    prefix: /cloud\n    url: http://127.0.0.1:9\n",
    );
    let default_agents = format!(
        "  - id: deploy-bot\n    key: {}\n    owner: alice@example.com\n  - id: etl-agent\n    key: {}\n",
        digest(AGENT_KEY),
        digest(OTHER_AGENT_KEY)
    );
    let agents = agents.map(str::to_string).unwrap_or(default_agents);
    format!(
        "listen: 127.0.0.1:0\nstore: sqlite://airlock.db\nrules: rules/\nupstreams:\n{upstreams}agents:\n{agents}reviewers:\n  - id: bob@example.com\n    groups: [sre]\n    token: {}\n  - id: alice@example.com\n    groups: [sre]\n    token: {}\n",
        digest(BOB),
        digest(ALICE)
    )
}

/// A rule set with no problem: every rule has conditions, known methods and a test.
const CLEAN_RULES: &str = r#"rules:
  - name: no-project-delete
    when: {upstream: api, method: [DELETE, delete, PROPFIND, "re:^PURGE$"], path: /v1/projects/*}
    then: deny
    tests:
      - request: {method: DELETE, url: /api/v1/projects/p1, agent: deploy-bot}
        expect: deny
  - name: prod-changes
    when: {upstream: cloud, method: [POST, PUT, PATCH]}
    then: approve
    approval: {approvers: [group:sre], require_reason: true}
    tests:
      - request: {method: POST, url: /cloud/v1/things, agent: deploy-bot}
        expect: approve
  - name: everything-else
    then: allow
    tests:
      - request: {method: GET, url: /api/v1/projects, agent: deploy-bot}
        expect: allow
"#;

/// Runs `airlock rules check` on a workspace: (exit code, stdout, warning lines).
fn check(ws: &Workspace) -> (i32, String, Vec<String>) {
    let cfg = ws.config();
    let (code, out, err) = run_cli(&["rules", "check", "-c", cfg.to_str().unwrap()], &[]);
    let warnings = err
        .lines()
        .filter(|l| l.contains(": warning: "))
        .map(str::to_string)
        .collect();
    (code, out, warnings)
}

/// `file:line:col` of the `n`-th (0-based) occurrence of `needle` in `text`, which
/// the workspace holds at `name`.
fn at(ws: &Workspace, name: &str, text: &str, needle: &str, n: usize) -> String {
    let offset = text
        .match_indices(needle)
        .nth(n)
        .unwrap_or_else(|| panic!("{needle:?} occurs fewer than {} times in:\n{text}", n + 1))
        .0;
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let col = offset - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    format!("{}:{line}:{col}: warning: ", ws.path().join(name).display())
}

/// Asserts that `warnings` are exactly one per `(location, words)` pair, in order.
fn assert_warnings(warnings: &[String], expected: &[(String, &[&str])]) {
    let shown = warnings.join("\n");
    assert_eq!(
        warnings.len(),
        expected.len(),
        "expected {} warning(s), got:\n{shown}",
        expected.len()
    );
    for (w, (location, words)) in warnings.iter().zip(expected) {
        assert!(
            w.starts_with(location.as_str()),
            "expected a warning at {location}, got:\n{shown}"
        );
        for word in *words {
            assert!(w.contains(word), "expected {word:?} in:\n{w}");
        }
    }
}

fn workspace(config_text: &str, rules: &str) -> Workspace {
    let ws = Workspace::new();
    ws.write("airlock.yaml", config_text);
    ws.write("rules/rules.yaml", rules);
    ws
}

#[test]
fn a_clean_config_has_no_warnings() {
    let ws = workspace(&config(None, None), CLEAN_RULES);
    let (code, out, warnings) = check(&ws);
    assert_eq!(code, 0, "{out}");
    assert!(
        warnings.is_empty(),
        "unexpected warnings:\n{}",
        warnings.join("\n")
    );
    assert!(
        out.starts_with("ok: 3 rule(s) in 1 file(s), 2 upstream(s), 3 test case(s)"),
        "{out}"
    );
}

#[test]
fn two_upstreams_on_the_same_route_are_reported_at_the_second() {
    let upstreams = "  - name: api\n    prefix: /api\n    url: http://127.0.0.1:9\n  - name: cloud\n    prefix: /cloud\n    url: http://127.0.0.1:9\n  - name: api-v2\n    prefix: /api\n    url: http://127.0.0.1:9\n  - name: cloud-upper\n    prefix: /Cloud\n    url: http://127.0.0.1:9\n  - name: github\n    host: api.github.com\n    url: http://127.0.0.1:9\n  - name: github-again\n    host: API.GitHub.com.\n    url: http://127.0.0.1:9\n";
    let text = config(Some(upstreams), None);
    let ws = workspace(&text, CLEAN_RULES);
    let (code, out, warnings) = check(&ws);
    assert_eq!(code, 0, "warnings alone do not fail the check: {out}");
    assert_warnings(
        &warnings,
        &[
            (
                at(&ws, "airlock.yaml", &text, "/api", 1),
                &[
                    "upstream api-v2 has the same prefix \"/api\" as upstream api",
                    "api-v2 can never be reached",
                ],
            ),
            (
                at(&ws, "airlock.yaml", &text, "/Cloud", 0),
                &[
                    "upstream cloud-upper",
                    "differs from upstream cloud's \"/cloud\" only in case",
                ],
            ),
            // The config keeps hosts in lowercase; the warning points at the key.
            (
                at(&ws, "airlock.yaml", &text, "host:", 1),
                &[
                    "upstream github-again has the same host \"api.github.com\" as upstream github",
                    "can never be reached",
                ],
            ),
        ],
    );
}

#[test]
fn a_rule_without_conditions_that_denies_or_holds_everything_is_reported() {
    let rules = r#"rules:
  - name: lockdown
    then: deny
    tests:
      - request: {method: GET, url: /api/x}
        expect: deny
  - name: hold-all
    when: {}
    then: approve
    approval: {approvers: [group:sre]}
    tests:
      - request: {method: GET, url: /api/x}
        expect: deny
  - name: hold-all-again
    when:
    then: approve
    approval: {approvers: [bob@example.com]}
    tests:
      - request: {method: GET, url: /api/x}
        expect: deny
  - name: open-by-default
    then: allow
    tests:
      - request: {method: GET, url: /api/x}
        expect: deny
"#;
    let ws = workspace(&config(None, None), rules);
    let (code, out, warnings) = check(&ws);
    assert_eq!(code, 0, "{out}");
    // Rules with the same (no) conditions also shadow each other; those warnings
    // come first for each rule.
    let everything: Vec<String> = warnings
        .iter()
        .filter(|w| w.contains("no `when` conditions"))
        .cloned()
        .collect();
    assert_warnings(
        &everything,
        &[
            (
                at(&ws, "rules/rules.yaml", rules, "name: lockdown", 0),
                &["rule lockdown", "it denies every request"],
            ),
            (
                at(&ws, "rules/rules.yaml", rules, "name: hold-all", 0),
                &["rule hold-all ", "it holds every request for approval"],
            ),
            (
                at(&ws, "rules/rules.yaml", rules, "name: hold-all-again", 0),
                &["rule hold-all-again ", "holds every request"],
            ),
        ],
    );
}

#[test]
fn unknown_http_methods_are_reported_where_they_are_written() {
    let rules = r#"rules:
  - name: odd-methods
    when: {method: [DELETE, FETCH, purge, mkcol, "re:^BREW$"], path: /v1/**}
    then: deny
    tests:
      - request: {method: DELETE, url: /api/v1/x}
        expect: deny
  - name: typo
    when:
      method: DELEET
    then: deny
    tests:
      - request: {method: DELETE, url: /api/v1/x}
        expect: allow
"#;
    let ws = workspace(&config(None, None), rules);
    let (code, out, warnings) = check(&ws);
    assert_eq!(code, 0, "{out}");
    assert_warnings(
        &warnings,
        &[
            (
                at(&ws, "rules/rules.yaml", rules, "FETCH", 0),
                &["rule odd-methods: method \"FETCH\" is not a known HTTP method"],
            ),
            (
                at(&ws, "rules/rules.yaml", rules, "purge", 0),
                &["method \"purge\" is not a known HTTP method"],
            ),
            (
                at(&ws, "rules/rules.yaml", rules, "DELEET", 0),
                &["rule typo: method \"DELEET\"", "PROPFIND"],
            ),
        ],
    );
}

#[test]
fn an_owner_and_a_reviewer_differing_only_in_case_are_reported_loudly() {
    let agents = format!(
        "  - id: deploy-bot\n    key: {}\n    owner: Alice@Example.com\n  - id: etl-agent\n    key: {}\n    owner: bob@example.com\n",
        digest(AGENT_KEY),
        digest(OTHER_AGENT_KEY)
    );
    let text = config(None, Some(&agents));
    let ws = workspace(&text, CLEAN_RULES);
    let (code, out, warnings) = check(&ws);
    assert_eq!(code, 0, "{out}");
    assert_warnings(
        &warnings,
        &[(
            at(&ws, "airlock.yaml", &text, "Alice@Example.com", 0),
            &[
                "agent deploy-bot's owner \"Alice@Example.com\" and reviewer \"alice@example.com\" differ only in case",
                "they are the same person",
                "can never approve deploy-bot's requests",
            ],
        )],
    );
}
