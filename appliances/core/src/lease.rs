//! A member's etcd lease: always one held while etcd answers, replaced by a new one
//! whenever it is lost, whatever the length of an outage.
//!
//! The leader key and the member's registration are bound to this lease, so both vanish
//! when the supervisor stops renewing (killed, frozen, partitioned). Renewal itself is
//! [`paas_coord::Lease`]'s (on the process's keeper thread, every request bounded by its
//! safe deadline); this handle only publishes the current lease with the instant the
//! keep-alive that last confirmed it was *sent* (the input of
//! [`crate::fence::lease_verdict`]) and grants a new lease after a loss.

use std::time::{Duration, Instant};

use paas_coord::{Coord, LeaseState as CoordLeaseState};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

/// How long one grant request may take before it is tried again.
const GRANT_TIMEOUT: Duration = Duration::from_secs(2);

/// The lease as last confirmed by etcd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseState {
    /// The lease id keys are bound to.
    pub id: i64,
    /// When the request that last confirmed the lease alive was sent.
    pub confirmed_sent: Instant,
}

/// The keeper task and the channel it publishes on; the task stops on drop (the lease
/// then expires by itself) or on [`LeaseHandle::revoke`].
#[derive(Debug)]
pub struct LeaseHandle {
    state: watch::Receiver<Option<LeaseState>>,
    revoke: Option<oneshot::Sender<oneshot::Sender<()>>>,
    task: JoinHandle<()>,
}

impl LeaseHandle {
    /// Starts granting and renewing a lease of `ttl`, and a new one after each loss.
    pub fn spawn(coord: Coord, ttl: Duration) -> Self {
        let (tx, state) = watch::channel(None);
        let (revoke, revoke_rx) = oneshot::channel();
        let task = tokio::spawn(keep(coord, ttl, tx, revoke_rx));
        LeaseHandle {
            state,
            revoke: Some(revoke),
            task,
        }
    }

    /// The current lease, `None` while none is held (etcd unreachable, or just lost).
    pub fn current(&self) -> Option<LeaseState> {
        *self.state.borrow()
    }

    /// A receiver of lease changes, for the fencing watchdog.
    pub fn subscribe(&self) -> watch::Receiver<Option<LeaseState>> {
        self.state.clone()
    }

    /// Revokes the current lease so its keys vanish now instead of after the TTL (clean
    /// shutdown), and stops.
    pub async fn revoke(mut self) {
        if let Some(revoke) = self.revoke.take() {
            let (done, wait) = oneshot::channel();
            if revoke.send(done).is_ok() {
                let _ = tokio::time::timeout(GRANT_TIMEOUT, wait).await;
            }
        }
    }
}

impl Drop for LeaseHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn keep(
    coord: Coord,
    ttl: Duration,
    tx: watch::Sender<Option<LeaseState>>,
    mut revoke: oneshot::Receiver<oneshot::Sender<()>>,
) {
    loop {
        let granted = tokio::select! {
            done = &mut revoke => {
                if let Ok(done) = done {
                    let _ = done.send(());
                }
                return;
            }
            g = tokio::time::timeout(GRANT_TIMEOUT, coord.grant_lease(ttl)) => g,
        };
        let lease = match granted {
            Ok(Ok(lease)) => lease,
            Ok(Err(err)) => {
                tracing::warn!(error = %err, "granting a lease failed; retrying");
                tokio::time::sleep(ttl / 6).await;
                continue;
            }
            Err(_) => {
                tracing::warn!("granting a lease timed out; retrying");
                continue;
            }
        };
        let (id, granted_ttl) = (lease.id(), lease.ttl());
        tracing::info!(lease = id, ttl = ?granted_ttl, "lease granted");
        let mut changes = lease.subscribe();
        let reason = loop {
            let current = changes.borrow_and_update().clone();
            match current {
                CoordLeaseState::Held { valid_until } => {
                    let confirmed_sent = valid_until.into_std() - granted_ttl;
                    tx.send_replace(Some(LeaseState { id, confirmed_sent }));
                }
                CoordLeaseState::Lost(reason) => break reason.to_string(),
            }
            tokio::select! {
                changed = changes.changed() => {
                    if changed.is_err() {
                        break "keeper stopped".to_string();
                    }
                }
                done = &mut revoke => {
                    tx.send_replace(None);
                    if let Err(err) = tokio::time::timeout(GRANT_TIMEOUT, lease.revoke()).await.unwrap_or(Ok(())) {
                        tracing::debug!(lease = id, error = %err, "revoking the lease failed; it expires by itself");
                    }
                    if let Ok(done) = done {
                        let _ = done.send(());
                    }
                    return;
                }
            }
        };
        tracing::warn!(lease = id, %reason, "lease lost; granting a new one");
        tx.send_replace(None);
        lease.forget();
    }
}
