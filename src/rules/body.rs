//! Body conditions (`json`, `form`): the request body parsed at most once for all the
//! rules that inspect it, and the fail-closed reading of a body that cannot be
//! inspected. Never reads the body itself: the proxy hands over what it read.

use super::decide::Check;
use super::json::{self, StrictJson};
use super::rule::Rule;
use http::HeaderMap;

/// The body as far as the proxy could read it.
#[derive(Debug, Clone, Copy)]
pub enum Body<'a> {
    /// The body was not read (no candidate inspects it).
    NotRead,
    /// The whole body, within `inspect_body`.
    Bytes(&'a [u8]),
    /// The body exists but cannot be inspected (too large, compressed, unreadable).
    Uninspectable(&'static str),
}

/// Whether a body with these headers is `application/x-www-form-urlencoded` (or
/// untyped, which servers commonly parse as a form too).
pub(crate) fn is_form(headers: &HeaderMap) -> bool {
    match headers.get(http::header::CONTENT_TYPE) {
        None => true,
        Some(v) => v
            .to_str()
            .map(|s| {
                s.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .eq_ignore_ascii_case("application/x-www-form-urlencoded")
            })
            .unwrap_or(false),
    }
}

/// The body, parsed once for all candidate rules.
pub(crate) struct ParsedBody<'a> {
    raw: Body<'a>,
    query: Option<&'a str>,
    form_body: bool,
    json: std::cell::OnceCell<Result<StrictJson, String>>,
}

impl<'a> ParsedBody<'a> {
    /// `query` counts as form fields; `form_body` says whether the body may be read as
    /// a form at all (see [`is_form`]).
    pub(crate) fn new(raw: Body<'a>, query: Option<&'a str>, form_body: bool) -> ParsedBody<'a> {
        ParsedBody {
            raw,
            query,
            form_body,
            json: std::cell::OnceCell::new(),
        }
    }
}

/// Whether a rule's body conditions hold (a rule without any matches).
pub(crate) fn check_body(rule: &Rule, body: &ParsedBody<'_>) -> Check {
    if !rule.inspects_body() {
        return Check::Matched;
    }
    let strict = rule.strict();
    let bytes = match body.raw {
        Body::NotRead => return Check::Missed("body was not read".into()),
        Body::Uninspectable(why) => {
            // Fail closed: a strict rule that cannot look at the body matches; an allow
            // rule does not (it must never open a door it could not check).
            return if strict {
                Check::MatchedFailClosed(why)
            } else {
                Check::Missed(format!("body cannot be inspected: {why}"))
            };
        }
        Body::Bytes(b) => b,
    };
    if !rule.json.is_empty() {
        if bytes.iter().all(|b| b.is_ascii_whitespace()) {
            return Check::Missed("no JSON body".into());
        }
        let doc = match body.json.get_or_init(|| json::parse_strict(bytes)) {
            Ok(doc) => doc,
            Err(e) => {
                return if strict {
                    Check::MatchedFailClosed(if e.contains("duplicate") {
                        "the JSON body has duplicate keys"
                    } else {
                        "the body is not valid JSON"
                    })
                } else {
                    Check::Missed(format!("body is not valid JSON: {e}"))
                };
            }
        };
        for (pointer, m) in &rule.json {
            // Strict rules match keys case-insensitively, as Go and ASP.NET bind them.
            let values = json::select(&doc.0, pointer, strict);
            if !m.is_match_values(strict, values.into_iter().map(json::as_text)) {
                return Check::Missed(format!("JSON {pointer} does not match"));
            }
        }
    }
    if !rule.form.is_empty() && !bytes.is_empty() && !body.form_body {
        return if strict {
            Check::MatchedFailClosed("the body is not application/x-www-form-urlencoded")
        } else {
            Check::Missed("the body is not a form".into())
        };
    }
    let query = body.query.unwrap_or("").as_bytes();
    for (key, m) in &rule.form {
        // Query parameters count as form fields: many servers merge the two.
        let values = form_urlencoded::parse(bytes)
            .chain(form_urlencoded::parse(query))
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v);
        if !m.is_match_values(strict, values) {
            return Check::Missed(format!("form field {key:?} does not match"));
        }
    }
    Check::Matched
}
