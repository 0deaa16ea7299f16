//! The command line (clap): what every command and option is, and what its exit code
//! means. Each command's work lives in its own module:
//!
//! - `serve`: run the proxy and the admin listener;
//! - `rules`: `rules check|test|explain`;
//! - `audit`: `audit verify|export`, which need neither the upstreams' credentials nor
//!   the private signing key;
//! - `review`: the reviewer's client of the admin API (`pending`, `show`, `approve`,
//!   `deny`, `reload`);
//! - `keys`: `keys new agent|reviewer|audit`;
//! - `certs`: `certs dev`, a local CA and certificates for trying TLS and mTLS.
//!
//! Exit codes: 0 success; 1 a check failed or the server refused (config errors,
//! warnings under `--strict`, failing rule tests, a broken audit chain, a refused vote
//! or reload); 2 the command could not run (bad arguments, server unreachable, token
//! refused). Errors say what to do next.

mod audit;
mod certs;
mod keys;
mod review;
mod rules;
mod serve;

use crate::config::Config;
use anyhow::anyhow;
use clap::{Parser, Subcommand, ValueEnum};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Exit code of a check that failed or a request the server refused.
const CHECK_FAILED: u8 = 1;
/// Exit code of a command that could not run.
const COULD_NOT_RUN: u8 = 2;

#[derive(Parser)]
#[command(
    name = "airlock",
    version,
    about = "Holds privileged API requests from AI agents until a human approves them",
    after_help = "Exit codes: 0 success, 1 a check failed or the server refused, 2 the command could not run."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the proxy and the admin listener until SIGTERM or Ctrl-C; SIGHUP reloads.
    Serve {
        /// The configuration file.
        #[arg(short, long, default_value = "airlock.yaml")]
        config: PathBuf,
    },
    /// Check, test and explain rules.
    Rules {
        #[command(subcommand)]
        cmd: RulesCmd,
    },
    /// Verify and export the audit log (needs neither upstream credentials nor the
    /// private signing key).
    Audit {
        #[command(subcommand)]
        cmd: AuditCmd,
    },
    /// List approvals (pending ones unless --status says otherwise), with what
    /// reviewers see: the show fields, the justification and who already voted.
    Pending(PendingArgs),
    /// Print one approval in full.
    Show(ShowArgs),
    /// Approve a held request.
    Approve(VoteArgs),
    /// Deny a held request; the reason reaches the agent.
    Deny(VoteArgs),
    /// Ask the running server to reload its configuration and rules; an invalid new
    /// set is refused and the old one stays in force.
    Reload(ApiArgs),
    /// Generate keys.
    Keys {
        #[command(subcommand)]
        cmd: KeysCmd,
    },
    /// Make certificates.
    Certs {
        #[command(subcommand)]
        cmd: CertsCmd,
    },
}

