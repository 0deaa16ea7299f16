//! Agents identified by a bearer JWT (`agents[].jwt`): the signature checked against
//! the issuer's keys ([`super::jwks`]), `iss`, `aud`, `exp` and `nbf` with a small
//! leeway, the algorithm pinned per agent (never `none`, never HMAC), the agent named
//! by a configured claim (one entry may match a fleet by pattern), and the person it
//! acts for read from RFC 8693 `act`/`may_act` or a configured claim. Reviewers'
//! OIDC tokens (`admin.oidc`) are checked the same way ([`Oidc`]).
//!
//! The unverified `iss` is read only to pick the agents whose issuer it names; nothing
//! else in a token is believed before its signature and claims are checked. Reasons
//! for refusing a token are short and static; a token is never logged.

use super::jwks::{KeyCache, KeyError};
use super::verified::Verified;
use super::{AuthError, AuthKind, Caller};
use crate::config::{Agent, JwtCheck, OidcConfig};
use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde_json::{Map, Value};
use std::sync::Arc;

/// The longest token looked at.
const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// The longest agent id or person a token may name.
const MAX_NAME_CHARS: usize = 256;

/// What a token's header and payload say before anything is checked.
#[derive(Debug)]
pub struct Unverified {
    pub alg: Algorithm,
    pub kid: Option<String>,
    /// The claimed issuer, used only to pick which checks to run.
    pub iss: Option<String>,
}

fn segment(s: &str) -> Result<Map<String, Value>, &'static str> {
    let b = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| "malformed")?;
    serde_json::from_slice(&b).map_err(|_| "malformed")
}

/// Reads a token's header and (unverified) issuer: `none` and HMAC algorithms are
/// refused here, before any key is looked up.
pub fn peek(token: &str) -> Result<Unverified, &'static str> {
    use std::str::FromStr;
    if token.len() > MAX_TOKEN_BYTES {
        return Err("malformed");
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(_sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("malformed");
    };
    let header = segment(h)?;
    let alg = header
        .get("alg")
        .and_then(Value::as_str)
        .ok_or("malformed")?;
    let alg = Algorithm::from_str(alg).map_err(|_| "algorithm not allowed")?;
    if matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
        return Err("algorithm not allowed");
    }
    // RFC 7515 4.1.11: a token naming header extensions that must be understood
    // (`crit`) is refused, since none are (jsonwebtoken would silently ignore them,
    // `b64: false` among them).
    if header.contains_key("crit") {
        return Err("malformed");
    }
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(k)) => Some(k.clone()),
        Some(_) => return Err("malformed"),
    };
    let payload = segment(p)?;
    let iss = payload
        .get("iss")
        .and_then(Value::as_str)
        .map(str::to_string);
    Ok(Unverified { alg, kid, iss })
}

/// Checks `token` (already [`peek`]ed) against `check` with keys from `keys`: the
/// algorithm pinned, the signature, `iss`, `aud`, `exp` (required) and `nbf`, with
/// the check's leeway. Returns the verified claims.
pub async fn verify(
    check: &JwtCheck,
    keys: &KeyCache,
    token: &str,
    head: &Unverified,
) -> Result<Map<String, Value>, &'static str> {
    if !check.algorithms.contains(&head.alg) {
        return Err("algorithm not allowed");
    }
    let candidates = keys
        .keys(head.kid.as_deref(), head.alg)
        .await
        .map_err(|e| match e {
            KeyError::Unknown => "unknown key",
            KeyError::Unavailable => "keys unavailable",
        })?;
    let mut v = Validation::new(head.alg);
    v.algorithms = vec![head.alg];
    v.leeway = check.leeway.as_secs();
    v.validate_exp = true;
    v.validate_nbf = true;
    v.set_issuer(&[&check.issuer]);
    v.set_audience(&check.audience);
    v.set_required_spec_claims(&["exp", "iss", "aud"]);
    for key in candidates {
        match jsonwebtoken::decode::<Map<String, Value>>(token, &key, &v) {
            Ok(data) => return Ok(data.claims),
            Err(e) if *e.kind() == ErrorKind::InvalidSignature => continue,
            Err(e) => {
                return Err(match e.kind() {
                    ErrorKind::ExpiredSignature => "expired",
                    ErrorKind::ImmatureSignature => "not yet valid",
                    ErrorKind::InvalidAudience => "wrong audience",
                    ErrorKind::InvalidIssuer => "wrong issuer",
                    ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => {
                        "algorithm not allowed"
                    }
                    ErrorKind::MissingRequiredClaim(_) => "missing claim",
                    _ => "malformed",
                })
            }
        }
    }
    Err("bad signature")
}

