//! Who is calling: agents on the proxy listener, reviewers on the admin listener.
//!
//! An agent proves who it is with a key (`Authorization: Bearer` or its own header),
//! a bearer JWT from the organisation's IdP ([`jwt`], keys from [`jwks`]), or a
//! client certificate the TLS handshake verified ([`mtls`]). A reviewer uses a token
//! or an OIDC bearer JWT. Keys and tokens are stored only as SHA-256 digests and
//! compared in constant time against every configured digest (no early exit). This
//! module never logs or returns a presented secret.

pub mod jwks;
pub mod jwt;
pub mod mtls;
pub mod verified;

pub use mtls::PeerCert;

use crate::config::{Agent, OidcConfig, Reviewer};
use http::{HeaderMap, HeaderName};
use sha2::{Digest, Sha256};
use std::net::IpAddr;
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// How an agent proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthKind {
    /// Nothing: no agents are configured, every caller is anonymous.
    None,
    /// A configured key.
    Key,
    /// A bearer JWT checked against the issuer's keys.
    Jwt,
    /// A client certificate verified against `tls.client_ca`.
    Mtls,
}

impl AuthKind {
    /// `none`, `key`, `jwt` or `mtls`, as reviewers and the audit log see it.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthKind::None => "none",
            AuthKind::Key => "key",
            AuthKind::Jwt => "jwt",
            AuthKind::Mtls => "mtls",
        }
    }
}

/// The identity a request is attributed to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// Agent id, or `anonymous@<ip>` when no agents are configured.
    pub id: String,
    /// The human who answers for the agent.
    pub owner: Option<String>,
    pub anonymous: bool,
    /// How the agent authenticated.
    pub auth: AuthKind,
    /// The person the agent acts for, from its token (RFC 8693 `act`/`may_act`, or a
    /// configured claim): treated as an owner of the request, never its approver.
    pub acting_for: Option<String>,
}

impl Caller {
    /// An agent identified by `auth`, acting for nobody.
    pub fn agent(a: &Agent, auth: AuthKind) -> Caller {
        Caller {
            id: a.id.clone(),
            owner: a.owner.clone(),
            anonymous: false,
            auth,
            acting_for: None,
        }
    }

    /// Who sent the request and how, as a held request records it.
    pub fn requester(&self, client: Option<IpAddr>) -> crate::store::Requester {
        crate::store::Requester {
            auth: self.auth.as_str().to_string(),
            acting_for: self.acting_for.clone(),
            client: client.map(|c| c.to_string()),
        }
    }
}

/// Why a caller was not identified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no airlock credential presented")]
    Missing,
    #[error("the airlock credential is not valid")]
    Invalid,
    /// A bearer JWT that was refused, and why (expired, wrong audience, …).
    #[error("the agent token is not valid: {0}")]
    Token(&'static str),
    /// A client certificate that verified but names no configured agent.
    #[error("the client certificate names no configured agent")]
    UnmappedCertificate,
    /// Two credentials naming different agents (a certificate and a key, say).
    #[error("the credentials presented name different agents")]
    Conflict,
}

/// The agent table, compiled for lookup.
#[derive(Debug, Clone, Default)]
pub struct Agents {
    agents: Vec<Agent>,
    /// Distinct headers that carry keys (and `Authorization` for JWTs).
    headers: Vec<HeaderName>,
    /// The agents identified by JWTs, with their issuers' keys.
    jwt: jwt::JwtAgents,
}

/// SHA-256 of a presented secret.
pub fn digest(secret: &[u8]) -> [u8; 32] {
    Sha256::digest(secret).into()
}

/// The secret in a header value: `Bearer <key>` for `Authorization`, the raw value otherwise.
fn secret_in<'a>(name: &HeaderName, value: &'a str) -> Option<&'a str> {
    if name == http::header::AUTHORIZATION {
        let (scheme, rest) = value.split_once(' ')?;
        if scheme.eq_ignore_ascii_case("bearer") {
            let k = rest.trim();
            return (!k.is_empty()).then_some(k);
        }
        None
    } else {
        let k = value.trim();
        (!k.is_empty()).then_some(k)
    }
}

