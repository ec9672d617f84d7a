//! The host agent's log shipper: spools a job's stdout/stderr lines on local disk and
//! sends them to the aggregator as RFC 5424 syslog with octet counting over TCP, or over
//! TLS presenting the platform's client certificate (RFC 5425; [`crate::tls`]) when the
//! process has that identity, as `paas up` and `paas host` do: the aggregator takes
//! syslog from no one else.
//!
//! Wire format (see [`crate::encode::syslog_frame`]): APP-NAME = app, PROCID =
//! `<type>.<job>`, MSGID = `stdout`|`stderr`, STRUCTURED-DATA `[paas id="N" spool="S"]`
//! with the line's spool id N and the spool's incarnation S, HOSTNAME = the host.
//!
//! The incarnation is a random 64-bit number kept in `<spool_dir>/spool-id` (16 hex
//! digits), created with the spool directory. Wiping the spool restarts its ids at 1 and
//! creates a new incarnation, so the aggregator sees a new spool rather than replays.
//!
//! # Delivery: at-least-once, duplicates bounded
//!
//! Lines go to a local [`Journal`] (the spool) first, so a restart of the agent or of the
//! aggregator loses nothing that was spooled. Syslog has no acknowledgements, so the
//! shipper decides what the aggregator has certainly received: a write counts as received
//! once `confirm_after` has passed on a connection that is still open (the aggregator
//! reads continuously and closes connections when it stops). Only then is the spool
//! cursor committed. When a connection fails, the shipper reconnects with backoff and
//! replays everything after the committed cursor.
//!
//! The cursor is committed at most once per half `confirm_after` ([`commit_due`]), so
//! replays can duplicate the lines written during the last one and a half
//! `confirm_after` before a failure (plus any batch that was being written). Each carries the same
//! `[paas id="N" spool="S"]` and host, and the aggregator drops a line whose (host, id)
//! it already accepted ([`crate::dedupe`]). Spool ids are increasing and unique per
//! spool incarnation, and sent in increasing order (replays restart after the confirmed
//! cursor), which is what the aggregator's per-host high-water mark relies on.
//!
//! If the spool reaches its size limit the oldest lines are dropped, counted in
//! [`ShipperStatus::dropped`] and logged.
//!
//! The spool is fsynced every `sync_interval` (one group commit for all jobs of the
//! host) and at shutdown, so a machine crash loses at most that much unsent output.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::drain::retry::Backoff;
use crate::encode::syslog_frame;
use crate::journal::{Journal, JournalConfig, JournalError, JournalReader, ReadBatch};
use crate::line::{LogLine, Stream};

/// Journal cursor name of the sender.
const READER: &str = "shipper";

/// File in the spool directory holding the spool's incarnation.
const SPOOL_ID_FILE: &str = "spool-id";

/// Longest line shipped; longer output is split.
pub const MAX_LINE: usize = 64 * 1024;

