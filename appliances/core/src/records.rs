//! An appliance cluster's records in etcd, and the few guarded writes that change roles.
//!
//! Layout under `<kind>/<cluster>/` (relative to the [`Coord`] namespace):
//!
//! ```text
//! state            the engine's state document (JSON), written only with compare-and-set
//!                  on its mod-revision; absent until the cluster is bootstrapped
//! leader           LeaderRecord (JSON), bound to the leader's lease; the
//!                  leader-following endpoint forwards to its `addr`
//! members/<name>   the engine's member status (JSON), bound to that supervisor's lease
//! ```
//!
//! Every write that changes leadership or the state document is one transaction guarded
//! by what it read (the document's mod-revision, the leader key's absence or lease), so
//! two supervisors can never both win. Every request is bounded by [`REQUEST_TIMEOUT`],
//! so a partitioned etcd cannot stall a tick.

use std::collections::BTreeMap;
use std::future::Future;
use std::marker::PhantomData;
use std::time::Duration;

use paas_coord::{Batch, Coord, CoordError};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::leader::LeaderRecord;

/// How long any single etcd request may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a read or write of the cluster's records failed.
#[derive(Debug, thiserror::Error)]
pub enum RecordsError {
    /// etcd answered with an error or the connection failed.
    #[error("etcd: {0}")]
    Etcd(#[from] CoordError),
    /// etcd did not answer within [`REQUEST_TIMEOUT`].
    #[error("etcd did not answer within {REQUEST_TIMEOUT:?}")]
    Timeout,
    /// A stored record is not valid JSON of its type (written by something else).
    #[error("invalid record at {key}: {source}")]
    Invalid {
        /// The key holding it.
        key: String,
        /// The decoding error.
        #[source]
        source: serde_json::Error,
    },
}

/// The keys of one appliance cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    base: String,
}

impl Keys {
    /// Keys of cluster `cluster` of engine `kind` (e.g. `pg`, `main`).
    pub fn new(kind: &str, cluster: &str) -> Self {
        Keys {
            base: format!("{kind}/{cluster}/"),
        }
    }

    /// The cluster's prefix (`<kind>/<cluster>/`).
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The state document.
    pub fn state(&self) -> String {
        format!("{}state", self.base)
    }

    /// The leader key.
    pub fn leader(&self) -> String {
        format!("{}leader", self.base)
    }

    /// The prefix of member registrations.
    pub fn members(&self) -> String {
        format!("{}members/", self.base)
    }

    /// One member's registration.
    pub fn member(&self, name: &str) -> String {
        format!("{}members/{name}", self.base)
    }
}

/// The leader key as read: its record and the lease it is bound to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderKey {
    /// The record the endpoint follows.
    pub record: LeaderRecord,
    /// The lease the key is bound to.
    pub lease: i64,
}

/// One consistent read of every record of a cluster.
#[derive(Debug, Clone)]
pub struct Snapshot<S, M> {
    /// The state document and its mod-revision (the compare-and-set guard).
    pub state: Option<(S, i64)>,
    /// The leader key.
    pub leader: Option<LeaderKey>,
    /// Live member registrations by name.
    pub members: BTreeMap<String, M>,
}

impl<S, M> Default for Snapshot<S, M> {
    fn default() -> Self {
        Snapshot {
            state: None,
            leader: None,
            members: BTreeMap::new(),
        }
    }
}

impl<S, M> Snapshot<S, M> {
    /// The mod-revision guard for the next state write (0: the document must not exist).
    pub fn state_revision(&self) -> i64 {
        self.state.as_ref().map_or(0, |(_, rev)| *rev)
    }
}

/// A member status that names its member.
pub trait Member {
    /// The member's name (the last segment of its registration key).
    fn name(&self) -> &str;
}

/// The records of one cluster: state documents `S`, member statuses `M`.
pub struct Records<S, M> {
    coord: Coord,
    keys: Keys,
    _types: PhantomData<fn() -> (S, M)>,
}

impl<S, M> Clone for Records<S, M> {
    fn clone(&self) -> Self {
        Records {
            coord: self.coord.clone(),
            keys: self.keys.clone(),
            _types: PhantomData,
        }
    }
}

async fn bounded<T>(f: impl Future<Output = paas_coord::Result<T>>) -> Result<T, RecordsError> {
    match tokio::time::timeout(REQUEST_TIMEOUT, f).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(RecordsError::Timeout),
    }
}

/// A guarded write's outcome: `Ok(false)` when a check failed and nothing was written.
fn won(result: Result<i64, RecordsError>) -> Result<bool, RecordsError> {
    match result {
        Ok(_) => Ok(true),
        Err(RecordsError::Etcd(
            CoordError::Conflict { .. } | CoordError::NotFound { .. } | CoordError::Fenced { .. },
        )) => Ok(false),
        Err(e) => Err(e),
    }
}

