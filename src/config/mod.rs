//! Configuration: `airlock.yaml` parsed in two stages.
//!
//! [`raw`] holds the serde shapes (unknown keys rejected); [`Config::load`] turns them
//! into validated, compiled values: socket addresses, durations, byte sizes, header
//! names, `${VAR}` expanded from the environment. A running proxy never meets an
//! unchecked value. Every problem is a [`Diagnostic`] with `file:line:col`.
//!
//! Layout:
//! - `source`: the file text, and turning a value back into `file:line:col`;
//! - `values`: durations, sizes, `${VAR}`, `sha256:` digests, upstream URLs;
//! - `types`: the validated [`Config`] and its parts;
//! - `build`: raw → validated, one function per section;
//! - `channels`, `identity`: the chat channels, and TLS, JWT, mTLS and OIDC identities,
//!   each with its raw shape, validated form and build steps.
//!
//! What a command needs differs: `serve` needs every credential, the audit commands
//! need only the store and the `audit:` section ([`LoadOptions`]). This module never
//! returns a config with an unchecked value, and never turns an unset `${VAR}` into "".

mod build;
pub mod channels;
pub mod identity;
pub mod raw;
mod source;
mod types;
mod values;

pub use channels::{Channels, SlackConfig, TeamsBot, TeamsConfig, WebhookConfig};
pub use identity::{IdPattern, JwtAgent, JwtCheck, KeySource, MtlsAgent, OidcConfig, TlsConfig};
pub use source::{Diagnostic, Diagnostics, Source};
pub use types::{
    AdminConfig, Agent, ApprovalDefaults, AuditConfig, AuditLevel, Config, Limits, LogFormat, Mode,
    Reading, Reviewer, Route, Target, Upstream, REFUSED_METHODS,
};
pub use values::{expand_env, parse_digest, parse_duration, parse_size};

use std::path::Path;

/// What a load needs from the file beyond its shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadOptions {
    /// Expand `${VAR}` in upstream `inject` headers; an unset variable is an error
    /// naming it. When false the values are not read and every upstream's `inject`
    /// is empty: such a config must never serve traffic.
    pub inject_credentials: bool,
    /// `audit.signing_key` must name an existing file (the proxy signs with it).
    pub require_signing_key: bool,
}

impl LoadOptions {
    /// Everything, checked: what `serve`, `rules check` and reload use.
    pub const SERVE: LoadOptions = LoadOptions {
        inject_credentials: true,
        require_signing_key: true,
    };
    /// What `audit verify` and `audit export` need: the store and the `audit:`
    /// section, on a machine that holds neither the upstreams' credentials nor the
    /// private signing key. The store URL's `${VAR}` is still expanded.
    pub const AUDIT: LoadOptions = LoadOptions {
        inject_credentials: false,
        require_signing_key: false,
    };
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions::SERVE
    }
}

impl Config {
    /// Reads, parses and validates a config file, with every credential
    /// ([`LoadOptions::SERVE`]).
    pub fn load(file: &Path) -> Result<Config, Diagnostics> {
        Config::load_with(file, LoadOptions::SERVE)
    }

    /// Reads a config file for the audit commands ([`LoadOptions::AUDIT`]).
    pub fn load_for_audit(file: &Path) -> Result<Config, Diagnostics> {
        Config::load_with(file, LoadOptions::AUDIT)
    }

    /// Reads, parses and validates a config file as `options` say.
    pub fn load_with(file: &Path, options: LoadOptions) -> Result<Config, Diagnostics> {
        let src = Source::read(file)?;
        Config::parse_with(&src, options)
    }

    /// Parses and validates config text ([`LoadOptions::SERVE`]).
    pub fn parse(src: &Source) -> Result<Config, Diagnostics> {
        Config::parse_with(src, LoadOptions::SERVE)
    }

    /// Parses and validates config text as `options` say.
    pub fn parse_with(src: &Source, options: LoadOptions) -> Result<Config, Diagnostics> {
        let raw: raw::RawConfig =
            serde_yaml::from_str(&src.text).map_err(|e| Diagnostics(vec![src.yaml_error(&e)]))?;
        build::build(src, raw, options)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(text: &str) -> Source {
        Source {
            file: "airlock.yaml".into(),
            text: text.into(),
        }
    }

    const INJECTING: &str = "upstreams:\n  - name: cloud\n    prefix: /cloud\n    url: http://127.0.0.1:9\n    inject:\n      authorization: \"Bearer ${AIRLOCK_TEST_UNSET_CLOUD_TOKEN}\"\n";

    #[test]
    fn serving_needs_the_inject_variables() {
        let err = Config::parse(&source(INJECTING)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "airlock.yaml:6:23: upstream cloud: inject authorization: environment variable AIRLOCK_TEST_UNSET_CLOUD_TOKEN is not set"
        );
    }

    #[test]
    fn the_audit_commands_do_not() {
        let cfg = Config::parse_with(&source(INJECTING), LoadOptions::AUDIT).unwrap();
        assert!(cfg.upstreams[0].inject.is_empty());
        // A bad header name is still a mistake worth reporting.
        let bad = INJECTING.replace("authorization:", "\"bad header\":");
        assert!(Config::parse_with(&source(&bad), LoadOptions::AUDIT).is_err());
    }

    #[test]
    fn a_missing_signing_key_matters_only_to_serve() {
        let text = "audit:\n  signing_key: /nonexistent/airlock-audit.pem\n";
        let err = Config::parse(&source(text)).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("airlock.yaml:2:16: audit.signing_key: /nonexistent/airlock-audit.pem does not exist"),
            "{err}"
        );
        let cfg = Config::parse_with(&source(text), LoadOptions::AUDIT).unwrap();
        assert!(cfg.audit.signing_key.is_some());
        let text = "audit:\n  verify_key: /nonexistent/airlock-audit.pub.pem\n";
        assert!(Config::parse_with(&source(text), LoadOptions::AUDIT).is_err());
    }
}
