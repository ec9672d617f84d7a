//! Access lines: one per request, into the app's log stream as process type `router`
//! (`paas log -a shop --type router`), in the spirit of Heroku's router lines.
//!
//! Each router worker thread has its own [`AccessLog`]: a request's thread formats its
//! [`AccessEntry`] ([`format`], pure) into the worker's batch, one string holding the
//! app names and lines back to back. The batch goes to a bounded channel when it holds
//! [`BATCH`] lines or [`WINDOW`] after its first line (a task on the worker's runtime
//! keeps that time), never blocking a request: a full channel drops the batch and
//! counts its lines. So a request costs no channel operation and no allocation of its
//! own, and the worker shares nothing per request with other threads; the writing task
//! makes each line's `String` on its own thread, where the store later frees it. The
//! writing task passes each batch on, one of two ways ([`AccessLogConfig`]):
//!
//! - `Ship` (a `paas host`): spooled through the log shipper
//!   (`paas_logshipper::shipper`), which delivers it to the aggregator as RFC 5424
//!   syslog with its at-least-once spool. The router's shipper has its own spool and
//!   sends as HOSTNAME `<host>-router`, because the aggregator keeps one replay mark per
//!   sending HOSTNAME and spool.
//! - `Local` (`paas up`, whose aggregator is in the same process): handed to the
//!   aggregator's accept path, the journal then the store, as its inputs do with what
//!   they decode. No spool, no TLS connection, no syslog encoding and parsing: under
//!   `wrk` these took 8% of the process's CPU samples. The lines are the same
//!   (HOSTNAME `<host>-router`), counted as input `router`; they are as durable as any
//!   input's (the aggregator's journal, fsynced every second), and a stop of the
//!   process stops the router before the aggregator.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::uri::PathAndQuery;
use http::{HeaderValue, Method};
use paas_logshipper::aggregator::Aggregator;
use paas_logshipper::shipper::{Shipper, ShipperConfig, ShipperError};
use paas_logshipper::{LogLine, Stream};
use prometheus_client::metrics::counter::Counter;
use smol_str::SmolStr;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;

/// Batches waiting for the writing task before new ones are dropped (at most
/// `QUEUE * BATCH` lines; under light load a batch per worker per [`WINDOW`], so a
/// stall of the sink of ~1 s before any is lost).
const QUEUE: usize = 256;
/// Lines per worker batch at most.
pub const BATCH: usize = 256;
/// How long a worker lets lines gather after the first one before handing them on:
/// under load, one channel send, one append to the spool, one syslog write and one
/// journal append per window instead of per request.
pub const WINDOW: Duration = Duration::from_millis(10);

/// Where access lines go.
#[derive(Clone)]
pub enum AccessLogConfig {
    /// Through the router's own spool to an aggregator's syslog input.
    Ship {
        /// The aggregator's syslog address.
        aggregator: SocketAddr,
        /// The router's own spool directory.
        spool_dir: PathBuf,
    },
    /// Straight into the accept path of an aggregator running in this process.
    Local(Aggregator),
}

impl std::fmt::Debug for AccessLogConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AccessLogConfig::Ship {
                aggregator,
                spool_dir,
            } => f
                .debug_struct("Ship")
                .field("aggregator", aggregator)
                .field("spool_dir", spool_dir)
                .finish(),
            AccessLogConfig::Local(_) => f.write_str("Local"),
        }
    }
}

/// The name the aggregator counts in-process access lines under
/// (`logshipper_lines_received_total{input="router"}`).
pub const LOCAL_INPUT: &str = "router";

/// Where the spooling task puts a batch.
enum Sink {
    Spool(Shipper),
    Local {
        aggregator: Aggregator,
        received: Counter,
    },
}

impl Sink {
    fn open(config: &AccessLogConfig) -> Result<Sink, ShipperError> {
        Ok(match config {
            AccessLogConfig::Ship {
                aggregator,
                spool_dir,
            } => Sink::Spool(Shipper::start(ShipperConfig::new(
                spool_dir,
                aggregator.to_string(),
            ))?),
            AccessLogConfig::Local(aggregator) => Sink::Local {
                received: aggregator.metrics().input_counters(LOCAL_INPUT).0,
                aggregator: aggregator.clone(),
            },
        })
    }

