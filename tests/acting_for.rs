//! An agent acting for a person (RFC 8693 `act`, or a configured claim such as
//! `on_behalf_of`): that person is an owner of the request and may never approve it,
//! even signed in with OIDC; another reviewer may. The audit log's `held` event says
//! who the agent acted for and how it authenticated.

mod common;
#[path = "standins/jwks.rs"]
mod idp;

use common::*;
use idp::*;
use serde_json::{json, Value};
use std::path::PathBuf;

const SSO: &str = "https://sso.example.com";

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
"#;

/// The standard identities, JWT agents `assistant` (RFC 8693 `act`, the default) and
/// `helper` (`on_behalf_of`), and `admin.oidc`; keys at `jwks_url`.
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
  oidc: {{issuer: "{SSO}", audience: airlock-admin, jwks: "{jwks_url}", algorithms: [ES256]}}
store: sqlite://airlock.db
rules: rules/
upstreams:
  - name: api
    prefix: /api
    url: {upstream}
    timeout: 5s
{agents}  - id: assistant
    jwt: {{issuer: "{ISSUER}", audience: {AUDIENCE}, jwks: "{jwks_url}", algorithms: [ES256]}}
  - id: helper
    jwt: {{issuer: "{ISSUER}", audience: {AUDIENCE}, jwks: "{jwks_url}", algorithms: [ES256], acting_for: on_behalf_of}}
reviewers:{reviewers}audit:
  file: audit.jsonl
"#
        ),
    )
}

fn sign_in(email: &str) -> Value {
    json!({
        "iss": SSO,
        "aud": "airlock-admin",
        "sub": format!("00u-{email}"),
        "email": email,
        "iat": now(),
        "exp": now() + 600,
    })
}

struct Setup {
    _up: Upstream,
    ws: Workspace,
    _idp: Idp,
    key: EcKey,
    a: InProcess,
}

async fn start() -> Setup {
    let up = Upstream::start().await;
    let key = EcKey::new("k-1");
    let idp = Idp::start(vec![key.jwk()]).await;
    let ws = Workspace::new();
    let cfg = config(&ws, &up.url(), &idp.jwks_url());
    let a = InProcess::start(&cfg).await;
    Setup {
        _up: up,
        ws,
        _idp: idp,
        key,
        a,
    }
}

/// Sends the agent's request with `token` in the background and waits until it is
/// held: (the agent's task, the approval id).
async fn hold(s: &Setup, token: String) -> (tokio::task::JoinHandle<AgentReply>, String) {
    let url = s.a.url("/api/v1/vms/vm-7/delete");
    let task = tokio::spawn(async move { agent_send(&client(), &url, "POST", &token, "{}").await });
    let id = id_of(&wait_pending(&s.a, 1).await[0]);
    (task, id)
}

/// The pending approvals as the reviewer with `token` sees them.
async fn pending_as(s: &Setup, token: &str) -> Vec<Value> {
    let v: Value = client()
        .get(s.a.admin_url("/api/v1/approvals?status=pending"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["approvals"].as_array().cloned().unwrap_or_default()
}

async fn held_event(s: &Setup, id: &str) -> Value {
    wait_audit_event(&s.ws.path().join("audit.jsonl"), "held", |e| {
        e["event"] == "held" && e["approval_id"] == id
    })
    .await
}

#[tokio::test]
async fn the_person_an_agent_acts_for_may_not_approve_and_another_reviewer_may() {
    let s = start().await;
    // alice delegated to the assistant; the chain goes on to an orchestrator before it
    // (earlier actors are not read).
    let mut c = claims("alice@example.com");
    c["act"] = json!({"sub": "assistant", "act": {"sub": "orchestrator"}});
    let (task, id) = hold(&s, s.key.sign(&c)).await;

    let pending = pending(&s.a, BOB).await;
    assert_eq!(pending[0]["agent"], "assistant");
    // Reviewers see who asks, how, and for whom.
    assert_eq!(pending[0]["auth"], "jwt");
    assert_eq!(pending[0]["acting_for"], "alice@example.com");
    assert_eq!(pending[0]["client"], "127.0.0.1");
    let alice_view = pending_as(&s, ALICE).await;
    assert_eq!(alice_view[0]["can_vote"], false, "{alice_view:?}");
    // So does `airlock pending`, run with bob's OIDC token.
    let bob_sso = s.key.sign(&sign_in("bob@example.com"));
    let url = s.a.admin_url("");
    let url = url.trim_end_matches('/').to_string();
    let (code, out, err) = tokio::task::spawn_blocking(move || {
        run_cli(
            &["pending"],
            &[("AIRLOCK_URL", &url), ("AIRLOCK_TOKEN", &bob_sso)],
        )
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("agent: assistant (jwt) acting for alice@example.com"),
        "{out}"
    );
    let ev = held_event(&s, &id).await;
    assert_eq!(ev["agent"], "assistant");
    assert_eq!(ev["auth"], "jwt");
    assert_eq!(ev["acting_for"], "alice@example.com");

    // alice is in sre, signs in with OIDC, and is refused: it is her own request.
    let alice = s.key.sign(&sign_in("alice@example.com"));
    let (status, v) = vote(&s.a, &alice, &id, "approve", None).await;
    assert_eq!(status, 403, "{v}");
    assert_eq!(v["error"], "self_approval");
    // Nor with her reviewer token.
    let (status, v) = vote(&s.a, ALICE, &id, "approve", None).await;
    assert_eq!(status, 403, "{v}");
    assert_eq!(v["error"], "self_approval");

    // bob, signed in with OIDC, approves.
    let bob = s.key.sign(&sign_in("bob@example.com"));
    let (status, v) = vote(&s.a, &bob, &id, "approve", None).await;
    assert_eq!(status, 200, "{v}");
    task.await.unwrap().assert_forwarded_on(&id);
    s.a.stop().await;
}

#[tokio::test]
async fn a_configured_claim_names_the_person() {
    let s = start().await;
    let mut c = claims("helper");
    c["on_behalf_of"] = json!("carol@example.com");
    let (task, id) = hold(&s, s.key.sign(&c)).await;
    let ev = held_event(&s, &id).await;
    assert_eq!(ev["agent"], "helper");
    assert_eq!(ev["acting_for"], "carol@example.com");

    let carol = s.key.sign(&sign_in("carol@example.com"));
    let (status, v) = vote(&s.a, &carol, &id, "approve", None).await;
    assert_eq!(status, 403, "{v}");
    assert_eq!(v["error"], "self_approval");
    let (status, v) = vote(&s.a, BOB, &id, "approve", None).await;
    assert_eq!(status, 200, "{v}");
    task.await.unwrap().assert_forwarded_on(&id);

    // An `act` whose shape is wrong is refused, never guessed at.
    let mut bad = claims("alice@example.com");
    bad["act"] = json!("assistant");
    let r = agent_send(
        &client(),
        &s.a.url("/api/v1/items"),
        "GET",
        &s.key.sign(&bad),
        "",
    )
    .await;
    assert_eq!(r.status, 401, "{}", r.text);
    assert!(r.text.contains("malformed"), "{}", r.text);
    s.a.stop().await;
}
