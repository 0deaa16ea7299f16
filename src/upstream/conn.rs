//! Upstream connections that know when a request provably never left, and when a
//! reused connection died before any byte of the response.
//!
//! Every connection the pooled client opens is wrapped in a [`Watched`] stream, which
//! sees the plaintext bytes (above TLS) of HTTP/1.1 requests and responses. It knows a
//! *request boundary*: nothing was written yet (a connection may sit in the pool
//! unused: hyper-util pools the connection it dialed for a request another idle one
//! served), or the connection has carried a response (a read returned bytes) and
//! nothing was written since; and the next write starts with a request line. At that
//! boundary, before the first byte of the request, it asks the kernel (a real
//! non-blocking `recv(MSG_PEEK)`, not tokio's cached readiness, which lags while the
//! runtime is busy) whether the upstream has already closed the connection. If it
//! has, the write fails with [`ClosedBeforeWrite`]: not one byte of that request
//! reached the connection, so the request may be sent again on a fresh one, whatever
//! its method. Once a request has started on a reused connection (one that carried a
//! response before), a read that ends (EOF or error) before any byte of the response
//! fails with [`ClosedBeforeResponse`]: the request may have reached the upstream, so
//! only an idempotent one may be retried. A connection that ends before anything was
//! ever written on it fails its read with [`ClosedBeforeWrite`] too (hyper may have
//! taken a request for it and read the end before writing).
//!
//! A live connection is not declared dead: only end-of-stream or a socket error seen by
//! the peek counts, and for TLS a lone pending record of an alert's size (the
//! upstream's `close_notify`; at worst a connection is given up with nothing sent on
//! it). HTTP/2 connections never start with a request line, so they are never checked.
//! The one case the boundary can be wrong: an upstream that answers `1xx` mid-body and
//! then closes, while the next body chunk happens to begin with a request line.
//! What to retry is decided in [`super::retry`].

use super::client::Https;
use hyper_rustls::MaybeHttpsStream;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// The upstream had closed the pooled connection before the first byte of the request
/// was written to it: the request never left.
#[derive(Debug, thiserror::Error)]
#[error("the upstream had closed the idle connection before the request was written")]
pub struct ClosedBeforeWrite;

/// A reused connection ended after the request was (perhaps partly) written and
/// before any byte of the response: the upstream may or may not have seen it.
#[derive(Debug, thiserror::Error)]
#[error("the upstream closed the reused connection before any byte of the response")]
pub struct ClosedBeforeResponse {
    /// The read error, when the connection failed rather than ended.
    #[source]
    pub cause: Option<io::Error>,
}

type Stream = MaybeHttpsStream<TokioIo<TcpStream>>;

/// The client's connector: the HTTP(S) connector, each connection [`Watched`].
#[derive(Clone)]
pub struct Watching(pub(super) Https);

impl tower_service::Service<http::Uri> for Watching {
    type Response = TokioIo<Watched>;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future =
        Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let connecting = self.0.call(uri);
        Box::pin(async move { connecting.await.map(|io| TokioIo::new(Watched::new(io))) })
    }
}

/// One upstream connection and what it has carried so far.
pub struct Watched {
    io: TokioIo<Stream>,
    /// Nothing written yet, or a response byte was read and nothing written since: the
    /// next write that starts a request line starts a request.
    at_boundary: bool,
    /// A response byte was read: the connection has been used.
    reused: bool,
    /// A request started on this reused connection and no response byte came yet.
    awaiting_response: bool,
}

impl Watched {
    fn new(io: Stream) -> Watched {
        Watched {
            io: TokioIo::new(io),
            at_boundary: true,
            reused: false,
            awaiting_response: false,
        }
    }

    fn tcp(&self) -> &TcpStream {
        match self.io.inner() {
            MaybeHttpsStream::Http(tcp) => tcp.inner(),
            MaybeHttpsStream::Https(tls) => tls.inner().get_ref().0.inner().inner(),
        }
    }

    /// Before a write: whether `first` starts a request; fails
    /// with [`ClosedBeforeWrite`] when it does and the upstream has already closed it.
    fn before_write(&self, first: &[u8]) -> io::Result<bool> {
        if !self.at_boundary || !starts_request_line(first) {
            return Ok(false);
        }
        let tls = matches!(self.io.inner(), MaybeHttpsStream::Https(_));
        match peek(self.tcp()) {
            Peeked::Closed => Err(closed_before_write()),
            Peeked::Pending(bytes) if tls && is_lone_alert(&bytes) => Err(closed_before_write()),
            Peeked::Pending(_) | Peeked::Nothing => Ok(true),
        }
    }

    /// After a write of `n` bytes (`starts`: the first of a request).
    fn wrote(&mut self, n: usize, starts: bool) {
        if n > 0 {
            self.awaiting_response |= starts && self.reused;
            self.at_boundary = false;
        }
    }
}

fn closed_before_write() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, ClosedBeforeWrite)
}

