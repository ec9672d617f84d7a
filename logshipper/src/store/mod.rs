//! The per-app store behind `paas log`: the last N lines of every app, kept in memory
//! ([`ring`]) and in segment files ([`segment`]) so they survive a restart, with queries
//! ([`filter`]) and live follow.
//!
//! # Persistence
//!
//! [`Store::push`] only touches memory; [`Store::flush`] writes what each app gained
//! since the last flush, and only what its ring still holds. A busy app therefore writes
//! at most `lines_per_app` lines per flush instead of every line it receives: the
//! journal already holds every accepted line, so a second per-line copy on the accept
//! path would buy nothing. Lines accepted after the last flush are recovered from the
//! journal at start ([`Store::replay`], driven by [`crate::aggregator`]), so a crash loses
//! none of them from `paas log` either.
//!
//! # On-disk layout
//!
//! ```text
//! <dir>/<hex(app name)>/<first seq:020>.seg     see `segment` for the record format
//! ```
//!
//! App names are hex-encoded so any name is a safe directory name.
//!
//! # Invariants
//!
//! - Each app holds at most `lines_per_app` lines in memory; its segments hold the ones
//!   flushed plus at most one more segment.
//! - Within an app, lines are numbered by a sequence (`seq`) that grows by one per line.
//!   Lines are pushed to the ring and published to followers under the app's lock, so
//!   followers see batches in seq order; a flush writes them to segments under the same
//!   lock, after the fact.
//! - A follower takes its backlog and subscribes under that same lock: no line falls
//!   between backlog and live lines, none is seen twice. A follower that falls behind
//!   the live buffer gets [`FollowEvent::Skipped`] with the exact number of lines it
//!   missed (from the seq gap), never a silent gap.

pub mod filter;
pub mod ring;
pub mod segment;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use thiserror::Error;
use tokio::sync::broadcast;

use crate::line::LogLine;
pub use filter::Filter;
use ring::Ring;
use segment::{SegmentError, SegmentSet};

/// Settings of the store.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Directory holding one subdirectory of segments per app.
    pub dir: PathBuf,
    /// Lines kept per app (memory and disk).
    pub lines_per_app: usize,
    /// Batches a follower may fall behind before it skips lines.
    pub follow_buffer: usize,
    /// Apps the store holds at most; lines of further apps are not stored (they are still
    /// journaled and drained), so a flood of made-up app names cannot exhaust memory or
    /// disk.
    pub max_apps: usize,
}

impl StoreConfig {
    /// Defaults: 10,000 lines per app, 1,024 batches of follow buffer, 10,000 apps.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        StoreConfig {
            dir: dir.into(),
            lines_per_app: 10_000,
            follow_buffer: 1024,
            max_apps: 10_000,
        }
    }
}

/// Errors of the store.
#[derive(Debug, Error)]
pub enum StoreError {
    /// The store directory cannot be created or listed.
    #[error("store directory {path}: {source}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// An app's segment files cannot be written; the lines are in memory only (until a
    /// later flush succeeds).
    #[error("app {app:?}: {lines} lines not written to disk: {source}")]
    Segment {
        /// The app whose segments failed.
        app: String,
        /// Lines missing from the on-disk copy.
        lines: u64,
        /// The underlying error.
        source: SegmentError,
    },
    /// A new app arrived while the store already holds `max_apps` apps.
    #[error("app {app:?}: {lines} lines not stored, the store already holds {limit} apps")]
    TooManyApps {
        /// The app that was not added.
        app: String,
        /// Lines not stored.
        lines: u64,
        /// The configured maximum.
        limit: usize,
    },
}

impl StoreError {
    /// Lines a push error concerns, and a short fixed reason for the drop metric.
    pub fn dropped(&self) -> Option<(u64, &'static str)> {
        match self {
            StoreError::Dir { .. } => None,
            StoreError::Segment { lines, .. } => Some((*lines, "store_write")),
            StoreError::TooManyApps { lines, .. } => Some((*lines, "store_app_limit")),
        }
    }
}

/// Lines published to followers: consecutive seqs starting at `first_seq`.
#[derive(Debug)]
pub struct Batch {
    /// Seq of `lines[0]`.
    pub first_seq: u64,
    /// The lines, in seq order.
    pub lines: Vec<LogLine>,
}

/// What a follower receives next.
#[derive(Debug, PartialEq, Eq)]
pub enum FollowEvent {
    /// New lines that pass the follower's filter (never empty).
    Lines(Vec<LogLine>),
    /// The follower fell behind and this many lines of the app were not delivered.
    Skipped(u64),
}

