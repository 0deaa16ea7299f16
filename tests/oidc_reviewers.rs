//! Reviewers signing in to the admin API with OIDC bearer tokens (`admin.oidc`), from a
//! stand-in IdP on 127.0.0.1: a reviewer named by `email` lists and approves; groups
//! from the token's `groups` claim make a reviewer eligible; a person with no reviewer
//! entry, an expired token, a token for another audience and an unverified email are
//! refused; an agent's key or JWT is refused by the admin API as an agent credential.

mod common;
#[path = "standins/jwks.rs"]
mod idp;

use common::*;
use idp::*;
use serde_json::{json, Value};
use std::path::PathBuf;

const SSO: &str = "https://sso.example.com";
const ADMIN_AUDIENCE: &str = "airlock-admin";

const RULES: &str = r#"rules:
  - name: vm-delete
    description: Deleting a VM
    when:
      upstream: api
      method: POST
      path: /v1/vms/*/delete
    then: approve
    approval:
      approvers: [group:sre]
      timeout: 10m
  - name: db-drop
    description: Dropping a database
    when:
      upstream: api
      method: POST
      path: /v1/db/*/drop
    then: approve
    approval:
      approvers: [group:dba]
      timeout: 10m
  - name: db-restore
    description: Restoring a database over the live one
    when:
      upstream: api
      method: POST
      path: /v1/db/*/restore
    then: approve
    approval:
      approvers: [group:dba]
      quorum: 2
      timeout: 10m
"#;

/// The standard identities (none of them a dba: that group comes from tokens only),
/// a JWT agent `builder` (ES256, the agents' issuer) and `admin.oidc` from the SSO
/// issuer; both publish their keys at `jwks_url`.
fn config(ws: &Workspace, upstream: &str, jwks_url: &str) -> PathBuf {
    let ids = identities_yaml();
    let (agents, reviewers) = ids.split_once("reviewers:").unwrap();
    ws.write("rules/r.yaml", RULES);
    ws.write(
        "airlock.yaml",
        &format!(
            r#"listen: 127.0.0.1:0
admin:
  listen: 127.0.0.1:0
  oidc: {{issuer: "{SSO}", audience: {ADMIN_AUDIENCE}, jwks: "{jwks_url}", algorithms: [ES256], groups_claim: groups}}
store: sqlite://airlock.db
rules: rules/
upstreams:
  - name: api
    prefix: /api
    url: {upstream}
    timeout: 5s
{agents}  - id: builder
    jwt: {{issuer: "{ISSUER}", audience: {AUDIENCE}, jwks: "{jwks_url}", algorithms: [ES256]}}
reviewers:{reviewers}"#
        ),
    )
}

/// Claims of an SSO sign-in for `email`.
fn sign_in(email: &str) -> Value {
    json!({
        "iss": SSO,
        "aud": ADMIN_AUDIENCE,
        "sub": format!("00u-{email}"),
        "email": email,
        "email_verified": true,
        "iat": now(),
        "exp": now() + 600,
    })
}

struct Setup {
    _up: Upstream,
    _ws: Workspace,
    _idp: Idp,
    key: EcKey,
    a: InProcess,
}

async fn start() -> Setup {
    let up = Upstream::start().await;
    let key = EcKey::new("sso-1");
    let idp = Idp::start(vec![key.jwk()]).await;
    let ws = Workspace::new();
    let cfg = config(&ws, &up.url(), &idp.jwks_url());
    let a = InProcess::start(&cfg).await;
    Setup {
        _up: up,
        _ws: ws,
        _idp: idp,
        key,
        a,
    }
}

/// `GET /api/v1/approvals?status=pending` as `token`: (status, body).
async fn list(s: &Setup, token: &str) -> (u16, Value) {
    let r = client()
        .get(s.a.admin_url("/api/v1/approvals?status=pending"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn an_oidc_reviewer_lists_and_approves() {
    let s = start().await;
    let (held, id) = agent_hold(&s.a, "POST", "/api/v1/vms/vm-7/delete", "{}").await;

    // The IdP writes the email as it likes; it names bob all the same.
    let bob = s.key.sign(&sign_in("Bob@Example.com"));
    let (status, v) = list(&s, &bob).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["approvals"][0]["id"], id.as_str());

    let (status, v) = vote(&s.a, &bob, &id, "approve", None).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["votes"][0]["reviewer"], "bob@example.com");
    held.await.unwrap().assert_forwarded_on(&id);
    s.a.stop().await;
}

#[tokio::test]
async fn groups_from_the_token_make_a_reviewer_eligible() {
    let s = start().await;
    let (held, id) = agent_hold(&s.a, "POST", "/api/v1/db/orders/drop", "{}").await;

    // dave has no groups in the config: without the claim he is not a dba.
    let plain = s.key.sign(&sign_in("dave@example.com"));
    let (status, v) = vote(&s.a, &plain, &id, "approve", None).await;
    assert_eq!(status, 403, "{v}");
    assert_eq!(v["error"], "not_eligible");

    // With `groups: [dba]` in his token he is, and his approval decides.
    let mut c = sign_in("dave@example.com");
    c["groups"] = json!(["readers", "dba"]);
    let (status, v) = vote(&s.a, &s.key.sign(&c), &id, "approve", None).await;
    assert_eq!(status, 200, "{v}");
    held.await.unwrap().assert_forwarded_on(&id);
    s.a.stop().await;
}

#[tokio::test]
async fn a_quorum_of_two_is_met_by_groups_only_tokens_give() {
    let s = start().await;
    let (held, id) = agent_hold(&s.a, "POST", "/api/v1/db/orders/restore", "{}").await;
    let dba = |email: &str| {
        let mut c = sign_in(email);
        c["groups"] = json!(["dba"]);
        s.key.sign(&c)
    };
    // No configured reviewer is a dba: the group comes from the tokens alone. The
    // first approval counts and the request still waits for the second.
    let (status, v) = vote(&s.a, &dba("dave@example.com"), &id, "approve", None).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["status"], "pending", "{v}");
    assert_eq!(
        v["requirements"][0]["approved_by"],
        json!(["dave@example.com"]),
        "{v}"
    );
    // The same person again is not a second approver.
    let (status, v) = vote(&s.a, &dba("dave@example.com"), &id, "approve", None).await;
    assert_eq!(status, 409, "{v}");
    let (status, v) = vote(&s.a, &dba("carol@example.com"), &id, "approve", None).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["status"], "approved", "{v}");
    held.await.unwrap().assert_forwarded_on(&id);
    s.a.stop().await;
}

#[tokio::test]
async fn strangers_bad_tokens_and_agent_credentials_are_refused() {
    let s = start().await;
    let refused = |c: Value| s.key.sign(&c);
    let mut expired = sign_in("bob@example.com");
    expired["iat"] = json!(now() - 7200);
    expired["exp"] = json!(now() - 3600);
    let mut other_audience = sign_in("bob@example.com");
    other_audience["aud"] = json!("another-app");
    let mut unverified = sign_in("bob@example.com");
    unverified["email_verified"] = json!(false);
    for token in [
        refused(sign_in("mallory@example.com")),
        refused(expired),
        refused(other_audience),
        refused(unverified),
        EcKey::new("sso-1").sign(&sign_in("bob@example.com")),
    ] {
        let (status, v) = list(&s, &token).await;
        assert_eq!(status, 401, "{v}");
        assert_eq!(v["error"], "unauthenticated");
    }

    // Agent credentials, of any kind, are refused as such.
    let mut agent_claims = claims("builder");
    agent_claims["email"] = json!("bob@example.com");
    for token in [AGENT_KEY.to_string(), s.key.sign(&agent_claims)] {
        let (status, v) = list(&s, &token).await;
        assert_eq!(status, 403, "{v}");
        assert_eq!(v["error"], "agent_credential");
    }
    // The same token is the agent's on the proxy.
    let r = agent_send(
        &client(),
        &s.a.url("/api/v1/items"),
        "GET",
        &s.key.sign(&claims("builder")),
        "",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);

    // Reviewer tokens still work beside OIDC.
    assert_eq!(list(&s, BOB).await.0, 200);
    s.a.stop().await;
}
