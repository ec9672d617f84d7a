//! Fencing: a leader's server dies before its lease can expire.
//!
//! The timing argument, written once for every engine:
//!
//! etcd expires a lease `ttl` after the last keep-alive it *received*. The supervisor
//! remembers when it *sent* the last keep-alive that etcd confirmed; that send happened
//! before etcd's receipt, so `sent + ttl` is no later than the moment etcd can expire the
//! lease — measured on our monotonic clock. Stopping PostgreSQL once `sent + ttl - margin`
//! has passed therefore stops it strictly before any other member can take the key, as
//! long as our clock does not run slower than etcd's by more than `margin` over one TTL
//! (real clock-rate drift is parts per million; the margin also absorbs the delay between
//! this check and the kill). [`lease_verdict`] is that clock, pure: the caller passes
//! the reading. [`watchdog`] applies it every 100 ms, independently of the supervisor's
//! tick, and SIGKILLs the server's whole process group ([`Fence`]) once it says so.
//!
//! If the supervisor itself is frozen no watchdog runs; each engine then needs a second
//! layer that stops an isolated primary from acknowledging writes (PostgreSQL: commits
//! wait for the synchronous standby, which stops streaming from it once promoted).

use std::sync::atomic::{AtomicI32, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::lease::LeaseState;

/// What the watchdog needs to know and to kill.
#[derive(Debug, Clone, Default)]
pub struct Fence {
    /// The lease id the member leads with; 0 when not leading (nothing to fence).
    pub leading: Arc<AtomicI64>,
    /// The server's pid, which leads its own process group (0: not running).
    pub pid: Arc<AtomicI32>,
}

impl Fence {
    /// SIGKILLs the server's process group now, and stops leading.
    pub fn kill(&self) {
        kill_pid_group(self.pid.load(Ordering::SeqCst));
        self.leading.store(0, Ordering::SeqCst);
    }
}

/// SIGKILL to the process group led by `pid` (0: nothing runs).
pub fn kill_pid_group(pid: i32) {
    if pid > 0 {
        // SAFETY: kill(2) on the process group of a server this process started.
        unsafe { libc::kill(-pid, libc::SIGKILL) };
    }
}

/// Fences `fence` the moment the lease it leads with may be expiring (see the module
/// doc); runs until aborted. `who` names the member in the log line.
pub async fn watchdog(
    who: String,
    fence: Fence,
    lease: watch::Receiver<Option<LeaseState>>,
    ttl: Duration,
    margin: Duration,
) {
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let leading = fence.leading.load(Ordering::SeqCst);
        if leading == 0 {
            continue;
        }
        let current = *lease.borrow();
        let verdict = match current {
            Some(state) if state.id == leading => {
                lease_verdict(Instant::now(), state.confirmed_sent, ttl, margin)
            }
            _ => LeaseVerdict::Expiring("the lease I lead with is gone".into()),
        };
        if let LeaseVerdict::Expiring(reason) = verdict {
            fence.kill();
            tracing::error!(member = %who, %reason, "fenced: server killed before the leader lease can expire");
        }
    }
}

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
