//! The journal: an append-only, disk-backed log of [`LogLine`]s with named, persisted
//! reader cursors. Drains read from it so a sink outage loses nothing and memory stays
//! bounded; the host agent's shipper uses one as its spool.
//!
//! # On-disk format
//!
//! ```text
//! <dir>/
//!   00000000000000000001.seg      segment: records with ids 1..
//!   00000000000000052113.seg      next segment: file name = first id it holds (20 digits)
//!   00000000000000052113.marks    sender marks as of that segment's start (see [`checkpoint`])
//!   cursors/
//!     es-main.cursor              12 bytes: committed id u64le + crc32(u64le)
//! ```
//!
//! A segment is a plain sequence of records (see [`record`]): `len u32le | crc u32le |
//! id u64le | payload`, payload = the line as a MessagePack map. Ids are consecutive across
//! segments: a segment's first record has the id in its file name. The last segment is the
//! *active* one; only it is written to.
//!
//! # Invariants
//!
//! - Ids start at 1, increase by one per line, and never repeat, also across restarts
//!   (the active segment's name records the next id even when it is empty).
//! - Every record with id <= the published last id is completely written to the OS, so a
//!   reader never sees a partial record for an id it was told exists.
//! - The active segment is never deleted. A segment is deleted when every known reader
//!   has committed past its last id, or, oldest first, when the journal exceeds
//!   `max_bytes` (lines dropped; readers behind learn it as [`ReadBatch::Dropped`]).
//! - Memory does not grow with the backlog: the writer keeps at most one bounded scratch
//!   buffer per thread after `append` returns, readers read at most `max` lines at a time through a fixed-size buffer, and
//!   the segment list holds one small entry per segment.
//!
//! # Flows
//!
//! - **Write**: [`Journal::append`] encodes the records (header placeholders + payloads)
//!   into one reused per-thread buffer outside the lock, then under it assigns ids, fills
//!   in the headers and writes the buffer to the active segment with one `write_all`.
//!   When the segment reaches `segment_bytes` a new one is created with its sender-mark
//!   checkpoint; the full segment and the directory are fsynced by the next
//!   [`Journal::sync`], not under the lock, so a roll does not stall every input for
//!   the length of an fsync of a whole segment. Then the last id is published to
//!   waiting readers.
//! - **Dedupe**: [`Journal::append_from`] also takes each line's [`Origin`] (the sender's
//!   spool id). Under the same lock that assigns ids, each line is judged against the
//!   sender marks ([`crate::dedupe`]); replays are left out, accepted origins are stored
//!   in the record and move the marks. Deciding and writing under one lock means two
//!   connections of one sender cannot both get a line in. On a write error the marks
//!   are put back (a later replay of the batch is accepted again: duplicates, not loss).
//! - **Sync**: [`Journal::sync`] is a group commit: concurrent callers share one fsync of
//!   the active segment (and of segments closed since the last sync, and the
//!   directory); a caller returns once an fsync covering its lines completed.
//! - **Read**: [`JournalReader::next_batch`] starts at `committed + 1`, locates the segment
//!   holding that id (largest first id <= id), skips records before it, and returns up to
//!   `max` lines, waiting for a publish when it has caught up. Reads are small buffered
//!   reads of local files done inline; the only await happens before any line is read,
//!   so the future is cancel-safe.
//! - **Ack**: [`JournalReader::commit`] writes the cursor file atomically (tmp, fsync,
//!   rename), then deletes segments every reader has fully committed. Files are removed
//!   after the lock is released (an unlink of a large file can take tens of ms).
//! - **Delete/drop**: after an append, while the total size exceeds `max_bytes` and more
//!   than one segment exists, the oldest segment is deleted. A reader whose next id is
//!   below the oldest retained id skips to it and reports how many lines it lost.
//! - **Recovery**: on open, the active segment is scanned; a torn or corrupt tail (a crash
//!   mid-write) is truncated at the last valid record and logged. If a cursor is ahead of
//!   the recovered data (unsynced records lost in a machine crash), ids continue after
//!   the highest cursor in a new segment, so no id is ever reused. Older segments are
//!   trusted; if a reader later finds corruption in one, it skips the rest of that segment
//!   and reports the skipped lines as dropped. The sender marks are rebuilt from the
//!   newest readable checkpoint plus the origins stored in the segments from there on
//!   (all segments when there is none), so they cover every journaled line.
//!
//! A new reader name starts at the end of the journal (it sees lines appended after it
//! was first created); its cursor file is written at creation so this survives restarts.

