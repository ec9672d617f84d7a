//! The cluster's shared records in etcd: the state document and the member status, over
//! the appliance core's layout under `mysql/<cluster>/`:
//!
//! ```text
//! state            ClusterState (JSON), compare-and-set on its mod-revision
//! leader           paas_appliance::leader::LeaderRecord, bound to the primary's lease
//! members/<name>   MemberStatus (JSON), bound to that supervisor's lease, every tick
//! ```
//!
//! Invariants of [`ClusterState`]:
//! - `generation` grows by one each time leadership is taken.
//! - `sync` names a member that received every transaction the primary ever
//!   acknowledged, or is `None` (then only `primary` has them all): it is recorded only
//!   after the primary locked every other member out and saw the candidate's relay log
//!   cover its binlog position; from then on no other member is let in, so only the
//!   sync acknowledges.
//! - Only `primary` or `sync` ever takes the leader key.

use paas_appliance::health::{Probed, Probes};
pub use paas_appliance::records::Keys;
use paas_appliance::records::{self, Member, Records};
use serde::{Deserialize, Serialize};

use crate::gtid::GtidPos;

/// The one document the supervisors agree on roles through.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    /// Bumped on every change of leadership.
    pub generation: u64,
    /// The member that leads (or last led) and has every acknowledged transaction.
    pub primary: String,
    /// The semi-sync standby: the only member that may be promoted.
    pub sync: Option<String>,
}

/// The role a member reports about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Writable primary holding the leader key.
    Primary,
    /// Replica named as `sync` in the state document.
    Sync,
    /// Any other replica.
    Async,
    /// A writable server that does not hold the leader key: being fenced.
    Deposed,
    /// mariadbd is not running (starting, seeding, fenced, waiting).
    Stopped,
}

/// What each supervisor publishes about its server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberStatus {
    /// The member's name (also the last segment of its key).
    pub name: String,
    /// Where mariadbd listens (`host:port`).
    pub addr: String,
    /// Where the supervisor's health API (and seed server) listens (`host:port`).
    pub health_addr: String,
    /// The member's role as it sees it.
    pub role: Role,
    /// Whether mariadbd answers queries.
    pub running: bool,
    /// Whether this replica's IO thread is connected to its upstream.
    #[serde(default)]
    pub streaming: bool,
    /// `@@gtid_current_pos`.
    pub gtid: Option<GtidPos>,
    /// A replica's received position (`Gtid_IO_Pos`).
    #[serde(default)]
    pub received: Option<GtidPos>,
    /// Transactions this replica has not applied yet, against the primary's position.
    pub lag: Option<u64>,
    /// Whether this replica acknowledges transactions (`rpl_semi_sync_slave_enabled`;
    /// always on for a running replica).
    #[serde(default)]
    pub acks: bool,
    /// On a primary: `Rpl_semi_sync_master_status` is OFF (it fell back to
    /// asynchronous commits): an alarm.
    #[serde(default)]
    pub semi_sync_off: bool,
    /// The state document generation the member last saw.
    pub generation: Option<u64>,
    /// The sentence the member's last tick decided.
    pub decision: String,
    /// Whether the member's datadir holds a database.
    #[serde(default)]
    pub has_data: bool,
}

impl Member for MemberStatus {
    fn name(&self) -> &str {
        &self.name
    }
}

impl Probed for MemberStatus {
    fn probes(&self) -> Probes {
        Probes {
            primary: self.running && self.role == Role::Primary,
            replica: self.running
                && matches!(self.role, Role::Sync | Role::Async)
                && self.streaming,
            health: self.running,
        }
    }
}

/// The etcd keys of cluster `cluster`: `mysql/<cluster>/` under the coord namespace.
pub fn keys(cluster: &str) -> Keys {
    Keys::new("mysql", cluster)
}

/// The records of one MariaDB cluster.
pub type Store = Records<ClusterState, MemberStatus>;

/// One consistent read of them.
pub type Snapshot = records::Snapshot<ClusterState, MemberStatus>;

/// Connects to etcd at `endpoints` (keys under namespace `prefix`) for cluster `cluster`.
pub async fn connect(
    endpoints: &[String],
    prefix: &str,
    cluster: &str,
) -> Result<Store, records::RecordsError> {
    let coord =
        paas_coord::Coord::connect(endpoints, prefix, std::time::Duration::from_secs(5)).await?;
    Ok(Store::new(coord, keys(cluster)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(role: Role, running: bool, streaming: bool) -> MemberStatus {
        MemberStatus {
            name: "my0".into(),
            addr: "127.0.0.1:1".into(),
            health_addr: "127.0.0.1:2".into(),
            role,
            running,
            streaming,
            gtid: None,
            received: None,
            lag: None,
            acks: false,
            semi_sync_off: false,
            generation: Some(1),
            decision: String::new(),
            has_data: true,
        }
    }

    #[test]
    fn keys_live_under_the_cluster_prefix() {
        let keys = keys("main");
        assert_eq!(keys.state(), "mysql/main/state");
        assert_eq!(keys.member("my1"), "mysql/main/members/my1");
    }

    #[test]
    fn probes_follow_role_and_streaming() {
        let check = |role, running, streaming, expected: (bool, bool, bool)| {
            let p = status(role, running, streaming).probes();
            assert_eq!((p.primary, p.replica, p.health), expected, "{role:?}");
        };
        check(Role::Primary, true, false, (true, false, true));
        check(Role::Sync, true, true, (false, true, true));
        check(Role::Async, true, false, (false, false, true));
        check(Role::Stopped, false, false, (false, false, false));
    }
}
