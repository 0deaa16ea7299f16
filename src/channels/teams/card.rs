//! The Adaptive Card (schema 1.5) an approval is shown as in Teams: the same context
//! Slack shows (agent and owner, how it authenticated, matched rules with their
//! descriptions and approval progress, method and full URL, the `show` fields, the
//! justification, body digest, expiry, recent decisions, who is asked) and, while it
//! is undecided, either `Action.Execute` buttons (bot mode) or an "Open in airlock"
//! link (Workflows mode).
//!
//! Pure functions from a [`Notice`] to JSON: no I/O, and never authority — a button's
//! data names the approval only; the vote is decided by who the verified token says
//! clicked.

use crate::approvals::Lifecycle;
use crate::channels::Notice;
use crate::store::{Decision, Status};
use serde_json::{json, Value};

/// The content type of an Adaptive Card attachment.
pub const CONTENT_TYPE: &str = "application/vnd.microsoft.card.adaptive";

/// Where a card goes, which decides how reviewers act on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Posted by the bot: Approve / Deny (`Action.Execute`) with a reason input.
    Bot,
    /// Posted to a Workflows webhook, which cannot call back: a link to the approval.
    Webhook,
}

/// The verbs of the card's `Action.Execute` buttons.
pub const APPROVE: &str = "approve";
/// See [`APPROVE`].
pub const DENY: &str = "deny";
/// The id of the card's reason input (its value arrives in the action's data).
pub const REASON_INPUT: &str = "reason";

/// The card for `n`, as reviewers should see it now.
pub fn card(n: &Notice, mode: Mode) -> Value {
    let a = &n.approval;
    let mut body: Vec<Value> = vec![
        json!({
            "type": "TextBlock",
            "text": headline(n),
            "weight": "Bolder",
            "size": "Medium",
            "wrap": true,
            "color": colour(a.status),
        }),
        json!({
            "type": "TextBlock",
            "text": format!("{} {}", text(&a.method), text(&n.url())),
            "fontType": "Monospace",
            "wrap": true,
        }),
    ];
    let mut facts = vec![
        fact("Agent", &n.agent_line()),
        fact("Owner", a.owner.as_deref().unwrap_or("none")),
        fact("Authenticated", &n.auth),
        fact("Upstream", &a.upstream),
        fact("Body SHA-256", &a.body_sha256),
    ];
    if n.undecided() {
        facts.push(fact("Expires", &a.expires.to_rfc3339()));
    } else if let Some(d) = a.decided {
        facts.push(fact("Decided", &d.to_rfc3339()));
    }
    facts.push(fact("Approval", &a.id));
    body.push(json!({"type": "FactSet", "facts": facts}));

    body.push(heading("Rules"));
    for r in &n.rules {
        let mut line = format!("**{}**", text(&r.name));
        if let Some(d) = &r.description {
            line.push_str(&format!(": {}", text(d)));
        }
        body.push(json!({"type": "TextBlock", "text": line, "wrap": true, "spacing": "Small"}));
        for p in &r.progress {
            let by = if p.approved_by.is_empty() {
                String::new()
            } else {
                format!(" ({})", text(&p.approved_by.join(", ")))
            };
            body.push(json!({
                "type": "TextBlock",
                "text": format!(
                    "{} {} of {} approvals from {}{}",
                    if p.met { "✅" } else { "⏳" },
                    p.approved_by.len(),
                    p.quorum,
                    text(&p.approvers.join(", ")),
                    by
                ),
                "wrap": true,
                "spacing": "None",
                "isSubtle": true,
            }));
        }
    }

    if let Some(j) = &a.justification {
        body.push(heading("Justification"));
        body.push(json!({"type": "TextBlock", "text": text(j), "wrap": true}));
    }
    if let Some(show) = &a.show {
        let facts = show_facts(show);
        if !facts.is_empty() {
            body.push(heading("Fields"));
            body.push(json!({"type": "FactSet", "facts": facts}));
        }
    }
    if !a.votes.is_empty() {
        body.push(heading("Votes"));
        for v in &a.votes {
            let what = match v.decision {
                Decision::Approve => "approved",
                Decision::Deny => "denied",
            };
            let mut line = format!("{} {what} at {}", text(&v.reviewer), v.time.to_rfc3339());
            if let Some(r) = &v.reason {
                line.push_str(&format!(": {}", text(r)));
            }
            body.push(json!({"type": "TextBlock", "text": line, "wrap": true, "spacing": "None"}));
        }
    }
    if !n.recent.is_empty() {
        body.push(heading("Recent decisions for this agent and rule"));
        for r in &n.recent {
            let mut line = format!(
                "{} by {}",
                text(&r.status),
                text(r.by.as_deref().unwrap_or("nobody"))
            );
            if let Some(w) = r.when {
                line.push_str(&format!(" at {}", w.to_rfc3339()));
            }
            if let Some(reason) = &r.reason {
                line.push_str(&format!(": {}", text(reason)));
            }
            body.push(json!({"type": "TextBlock", "text": line, "wrap": true, "spacing": "None", "isSubtle": true}));
        }
    }

    let mut entities = Vec::new();
    if n.undecided() && !n.mention.is_empty() {
        let names: Vec<String> = n
            .mention
            .iter()
            .map(|r| match &r.teams {
                Some(aad) => {
                    let at = format!("<at>{}</at>", text(&r.id));
                    entities.push(json!({
                        "type": "mention",
                        "text": at,
                        "mentioned": {"id": aad, "name": r.id},
                    }));
                    at
                }
                None => text(&r.id),
            })
            .collect();
        body.push(json!({
            "type": "TextBlock",
            "text": format!("Asked: {}", names.join(", ")),
            "wrap": true,
        }));
    }

    let mut actions = Vec::new();
    if n.undecided() && mode == Mode::Bot {
        body.push(json!({
            "type": "Input.Text",
            "id": REASON_INPUT,
            "placeholder": if a.policy.require_reason { "Reason (required)" } else { "Reason (optional)" },
            "isMultiline": true,
            "maxLength": 2000,
        }));
        for (verb, title, style) in [
            (APPROVE, "Approve", "positive"),
            (DENY, "Deny", "destructive"),
        ] {
            actions.push(json!({
                "type": "Action.Execute",
                "title": title,
                "verb": verb,
                "style": style,
                "data": {"approval": a.id},
            }));
        }
    }
    if let Some(link) = &n.link {
        actions.push(json!({"type": "Action.OpenUrl", "title": "Open in airlock", "url": link}));
    }

    let mut card = json!({
        "type": "AdaptiveCard",
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "version": "1.5",
        "body": body,
        "actions": actions,
        "msteams": {"width": "Full"},
    });
    if !entities.is_empty() {
        card["msteams"]["entities"] = Value::Array(entities);
    }
    card
}

