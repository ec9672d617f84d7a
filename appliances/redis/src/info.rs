//! What `paas redis info` and `paas cluster status` show about Redis groups: each
//! group's generation, who leads, and every registered member's role, offset, lag,
//! link and last decision.
//!
//! [`groups`] does one etcd read of every group and returns them as JSON (the provider's
//! status); [`render`] is a pure function from that JSON to the text table, so the CLI
//! prints it as is and tests check it without I/O.

use std::collections::BTreeMap;
use std::fmt::Write;

use paas_coord::{Coord, CoordError};
use serde::{Deserialize, Serialize};

use crate::cluster::{GroupState, MemberStatus};

/// One group as one etcd read saw it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupInfo {
    /// The state document, `None` before bootstrap (or when etcd lost it).
    pub state: Option<GroupState>,
    /// The member holding the leader key.
    pub leader: Option<String>,
    /// The address the endpoint forwards to.
    pub leader_addr: Option<String>,
    /// Registered members, sorted by name.
    pub members: Vec<MemberStatus>,
}

/// Reads every group under `redis/` in one request: group name -> [`GroupInfo`], as JSON.
pub async fn groups(coord: &Coord) -> Result<serde_json::Value, CoordError> {
    let entries = coord.entries("redis/").await?;
    let mut groups: BTreeMap<String, GroupInfo> = BTreeMap::new();
    for entry in entries {
        let Some(rest) = entry.key.strip_prefix("redis/") else {
            continue;
        };
        let Some((group, key)) = rest.split_once('/') else {
            continue;
        };
        let info = groups.entry(group.to_string()).or_default();
        if key == "state" {
            info.state = serde_json::from_slice(&entry.value).ok();
        } else if key == "leader" {
            if let Ok(record) =
                serde_json::from_slice::<paas_appliance::leader::LeaderRecord>(&entry.value)
            {
                info.leader = Some(record.member);
                info.leader_addr = Some(record.addr.to_string());
            }
        } else if key.starts_with("members/") {
            if let Ok(member) = serde_json::from_slice::<MemberStatus>(&entry.value) {
                info.members.push(member);
            }
        }
    }
    for info in groups.values_mut() {
        info.members.sort_by(|a, b| a.name.cmp(&b.name));
    }
    Ok(serde_json::to_value(groups).unwrap_or_default())
}

/// The tables of every group in `groups` (as [`groups`] returns them).
pub fn render_all(groups: &serde_json::Value) -> String {
    let Some(map) = groups.as_object() else {
        return String::new();
    };
    if map.is_empty() {
        return "redis: no groups (`paas resource add redis -a APP` creates one)\n".into();
    }
    map.iter()
        .filter_map(|(name, info)| {
            serde_json::from_value::<GroupInfo>(info.clone())
                .ok()
                .map(|info| render(name, &info))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The text shown to operators for group `name`.
pub fn render(name: &str, info: &GroupInfo) -> String {
    let mut out = String::new();
    let _ = match &info.state {
        None if info.members.iter().any(|m| m.has_data) => writeln!(
            out,
            "redis group {name}: no state in etcd, but members hold data: staying down rather than bootstrapping over it"
        ),
        None => writeln!(out, "redis group {name}: not initialized"),
        Some(state) => writeln!(
            out,
            "redis group {name}: generation {}, primary {}",
            state.generation, state.primary
        ),
    };
    let _ = match (&info.leader, &info.leader_addr) {
        (Some(member), Some(addr)) => writeln!(out, "leader: {member} at {addr}"),
        _ => writeln!(out, "leader: none (failover in progress)"),
    };
    let _ = writeln!(
        out,
        "{:<6} {:<8} {:<8} {:<10} {:>12} {:>10} {:<6} DECISION",
        "MEMBER", "ROLE", "RUNNING", "UPSTREAM", "OFFSET", "LAG", "LINK"
    );
    for m in &info.members {
        let _ = writeln!(
            out,
            "{:<6} {:<8} {:<8} {:<10} {:>12} {:>10} {:<6} {}",
            m.name,
            format!("{:?}", m.role).to_lowercase(),
            if m.running { "yes" } else { "no" },
            m.upstream.as_deref().unwrap_or("-"),
            m.offset.map_or("-".into(), |o| o.to_string()),
            m.lag_bytes.map_or("-".into(), |l| format!("{l} B")),
            if m.link_up { "up" } else { "-" },
            m.decision
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::Role;

    #[test]
    fn the_table_shows_generation_leader_and_members() {
        let info = GroupInfo {
            state: Some(GroupState {
                generation: 4,
                primary: "r1".into(),
            }),
            leader: Some("r1".into()),
            leader_addr: Some("127.4.5.6:16380".into()),
            members: vec![MemberStatus {
                name: "r0".into(),
                addr: "127.4.5.6:16379".into(),
                health_addr: "127.4.5.6:18208".into(),
                role: Role::Replica,
                running: true,
                upstream: Some("r1".into()),
                link_up: true,
                offset: Some(1234),
                lag_bytes: Some(0),
                generation: Some(4),
                decision: "replica of r1 (generation 4), linked".into(),
                has_data: true,
            }],
        };
        let text = render("redis_ab", &info);
        assert!(text.contains("redis group redis_ab: generation 4, primary r1"));
        assert!(text.contains("leader: r1 at 127.4.5.6:16380"));
        assert!(text.contains("r0     replica"));
        assert!(text.contains("replica of r1 (generation 4), linked"));
        let lost = GroupInfo {
            members: info.members.clone(),
            ..GroupInfo::default()
        };
        assert!(render("g", &lost).contains("staying down"));
    }
}
