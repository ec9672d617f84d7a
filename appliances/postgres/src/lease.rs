//! The supervisor's etcd lease: granted once, kept alive every third of its TTL, replaced
//! by a new one when etcd reports it gone.
//!
//! The leader key and the member registration are bound to this lease, so both vanish
//! when the supervisor stops renewing (killed, frozen, partitioned). [`LeaseHandle`]
//! publishes the current lease and when the keep-alive that last confirmed it was
//! *sent* — the input of `fence::lease_verdict`.

use std::time::{Duration, Instant};

use etcd_client::Client;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::store::REQUEST_TIMEOUT;

/// The lease as last confirmed by etcd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseState {
    /// The lease id keys are bound to.
    pub id: i64,
    /// When the request that last confirmed the lease alive was sent.
    pub confirmed_sent: Instant,
}

/// The keep-alive task and the channel it publishes on; the task stops on drop.
#[derive(Debug)]
pub struct LeaseHandle {
    state: watch::Receiver<Option<LeaseState>>,
    task: JoinHandle<()>,
}

impl LeaseHandle {
    /// Starts granting and renewing a lease of `ttl`.
    pub fn spawn(client: Client, ttl: Duration) -> Self {
        let (tx, state) = watch::channel(None);
        let task = tokio::spawn(keep(client, ttl, tx));
        LeaseHandle { state, task }
    }

    /// The current lease, `None` while none is granted (etcd unreachable, or lost).
    pub fn current(&self) -> Option<LeaseState> {
        *self.state.borrow()
    }

    /// A receiver of lease changes, for the fencing watchdog.
    pub fn subscribe(&self) -> watch::Receiver<Option<LeaseState>> {
        self.state.clone()
    }

    /// Revokes `id` so its keys vanish now instead of after the TTL (clean shutdown).
    pub async fn revoke(client: &mut Client, id: i64) {
        let _ = tokio::time::timeout(REQUEST_TIMEOUT, client.lease_revoke(id)).await;
    }
}

impl Drop for LeaseHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn keep(mut client: Client, ttl: Duration, tx: watch::Sender<Option<LeaseState>>) {
    let interval = ttl / 3;
    loop {
        let sent = Instant::now();
        let granted = tokio::time::timeout(
            REQUEST_TIMEOUT,
            client.lease_grant(ttl.as_secs() as i64, None),
        )
        .await;
        let id = match granted {
            Ok(Ok(lease)) => lease.id(),
            Ok(Err(err)) => {
                tracing::warn!(error = %err, "granting a lease failed; retrying");
                tokio::time::sleep(interval).await;
                continue;
            }
            Err(_) => {
                tracing::warn!("granting a lease timed out; retrying");
                continue;
            }
        };
        tracing::info!(lease = id, ?ttl, "lease granted");
        tx.send_replace(Some(LeaseState {
            id,
            confirmed_sent: sent,
        }));
        renew(&mut client, id, interval, &tx).await;
        tracing::warn!(lease = id, "lease lost; granting a new one");
        tx.send_replace(None);
    }
}

/// Renews lease `id` until etcd says it is gone.
async fn renew(
    client: &mut Client,
    id: i64,
    interval: Duration,
    tx: &watch::Sender<Option<LeaseState>>,
) {
    loop {
        let opened = tokio::time::timeout(REQUEST_TIMEOUT, client.lease_keep_alive(id)).await;
        let (mut keeper, mut stream) = match opened {
            Ok(Ok(pair)) => pair,
            _ => {
                tracing::warn!(lease = id, "opening the keep-alive stream failed; retrying");
                tokio::time::sleep(interval / 2).await;
                continue;
            }
        };
        loop {
            let sent = Instant::now();
            if keeper.keep_alive().await.is_err() {
                break;
            }
            match tokio::time::timeout(interval, stream.message()).await {
                Ok(Ok(Some(response))) if response.ttl() > 0 => {
                    tx.send_replace(Some(LeaseState {
                        id,
                        confirmed_sent: sent,
                    }));
                }
                Ok(Ok(Some(_))) => return,
                _ => break,
            }
            tokio::time::sleep(interval.saturating_sub(sent.elapsed())).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
