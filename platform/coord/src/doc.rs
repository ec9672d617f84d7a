//! JSON documents with revisions, and multi-key transactions.
//!
//! A [`Doc`] carries the `mod_revision` it was read at. Writing it back with
//! [`Op::put_if`] succeeds only if nobody wrote the key in between; that is the
//! compare-and-set every read-modify-write in the platform uses. [`Coord::txn`] runs
//! several [`Op`]s atomically: all compares hold and every write applies, or nothing does
//! and the call returns [`CoordError::Conflict`].

use etcd_client::{Compare, CompareOp, DeleteOptions, GetOptions, Txn, TxnOp};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::{Coord, CoordError};

/// A decoded value with the key (relative to the prefix) and revision it was read at.
#[derive(Debug, Clone, PartialEq)]
pub struct Doc<T> {
    /// Key without the prefix.
    pub key: String,
    /// The decoded value.
    pub value: T,
    /// etcd mod_revision of the key when read; pass it to [`Op::put_if`].
    pub mod_revision: i64,
}

/// One step of a transaction: an optional compare and an optional write.
#[derive(Debug, Clone)]
pub struct Op {
    key: String,
    compare: Option<Guard>,
    write: Option<Write>,
}

#[derive(Debug, Clone)]
enum Guard {
    /// The key must not exist.
    Absent,
    /// The key's mod_revision must equal this.
    Revision(i64),
}

#[derive(Debug, Clone)]
enum Write {
    Put(String),
    Delete,
    DeletePrefix,
}

fn encode<T: Serialize>(key: &str, value: &T) -> Result<String, CoordError> {
    serde_json::to_string(value).map_err(|source| CoordError::Encode {
        key: key.to_string(),
        source,
    })
}

impl Op {
    /// Writes `value` unconditionally.
    pub fn put<T: Serialize>(key: impl Into<String>, value: &T) -> Result<Op, CoordError> {
        let key = key.into();
        let json = encode(&key, value)?;
        Ok(Op {
            key,
            compare: None,
            write: Some(Write::Put(json)),
        })
    }

    /// Writes `value` only if the key does not exist yet.
    pub fn create<T: Serialize>(key: impl Into<String>, value: &T) -> Result<Op, CoordError> {
        let mut op = Op::put(key, value)?;
        op.compare = Some(Guard::Absent);
        Ok(op)
    }

    /// Writes `value` only if the key's mod_revision is still `revision`.
    pub fn put_if<T: Serialize>(
        key: impl Into<String>,
        value: &T,
        revision: i64,
    ) -> Result<Op, CoordError> {
        let mut op = Op::put(key, value)?;
        op.compare = Some(Guard::Revision(revision));
        Ok(op)
    }

    /// Deletes the key (absent is fine).
    pub fn delete(key: impl Into<String>) -> Op {
        Op {
            key: key.into(),
            compare: None,
            write: Some(Write::Delete),
        }
    }

    /// Deletes the key only if its mod_revision is still `revision`.
    pub fn delete_if(key: impl Into<String>, revision: i64) -> Op {
        Op {
            key: key.into(),
            compare: Some(Guard::Revision(revision)),
            write: Some(Write::Delete),
        }
    }

    /// Deletes every key starting with `prefix`.
    pub fn delete_prefix(prefix: impl Into<String>) -> Op {
        Op {
            key: prefix.into(),
            compare: None,
            write: Some(Write::DeletePrefix),
        }
    }

    /// Writes nothing, but the transaction fails unless the key is still at `revision`.
    pub fn unchanged(key: impl Into<String>, revision: i64) -> Op {
        Op {
            key: key.into(),
            compare: Some(Guard::Revision(revision)),
            write: None,
        }
    }

    /// Writes nothing, but the transaction fails if the key exists.
    pub fn absent(key: impl Into<String>) -> Op {
        Op {
            key: key.into(),
            compare: Some(Guard::Absent),
            write: None,
        }
    }
}

fn decode<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, CoordError> {
    serde_json::from_slice(bytes).map_err(|source| CoordError::Decode {
        key: key.to_string(),
        source,
    })
}

