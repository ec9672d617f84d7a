//! Watching a key prefix as a sequence of consistent snapshots.
//!
//! Flow: list the prefix (entries + the store revision `R` of that read), publish a
//! snapshot, then watch from `R + 1`. Every event after the list is seen exactly once
//! (no gap: the watch starts right after the read; no duplicate: nothing at or before
//! `R` is replayed). Each watch response is applied to the entries ([`apply`], pure)
//! and, if anything changed, a new snapshot tagged with the response's revision is
//! published on a `tokio::sync::watch` channel (readers always see a whole snapshot,
//! never a half-applied one; a slow reader skips intermediate ones).
//!
//! When the watch fails (connection lost, or the start revision was compacted) the
//! watcher lists again and publishes the re-listed state if it differs, then watches
//! from the new list's revision. Snapshot revisions never go backwards.
//!
//! A snapshot tagged `r` holds exactly what etcd held under the prefix at `r`. A watch
//! response that changed nothing (a value put again as it was) still moves the tag on,
//! without waking readers ([`Advance`]); so does a re-list that found nothing new.
//!
//! Watches of different prefixes run on their own streams, and one may deliver a later
//! revision before another delivers an earlier one: a reader that combines several
//! (the scheduler's view of formations and hosts) checks that each still holds with
//! [`Coord::still_held`] before acting on them.
//!
//! [`Coord::watch_prefix`] is the public face: a [`DocWatch`] publishing [`Snapshot`]s
//! of JSON documents. A value that does not decode as the requested type is logged and
//! left out of the snapshot ([`decode_entries`]); it never stops the watch.

use std::collections::BTreeMap;
use std::time::Duration;

use etcd_client::{EventType, GetOptions, KeyValue, Txn, TxnOp, TxnOpResponse, WatchOptions};
use serde::de::DeserializeOwned;
use tokio::sync::watch;

use crate::coord::Coord;
use crate::docs::decode;
use crate::error::Result;
use crate::keys::prefix_end;
use crate::task::AbortOnDrop;

/// Pause before re-listing after a failed watch or list.
const RETRY_DELAY: Duration = Duration::from_millis(500);

/// One key under the watched prefix, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    /// The raw (JSON) value.
    pub(crate) value: Vec<u8>,
    /// The revision that created the key (stable while it exists).
    pub(crate) create_revision: i64,
    /// The lease the key is bound to (0 = none).
    pub(crate) lease: i64,
}

/// Keys relative to the watched prefix.
pub(crate) type Entries = BTreeMap<String, Entry>;

/// One change to apply to [`Entries`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Change {
    /// The key now holds this entry.
    Put(String, Entry),
    /// The key is gone.
    Delete(String),
}

/// Applies `changes` in order; returns whether the entries differ from before (a key
/// created and deleted within one batch is no difference). Pure.
pub(crate) fn apply(entries: &mut Entries, changes: Vec<Change>) -> bool {
    let mut before: BTreeMap<String, Option<Entry>> = BTreeMap::new();
    for change in changes {
        let key = match &change {
            Change::Put(key, _) | Change::Delete(key) => key.clone(),
        };
        let previous = match change {
            Change::Put(key, entry) => entries.insert(key, entry),
            Change::Delete(key) => entries.remove(&key),
        };
        before.entry(key).or_insert(previous);
    }
    before
        .iter()
        .any(|(key, was)| entries.get(key) != was.as_ref())
}

/// Why one watch stream ended.
#[derive(Debug)]
enum WatchEnd {
    /// Every receiver is gone; stop.
    Unobserved,
    /// The watch can no longer deliver a gap-free history; list again.
    Broken(String),
}

/// A published view whose revision tag can move on without being rebuilt: a watch
/// response that changed nothing still shows the entries held through its revision.
pub(crate) trait Advance {
    /// Tags the view with `revision` (never lower than its own).
    fn advance(&mut self, revision: i64);
}

