//! [`Coord`]: the connected, namespaced etcd client every other module hangs off.

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
    pub(crate) client: Client,
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
        let attempt = async {
            let mut client = Client::connect(&endpoint_list, Some(options)).await?;
            // connect() is lazy about cluster health; ask for something real.
            client.status().await?;
            Ok::<_, etcd_client::Error>(client)
        };
        let client = match tokio::time::timeout(timeout, attempt).await {
            Ok(Ok(client)) => client,
            Ok(Err(err)) => return Err(unreachable(err.to_string())),
            Err(_) => return Err(unreachable("timed out".into())),
        };
        tracing::debug!(endpoints = ?endpoint_list, namespace, "connected to etcd");
        Ok(Coord {
            client,
            ns: Namespace::new(namespace),
            keeper,
        })
    }
}
