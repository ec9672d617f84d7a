//! Connections to backends: HTTP/1.1 keep-alive, pooled per backend, driven by the task
//! of the request that uses them.
//!
//! A backend connection is hyper's `client::conn::http1` pair: a `SendRequest` and the
//! `Connection` future that does the socket I/O. Nothing spawns a task for it: while a
//! request waits for its response head, [`send`] polls the connection alongside the
//! response; then the response body ([`UpstreamBody`]) polls it on every read. So a
//! request costs no wakeup of another task and no channel hop, where a client with a
//! task per connection costs two.
//!
//! Idle connections wait in their backend's [`Pool`] (most recently used first; gone
//! with the backend's registration, closed after the idle timeout), in the shard of the
//! worker thread that opened them. A connection goes
//! back only when its response body was read to the end. Taking one polls it first: a
//! connection the backend closed while it was idle is seen closed then and dropped. The
//! keep-alive race (the backend closes just as the request is handed over) is covered
//! by hyper handing the request back when none of it was written: it is then sent on
//! another connection to the same backend, as nothing of it could have been processed.
//!
//! Upgrade requests (websockets) get a connection of their own, served by a spawned
//! task with upgrades, never pooled.
//!
//! Every backend connection, pooled, in use or upgraded, is counted in
//! [`BackendConns`], which refuses a new one beyond its limit: one HTTP/2 client
//! connection can carry 200 requests at once, each on a backend connection of its own,
//! so the limit on client connections alone does not bound the descriptors requests
//! take. A request refused so gets a 503: the router's capacity, not a backend's, is
//! what ran out.

use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, Connection, SendRequest};
use hyper_util::rt::TokioIo;
use prometheus_client::metrics::gauge::Gauge;
use tokio::net::TcpStream;

use crate::idle::Watched;
use crate::state::{now_ms, Backend};
use crate::worker::Shards;

/// The request body type sent to backends (bodies are read in full first, to replay).
pub type UpstreamRequest = Request<Full<Bytes>>;

/// A backend connection's socket, holding its place in [`BackendConns`] for as long as
/// it is open (its reads and writes are counted too, unread).
type Io = TokioIo<Watched<TcpStream, Counted>>;

/// Idle connections kept per backend at most; beyond, a returned one is closed.
const MAX_IDLE: usize = 512;

/// The router's open backend connections (all workers, all backends), within a limit.
/// The count is the `router_backend_connections` gauge itself.
#[derive(Debug)]
pub struct BackendConns {
    open: Gauge,
    max: i64,
    /// Whether a refusal was logged since the count was last under the limit.
    warned: AtomicBool,
}

impl BackendConns {
    /// At most `max` connections (at least 1), counted in `open`.
    pub fn new(max: usize, open: Gauge) -> Arc<Self> {
        Arc::new(BackendConns {
            open,
            max: i64::try_from(max).unwrap_or(i64::MAX).max(1),
            warned: AtomicBool::new(false),
        })
    }

    /// Counts one more connection until the returned value is dropped; `None` at the
    /// limit.
    pub(crate) fn take(self: &Arc<Self>) -> Option<Counted> {
        if self.open.inc() >= self.max {
            self.open.dec();
            if !self.warned.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    limit = self.max,
                    "the router holds its most backend connections: requests needing another get 503"
                );
            }
            return None;
        }
        Some(Counted(Arc::clone(self)))
    }

    /// Connections open now.
    pub fn open(&self) -> i64 {
        self.open.get()
    }
}

/// One backend connection's place in [`BackendConns`], given back on drop.
#[derive(Debug)]
pub(crate) struct Counted(Arc<BackendConns>);

impl Drop for Counted {
    fn drop(&mut self) {
        if self.0.open.dec() <= self.0.max {
            self.0.warned.store(false, Ordering::Relaxed);
        }
    }
}

/// How connections to backends are made and kept.
#[derive(Debug, Clone)]
pub struct ConnSettings {
    /// How long connecting may take (a failure to connect, after).
    pub connect_timeout: Duration,
    /// `TCP_USER_TIMEOUT`: how long sent bytes may stay unacknowledged before the kernel
    /// drops the connection (a dead machine, a cut link).
    pub ack_timeout: Duration,
    /// Idle connections are closed after this.
    pub idle_timeout: Duration,
    /// The router's count of backend connections, and its limit.
    pub open: Arc<BackendConns>,
}

