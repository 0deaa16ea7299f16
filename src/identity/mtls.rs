//! Agents identified by a client certificate (`agents[].mtls`): the TLS handshake has
//! verified the certificate against `tls.client_ca`; here it is read once per
//! connection ([`PeerCert::from_der`]) and its subject and subject alternative names
//! are matched against the configured agents.
//!
//! # How a subject is written
//! As RFC 4514 prints a distinguished name, which is how `mtls: {subject: …}` is
//! matched (exactly, or by a `re:` pattern):
//!
//! - the relative distinguished names in *reverse* of their order in the certificate,
//!   so the most specific comes first: a certificate made with
//!   `openssl req -subj "/C=DE/O=Example/CN=reporter"` has the subject
//!   `CN=reporter,O=Example,C=DE`;
//! - separated by a bare `,` (no space); several attributes in one RDN joined by `+`
//!   in the order the certificate has them;
//! - attribute names `CN`, `L`, `ST`, `O`, `OU`, `C`, `STREET`, `DC`, `UID`; any other
//!   attribute is its dotted OID with the value as `#` and the hex of its DER
//!   encoding (so is a value that is not a string);
//! - in values, `"`, `+`, `,`, `;`, `<`, `>` and `\` are escaped with `\`, as are a
//!   leading space or `#` and a trailing space; NUL is `\00`.

use super::{AuthKind, Caller};
use crate::config::Agent;
use x509_parser::der_parser::asn1_rs::ToDer;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
use x509_parser::x509::{AttributeTypeAndValue, X509Name};

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

/// Why a certificate the handshake verified could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("client certificate is not valid X.509: {0}")]
    Parse(String),
    #[error("client certificate has an unreadable subject alternative name: {0}")]
    San(String),
}

impl PeerCert {
    /// Reads a DER certificate: its subject (written as the module documentation
    /// says) and its DNS, URI and email subject alternative names.
    pub fn from_der(der: &[u8]) -> Result<PeerCert, CertError> {
        let (_, cert) =
            X509Certificate::from_der(der).map_err(|e| CertError::Parse(e.to_string()))?;
        let mut out = PeerCert {
            subject: rfc4514(cert.subject()),
            ..PeerCert::default()
        };
        let san = cert
            .subject_alternative_name()
            .map_err(|e| CertError::San(e.to_string()))?;
        if let Some(san) = san {
            for n in &san.value.general_names {
                match n {
                    GeneralName::DNSName(d) => out.dns.push(d.to_string()),
                    GeneralName::URI(u) => out.uri.push(u.to_string()),
                    GeneralName::RFC822Name(e) => out.email.push(e.to_string()),
                    _ => {}
                }
            }
        }
        Ok(out)
    }
}

/// A distinguished name as RFC 4514 strings it (see the module documentation).
fn rfc4514(name: &X509Name<'_>) -> String {
    let rdns: Vec<&_> = name.iter().collect();
    rdns.iter()
        .rev()
        .map(|rdn| rdn.iter().map(attribute).collect::<Vec<_>>().join("+"))
        .collect::<Vec<_>>()
        .join(",")
}

/// One `type=value` of a distinguished name.
fn attribute(atv: &AttributeTypeAndValue<'_>) -> String {
    let oid = atv.attr_type().to_id_string();
    let short = match oid.as_str() {
        "2.5.4.3" => Some("CN"),
        "2.5.4.7" => Some("L"),
        "2.5.4.8" => Some("ST"),
        "2.5.4.10" => Some("O"),
        "2.5.4.11" => Some("OU"),
        "2.5.4.6" => Some("C"),
        "2.5.4.9" => Some("STREET"),
        "0.9.2342.19200300.100.1.25" => Some("DC"),
        "0.9.2342.19200300.100.1.1" => Some("UID"),
        _ => None,
    };
    match (short, atv.as_str()) {
        (Some(name), Ok(value)) => format!("{name}={}", escape(value)),
        (name, _) => {
            let der = atv.attr_value().to_der_vec().unwrap_or_default();
            format!(
                "{}=#{}",
                name.map_or(oid.clone(), str::to_string),
                hex::encode(der)
            )
        }
    }
}

/// Escapes an attribute value as RFC 4514 section 2.4 asks.
fn escape(v: &str) -> String {
    let n = v.chars().count();
    let mut out = String::with_capacity(v.len());
    for (i, c) in v.chars().enumerate() {
        match c {
            '"' | '+' | ',' | ';' | '<' | '>' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            '#' if i == 0 => out.push_str("\\#"),
            ' ' if i == 0 || i + 1 == n => out.push_str("\\ "),
            '\0' => out.push_str("\\00"),
            c => out.push(c),
        }
    }
    out
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

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, SanType};

    fn cert(dn: &[(DnType, &str)], sans: Vec<SanType>) -> Vec<u8> {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name = DistinguishedName::new();
        for (t, v) in dn {
            p.distinguished_name.push(t.clone(), *v);
        }
        p.subject_alt_names = sans;
        let key = KeyPair::generate().unwrap();
        p.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn subject_is_rfc4514_most_specific_first_and_sans_are_read() {
        // Encoded as openssl -subj "/C=DE/O=Example/CN=reporter" would.
        let der = cert(
            &[
                (DnType::CountryName, "DE"),
                (DnType::OrganizationName, "Example"),
                (DnType::CommonName, "reporter"),
            ],
            vec![
                SanType::DnsName("reporter.example.com".try_into().unwrap()),
                SanType::URI(
                    "spiffe://example.org/ns/prod/sa/reporter"
                        .try_into()
                        .unwrap(),
                ),
                SanType::Rfc822Name("reporter@example.com".try_into().unwrap()),
            ],
        );
        let c = PeerCert::from_der(&der).unwrap();
        assert_eq!(c.subject, "CN=reporter,O=Example,C=DE");
        assert_eq!(c.dns, ["reporter.example.com"]);
        assert_eq!(c.uri, ["spiffe://example.org/ns/prod/sa/reporter"]);
        assert_eq!(c.email, ["reporter@example.com"]);
    }

    #[test]
    fn special_characters_in_values_are_escaped() {
        let der = cert(
            &[
                (DnType::OrganizationName, "Acme, Inc."),
                (DnType::CommonName, "#a+b "),
            ],
            vec![],
        );
        let c = PeerCert::from_der(&der).unwrap();
        assert_eq!(c.subject, r"CN=\#a\+b\ ,O=Acme\, Inc.");
        // A look-alike cannot smuggle a second RDN into an exact match.
        let der = cert(&[(DnType::CommonName, "reporter,O=Example")], vec![]);
        let c = PeerCert::from_der(&der).unwrap();
        assert_eq!(c.subject, r"CN=reporter\,O=Example");
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(PeerCert::from_der(b"not a certificate").is_err());
    }
}