impl Coord {
    /// Reads one document, `None` if absent.
    pub async fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<Doc<T>>, CoordError> {
        let resp = self.client().get(self.full_key(key), None).await?;
        match resp.kvs().first() {
            None => Ok(None),
            Some(kv) => Ok(Some(Doc {
                key: key.to_string(),
                value: decode(key, kv.value())?,
                mod_revision: kv.mod_revision(),
            })),
        }
    }

    /// Reads every document under `prefix`, in key order.
    pub async fn list<T: DeserializeOwned>(&self, prefix: &str) -> Result<Vec<Doc<T>>, CoordError> {
        Ok(self.list_at(prefix).await?.0)
    }

    /// Like [`Coord::list`], also returning the store revision the list was read at (to
    /// start a watch right after it without a gap).
    pub async fn list_at<T: DeserializeOwned>(
        &self,
        prefix: &str,
    ) -> Result<(Vec<Doc<T>>, i64), CoordError> {
        let resp = self
            .client()
            .get(self.full_key(prefix), Some(GetOptions::new().with_prefix()))
            .await?;
        let revision = resp.header().map(|h| h.revision()).unwrap_or_default();
        let mut docs = Vec::with_capacity(resp.kvs().len());
        for kv in resp.kvs() {
            let full = kv.key_str()?;
            let key = self.strip(full).to_string();
            docs.push(Doc {
                value: decode(&key, kv.value())?,
                key,
                mod_revision: kv.mod_revision(),
            });
        }
        Ok((docs, revision))
    }

    /// Writes a document unconditionally; returns its new mod_revision.
    pub async fn put<T: Serialize>(&self, key: &str, value: &T) -> Result<i64, CoordError> {
        self.txn(vec![Op::put(key, value)?]).await
    }

    /// Creates a document; [`CoordError::Conflict`] if the key exists.
    pub async fn create<T: Serialize>(&self, key: &str, value: &T) -> Result<i64, CoordError> {
        self.txn(vec![Op::create(key, value)?]).await
    }

    /// Compare-and-set: writes only if the key is still at `revision`.
    pub async fn cas<T: Serialize>(
        &self,
        key: &str,
        value: &T,
        revision: i64,
    ) -> Result<i64, CoordError> {
        self.txn(vec![Op::put_if(key, value, revision)?]).await
    }

    /// Deletes a key (absent is fine).
    pub async fn delete(&self, key: &str) -> Result<(), CoordError> {
        self.client().delete(self.full_key(key), None).await?;
        Ok(())
    }

    /// Runs `ops` atomically; returns the revision of the transaction. If any compare
    /// fails nothing is written and [`CoordError::Conflict`] names the guarded keys.
    pub async fn txn(&self, ops: Vec<Op>) -> Result<i64, CoordError> {
        let mut compares = Vec::new();
        let mut writes = Vec::new();
        for op in &ops {
            let full = self.full_key(&op.key);
            match op.compare {
                Some(Guard::Absent) => {
                    compares.push(Compare::create_revision(full.clone(), CompareOp::Equal, 0))
                }
                Some(Guard::Revision(rev)) => {
                    compares.push(Compare::mod_revision(full.clone(), CompareOp::Equal, rev))
                }
                None => {}
            }
            match &op.write {
                Some(Write::Put(json)) => writes.push(TxnOp::put(full, json.as_str(), None)),
                Some(Write::Delete) => writes.push(TxnOp::delete(full, None)),
                Some(Write::DeletePrefix) => writes.push(TxnOp::delete(
                    full,
                    Some(DeleteOptions::new().with_prefix()),
                )),
                None => {}
            }
        }
        let txn = Txn::new().when(compares).and_then(writes);
        let resp = self.client().txn(txn).await?;
        if !resp.succeeded() {
            let keys: Vec<&str> = ops
                .iter()
                .filter(|o| o.compare.is_some())
                .map(|o| o.key.as_str())
                .collect();
            return Err(CoordError::Conflict {
                key: keys.join(", "),
            });
        }
        Ok(resp.header().map(|h| h.revision()).unwrap_or_default())
    }
}
