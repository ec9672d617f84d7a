//! The fencing clock: whether a leader may still consider its lease valid.
//!
//! etcd expires a lease `ttl` after the last keep-alive it *received*. The supervisor
//! remembers when it *sent* the last keep-alive that etcd confirmed; that send happened
//! before etcd's receipt, so `sent + ttl` is no later than the moment etcd can expire the
//! lease — measured on our monotonic clock. Stopping PostgreSQL once `sent + ttl - margin`
//! has passed therefore stops it strictly before any other member can take the key, as
//! long as our clock does not run slower than etcd's by more than `margin` over one TTL
//! (real clock-rate drift is parts per million; the margin also absorbs the delay between
//! this check and the kill). Pure: the caller passes the clock reading.

use std::time::{Duration, Instant};

/// Whether the leader's lease is still safely ours.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseVerdict {
    /// Safe for `remaining` more before the fencing deadline.
    Valid {
        /// Time left until the fencing deadline.
        remaining: Duration,
    },
    /// The fencing deadline has passed: PostgreSQL must stop now.
    Expiring(String),
}

/// Judges the lease at `now`, given when the last confirmed keep-alive was sent.
pub fn lease_verdict(
    now: Instant,
    confirmed_sent: Instant,
    ttl: Duration,
    margin: Duration,
) -> LeaseVerdict {
    let deadline = confirmed_sent + ttl.saturating_sub(margin);
    match deadline.checked_duration_since(now) {
        Some(remaining) if !remaining.is_zero() => LeaseVerdict::Valid { remaining },
        _ => LeaseVerdict::Expiring(format!(
            "no keep-alive confirmed for {:?} (TTL {ttl:?}, margin {margin:?}): the lease may expire before I can renew it",
            now.saturating_duration_since(confirmed_sent)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lease_is_valid_until_ttl_minus_margin_after_the_confirmed_send() {
        let sent = Instant::now();
        let (ttl, margin) = (Duration::from_secs(3), Duration::from_secs(1));
        assert_eq!(
            lease_verdict(sent + Duration::from_millis(500), sent, ttl, margin),
            LeaseVerdict::Valid {
                remaining: Duration::from_millis(1500)
            }
        );
        assert!(matches!(
            lease_verdict(sent + Duration::from_secs(2), sent, ttl, margin),
            LeaseVerdict::Expiring(_)
        ));
        assert!(matches!(
            lease_verdict(sent + Duration::from_secs(60), sent, ttl, margin),
            LeaseVerdict::Expiring(reason) if reason.contains("no keep-alive confirmed for 60s")
        ));
    }
}
