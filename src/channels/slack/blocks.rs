//! The Slack message of one approval, in Block Kit: what reviewers decide on (agent
//! and owner, how it authenticated, the rules with their descriptions and progress,
//! the method and full URL, the `show` fields, the justification, the body digest,
//! the expiry, a link, recent decisions, who is asked) and, while it is undecided, the
//! Approve and Deny buttons; once decided, the outcome instead of the buttons. Also
//! the modal that asks for a reason.
//!
//! Pure: a [`Notice`] in, JSON out. Everything the agent controls (URL, justification,
//! `show` values) is escaped, so an agent can never mention anyone (`<!channel>`),
//! link anywhere or close a code span in a reviewer's message. A button's `value` is
//! the approval id only: a key to look the approval up, never authority to vote.

use crate::approvals::Lifecycle;
use crate::channels::Notice;
use crate::store::{Decision, Status};
use chrono::{DateTime, Utc};
use serde_json::{json, Value};

/// `action_id` of the Approve button.
pub const APPROVE: &str = "airlock_approve";
/// `action_id` of the Deny button.
pub const DENY: &str = "airlock_deny";
/// `action_id` of the "Open in airlock" link button (acknowledged, nothing else).
pub const OPEN: &str = "airlock_open";
/// `block_id` of the buttons.
pub const VOTE_BLOCK: &str = "airlock_vote";
/// `callback_id` of the reason modal for a deny.
pub const DENY_MODAL: &str = "airlock_deny";
/// `callback_id` of the reason modal for an approval (`approval.require_reason`).
pub const APPROVE_MODAL: &str = "airlock_approve";
/// `block_id` and `action_id` of the reason input in the modal.
pub const REASON_BLOCK: &str = "airlock_reason";
pub const REASON_INPUT: &str = "reason";

/// Slack's limits: a section's text, a field, a header, the fallback text.
const SECTION_MAX: usize = 3000;
const FIELD_MAX: usize = 2000;
const HEADER_MAX: usize = 150;
const TEXT_MAX: usize = 3000;

/// `s` with Slack's control characters escaped (`&`, `<`, `>`): no mention, link or
/// channel ping can come from it.
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// `s` as an inline code span that it cannot close.
fn code(s: &str) -> String {
    format!("`{}`", escape(&s.replace('`', "'")))
}

