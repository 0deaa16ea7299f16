//! Phase 2: the rules decide. The body is read only when a rule that is still a
//! candidate inspects it, and then only up to `limits.inspect_body`; a body that
//! cannot be inspected makes such a rule match (fail closed).

use super::prepare::refuse_method;
use super::record::RequestRecord;
use super::{Policy, Prepared};
use crate::http::body::{boxed, full, read_within, BodyError, BoxError, Prefixed, ProxyBody, Read};
use crate::http::content_encoding;
use crate::http::MethodError;
use crate::rules::{Body, Decision, RequestView, ANY_METHOD};
use bytes::Bytes;
use http::request::Parts;
use std::collections::VecDeque;

/// The body as it is after deciding: untouched, read whole, or read in part.
pub enum Inspected<B> {
    /// Not read: it streams on as it came.
    Stream(B),
    /// Read whole (within `inspect_body`).
    Bytes(Bytes),
    /// Over `inspect_body`: what was read, then the unread rest.
    Partial(VecDeque<Bytes>, B),
}

impl<B> Inspected<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    /// The whole body, up to `limit` bytes within `timeout`; `None` when it is larger.
    pub async fn read_all(
        self,
        limit: usize,
        timeout: std::time::Duration,
    ) -> Result<Option<Bytes>, BodyError> {
        let read = match self {
            Inspected::Bytes(b) => return Ok((b.len() <= limit).then_some(b)),
            Inspected::Stream(s) => match read_within(s, limit, timeout).await? {
                Read::Complete(b) => Some(b),
                Read::Over(..) => None,
            },
            Inspected::Partial(pre, rest) => {
                match read_within(Prefixed::new(pre, rest), limit, timeout).await? {
                    Read::Complete(b) => Some(b),
                    Read::Over(..) => None,
                }
            }
        };
        Ok(read)
    }
}

impl<B> Inspected<B>
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    /// The body to forward: what was read replayed first, then the rest streamed.
    pub fn into_body(self) -> ProxyBody {
        match self {
            Inspected::Stream(b) => boxed(b),
            Inspected::Bytes(b) => full(b),
            Inspected::Partial(pre, rest) => boxed(Prefixed::new(pre, rest)),
        }
    }
}

/// Why deciding refused a request.
#[derive(Debug, thiserror::Error)]
pub enum DecideError {
    /// The body could not be read.
    #[error(transparent)]
    Body(#[from] BodyError),
    /// The body names a method override that cannot be weighed.
    #[error(transparent)]
    Method(#[from] MethodError),
}

/// What the rules see of a prepared request.
pub fn view<'a>(
    policy: &'a Policy,
    prepared: &'a Prepared,
    parts: &'a Parts,
    has_body: bool,
) -> RequestView<'a> {
    let upstream = &policy.cfg.upstreams[prepared.upstream];
    RequestView {
        upstream: &upstream.name,
        method: &prepared.method,
        line_method: parts.method.as_str(),
        body_method: None,
        path: &prepared.path,
        path_readings: &prepared.path_readings,
        path_case_sensitive: upstream.reading.path_case_sensitive,
        query: parts.uri.query(),
        headers: &parts.headers,
        agent: &prepared.caller.id,
        has_body,
    }
}

/// Whether a body may name a method override: Express's method-override, Rails,
/// Laravel and Symfony read `_method` from the body (of a POST; a lax upstream of any
/// request). Only a body an upstream parses into fields can carry one (a form,
/// multipart, JSON, or an untyped body); a binary upload cannot.
fn body_may_override(parts: &Parts, has_body: bool) -> bool {
    let parsed = match crate::rules::body::media_type(&parts.headers) {
        None => true,
        Some(m) => {
            matches!(
                m.as_str(),
                "application/x-www-form-urlencoded" | "multipart/form-data" | "application/json"
            ) || m.ends_with("+json")
        }
    };
    has_body && parsed
}

