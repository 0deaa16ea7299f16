//! A stand-in for the Microsoft side of Teams, speaking the real wire formats on one
//! `127.0.0.1:0` listener (airlock is pointed at it only through its configured URLs):
//!
//! - the Microsoft identity platform token endpoint,
//!   `POST /{tenant}/oauth2/v2.0/token` (form: client credentials for the Bot
//!   Framework scope) → `{"token_type":"Bearer","expires_in":…,"access_token":…}`;
//! - the Bot Connector, `POST /v3/conversations/{id}/activities` and
//!   `PUT /v3/conversations/{id}/activities/{activityId}`, which insist on a bearer
//!   token the token endpoint issued and an activity carrying an Adaptive Card 1.5,
//!   and record every call;
//! - Bot Framework's OpenID metadata (`/v1/.well-known/openidconfiguration`) and
//!   signing keys (`/v1/.well-known/keys`: RSA keys generated here, exported as JWK
//!   `n`/`e`, endorsed for `msteams`), with which tests sign callback tokens (RS256);
//! - a Workflows webhook (`POST /workflows/{id}`), which insists on the message shape
//!   Workflows takes and records each card.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::Router;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rsa::pkcs1::{EncodeRsaPrivateKey, EncodeRsaPublicKey};
use rsa::traits::PublicKeyParts;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};

pub const APP_ID: &str = "8c2d6f8e-1b7a-4b55-9d0e-7e3f2a1c0b11";
pub const APP_PASSWORD: &str = "app-secret-~7Q8";
pub const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
pub const CONVERSATION: &str = "19:approvals0a1b2c@thread.tacv2";
pub const ISSUER: &str = "https://api.botframework.com";

/// An RSA signing key with its id.
pub struct SigningKey {
    pub kid: String,
    pub private: rsa::RsaPrivateKey,
}

impl SigningKey {
    /// The key as a JWK (public part), endorsed for Teams.
    pub fn jwk(&self) -> Value {
        let b64 = |b: Vec<u8>| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let public = self.private.to_public_key();
        json!({
            "kty": "RSA",
            "use": "sig",
            "kid": self.kid,
            "n": b64(public.n().to_bytes_be()),
            "e": b64(public.e().to_bytes_be()),
            "endorsements": ["msteams"],
        })
    }

    /// The public key as PKCS#1 PEM (what an attacker signing HS256 with it would use).
    pub fn public_pem(&self) -> String {
        self.private
            .to_public_key()
            .to_pkcs1_pem(rsa::pkcs1::LineEnding::LF)
            .unwrap()
    }

    /// `claims` signed RS256 with this key.
    pub fn sign(&self, claims: &Value) -> String {
        let der = self.private.to_pkcs1_der().unwrap();
        let mut h = Header::new(Algorithm::RS256);
        h.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&h, claims, &EncodingKey::from_rsa_der(der.as_bytes())).unwrap()
    }
}

/// Three 2048-bit keys, generated once per test binary (generation is slow in debug
/// builds): `[0]` published at start, `[1]` the rotated-in key, `[2]` never published.
pub fn keys() -> &'static [SigningKey; 3] {
    static KEYS: OnceLock<[SigningKey; 3]> = OnceLock::new();
    KEYS.get_or_init(|| {
        let make = |kid: &str| SigningKey {
            kid: kid.to_string(),
            private: rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).unwrap(),
        };
        [
            make("bf-key-1"),
            make("bf-key-2"),
            make("bf-key-unpublished"),
        ]
    })
}

/// One call the Bot Connector received.
#[derive(Debug, Clone)]
pub struct ConnectorCall {
    pub method: &'static str,
    pub conversation: String,
    pub activity_id: String,
    pub activity: Value,
}

#[derive(Default)]
struct Inner {
    issued: HashSet<String>,
    token_requests: usize,
    calls: Vec<ConnectorCall>,
    activities: HashMap<String, Value>,
    next_id: u64,
    published: Vec<Value>,
    jwks_fetches: usize,
    metadata_fetches: usize,
    workflows: Vec<Value>,
    /// Answer the connector with this status instead (a Teams outage).
    connector_down: Option<u16>,
}

/// The running stand-in.
#[derive(Clone)]
pub struct Microsoft {
    pub addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
}