    /// Hands `lines` on (taking them); an error names why they are lost.
    fn put(&self, lines: &mut Vec<LogLine>) -> Result<(), String> {
        match self {
            Sink::Spool(shipper) => {
                let result = shipper.ship(lines).map(drop).map_err(|e| e.to_string());
                lines.clear();
                result
            }
            Sink::Local {
                aggregator,
                received,
            } => {
                let n = lines.len() as u64;
                aggregator
                    .accept(std::mem::take(lines))
                    .map(|_| {
                        received.inc_by(n);
                    })
                    .map_err(|e| e.to_string())
            }
        }
    }

    async fn shutdown(self) {
        if let Sink::Spool(shipper) = self {
            shipper.shutdown().await;
        }
    }
}

/// One finished request. Its fields are the request's own values, shared rather than
/// copied (an `Arc` or a `Bytes` clone each): the request path builds one per request.
#[derive(Debug, Clone, PartialEq)]
pub struct AccessEntry {
    /// The app.
    pub app: Arc<str>,
    /// Request method.
    pub method: Method,
    /// Request path (and query).
    pub path: PathAndQuery,
    /// Host header.
    pub host: HeaderValue,
    /// Status sent to the client.
    pub status: u16,
    /// Response body bytes sent.
    pub bytes: u64,
    /// The backend that answered (or was last tried).
    pub backend: Option<SocketAddr>,
    /// Attempts made (1 = no retry).
    pub attempts: usize,
    /// From request to end of response.
    pub duration: Duration,
    /// The request id.
    pub request_id: HeaderValue,
    /// The client's address.
    pub client: SocketAddr,
}

/// The line for one entry (logfmt, quoted where values may hold spaces). Pure.
///
/// Written piece by piece (`itoa` for the numbers) rather than through `format!`: the
/// formatting machinery was 4% of the router's CPU samples under `wrk`, for one line
/// per request. The output is the same as `{:?}` for the path, `Display` for the
/// addresses and `{:.1}` for the milliseconds (rounded to the nearest 0.1 ms).
pub fn format(e: &AccessEntry) -> String {
    // The fixed part of a line with an IPv4 backend and client is about 170 bytes: room
    // for it, the path and the host, so the line is written without growing.
    let mut line = String::with_capacity(192 + e.path.as_str().len() + e.host.len());
    format_into(&mut line, e);
    line
}

/// [`format`], appended to `line`.
pub fn format_into(line: &mut String, e: &AccessEntry) {
    let mut num = itoa::Buffer::new();
    line.push_str("method=");
    line.push_str(e.method.as_str());
    line.push_str(" path=");
    push_quoted(line, e.path.as_str());
    line.push_str(" host=");
    line.push_str(e.host.to_str().unwrap_or("-"));
    line.push_str(" status=");
    line.push_str(num.format(e.status));
    line.push_str(" bytes=");
    line.push_str(num.format(e.bytes));
    line.push_str(" backend=");
    match e.backend {
        Some(b) => push_addr(line, b),
        None => line.push('-'),
    }
    line.push_str(" attempts=");
    line.push_str(num.format(e.attempts));
    line.push_str(" duration_ms=");
    let tenths = (e.duration.as_nanos() + 50_000) / 100_000;
    line.push_str(num.format(tenths / 10));
    line.push('.');
    line.push_str(num.format(tenths % 10));
    line.push_str(" request_id=");
    line.push_str(e.request_id.to_str().unwrap_or("-"));
    line.push_str(" fwd=");
    push_ip(line, e.client.ip());
}

/// Appends `s` quoted and escaped as `{:?}` does; a string of printable ASCII without
/// quote or backslash (every ordinary path) is copied as it is.
fn push_quoted(line: &mut String, s: &str) {
    if s.bytes()
        .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
    {
        line.push('"');
        line.push_str(s);
        line.push('"');
    } else {
        let _ = write!(line, "{s:?}");
    }
}

