//! Retry decisions for drains, as pure functions over plain data.
//!
//! Two questions are answered here, without I/O:
//! - what to do with one sink response item ([`item_action`]): delivered, retried (429
//!   and 5xx: the sink may accept it later) or dead-lettered (any other 4xx: it never
//!   will, so retrying would block the drain forever);
//! - how long to wait before the next attempt ([`Backoff::delay`]): exponential, capped,
//!   with jitter supplied by the caller so tests are deterministic.
//!
//! A whole-request failure (connection refused, timeout, 429, 5xx, unreadable body, auth)
//! is retried ([`resend`]): the batch stays in the journal and the cursor does not move,
//! so an outage of any length loses nothing. The one exception is 413 (request too
//! large): the batch is split in halves, and a single line the sink still refuses is
//! dead-lettered.

use std::time::Duration;

/// Why an attempt is being repeated; shown in logs and as the drain's last error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RetryReason {
    /// The sink could not be reached (connect, TLS, write or timeout failure).
    Unreachable(String),
    /// The sink asked us to slow down (HTTP 429, whole request or items).
    RateLimited,
    /// The sink failed on its side (HTTP 5xx), with the status.
    ServerError(u16),
    /// The sink rejected the whole request with another status (auth, missing bucket...).
    Rejected(u16),
    /// The sink's answer could not be understood.
    BadResponse(String),
    /// Some items of a batch must be sent again (count).
    Items(usize),
}

impl std::fmt::Display for RetryReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RetryReason::Unreachable(e) => write!(f, "sink unreachable: {e}"),
            RetryReason::RateLimited => write!(f, "rate limited (429)"),
            RetryReason::ServerError(s) => write!(f, "server error ({s})"),
            RetryReason::Rejected(s) => write!(f, "request rejected ({s})"),
            RetryReason::BadResponse(e) => write!(f, "bad response: {e}"),
            RetryReason::Items(n) => write!(f, "{n} items to retry"),
        }
    }
}

/// What to do with one item of a sink's response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ItemAction {
    /// The sink stored it.
    Delivered,
    /// Send it again later, for this reason.
    Retry(RetryReason),
    /// The sink will never accept it: write it to the dead-letter file and count it.
    DeadLetter(u16),
}

/// Classifies one item by its HTTP-like status.
pub fn item_action(status: u16) -> ItemAction {
    match status {
        200..=299 => ItemAction::Delivered,
        429 => ItemAction::Retry(RetryReason::RateLimited),
        500..=599 => ItemAction::Retry(RetryReason::ServerError(status)),
        _ => ItemAction::DeadLetter(status),
    }
}

/// Classifies a whole-request HTTP status that is not a success.
pub fn request_failure(status: u16) -> RetryReason {
    match status {
        429 => RetryReason::RateLimited,
        500..=599 => RetryReason::ServerError(status),
        _ => RetryReason::Rejected(status),
    }
}

/// What to do after a whole request of `size` lines failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resend {
    /// The request was too large (413): send the first `size` lines alone, at once.
    Split {
        /// Lines in the next request.
        size: usize,
    },
    /// A single line is too large for the sink: it will never be accepted.
    DeadLetter(u16),
    /// Wait (backoff), then send the same lines again.
    Wait(RetryReason),
}

/// Decides how to resend after a whole-request failure of `size` lines.
pub fn resend(reason: RetryReason, size: usize) -> Resend {
    match reason {
        RetryReason::Rejected(413) if size > 1 => Resend::Split { size: size / 2 },
        RetryReason::Rejected(413) => Resend::DeadLetter(413),
        other => Resend::Wait(other),
    }
}

/// Exponential backoff with a cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Delay before the first retry.
    pub initial: Duration,
    /// Largest delay.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(30),
        }
    }
}

impl Backoff {
    /// Delay before retry number `attempt` (0 = first retry); `jitter` in `[0, 1)` picks a
    /// point in the upper half of the exponential delay, so retries of many drains spread.
    pub fn delay(&self, attempt: u32, jitter: f64) -> Duration {
        let base = self
            .initial
            .saturating_mul(1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX))
            .min(self.max);
        base.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items() {
        let cases = [
            (200, ItemAction::Delivered),
            (201, ItemAction::Delivered),
            (429, ItemAction::Retry(RetryReason::RateLimited)),
            (503, ItemAction::Retry(RetryReason::ServerError(503))),
            (400, ItemAction::DeadLetter(400)),
            (409, ItemAction::DeadLetter(409)),
            (404, ItemAction::DeadLetter(404)),
        ];
        for (status, expected) in cases {
            assert_eq!(item_action(status), expected, "status {status}");
        }
    }

    #[test]
    fn whole_request() {
        assert_eq!(request_failure(429), RetryReason::RateLimited);
        assert_eq!(request_failure(502), RetryReason::ServerError(502));
        assert_eq!(request_failure(403), RetryReason::Rejected(403));
    }

    #[test]
    fn too_large_requests_are_split_down_to_one_line() {
        assert_eq!(
            resend(RetryReason::Rejected(413), 1000),
            Resend::Split { size: 500 }
        );
        assert_eq!(
            resend(RetryReason::Rejected(413), 1),
            Resend::DeadLetter(413)
        );
        assert_eq!(
            resend(RetryReason::RateLimited, 1000),
            Resend::Wait(RetryReason::RateLimited)
        );
        assert_eq!(
            resend(RetryReason::Rejected(403), 1),
            Resend::Wait(RetryReason::Rejected(403))
        );
    }

    #[test]
    fn backoff_grows_caps_and_jitters() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(2),
        };
        assert_eq!(b.delay(0, 1.0), Duration::from_millis(100));
        assert_eq!(b.delay(0, 0.0), Duration::from_millis(50));
        assert_eq!(b.delay(3, 1.0), Duration::from_millis(800));
        assert_eq!(b.delay(10, 1.0), Duration::from_secs(2));
        assert_eq!(b.delay(200, 1.0), Duration::from_secs(2));
        assert_eq!(b.delay(10, 0.0), Duration::from_secs(1));
    }
}