/// Settings of a shipper.
#[derive(Debug, Clone)]
pub struct ShipperConfig {
    /// Spool directory (a journal).
    pub spool_dir: PathBuf,
    /// Spool size limits.
    pub spool: JournalConfig,
    /// Aggregator syslog address, `host:port`.
    pub aggregator: String,
    /// Lines per write.
    pub batch_lines: usize,
    /// How long a write must stay on an open connection before it counts as received.
    pub confirm_after: Duration,
    /// Reconnect backoff.
    pub backoff: Backoff,
    /// How often the spool is fsynced.
    pub sync_interval: Duration,
    /// TLS with a client certificate (`None`: plain TCP); the aggregator's certificate
    /// is checked for [`crate::tls::SERVER_NAME`].
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl ShipperConfig {
    /// Defaults for a spool in `spool_dir` shipping to `aggregator`, with this process's
    /// identity ([`crate::tls::client_identity`]) if it has one.
    pub fn new(spool_dir: impl Into<PathBuf>, aggregator: impl Into<String>) -> Self {
        ShipperConfig {
            spool_dir: spool_dir.into(),
            spool: JournalConfig {
                segment_bytes: 16 << 20,
                max_bytes: 1 << 30,
            },
            aggregator: aggregator.into(),
            batch_lines: 1000,
            confirm_after: Duration::from_secs(2),
            backoff: Backoff::default(),
            sync_interval: Duration::from_secs(1),
            tls: crate::tls::client_identity(),
        }
    }
}

/// Errors from the shipper.
#[derive(Debug, thiserror::Error)]
pub enum ShipperError {
    /// The spool could not be opened or written.
    #[error("spool: {0}")]
    Spool(#[from] JournalError),
    /// Reading a job's output, or the spool id file, failed.
    #[error("reading job output or spool id: {0}")]
    Read(#[from] std::io::Error),
}

/// Where a job's lines come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobSource {
    /// App name.
    pub app: String,
    /// Process type (`web`).
    pub process_type: Option<String>,
    /// Job id.
    pub job: Option<String>,
    /// This host's name.
    pub host: Option<String>,
}

/// Counters of a shipper.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShipperStatus {
    /// Lines written to the aggregator (replays included).
    pub sent: u64,
    /// Lines known received (cursor committed).
    pub confirmed: u64,
    /// Lines spooled and not yet confirmed.
    pub pending: u64,
    /// Last spool id fsynced; later lines would be lost in a machine crash.
    pub synced: u64,
    /// Connections opened after the first.
    pub reconnects: u64,
    /// Lines lost because the spool was full.
    pub dropped: u64,
    /// The last connection problem.
    pub last_error: Option<String>,
}

#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    reconnects: AtomicU64,
    dropped: AtomicU64,
    connections: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl Counters {
    fn set_error(&self, e: String) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
    }
}

/// Ships spooled lines to the aggregator from a background task.
pub struct Shipper {
    journal: Journal,
    counters: Arc<Counters>,
    cancel: CancellationToken,
    task: JoinHandle<()>,
    syncer: JoinHandle<()>,
}

impl Shipper {
    /// Opens the spool and starts sending (spooled lines from a previous run first).
    pub fn start(config: ShipperConfig) -> Result<Shipper, ShipperError> {
        let journal = Journal::open(&config.spool_dir, config.spool.clone())?;
        let spool = spool_incarnation(&config.spool_dir)?;
        let reader = journal.reader(READER)?;
        let counters = Arc::new(Counters::default());
        let cancel = CancellationToken::new();
        let syncer = tokio::spawn(sync_spool(
            journal.clone(),
            config.sync_interval,
            Arc::clone(&counters),
            cancel.clone(),
        ));
        let sender = Sender {
            journal: journal.clone(),
            reader: Some(reader),
            config,
            counters: Arc::clone(&counters),
            cancel: cancel.clone(),
            conn: None,
            unconfirmed: VecDeque::new(),
            spool,
            last_commit: None,
        };
        let task = tokio::spawn(sender.run());
        Ok(Shipper {
            journal,
            counters,
            cancel,
            task,
            syncer,
        })
    }

    /// Spools lines (each gets its spool id); returns the last id.
    pub fn ship(&self, lines: &mut [LogLine]) -> Result<u64, ShipperError> {
        Ok(self.journal.append(lines)?)
    }

