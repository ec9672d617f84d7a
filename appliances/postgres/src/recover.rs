//! `paas pg recover`: the explicit way back for a cluster whose state document vanished
//! from etcd while members still hold data (they refuse to bootstrap over it, see
//! `decide`). The plan is pure: restart from the member with the highest WAL position,
//! as the recorded primary of a new generation with no sync; the supervisors then do the
//! rest (it takes the leader key back, the others follow it, a sync is confirmed anew).

use crate::cluster::{format_lsn, ClusterState};
use crate::store::Snapshot;

/// The state document that restarts the cluster, or why there is nothing safe to do.
/// `chosen` overrides the choice (the operator names the member).
pub fn plan(snapshot: &Snapshot, chosen: Option<&str>) -> Result<ClusterState, String> {
    if let Some((state, _)) = &snapshot.state {
        return Err(format!(
            "the cluster has its state (generation {}, primary {}): nothing to recover",
            state.generation, state.primary
        ));
    }
    if let Some(leader) = &snapshot.leader {
        return Err(format!(
            "{} holds the leader key; wait until it releases it",
            leader.record.member
        ));
    }
    let with_data: Vec<_> = snapshot.members.values().filter(|m| m.has_data).collect();
    if with_data.is_empty() {
        return Err(
            "no registered member holds data: nothing to recover from (a new cluster bootstraps by itself)"
                .into(),
        );
    }
    let primary = match chosen {
        Some(name) => with_data
            .iter()
            .find(|m| m.name == name)
            .ok_or_else(|| format!("member {name} is not registered with data"))?,
        None => {
            let unknown: Vec<&str> = with_data
                .iter()
                .filter(|m| m.wal_lsn.is_none())
                .map(|m| m.name.as_str())
                .collect();
            if !unknown.is_empty() {
                return Err(format!(
                    "the WAL position of {} is unknown (server not running): name the member to restart from",
                    unknown.join(", ")
                ));
            }
            with_data
                .iter()
                .max_by(|a, b| a.wal_lsn.cmp(&b.wal_lsn).then_with(|| b.name.cmp(&a.name)))
                .expect("at least one member with data")
        }
    };
    let generation = snapshot
        .members
        .values()
        .filter_map(|m| m.generation)
        .max()
        .unwrap_or(0)
        + 1;
    Ok(ClusterState {
        generation,
        primary: primary.name.clone(),
        sync: None,
    })
}

/// The sentence that says what a plan does.
pub fn describe(state: &ClusterState, snapshot: &Snapshot) -> String {
    let wal = snapshot
        .members
        .get(&state.primary)
        .and_then(|m| m.wal_lsn)
        .map_or_else(|| "unknown".to_string(), format_lsn);
    format!(
        "restarting the cluster from {} (WAL {wal}) as the primary of generation {}; the other members follow it",
        state.primary, state.generation
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::{MemberStatus, Role};

    fn member(name: &str, wal: Option<u64>, has_data: bool) -> MemberStatus {
        MemberStatus {
            name: name.into(),
            pg_addr: String::new(),
            health_addr: String::new(),
            role: Role::Stopped,
            running: wal.is_some(),
            streaming: false,
            wal_lsn: wal,
            lag_bytes: None,
            generation: Some(4),
            decision: String::new(),
            has_data,
            archiving: None,
        }
    }

    fn snapshot(members: Vec<MemberStatus>) -> Snapshot {
        Snapshot {
            members: members.into_iter().map(|m| (m.name.clone(), m)).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn restarts_from_the_highest_wal_position() {
        let s = snapshot(vec![
            member("pg0", Some(100), true),
            member("pg1", Some(300), true),
            member("pg2", None, false),
        ]);
        let state = plan(&s, None).unwrap();
        assert_eq!(
            state,
            ClusterState {
                generation: 5,
                primary: "pg1".into(),
                sync: None
            }
        );
        assert!(describe(&state, &s).contains("from pg1 (WAL 0/12C)"));
        assert_eq!(plan(&s, Some("pg0")).unwrap().primary, "pg0");
        assert!(plan(&s, Some("pg2")).is_err());
    }

    #[test]
    fn refuses_what_it_cannot_do_safely() {
        let unknown = snapshot(vec![
            member("pg0", Some(1), true),
            member("pg1", None, true),
        ]);
        assert!(plan(&unknown, None)
            .unwrap_err()
            .contains("WAL position of pg1 is unknown"));
        assert!(plan(&snapshot(vec![member("pg0", None, false)]), None)
            .unwrap_err()
            .contains("no registered member holds data"));
        let mut has_state = snapshot(vec![member("pg0", Some(1), true)]);
        has_state.state = Some((
            ClusterState {
                generation: 2,
                primary: "pg0".into(),
                sync: None,
            },
            9,
        ));
        assert!(plan(&has_state, None)
            .unwrap_err()
            .contains("nothing to recover"));
    }
}
