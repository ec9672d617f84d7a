//! An etcd lease kept alive by a background task for as long as the [`Lease`] value
//! lives. Dropping it stops the keep-alives (the lease then expires after its TTL, so a
//! crashed or aborted owner disappears by itself); [`Lease::revoke`] ends it at once.
//! [`Lease::lost`] fires when etcd says the lease is gone or keep-alives keep failing
//! for a whole TTL.

use std::time::Duration;

use etcd_client::Client;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::store::StoreError;

/// A live lease and its keep-alive task.
pub struct Lease {
    id: i64,
    client: Client,
    lost: CancellationToken,
    task: JoinHandle<()>,
}

impl Lease {
    /// Grants a lease of `ttl` (whole seconds, at least 1) and starts keeping it alive.
    pub async fn grant(mut client: Client, ttl: Duration) -> Result<Lease, StoreError> {
        let secs = ttl.as_secs().max(1) as i64;
        let id = client.lease_grant(secs, None).await?.id();
        let lost = CancellationToken::new();
        let task = tokio::spawn(keep_alive(client.clone(), id, secs, lost.clone()));
        Ok(Lease {
            id,
            client,
            lost,
            task,
        })
    }

    /// The lease id, to attach keys to.
    pub fn id(&self) -> i64 {
        self.id
    }

    /// Cancelled when the lease is gone.
    pub fn lost(&self) -> CancellationToken {
        self.lost.clone()
    }

    /// Revokes the lease: its keys vanish now.
    pub async fn revoke(mut self) {
        self.task.abort();
        if let Err(e) = self.client.lease_revoke(self.id).await {
            tracing::warn!(lease = self.id, error = %e, "revoking lease failed; it will expire");
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What one keep-alive round trip found.
enum Beat {
    /// etcd renewed the lease.
    Renewed,
    /// etcd answered that the lease no longer exists.
    Expired,
}

async fn keep_alive(mut client: Client, id: i64, ttl_secs: i64, lost: CancellationToken) {
    let ttl = Duration::from_secs(ttl_secs as u64);
    let period = ttl / 3;
    let mut last_ok = tokio::time::Instant::now();
    let mut channel = None;
    loop {
        let beat = async {
            if channel.is_none() {
                channel = Some(client.lease_keep_alive(id).await?);
            }
            let Some((keeper, stream)) = channel.as_mut() else {
                unreachable!("channel was just opened");
            };
            keeper.keep_alive().await?;
            match stream.message().await? {
                Some(resp) if resp.ttl() > 0 => Ok(Beat::Renewed),
                Some(_) => Ok(Beat::Expired),
                None => Err(etcd_client::Error::LeaseKeepAliveError(
                    "keep-alive stream closed".into(),
                )),
            }
        };
        match tokio::time::timeout(period.max(Duration::from_millis(200)), beat).await {
            Ok(Ok(Beat::Renewed)) => last_ok = tokio::time::Instant::now(),
            Ok(Ok(Beat::Expired)) => {
                tracing::warn!(lease = id, "lease expired");
                lost.cancel();
                return;
            }
            Ok(Err(e)) => {
                tracing::warn!(lease = id, error = %e, "lease keep-alive failed");
                channel = None;
            }
            Err(_) => {
                tracing::warn!(lease = id, "lease keep-alive timed out");
                channel = None;
            }
        }
        if last_ok.elapsed() >= ttl {
            tracing::warn!(
                lease = id,
                "no keep-alive answer for a whole TTL: lease lost"
            );
            lost.cancel();
            return;
        }
        tokio::time::sleep(period).await;
    }
}
