//! The leader-following TCP endpoint.
//!
//! A listener on a stable address. Each accepted connection is forwarded, byte for byte,
//! to the address of the *current* leader of one service; when leadership moves, every
//! connection still going to the old leader is closed, so clients reconnect through the
//! same address and land on the new leader. Clients never see the instances' own ports.
//!
//! Leadership comes from one etcd key (the service's leased leader key). Its value is a
//! [`LeaderRecord`] in JSON: `{"member":"pg1","addr":"127.0.0.1:5433"}`. A missing key
//! means "no leader": new connections wait up to [`EndpointConfig::no_leader_wait`] for
//! one and are closed if none appears (a client retries; nothing is forwarded to a
//! guess).
//!
//! Flow: [`follow_leader_key`] turns the key's history (a paas-coord watch: list, then
//! watch from the next revision, re-listing after any error) into a `watch` channel of
//! `Option<SocketAddr>`;
//! [`serve`] accepts connections and, per connection, copies in both directions while
//! watching that channel. Whether a connection survives a change is the pure
//! [`verdict`].
//!
//! Invariants: a connection is only ever opened to the address the channel held when it
//! was accepted; it is closed as soon as the channel holds any other value.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

pub use paas_appliance::leader::LeaderRecord;
use paas_coord::Coord;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Why the endpoint could not start or follow its leader key.
#[derive(Debug, thiserror::Error)]
pub enum TcpEndpointError {
    /// Binding the listen address failed (in use, no permission).
    #[error("binding {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The listener handed over has no address to report.
    #[error("reading the listener's address")]
    LocalAddr(#[source] std::io::Error),
}

/// What the endpoint needs besides its listener.
#[derive(Debug, Clone)]
pub struct EndpointConfig {
    /// The coordination client (its namespace applies to `leader_key`).
    pub coord: Coord,
    /// The leader key followed, e.g. `pg/main/leader`.
    pub leader_key: String,
    /// How long a new connection waits for a leader when there is none.
    pub no_leader_wait: Duration,
}

/// What happens to an open connection when the leader changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The connection's backend still leads.
    Keep,
    /// The connection must be closed; the reason is logged.
    Close(String),
}

/// Decides whether a connection to `backend` survives the leader becoming `leader`.
pub fn verdict(backend: SocketAddr, leader: Option<SocketAddr>) -> Verdict {
    match leader {
        Some(addr) if addr == backend => Verdict::Keep,
        Some(addr) => Verdict::Close(format!("leader moved from {backend} to {addr}")),
        None => Verdict::Close(format!("{backend} lost leadership and no one leads")),
    }
}

/// A running endpoint: its address, and its tasks, which stop when it is dropped.
#[derive(Debug)]
pub struct TcpEndpoint {
    local_addr: SocketAddr,
    leader: watch::Receiver<Option<SocketAddr>>,
    tasks: Vec<JoinHandle<()>>,
}

impl TcpEndpoint {
    /// Binds `listen` (port 0 picks a free port) and starts following the leader key.
    pub async fn start(
        listen: SocketAddr,
        config: EndpointConfig,
    ) -> Result<Self, TcpEndpointError> {
        let listener =
            TcpListener::bind(listen)
                .await
                .map_err(|source| TcpEndpointError::Bind {
                    addr: listen,
                    source,
                })?;
        Self::on_listener(listener, config)
    }

    /// Serves on a listener bound earlier (so a caller can hold its port while it sets up
    /// what the endpoint leads to) and starts following the leader key.
    pub fn on_listener(
        listener: TcpListener,
        config: EndpointConfig,
    ) -> Result<Self, TcpEndpointError> {
        let local_addr = listener.local_addr().map_err(TcpEndpointError::LocalAddr)?;
        let (tx, rx) = watch::channel(None);
        let key = config.leader_key.clone();
        let coord = config.coord.clone();
        let follower = tokio::spawn(async move { follow_leader_key(coord, key, tx).await });
        let leader = rx.clone();
        let server = tokio::spawn(serve(
            listener,
            rx,
            config.no_leader_wait,
            std::future::pending(),
        ));
        tracing::info!(%local_addr, key = %config.leader_key, "leader-following endpoint listening");
        Ok(TcpEndpoint {
            local_addr,
            leader,
            tasks: vec![follower, server],
        })
    }