pub mod checkpoint;
pub mod cursor;
pub mod reader;
pub mod record;

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;

use crate::dedupe::{Mark, Marks, Origin, Verdict};
use crate::line::LogLine;
pub use reader::{JournalReader, ReadBatch};
use record::{ReadRecord, RecordError};

/// Size limits of a journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalConfig {
    /// A segment is closed and a new one started once it holds this many bytes.
    pub segment_bytes: u64,
    /// Total bytes kept on disk; beyond it the oldest segments are deleted (lines dropped).
    pub max_bytes: u64,
}

impl Default for JournalConfig {
    fn default() -> Self {
        Self {
            segment_bytes: 64 * 1024 * 1024,
            max_bytes: 4 * 1024 * 1024 * 1024,
        }
    }
}

/// Errors from the journal.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// The runtime is shutting down and cancelled a blocking file task; nothing was
    /// committed by it.
    #[error("journal task cancelled: the runtime is shutting down")]
    Cancelled,
    /// A file system operation on the journal directory failed.
    #[error("journal I/O on {path}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A line could not be encoded, or a record with a valid crc could not be decoded.
    #[error("journal record: {0}")]
    Record(#[from] RecordError),
    /// The configuration is unusable (zero sizes, max smaller than a segment).
    #[error("invalid journal config: {0}")]
    Config(&'static str),
    /// A reader name is empty, too long or has characters other than `[A-Za-z0-9._-]`.
    #[error("invalid reader name {0:?}")]
    InvalidReaderName(String),
    /// A reader with this name is already open in this process.
    #[error("reader {0:?} is already open")]
    ReaderBusy(String),
    /// A commit named an id that was never appended.
    #[error("commit of id {id} beyond last appended id {last}")]
    CommitBeyondEnd {
        /// The id passed to commit.
        id: u64,
        /// The last id in the journal.
        last: u64,
    },
    /// A segment lacks a record the journal's bookkeeping says it holds.
    #[error("segment {segment} does not hold id {id}")]
    Missing {
        /// The segment's first id.
        segment: u64,
        /// The id that was expected.
        id: u64,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> JournalError + '_ {
    move |source| JournalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A point-in-time view of the journal's size, for status and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalStats {
    /// Oldest id still on disk.
    pub first_id: u64,
    /// Last id appended (0 when nothing was ever appended).
    pub last_id: u64,
    /// Last id known to be fsynced ([`Journal::sync`]); lines after it would be lost
    /// in a machine crash.
    pub synced_id: u64,
    /// Bytes in all segments.
    pub bytes: u64,
    /// Number of segment files.
    pub segments: usize,
}

/// A disk-backed, append-only line log with named reader cursors. Cheap to clone.
#[derive(Clone)]
pub struct Journal {
    shared: Arc<Shared>,
}

struct Shared {
    dir: PathBuf,
    cursors_dir: PathBuf,
    config: JournalConfig,
    state: Mutex<State>,
    /// Last id written to the OS; readers wait on it.
    written: watch::Sender<u64>,
    /// Last id known to be fsynced.
    synced: AtomicU64,
    /// Serializes fsyncs so concurrent `sync` callers share one.
    sync_lock: tokio::sync::Mutex<()>,
}

struct Segment {
    first_id: u64,
    bytes: u64,
}

struct State {
    active: Arc<File>,
    segments: VecDeque<Segment>,
    total_bytes: u64,
    next_id: u64,
    readers: HashMap<String, ReaderEntry>,
    /// Highest origin id journaled per sender (covers every line up to `next_id - 1`).
    marks: Marks,
    /// Segments closed, and checkpoints written, since the last [`Journal::sync`], not yet
    /// fsynced.
    unsynced: Vec<(Arc<File>, PathBuf)>,
    /// A segment was created since the last sync: the directory needs an fsync.
    dir_dirty: bool,
}

/// What [`Journal::append_from`] did with a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// The last id assigned (the journal's last id when no line was written).
    pub last: u64,
    /// Lines left out as replays of lines already journaled.
    pub duplicates: u64,
}

/// Largest scratch buffer kept per thread between appends.
const SCRATCH_KEEP: usize = 4 << 20;

thread_local! {
    /// Reused encode buffer of [`Journal::append_from`], so a batch does not allocate.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

struct ReaderEntry {
    committed: u64,
    open: bool,
}

fn segment_path(dir: &Path, first_id: u64) -> PathBuf {
    dir.join(format!("{first_id:020}.seg"))
}

fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".seg")?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

fn fsync_dir(dir: &Path) -> Result<(), JournalError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

impl Journal {
    /// Opens (or creates) the journal in `dir`, recovering from a torn last write.
    pub fn open(dir: impl AsRef<Path>, config: JournalConfig) -> Result<Journal, JournalError> {
        if config.segment_bytes == 0 {
            return Err(JournalError::Config("segment_bytes must be > 0"));
        }
        if config.max_bytes < config.segment_bytes {
            return Err(JournalError::Config("max_bytes must be >= segment_bytes"));
        }
        let dir = dir.as_ref().to_path_buf();
        let cursors_dir = dir.join("cursors");
        fs::create_dir_all(&cursors_dir).map_err(io_err(&cursors_dir))?;

        let readers = load_cursors(&cursors_dir)?;
        let mut firsts = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io_err(&dir))? {
            let entry = entry.map_err(io_err(&dir))?;
            if let Some(first) = entry.file_name().to_str().and_then(parse_segment_name) {
                firsts.push(first);
            }
        }
        firsts.sort_unstable();

        let mut segments = VecDeque::new();
        let mut total_bytes = 0;
        for &first in firsts.iter().take(firsts.len().saturating_sub(1)) {
            let p = segment_path(&dir, first);
            let bytes = fs::metadata(&p).map_err(io_err(&p))?.len();
            total_bytes += bytes;
            segments.push_back(Segment {
                first_id: first,
                bytes,
            });
        }
        let max_committed = readers.values().map(|r| r.committed).max().unwrap_or(0);
        let (mut active_first, mut active_bytes, mut next_id) = match firsts.last() {
            Some(&first) => {
                let (bytes, next) = recover_active(&segment_path(&dir, first), first)?;
                (first, bytes, next)
            }
            None => {
                let first = max_committed + 1;
                (first, 0, first)
            }
        };
        if next_id <= max_committed {
            // A machine crash lost unsynced records that a reader had already committed.
            // Reusing those ids would make that reader skip new lines: start a new
            // segment after the highest cursor; readers see the hole as dropped lines.
            tracing::warn!(
                recovered_next_id = next_id,
                max_committed,
                "journal: cursors are ahead of the recovered data, continuing after them"
            );
            total_bytes += active_bytes;
            segments.push_back(Segment {
                first_id: active_first,
                bytes: active_bytes,
            });
            active_first = max_committed + 1;
            active_bytes = 0;
            next_id = active_first;
        }
        let active_path = segment_path(&dir, active_first);
        let active = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&active_path)
            .map_err(io_err(&active_path))?;
        active.sync_all().map_err(io_err(&active_path))?;
        fsync_dir(&dir)?;
        total_bytes += active_bytes;
        segments.push_back(Segment {
            first_id: active_first,
            bytes: active_bytes,
        });

        let marks = rebuild_marks(&dir, &segments);
        let last = next_id - 1;
        let (written, _) = watch::channel(last);
        let journal = Journal {
            shared: Arc::new(Shared {
                dir,
                cursors_dir,
                config,
                state: Mutex::new(State {
                    active: Arc::new(active),
                    segments,
                    total_bytes,
                    next_id,
                    readers,
                    marks,
                    unsynced: Vec::new(),
                    dir_dirty: false,
                }),
                written,
                synced: AtomicU64::new(last),
                sync_lock: tokio::sync::Mutex::new(()),
            }),
        };
        let mut doomed = Vec::new();
        {
            let mut st = journal.shared.lock();
            journal.shared.delete_acknowledged(&mut st, &mut doomed);
            journal.shared.enforce_max_bytes(&mut st, &mut doomed);
        }
        remove_files(doomed);
        tracing::info!(dir = %journal.shared.dir.display(), next_id, "journal opened");
        Ok(journal)
    }

    /// Appends lines, assigning each its id; returns the last id assigned.
    ///
    /// All or nothing for bad input: if any line is over the record limit, none is
    /// written and the error says so.
    ///
    /// On return the records are written to the OS (visible to readers, safe from a
    /// process crash); call [`Journal::sync`] for safety from a machine crash. With no
    /// lines it returns the current last id.
    pub fn append(&self, lines: &mut [LogLine]) -> Result<u64, JournalError> {
        Ok(self.write_batch(lines, &[])?.last)
    }

    /// Appends lines that may carry their sender's [`Origin`] (`origins` is empty or has
    /// one entry per line), leaving out replays of lines already journaled (see
    /// [`crate::dedupe`]): they are removed from `lines`; the others get their ids.
    ///
    /// Same guarantees as [`Journal::append`].
    pub fn append_from(
        &self,
        lines: &mut Vec<LogLine>,
        origins: &[Option<Origin>],
    ) -> Result<Appended, JournalError> {
        let appended = self.write_batch(lines, origins)?;
        if appended.duplicates > 0 {
            // Left-out lines are the ones that got no id.
            lines.retain(|l| l.id != 0);
        }
        Ok(appended)
    }

    /// Encodes, dedupes and writes a batch; left-out lines get id 0.
    fn write_batch(
        &self,
        lines: &mut [LogLine],
        origins: &[Option<Origin>],
    ) -> Result<Appended, JournalError> {
        assert!(
            origins.is_empty() || origins.len() == lines.len(),
            "one origin per line"
        );
        SCRATCH.with(|scratch| {
            let mut buf = scratch.borrow_mut();
            buf.clear();
            let result = self.write_batch_with(&mut buf, lines, origins);
            if buf.capacity() > SCRATCH_KEEP {
                *buf = Vec::new();
            }
            result
        })
    }

    fn write_batch_with(
        &self,
        buf: &mut Vec<u8>,
        lines: &mut [LogLine],
        origins: &[Option<Origin>],
    ) -> Result<Appended, JournalError> {
        let origin_of = |i: usize| origins.get(i).and_then(Option::as_ref);
        // Records with placeholder headers; ids and crcs are filled in under the lock.
        let mut ends = Vec::with_capacity(lines.len());
        for (i, line) in lines.iter().enumerate() {
            buf.resize(buf.len() + record::HEADER_LEN, 0);
            if let Err(e) = record::encode_payload_into(buf, line, origin_of(i)) {
                return Err(e.into());
            }
            ends.push(buf.len());
        }
        let sh = &self.shared;
        let mut st = sh.lock();
        let mut undo: Vec<(String, Option<Mark>)> = Vec::new();
        let result = sh.place(&mut st, buf, &ends, lines, origins, &mut undo);
        if result.is_err() {
            for (sender, previous) in undo {
                st.marks.restore(&sender, previous);
            }
        }
        let duplicates = result?;
        let mut doomed = Vec::new();
        sh.enforce_max_bytes(&mut st, &mut doomed);
        let last = st.next_id - 1;
        drop(st);
        // Publish outside the lock, but never backwards: a batch that took its ids
        // earlier may publish after a later one did, and readers wait for the maximum.
        sh.written.send_if_modified(|published| {
            let newer = last > *published;
            if newer {
                *published = last;
            }
            newer
        });
        remove_files(doomed);
        Ok(Appended { last, duplicates })
    }

    /// Waits until every line appended before this call is fsynced (group commit).
    pub async fn sync(&self) -> Result<(), JournalError> {
        let sh = &self.shared;
        let target = *sh.written.borrow();
        if sh.synced.load(Ordering::Acquire) >= target {
            return Ok(());
        }
        let _guard = sh.sync_lock.lock().await;
        if sh.synced.load(Ordering::Acquire) >= target {
            return Ok(());
        }
        let (files, dir_dirty, covered) = {
            let mut st = sh.lock();
            let first = st.segments.back().map_or(0, |s| s.first_id);
            let mut files = std::mem::take(&mut st.unsynced);
            files.push((Arc::clone(&st.active), segment_path(&sh.dir, first)));
            (files, std::mem::take(&mut st.dir_dirty), st.next_id - 1)
        };
        let dir = sh.dir.clone();
        let (files, synced) = tokio::task::spawn_blocking(move || {
            let mut synced = Ok(());
            for (file, path) in &files {
                if let Err(e) = file.sync_data() {
                    synced = Err(io_err(path)(e));
                    break;
                }
            }
            if synced.is_ok() && dir_dirty {
                synced = fsync_dir(&dir);
            }
            (files, synced)
        })
        .await
        .expect("fsync task panicked");
        if let Err(e) = synced {
            // The next sync tries the closed segments and the directory again.
            let mut st = sh.lock();
            let mut files = files;
            files.pop();
            st.unsynced.append(&mut files);
            st.dir_dirty |= dir_dirty;
            return Err(e);
        }
        sh.synced.fetch_max(covered, Ordering::AcqRel);
        Ok(())
    }

    /// Opens the reader `name`, creating its cursor at the journal's end if it is new.
    pub fn reader(&self, name: &str) -> Result<JournalReader, JournalError> {
        if !cursor::valid_name(name) {
            return Err(JournalError::InvalidReaderName(name.to_string()));
        }
        let sh = &self.shared;
        let mut st = sh.lock();
        let committed = match st.readers.get_mut(name) {
            Some(entry) if entry.open => return Err(JournalError::ReaderBusy(name.into())),
            Some(entry) => {
                entry.open = true;
                entry.committed
            }
            None => {
                let committed = st.next_id - 1;
                cursor::store(&sh.cursors_dir, name, committed, true)
                    .map_err(io_err(&cursor::path(&sh.cursors_dir, name)))?;
                st.readers.insert(
                    name.to_string(),
                    ReaderEntry {
                        committed,
                        open: true,
                    },
                );
                committed
            }
        };
        drop(st);
        Ok(JournalReader::new(
            Arc::clone(&self.shared),
            name.to_string(),
            committed,
        ))
    }

    /// Forgets reader `name` (its cursor file is deleted) so it no longer holds segments.
    pub fn remove_reader(&self, name: &str) -> Result<(), JournalError> {
        let sh = &self.shared;
        let mut st = sh.lock();
        match st.readers.get(name) {
            Some(entry) if entry.open => return Err(JournalError::ReaderBusy(name.into())),
            Some(_) => {}
            None => return Ok(()),
        }
        let p = cursor::path(&sh.cursors_dir, name);
        fs::remove_file(&p).map_err(io_err(&p))?;
        st.readers.remove(name);
        let mut doomed = Vec::new();
        sh.delete_acknowledged(&mut st, &mut doomed);
        drop(st);
        remove_files(doomed);
        Ok(())
    }

    /// The committed id of every known reader, by name.
    pub fn cursors(&self) -> HashMap<String, u64> {
        let st = self.shared.lock();
        st.readers
            .iter()
            .map(|(k, v)| (k.clone(), v.committed))
            .collect()
    }

    /// Current size and id range.
    pub fn stats(&self) -> JournalStats {
        let st = self.shared.lock();
        JournalStats {
            first_id: st.segments.front().map_or(st.next_id, |s| s.first_id),
            last_id: st.next_id - 1,
            synced_id: self.shared.synced.load(Ordering::Acquire),
            bytes: st.total_bytes,
            segments: st.segments.len(),
        }
    }
}

