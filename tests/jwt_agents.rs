//! Agents identified by bearer JWTs, end to end: tokens minted at test time with keys
//! made at test time, published by a stand-in IdP on 127.0.0.1 (or in a JWKS file),
//! sent through airlock to a real upstream. Valid tokens pass (and never reach the
//! upstream); expired, not yet valid, wrong audience or issuer, unknown or wrong key,
//! `alg: none` and HS256 keyed with the RSA public key are refused with the reason;
//! key rotation is picked up, a spray of random `kid`s does not hammer the IdP; a fleet
//! entry names each member by its `sub`.

mod common;
#[path = "standins/jwks.rs"]
mod idp;

use common::*;
use idp::*;
use serde_json::{json, Value};
use std::path::PathBuf;

const RULES: &str = r#"rules:
  - name: fleet-deploy
    description: A CI runner deploying
    when:
      upstream: api
      method: POST
      path: /v1/deploy
      agent: ["re:^ci-"]
    then: approve
    approval:
      approvers: [group:sre]
      timeout: 10m
  - name: reports-for-reporter
    description: Only the reporter reads reports
    when:
      upstream: api
      path: /v1/reports/**
      agent: builder
    then: deny
"#;

/// The standard identities plus JWT agents: `builder` and `reporter` (same issuer,
/// told apart by `sub`), the `ci-` fleet, and `ec-bot` (ES256, keys in `jwks_file`).
fn config(ws: &Workspace, upstream: &str, jwks_url: &str, jwks_file: &str) -> PathBuf {
    let ids = identities_yaml();
    let (agents, reviewers) = ids.split_once("reviewers:").unwrap();
    ws.write("rules/r.yaml", RULES);
    ws.write(
        "airlock.yaml",
        &format!(
            r#"listen: 127.0.0.1:0
admin:
  listen: 127.0.0.1:0
store: sqlite://airlock.db
rules: rules/
upstreams:
  - name: api
    prefix: /api
    url: {upstream}
    timeout: 5s
{agents}  - id: builder
    owner: carol@example.com
    jwt: {{issuer: "{ISSUER}", audience: {AUDIENCE}, jwks: "{jwks_url}"}}
  - id: reporter
    jwt: {{issuer: "{ISSUER}", audience: [reports, {AUDIENCE}], jwks: "{jwks_url}"}}
  - id: ci-fleet
    owner: carol@example.com
    jwt: {{issuer: "{ISSUER}", audience: {AUDIENCE}, jwks: "{jwks_url}", match: "re:^ci-"}}
  - id: brief
    jwt: {{issuer: "https://brief.example.com", audience: {AUDIENCE}, jwks: "{jwks_url}", leeway: 0s}}
  - id: ec-bot
    jwt: {{issuer: "https://ec.example.com", audience: {AUDIENCE}, jwks: {jwks_file}, algorithms: [ES256]}}
reviewers:{reviewers}audit:
  file: audit.jsonl
"#
        ),
    )
}

struct Setup {
    up: Upstream,
    ws: Workspace,
    idp: Idp,
    a: InProcess,
}

async fn start(published: Vec<Value>, file_keys: &[Value]) -> Setup {
    let up = Upstream::start().await;
    let idp = Idp::start(published).await;
    let ws = Workspace::new();
    ws.write("jwks.json", &jwks(file_keys));
    let cfg = config(&ws, &up.url(), &idp.jwks_url(), "jwks.json");
    let a = InProcess::start(&cfg).await;
    Setup { up, ws, idp, a }
}

async fn send(s: &Setup, method: &str, path: &str, token: &str) -> AgentReply {
    agent_send(&client(), &s.a.url(path), method, token, "{}").await
}

/// The request is refused `401` and says why.
#[track_caller]
fn assert_refused(r: &AgentReply, why: &str) {
    assert_eq!(r.status, 401, "{why}: {}", r.text);
    assert_eq!(r.json()["error"], "unauthenticated", "{}", r.text);
    assert!(r.text.contains(why), "expected {why:?} in {}", r.text);
}

#[tokio::test]
async fn valid_tokens_pass_and_bad_ones_are_refused_with_the_reason() {
    let keys = rsa_keys_async().await;
    let s = start(vec![keys[0].jwk()], &[]).await;

    // A valid token: forwarded, and its Authorization header never reaches the upstream.
    let r = send(
        &s,
        "GET",
        "/api/v1/items",
        &keys[0].sign(&claims("builder")),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let seen = s.up.requests();
    assert_eq!(seen.len(), 1);
    assert!(seen[0].headers.get("authorization").is_none());

    // Two agents share the issuer and are told apart by `sub`: the rule denying reports
    // to the builder does not stop the reporter (whose audience list includes ours).
    let r = send(
        &s,
        "GET",
        "/api/v1/reports/q3",
        &keys[0].sign(&claims("builder")),
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.text);
    let r = send(
        &s,
        "GET",
        "/api/v1/reports/q3",
        &keys[0].sign(&claims("reporter")),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);

    let with = |patch: Value| {
        let mut c = claims("builder");
        for (k, v) in patch.as_object().unwrap() {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        c
    };
    let cases: Vec<(&str, String)> = vec![
        (
            "expired",
            keys[0].sign(&with(
                json!({"iat": now() - 7200, "nbf": now() - 7200, "exp": now() - 3600}),
            )),
        ),
        (
            "not yet valid",
            keys[0].sign(&with(json!({"nbf": now() + 3600, "exp": now() + 7200}))),
        ),
        (
            "wrong audience",
            keys[0].sign(&with(json!({"aud": "someone-else"}))),
        ),
        (
            "wrong issuer",
            keys[0].sign(&with(json!({"iss": "https://evil.example.com"}))),
        ),
        ("missing claim", keys[0].sign(&with(json!({"exp": null})))),
        ("no matching agent", keys[0].sign(&claims("stranger"))),
        (
            "algorithm not allowed",
            unsigned("rsa-1", &claims("builder")),
        ),
        (
            "algorithm not allowed",
            hs256("rsa-1", keys[0].public_pem().as_bytes(), &claims("builder")),
        ),
        // ES256 is not pinned for the builder, whatever key signed it.
        (
            "algorithm not allowed",
            EcKey::new("rsa-1").sign(&claims("builder")),
        ),
        // Signed by a key nobody published, naming the published one.
        (
            "bad signature",
            keys[2].sign_as("rsa-1", &claims("builder")),
        ),
        ("malformed", "not.a.token".to_string()),
    ];
    for (why, token) in &cases {
        let r = send(&s, "GET", "/api/v1/items", token).await;
        assert_refused(&r, why);
    }
    assert_eq!(s.up.count(), 2, "nothing refused reached the upstream");
    s.a.stop().await;
}

#[tokio::test]
async fn rotated_keys_are_fetched_and_a_kid_spray_does_not_hammer_the_idp() {
    let keys = rsa_keys_async().await;
    let s = start(vec![keys[0].jwk()], &[]).await;

    // Cold cache, concurrent callers: one fetch, every caller served.
    let token = keys[0].sign(&claims("builder"));
    let calls: Vec<_> = (0..8)
        .map(|_| {
            let url = s.a.url("/api/v1/items");
            let token = token.clone();
            tokio::spawn(async move { agent_send(&client(), &url, "GET", &token, "").await })
        })
        .collect();
    for c in calls {
        let r = c.await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text);
    }
    assert_eq!(s.idp.fetches(), 1);

    // The IdP rotates: a token naming the new key makes airlock fetch the keys again.
    s.idp.publish(vec![keys[0].jwk(), keys[1].jwk()]);
    let r = send(
        &s,
        "GET",
        "/api/v1/items",
        &keys[1].sign(&claims("builder")),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(s.idp.fetches(), 2);

    // Tokens naming keys nobody published: refused, and the IdP is not asked each time.
    for i in 0..20 {
        let r = send(
            &s,
            "GET",
            "/api/v1/items",
            &keys[2].sign_as(&format!("random-{i}"), &claims("builder")),
        )
        .await;
        assert_refused(&r, "unknown key");
    }
    assert!(s.idp.fetches() <= 3, "fetched {} times", s.idp.fetches());
    // The old key still works.
    let r = send(
        &s,
        "GET",
        "/api/v1/items",
        &keys[0].sign(&claims("builder")),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);

    // A token signed before its key is published: refused; once the IdP publishes the
    // key, the token is accepted (after the refetch pause, a few seconds).
    let early = keys[2].sign(&claims("builder"));
    assert_refused(
        &send(&s, "GET", "/api/v1/items", &early).await,
        "unknown key",
    );
    s.idp.publish(vec![keys[1].jwk(), keys[2].jwk()]);
    eventually(DEADLINE.as_secs(), || async {
        (send(&s, "GET", "/api/v1/items", &early).await.status == 200).then_some(())
    })
    .await;
    assert!(s.idp.fetches() <= 5, "fetched {} times", s.idp.fetches());
    s.a.stop().await;
}

#[tokio::test]
async fn keys_from_a_jwks_file_and_never_an_rsa_key_for_es256() {
    let keys = rsa_keys_async().await;
    let (ec1, ec2) = (EcKey::new("ec-1"), EcKey::new("ec-2"));
    let s = start(vec![], &[ec1.jwk(), keys[0].jwk()]).await;
    let ec_claims = || {
        let mut c = claims("ec-bot");
        c["iss"] = json!("https://ec.example.com");
        c
    };

    let r = send(&s, "GET", "/api/v1/items", &ec1.sign(&ec_claims())).await;
    assert_eq!(r.status, 200, "{}", r.text);

    // The file is rewritten with a new key: a token naming it makes airlock read it again.
    s.ws.write("jwks.json", &jwks(&[ec2.jwk(), keys[0].jwk()]));
    let r = send(&s, "GET", "/api/v1/items", &ec2.sign(&ec_claims())).await;
    assert_eq!(r.status, 200, "{}", r.text);

    // An ES256 token naming the RSA key: that key is never used for ES256.
    let r = send(
        &s,
        "GET",
        "/api/v1/items",
        &ec2.sign_as("rsa-1", &ec_claims()),
    )
    .await;
    assert_refused(&r, "unknown key");
    // And the RS256 key of the file does not make RS256 acceptable for this agent.
    let r = send(&s, "GET", "/api/v1/items", &keys[0].sign(&ec_claims())).await;
    assert_refused(&r, "algorithm not allowed");
    assert_eq!(s.idp.fetches(), 0, "the file source never touches the URL");
    s.a.stop().await;
}

#[tokio::test]
async fn a_fleet_entry_names_each_member_by_its_sub() {
    let keys = rsa_keys_async().await;
    let s = start(vec![keys[0].jwk()], &[]).await;
    let token = keys[0].sign(&claims("ci-4711"));

    // Not a deploy: allowed as any request.
    let r = send(&s, "GET", "/api/v1/items", &token).await;
    assert_eq!(r.status, 200, "{}", r.text);

    // A deploy by a fleet member matches `agent: ["re:^ci-"]` and is held, under the
    // member's own id.
    let url = s.a.url("/api/v1/deploy");
    let t = token.clone();
    let held = tokio::spawn(async move { agent_send(&client(), &url, "POST", &t, "{}").await });
    let pending = wait_pending(&s.a, 1).await;
    assert_eq!(pending[0]["agent"], "ci-4711");
    assert_eq!(pending[0]["rules"], json!(["fleet-deploy"]));
    let id = id_of(&pending[0]);
    let held_ev = wait_audit_event(&s.ws.path().join("audit.jsonl"), "held", |e| {
        e["event"] == "held" && e["approval_id"] == id.as_str()
    })
    .await;
    assert_eq!(held_ev["agent"], "ci-4711");
    assert_eq!(held_ev["auth"], "jwt");
    assert!(held_ev.get("acting_for").is_none());

    assert_eq!(vote(&s.a, BOB, &id, "approve", None).await.0, 200);
    held.await.unwrap().assert_forwarded_on(&id);

    // A `sub` outside the pattern names no agent, though the token is otherwise valid.
    let r = send(&s, "POST", "/api/v1/deploy", &keys[0].sign(&claims("cd-1"))).await;
    assert_refused(&r, "no matching agent");
    // Nor may a member take the name of a configured agent (it would pass for it in
    // rules), though it fits the pattern.
    let r = send(
        &s,
        "GET",
        "/api/v1/items",
        &keys[0].sign(&claims("ci-fleet")),
    )
    .await;
    assert_refused(&r, "no matching agent");
    s.a.stop().await;
}

#[tokio::test]
async fn a_token_that_verified_is_refused_once_it_expires() {
    let keys = rsa_keys_async().await;
    let s = start(vec![keys[0].jwk()], &[]).await;
    // `brief` allows no clock leeway: its token is good until its `exp` second ends.
    let mut c = claims("brief");
    c["iss"] = serde_json::json!("https://brief.example.com");
    let exp = now() + 2;
    c["exp"] = serde_json::json!(exp);
    let token = keys[0].sign(&c);
    for _ in 0..3 {
        let r = send(&s, "GET", "/api/v1/items", &token).await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
    // Verified tokens are remembered, but never past their expiry: wait for the clock.
    while now() <= exp {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let r = send(&s, "GET", "/api/v1/items", &token).await;
    assert_refused(&r, "expired");
    assert_eq!(
        s.up.requests().len(),
        3,
        "the expired token never reached the upstream"
    );
    s.a.stop().await;
}