/// Finds which digest in `candidates` equals `d`, comparing against all of them.
fn find_ct<'a, T>(d: &[u8; 32], candidates: impl Iterator<Item = (&'a [u8; 32], T)>) -> Option<T> {
    let mut found = None;
    for (c, item) in candidates {
        if bool::from(c.ct_eq(d)) && found.is_none() {
            found = Some(item);
        }
    }
    found
}

impl Agents {
    pub fn new(agents: &[Agent]) -> Agents {
        let mut headers: Vec<HeaderName> = Vec::new();
        for a in agents {
            // A JWT agent's token comes in `Authorization`, its default header.
            if (a.key_digest.is_some() || a.jwt.is_some()) && !headers.contains(&a.header) {
                headers.push(a.header.clone());
            }
        }
        Agents {
            agents: agents.to_vec(),
            headers,
            jwt: jwt::JwtAgents::new(agents),
        }
    }

    /// Whether callers must present a key.
    pub fn required(&self) -> bool {
        !self.agents.is_empty()
    }

    /// Identifies the caller from its client certificate (verified by the TLS
    /// handshake, when there is one) and its headers: a key, or a bearer JWT. A
    /// certificate that maps to no agent is refused, and so are a certificate and a
    /// header credential that name different agents.
    pub async fn identify(
        &self,
        headers: &HeaderMap,
        peer: IpAddr,
        cert: Option<&PeerCert>,
    ) -> Result<Caller, AuthError> {
        if self.agents.is_empty() {
            return Ok(Caller {
                id: format!("anonymous@{peer}"),
                owner: None,
                anonymous: true,
                auth: AuthKind::None,
                acting_for: None,
            });
        }
        let by_cert = match cert {
            Some(c) => Some(mtls::identify(&self.agents, c).ok_or(AuthError::UnmappedCertificate)?),
            None => None,
        };
        let by_header = match self.by_headers(headers).await {
            Ok(c) => Some(c),
            Err(AuthError::Missing) => None,
            Err(e) => return Err(e),
        };
        match (by_cert, by_header) {
            (Some(c), None) => Ok(c),
            (None, Some(h)) => Ok(h),
            (Some(c), Some(h)) if c.id == h.id => Ok(Caller {
                acting_for: h.acting_for,
                ..c
            }),
            (Some(_), Some(_)) => Err(AuthError::Conflict),
            (None, None) => Err(AuthError::Missing),
        }
    }

    /// The agent a key or bearer JWT in the headers names. Several credentials (two
    /// `Authorization` headers, a key header and a JWT) must all name the same agent.
    async fn by_headers(&self, headers: &HeaderMap) -> Result<Caller, AuthError> {
        let mut presented = false;
        let mut token_error = None;
        let mut found: Option<Caller> = None;
        for h in &self.headers {
            for v in headers.get_all(h) {
                let Some(secret) = v.to_str().ok().and_then(|v| secret_in(h, v)) else {
                    continue;
                };
                presented = true;
                let d = digest(secret.as_bytes());
                let cands = self
                    .agents
                    .iter()
                    .filter(|a| a.header == *h)
                    .filter_map(|a| a.key_digest.as_ref().map(|k| (k, a)));
                let caller = if let Some(a) = find_ct(&d, cands) {
                    Caller::agent(a, AuthKind::Key)
                } else if *h == http::header::AUTHORIZATION && self.jwt.configured() {
                    match self.jwt.identify(secret).await {
                        Ok(c) => c,
                        Err(e) => {
                            token_error = Some(e);
                            continue;
                        }
                    }
                } else {
                    continue;
                };
                match &found {
                    Some(f) if f.id != caller.id => return Err(AuthError::Conflict),
                    Some(_) => {}
                    None => found = Some(caller),
                }
            }
        }
        if let Some(c) = found {
            return Ok(c);
        }
        Err(match (presented, token_error) {
            (_, Some(e)) => e,
            (true, None) => AuthError::Invalid,
            (false, None) => AuthError::Missing,
        })
    }

