//! The reviewer's command line over the admin API (`AIRLOCK_URL`, `AIRLOCK_TOKEN`):
//! `pending`, `show`, `approve`, `deny`, `reload`.
//!
//! It is a client only: everything it shows comes from the server's answer, and every
//! decision is the server's. When the server cannot be reached or refuses the token,
//! the error says what to check; the token is never printed.

use super::{ApiArgs, PendingArgs, ShowArgs, StatusFilter, VoteArgs, CHECK_FAILED};
use anyhow::anyhow;
use reqwest::{Method, Url};
use serde_json::Value;
use std::process::ExitCode;
use std::time::Duration;

/// How long one call to the admin API may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Width of the label column in `show`.
const LABEL: usize = 15;

/// The reviewer CLI's connection to the admin API: one blocking call at a time.
struct ApiClient {
    rt: tokio::runtime::Runtime,
    http: reqwest::Client,
    /// The admin listener's base URL, as given.
    base: String,
    token: String,
}

/// The server's answer to one call.
struct Answer {
    status: u16,
    /// The JSON body, or null when there was none.
    body: Value,
}

impl ApiClient {
    fn new(api: ApiArgs) -> anyhow::Result<ApiClient> {
        let token = api.token.filter(|t| !t.trim().is_empty()).ok_or_else(|| {
            anyhow!(
                "no reviewer token: set AIRLOCK_TOKEN (or pass --token) to a reviewer token; `airlock keys new reviewer` makes one"
            )
        })?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let http = reqwest::Client::builder().timeout(CALL_TIMEOUT).build()?;
        Ok(ApiClient {
            rt,
            http,
            base: api.url.trim_end_matches('/').to_string(),
            token,
        })
    }

    /// `base` + the path `segments` (each percent-encoded as one segment).
    fn url(&self, segments: &[&str]) -> anyhow::Result<Url> {
        let not_a_url = || {
            anyhow!(
                "AIRLOCK_URL {:?} is not a URL: give airlock's admin listener like http://127.0.0.1:9090",
                self.base
            )
        };
        let mut url = Url::parse(&self.base).map_err(|_| not_a_url())?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(not_a_url());
        }
        url.path_segments_mut()
            .map_err(|()| not_a_url())?
            .pop_if_empty()
            .extend(segments);
        Ok(url)
    }

    /// Sends one request with the reviewer token.
    fn call(&self, method: Method, url: Url, body: Option<Value>) -> anyhow::Result<Answer> {
        self.rt.block_on(async {
            let mut req = self.http.request(method, url).bearer_auth(&self.token);
            if let Some(b) = body {
                req = req.json(&b);
            }
            let resp = req.send().await.map_err(|e| self.unreachable(&e))?;
            let status = resp.status().as_u16();
            let body = resp.json().await.unwrap_or(Value::Null);
            Ok(Answer { status, body })
        })
    }

    fn unreachable(&self, e: &reqwest::Error) -> anyhow::Error {
        if e.is_timeout() {
            return anyhow!(
                "airlock at {} did not answer within {}s: is it overloaded, or is AIRLOCK_URL the right address?",
                self.base,
                CALL_TIMEOUT.as_secs()
            );
        }
        anyhow!(
            "could not reach airlock at {}: is `airlock serve` running, and is AIRLOCK_URL its admin listener? ({})",
            self.base,
            root_cause(e)
        )
    }

    /// Whether `base` answers `GET /healthz` as airlock's admin listener does: asked
    /// only after an answer that suggests AIRLOCK_URL points somewhere else.
    fn is_admin_listener(&self) -> bool {
        let Ok(url) = self.url(&["healthz"]) else {
            return false;
        };
        self.rt.block_on(async {
            match self.http.get(url).send().await {
                Ok(r) if r.status().is_success() => {
                    r.json::<Value>().await.is_ok_and(|v| v["status"] == "ok")
                }
                _ => false,
            }
        })
    }

    /// An answer other than 200 as an error saying what to do. Token problems are
    /// errors the command could not run past (exit 2); other refusals are the
    /// server's verdict on this request (exit 1).
    fn refused(&self, a: &Answer) -> Refusal {
        let code = a.body["error"].as_str().unwrap_or("");
        let message = a.body["message"].as_str().unwrap_or("");
        let said = if code.is_empty() {
            format!("HTTP {}", a.status)
        } else {
            format!("HTTP {} {code}: {message}", a.status)
        };
        let suspicious = a.status == 401 || code == "no_route" || a.body.is_null();
        if suspicious && !self.is_admin_listener() {
            return Refusal::CannotRun(anyhow!(
                "{} is not airlock's admin listener (it answered {said}): set AIRLOCK_URL to `admin.listen` from airlock.yaml, not the proxy's `listen`",
                self.base
            ));
        }
        match (a.status, code) {
            (401, _) => Refusal::CannotRun(anyhow!(
                "airlock refused the token ({said}): set AIRLOCK_TOKEN to a reviewer token, one whose sha256 digest is a reviewer's `token:` in airlock.yaml"
            )),
            (_, "agent_credential") => Refusal::CannotRun(anyhow!(
                "AIRLOCK_TOKEN is an agent key ({said}): the admin API takes reviewer tokens only"
            )),
            _ => Refusal::Refused(said),
        }
    }
}

