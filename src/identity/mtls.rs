//! Agents identified by a client certificate (`agents[].mtls`): the TLS handshake has
//! verified the certificate against `tls.client_ca`; here its subject and subject
//! alternative names are matched against the configured agents.

use super::{AuthKind, Caller};
use crate::config::Agent;

/// What a verified client certificate says about its holder.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerCert {
    /// The subject distinguished name, as `CN=reporter,O=Example` (RFC 4514 order:
    /// most specific first).
    pub subject: String,
    /// DNS subject alternative names.
    pub dns: Vec<String>,
    /// URI subject alternative names (SPIFFE ids).
    pub uri: Vec<String>,
    /// Email (rfc822) subject alternative names.
    pub email: Vec<String>,
}

/// The agent whose `mtls:` conditions the certificate meets (the first in file order).
pub fn identify(agents: &[Agent], cert: &PeerCert) -> Option<Caller> {
    let a = agents.iter().find(|a| {
        a.mtls.as_ref().is_some_and(|m| {
            let any =
                |p: &crate::config::IdPattern, vals: &[String]| vals.iter().any(|v| p.matches(v));
            m.subject.as_ref().is_none_or(|p| p.matches(&cert.subject))
                && m.dns.as_ref().is_none_or(|p| any(p, &cert.dns))
                && m.uri.as_ref().is_none_or(|p| any(p, &cert.uri))
                && m.email.as_ref().is_none_or(|p| any(p, &cert.email))
        })
    })?;
    Some(Caller::agent(a, AuthKind::Mtls))
}
