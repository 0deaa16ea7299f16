//! The command line (clap): `serve`, `rules check|test|explain`, `audit
//! verify|export`, `pending`, `approve`, `deny`, `keys new`.
//!
//! Exit codes: 0 success, 1 a check failed (config errors, failing rule tests, a
//! broken audit chain), 2 the command could not run.

use crate::audit;
use crate::config::{Config, LogFormat};
use crate::rules::{self, Check};
use anyhow::{anyhow, Context};
use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "airlock",
    version,
    about = "Holds privileged API requests from AI agents until a human approves them"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the proxy and the admin listener.
    Serve {
        #[arg(short, long, default_value = "airlock.yaml")]
        config: PathBuf,
    },
    /// Check, test and explain rules.
    Rules {
        #[command(subcommand)]
        cmd: RulesCmd,
    },
    /// Verify and export the audit log.
    Audit {
        #[command(subcommand)]
        cmd: AuditCmd,
    },
    /// List pending approvals (AIRLOCK_URL, AIRLOCK_TOKEN).
    Pending {
        #[arg(long, env = "AIRLOCK_URL", default_value = "http://127.0.0.1:9090")]
        url: String,
        #[arg(long, env = "AIRLOCK_TOKEN", hide_env_values = true)]
        token: String,
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
    },
    /// Approve a held request.
    Approve(VoteArgs),
    /// Deny a held request; the reason reaches the agent.
    Deny(VoteArgs),
    /// Generate keys.
    Keys {
        #[command(subcommand)]
        cmd: KeysCmd,
    },
}

#[derive(clap::Args)]
struct VoteArgs {
    id: String,
    #[arg(long)]
    reason: Option<String>,
    #[arg(long, env = "AIRLOCK_URL", default_value = "http://127.0.0.1:9090")]
    url: String,
    #[arg(long, env = "AIRLOCK_TOKEN", hide_env_values = true)]
    token: String,
}

