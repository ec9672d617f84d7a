//! The request handler: route, check limits, choose a backend, forward, retry.
//!
//! Flow of one request ([`Proxy::handle`]):
//! 1. `X-Request-Id` (kept or generated); requests refused whatever their route
//!    ([`refuse`]: two `Host` headers, `CONNECT`, `TRACE`); the route from host (the
//!    target's authority, else `Host`) and path (404 if none); header bytes (431) and
//!    `Content-Length` (413) against the limits.
//! 2. The body is read into memory ([`body`]: 413 beyond the body limit, 503 beyond
//!    the router-wide budget, 408 when it stalls), so a failed attempt can be sent
//!    again; upgrade requests send no body.
//! 3. Attempts: [`balance::pick`] (sticky cookie, else power of two choices on
//!    in-flight requests, never a backend already tried, none that refused a connection
//!    in the last `down_after_refusal` while another is left), send on one of its
//!    keep-alive connections (`upstream`, driven by this task) with the backend
//!    timeout, classify a failure ([`classify`]) and ask
//!    [`retry::verdict`] whether to go on. 503 when the app has no backend, 504 on
//!    timeout, 502 otherwise.
//! 4. The response streams back; its end (or the client going away) records metrics
//!    and the access line. A `101 Switching Protocols` to an upgrade request splices
//!    the two upgraded connections.
//!
//! Every decision in this flow is a pure function in its own module (`table`,
//! `balance`, `retry`, `headers`, `sticky`); this file only does the I/O between them.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{ALLOW, CONTENT_LENGTH, CONTENT_TYPE, HOST, RETRY_AFTER, SET_COOKIE};
use http::uri::PathAndQuery;
use http::{HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::Full;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use tokio::sync::watch;

use crate::access::{AccessEntry, AccessLog};
use crate::balance::{self, Pick};
use crate::body::{self, BodyBudget, BodyError};
use crate::headers::{self, Forwarded};
use crate::metrics::Metrics;
use crate::refuse::{self, Refusal};
use crate::retry::{self, Failure, GiveUpReason, RetryVerdict};
use crate::state::{Backend, InFlight, Snapshot};
use crate::sticky::StickyKey;
use crate::upstream::{self, BackendConns, ConnSettings, SendError, UpstreamBody};

/// The body of every response the proxy sends: a backend's body on its way through, or
/// the proxy's own (an error's text, an upgrade's empty body). An enum rather than a
/// boxed body: no allocation per response.
pub struct ProxyBody(BodyKind);

// Nearly every response is the large variant: boxing it would bring back the
// allocation per response that this enum takes away.
#[allow(clippy::large_enum_variant)]
enum BodyKind {
    Backend(Observed),
    Own(Full<Bytes>),
}

impl ProxyBody {
    fn own(bytes: Bytes) -> Self {
        ProxyBody(BodyKind::Own(Full::new(bytes)))
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match &mut self.get_mut().0 {
            BodyKind::Backend(b) => Pin::new(b).poll_frame(cx),
            BodyKind::Own(f) => Pin::new(f)
                .poll_frame(cx)
                .map(|frame| frame.map(|r| r.map_err(|never: Infallible| match never {}))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            BodyKind::Backend(b) => b.is_end_stream(),
            BodyKind::Own(f) => f.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            BodyKind::Backend(b) => b.size_hint(),
            BodyKind::Own(f) => f.size_hint(),
        }
    }
}

/// Size and time limits.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest request body (413 beyond).
    pub max_body_bytes: usize,
    /// Bytes of request bodies all workers hold at most (503 for a body beyond).
    pub max_buffered_body_bytes: usize,
    /// Longest wait for the next bytes of a request body (408 after).
    pub body_read_timeout: Duration,
    /// Largest request header block (431 beyond).
    pub max_header_bytes: usize,
    /// How long a backend may take to send response headers (504 after).
    pub backend_timeout: Duration,
    /// How long connecting to a backend may take before another is tried.
    pub connect_timeout: Duration,
    /// Attempts per request, the first included.
    pub max_attempts: usize,
    /// Idle keep-alive connections to backends are closed after this.
    pub pool_idle_timeout: Duration,
    /// How long a backend that refused a connection is skipped (while others are left).
    pub down_after_refusal: Duration,
    /// How long bytes sent to a backend may stay unacknowledged before its connection is
    /// dropped (`TCP_USER_TIMEOUT`). A backend whose machine died or whose link was cut
    /// answers nothing, not even a reset: without this, a request sent on a kept-alive
    /// connection to it waits the whole backend timeout (504); with it, the connection
    /// fails within this time and an idempotent request goes to another backend. A live
    /// backend's kernel acknowledges within milliseconds, however slow its answer.
    pub backend_ack_timeout: Duration,
    /// Client connections open from one client address (an IPv6 /64) at most; beyond,
    /// a new one is closed at once ([`crate::admission`]).
    pub max_connections_per_client: usize,
    /// Client connections open at most; at this many, accepting waits until one closes.
    pub max_connections: usize,
    /// Backend connections open at most (pooled, in use and upgraded, all backends); a
    /// request that needs another gets a 503 ([`crate::upstream::BackendConns`]).
    pub max_backend_connections: usize,
    /// A client connection on which no byte moves for this long is asked to close, and
    /// dropped if it stays silent for as long again ([`crate::idle`]).
    pub client_idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 10 << 20,
            max_buffered_body_bytes: 256 << 20,
            body_read_timeout: Duration::from_secs(60),
            max_header_bytes: 32 << 10,
            backend_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(2),
            max_attempts: 3,
            pool_idle_timeout: Duration::from_secs(60),
            down_after_refusal: Duration::from_secs(2),
            backend_ack_timeout: Duration::from_secs(2),
            max_connections_per_client: 1000,
            max_connections: crate::admission::default_total(),
            max_backend_connections: crate::admission::default_total(),
            client_idle_timeout: Duration::from_secs(60),
        }
    }
}

