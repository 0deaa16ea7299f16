//! Red team on "who is asking and who may answer": hostile JWTs (algorithm confusion,
//! `kid` tricks, header-supplied keys, `crit`, duplicate keys, odd claim types),
//! token placement, fleets named like configured agents, acting-for people written in
//! other forms, OIDC reviewers with unverified or look-alike emails and odd groups,
//! agent tokens at the admin API and reviewer tokens at the proxy, and hostile client
//! certificates and TLS clients. Every refused request is checked never to reach the
//! upstream.

mod common;
#[path = "standins/jwks.rs"]
mod idp;

use base64::Engine;
use common::*;
use idp::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rsa::pkcs1::EncodeRsaPrivateKey;
use serde_json::{json, Value};
use std::path::PathBuf;

const SSO: &str = "https://sso.example.com";
const EC_ISSUER: &str = "https://ec.example.com";

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
"#;

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// A token with exactly the header and payload text given (duplicate keys and all),
/// signed with `alg` by `key`.
fn forge(header: &str, payload: &str, key: &EncodingKey, alg: Algorithm) -> String {
    let msg = format!("{}.{}", b64(header.as_bytes()), b64(payload.as_bytes()));
    let sig = jsonwebtoken::crypto::sign(msg.as_bytes(), key, alg).unwrap();
    format!("{msg}.{sig}")
}

fn rsa_enc(k: &RsaKey) -> EncodingKey {
    EncodingKey::from_rsa_der(k.private.to_pkcs1_der().unwrap().as_bytes())
}

fn ec_enc(k: &EcKey) -> EncodingKey {
    EncodingKey::from_ec_der(&k.pair.serialize_der())
}

/// `claims` signed RS256 by `k` with a header built by `f`.
fn sign_with(k: &RsaKey, claims: &Value, f: impl FnOnce(&mut Header)) -> String {
    let mut h = Header::new(Algorithm::RS256);
    h.kid = Some(k.kid.clone());
    f(&mut h);
    jsonwebtoken::encode(&h, claims, &rsa_enc(k)).unwrap()
}

/// RS256 `claims` from `k` with a raw header (so any field can be set).
fn sign_raw_header(k: &RsaKey, header: Value, claims: &Value) -> String {
    forge(
        &header.to_string(),
        &claims.to_string(),
        &rsa_enc(k),
        Algorithm::RS256,
    )
}

/// The standard identities plus: a key agent `ci-admin`; JWT agents `builder` (RS256),
/// the `ci-` fleet, `assistant` (RFC 8693 `act`), `helper` (`on_behalf_of`), `ec-bot`
/// (ES256, another issuer, keys in a file); reviewer `erin@example.com` (sre, OIDC
/// only, `subject: 00u-erin`); `admin.oidc` from the SSO issuer with `groups`.
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
  oidc: {{issuer: "{SSO}", audience: airlock-admin, jwks: "{jwks_url}", algorithms: [ES256], groups_claim: groups}}
store: sqlite://airlock.db
rules: rules/
upstreams:
  - name: api
    prefix: /api
    url: {upstream}
    timeout: 5s
{agents}  - id: ci-admin
    key: {ci_admin}
  - id: builder
    owner: carol@example.com
    jwt: {{issuer: "{ISSUER}", audience: {AUDIENCE}, jwks: "{jwks_url}", algorithms: [RS256]}}
  - id: ci-fleet
    jwt: {{issuer: "{ISSUER}", audience: {AUDIENCE}, jwks: "{jwks_url}", algorithms: [RS256], match: "re:^ci-"}}
  - id: assistant
    jwt: {{issuer: "{ISSUER}", audience: {AUDIENCE}, jwks: "{jwks_url}", algorithms: [RS256]}}
  - id: helper
    jwt: {{issuer: "{ISSUER}", audience: {AUDIENCE}, jwks: "{jwks_url}", algorithms: [RS256], acting_for: on_behalf_of}}
  - id: ec-bot
    jwt: {{issuer: "{EC_ISSUER}", audience: {AUDIENCE}, jwks: ec-jwks.json, algorithms: [ES256]}}
reviewers:{reviewers}  - id: erin@example.com
    groups: [sre]
    subject: 00u-erin
audit:
  file: audit.jsonl
"#,
            ci_admin = digest("test-agent-key-ci-admin"),
        ),
    )
}

struct Setup {
    up: Upstream,
    _ws: Workspace,
    _idp: Idp,
    rsa: &'static [RsaKey; 3],
    /// The SSO's signing key (published at the IdP).
    sso: EcKey,
    /// ec-bot's key (in the JWKS file).
    ec: EcKey,
    a: InProcess,
}

async fn start() -> Setup {
    let rsa = rsa_keys_async().await;
    let up = Upstream::start().await;
    let sso = EcKey::new("sso-1");
    let ec = EcKey::new("ec-file");
    let idp = Idp::start(vec![rsa[0].jwk(), rsa[1].jwk(), sso.jwk()]).await;
    let ws = Workspace::new();
    ws.write("ec-jwks.json", &jwks(&[ec.jwk()]));
    let cfg = config(&ws, &up.url(), &idp.jwks_url());
    let a = InProcess::start(&cfg).await;
    Setup {
        up,
        _ws: ws,
        _idp: idp,
        rsa,
        sso,
        ec,
        a,
    }
}

