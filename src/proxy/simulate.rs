//! The proxy's request phases without the network, for `airlock rules test` and
//! `airlock rules explain`: a request described in words (method, URL, headers, body,
//! the agent's id) goes through the same [`prepare`] and [`decide`] as a real one, so
//! a rule test passes exactly when `airlock serve` would act as it expects.

use super::ProxyError;
use crate::config::Mode;
use crate::http::AirlockError;
use crate::request::{decide, prepare, Identify, Policy, RequestRecord};
use crate::rules::testing::{RuleTest, EXPECTATIONS};
use crate::rules::{Body, Check, Decision, RequestView, Verdict};
use bytes::Bytes;
use http_body_util::Full;

/// A request described for simulation.
#[derive(Debug, Clone, Copy)]
pub struct Simulation<'a> {
    pub method: &'a str,
    /// The URL the agent calls: a path (`/cloud/v1/…`) or an absolute URL.
    pub url: &'a str,
    pub headers: &'a [(String, String)],
    pub body: &'a [u8],
    /// The agent's id, as if it had presented its credential.
    pub agent: Option<&'a str>,
}

/// A simulated request that cannot even be built.
#[derive(Debug, thiserror::Error)]
pub enum SimulationError {
    #[error("invalid method {0:?}")]
    Method(String),
    #[error("invalid url {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("invalid header {0:?}")]
    Header(String),
}

/// What the proxy would do with a simulated request. (One per simulated request, never
/// on the request path, so the variants' sizes do not matter.)
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Simulated {
    /// Answered by airlock before the rules decided (`no_route`, `unauthenticated`, …).
    Refused(AirlockError),
    /// Decided by the rules.
    Decided {
        upstream: String,
        /// The path the rules matched (normalized, prefix removed).
        path: String,
        agent: String,
        /// The method the rules weighed (an override applied).
        method: String,
        decision: Decision,
        rules: Vec<String>,
        /// Every rule with whether it matched and why not.
        checks: Vec<(usize, Check)>,
        /// What the agent would be answered by airlock itself (`denied_by_rule`);
        /// `None` when the request would be forwarded or held.
        answer: Option<AirlockError>,
        mode: Mode,
    },
}

impl Simulated {
    /// The word a test's `expect:` compares with: the verdict, or the refusal's code.
    pub fn outcome(&self) -> &str {
        match self {
            Simulated::Refused(e) => e.error.as_str(),
            Simulated::Decided { decision, .. } => decision.verdict.as_str(),
        }
    }
}

