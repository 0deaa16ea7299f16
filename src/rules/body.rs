//! Body conditions (`json`, `form`, and a strict rule's `query` that a form field may
//! satisfy): the request body parsed at most once for all the rules that inspect it,
//! read every way an upstream might read it, and the fail-closed reading of a body
//! that cannot be inspected. Never reads the body itself: the proxy hands over what it
//! read.
//!
//! Readings, for strict rules (an allow rule sees only the body its content type
//! declares):
//! - a body that parses as JSON is JSON, whatever its content type says; a body that
//!   does not, but is declared as JSON or looks like it, is uninspectable (fail closed);
//!   any other body is read as JSON through its form fields (`spec[tier]=prod` is
//!   `/spec/tier`), as Rails, Laravel and PHP bind them;
//! - form fields are the urlencoded fields of any body, the fields of a
//!   `multipart/form-data` body, a JSON object's top-level members, and the query's
//!   parameters (Spring, PHP and Laravel merge them all into one set of parameters).

use super::decide::Check;
use super::json::{self, Doc};
use super::params::{canonical_param, pairs, values_of};
use super::rule::Rule;
use http::HeaderMap;
use std::borrow::Cow;
use std::cell::OnceCell;

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

/// The media type of a `Content-Type` value, lowercased, without parameters.
fn media_of(content_type: Option<&str>) -> Option<String> {
    content_type.map(|ct| {
        ct.split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase()
    })
}

/// The media type of a `Content-Type` header, lowercased, without parameters.
pub fn media_type(headers: &HeaderMap) -> Option<String> {
    media_of(
        headers
            .get(http::header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap_or("")),
    )
}

/// Whether a body of this media type is `application/x-www-form-urlencoded` (or
/// untyped, which servers commonly parse as a form too).
pub(crate) fn is_form(media: Option<&str>) -> bool {
    media.is_none_or(|m| m == "application/x-www-form-urlencoded")
}

/// Whether a whole `Content-Type` value names a form (or is absent).
pub fn media_type_is_form(content_type: Option<&str>) -> bool {
    is_form(media_of(content_type).as_deref())
}

fn declared_json(media: Option<&str>) -> bool {
    media.is_some_and(|m| m == "application/json" || m.ends_with("+json"))
}

/// Why a body that claims a structure could not be read in it.
const NOT_JSON: &str = "the body is not valid JSON";
const BAD_MULTIPART: &str = "the multipart body cannot be parsed unambiguously";
const NOT_UTF8: &str = "the body is not UTF-8 (another charset, UTF-16 or UTF-32)";
const OTHER_FORMAT: &str =
    "the body is XML, YAML or another format (or a multipart part is), which upstreams bind like JSON";
/// Why a strict rule matched a body two parsers would read differently.
pub const AMBIGUOUS: &str = "the JSON body has keys that are equal but for case, or repeated";

/// The body, parsed once for all candidate rules.
pub(crate) struct ParsedBody<'a> {
    raw: Body<'a>,
    query: &'a str,
    /// The `Cookie` headers' pairs, `;`-separated.
    cookies: &'a str,
    content_type: Option<&'a str>,
    json: OnceCell<Result<Doc, String>>,
    fields: OnceCell<Result<Vec<(String, String)>, &'static str>>,
    multipart: OnceCell<Result<Multipart, &'static str>>,
    field_doc: OnceCell<Doc>,
}