/// A background watcher publishing `project(revision, entries)` after every change.
pub(crate) struct PrefixWatch<S> {
    pub(crate) rx: watch::Receiver<S>,
    _task: AbortOnDrop,
}

impl<S: Advance + Send + Sync + 'static> PrefixWatch<S> {
    /// Lists `prefix` (a caller key prefix), publishes the first snapshot and starts
    /// watching. Fails only if the first list fails.
    pub(crate) async fn start<F>(coord: &Coord, prefix: &str, project: F) -> Result<Self>
    where
        F: Fn(i64, &Entries) -> S + Send + Sync + 'static,
    {
        let (entries, revision) = list(coord, prefix).await?;
        let (tx, rx) = watch::channel(project(revision, &entries));
        let task = tokio::spawn(run(
            coord.clone(),
            prefix.to_string(),
            entries,
            revision,
            tx,
            project,
        ));
        Ok(PrefixWatch {
            rx,
            _task: AbortOnDrop(task),
        })
    }
}

/// The documents under a prefix as etcd held them at one revision.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot<T> {
    /// The etcd revision this snapshot reflects.
    pub revision: i64,
    /// Key (relative to the watched prefix) -> document.
    pub docs: BTreeMap<String, T>,
    /// How many keys the prefix held; more than `docs` when some did not decode.
    pub keys: usize,
}

impl<T> Advance for Snapshot<T> {
    fn advance(&mut self, revision: i64) {
        self.revision = self.revision.max(revision);
    }
}

impl<T> Snapshot<T> {
    /// What [`Coord::still_held`] checks for this snapshot of `prefix` (the prefix it
    /// watches).
    pub fn held<'a>(&self, prefix: &'a str) -> Held<'a> {
        Held {
            prefix,
            revision: self.revision,
            keys: self.keys,
        }
    }
}

/// A snapshot of `prefix` tagged `revision`, holding `keys` keys: whether it still
/// holds is one range read ([`Coord::still_held`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held<'a> {
    /// The watched prefix.
    pub prefix: &'a str,
    /// The snapshot's revision.
    pub revision: i64,
    /// The keys it held.
    pub keys: usize,
}

/// Decodes every entry as `T`, logging and leaving out those that do not decode.
/// `prefix` only labels the log line. Pure apart from that log.
pub(crate) fn decode_entries<T: DeserializeOwned>(
    prefix: &str,
    entries: &Entries,
) -> BTreeMap<String, T> {
    entries
        .iter()
        .filter_map(
            |(key, entry)| match decode::<T>(&format!("{prefix}{key}"), &entry.value) {
                Ok(value) => Some((key.clone(), value)),
                Err(err) => {
                    tracing::warn!(%err, "leaving an undecodable document out of a snapshot");
                    None
                }
            },
        )
        .collect()
}

impl Coord {
    /// Watches the documents under `prefix`: the current set now, and a new snapshot
    /// after every change (see the module doc for why no change is missed or seen
    /// twice). Fails only if the first read fails; later outages are retried in the
    /// background until the handle is dropped.
    pub async fn watch_prefix<T>(&self, prefix: &str) -> Result<DocWatch<T>>
    where
        T: DeserializeOwned + Send + Sync + 'static,
    {
        let label = prefix.to_string();
        let inner = PrefixWatch::start(self, prefix, move |revision, entries| Snapshot {
            revision,
            docs: decode_entries(&label, entries),
            keys: entries.len(),
        })
        .await?;
        Ok(DocWatch { inner })
    }

