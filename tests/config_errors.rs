//! Mistakes in `airlock.yaml` and rule files are caught before anything runs, and
//! reported as `file:line:col: message` pointing at the offending line.

mod common;
use common::*;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// 1-based number of the first line containing `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("{needle:?} not in the text"))
        + 1
}

fn check(cfg: &Path) -> (i32, String, String) {
    run_cli(&["rules", "check", "-c", cfg.to_str().unwrap()], &[])
}

const BASE: &str = "listen: 127.0.0.1:0\nstore: sqlite://airlock.db\nrules: rules/\nupstreams:\n  - name: api\n    prefix: /api\n    url: http://127.0.0.1:9\n";

/// A workspace whose config is BASE + `extra`, with `rules` as rules/r.yaml.
fn workspace(extra: &str, rules: &str) -> (Workspace, String) {
    let ws = Workspace::new();
    let text = format!("{BASE}{extra}");
    ws.write("airlock.yaml", &text);
    ws.write("rules/r.yaml", rules);
    (ws, text)
}

#[test]
fn a_valid_config_checks_clean() {
    let (ws, _) = workspace(
        "",
        "rules:\n  - name: r\n    when: {path: /a}\n    then: deny\n",
    );
    let (code, out, err) = check(&ws.config());
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("ok: 1 rule(s)"), "{out}");
}

#[test]
fn an_unknown_top_level_key_is_located() {
    let (ws, text) = workspace("lisen: 127.0.0.1:8080\n", "rules: []\n");
    let (code, _, err) = check(&ws.config());
    assert_eq!(code, 1, "{err}");
    let at = format!("airlock.yaml:{}:1:", line_of(&text, "lisen:"));
    assert!(err.contains(&at), "expected {at} in:\n{err}");
    assert!(err.contains("lisen"), "{err}");
}

#[test]
fn an_unknown_nested_key_is_located() {
    let (ws, text) = workspace("    timeot: 5s\n", "rules: []\n");
    let (code, _, err) = check(&ws.config());
    assert_eq!(code, 1, "{err}");
    let at = format!("airlock.yaml:{}:5:", line_of(&text, "timeot:"));
    assert!(err.contains(&at), "expected {at} in:\n{err}");
    assert!(err.contains("timeot"), "{err}");
}

#[test]
fn an_unknown_key_in_a_rule_file_is_located() {
    let rules = "rules:\n  - name: fine\n    when: {path: /a}\n    then: deny\n  - name: typo\n    whn: {path: /b}\n    then: deny\n";
    let (ws, _) = workspace("", rules);
    let (code, _, err) = check(&ws.config());
    assert_eq!(code, 1, "{err}");
    let at = format!("r.yaml:{}:", line_of(rules, "whn:"));
    assert!(err.contains(&at), "expected {at} in:\n{err}");
    assert!(err.contains("whn"), "{err}");
}

#[test]
fn bad_regexes_name_their_rule_and_line() {
    let rules = r#"rules:
  - name: fine
    when: {path: /a}
    then: deny
  - name: broken-path
    when:
      method: POST
      path: "re:^/v1/(unclosed$"
    then: deny
  - name: broken-header
    when:
      headers: {x-env: "re:[prod"}
    then: deny
"#;
    let (ws, _) = workspace("", rules);
    let (code, _, err) = check(&ws.config());
    assert_eq!(code, 1, "{err}");
    // Every error is reported, each at its own line.
    for (rule, needle) in [("broken-path", "(unclosed"), ("broken-header", "[prod")] {
        let at = format!("r.yaml:{}:", line_of(rules, needle));
        let line = err
            .lines()
            .find(|l| l.contains(rule))
            .unwrap_or_else(|| panic!("rule {rule} not named in:\n{err}"));
        assert!(line.contains(&at), "expected {at} in {line:?}");
        assert!(line.contains("regex"), "{line}");
    }
}

#[test]
fn bad_durations_are_located() {
    let (ws, text) = workspace("    timeout: 5 parsecs\n", "rules: []\n");
    let (code, _, err) = check(&ws.config());
    assert_eq!(code, 1, "{err}");
    let at = format!("airlock.yaml:{}:", line_of(&text, "parsecs"));
    assert!(
        err.contains(&at) && err.contains("timeout"),
        "expected {at} in:\n{err}"
    );

    let rules = "rules:\n  - name: slow-approval\n    when: {path: /b}\n    then: approve\n    approval: {approvers: [group:sre], timeout: 15 fortnights}\n";
    let ws = Workspace::new();
    ws.standard_config("http://127.0.0.1:9", "");
    ws.write("rules/r.yaml", rules);
    let (code, _, err) = check(&ws.config());
    assert_eq!(code, 1, "{err}");
    let at = format!("r.yaml:{}:", line_of(rules, "fortnights"));
    let line = err
        .lines()
        .find(|l| l.contains("fortnights"))
        .unwrap_or_else(|| panic!("{err}"));
    assert!(line.contains(&at), "expected {at} in {line:?}");
    assert!(line.contains("slow-approval"), "{line}");
}

