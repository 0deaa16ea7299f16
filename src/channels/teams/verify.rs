//! Who is calling `POST /teams/actions`: the `Authorization: Bearer` JWT Bot Framework
//! signs, verified against its OpenID metadata (`jwks_uri`) or a configured JWKS.
//!
//! Accepted only when every check passes: `RS256` (never `none`, never an HMAC
//! algorithm, whatever the header says), a `kid` the key set holds (endorsed for the
//! activity's channel when the key lists endorsements), issuer
//! `https://api.botframework.com`, audience the bot's app id, `exp`/`nbf` within five
//! minutes of skew, and the `serviceurl` claim equal to the activity's `serviceUrl`.
//! Signatures are checked by `jsonwebtoken`; nothing here does cryptography itself.
//!
//! The key set is cached per metadata/JWKS URL (a day at most) and fetched again when
//! a token names an unknown `kid`, at most once a minute, so a stream of bogus tokens
//! cannot turn airlock into a load generator.

use crate::config::TeamsBot;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

/// The issuer of the tokens Bot Framework sends bots.
pub const ISSUER: &str = "https://api.botframework.com";
/// Allowed clock skew for `exp` and `nbf`.
pub const SKEW: Duration = Duration::from_secs(300);
/// How long a fetched key set is trusted before it is fetched again.
const KEYS_TTL: Duration = Duration::from_secs(24 * 3600);
/// The least time between fetches caused by an unknown `kid`.
const UNKNOWN_KID_REFETCH: Duration = Duration::from_secs(60);

/// Why a token was refused (said to the caller; never a token or key).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

/// What a verified token says.
#[derive(Debug, Clone)]
pub struct Verified {
    /// The signing key's id.
    pub kid: String,
    /// The token's issuer.
    pub iss: String,
    /// The token's `serviceurl` claim.
    pub service_url: String,
}

/// The claims read from a token (the registered ones are checked by `jsonwebtoken`).
#[derive(Deserialize)]
struct Claims {
    iss: String,
    #[serde(default)]
    serviceurl: Option<String>,
}

/// One signing key of the set.
#[derive(Clone)]
struct Key {
    decoding: DecodingKey,
    /// The channels the key is endorsed for (`msteams`, …); empty: not stated.
    endorsements: Vec<String>,
}

/// A JWKS document.
#[derive(Deserialize)]
struct Jwks {
    keys: Vec<RawJwk>,
}

/// One JWK as published (only RSA keys are used).
#[derive(Deserialize)]
struct RawJwk {
    kty: Option<String>,
    kid: Option<String>,
    n: Option<String>,
    e: Option<String>,
    #[serde(default)]
    endorsements: Vec<String>,
}

/// OpenID provider metadata (only `jwks_uri` is read).
#[derive(Deserialize)]
struct Metadata {
    jwks_uri: String,
}

/// The cached key set of one metadata/JWKS source.
#[derive(Default)]
struct Cache {
    keys: HashMap<String, Key>,
    fetched: Option<Instant>,
    /// The last fetch caused by an unknown `kid`.
    refetched: Option<Instant>,
    /// The last fetch that failed: no other is tried for [`FAILED_BACKOFF`].
    failed: Option<Instant>,
}

/// How long a failed fetch of the keys stops others (the source is down).
const FAILED_BACKOFF: Duration = Duration::from_secs(30);
/// How long one fetch of the metadata or the keys may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// The signing keys published at one source, fetched and cached.
pub struct KeySet {
    openid_metadata: String,
    jwks: Option<String>,
    client: reqwest::Client,
    /// Never held across an await.
    cache: std::sync::Mutex<Cache>,
    /// Held by the one fetch under way; other callbacks wait for it (bounded) instead
    /// of fetching again.
    fetching: Mutex<()>,
}