/// Why a request could not be sent or got no response head.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// Connecting failed (refused, unreachable, timed out): the backend saw nothing.
    #[error("connecting: {0}")]
    Connect(#[source] std::io::Error),
    /// The connection failed or closed after the request was handed to it.
    #[error("{0}")]
    Http(#[source] hyper::Error),
    /// The connection ended without a response and without an error of its own.
    #[error("the connection closed before a response")]
    Closed,
    /// A new connection was needed and the router holds its most ([`BackendConns`]).
    #[error("the router holds its most backend connections")]
    Busy,
}

/// One open connection: the request half and the I/O future.
struct Conn {
    sender: SendRequest<Full<Bytes>>,
    io: Pin<Box<Connection<Io, Full<Bytes>>>>,
}

/// An idle connection and since when.
struct Idle {
    conn: Conn,
    /// When it went idle ([`crate::state::now_ms`]).
    since_ms: u64,
}

/// A backend's idle keep-alive connections, sharded by worker thread, so a worker takes
/// back the connections it opened, whose sockets its own reactor watches.
#[derive(Default)]
pub struct Pool {
    shards: Shards<Vec<Idle>>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Pool({} idle)", self.idle_count())
    }
}

impl Pool {
    /// Idle connections now.
    pub fn idle_count(&self) -> usize {
        self.shards.each().map(|s| s.len()).sum()
    }

    /// Closes the connections idle for longer than `timeout`.
    pub fn sweep(&self, timeout: Duration) {
        let now = now_ms();
        for mut shard in self.shards.each() {
            shard.retain(|i| young(i, now, timeout));
        }
    }

    /// The most recently used idle connection younger than `timeout`, if any.
    fn take(&self, timeout: Duration) -> Option<Conn> {
        let now = now_ms();
        let mut idle = self.shards.mine();
        while let Some(i) = idle.pop() {
            if young(&i, now, timeout) {
                return Some(i.conn);
            }
        }
        None
    }

    fn put(&self, conn: Conn) {
        let mut idle = self.shards.mine();
        if idle.len() < MAX_IDLE {
            idle.push(Idle {
                conn,
                since_ms: now_ms(),
            });
        }
    }
}

/// Whether `idle` has been idle for less than `timeout` at `now` (milliseconds).
fn young(idle: &Idle, now: u64, timeout: Duration) -> bool {
    (now.saturating_sub(idle.since_ms) as u128) < timeout.as_millis()
}

/// Whether `conn` can take a request now: its I/O is polled (a close the backend sent
/// while it was idle ends it) and its sender must be ready.
fn ready(conn: &mut Conn, cx: &mut Context<'_>) -> bool {
    if conn.io.as_mut().poll(cx).is_ready() {
        return false;
    }
    matches!(conn.sender.poll_ready(cx), Poll::Ready(Ok(())))
}

/// Opens a connection to `addr`, counted in the router's backend connections:
/// `TCP_NODELAY`, `TCP_USER_TIMEOUT`, HTTP/1.1 handshake.
async fn connect(
    addr: SocketAddr,
    settings: &ConnSettings,
) -> Result<(SendRequest<Full<Bytes>>, Connection<Io, Full<Bytes>>), SendError> {
    let counted = settings.open.take().ok_or(SendError::Busy)?;
    let stream =
        match tokio::time::timeout(settings.connect_timeout, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(SendError::Connect(e)),
            Err(_) => {
                return Err(SendError::Connect(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no connection within {:?}", settings.connect_timeout),
                )))
            }
        };
    stream.set_nodelay(true).map_err(SendError::Connect)?;
    set_user_timeout(&stream, settings.ack_timeout).map_err(SendError::Connect)?;
    http1::Builder::new()
        .handshake(TokioIo::new(Watched::new(stream, counted)))
        .await
        .map_err(SendError::Http)
}

