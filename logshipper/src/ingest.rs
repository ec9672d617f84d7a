//! TCP listeners for the syslog and Fluent Forward inputs (optionally TLS), one task per
//! connection, feeding [`Aggregator::accept`].
//!
//! Per connection: read into one buffer (small, growing only while it holds a partial
//! message, its growth charged to a budget shared by all connections:
//! [`crate::conn_buffer`]); decode every complete message in it
//! (two phases: `check` finds a frame, then it is parsed); accept the decoded lines as one
//! batch; send forward replies (PONG, then acks once the batch is durable); read again.
//!
//! Syslog framing is chosen per connection by its first byte (digit: RFC 6587 octet
//! counting; `<`: newline-delimited). See [`crate::syslog`] and [`crate::forward`] for the
//! formats and the mapping to lines.
//!
//! # Bad input
//!
//! A connection is closed, with a logged reason and a `parse_errors` count, when its
//! stream cannot be decoded any more: unknown framing or a bad frame length, garbage
//! MessagePack or a non-forward value, a message over `max_message_bytes` (syslog:
//! `max_syslog_bytes`), a failed handshake, or a stall (a partial message and no byte for
//! `idle_timeout`, a partial message not complete `message_timeout` after it started,
//! however slowly it trickles, or replies left unread that long). A connection with
//! nothing pending is closed after `quiet_timeout`; connections beyond
//! `max_connections` are closed as soon as they are accepted. Lines decoded before the bad bytes are accepted first. A
//! syslog message that is framed correctly but is not valid RFC 5424 is skipped (counted
//! and logged), and the connection goes on.
//! Other connections and stored lines are never affected.
//!
//! Forward heartbeats: a `nil` value on a TCP connection is ignored; a UDP datagram to the
//! forward port is answered with one zero byte (Fluentd `in_forward` behaviour).
//!
//! # Authentication
//!
//! Each input authenticates with its protocol's own standard means: syslog with TLS and a
//! client certificate (`syslog_tls` from [`crate::tls::mutual_server_config`], RFC
//! 5425), forward with the shared-key handshake (`shared_key`: HELO, PING, PONG before
//! any event, [`forward_step`]). A refused connection is closed before anything it sent
//! becomes a line, counted (`reason="tls"` or `"handshake"`) and logged within
//! [`crate::close_log`]'s limit. `unauthenticated_syslog_addr` is the one plain input,
//! opened only when asked for.
//!
//! # Shutdown
//!
//! [`Ingest::shutdown`] stops the listeners, tells every connection to stop reading (each
//! has already accepted every complete message it read) and waits until all connection
//! tasks have finished.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::close_log::{LogLimit, LogVerdict};
use crate::conn_buffer::{Budget, ConnBuffer};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::aggregator::{Aggregator, Batch};
use crate::dedupe;
use crate::forward::handshake::{self, PingVerdict, SharedKey};
use crate::forward::{self, Message};
use crate::line::LogLine;
use crate::syslog::{self, Framing};

