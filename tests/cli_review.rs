//! A reviewer at a terminal: `airlock pending` shows what to decide on (the `show`
//! fields, the justification, who already voted and how long is left), `airlock show`
//! prints one approval in full, `approve` decides, and `reload` reports what the server
//! did. When something is wrong with the address or the token, the error says what
//! to fix.

mod common;
use common::*;

use bytes::Bytes;
use http_body_util::Full;
use hyper::Response;
use std::sync::Arc;

const RULES: &str = r#"rules:
  - name: thing-delete
    when:
      upstream: api
      method: DELETE
      path: /v1/things/*
    then: approve
    approval:
      approvers: [group:sre]
      quorum: 2
      timeout: 10m
      show: [/name]
    tests:
      - request: {method: DELETE, url: /api/v1/things/vm-7, agent: deploy-bot}
        expect: approve
"#;

/// Runs `airlock ARGS` against the admin API at `url` with `token` in the environment,
/// on a blocking thread so the held request keeps being served.
async fn reviewer_cli(url: &str, token: &str, args: &[&str]) -> (i32, String, String) {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let (url, token) = (url.to_string(), token.to_string());
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_cli(&args, &[("AIRLOCK_URL", &url), ("AIRLOCK_TOKEN", &token)])
    })
    .await
    .unwrap()
}

/// The value after `label` on the line of `show`'s output that starts with it.
fn field<'a>(out: &'a str, label: &str) -> &'a str {
    out.lines()
        .find_map(|l| {
            l.strip_prefix(label)
                .filter(|rest| rest.starts_with(' '))
                .map(str::trim)
        })
        .unwrap_or_else(|| panic!("no {label:?} line in:\n{out}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reviewer_sees_what_to_decide_on_and_who_voted() {
    let (_up, _ws, a) = setup_with_rules(RULES, "").await;
    let admin = a.admin_url("");
    let held = spawn_request(
        agent_request(&a, AGENT_KEY, "DELETE", "/api/v1/things/vm-7")
            .header("content-type", "application/json")
            .header("x-airlock-justification", "ticket OPS-9: retire vm-7")
            .body(r#"{"name":"vm-7","size":"xl"}"#),
    );
    let id = id_of(&wait_pending(&a, 1).await[0]);
    let (s, v) = vote(&a, BOB, &id, "approve", Some("change window open")).await;
    assert_eq!(s, 200, "{v}");

    // pending: the show fields, the justification, the vote so far, the time left.
    let (code, out, err) = reviewer_cli(&admin, CAROL, &["pending"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with(&format!("{id}  DELETE /v1/things/vm-7  (upstream api)")),
        "{out}"
    );
    assert!(out.contains("status: pending, expires in "), "{out}");
    // Who asks and how: the agent, how it authenticated.
    assert!(out.contains("agent: deploy-bot (key)"), "{out}");
    assert!(out.contains("rules: thing-delete"), "{out}");
    assert!(
        out.contains("justification: ticket OPS-9: retire vm-7"),
        "{out}"
    );
    assert!(out.contains(r#"show /name = "vm-7""#), "{out}");
    assert!(out.contains("votes (quorum 2):"), "{out}");
    assert!(
        out.contains(r#"bob@example.com approve "change window open""#),
        "{out}"
    );
    assert!(
        !out.contains("xl"),
        "only the show fields, never the body: {out}"
    );

    // show: the approval in full.
    let (_, api) = approval_get(&a, CAROL, &id).await;
    let (code, out, err) = reviewer_cli(&admin, CAROL, &["show", &id]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(field(&out, "approval"), id);
    assert!(
        field(&out, "status").starts_with("pending, expires in "),
        "{out}"
    );
    assert_eq!(field(&out, "agent"), "deploy-bot (key)");
    assert_eq!(field(&out, "owner"), "alice@example.com");
    assert_eq!(field(&out, "client"), "127.0.0.1");
    assert_eq!(api["auth"], "key");
    assert_eq!(api["client"], "127.0.0.1");
    assert!(api["acting_for"].is_null(), "{api}");
    assert_eq!(field(&out, "method"), "DELETE");
    assert_eq!(field(&out, "url"), "/v1/things/vm-7");
    assert_eq!(field(&out, "upstream"), "api");
    assert_eq!(field(&out, "rules"), "thing-delete");
    assert_eq!(field(&out, "approvers"), "group:sre");
    assert_eq!(field(&out, "quorum"), "2");
    let votes = field(&out, "votes");
    assert!(
        votes.starts_with("bob@example.com approve at ") && votes.ends_with(": change window open"),
        "{out}"
    );
    assert_eq!(field(&out, "show"), r#"/name = "vm-7""#);
    assert_eq!(field(&out, "justification"), "ticket OPS-9: retire vm-7");
    assert_eq!(field(&out, "digest"), api["digest"].as_str().unwrap());
    assert_eq!(field(&out, "created"), api["created"].as_str().unwrap());
    assert_eq!(field(&out, "expires"), api["expires"].as_str().unwrap());
    assert!(!out.contains("decided"), "not decided yet: {out}");

    let (code, out, err) = reviewer_cli(&admin, CAROL, &["show", &id, "--json"]).await;
    assert_eq!(code, 0, "{err}");
    let raw: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(raw["id"], id.as_str());
    assert_eq!(raw["digest"], api["digest"]);

    // Carol approves from the CLI; the decided approval carries no countdown.
    let (code, out, err) =
        reviewer_cli(&admin, CAROL, &["approve", &id, "--reason", "looks right"]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), format!("{id}: approve (status now approved)"));
    held.await.unwrap();

    let (code, out, err) = reviewer_cli(&admin, CAROL, &["show", &id]).await;
    assert_eq!(code, 0, "{err}");
    let status = field(&out, "status");
    assert!(
        status == "approved" || status == "consumed",
        "decided, without time left: {out}"
    );
    assert_eq!(field(&out, "decided_by"), "carol@example.com");
    assert!(!out.contains("expires in"), "{out}");

    let (code, out, err) = reviewer_cli(&admin, CAROL, &["pending"]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "no pending approvals");
    let (code, out, err) = reviewer_cli(&admin, CAROL, &["pending", "--status", "all"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with(&id), "{out}");
    assert!(out.contains(&format!("status: {status} ")), "{out}");
    assert!(!out.contains("expires in"), "{out}");

    // A vote on a decided approval is the server's refusal: exit 1, its words.
    let (code, _, err) = reviewer_cli(&admin, BOB, &["deny", &id]).await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("409"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_say_what_to_fix() {
    // Nothing listens: say what to check.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let (code, _, err) = reviewer_cli(&closed, BOB, &["pending"]).await;
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(&format!(
            "could not reach airlock at {closed}: is `airlock serve` running, and is AIRLOCK_URL its admin listener?"
        )),
        "{err}"
    );

    let (_up, _ws, a) = setup_with_rules(RULES, "").await;
    let admin = a.admin_url("");

    // A token airlock does not know.
    let (code, _, err) = reviewer_cli(&admin, "not-a-token", &["pending"]).await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("401"), "{err}");
    assert!(
        err.contains("set AIRLOCK_TOKEN to a reviewer token"),
        "{err}"
    );
    assert!(
        !err.contains("not-a-token"),
        "the token is never printed: {err}"
    );

    // An agent key is not a reviewer token.
    let (code, _, err) = reviewer_cli(&admin, AGENT_KEY, &["show", "x"]).await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("agent key"), "{err}");

    // The proxy listener is not the admin listener.
    let (code, _, err) = reviewer_cli(&a.url(""), BOB, &["pending"]).await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("is not airlock's admin listener"), "{err}");
    assert!(err.contains("set AIRLOCK_URL to `admin.listen`"), "{err}");

    // No token at all.
    let (code, _, err) = run_cli(&["pending", "--url", &admin], &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("set AIRLOCK_TOKEN"), "{err}");

    // An unknown approval id: the server's answer, exit 1.
    let (code, _, err) = reviewer_cli(&admin, BOB, &["show", "no-such-id"]).await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("404"), "{err}");
}

/// A stand-in admin API answering `POST /api/v1/reload` as the server does: 200 with
/// the rule count for token `good`, 422 with the reason for token `broken`, 401 for
/// any other token; and `GET /healthz` as the admin listener does.
async fn reload_stand_in() -> Upstream {
    Upstream::with_handler(Arc::new(|s: Seen| {
        let json = |status: u16, v: serde_json::Value| {
            Response::builder()
                .status(status)
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(v.to_string())))
                .unwrap()
        };
        let auth = s
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        match (s.method.as_str(), s.uri.as_str(), auth) {
            ("GET", "/healthz", _) => json(200, serde_json::json!({"status": "ok"})),
            ("POST", "/api/v1/reload", "Bearer good") => {
                json(200, serde_json::json!({"status": "reloaded", "rules": 3}))
            }
            ("POST", "/api/v1/reload", "Bearer broken") => json(
                422,
                serde_json::json!({"error": "reload_failed", "message": "rules/r.yaml:4:5: unknown field `whn`"}),
            ),
            _ => json(
                401,
                serde_json::json!({"error": "unauthenticated", "message": "unknown reviewer token"}),
            ),
        }
    }))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_reports_what_the_server_did() {
    let api = reload_stand_in().await;

    let (code, out, err) = reviewer_cli(&api.url(), "good", &["reload"]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "reloaded: 3 rule(s) in force");

    let (code, _, err) = reviewer_cli(&api.url(), "broken", &["reload"]).await;
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("previous configuration stays in force"),
        "{err}"
    );
    assert!(
        err.contains("rules/r.yaml:4:5: unknown field `whn`"),
        "{err}"
    );

    let (code, _, err) = reviewer_cli(&api.url(), "wrong", &["reload"]).await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("set AIRLOCK_TOKEN"), "{err}");
    let reloads = api
        .requests()
        .iter()
        .filter(|r| r.uri == "/api/v1/reload")
        .map(|r| r.method.clone())
        .collect::<Vec<_>>();
    assert_eq!(reloads, ["POST", "POST", "POST"]);
}

/// Every argument and option of every command has a description in `--help`.
#[test]
fn help_describes_every_argument_and_option() {
    let commands: &[&[&str]] = &[
        &["serve"],
        &["rules", "check"],
        &["rules", "test"],
        &["rules", "explain"],
        &["audit", "verify"],
        &["audit", "export"],
        &["pending"],
        &["show"],
        &["approve"],
        &["deny"],
        &["reload"],
        &["keys", "new"],
    ];
    for cmd in commands {
        let mut args = cmd.to_vec();
        args.push("-h");
        let (code, out, err) = run_cli(&args, &[]);
        assert_eq!(code, 0, "{cmd:?}: {err}");
        let mut section = "";
        for line in out.lines() {
            if line.ends_with(':') && !line.starts_with(' ') {
                section = line;
                continue;
            }
            if !(section == "Arguments:" || section == "Options:") || line.trim().is_empty() {
                continue;
            }
            // "  -c, --config <CONFIG>  The configuration file [default: …]"
            let entry = line.trim_start();
            let described = entry
                .split_once("  ")
                .is_some_and(|(_, rest)| !rest.trim().is_empty());
            assert!(
                described,
                "{cmd:?}: no description for {entry:?} in:\n{out}"
            );
        }
    }

    let (_, out, _) = run_cli(&["approve", "--help"], &[]);
    for needle in [
        "<ID>",
        "--reason",
        "--url",
        "--token",
        "AIRLOCK_URL",
        "AIRLOCK_TOKEN",
    ] {
        assert!(
            out.contains(needle),
            "approve --help lacks {needle}:\n{out}"
        );
    }
}