impl<S, M> Records<S, M>
where
    S: Serialize + DeserializeOwned,
    M: Serialize + DeserializeOwned + Member,
{
    /// The records at `keys`, through `coord`.
    pub fn new(coord: Coord, keys: Keys) -> Self {
        Records {
            coord,
            keys,
            _types: PhantomData,
        }
    }

    /// The keys.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// The coordination client.
    pub fn coord(&self) -> &Coord {
        &self.coord
    }

    /// Reads the state document, the leader key and all registrations in one request.
    pub async fn read(&self) -> Result<Snapshot<S, M>, RecordsError> {
        let entries = bounded(self.coord.entries(self.keys.base())).await?;
        let (state_key, leader_key, members) =
            (self.keys.state(), self.keys.leader(), self.keys.members());
        let mut snapshot = Snapshot::default();
        for entry in entries {
            let invalid = |source| RecordsError::Invalid {
                key: entry.key.clone(),
                source,
            };
            if entry.key == state_key {
                let state = serde_json::from_slice(&entry.value).map_err(invalid)?;
                snapshot.state = Some((state, entry.mod_revision));
            } else if entry.key == leader_key {
                let record = serde_json::from_slice(&entry.value).map_err(invalid)?;
                snapshot.leader = Some(LeaderKey {
                    record,
                    lease: entry.lease,
                });
            } else if entry.key.starts_with(&members) {
                // A member writing garbage must not blind the others: skip it, loudly.
                match serde_json::from_slice::<M>(&entry.value) {
                    Ok(member) => {
                        snapshot.members.insert(member.name().to_string(), member);
                    }
                    Err(err) => {
                        tracing::warn!(key = %entry.key, error = %err, "ignoring unreadable member registration")
                    }
                }
            }
        }
        Ok(snapshot)
    }

    /// Publishes this member's status, bound to `lease` (gone when the supervisor is).
    pub async fn register(&self, status: &M, lease: i64) -> Result<(), RecordsError> {
        let mut batch = Batch::new();
        batch.put_on_lease(&self.keys.member(status.name()), status, lease)?;
        bounded(self.coord.commit(batch)).await?;
        Ok(())
    }

    /// Takes the leader key for a bootstrap: only if neither it nor the state document
    /// exists. Returns whether it was taken.
    pub async fn claim_bootstrap(
        &self,
        record: &LeaderRecord,
        lease: i64,
    ) -> Result<bool, RecordsError> {
        let mut batch = Batch::new();
        batch
            .require_absent(&self.keys.state())
            .require_absent(&self.keys.leader())
            .put_on_lease(&self.keys.leader(), record, lease)?;
        won(bounded(self.coord.commit(batch)).await)
    }

    /// Takes the free leader key and writes `state` in one transaction, guarded by the
    /// state document's mod-revision `state_revision` (0: must not exist). Returns
    /// whether it succeeded; on `false` nothing was written.
    pub async fn take_leadership(
        &self,
        record: &LeaderRecord,
        lease: i64,
        state: &S,
        state_revision: i64,
    ) -> Result<bool, RecordsError> {
        let mut batch = Batch::new();
        batch.require_absent(&self.keys.leader()).put_on_lease(
            &self.keys.leader(),
            record,
            lease,
        )?;
        self.guard_state(&mut batch, state, state_revision)?;
        won(bounded(self.coord.commit(batch)).await)
    }

    /// Writes `state` if the leader key is still bound to `lease` and the document is
    /// unchanged since `state_revision` (0: must not exist). Returns whether it did.
    pub async fn write_state(
        &self,
        lease: i64,
        state: &S,
        state_revision: i64,
    ) -> Result<bool, RecordsError> {
        let mut batch = Batch::new();
        batch.require_lease(&self.keys.leader(), lease);
        self.guard_state(&mut batch, state, state_revision)?;
        won(bounded(self.coord.commit(batch)).await)
    }

    /// Writes `state` with no leader, if the document is unchanged since
    /// `state_revision` (0: must not exist) and nobody holds the leader key: an
    /// operator's explicit recovery. Returns whether it did.
    pub async fn reset_state(&self, state: &S, state_revision: i64) -> Result<bool, RecordsError> {
        let mut batch = Batch::new();
        batch.require_absent(&self.keys.leader());
        self.guard_state(&mut batch, state, state_revision)?;
        won(bounded(self.coord.commit(batch)).await)
    }

    /// Deletes the leader key if it is still bound to `lease`.
    pub async fn release_leadership(&self, lease: i64) -> Result<(), RecordsError> {
        let mut batch = Batch::new();
        batch.delete_on_lease(&self.keys.leader(), lease);
        won(bounded(self.coord.commit(batch)).await).map(drop)
    }

    fn guard_state(&self, batch: &mut Batch, state: &S, revision: i64) -> Result<(), RecordsError> {
        let key = self.keys.state();
        if revision == 0 {
            batch.create(&key, state)?;
        } else {
            batch.update(&key, state, revision)?;
        }
        Ok(())
    }
}