/// Scans the active segment, truncates a torn or corrupt tail, returns (bytes, next id).
fn recover_active(path: &Path, first: u64) -> Result<(u64, u64), JournalError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(io_err(path))?;
    let len = file.metadata().map_err(io_err(path))?.len();
    let mut r = BufReader::with_capacity(256 * 1024, &file);
    let mut payload = Vec::new();
    let mut good = 0u64;
    let mut next = first;
    let problem = loop {
        match record::read_record(&mut r, &mut payload).map_err(io_err(path))? {
            ReadRecord::Record { id, bytes } if id == next => {
                good += bytes;
                next += 1;
            }
            ReadRecord::Record { .. } => break Some("unexpected id"),
            ReadRecord::End => break None,
            ReadRecord::Torn => break Some("torn record"),
            ReadRecord::Corrupt(why) => break Some(why),
        }
    };
    if let Some(why) = problem {
        tracing::warn!(
            segment = %path.display(),
            valid_bytes = good,
            dropped_bytes = len - good,
            reason = why,
            "journal: truncating damaged tail of active segment"
        );
        file.set_len(good).map_err(io_err(path))?;
        (&file).seek(SeekFrom::End(0)).map_err(io_err(path))?;
        file.sync_all().map_err(io_err(path))?;
    }
    Ok((good, next))
}