/// Where a received batch stands relative to what a follower expects; pure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap {
    /// Lines missed before this batch.
    pub skipped: u64,
    /// Index of the first line in the batch the follower has not seen.
    pub start: usize,
}

/// Compares a batch with the seq a follower expects next.
pub fn gap(expected_seq: u64, batch_first_seq: u64, batch_len: usize) -> Gap {
    if batch_first_seq >= expected_seq {
        Gap {
            skipped: batch_first_seq - expected_seq,
            start: 0,
        }
    } else {
        let seen = (expected_seq - batch_first_seq).min(batch_len as u64);
        Gap {
            skipped: 0,
            start: seen as usize,
        }
    }
}

/// State of an app's segment files.
enum Disk {
    /// Not opened yet: the app was created by a follower or its first lines are coming.
    /// Opened on the first push, so reading an unknown app never touches the disk.
    Unopened,
    /// Open and appended to.
    Open(SegmentSet),
    /// Opening or writing failed; the app lives in memory only (logged once).
    Failed,
}

struct AppState {
    ring: Ring,
    disk: Disk,
    /// Seq of the first line not yet written to disk.
    flushed_seq: u64,
    /// Highest journal id among the lines reloaded from disk at open: a journal replay
    /// skips lines up to it, they are already here.
    reloaded_id: u64,
}

struct AppLog {
    state: Mutex<AppState>,
    tx: broadcast::Sender<Arc<Batch>>,
}

/// All apps' recent lines. Shared by reference (`Arc<Store>`).
pub struct Store {
    config: StoreConfig,
    apps: RwLock<HashMap<String, Arc<AppLog>>>,
}

/// A live subscription to one app's lines.
pub struct Follower {
    rx: broadcast::Receiver<Arc<Batch>>,
    next_seq: u64,
    filter: Filter,
    /// A batch received after a gap, delivered after the skipped marker.
    pending: Option<Arc<Batch>>,
}

impl Follower {
    /// Waits for the next lines passing the filter or a skipped marker; `None` once the
    /// store is gone.
    pub async fn next(&mut self) -> Option<FollowEvent> {
        loop {
            let batch = match self.pending.take() {
                Some(batch) => batch,
                None => match self.rx.recv().await {
                    Ok(batch) => batch,
                    // The next batch received tells exactly how many lines were missed.
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
            };
            let g = gap(self.next_seq, batch.first_seq, batch.lines.len());
            if g.skipped > 0 {
                // Report the gap first; the batch itself is delivered on the next call.
                self.next_seq = batch.first_seq;
                self.pending = Some(batch);
                return Some(FollowEvent::Skipped(g.skipped));
            }
            self.next_seq = self
                .next_seq
                .max(batch.first_seq + batch.lines.len() as u64);
            let lines: Vec<LogLine> = batch.lines[g.start..]
                .iter()
                .filter(|l| self.filter.matches(l))
                .cloned()
                .collect();
            if !lines.is_empty() {
                return Some(FollowEvent::Lines(lines));
            }
        }
    }
}

fn app_dir_name(app: &str) -> String {
    hex::encode(app.as_bytes())
}

impl Store {
    /// Opens the store, reloading every app's last lines from its segments.
    pub fn open(config: StoreConfig) -> Result<Store, StoreError> {
        let dir_err = |source| StoreError::Dir {
            path: config.dir.clone(),
            source,
        };
        std::fs::create_dir_all(&config.dir).map_err(dir_err)?;
        let mut apps = HashMap::new();
        for entry in std::fs::read_dir(&config.dir).map_err(dir_err)? {
            let entry = entry.map_err(dir_err)?;
            let name = entry.file_name();
            let Some(app) = name
                .to_str()
                .and_then(|n| hex::decode(n).ok())
                .and_then(|b| String::from_utf8(b).ok())
            else {
                tracing::warn!(entry = ?name, "ignoring unknown entry in store directory");
                continue;
            };
            let log = match SegmentSet::open(&entry.path(), config.lines_per_app) {
                Ok(rec) => {
                    let mut ring =
                        Ring::new(config.lines_per_app, rec.next_seq - rec.lines.len() as u64);
                    ring.push(rec.lines);
                    Self::new_app_log(&config, ring, Disk::Open(rec.set))
                }
                Err(e) => {
                    tracing::error!(%app, error = %e, "cannot reload app; its earlier lines are unavailable and new ones stay in memory");
                    Self::new_app_log(&config, Ring::new(config.lines_per_app, 0), Disk::Failed)
                }
            };
            apps.insert(app, Arc::new(log));
        }
        tracing::info!(dir = %config.dir.display(), apps = apps.len(), "store opened");
        Ok(Store {
            config,
            apps: RwLock::new(apps),
        })
    }