/// Why a call did not succeed.
enum Refusal {
    /// The command cannot work as invoked (wrong token, wrong address).
    CannotRun(anyhow::Error),
    /// The server refused this request; the text is what it said.
    Refused(String),
}

impl Refusal {
    /// Reports the refusal: an error for the caller, or a message and exit 1.
    fn exit(self) -> anyhow::Result<ExitCode> {
        match self {
            Refusal::CannotRun(e) => Err(e),
            Refusal::Refused(said) => {
                eprintln!("airlock: {said}");
                Ok(ExitCode::from(CHECK_FAILED))
            }
        }
    }
}

/// The innermost cause of a request error ("Connection refused (os error 111)").
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(inner) = cause.source() {
        cause = inner;
    }
    cause.to_string()
}

/// `airlock pending`: approvals with their show fields, justification and votes.
pub(super) fn pending(a: PendingArgs) -> anyhow::Result<ExitCode> {
    let c = ApiClient::new(a.api)?;
    let status = match a.status {
        StatusFilter::Pending => "pending",
        StatusFilter::Approved => "approved",
        StatusFilter::Denied => "denied",
        StatusFilter::Expired => "expired",
        StatusFilter::Forwarding => "forwarding",
        StatusFilter::Consumed => "consumed",
        StatusFilter::OutcomeUnknown => "outcome_unknown",
        StatusFilter::Cancelled => "cancelled",
        StatusFilter::All => "all",
    };
    let mut url = c.url(&["api", "v1", "approvals"])?;
    url.query_pairs_mut().append_pair("status", status);
    let answer = c.call(Method::GET, url, None)?;
    if answer.status != 200 {
        return c.refused(&answer).exit();
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&answer.body)?);
        return Ok(ExitCode::SUCCESS);
    }
    let list = answer.body["approvals"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if list.is_empty() {
        println!("no {status} approvals");
    }
    for (i, ap) in list.iter().enumerate() {
        if i > 0 {
            println!();
        }
        print!("{}", summary(ap));
    }
    Ok(ExitCode::SUCCESS)
}

/// The agent, how it authenticated, and whom it acts for:
/// `etl-agent (jwt) acting for alice@example.com`.
fn agent_line(ap: &Value) -> String {
    let mut out = text(&ap["agent"]);
    if let Some(a) = ap["auth"].as_str() {
        out.push_str(&format!(" ({a})"));
    }
    if let Some(p) = ap["acting_for"].as_str() {
        out.push_str(&format!(" acting for {p}"));
    }
    out
}

/// One approval as `pending` lists it: a head line, then what a reviewer decides on.
fn summary(ap: &Value) -> String {
    let mut out = format!(
        "{}  {} {}  (upstream {})\n",
        text(&ap["id"]),
        text(&ap["method"]),
        text(&ap["url"]),
        text(&ap["upstream"]),
    );
    out.push_str(&format!(
        "    status: {}   agent: {}   rules: {}\n",
        status_line(ap),
        agent_line(ap),
        text(&ap["rules"]),
    ));
    if !ap["justification"].is_null() {
        out.push_str(&format!(
            "    justification: {}\n",
            text(&ap["justification"])
        ));
    }
    for (field, value) in show_fields(&ap["show"]) {
        out.push_str(&format!("    show {field} = {value}\n"));
    }
    let votes = votes(&ap["votes"]);
    out.push_str(&format!("    votes (quorum {}):", text(&ap["quorum"])));
    out.push_str(if votes.is_empty() {
        " none yet\n"
    } else {
        "\n"
    });
    for v in votes {
        out.push_str(&format!("      {v}\n"));
    }
    for r in requirements(&ap["requirements"]) {
        out.push_str(&format!("    needs {r}\n"));
    }
    out
}

