//! [`Coord`]: the connected, namespaced etcd client every other module hangs off.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, ConnectOptions};

use crate::error::{CoordError, Result};
use crate::keeper::KeeperClient;
use crate::keys::Namespace;

/// Upper bound for one unary request (streams are not cut: the bound covers only the
/// wait for a stream's response headers).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// HTTP/2 keep-alive ping interval, sent only while streams (watches, lease
/// keep-alives) are open. etcd refuses clients that ping more often than its
/// `--grpc-keepalive-min-time` (5 s by default) or ping with no stream open: after a few
/// such pings it sends GOAWAY (`too_many_pings`) and every stream on the connection
/// breaks. So pings stay above that minimum and never go out while idle. Lease safety
/// does not rest on them: the lease keeper bounds each renewal by its own deadline.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(6);
/// How long a keep-alive ping may go unanswered before the connection is dropped: a
/// silently dead connection under a watch is noticed within about 8 s.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(2);

/// A connection to etcd whose keys all live under one namespace.
///
/// Cheap to clone (clones share the HTTP/2 connection). Every method takes and returns
/// keys without the namespace.
#[derive(Clone)]
pub struct Coord {
    pub(crate) members: Arc<Members>,
    pub(crate) ns: Namespace,
    /// The keep-alive connection, opened on the lease keeper runtime.
    pub(crate) keeper: KeeperClient,
}

impl std::fmt::Debug for Coord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coord").field("ns", &self.ns).finish()
    }
}

