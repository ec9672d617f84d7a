//! A replication group's shared records in etcd: the state document, the leader record
//! and the member registrations.
//!
//! Key layout under `redis/<group>/` in the coord namespace (the appliance core's
//! `records` layout):
//!
//! ```text
//! state            GroupState (JSON), written only with compare-and-set on its
//!                  mod-revision; absent until the group is bootstrapped
//! leader           paas_appliance::leader::LeaderRecord (JSON), bound to the leader's
//!                  lease; the leader-following endpoint forwards to its `addr`
//! members/<name>   MemberStatus (JSON), bound to that supervisor's lease, rewritten
//!                  every tick
//! ```
//!
//! Invariants of [`GroupState`]:
//! - `generation` grows by one each time leadership is taken (bootstrap, promotion of a
//!   replica, the recorded primary taking the key back), in the same transaction that
//!   takes the leader key.
//! - `primary` is the member that leads or last led; only it runs a writable server.

pub use paas_appliance::records::Keys;
use paas_appliance::records::Member;
use serde::{Deserialize, Serialize};

/// The document the supervisors of one group agree on roles through.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupState {
    /// Bumped on every change of leadership; shown by `paas redis info`.
    pub generation: u64,
    /// The member that leads (or last led).
    pub primary: String,
}

/// The role a member reports about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Writable primary holding the leader key.
    Primary,
    /// Read-only replica (following a member, or detached while nobody leads).
    Replica,
    /// A writable server that does not hold the leader key: being fenced.
    Deposed,
    /// redis-server is not running (starting, fenced, waiting).
    Stopped,
}

/// What each supervisor publishes about its server, for the other supervisors (who can
/// be promoted, who is alive) and for `paas redis info`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberStatus {
    /// The member's name (also the last segment of its key).
    pub name: String,
    /// Where redis-server listens (`host:port`).
    pub addr: String,
    /// Where the supervisor's health API listens (`host:port`).
    pub health_addr: String,
    /// The member's role as it sees it.
    pub role: Role,
    /// Whether redis-server answers commands (its data is loaded).
    pub running: bool,
    /// The member a replica follows; `None` on a primary, and on a replica detached
    /// while nobody leads (its offset is then final).
    pub upstream: Option<String>,
    /// Whether a replica's link to its upstream is up.
    pub link_up: bool,
    /// The replication offset: `master_repl_offset` on a primary, the processed offset
    /// on a replica; on a stopped member, the last one its supervisor saw while the
    /// server ran (unknown after the supervisor restarted).
    pub offset: Option<u64>,
    /// Bytes a replica is behind the primary's offset, when known.
    pub lag_bytes: Option<u64>,
    /// The state document generation the member last saw.
    pub generation: Option<u64>,
    /// The sentence the member's last tick decided.
    pub decision: String,
    /// Whether the member's data directory holds data (an AOF or an RDB): a group whose
    /// state document is missing never bootstraps while any member reports data.
    pub has_data: bool,
}

/// The first component of every group's keys.
const KIND: &str = "redis";

/// The etcd keys of group `group`: `redis/<group>/` under the coord namespace.
pub fn keys(group: &str) -> Keys {
    Keys::new(KIND, group)
}

/// The prefix of every group's records (`redis/`): a whole-cluster restore deletes the
/// old cluster's groups' records at once, so the re-created groups start anew.
pub fn groups_prefix() -> String {
    format!("{KIND}/")
}

impl Member for MemberStatus {
    fn name(&self) -> &str {
        &self.name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_live_under_the_group_prefix() {
        let keys = keys("r_shop_1");
        assert_eq!(keys.state(), "redis/r_shop_1/state");
        assert_eq!(keys.leader(), "redis/r_shop_1/leader");
        assert_eq!(keys.member("r1"), "redis/r_shop_1/members/r1");
    }
}