impl<'a> ParsedBody<'a> {
    /// `query` is the request's query string; `content_type` its whole header value.
    pub(crate) fn new(
        raw: Body<'a>,
        query: Option<&'a str>,
        content_type: Option<&'a str>,
    ) -> ParsedBody<'a> {
        ParsedBody {
            raw,
            query: query.unwrap_or(""),
            cookies: "",
            content_type,
            json: OnceCell::new(),
            fields: OnceCell::new(),
            multipart: OnceCell::new(),
            field_doc: OnceCell::new(),
        }
    }

    /// The request's cookies (`Cookie` header values joined with `;`).
    pub(crate) fn with_cookies(mut self, cookies: &'a str) -> ParsedBody<'a> {
        self.cookies = cookies;
        self
    }

    fn media(&self) -> Option<String> {
        media_of(self.content_type)
    }

    /// A `multipart/*` body's parts, parsed once (`None` for any other body).
    fn multipart(&self, bytes: &[u8]) -> Option<&Result<Multipart, &'static str>> {
        self.media()
            .is_some_and(|m| m.starts_with("multipart/"))
            .then(|| {
                self.multipart
                    .get_or_init(|| parse_multipart(self.content_type.unwrap_or(""), bytes))
            })
    }

    fn json(&self, bytes: &[u8]) -> &Result<Doc, String> {
        self.json.get_or_init(|| json::parse(bytes))
    }

    /// The body's fields for strict rules: urlencoded, multipart, JSON members.
    fn fields(&self, bytes: &[u8]) -> &Result<Vec<(String, String)>, &'static str> {
        self.fields.get_or_init(|| {
            self.readable(bytes)?;
            let mut out: Vec<(String, String)> = pairs(bytes, true)
                .into_iter()
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
            // Tomcat and Spring parse any `multipart/*` as form data.
            if let Some(parts) = self.multipart(bytes) {
                out.extend(parts.as_ref().map_err(|e| *e)?.fields.iter().cloned());
            }
            if let Ok(doc) = self.json(bytes) {
                out.extend(
                    json::top_level_fields(&doc.root)
                        .into_iter()
                        .map(|(k, v)| (k.to_string(), v)),
                );
            }
            Ok(out)
        })
    }

    /// Refuses to read a body in another encoding than UTF-8: a UTF-16 or UTF-32 body
    /// (a byte-order mark, or NULs in its first bytes, as RFC 4627 detects them and
    /// Python's `json.loads` decodes them), or a declared `charset` that is not UTF-8
    /// (ASP.NET's form reader decodes by it).
    fn readable(&self, bytes: &[u8]) -> Result<(), &'static str> {
        let head = &bytes[..bytes.len().min(4)];
        if bytes.starts_with(b"\xFE\xFF") || bytes.starts_with(b"\xFF\xFE") || head.contains(&0) {
            return Err(NOT_UTF8);
        }
        let charset = self.content_type.and_then(|ct| {
            ct.split(';').skip(1).find_map(|p| {
                let (k, v) = p.split_once('=')?;
                k.trim()
                    .eq_ignore_ascii_case("charset")
                    .then(|| v.trim().trim_matches('"').to_ascii_lowercase())
            })
        });
        match charset.as_deref() {
            None | Some("utf-8" | "utf8" | "us-ascii" | "ascii") => Ok(()),
            Some(_) => Err(NOT_UTF8),
        }
    }

    /// The readings of the body as JSON for strict rules.
    fn json_readings(&self, bytes: &[u8]) -> Result<Vec<&Doc>, &'static str> {
        self.readable(bytes)?;
        let media = self.media();
        if let Some(m) = media.as_deref() {
            // Jackson's XML and YAML modules and ASP.NET's XML formatter bind these into
            // the same objects as JSON.
            if m.ends_with("xml")
                || m.ends_with("json-patch+json")
                || m.ends_with("yaml")
                || m.ends_with("yml")
                || m.ends_with("cbor")
                || m.ends_with("msgpack")
            {
                return Err(OTHER_FORMAT);
            }
            if let Some(parts) = self.multipart(bytes) {
                if parts.as_ref().map_err(|e| *e)?.structured {
                    return Err(OTHER_FORMAT);
                }
            }
        }
        let mut out = Vec::new();
        let blank = bytes.iter().all(|b| b.is_ascii_whitespace());
        match self.json(bytes) {
            Ok(doc) => out.push(doc),
            Err(_) if blank => {}
            Err(_) => {
                // A byte-order mark is skipped, as body-parser and ASP.NET skip it.
                let text = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
                let first = text.iter().find(|b| !b.is_ascii_whitespace());
                if declared_json(media.as_deref()) || matches!(first, Some(b'{' | b'[')) {
                    return Err(NOT_JSON);
                }
            }
        }
        // Every parameter, bound into objects as Rails, Laravel and Spring bind them:
        // query, form and multipart fields (`spec[tier]`, `spec.tier`) and a JSON
        // body's members all land in one set of parameters.
        // (A JSON body's own members are the JSON reading already.)
        let mut params: Vec<(String, String)> = pairs(bytes, true)
            .into_iter()
            .chain(pairs(self.query.as_bytes(), true))
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        if let Some(parts) = self.multipart(bytes) {
            params.extend(parts.as_ref().map_err(|e| *e)?.fields.iter().cloned());
        }
        out.push(self.field_doc.get_or_init(|| {
            json::from_fields(params.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        }));
        Ok(out)
    }
}

/// A multipart body as lax parsers read it.
#[derive(Debug)]
struct Multipart {
    /// Every named part's name and text.
    fields: Vec<(String, String)>,
    /// Some part is itself structured (JSON, XML, YAML), which Spring's
    /// `@RequestPart` binds into an object.
    structured: bool,
}

