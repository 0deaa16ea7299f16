//! Microsoft Teams, end to end over real HTTP both ways: airlock (in process) holds a
//! request, posts an Adaptive Card through a stand-in Bot Connector (with a token from
//! a stand-in Microsoft identity platform), takes Bot Framework invoke callbacks at
//! `POST /teams/actions` signed with RS256 keys published as a JWKS, and replaces the
//! card with the outcome; and a Workflows webhook gets the card with a link.

mod common;
#[path = "standins/teams.rs"]
mod standins;

use common::*;
use serde_json::{json, Value};
use standins::{claims, invoke, keys, Microsoft, APP_ID, APP_PASSWORD, CONVERSATION, TENANT};
use std::path::PathBuf;

const AAD_BOB: &str = "1f6a3c2e-0b9d-4c51-8e7a-b0b0b0b0b0b0";
const AAD_CAROL: &str = "2c4e6a8b-1d3f-4a5c-9e7b-ca401ca401ca";
const AAD_ALICE: &str = "3a1ce000-2b4d-4e6f-8a0c-a11ce0a11ce0";
const AAD_DAVE: &str = "4dave000-3c5e-4f70-9b1d-da7eda7eda7e";
const AAD_STRANGER: &str = "5e000000-4d6f-4081-ac2e-000000000005";

const RULES: &str = r#"rules:
  - name: vm-delete
    description: Deleting a production VM
    when:
      upstream: api
      method: POST
      path: /v1/vms/*/delete
    then: approve
    approval:
      approvers: [group:sre]
      timeout: 10m
      show: [/name]
  - name: db-drop
    description: Dropping a database
    when:
      upstream: api
      method: POST
      path: /v1/db/*/drop
    then: approve
    approval:
      approvers: [group:sre]
      timeout: 10m
      require_reason: true
"#;

const VM_BODY: &str = r#"{"name":"vm-7","tier":"prod"}"#;

/// Which Teams modes the config turns on.
struct Modes {
    bot: bool,
    workflows: bool,
    /// The bot's config names the JWKS itself (`jwks:`) instead of the metadata's.
    jwks: bool,
}

/// A workspace whose reviewers have Teams ids and whose `channels.teams` points at
/// the stand-in `ms`.
fn write_config(ws: &Workspace, up: &Upstream, ms: &Microsoft, modes: Modes) -> PathBuf {
    let mut teams = String::new();
    if modes.bot {
        teams.push_str(&format!(
            r#"    app_id: {APP_ID}
    app_password: "{APP_PASSWORD}"
    tenant_id: {TENANT}
    service_url: {service}
    conversation: "{CONVERSATION}"
    authority: {base}
    openid_metadata: {base}/v1/.well-known/openidconfiguration?run={run}
"#,
            service = ms.service_url(),
            base = ms.base(),
            // Signing keys are cached per metadata URL for the process: a port reused
            // by an earlier test's stand-in must not share its cache.
            run = uuid::Uuid::new_v4().simple(),
        ));
    }
    if modes.bot && modes.jwks {
        teams.push_str(&format!(
            "    jwks: {}/v1/.well-known/keys?run={}\n",
            ms.base(),
            uuid::Uuid::new_v4().simple()
        ));
    }
    if modes.workflows {
        teams.push_str(&format!("    webhook_url: {}\n", ms.workflow_url()));
    }
    let text = format!(
        r#"listen: 127.0.0.1:0
admin:
  listen: 127.0.0.1:0
  public_url: https://airlock.example.com/
store: sqlite://airlock.db
rules: rules/
audit:
  file: audit.jsonl
upstreams:
  - name: api
    prefix: /api
    url: {up}
    timeout: 5s
agents:
  - id: deploy-bot
    key: {agent}
    owner: alice@example.com
reviewers:
  - id: bob@example.com
    groups: [sre]
    token: {bob}
    teams: {AAD_BOB}
  - id: carol@example.com
    groups: [sre]
    token: {carol}
    teams: {AAD_CAROL}
  - id: alice@example.com
    groups: [sre]
    token: {alice}
    teams: {AAD_ALICE}
  - id: dave@example.com
    token: {dave}
    teams: {AAD_DAVE}
channels:
  teams:
{teams}"#,
        up = up.url(),
        agent = digest(AGENT_KEY),
        bob = digest(BOB),
        carol = digest(CAROL),
        alice = digest(ALICE),
        dave = digest(DAVE),
    );
    ws.write("rules/r.yaml", RULES);
    ws.write("airlock.yaml", &text)
}

