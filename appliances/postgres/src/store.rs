//! The cluster's records in etcd: one read per tick, and the few conditional writes that
//! change roles. Every write that changes leadership or the state document is a single
//! transaction guarded by what it read, so two supervisors can never both win.
//!
//! This is a thin layer over `etcd-client` for this appliance's key layout
//! (`cluster::Keys`); every request is bounded by [`REQUEST_TIMEOUT`] so a partitioned
//! etcd cannot stall a tick. The lease itself is kept alive by `lease`.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp};
use paas_router::tcp::LeaderRecord;

use crate::cluster::{ClusterState, Keys, MemberStatus};

/// How long any single etcd request may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a read or write of the cluster's records failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// etcd answered with an error or the connection failed.
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
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

/// The leader key as read: its record and the lease it is bound to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderKey {
    /// The record the endpoint follows.
    pub record: LeaderRecord,
    /// The lease the key is bound to.
    pub lease: i64,
}

/// One consistent read of every record of the cluster.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// The state document and its mod-revision (the compare-and-set guard).
    pub state: Option<(ClusterState, i64)>,
    /// The leader key.
    pub leader: Option<LeaderKey>,
    /// Live member registrations by name.
    pub members: BTreeMap<String, MemberStatus>,
}

impl Snapshot {
    /// The mod-revision guard for the next state write (0: the document must not exist).
    pub fn state_revision(&self) -> i64 {
        self.state.as_ref().map_or(0, |(_, rev)| *rev)
    }
}

/// The cluster's records in one etcd.
#[derive(Clone)]
pub struct Store {
    client: Client,
    keys: Keys,
}

async fn bounded<T>(
    f: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(REQUEST_TIMEOUT, f).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(StoreError::Timeout),
    }
}

impl Store {
    /// Connects to etcd (lazily retried by the client) for the cluster at `keys`.
    pub async fn connect(endpoints: &[String], keys: Keys) -> Result<Self, StoreError> {
        let client = bounded(Client::connect(endpoints, None)).await?;
        Ok(Store { client, keys })
    }

    /// The underlying client, for the lease keeper.
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// Reads the state document, the leader key and all registrations in one request.
    pub async fn read(&mut self) -> Result<Snapshot, StoreError> {
        let base = self.keys.base().to_string();
        let response =
            bounded(self.client.get(base, Some(GetOptions::new().with_prefix()))).await?;
        let (state_key, leader_key, members) =
            (self.keys.state(), self.keys.leader(), self.keys.members());
        let mut snapshot = Snapshot::default();
        for kv in response.kvs() {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            let invalid = |source| StoreError::Invalid {
                key: key.clone(),
                source,
            };
            if key == state_key {
                let state = serde_json::from_slice(kv.value()).map_err(invalid)?;
                snapshot.state = Some((state, kv.mod_revision()));
            } else if key == leader_key {
                let record = serde_json::from_slice(kv.value()).map_err(invalid)?;
                snapshot.leader = Some(LeaderKey {
                    record,
                    lease: kv.lease(),
                });
            } else if key.starts_with(&members) {
                // A member writing garbage must not blind the others: skip it, loudly.
                match serde_json::from_slice::<MemberStatus>(kv.value()) {
                    Ok(member) => {
                        snapshot.members.insert(member.name.clone(), member);
                    }
                    Err(err) => {
                        tracing::warn!(%key, error = %err, "ignoring unreadable member registration")
                    }
                }
            }
        }
        Ok(snapshot)
    }

    /// Publishes this member's status, bound to `lease` (gone when the supervisor is).
    pub async fn register(&mut self, status: &MemberStatus, lease: i64) -> Result<(), StoreError> {
        let value = serde_json::to_vec(status).expect("MemberStatus serializes");
        let key = self.keys.member(&status.name);
        bounded(
            self.client
                .put(key, value, Some(PutOptions::new().with_lease(lease))),
        )
        .await?;
        Ok(())
    }

    /// Takes the leader key for a bootstrap: only if neither it nor the state document
    /// exists. Returns whether it was taken.
    pub async fn claim_bootstrap(
        &mut self,
        record: &LeaderRecord,
        lease: i64,
    ) -> Result<bool, StoreError> {
        let txn = Txn::new()
            .when([
                Compare::create_revision(self.keys.leader(), CompareOp::Equal, 0),
                Compare::create_revision(self.keys.state(), CompareOp::Equal, 0),
            ])
            .and_then([self.put_leader(record, lease)]);
        Ok(bounded(self.client.txn(txn)).await?.succeeded())
    }

    /// Takes the free leader key and writes `state` in one transaction, guarded by the
    /// state document's mod-revision `state_revision` (0: must not exist). Returns
    /// whether it succeeded; on `false` nothing was written.
    pub async fn take_leadership(
        &mut self,
        record: &LeaderRecord,
        lease: i64,
        state: &ClusterState,
        state_revision: i64,
    ) -> Result<bool, StoreError> {
        let txn = Txn::new()
            .when([
                Compare::create_revision(self.keys.leader(), CompareOp::Equal, 0),
                Compare::mod_revision(self.keys.state(), CompareOp::Equal, state_revision),
            ])
            .and_then([self.put_leader(record, lease), self.put_state(state)]);
        Ok(bounded(self.client.txn(txn)).await?.succeeded())
    }

    /// Writes `state` if the leader key is still bound to `lease` and the document is
    /// unchanged since `state_revision` (0: must not exist). Returns whether it did.
    pub async fn write_state(
        &mut self,
        lease: i64,
        state: &ClusterState,
        state_revision: i64,
    ) -> Result<bool, StoreError> {
        let txn = Txn::new()
            .when([
                Compare::lease(self.keys.leader(), CompareOp::Equal, lease),
                Compare::mod_revision(self.keys.state(), CompareOp::Equal, state_revision),
            ])
            .and_then([self.put_state(state)]);
        Ok(bounded(self.client.txn(txn)).await?.succeeded())
    }

    /// Deletes the leader key if it is still bound to `lease`.
    pub async fn release_leadership(&mut self, lease: i64) -> Result<(), StoreError> {
        let txn = Txn::new()
            .when([Compare::lease(self.keys.leader(), CompareOp::Equal, lease)])
            .and_then([TxnOp::delete(self.keys.leader(), None)]);
        bounded(self.client.txn(txn)).await?;
        Ok(())
    }

    fn put_leader(&self, record: &LeaderRecord, lease: i64) -> TxnOp {
        let value = serde_json::to_vec(record).expect("LeaderRecord serializes");
        TxnOp::put(
            self.keys.leader(),
            value,
            Some(PutOptions::new().with_lease(lease)),
        )
    }

    fn put_state(&self, state: &ClusterState) -> TxnOp {
        let value = serde_json::to_vec(state).expect("ClusterState serializes");
        TxnOp::put(self.keys.state(), value, None)
    }
}