/// Rebuilds the sender marks: the newest readable checkpoint, then every origin stored
/// in the segments from there on. Problems are logged; marks then cover less (a replay
/// of the uncovered lines would be accepted again).
fn rebuild_marks(dir: &Path, segments: &VecDeque<Segment>) -> Marks {
    let (from, mut marks) = segments
        .iter()
        .enumerate()
        .rev()
        .find_map(|(i, s)| checkpoint::load(dir, s.first_id).map(|m| (i, m)))
        .unwrap_or_default();
    let mut payload = Vec::new();
    let mut scanned = 0u64;
    for seg in segments.iter().skip(from) {
        let p = segment_path(dir, seg.first_id);
        let file = match File::open(&p) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(segment = %p.display(), error = %e, "journal: cannot read origins for sender marks");
                continue;
            }
        };
        let mut r = BufReader::with_capacity(256 * 1024, file);
        loop {
            match record::read_record(&mut r, &mut payload) {
                Ok(ReadRecord::Record { .. }) => {
                    scanned += 1;
                    match record::decode_origin(&payload) {
                        Ok(Some((sender, origin))) => {
                            marks.admit(Some(&sender), Some(&origin));
                        }
                        Ok(None) => {}
                        Err(e) => {
                            tracing::warn!(segment = %p.display(), error = %e, "journal: undecodable record while rebuilding sender marks");
                        }
                    }
                }
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(segment = %p.display(), error = %e, "journal: cannot read origins for sender marks");
                    break;
                }
            }
        }
    }
    tracing::info!(
        senders = marks.len(),
        records_scanned = scanned,
        "journal: sender marks rebuilt"
    );
    marks
}

