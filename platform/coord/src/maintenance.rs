//! Whole-cluster operations for backup and restore (`paas cluster backup` / `restore`):
//! etcd's own snapshot of its keyspace, and deleting every key under a prefix.
//!
//! A snapshot is etcd's, not the namespace's: it holds every key of the etcd it is
//! taken from (etcd appends its own SHA-256, which `etcdctl snapshot restore` checks).

use etcd_client::DeleteOptions;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::coord::Coord;
use crate::error::{CoordError, Result};
use crate::keys::prefix_end;

/// What [`Coord::snapshot`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// Bytes written.
    pub bytes: u64,
    /// The etcd server's version (`3.4.23`).
    pub etcd_version: String,
}

impl Coord {
    /// Streams a snapshot of the whole etcd keyspace (every namespace) into `out`,
    /// as etcd's maintenance API sends it, chunk by chunk. `out` is flushed, not closed.
    pub async fn snapshot(
        &self,
        out: &mut (dyn AsyncWrite + Send + Unpin),
    ) -> Result<SnapshotInfo> {
        let mut client = self.client();
        let etcd_version = client.status().await?.version().to_string();
        let mut maintenance = client.maintenance_client();
        let mut stream = maintenance.snapshot().await?;
        let mut bytes = 0u64;
        while let Some(chunk) = stream.message().await? {
            out.write_all(chunk.blob())
                .await
                .map_err(CoordError::Sink)?;
            bytes += chunk.blob().len() as u64;
        }
        out.flush().await.map_err(CoordError::Sink)?;
        Ok(SnapshotInfo {
            bytes,
            etcd_version,
        })
    }

    /// Deletes every key under `prefix` (in the namespace), unconditionally, and returns
    /// how many were deleted: for a restored keyspace whose records of the old cluster's
    /// processes (placements, registrations, appliance roles) must not survive.
    pub async fn delete_prefix(&self, prefix: &str) -> Result<i64> {
        let start = self.ns.full(prefix);
        let end = prefix_end(&start);
        let response = self
            .write(|c| async move {
                c.kv_client()
                    .delete(start, Some(DeleteOptions::new().with_range(end)))
                    .await
            })
            .await?;
        Ok(response.deleted())
    }
}