/// Until when (Unix seconds) a verified token stays valid: its `exp` plus the leeway
/// the check allows (`exp` is required, so a token without one never verifies).
fn valid_until(claims: &Map<String, Value>, leeway: std::time::Duration) -> u64 {
    let exp = claims.get("exp").and_then(Value::as_f64).unwrap_or(0.0);
    if !exp.is_finite() || exp <= 0.0 {
        return 0;
    }
    (exp.floor() as u64).saturating_add(leeway.as_secs())
}

/// A name read from a verified token: a non-empty string of printable characters,
/// not too long.
fn name(v: &Value) -> Result<Option<String>, &'static str> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) if s.trim().is_empty() => Ok(None),
        Value::String(s)
            if s.chars().count() <= MAX_NAME_CHARS && !s.chars().any(char::is_control) =>
        {
            Ok(Some(s.clone()))
        }
        _ => Err("malformed"),
    }
}

/// The key cache for `check`, shared with earlier checks naming the same keys.
fn cache_for(caches: &mut Vec<Arc<KeyCache>>, check: &JwtCheck) -> Arc<KeyCache> {
    if let Some(c) = caches
        .iter()
        .find(|c| c.is_for(&check.jwks, check.ca.as_deref()))
    {
        return c.clone();
    }
    let c = Arc::new(KeyCache::new(&check.jwks, check.ca.as_deref()));
    caches.push(c.clone());
    c
}

/// The JWT agents of one configuration, with their issuers' key caches.
#[derive(Debug, Clone, Default)]
pub struct JwtAgents {
    agents: Vec<(Agent, Arc<KeyCache>)>,
    /// Every configured agent id: a fleet member may not take one of them.
    ids: Vec<String>,
    /// Tokens that verified, until they expire.
    verified: Arc<Verified>,
}

impl JwtAgents {
    pub fn new(agents: &[Agent]) -> JwtAgents {
        let mut caches = Vec::new();
        JwtAgents {
            verified: Arc::default(),
            ids: agents.iter().map(|a| a.id.clone()).collect(),
            agents: agents
                .iter()
                .filter_map(|a| {
                    let j = a.jwt.as_ref()?;
                    Some((a.clone(), cache_for(&mut caches, &j.check)))
                })
                .collect(),
        }
    }

    /// Whether any agent is identified by a JWT.
    pub fn configured(&self) -> bool {
        !self.agents.is_empty()
    }

    /// The agent a bearer token names, or why it names none. Every agent whose issuer
    /// the token claims is tried in config order; the first whose check passes and
    /// whose `match` the identity claim fits is the caller.
    pub async fn identify(&self, token: &str) -> Result<Caller, AuthError> {
        if let Some(c) = self.verified.get(token) {
            return Ok(c);
        }
        let head = peek(token).map_err(AuthError::Token)?;
        let iss = head
            .iss
            .as_deref()
            .ok_or(AuthError::Token("wrong issuer"))?;
        let mut first_error = None;
        for (a, keys) in &self.agents {
            let Some(j) = a.jwt.as_ref() else { continue };
            if j.check.issuer != iss {
                continue;
            }
            let mut until = 0;
            let found = match verify(&j.check, keys, token, &head).await {
                Ok(claims) => {
                    until = valid_until(&claims, j.check.leeway);
                    identity(a, &claims)
                }
                Err(e) => Err(e),
            };
            // A fleet member named like another configured agent would pass for it
            // in rules: never.
            let found = found.and_then(|c| {
                let taken = j.fleet && self.ids.iter().any(|id| super::same_identity(id, &c.id));
                if taken {
                    Err("no matching agent")
                } else {
                    Ok(c)
                }
            });
            match found {
                Ok(c) => {
                    self.verified.put(token, &c, until);
                    return Ok(c);
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        Err(AuthError::Token(first_error.unwrap_or("wrong issuer")))
    }

    /// The caller a rule test names by id: a member of a fleet (`match: re:…`) whose
    /// pattern the id matches.
    pub fn named(&self, id: &str) -> Option<Caller> {
        let (a, _) = self.agents.iter().find(|(a, _)| {
            a.jwt
                .as_ref()
                .is_some_and(|j| j.fleet && j.matches.matches(id))
        })?;
        Some(Caller {
            id: id.to_string(),
            ..Caller::agent(a, AuthKind::Jwt)
        })
    }
}

/// The caller a verified token names for agent `a`, if it is that agent: the person
/// acted for from the first `acting_for` claim present (for RFC 8693 `act`/`may_act`
/// the token's `sub` is the person and the object names the acting agent; nested
/// actors are earlier ones and are not read), then the identity claim (from that
/// object, or the token) matched against the agent's `match`.
fn identity(a: &Agent, claims: &Map<String, Value>) -> Result<Caller, &'static str> {
    let Some(j) = a.jwt.as_ref() else {
        return Err("no matching agent");
    };
    let mut actor = claims;
    let mut person = None;
    for claim in &j.acting_for {
        let Some(v) = claims.get(claim) else { continue };
        if claim == "act" || claim == "may_act" {
            let Value::Object(obj) = v else {
                return Err("malformed");
            };
            let subject = claims.get("sub").ok_or("malformed")?;
            person = Some(name(subject)?.ok_or("malformed")?);
            actor = obj;
            break;
        }
        if let Some(p) = name(v)? {
            person = Some(p);
            break;
        }
    }
    let value = actor
        .get(&j.claim)
        .map(name)
        .transpose()?
        .flatten()
        .ok_or("no matching agent")?;
    if !j.matches.matches(&value) {
        return Err("no matching agent");
    }
    let id = if j.fleet { value } else { a.id.clone() };
    Ok(Caller {
        id,
        acting_for: person,
        ..Caller::agent(a, AuthKind::Jwt)
    })
}

/// Reviewers' OIDC bearer tokens (`admin.oidc`), with the issuer's key cache.
#[derive(Debug)]
pub struct Oidc {
    cfg: OidcConfig,
    keys: KeyCache,
}

/// Who an OIDC token names: the configured claim's value and the groups it lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OidcPerson {
    pub name: String,
    pub groups: Vec<String>,
}

impl Oidc {
    pub fn new(cfg: &OidcConfig) -> Oidc {
        Oidc {
            keys: KeyCache::new(&cfg.check.jwks, cfg.check.ca.as_deref()),
            cfg: cfg.clone(),
        }
    }

