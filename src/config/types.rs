//! The validated configuration: every value parsed into the type the proxy uses
//! (socket addresses, durations, byte sizes, header names, digests, absolute paths).
//!
//! These types are only ever built by [`super::build`]; nothing here reads files, the
//! environment or YAML, and nothing here holds an unchecked string where a parsed value
//! belongs.

use http::{HeaderName, HeaderValue};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// `enforce` holds and denies; `observe` forwards everything and logs what it would have done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Deny and hold as the rules say.
    Enforce,
    /// Forward everything; log what would have been denied or held.
    Observe,
}

impl Mode {
    /// `enforce` or `observe`, as written in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Observe => "observe",
        }
    }
}

/// Which requests reach the audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditLevel {
    /// Held, denied and failed-authentication requests (and everything about approvals).
    Held,
    /// Every request.
    All,
}

/// Where an upstream's requests go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The built-in echo upstream (`url: demo:`), served inside the process.
    Demo,
    /// A real HTTP(S) server.
    Http {
        /// `https://` rather than `http://`.
        https: bool,
        /// Host and port of `url`.
        authority: http::uri::Authority,
        /// Path prefix of `url`, without a trailing slash ("" for none).
        base_path: String,
    },
}

/// How a request is routed to an upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Path prefix, stripped before forwarding ("/cloud").
    Prefix(String),
    /// Host header (lowercase, no port).
    Host(String),
}

/// One upstream API airlock forwards to (`upstreams:`).
#[derive(Debug, Clone)]
pub struct Upstream {
    /// The name rules use in `upstream:`.
    pub name: String,
    /// How requests are routed here.
    pub route: Route,
    /// Where they go.
    pub target: Target,
    /// `url` as written.
    pub url: String,
    /// Credentials added to every forwarded request (`${VAR}` expanded, marked
    /// sensitive). Empty when the config was loaded without credentials
    /// ([`super::LoadOptions::AUDIT`]).
    pub inject: Vec<(HeaderName, HeaderValue)>,
    /// Extra CA certificate to trust for this upstream.
    pub ca: Option<PathBuf>,
    /// Client certificate and key (PEM) presented to an upstream that demands mTLS.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// Whole-request timeout towards the upstream.
    pub timeout: Duration,
    /// Connect timeout towards the upstream.
    pub connect_timeout: Duration,
    /// Longest pause between two chunks of a response body; a body that stalls
    /// longer is cut (outcome `upstream_timeout`). Never zero.
    pub idle_timeout: Duration,
    /// How this upstream reads a request, so the rules read it the same way.
    pub reading: Reading,
}

/// How an upstream reads what it is sent (`path_case`, `path_params`,
/// `encoded_slash`, `allow_methods`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reading {
    /// `path_case: sensitive`: the upstream routes `/A` and `/a` apart. By default
    /// (`insensitive`, as Express and ASP.NET route) deny and approve rules match
    /// paths without regard to case.
    pub path_case_sensitive: bool,
    /// `path_params: allow`: `;` parameters in path segments are forwarded (and strict
    /// rules also read the path without them). Refused by default.
    pub path_params: bool,
    /// `encoded_slash: allow`: `%2F` in a segment is forwarded (and strict rules also
    /// read it as `/`). Refused by default.
    pub encoded_slash: bool,
    /// Methods refused by default (`TRACE`, `TRACK`, `CONNECT`) that this upstream
    /// accepts, uppercase.
    pub allow_methods: Vec<String>,
}

/// Methods refused unless an upstream lists them in `allow_methods`: TRACE and TRACK
/// echo the request, injected credentials included; CONNECT opens a tunnel.
pub const REFUSED_METHODS: [&str; 3] = ["TRACE", "TRACK", "CONNECT"];

/// One caller airlock recognizes (`agents:`).
#[derive(Debug, Clone)]
pub struct Agent {
    /// The agent's id, as rules and the audit log name it.
    pub id: String,
    /// SHA-256 of the agent's key; `None` for agents identified another way (JWT, mTLS).
    pub key_digest: Option<[u8; 32]>,
    /// Header carrying the key; `authorization` means `Authorization: Bearer <key>`.
    pub header: HeaderName,
    /// The human who answers for the agent; never allowed to approve its requests.
    pub owner: Option<String>,
    /// Identified by a bearer JWT.
    pub jwt: Option<super::identity::JwtAgent>,
    /// Identified by its client certificate.
    pub mtls: Option<super::identity::MtlsAgent>,
}

/// One human who may vote on approvals (`reviewers:`).
#[derive(Debug, Clone)]
pub struct Reviewer {
    /// The reviewer's id (usually an email address).
    pub id: String,
    /// Groups named in rules as `group:NAME`.
    pub groups: Vec<String>,
    /// SHA-256 of the reviewer's API token.
    pub token_digest: Option<[u8; 32]>,
    /// The OIDC subject (`sub`) this reviewer signs in as.
    pub subject: Option<String>,
    /// Slack user id.
    pub slack: Option<String>,
    /// Teams user id.
    pub teams: Option<String>,
}

