//! Reading a request body into memory, so that a failed attempt can send it again.
//!
//! Three bounds keep that from being a way to take the router down:
//! - each body is at most [`Limits::max_body_bytes`] (413 beyond);
//! - all the bodies being read or held by the router's workers together are at most
//!   [`Limits::max_buffered_body_bytes`] ([`BodyBudget`]), counted as bytes arrive, not
//!   as a `Content-Length` promises them (a promise costs an attacker nothing): a body
//!   that would go beyond gets a 503 with `Retry-After`, where without the budget a few
//!   thousand uploads at the size limit would take the host's memory;
//! - a body must keep arriving: [`Limits::body_read_timeout`] at most between two reads
//!   (408 after, as nginx's `client_body_timeout`), so a client trickling its body a
//!   byte at a time cannot hold a connection, its task and its bytes forever.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use prometheus_client::metrics::gauge::Gauge;

use crate::proxy::Limits;

/// The bytes of request bodies the router holds at most, shared by its workers.
#[derive(Debug)]
pub struct BodyBudget {
    limit: i64,
    /// Bytes held now: the gauge `router_request_body_bytes` itself.
    used: Gauge<i64, AtomicI64>,
}

impl BodyBudget {
    /// A budget of `limit` bytes, counting what it holds in `used`.
    pub fn new(limit: usize, used: Gauge<i64, AtomicI64>) -> Arc<Self> {
        Arc::new(BodyBudget {
            limit: i64::try_from(limit).unwrap_or(i64::MAX),
            used,
        })
    }

    /// Bytes held now.
    pub fn used(&self) -> i64 {
        self.used.get()
    }

    /// Takes `n` bytes if they fit under the limit.
    fn take(&self, n: usize) -> bool {
        let Ok(n) = i64::try_from(n) else {
            return false;
        };
        self.used
            .inner()
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|&total| total <= self.limit)
            })
            .is_ok()
    }

    fn give_back(&self, n: usize) {
        self.used.dec_by(i64::try_from(n).unwrap_or(i64::MAX));
    }
}

/// Bytes of a [`BodyBudget`] held by one body, given back when it is dropped.
#[derive(Debug)]
pub struct Lease {
    budget: Arc<BodyBudget>,
    bytes: usize,
}

impl Lease {
    /// An empty lease on `budget`.
    pub fn new(budget: &Arc<BodyBudget>) -> Self {
        Lease {
            budget: Arc::clone(budget),
            bytes: 0,
        }
    }

    /// Bytes it holds.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Takes `n` more bytes; false (and nothing taken) if the budget has no room.
    pub fn grow(&mut self, n: usize) -> bool {
        if self.budget.take(n) {
            self.bytes += n;
            true
        } else {
            false
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.budget.give_back(self.bytes);
    }
}

/// Why a request body was not read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// Longer than the per-request limit.
    #[error("request body too large")]
    TooLarge,
    /// The router holds as many body bytes as its budget allows.
    #[error("the router is holding too many request bodies; try again shortly")]
    Busy,
    /// Nothing arrived for the body read timeout.
    #[error("no request body bytes for {0:?}")]
    Stalled(Duration),
    /// The client's connection failed or sent a malformed body.
    #[error("reading the request body: {0}")]
    Read(#[source] hyper::Error),
}

impl BodyError {
    /// The status the client is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            BodyError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            BodyError::Busy => StatusCode::SERVICE_UNAVAILABLE,
            BodyError::Stalled(_) => StatusCode::REQUEST_TIMEOUT,
            BodyError::Read(_) => StatusCode::BAD_REQUEST,
        }
    }
}

/// Reads `body` whole within `limits`, its bytes leased from `budget` for as long as
/// the returned [`Lease`] lives. Trailers are dropped.
pub async fn read(
    mut body: Incoming,
    limits: &Limits,
    budget: &Arc<BodyBudget>,
) -> Result<(Bytes, Lease), BodyError> {
    let mut lease = Lease::new(budget);
    let mut chunks: Vec<Bytes> = Vec::new();
    loop {
        let frame = match tokio::time::timeout(limits.body_read_timeout, body.frame()).await {
            Err(_) => return Err(BodyError::Stalled(limits.body_read_timeout)),
            Ok(None) => break,
            Ok(Some(Err(e))) => return Err(BodyError::Read(e)),
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        if data.is_empty() {
            continue;
        }
        // The lease holds every byte read so far: it is the body's length.
        if lease.bytes() + data.len() > limits.max_body_bytes {
            return Err(BodyError::TooLarge);
        }
        if !lease.grow(data.len()) {
            return Err(BodyError::Busy);
        }
        chunks.push(data);
    }
    // One frame (most bodies) is kept as it came; more are joined into one buffer.
    let bytes = match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.swap_remove(0),
        _ => Bytes::from(chunks.concat()),
    };
    Ok((bytes, lease))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_take_what_fits_and_give_it_back_when_dropped() {
        let budget = BodyBudget::new(100, Gauge::default());
        let mut a = Lease::new(&budget);
        assert!(a.grow(60));
        let mut b = Lease::new(&budget);
        assert!(!b.grow(41), "beyond the budget");
        assert_eq!(budget.used(), 60, "a refused grow takes nothing");
        assert!(b.grow(40));
        assert!(!a.grow(1));
        drop(a);
        assert_eq!(budget.used(), 40);
        assert!(b.grow(60));
        drop(b);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn a_grow_that_would_overflow_is_refused() {
        let budget = BodyBudget::new(usize::MAX, Gauge::default());
        let mut a = Lease::new(&budget);
        assert!(a.grow(i64::MAX as usize - 1));
        assert!(!Lease::new(&budget).grow(2));
        assert!(
            !Lease::new(&budget).grow(usize::MAX),
            "more than a gauge counts"
        );
        drop(a);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn each_error_has_its_status() {
        assert_eq!(BodyError::TooLarge.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(BodyError::Busy.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            BodyError::Stalled(Duration::from_secs(1)).status(),
            StatusCode::REQUEST_TIMEOUT
        );
    }
}