    /// The address clients connect to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The leader the endpoint currently forwards to, for status output.
    pub fn current_leader(&self) -> Option<SocketAddr> {
        *self.leader.borrow()
    }
}

impl Drop for TcpEndpoint {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Keeps `tx` equal to the address in `key` (relative to the coord namespace): a
/// paas-coord watch of the key, which lists then watches without gaps and re-lists after
/// any etcd error, so a missed event cannot leave a stale leader behind. Returns when
/// every receiver is gone.
pub async fn follow_leader_key(coord: Coord, key: String, tx: watch::Sender<Option<SocketAddr>>) {
    loop {
        match coord.watch_prefix::<LeaderRecord>(&key).await {
            Ok(mut watch) => {
                let mut snapshot = watch.current();
                loop {
                    // The watch covers the prefix `key`; the leader key itself is "".
                    publish(&tx, &key, snapshot.docs.get("").map(|r| r.addr));
                    tokio::select! {
                        _ = tx.closed() => return,
                        next = watch.changed() => match next {
                            Some(next) => snapshot = next,
                            None => break,
                        },
                    }
                }
            }
            Err(err) => {
                tracing::warn!(%key, error = %err, "following the leader key failed; re-reading");
            }
        }
        if tx.is_closed() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Publishes the leader's address (`None`: no leader, or a record that does not
/// decode, which the watch logs and leaves out).
fn publish(tx: &watch::Sender<Option<SocketAddr>>, key: &str, addr: Option<SocketAddr>) {
    tx.send_if_modified(|current| {
        let changed = *current != addr;
        if changed {
            tracing::info!(%key, from = ?*current, to = ?addr, "leader changed");
            *current = addr;
        }
        changed
    });
}

/// Accepts connections on `listener` and forwards each to the leader in `leader` until
/// `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    leader: watch::Receiver<Option<SocketAddr>>,
    no_leader_wait: Duration,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((client, peer)) => {
                let leader = leader.clone();
                tokio::spawn(async move {
                    if let Err(reason) = forward(client, leader, no_leader_wait).await {
                        tracing::info!(%peer, %reason, "connection closed");
                    }
                });
            }
            Err(err) => {
                // EMFILE and friends: keep serving, but do not spin.
                tracing::warn!(error = %err, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Forwards one client connection; returns why it ended early, if it did.
async fn forward(
    mut client: TcpStream,
    mut leader: watch::Receiver<Option<SocketAddr>>,
    no_leader_wait: Duration,
) -> Result<(), String> {
    let waited = tokio::time::timeout(no_leader_wait, async {
        leader.wait_for(Option::is_some).await.map(|addr| *addr)
    })
    .await;
    let backend = match waited {
        Ok(Ok(Some(addr))) => addr,
        Ok(_) => return Err("endpoint shutting down".into()),
        Err(_) => return Err(format!("no leader within {no_leader_wait:?}")),
    };
    leader.mark_unchanged();
    let mut upstream = TcpStream::connect(backend)
        .await
        .map_err(|err| format!("connecting to leader {backend}: {err}"))?;
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    // One copy future for the connection's whole life: re-creating it would drop the
    // bytes it has buffered.
    let copy = tokio::io::copy_bidirectional(&mut client, &mut upstream);
    tokio::pin!(copy);
    loop {
        tokio::select! {
            copied = &mut copy => {
                return copied.map(|_| ()).map_err(|err| format!("forwarding to {backend}: {err}"));
            }
            changed = leader.changed() => {
                if changed.is_err() {
                    return Err("endpoint shutting down".into());
                }
                let now = *leader.borrow_and_update();
                if let Verdict::Close(reason) = verdict(backend, now) {
                    return Err(reason);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn a_connection_survives_only_while_its_backend_leads() {
        assert_eq!(verdict(addr(1), Some(addr(1))), Verdict::Keep);
        assert_eq!(
            verdict(addr(1), Some(addr(2))),
            Verdict::Close("leader moved from 127.0.0.1:1 to 127.0.0.1:2".into())
        );
        assert_eq!(
            verdict(addr(1), None),
            Verdict::Close("127.0.0.1:1 lost leadership and no one leads".into())
        );
    }
}