/// The client connection a request came in on.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    /// The client's address.
    pub peer: SocketAddr,
    /// The port it connected to.
    pub local_port: u16,
    /// `http` or `https`.
    pub proto: &'static str,
}

/// One per router worker thread, shared by the connections that worker serves: what a
/// request reads and counts into is the worker's own (its copy of the snapshot, its
/// access log batch, its shard of the metrics), never a cache line another worker
/// writes.
pub struct Proxy {
    state: std::sync::Mutex<SnapshotCache>,
    conn: ConnSettings,
    limits: Limits,
    sticky: StickyKey,
    metrics: Arc<Metrics>,
    access: Option<AccessLog>,
    /// The router-wide budget request bodies are read within.
    bodies: Arc<BodyBudget>,
}

/// A worker's copy of the routing snapshot and the watch it follows.
struct SnapshotCache {
    rx: watch::Receiver<Arc<Snapshot>>,
    /// A copy of the latest snapshot in an `Arc` of this worker's own: cloning it per
    /// request counts references on no line another worker writes.
    current: Arc<Snapshot>,
}

/// Label for requests that matched no route.
const NO_APP: &str = "-";

impl Proxy {
    /// A worker's proxy, reading routes and backends from `state`, request bodies within
    /// `bodies` and backend connections within `backend_conns` (one budget and one count
    /// for all workers).
    pub fn new(
        mut state: watch::Receiver<Arc<Snapshot>>,
        limits: Limits,
        sticky: StickyKey,
        metrics: Arc<Metrics>,
        access: Option<AccessLog>,
        bodies: Arc<BodyBudget>,
        backend_conns: Arc<BackendConns>,
    ) -> Self {
        let conn = ConnSettings {
            connect_timeout: limits.connect_timeout,
            ack_timeout: limits.backend_ack_timeout,
            idle_timeout: limits.pool_idle_timeout,
            open: backend_conns,
        };
        let current = Arc::new(state.borrow_and_update().localized());
        Proxy {
            state: std::sync::Mutex::new(SnapshotCache { rx: state, current }),
            conn,
            limits,
            sticky,
            metrics,
            access,
            bodies,
        }
    }

