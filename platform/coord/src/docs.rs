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
//!
//! Two kinds of step tie a batch to liveness: [`Batch::put_leased`] binds a key to a
//! [`Lease`] (one lease can carry any number of keys, all deleted when it ends), and
//! [`Batch::require_leadership`] makes the whole batch conditional on the leader key
//! still holding the [`Leadership`]'s fencing token (same create revision, same lease),
//! so a deposed leader's write is refused by etcd itself ([`CoordError::Fenced`]).

use etcd_client::{Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::coord::Coord;
use crate::election::Leadership;
use crate::error::{CoordError, Result};
use crate::lease::{Lease, LeaseState};

/// What a [`Batch`] requires of a key before it writes anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    /// The key must not exist.
    Absent,
    /// The key must exist with exactly this mod revision.
    AtRevision(i64),
    /// The key must exist with this create revision and lease (a leader key still
    /// held by the leadership with that fencing token).
    Leader {
        /// The fencing token's revision.
        create_revision: i64,
        /// The fencing token's lease.
        lease: i64,
    },
    /// The key must exist bound to exactly this lease (a leader key still held by the
    /// lease that took it).
    OnLease(i64),
    /// No requirement (unconditional write).
    Nothing,
}

/// A checked key as read back by a failed batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seen {
    mod_revision: i64,
    create_revision: i64,
    lease: i64,
}

/// What a [`Batch`] does to a key once every check passed.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Write {
    /// Store the value, bound to this lease id when given.
    Put(Vec<u8>, Option<i64>),
    Delete,
    Nothing,
}

#[derive(Debug, Clone)]
struct Step {
    key: String,
    check: Check,
    write: Write,
}

