//! JSON documents in etcd: list a prefix, get, put (optionally on a lease, optionally
//! guarded by a leader key), delete. Undecodable documents are logged and skipped, so one
//! bad value never stops a reader.

use etcd_client::{Client, Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Why an etcd operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// etcd could not be reached or refused the request.
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    /// A value could not be encoded as JSON (a bug in the caller's type).
    #[error("encoding {key}: {source}")]
    Encode {
        /// The key being written.
        key: String,
        /// The serializer's error.
        source: serde_json::Error,
    },
}

/// A guard on a write: it only applies while `key` is held on `lease`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    /// The leader key.
    pub key: String,
    /// The lease the leader key must be attached to.
    pub lease: i64,
}

/// A connected etcd client for JSON documents.
#[derive(Clone)]
pub struct Store {
    client: Client,
}

impl Store {
    /// Connects to `endpoints` (e.g. `http://127.0.0.1:2379`).
    pub async fn connect(endpoints: &[String]) -> Result<Store, StoreError> {
        Ok(Store {
            client: Client::connect(endpoints, None).await?,
        })
    }

    /// The raw client, for leases.
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// Every decodable document under `prefix`, as (key without prefix, value).
    pub async fn list<T: DeserializeOwned>(
        &self,
        prefix: &str,
    ) -> Result<Vec<(String, T)>, StoreError> {
        let resp = self
            .client
            .clone()
            .get(prefix, Some(GetOptions::new().with_prefix()))
            .await?;
        let mut out = Vec::with_capacity(resp.kvs().len());
        for kv in resp.kvs() {
            let key = String::from_utf8_lossy(kv.key());
            let rest = key.strip_prefix(prefix).unwrap_or(&key).to_string();
            match serde_json::from_slice(kv.value()) {
                Ok(v) => out.push((rest, v)),
                Err(e) => tracing::warn!(%key, error = %e, "skipping undecodable document"),
            }
        }
        Ok(out)
    }

    /// The document at `key`, if present and decodable.
    pub async fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StoreError> {
        let resp = self.client.clone().get(key, None).await?;
        Ok(resp.kvs().first().and_then(|kv| {
            serde_json::from_slice(kv.value())
                .map_err(|e| tracing::warn!(%key, error = %e, "skipping undecodable document"))
                .ok()
        }))
    }

    /// Writes `value` at `key`, attached to `lease` when given.
    pub async fn put<T: Serialize>(
        &self,
        key: &str,
        value: &T,
        lease: Option<i64>,
    ) -> Result<(), StoreError> {
        let bytes = encode(key, value)?;
        let opts = lease.map(|l| PutOptions::new().with_lease(l));
        self.client.clone().put(key, bytes, opts).await?;
        Ok(())
    }

    /// Deletes `key` (absent is fine).
    pub async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.client.clone().delete(key, None).await?;
        Ok(())
    }

    /// Writes `value` at `key` only while `fence` holds; returns whether it did.
    pub async fn put_fenced<T: Serialize>(
        &self,
        fence: &Fence,
        key: &str,
        value: &T,
    ) -> Result<bool, StoreError> {
        let bytes = encode(key, value)?;
        let txn = Txn::new()
            .when([Compare::lease(
                fence.key.as_str(),
                CompareOp::Equal,
                fence.lease,
            )])
            .and_then([TxnOp::put(key, bytes, None)]);
        Ok(self.client.clone().txn(txn).await?.succeeded())
    }

    /// Deletes `key` only while `fence` holds; returns whether the fence held.
    pub async fn delete_fenced(&self, fence: &Fence, key: &str) -> Result<bool, StoreError> {
        let txn = Txn::new()
            .when([Compare::lease(
                fence.key.as_str(),
                CompareOp::Equal,
                fence.lease,
            )])
            .and_then([TxnOp::delete(key, None)]);
        Ok(self.client.clone().txn(txn).await?.succeeded())
    }

    /// Creates `key` with `value` on `lease` if it does not exist; returns whether it did.
    pub async fn create_leased<T: Serialize>(
        &self,
        key: &str,
        value: &T,
        lease: i64,
    ) -> Result<bool, StoreError> {
        let value = encode(key, value)?;
        let txn = Txn::new()
            .when([Compare::create_revision(key, CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key,
                value,
                Some(PutOptions::new().with_lease(lease)),
            )]);
        Ok(self.client.clone().txn(txn).await?.succeeded())
    }
}

fn encode<T: Serialize>(key: &str, value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|source| StoreError::Encode {
        key: key.to_string(),
        source,
    })
}