impl Setup {
    async fn get(&self, token: &str) -> AgentReply {
        agent_send(&client(), &self.a.url("/api/v1/items"), "GET", token, "").await
    }

    /// A token that must be refused `401`; the upstream never sees it.
    #[track_caller]
    fn refused(&self, r: &AgentReply, what: &str) {
        assert_eq!(r.status, 401, "{what}: {}", r.text);
        assert_eq!(r.json()["error"], "unauthenticated", "{what}: {}", r.text);
    }

    /// Sends `token` with GET /api/v1/items and asserts it is refused and nothing
    /// reached the upstream.
    async fn assert_refused(&self, token: &str, what: &str) {
        let before = self.up.count();
        let r = self.get(token).await;
        self.refused(&r, what);
        assert_eq!(self.up.count(), before, "{what}: reached the upstream");
    }

    async fn assert_passes(&self, token: &str, what: &str) {
        let r = self.get(token).await;
        assert_eq!(r.status, 200, "{what}: {}", r.text);
    }

    /// Holds `POST /api/v1/vms/vm-7/delete` sent with `token`: (the agent's task,
    /// the new approval's id).
    async fn hold(&self, token: String) -> (tokio::task::JoinHandle<AgentReply>, String) {
        let before: Vec<String> = pending(&self.a, BOB).await.iter().map(id_of).collect();
        let url = self.a.url("/api/v1/vms/vm-7/delete");
        let task =
            tokio::spawn(async move { agent_send(&client(), &url, "POST", &token, "{}").await });
        let list = wait_pending(&self.a, before.len() + 1).await;
        let id = list
            .iter()
            .map(id_of)
            .find(|i| !before.contains(i))
            .unwrap();
        (task, id)
    }

    fn sign_in(&self, email: &str) -> String {
        self.sso.sign(&sign_in(email))
    }
}

fn sign_in(email: &str) -> Value {
    json!({
        "iss": SSO,
        "aud": "airlock-admin",
        "sub": format!("00u-{email}"),
        "email": email,
        "email_verified": true,
        "iat": now(),
        "exp": now() + 600,
    })
}

// ---------------------------------------------------------------------------------
// JWT agents
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn algorithm_confusion_and_alg_spellings_are_refused() {
    let s = start().await;
    let k = &s.rsa[0];
    let c = claims("builder");
    s.assert_passes(&k.sign(&c), "the genuine token").await;

    // The RSA public key as an HMAC secret, in each PEM/DER form an attacker tries.
    for secret in [
        k.public_pem().into_bytes(),
        serde_json::to_vec(&k.jwk()).unwrap(),
    ] {
        s.assert_refused(&hs256(&k.kid, &secret, &c), "HS256 keyed with the RSA key")
            .await;
    }
    // `alg` spelled otherwise, with a real RS256 signature underneath.
    for alg in [
        "rs256", "Rs256", "RS256 ", "none", "None", "nOnE", "NONE", "",
    ] {
        let t = sign_raw_header(k, json!({"alg": alg, "kid": k.kid, "typ": "JWT"}), &c);
        s.assert_refused(&t, &format!("alg {alg:?}")).await;
    }
    // `alg` missing or not a string.
    s.assert_refused(&sign_raw_header(k, json!({"kid": k.kid}), &c), "no alg")
        .await;
    s.assert_refused(
        &sign_raw_header(k, json!({"alg": ["RS256"], "kid": k.kid}), &c),
        "alg as a list",
    )
    .await;
    // An unsigned token, and one with the signature cut off.
    s.assert_refused(&unsigned(&k.kid, &c), "alg none").await;
    let genuine = k.sign(&c);
    let cut = &genuine[..genuine.rfind('.').unwrap() + 1];
    s.assert_refused(cut, "empty signature").await;
    // A valid PS256 signature by the published key: the agent pins RS256.
    let mut h = Header::new(Algorithm::PS256);
    h.kid = Some(k.kid.clone());
    let ps = jsonwebtoken::encode(&h, &c, &rsa_enc(k)).unwrap();
    s.assert_refused(&ps, "PS256 where RS256 is pinned").await;
    // ES256 header over an RSA signature, and an RS256 header over an EC signature.
    let t = forge(
        &json!({"alg": "ES256", "kid": k.kid}).to_string(),
        &c.to_string(),
        &rsa_enc(k),
        Algorithm::RS256,
    );
    s.assert_refused(&t, "ES256 header, RSA signature").await;
    let t = forge(
        &json!({"alg": "RS256", "kid": "sso-1"}).to_string(),
        &c.to_string(),
        &ec_enc(&s.sso),
        Algorithm::ES256,
    );
    s.assert_refused(&t, "RS256 header, EC signature").await;
    // The SSO's EC key is published at the same URL: ES256 from it is not allowed for
    // the RS256-pinned agents of that issuer.
    s.assert_refused(&s.sso.sign(&c), "ES256 by another published key")
        .await;
    assert_eq!(s.up.count(), 1);
    s.a.stop().await;
}