/// Each requirement with its progress, when there are several: `rule sql-drop:
/// 1/2 of [group:dba] (carol@example.com)`.
fn requirements(v: &Value) -> Vec<String> {
    let list = v.as_array().cloned().unwrap_or_default();
    if list.len() < 2 {
        return Vec::new();
    }
    list.iter()
        .map(|r| {
            let by: Vec<String> = r["approved_by"]
                .as_array()
                .map(|a| a.iter().map(text).collect())
                .unwrap_or_default();
            format!(
                "rule {}: {}/{} of {}{}{}",
                text(&r["rule"]),
                by.len(),
                text(&r["quorum"]),
                text(&r["approvers"]),
                if by.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", by.join(", "))
                },
                if r["met"].as_bool() == Some(true) {
                    ", met"
                } else {
                    ""
                },
            )
        })
        .collect()
}

/// The status; a pending approval also says how long it has left, a decided one never does.
fn status_line(ap: &Value) -> String {
    let status = text(&ap["status"]);
    match (status.as_str(), ap["expires_in"].as_u64()) {
        ("pending", Some(secs)) => format!(
            "pending, expires in {}",
            humantime::format_duration(Duration::from_secs(secs))
        ),
        _ => status,
    }
}

/// `show` fields as (JSON pointer, value as JSON).
fn show_fields(show: &Value) -> Vec<(String, String)> {
    match show {
        Value::Object(m) => m.iter().map(|(k, v)| (k.clone(), v.to_string())).collect(),
        Value::Null => Vec::new(),
        other => vec![(String::new(), other.to_string())],
    }
}

