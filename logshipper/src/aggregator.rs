//! The accept path every input goes through: journal first, then the store.
//!
//! [`Aggregator::accept`] takes one batch of parsed lines, appends it to the
//! [`Journal`] (which assigns each line its id and hands the records to the OS) and then
//! pushes it to the per-app [`Store`] (recent lines, followers). A batch the journal
//! refused is not in the store either, and the caller learns it; a store failure after
//! the journal took the lines only affects the on-disk copy of recent lines, so it is
//! counted and logged, not returned.
//!
//! Replays are dropped here: [`Aggregator::accept_batch`] hands each line's sender
//! [`Origin`] to the journal, which leaves out lines whose (HOSTNAME, spool id) it already
//! holds (see [`crate::dedupe`]); they are counted in `logshipper_duplicates_dropped_total`
//! and never reach the store.
//!
//! [`Aggregator::sync`] waits until everything accepted so far is fsynced (group commit
//! in the journal); forward `chunk` acks are sent only after it returns.
//!
//! [`Aggregator::persist`], run every second by the service, fsyncs the journal and has
//! the store write its recent lines to disk (they are not written per line); the
//! journal reader [`STORE_READER`] records up to which id the store's disk copy is
//! complete, and [`Aggregator::recover_store`] replays the lines after it at start. A
//! flush reads the journal's last id while no batch is between its journal append and
//! its store push (`accepting`), so every line up to that id is in the store's memory
//! when the flush writes it.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use thiserror::Error;
use tokio_util::sync::CancellationToken;

use crate::dedupe::Origin;
use crate::journal::{Appended, Journal, JournalError, JournalReader, ReadBatch};
use crate::line::LogLine;
use crate::metrics::IngestMetrics;
use crate::store::Store;

/// Why a batch could not be accepted or made durable.
#[derive(Debug, Error)]
pub enum AcceptError {
    /// The journal could not append or fsync; the batch is not accepted.
    #[error("journal: {0}")]
    Journal(#[from] JournalError),
}

/// The lines decoded from one read of a connection, with the sender's [`Origin`] of each.
///
/// Invariant: `origins` is empty or has one entry per line ([`Batch::push`] keeps it so).
#[derive(Debug, Default, PartialEq)]
pub struct Batch {
    /// The lines, in arrival order.
    pub lines: Vec<LogLine>,
    /// The origin of each line, when its sender numbered it.
    pub origins: Vec<Option<Origin>>,
}

impl Batch {
    /// Adds a line and its origin.
    pub fn push(&mut self, line: LogLine, origin: Option<Origin>) {
        self.lines.push(line);
        self.origins.push(origin);
    }

    /// Number of lines.
    pub fn len(&self) -> usize {
        self.lines.len()
    }

    /// Whether there is no line.
    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    /// Takes the lines out, leaving an empty batch with the same capacities (batches are
    /// similar in size, so this avoids regrowing the vectors on every read).
    pub fn take(&mut self) -> Batch {
        let (lines, origins) = (self.lines.capacity(), self.origins.capacity());
        Batch {
            lines: std::mem::replace(&mut self.lines, Vec::with_capacity(lines)),
            origins: std::mem::replace(&mut self.origins, Vec::with_capacity(origins)),
        }
    }
}

/// Name of the journal reader whose cursor is the last id the store's disk copy covers.
pub const STORE_READER: &str = "store";

/// Shared accept path (cheap to clone).
#[derive(Clone)]
pub struct Aggregator {
    journal: Journal,
    store: Arc<Store>,
    metrics: IngestMetrics,
    /// Held shared by every accept from its journal append to its store push, and
    /// exclusively by a store flush while it reads the journal's last id.
    accepting: Arc<RwLock<()>>,
}

impl Aggregator {
    /// Wires the journal, the store and the ingest metrics together.
    pub fn new(journal: Journal, store: Arc<Store>, metrics: IngestMetrics) -> Self {
        Aggregator {
            journal,
            store,
            metrics,
            accepting: Arc::new(RwLock::new(())),
        }
    }

    /// Accepts a batch: assigns ids (journal), then adds it to the store. Returns the last
    /// id assigned (the journal's current last id for an empty batch).
    pub fn accept(&self, lines: Vec<LogLine>) -> Result<u64, AcceptError> {
        let batch = Batch {
            lines,
            origins: Vec::new(),
        };
        Ok(self.accept_batch(batch)?.last)
    }

