//! One byte budget for every request body airlock keeps in memory: bodies read for
//! inspection and bodies buffered for a hold (`limits.max_held_bytes`).
//!
//! A request reserves the most it may buffer *before* reading, so a flood of large
//! bodies is refused instead of being read; once read, the reservation shrinks to the
//! bytes actually kept and travels with them ([`Reservation::attach`]): it is released
//! when the last handle to those bytes is dropped, whatever path the request took.
//! The limit is passed on each reservation, so a reload that changes it applies to
//! the next request.

use super::body::{read_within, BodyError, BoxError, Read};
use bytes::Bytes;
use http::Extensions;
use prometheus_client::metrics::gauge::Gauge;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// The bytes buffered now by every request; cheap to clone (one shared counter).
#[derive(Clone, Default, Debug)]
pub struct ByteBudget {
    used: Arc<Used>,
}

/// The shared count, mirrored into a gauge when there is one.
#[derive(Default, Debug)]
struct Used {
    bytes: AtomicUsize,
    gauge: Option<Gauge>,
}

impl Used {
    fn add(&self, n: usize) {
        let now = self.bytes.fetch_add(n, Ordering::AcqRel) + n;
        self.show(now);
    }

    fn sub(&self, n: usize) {
        let now = self.bytes.fetch_sub(n, Ordering::AcqRel) - n;
        self.show(now);
    }

    fn show(&self, now: usize) {
        if let Some(g) = &self.gauge {
            g.set(i64::try_from(now).unwrap_or(i64::MAX));
        }
    }
}

/// A reservation would take the budget over its limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("bodies held or being inspected use {used} bytes; {wanted} more would exceed limits.max_held_bytes ({limit})")]
pub struct OverBudget {
    /// Bytes reserved when this one was refused.
    pub used: usize,
    /// Bytes this reservation asked for.
    pub wanted: usize,
    /// The limit in force.
    pub limit: usize,
}

/// Bytes taken from a [`ByteBudget`]; given back when dropped.
#[derive(Debug)]
pub struct Reservation {
    used: Arc<Used>,
    bytes: usize,
}

impl ByteBudget {
    /// An empty budget.
    pub fn new() -> ByteBudget {
        ByteBudget::default()
    }

    /// An empty budget whose use `gauge` shows.
    pub fn counted(gauge: Gauge) -> ByteBudget {
        ByteBudget {
            used: Arc::new(Used {
                bytes: AtomicUsize::new(0),
                gauge: Some(gauge),
            }),
        }
    }

    /// Bytes reserved now.
    pub fn used(&self) -> usize {
        self.used.bytes.load(Ordering::Acquire)
    }

    /// Takes `bytes` if the total stays within `limit`.
    pub fn reserve(&self, bytes: usize, limit: usize) -> Result<Reservation, OverBudget> {
        let before = self
            .used
            .bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|&total| total <= limit)
            })
            .map_err(|used| OverBudget {
                used,
                wanted: bytes,
                limit,
            })?;
        self.used.show(before + bytes);
        Ok(Reservation {
            used: self.used.clone(),
            bytes,
        })
    }
}

impl Reservation {
    /// Bytes this reservation holds.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Holds exactly `bytes` from now on. Growing is not checked against the limit:
    /// it only happens when a read overshoots its reservation by its last chunk.
    pub fn resize(&mut self, bytes: usize) {
        if bytes < self.bytes {
            self.used.sub(self.bytes - bytes);
        } else {
            self.used.add(bytes - self.bytes);
        }
        self.bytes = bytes;
    }

    /// `data`, carrying this reservation (resized to its length) until the last
    /// handle to it is dropped.
    pub fn attach(mut self, data: Bytes) -> Bytes {
        if data.is_empty() {
            return data;
        }
        self.resize(data.len());
        Bytes::from_owner(Owned {
            data,
            _reservation: self,
        })
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.used.sub(self.bytes);
    }
}

/// Bytes that give their reservation back when freed.
struct Owned {
    data: Bytes,
    _reservation: Reservation,
}

impl AsRef<[u8]> for Owned {
    fn as_ref(&self) -> &[u8] {
        &self.data
    }
}

