//! Who is asking and who may answer, as configured: TLS on the listeners (`tls:`,
//! `admin.tls`), agents identified by a JWT (`agents[].jwt`) or a client certificate
//! (`agents[].mtls`), reviewers signing in with an OIDC token (`admin.oidc`), and
//! upstream client certificates. Raw serde shapes and their validated forms, and the
//! [`Build`] steps between them.

use super::build::Build;
use super::values::{parse_duration, resolve};
use jsonwebtoken::Algorithm;
use regex::Regex;
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

/// `tls:` / `admin.tls:` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub cert: String,
    pub key: String,
    pub client_ca: Option<String>,
}

/// `agents[].jwt` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawJwt {
    pub issuer: String,
    pub audience: StringOrList,
    pub jwks: String,
    /// The claim that names the agent (`sub`).
    pub claim: Option<String>,
    /// What the claim must be: absent = the agent's id; a value; or `re:…` for a fleet
    /// (the matched value becomes the agent id).
    #[serde(rename = "match")]
    pub matches: Option<String>,
    #[serde(default)]
    pub algorithms: Vec<String>,
    /// Claims that name the person the agent acts for, in order (`act`, `may_act`,
    /// or a plain claim such as `azp` or `on_behalf_of`).
    pub acting_for: Option<StringOrList>,
    pub leeway: Option<String>,
    /// CA bundle for fetching `jwks` over HTTPS.
    pub ca: Option<String>,
}

/// `agents[].mtls` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMtls {
    pub subject: Option<String>,
    pub dns: Option<String>,
    pub uri: Option<String>,
    pub email: Option<String>,
}

/// `admin.oidc` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOidc {
    pub issuer: String,
    pub audience: StringOrList,
    pub jwks: String,
    /// The claim matched against reviewer ids (`email`) or their `subject` (`sub`).
    pub claim: Option<String>,
    /// A claim listing the reviewer's groups (`groups`, Entra's `roles`).
    pub groups_claim: Option<String>,
    #[serde(default)]
    pub algorithms: Vec<String>,
    pub leeway: Option<String>,
    pub ca: Option<String>,
}

/// One string or a list of them.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum StringOrList {
    One(String),
    Many(Vec<String>),
}

impl StringOrList {
    fn into_vec(self) -> Vec<String> {
        match self {
            StringOrList::One(s) => vec![s],
            StringOrList::Many(v) => v,
        }
    }
}

/// A listener's certificate and key, and for the agent listener the CA that verifies
/// client certificates. Reloaded from these files when they change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

/// Where a token's signing keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// A JWKS file, read again when a token names a `kid` it lacks.
    File(PathBuf),
    /// A JWKS URL (`https://`, or `http://` on a loopback address only).
    Url(String),
}

/// How a bearer JWT is checked: issuer, audience, keys, algorithms, clock leeway.
#[derive(Debug, Clone)]
pub struct JwtCheck {
    pub issuer: String,
    /// Any of these must be in `aud`.
    pub audience: Vec<String>,
    pub jwks: KeySource,
    /// Algorithms accepted; never `none`, never HMAC (the keys are public).
    pub algorithms: Vec<Algorithm>,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway: Duration,
    /// Extra CA trusted when fetching the JWKS URL.
    pub ca: Option<PathBuf>,
}

/// A string that is either one exact value or a `re:` pattern (anchored as written).
#[derive(Debug, Clone)]
pub enum IdPattern {
    Exact(String),
    Re(Regex),
}

impl IdPattern {
    /// Parses `re:…` as a regex and anything else as an exact value.
    pub fn parse(s: &str) -> Result<IdPattern, regex::Error> {
        match s.strip_prefix("re:") {
            Some(p) => Regex::new(p).map(IdPattern::Re),
            None => Ok(IdPattern::Exact(s.to_string())),
        }
    }

    /// Whether `value` matches: equal, or the regex finds a match.
    pub fn matches(&self, value: &str) -> bool {
        match self {
            IdPattern::Exact(e) => e == value,
            IdPattern::Re(r) => r.is_match(value),
        }
    }
}

/// An agent identified by a bearer JWT (`agents[].jwt`).
#[derive(Debug, Clone)]
pub struct JwtAgent {
    pub check: JwtCheck,
    /// The claim naming the agent (`sub`).
    pub claim: String,
    /// What that claim must be. `Exact(id)` when not configured.
    pub matches: IdPattern,
    /// Whether the matched claim value is the agent id (a fleet, `match: re:…`).
    pub fleet: bool,
    /// Claims naming the person the agent acts for, tried in order. `act` and
    /// `may_act` are RFC 8693 objects (`{"sub": …}`); others are strings.
    pub acting_for: Vec<String>,
}