    /// The limits its requests are held to.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The worker's access log, if access lines are on.
    pub fn access_log(&self) -> Option<&AccessLog> {
        self.access.as_ref()
    }

    /// The current routing snapshot: the worker's copy, renewed when the watch changed.
    fn snapshot(&self) -> Arc<Snapshot> {
        let mut cache = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if cache.rx.has_changed().unwrap_or(false) {
            let fresh = Arc::new(cache.rx.borrow_and_update().localized());
            cache.current = fresh;
        }
        Arc::clone(&cache.current)
    }

    /// Handles one request from a client connection (`fwd`: its forwarding headers, made
    /// once per connection); never fails (errors are responses).
    pub async fn handle(
        self: &Arc<Self>,
        mut req: Request<Incoming>,
        conn: ConnInfo,
        fwd: &Forwarded,
    ) -> Response<ProxyBody> {
        let started = Instant::now();
        let request_id = headers::request_id(req.headers(), new_request_id);
        let host = request_host(&req);
        let mut log = Pending {
            started,
            app: None,
            method: req.method().clone(),
            path: req
                .uri()
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
            host: host.clone(),
            backend: None,
            attempts: 0,
            request_id: request_id.clone(),
            client: conn.peer,
            proxy: Arc::clone(self),
        };
        if let Some(refusal) = refuse::check(req.method(), req.headers()) {
            let mut resp = log.finish_error(refusal.status(), &request_id, refusal.message());
            if refusal == Refusal::Method {
                resp.headers_mut().insert(ALLOW, refuse::ALLOWED);
            }
            return resp;
        }
        let host = host.to_str().unwrap_or("");

        let snapshot = self.snapshot();
        let Some(route) = snapshot.table.lookup(host, req.uri().path()) else {
            return log.finish_error(StatusCode::NOT_FOUND, &request_id, "no route for this host");
        };
        log.app = Some(Arc::clone(&route.app));
        if headers::header_bytes(req.headers()) > self.limits.max_header_bytes {
            return log.finish_error(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                &request_id,
                "request headers too large",
            );
        }
        let declared = req
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.limits.max_body_bytes as u64) {
            return log.finish_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                &request_id,
                "request body too large",
            );
        }

        let upgrade = headers::is_upgrade(req.headers());
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();
        // The body's bytes stay leased from the router's budget until the request is
        // done with them (its last attempt sent or failed).
        let (body, _lease) = if upgrade || body.is_end_stream() {
            (Bytes::new(), None)
        } else {
            // Boxed, like the upgrade below: a request future is moved whole more than
            // once per request, so the paths most requests skip stay out of its size.
            match Box::pin(body::read(body, &self.limits, &self.bodies)).await {
                Ok((bytes, lease)) => (bytes, Some(lease)),
                Err(e) => {
                    let mut resp = log.finish_error(e.status(), &request_id, &e.to_string());
                    if matches!(e, BodyError::Busy) {
                        resp.headers_mut()
                            .insert(RETRY_AFTER, HeaderValue::from_static("1"));
                    }
                    return resp;
                }
            }
        };
        headers::to_upstream(&mut parts.headers, fwd, &request_id, upgrade);
        if parts.uri.authority().is_some() || !parts.headers.contains_key(HOST) {
            // The target's authority (HTTP/2, or an absolute-form target, whose `Host`
            // RFC 9112 3.2.2 says to replace), already a header value in the log.
            parts.headers.insert(HOST, log.host.clone());
        }
        let target = parts
            .uri
            .path_and_query()
            .map_or_else(|| Uri::from_static("/"), |p| Uri::from(p.clone()));
        let sticky_app = route.sticky.then(|| route.app.clone());
        let sticky_addr = sticky_app
            .as_deref()
            .and_then(|app| self.sticky.from_headers(app, &parts.headers));
        let empty = Vec::new();
        let backends = snapshot.backends.get(&*route.app).unwrap_or(&empty);

        let mut tried: smallvec::SmallVec<[SocketAddr; 4]> = smallvec::SmallVec::new();
        let mut last_error = String::new();
        loop {
            let candidates = crate::state::candidates(backends);
            let backend: &Arc<Backend> = match balance::pick(
                &candidates,
                &tried,
                sticky_addr,
                (rand::random(), rand::random()),
            ) {
                Pick::Backend { index, .. } => &backends[index],
                Pick::NoBackend => {
                    return log.finish_error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        &request_id,
                        "no backend is up for this app",
                    );
                }
                Pick::AllTried => {
                    return log.finish_error(
                        StatusCode::BAD_GATEWAY,
                        &request_id,
                        &format!("every backend failed: {last_error}"),
                    );
                }
            };
            tried.push(backend.addr);
            log.backend = Some(backend.addr);
            log.attempts = tried.len();
            // The last possible attempt (no attempt or no untried backend left after it)
            // takes the headers; any other sends a copy, kept for the next.
            let last = tried.len() >= self.limits.max_attempts
                || candidates.iter().all(|c| tried.contains(&c.addr));
            let headers = if last {
                std::mem::take(&mut parts.headers)
            } else {
                parts.headers.clone()
            };
            let upstream = build_upstream(&parts.method, headers, &target, body.clone());
            let in_flight = backend.begin();
            let failure = match tokio::time::timeout(self.limits.backend_timeout, async {
                if upgrade {
                    Box::pin(upstream::send_upgrade(backend.addr, upstream, &self.conn)).await
                } else {
                    upstream::send(backend, upstream, &self.conn).await
                }
            })
            .await
            {
                Ok(Ok(mut resp)) => {
                    let switching = upgrade && resp.status() == StatusCode::SWITCHING_PROTOCOLS;
                    if switching {
                        if let Some(client_side) = client_upgrade {
                            splice(
                                client_side,
                                hyper::upgrade::on(&mut resp),
                                in_flight,
                                backend.addr,
                            );
                        }
                        let (mut head, _) = resp.into_parts();
                        headers::to_client(&mut head.headers, &request_id, true);
                        let status = head.status.as_u16();
                        log.finish(status, 0);
                        return Response::from_parts(head, ProxyBody::own(Bytes::new()));
                    }
                    let (mut head, incoming) = resp.into_parts();
                    headers::to_client(&mut head.headers, &request_id, false);
                    if let Some(app) = &sticky_app {
                        if sticky_addr != Some(backend.addr) {
                            if let Ok(v) =
                                HeaderValue::from_str(&self.sticky.set_cookie(app, backend.addr))
                            {
                                head.headers.append(SET_COOKIE, v);
                            }
                        }
                    }
                    let status = head.status.as_u16();
                    let body = Observed {
                        inner: incoming,
                        bytes: 0,
                        done: Some((log, status)),
                        _in_flight: in_flight,
                    };
                    return Response::from_parts(head, ProxyBody(BodyKind::Backend(body)));
                }
                Ok(Err(e)) => {
                    last_error = error_chain(&e);
                    classify(&e)
                }
                Err(_) => {
                    last_error = format!("no response within {:?}", self.limits.backend_timeout);
                    Failure::Timeout
                }
            };
            drop(in_flight);
            if failure == Failure::Connect {
                backend.mark_down(self.limits.down_after_refusal);
            }
            match retry::verdict(
                failure,
                &parts.method,
                tried.len(),
                self.limits.max_attempts,
            ) {
                RetryVerdict::Retry(reason) => {
                    tracing::debug!(app = %route.app, backend = %backend.addr, ?reason, error = %last_error, "retrying on another backend");
                    self.metrics.retry(&route.app, reason.label());
                }
                RetryVerdict::GiveUp(reason) => {
                    tracing::debug!(app = %route.app, backend = %backend.addr, ?reason, error = %last_error, "request failed");
                    let status = match reason {
                        GiveUpReason::TimedOut => StatusCode::GATEWAY_TIMEOUT,
                        GiveUpReason::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
                        _ => StatusCode::BAD_GATEWAY,
                    };
                    let mut resp = log.finish_error(
                        status,
                        &request_id,
                        &format!("backend failed: {last_error}"),
                    );
                    if reason == GiveUpReason::Overloaded {
                        resp.headers_mut()
                            .insert(RETRY_AFTER, HeaderValue::from_static("1"));
                    }
                    return resp;
                }
            }
        }
    }
}

