//! A named reader of the journal: reads lines after its cursor, commits delivered ids.
//!
//! The reader keeps one open segment with a fixed-size read buffer and its next id; it
//! never holds more than the `max` lines the caller asked for. Its in-memory position may
//! run ahead of the committed cursor (lines read but not yet delivered); after a restart
//! it resumes at `committed + 1`, so delivery is at-least-once and sinks dedupe on ids.

use std::fs::File;
use std::io::BufReader;
use std::sync::Arc;

use tokio::sync::watch;

use super::record::{self, ReadRecord};
use super::{cursor, io_err, segment_path, JournalError, Shared};
use crate::line::LogLine;

const READ_BUFFER: usize = 256 * 1024;

/// What one [`JournalReader::next_batch`] call produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadBatch {
    /// The next lines in id order (at least one).
    Lines(Vec<LogLine>),
    /// Lines this reader had not read were deleted (journal over `max_bytes`, or a damaged
    /// segment); the reader skipped them and continues after `through_id`.
    Dropped {
        /// How many lines were lost.
        count: u64,
        /// The last lost id; committing it records that the drop was accounted for.
        through_id: u64,
    },
}

struct OpenSegment {
    first_id: u64,
    file: BufReader<File>,
}

/// A cursor over the journal under one name; only one per name is open at a time.
pub struct JournalReader {
    shared: Arc<Shared>,
    name: String,
    next_id: u64,
    committed: u64,
    segment: Option<OpenSegment>,
    written: watch::Receiver<u64>,
    payload: Vec<u8>,
    /// Id of a record with a valid crc that could not be decoded, to report as dropped.
    undecodable: Option<u64>,
}

/// How the reader finished scanning for lines.
enum Scan {
    /// Filled or caught up with the published id.
    Done,
    /// The open segment is damaged at the current position.
    Damaged(&'static str),
}

impl JournalReader {
    pub(super) fn new(shared: Arc<Shared>, name: String, committed: u64) -> Self {
        let written = shared.written.subscribe();
        JournalReader {
            shared,
            name,
            next_id: committed + 1,
            committed,
            segment: None,
            written,
            payload: Vec::new(),
            undecodable: None,
        }
    }

    /// The last committed id (everything up to it was delivered).
    pub fn committed(&self) -> u64 {
        self.committed
    }

    /// Returns up to `max` lines after the last one read, waiting until one exists.
    ///
    /// Cancel-safe: nothing is consumed before the only await point.
    pub async fn next_batch(&mut self, max: usize) -> Result<ReadBatch, JournalError> {
        let max = max.max(1);
        loop {
            if let Some(id) = self.undecodable.take() {
                return Ok(ReadBatch::Dropped {
                    count: 1,
                    through_id: id,
                });
            }
            let published = *self.written.borrow_and_update();
            let first_retained = {
                let st = self.shared.lock();
                st.segments.front().map_or(st.next_id, |s| s.first_id)
            };
            if self.next_id < first_retained {
                let count = first_retained - self.next_id;
                self.next_id = first_retained;
                self.segment = None;
                return Ok(ReadBatch::Dropped {
                    count,
                    through_id: first_retained - 1,
                });
            }
            if self.next_id <= published {
                let mut lines = Vec::with_capacity(max.min(4096));
                let scanned = match self.scan(&mut lines, max, published) {
                    // The lines read before the error are past `next_id` already: hand
                    // them over (dropping them here would lose them silently); the
                    // error, or a drop report if the segments were deleted meanwhile,
                    // comes with the next call.
                    Err(e) if !lines.is_empty() => {
                        tracing::warn!(reader = %self.name, error = %e, "journal: read stopped after {} lines", lines.len());
                        self.segment = None;
                        return Ok(ReadBatch::Lines(lines));
                    }
                    r => r?,
                };
                match scanned {
                    Scan::Done if !lines.is_empty() => return Ok(ReadBatch::Lines(lines)),
                    Scan::Done if self.undecodable.is_some() => continue,
                    Scan::Done => {}
                    Scan::Damaged(_) if !lines.is_empty() => {
                        // Hand over good lines first; the damage is found again next call.
                        self.segment = None;
                        return Ok(ReadBatch::Lines(lines));
                    }
                    Scan::Damaged(why) => return self.skip_damaged(why),
                }
            }
            if self.written.changed().await.is_err() {
                // The sender lives in `shared`, which this reader keeps alive.
                unreachable!("journal writer dropped while a reader holds it");
            }
        }
    }

