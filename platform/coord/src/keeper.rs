//! Where lease keep-alives run: a thread of their own, with their own etcd connection.
//!
//! A lease holder must renew every `ttl/3` whatever else its process is doing. On the
//! process's main runtime a renewal waits behind every other task (a flood of log
//! decoding, a slow request handler), and so does the connection it is sent on: a tonic
//! channel's I/O runs as tasks of the runtime that opened it. So every lease keeper of
//! the process runs on one dedicated single-threaded runtime ([`handle`]), and renews
//! over a connection opened from that runtime ([`KeeperClient`]); the main runtime can be
//! saturated without a renewal being late (the OS still shares the CPU between threads,
//! and a thread that sleeps most of the time is scheduled promptly when it wakes).

use std::sync::{Arc, OnceLock};

use etcd_client::{Client, ConnectOptions};
use tokio::runtime::{Handle, Runtime};
use tokio::sync::OnceCell;

/// The runtime every lease keeper of this process runs on, started on first use.
pub(crate) fn handle() -> &'static Handle {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("paas-lease-keeper")
                .enable_all()
                .build()
                .unwrap_or_else(|e| panic!("cannot start the lease keeper runtime: {e}"))
        })
        .handle()
}

/// An etcd connection for keep-alives, opened lazily on the keeper runtime; clones of a
/// [`crate::Coord`] share it.
#[derive(Clone)]
pub(crate) struct KeeperClient {
    endpoints: Arc<Vec<String>>,
    options: ConnectOptions,
    client: Arc<OnceCell<Client>>,
}

impl KeeperClient {
    /// Remembers where to connect; nothing is opened yet.
    pub(crate) fn new(endpoints: Vec<String>, options: ConnectOptions) -> Self {
        KeeperClient {
            endpoints: Arc::new(endpoints),
            options,
            client: Arc::new(OnceCell::new()),
        }
    }

    /// The connection; must be called from a task on [`handle`] so the connection's own
    /// tasks run there.
    pub(crate) async fn get(&self) -> Result<Client, etcd_client::Error> {
        self.client
            .get_or_try_init(|| {
                Client::connect(self.endpoints.as_slice(), Some(self.options.clone()))
            })
            .await
            .cloned()
    }
}
