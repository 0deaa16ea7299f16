//! `tests:` blocks in rule files, as data. They are run through the proxy's own
//! request phases by `crate::proxy::simulate`, so a rule test can never disagree
//! with what `airlock serve` does.

use super::raw;
use crate::config::Source;

/// One test case from a rule file.
#[derive(Debug, Clone)]
pub struct RuleTest {
    /// `file:line:col` of the case, for failure messages.
    pub location: String,
    pub rule: String,
    pub method: String,
    pub url: String,
    pub agent: Option<String>,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub expect: String,
    pub expect_rules: Option<Vec<String>>,
}

impl RuleTest {
    pub fn from_raw(src: &Source, rule: &str, n: usize, t: &raw::RawTest) -> RuleTest {
        let d = src.diag_nth(&format!("name: {rule}"), "request:", n, String::new());
        let mut headers: Vec<(String, String)> = t
            .request
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut body = t.request.body.clone().unwrap_or_default().into_bytes();
        if let Some(j) = &t.request.json {
            body = serde_json::to_vec(j).unwrap_or_default();
            headers.push(("content-type".into(), "application/json".into()));
        }
        if let Some(f) = &t.request.form {
            body = form_urlencoded::Serializer::new(String::new())
                .extend_pairs(f.iter())
                .finish()
                .into_bytes();
            headers.push((
                "content-type".into(),
                "application/x-www-form-urlencoded".into(),
            ));
        }
        RuleTest {
            location: format!(
                "{}:{}:{} (rule {rule}, test {})",
                d.file.display(),
                d.line,
                d.col,
                n + 1
            ),
            rule: rule.to_string(),
            method: t.request.method.to_ascii_uppercase(),
            url: t.request.url.clone(),
            agent: t.request.agent.clone(),
            headers,
            body,
            expect: t.expect.clone(),
            expect_rules: t.rules.clone(),
        }
    }
}

/// The words a test's `expect:` may use: a verdict, or the code of an answer the proxy
/// gives before the rules decide.
pub const EXPECTATIONS: [&str; 7] = [
    "allow",
    "deny",
    "approve",
    "no_route",
    "bad_path",
    "bad_request",
    "unauthenticated",
];