    fn new_app_log(config: &StoreConfig, ring: Ring, disk: Disk) -> AppLog {
        let (tx, _) = broadcast::channel(config.follow_buffer.max(1));
        // Whatever the ring holds now came from disk.
        let flushed_seq = ring.next_seq();
        let reloaded_id = ring.since(0).1.map(|l| l.id).max().unwrap_or(0);
        AppLog {
            state: Mutex::new(AppState {
                ring,
                disk,
                flushed_seq,
                reloaded_id,
            }),
            tx,
        }
    }

    fn app(&self, app: &str) -> Option<Arc<AppLog>> {
        self.apps
            .read()
            .expect("store lock poisoned")
            .get(app)
            .cloned()
    }

    /// The app's log, created (without disk I/O) if it is new and the app limit allows.
    fn app_or_create(&self, app: &str) -> Option<Arc<AppLog>> {
        if let Some(log) = self.app(app) {
            return Some(log);
        }
        let mut apps = self.apps.write().expect("store lock poisoned");
        if let Some(log) = apps.get(app) {
            return Some(Arc::clone(log));
        }
        if apps.len() >= self.config.max_apps {
            return None;
        }
        let log = Arc::new(Self::new_app_log(
            &self.config,
            Ring::new(self.config.lines_per_app, 0),
            Disk::Unopened,
        ));
        apps.insert(app.to_owned(), Arc::clone(&log));
        Some(log)
    }

    /// Adds accepted lines (ids already assigned), grouped into runs of one app; they
    /// reach disk at the next [`Store::flush`].
    ///
    /// Returns what could not be kept: lines of apps beyond `max_apps`. Empty when all
    /// went well.
    pub fn push(&self, mut lines: Vec<LogLine>) -> Vec<StoreError> {
        let mut errors = Vec::new();
        while !lines.is_empty() {
            let app = lines[0].app.clone();
            let run_len = lines.iter().take_while(|l| l.app == app).count();
            let rest = lines.split_off(run_len);
            if let Err(e) = self.push_run(&app, lines) {
                errors.push(e);
            }
            lines = rest;
        }
        errors
    }

    fn push_run(&self, app: &str, lines: Vec<LogLine>) -> Result<(), StoreError> {
        let Some(log) = self.app_or_create(app) else {
            return Err(StoreError::TooManyApps {
                app: app.to_owned(),
                lines: lines.len() as u64,
                limit: self.config.max_apps,
            });
        };
        let mut st = log.state.lock().expect("app lock poisoned");
        let first_seq = st.ring.next_seq();
        if log.tx.receiver_count() > 0 {
            let batch = Arc::new(Batch {
                first_seq,
                lines: lines.clone(),
            });
            st.ring.push(lines);
            // Receivers may all have gone since the count; that is fine.
            let _ = log.tx.send(batch);
        } else {
            st.ring.push(lines);
        }
        Ok(())
    }

    /// Adds lines read back from the journal after a restart, leaving out those an app
    /// already reloaded from its segments (they were flushed before the restart).
    pub fn replay(&self, mut lines: Vec<LogLine>) -> Vec<StoreError> {
        lines.retain(|l| {
            self.app(&l.app)
                .is_none_or(|log| l.id > log.state.lock().expect("app lock poisoned").reloaded_id)
        });
        self.push(lines)
    }