    /// The caller a rule test or `rules explain` names by agent id, as the proxy would
    /// have identified it: an unknown id is an invalid credential and none is a missing
    /// one (when agents are configured). With no agents configured every caller is
    /// anonymous, and a named one keeps the name it was given.
    pub fn named(&self, id: Option<&str>) -> Result<Caller, AuthError> {
        if self.agents.is_empty() {
            return Ok(Caller {
                id: id.map_or_else(|| "anonymous@127.0.0.1".to_string(), str::to_string),
                owner: None,
                anonymous: id.is_none(),
                auth: AuthKind::None,
                acting_for: None,
            });
        }
        let id = id.ok_or(AuthError::Missing)?;
        if let Some(a) = self.agents.iter().find(|a| a.id == id) {
            let auth = if a.jwt.is_some() {
                AuthKind::Jwt
            } else if a.mtls.is_some() {
                AuthKind::Mtls
            } else {
                AuthKind::Key
            };
            return Ok(Caller::agent(a, auth));
        }
        // A member of a JWT fleet, named by its claim value.
        self.jwt.named(id).ok_or(AuthError::Invalid)
    }

    /// Removes every header that may carry an airlock credential.
    pub fn strip_credentials(&self, headers: &mut HeaderMap) {
        for h in &self.headers {
            headers.remove(h);
        }
    }

    /// Whether a bearer secret is an agent's credential of any kind, a key or a JWT
    /// that verifies as an agent's (the admin API refuses those).
    pub async fn is_agent_credential(&self, secret: &str) -> bool {
        self.is_agent_key(secret) || self.jwt.identify(secret).await.is_ok()
    }

    /// Whether a secret is some agent's key (the admin API refuses those).
    pub fn is_agent_key(&self, secret: &str) -> bool {
        let d = digest(secret.as_bytes());
        find_ct(
            &d,
            self.agents
                .iter()
                .filter_map(|a| a.key_digest.as_ref().map(|k| (k, ()))),
        )
        .is_some()
    }
}

/// The reviewer table, and how reviewers' OIDC tokens are checked.
#[derive(Debug, Clone, Default)]
pub struct Reviewers {
    reviewers: Vec<Reviewer>,
    oidc: Option<Arc<jwt::Oidc>>,
}

impl Reviewers {
    pub fn new(reviewers: &[Reviewer]) -> Reviewers {
        Reviewers::with_oidc(reviewers, None)
    }

    /// The reviewer table with OIDC sign-in (`admin.oidc`) when configured.
    pub fn with_oidc(reviewers: &[Reviewer], oidc: Option<&OidcConfig>) -> Reviewers {
        Reviewers {
            reviewers: reviewers.to_vec(),
            oidc: oidc.map(|o| Arc::new(jwt::Oidc::new(o))),
        }
    }

    /// The reviewer a bearer secret names: a reviewer token, else an OIDC token whose
    /// claim names a configured reviewer (`email` and the like compared with reviewer
    /// ids as [`same_identity`] does; `sub` with their `subject`). The reviewer
    /// returned carries the token's groups besides the configured ones. A token naming
    /// nobody configured names no reviewer.
    pub async fn by_bearer(&self, secret: &str) -> Option<Reviewer> {
        if let Some(r) = self.by_token(secret) {
            return Some(r.clone());
        }
        let oidc = self.oidc.as_ref()?;
        let person = match oidc.person(secret).await {
            Ok(p) => p,
            Err(why) => {
                tracing::debug!(reason = why, "OIDC token refused");
                return None;
            }
        };
        let by_sub = oidc.claim() == "sub";
        let r = self.reviewers.iter().find(|r| {
            if by_sub {
                r.subject.as_deref() == Some(person.name.as_str())
            } else {
                signs_in_as(&r.id, &person.name)
            }
        })?;
        let mut r = r.clone();
        for g in person.groups {
            if !r.groups.contains(&g) {
                r.groups.push(g);
            }
        }
        Some(r)
    }

