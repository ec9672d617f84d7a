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
use tokio::sync::Mutex;

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
///
/// The connection goes to one endpoint at a time, the next one in the list each time a
/// new connection is opened. A keeper whose renewal failed or went unanswered drops the
/// connection ([`KeeperClient::reset`]) and its next renewal goes to the next member:
/// a member that died silently (a dead machine, a cut link: no reset, no close) would
/// otherwise hold every keep-alive stream on it until HTTP/2's keep-alive ping gives up,
/// longer than a short lease lives; and a channel balanced over every endpoint keeps
/// handing renewals to a member that refuses connections (it reports that member ready,
/// and a new channel reports it first, since a refusal comes before any TLS handshake).
#[derive(Clone)]
pub(crate) struct KeeperClient {
    endpoints: Arc<Vec<String>>,
    options: ConnectOptions,
    client: Arc<Mutex<Slot>>,
}

/// The current connection, and how many were opened (which also picks the endpoint
/// of the next one).
#[derive(Default)]
struct Slot {
    opened: u64,
    current: Option<Connection>,
}

/// One opened connection and its generation (how many were opened before it).
#[derive(Clone)]
pub(crate) struct Connection {
    /// The client over it.
    pub(crate) client: Client,
    /// Which connection this is, for [`KeeperClient::reset`].
    pub(crate) generation: u64,
}

impl KeeperClient {
    /// Remembers where to connect; nothing is opened yet.
    pub(crate) fn new(endpoints: Vec<String>, options: ConnectOptions) -> Self {
        KeeperClient {
            endpoints: Arc::new(endpoints),
            options,
            client: Arc::new(Mutex::new(Slot::default())),
        }
    }

    /// The connection, opened if there is none; must be called from a task on
    /// [`handle`] so the connection's own tasks run there.
    pub(crate) async fn get(&self) -> Result<Connection, etcd_client::Error> {
        let mut slot = self.client.lock().await;
        if let Some(conn) = &slot.current {
            return Ok(conn.clone());
        }
        if self.endpoints.is_empty() {
            return Err(etcd_client::Error::InvalidArgs("no etcd endpoints".into()));
        }
        // Processes start at different members, so their renewals are spread.
        let first = std::process::id() as usize;
        let endpoint = &self.endpoints[(first + slot.opened as usize) % self.endpoints.len()];
        let client = Client::connect([endpoint], Some(self.options.clone())).await?;
        let conn = Connection {
            client,
            generation: slot.opened,
        };
        slot.opened += 1;
        slot.current = Some(conn.clone());
        Ok(conn)
    }

    /// Drops connection `generation` if it is still the current one (a renewal over it
    /// failed); the next [`KeeperClient::get`] opens a new one, to the next endpoint. Streams already
    /// open on it keep it until they are dropped.
    pub(crate) async fn reset(&self, generation: u64) {
        let mut slot = self.client.lock().await;
        if slot
            .current
            .as_ref()
            .is_some_and(|c| c.generation == generation)
        {
            slot.current = None;
        }
    }
}
