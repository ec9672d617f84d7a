//! Leader election with fencing tokens.
//!
//! The leader of election `E` is whoever holds the key `elections/E/leader`, created
//! with a create-if-absent transaction and bound to the candidate's [`Lease`]. The
//! winner gets a [`FencingToken`]: the key's create revision and the lease id. Create
//! revisions come from etcd's single global revision counter, so each new leadership
//! has a strictly greater token than every earlier one; resources that remember the
//! highest token they have seen can refuse a deposed leader's late writes.
//!
//! Losing: a [`Leadership`] ends when its lease is lost (see `lease.rs` for why the
//! signal comes at least `ttl/4` before etcd can expire the lease, i.e. before anyone
//! else can win) or when the key is deleted or replaced behind its back. Either is
//! published at once on [`Leadership::lost`]; a leader must stop acting on it.
//! [`Leadership::is_still_leader`] additionally re-reads the key (linearizable read).
//!
//! Candidates that lose the create wait for a delete of the key (watching from the
//! revision of their failed attempt, so no delete is missed) and try again.

use std::time::Duration;

use etcd_client::{
    Compare, CompareOp, EventType, KeyValue, PutOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::coord::Coord;
use crate::docs::{decode, encode};
use crate::error::Result;
use crate::lease::{wait_lost, Lease, LeaseState, LostReason};
use crate::task::AbortOnDrop;
use crate::watch::{Advance, PrefixWatch};

/// Pause before retrying after a failed watch or read.
const RETRY_DELAY: Duration = Duration::from_millis(200);

/// Proof of leadership to hand to the resources a leader writes to. Ordered by
/// `revision`: a later leadership always has a greater token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct FencingToken {
    /// Create revision of the leader key (strictly increasing across leaderships).
    pub revision: i64,
    /// The leader's lease id.
    pub lease: i64,
}

/// Why a [`Leadership`] ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeadershipLost {
    /// The leader's lease is lost.
    Lease(LostReason),
    /// The leader key was deleted or now belongs to another leadership.
    KeyGone,
}

impl std::fmt::Display for LeadershipLost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LeadershipLost::Lease(reason) => write!(f, "lease lost: {reason}"),
            LeadershipLost::KeyGone => f.write_str("leader key deleted or replaced"),
        }
    }
}

/// The current leader of an election, as observers see it.
#[derive(Debug, Clone, PartialEq)]
pub struct Leader<T> {
    /// What the leader published when it won (e.g. its address).
    pub value: T,
    /// Its fencing token.
    pub token: FencingToken,
}

fn leader_key(election: &str) -> String {
    format!("elections/{election}/leader")
}

/// Whether the stored leader key is the one this token was issued for. Pure.
fn is_ours(found: Option<(i64, i64)>, token: FencingToken) -> bool {
    found == Some((token.revision, token.lease))
}

fn revisions(kv: &KeyValue) -> (i64, i64) {
    (kv.create_revision(), kv.lease())
}

/// Won leadership; ends on [`Leadership::resign`], on drop (resigns in the background),
/// or when lost.
#[derive(Debug)]
pub struct Leadership {
    coord: Coord,
    key: String,
    token: FencingToken,
    lease: Lease,
    lost: watch::Receiver<Option<LeadershipLost>>,
    monitor: AbortOnDrop,
}

