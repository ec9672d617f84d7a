//! What `paas pg info` and `paas cluster status` show about a cluster: the state
//! document, who leads, and every registered member's role, WAL position and lag.
//!
//! [`ClusterInfo::read`] does one etcd read; [`ClusterInfo::render`] is a pure function
//! producing the text table, so the CLI prints it as is and tests check it without I/O.

use std::fmt::Write;

use crate::cluster::{format_lsn, ClusterState, MemberStatus, Role};
use crate::store::{self, StoreError};

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
    ) -> Result<Self, StoreError> {
        let store = store::connect(etcd_endpoints, prefix, cluster).await?;
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
        match &self.state {
            None => {
                let with_data: Vec<&str> = self
                    .members
                    .iter()
                    .filter(|m| m.has_data)
                    .map(|m| m.name.as_str())
                    .collect();
                let _ = if with_data.is_empty() {
                    writeln!(out, "postgres cluster {}: not initialized", self.cluster)
                } else {
                    writeln!(
                        out,
                        "postgres cluster {}: no state in etcd, but {} hold data: down until `paas pg recover`",
                        self.cluster,
                        with_data.join(", ")
                    )
                };
            }
            Some(state) => {
                let _ = writeln!(
                    out,
                    "postgres cluster {}: generation {}, primary {}, sync {}",
                    self.cluster,
                    state.generation,
                    state.primary,
                    state.sync.as_deref().unwrap_or("(none: commits wait)")
                );
            }
        }
        let _ = match &self.leader {
            Some((member, addr)) => writeln!(out, "leader: {member} at {addr}"),
            None => writeln!(out, "leader: none (failover or recovery in progress)"),
        };
        let _ = writeln!(
            out,
            "{:<10} {:<8} {:<8} {:<6} {:<14} {:<10} DECISION",
            "MEMBER", "ROLE", "RUNNING", "GEN", "WAL", "LAG"
        );
        for m in &self.members {
            let role = match m.role {
                Role::Primary => "primary",
                Role::Sync => "sync",
                Role::Async => "async",
                Role::Deposed => "deposed",
                Role::Stopped => "stopped",
            };
            let _ = writeln!(
                out,
                "{:<10} {:<8} {:<8} {:<6} {:<14} {:<10} {}",
                m.name,
                role,
                if m.running { "yes" } else { "no" },
                m.generation.map_or("-".to_string(), |g| g.to_string()),
                m.wal_lsn.map_or("-".to_string(), format_lsn),
                m.lag_bytes.map_or("-".to_string(), |l| format!("{l} B")),
                m.decision
            );
        }
        for m in &self.members {
            if let Some(archiving) = &m.archiving {
                let _ = writeln!(out, "{}: {archiving}", m.name);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_roles_positions_and_lag() {
        let member = |name: &str, role, lsn, lag| MemberStatus {
            name: name.into(),
            pg_addr: "127.0.0.1:1".into(),
            health_addr: "127.0.0.1:2".into(),
            role,
            running: true,
            streaming: role != Role::Primary,
            wal_lsn: Some(lsn),
            lag_bytes: Some(lag),
            generation: Some(3),
            decision: "fine".into(),
            has_data: true,
            archiving: None,
        };
        let info = ClusterInfo {
            cluster: "main".into(),
            state: Some(ClusterState {
                generation: 3,
                primary: "pg0".into(),
                sync: Some("pg1".into()),
            }),
            leader: Some(("pg0".into(), "127.0.0.1:5432".into())),
            members: vec![
                member("pg0", Role::Primary, 0x1_0000_0010, 0),
                MemberStatus {
                    archiving: Some("archiving failing since 2026-12-02 08:10:00 UTC: x".into()),
                    ..member("pg1", Role::Sync, 0x1_0000_0000, 16)
                },
            ],
        };
        let text = info.render();
        assert!(
            text.ends_with("\npg1: archiving failing since 2026-12-02 08:10:00 UTC: x\n"),
            "{text}"
        );
        assert!(!text.contains("pg0: archiving"), "{text}");
        assert!(text.starts_with("postgres cluster main: generation 3, primary pg0, sync pg1\nleader: pg0 at 127.0.0.1:5432\n"), "{text}");
        assert!(
            text.contains("pg1        sync     yes      3      1/0            16 B       fine"),
            "{text}"
        );
        let empty = ClusterInfo {
            cluster: "main".into(),
            state: None,
            leader: None,
            members: vec![],
        };
        assert!(empty.render().contains("not initialized"));
    }
}