/// An agent identified by its client certificate (`agents[].mtls`): every condition
/// given must hold.
#[derive(Debug, Clone)]
pub struct MtlsAgent {
    /// The subject distinguished name, written as `CN=reporter,O=Example`.
    pub subject: Option<IdPattern>,
    /// A DNS subject alternative name.
    pub dns: Option<IdPattern>,
    /// A URI subject alternative name (a SPIFFE id).
    pub uri: Option<IdPattern>,
    /// An email (rfc822) subject alternative name.
    pub email: Option<IdPattern>,
}

/// Reviewers signing in to the admin API with an OIDC bearer token (`admin.oidc`).
#[derive(Debug, Clone)]
pub struct OidcConfig {
    pub check: JwtCheck,
    /// The claim matched against reviewer ids (`email`), or against their `subject`
    /// when it is `sub`.
    pub claim: String,
    /// The claim listing groups, added to the reviewer's configured groups.
    pub groups_claim: Option<String>,
}

/// What the agent listener needs to know about TLS at build time.
const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);

impl Build<'_> {
    /// `tls:` or `admin.tls:` (located after `anchor`); `client_ca` only where
    /// `allow_client_ca`.
    pub(super) fn tls(
        &mut self,
        raw: RawTls,
        section: &str,
        anchor: &str,
        allow_client_ca: bool,
    ) -> Option<TlsConfig> {
        let file = |b: &mut Self, key: &str, v: &str| {
            let p = resolve(&b.base, v);
            if !p.exists() {
                b.err(
                    Some(anchor),
                    v,
                    format!("{section}.{key}: file {} does not exist", p.display()),
                );
            }
            p
        };
        let cert = file(self, "cert", &raw.cert);
        let key = file(self, "key", &raw.key);
        let client_ca = match raw.client_ca.as_deref() {
            Some(c) if !allow_client_ca => {
                self.err(
                    Some(anchor),
                    "client_ca:",
                    format!("{section}.client_ca: client certificates are only read on the agent listener (tls.client_ca)"),
                );
                let _ = c;
                None
            }
            Some(c) => Some(file(self, "client_ca", c)),
            None => None,
        };
        Some(TlsConfig {
            cert,
            key,
            client_ca,
        })
    }

    /// The issuer, audience, keys, algorithms and leeway of a JWT check.
    #[allow(clippy::too_many_arguments)]
    fn jwt_check(
        &mut self,
        what: &str,
        anchor: &str,
        issuer: String,
        audience: StringOrList,
        jwks: &str,
        algorithms: &[String],
        leeway: Option<&str>,
        ca: Option<&str>,
    ) -> JwtCheck {
        let at = Some(anchor);
        if issuer.trim().is_empty() {
            self.err(at, "issuer:", format!("{what}.issuer: must not be empty"));
        }
        let audience = audience.into_vec();
        if audience.is_empty() || audience.iter().any(|a| a.trim().is_empty()) {
            self.err(
                at,
                "audience:",
                format!("{what}.audience: name at least one non-empty audience"),
            );
        }
        let jwks_source = if jwks.starts_with("https://") {
            KeySource::Url(jwks.to_string())
        } else if let Some(rest) = jwks.strip_prefix("http://") {
            let host = rest.split(['/', '?']).next().unwrap_or("");
            let host = host.rsplit_once(':').map_or(host, |(h, _)| h);
            let loopback = host == "localhost"
                || host
                    .trim_matches(['[', ']'])
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback());
            if !loopback {
                self.err(
                    at,
                    jwks,
                    format!("{what}.jwks: keys must be fetched over https:// (plain http:// only from a loopback address)"),
                );
            }
            KeySource::Url(jwks.to_string())
        } else {
            let p = resolve(&self.base, jwks);
            if !p.exists() {
                self.err(
                    at,
                    jwks,
                    format!("{what}.jwks: file {} does not exist", p.display()),
                );
            }
            KeySource::File(p)
        };
        let mut algs = Vec::new();
        let names: Vec<String> = if algorithms.is_empty() {
            vec!["RS256".into()]
        } else {
            algorithms.to_vec()
        };
        for a in &names {
            match parse_algorithm(a) {
                Ok(alg) => {
                    if !algs.contains(&alg) {
                        algs.push(alg);
                    }
                }
                Err(m) => self.err(at, a, format!("{what}.algorithms: {m}")),
            }
        }
        let leeway = match leeway {
            None => DEFAULT_LEEWAY,
            Some(l) => match parse_duration(l) {
                Ok(d) if d <= Duration::from_secs(300) => d,
                Ok(_) => {
                    self.err(
                        at,
                        l,
                        format!("{what}.leeway: at most 5m (a token past its expiry is not valid)"),
                    );
                    DEFAULT_LEEWAY
                }
                Err(e) => {
                    self.err(at, l, format!("{what}.leeway: {e}"));
                    DEFAULT_LEEWAY
                }
            },
        };
        let ca = ca.map(|c| {
            let p = resolve(&self.base, c);
            if !p.exists() {
                self.err(
                    at,
                    c,
                    format!("{what}.ca: file {} does not exist", p.display()),
                );
            }
            p
        });
        JwtCheck {
            issuer,
            audience,
            jwks: jwks_source,
            algorithms: algs,
            leeway,
            ca,
        }
    }

    /// `agents[].jwt`.
    pub(super) fn agent_jwt(&mut self, id: &str, anchor: &str, raw: RawJwt) -> JwtAgent {
        let what = format!("agent {id}: jwt");
        let check = self.jwt_check(
            &what,
            anchor,
            raw.issuer,
            raw.audience,
            &raw.jwks,
            &raw.algorithms,
            raw.leeway.as_deref(),
            raw.ca.as_deref(),
        );
        let claim = raw.claim.unwrap_or_else(|| "sub".into());
        let (matches, fleet) = match raw.matches.as_deref() {
            None => (IdPattern::Exact(id.to_string()), false),
            Some(m) => match IdPattern::parse(m) {
                Ok(p) => {
                    let fleet = matches!(p, IdPattern::Re(_));
                    (p, fleet)
                }
                Err(e) => {
                    self.err(Some(anchor), m, format!("{what}.match: invalid regex: {e}"));
                    (IdPattern::Exact(id.to_string()), false)
                }
            },
        };
        let acting_for = match raw.acting_for {
            None => vec!["act".into(), "may_act".into()],
            Some(l) => l.into_vec(),
        };
        JwtAgent {
            check,
            claim,
            matches,
            fleet,
            acting_for,
        }
    }

    /// `agents[].mtls`; needs `tls.client_ca`.
    pub(super) fn agent_mtls(
        &mut self,
        id: &str,
        anchor: &str,
        raw: RawMtls,
        have_client_ca: bool,
    ) -> MtlsAgent {
        let what = format!("agent {id}: mtls");
        if !have_client_ca {
            self.err(
                Some(anchor),
                "mtls:",
                format!(
                    "{what}: client certificates need tls.client_ca (the CA that verifies them)"
                ),
            );
        }
        let pat = |b: &mut Self, key: &str, v: Option<String>| {
            v.and_then(|v| match IdPattern::parse(&v) {
                Ok(p) => Some(p),
                Err(e) => {
                    b.err(
                        Some(anchor),
                        &v,
                        format!("{what}.{key}: invalid regex: {e}"),
                    );
                    None
                }
            })
        };
        let m = MtlsAgent {
            subject: pat(self, "subject", raw.subject),
            dns: pat(self, "dns", raw.dns),
            uri: pat(self, "uri", raw.uri),
            email: pat(self, "email", raw.email),
        };
        if m.subject.is_none() && m.dns.is_none() && m.uri.is_none() && m.email.is_none() {
            self.err(
                Some(anchor),
                "mtls:",
                format!("{what}: name the certificate's subject, dns, uri or email"),
            );
        }
        m
    }

    /// `admin.oidc`.
    pub(super) fn oidc(&mut self, raw: RawOidc) -> OidcConfig {
        let check = self.jwt_check(
            "admin.oidc",
            "oidc:",
            raw.issuer,
            raw.audience,
            &raw.jwks,
            &raw.algorithms,
            raw.leeway.as_deref(),
            raw.ca.as_deref(),
        );
        OidcConfig {
            check,
            claim: raw.claim.unwrap_or_else(|| "email".into()),
            groups_claim: raw.groups_claim,
        }
    }

    /// An upstream's client certificate and key: both or neither.
    pub(super) fn client_cert(
        &mut self,
        name: &str,
        anchor: &str,
        cert: Option<&str>,
        key: Option<&str>,
    ) -> Option<(PathBuf, PathBuf)> {
        match (cert, key) {
            (None, None) => None,
            (Some(c), Some(k)) => {
                let check = |b: &mut Self, key: &str, v: &str| {
                    let p = resolve(&b.base, v);
                    if !p.exists() {
                        b.err(
                            Some(anchor),
                            v,
                            format!("upstream {name}: {key} file {} does not exist", p.display()),
                        );
                    }
                    p
                };
                let c = check(self, "client_cert", c);
                let k = check(self, "client_key", k);
                Some((c, k))
            }
            (Some(_), None) | (None, Some(_)) => {
                self.err(
                    Some(anchor),
                    if cert.is_some() {
                        "client_cert:"
                    } else {
                        "client_key:"
                    },
                    format!("upstream {name}: client_cert and client_key go together"),
                );
                None
            }
        }
    }
}

/// An algorithm name as the JOSE registry writes it; `none` and HMAC refused.
fn parse_algorithm(name: &str) -> Result<Algorithm, String> {
    use std::str::FromStr;
    if name.eq_ignore_ascii_case("none") {
        return Err("\"none\" is never accepted".into());
    }
    let alg = Algorithm::from_str(name).map_err(|_| {
        format!("unknown algorithm {name:?} (RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA)")
    })?;
    if matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
        return Err(format!(
            "{name} is refused: keys come from a JWKS of public keys, and an HMAC check against a public key lets anyone sign"
        ));
    }
    Ok(alg)
}