impl Coord {
    /// Connects to etcd at `endpoints` (e.g. `http://127.0.0.1:2379`) and proves the
    /// connection with one status request, all within `timeout`. Keys are placed under
    /// `namespace` (empty for none). Requests fail rather than answer stale when the
    /// member has lost its raft leader.
    pub async fn connect<E: AsRef<str>>(
        endpoints: &[E],
        namespace: &str,
        timeout: Duration,
    ) -> Result<Self> {
        let endpoint_list: Vec<String> = endpoints.iter().map(|e| e.as_ref().to_string()).collect();
        let unreachable = |reason: String| CoordError::Unreachable {
            endpoints: endpoint_list.clone(),
            timeout,
            reason,
        };
        let mut options = ConnectOptions::new()
            .with_connect_timeout(timeout)
            .with_timeout(REQUEST_TIMEOUT)
            .with_keep_alive(KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT)
            .with_keep_alive_while_idle(false)
            .with_require_leader(true);
        if endpoint_list.iter().any(|e| e.starts_with("https://")) {
            if let Some(tls) = crate::tls::options() {
                options = options.with_tls(tls);
            }
        }
        let keeper = KeeperClient::new(endpoint_list.clone(), options.clone());
        let mut clients = Vec::with_capacity(endpoint_list.len());
        for endpoint in &endpoint_list {
            // Lazy: nothing is opened until the first request.
            clients.push(
                Client::connect([endpoint], Some(options.clone()))
                    .await
                    .map_err(|e| unreachable(e.to_string()))?,
            );
        }
        if clients.is_empty() {
            return Err(unreachable("no endpoints".into()));
        }
        let members = Arc::new(Members {
            // Processes start at different members, so their requests are spread.
            current: AtomicUsize::new(std::process::id() as usize % clients.len()),
            clients,
        });
        let coord = Coord {
            members,
            ns: Namespace::new(namespace),
            keeper,
        };
        // Clients are lazy about cluster health; ask for something real, at any member.
        let attempt = async {
            let mut last = None;
            for _ in 0..coord.members.clients.len() {
                match coord.read(|mut c| async move { c.status().await }).await {
                    Ok(_) => return Ok(()),
                    Err(e) => last = Some(e),
                }
            }
            Err(last.expect("at least one member"))
        };
        match tokio::time::timeout(timeout, attempt).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => return Err(unreachable(err.to_string())),
            Err(_) => return Err(unreachable("timed out".into())),
        }
        tracing::debug!(endpoints = ?endpoint_list, namespace, "connected to etcd");
        Ok(coord)
    }

    /// The client of the member requests go to now, and its index for
    /// [`Coord::failed`]. Streams (watches) are opened on it too.
    pub(crate) fn member(&self) -> (usize, Client) {
        let n = self.members.clients.len();
        let i = self.members.current.load(Ordering::Relaxed) % n;
        (i, self.members.clients[i].clone())
    }

    /// The current member's client, for streams.
    pub(crate) fn client(&self) -> Client {
        self.member().1
    }

    /// Records that a request to member `i` failed with `err`; when the failure is the
    /// member's or its connection's (not an answer about the data), later requests go
    /// to the next member. Returns whether it was such a failure.
    pub(crate) fn failed(&self, i: usize, err: &etcd_client::Error) -> bool {
        if !member_failure(err) {
            return false;
        }
        let n = self.members.clients.len();
        // Only the first request to see member `i` fail moves everyone on.
        if self
            .members
            .current
            .compare_exchange(i, (i + 1) % n, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
            && n > 1
        {
            tracing::warn!(member = i, error = %err, "etcd member failed a request: moving to the next");
        }
        true
    }

    /// A read, or any request that may be repeated: on the current member, and once
    /// more on the next one when the first attempt failed for the member's sake.
    pub(crate) async fn read<T, F, Fut>(&self, op: F) -> std::result::Result<T, etcd_client::Error>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        let (i, client) = self.member();
        match op(client).await {
            Err(err) if self.failed(i, &err) => {
                let (j, client) = self.member();
                op(client).await.inspect_err(|e| {
                    self.failed(j, e);
                })
            }
            other => other,
        }
    }

    /// Every key under `prefix` (in this coordinator's namespace) in one consistent
    /// read, as a [`read`](Coord::read).
    pub(crate) async fn read_prefix(
        &self,
        prefix: &str,
    ) -> std::result::Result<etcd_client::GetResponse, etcd_client::Error> {
        self.read_prefix_at(prefix, None).await
    }

    /// [`read_prefix`](Coord::read_prefix) as the store was at revision `at` (`None`:
    /// now).
    pub(crate) async fn read_prefix_at(
        &self,
        prefix: &str,
        at: Option<i64>,
    ) -> std::result::Result<etcd_client::GetResponse, etcd_client::Error> {
        let start = self.ns.full(prefix);
        let mut options =
            etcd_client::GetOptions::new().with_range(crate::keys::prefix_end(&start));
        if let Some(at) = at {
            options = options.with_revision(at);
        }
        self.read(|c| {
            let (start, options) = (start.clone(), options.clone());
            async move { c.kv_client().get(start, Some(options)).await }
        })
        .await
    }

    /// A write that must not be repeated blindly (it may have been applied): on the
    /// current member; a member failure moves later requests to the next one and is
    /// returned to the caller.
    pub(crate) async fn write<T, F, Fut>(&self, op: F) -> std::result::Result<T, etcd_client::Error>
    where
        F: FnOnce(Client) -> Fut,
        Fut: Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        let (i, client) = self.member();
        op(client).await.inspect_err(|e| {
            self.failed(i, e);
        })
    }
}

/// The etcd members of a [`Coord`]: one lazily opened client per endpoint, and the one
/// requests go to now. One member at a time (not a balanced channel over all): a
/// balanced channel keeps handing a share of requests to a member that died or refuses
/// connections, and each of those fails.
pub(crate) struct Members {
    clients: Vec<Client>,
    current: AtomicUsize,
}

/// Whether `err` says the member or the connection failed (unavailable, closed,
/// timed out, no raft leader), rather than answering about the data.
fn member_failure(err: &etcd_client::Error) -> bool {
    use etcd_client::Error;
    match err {
        // gRPC codes: 1 cancelled, 4 deadline exceeded, 14 unavailable.
        Error::GRpcStatus(status) => matches!(i32::from(status.code()), 1 | 4 | 14),
        Error::TransportError(_) | Error::IoError(_) => true,
        _ => false,
    }
}
