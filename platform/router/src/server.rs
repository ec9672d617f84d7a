//! Listeners: plain HTTP, HTTPS (rustls, SNI), plain HTTP behind a PROXY protocol
//! header, and the admin endpoint (`/metrics`).
//!
//! The accept loops wait for room among the router's connections before they accept
//! ([`Admission`]: at the total they wait, and a client over its own limit is closed at
//! once), then hand each connection to one of the router's worker threads in
//! turn ([`Dispatch`]); there it is served by hyper-util's auto builder (HTTP/1.1 with
//! upgrades, or HTTP/2 by preface or ALPN) in its own task, and asked to close when
//! nothing moves on it for the idle timeout ([`idle`]). On shutdown the accept loops
//! stop and every connection is asked to finish gracefully (in-flight requests
//! complete, idle keep-alive connections close).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admission::{Admission, ClientPermit, Slot};
use crate::headers::Forwarded;
use crate::idle::{self, Watched};
use crate::metrics::Metrics;
use crate::proxy::{ConnInfo, Proxy};
use crate::proxy_protocol::{self, Header};
use crate::stop::{StopSignal, Stopped};

/// How long a client has for its TLS handshake, or a balancer for its PROXY header.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What a listener expects before HTTP.
#[derive(Clone)]
pub enum Mode {
    /// HTTP right away.
    Plain,
    /// A TLS handshake (HTTPS).
    Tls(TlsAcceptor),
    /// A PROXY protocol header naming the real client, then HTTP.
    ProxyProtocol,
}

/// A connection accepted on a listener, on its way to a worker thread.
pub struct Accepted {
    stream: std::net::TcpStream,
    peer: SocketAddr,
    local_port: u16,
    mode: Mode,
    /// Its place among the router's connections.
    slot: Slot,
    /// Its place among its client's (none yet behind a PROXY header, which names the
    /// client).
    client: Option<ClientPermit>,
}

/// Hands accepted connections to the router's worker threads in turn (each then serves
/// its connections, and their backend connections, on its own single-threaded runtime).
pub struct Dispatch {
    workers: Vec<mpsc::UnboundedSender<Accepted>>,
    next: AtomicUsize,
}

impl Dispatch {
    /// A dispatcher over `workers` queues (at least one).
    pub fn new(workers: Vec<mpsc::UnboundedSender<Accepted>>) -> Self {
        Dispatch {
            workers,
            next: AtomicUsize::new(0),
        }
    }

    fn send(&self, accepted: Accepted) {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.workers.len().max(1);
        if let Some(Err(e)) = self.workers.get(i).map(|w| w.send(accepted)) {
            tracing::warn!(worker = i, peer = %e.0.peer, "the worker has stopped; closing the connection");
        }
    }
}

/// Accepts connections on `listener` until `stop`, each within `admission`'s limits,
/// handing each to a worker through `dispatch`.
pub async fn serve(
    listener: TcpListener,
    mode: Mode,
    dispatch: Arc<Dispatch>,
    admission: Arc<Admission>,
    stop: CancellationToken,
) {
    let local_port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
    loop {
        tokio::select! {
            () = admission.room() => {}
            () = stop.cancelled() => break,
        }
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stop.cancelled() => break,
        };
        let slot = admission.slot();
        // Behind a PROXY header the peer is the balancer: its client is known later.
        let client = match mode {
            Mode::ProxyProtocol => None,
            _ => match admission.client(peer.ip()) {
                Some(permit) => Some(permit),
                None => continue,
            },
        };
        let _ = stream.set_nodelay(true);
        match stream.into_std() {
            Ok(stream) => dispatch.send(Accepted {
                stream,
                peer,
                local_port,
                mode: mode.clone(),
                slot,
                client,
            }),
            Err(e) => {
                tracing::warn!(%peer, error = %e, "cannot hand a connection over; closing it")
            }
        }
    }
}