    /// Reads records into `lines` until `max`, or the published id, is reached.
    fn scan(
        &mut self,
        lines: &mut Vec<LogLine>,
        max: usize,
        published: u64,
    ) -> Result<Scan, JournalError> {
        while lines.len() < max && self.next_id <= published {
            let seg = match self.segment.as_mut() {
                Some(seg) => seg,
                None => self.segment.insert(self.open_segment_for(self.next_id)?),
            };
            let seg_first = seg.first_id;
            match record::read_record(&mut seg.file, &mut self.payload)
                .map_err(io_err(&segment_path(&self.shared.dir, seg_first)))?
            {
                ReadRecord::Record { id, .. } if id < self.next_id => {}
                ReadRecord::Record { id, .. } if id == self.next_id => {
                    self.next_id += 1;
                    match record::decode_payload(id, &self.payload) {
                        Ok(line) => lines.push(line),
                        Err(e) => {
                            // Valid crc, unknown content (format change or bug): skip
                            // this one record and report it, rather than stall the reader.
                            tracing::error!(reader = %self.name, id, error = %e, "journal: undecodable record, skipping it");
                            self.undecodable = Some(id);
                            return Ok(Scan::Done);
                        }
                    }
                }
                ReadRecord::Record { .. } => return Ok(Scan::Damaged("id gap")),
                ReadRecord::End | ReadRecord::Torn => {
                    // The id must then be in a later segment; if the lookup finds this one
                    // again the bookkeeping and the file disagree.
                    let next = self.open_segment_for(self.next_id)?;
                    if next.first_id == seg_first {
                        return Ok(Scan::Damaged("segment ends early"));
                    }
                    self.segment = Some(next);
                }
                ReadRecord::Corrupt(why) => return Ok(Scan::Damaged(why)),
            }
        }
        Ok(Scan::Done)
    }

    /// Skips the rest of a damaged segment, reporting its unread lines as dropped.
    fn skip_damaged(&mut self, why: &'static str) -> Result<ReadBatch, JournalError> {
        let seg_first = self.segment.as_ref().map_or(self.next_id, |s| s.first_id);
        let next_first = {
            let st = self.shared.lock();
            st.segments
                .iter()
                .map(|s| s.first_id)
                .find(|&f| f > seg_first)
        };
        let Some(next_first) = next_first else {
            return Err(JournalError::Missing {
                segment: seg_first,
                id: self.next_id,
            });
        };
        tracing::error!(
            reader = %self.name,
            segment = seg_first,
            from_id = self.next_id,
            to_id = next_first - 1,
            reason = why,
            "journal: damaged segment, skipping its remaining lines"
        );
        let count = next_first - self.next_id;
        self.next_id = next_first;
        self.segment = None;
        Ok(ReadBatch::Dropped {
            count,
            through_id: next_first - 1,
        })
    }

    fn open_segment_for(&self, id: u64) -> Result<OpenSegment, JournalError> {
        let first_id = {
            let st = self.shared.lock();
            st.segments
                .iter()
                .rev()
                .map(|s| s.first_id)
                .find(|&f| f <= id)
        }
        .ok_or(JournalError::Missing { segment: 0, id })?;
        let p = segment_path(&self.shared.dir, first_id);
        let file = File::open(&p).map_err(io_err(&p))?;
        Ok(OpenSegment {
            first_id,
            file: BufReader::with_capacity(READ_BUFFER, file),
        })
    }

    /// Persists that every line up to `id` was delivered; frees fully committed segments.
    pub async fn commit(&mut self, id: u64) -> Result<(), JournalError> {
        self.commit_with(id, true).await
    }

    /// Like [`JournalReader::commit`] but without fsync: after a machine crash the cursor
    /// may be an older one, so lines after it are read again. For readers that can take
    /// that (the store, whose replay skips what it already holds); the fsync would force
    /// the file system to write out every dirty journal page first, hundreds of
    /// milliseconds under load.
    pub async fn commit_relaxed(&mut self, id: u64) -> Result<(), JournalError> {
        self.commit_with(id, false).await
    }

    async fn commit_with(&mut self, id: u64, sync: bool) -> Result<(), JournalError> {
        let last = *self.written.borrow();
        if id > last {
            return Err(JournalError::CommitBeyondEnd { id, last });
        }
        if id <= self.committed {
            return Ok(());
        }
        let dir = self.shared.cursors_dir.clone();
        let name = self.name.clone();
        let written = tokio::task::spawn_blocking(move || {
            cursor::store(&dir, &name, id, sync).map_err(io_err(&cursor::path(&dir, &name)))
        })
        .await;
        super::joined(written)??;
        self.committed = id;
        let mut doomed = Vec::new();
        {
            let mut st = self.shared.lock();
            if let Some(entry) = st.readers.get_mut(&self.name) {
                entry.committed = id;
            }
            self.shared.delete_acknowledged(&mut st, &mut doomed);
        }
        if !doomed.is_empty() {
            super::joined(tokio::task::spawn_blocking(move || super::remove_files(doomed)).await)?;
        }
        Ok(())
    }
}

impl Drop for JournalReader {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        if let Some(entry) = st.readers.get_mut(&self.name) {
            entry.open = false;
        }
    }
}