#[derive(Subcommand)]
enum CertsCmd {
    /// Make a local CA, a server certificate and an agent client certificate for trying
    /// TLS and mTLS (files mode 0600, never overwritten without --force), and print the
    /// config lines and a curl command.
    Dev {
        /// The folder to write dev-ca.pem, dev-ca-key.pem, airlock.pem, airlock-key.pem,
        /// agent.pem and agent-key.pem to.
        #[arg(long, default_value = "certs")]
        out: PathBuf,
        /// The agent's name: the client certificate's CN and its URI SAN
        /// spiffe://airlock.dev/agent/NAME.
        #[arg(long, default_value = "demo-agent")]
        agent: String,
        /// Another name (DNS name or IP address) for the server certificate, besides
        /// localhost, 127.0.0.1 and ::1 (repeatable).
        #[arg(long = "host")]
        hosts: Vec<String>,
        /// How many days the certificates are valid.
        #[arg(long, default_value_t = 30)]
        days: u32,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
}

/// How the reviewer commands reach the admin API.
#[derive(clap::Args)]
struct ApiArgs {
    /// Base URL of airlock's admin listener (`admin.listen` in airlock.yaml).
    #[arg(long, env = "AIRLOCK_URL", default_value = "http://127.0.0.1:9090")]
    url: String,
    /// A reviewer token: the secret whose sha256 digest is a reviewer's `token:` in
    /// airlock.yaml (`airlock keys new reviewer` makes one).
    #[arg(long, env = "AIRLOCK_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

/// Which approvals `pending` lists.
#[derive(Clone, Copy, ValueEnum)]
enum StatusFilter {
    /// Waiting for a decision.
    Pending,
    /// Approved, not yet forwarded.
    Approved,
    /// Denied by a reviewer.
    Denied,
    /// Expired without a decision.
    Expired,
    /// Approved and being forwarded now.
    Forwarding,
    /// Approved and forwarded.
    Consumed,
    /// Forwarded, but whether the upstream received it is unknown (never sent again).
    OutcomeUnknown,
    /// Abandoned before anyone was asked.
    Cancelled,
    /// Every status.
    All,
}

#[derive(clap::Args)]
struct PendingArgs {
    /// Which approvals to list.
    #[arg(long, value_enum, default_value = "pending")]
    status: StatusFilter,
    /// Print the API's JSON instead of the summary.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    api: ApiArgs,
}

#[derive(clap::Args)]
struct ShowArgs {
    /// The approval id, as `airlock pending` lists it.
    id: String,
    /// Print the API's JSON instead of the summary.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    api: ApiArgs,
}

#[derive(clap::Args)]
struct VoteArgs {
    /// The approval id, as `airlock pending` lists it.
    id: String,
    /// Why: recorded in the audit log; a deny reason reaches the agent. Rules with
    /// `require_reason: true` refuse a vote without one.
    #[arg(long)]
    reason: Option<String>,
    #[command(flatten)]
    api: ApiArgs,
}

#[derive(Subcommand)]
enum RulesCmd {
    /// Load config and rules; print file:line:col for each error; warn about rules that can never match.
    Check {
        /// The configuration file.
        #[arg(short, long, default_value = "airlock.yaml")]
        config: PathBuf,
        /// Exit 1 when there are warnings, not only errors.
        #[arg(long)]
        strict: bool,
    },
    /// Run the rules' `tests:` blocks; prints "N passed, N failed".
    Test {
        /// The configuration file.
        #[arg(short, long, default_value = "airlock.yaml")]
        config: PathBuf,
        /// Rule files to test (default: the rules the config names).
        files: Vec<PathBuf>,
    },
    /// Show what the proxy would do with a request (the verdict, the answer, and why each
    /// rule matched or not); exits 1 unless the verdict is allow.
    Explain {
        /// The configuration file.
        #[arg(short, long, default_value = "airlock.yaml")]
        config: PathBuf,
        /// The request method, e.g. DELETE.
        method: String,
        /// The URL the agent calls, path and query, e.g. /cloud/v1/projects/p1.
        url: String,
        /// A request header as 'name: value' (repeatable).
        #[arg(short = 'H', long = "header")]
        headers: Vec<String>,
        /// The request body.
        #[arg(short = 'd', long = "data")]
        data: Option<String>,
        /// The agent id the request comes from, as if it had presented its key
        /// (with agents configured, none means the proxy would answer 401).
        #[arg(long)]
        agent: Option<String>,
        /// Output format: human-readable text or one JSON object.
        #[arg(long, value_enum, default_value = "text")]
        format: ExplainFormat,
    },
}

/// How `rules explain` prints its answer.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ExplainFormat {
    /// The verdict, the answer and every rule, for people.
    Text,
    /// One JSON object, for scripts.
    Json,
}

/// Formats `audit export` writes.
#[derive(Clone, Copy, ValueEnum)]
enum ExportFormat {
    /// One JSON event per line, as stored and hashed.
    Jsonl,
}

#[derive(Subcommand)]
enum AuditCmd {
    /// Recompute the hash chain and check the checkpoints; exit 1 naming the first bad seq.
    /// Checkpoint signatures are checked with audit.verify_key (the public key), else
    /// with the public half of audit.signing_key when that file is readable.
    Verify {
        /// The configuration file (its store and audit sections are used).
        #[arg(short, long, default_value = "airlock.yaml")]
        config: PathBuf,
        /// Verify an exported JSONL file instead of the store.
        #[arg(long)]
        file: Option<PathBuf>,
        /// A checkpoint kept outside the log (a copy of the audit.witness file): the log
        /// must hold its seq with its hash, signed by the audit key.
        #[arg(long)]
        checkpoint: Option<PathBuf>,
    },
    /// Write audit events to stdout.
    Export {
        /// The configuration file (its store section is used).
        #[arg(short, long, default_value = "airlock.yaml")]
        config: PathBuf,
        /// Only events at or after this time: an RFC 3339 time (2026-01-02T03:04:05Z),
        /// a date (2026-01-02, midnight UTC) or a duration meaning that long ago (24h).
        #[arg(long, value_parser = audit::parse_since)]
        since: Option<chrono::DateTime<chrono::Utc>>,
        /// Output format.
        #[arg(long, value_enum, default_value = "jsonl")]
        format: ExportFormat,
    },
}

/// What `keys new` makes.
#[derive(Clone, Copy, ValueEnum)]
enum KeyKind {
    /// An agent key and the sha256: digest for `agents[].key`.
    Agent,
    /// A reviewer token and the sha256: digest for `reviewers[].token`.
    Reviewer,
    /// An Ed25519 key pair for signed audit checkpoints: writes the private and the
    /// public key files (mode 0600) and prints the config lines.
    Audit,
}

#[derive(Subcommand)]
enum KeysCmd {
    /// Make a fresh key and print what to put in airlock.yaml.
    New {
        /// What the key is for.
        kind: KeyKind,
        /// audit: where to write the private key (PKCS#8 PEM); never overwritten.
        #[arg(long, default_value = "audit-ed25519.pem")]
        out: PathBuf,
        /// audit: where to write the public key (SPKI PEM); by default next to --out, with
        /// .pub.pem instead of .pem; never overwritten.
        #[arg(long)]
        public_out: Option<PathBuf>,
    },
}

/// Runs the command line and returns the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            // Never a panic on a broken stderr: the exit code still tells.
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "airlock: {e:#}");
            ExitCode::from(COULD_NOT_RUN)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.cmd {
        Cmd::Serve { config } => serve::serve(&config),
        Cmd::Rules { cmd } => rules::rules_cmd(cmd),
        Cmd::Audit { cmd } => audit::audit_cmd(cmd),
        Cmd::Pending(a) => review::pending(a),
        Cmd::Show(a) => review::show(a),
        Cmd::Approve(a) => review::vote(a, "approve"),
        Cmd::Deny(a) => review::vote(a, "deny"),
        Cmd::Reload(a) => review::reload(a),
        Cmd::Keys {
            cmd:
                KeysCmd::New {
                    kind,
                    out,
                    public_out,
                },
        } => keys::new(kind, &out, public_out.as_deref()),
        Cmd::Certs {
            cmd:
                CertsCmd::Dev {
                    out,
                    agent,
                    hosts,
                    days,
                    force,
                },
        } => certs::dev(&certs::DevOptions {
            out,
            agent,
            hosts,
            days,
            force,
        }),
    }
}

/// Loads the config with every credential, as `serve` needs it.
fn load_config(path: &Path) -> anyhow::Result<Config> {
    Config::load(path).map_err(|d| anyhow!("invalid configuration:\n{d}"))
}

/// A multi-threaded runtime with `workers` threads (0 = one per core).
fn runtime(workers: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    // Blocking work is store I/O, serialized per connection: a few threads suffice.
    b.max_blocking_threads(32);
    if workers > 0 {
        b.worker_threads(workers);
    }
    Ok(b.enable_all().build()?)
}