/// Appends `addr` as its `Display` does.
fn push_addr(line: &mut String, addr: SocketAddr) {
    match addr {
        SocketAddr::V4(v4) => {
            push_ip(line, IpAddr::V4(*v4.ip()));
            line.push(':');
            line.push_str(itoa::Buffer::new().format(v4.port()));
        }
        SocketAddr::V6(_) => {
            let _ = write!(line, "{addr}");
        }
    }
}

/// Appends `ip` as its `Display` does.
fn push_ip(line: &mut String, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            let mut num = itoa::Buffer::new();
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    line.push('.');
                }
                line.push_str(num.format(octet));
            }
        }
        IpAddr::V6(v6) => {
            let _ = write!(line, "{v6}");
        }
    }
}

/// Lines of one worker on their way to the sink: app names and lines back to back in
/// one string (formatted by the requests' own thread, so nothing in it refers to a
/// request's buffers: hyper reuses a connection's read buffer in place only when no
/// slice of it is alive).
#[derive(Debug, Default)]
struct Batch {
    text: String,
    /// Per line, the ends of its app name and of its message in `text` (each line
    /// starts where the previous one ends), and when it was recorded (nanoseconds
    /// since the Unix epoch).
    ends: Vec<(usize, usize, i64)>,
    /// A monotonic instant and the wall-clock time read with it, when the batch took
    /// its first line: each line's time comes from them and the instant its request
    /// finished, which the request had read already (a batch lives at most
    /// [`WINDOW`], far too short for the wall clock to be slewed measurably).
    anchor: Option<(Instant, i64)>,
}

impl Batch {
    /// An empty batch with room for `bytes` of text and `lines` lines.
    fn with_capacity(bytes: usize, lines: usize) -> Batch {
        Batch {
            text: String::with_capacity(bytes),
            ends: Vec::with_capacity(lines),
            anchor: None,
        }
    }

    /// The wall-clock time (nanoseconds since the Unix epoch) of `at`.
    fn wall_time(&mut self, at: Instant) -> i64 {
        let (mono, wall) = *self
            .anchor
            .get_or_insert_with(|| (Instant::now(), unix_nanos_now()));
        match at.checked_duration_since(mono) {
            Some(after) => wall.saturating_add(nanos(after)),
            None => wall.saturating_sub(nanos(mono - at)),
        }
    }

    /// Takes the lines out, leaving an empty batch with the same room (a full batch's
    /// text would otherwise grow again from nothing, copying itself each time).
    fn take(&mut self) -> Batch {
        let room = Batch::with_capacity(self.text.capacity(), self.ends.capacity());
        std::mem::replace(self, room)
    }

    /// The lines as the aggregator takes them, sent as `job` by `sender` (made once: a
    /// name longer than 23 bytes is an allocation, cloning it is not).
    fn into_lines(self, job: &SmolStr, sender: &SmolStr, lines: &mut Vec<LogLine>) {
        let mut start = 0;
        for (app_end, end, at) in self.ends {
            lines.push(LogLine {
                id: 0,
                app: self.text[start..app_end].into(),
                process_type: Some("router".into()),
                job: Some(job.clone()),
                host: Some(sender.clone()),
                stream: Stream::Stdout,
                timestamp_ns: at,
                message: self.text[app_end..end].to_string(),
            });
            start = end;
        }
    }
}

/// The wall clock now, in nanoseconds since the Unix epoch.
fn unix_nanos_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, nanos)
}