/// The admin listener (`admin:`).
#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// Where the REST API, metrics and health checks listen.
    pub listen: SocketAddr,
    /// The URL reviewers reach the admin listener at, for links.
    pub public_url: Option<String>,
    /// Open admin connections at once; more wait to be accepted.
    pub max_connections: usize,
    /// TLS on the admin listener.
    pub tls: Option<super::identity::TlsConfig>,
    /// Reviewers signing in with OIDC bearer tokens.
    pub oidc: Option<super::identity::OidcConfig>,
}

/// The audit log (`audit:`).
#[derive(Debug, Clone)]
pub struct AuditConfig {
    /// Which requests are recorded.
    pub level: AuditLevel,
    /// Optional live JSONL copy.
    pub file: Option<PathBuf>,
    /// Ed25519 private key (PKCS#8 PEM) that signs checkpoints; only `serve` needs it.
    pub signing_key: Option<PathBuf>,
    /// Ed25519 public key (SPKI PEM) that `audit verify` checks checkpoints with, so an
    /// auditor never needs the private key.
    pub verify_key: Option<PathBuf>,
    /// Query parameter names redacted in every URL written, beyond the built-in
    /// credential-like pattern (`audit.redact_query`).
    pub redact_query: Vec<String>,
    /// How densely checkpoints are signed (`checkpoint_every`, `checkpoint_interval`),
    /// and required by `audit verify` with a key.
    pub checkpoints: crate::audit::CheckpointPolicy,
    /// File the latest signed checkpoint is published to (`witness`), atomically
    /// replaced; `audit verify` checks the log against it.
    pub witness: Option<PathBuf>,
}

/// Resource limits (`limits:`).
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest request body airlock accepts for a held request.
    pub max_body: usize,
    /// Largest body a rule inspects; beyond it, inspecting rules fail closed.
    pub inspect_body: usize,
    /// How long a client may take to send the request head.
    pub header_timeout: Duration,
    /// How long a body that must be read (inspected or held) may take to arrive.
    pub body_timeout: Duration,
    /// How long a shutdown waits for in-flight requests before cutting them.
    pub shutdown_grace: Duration,
    /// Held requests at once, over all agents.
    pub max_held: usize,
    /// Held requests one agent may have at once, and pending approvals it may have
    /// (default: a tenth of `max_held`, at least 1).
    pub max_held_per_agent: usize,
    /// Open agent connections at once; more wait to be accepted.
    pub max_connections: usize,
    /// How long a connection may stay open with no request in flight (and no first
    /// byte: a new connection gets `header_timeout` for that).
    pub idle_timeout: Duration,
    /// Bytes of request bodies kept in memory at once, for inspection and for holds.
    pub max_held_bytes: usize,
}

/// Defaults for rules' `approval:` blocks (`approval:`).
#[derive(Debug, Clone)]
pub struct ApprovalDefaults {
    /// How long a hold waits for a decision before it expires.
    pub timeout: Duration,
    /// How long an approved request whose client went away may be retried.
    pub reuse: Duration,
}

/// How log lines are written (`log.format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Human,
    /// One JSON object per line.
    Json,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file this configuration was read from.
    pub file: PathBuf,
    /// Where agents connect.
    pub listen: SocketAddr,
    /// TLS on the agent listener (and client certificates, with `client_ca`).
    pub tls: Option<super::identity::TlsConfig>,
    /// The admin listener, when configured.
    pub admin: Option<AdminConfig>,
    /// Runtime threads; 0 = one per core.
    pub workers: usize,
    /// `enforce` or `observe`.
    pub mode: Mode,
    /// Verdict for requests no rule matches: true = allow, false = deny.
    pub default_allow: bool,
    /// Store URL (`sqlite://…` or `postgres://…`), `${VAR}` expanded.
    pub store: String,
    /// Upstream APIs, in file order.
    pub upstreams: Vec<Upstream>,
    /// The rules file or folder.
    pub rules: Option<PathBuf>,
    /// Known callers.
    pub agents: Vec<Agent>,
    /// Known reviewers.
    pub reviewers: Vec<Reviewer>,
    /// The audit log.
    pub audit: AuditConfig,
    /// Resource limits.
    pub limits: Limits,
    /// Approval defaults.
    pub approval: ApprovalDefaults,
    /// Log line format.
    pub log_format: LogFormat,
    /// Log level filter for airlock's own lines.
    pub log_level: String,
    /// Where reviewers are asked besides the API (`channels:`).
    pub channels: super::channels::Channels,
}