impl KeySet {
    /// The process's key set for `bot`'s metadata/JWKS URLs (shared by every callback,
    /// and by reloads that keep the same URLs).
    pub fn of(bot: &TeamsBot) -> Arc<KeySet> {
        static SETS: OnceLock<std::sync::Mutex<HashMap<String, Arc<KeySet>>>> = OnceLock::new();
        let name = format!(
            "{} {}",
            bot.openid_metadata,
            bot.jwks.as_deref().unwrap_or("")
        );
        let sets = SETS.get_or_init(Default::default);
        let mut sets = match sets.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        sets.entry(name)
            .or_insert_with(|| {
                Arc::new(KeySet {
                    openid_metadata: bot.openid_metadata.clone(),
                    jwks: bot.jwks.clone(),
                    client: crate::channels::http_client(),
                    cache: std::sync::Mutex::new(Cache::default()),
                    fetching: Mutex::new(()),
                })
            })
            .clone()
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        match self.cache.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// The key `kid`, fetching the set when it is stale, or (at most once a minute)
    /// when it does not hold `kid`. A source that failed is left alone for
    /// [`FAILED_BACKOFF`]; while one fetch is under way, other callbacks wait for it
    /// (at most about [`FETCH_TIMEOUT`]) and use what it brought.
    async fn key(&self, kid: &str) -> Result<Key, Refused> {
        let now = Instant::now();
        let unavailable = || Refused("signing keys unavailable: the key source is down".into());
        let fetch = {
            let mut c = self.cache();
            let stale = c.fetched.is_none_or(|t| t.elapsed() > KEYS_TTL);
            let known = c.keys.get(kid).cloned();
            let resting = c.failed.is_some_and(|t| t.elapsed() < FAILED_BACKOFF);
            match known {
                Some(k) if !stale || resting => return Ok(k),
                Some(_) => true,
                None if resting => return Err(unavailable()),
                None if stale => true,
                None if c
                    .refetched
                    .is_none_or(|t| t.elapsed() >= UNKNOWN_KID_REFETCH) =>
                {
                    c.refetched = Some(now);
                    true
                }
                None => false,
            }
        };
        if fetch {
            // One fetch at a time; a callback waits for the one under way at most as
            // long as a fetch may take, then answers from what it brought.
            let waited = Instant::now();
            if let Ok(_guard) =
                tokio::time::timeout(FETCH_TIMEOUT + Duration::from_secs(1), self.fetching.lock())
                    .await
            {
                let done_meanwhile = {
                    let c = self.cache();
                    c.fetched.is_some_and(|t| t >= waited) || c.failed.is_some_and(|t| t >= waited)
                };
                if !done_meanwhile {
                    let got = self.fetch().await;
                    let mut c = self.cache();
                    match got {
                        Ok(keys) => {
                            c.keys = keys;
                            c.fetched = Some(Instant::now());
                            c.failed = None;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "Bot Framework signing keys could not be fetched");
                            c.failed = Some(Instant::now());
                        }
                    }
                }
            }
        }
        let c = self.cache();
        match c.keys.get(kid) {
            Some(k) => Ok(k.clone()),
            None if c.keys.is_empty() => Err(unavailable()),
            None => Err(Refused(format!("unknown signing key {kid:?}"))),
        }
    }

    async fn fetch(&self) -> Result<HashMap<String, Key>, String> {
        let jwks_uri = match &self.jwks {
            Some(u) => u.clone(),
            None => {
                let m: Metadata = self.get_json(&self.openid_metadata).await?;
                m.jwks_uri
            }
        };
        let set: Jwks = self.get_json(&jwks_uri).await?;
        let mut keys = HashMap::new();
        for k in set.keys {
            if k.kty.as_deref() != Some("RSA") {
                continue;
            }
            let (Some(kid), Some(n), Some(e)) = (k.kid, k.n, k.e) else {
                continue;
            };
            let Ok(decoding) = DecodingKey::from_rsa_components(&n, &e) else {
                continue;
            };
            keys.insert(
                kid,
                Key {
                    decoding,
                    endorsements: k.endorsements,
                },
            );
        }
        Ok(keys)
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, url: &str) -> Result<T, String> {
        let r = self
            .client
            .get(url)
            .timeout(FETCH_TIMEOUT)
            .send()
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        if !r.status().is_success() {
            return Err(format!("{url}: HTTP {}", r.status()));
        }
        r.json::<T>().await.map_err(|e| format!("{url}: {e}"))
    }

    /// Verifies `token` for `bot`, sent with an activity from `service_url` on
    /// `channel_id`.
    pub async fn verify(
        &self,
        bot: &TeamsBot,
        token: &str,
        service_url: &str,
        channel_id: &str,
    ) -> Result<Verified, Refused> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| Refused(format!("not a signed JWT: {e}")))?;
        if header.alg != Algorithm::RS256 {
            return Err(Refused(format!(
                "algorithm {:?} is not accepted (RS256 only)",
                header.alg
            )));
        }
        let kid = header
            .kid
            .ok_or_else(|| Refused("the token names no signing key (kid)".into()))?;
        let key = self.key(&kid).await?;
        if !key.endorsements.is_empty() && !key.endorsements.iter().any(|e| e == channel_id) {
            return Err(Refused(format!(
                "signing key {kid:?} is not endorsed for channel {channel_id:?}"
            )));
        }
        let mut v = Validation::new(Algorithm::RS256);
        v.algorithms = vec![Algorithm::RS256];
        v.leeway = SKEW.as_secs();
        v.validate_exp = true;
        v.validate_nbf = true;
        v.set_issuer(&[ISSUER]);
        v.set_audience(&[&bot.app_id]);
        v.set_required_spec_claims(&["exp", "iss", "aud"]);
        let data = jsonwebtoken::decode::<Claims>(token, &key.decoding, &v)
            .map_err(|e| Refused(format!("token refused: {e}")))?;
        let claimed = data
            .claims
            .serviceurl
            .ok_or_else(|| Refused("the token has no serviceurl claim".into()))?;
        if claimed.trim_end_matches('/') != service_url.trim_end_matches('/') {
            return Err(Refused(
                "the token's serviceurl is not the activity's serviceUrl".into(),
            ));
        }
        Ok(Verified {
            kid,
            iss: data.claims.iss,
            service_url: claimed,
        })
    }
}