/// Settings of the inputs.
#[derive(Clone)]
pub struct IngestConfig {
    /// Address of the syslog listener (`None`: no syslog input).
    pub syslog_addr: Option<SocketAddr>,
    /// Address of the Fluent Forward listener (`None`: no forward input).
    pub forward_addr: Option<SocketAddr>,
    /// TLS of the syslog listener (`None`: plain TCP). `paas up` requires client
    /// certificates here ([`crate::tls::mutual_server_config`]): RFC 5425's way of
    /// authenticating syslog senders.
    pub syslog_tls: Option<Arc<rustls::ServerConfig>>,
    /// TLS of the forward listener (`None`: plain TCP); forward clients authenticate
    /// with the shared key, TLS only hides the stream.
    pub forward_tls: Option<Arc<rustls::ServerConfig>>,
    /// A second syslog listener, plain TCP and without any authentication, for clients
    /// that cannot do TLS (`logger --tcp`); anyone who can reach it can write into any
    /// app's log. `None` (the default): no such listener.
    pub unauthenticated_syslog_addr: Option<SocketAddr>,
    /// Largest forward message (one MessagePack value) accepted: Fluentd's and Fluent
    /// Bit's chunks of many entries travel as one message, so this is large; the
    /// buffer budget, not this, bounds what many such connections can hold together.
    pub max_message_bytes: usize,
    /// Largest syslog frame accepted: a 64 KiB message (the shipper splits longer lines)
    /// plus room for its header and structured data.
    pub max_syslog_bytes: usize,
    /// Buffer growth all connections together may hold for partial messages; a
    /// connection that would exceed it waits (ordinary lines never need any).
    pub buffer_budget: usize,
    /// Connections open at once; more are closed as soon as they are accepted.
    pub max_connections: usize,
    /// A partial message must be complete within this long of its first byte, however
    /// slowly its bytes trickle in.
    pub message_timeout: Duration,
    /// A connection with nothing pending and nothing sent for this long is closed.
    pub quiet_timeout: Duration,
    /// Largest decompressed body of a CompressedPackedForward message: no more than an
    /// uncompressed message may be, so a small gzip bomb buys nothing a plain message
    /// could not.
    pub max_inflated_bytes: usize,
    /// Longest forward line message; a longer one is cut (counted in
    /// `logshipper_lines_truncated_total`). Syslog lines are bounded by their frame.
    pub max_line_bytes: usize,
    /// A connection holding a partial message with no new byte for this long is closed
    /// (also the TLS handshake's limit).
    pub idle_timeout: Duration,
    /// Forward shared key; when set, clients must complete the HELO/PING/PONG handshake
    /// before any event is taken.
    pub shared_key: Option<SharedKey>,
    /// Bytes requested per read.
    pub read_buffer: usize,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            syslog_addr: None,
            forward_addr: None,
            syslog_tls: None,
            forward_tls: None,
            unauthenticated_syslog_addr: None,
            max_message_bytes: 16 * 1024 * 1024,
            max_syslog_bytes: 68 * 1024,
            buffer_budget: 64 * 1024 * 1024,
            max_connections: 1024,
            message_timeout: Duration::from_secs(60),
            quiet_timeout: Duration::from_secs(600),
            max_inflated_bytes: 16 * 1024 * 1024,
            max_line_bytes: 64 * 1024,
            idle_timeout: Duration::from_secs(30),
            shared_key: None,
            read_buffer: 256 * 1024,
        }
    }
}

/// Errors starting the inputs.
#[derive(Debug, Error)]
pub enum IngestError {
    /// A listener could not bind its address.
    #[error("bind {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The underlying error.
        source: io::Error,
    },
}

/// Which input a connection belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// RFC 5424 over RFC 6587 framing.
    Syslog,
    /// Fluent Forward v1.
    Forward,
}

impl Input {
    /// Label value used in metrics and logs.
    pub fn name(self) -> &'static str {
        match self {
            Input::Syslog => "syslog",
            Input::Forward => "forward",
        }
    }
}

/// Why a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// The client closed the connection at a message boundary.
    Eof,
    /// The client closed the connection in the middle of a message.
    Truncated {
        /// Bytes of the unfinished message that were discarded.
        pending: usize,
    },
    /// The server is shutting down.
    Shutdown,
    /// A partial message and no new byte for the idle timeout, or a reply the client did
    /// not read for that long.
    Stalled {
        /// Bytes of the unfinished message (or unsent reply) that were discarded.
        pending: usize,
    },
    /// The stream cannot be framed (unknown framing, bad length prefix, bad marker).
    Frame(String),
    /// A message exceeds `max_message_bytes`.
    TooLarge(String),
    /// A forward message is not valid MessagePack or not a forward shape.
    Decode(String),
    /// The shared-key handshake failed or was skipped.
    Handshake(&'static str),
    /// The TLS handshake failed.
    Tls(String),
    /// Lines could not be accepted (journal failure); they were not acked.
    Accept(String),
    /// Reading or writing the socket failed.
    Io(String),
}

impl CloseReason {
    /// Whether the connection was refused for lacking credentials: no client
    /// certificate from the cluster's CA (syslog TLS), or no or a wrong shared key
    /// (forward handshake).
    pub fn is_refusal(&self) -> bool {
        matches!(self, CloseReason::Handshake(_) | CloseReason::Tls(_))
    }

    /// The metric reason for a close caused by bad input or failure; `None` for normal
    /// closes.
    pub fn error_kind(&self) -> Option<&'static str> {
        match self {
            CloseReason::Eof | CloseReason::Shutdown => None,
            CloseReason::Truncated { .. } => Some("truncated"),
            CloseReason::Stalled { .. } => Some("stalled"),
            CloseReason::Frame(_) => Some("frame"),
            CloseReason::TooLarge(_) => Some("too_large"),
            CloseReason::Decode(_) => Some("decode"),
            CloseReason::Handshake(_) => Some("handshake"),
            CloseReason::Tls(_) => Some("tls"),
            CloseReason::Accept(_) => Some("accept"),
            CloseReason::Io(_) => Some("io"),
        }
    }
}