#[tokio::test]
async fn keys_named_in_the_header_are_never_fetched_or_used() {
    let s = start().await;
    let attacker = &s.rsa[2]; // never published
    let evil = Idp::start(vec![attacker.jwk()]).await;
    let c = claims("builder");
    let tokens = [
        sign_with(attacker, &c, |h| h.jku = Some(evil.jwks_url())),
        sign_with(attacker, &c, |h| h.x5u = Some(evil.jwks_url())),
        sign_with(attacker, &c, |h| {
            h.jwk = Some(serde_json::from_value(attacker.jwk()).unwrap())
        }),
        sign_with(attacker, &c, |h| {
            h.jwk = Some(serde_json::from_value(attacker.jwk()).unwrap());
            h.kid = None;
        }),
        // A kid that is a path or a URL: only ever a name looked up in the set.
        sign_with(attacker, &c, |h| h.kid = Some("../ec-jwks.json".into())),
        sign_with(attacker, &c, |h| h.kid = Some(evil.jwks_url())),
        sign_with(attacker, &c, |h| h.kid = Some(s.rsa[0].kid.clone())),
    ];
    for (i, t) in tokens.iter().enumerate() {
        s.assert_refused(t, &format!("header-supplied key #{i}"))
            .await;
    }
    assert_eq!(
        evil.fetches(),
        0,
        "airlock fetched a URL from a token header"
    );
    s.a.stop().await;
}

#[tokio::test]
async fn kid_tricks_with_two_issuers_and_several_keys() {
    let s = start().await;
    let c = claims("builder");
    // No kid: every fitting key of the set is tried; a published key passes...
    s.assert_passes(
        &sign_with(&s.rsa[1], &c, |h| h.kid = None),
        "no kid, published key",
    )
    .await;
    // ... and an unpublished one does not.
    s.assert_refused(
        &sign_with(&s.rsa[2], &c, |h| h.kid = None),
        "no kid, unpublished key",
    )
    .await;
    // A kid naming key 1 over a signature by key 0: the kid picks, nothing else.
    s.assert_refused(
        &sign_with(&s.rsa[0], &c, |h| h.kid = Some(s.rsa[1].kid.clone())),
        "kid of another key",
    )
    .await;
    // ec-bot's issuer with ec-bot's file key naming itself passes...
    let mut ec = claims("ec-bot");
    ec["iss"] = json!(EC_ISSUER);
    s.assert_passes(&s.ec.sign(&ec), "ec-bot").await;
    // ... but the other issuer's key never signs for this one (and back).
    let mut c_ec = claims("builder");
    c_ec["iss"] = json!(EC_ISSUER);
    s.assert_refused(
        &s.rsa[0].sign(&c_ec),
        "EC issuer, RSA key of the URL issuer",
    )
    .await;
    s.assert_refused(&s.ec.sign(&c), "URL issuer, key of the file issuer")
        .await;
    s.assert_refused(
        &s.sso.sign_as("ec-file", &c),
        "URL issuer, kid of the file issuer's key",
    )
    .await;
    s.a.stop().await;
}

#[tokio::test]
async fn crit_header_is_refused() {
    let s = start().await;
    let k = &s.rsa[0];
    let c = claims("builder");
    for crit in [json!(["exp"]), json!(["b64"]), json!([]), json!("x")] {
        let t = sign_raw_header(
            k,
            json!({"alg": "RS256", "kid": k.kid, "crit": crit, "b64": true}),
            &c,
        );
        s.assert_refused(&t, &format!("crit {crit}")).await;
    }
    s.a.stop().await;
}

