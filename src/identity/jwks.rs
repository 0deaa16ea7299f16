//! The signing keys of a token issuer (a JWKS), cached per source.
//!
//! A source is a JWKS file or URL (`agents[].jwt.jwks`, `admin.oidc.jwks`). Keys are
//! loaded on first use, never at config load, and:
//!
//! - a URL is fetched with rustls, trusting the system roots plus the configured `ca`,
//!   following no redirects, within [`FETCH_TIMEOUT`], reading at most [`MAX_JWKS_BYTES`];
//!   a file is read whole (at most [`MAX_JWKS_BYTES`]);
//! - the set is kept for [`KEYS_TTL`], then fetched again on next use (keeping the old
//!   keys when that fetch fails);
//! - a token naming a `kid` the set lacks (key rotation) makes the source be fetched
//!   again, at most once per [`URL_REFETCH`] for a URL and [`FILE_REFETCH`] for a file,
//!   so a stream of tokens with random `kid`s cannot turn airlock into a load
//!   generator against the IdP;
//! - a fetch that fails makes the source rest for [`FAILED_BACKOFF`] (no fetch at all);
//! - one fetch at a time per source: concurrent lookups wait for the one under way (at
//!   most [`FETCH_TIMEOUT`] and a second) and answer from what it brought.
//!
//! A key is only ever used for an algorithm it fits: RSA keys for `RS*`/`PS*`, P-256
//! for `ES256`, P-384 for `ES384`, Ed25519 for `EdDSA`; a JWK whose `alg` is set must
//! name the token's algorithm, one whose `use` is set must be `sig`. Symmetric keys
//! (`kty: oct`) are never used, and HMAC algorithms never get this far.
//! Signatures are checked by `jsonwebtoken`; nothing here does cryptography itself.

use crate::config::KeySource;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How long a fetched key set is used before it is fetched again.
pub const KEYS_TTL: Duration = Duration::from_secs(3600);
/// The least time between fetches of a URL caused by an unknown `kid`.
pub const URL_REFETCH: Duration = Duration::from_secs(5);
/// The least time between reads of a file caused by an unknown `kid`.
pub const FILE_REFETCH: Duration = Duration::from_secs(1);
/// How long a source whose fetch failed is left alone.
pub const FAILED_BACKOFF: Duration = Duration::from_secs(30);
/// How long one fetch may take.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest key set read.
pub const MAX_JWKS_BYTES: usize = 256 * 1024;
/// The most keys kept from one set.
const MAX_KEYS: usize = 64;

/// Why no key was found for a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The set (fetched) holds no key with that `kid` fitting the algorithm.
    #[error("unknown key")]
    Unknown,
    /// The keys could not be fetched (the source is down or resting).
    #[error("keys unavailable")]
    Unavailable,
}

/// One usable key of a set.
#[derive(Clone)]
struct Key {
    kid: Option<String>,
    jwk: Jwk,
    decoding: DecodingKey,
}

/// What is known of the source.
#[derive(Default)]
struct State {
    keys: Vec<Key>,
    fetched: Option<Instant>,
    /// The last fetch caused by an unknown `kid`.
    refetched: Option<Instant>,
    /// The last fetch that failed.
    failed: Option<Instant>,
}

/// The cached keys of one source (file or URL, with its CA).
pub struct KeyCache {
    source: KeySource,
    ca: Option<PathBuf>,
    /// Built on the first fetch (loading the system roots is I/O).
    client: OnceLock<Result<reqwest::Client, String>>,
    /// Never held across an await.
    state: std::sync::Mutex<State>,
    /// Held by the one fetch under way.
    fetching: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for KeyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyCache")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// Whether `jwk` may verify a token signed with `alg`.
pub fn fits(jwk: &Jwk, alg: Algorithm) -> bool {
    if let Some(ka) = jwk.common.key_algorithm {
        // Both print as the JOSE registry names them (`RS256`, `ES256`, `EdDSA`).
        if ka.to_string() != format!("{alg:?}") {
            return false;
        }
    }
    if matches!(&jwk.common.public_key_use, Some(u) if *u != PublicKeyUse::Signature) {
        return false;
    }
    match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => matches!(
            alg,
            Algorithm::RS256
                | Algorithm::RS384
                | Algorithm::RS512
                | Algorithm::PS256
                | Algorithm::PS384
                | Algorithm::PS512
        ),
        AlgorithmParameters::EllipticCurve(p) => matches!(
            (&p.curve, alg),
            (EllipticCurve::P256, Algorithm::ES256) | (EllipticCurve::P384, Algorithm::ES384)
        ),
        AlgorithmParameters::OctetKeyPair(p) => {
            p.curve == EllipticCurve::Ed25519 && alg == Algorithm::EdDSA
        }
        AlgorithmParameters::OctetKey(_) => false,
    }
}

