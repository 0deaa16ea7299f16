//! Certificates made at test time (rcgen): a CA, server certificates for
//! `localhost`/`127.0.0.1`, client certificates with a chosen subject and SANs, and
//! ones already expired. Written as PEM files where airlock's config can name them.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};
use std::path::{Path, PathBuf};

/// A certificate authority that signs the others.
pub struct Ca {
    pub cert: rcgen::Certificate,
    pub key: KeyPair,
    pub pem: String,
}

/// A leaf certificate with its key, as PEM.
#[derive(Clone)]
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: Vec<u8>,
}

/// What a client certificate says.
#[derive(Default, Clone)]
pub struct ClientId<'a> {
    pub cn: Option<&'a str>,
    pub org: Option<&'a str>,
    pub dns: &'a [&'a str],
    pub uri: &'a [&'a str],
    pub email: &'a [&'a str],
    /// Already expired (not_after a day ago).
    pub expired: bool,
}

impl Ca {
    /// A fresh CA named `name`.
    pub fn new(name: &str) -> Ca {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = p.self_signed(&key).unwrap();
        let pem = cert.pem();
        Ca { cert, key, pem }
    }

    /// A server certificate for `localhost` and `127.0.0.1` (plus `extra` DNS names).
    pub fn server(&self, extra: &[&str]) -> Leaf {
        let mut names = vec!["localhost".to_string()];
        names.extend(extra.iter().map(|s| s.to_string()));
        let mut p = CertificateParams::new(names).unwrap();
        p.subject_alt_names
            .push(SanType::IpAddress(std::net::IpAddr::from([127, 0, 0, 1])));
        p.distinguished_name.push(DnType::CommonName, "localhost");
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(p)
    }

    /// A client certificate.
    pub fn client(&self, id: &ClientId<'_>) -> Leaf {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        // Encoded as most CAs do (organization, then common name), so the subject
        // reads `CN=…,O=…` (RFC 4514 prints the names in reverse).
        p.distinguished_name = rcgen::DistinguishedName::new();
        if let Some(o) = id.org {
            p.distinguished_name.push(DnType::OrganizationName, o);
        }
        if let Some(cn) = id.cn {
            p.distinguished_name.push(DnType::CommonName, cn);
        }
        for d in id.dns {
            p.subject_alt_names
                .push(SanType::DnsName((*d).try_into().unwrap()));
        }
        for u in id.uri {
            p.subject_alt_names
                .push(SanType::URI((*u).try_into().unwrap()));
        }
        for e in id.email {
            p.subject_alt_names
                .push(SanType::Rfc822Name((*e).try_into().unwrap()));
        }
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        if id.expired {
            let now = time_now();
            p.not_before = now - time::Duration::days(30);
            p.not_after = now - time::Duration::days(1);
        }
        self.sign(p)
    }

    fn sign(&self, p: CertificateParams) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.cert, &self.key).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }

    /// Writes the CA certificate to `dir/name`.
    pub fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, &self.pem).unwrap();
        p
    }
}

impl Leaf {
    /// Writes `dir/{name}.pem` and `dir/{name}-key.pem`; returns both paths.
    pub fn write(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let c = dir.join(format!("{name}.pem"));
        let k = dir.join(format!("{name}-key.pem"));
        std::fs::write(&c, &self.cert_pem).unwrap();
        std::fs::write(&k, &self.key_pem).unwrap();
        (c, k)
    }
}

fn time_now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}