#[tokio::test]
async fn duplicate_keys_in_header_or_payload_never_pick_an_identity() {
    let s = start().await;
    let k = &s.rsa[0];
    let enc = rsa_enc(k);
    let exp = now() + 600;
    let hdr = format!(r#"{{"alg":"RS256","kid":"{}"}}"#, k.kid);
    let body =
        |extra: &str| format!(r#"{{"iss":"{ISSUER}","aud":"{AUDIENCE}","exp":{exp},{extra}}}"#);
    // Two `sub`s: a parser that keeps the first and one that keeps the last disagree
    // about who this is. Whatever airlock does, it is never `ci-admin` and never a
    // different agent than the one its own check read.
    let t = forge(
        &hdr,
        &body(r#""sub":"builder","sub":"ci-admin""#),
        &enc,
        Algorithm::RS256,
    );
    let r = s.get(&t).await;
    assert_ne!(r.status, 200, "two subs passed: {}", r.text);
    // Two `iss`, the second another issuer's.
    let t = forge(
        &hdr,
        &format!(
            r#"{{"iss":"{ISSUER}","iss":"{EC_ISSUER}","aud":"{AUDIENCE}","exp":{exp},"sub":"builder"}}"#
        ),
        &enc,
        Algorithm::RS256,
    );
    s.assert_refused(&t, "two iss").await;
    // Two `alg`s in the header.
    let t = forge(
        &format!(r#"{{"alg":"none","alg":"RS256","kid":"{}"}}"#, k.kid),
        &body(r#""sub":"builder""#),
        &enc,
        Algorithm::RS256,
    );
    s.assert_refused(&t, "two algs").await;
    // Two `exp`, the second long past.
    let t = forge(
        &hdr,
        &format!(
            r#"{{"iss":"{ISSUER}","aud":"{AUDIENCE}","exp":{exp},"exp":1000,"sub":"builder"}}"#
        ),
        &enc,
        Algorithm::RS256,
    );
    s.assert_refused(&t, "two exps").await;
    assert_eq!(s.up.count(), 0);
    s.a.stop().await;
}

#[tokio::test]
async fn odd_claim_types_and_values_are_refused() {
    let s = start().await;
    let k = &s.rsa[0];
    let with = |f: &dyn Fn(&mut Value)| {
        let mut c = claims("builder");
        f(&mut c);
        k.sign(&c)
    };
    // Accepted forms first: `aud` as a list that includes ours.
    s.assert_passes(
        &with(&|c| c["aud"] = json!(["other", AUDIENCE])),
        "aud list",
    )
    .await;
    let cases: Vec<(&str, String)> = vec![
        ("aud number", with(&|c| c["aud"] = json!(7))),
        ("aud object", with(&|c| c["aud"] = json!({"aud": AUDIENCE}))),
        (
            "aud list without ours",
            with(&|c| c["aud"] = json!(["other"])),
        ),
        ("aud in other case", with(&|c| c["aud"] = json!("AIRLOCK"))),
        (
            "aud missing",
            with(&|c| {
                c.as_object_mut().unwrap().remove("aud");
            }),
        ),
        (
            "iss trailing slash",
            with(&|c| c["iss"] = json!(format!("{ISSUER}/"))),
        ),
        (
            "iss in upper case",
            with(&|c| c["iss"] = json!(ISSUER.to_uppercase())),
        ),
        ("iss as a list", with(&|c| c["iss"] = json!([ISSUER]))),
        (
            "exp as a string",
            with(&|c| c["exp"] = json!((now() + 600).to_string())),
        ),
        (
            "exp missing",
            with(&|c| {
                c.as_object_mut().unwrap().remove("exp");
            }),
        ),
        ("exp past", with(&|c| c["exp"] = json!(now() - 3600))),
        ("exp negative", with(&|c| c["exp"] = json!(-1))),
        ("exp null", with(&|c| c["exp"] = Value::Null)),
        (
            "nbf far future",
            with(&|c| c["nbf"] = json!(now() + 86_400 * 365)),
        ),
        ("sub as a number", with(&|c| c["sub"] = json!(7))),
        ("sub as a list", with(&|c| c["sub"] = json!(["builder"]))),
        (
            "sub with a newline",
            with(&|c| c["sub"] = json!("builder\n")),
        ),
        ("sub other case", with(&|c| c["sub"] = json!("Builder"))),
        (
            "sub with trailing space",
            with(&|c| c["sub"] = json!("builder ")),
        ),
    ];
    for (what, t) in &cases {
        s.assert_refused(t, what).await;
    }
    // `exp` huge (past 2038 and past u64 as a float) or fractional: never a crash;
    // whatever the answer, airlock still serves the next request.
    for exp in [json!(u64::MAX), json!(1e30), json!(now() as f64 + 600.5)] {
        let t = with(&|c| c["exp"] = exp.clone());
        let r = s.get(&t).await;
        assert!(matches!(r.status, 200 | 401), "exp {exp}: {}", r.text);
    }
    // Payloads that are not objects.
    for payload in [r#"["builder"]"#, r#""builder""#, "null", "7", "{"] {
        let t = forge(
            &json!({"alg": "RS256", "kid": k.kid}).to_string(),
            payload,
            &rsa_enc(k),
            Algorithm::RS256,
        );
        s.assert_refused(&t, &format!("payload {payload}")).await;
    }
    s.assert_passes(&k.sign(&claims("builder")), "still serving")
        .await;
    s.a.stop().await;
}

#[tokio::test]
async fn token_placement_and_bearer_spelling() {
    let s = start().await;
    let t = s.rsa[0].sign(&claims("builder"));
    let c = client();
    let send = |req: reqwest::RequestBuilder| async move {
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.text().await.unwrap_or_default())
    };
    let url = s.a.url("/api/v1/items");
    // The scheme is case-insensitive (RFC 9110) and spaces around the token are not
    // part of it.
    for v in [
        format!("Bearer {t}"),
        format!("bearer {t}"),
        format!("BEARER {t}"),
        format!("Bearer   {t}  "),
    ] {
        let (st, body) = send(c.get(&url).header("authorization", v.clone())).await;
        assert_eq!(st, 200, "{v:?}: {body}");
    }
    // Elsewhere: not a credential.
    let before = s.up.count();
    for req in [
        c.get(format!("{url}?access_token={t}")),
        c.get(&url).header("x-api-key", t.clone()),
        c.get(&url).header("authorization", format!("Basic {t}")),
        c.get(&url).header("authorization", format!("JWT {t}")),
        c.get(&url).header("authorization", t.clone()),
        c.get(&url)
            .header("proxy-authorization", format!("Bearer {t}")),
        c.get(&url).header("cookie", format!("access_token={t}")),
    ] {
        let (st, body) = send(req).await;
        assert_eq!(st, 401, "{body}");
    }
    assert_eq!(s.up.count(), before);

    // A token far over the size limit: refused quickly, no crash, still serving.
    let huge = format!("{}.{}.{}", "e".repeat(40_000), "e".repeat(40_000), "e");
    let started = std::time::Instant::now();
    let (st, _) = send(c.get(&url).bearer_auth(&huge)).await;
    assert!(matches!(st, 400 | 401 | 431), "huge token: {st}");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    // Just under the header limit but with a deeply nested payload.
    let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
    let t2 = forge(
        &json!({"alg": "RS256", "kid": s.rsa[0].kid}).to_string(),
        &deep,
        &rsa_enc(&s.rsa[0]),
        Algorithm::RS256,
    );
    let (st, _) = send(c.get(&url).bearer_auth(&t2)).await;
    assert!(matches!(st, 400 | 401 | 431), "deep payload: {st}");
    s.assert_passes(&t, "still serving").await;
    s.a.stop().await;
}

#[tokio::test]
async fn two_authorization_headers_naming_different_agents() {
    let s = start().await;
    let jwt = s.rsa[0].sign(&claims("builder"));
    let url = s.a.url("/api/v1/vms/vm-7/delete");
    // A key for deploy-bot and a JWT for builder: one request, two agents.
    let mut headers = reqwest::header::HeaderMap::new();
    headers.append(
        "authorization",
        format!("Bearer {AGENT_KEY}").parse().unwrap(),
    );
    headers.append("authorization", format!("Bearer {jwt}").parse().unwrap());
    let r = client()
        .post(&url)
        .headers(headers)
        .body("{}")
        .send()
        .await
        .unwrap();
    let st = r.status().as_u16();
    let body = r.text().await.unwrap_or_default();
    assert_eq!(st, 401, "{body}");
    assert!(pending(&s.a, BOB).await.is_empty());
    assert_eq!(s.up.count(), 0);
    s.a.stop().await;
}

// ---------------------------------------------------------------------------------
// Fleets
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn a_fleet_member_may_not_take_a_configured_agents_name_in_any_form() {
    let s = start().await;
    let k = &s.rsa[0];
    s.assert_passes(&k.sign(&claims("ci-runner-7")), "a fleet member")
        .await;
    for sub in [
        "ci-admin",
        "ci-Admin",
        "ci-ADMIN",
        "ci-ａｄｍｉｎ",    // fullwidth
        "ci-admin\u{200b}", // zero-width space
        "ci-\u{200d}admin", // zero-width joiner
        "ci-admin\u{feff}", // BOM
        "ci-ad\u{00AD}min", // soft hyphen
    ] {
        s.assert_refused(&k.sign(&claims(sub)), &format!("fleet sub {sub:?}"))
            .await;
    }
    s.a.stop().await;
}

// ---------------------------------------------------------------------------------
// Acting for a person
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn the_person_acted_for_may_not_approve_in_any_spelling() {
    let s = start().await;
    for person in [
        "ALICE@example.com",
        "ａｌｉｃｅ@example.com",
        "alice\u{200b}@example.com",
        "Alice@EXAMPLE.com",
    ] {
        let mut c = claims(person);
        c["act"] = json!({"sub": "assistant"});
        let (task, id) = s.hold(s.rsa[0].sign(&c)).await;
        for token in [ALICE.to_string(), s.sign_in("alice@example.com")] {
            let (st, v) = vote(&s.a, &token, &id, "approve", None).await;
            assert_eq!(st, 403, "{person:?}: {v}");
            assert_eq!(v["error"], "self_approval", "{person:?}: {v}");
        }
        let (st, v) = vote(&s.a, BOB, &id, "deny", None).await;
        assert_eq!(st, 200, "{v}");
        assert_eq!(task.await.unwrap().status, 403);
    }
    // With the configured claim too.
    let mut c = claims("helper");
    c["on_behalf_of"] = json!("ＡＬＩＣＥ@example.com");
    let (task, id) = s.hold(s.rsa[0].sign(&c)).await;
    let (st, v) = vote(&s.a, ALICE, &id, "approve", None).await;
    assert_eq!(
        (st, v["error"].clone()),
        (403, json!("self_approval")),
        "{v}"
    );
    vote(&s.a, BOB, &id, "deny", None).await;
    task.await.unwrap();
    s.a.stop().await;
}

#[tokio::test]
async fn the_person_named_by_subject_may_not_approve_signed_in_by_email() {
    let s = start().await;
    // The IdP's `sub` for erin, who signs in to the admin API by email.
    let mut c = claims("00u-erin");
    c["act"] = json!({"sub": "assistant"});
    let (task, id) = s.hold(s.rsa[0].sign(&c)).await;
    let erin = s.sign_in("erin@example.com");
    let (st, v) = vote(&s.a, &erin, &id, "approve", None).await;
    assert_eq!(st, 403, "{v}");
    assert_eq!(v["error"], "self_approval");
    let (st, v) = vote(&s.a, CAROL, &id, "approve", None).await;
    assert_eq!(st, 200, "{v}");
    task.await.unwrap().assert_forwarded_on(&id);
    s.a.stop().await;
}

#[tokio::test]
async fn act_of_the_wrong_shape_is_refused_and_nested_actors_are_not_the_agent() {
    let s = start().await;
    let k = &s.rsa[0];
    for act in [
        json!("assistant"),
        json!(["assistant"]),
        json!(7),
        json!(true),
        json!({"sub": ["assistant"]}),
        json!({"sub": "assistant\n"}),
    ] {
        let mut c = claims("alice@example.com");
        c["act"] = act.clone();
        s.assert_refused(&k.sign(&c), &format!("act {act}")).await;
    }
    // The agent is the current actor only: an earlier (nested) actor named
    // `assistant` does not make the outer one (`mallory`) the assistant.
    let mut c = claims("alice@example.com");
    c["act"] = json!({"sub": "mallory", "act": {"sub": "assistant"}});
    s.assert_refused(&k.sign(&c), "nested actor").await;
    // `act` with no `sub` at the top: no person, refused rather than guessed.
    let mut c = claims("x");
    c.as_object_mut().unwrap().remove("sub");
    c["act"] = json!({"sub": "assistant"});
    s.assert_refused(&k.sign(&c), "act without sub").await;
    s.a.stop().await;
}

#[tokio::test]
async fn an_agent_token_naming_a_reviewer_as_the_agent_cannot_get_them_to_approve() {
    let s = start().await;
    // `sub` is bob; no agent is bob, so builder's check (sub must be `builder`) fails.
    s.assert_refused(&s.rsa[0].sign(&claims("bob@example.com")), "sub bob")
        .await;
    // Builder acting for bob: bob may not approve; carol may.
    let mut c = claims("bob@example.com");
    c["act"] = json!({"sub": "assistant"});
    let (task, id) = s.hold(s.rsa[0].sign(&c)).await;
    let (st, v) = vote(&s.a, BOB, &id, "approve", None).await;
    assert_eq!(
        (st, v["error"].clone()),
        (403, json!("self_approval")),
        "{v}"
    );
    let (st, v) = vote(&s.a, CAROL, &id, "approve", None).await;
    assert_eq!(st, 200, "{v}");
    task.await.unwrap().assert_forwarded_on(&id);
    s.a.stop().await;
}

// ---------------------------------------------------------------------------------
// OIDC reviewers
// ---------------------------------------------------------------------------------

async fn admin_list(s: &Setup, token: &str) -> (u16, Value) {
    let r = client()
        .get(s.a.admin_url("/api/v1/approvals?status=pending"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn agent_tokens_are_refused_by_the_admin_api_and_reviewer_tokens_by_the_proxy() {
    let s = start().await;
    // builder's own token at the admin API.
    let (st, v) = admin_list(&s, &s.rsa[0].sign(&claims("builder"))).await;
    assert_eq!(
        (st, v["error"].clone()),
        (403, json!("agent_credential")),
        "{v}"
    );
    // A fleet member's token that also names a reviewer by email.
    let mut c = claims("ci-9");
    c["email"] = json!("bob@example.com");
    c["email_verified"] = json!(true);
    let (st, v) = admin_list(&s, &s.rsa[0].sign(&c)).await;
    assert_eq!(
        (st, v["error"].clone()),
        (403, json!("agent_credential")),
        "{v}"
    );
    // The agents' issuer with the admin audience and bob's email: not the SSO issuer.
    let mut c = claims("bob");
    c["aud"] = json!("airlock-admin");
    c["email"] = json!("bob@example.com");
    let (st, v) = admin_list(&s, &s.rsa[0].sign(&c)).await;
    assert_eq!(st, 401, "{v}");
    // The SSO issuer and key with the agents' audience: not an admin token.
    let mut c = sign_in("bob@example.com");
    c["aud"] = json!(AUDIENCE);
    let (st, v) = admin_list(&s, &s.sso.sign(&c)).await;
    assert_eq!(st, 401, "{v}");
    // bob's sign-in at the proxy: no agent.
    s.assert_refused(&s.sign_in("bob@example.com"), "reviewer token at the proxy")
        .await;
    // A reviewer's API token at the proxy.
    s.assert_refused(BOB, "reviewer API token at the proxy")
        .await;
    s.a.stop().await;
}

#[tokio::test]
async fn unverified_emails_are_refused_however_the_idp_writes_it() {
    let s = start().await;
    let (st, _) = admin_list(&s, &s.sign_in("bob@example.com")).await;
    assert_eq!(st, 200);
    for verified in [
        json!(false),
        json!("false"),
        json!("False"),
        json!(0),
        json!(null),
        json!("no"),
    ] {
        let mut c = sign_in("bob@example.com");
        c["email_verified"] = verified.clone();
        let (st, v) = admin_list(&s, &s.sso.sign(&c)).await;
        assert_eq!(st, 401, "email_verified {verified}: {v}");
    }
    // `"true"` as a string is what the same IdPs write for a verified email.
    let mut c = sign_in("bob@example.com");
    c["email_verified"] = json!("true");
    let (st, v) = admin_list(&s, &s.sso.sign(&c)).await;
    assert_eq!(st, 200, "{v}");
    s.a.stop().await;
}

#[tokio::test]
async fn a_look_alike_email_never_signs_in_as_a_reviewer() {
    let s = start().await;
    // ASCII case is the same login.
    let (st, _) = admin_list(&s, &s.sign_in("BOB@example.com")).await;
    assert_eq!(st, 200);
    for email in [
        "ｂｏｂ@example.com",
        "bob\u{200b}@example.com",
        "\u{200b}bob@example.com",
        "bob@example.com\u{feff}",
        "bo\u{00AD}b@example.com",
        " bob@example.com",
        "bob@example.com ",
        "bob@ｅxample.com",
        "ᴮᴼᴮ@example.com",
    ] {
        let (st, v) = admin_list(&s, &s.sign_in(email)).await;
        assert_eq!(st, 401, "{email:?} signed in: {v}");
    }
    // And cannot vote.
    let (task, id) = agent_hold(&s.a, "POST", "/api/v1/vms/vm-7/delete", "{}").await;
    let (st, v) = vote(&s.a, &s.sign_in("ｂｏｂ@example.com"), &id, "approve", None).await;
    assert_eq!(st, 401, "{v}");
    vote(&s.a, BOB, &id, "deny", None).await;
    task.await.unwrap();
    s.a.stop().await;
}

#[tokio::test]
async fn groups_from_tokens_are_exact_and_a_string_is_one_group() {
    let s = start().await;
    let (task, id) = agent_hold(&s.a, "POST", "/api/v1/db/orders/drop", "{}").await;
    // dave has no groups; `DBA`, ` dba` and `dba\u200b` are not `dba`.
    for groups in [
        json!(["DBA"]),
        json!([" dba"]),
        json!(["dba\u{200b}"]),
        json!("DBA"),
    ] {
        let mut c = sign_in("dave@example.com");
        c["groups"] = groups.clone();
        let (st, v) = vote(&s.a, &s.sso.sign(&c), &id, "approve", None).await;
        assert_eq!(st, 403, "groups {groups}: {v}");
        assert_eq!(v["error"], "not_eligible", "groups {groups}: {v}");
    }
    // A nested list or object is no group at all.
    let mut c = sign_in("dave@example.com");
    c["groups"] = json!([["dba"], {"dba": true}]);
    let (st, _) = vote(&s.a, &s.sso.sign(&c), &id, "approve", None).await;
    assert_eq!(st, 403);
    // A single group written as a string is that group (Entra and others do this).
    let mut c = sign_in("dave@example.com");
    c["groups"] = json!("dba");
    let (st, v) = vote(&s.a, &s.sso.sign(&c), &id, "approve", None).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["votes"][0]["reviewer"], "dave@example.com", "{v}");
    task.await.unwrap().assert_forwarded_on(&id);
    s.a.stop().await;
}

// ---------------------------------------------------------------------------------
// mTLS and TLS
// ---------------------------------------------------------------------------------

mod tls {
    use super::*;
    use common::pki::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    pub struct TlsSetup {
        pub up: Upstream,
        _ws: Workspace,
        _idp: Idp,
        pub a: InProcess,
        pub ca: Ca,
        pub rsa: &'static [RsaKey; 3],
    }

    impl TlsSetup {
        pub fn client(&self, id: Option<&Leaf>) -> std::sync::Arc<rustls::ClientConfig> {
            client_config(&self.ca.pem, id, &[b"h2", b"http/1.1"])
        }

        /// GET /api/v1/x presenting `cert` (and `bearer`): the status, or None when
        /// the handshake or connection failed.
        pub async fn get(&self, cert: Option<&Leaf>, bearer: Option<&str>) -> Option<u16> {
            let auth = bearer.map(|b| format!("Bearer {b}"));
            let headers: Vec<(&str, &str)> = auth
                .as_deref()
                .map(|a| vec![("authorization", a)])
                .unwrap_or_default();
            tls_send(
                self.a.proxy,
                self.client(cert),
                tls_request("GET", "/api/v1/x", &headers),
            )
            .await
            .ok()
            .map(|r| r.status)
        }
    }

    /// TLS with client certificates from a fresh CA; agents `reporter` (subject),
    /// `crawler` (DNS SAN) and the JWT agent `builder` besides the key agents.
    pub async fn setup() -> TlsSetup {
        let rsa = rsa_keys_async().await;
        let idp = Idp::start(vec![rsa[0].jwk()]).await;
        let up = Upstream::start().await;
        let ws = Workspace::new();
        ws.write(
            "rules/r.yaml",
            "rules:\n  - name: change-things\n    when: {method: POST, path: /v1/things/**}\n    then: approve\n    approval: {approvers: [group:sre], timeout: 1h}\n",
        );
        let certs = ws.path().join("certs");
        std::fs::create_dir_all(&certs).unwrap();
        let ca = Ca::new("airlock agents CA");
        ca.server(&[]).write(&certs, "airlock");
        ca.write(&certs, "agents-ca.pem");
        let cfg = ws.standard_config(
            &up.url(),
            "tls:\n  cert: certs/airlock.pem\n  key: certs/airlock-key.pem\n  client_ca: certs/agents-ca.pem\n",
        );
        let text = std::fs::read_to_string(&cfg).unwrap().replacen(
            "agents:\n",
            &format!(
                "agents:\n  - id: reporter\n    mtls: {{subject: \"CN=reporter,O=Example\"}}\n  - id: crawler\n    mtls: {{dns: crawler.agents.example.com}}\n  - id: builder\n    jwt: {{issuer: \"{ISSUER}\", audience: {AUDIENCE}, jwks: \"{}\", algorithms: [RS256]}}\n",
                idp.jwks_url()
            ),
            1,
        );
        std::fs::write(&cfg, text).unwrap();
        let a = InProcess::start(&cfg).await;
        TlsSetup {
            up,
            _ws: ws,
            _idp: idp,
            a,
            ca,
            rsa,
        }
    }

    #[tokio::test]
    async fn hostile_client_certificates_name_no_agent() {
        let s = setup().await;
        let good = s.ca.client(&ClientId {
            cn: Some("reporter"),
            org: Some("Example"),
            ..Default::default()
        });
        assert_eq!(s.get(Some(&good), None).await, Some(200));
        let crawler = s.ca.client(&ClientId {
            cn: Some("x"),
            dns: &["crawler.agents.example.com"],
            ..Default::default()
        });
        assert_eq!(s.get(Some(&crawler), None).await, Some(200));
        let seen = s.up.count();

        // Verified certificates whose names only look like an agent's: 401.
        let lookalikes = [
            // A CN that spells the whole subject: escaped, so not it.
            ClientId {
                cn: Some("reporter,O=Example"),
                ..Default::default()
            },
            ClientId {
                cn: Some("reporter"),
                org: Some("Example+CN=reporter"),
                ..Default::default()
            },
            ClientId {
                cn: Some("reporter\\"),
                org: Some("Example"),
                ..Default::default()
            },
            ClientId {
                cn: Some("Reporter"),
                org: Some("Example"),
                ..Default::default()
            },
            // A wildcard SAN is a name, not a pattern.
            ClientId {
                cn: Some("x"),
                dns: &["*.agents.example.com"],
                ..Default::default()
            },
            ClientId {
                cn: Some("x"),
                dns: &["crawler.agents.example.com.evil.com"],
                ..Default::default()
            },
        ];
        for id in &lookalikes {
            let leaf = s.ca.client(id);
            assert_eq!(
                s.get(Some(&leaf), None).await,
                Some(401),
                "cn {:?} org {:?} dns {:?}",
                id.cn,
                id.org,
                id.dns
            );
        }

        // Certificates the handshake must refuse (or that name no agent): never 200.
        let other_root = Ca::new("another CA");
        let foreign_inter = other_root.intermediate("foreign intermediate");
        let own_inter = s.ca.intermediate("unsent intermediate");
        let reporter = ClientId {
            cn: Some("reporter"),
            org: Some("Example"),
            ..Default::default()
        };
        let refused = [
            ("the CA's own certificate", s.ca.as_leaf()),
            ("a server certificate (serverAuth only)", s.ca.server(&[])),
            (
                "from an intermediate of another CA",
                foreign_inter.client(&reporter),
            ),
            (
                "from an intermediate never sent",
                own_inter.client(&reporter),
            ),
            ("another CA's leaf", other_root.client(&reporter)),
        ];
        for (what, leaf) in &refused {
            let got = s.get(Some(leaf), None).await;
            assert!(got.is_none() || got == Some(401), "{what}: {got:?}");
        }
        assert_eq!(
            s.up.count(),
            seen,
            "a refused certificate reached the upstream"
        );
        s.a.stop().await;
    }

    #[tokio::test]
    async fn a_certificate_and_a_credential_naming_different_agents_are_refused() {
        let s = setup().await;
        let reporter = s.ca.client(&ClientId {
            cn: Some("reporter"),
            org: Some("Example"),
            ..Default::default()
        });
        let jwt = s.rsa[0].sign(&claims("builder"));
        assert_eq!(s.get(None, Some(&jwt)).await, Some(200));
        let seen = s.up.count();
        assert_eq!(s.get(Some(&reporter), Some(&jwt)).await, Some(401));
        assert_eq!(s.get(Some(&reporter), Some(AGENT_KEY)).await, Some(401));
        // An invalid JWT beside a good certificate is not ignored.
        let bad = s.rsa[2].sign(&claims("reporter"));
        assert_eq!(s.get(Some(&reporter), Some(&bad)).await, Some(401));
        assert_eq!(s.up.count(), seen);
        s.a.stop().await;
    }

    #[tokio::test]
    async fn hostile_tls_clients_do_not_get_through_or_stall_others() {
        let s = setup().await;
        let reporter = s.ca.client(&ClientId {
            cn: Some("reporter"),
            org: Some("Example"),
            ..Default::default()
        });
        // Plain HTTP to the TLS port: no HTTP answer, nothing forwarded.
        let mut tcp = tokio::net::TcpStream::connect(s.a.proxy).await.unwrap();
        tcp.write_all(
            format!("GET /api/v1/x HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {AGENT_KEY}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(DEADLINE, tcp.read_to_end(&mut buf)).await;
        assert!(
            !String::from_utf8_lossy(&buf).contains("200 OK"),
            "plain HTTP was served"
        );

        // Slow handshakes (connections that send nothing, or half a ClientHello)
        // do not hold up a real client.
        let mut idle = Vec::new();
        for i in 0..20 {
            let mut t = tokio::net::TcpStream::connect(s.a.proxy).await.unwrap();
            if i % 2 == 0 {
                t.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
                    .await
                    .unwrap();
            }
            idle.push(t);
        }
        let started = std::time::Instant::now();
        assert_eq!(s.get(Some(&reporter), None).await, Some(200));
        assert!(started.elapsed() < std::time::Duration::from_secs(5));

        // ALPN h2 chosen, then an HTTP/1.1 request: airlock reads the preface, not
        // the ALPN result, and serves it as HTTP/1.1 (debatable, tolerated): the
        // same identity checks apply, so without a credential it is 401, nothing
        // forwarded; with the reporter's certificate it is the reporter's.
        let seen = s.up.count();
        let h1_over_h2 = |id: Option<&Leaf>| {
            let cfg = client_config(&s.ca.pem, id, &[b"h2"]);
            async move {
                let mut tls = tls_connect(s.a.proxy, cfg).await.unwrap();
                assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
                let _ = tls
                    .write_all(
                        b"GET /api/v1/x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
                    )
                    .await;
                let mut buf = Vec::new();
                let _ = tokio::time::timeout(DEADLINE, tls.read_to_end(&mut buf)).await;
                String::from_utf8_lossy(&buf).to_string()
            }
        };
        let answer = h1_over_h2(None).await;
        assert!(!answer.contains("200 OK"), "{answer}");
        assert_eq!(s.up.count(), seen);
        let answer = h1_over_h2(Some(&reporter)).await;
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 200"),
            "{answer}"
        );

        // The stalled connections gone, airlock still serves.
        drop(idle);
        assert_eq!(s.get(Some(&reporter), None).await, Some(200));
        s.a.stop().await;
    }
}