    /// Reads `output` line by line until it ends, spooling each line for `source`.
    /// Lines longer than [`MAX_LINE`] bytes are split; invalid UTF-8 is replaced.
    pub async fn pipe(
        &self,
        source: &JobSource,
        stream: Stream,
        output: impl AsyncRead + Unpin,
    ) -> Result<u64, ShipperError> {
        let mut reader = BufReader::with_capacity(64 * 1024, output);
        let mut buf = Vec::with_capacity(1024);
        let mut count = 0;
        loop {
            buf.clear();
            let n = (&mut reader)
                .take(MAX_LINE as u64)
                .read_until(b'\n', &mut buf)
                .await?;
            if n == 0 {
                return Ok(count);
            }
            while matches!(buf.last(), Some(b'\n' | b'\r')) {
                buf.pop();
            }
            let mut line = [LogLine {
                id: 0,
                app: source.app.as_str().into(),
                process_type: source.process_type.as_deref().map(Into::into),
                job: source.job.as_deref().map(Into::into),
                host: source.host.as_deref().map(Into::into),
                stream,
                timestamp_ns: chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0),
                message: String::from_utf8_lossy(&buf).into_owned(),
            }];
            self.journal.append(&mut line)?;
            count += 1;
        }
    }

    /// Current counters.
    pub fn status(&self) -> ShipperStatus {
        let c = &self.counters;
        let confirmed = self.journal.cursors().get(READER).copied().unwrap_or(0);
        let stats = self.journal.stats();
        ShipperStatus {
            sent: c.sent.load(Ordering::Relaxed),
            confirmed,
            pending: stats.last_id.saturating_sub(confirmed),
            synced: stats.synced_id,
            reconnects: c.reconnects.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            last_error: c
                .last_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        }
    }

    /// Stops sending and fsyncs the spool; unconfirmed lines stay spooled and are sent
    /// by the next start.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        let _ = self.task.await;
        let _ = self.syncer.await;
        if let Err(e) = self.journal.sync().await {
            tracing::error!(error = %e, "shipper: final spool fsync failed");
        }
    }
}

/// Fsyncs the spool every `every` until cancelled.
async fn sync_spool(
    journal: Journal,
    every: Duration,
    counters: Arc<Counters>,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(e) = journal.sync().await {
            tracing::error!(error = %e, "shipper: spool fsync failed");
            counters.set_error(format!("spool fsync: {e}"));
        }
    }
}

struct Sender {
    journal: Journal,
    reader: Option<JournalReader>,
    config: ShipperConfig,
    counters: Arc<Counters>,
    cancel: CancellationToken,
    conn: Option<Box<dyn Link>>,
    /// Written batches not yet confirmed: (last id, written at).
    unconfirmed: VecDeque<(u64, Instant)>,
    /// The spool's incarnation, sent with every line.
    spool: u64,
    /// When the cursor was last committed.
    last_commit: Option<Instant>,
}