impl Coord {
    /// Campaigns in `election` with `value` (what observers see, e.g. an address),
    /// waiting until this candidate wins. The candidacy holds a lease of `ttl`; fails with
    /// `LeaseLost` if that lease is lost while waiting.
    pub async fn campaign<T: Serialize>(
        &self,
        election: &str,
        value: &T,
        ttl: Duration,
    ) -> Result<Leadership> {
        let key = leader_key(election);
        let bytes = encode(&key, value)?;
        let full = self.ns.full(&key);
        let lease = self.grant_lease(ttl).await?;
        loop {
            if let LeaseState::Lost(reason) = lease.state() {
                return Err(lease.lost_error(&reason));
            }
            let txn = Txn::new()
                .when([Compare::create_revision(full.clone(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(
                    full.clone(),
                    bytes.clone(),
                    Some(PutOptions::new().with_lease(lease.id())),
                )])
                .or_else([TxnOp::get(full.clone(), None)]);
            let response = self
                .write(|c| async move { c.kv_client().txn(txn).await })
                .await?;
            let revision = response.header().map_or(0, |h| h.revision());
            if response.succeeded() {
                let token = FencingToken {
                    revision,
                    lease: lease.id(),
                };
                tracing::info!(election, ?token, "won the election");
                return Ok(Leadership::new(self.clone(), key, token, lease));
            }
            let holder = response.op_responses().into_iter().find_map(|r| match r {
                TxnOpResponse::Get(get) => get.kvs().first().map(revisions),
                _ => None,
            });
            tracing::debug!(election, ?holder, "another candidate leads; waiting");
            tokio::select! {
                reason = lease.lost() => return Err(lease.lost_error(&reason)),
                () = wait_for_delete(self, &full, revision) => {}
            }
        }
    }

    /// Watches who leads `election`: `None` while nobody does.
    pub async fn observe_leader<T>(&self, election: &str) -> Result<LeaderWatch<T>>
    where
        T: DeserializeOwned + Send + Sync + 'static,
    {
        let prefix = format!("elections/{election}/");
        let key = leader_key(election);
        let inner = PrefixWatch::start(self, &prefix, move |_, entries| {
            let entry = entries.get("leader")?;
            match decode::<T>(&key, &entry.value) {
                Ok(value) => Some(Leader {
                    value,
                    token: FencingToken {
                        revision: entry.create_revision,
                        lease: entry.lease,
                    },
                }),
                Err(err) => {
                    tracing::warn!(%err, "leader value does not decode");
                    None
                }
            }
        })
        .await?;
        Ok(LeaderWatch { inner })
    }
}

/// Returns once `full` has been deleted at some revision after `after` (or the watch
/// broke, in which case the caller simply tries again).
async fn wait_for_delete(coord: &Coord, full: &[u8], after: i64) {
    let options = WatchOptions::new().with_start_revision(after + 1);
    let Ok((_watcher, mut stream)) = coord
        .client()
        .watch_client()
        .watch(full, Some(options))
        .await
    else {
        tokio::time::sleep(RETRY_DELAY).await;
        return;
    };
    loop {
        match stream.message().await {
            Ok(Some(response)) => {
                if response.canceled()
                    || response
                        .events()
                        .iter()
                        .any(|e| e.event_type() == EventType::Delete)
                {
                    return;
                }
            }
            _ => {
                tokio::time::sleep(RETRY_DELAY).await;
                return;
            }
        }
    }
}

impl Leadership {
    fn new(coord: Coord, key: String, token: FencingToken, lease: Lease) -> Self {
        let (tx, lost) = watch::channel(None);
        let monitor = AbortOnDrop(tokio::spawn(monitor(
            coord.clone(),
            key.clone(),
            token,
            lease.subscribe(),
            tx,
        )));
        Leadership {
            coord,
            key,
            token,
            lease,
            lost,
            monitor,
        }
    }

    /// The leader key (what [`crate::Batch::require_leadership`] checks).
    pub(crate) fn key(&self) -> &str {
        &self.key
    }

    /// The fencing token of this leadership.
    pub fn token(&self) -> FencingToken {
        self.token
    }

    /// Why leadership ended, if it has.
    pub fn lost_reason(&self) -> Option<LeadershipLost> {
        self.lost.borrow().clone()
    }

    /// Waits until leadership is lost and says why. A leader selects on this next to
    /// its work and stops acting when it fires.
    pub async fn lost(&self) -> LeadershipLost {
        let mut lost = self.lost.clone();
        loop {
            if let Some(reason) = lost.borrow_and_update().clone() {
                return reason;
            }
            if lost.changed().await.is_err() {
                return lost
                    .borrow()
                    .clone()
                    .unwrap_or(LeadershipLost::Lease(LostReason::Revoked));
            }
        }
    }

    /// Checks with etcd (linearizable read) that the leader key is still this
    /// leadership's, and that the lease has not been declared lost locally.
    pub async fn is_still_leader(&self) -> Result<bool> {
        if self.lost.borrow().is_some() || matches!(self.lease.state(), LeaseState::Lost(_)) {
            return Ok(false);
        }
        let full = self.coord.ns.full(&self.key);
        let response = self
            .coord
            .read(|c| {
                let full = full.clone();
                async move { c.kv_client().get(full, None).await }
            })
            .await?;
        Ok(is_ours(response.kvs().first().map(revisions), self.token))
    }

    /// Gives leadership up: deletes the leader key if it is still ours and revokes the
    /// lease, so another candidate can win at once.
    pub async fn resign(self) -> Result<()> {
        let Leadership {
            coord,
            key,
            token,
            lease,
            monitor,
            ..
        } = self;
        drop(monitor);
        let full = coord.ns.full(&key);
        let txn = Txn::new()
            .when([Compare::create_revision(
                full.clone(),
                CompareOp::Equal,
                token.revision,
            )])
            .and_then([TxnOp::delete(full, None)]);
        coord
            .write(|c| async move { c.kv_client().txn(txn).await })
            .await?;
        tracing::info!(key, ?token, "resigned");
        lease.revoke().await
    }

    /// Stops renewing without resigning, as a crashed leader would: the key stays until
    /// the lease's TTL runs out.
    pub fn forget(self) {
        drop(self.monitor);
        self.lease.forget();
    }
}

/// Publishes the first reason leadership ends: lease lost, or key gone/replaced.
async fn monitor(
    coord: Coord,
    key: String,
    token: FencingToken,
    lease: watch::Receiver<LeaseState>,
    tx: watch::Sender<Option<LeadershipLost>>,
) {
    let reason = tokio::select! {
        reason = wait_lost(lease) => LeadershipLost::Lease(reason),
        () = key_taken(&coord, &key, token) => LeadershipLost::KeyGone,
    };
    tracing::warn!(key, ?token, %reason, "leadership lost");
    tx.send_replace(Some(reason));
}

/// Returns when the leader key is no longer the one `token` was issued for.
async fn key_taken(coord: &Coord, key: &str, token: FencingToken) {
    let full = coord.ns.full(key);
    loop {
        let response = match coord
            .read(|c| {
                let full = full.clone();
                async move { c.kv_client().get(full, None).await }
            })
            .await
        {
            Ok(response) => response,
            Err(_) => {
                tokio::time::sleep(RETRY_DELAY).await;
                continue;
            }
        };
        if !is_ours(response.kvs().first().map(revisions), token) {
            return;
        }
        let from = response.header().map_or(0, |h| h.revision()) + 1;
        let options = WatchOptions::new().with_start_revision(from);
        if let Ok((_watcher, mut stream)) = coord
            .client()
            .watch_client()
            .watch(full.clone(), Some(options))
            .await
        {
            while let Ok(Some(response)) = stream.message().await {
                if response.canceled() {
                    break;
                }
                let replaced = response.events().iter().any(|e| match e.event_type() {
                    EventType::Delete => true,
                    EventType::Put => !is_ours(e.kv().map(revisions), token),
                });
                if replaced {
                    return;
                }
            }
        }
        tokio::time::sleep(RETRY_DELAY).await;
    }
}

/// The leader carries no revision tag: nothing to move on.
impl<T> Advance for Option<Leader<T>> {
    fn advance(&mut self, _revision: i64) {}
}

/// A live view of an election's leader, updated in the background until dropped.
pub struct LeaderWatch<T> {
    inner: PrefixWatch<Option<Leader<T>>>,
}

impl<T: Clone> LeaderWatch<T> {
    /// The current leader, if any.
    pub fn current(&self) -> Option<Leader<T>> {
        self.inner.rx.borrow().clone()
    }

    /// A receiver of leader changes (including to and from nobody) for `select!`
    /// loops; it ends with this handle.
    pub fn subscribe(&self) -> watch::Receiver<Option<Leader<T>>> {
        self.inner.rx.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_order_follows_the_create_revision() {
        let early = FencingToken {
            revision: 10,
            lease: 99,
        };
        let late = FencingToken {
            revision: 11,
            lease: 1,
        };
        assert!(late > early);
    }

    #[test]
    fn ours_means_same_create_revision_and_lease() {
        let token = FencingToken {
            revision: 10,
            lease: 7,
        };
        assert!(is_ours(Some((10, 7)), token));
        assert!(!is_ours(Some((12, 7)), token));
        assert!(!is_ours(Some((10, 8)), token));
        assert!(!is_ours(None, token));
    }
}