/// At most `n` characters of `s` (an ellipsis marks the cut).
fn clip(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        return s.to_string();
    }
    let mut out: String = s.chars().take(n.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// A date Slack shows in each reader's time zone, with `fallback` for clients that
/// cannot.
fn date(t: &DateTime<Utc>) -> String {
    format!(
        "<!date^{}^{{date_short_pretty}} {{time_secs}}|{}>",
        t.timestamp(),
        t.format("%Y-%m-%d %H:%M:%S UTC")
    )
}

fn mrkdwn(text: String) -> Value {
    json!({"type": "mrkdwn", "text": clip(&text, FIELD_MAX)})
}

fn section(text: String) -> Value {
    json!({"type": "section", "text": {"type": "mrkdwn", "text": clip(&text, SECTION_MAX)}})
}

/// What the approval's state is, in one line (the header).
fn headline(n: &Notice) -> String {
    let a = &n.approval;
    let what = match a.status {
        Status::Pending => "Approval needed",
        Status::Approved | Status::Forwarding => "Approved",
        Status::Consumed => "Approved and forwarded",
        Status::Denied => "Denied",
        Status::Expired => "Expired: nobody decided in time",
        Status::OutcomeUnknown => "Approved; upstream outcome unknown",
        Status::Cancelled => "Cancelled",
    };
    clip(
        &format!("{what}: {} {} {}", n.agent_line(), a.method, n.url()),
        HEADER_MAX,
    )
}

/// `@reviewer` mentions of `notice.mention` who have a Slack id, space-separated.
pub fn mentions(n: &Notice) -> String {
    n.mention
        .iter()
        .filter_map(|r| r.slack.as_deref())
        .filter(|id| is_slack_id(id))
        .map(|id| format!("<@{id}>"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Whether `id` looks like a Slack user id (`U…`/`W…`, letters and digits): anything
/// else in the config is not put between `<@` and `>`.
fn is_slack_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 32 && id.chars().all(|c| c.is_ascii_alphanumeric())
}

/// The fallback `text` (notifications, clients without blocks).
pub fn fallback(n: &Notice) -> String {
    let mut t = format!(
        "{} (rule {})",
        escape(&headline(n)),
        escape(&n.approval.rules.join(", "))
    );
    if n.undecided() {
        let m = mentions(n);
        if !m.is_empty() {
            t.push_str(&format!(" — {m}"));
        }
    }
    clip(&t, TEXT_MAX)
}

/// The message's `blocks` for the approval as it stands.
pub fn blocks(n: &Notice) -> Vec<Value> {
    let a = &n.approval;
    let mut out = vec![json!({
        "type": "header",
        "text": {"type": "plain_text", "text": headline(n), "emoji": false}
    })];
    let owner = a
        .owner
        .as_deref()
        .map(|o| format!(" (owner {})", escape(o)))
        .unwrap_or_default();
    let acting = a
        .requester
        .acting_for
        .as_deref()
        .map(|p| format!(" acting for *{}*", escape(p)))
        .unwrap_or_default();
    let mut fields = vec![
        mrkdwn(format!("*Agent*\n{}{acting}{owner}", code(&a.agent))),
        mrkdwn(format!("*Authenticated by*\n{}", escape(&n.auth))),
        mrkdwn(format!("*Request*\n{} {}", code(&a.method), code(&n.url()))),
        mrkdwn(format!("*Upstream*\n{}", code(&a.upstream))),
    ];
    if n.undecided() {
        fields.push(mrkdwn(format!("*Expires*\n{}", date(&a.expires))));
    }
    fields.push(mrkdwn(format!("*Body SHA-256*\n{}", code(&a.body_sha256))));
    out.push(json!({"type": "section", "fields": fields}));
    out.push(section(rules_text(n)));
    if let Some(j) = a.justification.as_deref().filter(|j| !j.trim().is_empty()) {
        let quoted = escape(j)
            .lines()
            .map(|l| format!(">{l}"))
            .collect::<Vec<_>>()
            .join("\n");
        out.push(section(format!("*Justification*\n{quoted}")));
    }
    if let Some(show) = show_text(a.show.as_ref()) {
        out.push(section(format!("*Shown fields*\n{show}")));
    }
    if !a.votes.is_empty() {
        let votes: Vec<String> = a
            .votes
            .iter()
            .map(|v| {
                let mark = match v.decision {
                    Decision::Approve => ":white_check_mark: approved",
                    Decision::Deny => ":no_entry: denied",
                };
                let reason = v
                    .reason
                    .as_deref()
                    .map(|r| format!(": _{}_", escape(r)))
                    .unwrap_or_default();
                format!("• {} {mark} {}{reason}", escape(&v.reviewer), date(&v.time))
            })
            .collect();
        out.push(section(format!("*Votes*\n{}", votes.join("\n"))));
    }
    if let Some(outcome) = outcome_text(n) {
        out.push(section(outcome));
    }
    if !n.recent.is_empty() {
        let lines: Vec<String> = n
            .recent
            .iter()
            .map(|r| {
                let by =
                    r.by.as_deref()
                        .map(|b| format!(" by {}", escape(b)))
                        .unwrap_or_default();
                let when = r.when.as_ref().map(date).unwrap_or_default();
                let reason = r
                    .reason
                    .as_deref()
                    .map(|x| format!(": _{}_", escape(x)))
                    .unwrap_or_default();
                format!("• {}{by} {when}{reason}", recent_word(&r.status))
            })
            .collect();
        out.push(section(format!(
            "*Recent decisions for {} on these rules*\n{}",
            code(&a.agent),
            lines.join("\n")
        )));
    }
    if n.undecided() {
        let m = mentions(n);
        if !m.is_empty() {
            out.push(section(format!("*Asked*: {m}")));
        }
    }
    let mut context = vec![mrkdwn(format!("Approval {}", code(&a.id)))];
    if let Some(link) = &n.link {
        context.push(mrkdwn(format!("<{}|Open in airlock>", link_safe(link))));
    }
    out.push(json!({"type": "context", "elements": context}));
    if n.undecided() {
        let mut buttons = vec![
            json!({
                "type": "button",
                "action_id": APPROVE,
                "text": {"type": "plain_text", "text": "Approve"},
                "style": "primary",
                "value": a.id,
            }),
            json!({
                "type": "button",
                "action_id": DENY,
                "text": {"type": "plain_text", "text": "Deny"},
                "style": "danger",
                "value": a.id,
            }),
        ];
        if let Some(link) = &n.link {
            buttons.push(json!({
                "type": "button",
                "action_id": OPEN,
                "text": {"type": "plain_text", "text": "Open in airlock"},
                "url": link,
            }));
        }
        out.push(json!({"type": "actions", "block_id": VOTE_BLOCK, "elements": buttons}));
    }
    out
}

/// An earlier decision's status in reviewers' words (`consumed` is an approval that
/// was forwarded).
fn recent_word(status: &str) -> String {
    match status {
        "approved" | "forwarding" | "consumed" => "approved".into(),
        "outcome_unknown" => "approved (upstream outcome unknown)".into(),
        other => escape(other),
    }
}

/// A link from the config, without what would end Slack's `<url|text>` early.
fn link_safe(s: &str) -> String {
    s.replace(['<', '>', '|'], "")
}

/// Each rule with its description and approval progress.
fn rules_text(n: &Notice) -> String {
    let mut lines = Vec::new();
    for r in &n.rules {
        let desc = r
            .description
            .as_deref()
            .map(|d| format!(" — {}", escape(d)))
            .unwrap_or_default();
        lines.push(format!("• *{}*{desc}", escape(&r.name)));
        for p in &r.progress {
            let mark = if p.met {
                ":white_check_mark:"
            } else {
                ":hourglass_flowing_sand:"
            };
            let by = if p.approved_by.is_empty() {
                String::new()
            } else {
                format!(" ({})", escape(&p.approved_by.join(", ")))
            };
            lines.push(format!(
                "    {mark} {} of {} approvals from {}{by}",
                p.approved_by.len(),
                p.quorum,
                escape(&p.approvers.join(", "))
            ));
        }
    }
    format!("*Rules*\n{}", lines.join("\n"))
}

/// The `show` fields, one per line (`None` when there are none).
fn show_text(show: Option<&Value>) -> Option<String> {
    let lines: Vec<String> = match show? {
        Value::Object(m) if m.is_empty() => return None,
        Value::Object(m) => m
            .iter()
            .map(|(k, v)| format!("• {} = {}", code(k), code(&clip(&v.to_string(), 500))))
            .collect(),
        Value::Null => return None,
        other => vec![code(&clip(&other.to_string(), 500))],
    };
    Some(lines.join("\n"))
}

/// How it ended, once decided: the outcome, who, the reason.
fn outcome_text(n: &Notice) -> Option<String> {
    let a = &n.approval;
    let by = a
        .decided_by
        .as_deref()
        .map(|b| format!(" by {}", escape(b)))
        .unwrap_or_default();
    let when = a
        .decided
        .as_ref()
        .map(|t| format!(" {}", date(t)))
        .unwrap_or_default();
    let reason = a
        .reason
        .as_deref()
        .map(|r| format!("\nReason: _{}_", escape(r)))
        .unwrap_or_default();
    let forwarded = match &n.event.what {
        Lifecycle::Forwarded { status: Some(s) } => {
            format!("\nForwarded: the upstream answered {s}.")
        }
        _ => String::new(),
    };
    Some(match a.status {
        Status::Pending => return None,
        Status::Approved | Status::Forwarding => {
            format!(":white_check_mark: *Approved*{by}{when}{reason}")
        }
        Status::Consumed => {
            format!(":white_check_mark: *Approved*{by}{when}{reason}{forwarded}")
        }
        Status::Denied => format!(":no_entry: *Denied*{by}{when}{reason}"),
        Status::Expired => format!(
            ":hourglass: *Expired* {}: nobody decided in time; the request was refused.",
            date(&a.expires)
        ),
        Status::OutcomeUnknown => format!(
            ":warning: *Approved*{by}{when}, but whether the upstream received it is unknown; it is not sent again.{reason}"
        ),
        Status::Cancelled => format!(":heavy_multiplication_x: *Cancelled*{reason}"),
    })
}

/// The thread reply of a reminder or an escalation.
pub fn thread_text(n: &Notice) -> String {
    let m = mentions(n);
    let who = if m.is_empty() {
        String::new()
    } else {
        format!("{m}: ")
    };
    match &n.event.what {
        Lifecycle::Escalated { to } => format!(
            "{who}escalated: {} can now approve this request too (still undecided, expires {}).",
            escape(&to.join(", ")),
            date(&n.approval.expires)
        ),
        _ => format!(
            "{who}reminder: this request is still waiting for a decision (expires {}).",
            date(&n.approval.expires)
        ),
    }
}

/// The modal asking for a reason before voting `decision` on `approval_id` (sent with
/// `views.open`); `private_metadata` carries the approval id back.
pub fn reason_modal(approval_id: &str, summary: &str, decision: Decision) -> Value {
    let (callback, title, submit, optional) = match decision {
        Decision::Deny => (DENY_MODAL, "Deny request", "Deny", false),
        Decision::Approve => (APPROVE_MODAL, "Approve request", "Approve", false),
    };
    json!({
        "type": "modal",
        "callback_id": callback,
        "private_metadata": approval_id,
        "title": {"type": "plain_text", "text": title},
        "submit": {"type": "plain_text", "text": submit},
        "close": {"type": "plain_text", "text": "Cancel"},
        "blocks": [
            section(summary.to_string()),
            {
                "type": "input",
                "block_id": REASON_BLOCK,
                "optional": optional,
                "label": {"type": "plain_text", "text": "Reason"},
                "element": {
                    "type": "plain_text_input",
                    "action_id": REASON_INPUT,
                    "multiline": true,
                    "max_length": 2000,
                },
            },
        ],
    })
}

/// One line naming the approval, for the modal.
pub fn summary(a: &crate::store::Approval) -> String {
    let url = match &a.host {
        Some(h) => format!("{h}{}", a.url),
        None => a.url.clone(),
    };
    format!(
        "{} {} from {} (rule {})",
        code(&a.method),
        code(&url),
        code(&a.agent),
        escape(&a.rules.join(", "))
    )
}