/// A random request id (32 hex digits), written straight into its header value. The
/// digits are the value's owner (`Bytes::from_owner`): one allocation, and the clones
/// (the backend's request, the response, the access line) only count references, where
/// bytes copied from a slice take a second allocation at the first clone.
fn new_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = rand::random::<u128>();
    let mut out = [0u8; 32];
    for digit in out.iter_mut().rev() {
        *digit = HEX[(id & 0xf) as usize];
        id >>= 4;
    }
    HeaderValue::from_maybe_shared(Bytes::from_owner(out))
        .unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

/// The request's host: the target's authority when it has one (HTTP/2's `:authority`,
/// or an absolute-form target, which RFC 9112 3.2.2 says wins over `Host`, as nginx
/// has it), without any user info; else the `Host` header; empty when neither is
/// there. A clone of the header value shares its bytes.
fn request_host<B>(req: &Request<B>) -> HeaderValue {
    if let Some(authority) = req.uri().authority() {
        let text = authority.as_str();
        let host_port = text.rsplit_once('@').map_or(text, |(_, after)| after);
        return HeaderValue::from_str(host_port).unwrap_or_else(|_| HeaderValue::from_static(""));
    }
    match req.headers().get(HOST) {
        Some(v) => v.clone(),
        None => HeaderValue::from_static(""),
    }
}

