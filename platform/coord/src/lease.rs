//! Leases kept alive in the background, with a prompt "lost" signal.
//!
//! A [`Lease`] is an etcd lease plus a task renewing it every `ttl/3`. Whoever holds
//! keys bound to the lease (a registration, a leader key) watches [`Lease::lost`]: it
//! fires when etcd says the lease is gone, when it was revoked, or when no renewal
//! succeeded in time.
//!
//! Timing argument (why a holder can stop acting before anyone else can take over):
//! a renewal sent at local time `s` and answered with TTL `t` makes etcd expire the
//! lease no earlier than `s' + t`, where `s' >= s` is when etcd received it; leader
//! changes in etcd only extend leases. So the lease is certainly valid until
//! `valid_until = s + t` on our clock. The keeper declares the lease lost at
//! `valid_until - t/4` (the *safe deadline*) if no later renewal succeeded by then. A
//! holder that stops acting within `t/4` of that signal therefore stops before etcd can
//! expire the lease and before any other process can acquire the keys. The argument
//! assumes clock *rates* are close (no assumption on clock offsets); `t/4` is the
//! margin for rate drift, scheduling delay and the holder's reaction.
//!
//! One renewal waits at most a sixth of the TTL for its answer; a failed or unanswered
//! one drops the keeper's connection, and the next renewal goes over a new one to the
//! next etcd member (`crate::keeper`). A member that died silently (a dead machine, a
//! cut link) answers nothing and closes nothing, and HTTP/2's keep-alive ping notices
//! only after about 8 s, longer than a 5 s lease lives: the retries at another member
//! renew in time.
//!
//! Keepers run on the process's lease keeper runtime (`crate::keeper`), over their own
//! connection, so a busy process does not delay its renewals.
//!
//! A grant is timed from when it was sent, so a grant answered late (etcd electing a
//! leader after a restart, a slow disk) proves only a short life; such a lease is renewed
//! once before [`Coord::grant_lease`] returns it ([`renew_at_once`]), or its keeper would
//! give it up at the first renewal and its holder would register again for nothing.
//!
//! The decisions (when to renew next, when to give up) are the pure function
//! [`after_attempt`]; the task around it only does I/O.

use std::time::Duration;

use etcd_client::{LeaseKeepAliveStream, LeaseKeeper};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::coord::Coord;
use crate::error::{CoordError, Result};

/// Why a lease is no longer held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LostReason {
    /// etcd answered that the lease does not exist (it expired or was revoked elsewhere).
    Expired,
    /// No renewal succeeded before the safe deadline; the last error is attached.
    Unrenewed {
        /// The last renewal failure seen.
        last_error: String,
    },
    /// This process revoked it.
    Revoked,
}

impl std::fmt::Display for LostReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LostReason::Expired => f.write_str("etcd reports the lease expired"),
            LostReason::Unrenewed { last_error } => {
                write!(f, "not renewed before the safe deadline: {last_error}")
            }
            LostReason::Revoked => f.write_str("revoked"),
        }
    }
}

/// Whether a lease is still held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseState {
    /// Renewed in time; valid at least until the instant given (local clock).
    Held {
        /// The renewal-based lower bound of the lease's life.
        valid_until: Instant,
    },
    /// No longer held; keys bound to it are gone or about to go.
    Lost(LostReason),
}

/// The result of one renewal attempt, as seen by the keeper.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Attempt {
    /// etcd renewed the lease for this many seconds (0 or less: no such lease).
    Renewed {
        /// The TTL etcd granted.
        ttl_secs: i64,
    },
    /// The request failed or got no answer in time.
    Failed(String),
}

/// What the keeper does after an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Next {
    /// Renew again at `at`; the lease is valid until `valid_until`.
    RenewAt {
        /// When to send the next renewal.
        at: Instant,
        /// The updated validity bound.
        valid_until: Instant,
    },
    /// Give up: the lease is lost.
    Lost(LostReason),
}

/// The safe deadline: the keeper declares the lease lost when this passes without a
/// renewal (see the module doc for the timing argument).
pub(crate) fn safe_deadline(valid_until: Instant, ttl: Duration) -> Instant {
    valid_until - ttl / 4
}

/// How long one renewal may wait for its answer: a sixth of the TTL, so a renewal lost
/// on a connection to a member that died silently leaves time for two more, over a new
/// connection, before the safe deadline.
fn attempt_timeout(ttl: Duration) -> Duration {
    ttl / 6
}