/// The one method the body names, checked as an override header is: a plain token,
/// agreeing with every other override, and a method the upstream accepts. `Ok(Err)`
/// when the body cannot be read for one (another charset, an ambiguous multipart).
fn body_method(
    policy: &Policy,
    prepared: &Prepared,
    parts: &Parts,
    bytes: &[u8],
) -> Result<Result<Option<String>, &'static str>, MethodError> {
    let content_type = parts
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let mut named: Option<String> = None;
    let found = match crate::rules::body::body_methods(bytes, content_type) {
        Ok(found) => found,
        Err(why) => return Ok(Err(why)),
    };
    for v in found {
        let v = v.trim().to_ascii_uppercase();
        if v.is_empty() || !v.bytes().all(|b| b.is_ascii_alphabetic()) {
            return Err(MethodError::NotAMethod("_method"));
        }
        if named.as_ref().is_some_and(|n| *n != v) {
            return Err(MethodError::Disagree);
        }
        named = Some(v);
    }
    if let Some(m) = &named {
        if prepared.method != parts.method.as_str() && prepared.method != *m {
            return Err(MethodError::Disagree);
        }
        refuse_method(m, &policy.cfg.upstreams[prepared.upstream].reading)?;
    }
    Ok(Ok(named))
}

/// Decides a prepared request, recording the verdict and the matched rules.
pub async fn decide<B>(
    policy: &Policy,
    prepared: &Prepared,
    parts: &Parts,
    body: B,
    record: &mut RequestRecord,
) -> Result<(Decision, Inspected<B>), DecideError>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    let rules = &policy.rules;
    let limits = &policy.cfg.limits;
    let has_body = !body.is_end_stream();
    let view = view(policy, prepared, parts, has_body);
    let head = rules.head(&view);
    // A body may name another method. The rules that would match some other method,
    // or an allow rule that names one, make the body matter: it is read (within
    // inspect_body) and a body that cannot be read matches them (fail closed). A body
    // of a declared length within inspect_body is read anyway, to refuse a method the
    // upstream does not accept (TRACE); a body streamed without a length, that no
    // rule cares about, streams on.
    let may_override = body_may_override(parts, has_body);
    let declared_small = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<usize>().ok())
        .is_some_and(|n| n <= limits.inspect_body);
    let any = may_override.then(|| {
        rules.head(&RequestView {
            body_method: Some(ANY_METHOD),
            ..view
        })
    });
    let override_matters = any
        .as_ref()
        .is_some_and(|a| a.adds_strict(&head, rules) || head.allows_by_method(rules));
    let encoding = content_encoding(&parts.headers);
    let read = rules.needs_body(&head) || override_matters || (may_override && declared_small);
    let (decision, body) = if !read {
        (
            rules.finish(head, Body::NotRead, encoding),
            Inspected::Stream(body),
        )
    } else if encoding.is_some() {
        let head = if override_matters {
            any.unwrap_or(head)
        } else {
            head
        };
        (
            rules.finish(head, Body::Uninspectable("the body is compressed"), None),
            Inspected::Stream(body),
        )
    } else {
        // Counted against limits.max_held_bytes until the bytes read are dropped.
        match crate::http::budget::read_budgeted(
            &parts.extensions,
            body,
            limits.inspect_body,
            limits.body_timeout,
            limits.max_held_bytes,
        )
        .await?
        {
            Read::Complete(b) => {
                let named = if may_override {
                    body_method(policy, prepared, parts, &b)?
                } else {
                    Ok(None)
                };
                let decision = match &named {
                    Ok(Some(m)) => {
                        record.acting_as = Some(m.clone());
                        let head = rules.head(&RequestView {
                            body_method: Some(m),
                            ..view
                        });
                        rules.finish(head, Body::Bytes(&b), encoding)
                    }
                    Ok(None) => rules.finish(head, Body::Bytes(&b), encoding),
                    // The body may name a method airlock cannot read: fail closed.
                    Err(why) => {
                        let head = if override_matters {
                            any.unwrap_or(head)
                        } else {
                            head
                        };
                        rules.finish(head, Body::Uninspectable(why), None)
                    }
                };
                (decision, Inspected::Bytes(b))
            }
            Read::Over(pre, rest) => {
                let head = if override_matters {
                    any.unwrap_or(head)
                } else {
                    head
                };
                (
                    rules.finish(
                        head,
                        Body::Uninspectable("the body is larger than limits.inspect_body"),
                        None,
                    ),
                    Inspected::Partial(pre, rest),
                )
            }
        }
    };
    record.verdict = Some(decision.verdict);
    record.rules = rules.names(&decision.matched);
    record.fail_closed = decision.fail_closed;
    Ok((decision, body))
}