/// [`read_within`], with what it buffers counted against the [`ByteBudget`] the
/// listener put in the request's `extensions`: `limit` bytes are reserved before
/// reading (refused with [`BodyError::Busy`] when `max_bytes` would be exceeded),
/// and what is kept carries the reservation (see [`Reservation::attach`]).
pub async fn read_budgeted<B>(
    extensions: &Extensions,
    body: B,
    limit: usize,
    timeout: std::time::Duration,
    max_bytes: usize,
) -> Result<Read<B>, BodyError>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    let Some(budget) = extensions.get::<ByteBudget>() else {
        return read_within(body, limit, timeout).await;
    };
    let reservation = budget.reserve(limit, max_bytes)?;
    Ok(match read_within(body, limit, timeout).await? {
        Read::Complete(b) => Read::Complete(reservation.attach(b)),
        Read::Over(mut pre, rest) => {
            // The chunks are replayed and freed together; the last one carries them all.
            let kept: usize = pre.iter().map(Bytes::len).sum();
            if let Some(last) = pre.pop_back() {
                let mut reservation = reservation;
                reservation.resize(kept);
                let carried = Bytes::from_owner(Owned {
                    data: last,
                    _reservation: reservation,
                });
                pre.push_back(carried);
            }
            Read::Over(pre, rest)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_within_the_limit_are_granted_and_given_back_on_drop() {
        let b = ByteBudget::new();
        let r1 = b.reserve(60, 100).unwrap();
        let r2 = b.reserve(40, 100).unwrap();
        assert_eq!(b.used(), 100);
        let e = b.reserve(1, 100).unwrap_err();
        assert_eq!(
            e,
            OverBudget {
                used: 100,
                wanted: 1,
                limit: 100
            }
        );
        drop(r1);
        assert_eq!(b.used(), 40);
        assert!(
            b.reserve(60, 100).is_ok(),
            "freed bytes can be reserved again"
        );
        assert_eq!(b.used(), 40, "the granted reservation was dropped at once");
        drop(r2);
        assert_eq!(b.used(), 0);
    }

    #[test]
    fn a_counted_budget_shows_its_use_in_the_gauge() {
        let g = Gauge::default();
        let b = ByteBudget::counted(g.clone());
        let r = b.reserve(100, 1000).unwrap();
        assert_eq!(g.get(), 100);
        let data = r.attach(Bytes::from_static(b"abc"));
        assert_eq!(g.get(), 3);
        drop(data);
        assert_eq!(g.get(), 0);
    }

    #[test]
    fn a_reservation_larger_than_the_limit_is_refused_even_when_empty() {
        let b = ByteBudget::new();
        assert!(b.reserve(101, 100).is_err());
        let all = b.reserve(usize::MAX, usize::MAX).unwrap();
        assert!(
            b.reserve(1, usize::MAX).is_err(),
            "no overflow wraps around"
        );
        drop(all);
        assert_eq!(b.used(), 0);
    }

    #[test]
    fn attached_bytes_hold_their_reservation_until_the_last_clone_is_dropped() {
        let b = ByteBudget::new();
        let r = b.reserve(1000, 1000).unwrap();
        let data = r.attach(Bytes::from(vec![7u8; 300]));
        assert_eq!(b.used(), 300, "shrunk to what is kept");
        assert_eq!(&data[..3], &[7, 7, 7]);
        let part = data.slice(10..20);
        drop(data);
        assert_eq!(b.used(), 300, "a slice still holds the bytes");
        drop(part);
        assert_eq!(b.used(), 0);
    }

    #[test]
    fn resize_grows_and_shrinks_the_count() {
        let b = ByteBudget::new();
        let mut r = b.reserve(10, 100).unwrap();
        r.resize(25);
        assert_eq!((r.bytes(), b.used()), (25, 25));
        r.resize(5);
        assert_eq!(b.used(), 5);
        drop(r);
        assert_eq!(b.used(), 0);
    }

    #[tokio::test]
    async fn read_budgeted_refuses_before_reading_and_counts_what_it_keeps() {
        use http_body_util::Full;
        let budget = ByteBudget::new();
        let mut ext = Extensions::new();
        ext.insert(budget.clone());
        let t = std::time::Duration::from_secs(5);
        let body = || Full::new(Bytes::from_static(b"0123456789"));
        let held = match read_budgeted(&ext, body(), 64, t, 100).await.unwrap() {
            Read::Complete(b) => b,
            Read::Over(..) => panic!("within the limit"),
        };
        assert_eq!(budget.used(), 10);
        // 10 used + 64 reserved up front > 70: refused without reading.
        let err = read_budgeted(&ext, body(), 64, t, 70).await.err().unwrap();
        assert!(matches!(err, BodyError::Busy(_)), "{err}");
        match read_budgeted(&ext, body(), 4, t, 100).await.unwrap() {
            Read::Over(pre, _) => {
                let kept: usize = pre.iter().map(Bytes::len).sum();
                assert_eq!(budget.used(), 10 + kept);
            }
            Read::Complete(_) => panic!("over the limit"),
        }
        assert_eq!(budget.used(), 10, "the partial read was dropped");
        drop(held);
        assert_eq!(budget.used(), 0);
        // Without a budget in the extensions, reads are not counted.
        assert!(read_budgeted(&Extensions::new(), body(), 64, t, 0)
            .await
            .is_ok());
    }
}
