//! Phase 2: the rules decide. The body is read only when a rule that is still a
//! candidate inspects it, and then only up to `limits.inspect_body`; a body that
//! cannot be inspected makes such a rule match (fail closed).

use super::record::RequestRecord;
use super::{Policy, Prepared};
use crate::http::body::{boxed, full, read_within, BodyError, BoxError, Prefixed, ProxyBody, Read};
use crate::http::content_encoding;
use crate::rules::{Body, Decision, RequestView};
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

/// What the rules see of a prepared request.
pub fn view<'a>(policy: &'a Policy, prepared: &'a Prepared, parts: &'a Parts) -> RequestView<'a> {
    RequestView {
        upstream: &policy.cfg.upstreams[prepared.upstream].name,
        method: &prepared.method,
        path: &prepared.path,
        query: parts.uri.query(),
        headers: &parts.headers,
        agent: &prepared.caller.id,
    }
}

/// Decides a prepared request, recording the verdict and the matched rules.
pub async fn decide<B>(
    policy: &Policy,
    prepared: &Prepared,
    parts: &Parts,
    body: B,
    record: &mut RequestRecord,
) -> Result<(Decision, Inspected<B>), BodyError>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    let rules = &policy.rules;
    let limits = &policy.cfg.limits;
    let view = view(policy, prepared, parts);
    // With a method override, the rules weigh the request line's method too.
    let head = rules.head_with_line_method(&view, parts.method.as_str());
    let encoding = content_encoding(&parts.headers);
    let (decision, body) = if !rules.needs_body(&head) {
        (
            rules.finish(head, Body::NotRead, encoding),
            Inspected::Stream(body),
        )
    } else if encoding.is_some() {
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
            Read::Complete(b) => (
                rules.finish(head, Body::Bytes(&b), encoding),
                Inspected::Bytes(b),
            ),
            Read::Over(pre, rest) => (
                rules.finish(
                    head,
                    Body::Uninspectable("the body is larger than limits.inspect_body"),
                    None,
                ),
                Inspected::Partial(pre, rest),
            ),
        }
    };
    record.verdict = Some(decision.verdict);
    record.rules = rules.names(&decision.matched);
    record.fail_closed = decision.fail_closed;
    Ok((decision, body))
}