/// Running inputs; dropping it without [`Ingest::shutdown`] leaves them running until the
/// runtime stops.
pub struct Ingest {
    syslog_addr: Option<SocketAddr>,
    forward_addr: Option<SocketAddr>,
    unauthenticated_syslog_addr: Option<SocketAddr>,
    shutdown: CancellationToken,
    done_tx: mpsc::Sender<()>,
    done_rx: mpsc::Receiver<()>,
}

struct Ctx {
    config: IngestConfig,
    aggregator: Aggregator,
    budget: Arc<Budget>,
    connections: Arc<tokio::sync::Semaphore>,
    /// Keeps a flood of refused or broken connections from flooding the log.
    close_log: Mutex<LogLimit>,
}

impl Ctx {
    /// Counts a closed or refused connection; says whether to log it
    /// ([`crate::close_log`]).
    fn note_close(&self) -> LogVerdict {
        self.close_log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .note(std::time::Instant::now())
    }
}

impl Ingest {
    /// Binds the configured listeners and starts accepting connections.
    pub async fn start(
        config: IngestConfig,
        aggregator: Aggregator,
    ) -> Result<Ingest, IngestError> {
        let shutdown = CancellationToken::new();
        let (done_tx, done_rx) = mpsc::channel(1);
        let ctx = Arc::new(Ctx {
            config: config.clone(),
            aggregator,
            budget: Budget::new(config.buffer_budget),
            connections: Arc::new(tokio::sync::Semaphore::new(config.max_connections)),
            close_log: Mutex::new(LogLimit::default()),
        });
        let mut bound = [None, None, None];
        for (slot, (addr, input, tls)) in bound.iter_mut().zip([
            (config.syslog_addr, Input::Syslog, config.syslog_tls.clone()),
            (
                config.forward_addr,
                Input::Forward,
                config.forward_tls.clone(),
            ),
            (config.unauthenticated_syslog_addr, Input::Syslog, None),
        ]) {
            let Some(addr) = addr else { continue };
            let tls = tls.map(tokio_rustls::TlsAcceptor::from);
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|source| IngestError::Bind { addr, source })?;
            let local = listener
                .local_addr()
                .map_err(|source| IngestError::Bind { addr, source })?;
            let authenticated = match input {
                Input::Syslog => tls.is_some(),
                Input::Forward => config.shared_key.is_some(),
            };
            tracing::info!(input = input.name(), addr = %local, tls = tls.is_some(), authenticated, "listening");
            *slot = Some(local);
            if input == Input::Forward {
                let udp = tokio::net::UdpSocket::bind(local).await.map_err(|source| {
                    IngestError::Bind {
                        addr: local,
                        source,
                    }
                })?;
                tokio::spawn(heartbeat_responder(udp, shutdown.clone(), done_tx.clone()));
            }
            tokio::spawn(listen(
                listener,
                input,
                tls,
                Arc::clone(&ctx),
                shutdown.clone(),
                done_tx.clone(),
            ));
        }
        Ok(Ingest {
            syslog_addr: bound[0],
            forward_addr: bound[1],
            unauthenticated_syslog_addr: bound[2],
            shutdown,
            done_tx,
            done_rx,
        })
    }

    /// Bound address of the syslog listener.
    pub fn syslog_addr(&self) -> Option<SocketAddr> {
        self.syslog_addr
    }

    /// Bound address of the forward listener.
    pub fn forward_addr(&self) -> Option<SocketAddr> {
        self.forward_addr
    }

    /// Bound address of the unauthenticated syslog listener, if one was asked for.
    pub fn unauthenticated_syslog_addr(&self) -> Option<SocketAddr> {
        self.unauthenticated_syslog_addr
    }

    /// Stops accepting, lets every connection finish its complete messages, and waits
    /// for all of them.
    pub async fn shutdown(self) {
        let Ingest {
            shutdown,
            done_tx,
            mut done_rx,
            ..
        } = self;
        shutdown.cancel();
        drop(done_tx);
        // Every listener and connection task holds a sender; `None` means all are gone.
        let _ = done_rx.recv().await;
        tracing::info!("inputs shut down");
    }
}