/// Parses a `multipart/*` body. Names that parsers read differently (RFC 5987
/// `name*=`, two `name` parameters, an upper-case `NAME=`, backslash escapes: busboy
/// decodes them, takes the last and removes escapes) and encoded parts make it
/// unreadable.
fn parse_multipart(content_type: &str, bytes: &[u8]) -> Result<Multipart, &'static str> {
    use futures_util::FutureExt;
    let boundary = multer::parse_boundary(content_type).map_err(|_| BAD_MULTIPART)?;
    let data = bytes::Bytes::copy_from_slice(bytes);
    let stream = futures_util::stream::once(async move { Ok::<_, std::convert::Infallible>(data) });
    let mut mp = multer::Multipart::new(stream, boundary);
    // The whole body is in memory: every step completes on its first poll.
    let read = async move {
        let mut out = Multipart {
            fields: Vec::new(),
            structured: false,
        };
        while let Some(field) = mp.next_field().await.map_err(|_| BAD_MULTIPART)? {
            let disposition = field
                .headers()
                .get_all(http::header::CONTENT_DISPOSITION)
                .iter()
                .map(|v| String::from_utf8_lossy(v.as_bytes()).to_ascii_lowercase())
                .collect::<Vec<_>>();
            let encoded = field
                .headers()
                .get("content-transfer-encoding")
                .is_some_and(|v| {
                    !matches!(
                        v.as_bytes().to_ascii_lowercase().as_slice(),
                        b"7bit" | b"8bit" | b"binary"
                    )
                });
            if disposition.len() != 1
                || encoded
                || (disposition[0].contains("name=") && field.name().is_none())
                || disposition[0].contains("name*")
                || disposition[0].matches("name=").count()
                    - disposition[0].matches("filename=").count()
                    > 1
                || disposition[0].contains('\\')
            {
                return Err(BAD_MULTIPART);
            }
            if let Some(ct) = field.content_type() {
                let s = ct.essence_str().to_ascii_lowercase();
                out.structured |= s.contains("json") || s.ends_with("xml") || s.contains("yaml");
            }
            let name = field.name().map(str::to_string);
            let text = field.text().await.map_err(|_| BAD_MULTIPART)?;
            if let Some(name) = name {
                out.fields.push((name, text));
            }
        }
        Ok(out)
    };
    read.now_or_never().unwrap_or(Err(BAD_MULTIPART))
}

/// The `_method` a body names (a form or multipart field, or a JSON object's
/// top-level member, any case), as Express's method-override, Rails and Laravel read
/// it. Every value found is returned; a body that cannot be read unambiguously is an
/// error (the caller fails closed).
pub fn body_methods(bytes: &[u8], content_type: Option<&str>) -> Result<Vec<String>, &'static str> {
    let parsed = ParsedBody::new(Body::Bytes(bytes), None, content_type);
    let want = canonical_param("_method");
    let fields = parsed.fields(bytes).as_ref().map_err(|e| *e)?;
    Ok(fields
        .iter()
        .filter(|(k, _)| canonical_param(k) == want)
        .map(|(_, v)| v.clone())
        .collect())
}

