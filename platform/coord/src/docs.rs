//! Revision-checked JSON state documents.
//!
//! A document is one etcd key holding a JSON value. Every read returns the key's
//! `mod_revision`; every write that must not clobber a concurrent one names the revision
//! it read ([`Coord::cas`], [`Coord::delete`]) or that the key must be absent
//! ([`Coord::create`]). A lost check is [`CoordError::Conflict`] (or
//! [`CoordError::NotFound`] when the key vanished since it was read), and nothing is
//! written.
//!
//! [`Batch`] groups checks and writes on several keys into one etcd transaction: all
//! checks pass and all writes happen at one revision, or nothing happens. When a batch
//! fails, the same transaction's else-branch reads back the checked keys, so the error
//! names the key that failed (`first_failed_check`, pure).

use etcd_client::{Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::coord::Coord;
use crate::error::{CoordError, Result};
use crate::keys::prefix_end;

/// What a [`Batch`] requires of a key before it writes anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    /// The key must not exist.
    Absent,
    /// The key must exist with exactly this mod revision.
    AtRevision(i64),
    /// No requirement (unconditional write).
    Nothing,
}

/// What a [`Batch`] does to a key once every check passed.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Write {
    Put(Vec<u8>),
    Delete,
    Nothing,
}

#[derive(Debug, Clone)]
struct Step {
    key: String,
    check: Check,
    write: Write,
}

/// Checks and writes on several documents, committed atomically by [`Coord::commit`]
/// (e.g. "create the app and its name index entry").
#[derive(Debug, Clone, Default)]
pub struct Batch {
    steps: Vec<Step>,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Creates `key` with `value`; the batch fails with `Conflict` if it exists.
    pub fn create<T: Serialize>(&mut self, key: &str, value: &T) -> Result<&mut Self> {
        let bytes = encode(key, value)?;
        Ok(self.push(key, Check::Absent, Write::Put(bytes)))
    }

    /// Replaces `key` if it is still at `expected_revision` (`Conflict` if it changed,
    /// `NotFound` if it is gone).
    pub fn update<T: Serialize>(
        &mut self,
        key: &str,
        value: &T,
        expected_revision: i64,
    ) -> Result<&mut Self> {
        let bytes = encode(key, value)?;
        Ok(self.push(key, Check::AtRevision(expected_revision), Write::Put(bytes)))
    }

    /// Writes `key` whatever it holds now.
    pub fn put<T: Serialize>(&mut self, key: &str, value: &T) -> Result<&mut Self> {
        let bytes = encode(key, value)?;
        Ok(self.push(key, Check::Nothing, Write::Put(bytes)))
    }

    /// Deletes `key` if it is still at `expected_revision`.
    pub fn delete(&mut self, key: &str, expected_revision: i64) -> &mut Self {
        self.push(key, Check::AtRevision(expected_revision), Write::Delete)
    }

    /// Requires `key` to be unchanged at `expected_revision` without writing it (a guard
    /// such as "the app I derived this from is still the same").
    pub fn require(&mut self, key: &str, expected_revision: i64) -> &mut Self {
        self.push(key, Check::AtRevision(expected_revision), Write::Nothing)
    }

    /// Requires `key` to be absent without writing it.
    pub fn require_absent(&mut self, key: &str) -> &mut Self {
        self.push(key, Check::Absent, Write::Nothing)
    }

    fn push(&mut self, key: &str, check: Check, write: Write) -> &mut Self {
        self.steps.push(Step {
            key: key.to_string(),
            check,
            write,
        });
        self
    }
}

pub(crate) fn encode<T: Serialize>(key: &str, value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|source| CoordError::Encode {
        key: key.to_string(),
        source,
    })
}

pub(crate) fn decode<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|source| CoordError::Decode {
        key: key.to_string(),
        source,
    })
}

/// Which check of a failed batch failed, given each checked key's mod revision as read
/// in the same transaction (`None` = absent), in step order. Pure.
///
/// When every check looks satisfied (a batch naming one key twice can do that) the
/// first checked key is reported as the conflict.
fn first_failed_check(checks: &[(&str, Check)], observed: &[Option<i64>]) -> CoordError {
    for ((key, check), seen) in checks.iter().zip(observed) {
        let key = key.to_string();
        match (check, seen) {
            (Check::Absent, Some(_)) => return CoordError::Conflict { key },
            (Check::AtRevision(_), None) => return CoordError::NotFound { key },
            (Check::AtRevision(want), Some(have)) if want != have => {
                return CoordError::Conflict { key }
            }
            _ => {}
        }
    }
    let key = checks
        .first()
        .map(|(k, _)| k.to_string())
        .unwrap_or_default();
    CoordError::Conflict { key }
}

impl Coord {
    /// Reads the document at `key` and the revision to pass to [`Coord::cas`] or
    /// [`Coord::delete`]; `None` when absent.
    pub async fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<(T, i64)>> {
        let mut kv = self.client.kv_client();
        let response = kv.get(self.ns.full(key), None).await?;
        match response.kvs().first() {
            None => Ok(None),
            Some(found) => Ok(Some((decode(key, found.value())?, found.mod_revision()))),
        }
    }