async fn listen(
    listener: TcpListener,
    input: Input,
    tls: Option<tokio_rustls::TlsAcceptor>,
    ctx: Arc<Ctx>,
    shutdown: CancellationToken,
    done: mpsc::Sender<()>,
) {
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (socket, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Usually out of file descriptors: back off instead of spinning.
                tracing::warn!(input = input.name(), error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&ctx.connections).try_acquire_owned() else {
            // Refused at once (the kernel's backlog would only delay the same answer).
            ctx.aggregator
                .metrics()
                .parse_error(input.name(), "too_many_connections");
            if let LogVerdict::Log { unlogged } = ctx.note_close() {
                tracing::warn!(input = input.name(), %peer, limit = ctx.config.max_connections, unlogged_before = unlogged, "too many connections; closing the new one");
            }
            drop(socket);
            continue;
        };
        let _ = socket.set_nodelay(true);
        ctx.aggregator
            .metrics()
            .connections
            .get_or_create(&crate::metrics::InputLabel {
                input: input.name().to_owned(),
            })
            .inc();
        let ctx = Arc::clone(&ctx);
        let shutdown = shutdown.clone();
        let done = done.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let reason = serve(socket, input, tls.as_ref(), &ctx, &shutdown).await;
            drop(slot);
            match reason.error_kind() {
                None => tracing::debug!(input = input.name(), %peer, ?reason, "connection closed"),
                Some(kind) => {
                    ctx.aggregator.metrics().parse_error(input.name(), kind);
                    if let LogVerdict::Log { unlogged } = ctx.note_close() {
                        if reason.is_refusal() {
                            tracing::warn!(input = input.name(), %peer, ?reason, unlogged_before = unlogged, "connection refused: no valid credentials");
                        } else {
                            tracing::warn!(input = input.name(), %peer, ?reason, unlogged_before = unlogged, "connection closed");
                        }
                    }
                }
            }
            drop(done);
        });
    }
}

/// Reply sent to a UDP heartbeat, as Fluentd's `in_forward` does.
pub const HEARTBEAT_REPLY: &[u8] = b"\0";

/// Answers forward heartbeats: each datagram on the forward port gets [`HEARTBEAT_REPLY`].
async fn heartbeat_responder(
    socket: tokio::net::UdpSocket,
    shutdown: CancellationToken,
    done: mpsc::Sender<()>,
) {
    let mut buf = [0u8; 128];
    loop {
        let received = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = socket.recv_from(&mut buf) => r,
        };
        match received {
            Ok((_, peer)) => {
                if let Err(e) = socket.send_to(HEARTBEAT_REPLY, peer).await {
                    tracing::debug!(%peer, error = %e, "heartbeat reply failed");
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "heartbeat receive failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    drop(done);
}

async fn serve(
    socket: TcpStream,
    input: Input,
    tls: Option<&tokio_rustls::TlsAcceptor>,
    ctx: &Ctx,
    shutdown: &CancellationToken,
) -> CloseReason {
    match tls {
        None => serve_stream(socket, input, ctx, shutdown).await,
        Some(acceptor) => {
            let handshake = tokio::time::timeout(ctx.config.idle_timeout, acceptor.accept(socket));
            let stream = tokio::select! {
                _ = shutdown.cancelled() => return CloseReason::Shutdown,
                r = handshake => match r {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(e)) => return CloseReason::Tls(e.to_string()),
                    Err(_) => return CloseReason::Tls("handshake timed out".into()),
                },
            };
            serve_stream(stream, input, ctx, shutdown).await
        }
    }
}

async fn serve_stream<S>(
    mut stream: S,
    input: Input,
    ctx: &Ctx,
    shutdown: &CancellationToken,
) -> CloseReason
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let reason = match input {
        Input::Syslog => syslog_conn(&mut stream, ctx, shutdown).await,
        Input::Forward => forward_conn(&mut stream, ctx, shutdown).await,
    };
    let _ = stream.shutdown().await;
    reason
}

/// Outcome of one read.
enum ReadOutcome {
    Data(usize),
    Eof,
    Shutdown,
    Stalled,
    Failed(io::Error),
}

async fn read_more<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut ConnBuffer,
    ctx: &Ctx,
    shutdown: &CancellationToken,
) -> ReadOutcome {
    let config = &ctx.config;
    // How long this read may wait: a partial message must keep moving (idle timeout)
    // and finish within its deadline; a connection with nothing pending is closed only
    // after the long quiet timeout.
    let limit = match buf.partial_for() {
        None => config.quiet_timeout,
        Some(waited) => match config.message_timeout.checked_sub(waited) {
            Some(left) => left.min(config.idle_timeout),
            None => return ReadOutcome::Stalled,
        },
    };
    let deadline = tokio::time::Instant::now() + limit;
    // Room for the read: a connection that would exceed the buffer budget waits for
    // others to give some back, within the same deadline.
    while buf.reserve(config.read_buffer).is_err() {
        if tokio::time::Instant::now() >= deadline {
            return ReadOutcome::Stalled;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return ReadOutcome::Shutdown,
            _ = tokio::time::sleep(BUDGET_POLL) => {}
        }
    }
    let read = tokio::time::timeout_at(deadline, stream.read_buf(buf.for_read()));
    tokio::select! {
        _ = shutdown.cancelled() => ReadOutcome::Shutdown,
        r = read => match r {
            Ok(Ok(0)) => ReadOutcome::Eof,
            Ok(Ok(n)) => ReadOutcome::Data(n),
            Ok(Err(e)) => ReadOutcome::Failed(e),
            Err(_) => ReadOutcome::Stalled,
        },
    }
}