/// Runs a described request through the proxy's prepare and decide phases.
pub async fn simulate(policy: &Policy, sim: Simulation<'_>) -> Result<Simulated, SimulationError> {
    let mut builder = http::Request::builder()
        .method(
            http::Method::from_bytes(sim.method.as_bytes())
                .map_err(|_| SimulationError::Method(sim.method.to_string()))?,
        )
        .uri(sim.url);
    for (k, v) in sim.headers {
        let name = http::HeaderName::from_bytes(k.as_bytes())
            .map_err(|_| SimulationError::Header(k.clone()))?;
        let value =
            http::HeaderValue::from_str(v).map_err(|_| SimulationError::Header(k.clone()))?;
        builder = builder.header(name, value);
    }
    let req = builder
        .body(Full::new(Bytes::copy_from_slice(sim.body)))
        .map_err(|e| SimulationError::Url {
            url: sim.url.to_string(),
            reason: e.to_string(),
        })?;
    let (mut parts, body) = req.into_parts();
    let mut record = RequestRecord::new(String::from("simulated"), parts.method.as_str());
    let refused =
        |e: ProxyError, record: &RequestRecord| Simulated::Refused(e.answer(&record.rules));
    let prepared = match prepare(
        policy,
        &mut parts,
        Identify::Named(sim.agent),
        false,
        &mut record,
    )
    .await
    {
        Ok(p) => p,
        Err(e) => return Ok(refused(e.into(), &record)),
    };
    let (decision, _) = match decide(policy, &prepared, &parts, body, &mut record).await {
        Ok(d) => d,
        Err(e) => return Ok(refused(e.into(), &record)),
    };
    let view = crate::request::view(policy, &prepared, &parts, !sim.body.is_empty());
    // The body as decide saw it: compressed or too large means uninspectable.
    let inspect = if crate::http::content_encoding(&parts.headers).is_some() {
        Body::Uninspectable("the body is compressed")
    } else if sim.body.len() > policy.cfg.limits.inspect_body {
        Body::Uninspectable("the body is larger than limits.inspect_body")
    } else {
        Body::Bytes(sim.body)
    };
    // The view weighs the request line's method and the override alike, as decide
    // does; a method the body names is weighed as decide found it.
    let view = RequestView {
        body_method: record
            .acting_as
            .as_deref()
            .filter(|m| *m != prepared.method),
        ..view
    };
    let mut checks = policy.rules.explain(&view, inspect);
    // A body decide could not read may name any method: it matched strict rules for
    // every method (fail closed); explain those as decide weighed them.
    if matches!(inspect, Body::Uninspectable(_)) {
        let any = RequestView {
            body_method: Some(crate::rules::ANY_METHOD),
            ..view
        };
        for ((i, check), (_, by_any)) in checks.iter_mut().zip(policy.rules.explain(&any, inspect))
        {
            if decision.matched.contains(i) && matches!(check, Check::Missed(_)) {
                *check = by_any;
            }
        }
    }
    let answer =
        (decision.verdict == Verdict::Deny && policy.cfg.mode == Mode::Enforce).then(|| {
            ProxyError::DeniedByRule {
                rules: record.rules.clone(),
                fail_closed: decision.fail_closed,
            }
            .answer(&record.rules)
        });
    Ok(Simulated::Decided {
        upstream: view.upstream.to_string(),
        path: prepared.path.clone(),
        agent: prepared.caller.id.clone(),
        method: prepared.method.clone(),
        rules: record.rules,
        decision,
        checks,
        answer,
        mode: policy.cfg.mode,
    })
}

/// The result of one rule test.
#[derive(Debug, Clone)]
pub struct TestOutcome {
    pub test: RuleTest,
    pub passed: bool,
    pub detail: String,
}

/// Runs rule tests and reports each.
pub async fn run_tests(policy: &Policy, tests: &[RuleTest]) -> Vec<TestOutcome> {
    let mut out = Vec::with_capacity(tests.len());
    for t in tests {
        out.push(run_test(policy, t).await);
    }
    out
}

async fn run_test(policy: &Policy, t: &RuleTest) -> TestOutcome {
    let done = |passed: bool, detail: String| TestOutcome {
        test: t.clone(),
        passed,
        detail,
    };
    if !EXPECTATIONS.contains(&t.expect.as_str()) {
        return done(
            false,
            format!(
                "expect: {:?} is not one of {}",
                t.expect,
                EXPECTATIONS.join(", ")
            ),
        );
    }
    let sim = Simulation {
        method: &t.method,
        url: &t.url,
        headers: &t.headers,
        body: &t.body,
        agent: t.agent.as_deref(),
    };
    let result = match simulate(policy, sim).await {
        Ok(r) => r,
        Err(e) => return done(false, e.to_string()),
    };
    let got = result.outcome().to_string();
    let mut passed = got == t.expect;
    let mut detail = format!("expected {}, got {got}", t.expect);
    match &result {
        Simulated::Decided { rules, .. } => {
            detail.push_str(&format!(
                " (matched: {})",
                if rules.is_empty() {
                    "none".to_string()
                } else {
                    rules.join(", ")
                }
            ));
            if let Some(want) = &t.expect_rules {
                let mut a = want.clone();
                let mut b = rules.clone();
                a.sort();
                b.sort();
                if a != b {
                    passed = false;
                    detail.push_str(&format!("; expected rules {}", want.join(", ")));
                }
            }
        }
        Simulated::Refused(e) => detail.push_str(&format!(" ({})", e.message)),
    }
    done(passed, detail)
}