/// Whether `buf` starts with an HTTP/1.x request line (`METHOD target HTTP/1.1\r\n`).
fn starts_request_line(buf: &[u8]) -> bool {
    let window = &buf[..buf.len().min(16 * 1024)];
    let Some(end) = window.windows(2).position(|w| w == b"\r\n") else {
        return false;
    };
    let line = &window[..end];
    let method_ok = line
        .iter()
        .position(|&b| b == b' ')
        .is_some_and(|sp| sp > 0 && line[..sp].iter().all(|b| b.is_ascii_uppercase()));
    method_ok && (line.ends_with(b" HTTP/1.1") || line.ends_with(b" HTTP/1.0"))
}

/// Whether `bytes` is exactly one TLS record of an alert's size: a TLS 1.2 alert
/// (content type 21), or a TLS 1.3 encrypted record of 19 bytes (a 2-byte alert, its
/// content type and a 16-byte tag). On an idle HTTP/1.1 connection that is the
/// upstream's `close_notify`.
fn is_lone_alert(bytes: &[u8]) -> bool {
    let [kind, 3, _, hi, lo, rest @ ..] = bytes else {
        return false;
    };
    let len = usize::from(*hi) << 8 | usize::from(*lo);
    len == rest.len() && (*kind == 21 || (*kind == 23 && len == 19))
}

/// What a non-blocking peek at the socket found.
enum Peeked {
    /// End of stream or a socket error: the upstream closed the connection.
    Closed,
    /// Bytes waiting to be read (up to 64 of them).
    Pending(Vec<u8>),
    /// Nothing to read: the connection is open.
    Nothing,
}

/// Peeks at the socket with a system call, bypassing tokio's readiness (which the
/// runtime updates only when it polls its driver).
#[cfg(unix)]
fn peek(tcp: &TcpStream) -> Peeked {
    use std::os::fd::AsFd;
    // A duplicate of the descriptor, as a std stream for `peek`; it shares the
    // socket (and its non-blocking flag), and dropping it closes only the duplicate.
    let Ok(fd) = tcp.as_fd().try_clone_to_owned() else {
        return Peeked::Nothing;
    };
    let socket = std::net::TcpStream::from(fd);
    let mut buf = [0u8; 64];
    match socket.peek(&mut buf) {
        Ok(0) => Peeked::Closed,
        Ok(n) => Peeked::Pending(buf[..n].to_vec()),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Peeked::Nothing,
        Err(e) if e.kind() == io::ErrorKind::Interrupted => Peeked::Nothing,
        Err(_) => Peeked::Closed,
    }
}

#[cfg(not(unix))]
fn peek(_: &TcpStream) -> Peeked {
    Peeked::Nothing
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match std::task::ready!(Pin::new(&mut this.io).poll_read(cx, buf)) {
            Ok(()) if buf.filled().len() > before => {
                this.awaiting_response = false;
                this.at_boundary = true;
                this.reused = true;
                Poll::Ready(Ok(()))
            }
            Ok(()) if this.awaiting_response => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                ClosedBeforeResponse { cause: None },
            ))),
            Err(e) if this.awaiting_response => Poll::Ready(Err(io::Error::new(
                e.kind(),
                ClosedBeforeResponse { cause: Some(e) },
            ))),
            // Nothing was ever written on this connection: whatever request hyper has
            // taken for it never left (a response body read to EOF is impossible, no
            // response byte came).
            Ok(()) if this.at_boundary && !this.reused => Poll::Ready(Err(closed_before_write())),
            Err(e) if this.at_boundary && !this.reused => {
                Poll::Ready(Err(io::Error::new(e.kind(), ClosedBeforeWrite)))
            }
            other => Poll::Ready(other),
        }
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let starts = this.before_write(buf)?;
        let n = std::task::ready!(Pin::new(&mut this.io).poll_write(cx, buf))?;
        this.wrote(n, starts);
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let first = bufs
            .iter()
            .find(|b| !b.is_empty())
            .map_or(&[][..], |b| &b[..]);
        let starts = this.before_write(first)?;
        let n = std::task::ready!(Pin::new(&mut this.io).poll_write_vectored(cx, bufs))?;
        this.wrote(n, starts);
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

impl Connection for Watched {
    fn connected(&self) -> Connected {
        self.io.inner().connected()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines_are_recognised() {
        assert!(starts_request_line(b"POST /x HTTP/1.1\r\nhost: a\r\n\r\n"));
        assert!(starts_request_line(b"GET / HTTP/1.0\r\n"));
        assert!(!starts_request_line(b"GET / HTTP/1.1"), "no line end yet");
        assert!(!starts_request_line(b"1a\r\n{\"a\":1}"), "a chunk");
        assert!(!starts_request_line(b"{\"a\": \"b HTTP/1.1\r\n"), "a body");
        assert!(!starts_request_line(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"));
        assert!(!starts_request_line(b""));
    }

    #[test]
    fn only_a_lone_alert_record_counts_as_close_notify() {
        assert!(is_lone_alert(&[21, 3, 3, 0, 2, 1, 0]));
        let mut tls13 = vec![23, 3, 3, 0, 19];
        tls13.extend([0u8; 19]);
        assert!(is_lone_alert(&tls13));
        tls13.push(0);
        assert!(!is_lone_alert(&tls13), "more than one record");
        let mut data = vec![23, 3, 3, 0, 40];
        data.extend([0u8; 40]);
        assert!(!is_lone_alert(&data), "application data");
        assert!(!is_lone_alert(&[21, 3, 3, 0, 2, 1]), "incomplete");
    }
}
