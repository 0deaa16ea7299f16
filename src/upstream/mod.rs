//! Talking to upstreams: pooled clients ([`client`]) over watched connections
//! ([`conn`]) that retry, once, what a stale connection lost ([`retry`]), the rewrite
//! every forwarded request and response gets ([`headers`]), and the built-in demo
//! upstream ([`demo`]).
//!
//! This module forwards what it is given; deciding whether a request may go is the
//! proxy's job, done before anything reaches here. A failure keeps its cause
//! (refused, TLS, reset, timeout) for the log and the audit event.

pub mod client;
pub mod conn;
pub mod demo;
pub mod headers;
pub mod retry;

pub use client::{ClientError, UpstreamClient};

/// What went wrong talking to an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamErrorKind {
    /// The TCP connection was refused (nothing listens).
    Refused,
    /// Connecting failed otherwise (DNS, unreachable, connect timeout).
    Connect,
    /// The TLS handshake failed (certificate, protocol).
    Tls,
    /// The upstream had closed the (pooled) connection before one byte of the request
    /// was written, and the retry on a fresh connection failed too.
    Closed,
    /// The connection was reset or closed before a response.
    Reset,
    /// No response headers within the upstream's `timeout`.
    Timeout,
    /// Anything else (a malformed response, a protocol error).
    Protocol,
}

impl UpstreamErrorKind {
    /// Whether any of the request may have reached the upstream: not when the
    /// connection was refused, never made, or its TLS handshake failed.
    pub fn may_have_sent(self) -> bool {
        !matches!(
            self,
            UpstreamErrorKind::Refused
                | UpstreamErrorKind::Connect
                | UpstreamErrorKind::Tls
                | UpstreamErrorKind::Closed
        )
    }

    /// The word the log and the audit event use.
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamErrorKind::Refused => "refused",
            UpstreamErrorKind::Connect => "connect",
            UpstreamErrorKind::Tls => "tls",
            UpstreamErrorKind::Closed => "closed_before_sent",
            UpstreamErrorKind::Reset => "reset",
            UpstreamErrorKind::Timeout => "timeout",
            UpstreamErrorKind::Protocol => "protocol",
        }
    }
}

/// An upstream request that got no response.
#[derive(Debug, Clone, thiserror::Error)]
#[error("upstream {upstream}: {} ({cause})", kind.as_str())]
pub struct UpstreamError {
    pub upstream: String,
    pub kind: UpstreamErrorKind,
    /// The underlying error chain, for operators.
    pub cause: String,
}

impl UpstreamError {
    /// Classifies a client error by walking its source chain.
    pub fn classify(upstream: &str, e: &(dyn std::error::Error + 'static)) -> UpstreamError {
        let mut kind = None;
        let mut chain = e.to_string();
        let mut src = e.source();
        while let Some(s) = src {
            chain.push_str(": ");
            chain.push_str(&s.to_string());
            if kind.is_none() {
                kind = classify_one(s);
            }
            src = s.source();
        }
        // Proven unsent wins over whatever else the chain shows (a reset, a closed
        // connection): nothing of the request reached the upstream.
        let kind = if retry::in_chain::<conn::ClosedBeforeWrite>(e) {
            Some(UpstreamErrorKind::Closed)
        } else {
            kind
        };
        let kind = kind.unwrap_or_else(|| {
            let connect = e
                .downcast_ref::<hyper_util::client::legacy::Error>()
                .is_some_and(|c| c.is_connect());
            if connect {
                UpstreamErrorKind::Connect
            } else {
                UpstreamErrorKind::Protocol
            }
        });
        UpstreamError {
            upstream: upstream.to_string(),
            kind,
            cause: chain,
        }
    }
}

/// The kind one error of a chain shows. An `io::Error` may wrap other errors (a TLS
/// alert wrapped twice by the TLS layers): those are looked into, since an
/// `io::Error`'s `source()` skips the error it wraps.
fn classify_one(e: &(dyn std::error::Error + 'static)) -> Option<UpstreamErrorKind> {
    let mut cur = e;
    let mut by_kind = None;
    loop {
        if cur.is::<rustls::Error>() {
            return Some(UpstreamErrorKind::Tls);
        }
        if let Some(h) = cur.downcast_ref::<hyper::Error>() {
            if h.is_incomplete_message() || h.is_closed() || h.is_canceled() {
                return Some(UpstreamErrorKind::Reset);
            }
        }
        let Some(io) = cur.downcast_ref::<std::io::Error>() else {
            return by_kind;
        };
        by_kind = by_kind.or_else(|| io_kind(io));
        match io.get_ref() {
            Some(inner) => cur = inner,
            None => return by_kind,
        }
    }
}

fn io_kind(io: &std::io::Error) -> Option<UpstreamErrorKind> {
    use std::io::ErrorKind::*;
    Some(match io.kind() {
        ConnectionRefused => UpstreamErrorKind::Refused,
        ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof => {
            UpstreamErrorKind::Reset
        }
        TimedOut => UpstreamErrorKind::Connect,
        InvalidData => UpstreamErrorKind::Tls,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_proven_unsent_is_classified_so_whatever_wraps_it() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, conn::ClosedBeforeWrite);
        let e = UpstreamError::classify("api", &io);
        assert_eq!(e.kind, UpstreamErrorKind::Closed);
        assert!(!e.kind.may_have_sent());
        let reset = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "peer reset");
        let e = UpstreamError::classify("api", &reset);
        assert_ne!(e.kind, UpstreamErrorKind::Closed);
        assert!(e.kind.may_have_sent());
    }
}