impl Microsoft {
    /// Starts the stand-in with key `[0]` published.
    pub async fn start() -> Microsoft {
        let keys = tokio::task::spawn_blocking(keys).await.unwrap();
        let inner = Arc::new(Mutex::new(Inner {
            published: vec![keys[0].jwk()],
            next_id: 1_700_000_000_000,
            ..Inner::default()
        }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let me = Microsoft { addr, inner };
        let app = Router::new()
            .route("/{tenant}/oauth2/v2.0/token", post(token))
            .route(
                "/amer/v3/conversations/{conv}/activities",
                post(post_activity),
            )
            .route(
                "/amer/v3/conversations/{conv}/activities/{id}",
                put(put_activity),
            )
            .route("/v1/.well-known/openidconfiguration", get(metadata))
            .route("/v1/.well-known/keys", get(jwks))
            .route("/workflows/{id}", post(workflow))
            .with_state(me.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let svc = hyper_util::service::TowerToHyperService::new(app.clone());
                tokio::spawn(async move {
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
                });
            }
        });
        me
    }

    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The service URL activities come from (the connector's base).
    pub fn service_url(&self) -> String {
        format!("{}/amer/", self.base())
    }

    pub fn workflow_url(&self) -> String {
        format!("{}/workflows/approvals-7c1f", self.base())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap()
    }

    pub fn calls(&self) -> Vec<ConnectorCall> {
        self.lock().calls.clone()
    }

    pub fn workflow_cards(&self) -> Vec<Value> {
        self.lock().workflows.clone()
    }

    pub fn token_requests(&self) -> usize {
        self.lock().token_requests
    }

    pub fn jwks_fetches(&self) -> usize {
        self.lock().jwks_fetches
    }

    pub fn metadata_fetches(&self) -> usize {
        self.lock().metadata_fetches
    }

    /// Publishes `keys` instead of the current set (a key rotation).
    pub fn publish(&self, keys: &[&SigningKey]) {
        self.lock().published = keys.iter().map(|k| k.jwk()).collect();
    }

    /// Makes the connector answer `status` (or work again with `None`).
    pub fn connector_down(&self, status: Option<u16>) {
        self.lock().connector_down = status;
    }
}

/// A JSON answer.
fn reply(status: StatusCode, v: Value) -> Response {
    (
        status,
        [("content-type", "application/json; charset=utf-8")],
        v.to_string(),
    )
        .into_response()
}

/// A JSON request body, or the `400` the real services answer.
fn parse(body: &Bytes) -> Result<Value, Box<Response>> {
    serde_json::from_slice(body).map_err(|_| {
        Box::new(reply(
            StatusCode::BAD_REQUEST,
            json!({"error": {"code": "BadSyntax", "message": "Invalid JSON"}}),
        ))
    })
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    reply(
        status,
        json!({"error": error, "error_description": description}),
    )
}

/// The v2.0 token endpoint, client credentials grant.
async fn token(
    State(ms): State<Microsoft>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if headers.get("content-type").and_then(|v| v.to_str().ok())
        != Some("application/x-www-form-urlencoded")
    {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "AADSTS900144: form body expected",
        );
    }
    let form: HashMap<String, String> = form_urlencoded::parse(&body).into_owned().collect();
    ms.lock().token_requests += 1;
    if tenant != TENANT {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "AADSTS90002: Tenant not found.",
        );
    }
    let f = |k: &str| form.get(k).map(String::as_str);
    if f("grant_type") != Some("client_credentials") {
        return oauth_error(StatusCode::BAD_REQUEST, "unsupported_grant_type", "");
    }
    if f("scope") != Some("https://api.botframework.com/.default") {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_scope", "AADSTS70011");
    }
    if f("client_id") != Some(APP_ID) || f("client_secret") != Some(APP_PASSWORD) {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "AADSTS7000215: Invalid client secret provided.",
        );
    }
    let token = format!("eyJ0eXAi.stand-in.{}", uuid::Uuid::new_v4().simple());
    ms.lock().issued.insert(token.clone());
    reply(
        StatusCode::OK,
        json!({
            "token_type": "Bearer",
            "expires_in": 3599,
            "ext_expires_in": 3599,
            "access_token": token,
        }),
    )
}

/// What the connector refuses: a token it did not issue, or an activity that is not a
/// message carrying one Adaptive Card 1.5.
fn connector_check(ms: &Microsoft, headers: &HeaderMap, activity: &Value) -> Option<Response> {
    if let Some(s) = ms.lock().connector_down {
        return Some(StatusCode::from_u16(s).unwrap().into_response());
    }
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if !bearer.is_some_and(|t| ms.lock().issued.contains(t)) {
        return Some(reply(
            StatusCode::UNAUTHORIZED,
            json!({"message": "Authorization has been denied for this request."}),
        ));
    }
    let att = &activity["attachments"];
    let ok = activity["type"] == "message"
        && att.as_array().is_some_and(|a| a.len() == 1)
        && att[0]["contentType"] == "application/vnd.microsoft.card.adaptive"
        && att[0]["content"]["type"] == "AdaptiveCard"
        && att[0]["content"]["version"] == "1.5"
        && att[0]["content"]["body"].is_array();
    if !ok {
        return Some(reply(
            StatusCode::BAD_REQUEST,
            json!({"error": {"code": "BadArgument", "message": "Unknown activity"}}),
        ));
    }
    None
}