    /// Writes every app's lines pushed since its last flush that its ring still holds.
    ///
    /// Returns the apps whose lines could not be written (they stay in memory; the next
    /// flush writes what the ring then holds). Apps whose directory cannot be created
    /// are logged once and kept in memory only.
    pub fn flush(&self) -> Vec<StoreError> {
        let logs: Vec<(String, Arc<AppLog>)> = self
            .apps
            .read()
            .expect("store lock poisoned")
            .iter()
            .map(|(app, log)| (app.clone(), Arc::clone(log)))
            .collect();
        let mut errors = Vec::new();
        for (app, log) in logs {
            let mut st = log.state.lock().expect("app lock poisoned");
            let st = &mut *st;
            let next_seq = st.ring.next_seq();
            if st.flushed_seq == next_seq {
                continue;
            }
            if matches!(st.disk, Disk::Unopened) {
                let dir = self.config.dir.join(app_dir_name(&app));
                st.disk = match SegmentSet::open(&dir, self.config.lines_per_app) {
                    Ok(rec) => Disk::Open(rec.set),
                    Err(e) => {
                        tracing::error!(%app, error = %e, "cannot create app segments; keeping its lines in memory only");
                        Disk::Failed
                    }
                };
            }
            let Disk::Open(set) = &mut st.disk else {
                st.flushed_seq = next_seq;
                continue;
            };
            let (first, lines) = st.ring.since(st.flushed_seq);
            match set.append(first, lines) {
                Ok(()) => st.flushed_seq = next_seq,
                Err(source) => errors.push(StoreError::Segment {
                    lines: next_seq - first,
                    app,
                    source,
                }),
            }
        }
        errors
    }

    /// The last `n` lines of `app` passing `filter`, oldest first.
    pub fn tail(&self, app: &str, n: usize, filter: &Filter) -> Vec<LogLine> {
        match self.app(app) {
            Some(log) => log
                .state
                .lock()
                .expect("app lock poisoned")
                .ring
                .tail(n, filter),
            None => Vec::new(),
        }
    }

    /// Like [`Store::tail`], plus a follower that continues exactly after those lines.
    ///
    /// Following an app that does not exist yet waits for its first lines; if the store
    /// is at `max_apps`, the follower ends at once.
    pub fn follow(&self, app: &str, n: usize, filter: Filter) -> (Vec<LogLine>, Follower) {
        let Some(log) = self.app_or_create(app) else {
            let (_, rx) = broadcast::channel(1);
            let follower = Follower {
                rx,
                next_seq: 0,
                filter,
                pending: None,
            };
            return (Vec::new(), follower);
        };
        let st = log.state.lock().expect("app lock poisoned");
        let backlog = st.ring.tail(n, &filter);
        let follower = Follower {
            rx: log.tx.subscribe(),
            next_seq: st.ring.next_seq(),
            filter,
            pending: None,
        };
        (backlog, follower)
    }

    /// Names of the apps with a log.
    pub fn apps(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .apps
            .read()
            .expect("store lock poisoned")
            .keys()
            .cloned()
            .collect();
        names.sort();
        names
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::line::Stream;

    fn line(app: &str, n: u64, stream: Stream) -> LogLine {
        LogLine {
            id: n,
            app: app.into(),
            process_type: Some("web".into()),
            job: Some("j".into()),
            host: None,
            stream,
            timestamp_ns: n as i64,
            message: format!("m{n}"),
        }
    }

    fn ids(lines: &[LogLine]) -> Vec<u64> {
        lines.iter().map(|l| l.id).collect()
    }

    #[test]
    fn gap_decisions() {
        assert_eq!(
            gap(5, 5, 3),
            Gap {
                skipped: 0,
                start: 0
            }
        );
        assert_eq!(
            gap(5, 9, 3),
            Gap {
                skipped: 4,
                start: 0
            }
        );
        assert_eq!(
            gap(5, 3, 3),
            Gap {
                skipped: 0,
                start: 2
            }
        );
        assert_eq!(
            gap(10, 3, 3),
            Gap {
                skipped: 0,
                start: 3
            }
        );
    }

    #[test]
    fn push_tail_and_reload() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = StoreConfig::new(dir.path());
        config.lines_per_app = 5;
        let store = Store::open(config.clone()).unwrap();
        let mut batch: Vec<LogLine> = (1..=4).map(|n| line("a", n, Stream::Stdout)).collect();
        batch.extend((5..=6).map(|n| line("b/../x", n, Stream::Stderr)));
        batch.extend((7..=9).map(|n| line("a", n, Stream::Stderr)));
        assert!(store.push(batch).is_empty());
        assert_eq!(
            ids(&store.tail("a", 100, &Filter::default())),
            vec![3, 4, 7, 8, 9]
        );
        assert!(store.flush().is_empty());
        let stderr = Filter {
            stream: Some(Stream::Stderr),
            ..Filter::default()
        };
        assert_eq!(ids(&store.tail("a", 2, &stderr)), vec![8, 9]);
        assert_eq!(
            ids(&store.tail("b/../x", 100, &Filter::default())),
            vec![5, 6]
        );
        assert!(store.tail("nope", 10, &Filter::default()).is_empty());
        // Following an unknown app creates nothing on disk.
        let (backlog, _follower) = store.follow("ghost", 10, Filter::default());
        assert!(backlog.is_empty());
        assert!(!dir.path().join(app_dir_name("ghost")).exists());
        drop(store);
        let store = Store::open(config).unwrap();
        assert_eq!(store.apps(), vec!["a".to_string(), "b/../x".to_string()]);
        assert_eq!(
            ids(&store.tail("a", 100, &Filter::default())),
            vec![3, 4, 7, 8, 9]
        );
    }