    /// The reviewer whose API token this is.
    pub fn by_token(&self, token: &str) -> Option<&Reviewer> {
        let d = digest(token.as_bytes());
        find_ct(
            &d,
            self.reviewers
                .iter()
                .filter_map(|r| r.token_digest.as_ref().map(|t| (t, r))),
        )
    }

    /// Every reviewer.
    pub fn all(&self) -> &[Reviewer] {
        &self.reviewers
    }

    /// Whether `reviewer` is named by an approvers list (directly or by `group:`).
    /// Ids are compared as [`same_identity`] does.
    pub fn eligible(reviewer: &Reviewer, approvers: &[String]) -> bool {
        approvers.iter().any(|ap| match ap.strip_prefix("group:") {
            Some(g) => reviewer.groups.iter().any(|x| x == g),
            None => same_identity(ap, &reviewer.id),
        })
    }
}

/// Whether an OIDC token's claim (`email`) signs in as reviewer `id`: equal, or equal
/// but for ASCII case, as IdPs compare logins. Never after Unicode folding: that is
/// for refusing (self-approval), not for granting, since `ａｌｉｃｅ@example.com` or
/// `alice\u{200b}@example.com` is another account at the IdP, which may hand it out.
fn signs_in_as(id: &str, claim: &str) -> bool {
    id == claim || (id.is_ascii() && claim.is_ascii() && id.eq_ignore_ascii_case(claim))
}

/// Whether two identities (reviewer ids, agent owners, emails) name the same person:
/// compared as [`crate::http::canonical_identity`] writes them (NFKC, invisible
/// characters removed, trimmed, case-folded), as an IdP compares logins
/// (`Alice@Example.com` is `alice@example.com`).
pub fn same_identity(a: &str, b: &str) -> bool {
    a == b
        || (a.is_ascii() && b.is_ascii() && a.trim().eq_ignore_ascii_case(b.trim()))
        || crate::http::canonical_identity(a) == crate::http::canonical_identity(b)
}

/// A fresh random key: 32 bytes, URL-safe base64 with a prefix naming its kind.
pub fn new_key(kind: &str) -> (String, String) {
    use base64::Engine;
    use rand::RngCore;
    let mut b = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut b);
    let prefix = if kind == "reviewer" { "alr" } else { "ala" };
    let key = format!(
        "{prefix}_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
    );
    let d = format!("sha256:{}", hex::encode(digest(key.as_bytes())));
    (key, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(id: &str, key: &str) -> Agent {
        Agent {
            id: id.into(),
            key_digest: Some(digest(key.as_bytes())),
            header: http::header::AUTHORIZATION,
            owner: Some("alice@example.com".into()),
            jwt: None,
            mtls: None,
        }
    }

    #[tokio::test]
    async fn bearer_keys() {
        let a = Agents::new(&[agent("bot", "k1"), agent("other", "k2")]);
        let ip = IpAddr::from([127, 0, 0, 1]);
        let mut h = HeaderMap::new();
        assert_eq!(a.identify(&h, ip, None).await, Err(AuthError::Missing));
        h.insert("authorization", "Bearer k2".parse().unwrap());
        assert_eq!(a.identify(&h, ip, None).await.unwrap().id, "other");
        h.insert("authorization", "Bearer nope".parse().unwrap());
        assert_eq!(a.identify(&h, ip, None).await, Err(AuthError::Invalid));
        h.insert("authorization", "Basic k1".parse().unwrap());
        assert_eq!(a.identify(&h, ip, None).await, Err(AuthError::Missing));
        assert!(a.is_agent_key("k1"));
        assert!(!a.is_agent_key("k3"));
    }

    #[test]
    fn fresh_keys_hash_to_their_digest() {
        let (k, d) = new_key("agent");
        assert_eq!(
            crate::config::parse_digest(&d).unwrap(),
            digest(k.as_bytes())
        );
    }
}