/// The usable keys of a JWKS document: each key parsed on its own (one odd key does
/// not spoil the set); symmetric keys and keys that do not parse are left out.
fn parse_set(body: &[u8]) -> Result<Vec<Key>, String> {
    #[derive(serde::Deserialize)]
    struct Set {
        keys: Vec<serde_json::Value>,
    }
    let set: Set = serde_json::from_slice(body).map_err(|e| format!("not a JWKS: {e}"))?;
    let mut keys = Vec::new();
    for v in set.keys.into_iter().take(MAX_KEYS) {
        let Ok(jwk) = serde_json::from_value::<Jwk>(v) else {
            continue;
        };
        if matches!(jwk.algorithm, AlgorithmParameters::OctetKey(_)) {
            continue;
        }
        let Ok(decoding) = DecodingKey::from_jwk(&jwk) else {
            continue;
        };
        keys.push(Key {
            kid: jwk.common.key_id.clone(),
            jwk,
            decoding,
        });
    }
    Ok(keys)
}

impl KeyCache {
    /// A cache for `source`; nothing is read until a key is asked for.
    pub fn new(source: &KeySource, ca: Option<&Path>) -> KeyCache {
        KeyCache {
            source: source.clone(),
            ca: ca.map(Path::to_path_buf),
            client: OnceLock::new(),
            state: std::sync::Mutex::new(State::default()),
            fetching: tokio::sync::Mutex::new(()),
        }
    }

