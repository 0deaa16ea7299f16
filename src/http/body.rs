//! Request and response bodies: the boxed body type airlock speaks, bounded reads
//! for inspection and holds, a body that replays what was read before streaming
//! the rest, and a watched body that counts what streams through, cuts a source that
//! stalls, and reports how it ended.

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full};
use std::collections::VecDeque;
use std::future::Future;
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
    /// Reading it would take the bodies held in memory over `limits.max_held_bytes`.
    #[error("{0}; try again later")]
    Busy(#[from] super::budget::OverBudget),
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

/// How a [`Watched`] body ended.
#[derive(Debug)]
pub enum BodyEnd<'a> {
    /// Every byte went through.
    Complete,
    /// The source failed mid-body (reset, closed early, malformed framing).
    Failed(&'a (dyn std::error::Error + 'static)),
    /// The source sent nothing for this long; the body was cut.
    Stalled(std::time::Duration),
    /// Dropped before its end: its receiver went away (or was cut off).
    Abandoned,
}

/// What a [`Watched`] body calls once, when it ends, with the data bytes that went
/// through.
pub type OnEnd = Box<dyn for<'a> FnOnce(BodyEnd<'a>, u64) + Send>;

/// The error a [`Watched`] body ends with when its source stalls.
#[derive(Debug, thiserror::Error)]
#[error("no data for {0:?}")]
pub struct Stalled(pub std::time::Duration);

/// A body streamed through with its data bytes counted and an idle timeout: when the
/// source sends nothing for `idle` while the body is being read, it ends with a
/// [`Stalled`] error (which makes the server cut the connection, so the receiver can
/// tell the body is incomplete). Only time spent waiting on the source counts: a
/// receiver that reads slowly never makes the source look stalled.
///
/// It calls its [`OnEnd`] exactly once: at its end, on its source's error, when it
/// stalls, or, dropped before any of those, as [`BodyEnd::Abandoned`] (or
/// [`BodyEnd::Complete`] when the source had nothing left to send).
pub struct Watched {
    inner: ProxyBody,
    bytes: u64,
    idle: std::time::Duration,
    /// Armed while waiting on the source.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    waiting: bool,
    on_end: Option<OnEnd>,
}

impl Watched {
    /// Watches `inner`, cutting it after `idle` without data.
    pub fn new(inner: ProxyBody, idle: std::time::Duration, on_end: OnEnd) -> Self {
        Watched {
            inner,
            bytes: 0,
            idle,
            timer: None,
            waiting: false,
            on_end: Some(on_end),
        }
    }

    fn end(&mut self, how: BodyEnd<'_>) {
        if let Some(f) = self.on_end.take() {
            f(how, self.bytes);
        }
    }

    /// Whether the source has stalled: arms the timer when the wait starts.
    fn stalled(&mut self, cx: &mut Context<'_>) -> bool {
        let deadline = tokio::time::Instant::now() + self.idle;
        let timer = match &mut self.timer {
            Some(t) => {
                if !self.waiting {
                    t.as_mut().reset(deadline);
                }
                t
            }
            None => self
                .timer
                .insert(Box::pin(tokio::time::sleep_until(deadline))),
        };
        self.waiting = true;
        timer.as_mut().poll(cx).is_ready()
    }
}