fn load_cursors(dir: &Path) -> Result<HashMap<String, ReaderEntry>, JournalError> {
    let mut out = HashMap::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let file_name = entry.file_name();
        let Some(name) = file_name
            .to_str()
            .and_then(|n| n.strip_suffix(cursor::SUFFIX))
        else {
            continue;
        };
        let p = entry.path();
        let bytes = fs::read(&p).map_err(io_err(&p))?;
        // A damaged cursor replays from the start of what is retained: at-least-once.
        let committed = cursor::decode(&bytes).unwrap_or_else(|| {
            tracing::warn!(cursor = %p.display(), "journal: damaged cursor file, replaying from oldest line");
            0
        });
        out.insert(
            name.to_string(),
            ReaderEntry {
                committed,
                open: false,
            },
        );
    }
    Ok(out)
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn active_path(&self, st: &State) -> PathBuf {
        segment_path(&self.dir, st.segments.back().map_or(0, |s| s.first_id))
    }

    /// Under the lock: judges each encoded record, assigns ids, fills in headers,
    /// compacts out replays and writes the rest (rolling segments as needed). Returns
    /// the number of left-out lines; `undo` collects the marks moved.
    fn place(
        &self,
        st: &mut State,
        buf: &mut [u8],
        ends: &[usize],
        lines: &mut [LogLine],
        origins: &[Option<Origin>],
        undo: &mut Vec<(String, Option<Mark>)>,
    ) -> Result<u64, JournalError> {
        let origin_of = |i: usize| origins.get(i).and_then(Option::as_ref);
        let mut duplicates = 0;
        // buf[written..kept] is framed and not yet written; buf[start..end] is record i.
        let (mut written, mut kept, mut start) = (0, 0, 0);
        for (i, line) in lines.iter_mut().enumerate() {
            let end = ends[i];
            let active_bytes = st.segments.back().map_or(0, |s| s.bytes);
            if active_bytes + (kept - written) as u64 >= self.config.segment_bytes {
                self.write_active(st, &buf[written..kept])?;
                written = kept;
                self.roll(st)?;
            }
            let origin = origin_of(i);
            let sender = line.host.as_deref();
            let (verdict, previous) = st.marks.admit(sender, origin);
            match verdict {
                Verdict::Drop(why) => {
                    tracing::debug!(sender, ?why, "journal: dropping a replayed line");
                    line.id = 0;
                    duplicates += 1;
                    start = end;
                    continue;
                }
                Verdict::Accept(_) => {
                    // The first mark of each sender in the batch is what an undo restores.
                    if let (Some(sender), Some(_)) = (sender, origin) {
                        if !undo.iter().any(|(s, _)| s == sender) {
                            undo.push((sender.to_owned(), previous));
                        }
                    }
                }
            }
            let id = st.next_id;
            st.next_id += 1;
            line.id = id;
            if start != kept {
                buf.copy_within(start..end, kept);
            }
            let len = end - start;
            record::fill_header(&mut buf[kept..kept + len], id);
            kept += len;
            start = end;
        }
        self.write_active(st, &buf[written..kept])?;
        Ok(duplicates)
    }

    fn write_active(&self, st: &mut State, buf: &[u8]) -> Result<(), JournalError> {
        if buf.is_empty() {
            return Ok(());
        }
        (&*st.active)
            .write_all(buf)
            .map_err(io_err(&self.active_path(st)))?;
        if let Some(seg) = st.segments.back_mut() {
            seg.bytes += buf.len() as u64;
        }
        st.total_bytes += buf.len() as u64;
        Ok(())
    }

    /// Closes the active segment (fsynced by the next [`Journal::sync`]) and starts a new
    /// one at `next_id`.
    fn roll(&self, st: &mut State) -> Result<(), JournalError> {
        let old = self.active_path(st);
        let p = segment_path(&self.dir, st.next_id);
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p)
            .map_err(io_err(&p))?;
        match checkpoint::store(&self.dir, st.next_id, &st.marks) {
            Ok(file) => st
                .unsynced
                .push((Arc::new(file), checkpoint::path(&self.dir, st.next_id))),
            // Opening falls back to an older checkpoint and reads more segments.
            Err(e) => {
                tracing::error!(segment = %p.display(), error = %e, "journal: cannot write sender marks")
            }
        }
        let closed = std::mem::replace(&mut st.active, Arc::new(f));
        st.unsynced.push((closed, old));
        st.dir_dirty = true;
        st.segments.push_back(Segment {
            first_id: st.next_id,
            bytes: 0,
        });
        Ok(())
    }

    /// Drops the oldest segment from the bookkeeping; its segment and checkpoint files go
    /// to `doomed`, for [`remove_files`] once the lock is released.
    fn delete_front(&self, st: &mut State, doomed: &mut Vec<PathBuf>) {
        let Some(seg) = st.segments.pop_front() else {
            return;
        };
        st.total_bytes -= seg.bytes;
        let (segment, marks) = (
            segment_path(&self.dir, seg.first_id),
            checkpoint::path(&self.dir, seg.first_id),
        );
        // Never fsynced, now never needed: a journal nobody syncs (a spool) must not keep
        // the descriptors, and with them the disk space, of deleted files.
        st.unsynced.retain(|(_, p)| *p != segment && *p != marks);
        doomed.push(segment);
        doomed.push(marks);
    }

    /// Deletes oldest segments while over `max_bytes` (never the active one).
    fn enforce_max_bytes(&self, st: &mut State, doomed: &mut Vec<PathBuf>) {
        while st.total_bytes > self.config.max_bytes && st.segments.len() > 1 {
            let first = st.segments[0].first_id;
            let last = st.segments[1].first_id - 1;
            tracing::warn!(
                first_id = first,
                last_id = last,
                "journal: over max_bytes, dropping oldest segment"
            );
            self.delete_front(st, doomed);
        }
    }

    /// Deletes segments every known reader has committed past.
    fn delete_acknowledged(&self, st: &mut State, doomed: &mut Vec<PathBuf>) {
        let Some(min) = st.readers.values().map(|r| r.committed).min() else {
            return;
        };
        while st.segments.len() > 1 && st.segments[1].first_id <= min + 1 {
            self.delete_front(st, doomed);
        }
    }
}