    /// Whether this cache reads `source` trusting `ca` (caches are shared by checks
    /// that name the same keys).
    pub fn is_for(&self, source: &KeySource, ca: Option<&Path>) -> bool {
        self.source == *source && self.ca.as_deref() == ca
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        match self.state.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    fn refetch_every(&self) -> Duration {
        match self.source {
            KeySource::File(_) => FILE_REFETCH,
            KeySource::Url(_) => URL_REFETCH,
        }
    }

    /// The keys that may verify a token signed with `alg` naming `kid` (every fitting
    /// key when the token names none), fetching the set when it is stale or, rate
    /// limited, when it has no such key.
    pub async fn keys(
        &self,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Result<Vec<DecodingKey>, KeyError> {
        let pick = |s: &State| -> Vec<DecodingKey> {
            s.keys
                .iter()
                .filter(|k| kid.is_none() || k.kid.as_deref() == kid)
                .filter(|k| fits(&k.jwk, alg))
                .map(|k| k.decoding.clone())
                .collect()
        };
        // Taken before looking: a fetch that ends after this brought what we need.
        let asked = Instant::now();
        let fetch = {
            let mut s = self.state();
            let stale = s.fetched.is_none_or(|t| t.elapsed() > KEYS_TTL);
            let resting = s.failed.is_some_and(|t| t.elapsed() < FAILED_BACKOFF);
            let found = pick(&s);
            if !found.is_empty() && (!stale || resting) {
                return Ok(found);
            }
            if resting {
                return Err(KeyError::Unavailable);
            }
            if !found.is_empty() || stale {
                true
            } else if s
                .refetched
                .is_none_or(|t| t.elapsed() >= self.refetch_every())
            {
                s.refetched = Some(asked);
                true
            } else {
                false
            }
        };
        if fetch {
            if let Ok(_guard) =
                tokio::time::timeout(FETCH_TIMEOUT + Duration::from_secs(1), self.fetching.lock())
                    .await
            {
                let done_meanwhile = {
                    let s = self.state();
                    s.fetched.is_some_and(|t| t >= asked) || s.failed.is_some_and(|t| t >= asked)
                };
                if !done_meanwhile {
                    let got = self.fetch().await;
                    let mut s = self.state();
                    match got {
                        Ok(keys) => {
                            s.keys = keys;
                            s.fetched = Some(Instant::now());
                            s.failed = None;
                        }
                        Err(e) => {
                            tracing::warn!(source = ?self.source, error = %e, "token signing keys could not be fetched");
                            s.failed = Some(Instant::now());
                        }
                    }
                }
            }
        }
        let s = self.state();
        let found = pick(&s);
        if !found.is_empty() {
            Ok(found)
        } else if s.fetched.is_none() {
            Err(KeyError::Unavailable)
        } else {
            Err(KeyError::Unknown)
        }
    }

    async fn fetch(&self) -> Result<Vec<Key>, String> {
        let body = match &self.source {
            KeySource::File(p) => {
                let b = tokio::fs::read(p)
                    .await
                    .map_err(|e| format!("{}: {e}", p.display()))?;
                if b.len() > MAX_JWKS_BYTES {
                    return Err(format!(
                        "{}: larger than {MAX_JWKS_BYTES} bytes",
                        p.display()
                    ));
                }
                b
            }
            KeySource::Url(u) => self.get(u).await?,
        };
        parse_set(&body)
    }

    fn client(&self) -> Result<&reqwest::Client, String> {
        self.client
            .get_or_init(|| {
                let mut b = reqwest::Client::builder()
                    .connect_timeout(FETCH_TIMEOUT)
                    .timeout(FETCH_TIMEOUT)
                    .user_agent(concat!("airlock/", env!("CARGO_PKG_VERSION")))
                    .redirect(reqwest::redirect::Policy::none());
                if let Some(ca) = &self.ca {
                    let pem = std::fs::read(ca).map_err(|e| format!("{}: {e}", ca.display()))?;
                    let certs = reqwest::Certificate::from_pem_bundle(&pem)
                        .map_err(|e| format!("{}: {e}", ca.display()))?;
                    for c in certs {
                        b = b.add_root_certificate(c);
                    }
                }
                b.build().map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(Clone::clone)
    }

    async fn get(&self, url: &str) -> Result<Vec<u8>, String> {
        let client = self.client()?;
        let mut r = client
            .get(url)
            .header("accept", "application/json")
            .send()
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        if !r.status().is_success() {
            return Err(format!("{url}: HTTP {}", r.status()));
        }
        if r.content_length()
            .is_some_and(|n| n > MAX_JWKS_BYTES as u64)
        {
            return Err(format!("{url}: larger than {MAX_JWKS_BYTES} bytes"));
        }
        let mut body = Vec::new();
        while let Some(chunk) = r.chunk().await.map_err(|e| format!("{url}: {e}"))? {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err(format!("{url}: larger than {MAX_JWKS_BYTES} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_fit_their_algorithms_only() {
        let rsa: Jwk = serde_json::from_value(serde_json::json!({
            "kty": "RSA", "kid": "r", "n": "sXch", "e": "AQAB"
        }))
        .unwrap();
        assert!(fits(&rsa, Algorithm::RS256));
        assert!(fits(&rsa, Algorithm::PS384));
        assert!(!fits(&rsa, Algorithm::ES256));
        assert!(!fits(&rsa, Algorithm::HS256));
        let pinned: Jwk = serde_json::from_value(serde_json::json!({
            "kty": "RSA", "kid": "r", "alg": "RS384", "n": "sXch", "e": "AQAB"
        }))
        .unwrap();
        assert!(!fits(&pinned, Algorithm::RS256));
        assert!(fits(&pinned, Algorithm::RS384));
        let ec: Jwk = serde_json::from_value(serde_json::json!({
            "kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"
        }))
        .unwrap();
        assert!(fits(&ec, Algorithm::ES256));
        assert!(!fits(&ec, Algorithm::ES384));
        assert!(!fits(&ec, Algorithm::RS256));
        let oct: Jwk = serde_json::from_value(serde_json::json!({
            "kty": "oct", "k": "c2VjcmV0"
        }))
        .unwrap();
        assert!(!fits(&oct, Algorithm::HS256));
    }

    #[test]
    fn one_odd_key_does_not_spoil_the_set() {
        let body = serde_json::json!({"keys": [
            {"kty": "weird"},
            {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
            {"kty": "EC", "crv": "P-256", "kid": "ec",
             "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
             "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}
        ]});
        let keys = parse_set(body.to_string().as_bytes()).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].kid.as_deref(), Some("ec"));
        assert!(parse_set(b"[]").is_err());
    }
}