/// `d` in nanoseconds, as far as an `i64` holds them.
fn nanos(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

/// What the [`AccessLog`]s of one worker share.
#[derive(Debug)]
struct WorkerQueue {
    batch: Mutex<Batch>,
    /// Signalled by the first line of a batch, for the flushing task.
    first: Notify,
    tx: mpsc::Sender<Batch>,
    dropped: Counter,
}

impl WorkerQueue {
    fn lock(&self) -> std::sync::MutexGuard<'_, Batch> {
        self.batch.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn send(&self, batch: Batch) {
        if let Err(e) = self.tx.try_send(batch) {
            let lost = match e {
                mpsc::error::TrySendError::Full(b) | mpsc::error::TrySendError::Closed(b) => {
                    b.ends.len()
                }
            };
            self.dropped.inc_by(lost as u64);
        }
    }
}

/// One worker thread's access log: lines go into its batch. Cheap to clone (the clones
/// share the batch); every clone should be used on the worker's thread only, or its
/// lines share a cache line with another thread's.
#[derive(Debug, Clone)]
pub struct AccessLog {
    queue: Arc<WorkerQueue>,
}

impl AccessLog {
    /// Formats `entry` into the batch, stamped with the time of `finished` (when its
    /// request ended, as the caller read it); hands the batch on when it is full.
    pub fn record(&self, entry: &AccessEntry, finished: Instant) {
        let full = {
            let mut batch = self.queue.lock();
            let first = batch.ends.is_empty();
            let at = batch.wall_time(finished);
            batch.text.push_str(&entry.app);
            let app_end = batch.text.len();
            format_into(&mut batch.text, entry);
            let end = batch.text.len();
            batch.ends.push((app_end, end, at));
            if first {
                self.queue.first.notify_one();
            }
            (batch.ends.len() >= BATCH).then(|| batch.take())
        };
        if let Some(batch) = full {
            self.queue.send(batch);
        }
    }

    /// Hands on the lines in the batch now, if any.
    pub fn flush(&self) {
        let batch = {
            let mut batch = self.queue.lock();
            if batch.ends.is_empty() {
                return;
            }
            batch.take()
        };
        self.queue.send(batch);
    }

    /// Hands the batch on [`WINDOW`] after each first line, forever: a worker runs it on
    /// its runtime (and calls [`AccessLog::flush`] once more when it stops).
    pub async fn flush_after_window(self) {
        loop {
            self.queue.first.notified().await;
            tokio::time::sleep(WINDOW).await;
            self.flush();
        }
    }
}

/// Makes each worker's [`AccessLog`]; all of them feed one writing task.
#[derive(Debug, Clone)]
pub struct AccessLogs {
    tx: mpsc::Sender<Batch>,
    dropped: Counter,
}

impl AccessLogs {
    /// A new worker's access log, with a batch of its own.
    pub fn worker(&self) -> AccessLog {
        AccessLog {
            queue: Arc::new(WorkerQueue {
                batch: Mutex::new(Batch::default()),
                first: Notify::new(),
                tx: self.tx.clone(),
                dropped: self.dropped.clone(),
            }),
        }
    }
}

/// The writing task and its sink.
pub struct AccessWriter {
    task: JoinHandle<Sink>,
}

impl AccessWriter {
    /// Waits for queued lines to be handed on (after every [`AccessLog`] and
    /// [`AccessLogs`] is dropped), then stops the shipper, if any (unsent lines stay
    /// spooled for the next start).
    pub async fn shutdown(self) {
        if let Ok(sink) = self.task.await {
            sink.shutdown().await;
        }
    }
}

/// Opens the sink (the spool and its shipper, or the local aggregator) and starts the
/// writing task; `host` is this router's host id. Lines lost (queue full, or the sink
/// refused them) are counted in `dropped` (`router_access_lines_dropped_total`).
pub fn start(
    config: &AccessLogConfig,
    host: &str,
    dropped: Counter,
) -> Result<(AccessLogs, AccessWriter), ShipperError> {
    let sink = Sink::open(config)?;
    let (tx, mut rx) = mpsc::channel::<Batch>(QUEUE);
    let job = SmolStr::new(host);
    let sender = SmolStr::new(format!("{host}-router"));
    let lost = dropped.clone();
    let task = tokio::spawn(async move {
        let mut batches = Vec::with_capacity(16);
        let mut lines: Vec<LogLine> = Vec::new();
        while rx.recv_many(&mut batches, 16).await > 0 {
            let several = batches.len() > 1;
            for batch in batches.drain(..) {
                batch.into_lines(&job, &sender, &mut lines);
            }
            if several {
                // Each worker's lines are in order; interleave the workers' by time.
                lines.sort_by_key(|l| l.timestamp_ns);
            }
            let n = lines.len();
            if let Err(e) = sink.put(&mut lines) {
                lost.inc_by(n as u64);
                tracing::warn!(error = %e, lines = n, "access lines lost: their sink refused them");
            }
            lines.clear();
        }
        sink
    });
    Ok((AccessLogs { tx, dropped }, AccessWriter { task }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_format() {
        let e = AccessEntry {
            app: "shop".into(),
            method: Method::GET,
            path: PathAndQuery::from_static("/a%20b?x=1"),
            host: HeaderValue::from_static("shop.localhost"),
            status: 200,
            bytes: 12,
            backend: Some("127.0.0.1:5001".parse().unwrap()),
            attempts: 2,
            duration: Duration::from_micros(1500),
            request_id: HeaderValue::from_static("r1"),
            client: "10.0.0.1:4000".parse().unwrap(),
        };
        assert_eq!(
            format(&e),
            "method=GET path=\"/a%20b?x=1\" host=shop.localhost status=200 bytes=12 backend=127.0.0.1:5001 attempts=2 duration_ms=1.5 request_id=r1 fwd=10.0.0.1"
        );
        let unanswered = AccessEntry {
            backend: None,
            status: 503,
            ..e
        };
        assert!(format(&unanswered).contains(" status=503 bytes=12 backend=- attempts=2 "));
    }

    /// An entry for a plain GET of `/` that got a 200.
    fn entry() -> AccessEntry {
        AccessEntry {
            app: "shop".into(),
            method: Method::GET,
            path: PathAndQuery::from_static("/"),
            host: HeaderValue::from_static("shop.localhost"),
            status: 200,
            bytes: 0,
            backend: None,
            attempts: 1,
            duration: Duration::ZERO,
            request_id: HeaderValue::from_static("r"),
            client: "127.0.0.1:1".parse().unwrap(),
        }
    }

    /// The line as `format!` writes it: what [`format`] must match.
    fn reference(e: &AccessEntry) -> String {
        let backend = e.backend.map_or_else(|| "-".to_string(), |b| b.to_string());
        format!(
            "method={} path={:?} host={} status={} bytes={} backend={backend} attempts={} duration_ms={:.1} request_id={} fwd={}",
            e.method,
            e.path.as_str(),
            e.host.to_str().unwrap_or("-"),
            e.status,
            e.bytes,
            e.attempts,
            e.duration.as_secs_f64() * 1000.0,
            e.request_id.to_str().unwrap_or("-"),
            e.client.ip(),
        )
    }

    #[test]
    fn line_format_matches_format_macro() {
        let base = entry();
        let paths = ["/", "/a%20b?x=1&y=%22", "/caf%C3%A9/{x}|~", "/\\back?q=\\"];
        let backends = [
            None,
            Some("255.0.10.1:65535".parse().unwrap()),
            Some("[::1]:8080".parse().unwrap()),
            Some("[2001:db8::7]:80".parse().unwrap()),
        ];
        let clients = ["0.0.0.0:1", "[fe80::1]:9", "192.168.100.200:4"];
        let durations = [
            0,
            49_999,
            50_000,
            149_999,
            999_951,
            1_234_567_890,
            86_400_000_000_000,
        ];
        let methods = [Method::GET, Method::from_bytes(b"PURGE").unwrap()];
        for path in paths {
            let path = PathAndQuery::try_from(path).expect(path);
            for backend in backends {
                for client in clients {
                    for nanos in durations {
                        for method in &methods {
                            let e = AccessEntry {
                                path: path.clone(),
                                backend,
                                client: client.parse().unwrap(),
                                duration: Duration::from_nanos(nanos),
                                method: method.clone(),
                                status: 504,
                                bytes: u64::MAX,
                                attempts: 3,
                                ..base.clone()
                            };
                            assert_eq!(format(&e), reference(&e), "{e:?}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn quoting_escapes_as_debug_does() {
        for s in [
            "plain",
            "a\"b",
            "back\\slash",
            "tab\there",
            "caf\u{e9}",
            "\u{7f}",
            "",
        ] {
            let mut line = String::new();
            push_quoted(&mut line, s);
            assert_eq!(line, format!("{s:?}"));
        }
    }

    fn logs(capacity: usize) -> (AccessLogs, mpsc::Receiver<Batch>, Counter) {
        let (tx, rx) = mpsc::channel(capacity);
        let dropped = Counter::default();
        let logs = AccessLogs {
            tx,
            dropped: dropped.clone(),
        };
        (logs, rx, dropped)
    }

    #[test]
    fn a_full_queue_drops_and_counts() {
        let (logs, _rx, dropped) = logs(1);
        let log = logs.worker();
        let e = entry();
        // The first full batch takes the queue's one place.
        for _ in 0..BATCH {
            log.record(&e, Instant::now());
        }
        assert_eq!(dropped.get(), 0);
        for _ in 0..BATCH {
            log.record(&e, Instant::now());
        }
        assert_eq!(dropped.get(), BATCH as u64);
    }

    #[test]
    fn a_batch_becomes_the_lines_it_holds() {
        let (logs, mut rx, _) = logs(4);
        let log = logs.worker();
        let other = AccessEntry {
            app: "blog".into(),
            status: 404,
            path: PathAndQuery::from_static("/a%20b?q=1"),
            ..entry()
        };
        let before = unix_nanos_now();
        log.record(&entry(), Instant::now());
        log.record(&other, Instant::now());
        let after = unix_nanos_now();
        log.flush();
        log.flush(); // nothing left: no empty batch
        let batch = rx.try_recv().unwrap();
        assert!(rx.try_recv().is_err());
        let mut lines = Vec::new();
        batch.into_lines(&"host1".into(), &"host1-router".into(), &mut lines);
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].app, "shop");
        assert_eq!(lines[0].message, format(&entry()));
        assert_eq!(lines[1].app, "blog");
        assert_eq!(lines[1].message, format(&other));
        assert!(lines[0].timestamp_ns <= lines[1].timestamp_ns);
        for line in &lines {
            assert_eq!(line.process_type.as_deref(), Some("router"));
            assert_eq!(line.job.as_deref(), Some("host1"));
            assert_eq!(line.host.as_deref(), Some("host1-router"));
            // Within the run, give or take how long the batch's two clock reads were
            // apart (the thread can be preempted between them).
            let slack = 1_000_000_000;
            assert!(
                (before - slack..=after + slack).contains(&line.timestamp_ns),
                "{line:?}"
            );
        }
    }

    #[test]
    fn a_line_is_dated_from_the_instant_its_request_finished() {
        let mono = Instant::now();
        let wall = 1_800_000_000_000_000_000;
        let mut batch = Batch {
            anchor: Some((mono, wall)),
            ..Batch::default()
        };
        let ms = Duration::from_millis(1);
        assert_eq!(batch.wall_time(mono + 3 * ms), wall + 3_000_000);
        assert_eq!(batch.wall_time(mono), wall);
        // A request that finished before the anchor was read (the first line's).
        assert_eq!(batch.wall_time(mono - 2 * ms), wall - 2_000_000);
    }

    #[tokio::test]
    async fn a_batch_goes_out_a_window_after_its_first_line() {
        let (logs, mut rx, _) = logs(4);
        let log = logs.worker();
        tokio::spawn(log.clone().flush_after_window());
        let sent = std::time::Instant::now();
        log.record(&entry(), Instant::now());
        log.record(&entry(), Instant::now());
        let batch = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("a batch within 5 s")
            .unwrap();
        assert!(sent.elapsed() >= WINDOW);
        assert_eq!(batch.ends.len(), 2);
        // The next line starts a new window.
        log.record(&entry(), Instant::now());
        let batch = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("a second batch within 5 s")
            .unwrap();
        assert_eq!(batch.ends.len(), 1);
    }
}