/// How often a connection waiting for buffer budget looks again.
const BUDGET_POLL: Duration = Duration::from_millis(20);

fn now_ns() -> i64 {
    chrono::Utc::now().timestamp_nanos_opt().unwrap_or(i64::MAX)
}

/// What decoding the buffered syslog bytes found; pure, no I/O.
#[derive(Debug, PartialEq, Eq)]
pub struct SyslogScan {
    /// Bytes of complete frames (to drop from the buffer).
    pub consumed: usize,
    /// Well-framed messages that were not valid RFC 5424 (skipped).
    pub bad_messages: u64,
    /// Set when the stream cannot be framed any more.
    pub close: Option<CloseReason>,
}

/// Decodes every complete syslog frame at the start of `buf` into `out`, each line with
/// the origin its `[paas id=".." spool=".."]` element names, if any.
///
/// `framing` is detected from the first byte the first time and kept. Message-level
/// errors skip the message; framing errors stop the scan with a close reason.
pub fn scan_syslog(
    buf: &[u8],
    framing: &mut Option<Framing>,
    max: usize,
    received_ns: i64,
    out: &mut Batch,
) -> SyslogScan {
    let mut scan = SyslogScan {
        consumed: 0,
        bad_messages: 0,
        close: None,
    };
    while scan.consumed < buf.len() {
        let rest = &buf[scan.consumed..];
        let f = match framing {
            Some(f) => *f,
            None => match Framing::detect(rest[0]) {
                Ok(f) => *framing.insert(f),
                Err(e) => {
                    scan.close = Some(CloseReason::Frame(e.to_string()));
                    break;
                }
            },
        };
        match syslog::frame::check(rest, f, max) {
            Ok(syslog::Check::Incomplete) => break,
            Ok(syslog::Check::Frame {
                start,
                end,
                consumed,
            }) => {
                let frame = &rest[start..end];
                scan.consumed += consumed;
                // Empty lines between newline-delimited messages carry nothing.
                if frame.is_empty() && f == Framing::NewlineDelimited {
                    continue;
                }
                match syslog::parse(frame)
                    .map_err(|e| e.to_string())
                    .and_then(|m| {
                        let origin = m.structured_data.and_then(dedupe::parse_origin);
                        let line = syslog::to_line(&m, received_ns, out.lines.last(), max)
                            .map_err(|e| e.to_string())?;
                        Ok((line, origin))
                    }) {
                    Ok((line, origin)) => out.push(line, origin),
                    Err(e) => {
                        scan.bad_messages += 1;
                        let shown = &frame[..frame.len().min(80)];
                        tracing::warn!(error = %e, message = %String::from_utf8_lossy(shown), "skipping invalid syslog message");
                    }
                }
            }
            Err(e @ syslog::FrameError::TooLarge { .. }) => {
                scan.close = Some(CloseReason::TooLarge(e.to_string()));
                break;
            }
            Err(e) => {
                scan.close = Some(CloseReason::Frame(e.to_string()));
                break;
            }
        }
    }
    scan
}