    /// Whether every snapshot in `checks` still holds (etcd holds under its prefix
    /// now what it held at the snapshot's revision: no key written since, none
    /// deleted), in one read. A reader acting on several watches together asks this
    /// first: each watch runs on its own stream and may lag another by a few
    /// milliseconds, and a view half before and half after a change is a view that
    /// never was. `false` means a change is still on its way to one of the watches.
    ///
    /// `seen` is the newest revision the reader's other watches delivered. The read is
    /// served from the member's own state, without the quorum round a linearizable
    /// read costs on a cluster of several members, and counts only if that state is at
    /// least `seen`: then "still holds" covers every revision the other watches showed.
    /// It reads the current state, not history at one revision, which etcd may have
    /// compacted away.
    pub async fn still_held(&self, checks: &[Held<'_>], seen: i64) -> Result<bool> {
        let reads: Vec<TxnOp> = checks
            .iter()
            .map(|c| {
                let start = self.ns.full(c.prefix);
                let options = GetOptions::new()
                    .with_range(prefix_end(&start))
                    .with_keys_only()
                    .with_serializable()
                    .with_min_mod_revision(c.revision + 1);
                TxnOp::get(start, Some(options))
            })
            .collect();
        if reads.is_empty() {
            return Ok(true);
        }
        let expected: Vec<usize> = checks.iter().map(|c| c.keys).collect();
        let response = self
            .read(|c| {
                let txn = Txn::new().and_then(reads.clone());
                async move { c.kv_client().txn(txn).await }
            })
            .await?;
        // Each range answers the keys written after its snapshot (none if it holds)
        // and, as `count`, every key there now (the snapshot's count if none was
        // deleted or added).
        let state = response.header().map_or(0, |h| h.revision());
        Ok(state >= seen
            && response
                .op_responses()
                .iter()
                .zip(expected)
                .all(|(answer, keys)| match answer {
                    TxnOpResponse::Get(range) => {
                        range.kvs().is_empty() && usize::try_from(range.count()) == Ok(keys)
                    }
                    _ => false,
                }))
    }
}

/// A live view of the documents under a prefix, updated in the background until
/// dropped: lets a loop react to a change at once instead of polling.
pub struct DocWatch<T> {
    inner: PrefixWatch<Snapshot<T>>,
}

impl<T: Clone> DocWatch<T> {
    /// The latest snapshot.
    pub fn current(&self) -> Snapshot<T> {
        self.inner.rx.borrow().clone()
    }

    /// Waits for a snapshot newer than the last one this method returned, and returns
    /// it; `None` only if the background watcher died (it runs until this handle drops).
    pub async fn changed(&mut self) -> Option<Snapshot<T>> {
        self.inner.rx.changed().await.ok()?;
        Some(self.inner.rx.borrow_and_update().clone())
    }