/// Reads the spool's incarnation, creating it (random, written atomically) when the
/// file is absent or damaged; a damaged one is logged and replaced, which the aggregator
/// treats as a new spool (lines accepted, never dropped).
fn spool_incarnation(dir: &Path) -> Result<u64, ShipperError> {
    let path = dir.join(SPOOL_ID_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => match u64::from_str_radix(text.trim(), 16) {
            Ok(id) if text.trim().len() == 16 => return Ok(id),
            _ => {
                tracing::warn!(file = %path.display(), "shipper: damaged spool id, starting a new incarnation")
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e.into()),
    }
    let id: u64 = rand::random();
    let tmp = dir.join(format!("{SPOOL_ID_FILE}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    std::io::Write::write_all(&mut f, format!("{id:016x}\n").as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(id)
}

/// What the sender does after a write attempt; pure over the attempt's facts.
#[derive(Debug, PartialEq, Eq)]
pub enum AfterWrite {
    /// The batch is on an open connection; keep going.
    Continue,
    /// The connection failed: reconnect, then replay from the committed cursor.
    Replay(String),
}

/// Decides what follows a write, from whether it succeeded.
pub fn after_write(result: Result<(), String>) -> AfterWrite {
    match result {
        Ok(()) => AfterWrite::Continue,
        Err(e) => AfterWrite::Replay(e),
    }
}

/// How many leading entries of `unconfirmed` are confirmed at `now`: written at least
/// `confirm_after` ago, with the connection still open.
pub fn confirmable(
    unconfirmed: &VecDeque<(u64, Instant)>,
    now: Instant,
    confirm_after: Duration,
    connection_open: bool,
) -> usize {
    if !connection_open {
        return 0;
    }
    unconfirmed
        .iter()
        .take_while(|(_, at)| now.duration_since(*at) >= confirm_after)
        .count()
}

/// Whether confirmed lines should be committed now, the last commit having been at
/// `last`: at most once per half `confirm_after`. Each commit writes, fsyncs and renames
/// the cursor file; under a stream of small batches (the router's access lines, every
/// 10 ms) committing each one cost about 4% of `paas up`'s CPU in fsyncs alone. A
/// commit held back only widens what a reconnect replays (by at most half
/// `confirm_after`), and the aggregator drops replayed lines it already holds.
pub fn commit_due(last: Option<Instant>, now: Instant, confirm_after: Duration) -> bool {
    last.is_none_or(|at| now.duration_since(at) >= confirm_after / 2)
}

/// A connection to the aggregator: plain TCP or TLS over it.
trait Link: AsyncRead + AsyncWrite + Unpin + Send + Sync {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + Sync> Link for T {}

/// Whether the aggregator closed (or broke) the connection. It never sends anything on
/// syslog, so anything readable now (end of stream, an error, a TLS alert, bytes) means
/// the connection is over; a read that would wait means it is open. The read goes
/// through TLS, so TLS records are decoded rather than taken off the socket.
fn peer_closed(conn: &mut Box<dyn Link>) -> bool {
    let mut probe = [0u8; 1];
    conn.read(&mut probe).now_or_never().is_some()
}

impl Sender {
    async fn run(mut self) {
        let mut attempt = 0u32;
        loop {
            self.confirm().await;
            let Some(reader) = self.reader.as_mut() else {
                return;
            };
            let wait = self.config.confirm_after.max(Duration::from_millis(10));
            let read = tokio::select! {
                _ = self.cancel.cancelled() => return,
                r = tokio::time::timeout(wait, reader.next_batch(self.config.batch_lines)) => r,
            };
            let lines = match read {
                Err(_idle) => continue,
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "shipper: spool read failed");
                    self.counters.set_error(format!("spool read: {e}"));
                    if !self.pause(attempt).await {
                        return;
                    }
                    attempt = attempt.saturating_add(1);
                    continue;
                }
                Ok(Ok(ReadBatch::Dropped { count, through_id })) => {
                    tracing::warn!(
                        count,
                        through_id,
                        "shipper: spool full, oldest lines dropped"
                    );
                    self.counters.dropped.fetch_add(count, Ordering::Relaxed);
                    self.unconfirmed.push_back((through_id, Instant::now()));
                    continue;
                }
                Ok(Ok(ReadBatch::Lines(lines))) => lines,
            };
            let last = lines.last().map_or(0, |l| l.id);
            let result = self.write(&lines).await;
            match after_write(result) {
                AfterWrite::Continue => {
                    attempt = 0;
                    self.counters
                        .sent
                        .fetch_add(lines.len() as u64, Ordering::Relaxed);
                    self.unconfirmed.push_back((last, Instant::now()));
                }
                AfterWrite::Replay(e) => {
                    tracing::warn!(error = %e, attempt, "shipper: connection to aggregator failed, will replay");
                    self.counters.set_error(e);
                    self.conn = None;
                    self.unconfirmed.clear();
                    // Reopen the cursor: reading resumes after the last confirmed line.
                    self.reader = None;
                    match self.journal.reader(READER) {
                        Ok(r) => self.reader = Some(r),
                        Err(e) => {
                            tracing::error!(error = %e, "shipper: cannot reopen spool cursor");
                            self.counters.set_error(format!("spool cursor: {e}"));
                            return;
                        }
                    }
                    if !self.pause(attempt).await {
                        return;
                    }
                    attempt = attempt.saturating_add(1);
                }
            }
        }
    }

    /// Commits the batches that are now confirmed.
    async fn confirm(&mut self) {
        let open = self.conn.as_mut().is_some_and(|c| !peer_closed(c));
        let n = confirmable(
            &self.unconfirmed,
            Instant::now(),
            self.config.confirm_after,
            open,
        );
        if n == 0 || !commit_due(self.last_commit, Instant::now(), self.config.confirm_after) {
            return;
        }
        self.last_commit = Some(Instant::now());
        let last = self.unconfirmed[n - 1].0;
        self.unconfirmed.drain(..n);
        if let Some(r) = self.reader.as_mut() {
            if let Err(e) = r.commit(last).await {
                tracing::error!(error = %e, "shipper: cursor commit failed");
                self.counters.set_error(format!("cursor commit: {e}"));
            }
        }
    }

    async fn write(&mut self, lines: &[LogLine]) -> Result<(), String> {
        if self.conn.as_mut().is_some_and(peer_closed) {
            return Err("aggregator closed the connection".into());
        }
        if self.conn.is_none() {
            let conn = tokio::time::timeout(Duration::from_secs(10), self.connect())
                .await
                .map_err(|_| format!("{}: connect timeout", self.config.aggregator))??;
            if self.counters.connections.fetch_add(1, Ordering::Relaxed) > 0 {
                self.counters.reconnects.fetch_add(1, Ordering::Relaxed);
            }
            tracing::info!(aggregator = %self.config.aggregator, tls = self.config.tls.is_some(), "shipper: connected");
            self.conn = Some(conn);
        }
        let mut buf = Vec::with_capacity(lines.len() * 160);
        for line in lines {
            syslog_frame(&mut buf, line, Some(self.spool));
        }
        let conn = self.conn.as_mut().expect("connected above");
        async {
            conn.write_all(&buf).await?;
            // TLS may hold the last record until flushed; plain TCP flushes at once.
            conn.flush().await
        }
        .await
        .map_err(|e| format!("{}: {e}", self.config.aggregator))
    }

    /// Opens a connection to the aggregator, with the TLS handshake when configured.
    async fn connect(&self) -> Result<Box<dyn Link>, String> {
        let addr = &self.config.aggregator;
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("{addr}: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let Some(tls) = &self.config.tls else {
            return Ok(Box::new(tcp));
        };
        let stream = tokio_rustls::TlsConnector::from(Arc::clone(tls))
            .connect(crate::tls::server_name(), tcp)
            .await
            .map_err(|e| format!("{addr}: TLS: {e}"))?;
        Ok(Box::new(stream))
    }

    async fn pause(&self, attempt: u32) -> bool {
        let delay = self.config.backoff.delay(attempt, rand::random::<f64>());
        tokio::select! {
            _ = self.cancel.cancelled() => false,
            _ = tokio::time::sleep(delay) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confirmation_needs_age_and_an_open_connection() {
        let t0 = Instant::now();
        let d = Duration::from_secs(2);
        let q: VecDeque<(u64, Instant)> =
            [(10, t0), (20, t0 + Duration::from_secs(1)), (30, t0 + d)].into();
        assert_eq!(
            confirmable(&q, t0 + Duration::from_millis(1999), d, true),
            0
        );
        assert_eq!(confirmable(&q, t0 + d, d, true), 1);
        assert_eq!(confirmable(&q, t0 + Duration::from_secs(3), d, true), 2);
        assert_eq!(confirmable(&q, t0 + Duration::from_secs(9), d, true), 3);
        assert_eq!(confirmable(&q, t0 + Duration::from_secs(9), d, false), 0);
    }

    #[test]
    fn commits_are_spaced_by_half_the_confirmation_delay() {
        let t0 = Instant::now();
        let d = Duration::from_secs(2);
        assert!(commit_due(None, t0, d));
        assert!(!commit_due(Some(t0), t0 + Duration::from_millis(999), d));
        assert!(commit_due(Some(t0), t0 + Duration::from_secs(1), d));
    }

    #[test]
    fn failed_writes_replay() {
        assert_eq!(after_write(Ok(())), AfterWrite::Continue);
        assert_eq!(
            after_write(Err("reset".into())),
            AfterWrite::Replay("reset".into())
        );
    }
}
