//! The admin REST API as a reviewer, an operator and a careless client meet it: every
//! answer is airlock's JSON error shape (never a plain-text rejection), the API needs
//! a reviewer token (agent keys are refused), vote bodies are checked, and
//! `POST /api/v1/reload` puts new rules in force or refuses a broken set and keeps
//! the old one.

mod common;
use common::*;
use serde_json::{json, Value};

/// A rule that holds nothing, so the default (allow) applies to everything.
const ALLOW_ALL: &str = "rules:\n  - name: ok\n    when: {path: /nothing}\n    then: allow\n";

/// A request to the admin listener: `method path` with an optional bearer `token`.
fn admin(
    a: &impl Listeners,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> reqwest::RequestBuilder {
    let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let r = client().request(m, a.admin_url(path));
    match token {
        Some(t) => r.bearer_auth(t),
        None => r,
    }
}

/// Sends `req` and checks that the answer is airlock's JSON error `code` with
/// `status`; returns the error body.
#[track_caller]
fn expect_error(
    status: u16,
    code: &'static str,
    req: reqwest::RequestBuilder,
) -> impl std::future::Future<Output = Value> {
    let caller = std::panic::Location::caller();
    async move {
        let r = req.send().await.unwrap();
        let got = r.status().as_u16();
        let content_type = r
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let text = r.text().await.unwrap();
        assert_eq!(
            (got, content_type.as_str()),
            (status, "application/json"),
            "at {caller}: {text}"
        );
        let v: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("at {caller}: not JSON ({e}): {text}"));
        assert_eq!(v["error"], code, "at {caller}: {v}");
        assert!(
            v["message"].as_str().is_some_and(|m| !m.is_empty()),
            "at {caller}: an error says what went wrong: {v}"
        );
        v
    }
}

/// `POST /api/v1/reload` as bob: (status, body).
async fn reload(a: &impl Listeners) -> (u16, Value) {
    let r = admin(a, "POST", "/api/v1/reload", Some(BOB))
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

/// What deploy-bot gets for `method /api/x`.
async fn agent_status(a: &impl Listeners, method: &str) -> u16 {
    agent_request(a, AGENT_KEY, method, "/api/x")
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn unknown_pages_and_wrong_methods_are_json_errors() {
    let (_up, _ws, a) = setup_with_rules(ALLOW_ALL, "").await;

    let v = expect_error(404, "not_found", admin(&a, "GET", "/nope", None)).await;
    assert!(v["message"].as_str().unwrap().contains("/nope"), "{v}");
    expect_error(
        405,
        "method_not_allowed",
        admin(&a, "DELETE", "/healthz", None),
    )
    .await;
    expect_error(
        405,
        "method_not_allowed",
        admin(&a, "POST", "/metrics", None),
    )
    .await;

    // Under /api/ the caller must be a reviewer before learning what exists.
    expect_error(
        401,
        "unauthenticated",
        admin(&a, "GET", "/api/v1/nope", None),
    )
    .await;
    expect_error(
        401,
        "unauthenticated",
        admin(&a, "DELETE", "/api/v1/approvals", None),
    )
    .await;
    expect_error(
        404,
        "not_found",
        admin(&a, "GET", "/api/v1/nope", Some(BOB)),
    )
    .await;
    let v = expect_error(
        405,
        "method_not_allowed",
        admin(&a, "DELETE", "/api/v1/approvals", Some(BOB)),
    )
    .await;
    assert!(v["message"].as_str().unwrap().contains("DELETE"), "{v}");
    expect_error(
        405,
        "method_not_allowed",
        admin(&a, "GET", "/api/v1/reload", Some(BOB)),
    )
    .await;
    expect_error(
        405,
        "method_not_allowed",
        admin(&a, "GET", "/api/v1/approvals/ap_x/votes", Some(BOB)),
    )
    .await;

    // Query strings that do not fit are 400s too, in the same shape.
    expect_error(
        400,
        "bad_request",
        admin(&a, "GET", "/api/v1/approvals?limit=0", Some(BOB)),
    )
    .await;
    expect_error(
        400,
        "bad_request",
        admin(&a, "GET", "/api/v1/approvals?status=maybe", Some(BOB)),
    )
    .await;
    let r = admin(&a, "GET", "/api/v1/approvals?status=all&limit=5", Some(BOB))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"approvals": []}));
}