/// Sets `TCP_USER_TIMEOUT` on `stream`.
fn set_user_timeout(stream: &TcpStream, timeout: Duration) -> std::io::Result<()> {
    let ms = libc::c_uint::try_from(timeout.as_millis()).unwrap_or(libc::c_uint::MAX);
    // SAFETY: a valid socket descriptor, a c_uint option value of the given size.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_USER_TIMEOUT,
            (&ms as *const libc::c_uint).cast(),
            std::mem::size_of::<libc::c_uint>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Sends `req` to `backend` on an idle pooled connection, else a new one, and waits
/// for the response head, driving the connection in the calling task. The request
/// must carry an origin-form target and its `Host` header.
pub async fn send(
    backend: &Arc<Backend>,
    mut req: UpstreamRequest,
    settings: &ConnSettings,
) -> Result<Response<UpstreamBody>, SendError> {
    loop {
        let pooled = take_ready(backend, settings.idle_timeout).await;
        let reused = pooled.is_some();
        let mut conn = match pooled {
            Some(conn) => conn,
            None => {
                // Boxed: a new connection is the rare case, and its handshake future
                // would otherwise make every request's future (moved whole, more than
                // once, per request) larger.
                let (sender, io) = Box::pin(connect(backend.addr, settings)).await?;
                Conn {
                    sender,
                    io: Box::pin(io),
                }
            }
        };
        let mut response = std::pin::pin!(conn.sender.try_send_request(req));
        let mut io_ended = false;
        let outcome = poll_fn(|cx| loop {
            if let Poll::Ready(r) = response.as_mut().poll(cx) {
                return Poll::Ready(Some(r));
            }
            if io_ended {
                // The connection ended and the response is still pending: not expected
                // of hyper, but then the connection has nothing more to say.
                return Poll::Ready(None);
            }
            match conn.io.as_mut().poll(cx) {
                Poll::Ready(_) => io_ended = true,
                Poll::Pending => return Poll::Pending,
            }
        })
        .await;
        match outcome {
            Some(Ok(resp)) => {
                let (head, incoming) = resp.into_parts();
                let body = UpstreamBody {
                    incoming,
                    conn: Some((conn, Arc::clone(backend))),
                    reusable: !io_ended,
                };
                return Ok(Response::from_parts(head, body));
            }
            Some(Err(mut e)) => match e.take_message() {
                // Nothing of it was written: an idle connection the backend closed
                // just now. Another connection to the same backend gets it.
                Some(unsent) if reused => req = unsent,
                _ => return Err(SendError::Http(e.into_error())),
            },
            None => return Err(SendError::Closed),
        }
    }
}

/// An idle connection of `backend` that is ready for a request, dropping closed ones.
async fn take_ready(backend: &Backend, timeout: Duration) -> Option<Conn> {
    while let Some(mut conn) = backend.pool().take(timeout) {
        if poll_fn(|cx| Poll::Ready(ready(&mut conn, cx))).await {
            return Some(conn);
        }
    }
    None
}

/// Sends an upgrade request (websocket) on a new connection of its own, whose I/O runs
/// in a spawned task with upgrades so the `101` response's connection can be taken over.
pub async fn send_upgrade(
    addr: SocketAddr,
    req: UpstreamRequest,
    settings: &ConnSettings,
) -> Result<Response<UpstreamBody>, SendError> {
    let (mut sender, io) = connect(addr, settings).await?;
    tokio::spawn(async move {
        if let Err(e) = io.with_upgrades().await {
            tracing::debug!(backend = %addr, error = %e, "upgrade connection ended with an error");
        }
    });
    let resp = sender.send_request(req).await.map_err(SendError::Http)?;
    Ok(resp.map(|incoming| UpstreamBody {
        incoming,
        conn: None,
        reusable: false,
    }))
}

/// A backend's response body: reading it drives the backend connection, which goes
/// back to the backend's pool when the body was read to the end.
pub struct UpstreamBody {
    incoming: Incoming,
    /// The connection and whose pool it returns to (none once released or dropped).
    conn: Option<(Conn, Arc<Backend>)>,
    /// Whether the connection's I/O is still going (it did not end or fail).
    reusable: bool,
}

impl UpstreamBody {
    /// The body ended: its connection may take another request.
    fn release(&mut self) {
        if let Some((conn, backend)) = self.conn.take() {
            if self.reusable {
                backend.pool().put(conn);
            }
        }
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // A body with nothing (left) to read is complete even if never polled to its end
        // (HEAD, 204, 304): its connection is reusable. Any other drop cuts the response
        // short, and the connection closes with it.
        if self.incoming.is_end_stream() {
            self.release();
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        if this.reusable {
            if let Some((conn, _)) = &mut this.conn {
                if conn.io.as_mut().poll(cx).is_ready() {
                    // Ended (closed, or an error the body reports): what it read is in
                    // the body's channel; it takes no other request.
                    this.reusable = false;
                }
            }
        }
        let polled = Pin::new(&mut this.incoming).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => this.release(),
            Poll::Ready(Some(Err(_))) => this.reusable = false,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.incoming.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.incoming.size_hint()
    }
}

/// Closes connections idle for longer than `timeout` in the pools of the backends of
/// `state`'s current snapshot, every half `timeout`, until `stop`. (A backend that
/// leaves the set closes its pool with it.)
pub async fn sweep_idle(
    state: tokio::sync::watch::Receiver<Arc<crate::state::Snapshot>>,
    timeout: Duration,
    stop: tokio_util::sync::CancellationToken,
) {
    let period = (timeout / 2).max(Duration::from_millis(100));
    loop {
        tokio::select! {
            () = tokio::time::sleep(period) => {}
            () = stop.cancelled() => return,
        }
        let snapshot = Arc::clone(&state.borrow());
        for backend in snapshot.backends.values().flatten() {
            backend.pool().sweep(timeout);
        }
    }
}