    /// Accepts a batch whose lines may carry their sender's origin, dropping replays of
    /// lines already accepted. Returns the last id and how many lines were dropped.
    pub fn accept_batch(&self, batch: Batch) -> Result<Appended, AcceptError> {
        let Batch { mut lines, origins } = batch;
        let _accepting = self.accepting.read().expect("accept lock poisoned");
        let appended = self.journal.append_from(&mut lines, &origins)?;
        if appended.duplicates > 0 {
            self.metrics.duplicates.inc_by(appended.duplicates);
            tracing::info!(
                dropped = appended.duplicates,
                kept = lines.len(),
                "dropped lines a sender replayed"
            );
        }
        if lines.is_empty() {
            return Ok(appended);
        }
        self.count_store_errors(self.store.push(lines));
        Ok(appended)
    }

    /// Replays into the store the journaled lines its disk copy lacks (accepted after
    /// the last flush before a stop or crash); returns the store's journal reader, for
    /// [`Aggregator::persist`], and the number of lines replayed.
    ///
    /// Call before the inputs start.
    pub async fn recover_store(&self) -> Result<(JournalReader, u64), JournalError> {
        let mut reader = self.journal.reader(STORE_READER)?;
        let end = self.journal.stats().last_id;
        let mut next = reader.committed() + 1;
        let mut replayed = 0;
        while next <= end {
            match reader.next_batch(4096).await? {
                ReadBatch::Lines(lines) => {
                    next = lines.last().map_or(next, |l| l.id + 1);
                    replayed += lines.len() as u64;
                    self.count_store_errors(self.store.replay(lines));
                }
                ReadBatch::Dropped { count, through_id } => {
                    tracing::warn!(
                        lost = count,
                        through_id,
                        "journal lines the store had not flushed were deleted; they are missing from the recent lines"
                    );
                    next = through_id + 1;
                }
            }
        }
        if replayed > 0 {
            tracing::info!(replayed, "recent lines recovered from the journal");
        }
        Ok((reader, replayed))
    }

    /// Makes what was accepted so far durable, the periodic step of a running
    /// aggregator: fsyncs the journal (group commit, so inputs without acks such as
    /// syslog lose at most one period in a machine crash), writes the store's new lines
    /// and moves `reader` (from [`Aggregator::recover_store`]) to the last id they cover,
    /// so the journal may free what precedes it. When an app's lines cannot be written
    /// the cursor stays, and a restart replays them.
    pub async fn persist(&self, reader: &mut JournalReader) -> Result<(), JournalError> {
        self.journal.sync().await?;
        let through = {
            let _quiet = self.accepting.write().expect("accept lock poisoned");
            self.journal.stats().last_id
        };
        let store = Arc::clone(&self.store);
        let errors =
            crate::journal::joined(tokio::task::spawn_blocking(move || store.flush()).await)?;
        if errors.is_empty() {
            reader.commit_relaxed(through).await?;
        } else {
            self.count_store_errors(errors);
        }
        Ok(())
    }

