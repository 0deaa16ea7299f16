//! Request and response bodies: the boxed body type airlock speaks, bounded reads
//! for inspection and holds, and a body that replays what was read before streaming
//! the rest.

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full};
use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type of every request and response the proxy handles.
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// A complete body from bytes.
pub fn full(b: impl Into<Bytes>) -> ProxyBody {
    Full::new(b.into()).map_err(|e| match e {}).boxed_unsync()
}

/// Boxes any body.
pub fn boxed<B>(b: B) -> ProxyBody
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    b.map_err(Into::into).boxed_unsync()
}

/// What a bounded read found.
pub enum Read<B> {
    /// The whole body, within the limit.
    Complete(Bytes),
    /// More than the limit: what was read so far and the rest, unread.
    Over(VecDeque<Bytes>, B),
}

/// Reads a body up to `limit` bytes.
pub async fn read_limited<B>(mut body: B, limit: usize) -> Result<Read<B>, BoxError>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    let mut chunks: VecDeque<Bytes> = VecDeque::new();
    let mut total = 0usize;
    if let Some(n) = body.size_hint().exact() {
        if n as usize > limit {
            return Ok(Read::Over(chunks, body));
        }
    }
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(Into::into)?;
        if let Ok(data) = frame.into_data() {
            total += data.len();
            chunks.push_back(data);
            if total > limit {
                return Ok(Read::Over(chunks, body));
            }
        }
    }
    if chunks.len() == 1 {
        return Ok(Read::Complete(chunks.pop_front().unwrap_or_default()));
    }
    let mut all = bytes::BytesMut::with_capacity(total);
    for c in chunks {
        all.extend_from_slice(&c);
    }
    Ok(Read::Complete(all.freeze()))
}

/// Replays chunks already read, then streams the rest of the body.
pub struct Prefixed<B> {
    prefix: VecDeque<Bytes>,
    rest: B,
}

impl<B> Prefixed<B> {
    pub fn new(prefix: VecDeque<Bytes>, rest: B) -> Self {
        Prefixed { prefix, rest }
    }
}

impl<B> Body for Prefixed<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        if let Some(c) = self.prefix.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(c))));
        }
        Pin::new(&mut self.rest).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_empty() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let pre: u64 = self.prefix.iter().map(|c| c.len() as u64).sum();
        let r = self.rest.size_hint();
        let mut h = SizeHint::new();
        h.set_lower(r.lower() + pre);
        if let Some(u) = r.upper() {
            h.set_upper(u + pre);
        }
        h
    }
}

/// Why a body that had to be read (for inspection or a hold) could not be.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The body did not arrive within `limits.body_timeout`.
    #[error("the request body did not arrive within {0:?}")]
    Timeout(std::time::Duration),
    /// The client's stream failed (reset, malformed chunking).
    #[error("could not read the request body: {0}")]
    Read(BoxError),
}

/// Reads a body up to `limit` bytes within `timeout`.
pub async fn read_within<B>(
    body: B,
    limit: usize,
    timeout: std::time::Duration,
) -> Result<Read<B>, BodyError>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    match tokio::time::timeout(timeout, read_limited(body, limit)).await {
        Err(_) => Err(BodyError::Timeout(timeout)),
        Ok(Err(e)) => Err(BodyError::Read(e)),
        Ok(Ok(r)) => Ok(r),
    }
}
