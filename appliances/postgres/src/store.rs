//! The cluster's records in etcd: the appliance core's [`Records`] over this engine's
//! state document and member status (see `cluster` for the layout).

use std::time::Duration;

use paas_appliance::records::{self, Records};
pub use paas_appliance::records::{LeaderKey, RecordsError as StoreError, REQUEST_TIMEOUT};
use paas_coord::Coord;

use crate::cluster::{keys, ClusterState, MemberStatus};

/// The records of one Postgres cluster.
pub type Store = Records<ClusterState, MemberStatus>;

/// One consistent read of them.
pub type Snapshot = records::Snapshot<ClusterState, MemberStatus>;

/// Connects to etcd at `endpoints` (keys under namespace `prefix`) for cluster `cluster`.
pub async fn connect(
    endpoints: &[String],
    prefix: &str,
    cluster: &str,
) -> Result<Store, StoreError> {
    let coord = Coord::connect(endpoints, prefix, Duration::from_secs(5)).await?;
    Ok(Store::new(coord, keys(cluster)))
}