    #[test]
    fn flush_writes_only_new_lines_the_ring_still_holds() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = StoreConfig::new(dir.path());
        config.lines_per_app = 3;
        let store = Store::open(config.clone()).unwrap();
        store.push((1..=2).map(|n| line("a", n, Stream::Stdout)).collect());
        // Nothing reaches the disk before a flush.
        assert!(!dir.path().join(app_dir_name("a")).exists());
        assert!(store.flush().is_empty());
        // Ten more lines: only the three the ring holds are written, after a seq gap.
        for n in 3..=12 {
            store.push(vec![line("a", n, Stream::Stdout)]);
        }
        assert!(store.flush().is_empty());
        assert!(
            store.flush().is_empty(),
            "a flush without new lines writes nothing"
        );
        store.push(vec![line("a", 13, Stream::Stdout)]);
        drop(store);
        let store = Store::open(config).unwrap();
        assert_eq!(
            ids(&store.tail("a", 10, &Filter::default())),
            vec![10, 11, 12]
        );
        // A replay leaves out what was reloaded and adds what was not flushed.
        let replayed: Vec<LogLine> = (11..=13).map(|n| line("a", n, Stream::Stdout)).collect();
        assert!(store.replay(replayed).is_empty());
        assert_eq!(
            ids(&store.tail("a", 10, &Filter::default())),
            vec![11, 12, 13]
        );
    }

    #[tokio::test]
    async fn apps_beyond_the_limit_are_not_stored() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = StoreConfig::new(dir.path());
        config.max_apps = 2;
        let store = Store::open(config).unwrap();
        let errors = store.push(vec![
            line("a", 1, Stream::Stdout),
            line("b", 2, Stream::Stdout),
            line("c", 3, Stream::Stdout),
            line("c", 4, Stream::Stdout),
            line("a", 5, Stream::Stdout),
        ]);
        let dropped: Vec<_> = errors.iter().map(StoreError::dropped).collect();
        assert_eq!(dropped, vec![Some((2, "store_app_limit"))]);
        assert_eq!(store.apps(), vec!["a".to_string(), "b".to_string()]);
        assert_eq!(ids(&store.tail("a", 10, &Filter::default())), vec![1, 5]);
        let (backlog, mut f) = store.follow("d", 10, Filter::default());
        assert!(backlog.is_empty());
        assert_eq!(f.next().await, None);
    }

    #[tokio::test]
    async fn follower_sees_backlog_then_live_lines_and_explicit_skips() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = StoreConfig::new(dir.path());
        config.follow_buffer = 2;
        let store = Store::open(config).unwrap();
        assert!(store.push(vec![line("a", 1, Stream::Stdout)]).is_empty());
        let (backlog, mut f) = store.follow("a", 10, Filter::default());
        assert_eq!(ids(&backlog), vec![1]);
        assert!(store.push(vec![line("a", 2, Stream::Stdout)]).is_empty());
        assert_eq!(
            f.next().await,
            Some(FollowEvent::Lines(vec![line("a", 2, Stream::Stdout)]))
        );
        // Five batches of two lines with room for two batches: three batches are lost.
        for n in 0..5 {
            let errors = store.push(vec![
                line("a", 10 + 2 * n, Stream::Stdout),
                line("a", 11 + 2 * n, Stream::Stdout),
            ]);
            assert!(errors.is_empty());
        }
        assert_eq!(f.next().await, Some(FollowEvent::Skipped(6)));
        match f.next().await {
            Some(FollowEvent::Lines(lines)) => assert_eq!(ids(&lines), vec![16, 17]),
            other => panic!("{other:?}"),
        }
        match f.next().await {
            Some(FollowEvent::Lines(lines)) => assert_eq!(ids(&lines), vec![18, 19]),
            other => panic!("{other:?}"),
        }
        drop(store);
        assert_eq!(f.next().await, None);
    }
}