    /// A receiver for `select!` loops (shares the watcher; it ends with this handle).
    pub fn subscribe(&self) -> watch::Receiver<Snapshot<T>> {
        self.inner.rx.clone()
    }
}

/// Reads every key under `prefix` and the store revision of that read.
async fn list(coord: &Coord, prefix: &str) -> Result<(Entries, i64)> {
    let response = coord.read_prefix(prefix).await?;
    let revision = response.header().map_or(0, |h| h.revision());
    let entries = response
        .kvs()
        .iter()
        .filter_map(|kv| Some((relative(coord, prefix, kv)?, entry(kv))))
        .collect();
    Ok((entries, revision))
}

fn relative(coord: &Coord, prefix: &str, kv: &KeyValue) -> Option<String> {
    coord
        .ns
        .strip(kv.key())?
        .strip_prefix(prefix)
        .map(str::to_string)
}

fn entry(kv: &KeyValue) -> Entry {
    Entry {
        value: kv.value().to_vec(),
        create_revision: kv.create_revision(),
        lease: kv.lease(),
    }
}

async fn run<S, F>(
    coord: Coord,
    prefix: String,
    mut entries: Entries,
    mut revision: i64,
    tx: watch::Sender<S>,
    project: F,
) where
    S: Advance,
    F: Fn(i64, &Entries) -> S,
{
    loop {
        match follow(&coord, &prefix, &mut entries, &mut revision, &tx, &project).await {
            WatchEnd::Unobserved => return,
            WatchEnd::Broken(why) => {
                tracing::info!(prefix, why, "watch broken; listing again");
            }
        }
        loop {
            tokio::time::sleep(RETRY_DELAY).await;
            if tx.is_closed() {
                return;
            }
            match list(&coord, &prefix).await {
                Ok((fresh, at)) => {
                    if fresh != entries {
                        entries = fresh;
                        tx.send_replace(project(at, &entries));
                    } else {
                        tx.send_if_modified(|view| {
                            view.advance(at);
                            false
                        });
                    }
                    revision = revision.max(at);
                    break;
                }
                Err(err) => tracing::warn!(prefix, %err, "listing after a broken watch failed"),
            }
        }
    }
}

/// Follows one watch stream from `revision + 1`, applying and publishing changes.
async fn follow<S, F>(
    coord: &Coord,
    prefix: &str,
    entries: &mut Entries,
    revision: &mut i64,
    tx: &watch::Sender<S>,
    project: &F,
) -> WatchEnd
where
    S: Advance,
    F: Fn(i64, &Entries) -> S,
{
    let start = coord.ns.full(prefix);
    let options = WatchOptions::new()
        .with_range(prefix_end(&start))
        .with_start_revision(*revision + 1);
    let (_watcher, mut stream) = match coord
        .client()
        .watch_client()
        .watch(start, Some(options))
        .await
    {
        Ok(opened) => opened,
        Err(err) => return WatchEnd::Broken(err.to_string()),
    };
    loop {
        let message = tokio::select! {
            message = stream.message() => message,
            () = tx.closed() => return WatchEnd::Unobserved,
        };
        let response = match message {
            Ok(Some(response)) => response,
            Ok(None) => return WatchEnd::Broken("watch stream ended".into()),
            Err(err) => return WatchEnd::Broken(err.to_string()),
        };
        if response.canceled() {
            return WatchEnd::Broken(format!(
                "watch canceled (compacted at {}): {}",
                response.compact_revision(),
                response.cancel_reason()
            ));
        }
        let changes = response
            .events()
            .iter()
            .filter_map(|event| {
                let kv = event.kv()?;
                let key = relative(coord, prefix, kv)?;
                Some(match event.event_type() {
                    EventType::Put => Change::Put(key, entry(kv)),
                    EventType::Delete => Change::Delete(key),
                })
            })
            .collect();
        if let Some(at) = response.header().map(|h| h.revision()) {
            *revision = (*revision).max(at);
        }
        if apply(entries, changes) {
            tx.send_replace(project(*revision, entries));
        } else {
            tx.send_if_modified(|view| {
                view.advance(*revision);
                false
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(value: &str, create_revision: i64) -> Entry {
        Entry {
            value: value.as_bytes().to_vec(),
            create_revision,
            lease: 7,
        }
    }

    #[test]
    fn applies_puts_and_deletes_in_order() {
        let mut entries = Entries::new();
        assert!(apply(
            &mut entries,
            vec![
                Change::Put("a".into(), e("1", 10)),
                Change::Put("b".into(), e("2", 11)),
                Change::Delete("a".into()),
            ]
        ));
        assert_eq!(entries, Entries::from([("b".to_string(), e("2", 11))]));
    }

    #[test]
    fn reports_no_change_for_repeats_and_unknown_deletes() {
        let mut entries = Entries::from([("b".to_string(), e("2", 11))]);
        assert!(!apply(
            &mut entries,
            vec![Change::Put("b".into(), e("2", 11))]
        ));
        assert!(!apply(&mut entries, vec![Change::Delete("zz".into())]));
        assert!(apply(
            &mut entries,
            vec![Change::Put("b".into(), e("3", 11))]
        ));
        // Put then delete of a new key within one response nets out to no change.
        assert!(!apply(
            &mut entries,
            vec![
                Change::Put("c".into(), e("1", 12)),
                Change::Delete("c".into())
            ]
        ));
    }
}