/// The request to send to a backend: HTTP/1.1, origin-form `target`, the prepared
/// headers (with `Host`).
fn build_upstream(
    method: &Method,
    headers: http::HeaderMap,
    target: &Uri,
    body: Bytes,
) -> Request<Full<Bytes>> {
    let mut req = Request::new(Full::new(body));
    *req.method_mut() = method.clone();
    *req.uri_mut() = target.clone();
    *req.version_mut() = Version::HTTP_11;
    *req.headers_mut() = headers;
    req
}

/// What a failed send means for retrying.
pub fn classify(e: &SendError) -> Failure {
    match e {
        SendError::Connect(_) => Failure::Connect,
        SendError::Closed => Failure::ClosedBeforeResponse,
        SendError::Busy => Failure::Overloaded,
        SendError::Http(h) => classify_cause(h),
    }
}

/// What the cause of a failed send on an established connection means for retrying:
/// the connection ended before any byte of a response (closed, reset, or dropped by the
/// kernel because the backend stopped acknowledging, `ETIMEDOUT` from
/// [`Limits::backend_ack_timeout`]), or anything else. Looks through `cause`'s chain.
pub fn classify_cause(cause: &(dyn std::error::Error + 'static)) -> Failure {
    let mut source = Some(cause);
    while let Some(err) = source {
        if let Some(h) = err.downcast_ref::<hyper::Error>() {
            if h.is_incomplete_message() || h.is_canceled() {
                return Failure::ClosedBeforeResponse;
            }
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            if matches!(
                io.kind(),
                ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof | TimedOut
            ) {
                return Failure::ClosedBeforeResponse;
            }
        }
        source = err.source();
    }
    Failure::Other
}

/// `e` and its sources, `: `-separated.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// Copies bytes both ways between the client's and the backend's upgraded connections.
fn splice(
    client: hyper::upgrade::OnUpgrade,
    backend: hyper::upgrade::OnUpgrade,
    in_flight: InFlight,
    addr: SocketAddr,
) {
    tokio::spawn(async move {
        let _in_flight = in_flight;
        let (client, backend) = match tokio::try_join!(client, backend) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::debug!(backend = %addr, error = %e, "upgrade failed");
                return;
            }
        };
        let (mut client, mut backend) = (TokioIo::new(client), TokioIo::new(backend));
        if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut backend).await {
            tracing::debug!(backend = %addr, error = %e, "upgraded connection ended");
        }
    });
}

