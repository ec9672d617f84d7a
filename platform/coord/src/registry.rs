//! Service discovery: leased registrations and watched instance sets.
//!
//! An instance registers as `services/<service>/<instance-id>` -> JSON, bound to its
//! own [`Lease`]. While the process lives the lease is renewed; deregistering (or
//! dropping the [`Registration`]) revokes it and the key is deleted at once; if the
//! process dies the key vanishes when the TTL runs out. [`Registration::update`]
//! rewrites the value in place (e.g. a role change) on the same lease.
//!
//! [`Coord::watch_service`] gives the full instance set as snapshots (see `watch.rs`
//! for the no-gap/no-duplicate argument). A value that does not decode as the
//! requested type is logged and left out of the snapshot; it never stops the watch.

use std::collections::BTreeMap;
use std::time::Duration;

use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::watch;

use crate::coord::Coord;
use crate::docs::encode;
use crate::error::{CoordError, Result};
use crate::lease::{Lease, LeaseState};
use crate::watch::{decode_entries, Advance, PrefixWatch};

/// The key prefix of a service's instances.
fn service_prefix(service: &str) -> String {
    format!("services/{service}/")
}

/// A live registration; its key exists as long as its lease is renewed.
#[derive(Debug)]
pub struct Registration {
    coord: Coord,
    key: String,
    lease: Lease,
}

impl Coord {
    /// Registers `instance` of `service` with `value`, bound to a new lease of `ttl`.
    /// Re-registering an instance id replaces the previous registration's value.
    pub async fn register<T: Serialize>(
        &self,
        service: &str,
        instance: &str,
        value: &T,
        ttl: Duration,
    ) -> Result<Registration> {
        let key = format!("{}{instance}", service_prefix(service));
        let bytes = encode(&key, value)?;
        let lease = self.grant_lease(ttl).await?;
        let options = PutOptions::new().with_lease(lease.id());
        let full = self.ns.full(&key);
        // Repeatable: the same value on the same lease.
        self.read(|c| {
            let (full, bytes, options) = (full.clone(), bytes.clone(), options.clone());
            async move { c.kv_client().put(full, bytes, Some(options)).await }
        })
        .await?;
        tracing::info!(key, lease = format_args!("{:x}", lease.id()), "registered");
        Ok(Registration {
            coord: self.clone(),
            key,
            lease,
        })
    }

    /// Watches the instances of `service`: the current set now, and a new snapshot
    /// after every change.
    pub async fn watch_service<T>(&self, service: &str) -> Result<ServiceWatch<T>>
    where
        T: DeserializeOwned + Send + Sync + 'static,
    {
        let prefix = service_prefix(service);
        let label = prefix.clone();
        let inner = PrefixWatch::start(self, &prefix, move |revision, entries| ServiceSnapshot {
            revision,
            instances: decode_entries(&label, entries),
        })
        .await?;
        Ok(ServiceWatch { inner })
    }
}

impl Registration {
    /// The registration's key (`services/<service>/<instance>`).
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The lease the key is bound to; [`Lease::lost`] tells when the key is gone.
    pub fn lease(&self) -> &Lease {
        &self.lease
    }

    /// Replaces the value, keeping the lease. `NotFound` if the key is gone or no
    /// longer bound to this lease (it expired, or another registration took the id);
    /// `LeaseLost` if the lease is known to be lost.
    pub async fn update<T: Serialize>(&self, value: &T) -> Result<i64> {
        if let LeaseState::Lost(reason) = self.lease.state() {
            return Err(self.lease.lost_error(&reason));
        }
        let bytes = encode(&self.key, value)?;
        let full = self.coord.ns.full(&self.key);
        let txn = Txn::new()
            .when([Compare::lease(
                full.clone(),
                CompareOp::Equal,
                self.lease.id(),
            )])
            .and_then([TxnOp::put(
                full,
                bytes,
                Some(PutOptions::new().with_lease(self.lease.id())),
            )]);
        let response = self
            .coord
            .write(|c| async move { c.kv_client().txn(txn).await })
            .await?;
        if !response.succeeded() {
            return Err(CoordError::NotFound {
                key: self.key.clone(),
            });
        }
        Ok(response.header().map_or(0, |h| h.revision()))
    }

    /// Removes the registration now (revokes its lease).
    pub async fn deregister(self) -> Result<()> {
        tracing::info!(key = self.key, "deregistering");
        self.lease.revoke().await
    }

    /// Stops renewing without deleting, as a crashed process would: the key vanishes
    /// when the lease's TTL runs out.
    pub fn forget(self) {
        self.lease.forget();
    }
}

/// The instances of a service at one revision.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceSnapshot<T> {
    /// The etcd revision this set reflects.
    pub revision: i64,
    /// Instance id -> registered value.
    pub instances: BTreeMap<String, T>,
}

impl<T> Advance for ServiceSnapshot<T> {
    fn advance(&mut self, revision: i64) {
        self.revision = self.revision.max(revision);
    }
}

/// A live view of a service's instances, updated in the background until dropped.
pub struct ServiceWatch<T> {
    inner: PrefixWatch<ServiceSnapshot<T>>,
}

impl<T: Clone> ServiceWatch<T> {
    /// The latest snapshot.
    pub fn current(&self) -> ServiceSnapshot<T> {
        self.inner.rx.borrow().clone()
    }

    /// Waits for a snapshot newer than the last one this method returned, and returns
    /// it; `None` only if the background watcher died (it runs until this handle drops).
    pub async fn changed(&mut self) -> Option<ServiceSnapshot<T>> {
        self.inner.rx.changed().await.ok()?;
        Some(self.inner.rx.borrow_and_update().clone())
    }

    /// A receiver for `select!` loops (shares the watcher; it ends with this handle).
    pub fn subscribe(&self) -> watch::Receiver<ServiceSnapshot<T>> {
        self.inner.rx.clone()
    }
}