/// The activity carrying `card` as its one attachment (Bot Connector).
pub fn activity(card: Value) -> Value {
    json!({
        "type": "message",
        "attachments": [{"contentType": CONTENT_TYPE, "content": card}],
    })
}

/// The message a Workflows webhook takes: `card` as its one attachment.
pub fn webhook_message(card: Value) -> Value {
    json!({
        "type": "message",
        "attachments": [{"contentType": CONTENT_TYPE, "contentUrl": null, "content": card}],
    })
}

/// The first line: what the approval waits for, or how it ended.
fn headline(n: &Notice) -> String {
    let a = &n.approval;
    let by = || text(a.decided_by.as_deref().unwrap_or("a reviewer"));
    let reason = || {
        a.reason
            .as_deref()
            .map(|r| format!(": {}", text(r)))
            .unwrap_or_default()
    };
    match a.status {
        Status::Pending => match &n.event.what {
            Lifecycle::Reminded => "⏰ Reminder: approval still needed".to_string(),
            Lifecycle::Escalated { to } => {
                format!("⏫ Escalated to {}: approval needed", text(&to.join(", ")))
            }
            _ => "🔒 Approval needed".to_string(),
        },
        Status::Approved | Status::Forwarding => format!("✅ Approved by {}{}", by(), reason()),
        Status::Consumed => {
            let status = match &n.event.what {
                Lifecycle::Forwarded { status: Some(s) } => format!(" (upstream answered {s})"),
                _ => String::new(),
            };
            format!("✅ Approved by {}{}; forwarded{status}", by(), reason())
        }
        Status::Denied => format!("⛔ Denied by {}{}", by(), reason()),
        Status::Expired => "⌛ Expired: nobody decided in time".to_string(),
        Status::OutcomeUnknown => {
            format!(
                "❓ Approved by {}; whether the upstream received it is unknown",
                by()
            )
        }
        Status::Cancelled => "Cancelled before anyone was asked".to_string(),
    }
}

fn colour(s: Status) -> &'static str {
    match s {
        Status::Pending => "Accent",
        Status::Approved | Status::Forwarding | Status::Consumed => "Good",
        Status::Denied | Status::Expired | Status::OutcomeUnknown => "Attention",
        Status::Cancelled => "Default",
    }
}

fn heading(t: &str) -> Value {
    json!({"type": "TextBlock", "text": t, "weight": "Bolder", "spacing": "Medium", "wrap": true})
}

fn fact(title: &str, value: &str) -> Value {
    json!({"title": title, "value": text(value)})
}

/// The `show` fields as facts: `{pointer: value}` (values as JSON, strings bare).
fn show_facts(show: &Value) -> Vec<Value> {
    let Some(map) = show.as_object() else {
        return vec![fact("show", &show.to_string())];
    };
    map.iter()
        .map(|(k, v)| {
            let v = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            fact(k, &v)
        })
        .collect()
}

/// Text from the request or a reviewer, made inert in the card's Markdown (backslash
/// escapes): it cannot add links, emphasis or `<at>` mentions to the card.
pub fn text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' | '*' | '[' | ']' | '<' | '>' | '`' => {
                out.push('\\');
                out.push(c);
            }
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::text;

    #[test]
    fn request_text_cannot_add_links_or_mentions() {
        assert_eq!(
            text("[click](https://evil) <at>bob</at> **x**"),
            "\\[click\\](https://evil) \\<at\\>bob\\</at\\> \\*\\*x\\*\\*"
        );
        assert_eq!(text("ap_4udp vm-7 /v1/a?b=c"), "ap_4udp vm-7 /v1/a?b=c");
    }
}