async fn syslog_conn<S>(stream: &mut S, ctx: &Ctx, shutdown: &CancellationToken) -> CloseReason
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let metrics = ctx.aggregator.metrics();
    let (lines_counter, bytes_counter) = metrics.input_counters(Input::Syslog.name());
    let mut buf = ConnBuffer::new(Arc::clone(&ctx.budget));
    let mut framing = None;
    let mut batch = Batch::default();
    let mut at_eof = false;
    loop {
        let mut scan = scan_syslog(
            &buf,
            &mut framing,
            ctx.config.max_syslog_bytes,
            now_ns(),
            &mut batch,
        );
        buf.advance(scan.consumed);
        if at_eof && scan.close.is_none() && !buf.is_empty() {
            // A newline-delimited stream may end without a final LF.
            if framing == Some(Framing::NewlineDelimited) {
                buf.extend_from_slice(b"\n");
                let last = scan_syslog(
                    &buf,
                    &mut framing,
                    ctx.config.max_syslog_bytes,
                    now_ns(),
                    &mut batch,
                );
                buf.advance(last.consumed);
                scan.bad_messages += last.bad_messages;
            }
        }
        for _ in 0..scan.bad_messages {
            metrics.parse_error(Input::Syslog.name(), "message");
        }
        if !batch.is_empty() {
            let n = batch.len() as u64;
            match ctx.aggregator.accept_batch(batch.take()) {
                Ok(appended) => {
                    lines_counter.inc_by(n - appended.duplicates);
                }
                Err(e) => {
                    metrics.dropped("accept", n);
                    return CloseReason::Accept(e.to_string());
                }
            }
        }
        if let Some(close) = scan.close {
            return close;
        }
        if at_eof {
            return if buf.is_empty() {
                CloseReason::Eof
            } else {
                CloseReason::Truncated { pending: buf.len() }
            };
        }
        match read_more(stream, &mut buf, ctx, shutdown).await {
            ReadOutcome::Data(n) => {
                bytes_counter.inc_by(n as u64);
            }
            ReadOutcome::Eof => at_eof = true,
            ReadOutcome::Shutdown => return CloseReason::Shutdown,
            ReadOutcome::Stalled => return CloseReason::Stalled { pending: buf.len() },
            ReadOutcome::Failed(e) => return CloseReason::Io(e.to_string()),
        }
    }
}

/// Where a forward connection is in the shared-key handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handshake {
    /// HELO was sent with this nonce; only a PING is acceptable.
    AwaitPing {
        /// Nonce sent in HELO.
        nonce: Vec<u8>,
    },
    /// Data may flow.
    Open,
}

