//! TCP routes: `paas route add -a shop --tcp 3000` makes every router listen on port
//! 3000 (of its TCP address) and forward each connection, byte for byte, to one of the
//! app's `web` jobs.
//!
//! One task follows the routing snapshots and keeps a listener per routed port
//! ([`plan`], pure, says which to open and close); a port that cannot be bound (taken by
//! another process) is logged and tried again at the next change or every
//! [`REBIND_EVERY`]. Each connection reads the snapshot when it arrives: the port's app,
//! then a backend by power of two choices on open connections (`balance::pick`). A
//! backend that refuses or does not answer the connect within the limit is marked down
//! and the next one is tried, up to [`MAX_ATTEMPTS`]; nothing was sent to it yet, so
//! retrying is always safe. Once connected, the connection stays with its backend until
//! either side closes. Connections count in the HTTP router's limits: the client's in
//! [`Admission`] (per client address and in all), the backend's in [`BackendConns`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::admission::Admission;
use crate::balance::{self, Pick};
use crate::state::{Backend, Snapshot};
use crate::upstream::BackendConns;

/// Backends tried per connection.
pub const MAX_ATTEMPTS: usize = 3;

/// How often ports that could not be bound are tried again without a route change.
pub const REBIND_EVERY: Duration = Duration::from_secs(5);

/// Limits of TCP route connections.
#[derive(Debug, Clone, Copy)]
pub struct TcpLimits {
    /// Longest connect to one backend before the next is tried.
    pub connect_timeout: Duration,
    /// How long a backend that refused is skipped while others are left.
    pub down_after_refusal: Duration,
}

/// Which listeners to open and close so the open ones are the routed ports. Pure.
pub fn plan(routed: &BTreeMap<u16, String>, open: &BTreeSet<u16>) -> (Vec<u16>, Vec<u16>) {
    let want: BTreeSet<u16> = routed.keys().copied().collect();
    (
        want.difference(open).copied().collect(),
        open.difference(&want).copied().collect(),
    )
}

/// The router's connection counts a TCP route connection takes its places in.
#[derive(Debug, Clone)]
pub struct Counts {
    /// Client connections, per client address and in all.
    pub clients: Arc<Admission>,
    /// Backend connections.
    pub backends: Arc<BackendConns>,
}

/// Follows `snapshots` and serves every TCP route on `ip` until `stop`.
pub async fn run(
    ip: IpAddr,
    mut snapshots: watch::Receiver<Arc<Snapshot>>,
    limits: TcpLimits,
    counts: Counts,
    stop: CancellationToken,
) {
    let mut listeners: HashMap<u16, (CancellationToken, JoinHandle<()>)> = HashMap::new();
    loop {
        let routed = snapshots.borrow_and_update().tcp.clone();
        let open: BTreeSet<u16> = listeners.keys().copied().collect();
        let (to_open, to_close) = plan(&routed, &open);
        for port in to_close {
            if let Some((token, task)) = listeners.remove(&port) {
                token.cancel();
                let _ = task.await;
                tracing::info!(port, "TCP route gone: stopped listening");
            }
        }
        for port in to_open {
            let addr = SocketAddr::new(ip, port);
            match TcpListener::bind(addr).await {
                Ok(listener) => {
                    tracing::info!(%addr, app = %routed[&port], "TCP route listening");
                    let token = stop.child_token();
                    let task = tokio::spawn(accept(
                        listener,
                        port,
                        snapshots.clone(),
                        limits,
                        counts.clone(),
                        token.clone(),
                    ));
                    listeners.insert(port, (token, task));
                }
                Err(e) => {
                    tracing::warn!(%addr, error = %e, "cannot listen for a TCP route; trying again");
                }
            }
        }
        let unbound = routed.len() > listeners.len();
        tokio::select! {
            _ = stop.cancelled() => break,
            changed = snapshots.changed() => if changed.is_err() { break },
            _ = tokio::time::sleep(REBIND_EVERY), if unbound => {}
        }
    }
    for (_, (token, task)) in listeners {
        token.cancel();
        let _ = task.await;
    }
}

/// Accepts connections on one routed port until `stop`.
async fn accept(
    listener: TcpListener,
    port: u16,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    limits: TcpLimits,
    counts: Counts,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            () = counts.clients.room() => {}
        }
        let (client, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(port, error = %e, "accepting a TCP route connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let slot = counts.clients.slot();
        let Some(permit) = counts.clients.client(peer.ip()) else {
            continue;
        };
        let snapshot = Arc::clone(&snapshots.borrow());
        let stop = stop.clone();
        let backends = Arc::clone(&counts.backends);
        tokio::spawn(async move {
            let _places = (slot, permit);
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = forward(client, peer, port, &snapshot, limits, &backends) => {}
            }
        });
    }
}

/// Connects `client` to a backend of the port's app and copies both ways.
async fn forward(
    mut client: TcpStream,
    peer: SocketAddr,
    port: u16,
    snapshot: &Snapshot,
    limits: TcpLimits,
    counted_in: &Arc<BackendConns>,
) {
    let Some(app) = snapshot.tcp.get(&port) else {
        return;
    };
    let Some(_counted) = counted_in.take() else {
        tracing::debug!(%app, port, %peer, "TCP route: the router holds its most backend connections; closing it");
        return;
    };
    let empty = Vec::new();
    let backends = snapshot.backends.get(app).unwrap_or(&empty);
    let mut tried: Vec<SocketAddr> = Vec::new();
    while tried.len() < MAX_ATTEMPTS {
        let candidates = crate::state::candidates(backends);
        let backend: &Arc<Backend> =
            match balance::pick(&candidates, &tried, None, (rand::random(), rand::random())) {
                Pick::Backend { index, .. } => &backends[index],
                Pick::NoBackend | Pick::AllTried => break,
            };
        tried.push(backend.addr);
        let in_flight = backend.begin();
        match tokio::time::timeout(limits.connect_timeout, TcpStream::connect(backend.addr)).await {
            Ok(Ok(mut upstream)) => {
                let _ = upstream.set_nodelay(true);
                let _ = client.set_nodelay(true);
                if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
                    tracing::debug!(%app, %peer, backend = %backend.addr, error = %e, "TCP route connection ended");
                }
                drop(in_flight);
                return;
            }
            Ok(Err(e)) => {
                tracing::debug!(%app, backend = %backend.addr, error = %e, "TCP route backend refused; trying another");
            }
            Err(_) => {
                tracing::debug!(%app, backend = %backend.addr, "TCP route backend did not answer; trying another");
            }
        }
        backend.mark_down(limits.down_after_refusal);
    }
    tracing::warn!(%app, port, %peer, tried = tried.len(), "TCP route: no backend took the connection; closing it");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listeners_follow_the_routed_ports() {
        let routed = BTreeMap::from([(3000, "a".to_string()), (3001, "b".to_string())]);
        let open = BTreeSet::from([3001, 3002]);
        assert_eq!(plan(&routed, &open), (vec![3000], vec![3002]));
        assert_eq!(plan(&BTreeMap::new(), &open), (vec![], vec![3001, 3002]));
    }
}