/// Each vote as `reviewer decision "reason"`.
fn votes(votes: &Value) -> Vec<String> {
    votes
        .as_array()
        .map(|vs| {
            vs.iter()
                .map(|v| {
                    let mut line = format!("{} {}", text(&v["reviewer"]), text(&v["decision"]));
                    if let Some(r) = v["reason"].as_str() {
                        line.push_str(&format!(" {r:?}"));
                    }
                    line
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A JSON value as plain text: strings bare, lists comma-separated, null empty.
fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        Value::Array(items) => items.iter().map(text).collect::<Vec<_>>().join(", "),
        other => other.to_string(),
    }
}

/// `airlock show ID`: one approval in full.
pub(super) fn show(a: ShowArgs) -> anyhow::Result<ExitCode> {
    let c = ApiClient::new(a.api)?;
    let url = c.url(&["api", "v1", "approvals", &a.id])?;
    let answer = c.call(Method::GET, url, None)?;
    if answer.status != 200 {
        return c.refused(&answer).exit();
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&answer.body)?);
    } else {
        print!("{}", full(&answer.body));
    }
    Ok(ExitCode::SUCCESS)
}

/// Every field of one approval, one per line, label first.
fn full(ap: &Value) -> String {
    let mut out = String::new();
    let mut line = |label: &str, value: String| {
        out.push_str(&format!("{label:<LABEL$}{value}\n"));
    };
    line("approval", text(&ap["id"]));
    line("status", status_line(ap));
    line("agent", agent_line(ap));
    line("owner", or_none(&ap["owner"]));
    if !ap["client"].is_null() {
        line("client", text(&ap["client"]));
    }
    line("method", text(&ap["method"]));
    line("url", text(&ap["url"]));
    line("upstream", text(&ap["upstream"]));
    if !ap["host"].is_null() {
        line("host", text(&ap["host"]));
    }
    line("rules", text(&ap["rules"]));
    line("approvers", text(&ap["approvers"]));
    line("quorum", text(&ap["quorum"]));
    for r in requirements(&ap["requirements"]) {
        line("needs", r);
    }
    let votes = ap["votes"].as_array().cloned().unwrap_or_default();
    if votes.is_empty() {
        line("votes", "none yet".into());
    }
    for (i, v) in votes.iter().enumerate() {
        let mut s = format!(
            "{} {} at {}",
            text(&v["reviewer"]),
            text(&v["decision"]),
            text(&v["time"])
        );
        if let Some(r) = v["reason"].as_str() {
            s.push_str(&format!(": {r}"));
        }
        line(if i == 0 { "votes" } else { "" }, s);
    }
    let shown = show_fields(&ap["show"]);
    if shown.is_empty() {
        line("show", "(none)".into());
    }
    for (i, (field, value)) in shown.into_iter().enumerate() {
        line(
            if i == 0 { "show" } else { "" },
            format!("{field} = {value}"),
        );
    }
    line("justification", or_none(&ap["justification"]));
    line("digest", text(&ap["digest"]));
    line("body_sha256", or_none(&ap["body_sha256"]));
    line("request_id", text(&ap["request_id"]));
    line("created", text(&ap["created"]));
    line("expires", text(&ap["expires"]));
    if !ap["decided"].is_null() {
        line("decided", text(&ap["decided"]));
    }
    if !ap["decided_by"].is_null() {
        line("decided_by", text(&ap["decided_by"]));
    }
    if !ap["reason"].is_null() {
        line("reason", text(&ap["reason"]));
    }
    out
}

fn or_none(v: &Value) -> String {
    if v.is_null() {
        "(none)".into()
    } else {
        text(v)
    }
}

/// `airlock approve|deny ID [--reason …]`.
pub(super) fn vote(a: VoteArgs, decision: &str) -> anyhow::Result<ExitCode> {
    let c = ApiClient::new(a.api)?;
    let body = serde_json::json!({"decision": decision, "reason": a.reason});
    let url = c.url(&["api", "v1", "approvals", &a.id, "votes"])?;
    let answer = c.call(Method::POST, url, Some(body))?;
    if answer.status != 200 {
        return c.refused(&answer).exit();
    }
    println!(
        "{}: {} (status now {})",
        a.id,
        decision,
        answer.body["status"].as_str().unwrap_or("?")
    );
    Ok(ExitCode::SUCCESS)
}

/// `airlock reload`: the server reloads config and rules, or keeps the old set and
/// says why.
pub(super) fn reload(api: ApiArgs) -> anyhow::Result<ExitCode> {
    let c = ApiClient::new(api)?;
    let url = c.url(&["api", "v1", "reload"])?;
    let answer = c.call(Method::POST, url, None)?;
    match answer.status {
        200 => {
            println!("reloaded: {} rule(s) in force", text(&answer.body["rules"]));
            Ok(ExitCode::SUCCESS)
        }
        422 => {
            eprintln!(
                "airlock: reload refused, the previous configuration stays in force:\n{}",
                text(&answer.body["message"])
            );
            Ok(ExitCode::from(CHECK_FAILED))
        }
        _ => c.refused(&answer).exit(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_pending_approvals_count_down() {
        let pending = json!({"status": "pending", "expires_in": 90});
        assert_eq!(status_line(&pending), "pending, expires in 1m 30s");
        let decided = json!({"status": "approved", "expires_in": 90});
        assert_eq!(status_line(&decided), "approved");
    }

    #[test]
    fn a_summary_shows_what_a_reviewer_decides_on() {
        let ap = json!({
            "id": "ap-1", "status": "pending", "method": "DELETE", "url": "/cloud/vm-7",
            "upstream": "cloud", "agent": "deploy-bot", "rules": ["a", "b"], "quorum": 2,
            "expires_in": 30, "justification": "ticket OPS-1", "show": {"/name": "vm-7"},
            "votes": [{"reviewer": "bob@example.com", "decision": "approve", "reason": "ok"}],
        });
        let s = summary(&ap);
        assert!(
            s.starts_with("ap-1  DELETE /cloud/vm-7  (upstream cloud)\n"),
            "{s}"
        );
        assert!(s.contains("rules: a, b"), "{s}");
        assert!(s.contains("justification: ticket OPS-1"), "{s}");
        assert!(s.contains("show /name = \"vm-7\""), "{s}");
        assert!(s.contains("bob@example.com approve \"ok\""), "{s}");
    }
}