struct Setup {
    up: Upstream,
    ws: Workspace,
    ms: Microsoft,
    a: InProcess,
}

async fn setup(modes: Modes) -> Setup {
    let ms = Microsoft::start().await;
    let up = Upstream::start().await;
    let ws = Workspace::new();
    let cfg = write_config(&ws, &up, &ms, modes);
    let a = InProcess::start(&cfg).await;
    Setup { up, ws, ms, a }
}

async fn bot_only() -> Setup {
    setup(Modes {
        bot: true,
        workflows: false,
        jwks: false,
    })
    .await
}

/// deploy-bot asks to delete vm-7 (with a justification); returns the held request
/// and its approval id.
async fn hold_vm_delete(a: &InProcess) -> (tokio::task::JoinHandle<AgentReply>, String) {
    let url = a.url("/api/v1/vms/vm-7/delete");
    let held = tokio::spawn(async move {
        let r = client()
            .post(url)
            .bearer_auth(AGENT_KEY)
            .header("content-type", "application/json")
            .header(
                "x-airlock-justification",
                "Decommissioning vm-7, ticket OPS-12",
            )
            .body(VM_BODY)
            .send()
            .await
            .unwrap();
        AgentReply {
            status: r.status().as_u16(),
            approval_header: r
                .headers()
                .get("x-airlock-approval-id")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
            text: r.text().await.unwrap_or_default(),
        }
    });
    let id = id_of(&wait_pending(a, 1).await[0]);
    (held, id)
}

/// Posts a Bot Framework activity to `POST /teams/actions` with `token`: (status, JSON).
async fn send_activity(a: &InProcess, token: Option<&str>, activity: &Value) -> (u16, Value) {
    let body = serde_json::to_vec(activity).unwrap();
    send_raw(a, token, body).await
}