#[test]
fn yaml_syntax_errors_give_the_line() {
    for rules in [
        "rules:\n  - name: fine\n    when: {path: /a}\n    then: deny\n  - name: bad\n    when: {path: [/b, /c}\n    then: deny\n",
        "rules:\n  - name: fine\n    when: {path: /a}\n      then: deny\n",
    ] {
        let (ws, _) = workspace("", rules);
        let (code, _, err) = check(&ws.config());
        assert_eq!(code, 1, "{err}");
        let bad = if rules.contains("[/b") {
            line_of(rules, "[/b")
        } else {
            line_of(rules, "      then:")
        };
        let at = format!("r.yaml:{bad}:");
        assert!(err.contains(&at), "expected {at} in:\n{err}");
    }
}

#[test]
fn an_invalid_agent_key_digest_is_located() {
    let (ws, text) = workspace(
        "agents:\n  - id: bot\n    key: sha256:ABCDEF\n",
        "rules: []\n",
    );
    let (code, _, err) = check(&ws.config());
    assert_eq!(code, 1, "{err}");
    let at = format!("airlock.yaml:{}:", line_of(&text, "sha256:ABCDEF"));
    assert!(
        err.contains(&at) && err.contains("agent bot"),
        "expected {at} in:\n{err}"
    );
}

#[test]
fn an_unset_variable_stops_check_and_serve() {
    const VAR: &str = "AIRLOCK_TEST_DEFINITELY_UNSET_VAR";
    assert!(std::env::var(VAR).is_err());
    let (ws, text) = workspace(
        &format!("    inject:\n      authorization: \"Bearer ${{{VAR}}}\"\n"),
        "rules: []\n",
    );
    let (code, _, err) = check(&ws.config());
    assert_eq!(code, 1, "{err}");
    let at = format!("airlock.yaml:{}:", line_of(&text, VAR));
    assert!(
        err.contains(&at) && err.contains(VAR),
        "expected {at} and {VAR} in:\n{err}"
    );

    // `serve` refuses to start (it must not run with an empty credential).
    let mut child = Command::new(airlock_bin())
        .args(["serve", "-c"])
        .arg(ws.config())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("airlock serve kept running with {VAR} unset");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!status.success(), "serve exited 0");
    assert!(!stdout.contains("listening"), "{stdout}");
    assert!(
        stderr.contains(VAR),
        "the error does not name {VAR}:\n{stderr}"
    );

    // Set, the same config is fine.
    let (code, _, err) = run_cli(
        &["rules", "check", "-c", ws.config().to_str().unwrap()],
        &[(VAR, "value")],
    );
    assert_eq!(code, 0, "{err}");
}

/// A chat or webhook channel missing what it needs, with an unknown key, a bad URL or
/// an unset `${VAR}` is refused at its line, never a channel that silently does
/// nothing.
#[test]
fn channel_mistakes_are_located() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "channels:\n  slack: {bot_token: xoxb-1, channel: C1}\n",
            "slack:",
            "signing_secret",
        ),
        (
            "channels:\n  slack:\n    bot_token: xoxb-1\n    signing_secret: s\n    channel: C1\n    api_base: slack.com/api\n",
            "api_base:",
            "not an http(s) URL",
        ),
        (
            "channels:\n  slack:\n    bot_token: \"${AIRLOCK_TEST_UNSET_SLACK_TOKEN}\"\n    signing_secret: s\n    channel: C1\n",
            "bot_token:",
            "AIRLOCK_TEST_UNSET_SLACK_TOKEN is not set",
        ),
        (
            "channels:\n  teams:\n    app_id: 00000000-0000-0000-0000-000000000001\n",
            "teams:",
            "app_password",
        ),
        (
            "channels:\n  webhook: {url: https://hooks.example/a, secret: s, retries: 3}\n",
            "retries",
            "unknown field",
        ),
        (
            "channels:\n  webhook:\n    url: https://hooks.example/a\n    secret: s\n    timeout: soon\n",
            "timeout:",
            "timeout",
        ),
    ];
    for (extra, at, says) in cases {
        let (ws, text) = workspace(extra, "rules: []\n");
        let (code, _, err) = check(&ws.config());
        assert_eq!(code, 1, "{extra}: {err}");
        let line = format!("airlock.yaml:{}:", line_of(&text, at));
        assert!(err.contains(&line), "{extra}: expected {line} in:\n{err}");
        assert!(err.contains(says), "{extra}: expected {says:?} in:\n{err}");
    }
    let (ws, _) = workspace(
        "channels:\n  teams: {webhook_url: https://example.webhook.office.com/x}\n  webhook: {url: http://127.0.0.1:9/hook, secret: s}\n",
        "rules: []\n",
    );
    let (code, _, err) = check(&ws.config());
    assert_eq!(code, 0, "a complete channels section checks clean: {err}");
}