async fn post_activity(
    State(ms): State<Microsoft>,
    Path(conv): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let activity = match parse(&body) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    if let Some(r) = connector_check(&ms, &headers, &activity) {
        return r;
    }
    if conv != CONVERSATION {
        return reply(
            StatusCode::NOT_FOUND,
            json!({"error": {"code": "ConversationNotFound"}}),
        );
    }
    let mut g = ms.lock();
    g.next_id += 1;
    let id = g.next_id.to_string();
    g.activities.insert(id.clone(), activity.clone());
    g.calls.push(ConnectorCall {
        method: "POST",
        conversation: conv,
        activity_id: id.clone(),
        activity,
    });
    reply(StatusCode::CREATED, json!({"id": id}))
}

async fn put_activity(
    State(ms): State<Microsoft>,
    Path((conv, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let activity = match parse(&body) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    if let Some(r) = connector_check(&ms, &headers, &activity) {
        return r;
    }
    let mut g = ms.lock();
    if conv != CONVERSATION || !g.activities.contains_key(&id) {
        return reply(
            StatusCode::NOT_FOUND,
            json!({"error": {"code": "ActivityNotFoundInConversation"}}),
        );
    }
    g.activities.insert(id.clone(), activity.clone());
    g.calls.push(ConnectorCall {
        method: "PUT",
        conversation: conv,
        activity_id: id.clone(),
        activity,
    });
    reply(StatusCode::OK, json!({"id": id}))
}

async fn metadata(State(ms): State<Microsoft>) -> Response {
    ms.lock().metadata_fetches += 1;
    reply(
        StatusCode::OK,
        json!({
            "issuer": ISSUER,
            "authorization_endpoint": "https://invalid.botframework.com",
            "jwks_uri": format!("{}/v1/.well-known/keys", ms.base()),
            "id_token_signing_alg_values_supported": ["RS256"],
            "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        }),
    )
}

async fn jwks(State(ms): State<Microsoft>) -> Response {
    let keys = {
        let mut g = ms.lock();
        g.jwks_fetches += 1;
        g.published.clone()
    };
    reply(StatusCode::OK, json!({"keys": keys}))
}

async fn workflow(State(ms): State<Microsoft>, body: Bytes) -> Response {
    let message = match parse(&body) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let att = &message["attachments"];
    let ok = message["type"] == "message"
        && att[0]["contentType"] == "application/vnd.microsoft.card.adaptive"
        && att[0]["content"]["type"] == "AdaptiveCard"
        && att[0].get("contentUrl").is_some();
    if !ok {
        return (StatusCode::BAD_REQUEST, "Invalid request body").into_response();
    }
    ms.lock().workflows.push(att[0]["content"].clone());
    StatusCode::ACCEPTED.into_response()
}

/// Claims Bot Framework puts in the token it sends a bot, valid now.
pub fn claims(service_url: &str) -> Value {
    let now = chrono::Utc::now().timestamp();
    json!({
        "iss": ISSUER,
        "aud": APP_ID,
        "serviceurl": service_url,
        "nbf": now - 10,
        "exp": now + 3600,
        "iat": now - 10,
    })
}

/// An invoke activity for a click on `verb` of the card for `approval`, by the user
/// with AAD object id `aad`, with `reason` typed in the card's input.
pub fn invoke(
    service_url: &str,
    aad: &str,
    tenant: &str,
    verb: &str,
    approval: &str,
    reason: Option<&str>,
) -> Value {
    let mut data = json!({"approval": approval});
    if let Some(r) = reason {
        data["reason"] = json!(r);
    }
    json!({
        "type": "invoke",
        "name": "adaptiveCard/action",
        "id": format!("f:{}", uuid::Uuid::new_v4().simple()),
        "timestamp": chrono::Utc::now().to_rfc3339(),
        "serviceUrl": service_url,
        "channelId": "msteams",
        "from": {"id": format!("29:1{aad}"), "name": "Reviewer", "aadObjectId": aad},
        "conversation": {
            "isGroup": true,
            "conversationType": "channel",
            "tenantId": tenant,
            "id": format!("{CONVERSATION};messageid=1700000000001"),
        },
        "recipient": {"id": format!("28:{APP_ID}"), "name": "airlock"},
        "channelData": {"tenant": {"id": tenant}, "channel": {"id": CONVERSATION}},
        "value": {
            "action": {"type": "Action.Execute", "verb": verb, "data": data},
            "trigger": "manual",
        },
    })
}