#[tokio::test]
async fn the_api_takes_reviewer_tokens_only() {
    let (_up, _ws, a) = setup_with_rules(ALLOW_ALL, "").await;
    let routes = [
        ("GET", "/api/v1/approvals"),
        ("GET", "/api/v1/approvals/ap_x"),
        ("POST", "/api/v1/approvals/ap_x/votes"),
        ("POST", "/api/v1/reload"),
    ];
    for (method, path) in routes {
        let v = expect_error(401, "unauthenticated", admin(&a, method, path, None)).await;
        assert!(
            v["message"].as_str().unwrap().contains("Bearer"),
            "a missing token says how to send one: {v}"
        );
        expect_error(
            401,
            "unauthenticated",
            admin(&a, method, path, Some("not-a-token")),
        )
        .await;
        expect_error(
            401,
            "unauthenticated",
            admin(&a, method, path, None).basic_auth("bob", Some(BOB)),
        )
        .await;
        for key in [AGENT_KEY, OTHER_AGENT_KEY] {
            expect_error(403, "agent_credential", admin(&a, method, path, Some(key))).await;
        }
    }
    // The same tokens that were refused above are nobody's: a real one works.
    let r = admin(&a, "GET", "/api/v1/approvals", Some(DAVE))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn vote_bodies_are_checked_before_anything_is_recorded() {
    let (_up, _ws, a) = setup_with_rules(ALLOW_ALL, "").await;
    let votes = "/api/v1/approvals/ap_doesnotexist/votes";
    let vote_req = |body: Vec<u8>| {
        admin(&a, "POST", votes, Some(BOB))
            .header("content-type", "application/json")
            .body(body)
    };

    let v = expect_error(
        400,
        "bad_request",
        vote_req(br#"{"decision":"approve","comment":"lgtm"}"#.to_vec()),
    )
    .await;
    let m = v["message"].as_str().unwrap();
    assert!(m.contains("unknown field `comment`"), "{m}");
    assert!(m.contains(r#""decision": "approve"|"deny""#), "{m}");

    let v = expect_error(400, "bad_request", vote_req(b"{\"decision\":".to_vec())).await;
    assert!(v["message"].as_str().unwrap().contains("decision"), "{v}");
    expect_error(
        400,
        "bad_request",
        vote_req(br#"{"decision":"maybe"}"#.to_vec()),
    )
    .await;
    expect_error(400, "bad_request", vote_req(Vec::new())).await;

    // Over 64 KiB, whether the length is declared or the body is streamed.
    let big = format!(
        r#"{{"decision":"deny","reason":"{}"}}"#,
        "x".repeat(65 * 1024)
    );
    let v = expect_error(413, "body_too_large", vote_req(big.clone().into_bytes())).await;
    assert!(v["message"].as_str().unwrap().contains("64 KiB"), "{v}");
    let (tx, body) = channel_body();
    for chunk in big.as_bytes().chunks(big.len() / 2 + 1) {
        tx.send(bytes::Bytes::copy_from_slice(chunk)).await.unwrap();
    }
    drop(tx);
    let req = http::Request::post(votes)
        .header("host", "airlock")
        .header("authorization", format!("Bearer {BOB}"))
        .body(body)
        .unwrap();
    let r = h1_send(a.admin.unwrap(), req).await;
    assert_eq!(r.status(), 413);
    let v: Value = serde_json::from_slice(
        &http_body_util::BodyExt::collect(r.into_body())
            .await
            .unwrap()
            .to_bytes(),
    )
    .unwrap();
    assert_eq!(v["error"], "body_too_large");

    // A well-formed vote gets as far as the approval, which does not exist.
    let v = expect_error(
        404,
        "not_found",
        vote_req(br#"{"decision":"approve","reason":"ok"}"#.to_vec()),
    )
    .await;
    assert_eq!(v["approval_id"], "ap_doesnotexist");
}

#[tokio::test]
async fn reload_puts_new_rules_in_force_and_refuses_a_broken_set() {
    let (_up, ws, a) = setup_with_rules(ALLOW_ALL, "").await;
    assert_eq!(agent_status(&a, "DELETE").await, 200);

    ws.write(
        "rules/deny.yaml",
        "rules:\n  - name: no-deletes\n    when: {method: DELETE}\n    then: deny\n",
    );
    let (s, v) = reload(&a).await;
    assert_eq!(
        (s, &v["status"], &v["rules"]),
        (200, &json!("reloaded"), &json!(2)),
        "{v}"
    );
    let r = agent_request(&a, AGENT_KEY, "DELETE", "/api/x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let denied: Value = r.json().await.unwrap();
    assert_eq!(denied["error"], "denied_by_rule");
    assert_eq!(denied["rule"][0], "no-deletes");

    // A broken rule file: refused with where it is broken; the old rules stay.
    ws.write(
        "rules/zz-broken.yaml",
        "rules:\n  - name: broken\n    when: {path: \"re:(\"}\n    then: deny\n",
    );
    let v = expect_error(
        422,
        "reload_failed",
        admin(&a, "POST", "/api/v1/reload", Some(BOB)),
    )
    .await;
    let message = v["message"].as_str().unwrap();
    let at = message
        .lines()
        .find_map(|l| l.split("zz-broken.yaml:").nth(1))
        .unwrap_or_else(|| panic!("the file is named: {message}"));
    let mut parts = at.splitn(3, ':');
    let (line, col) = (parts.next().unwrap(), parts.next().unwrap());
    assert_eq!(line, "3", "{message}");
    assert!(
        col.parse::<u32>().is_ok_and(|c| c > 0),
        "a column follows the line: {message}"
    );
    assert_eq!(admin_json(&a, "/readyz").await["rules"], 2);
    assert_eq!(agent_status(&a, "DELETE").await, 403);
    assert_eq!(agent_status(&a, "GET").await, 200);

    // Fixed, it loads.
    std::fs::remove_file(ws.path().join("rules/zz-broken.yaml")).unwrap();
    let (s, v) = reload(&a).await;
    assert_eq!(
        (s, &v["status"], &v["rules"]),
        (200, &json!("reloaded"), &json!(2)),
        "{v}"
    );
}

#[tokio::test]
async fn readyz_reports_the_mode_in_force() {
    let (_up, ws, a) = setup_with_rules(ALLOW_ALL, "").await;
    let v = admin_json(&a, "/readyz").await;
    let version = v["rules_version"].as_str().unwrap_or_default().to_string();
    assert_eq!(version.len(), 16, "{v}");
    assert!(version.bytes().all(|b| b.is_ascii_hexdigit()), "{v}");
    assert_eq!(
        v,
        json!({"status": "ready", "rules": 1, "rules_version": version, "store": "ok", "mode": "enforce"})
    );
    let metrics = metrics_text(&a).await;
    assert!(
        metrics.contains(&format!(
            "airlock_config{{mode=\"enforce\",rules_version=\"{version}\"}} 1"
        )),
        "{metrics}"
    );

    let cfg = std::fs::read_to_string(ws.config()).unwrap();
    ws.write("airlock.yaml", &format!("{cfg}mode: observe\n"));
    assert_eq!(reload(&a).await.0, 200);
    let v = admin_json(&a, "/readyz").await;
    assert_eq!(v["mode"], "observe");
    assert_ne!(
        v["rules_version"],
        version.as_str(),
        "the version covers the mode"
    );
}
