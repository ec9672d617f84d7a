//! The cluster's shared records in etcd: the state document, the leader record and the
//! member registrations, and where each lives.
//!
//! Key layout under `pg/<cluster>/` in the coord namespace (the appliance core's
//! `records` layout):
//!
//! ```text
//! state            ClusterState (JSON), written only with compare-and-set on its
//!                  mod-revision; absent until the cluster is bootstrapped
//! leader           paas_appliance::leader::LeaderRecord (JSON), bound to the leader's lease;
//!                  the leader-following endpoint forwards to its `addr`
//! members/<name>   MemberStatus (JSON), bound to that supervisor's lease, rewritten
//!                  every tick
//! ```
//!
//! Invariants of [`ClusterState`]:
//! - `generation` grows by one each time leadership is taken (bootstrap, promotion of the
//!   sync, the recorded primary taking the key back).
//! - `sync` names a member that has every write the primary ever acknowledged, or is
//!   `None` (then only `primary` has them all). It is only set after that member was seen
//!   to have flushed the primary's WAL up to the point where commits were blocked (see
//!   `supervisor`), and the primary only acknowledges commits the `sync` flushed.
//! - Only `primary` or `sync` may ever take the leader key.
//!
//! Asynchronous standbys are not stored in the document: they are every registered member
//! that is neither `primary` nor `sync`, so keeping a list would add a write per join
//! without adding a guarantee.

pub use paas_appliance::records::Keys;
use paas_appliance::records::Member;
use serde::{Deserialize, Serialize};

/// The one document the supervisors agree on roles through.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    /// Bumped on every change of leadership; shown by `paas pg info`.
    pub generation: u64,
    /// The member that leads (or last led) and has every acknowledged write.
    pub primary: String,
    /// The synchronous standby: the only member that may be promoted.
    pub sync: Option<String>,
}

/// The role a member reports about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Writable primary holding the leader key.
    Primary,
    /// Streaming standby named as `sync` in the state document.
    Sync,
    /// Any other streaming or recovering standby.
    Async,
    /// A writable PostgreSQL that does not hold the leader key: being fenced.
    Deposed,
    /// PostgreSQL is not running (starting, rebuilding, fenced, waiting).
    Stopped,
}

/// What each supervisor publishes about its instance, for the other supervisors (who can
/// be promoted, who is alive) and for `paas pg info`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberStatus {
    /// The member's name (also the last segment of its key).
    pub name: String,
    /// Where PostgreSQL listens (`host:port`).
    pub pg_addr: String,
    /// Where the supervisor's health API listens (`host:port`).
    pub health_addr: String,
    /// The member's role as it sees it.
    pub role: Role,
    /// Whether PostgreSQL answers queries.
    pub running: bool,
    /// Whether this standby's WAL receiver streams (false on a primary).
    #[serde(default)]
    pub streaming: bool,
    /// WAL position: flush LSN on a primary, replay LSN on a standby.
    pub wal_lsn: Option<u64>,
    /// Bytes this standby's replay is behind the primary's flush position, when known.
    pub lag_bytes: Option<u64>,
    /// The state document generation the member last saw.
    pub generation: Option<u64>,
    /// The sentence the member's last tick decided.
    pub decision: String,
    /// Whether the member's data directory holds a database: a cluster whose state
    /// document is missing never bootstraps while any member reports data.
    #[serde(default)]
    pub has_data: bool,
    /// "archiving failing since T (segment S): <pgBackRest's message>" while this
    /// member's latest push failed (`crate::archive::failure`); `None`: archiving works
    /// or is off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archiving: Option<String>,
}

/// The etcd keys of cluster `cluster`: `pg/<cluster>/` under the coord namespace.
pub fn keys(cluster: &str) -> Keys {
    Keys::new("pg", cluster)
}

impl Member for MemberStatus {
    fn name(&self) -> &str {
        &self.name
    }
}

/// Formats an LSN the way PostgreSQL prints it (`16/B374D848`).
pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_live_under_the_cluster_prefix() {
        let keys = keys("main");
        assert_eq!(keys.state(), "pg/main/state");
        assert_eq!(keys.leader(), "pg/main/leader");
        assert_eq!(keys.member("pg1"), "pg/main/members/pg1");
        assert!(keys.member("pg1").starts_with(keys.base()));
    }

    #[test]
    fn lsns_print_like_postgres() {
        assert_eq!(format_lsn(0x16_B374_D848), "16/B374D848");
        assert_eq!(format_lsn(0), "0/0");
    }
}
