//! `paas-router`: how traffic reaches the platform's apps and services.
//!
//! Two pieces:
//! - The HTTP(S) router ([`start`]): a reverse proxy on every host (`paas up`, `paas
//!   host`) that sends each request to one of its app's `web` jobs. Routes (host and
//!   optional path prefix -> app) come from `routes/<id>` in etcd plus one default
//!   route `<app>.<domain>` per app; backends from discovery (`services/<app>-web/`),
//!   both followed with watches. Module map, in the order a request meets them:
//!   `admission` (connections per client address and in all) -> `idle` (silent
//!   connections closed) -> `server` (listeners, HTTP/1.1 + HTTP/2, TLS by SNI in
//!   `tls`) -> `proxy` (the
//!   handler) -> `refuse` (ambiguous or tunnelling requests) -> `body` (request
//!   bodies read within limits and a router-wide budget) -> `table` (route match)
//!   -> `headers` (forwarding headers, limits) -> `sticky` (signed backend cookie) ->
//!   `balance` (power of two choices) -> `upstream` (keep-alive backend connections,
//!   pooled per backend, driven by the request's task) -> `retry` (retry verdicts) ->
//!   `access` (access lines to the app's log) and `metrics`.
//!   An optional listener takes a PROXY protocol header first (`proxy_protocol`).
//!   `state` turns the etcd watches into the snapshot every request reads.
//!   Each worker thread has its own `Proxy` (a copy of the snapshot, its access log
//!   batch) and its own shard of the metrics and of every backend's pool (`worker`).
//! - [`tcp_routes`]: TCP routes (`paas route add --tcp PORT`), one listener per routed
//!   port on the router's TCP address, each connection to one of the app's `web` jobs.
//! - [`tcp`], the leader-following TCP endpoint: a stable address forwarding each
//!   connection to the current leader of a service (appliances put it into
//!   `DATABASE_URL`).
//!
//! Invariants:
//! - The decisions (`refuse::check`, `table::RouteTable::lookup`, `balance::pick`,
//!   `retry::verdict`, `headers::*`, `sticky::StickyKey::verify`,
//!   `proxy_protocol::decode`, `access::format`) do no I/O.
//! - A request is sent to a second backend only when the first cannot have acted on it
//!   or the method is idempotent (`retry`), and never after a byte of the response
//!   reached the client.
//! - A backend whose registration is gone is never chosen by a request that starts
//!   after the router saw the deletion (`state`).

pub mod access;
pub mod admission;
pub mod balance;
pub mod body;
pub mod headers;
pub mod idle;
pub mod metrics;
pub mod proxy;
pub mod proxy_protocol;
pub mod refuse;
pub mod retry;
pub mod server;
pub mod state;
pub mod sticky;
pub mod stop;
pub mod table;
pub mod tcp;
pub mod tcp_routes;
pub mod tls;
pub mod upstream;
pub mod worker;

use std::net::SocketAddr;
use std::sync::Arc;

use paas_coord::{Coord, CoordError};
use paas_model::keys;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use access::AccessLogConfig;
pub use proxy::Limits;

/// How long shutdown waits for the last access lines to be spooled.
const ACCESS_DRAIN: std::time::Duration = std::time::Duration::from_secs(5);

/// Settings of the HTTP router.
#[derive(Debug, Clone)]
pub struct RouterConfig {
    /// Plain HTTP listener.
    pub listen: SocketAddr,
    /// HTTPS listener (certificates by SNI from the routes), if any.
    pub tls_listen: Option<SocketAddr>,
    /// Admin listener (`/metrics`, `/health`), if any.
    pub admin_listen: Option<SocketAddr>,
    /// Plain HTTP listener whose connections start with a PROXY protocol header (v1 or
    /// v2) naming the client, for a TCP load balancer in front; if any.
    pub proxy_protocol_listen: Option<SocketAddr>,
    /// Every app gets `<app>.<domain>`; empty: no default routes.
    pub domain: String,
    /// This host's id (access lines name it).
    pub host: String,
    /// Where access lines go; none: no access lines.
    pub access_log: Option<AccessLogConfig>,
    /// Size and time limits.
    pub limits: Limits,
    /// The address TCP routes listen on (their ports are the routes'); none: TCP routes
    /// are not served here.
    pub tcp_ip: Option<std::net::IpAddr>,
    /// Worker threads serving the HTTP(S) connections, each a single-threaded runtime
    /// (as nginx runs a worker per core); the accept loops hand connections to them in
    /// turn. A request and its backend connection stay on one thread, so serving it
    /// wakes no other thread.
    pub workers: usize,
}