/// A request's log and metrics, recorded once when its response ends.
struct Pending {
    started: Instant,
    /// The app its route names; `None` before (or without) a route.
    app: Option<Arc<str>>,
    method: Method,
    path: PathAndQuery,
    host: HeaderValue,
    backend: Option<SocketAddr>,
    attempts: usize,
    request_id: HeaderValue,
    client: SocketAddr,
    /// The worker's proxy: its metrics and access log.
    proxy: Arc<Proxy>,
}

impl Pending {
    /// Records the finished request.
    fn finish(self, status: u16, bytes: u64) {
        let finished = Instant::now();
        let duration = finished.saturating_duration_since(self.started);
        self.proxy.metrics.request(
            self.app.as_deref().unwrap_or(NO_APP),
            status,
            duration.as_secs_f64(),
        );
        if let (Some(access), Some(app)) = (&self.proxy.access, self.app) {
            access.record(
                &AccessEntry {
                    app,
                    method: self.method,
                    path: self.path,
                    host: self.host,
                    status,
                    bytes,
                    backend: self.backend,
                    attempts: self.attempts,
                    duration,
                    request_id: self.request_id,
                    client: self.client,
                },
                finished,
            );
        }
    }

    /// Records and builds a plain-text error response.
    fn finish_error(
        self,
        status: StatusCode,
        request_id: &HeaderValue,
        message: &str,
    ) -> Response<ProxyBody> {
        let text = format!(
            "{} {}: {message}\n",
            status.as_u16(),
            status.canonical_reason().unwrap_or("")
        );
        self.finish(status.as_u16(), text.len() as u64);
        let mut resp = Response::new(ProxyBody::own(Bytes::from(text)));
        *resp.status_mut() = status;
        resp.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        resp.headers_mut()
            .insert(headers::X_REQUEST_ID, request_id.clone());
        resp
    }
}

/// A backend's response body on its way to the client: counts bytes, holds the
/// backend's in-flight count, and records the request when it ends or is dropped.
struct Observed {
    inner: UpstreamBody,
    bytes: u64,
    done: Option<(Pending, u16)>,
    _in_flight: InFlight,
}

impl Observed {
    fn complete(&mut self) {
        if let Some((pending, status)) = self.done.take() {
            pending.finish(status, self.bytes);
        }
    }
}

impl Drop for Observed {
    fn drop(&mut self) {
        self.complete();
    }
}

impl Body for Observed {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.bytes += data.len() as u64;
                }
            }
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => self.complete(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error that wraps another, as hyper and hyper-util wrap the socket's.
    #[derive(Debug)]
    struct Wrapped(std::io::Error);

    impl std::fmt::Display for Wrapped {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "send failed")
        }
    }

    impl std::error::Error for Wrapped {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    fn check(kind: std::io::ErrorKind, expected: Failure) {
        let wrapped = Wrapped(std::io::Error::from(kind));
        assert_eq!(classify_cause(&wrapped), expected, "{kind:?}");
    }

    #[test]
    fn generated_request_ids_are_32_hex_digits() {
        let a = new_request_id();
        let b = new_request_id();
        for id in [&a, &b] {
            let text = id.to_str().unwrap();
            assert_eq!(text.len(), 32, "{text}");
            assert!(text
                .bytes()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        }
        assert_ne!(a, b);
    }

    #[test]
    fn a_connection_that_ended_before_the_response_is_closed_before_response() {
        use std::io::ErrorKind::*;
        // TimedOut: the kernel dropped a connection whose backend stopped acknowledging
        // (a dead machine, a cut link).
        for kind in [
            ConnectionReset,
            ConnectionAborted,
            BrokenPipe,
            UnexpectedEof,
            TimedOut,
        ] {
            check(kind, Failure::ClosedBeforeResponse);
        }
        for kind in [InvalidData, PermissionDenied, Other] {
            check(kind, Failure::Other);
        }
    }
}
