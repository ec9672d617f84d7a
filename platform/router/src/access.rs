//! Access lines: one per request, into the app's log stream as process type `router`
//! (`paas log -a shop --type router`), in the spirit of Heroku's router lines.
//!
//! Handlers format their [`AccessEntry`] ([`format`], pure) and hand the line to a
//! bounded channel (never blocking a request: a full channel drops the line and counts
//! it); one task takes the first line waiting, lets the lines of the next [`WINDOW`]
//! gather, and passes the batch on, one of two ways ([`AccessLogConfig`]):
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
use std::sync::Arc;
use std::time::Duration;

use http::uri::PathAndQuery;
use http::{HeaderValue, Method};
use paas_logshipper::aggregator::Aggregator;
use paas_logshipper::shipper::{Shipper, ShipperConfig, ShipperError};
use paas_logshipper::{LogLine, Stream};
use prometheus_client::metrics::counter::Counter;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Lines waiting for the spool before new ones are dropped.
const QUEUE: usize = 16 * 1024;
/// Lines spooled per append at most.
const BATCH: usize = 512;
/// How long the task lets lines gather after the first one before spooling them: under
/// load, one append to the spool, one syslog write and one journal append per window
/// instead of per request (and no wakeup of this task per request).
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
    let mut num = itoa::Buffer::new();
    line.push_str("method=");
    line.push_str(e.method.as_str());
    line.push_str(" path=");
    push_quoted(&mut line, e.path.as_str());
    line.push_str(" host=");
    line.push_str(e.host.to_str().unwrap_or("-"));
    line.push_str(" status=");
    line.push_str(num.format(e.status));
    line.push_str(" bytes=");
    line.push_str(num.format(e.bytes));
    line.push_str(" backend=");
    match e.backend {
        Some(b) => push_addr(&mut line, b),
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
    push_ip(&mut line, e.client.ip());
    line
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

/// A line on its way to the sink: formatted by the request's own thread, so that nothing
/// in the queue refers to the request's buffers (hyper reuses a connection's read buffer
/// in place only when no slice of it is alive; a slice held for the [`WINDOW`] made it
/// allocate a new buffer per request, freed later by the spooling thread).
#[derive(Debug)]
struct Formatted {
    app: Arc<str>,
    message: String,
}

/// The sending half handlers use; cheap to clone.
#[derive(Debug, Clone)]
pub struct AccessLog {
    tx: mpsc::Sender<Formatted>,
    dropped: Counter,
}

impl AccessLog {
    /// Formats and queues a line; drops it (counted) if the queue is full.
    pub fn record(&self, entry: AccessEntry) {
        let line = Formatted {
            message: format(&entry),
            app: entry.app,
        };
        if self.tx.try_send(line).is_err() {
            self.dropped.inc();
        }
    }
}

/// The spooling task and its sink.
pub struct AccessWriter {
    task: JoinHandle<Sink>,
}

impl AccessWriter {
    /// Waits for queued lines to be handed on (after every [`AccessLog`] is dropped),
    /// then stops the shipper, if any (unsent lines stay spooled for the next start).
    pub async fn shutdown(self) {
        if let Ok(sink) = self.task.await {
            sink.shutdown().await;
        }
    }
}

/// Opens the sink (the spool and its shipper, or the local aggregator) and starts the
/// task; `host` is this router's host id. Lines lost (queue full, or the sink refused
/// them) are counted in `dropped` (`router_access_lines_dropped_total`).
pub fn start(
    config: &AccessLogConfig,
    host: &str,
    dropped: Counter,
) -> Result<(AccessLog, AccessWriter), ShipperError> {
    let sink = Sink::open(config)?;
    let (tx, mut rx) = mpsc::channel::<Formatted>(QUEUE);
    let job = host.to_string();
    let sender = format!("{host}-router");
    let lost = dropped.clone();
    let task = tokio::spawn(async move {
        let mut batch = Vec::with_capacity(BATCH);
        while rx.recv_many(&mut batch, BATCH).await > 0 {
            if batch.len() < BATCH {
                tokio::time::sleep(WINDOW).await;
                while batch.len() < BATCH {
                    match rx.try_recv() {
                        Ok(entry) => batch.push(entry),
                        Err(_) => break,
                    }
                }
            }
            let now = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0);
            let mut lines: Vec<LogLine> = batch
                .drain(..)
                .map(|line| LogLine {
                    id: 0,
                    app: (*line.app).into(),
                    process_type: Some("router".into()),
                    job: Some(job.as_str().into()),
                    host: Some(sender.as_str().into()),
                    stream: Stream::Stdout,
                    timestamp_ns: now,
                    message: line.message,
                })
                .collect();
            let n = lines.len();
            if let Err(e) = sink.put(&mut lines) {
                lost.inc_by(n as u64);
                tracing::warn!(error = %e, lines = n, "access lines lost: their sink refused them");
            }
        }
        sink
    });
    let log = AccessLog { tx, dropped };
    Ok((log, AccessWriter { task }))
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

    #[test]
    fn a_full_queue_drops_and_counts() {
        let (tx, _rx) = mpsc::channel(1);
        let dropped = Counter::default();
        let log = AccessLog {
            tx,
            dropped: dropped.clone(),
        };
        let entry = entry();
        log.record(entry.clone());
        assert_eq!(dropped.get(), 0);
        log.record(entry);
        assert_eq!(dropped.get(), 1);
    }
}