impl RouterConfig {
    /// Defaults: HTTP on `listen`, no TLS, admin or access log, domain `localhost`, TCP
    /// routes on `listen`'s address.
    pub fn new(listen: SocketAddr, host: impl Into<String>) -> Self {
        RouterConfig {
            listen,
            tls_listen: None,
            admin_listen: None,
            proxy_protocol_listen: None,
            domain: "localhost".to_string(),
            host: host.into(),
            access_log: None,
            limits: Limits::default(),
            tcp_ip: Some(listen.ip()),
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }
}

/// Why the router could not start.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    /// Binding a listen address failed (in use, no permission).
    #[error("binding {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Reading routes, apps or services, or the sticky key, from etcd failed.
    #[error("etcd: {0}")]
    Coord(#[from] CoordError),
    /// The TLS configuration could not be built.
    #[error("tls: {0}")]
    Tls(#[from] tls::TlsError),
    /// The access log spool could not be opened.
    #[error("access log: {0}")]
    AccessLog(#[from] paas_logshipper::shipper::ShipperError),
    /// A worker thread or its runtime could not be started.
    #[error("starting worker {worker}: {source}")]
    Worker {
        /// The worker's index.
        worker: usize,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// A running router; [`Router::shutdown`] stops it.
pub struct Router {
    http_addr: SocketAddr,
    tls_addr: Option<SocketAddr>,
    admin_addr: Option<SocketAddr>,
    proxy_protocol_addr: Option<SocketAddr>,
    stop: CancellationToken,
    /// Cancels `stop` when the router is dropped without [`Router::shutdown`], so its
    /// worker threads end with it.
    _stop_on_drop: tokio_util::sync::DropGuard,
    tasks: Vec<JoinHandle<()>>,
    workers: Vec<std::thread::JoinHandle<()>>,
    follower: state::Follower,
    access: Option<access::AccessWriter>,
    metrics: Arc<metrics::Metrics>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("http_addr", &self.http_addr)
            .field("tls_addr", &self.tls_addr)
            .field("admin_addr", &self.admin_addr)
            .finish()
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, RouterError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| RouterError::Bind { addr, source })
}

/// How long a stopping worker lets its open connections finish before it drops them.
const CONNECTION_DRAIN: std::time::Duration = std::time::Duration::from_secs(5);

/// How far ahead a worker always has a timer pending ([`timer_floor`]).
const TIMER_FLOOR: std::time::Duration = std::time::Duration::from_secs(1);

/// Keeps a timer pending within [`TIMER_FLOOR`] on the worker's runtime, forever.
///
/// Every request registers timers far ahead: hyper's header-read deadline (30 s) when
/// its connection waits for the next request, the backend deadline (60 s). tokio's
/// time driver wakes its own thread (an `eventfd` write, then one more turn of the
/// event loop) whenever a timer is registered earlier than the earliest one it planned
/// its sleep for, and a busy worker often planned for none earlier than a 60 s backend
/// deadline: `perf` counted about one such write per 6 requests under `wrk`. With a
/// timer always due within a second, the planned wake is always earlier than any
/// per-request deadline, and registering one never wakes the driver; the cost is one
/// wakeup per second per worker.
async fn timer_floor() {
    loop {
        tokio::time::sleep(TIMER_FLOOR).await;
    }
}

/// Starts worker `index`: a thread with a single-threaded runtime serving the
/// connections `queue` brings through its own `proxy` until `stop`, then letting them
/// finish (for up to [`CONNECTION_DRAIN`]) and handing on the last lines of its
/// access log.
fn spawn_worker(
    index: usize,
    queue: tokio::sync::mpsc::UnboundedReceiver<server::Accepted>,
    proxy: Arc<proxy::Proxy>,
    admission: Arc<admission::Admission>,
    stop: CancellationToken,
) -> Result<std::thread::JoinHandle<()>, RouterError> {
    let fail = |source| RouterError::Worker {
        worker: index,
        source,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(fail)?;
    std::thread::Builder::new()
        .name(format!("paas-router-{index}"))
        .spawn(move || {
            worker::set_index(index);
            let access = proxy.access_log().cloned();
            let flusher = access.clone();
            runtime.block_on(async move {
                tokio::spawn(timer_floor());
                if let Some(log) = flusher {
                    tokio::spawn(log.flush_after_window());
                }
                let connections = tokio_util::task::TaskTracker::new();
                server::work(queue, proxy, admission, stop, connections.clone()).await;
                connections.close();
                if tokio::time::timeout(CONNECTION_DRAIN, connections.wait())
                    .await
                    .is_err()
                {
                    tracing::info!(
                        worker = index,
                        open = connections.len(),
                        "closing the connections still open after the drain period"
                    );
                }
            });
            // Dropping the runtime ends the connections still open, which record their
            // lines as they go; then the batch holds everything.
            drop(runtime);
            if let Some(log) = access {
                log.flush();
            }
        })
        .map_err(fail)
}

/// The cluster's sticky-cookie key: read, or created by whoever comes first.
async fn sticky_key(coord: &Coord) -> Result<sticky::StickyKey, CoordError> {
    let key = keys::sticky_key();
    for _ in 0..3 {
        if let Some((hex_key, _)) = coord.get::<String>(&key).await? {
            return Ok(sticky::StickyKey::new(hex_key.as_bytes()));
        }
        let fresh = format!(
            "{:032x}{:032x}",
            rand::random::<u128>(),
            rand::random::<u128>()
        );
        match coord.create(&key, &fresh).await {
            Ok(_) => return Ok(sticky::StickyKey::new(fresh.as_bytes())),
            Err(CoordError::Conflict { .. }) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(CoordError::Conflict { key })
}

/// Binds the listeners, reads the routing state from etcd (routes, apps, services
/// under `coord`'s namespace) and starts serving.
pub async fn start(coord: &Coord, config: RouterConfig) -> Result<Router, RouterError> {
    let metrics = Arc::new(metrics::Metrics::new());
    let http = bind(config.listen).await?;
    let tls = match config.tls_listen {
        Some(addr) => Some(bind(addr).await?),
        None => None,
    };
    let admin = match config.admin_listen {
        Some(addr) => Some(bind(addr).await?),
        None => None,
    };
    let proxied = match config.proxy_protocol_listen {
        Some(addr) => Some(bind(addr).await?),
        None => None,
    };
    let follower = state::follow(coord, config.domain.clone(), Arc::clone(&metrics)).await?;
    let key = sticky_key(coord).await?;
    let (access_logs, access) = match &config.access_log {
        Some(cfg) => {
            let (logs, writer) = access::start(cfg, &config.host, metrics.access_dropped())?;
            (Some(logs), Some(writer))
        }
        None => (None, None),
    };
    let local = |l: &TcpListener| l.local_addr().unwrap_or(config.listen);
    let http_addr = local(&http);
    let tls_addr = tls.as_ref().map(local);
    let admin_addr = admin.as_ref().map(local);
    let proxy_protocol_addr = proxied.as_ref().map(local);
    let stop = CancellationToken::new();
    let mut queues = Vec::new();
    let mut workers = Vec::new();
    let bodies = body::BodyBudget::new(config.limits.max_buffered_body_bytes, metrics.body_bytes());
    let backend_conns = upstream::BackendConns::new(
        config.limits.max_backend_connections,
        metrics.backend_connections(),
    );
    let admission = admission::Admission::new(
        config.limits.max_connections_per_client,
        config.limits.max_connections,
        metrics.client_connections(),
        metrics.connections_refused(),
    );
    for index in 0..config.workers.max(1) {
        let (queue, incoming) = tokio::sync::mpsc::unbounded_channel();
        let proxy = Arc::new(proxy::Proxy::new(
            follower.subscribe(),
            config.limits.clone(),
            key.clone(),
            Arc::clone(&metrics),
            access_logs.as_ref().map(access::AccessLogs::worker),
            Arc::clone(&bodies),
            Arc::clone(&backend_conns),
        ));
        let worker = spawn_worker(index, incoming, proxy, Arc::clone(&admission), stop.clone());
        match worker {
            Ok(thread) => workers.push(thread),
            Err(e) => {
                stop.cancel();
                return Err(e);
            }
        }
        queues.push(queue);
    }
    drop(access_logs);
    let dispatch = Arc::new(server::Dispatch::new(queues));
    let mut tasks = vec![tokio::spawn(server::serve(
        http,
        server::Mode::Plain,
        Arc::clone(&dispatch),
        Arc::clone(&admission),
        stop.clone(),
    ))];
    if let Some(listener) = proxied {
        tasks.push(tokio::spawn(server::serve(
            listener,
            server::Mode::ProxyProtocol,
            Arc::clone(&dispatch),
            Arc::clone(&admission),
            stop.clone(),
        )));
    }
    if let Some(listener) = tls {
        let acceptor =
            tokio_rustls::TlsAcceptor::from(Arc::new(tls::server_config(follower.subscribe())?));
        tasks.push(tokio::spawn(server::serve(
            listener,
            server::Mode::Tls(acceptor),
            Arc::clone(&dispatch),
            Arc::clone(&admission),
            stop.clone(),
        )));
    }
    drop(dispatch);
    tasks.push(tokio::spawn(upstream::sweep_idle(
        follower.subscribe(),
        config.limits.pool_idle_timeout,
        stop.clone(),
    )));
    if let Some(listener) = admin {
        tasks.push(tokio::spawn(server::serve_admin(
            listener,
            Arc::clone(&metrics),
            stop.clone(),
        )));
    }
    if let Some(ip) = config.tcp_ip {
        tasks.push(tokio::spawn(tcp_routes::run(
            ip,
            follower.subscribe(),
            tcp_routes::TcpLimits {
                connect_timeout: config.limits.connect_timeout,
                down_after_refusal: config.limits.down_after_refusal,
            },
            tcp_routes::Counts {
                clients: Arc::clone(&admission),
                backends: Arc::clone(&backend_conns),
            },
            stop.clone(),
        )));
    }
    tracing::info!(http = %http_addr, tls = ?tls_addr, admin = ?admin_addr, proxy_protocol = ?proxy_protocol_addr, domain = %config.domain, workers = workers.len(), "router listening");
    Ok(Router {
        http_addr,
        tls_addr,
        admin_addr,
        proxy_protocol_addr,
        _stop_on_drop: stop.clone().drop_guard(),
        stop,
        tasks,
        workers,
        follower,
        access,
        metrics,
    })
}

impl Router {
    /// The HTTP listener's address.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The HTTPS listener's address, if any.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_addr
    }

    /// The admin listener's address, if any.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// The PROXY protocol listener's address, if any.
    pub fn proxy_protocol_addr(&self) -> Option<SocketAddr> {
        self.proxy_protocol_addr
    }

    /// The Prometheus text of the router's metrics.
    pub fn metrics_text(&self) -> String {
        self.metrics.encode()
    }

    /// Stops accepting, lets open requests finish, then spools the last access lines.
    pub async fn shutdown(self) {
        self.stop.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
        for worker in self.workers {
            let _ = tokio::task::spawn_blocking(move || worker.join()).await;
        }
        drop(self.follower);
        if let Some(access) = self.access {
            // Connections still draining hold the access log open; do not wait forever.
            if tokio::time::timeout(ACCESS_DRAIN, access.shutdown())
                .await
                .is_err()
            {
                tracing::warn!(
                    "access lines still queued at shutdown; the spool keeps what it has"
                );
            }
        }
        tracing::info!("router stopped");
    }
}
