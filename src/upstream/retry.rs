//! When a failed upstream request may be sent once more, on a fresh connection
//! (Go's `net/http` `shouldRetryRequest` is the model), and the body kept to send it.
//!
//! - The request never left ([`ClosedBeforeWrite`]: the reused connection was closed
//!   before its first byte): any method, POST and DELETE too.
//! - A reused connection ended before any byte of the response
//!   ([`ClosedBeforeResponse`]): only an idempotent request (GET, HEAD, OPTIONS, TRACE,
//!   or one carrying `Idempotency-Key` / `X-Idempotency-Key`), since the upstream may
//!   have seen it.
//! - Anything else is never sent twice.
//!
//! Either way the body must be replayable: [`Tape`] keeps what the connection consumed
//! of it, up to [`KEEP`] bytes (an approved request's whole body is far below that, and
//! a streamed body is rarely read further before its first write).

use super::conn::{ClosedBeforeResponse, ClosedBeforeWrite};
use crate::http::body::{boxed, BoxError, Prefixed, ProxyBody};
use bytes::Bytes;
use http::{HeaderMap, Method};
use http_body::{Body, Frame, SizeHint};
use std::collections::VecDeque;
use std::error::Error;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

/// How much of a streamed body is kept for a retry.
pub const KEEP: usize = 64 * 1024;

/// Why a failed request may be sent once more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Not one byte of the request was written.
    NeverSent,
    /// An idempotent request whose reused connection closed before any response byte.
    Idempotent,
}

impl Retry {
    /// The word the log uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Retry::NeverSent => "closed_before_write",
            Retry::Idempotent => "closed_before_response",
        }
    }
}

/// Whether a request that failed with `e` may be sent again (its body aside).
pub fn reason(method: &Method, headers: &HeaderMap, e: &(dyn Error + 'static)) -> Option<Retry> {
    if in_chain::<ClosedBeforeWrite>(e) {
        return Some(Retry::NeverSent);
    }
    (in_chain::<ClosedBeforeResponse>(e) && is_idempotent(method, headers))
        .then_some(Retry::Idempotent)
}

/// Idempotent by method, or declared so by an idempotency key.
fn is_idempotent(method: &Method, headers: &HeaderMap) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    ) || headers.contains_key("idempotency-key")
        || headers.contains_key("x-idempotency-key")
}

/// Whether an error of type `M` is in `e`'s source chain (looking inside `io::Error`s,
/// whose `source()` skips the error they wrap).
pub(super) fn in_chain<M: Error + 'static>(e: &(dyn Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err.is::<M>() {
            return true;
        }
        cur = match err.downcast_ref::<std::io::Error>() {
            Some(io) => io.get_ref().map(|inner| inner as &(dyn Error + 'static)),
            None => err.source(),
        };
    }
    false
}

/// A request body that remembers what was read of it, so it can be sent again.
pub struct Tape(Arc<Mutex<Reel>>);

struct Reel {
    /// The rest of the body (taken by [`Tape::replay`]).
    rest: Option<ProxyBody>,
    /// The data frames read so far, while they fit in [`KEEP`] bytes.
    kept: VecDeque<Bytes>,
    kept_len: usize,
    /// More than [`KEEP`] bytes (or trailers) were read: it cannot be replayed.
    lost: bool,
}

impl Tape {
    /// Records `body`; returns the tape and the body to send.
    pub fn new(body: ProxyBody) -> (Tape, ProxyBody) {
        let reel = Arc::new(Mutex::new(Reel {
            rest: Some(body),
            kept: VecDeque::new(),
            kept_len: 0,
            lost: false,
        }));
        (Tape(reel.clone()), boxed(Taped(reel)))
    }

    /// The whole body again (what was read, then the rest), or `None` when too much
    /// of it was read.
    pub fn replay(self) -> Option<ProxyBody> {
        let mut reel = lock(&self.0);
        if reel.lost {
            return None;
        }
        let rest = reel.rest.take()?;
        let kept = std::mem::take(&mut reel.kept);
        Some(boxed(Prefixed::new(kept, rest)))
    }
}

fn lock(reel: &Mutex<Reel>) -> MutexGuard<'_, Reel> {
    reel.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The body handed to the connection: reads through to the original body and keeps
/// what it read.
struct Taped(Arc<Mutex<Reel>>);

/// The body was taken for a retry while the old connection still held it.
#[derive(Debug, thiserror::Error)]
#[error("the request body was taken for a retry")]
struct Moved;

impl Body for Taped {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut reel = lock(&self.0);
        let Some(rest) = reel.rest.as_mut() else {
            return Poll::Ready(Some(Err(Moved.into())));
        };
        let frame = std::task::ready!(Pin::new(rest).poll_frame(cx));
        if let Some(Ok(f)) = &frame {
            match f.data_ref() {
                Some(data) if !reel.lost && reel.kept_len + data.len() <= KEEP => {
                    reel.kept_len += data.len();
                    reel.kept.push_back(data.clone());
                }
                _ => {
                    reel.lost = true;
                    reel.kept.clear();
                }
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        lock(&self.0)
            .rest
            .as_ref()
            .is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        lock(&self.0)
            .rest
            .as_ref()
            .map_or_else(SizeHint::default, |b| b.size_hint())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::body::full;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn a_body_read_in_part_replays_whole() {
        let (tape, mut sent) = Tape::new(full("hello"));
        assert_eq!(sent.size_hint().exact(), Some(5));
        let first = sent
            .frame()
            .await
            .and_then(|f| f.ok())
            .and_then(|f| f.into_data().ok());
        assert_eq!(first.as_deref(), Some(&b"hello"[..]));
        drop(sent);
        let again = tape.replay().expect("replayable");
        assert_eq!(again.size_hint().exact(), Some(5));
        let bytes = again.collect().await.map(|c| c.to_bytes()).ok();
        assert_eq!(bytes.as_deref(), Some(&b"hello"[..]));
    }

    #[tokio::test]
    async fn a_body_read_past_the_limit_is_not_replayed() {
        let (tape, sent) = Tape::new(full(vec![7u8; KEEP + 1]));
        let _ = sent.collect().await;
        assert!(tape.replay().is_none());
    }

    #[test]
    fn only_idempotent_requests_are_retried_after_a_possible_send() {
        let after_write = std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            ClosedBeforeResponse { cause: None },
        );
        let before_write =
            std::io::Error::new(std::io::ErrorKind::ConnectionAborted, ClosedBeforeWrite);
        let none = HeaderMap::new();
        let mut keyed = HeaderMap::new();
        keyed.insert("idempotency-key", http::HeaderValue::from_static("k1"));
        assert_eq!(
            reason(&Method::POST, &none, &before_write),
            Some(Retry::NeverSent)
        );
        assert_eq!(reason(&Method::POST, &none, &after_write), None);
        assert_eq!(
            reason(&Method::GET, &none, &after_write),
            Some(Retry::Idempotent)
        );
        assert_eq!(
            reason(&Method::POST, &keyed, &after_write),
            Some(Retry::Idempotent)
        );
        let plain = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        assert_eq!(reason(&Method::GET, &none, &plain), None);
    }
}