/// A worker's loop: serves the connections `queue` brings, each in a task of
/// `connections`, through `proxy`, until `stop`; a client behind a PROXY header is
/// admitted by `admission` once the header names it.
pub async fn work(
    mut queue: mpsc::UnboundedReceiver<Accepted>,
    proxy: Arc<Proxy>,
    admission: Arc<Admission>,
    stop: CancellationToken,
    connections: TaskTracker,
) {
    let serving = Serving {
        max_header_bytes: proxy.limits().max_header_bytes,
        idle_timeout: proxy.limits().client_idle_timeout,
    };
    let connections_stop = StopSignal::new();
    loop {
        let accepted = tokio::select! {
            accepted = queue.recv() => match accepted {
                Some(accepted) => accepted,
                None => break,
            },
            () = stop.cancelled() => break,
        };
        let Accepted {
            stream,
            peer,
            local_port,
            mode,
            slot,
            client,
        } = accepted;
        let stream = match tokio::net::TcpStream::from_std(stream) {
            Ok(stream) => stream,
            Err(e) => {
                tracing::warn!(%peer, error = %e, "cannot take a connection over; closing it");
                continue;
            }
        };
        let proxy = Arc::clone(&proxy);
        let admission = Arc::clone(&admission);
        let stop = connections_stop.subscribe();
        connections.spawn(async move {
            let mut info = ConnInfo {
                peer,
                local_port,
                proto: if matches!(mode, Mode::Tls(_)) {
                    "https"
                } else {
                    "http"
                },
            };
            match mode {
                Mode::Plain => {
                    let stream = Watched::new(stream, (slot, client));
                    let activity = stream.activity();
                    serve_connection(stream, activity, admission, proxy, info, serving, stop).await
                }
                Mode::ProxyProtocol => {
                    let mut stream = stream;
                    match proxy_protocol::read_header(&mut stream, HANDSHAKE_TIMEOUT).await {
                        Ok(header) => {
                            if let Header::Proxied {
                                source,
                                destination,
                            } = header
                            {
                                info.peer = source;
                                info.local_port = destination.port();
                            }
                            let Some(client) = admission.client(info.peer.ip()) else {
                                return;
                            };
                            let stream = Watched::new(stream, (slot, Some(client)));
                            let activity = stream.activity();
                            serve_connection(stream, activity, admission, proxy, info, serving, stop).await
                        }
                        Err(e) => {
                            tracing::debug!(%peer, error = %e, "closing a connection without a PROXY header")
                        }
                    }
                }
                Mode::Tls(acceptor) => {
                    let stream = Watched::new(stream, (slot, client));
                    let activity = stream.activity();
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls_stream)) => {
                            serve_connection(tls_stream, activity, admission, proxy, info, serving, stop)
                                .await
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
            }
        });
    }
    connections_stop.stop();
}

/// How a worker serves its client connections.
#[derive(Debug, Clone, Copy)]
struct Serving {
    /// Largest request header block hyper reads.
    max_header_bytes: usize,
    /// A connection on which no byte moves for this long is asked to close ([`idle`]).
    idle_timeout: Duration,
}

/// What a connection's requests share: its forwarding headers, and the count of those
/// waiting for their backend (which keeps the connection from counting as silent).
struct Shared {
    fwd: Forwarded,
    pending: idle::Pending,
}

/// Serves one client connection until it closes, `stop` asks it to, or `activity` (its
/// socket's count of reads and writes) stays still for the idle timeout (a quarter of
/// it while `admission` is pressed) with no request waiting for its backend: then it is
/// asked to close, and dropped if it stays still for as long again.
async fn serve_connection<S>(
    stream: S,
    activity: Arc<AtomicU64>,
    admission: Arc<Admission>,
    proxy: Arc<Proxy>,
    info: ConnInfo,
    serving: Serving,
    mut stop: Stopped,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let shared = Arc::new(Shared {
        fwd: Forwarded::new(info.peer.ip(), info.proto, info.local_port),
        pending: idle::Pending::default(),
    });
    let service = service_fn({
        let shared = Arc::clone(&shared);
        move |req: Request<Incoming>| {
            let proxy = Arc::clone(&proxy);
            let shared = Arc::clone(&shared);
            async move {
                let _waiting = shared.pending.enter();
                Ok::<_, Infallible>(proxy.handle(req, info, &shared.fwd).await)
            }
        }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .max_buf_size(serving.max_header_bytes.max(8192));
    builder.http2().timer(TokioTimer::new());
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let pressed = || admission.pressed();
    let quiet = idle::quiet(&activity, &shared.pending, serving.idle_timeout, pressed);
    tokio::pin!(quiet);
    let (mut stopping, mut asked_idle) = (false, false);
    loop {
        tokio::select! {
            // In this order, without drawing a random one per wake of the connection.
            biased;
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(peer = %info.peer, error = %e, "client connection ended with an error");
                }
                return;
            }
            () = &mut stop, if !stopping => {
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
            () = quiet.as_mut() => {
                if asked_idle {
                    tracing::debug!(peer = %info.peer, timeout = ?serving.idle_timeout,
                        "dropping a client connection still silent after it was asked to close");
                    return;
                }
                tracing::debug!(peer = %info.peer, timeout = ?serving.idle_timeout,
                    "closing a client connection silent for the idle timeout");
                asked_idle = true;
                conn.as_mut().graceful_shutdown();
                quiet.set(idle::quiet(&activity, &shared.pending, serving.idle_timeout, pressed));
            }
        }
    }
}

/// Serves `GET /metrics` (Prometheus text) and `GET /health` until `stop`.
pub async fn serve_admin(listener: TcpListener, metrics: Arc<Metrics>, stop: CancellationToken) {
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stop.cancelled() => break,
        };
        let metrics = Arc::clone(&metrics);
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let metrics = Arc::clone(&metrics);
                async move {
                    let (status, body) = match req.uri().path() {
                        "/metrics" => (StatusCode::OK, metrics.encode()),
                        "/health" => (StatusCode::OK, "ok\n".to_string()),
                        _ => (StatusCode::NOT_FOUND, "not found\n".to_string()),
                    };
                    let mut resp = Response::new(Full::new(Bytes::from(body)));
                    *resp.status_mut() = status;
                    resp.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                    );
                    Ok::<_, Infallible>(resp)
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "admin connection ended with an error");
            }
        });
    }
}