#[derive(Subcommand)]
enum RulesCmd {
    /// Load config and rules; print file:line:col for each error; warn about rules that can never match.
    Check {
        #[arg(short, long, default_value = "airlock.yaml")]
        config: PathBuf,
    },
    /// Run the rules' `tests:` blocks; prints "N passed, N failed".
    Test {
        #[arg(short, long, default_value = "airlock.yaml")]
        config: PathBuf,
        /// Rule files to test (default: the rules the config names).
        files: Vec<PathBuf>,
    },
    /// Show the verdict for a request and why each rule matched or not.
    Explain {
        #[arg(short, long, default_value = "airlock.yaml")]
        config: PathBuf,
        method: String,
        url: String,
        #[arg(short = 'H', long = "header")]
        headers: Vec<String>,
        #[arg(short = 'd', long = "data")]
        data: Option<String>,
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
    Text,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum ExportFormat {
    Jsonl,
}

#[derive(Subcommand)]
enum AuditCmd {
    /// Recompute the hash chain and checkpoint signatures.
    Verify {
        #[arg(short, long, default_value = "airlock.yaml")]
        config: PathBuf,
        /// Verify an exported JSONL file instead of the store.
        #[arg(long)]
        file: Option<PathBuf>,
    },
    /// Write audit events to stdout.
    Export {
        #[arg(short, long, default_value = "airlock.yaml")]
        config: PathBuf,
        /// Only events at or after this RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
        #[arg(long, value_enum, default_value = "jsonl")]
        format: ExportFormat,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum KeyKind {
    Agent,
    Reviewer,
    /// An Ed25519 key for signed audit checkpoints (PKCS#8 PEM on stdout).
    Audit,
}

#[derive(Subcommand)]
enum KeysCmd {
    /// Print a fresh key and the sha256: digest for the config.
    New { kind: KeyKind },
}

/// Runs the command line and returns the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("airlock: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn load_config(path: &std::path::Path) -> anyhow::Result<Config> {
    Config::load(path).map_err(|d| anyhow!("invalid configuration:\n{d}"))
}

fn runtime(workers: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    // Blocking work is store I/O, serialized per connection: a few threads suffice.
    b.max_blocking_threads(32);
    if workers > 0 {
        b.worker_threads(workers);
    }
    Ok(b.enable_all().build()?)
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.cmd {
        Cmd::Serve { config } => serve(&config),
        Cmd::Rules { cmd } => rules_cmd(cmd),
        Cmd::Audit { cmd } => audit_cmd(cmd),
        Cmd::Pending { url, token, json } => pending(&url, &token, json),
        Cmd::Approve(a) => vote(a, "approve"),
        Cmd::Deny(a) => vote(a, "deny"),
        Cmd::Keys {
            cmd: KeysCmd::New { kind },
        } => {
            match kind {
                KeyKind::Agent | KeyKind::Reviewer => {
                    let word = if matches!(kind, KeyKind::Agent) {
                        "agent"
                    } else {
                        "reviewer"
                    };
                    let (key, digest) = crate::identity::new_key(word);
                    println!("key:    {key}");
                    println!("digest: {digest}");
                    eprintln!("Give the key to the {word} (it is shown once); put the digest in airlock.yaml.");
                }
                KeyKind::Audit => print!("{}", audit::generate_signing_key_pem()),
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn init_tracing(cfg: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("AIRLOCK_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!("airlock={},warn", cfg.log_level))
    });
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match cfg.log_format {
        LogFormat::Json => b.json().try_init(),
        LogFormat::Human => b.try_init(),
    };
}

fn serve(path: &std::path::Path) -> anyhow::Result<ExitCode> {
    let cfg = load_config(path)?;
    init_tracing(&cfg);
    let rt = runtime(cfg.workers)?;
    rt.block_on(async move {
        let opts = crate::StartOptions {
            watch: true,
            ..Default::default()
        };
        let running = crate::start_with(cfg, opts).await?;
        print_startup(&running);
        spawn_reload_on_sighup(running.airlock.clone());
        wait_for_signal().await;
        tracing::info!("shutting down");
        running.stop().await;
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// What an operator needs to know at start: what runs, from which config, in which
/// mode, with which rules, upstreams, store and listeners, under which PID.
fn print_startup(running: &crate::Running) {
    let snap = running.airlock.snapshot();
    let cfg = snap.cfg();
    println!(
        "airlock {} (pid {})",
        env!("CARGO_PKG_VERSION"),
        std::process::id()
    );
    println!("airlock: config {}", cfg.file.display());
    println!(
        "airlock: mode {}, default {}",
        crate::state::mode_name(cfg.mode),
        if cfg.default_allow { "allow" } else { "deny" }
    );
    println!(
        "airlock: {} rule(s), version {}{}",
        snap.policy.rules.rules.len(),
        crate::state::rules_version(&snap.policy.rules),
        if running.warnings.is_empty() {
            String::new()
        } else {
            format!(", {} warning(s)", running.warnings.len())
        }
    );
    for u in &cfg.upstreams {
        let route = match &u.route {
            crate::config::Route::Prefix(p) => format!("prefix {p}"),
            crate::config::Route::Host(h) => format!("host {h}"),
        };
        println!("airlock: upstream {} ({route}) -> {}", u.name, u.url);
    }
    println!("airlock: store {}", crate::store::redacted_url(&cfg.store));
    println!("airlock: proxy listening on http://{}", running.proxy_addr);
    if let Some(a) = running.admin_addr {
        println!("airlock: admin listening on http://{a}");
    }
    use std::io::Write;
    let _ = std::io::stdout().flush();
}

/// Reloads config and rules on `SIGHUP`; an invalid new set is refused and logged,
/// and the old one stays in force. Listener addresses and the store are not reloaded.
fn spawn_reload_on_sighup(airlock: std::sync::Arc<crate::state::Airlock>) {
    #[cfg(unix)]
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            return;
        };
        while hup.recv().await.is_some() {
            if let Err(e) = airlock.reload().await {
                tracing::error!("reload refused, the previous configuration stays in force:\n{e}");
            }
        }
    });
    #[cfg(not(unix))]
    let _ = airlock;
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn rules_cmd(cmd: RulesCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        RulesCmd::Check { config } => {
            let cfg = match Config::load(&config) {
                Ok(c) => c,
                Err(d) => {
                    eprintln!("{d}");
                    return Ok(ExitCode::from(1));
                }
            };
            match rules::load(&cfg) {
                Ok(l) => {
                    for w in &l.warnings {
                        eprintln!("{w}");
                    }
                    println!(
                        "ok: {} rule(s) in {} file(s), {} upstream(s), {} test case(s)",
                        l.set.rules.len(),
                        l.files.len(),
                        cfg.upstreams.len(),
                        l.tests.len()
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Err(d) => {
                    eprintln!("{d}");
                    Ok(ExitCode::from(1))
                }
            }
        }
        RulesCmd::Test { config, files } => {
            let cfg = match Config::load(&config) {
                Ok(c) => c,
                Err(d) => {
                    eprintln!("{d}");
                    return Ok(ExitCode::from(1));
                }
            };
            // The whole rule set decides; FILES only select which tests run.
            let loaded = match rules::load(&cfg) {
                Ok(l) => l,
                Err(d) => {
                    eprintln!("{d}");
                    return Ok(ExitCode::from(1));
                }
            };
            let (set, tests) = if files.is_empty() {
                (loaded.set, loaded.tests)
            } else {
                let extra = match rules::load_files(&cfg, &files) {
                    Ok(l) => l,
                    Err(d) => {
                        eprintln!("{d}");
                        return Ok(ExitCode::from(1));
                    }
                };
                let in_config = files.iter().all(|f| {
                    let f = f.canonicalize().ok();
                    loaded.files.iter().any(|g| g.canonicalize().ok() == f)
                });
                if in_config {
                    (loaded.set, extra.tests)
                } else {
                    (extra.set, extra.tests)
                }
            };
            let policy = crate::request::Policy::new(std::sync::Arc::new(cfg), std::sync::Arc::new(set));
            let outcomes = runtime(1)?.block_on(crate::proxy::simulate::run_tests(&policy, &tests));
            let mut failed = 0;
            for o in &outcomes {
                if o.passed {
                    println!("ok    {} {} {}", o.test.location, o.test.method, o.test.url);
                } else {
                    failed += 1;
                    println!(
                        "FAIL  {} {} {}: {}",
                        o.test.location, o.test.method, o.test.url, o.detail
                    );
                }
            }
            println!("{} passed, {} failed", outcomes.len() - failed, failed);
            Ok(if failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        RulesCmd::Explain {
            config,
            method,
            url,
            headers,
            data,
            agent,
            format,
        } => {
            let cfg = load_config(&config)?;
            let loaded = rules::load(&cfg).map_err(|d| anyhow!("{d}"))?;
            let mut hs = Vec::new();
            for h in &headers {
                let (k, v) = h
                    .split_once(':')
                    .ok_or_else(|| anyhow!("header {h:?} is not 'name: value'"))?;
                hs.push((k.trim().to_string(), v.trim().to_string()));
            }
            let body = data.unwrap_or_default().into_bytes();
            let policy = crate::request::Policy::new(
                std::sync::Arc::new(cfg),
                std::sync::Arc::new(loaded.set),
            );
            let sim = crate::proxy::simulate::Simulation {
                method: &method,
                url: &url,
                headers: &hs,
                body: &body,
                agent: agent.as_deref(),
            };
            let result = runtime(1)?
                .block_on(crate::proxy::simulate::simulate(&policy, sim))
                .map_err(|e| anyhow!(e))?;
            let allowed = matches!(
                &result,
                crate::proxy::simulate::Simulated::Decided { decision, .. }
                    if decision.verdict == rules::Verdict::Allow
            );
            if format == ExplainFormat::Json {
                println!("{}", explain_json(&policy, &result));
            } else {
                print_explain(&policy, &result);
            }
            Ok(if allowed {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
    }
}

/// `rules explain` as text: the verdict, what the proxy would answer, and every rule.
fn print_explain(policy: &crate::request::Policy, result: &crate::proxy::simulate::Simulated) {
    use crate::proxy::simulate::Simulated;
    match result {
        Simulated::Refused(e) => {
            println!("verdict: {}", e.error.as_str());
            println!(
                "answer:  {} {} ({})",
                e.status().as_u16(),
                e.error.as_str(),
                e.message
            );
        }
        Simulated::Decided {
            upstream,
            path,
            agent,
            method,
            decision,
            checks,
            answer,
            mode,
            ..
        } => {
            println!("verdict: {}", decision.verdict.as_str());
            let observe = *mode == crate::config::Mode::Observe;
            match (answer, decision.verdict) {
                (Some(e), _) => println!(
                    "answer:  {} {} ({})",
                    e.status().as_u16(),
                    e.error.as_str(),
                    e.message
                ),
                (None, rules::Verdict::Allow) => println!("answer:  forwarded to {upstream}"),
                (None, v) if observe => println!(
                    "answer:  forwarded to {upstream} (observe mode; enforce would {})",
                    if v == rules::Verdict::Deny { "deny" } else { "hold" }
                ),
                (None, _) => println!("answer:  held for approval, then forwarded or 403"),
            }
            println!("upstream: {upstream}  path: {path}  method: {method}  agent: {agent}");
            if decision.matched.is_empty() {
                println!(
                    "no rule matched: default is {}",
                    policy.rules.default_verdict().as_str()
                );
            }
            for (i, check) in checks {
                let r = &policy.rules.rules[*i];
                match check {
                    Check::Matched => println!("  match  {} -> {}", r.name, r.verdict.as_str()),
                    Check::MatchedFailClosed(why) => println!(
                        "  match  {} -> {} (fail closed: {why})",
                        r.name,
                        r.verdict.as_str()
                    ),
                    Check::Missed(why) => println!("  -      {}: {why}", r.name),
                }
            }
        }
    }
}

/// `rules explain --format json`.
fn explain_json(
    policy: &crate::request::Policy,
    result: &crate::proxy::simulate::Simulated,
) -> serde_json::Value {
    use crate::proxy::simulate::Simulated;
    match result {
        Simulated::Refused(e) => serde_json::json!({
            "verdict": e.error.as_str(),
            "status": e.status().as_u16(),
            "error": e.error.as_str(),
            "message": e.message,
        }),
        Simulated::Decided {
            upstream,
            path,
            agent,
            method,
            decision,
            rules,
            checks,
            answer,
            mode,
        } => serde_json::json!({
            "verdict": decision.verdict.as_str(),
            "mode": crate::state::mode_name(*mode),
            "status": answer.as_ref().map(|e| e.status().as_u16()),
            "error": answer.as_ref().map(|e| e.error.as_str()),
            "message": answer.as_ref().map(|e| e.message.clone()),
            "upstream": upstream,
            "path": path,
            "method": method,
            "agent": agent,
            "rules": rules,
            "checks": checks.iter().map(|(i, c)| {
                let r = &policy.rules.rules[*i];
                let (matched, why) = match c {
                    Check::Matched => (true, None),
                    Check::MatchedFailClosed(w) => (true, Some(format!("fail closed: {w}"))),
                    Check::Missed(w) => (false, Some(w.clone())),
                };
                serde_json::json!({"rule": r.name, "then": r.verdict.as_str(), "matched": matched, "why": why})
            }).collect::<Vec<_>>(),
        }),
    }
}

fn audit_cmd(cmd: AuditCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        AuditCmd::Verify { config, file } => {
            let cfg = load_config(&config)?;
            let key = match &cfg.audit.signing_key {
                Some(p) => Some(
                    audit::CheckpointSigner::from_pem_file(p)
                        .map_err(|e| anyhow!("audit.signing_key: {e}"))?
                        .verifying_key(),
                ),
                None => None,
            };
            let (events, checkpoints) = match file {
                Some(f) => {
                    let fh = std::fs::File::open(&f).with_context(|| format!("{}", f.display()))?;
                    (
                        audit::read_jsonl(std::io::BufReader::new(fh))
                            .map_err(|e| anyhow!("{e}"))?,
                        Vec::new(),
                    )
                }
                None => {
                    let rt = runtime(1)?;
                    rt.block_on(async {
                        let store = open_store(&cfg).await?;
                        let ev = store.audit_events(None).await.map_err(|e| anyhow!("{e}"))?;
                        let cps = store
                            .audit_checkpoints()
                            .await
                            .map_err(|e| anyhow!("{e}"))?;
                        Ok::<_, anyhow::Error>((ev, cps))
                    })?
                }
            };
            let report = audit::verify(&events, &checkpoints, key.as_ref());
            if report.ok() {
                println!("ok: {report}");
                Ok(ExitCode::SUCCESS)
            } else {
                println!("BROKEN: {report}");
                Ok(ExitCode::from(1))
            }
        }
        AuditCmd::Export {
            config,
            since,
            format: ExportFormat::Jsonl,
        } => {
            let cfg = load_config(&config)?;
            let since = match since {
                Some(s) => Some(
                    chrono::DateTime::parse_from_rfc3339(&s)
                        .map_err(|e| anyhow!("--since {s:?}: {e}"))?
                        .with_timezone(&chrono::Utc),
                ),
                None => None,
            };
            let rt = runtime(1)?;
            let events = rt.block_on(async {
                let store = open_store(&cfg).await?;
                store.audit_events(since).await.map_err(|e| anyhow!("{e}"))
            })?;
            use std::io::Write;
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            for ev in &events {
                writeln!(out, "{}", audit::to_jsonl_line(ev))?;
            }
            out.flush()?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn open_store(cfg: &Config) -> anyhow::Result<std::sync::Arc<dyn crate::store::Store>> {
    let base = cfg
        .file
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_default();
    crate::store::open(&cfg.store, &base)
        .await
        .map_err(|e| anyhow!("{e}"))
}

/// The reviewer CLI's connection to the admin API: one blocking call at a time.
struct ApiClient {
    rt: tokio::runtime::Runtime,
    http: reqwest::Client,
}

impl ApiClient {
    fn new() -> anyhow::Result<ApiClient> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .build()?;
        Ok(ApiClient { rt, http })
    }

    /// Sends one request with the reviewer token: (status, JSON body or null).
    fn call(
        &self,
        method: reqwest::Method,
        url: &str,
        token: &str,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<(u16, serde_json::Value)> {
        self.rt.block_on(async {
            let mut req = self.http.request(method, url).bearer_auth(token);
            if let Some(b) = body {
                req = req.json(&b);
            }
            let resp = req
                .send()
                .await
                .map_err(|e| anyhow!("cannot reach {url}: {e}"))?;
            let status = resp.status().as_u16();
            let v: serde_json::Value = resp.json().await.unwrap_or(serde_json::Value::Null);
            Ok((status, v))
        })
    }
}

fn api_error(status: u16, v: &serde_json::Value) -> anyhow::Error {
    anyhow!(
        "HTTP {status}: {} {}",
        v["error"].as_str().unwrap_or("error"),
        v["message"].as_str().unwrap_or("")
    )
}

fn pending(url: &str, token: &str, raw: bool) -> anyhow::Result<ExitCode> {
    let c = ApiClient::new()?;
    let (status, v) = c.call(
        reqwest::Method::GET,
        &format!(
            "{}/api/v1/approvals?status=pending",
            url.trim_end_matches('/')
        ),
        token,
        None,
    )?;
    if status != 200 {
        return Err(api_error(status, &v));
    }
    if raw {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    let list = v["approvals"].as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        println!("no pending approvals");
    }
    for a in list {
        let votes = a["votes"].as_array().map(|x| x.len()).unwrap_or(0);
        println!(
            "{}  {} {} {}  agent={}  rules={}  votes={}/{}  expires_in={}s",
            a["id"].as_str().unwrap_or(""),
            a["upstream"].as_str().unwrap_or(""),
            a["method"].as_str().unwrap_or(""),
            a["url"].as_str().unwrap_or(""),
            a["agent"].as_str().unwrap_or(""),
            a["rules"]
                .as_array()
                .map(|r| r
                    .iter()
                    .filter_map(|x| x.as_str())
                    .collect::<Vec<_>>()
                    .join(","))
                .unwrap_or_default(),
            votes,
            a["quorum"],
            a["expires_in"],
        );
        if let Some(j) = a["justification"].as_str() {
            println!("    justification: {j}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn vote(a: VoteArgs, decision: &str) -> anyhow::Result<ExitCode> {
    let c = ApiClient::new()?;
    let body = serde_json::json!({"decision": decision, "reason": a.reason});
    let (status, v) = c.call(
        reqwest::Method::POST,
        &format!(
            "{}/api/v1/approvals/{}/votes",
            a.url.trim_end_matches('/'),
            a.id
        ),
        &a.token,
        Some(body),
    )?;
    if status != 200 {
        eprintln!("airlock: {}", api_error(status, &v));
        return Ok(ExitCode::from(1));
    }
    println!(
        "{}: {} (status now {})",
        a.id,
        decision,
        v["status"].as_str().unwrap_or("?")
    );
    Ok(ExitCode::SUCCESS)
}
