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

use std::sync::Arc;

use thiserror::Error;

use crate::dedupe::Origin;
use crate::journal::{Appended, Journal, JournalError};
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

/// Shared accept path (cheap to clone).
#[derive(Clone)]
pub struct Aggregator {
    journal: Journal,
    store: Arc<Store>,
    metrics: IngestMetrics,
}

impl Aggregator {
    /// Wires the journal, the store and the ingest metrics together.
    pub fn new(journal: Journal, store: Arc<Store>, metrics: IngestMetrics) -> Self {
        Aggregator {
            journal,
            store,
            metrics,
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
        for e in self.store.push(lines) {
            tracing::error!(error = %e, "lines are journaled (drains get them) but not kept in the store");
            if let Some((n, reason)) = e.dropped() {
                self.metrics.dropped(reason, n);
            }
        }
        Ok(appended)
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
}