/// When a renewal sent at `sent_at` is given up: after [`attempt_timeout`], and never
/// after the safe deadline. Pure.
pub(crate) fn attempt_deadline(sent_at: Instant, valid_until: Instant, ttl: Duration) -> Instant {
    (sent_at + attempt_timeout(ttl)).min(safe_deadline(valid_until, ttl))
}

/// Whether a lease granted by a request sent at `sent_at`, answered at `now`, is renewed
/// before it is handed out: when the answer took more than a third of the TTL, the
/// first scheduled renewal is already due and the provable life left is short. Pure.
pub(crate) fn renew_at_once(sent_at: Instant, now: Instant, ttl: Duration) -> bool {
    now >= sent_at + ttl / 3
}

/// How long to wait before retrying a failed renewal.
fn retry_delay(ttl: Duration) -> Duration {
    (ttl / 10).min(Duration::from_millis(200))
}

/// Decides what follows a renewal attempt sent at `sent_at`, observed at `now`. Pure.
pub(crate) fn after_attempt(
    sent_at: Instant,
    now: Instant,
    attempt: Attempt,
    valid_until: Instant,
    ttl: Duration,
) -> Next {
    match attempt {
        Attempt::Renewed { ttl_secs } if ttl_secs <= 0 => Next::Lost(LostReason::Expired),
        Attempt::Renewed { ttl_secs } => {
            let granted = Duration::from_secs(ttl_secs as u64);
            Next::RenewAt {
                at: sent_at + granted / 3,
                valid_until: (sent_at + granted).max(valid_until),
            }
        }
        Attempt::Failed(last_error) => {
            let retry = now + retry_delay(ttl);
            if retry >= safe_deadline(valid_until, ttl) {
                Next::Lost(LostReason::Unrenewed { last_error })
            } else {
                Next::RenewAt {
                    at: retry,
                    valid_until,
                }
            }
        }
    }
}

/// An etcd lease renewed in the background until revoked, forgotten or dropped.
///
/// Dropping it stops the renewals and revokes it (best effort, in the background), so
/// its keys vanish at once; [`Lease::forget`] stops renewals without revoking, as a
/// crashed process would, so its keys vanish when the TTL runs out.
#[derive(Debug)]
pub struct Lease {
    id: i64,
    ttl: Duration,
    coord: Coord,
    state: watch::Receiver<LeaseState>,
    keeper: Option<JoinHandle<()>>,
}

impl Coord {
    /// Grants a lease of `ttl` (rounded up to whole seconds, at least 1 s) and starts
    /// renewing it.
    pub async fn grant_lease(&self, ttl: Duration) -> Result<Lease> {
        let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
        let secs = secs.max(1) as i64;
        let sent_at = Instant::now();
        // Repeatable: a lease granted by a lost answer only expires unused.
        let granted = self
            .read(|c| async move { c.lease_client().grant(secs, None).await })
            .await?;
        let ttl = Duration::from_secs(granted.ttl().max(1) as u64);
        let mut keeping = Keeping {
            valid_until: sent_at + ttl,
            next: sent_at + ttl / 3,
            stream: None,
            generation: None,
        };
        if renew_at_once(sent_at, Instant::now(), ttl) {
            // The grant was slow (etcd electing a leader, a slow disk): only a short
            // life is provable from its send time. One renewal now, over the keeper's
            // connection, starts the holder with a full TTL instead of a lease the
            // keeper would give up as lost at its first renewal.
            let renew_sent = Instant::now();
            let attempt = keeping
                .attempt(
                    self,
                    granted.id(),
                    ttl,
                    renew_sent,
                    renew_sent + attempt_timeout(ttl),
                )
                .await;
            if let Next::RenewAt { at, valid_until } = after_attempt(
                renew_sent,
                Instant::now(),
                attempt,
                keeping.valid_until,
                ttl,
            ) {
                keeping.next = at;
                keeping.valid_until = valid_until;
            }
            // Otherwise the keeper starts from the grant's bound, retries at once and
            // reports the lease lost if that bound runs out first.
        }
        let valid_until = keeping.valid_until;
        let (tx, state) = watch::channel(LeaseState::Held { valid_until });
        let keeper =
            crate::keeper::handle().spawn(keep_alive(self.clone(), granted.id(), ttl, keeping, tx));
        tracing::debug!(
            lease = format_args!("{:x}", granted.id()),
            ?ttl,
            "lease granted"
        );
        Ok(Lease {
            id: granted.id(),
            ttl,
            coord: self.clone(),
            state,
            keeper: Some(keeper),
        })
    }
}

impl Lease {
    /// The etcd lease id (part of a fencing token).
    pub fn id(&self) -> i64 {
        self.id
    }