    /// Every document whose key starts with `prefix`, in key order, with its revision.
    /// All are read at one revision (a consistent snapshot).
    pub async fn list<T: DeserializeOwned>(&self, prefix: &str) -> Result<Vec<(String, T, i64)>> {
        let mut kv = self.client.kv_client();
        let start = self.ns.full(prefix);
        let options = GetOptions::new().with_range(prefix_end(&start));
        let response = kv.get(start, Some(options)).await?;
        response
            .kvs()
            .iter()
            .filter_map(|found| {
                let key = self.ns.strip(found.key())?;
                Some(decode(&key, found.value()).map(|value| (key, value, found.mod_revision())))
            })
            .collect()
    }

    /// Creates `key` with `value`, returning its revision; `Conflict` if it exists.
    pub async fn create<T: Serialize>(&self, key: &str, value: &T) -> Result<i64> {
        let mut batch = Batch::new();
        batch.create(key, value)?;
        self.commit(batch).await
    }

    /// Replaces `key` if it is still at `expected_revision`, returning the new revision;
    /// `Conflict` if it changed since, `NotFound` if it was deleted.
    pub async fn cas<T: Serialize>(
        &self,
        key: &str,
        value: &T,
        expected_revision: i64,
    ) -> Result<i64> {
        let mut batch = Batch::new();
        batch.update(key, value, expected_revision)?;
        self.commit(batch).await
    }

    /// Deletes `key` if it is still at `expected_revision`; `Conflict` if it changed
    /// since, `NotFound` if it is already gone.
    pub async fn delete(&self, key: &str, expected_revision: i64) -> Result<()> {
        let mut batch = Batch::new();
        batch.delete(key, expected_revision);
        self.commit(batch).await.map(drop)
    }

    /// Commits `batch` atomically and returns the revision of its writes (the current
    /// revision if it writes nothing). On a failed check nothing is written and the
    /// error names the first failing key.
    pub async fn commit(&self, batch: Batch) -> Result<i64> {
        let mut compares = Vec::new();
        let mut writes = Vec::new();
        let mut reads = Vec::new();
        for step in &batch.steps {
            let full = self.ns.full(&step.key);
            match step.check {
                Check::Absent => {
                    compares.push(Compare::create_revision(full.clone(), CompareOp::Equal, 0))
                }
                Check::AtRevision(rev) => {
                    compares.push(Compare::mod_revision(full.clone(), CompareOp::Equal, rev))
                }
                Check::Nothing => {}
            }
            if step.check != Check::Nothing {
                let keys_only = GetOptions::new().with_keys_only();
                reads.push(TxnOp::get(full.clone(), Some(keys_only)));
            }
            match &step.write {
                Write::Put(bytes) => {
                    writes.push(TxnOp::put(full, bytes.clone(), Some(PutOptions::new())))
                }
                Write::Delete => writes.push(TxnOp::delete(full, None)),
                Write::Nothing => {}
            }
        }
        let txn = Txn::new().when(compares).and_then(writes).or_else(reads);
        let response = self.client.kv_client().txn(txn).await?;
        if response.succeeded() {
            return Ok(response.header().map_or(0, |h| h.revision()));
        }
        let checks: Vec<(&str, Check)> = batch
            .steps
            .iter()
            .filter(|s| s.check != Check::Nothing)
            .map(|s| (s.key.as_str(), s.check))
            .collect();
        let observed: Vec<Option<i64>> = response
            .op_responses()
            .iter()
            .map(|read| match read {
                TxnOpResponse::Get(get) => get.kvs().first().map(|kv| kv.mod_revision()),
                _ => None,
            })
            .collect();
        let err = first_failed_check(&checks, &observed);
        tracing::debug!(%err, "batch not committed");
        Err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(checks: &[(&str, Check)], observed: &[Option<i64>], expected: CoordError) {
        assert_eq!(
            first_failed_check(checks, observed).to_string(),
            expected.to_string()
        );
    }

    #[test]
    fn names_the_failing_key() {
        let conflict = |k: &str| CoordError::Conflict { key: k.into() };
        let missing = |k: &str| CoordError::NotFound { key: k.into() };
        use Check::{Absent, AtRevision};
        check(&[("a", Absent)], &[Some(5)], conflict("a"));
        check(&[("a", AtRevision(5))], &[None], missing("a"));
        check(&[("a", AtRevision(5))], &[Some(6)], conflict("a"));
        check(
            &[("a", AtRevision(5)), ("b", Absent)],
            &[Some(5), Some(9)],
            conflict("b"),
        );
        check(
            &[("a", Absent), ("b", AtRevision(3))],
            &[None, None],
            missing("b"),
        );
        // Nothing visibly failed: blame the first checked key.
        check(
            &[("a", Absent), ("b", AtRevision(3))],
            &[None, Some(3)],
            conflict("a"),
        );
    }
}
