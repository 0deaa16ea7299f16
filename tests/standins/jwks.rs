//! A stand-in identity provider for JWT agents and OIDC reviewers: its signing keys
//! published as a JWKS on one `127.0.0.1:0` listener (`GET /jwks`, counted), keys
//! made at test time (RSA with the `rsa` crate, P-256 with rcgen), and tokens minted
//! with `jsonwebtoken::encode`, as an IdP would sign them. Also hostile tokens: `alg:
//! none`, and HS256 keyed with the RSA public key.
#![allow(dead_code)]

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rsa::pkcs1::{EncodeRsaPrivateKey, EncodeRsaPublicKey};
use rsa::traits::PublicKeyParts;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};

/// The issuer agents' tokens come from.
pub const ISSUER: &str = "https://login.example.com";
/// The audience airlock's checks expect.
pub const AUDIENCE: &str = "airlock";

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// Seconds since the epoch.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Valid claims for `sub`: this issuer and audience, issued now, valid 10 minutes.
pub fn claims(sub: &str) -> Value {
    json!({
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": sub,
        "iat": now(),
        "nbf": now() - 5,
        "exp": now() + 600,
    })
}

/// An RSA signing key with its id.
pub struct RsaKey {
    pub kid: String,
    pub private: rsa::RsaPrivateKey,
}

impl RsaKey {
    /// The public key as a JWK.
    pub fn jwk(&self) -> Value {
        let public = self.private.to_public_key();
        json!({
            "kty": "RSA",
            "use": "sig",
            "kid": self.kid,
            "n": b64(&public.n().to_bytes_be()),
            "e": b64(&public.e().to_bytes_be()),
        })
    }

    /// The public key as PKCS#1 PEM (what an attacker signing HS256 with it uses).
    pub fn public_pem(&self) -> String {
        self.private
            .to_public_key()
            .to_pkcs1_pem(rsa::pkcs1::LineEnding::LF)
            .unwrap()
    }

    /// `claims` signed RS256 with this key, naming `kid`.
    pub fn sign_as(&self, kid: &str, claims: &Value) -> String {
        let der = self.private.to_pkcs1_der().unwrap();
        let mut h = Header::new(Algorithm::RS256);
        h.kid = Some(kid.to_string());
        jsonwebtoken::encode(&h, claims, &EncodingKey::from_rsa_der(der.as_bytes())).unwrap()
    }

    /// `claims` signed RS256 with this key.
    pub fn sign(&self, claims: &Value) -> String {
        self.sign_as(&self.kid, claims)
    }
}

/// Three 2048-bit RSA keys, made once per test binary (slow in debug builds): `[0]`
/// published at start, `[1]` rotated in, `[2]` never published.
pub fn rsa_keys() -> &'static [RsaKey; 3] {
    static KEYS: OnceLock<[RsaKey; 3]> = OnceLock::new();
    KEYS.get_or_init(|| {
        let make = |kid: &str| RsaKey {
            kid: kid.to_string(),
            private: rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).unwrap(),
        };
        [make("rsa-1"), make("rsa-2"), make("rsa-unpublished")]
    })
}

/// [`rsa_keys`] made off the runtime's threads.
pub async fn rsa_keys_async() -> &'static [RsaKey; 3] {
    tokio::task::spawn_blocking(rsa_keys).await.unwrap()
}

/// A P-256 signing key with its id.
pub struct EcKey {
    pub kid: String,
    pub pair: rcgen::KeyPair,
}

impl EcKey {
    pub fn new(kid: &str) -> EcKey {
        EcKey {
            kid: kid.to_string(),
            pair: rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap(),
        }
    }

    /// The public key as a JWK.
    pub fn jwk(&self) -> Value {
        let raw = self.pair.public_key_raw();
        assert_eq!(raw.len(), 65);
        json!({
            "kty": "EC",
            "crv": "P-256",
            "use": "sig",
            "kid": self.kid,
            "x": b64(&raw[1..33]),
            "y": b64(&raw[33..65]),
        })
    }

    /// `claims` signed ES256 with this key, naming `kid`.
    pub fn sign_as(&self, kid: &str, claims: &Value) -> String {
        let mut h = Header::new(Algorithm::ES256);
        h.kid = Some(kid.to_string());
        jsonwebtoken::encode(
            &h,
            claims,
            &EncodingKey::from_ec_der(&self.pair.serialize_der()),
        )
        .unwrap()
    }

    /// `claims` signed ES256 with this key.
    pub fn sign(&self, claims: &Value) -> String {
        self.sign_as(&self.kid, claims)
    }
}

/// A JWKS document holding `keys`.
pub fn jwks(keys: &[Value]) -> String {
    json!({ "keys": keys }).to_string()
}

/// An unsigned token (`alg: none`).
pub fn unsigned(kid: &str, claims: &Value) -> String {
    let h = json!({"alg": "none", "typ": "JWT", "kid": kid});
    format!(
        "{}.{}.",
        b64(h.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    )
}

/// `claims` signed HS256 with `secret` (an RSA public key's PEM, say) naming `kid`.
pub fn hs256(kid: &str, secret: &[u8], claims: &Value) -> String {
    let mut h = Header::new(Algorithm::HS256);
    h.kid = Some(kid.to_string());
    jsonwebtoken::encode(&h, claims, &EncodingKey::from_secret(secret)).unwrap()
}

#[derive(Default)]
struct Inner {
    published: Vec<Value>,
    fetches: usize,
}

/// The running stand-in.
#[derive(Clone)]
pub struct Idp {
    pub addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
}

impl Idp {
    /// Starts the stand-in publishing `keys`.
    pub async fn start(keys: Vec<Value>) -> Idp {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let me = Idp {
            addr,
            inner: Arc::new(Mutex::new(Inner {
                published: keys,
                fetches: 0,
            })),
        };
        let app = Router::new()
            .route("/jwks", get(serve_jwks))
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

    /// Where the keys are published.
    pub fn jwks_url(&self) -> String {
        format!("http://{}/jwks", self.addr)
    }

    /// Publishes `keys` instead (a key rotation).
    pub fn publish(&self, keys: Vec<Value>) {
        self.inner.lock().unwrap().published = keys;
    }

    /// How many times the keys were fetched.
    pub fn fetches(&self) -> usize {
        self.inner.lock().unwrap().fetches
    }
}

async fn serve_jwks(State(idp): State<Idp>) -> Response {
    let keys = {
        let mut g = idp.inner.lock().unwrap();
        g.fetches += 1;
        g.published.clone()
    };
    (
        [(http::header::CONTENT_TYPE, "application/json")],
        jwks(&keys),
    )
        .into_response()
}