#[test]
fn identity_mistakes_are_located() {
    // Each case: (config lines, the text the error must point at, what it must say).
    let jwt = |extra: &str| {
        format!("agents:\n  - id: etl\n    jwt:\n      issuer: https://idp.example\n      audience: airlock\n      jwks: keys.json\n{extra}")
    };
    let cases: Vec<(String, &str, &str)> = vec![
        (jwt("      algorithms: [none]\n"), "[none]", "\"none\" is never accepted"),
        (jwt("      algorithms: [HS256]\n"), "[HS256]", "HS256 is refused"),
        (jwt("      algorithms: [RS999]\n"), "[RS999]", "unknown algorithm"),
        (jwt("      match: \"re:^(ci-\"\n"), "match:", "invalid regex"),
        (jwt("      leeway: 1h\n"), "leeway:", "at most 5m"),
        (jwt("      colour: blue\n"), "colour", "unknown field"),
        (
            "agents:\n  - id: etl\n    jwt: {issuer: https://idp.example, audience: airlock, jwks: \"http://idp.example/keys\"}\n".into(),
            "http://idp.example/keys",
            "https://",
        ),
        (
            "agents:\n  - id: etl\n    jwt: {issuer: https://idp.example, audience: airlock, jwks: missing.json}\n".into(),
            "missing.json",
            "does not exist",
        ),
        (
            "agents:\n  - id: reporter\n    mtls: {subject: \"CN=reporter\"}\n".into(),
            "mtls:",
            "tls.client_ca",
        ),
        (
            "tls: {cert: keys.json, key: keys.json, client_ca: keys.json}\nagents:\n  - id: reporter\n    mtls: {}\n".into(),
            "mtls:",
            "name the certificate's subject",
        ),
        (
            "agents:\n  - id: both\n    key: sha256:0000000000000000000000000000000000000000000000000000000000000000\n    jwt: {issuer: https://idp.example, audience: airlock, jwks: keys.json}\n".into(),
            "id: both",
            "one of key, jwt or mtls",
        ),
        (
            "tls: {cert: nope.pem, key: keys.json}\n".into(),
            "nope.pem",
            "tls.cert: file",
        ),
        (
            "admin:\n  listen: 127.0.0.1:0\n  tls: {cert: keys.json, key: keys.json, client_ca: keys.json}\n".into(),
            "client_ca:",
            "only read on the agent listener",
        ),
        (
            "admin:\n  listen: 127.0.0.1:0\n  oidc: {issuer: https://idp.example, audience: [], jwks: keys.json}\n".into(),
            "audience:",
            "at least one",
        ),
        (
            // continues BASE's upstreams list
            "  - name: internal\n    prefix: /internal\n    url: https://internal.example\n    client_cert: keys.json\n".into(),
            "client_cert:",
            "client_cert and client_key go together",
        ),
    ];
    for (extra, at, says) in &cases {
        let (ws, text) = workspace(extra, "rules: []\n");
        ws.write("keys.json", "{\"keys\": []}");
        let (code, _, err) = check(&ws.config());
        assert_eq!(code, 1, "{extra}: {err}");
        let line = format!("airlock.yaml:{}:", line_of(&text, at));
        assert!(err.contains(&line), "{extra}: expected {line} in:\n{err}");
        assert!(err.contains(says), "{extra}: expected {says:?} in:\n{err}");
    }
    // The same sections, written right, check clean.
    let (ws, _) = workspace(
        &format!(
            "{}agents:\n  - id: etl\n    jwt: {{issuer: https://idp.example, audience: [airlock, api], jwks: keys.json, algorithms: [RS256, ES256], acting_for: on_behalf_of}}\n  - id: ci\n    jwt: {{issuer: https://idp.example, audience: airlock, jwks: \"http://127.0.0.1:9/keys\", match: \"re:^ci-\"}}\n  - id: reporter\n    mtls: {{uri: \"spiffe://example.org/reporter\"}}\nadmin:\n  listen: 127.0.0.1:0\n  oidc: {{issuer: https://idp.example, audience: console, jwks: keys.json, groups_claim: roles}}\n",
            "tls: {cert: keys.json, key: keys.json, client_ca: keys.json}\n"
        ),
        "rules: []\n",
    );
    ws.write("keys.json", "{\"keys\": []}");
    let (code, _, err) = check(&ws.config());
    assert_eq!(
        code, 0,
        "identity sections written right check clean: {err}"
    );
}