    /// The TTL etcd granted.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The current state.
    pub fn state(&self) -> LeaseState {
        self.state.borrow().clone()
    }

    /// A receiver of state changes, for `select!` loops.
    pub fn subscribe(&self) -> watch::Receiver<LeaseState> {
        self.state.clone()
    }

    /// Waits until the lease is lost and says why.
    pub async fn lost(&self) -> LostReason {
        wait_lost(self.state.clone()).await
    }

    /// Stops renewing and revokes the lease: every key bound to it is deleted now.
    pub async fn revoke(mut self) -> Result<()> {
        self.stop_keeper();
        let id = self.id;
        self.coord
            .read(|c| async move { c.lease_client().revoke(id).await })
            .await?;
        Ok(())
    }

    /// Stops renewing without revoking, like a crash: keys bound to the lease vanish
    /// once its TTL runs out.
    pub fn forget(mut self) {
        // With the keeper gone, drop has nothing to revoke.
        self.stop_keeper();
    }

    /// An error for operations that need this lease while it is lost.
    pub(crate) fn lost_error(&self, reason: &LostReason) -> CoordError {
        CoordError::LeaseLost {
            lease: self.id,
            reason: reason.to_string(),
        }
    }

    fn stop_keeper(&mut self) {
        if let Some(keeper) = self.keeper.take() {
            keeper.abort();
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let Some(keeper) = self.keeper.take() else {
            return;
        };
        keeper.abort();
        let (coord, id) = (self.coord.clone(), self.id);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(err) = coord
                    .read(|c| async move { c.lease_client().revoke(id).await })
                    .await
                {
                    tracing::debug!(lease = format_args!("{id:x}"), %err, "revoke on drop failed; the lease will expire");
                }
            });
        }
    }
}

/// Waits until a lease state receiver reports the lease lost.
pub(crate) async fn wait_lost(mut state: watch::Receiver<LeaseState>) -> LostReason {
    loop {
        if let LeaseState::Lost(reason) = &*state.borrow_and_update() {
            return reason.clone();
        }
        if state.changed().await.is_err() {
            // The keeper is gone without a verdict: the lease was revoked or forgotten.
            return match &*state.borrow() {
                LeaseState::Lost(reason) => reason.clone(),
                LeaseState::Held { .. } => LostReason::Revoked,
            };
        }
    }
}

/// Where a keeper starts: what the grant (and a renewal right after it) established.
struct Keeping {
    /// The renewal-based lower bound of the lease's life.
    valid_until: Instant,
    /// When to send the next renewal (at once if already past).
    next: Instant,
    /// The keep-alive stream, when one is open.
    stream: Option<(LeaseKeeper, LeaseKeepAliveStream)>,
    /// The keeper connection the stream is on (see `KeeperClient::reset`).
    generation: Option<u64>,
}

impl Keeping {
    /// One renewal sent at `sent_at`, given up at `deadline`. A failed or unanswered
    /// one drops the stream and its keeper connection: it may be to a member that died
    /// silently, and the next attempt opens another.
    async fn attempt(
        &mut self,
        coord: &Coord,
        id: i64,
        ttl: Duration,
        sent_at: Instant,
        deadline: Instant,
    ) -> Attempt {
        let renewal = renew(coord, id, ttl, &mut self.stream, &mut self.generation);
        let attempt = match tokio::time::timeout_at(deadline, renewal).await {
            Ok(attempt) => attempt,
            Err(_) => Attempt::Failed(format!(
                "no answer within {:?}",
                deadline.saturating_duration_since(sent_at)
            )),
        };
        if matches!(attempt, Attempt::Failed(_)) {
            self.stream = None;
            if let Some(g) = self.generation.take() {
                coord.keeper.reset(g).await;
            }
        }
        attempt
    }
}

/// The keeper task: renews until the lease is lost, publishing every state change.
async fn keep_alive(
    coord: Coord,
    id: i64,
    ttl: Duration,
    mut keeping: Keeping,
    state: watch::Sender<LeaseState>,
) {
    loop {
        tokio::time::sleep_until(keeping.next).await;
        let sent_at = Instant::now();
        let deadline = attempt_deadline(sent_at, keeping.valid_until, ttl);
        let attempt = keeping.attempt(&coord, id, ttl, sent_at, deadline).await;
        match after_attempt(sent_at, Instant::now(), attempt, keeping.valid_until, ttl) {
            Next::RenewAt { at, valid_until } => {
                keeping.next = at;
                if valid_until != keeping.valid_until {
                    keeping.valid_until = valid_until;
                    state.send_replace(LeaseState::Held { valid_until });
                }
            }
            Next::Lost(reason) => {
                tracing::warn!(lease = format_args!("{id:x}"), %reason, "lease lost");
                state.send_replace(LeaseState::Lost(reason));
                return;
            }
        }
    }
}