    /// The claim naming the reviewer (`email`, `sub`, …).
    pub fn claim(&self) -> &str {
        &self.cfg.claim
    }

    /// The person a verified token names, or why it names nobody. An `email` claim
    /// the IdP says is unverified (`email_verified: false`) names nobody.
    pub async fn person(&self, token: &str) -> Result<OidcPerson, &'static str> {
        let head = peek(token)?;
        if head.iss.as_deref() != Some(self.cfg.check.issuer.as_str()) {
            return Err("wrong issuer");
        }
        let claims = verify(&self.cfg.check, &self.keys, token, &head).await?;
        // Unverified unless the IdP says otherwise or says nothing: `false`, and also
        // `"false"` (Cognito writes it as a string) or any other value but `true`.
        if self.cfg.claim == "email"
            && !matches!(claims.get("email_verified"), None | Some(Value::Bool(true)))
            && claims.get("email_verified").and_then(Value::as_str) != Some("true")
        {
            return Err("email not verified");
        }
        let who = claims
            .get(&self.cfg.claim)
            .map(name)
            .transpose()?
            .flatten()
            .ok_or("missing claim")?;
        let mut groups = Vec::new();
        if let Some(g) = self.cfg.groups_claim.as_ref().and_then(|c| claims.get(c)) {
            let list: Vec<&Value> = match g {
                Value::Array(l) => l.iter().collect(),
                other => vec![other],
            };
            for v in list.into_iter().take(256) {
                if let Ok(Some(g)) = name(v) {
                    if !groups.contains(&g) {
                        groups.push(g);
                    }
                }
            }
        }
        Ok(OidcPerson { name: who, groups })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(header: Value, payload: Value) -> String {
        let e = |v: Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string().as_bytes())
        };
        format!("{}.{}.c2ln", e(header), e(payload))
    }

    #[test]
    fn none_and_hmac_are_refused_before_any_key_is_looked_up() {
        let p = serde_json::json!({"iss": "https://i"});
        for alg in ["none", "None", "HS256", "HS384", "HS512", "XX1"] {
            assert_eq!(
                peek(&token(serde_json::json!({"alg": alg}), p.clone())).unwrap_err(),
                "algorithm not allowed",
                "{alg}"
            );
        }
        let ok = peek(&token(
            serde_json::json!({"alg": "ES256", "kid": "k"}),
            p.clone(),
        ))
        .unwrap();
        assert_eq!(ok.alg, Algorithm::ES256);
        assert_eq!(ok.kid.as_deref(), Some("k"));
        assert_eq!(ok.iss.as_deref(), Some("https://i"));
        assert_eq!(peek("a.b").unwrap_err(), "malformed");
        assert_eq!(peek("a.b.c.d").unwrap_err(), "malformed");
        assert_eq!(
            peek(&token(serde_json::json!({"alg": "RS256", "kid": 7}), p)).unwrap_err(),
            "malformed"
        );
        assert_eq!(
            peek(&"x".repeat(MAX_TOKEN_BYTES + 1)).unwrap_err(),
            "malformed"
        );
    }

    #[test]
    fn names_are_printable_and_bounded() {
        assert_eq!(name(&Value::String("ci-1".into())), Ok(Some("ci-1".into())));
        assert_eq!(name(&Value::String("  ".into())), Ok(None));
        assert_eq!(name(&Value::Null), Ok(None));
        assert!(name(&Value::String("a\nb".into())).is_err());
        assert!(name(&Value::String("x".repeat(MAX_NAME_CHARS + 1))).is_err());
        assert!(name(&serde_json::json!(["a"])).is_err());
    }
}