/// One key as read by [`Coord::entries`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The key, without the namespace.
    pub key: String,
    /// The raw value.
    pub value: Vec<u8>,
    /// Revision of its last write (the guard for [`Batch::update`]).
    pub mod_revision: i64,
    /// Revision of its creation (with `lease`, a leader key's fencing token).
    pub create_revision: i64,
    /// The lease it is bound to (0: none).
    pub lease: i64,
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
        Ok(self.push(key, Check::Absent, Write::Put(bytes, None)))
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
        Ok(self.push(
            key,
            Check::AtRevision(expected_revision),
            Write::Put(bytes, None),
        ))
    }

    /// Writes `key` whatever it holds now.
    pub fn put<T: Serialize>(&mut self, key: &str, value: &T) -> Result<&mut Self> {
        let bytes = encode(key, value)?;
        Ok(self.push(key, Check::Nothing, Write::Put(bytes, None)))
    }

    /// Writes `key` whatever it holds now, bound to `lease`: the key is deleted when the
    /// lease ends. `LeaseLost` if the lease is already known to be lost.
    pub fn put_leased<T: Serialize>(
        &mut self,
        key: &str,
        value: &T,
        lease: &Lease,
    ) -> Result<&mut Self> {
        if let LeaseState::Lost(reason) = lease.state() {
            return Err(lease.lost_error(&reason));
        }
        let bytes = encode(key, value)?;
        Ok(self.push(key, Check::Nothing, Write::Put(bytes, Some(lease.id()))))
    }

    /// Writes `key` whatever it holds now, bound to the lease with id `lease` (for
    /// holders that keep their lease id rather than the [`Lease`]: a supervisor whose
    /// lease is replaced after an outage). etcd refuses the batch if that lease is gone.
    pub fn put_on_lease<T: Serialize>(
        &mut self,
        key: &str,
        value: &T,
        lease: i64,
    ) -> Result<&mut Self> {
        let bytes = encode(key, value)?;
        Ok(self.push(key, Check::Nothing, Write::Put(bytes, Some(lease))))
    }

    /// Requires `key` to exist bound to the lease with id `lease` (else `Fenced`): a
    /// write only the current holder of a leased key may make.
    pub fn require_lease(&mut self, key: &str, lease: i64) -> &mut Self {
        self.push(key, Check::OnLease(lease), Write::Nothing)
    }

    /// Deletes `key` if it is bound to the lease with id `lease` (else `Fenced`).
    pub fn delete_on_lease(&mut self, key: &str, lease: i64) -> &mut Self {
        self.push(key, Check::OnLease(lease), Write::Delete)
    }

    /// Deletes `key` whatever it holds now (absent is fine).
    pub fn remove(&mut self, key: &str) -> &mut Self {
        self.push(key, Check::Nothing, Write::Delete)
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

    /// Makes the batch conditional on `leadership` still being current in etcd: its
    /// leader key must exist with the leadership's fencing token (create revision and
    /// lease), else the batch fails with `Fenced`. Fails at once with `Fenced` when the
    /// leadership is already known to be lost.
    pub fn require_leadership(&mut self, leadership: &Leadership) -> Result<&mut Self> {
        if leadership.lost_reason().is_some() {
            return Err(CoordError::Fenced {
                key: leadership.key().to_string(),
            });
        }
        let token = leadership.token();
        let check = Check::Leader {
            create_revision: token.revision,
            lease: token.lease,
        };
        Ok(self.push(leadership.key(), check, Write::Nothing))
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

/// Which check of a failed batch failed, given each checked key as read in the same
/// transaction (`None` = absent), in step order. Pure.
///
/// When every check looks satisfied (a batch naming one key twice can do that) the
/// first checked key is reported as the conflict.
fn first_failed_check(checks: &[(&str, Check)], observed: &[Option<Seen>]) -> CoordError {
    for ((key, check), seen) in checks.iter().zip(observed) {
        let key = key.to_string();
        match (check, seen) {
            (Check::Absent, Some(_)) => return CoordError::Conflict { key },
            (Check::AtRevision(_), None) => return CoordError::NotFound { key },
            (Check::AtRevision(want), Some(have)) if *want != have.mod_revision => {
                return CoordError::Conflict { key }
            }
            (Check::Leader { .. } | Check::OnLease(_), None) => return CoordError::Fenced { key },
            (Check::OnLease(lease), Some(have)) if *lease != have.lease => {
                return CoordError::Fenced { key }
            }
            (
                Check::Leader {
                    create_revision,
                    lease,
                },
                Some(have),
            ) if (*create_revision, *lease) != (have.create_revision, have.lease) => {
                return CoordError::Fenced { key }
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
        let full = self.ns.full(key);
        let response = self
            .read(|c| {
                let full = full.clone();
                async move { c.kv_client().get(full, None).await }
            })
            .await?;
        match response.kvs().first() {
            None => Ok(None),
            Some(found) => Ok(Some((decode(key, found.value())?, found.mod_revision()))),
        }
    }

    /// The store's current revision (one read of nothing): the `at` of reads of several
    /// prefixes that must agree with each other.
    pub async fn revision(&self) -> Result<i64> {
        let key = self.ns.full("");
        let response = self
            .read(|c| {
                let key = key.clone();
                async move {
                    c.kv_client()
                        .get(key, Some(GetOptions::new().with_count_only()))
                        .await
                }
            })
            .await?;
        Ok(response.header().map_or(0, |h| h.revision()))
    }

    /// Every document whose key starts with `prefix`, in key order, with its revision.
    /// All are read at one revision (a consistent snapshot).
    pub async fn list<T: DeserializeOwned>(&self, prefix: &str) -> Result<Vec<(String, T, i64)>> {
        self.list_raw(prefix)
            .await?
            .into_iter()
            .map(|(key, bytes, revision)| decode(&key, &bytes).map(|value| (key, value, revision)))
            .collect()
    }

    /// Like [`Coord::list`], but a document that does not decode as `T` is logged and
    /// left out instead of failing the whole read: for loops that must keep working
    /// past one bad value written by someone else.
    pub async fn list_decodable<T: DeserializeOwned>(
        &self,
        prefix: &str,
    ) -> Result<Vec<(String, T, i64)>> {
        self.list_decodable_at(prefix, None).await
    }

    /// [`Coord::list_decodable`] as the store was at revision `at` (`None`: now): lists
    /// of several prefixes read at one [`Coord::revision`] agree with each other.
    pub async fn list_decodable_at<T: DeserializeOwned>(
        &self,
        prefix: &str,
        at: Option<i64>,
    ) -> Result<Vec<(String, T, i64)>> {
        let raw: Vec<(String, Vec<u8>, i64)> = self
            .entries_at(prefix, at)
            .await?
            .into_iter()
            .map(|e| (e.key, e.value, e.mod_revision))
            .collect();
        Ok(raw
            .into_iter()
            .filter_map(|(key, bytes, revision)| match decode(&key, &bytes) {
                Ok(value) => Some((key, value, revision)),
                Err(err) => {
                    tracing::warn!(%err, "skipping a document that does not decode");
                    None
                }
            })
            .collect())
    }

    /// Every key under `prefix` in one consistent read, with its raw value, revisions
    /// and lease: for records whose holder matters (leader keys) and readers that must
    /// decode each kind of key differently.
    pub async fn entries(&self, prefix: &str) -> Result<Vec<Entry>> {
        self.entries_at(prefix, None).await
    }

    /// [`Coord::entries`] as the store was at revision `at` (`None`: now).
    async fn entries_at(&self, prefix: &str, at: Option<i64>) -> Result<Vec<Entry>> {
        let response = self.read_prefix_at(prefix, at).await?;
        Ok(response
            .kvs()
            .iter()
            .filter_map(|found| {
                Some(Entry {
                    key: self.ns.strip(found.key())?,
                    value: found.value().to_vec(),
                    mod_revision: found.mod_revision(),
                    create_revision: found.create_revision(),
                    lease: found.lease(),
                })
            })
            .collect())
    }

    /// Every key under `prefix` (one consistent read) with its raw value and revision.
    async fn list_raw(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>, i64)>> {
        Ok(self
            .entries(prefix)
            .await?
            .into_iter()
            .map(|e| (e.key, e.value, e.mod_revision))
            .collect())
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
                Check::Leader {
                    create_revision,
                    lease,
                } => {
                    compares.push(Compare::create_revision(
                        full.clone(),
                        CompareOp::Equal,
                        create_revision,
                    ));
                    compares.push(Compare::lease(full.clone(), CompareOp::Equal, lease));
                }
                Check::OnLease(lease) => {
                    compares.push(Compare::lease(full.clone(), CompareOp::Equal, lease));
                }
                Check::Nothing => {}
            }
            if step.check != Check::Nothing {
                let keys_only = GetOptions::new().with_keys_only();
                reads.push(TxnOp::get(full.clone(), Some(keys_only)));
            }
            match &step.write {
                Write::Put(bytes, lease) => {
                    let options = match lease {
                        Some(id) => PutOptions::new().with_lease(*id),
                        None => PutOptions::new(),
                    };
                    writes.push(TxnOp::put(full, bytes.clone(), Some(options)))
                }
                Write::Delete => writes.push(TxnOp::delete(full, None)),
                Write::Nothing => {}
            }
        }
        let txn = Txn::new().when(compares).and_then(writes).or_else(reads);
        let response = self
            .write(|c| async move { c.kv_client().txn(txn).await })
            .await?;
        if response.succeeded() {
            return Ok(response.header().map_or(0, |h| h.revision()));
        }
        let checks: Vec<(&str, Check)> = batch
            .steps
            .iter()
            .filter(|s| s.check != Check::Nothing)
            .map(|s| (s.key.as_str(), s.check))
            .collect();
        let observed: Vec<Option<Seen>> = response
            .op_responses()
            .iter()
            .map(|read| match read {
                TxnOpResponse::Get(get) => get.kvs().first().map(|kv| Seen {
                    mod_revision: kv.mod_revision(),
                    create_revision: kv.create_revision(),
                    lease: kv.lease(),
                }),
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

    /// A key seen at `rev` (created there too), on no lease.
    fn at(rev: i64) -> Option<Seen> {
        Some(Seen {
            mod_revision: rev,
            create_revision: rev,
            lease: 0,
        })
    }

    fn check(checks: &[(&str, Check)], observed: &[Option<Seen>], expected: CoordError) {
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
        check(&[("a", Absent)], &[at(5)], conflict("a"));
        check(&[("a", AtRevision(5))], &[None], missing("a"));
        check(&[("a", AtRevision(5))], &[at(6)], conflict("a"));
        check(
            &[("a", AtRevision(5)), ("b", Absent)],
            &[at(5), at(9)],
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
            &[None, at(3)],
            conflict("a"),
        );
    }

    #[test]
    fn a_leader_key_with_another_token_fences() {
        let fenced = |k: &str| CoordError::Fenced { key: k.into() };
        let leader = Check::Leader {
            create_revision: 10,
            lease: 7,
        };
        let seen = |create_revision, lease| {
            Some(Seen {
                mod_revision: 12,
                create_revision,
                lease,
            })
        };
        check(&[("l", leader)], &[None], fenced("l"));
        check(&[("l", leader)], &[seen(11, 7)], fenced("l"));
        check(&[("l", leader)], &[seen(10, 8)], fenced("l"));
        // The leader key held; the other check failed.
        check(
            &[("l", leader), ("a", Check::Absent)],
            &[seen(10, 7), at(3)],
            CoordError::Conflict { key: "a".into() },
        );
    }
}
