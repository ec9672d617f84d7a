//! What `paas mysql info` shows about a cluster: the state document, who leads, and
//! every registered member's role, GTID positions, lag and last decision.
//!
//! [`ClusterInfo::read`] does one etcd read; [`ClusterInfo::render`] is pure, so the
//! CLI prints it as is and tests check it without I/O.

use std::fmt::Write;

use paas_appliance::records::RecordsError;

use crate::cluster::{self, ClusterState, MemberStatus, Role};

/// A cluster's state as one etcd read saw it.
#[derive(Debug, Clone)]
pub struct ClusterInfo {
    /// The cluster's name.
    pub cluster: String,
    /// The state document, `None` before bootstrap.
    pub state: Option<ClusterState>,
    /// The member holding the leader key and the address the endpoint forwards to.
    pub leader: Option<(String, String)>,
    /// Registered members, sorted by name.
    pub members: Vec<MemberStatus>,
}

impl ClusterInfo {
    /// Reads cluster `cluster` under `prefix` from etcd.
    pub async fn read(
        etcd_endpoints: &[String],
        prefix: &str,
        cluster: &str,
    ) -> Result<Self, RecordsError> {
        let store = cluster::connect(etcd_endpoints, prefix, cluster).await?;
        let snapshot = store.read().await?;
        Ok(ClusterInfo {
            cluster: cluster.to_string(),
            state: snapshot.state.map(|(state, _)| state),
            leader: snapshot
                .leader
                .map(|l| (l.record.member, l.record.addr.to_string())),
            members: snapshot.members.into_values().collect(),
        })
    }

    /// The text shown to operators.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = match &self.state {
            None if self.members.iter().any(|m| m.has_data) => writeln!(
                out,
                "mysql cluster {}: no state in etcd, but members hold data: down until `paas mysql recover`",
                self.cluster
            ),
            None => writeln!(out, "mysql cluster {}: not initialized", self.cluster),
            Some(state) => writeln!(
                out,
                "mysql cluster {}: generation {}, primary {}, sync {}",
                self.cluster,
                state.generation,
                state.primary,
                state.sync.as_deref().unwrap_or("(none yet: only the primary can be promoted)")
            ),
        };
        let _ = match &self.leader {
            Some((member, addr)) => writeln!(out, "leader: {member} at {addr}"),
            None => writeln!(out, "leader: none (failover or recovery in progress)"),
        };
        for m in self.members.iter().filter(|m| m.semi_sync_off) {
            let _ = writeln!(
                out,
                "ALARM: {} has Rpl_semi_sync_master_status OFF: commits may be acknowledged without a replica",
                m.name
            );
        }
        let _ = writeln!(
            out,
            "{:<8} {:<8} {:<7} {:<4} {:<5} {:<16} {:<16} {:<6} DECISION",
            "MEMBER", "ROLE", "RUNNING", "GEN", "ACKS", "GTID", "RECEIVED", "LAG"
        );
        for m in &self.members {
            let role = match m.role {
                Role::Primary => "primary",
                Role::Sync => "sync",
                Role::Async => "async",
                Role::Deposed => "deposed",
                Role::Stopped => "stopped",
            };
            let pos = |p: &Option<crate::gtid::GtidPos>| {
                p.as_ref()
                    .map(|p| p.to_string())
                    .filter(|p| !p.is_empty())
                    .unwrap_or_else(|| "-".into())
            };
            let _ = writeln!(
                out,
                "{:<8} {:<8} {:<7} {:<4} {:<5} {:<16} {:<16} {:<6} {}",
                m.name,
                role,
                if m.running { "yes" } else { "no" },
                m.generation.map_or("-".to_string(), |g| g.to_string()),
                if m.acks { "on" } else { "off" },
                pos(&m.gtid),
                pos(&m.received),
                m.lag.map_or("-".to_string(), |l| format!("{l} tx")),
                m.decision
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gtid::GtidPos;

    fn member(name: &str, role: Role, gtid: &str, lag: u64) -> MemberStatus {
        MemberStatus {
            name: name.into(),
            addr: "127.0.0.1:1".into(),
            health_addr: "127.0.0.1:2".into(),
            role,
            running: true,
            streaming: role != Role::Primary,
            gtid: Some(GtidPos::parse(gtid).unwrap()),
            received: (role != Role::Primary).then(|| GtidPos::parse(gtid).unwrap()),
            lag: Some(lag),
            acks: role == Role::Sync,
            semi_sync_off: false,
            generation: Some(3),
            decision: "fine".into(),
            has_data: true,
        }
    }

    #[test]
    fn renders_roles_positions_and_lag() {
        let info = ClusterInfo {
            cluster: "main".into(),
            state: Some(ClusterState {
                generation: 3,
                primary: "my0".into(),
                sync: Some("my1".into()),
            }),
            leader: Some(("my0".into(), "127.0.0.1:13306".into())),
            members: vec![
                member("my0", Role::Primary, "0-1-10", 0),
                member("my1", Role::Sync, "0-1-9", 1),
            ],
        };
        let text = info.render();
        assert!(
            text.starts_with("mysql cluster main: generation 3, primary my0, sync my1\nleader: my0 at 127.0.0.1:13306\n"),
            "{text}"
        );
        assert!(
            text.contains("my1      sync     yes     3    on    0-1-9            0-1-9            1 tx   fine"),
            "{text}"
        );
        assert!(!text.contains("ALARM"));
        let mut alarmed = info.clone();
        alarmed.members[0].semi_sync_off = true;
        assert!(alarmed
            .render()
            .contains("ALARM: my0 has Rpl_semi_sync_master_status OFF"));
        let empty = ClusterInfo {
            cluster: "main".into(),
            state: None,
            leader: None,
            members: vec![],
        };
        assert!(empty.render().contains("not initialized"));
    }
}
