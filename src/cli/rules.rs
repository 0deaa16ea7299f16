//! `airlock rules check|test|explain`: what a platform team runs before rolling rules out.
//!
//! It only loads and evaluates; it never starts a listener or touches the store.

use super::{load_config, RulesCmd};
use crate::config::Config;
use crate::rules::{self, testing, Check};
use anyhow::anyhow;
use std::process::ExitCode;

/// `airlock rules check|test|explain`.
pub(super) fn rules_cmd(cmd: RulesCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        RulesCmd::Check { config, strict } => {
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
                    let summary = format!(
                        "{} rule(s) in {} file(s), {} upstream(s), {} test case(s)",
                        l.set.rules.len(),
                        l.files.len(),
                        cfg.upstreams.len(),
                        l.tests.len()
                    );
                    let warned = l.warnings.len();
                    if warned == 0 {
                        println!("ok: {summary}");
                        Ok(ExitCode::SUCCESS)
                    } else if strict {
                        println!("failed: {summary}, {warned} warning(s) (--strict)");
                        Ok(ExitCode::from(1))
                    } else {
                        println!("ok: {summary}, {warned} warning(s)");
                        Ok(ExitCode::SUCCESS)
                    }
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
            let outcomes = testing::run(&cfg, &set, &tests);
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
            let router = crate::proxy::route::Router::new(&cfg.upstreams);
            let method = method.to_ascii_uppercase();
            let ev = testing::evaluate_request(
                &cfg,
                &loaded.set,
                &router,
                &method,
                &url,
                &hs,
                &body,
                agent.as_deref(),
            )
            .map_err(|e| anyhow!(e))?;
            match ev {
                testing::Evaluated::Refused(code, msg) => {
                    println!("verdict: {} ({msg})", code.as_str());
                }
                testing::Evaluated::Decided {
                    upstream,
                    path,
                    decision,
                    checks,
                } => {
                    println!("verdict: {}", decision.verdict.as_str());
                    println!("upstream: {upstream}  path: {path}");
                    if decision.matched.is_empty() {
                        println!(
                            "no rule matched: default is {}",
                            loaded.set.default_verdict().as_str()
                        );
                    }
                    for (i, check) in checks {
                        let r = &loaded.set.rules[i];
                        match check {
                            Check::Matched => {
                                println!("  match  {} -> {}", r.name, r.verdict.as_str())
                            }
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
            Ok(ExitCode::SUCCESS)
        }
    }
}