impl Body for Watched {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.on_end.is_none() {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.waiting = false;
                if let Some(d) = frame.data_ref() {
                    this.bytes += d.len() as u64;
                }
                if this.inner.is_end_stream() {
                    this.end(BodyEnd::Complete);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.end(BodyEnd::Failed(&*e));
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                this.end(BodyEnd::Complete);
                Poll::Ready(None)
            }
            Poll::Pending => {
                if !this.stalled(cx) {
                    return Poll::Pending;
                }
                let idle = this.idle;
                this.end(BodyEnd::Stalled(idle));
                Poll::Ready(Some(Err(Box::new(Stalled(idle)))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.on_end.is_none() || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        if self.on_end.is_some() {
            // Dropped unread or part-read: complete only if nothing was left.
            let how = if self.inner.is_end_stream() {
                BodyEnd::Complete
            } else {
                BodyEnd::Abandoned
            };
            self.end(how);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    type Seen = Arc<Mutex<Vec<(String, u64)>>>;

    /// A watched body over `inner` whose ends are collected as (kind, bytes).
    fn watched(inner: ProxyBody, idle: Duration) -> (Watched, Seen) {
        let seen: Seen = Arc::default();
        let s = seen.clone();
        let on_end: OnEnd = Box::new(move |how, bytes| {
            let kind = match how {
                BodyEnd::Complete => "complete",
                BodyEnd::Failed(_) => "failed",
                BodyEnd::Stalled(_) => "stalled",
                BodyEnd::Abandoned => "abandoned",
            };
            s.lock().unwrap().push((kind.to_string(), bytes));
        });
        (Watched::new(inner, idle, on_end), seen)
    }

    /// A body fed chunk by chunk; it ends when the sender is dropped.
    fn channel() -> (Sender, ProxyBody) {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, BoxError>>(4);
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|r| (r.map(Frame::data), rx))
        });
        (tx, boxed(http_body_util::StreamBody::new(stream)))
    }

    type Sender = tokio::sync::mpsc::Sender<Result<Bytes, BoxError>>;

    /// A watched channel body whose first chunk, `first`, has been read.
    async fn started(idle: Duration, first: &'static [u8]) -> (Sender, Watched, Seen) {
        let (tx, inner) = channel();
        let (mut body, seen) = watched(inner, idle);
        tx.send(Ok(Bytes::from_static(first))).await.unwrap();
        assert!(body.frame().await.unwrap().is_ok());
        (tx, body, seen)
    }

    fn ends(seen: &Seen) -> Vec<(String, u64)> {
        seen.lock().unwrap().clone()
    }

    #[tokio::test]
    async fn a_whole_body_ends_complete_once_with_its_bytes() {
        let (body, seen) = watched(full("hello"), Duration::from_secs(1));
        let got = body.collect().await.unwrap().to_bytes();
        assert_eq!(got, "hello");
        assert_eq!(ends(&seen), [("complete".to_string(), 5)]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_source_that_stalls_is_cut_after_the_idle_timeout() {
        let (tx, mut body, seen) = started(Duration::from_millis(300), b"abc").await;
        let started = tokio::time::Instant::now();
        let e = body.frame().await.unwrap().unwrap_err();
        assert!(e.is::<Stalled>(), "{e}");
        assert_eq!(started.elapsed(), Duration::from_millis(300));
        assert_eq!(ends(&seen), [("stalled".to_string(), 3)]);
        assert!(body.frame().await.is_none(), "nothing after the cut");
        drop(tx);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_reader_does_not_make_the_source_look_stalled() {
        let (tx, mut body, seen) = started(Duration::from_millis(300), b"a").await;
        // The source is ready long before the reader comes back.
        tx.send(Ok(Bytes::from_static(b"b"))).await.unwrap();
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(body.frame().await.unwrap().is_ok());
        drop(tx);
        assert!(body.frame().await.is_none());
        assert_eq!(ends(&seen), [("complete".to_string(), 2)]);
    }

    #[tokio::test]
    async fn a_source_error_ends_the_body_failed() {
        let (tx, mut body, seen) = started(Duration::from_secs(1), b"abcd").await;
        tx.send(Err("reset".into())).await.unwrap();
        assert!(body.frame().await.unwrap().is_err());
        drop(body);
        assert_eq!(ends(&seen), [("failed".to_string(), 4)]);
    }

    #[tokio::test]
    async fn dropped_part_read_is_abandoned_and_dropped_at_its_end_is_complete() {
        let (_tx, body, seen) = started(Duration::from_secs(1), b"ab").await;
        drop(body);
        assert_eq!(ends(&seen), [("abandoned".to_string(), 2)]);

        let (body, seen) = watched(full(""), Duration::from_secs(1));
        drop(body);
        assert_eq!(ends(&seen), [("complete".to_string(), 0)]);
    }
}