/// Whether a rule's body conditions hold (a rule without any matches).
pub(crate) fn check_body(rule: &Rule, body: &ParsedBody<'_>) -> Check {
    let strict = rule.strict();
    if !rule.inspects_body() && rule.query.is_empty() {
        return Check::Matched;
    }
    let bytes = match body.raw {
        // A strict query rule waiting for the body's fields: unread, they hold nothing.
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
    let result = if strict {
        check_strict(rule, body, bytes)
    } else {
        check_allow(rule, body, bytes)
    };
    match result {
        Ok(()) => Check::Matched,
        Err(Miss::No(why)) => Check::Missed(why),
        Err(Miss::Unreadable(why)) => Check::MatchedFailClosed(why),
    }
}

enum Miss {
    No(String),
    Unreadable(&'static str),
}

fn check_strict(rule: &Rule, body: &ParsedBody<'_>, bytes: &[u8]) -> Result<(), Miss> {
    if !rule.json.is_empty() {
        let docs = body.json_readings(bytes).map_err(Miss::Unreadable)?;
        // A JSON body two parsers would read differently: the rule applies whatever
        // the readings say (reviewers are shown every one). Repeated parameters are
        // readings of their own, weighed one by one.
        if body.json(bytes).as_ref().is_ok_and(|d| d.ambiguous) {
            return Err(Miss::Unreadable(AMBIGUOUS));
        }
        for (pointer, m) in &rule.json {
            // A top-level array is a batch: batch endpoints run every element.
            let roots = docs.iter().flat_map(|d| {
                let elements = match &d.root {
                    json::J::Arr(items) => items.iter().collect(),
                    _ => Vec::new(),
                };
                std::iter::once(&d.root).chain(elements)
            });
            let values = roots
                .flat_map(|r| json::select(r, pointer, true))
                .flat_map(json::as_texts);
            if !m.is_match_values(true, values) {
                return Err(Miss::No(format!("JSON {pointer} does not match")));
            }
        }
    }
    if !rule.form.is_empty() || !rule.query.is_empty() {
        let all = field_pairs(body, bytes, true).map_err(Miss::Unreadable)?;
        for (key, m) in rule.form.iter().chain(&rule.query) {
            if !m.is_match_values(true, values_of(&all, key, true)) {
                return Err(Miss::No(format!("field {key:?} does not match")));
            }
        }
    }
    Ok(())
}

fn check_allow(rule: &Rule, body: &ParsedBody<'_>, bytes: &[u8]) -> Result<(), Miss> {
    if !rule.json.is_empty() {
        if bytes.iter().all(|b| b.is_ascii_whitespace()) {
            return Err(Miss::No("no JSON body".into()));
        }
        let doc = match body.json(bytes) {
            Ok(doc) if !doc.ambiguous => doc,
            Ok(_) => return Err(Miss::No(AMBIGUOUS.into())),
            Err(e) => return Err(Miss::No(format!("body is not valid JSON: {e}"))),
        };
        for (pointer, m) in &rule.json {
            // Keys as a case-insensitive binder reads them: every value must match.
            let values = json::select(&doc.root, pointer, true);
            if !m.is_match_values(false, values.into_iter().map(json::as_text)) {
                return Err(Miss::No(format!("JSON {pointer} does not match")));
            }
        }
    }
    if !rule.form.is_empty() || !rule.query.is_empty() {
        // Every field of that name, in every reading, must match.
        let all = field_pairs(body, bytes, false).map_err(|e| Miss::No(e.into()))?;
        for (key, m) in rule.form.iter().chain(&rule.query) {
            if !m.is_match_values(false, values_of(&all, key, true)) {
                return Err(Miss::No(format!("field {key:?} does not match")));
            }
        }
    }
    Ok(())
}

/// A parameter's name and value, borrowed unless they were percent-encoded.
type Pair<'a> = (Cow<'a, str>, Cow<'a, str>);

/// The body's fields (every reading) and the query's parameters, as one list.
/// For strict rules the cookies too (PHP's `$_REQUEST` with variables_order EGPCS).
fn field_pairs<'b>(
    body: &'b ParsedBody<'_>,
    bytes: &[u8],
    strict: bool,
) -> Result<Vec<Pair<'b>>, &'static str> {
    let fields = body.fields(bytes).as_ref().map_err(|e| *e)?;
    let cookies = body
        .cookies
        .split(';')
        .filter(|_| strict)
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| (Cow::Borrowed(k.trim()), Cow::Borrowed(v.trim())));
    Ok(fields
        .iter()
        .map(|(k, v)| (Cow::Borrowed(k.as_str()), Cow::Borrowed(v.as_str())))
        .chain(pairs(body.query.as_bytes(), true))
        .chain(cookies)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multipart_fields_are_read() {
        let ct = "multipart/form-data; boundary=XyZ";
        let body = b"--XyZ\r\nContent-Disposition: form-data; name=\"_method\"\r\n\r\nDELETE\r\n--XyZ\r\nContent-Disposition: form-data; name=\"Action\"\r\n\r\nTerminateInstances\r\n--XyZ--\r\n";
        let f = parse_multipart(ct, body).unwrap().fields;
        assert_eq!(f[0], ("_method".into(), "DELETE".into()));
        assert_eq!(f[1], ("Action".into(), "TerminateInstances".into()));
        assert_eq!(body_methods(body, Some(ct)).unwrap(), ["DELETE"]);
        assert!(parse_multipart(ct, b"--nope\r\n").is_err());
    }

    #[test]
    fn body_methods_in_every_spelling() {
        let found = |b: &[u8], ct: Option<&str>| body_methods(b, ct).unwrap();
        assert_eq!(found(b"_method=delete", None), ["delete"]);
        assert_eq!(
            found(br#"{"_METHOD":"DELETE"}"#, Some("application/json")),
            ["DELETE"]
        );
        assert_eq!(found(b"a=1&_method=PUT", Some("text/plain")), ["PUT"]);
        assert!(found(b"{}", Some("application/json")).is_empty());
        // Another charset cannot be read for one: the caller fails closed.
        let utf16 = Some("application/x-www-form-urlencoded; charset=utf-16");
        assert!(body_methods(b"_method=PUT", utf16).is_err());
        assert!(body_methods(b"\xFF\xFE_\0m\0", None).is_err());
    }
}