async fn send_raw(a: &InProcess, token: Option<&str>, body: Vec<u8>) -> (u16, Value) {
    let mut req = client()
        .post(a.admin_url("/teams/actions"))
        .header("content-type", "application/json")
        .body(body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

/// A click on `verb` by `aad`, signed as Bot Framework signs it (key `[0]`).
async fn click(s: &Setup, aad: &str, verb: &str, id: &str, reason: Option<&str>) -> (u16, Value) {
    let token = keys()[0].sign(&claims(&s.ms.service_url()));
    let activity = invoke(&s.ms.service_url(), aad, TENANT, verb, id, reason);
    send_activity(&s.a, Some(&token), &activity).await
}

/// Every text a card shows (text blocks, fact titles and values), one per line.
fn card_text(card: &Value) -> String {
    let mut out = Vec::new();
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    match (k.as_str(), x) {
                        ("text" | "title" | "value", Value::String(s)) => out.push(s.clone()),
                        _ => walk(x, out),
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    walk(card, &mut out);
    out.join("\n")
}

/// The card an activity carries.
fn card_of(activity: &Value) -> &Value {
    &activity["attachments"][0]["content"]
}

/// The `Action.Execute` actions of a card.
fn execute_actions(card: &Value) -> Vec<Value> {
    card["actions"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|x| x["type"] == "Action.Execute")
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until the connector has had a call matching `want`, and returns it.
async fn wait_call(
    ms: &Microsoft,
    want: impl Fn(&standins::ConnectorCall) -> bool,
) -> standins::ConnectorCall {
    eventually(DEADLINE.as_secs(), || {
        let found = ms.calls().into_iter().find(|c| want(c));
        async move { found }
    })
    .await
}

/// The approval as Bob sees it through the API.
async fn approval(a: &InProcess, id: &str) -> Value {
    let (s, v) = approval_get(a, BOB, id).await;
    assert_eq!(s, 200, "{v}");
    v
}

/// Nothing was recorded on `id`: still pending, no votes.
async fn assert_no_vote(a: &InProcess, id: &str, what: &str) {
    let v = approval(a, id).await;
    assert_eq!(v["status"], "pending", "{what}: {v}");
    assert_eq!(v["votes"], json!([]), "{what}: {v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_request_posts_a_card_and_a_click_approves_it() {
    let s = setup(Modes {
        bot: true,
        workflows: true,
        jwks: false,
    })
    .await;
    let (held, id) = hold_vm_delete(&s.a).await;

    // The card: posted to the configured conversation with a token from the authority.
    let posted = wait_call(&s.ms, |c| c.method == "POST").await;
    assert_eq!(posted.conversation, CONVERSATION);
    assert!(s.ms.token_requests() >= 1);
    let card = card_of(&posted.activity).clone();
    let text = card_text(&card);
    let body_sha = sha256_hex(VM_BODY);
    for want in [
        "Approval needed",
        "POST ",
        "/v1/vms/vm-7/delete",
        "deploy-bot",
        "alice@example.com",
        "key",
        "vm-delete",
        "Deleting a production VM",
        "0 of 1 approvals from group:sre",
        "Decommissioning vm-7, ticket OPS-12",
        "/name",
        "vm-7",
        body_sha.as_str(),
        id.as_str(),
        "Expires",
    ] {
        assert!(text.contains(want), "card lacks {want:?}:\n{text}");
    }
    let buttons = execute_actions(&card);
    let verbs: Vec<&str> = buttons.iter().filter_map(|b| b["verb"].as_str()).collect();
    assert_eq!(verbs, ["approve", "deny"], "{card}");
    for b in &buttons {
        assert_eq!(b["data"], json!({"approval": id}));
    }
    assert!(
        card["body"]
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["type"] == "Input.Text" && b["id"] == "reason"),
        "{card}"
    );
    let link = format!("https://airlock.example.com/approvals/{id}");
    assert!(
        card["actions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["type"] == "Action.OpenUrl" && x["url"] == link.as_str()),
        "{card}"
    );
    // Bob and Carol are asked (mentioned by their AAD ids); Alice owns the agent.
    let mentioned: Vec<&str> = card["msteams"]["entities"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["mentioned"]["id"].as_str())
        .collect();
    assert!(mentioned.contains(&AAD_BOB) && mentioned.contains(&AAD_CAROL));
    assert!(!mentioned.contains(&AAD_ALICE), "{mentioned:?}");

    // With a Workflows URL configured too, it gets the card as well.
    let wf = eventually(DEADLINE.as_secs(), || {
        let cards = s.ms.workflow_cards();
        async move { cards.first().cloned() }
    })
    .await;
    assert!(card_text(&wf).contains("Deleting a production VM"));

    // Bob clicks Approve in Teams.
    let activity = invoke(&s.ms.service_url(), AAD_BOB, TENANT, "approve", &id, None);
    let raw = serde_json::to_vec(&activity).unwrap();
    let token = keys()[0].sign(&claims(&s.ms.service_url()));
    let (status, answer) = send_raw(&s.a, Some(&token), raw.clone()).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["statusCode"], 200);
    assert_eq!(answer["type"], "application/vnd.microsoft.card.adaptive");
    let shown = card_text(&answer["value"]);
    assert!(shown.contains("Approved by bob@example.com"), "{shown}");
    assert!(execute_actions(&answer["value"]).is_empty());

    // The request is released and forwarded once.
    let reply = tokio::time::timeout(DEADLINE, held).await.unwrap().unwrap();
    reply.assert_forwarded_on(&id);
    assert_eq!(s.up.count(), 1);

    // The card is replaced for everyone with the outcome, buttons gone.
    let replaced = wait_call(&s.ms, |c| {
        c.method == "PUT"
            && c.activity_id == posted.activity_id
            && card_text(card_of(&c.activity)).contains("forwarded")
    })
    .await;
    let card = card_of(&replaced.activity);
    assert!(card_text(card).contains("Approved by bob@example.com"));
    assert!(execute_actions(card).is_empty(), "{card}");
    assert_eq!(replaced.activity["id"], posted.activity_id.as_str());

    // The vote's audit event says who clicked, through Teams, with the evidence.
    let ev = wait_audit_event(&s.ws.path().join("audit.jsonl"), "teams vote", |e| {
        e["event"] == "vote" && e["approval_id"] == id.as_str()
    })
    .await;
    assert_eq!(ev["reviewer"], "bob@example.com");
    assert_eq!(ev["channel"], "teams");
    assert_eq!(ev["decision"], "approve");
    let d = &ev["detail"];
    assert_eq!(
        d["callback_sha256"],
        sha256_hex(std::str::from_utf8(&raw).unwrap())
    );
    assert_eq!(d["token_sha256"], sha256_hex(&token));
    assert_eq!(d["kid"], keys()[0].kid.as_str());
    assert_eq!(d["iss"], "https://api.botframework.com");
    assert_eq!(d["aad_object_id"], AAD_BOB);
    assert_eq!(d["tenant"], TENANT);

    // The Workflows webhook hears of the decision too (it cannot update a card).
    eventually(DEADLINE.as_secs(), || {
        let cards = s.ms.workflow_cards();
        async move {
            cards
                .iter()
                .any(|c| card_text(c).contains("Approved by bob@example.com"))
                .then_some(())
        }
    })
    .await;
    s.a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_tokens_and_tenants_record_nothing() {
    let s = bot_only().await;
    let (held, id) = hold_vm_delete(&s.a).await;
    let service = s.ms.service_url();
    let now = chrono::Utc::now().timestamp();
    let good = || claims(&service);
    let k = &keys()[0];
    let approve = invoke(&service, AAD_BOB, TENANT, "approve", &id, None);

    let with = |f: &dyn Fn(&mut Value)| {
        let mut c = good();
        f(&mut c);
        k.sign(&c)
    };
    let b64 = |v: &Value| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let unsigned = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT", "kid": k.kid})),
        b64(&good())
    );
    let hs256 = {
        let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        h.kid = Some(k.kid.clone());
        jsonwebtoken::encode(
            &h,
            &good(),
            &jsonwebtoken::EncodingKey::from_secret(k.public_pem().as_bytes()),
        )
        .unwrap()
    };
    let cases: Vec<(&str, Option<String>, u16)> = vec![
        ("no token", None, 401),
        (
            "expired beyond the 5-minute skew",
            Some(with(&|c| {
                c["exp"] = json!(now - 600);
                c["nbf"] = json!(now - 4000);
            })),
            401,
        ),
        (
            "not yet valid beyond the skew",
            Some(with(&|c| c["nbf"] = json!(now + 900))),
            401,
        ),
        (
            "wrong audience",
            Some(with(&|c| {
                c["aud"] = json!("00000000-0000-0000-0000-000000000000")
            })),
            401,
        ),
        (
            "wrong issuer",
            Some(with(&|c| c["iss"] = json!("https://sts.windows.net/evil/"))),
            401,
        ),
        (
            "serviceurl of another service",
            Some(with(&|c| {
                c["serviceurl"] = json!("https://smba.evil.example/amer/")
            })),
            401,
        ),
        (
            "no serviceurl claim",
            Some(with(&|c| {
                c.as_object_mut().unwrap().remove("serviceurl");
            })),
            401,
        ),
        ("unsigned (alg none)", Some(unsigned), 401),
        ("HS256 keyed with the RSA public key", Some(hs256), 401),
        (
            "signed by a key nobody published",
            Some(keys()[2].sign(&good())),
            401,
        ),
        ("garbage", Some("not.a.jwt".into()), 401),
    ];
    for (what, token, want) in cases {
        let (status, body) = send_activity(&s.a, token.as_deref(), &approve).await;
        assert_eq!(status, want, "{what}: {body}");
        assert_eq!(body["error"], "unauthenticated", "{what}: {body}");
        assert_no_vote(&s.a, &id, what).await;
    }

    // A valid token, but the activity's serviceUrl is not the token's.
    let moved = invoke(
        "https://smba.evil.example/amer/",
        AAD_BOB,
        TENANT,
        "approve",
        &id,
        None,
    );
    let (status, body) = send_activity(&s.a, Some(&k.sign(&good())), &moved).await;
    assert_eq!(status, 401, "{body}");
    assert_no_vote(&s.a, &id, "activity from another serviceUrl").await;

    // A valid token from another tenant.
    let other = invoke(
        &service,
        AAD_BOB,
        "0000aaaa-1111-2222-3333-444455556666",
        "approve",
        &id,
        None,
    );
    let (status, body) = send_activity(&s.a, Some(&k.sign(&good())), &other).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"], "forbidden");
    assert_no_vote(&s.a, &id, "another tenant").await;

    // Still decidable: a token that expired two minutes ago is within the skew.
    let late = with(&|c| c["exp"] = json!(now - 120));
    let (status, body) = send_activity(&s.a, Some(&late), &approve).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["type"], "application/vnd.microsoft.card.adaptive",
        "{body}"
    );
    tokio::time::timeout(DEADLINE, held)
        .await
        .unwrap()
        .unwrap()
        .assert_forwarded_on(&id);
    s.a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_keys_are_fetched_on_an_unknown_kid_at_most_once_a_minute() {
    let s = bot_only().await;
    let (held, id) = hold_vm_delete(&s.a).await;
    let service = s.ms.service_url();
    let probe = invoke(&service, AAD_STRANGER, TENANT, "approve", &id, None);

    // First callback: metadata and keys fetched once; key [0] verifies.
    let (status, body) =
        send_activity(&s.a, Some(&keys()[0].sign(&claims(&service))), &probe).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(s.ms.jwks_fetches(), 1);
    assert_eq!(
        s.ms.metadata_fetches(),
        1,
        "jwks_uri comes from the metadata"
    );
    let (status, _) = send_activity(&s.a, Some(&keys()[0].sign(&claims(&service))), &probe).await;
    assert_eq!(status, 200);
    assert_eq!(s.ms.jwks_fetches(), 1, "the key set is cached");

    // Bot Framework rotates to key [1]: the unknown kid makes airlock fetch again.
    s.ms.publish(&[&keys()[1]]);
    let (status, body) =
        send_activity(&s.a, Some(&keys()[1].sign(&claims(&service))), &probe).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(s.ms.jwks_fetches(), 2);

    // Another unknown kid right after: refused without fetching again.
    let (status, body) =
        send_activity(&s.a, Some(&keys()[2].sign(&claims(&service))), &probe).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(
        s.ms.jwks_fetches(),
        2,
        "unknown kids refetch at most once a minute"
    );
    // The retired key no longer verifies.
    let (status, _) = send_activity(&s.a, Some(&keys()[0].sign(&claims(&service))), &probe).await;
    assert_eq!(status, 401);
    assert_no_vote(&s.a, &id, "probes").await;

    // Bob's click signed with the new key counts.
    let token = keys()[1].sign(&claims(&service));
    let activity = invoke(&service, AAD_BOB, TENANT, "approve", &id, None);
    let (status, body) = send_activity(&s.a, Some(&token), &activity).await;
    assert_eq!(status, 200, "{body}");
    tokio::time::timeout(DEADLINE, held)
        .await
        .unwrap()
        .unwrap()
        .assert_forwarded_on(&id);
    s.a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clicks_that_may_not_vote_are_explained_and_record_nothing() {
    let s = bot_only().await;
    let (held, id) = hold_vm_delete(&s.a).await;
    let message = "application/vnd.microsoft.activity.message";

    for (aad, what, says) in [
        (AAD_STRANGER, "unknown user", "not an airlock reviewer"),
        (AAD_DAVE, "not an approver", "not an approver"),
        (AAD_ALICE, "the agent's owner", "your own request"),
    ] {
        let (status, body) = click(&s, aad, "approve", &id, None).await;
        assert_eq!(status, 200, "{what}: {body}");
        assert_eq!(body["statusCode"], 200, "{what}: {body}");
        assert_eq!(body["type"], message, "{what}: {body}");
        assert!(
            body["value"].as_str().unwrap().contains(says),
            "{what}: {body}"
        );
        assert_no_vote(&s.a, &id, what).await;
    }
    // Alice's refused self-approval is in the audit log, through Teams.
    let ev = wait_audit_event(&s.ws.path().join("audit.jsonl"), "vote_refused", |e| {
        e["event"] == "vote_refused" && e["reviewer"] == "alice@example.com"
    })
    .await;
    assert_eq!(ev["channel"], "teams");
    assert_eq!(ev["reason"], "self-approval");

    // Unknown approval: explained.
    let (status, body) = click(&s, AAD_BOB, "approve", "ap_doesnotexist", None).await;
    assert_eq!(status, 200);
    assert!(
        body["value"].as_str().unwrap().contains("no approval"),
        "{body}"
    );

    // Bob denies with the reason typed in the card.
    let (status, body) = click(&s, AAD_BOB, "deny", &id, Some("not during the freeze")).await;
    assert_eq!(status, 200, "{body}");
    let shown = card_text(&body["value"]);
    assert!(
        shown.contains("Denied by bob@example.com: not during the freeze"),
        "{shown}"
    );
    let reply = tokio::time::timeout(DEADLINE, held).await.unwrap().unwrap();
    assert_eq!(reply.status, 403, "{}", reply.text);
    assert_eq!(s.up.count(), 0);

    // A second click on the decided card: explained, nothing changes.
    let (status, body) = click(&s, AAD_CAROL, "approve", &id, None).await;
    assert_eq!(status, 200);
    assert!(
        body["value"].as_str().unwrap().contains("already denied"),
        "{body}"
    );
    assert_eq!(approval(&s.a, &id).await["status"], "denied");
    s.a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_that_requires_a_reason_refuses_a_click_without_one() {
    let s = bot_only().await;
    let held = agent_spawn(&s.a, "POST", "/api/v1/db/orders/drop", "{}");
    let id = id_of(&wait_pending(&s.a, 1).await[0]);
    let posted = wait_call(&s.ms, |c| c.method == "POST").await;
    let input = card_of(&posted.activity)["body"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["type"] == "Input.Text")
        .cloned()
        .unwrap();
    assert_eq!(input["placeholder"], "Reason (required)");

    let (status, body) = click(&s, AAD_BOB, "approve", &id, Some("   ")).await;
    assert_eq!(status, 200);
    assert!(
        body["value"].as_str().unwrap().contains("needs a reason"),
        "{body}"
    );
    assert_no_vote(&s.a, &id, "no reason").await;

    let (status, body) = click(&s, AAD_BOB, "approve", &id, Some("restore tested")).await;
    assert_eq!(status, 200, "{body}");
    tokio::time::timeout(DEADLINE, held)
        .await
        .unwrap()
        .unwrap()
        .assert_forwarded_on(&id);
    let v = approval(&s.a, &id).await;
    assert_eq!(v["votes"][0]["reason"], "restore tested");
    s.a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vote_through_the_api_replaces_the_card_too() {
    let s = bot_only().await;
    let (held, id) = hold_vm_delete(&s.a).await;
    let posted = wait_call(&s.ms, |c| c.method == "POST").await;

    let (status, body) = vote(&s.a, CAROL, &id, "approve", Some("checked backups")).await;
    assert_eq!(status, 200, "{body}");
    tokio::time::timeout(DEADLINE, held)
        .await
        .unwrap()
        .unwrap()
        .assert_forwarded_on(&id);

    let replaced = wait_call(&s.ms, |c| {
        c.method == "PUT"
            && card_text(card_of(&c.activity))
                .contains("Approved by carol@example.com: checked backups")
    })
    .await;
    assert_eq!(replaced.activity_id, posted.activity_id);
    assert!(execute_actions(card_of(&replaced.activity)).is_empty());
    // One card per approval: every later event replaced it.
    assert_eq!(
        s.ms.calls().iter().filter(|c| c.method == "POST").count(),
        1
    );
    // One token for all of it: cached, not asked for per call.
    assert_eq!(s.ms.token_requests(), 1);
    s.a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connector_outage_delays_the_card_but_not_the_decision() {
    let ms = Microsoft::start().await;
    ms.connector_down(Some(503));
    let up = Upstream::start().await;
    let ws = Workspace::new();
    let cfg = write_config(
        &ws,
        &up,
        &ms,
        Modes {
            bot: true,
            workflows: false,
            jwks: false,
        },
    );
    let a = InProcess::start(&cfg).await;
    let (held, id) = hold_vm_delete(&a).await;

    // Teams is down: the API still decides.
    let (status, body) = vote(&a, BOB, &id, "approve", None).await;
    assert_eq!(status, 200, "{body}");
    tokio::time::timeout(DEADLINE, held)
        .await
        .unwrap()
        .unwrap()
        .assert_forwarded_on(&id);
    assert!(ms.calls().is_empty());

    // Back up: the retried card is posted, then brought up to date.
    ms.connector_down(None);
    let posted = wait_call(&ms, |c| c.method == "POST").await;
    let last = eventually(DEADLINE.as_secs(), || {
        let calls = ms.calls();
        async move {
            calls
                .into_iter()
                .rev()
                .find(|c| card_text(card_of(&c.activity)).contains("forwarded"))
        }
    })
    .await;
    assert_eq!(last.activity_id, posted.activity_id);
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workflows_webhook_gets_the_card_with_an_open_in_airlock_link() {
    let s = setup(Modes {
        bot: false,
        workflows: true,
        jwks: false,
    })
    .await;
    let (held, id) = hold_vm_delete(&s.a).await;

    let card = eventually(DEADLINE.as_secs(), || {
        let cards = s.ms.workflow_cards();
        async move { cards.first().cloned() }
    })
    .await;
    assert_eq!(card["version"], "1.5");
    let text = card_text(&card);
    for want in [
        "Approval needed",
        "deploy-bot",
        "Deleting a production VM",
        "vm-7",
    ] {
        assert!(text.contains(want), "card lacks {want:?}:\n{text}");
    }
    assert!(
        execute_actions(&card).is_empty(),
        "no buttons without a bot: {card}"
    );
    let link = &card["actions"][0];
    assert_eq!(link["type"], "Action.OpenUrl");
    assert_eq!(link["title"], "Open in airlock");
    assert_eq!(
        link["url"],
        format!("https://airlock.example.com/approvals/{id}").as_str()
    );
    // No bot: no token requested, nothing to the connector.
    assert_eq!(s.ms.token_requests(), 0);

    let (status, _) = vote(&s.a, BOB, &id, "deny", Some("wrong VM")).await;
    assert_eq!(status, 200);
    assert_eq!(
        tokio::time::timeout(DEADLINE, held)
            .await
            .unwrap()
            .unwrap()
            .status,
        403
    );
    let denied = eventually(DEADLINE.as_secs(), || {
        let cards = s.ms.workflow_cards();
        async move {
            cards
                .into_iter()
                .find(|c| card_text(c).contains("Denied by bob@example.com: wrong VM"))
        }
    })
    .await;
    assert!(denied["actions"]
        .as_array()
        .unwrap()
        .iter()
        .any(|x| x["title"] == "Open in airlock"));
    // Opened and decided: two posts (votes and forwarding are not re-posted).
    assert_eq!(s.ms.workflow_cards().len(), 2);
    s.a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_jwks_is_used_instead_of_the_metadata() {
    let s = setup(Modes {
        bot: true,
        workflows: false,
        jwks: true,
    })
    .await;
    let (held, id) = hold_vm_delete(&s.a).await;
    let (status, body) = click(&s, AAD_BOB, "approve", &id, None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["type"], "application/vnd.microsoft.card.adaptive",
        "{body}"
    );
    tokio::time::timeout(DEADLINE, held)
        .await
        .unwrap()
        .unwrap()
        .assert_forwarded_on(&id);
    assert_eq!(s.ms.jwks_fetches(), 1);
    assert_eq!(
        s.ms.metadata_fetches(),
        0,
        "jwks: skips the OpenID metadata"
    );
    s.a.stop().await;
}