/// What to do with one decoded forward message; pure.
#[derive(Debug, PartialEq, Eq)]
pub enum ForwardStep {
    /// Its entries were decoded into the batch; ack this chunk once durable.
    Ingest {
        /// Chunk id to ack, if the client asked.
        ack: Option<String>,
    },
    /// Nothing to do (heartbeat).
    Ignore,
    /// Send this PONG; then the connection is open, or closed with the reason.
    Pong {
        /// Encoded PONG.
        reply: Vec<u8>,
        /// Why the connection must close after the PONG, if it must.
        close: Option<&'static str>,
    },
    /// Close the connection.
    Close(&'static str),
}

/// Decides what a decoded message means in the current handshake state.
pub fn forward_step(state: &Handshake, key: Option<&SharedKey>, message: Message) -> ForwardStep {
    match (state, message) {
        (_, Message::Heartbeat) => ForwardStep::Ignore,
        (Handshake::Open, Message::Events { chunk }) => ForwardStep::Ingest { ack: chunk },
        (Handshake::AwaitPing { .. }, Message::Events { .. }) => {
            ForwardStep::Close("data sent before the shared-key handshake")
        }
        (Handshake::Open, Message::Ping(_)) => ForwardStep::Close("unexpected PING"),
        (Handshake::AwaitPing { nonce }, Message::Ping(ping)) => {
            let Some(key) = key else {
                return ForwardStep::Close("unexpected PING");
            };
            let verdict = handshake::verify_ping(key, nonce, &ping);
            let reply = handshake::pong(key, nonce, &ping, &verdict);
            let close = match verdict {
                PingVerdict::Accepted => None,
                PingVerdict::Rejected(reason) => Some(reason),
            };
            ForwardStep::Pong { reply, close }
        }
    }
}

async fn forward_conn<S>(stream: &mut S, ctx: &Ctx, shutdown: &CancellationToken) -> CloseReason
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let metrics = ctx.aggregator.metrics();
    let bytes_counter = metrics.input_counters(Input::Forward.name()).1;
    let key = ctx.config.shared_key.as_ref();
    let mut state = match key {
        Some(_) => {
            let nonce: [u8; 16] = rand::random();
            if let Err(reason) = write_out(stream, &handshake::helo(&nonce), ctx, shutdown).await {
                return reason;
            }
            Handshake::AwaitPing {
                nonce: nonce.to_vec(),
            }
        }
        None => Handshake::Open,
    };
    let mut buf = ConnBuffer::new(Arc::clone(&ctx.budget));
    let mut batch: Vec<LogLine> = Vec::new();
    let mut acks: Vec<String> = Vec::new();
    let mut out: Vec<u8> = Vec::new();
    loop {
        let mut consumed = 0;
        let mut close = None;
        while consumed < buf.len() && close.is_none() {
            let rest = &buf[consumed..];
            let len = match forward::frame::check(rest, ctx.config.max_message_bytes) {
                Ok(forward::frame::Check::Complete(len)) => len,
                Ok(forward::frame::Check::Incomplete) => break,
                Err(e @ forward::frame::FrameError::TooLarge { .. }) => {
                    close = Some(CloseReason::TooLarge(e.to_string()));
                    break;
                }
                Err(e) => {
                    close = Some(CloseReason::Frame(e.to_string()));
                    break;
                }
            };
            consumed += len;
            let parsed = match forward::parse(&rest[..len], ctx.config.max_inflated_bytes) {
                Ok(p) => p,
                Err(e) => {
                    close = Some(CloseReason::Decode(e.to_string()));
                    break;
                }
            };
            match forward_step(&state, key, parsed.message) {
                ForwardStep::Ingest { ack } => {
                    // Lines are built one at a time and accepted in bounded batches, so a
                    // message of many small entries never becomes one huge batch.
                    let mut lines = parsed.entries.lines(ctx.config.max_line_bytes);
                    for line in &mut lines {
                        batch.push(line);
                        if batch.len() >= ACCEPT_EVERY {
                            if let Err(reason) = accept_forward(ctx, &mut batch) {
                                return reason;
                            }
                        }
                    }
                    if lines.truncated() > 0 {
                        metrics.truncated(Input::Forward.name(), lines.truncated());
                    }
                    acks.extend(ack);
                }
                ForwardStep::Ignore => {}
                ForwardStep::Pong { reply, close: c } => {
                    out.extend_from_slice(&reply);
                    match c {
                        None => state = Handshake::Open,
                        Some(reason) => close = Some(CloseReason::Handshake(reason)),
                    }
                }
                ForwardStep::Close(reason) => {
                    close = Some(CloseReason::Handshake(reason));
                }
            }
        }
        buf.advance(consumed);
        if let Err(reason) = accept_forward(ctx, &mut batch) {
            return reason;
        }
        if !acks.is_empty() {
            if let Err(e) = ctx.aggregator.sync().await {
                return CloseReason::Accept(e.to_string());
            }
            for chunk in acks.drain(..) {
                out.extend_from_slice(&handshake::ack(&chunk));
            }
        }
        if !out.is_empty() {
            if let Err(reason) = write_out(stream, &out, ctx, shutdown).await {
                return reason;
            }
            out.clear();
        }
        if let Some(close) = close {
            return close;
        }
        match read_more(stream, &mut buf, ctx, shutdown).await {
            ReadOutcome::Data(n) => {
                bytes_counter.inc_by(n as u64);
            }
            ReadOutcome::Eof if buf.is_empty() => return CloseReason::Eof,
            ReadOutcome::Eof => return CloseReason::Truncated { pending: buf.len() },
            ReadOutcome::Shutdown => return CloseReason::Shutdown,
            ReadOutcome::Stalled => return CloseReason::Stalled { pending: buf.len() },
            ReadOutcome::Failed(e) => return CloseReason::Io(e.to_string()),
        }
    }
}

/// Forward lines are accepted at least this often while a message is decoded.
const ACCEPT_EVERY: usize = 4096;

/// Accepts the decoded forward lines, if any.
fn accept_forward(ctx: &Ctx, batch: &mut Vec<LogLine>) -> Result<(), CloseReason> {
    if batch.is_empty() {
        return Ok(());
    }
    let metrics = ctx.aggregator.metrics();
    let n = batch.len() as u64;
    if let Err(e) = ctx.aggregator.accept(take_batch(batch)) {
        metrics.dropped("accept", n);
        return Err(CloseReason::Accept(e.to_string()));
    }
    metrics.input_counters(Input::Forward.name()).0.inc_by(n);
    Ok(())
}

/// Takes the decoded lines, leaving an empty batch with the same capacity for the next
/// read (batches are similar in size, so this avoids regrowing the vector every time).
fn take_batch(batch: &mut Vec<LogLine>) -> Vec<LogLine> {
    let capacity = batch.capacity();
    std::mem::replace(batch, Vec::with_capacity(capacity))
}

