//! `airlock rules check|test|explain`: what a platform team runs before rolling rules out.
//!
//! It only loads and evaluates; it never starts a listener or touches the store.

use super::{load_config, runtime, ExplainFormat, RulesCmd};
use crate::config::Config;
use crate::rules::{self, Check};
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
            let policy =
                crate::request::Policy::new(std::sync::Arc::new(cfg), std::sync::Arc::new(set));
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
                    if v == rules::Verdict::Deny {
                        "deny"
                    } else {
                        "hold"
                    }
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
            "mode": *mode.as_str(),
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
