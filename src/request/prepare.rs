//! Phase 1: everything about a request that does not need the rules. In order: the
//! host it names, its normalized path, the upstream it routes to, its hop-by-hop
//! headers, the agent who sends it, and the method it acts as. The first step that
//! cannot be done safely refuses the request.

use super::record::{shown_url, RequestRecord};
use super::Policy;
use crate::config::{Reading, REFUSED_METHODS};
use crate::http::normalize::{
    has_encoded_slash, has_path_params, normalize_path_keeping_encoded_slash, readings, PathError,
};
use crate::http::route::{request_host, HostMismatch};
use crate::http::{effective_method, strip_hop_by_hop, MethodError};
use crate::identity::{AuthError, Caller, PeerCert};
use http::request::Parts;
use std::net::IpAddr;

/// How the caller is identified.
#[derive(Debug, Clone, Copy)]
pub enum Identify<'a> {
    /// From the client certificate the TLS handshake verified and the credentials in
    /// the request's headers (the proxy).
    Credentials {
        peer: IpAddr,
        cert: Option<&'a PeerCert>,
    },
    /// As the configured agent with this id, or as nobody (rule tests and `explain`,
    /// which name the agent instead of presenting its key).
    Named(Option<&'a str>),
}

/// A request ready for the rules.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The host the request names, without port.
    pub host: Option<String>,
    /// Index of the upstream in the config.
    pub upstream: usize,
    /// The normalized path with the route's prefix removed: what the rules match and
    /// what the upstream receives.
    pub path: String,
    pub caller: Caller,
    /// The client's address (none for rule tests and `explain`).
    pub client: Option<IpAddr>,
    /// The method the request acts as (an override applied).
    pub method: String,
    /// Other readings of `path` an upstream may take (see
    /// [`crate::http::normalize::readings`]); usually none.
    pub path_readings: Vec<String>,
}

/// Why a request was refused before the rules saw it.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("{0}")]
    BadHost(#[from] HostMismatch),
    #[error("the path cannot be normalized safely: {0}")]
    BadPath(#[from] PathError),
    #[error("no upstream is configured for {0}")]
    NoRoute(String),
    #[error("{0}")]
    Unauthenticated(#[from] AuthError),
    #[error("{0}")]
    BadMethod(#[from] MethodError),
    /// A header some upstreams read as the request's real path.
    #[error("the {0} header is refused: IIS and Symfony read it as the request's path, which the rules did not see")]
    RewriteHeader(&'static str),
    /// A header given twice where one upstream reads the first and another the last.
    #[error("the {0} header is given more than once: upstreams disagree on which one counts")]
    RepeatedHeader(&'static str),
}

/// Headers that must appear at most once: the body's type decides how it is parsed.
const SINGLE_HEADERS: [&str; 1] = ["content-type"];

/// Headers that IIS (URL Rewrite) and Symfony (`Request::getPathInfo` with trusted
/// proxies) take as the path actually requested: the rules would judge one path and
/// the upstream act on another.
const REWRITE_HEADERS: [&str; 3] = ["x-original-url", "x-rewrite-url", "x-http-destinationurl"];

/// Prepares a request for the rules, recording what it learns in `record`. Removes
/// hop-by-hop headers from `parts` (keeping `Upgrade` when `keep_upgrade`), so the
/// rules, the digest and the upstream all see the same headers.
pub async fn prepare(
    policy: &Policy,
    parts: &mut Parts,
    who: Identify<'_>,
    keep_upgrade: bool,
    record: &mut RequestRecord,
) -> Result<Prepared, Refusal> {
    let host = request_host(&parts.uri, &parts.headers)?.map(str::to_string);
    record.host.clone_from(&host);
    let path = normalize_path_keeping_encoded_slash(parts.uri.path())?;
    let Some((upstream, upath)) = policy.router.route(host.as_deref(), &path) else {
        record.url = Some(shown_url(
            &path,
            parts.uri.query(),
            &policy.cfg.audit.redact_query,
        ));
        return Err(Refusal::NoRoute(path));
    };
    let upath = upath.to_string();
    let up = &policy.cfg.upstreams[upstream];
    record.upstream = Some(upstream);
    record.upstream_name = Some(up.name.clone());
    record.url = Some(shown_url(
        &upath,
        parts.uri.query(),
        &policy.cfg.audit.redact_query,
    ));
    if has_encoded_slash(&path) && !up.reading.encoded_slash {
        return Err(PathError::EncodedSlash.into());
    }
    if has_path_params(&path) && !up.reading.path_params {
        return Err(PathError::PathParameters.into());
    }
    let path_readings = readings(&upath)?;
    strip_hop_by_hop(&mut parts.headers, keep_upgrade);
    if let Some(h) = REWRITE_HEADERS
        .iter()
        .find(|h| parts.headers.contains_key(**h))
    {
        return Err(Refusal::RewriteHeader(h));
    }
    if let Some(h) = SINGLE_HEADERS
        .iter()
        .find(|h| parts.headers.get_all(**h).iter().nth(1).is_some())
    {
        return Err(Refusal::RepeatedHeader(h));
    }
    let (caller, client) = match who {
        Identify::Credentials { peer, cert } => {
            record.client = Some(peer);
            let c = policy.agents.identify(&parts.headers, peer, cert).await?;
            (c, Some(peer))
        }
        Identify::Named(id) => (policy.agents.named(id)?, None),
    };
    record.agent = Some(caller.id.clone());
    record.auth = Some(caller.auth.as_str());
    record.acting_for.clone_from(&caller.acting_for);
    let method = effective_method(parts.method.as_str(), &parts.headers, parts.uri.query())?;
    for m in [parts.method.as_str(), method.as_str()] {
        refuse_method(m, &up.reading)?;
    }
    if method != parts.method.as_str() {
        record.acting_as = Some(method.clone());
    }
    Ok(Prepared {
        host,
        upstream,
        path: upath,
        caller,
        client,
        method,
        path_readings,
    })
}

/// Refuses a method the upstream does not accept: `TRACE`, `TRACK` and `CONNECT`
/// unless listed in its `allow_methods`.
pub fn refuse_method(method: &str, reading: &Reading) -> Result<(), MethodError> {
    let up = method.to_ascii_uppercase();
    if REFUSED_METHODS.contains(&up.as_str()) && !reading.allow_methods.contains(&up) {
        return Err(MethodError::NotAllowed(up));
    }
    Ok(())
}