/// Writes a reply; a client that stops reading for the idle timeout counts as stalled,
/// and shutdown interrupts the write.
async fn write_out<S: AsyncWrite + Unpin>(
    stream: &mut S,
    bytes: &[u8],
    ctx: &Ctx,
    shutdown: &CancellationToken,
) -> Result<(), CloseReason> {
    let write = async {
        stream.write_all(bytes).await?;
        stream.flush().await
    };
    tokio::select! {
        _ = shutdown.cancelled() => Err(CloseReason::Shutdown),
        r = tokio::time::timeout(ctx.config.idle_timeout, write) => match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(CloseReason::Io(e.to_string())),
            Err(_) => Err(CloseReason::Stalled { pending: bytes.len() }),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forward::Ping;

    fn scan(input: &[u8], framing: Option<Framing>) -> (SyslogScan, Vec<String>, Option<Framing>) {
        let mut framing = framing;
        let mut out = Batch::default();
        let s = scan_syslog(input, &mut framing, 1000, 5, &mut out);
        assert_eq!(out.origins.len(), out.lines.len());
        (
            s,
            out.lines.into_iter().map(|l| l.message).collect(),
            framing,
        )
    }

    #[test]
    fn syslog_scan_reads_the_senders_origin() {
        let mut framing = None;
        let mut out = Batch::default();
        let input =
            b"<14>1 - h a - - [paas id=\"7\" spool=\"00000000000000ab\"] x\n<14>1 - h a - - - y\n";
        scan_syslog(input, &mut framing, 1000, 5, &mut out);
        assert_eq!(
            out.origins,
            vec![
                Some(dedupe::Origin {
                    seq: 7,
                    spool: Some(0xab)
                }),
                None
            ]
        );
    }

    #[test]
    fn syslog_scan_detects_framing_and_skips_bad_messages() {
        let (s, msgs, f) = scan(
            b"<14>1 - - a - - - one\n\n<14>1 - - a - - - two\r\nbad\n<14>1 - - a",
            None,
        );
        assert_eq!(msgs, vec!["one", "two"]);
        assert_eq!(f, Some(Framing::NewlineDelimited));
        assert_eq!(s.bad_messages, 1);
        assert_eq!(s.close, None);
        assert_eq!(s.consumed, 50);

        let (s, msgs, f) = scan(b"21 <14>1 - - a - - - one30 <14", None);
        assert_eq!(msgs, vec!["one"]);
        assert_eq!(f, Some(Framing::OctetCounted));
        assert_eq!((s.consumed, s.close), (24, None));

        let (s, msgs, _) = scan(
            b"21 <14>1 - - a - - - oneX2 <1",
            Some(Framing::OctetCounted),
        );
        assert_eq!(msgs, vec!["one"]);
        assert_eq!(
            s.close,
            Some(CloseReason::Frame("bad frame length prefix".into()))
        );

        let (s, msgs, _) = scan(b"\x00garbage", None);
        assert!(msgs.is_empty());
        assert!(matches!(s.close, Some(CloseReason::Frame(_))));

        let (s, _, _) = scan(b"99999 <14>", None);
        assert!(matches!(s.close, Some(CloseReason::TooLarge(_))));
    }

    #[test]
    fn forward_steps_follow_the_handshake() {
        let key = SharedKey {
            key: "k".into(),
            server_hostname: "srv".into(),
        };
        let nonce = vec![9u8; 16];
        let waiting = Handshake::AwaitPing {
            nonce: nonce.clone(),
        };
        let events = || Message::Events {
            chunk: Some("c".into()),
        };
        assert_eq!(
            forward_step(&Handshake::Open, None, events()),
            ForwardStep::Ingest {
                ack: Some("c".into())
            }
        );
        assert_eq!(
            forward_step(&waiting, Some(&key), events()),
            ForwardStep::Close("data sent before the shared-key handshake")
        );
        assert_eq!(
            forward_step(&waiting, Some(&key), Message::Heartbeat),
            ForwardStep::Ignore
        );
        let good = Ping {
            hostname: b"cli".to_vec(),
            salt: b"salt".to_vec(),
            digest: handshake::digest(b"salt", b"cli", &nonce, "k").into_bytes(),
        };
        match forward_step(&waiting, Some(&key), Message::Ping(good.clone())) {
            ForwardStep::Pong { close: None, .. } => {}
            other => panic!("{other:?}"),
        }
        let bad = Ping {
            digest: b"nope".to_vec(),
            ..good.clone()
        };
        match forward_step(&waiting, Some(&key), Message::Ping(bad)) {
            ForwardStep::Pong {
                close: Some("shared key mismatch"),
                ..
            } => {}
            other => panic!("{other:?}"),
        }
        assert_eq!(
            forward_step(&Handshake::Open, Some(&key), Message::Ping(good)),
            ForwardStep::Close("unexpected PING")
        );
    }
}