/// Removes deleted segments' files (a missing checkpoint is normal), logging failures.
fn remove_files(paths: Vec<PathBuf>) {
    for p in paths {
        match fs::remove_file(&p) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                tracing::warn!(file = %p.display(), error = %e, "journal: could not delete");
            }
            _ => {}
        }
    }
}

/// The outcome of a blocking file task: its value, [`JournalError::Cancelled`] when the
/// runtime shut down first, and its panic passed on (a bug, not a condition to handle).
pub(crate) fn joined<T>(r: Result<T, tokio::task::JoinError>) -> Result<T, JournalError> {
    match r {
        Ok(v) => Ok(v),
        Err(e) if e.is_cancelled() => Err(JournalError::Cancelled),
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::line::Stream;

    fn line(n: u64) -> LogLine {
        LogLine {
            id: 0,
            app: "a".into(),
            process_type: None,
            job: None,
            host: None,
            stream: Stream::Stdout,
            timestamp_ns: 0,
            message: format!("line {n} {}", "x".repeat(100)),
        }
    }

    #[tokio::test]
    async fn unsynced_files_are_bounded_without_sync_and_cleared_by_it() {
        let dir = tempfile::tempdir().unwrap();
        let config = JournalConfig {
            segment_bytes: 1024,
            max_bytes: 1 << 20,
        };
        let j = Journal::open(dir.path(), config).unwrap();
        let mut r = j.reader("r").unwrap();
        for n in 0..2000 {
            let last = j.append(&mut [line(n)]).unwrap();
            if n % 10 == 9 {
                r.commit(last).await.unwrap();
            }
        }
        // About 200 rolls, each leaving a segment and a checkpoint to fsync; the deleted
        // ones are forgotten, not held open.
        let held = j.shared.lock().unsynced.len();
        assert!(held <= 4, "{held} unsynced files held");
        j.sync().await.unwrap();
        assert!(j.shared.lock().unsynced.is_empty());
    }
}