/// One renewal over the keep-alive stream, opening it first when needed (opening it
/// renews once, to the granted `ttl`; `generation` is set to the keeper connection it
/// is opened on).
async fn renew(
    coord: &Coord,
    id: i64,
    ttl: Duration,
    stream: &mut Option<(LeaseKeeper, LeaseKeepAliveStream)>,
    generation: &mut Option<u64>,
) -> Attempt {
    let Some((keeper, responses)) = stream else {
        let conn = match coord.keeper.get().await {
            Ok(conn) => conn,
            Err(err) => return Attempt::Failed(format!("keep-alive connection: {err}")),
        };
        *generation = Some(conn.generation);
        return match conn.client.lease_client().keep_alive(id).await {
            Ok(opened) => {
                *stream = Some(opened);
                Attempt::Renewed {
                    ttl_secs: ttl.as_secs() as i64,
                }
            }
            Err(etcd_client::Error::LeaseKeepAliveError(msg)) if msg.contains("not found") => {
                Attempt::Renewed { ttl_secs: 0 }
            }
            Err(err) => Attempt::Failed(err.to_string()),
        };
    };
    if let Err(err) = keeper.keep_alive().await {
        return Attempt::Failed(err.to_string());
    }
    match responses.message().await {
        Ok(Some(answer)) => Attempt::Renewed {
            ttl_secs: answer.ttl(),
        },
        Ok(None) => Attempt::Failed("keep-alive stream closed".into()),
        Err(err) => Attempt::Failed(err.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(4);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn renewal_moves_validity_and_schedules_at_a_third() {
        let t0 = Instant::now();
        let next = after_attempt(t0, t0 + ms(30), Attempt::Renewed { ttl_secs: 4 }, t0, TTL);
        assert_eq!(
            next,
            Next::RenewAt {
                at: t0 + ms(1333) + Duration::from_nanos(333_333),
                valid_until: t0 + TTL
            }
        );
    }

    #[test]
    fn a_slow_grant_is_renewed_before_it_is_handed_out() {
        let t0 = Instant::now();
        assert!(!renew_at_once(t0, t0 + ms(50), TTL));
        assert!(!renew_at_once(t0, t0 + ms(1300), TTL));
        // An answer after a third of the TTL: the first renewal is already due.
        assert!(renew_at_once(t0, t0 + ms(1334), TTL));
        assert!(renew_at_once(t0, t0 + ms(3500), TTL));
    }

    #[test]
    fn zero_ttl_means_expired() {
        let t0 = Instant::now();
        let next = after_attempt(t0, t0, Attempt::Renewed { ttl_secs: 0 }, t0 + TTL, TTL);
        assert_eq!(next, Next::Lost(LostReason::Expired));
    }

    #[test]
    fn an_attempt_waits_a_sixth_of_the_ttl_and_never_past_the_safe_deadline() {
        let t0 = Instant::now();
        let valid_until = t0 + TTL; // safe deadline at t0 + 3 s
        assert_eq!(
            attempt_deadline(t0 + ms(1333), valid_until, TTL),
            t0 + ms(1333) + ms(666) + Duration::from_nanos(666_666)
        );
        assert_eq!(
            attempt_deadline(t0 + ms(2800), valid_until, TTL),
            t0 + ms(3000)
        );
    }

    #[test]
    fn failure_retries_until_the_safe_deadline() {
        let t0 = Instant::now();
        let valid_until = t0 + TTL; // safe deadline at t0 + 3 s
        let failed = || Attempt::Failed("connection refused".into());
        assert_eq!(
            after_attempt(t0 + ms(1400), t0 + ms(1400), failed(), valid_until, TTL),
            Next::RenewAt {
                at: t0 + ms(1600),
                valid_until
            }
        );
        assert_eq!(
            after_attempt(t0 + ms(2850), t0 + ms(2850), failed(), valid_until, TTL),
            Next::Lost(LostReason::Unrenewed {
                last_error: "connection refused".into()
            })
        );
    }

    #[test]
    fn a_stale_answer_never_shortens_validity() {
        let t0 = Instant::now();
        let valid_until = t0 + ms(5000);
        let next = after_attempt(t0, t0, Attempt::Renewed { ttl_secs: 4 }, valid_until, TTL);
        assert!(matches!(next, Next::RenewAt { valid_until: v, .. } if v == valid_until));
    }
}