    /// Runs [`Aggregator::persist`] every `every` (a failure is logged and tried again
    /// next period) and once more when `stop` is cancelled, after the inputs have
    /// stopped, so that last one covers every accepted line; returns its outcome.
    pub async fn persist_every(
        self,
        mut reader: JournalReader,
        every: Duration,
        stop: CancellationToken,
    ) -> Result<(), JournalError> {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.cancelled() => return self.persist(&mut reader).await,
            }
            if let Err(e) = self.persist(&mut reader).await {
                tracing::error!(error = %e, "persisting the journal and the store failed; trying again next period");
            }
        }
    }

    fn count_store_errors(&self, errors: Vec<crate::store::StoreError>) {
        for e in errors {
            tracing::error!(error = %e, "lines are journaled (drains get them) but not kept in the store");
            if let Some((n, reason)) = e.dropped() {
                self.metrics.dropped(reason, n);
            }
        }
    }

    /// Waits until every line accepted before the call is durable.
    pub async fn sync(&self) -> Result<(), AcceptError> {
        Ok(self.journal.sync().await?)
    }

    /// The store the accepted lines go to.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// The ingest metrics, for inputs to count what they receive.
    pub fn metrics(&self) -> &IngestMetrics {
        &self.metrics
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::JournalConfig;
    use crate::line::Stream;
    use crate::store::{Filter, StoreConfig};

    fn line(app: &str, msg: &str) -> LogLine {
        LogLine {
            id: 0,
            app: app.into(),
            process_type: None,
            job: None,
            host: None,
            stream: Stream::Stdout,
            timestamp_ns: 1,
            message: msg.into(),
        }
    }

    #[tokio::test]
    async fn ids_come_from_the_journal_and_lines_reach_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path().join("journal"), JournalConfig::default()).unwrap();
        let store = Arc::new(Store::open(StoreConfig::new(dir.path().join("store"))).unwrap());
        let mut registry = prometheus_client::registry::Registry::default();
        let agg = Aggregator::new(
            journal.clone(),
            Arc::clone(&store),
            IngestMetrics::register(&mut registry),
        );
        assert_eq!(agg.accept(vec![line("a", "1"), line("b", "2")]).unwrap(), 2);
        assert_eq!(agg.accept(vec![line("a", "3")]).unwrap(), 3);
        assert_eq!(agg.accept(Vec::new()).unwrap(), 3);
        agg.sync().await.unwrap();
        let ids: Vec<u64> = store
            .tail("a", 10, &Filter::default())
            .iter()
            .map(|l| l.id)
            .collect();
        assert_eq!(ids, vec![1, 3]);
    }

    /// Opens journal, store and aggregator over `dir`, as a (re)start does, and recovers
    /// the store; returns how many lines the recovery replayed.
    async fn open(dir: &std::path::Path, lines_per_app: usize) -> (Aggregator, JournalReader, u64) {
        let journal = Journal::open(dir.join("journal"), JournalConfig::default()).unwrap();
        let mut config = StoreConfig::new(dir.join("store"));
        config.lines_per_app = lines_per_app;
        let store = Arc::new(Store::open(config).unwrap());
        let mut registry = prometheus_client::registry::Registry::default();
        let agg = Aggregator::new(journal, store, IngestMetrics::register(&mut registry));
        let (reader, replayed) = agg.recover_store().await.unwrap();
        (agg, reader, replayed)
    }

    fn messages(agg: &Aggregator, app: &str) -> Vec<String> {
        agg.store()
            .tail(app, 100, &Filter::default())
            .into_iter()
            .map(|l| l.message)
            .collect()
    }

    #[tokio::test]
    async fn lines_after_the_last_flush_come_back_from_the_journal_once() {
        let dir = tempfile::tempdir().unwrap();
        let (agg, mut reader, replayed) = open(dir.path(), 4).await;
        assert_eq!(replayed, 0);
        agg.accept(vec![line("a", "1"), line("a", "2"), line("b", "x")])
            .unwrap();
        agg.persist(&mut reader).await.unwrap();
        agg.accept(vec![line("a", "3"), line("a", "4"), line("a", "5")])
            .unwrap();
        // A crash: no flush after the second batch.
        drop((agg, reader));
        let (agg, mut reader, replayed) = open(dir.path(), 4).await;
        assert_eq!(replayed, 3, "only the unflushed batch is replayed");
        assert_eq!(messages(&agg, "a"), ["2", "3", "4", "5"]);
        assert_eq!(messages(&agg, "b"), ["x"]);
        // A clean stop flushes; the next start replays nothing and shows the same lines.
        agg.persist(&mut reader).await.unwrap();
        drop((agg, reader));
        let (agg, reader, replayed) = open(dir.path(), 4).await;
        assert_eq!(replayed, 0);
        assert_eq!(messages(&agg, "a"), ["2", "3", "4", "5"]);
        // A crash between writing the segments and moving the cursor: the replayed lines
        // that are already on disk are not shown twice.
        agg.accept(vec![line("a", "6")]).unwrap();
        agg.store().flush();
        drop((agg, reader));
        let (agg, _reader, replayed) = open(dir.path(), 4).await;
        assert_eq!(replayed, 1);
        assert_eq!(messages(&agg, "a"), ["3", "4", "5", "6"]);
    }
}
