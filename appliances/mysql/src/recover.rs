//! `paas mysql recover`: the explicit way back for a cluster whose state document
//! vanished from etcd while members still hold data (they refuse to bootstrap over it,
//! see `decide`). The plan is pure: restart from the member whose GTID position holds
//! the most transactions, as the recorded primary of a new generation with no sync; the
//! supervisors do the rest (it takes the leader key back, the others follow it, a sync
//! is confirmed anew).

use crate::cluster::{ClusterState, Snapshot};
use crate::gtid::GtidPos;

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
                .filter(|m| m.gtid.is_none())
                .map(|m| m.name.as_str())
                .collect();
            if !unknown.is_empty() {
                return Err(format!(
                    "the GTID position of {} is unknown (server not running): name the member to restart from",
                    unknown.join(", ")
                ));
            }
            let best = with_data
                .iter()
                .max_by(|a, b| {
                    let total = |p: &Option<GtidPos>| {
                        p.as_ref().map_or(0, |p| GtidPos::default().behind(p))
                    };
                    total(&a.gtid)
                        .cmp(&total(&b.gtid))
                        .then_with(|| b.name.cmp(&a.name))
                })
                .expect("at least one member with data");
            // With one replication domain this is a total order; refuse to guess when
            // positions diverge across domains.
            if let Some(other) = with_data.iter().find(|m| {
                !best
                    .gtid
                    .as_ref()
                    .is_some_and(|b| m.gtid.as_ref().is_some_and(|o| b.covers(o)))
            }) {
                return Err(format!(
                    "{} ({}) does not hold every transaction of {} ({}): name the member to restart from",
                    best.name,
                    best.gtid.as_ref().map(|p| p.to_string()).unwrap_or_default(),
                    other.name,
                    other.gtid.as_ref().map(|p| p.to_string()).unwrap_or_default()
                ));
            }
            best
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
    let gtid = snapshot
        .members
        .get(&state.primary)
        .and_then(|m| m.gtid.as_ref())
        .map_or_else(|| "unknown".to_string(), |p| p.to_string());
    format!(
        "restarting the cluster from {} (GTID {gtid}) as the primary of generation {}; the other members follow it",
        state.primary, state.generation
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::{MemberStatus, Role};

    fn member(name: &str, gtid: Option<&str>, has_data: bool) -> MemberStatus {
        MemberStatus {
            name: name.into(),
            addr: String::new(),
            health_addr: String::new(),
            role: Role::Stopped,
            running: gtid.is_some(),
            streaming: false,
            gtid: gtid.map(|g| GtidPos::parse(g).unwrap()),
            received: None,
            lag: None,
            acks: false,
            semi_sync_off: false,
            generation: Some(4),
            decision: String::new(),
            has_data,
        }
    }

    fn snapshot(members: Vec<MemberStatus>) -> Snapshot {
        Snapshot {
            state: None,
            leader: None,
            members: members.into_iter().map(|m| (m.name.clone(), m)).collect(),
        }
    }

    #[test]
    fn restarts_from_the_member_with_the_most_transactions() {
        let s = snapshot(vec![
            member("my0", Some("0-1-10"), true),
            member("my1", Some("0-2-12"), true),
            member("my2", None, false),
        ]);
        let state = plan(&s, None).unwrap();
        assert_eq!(
            state,
            ClusterState {
                generation: 5,
                primary: "my1".into(),
                sync: None
            }
        );
        assert!(describe(&state, &s).contains("my1 (GTID 0-2-12)"));
        assert_eq!(plan(&s, Some("my0")).unwrap().primary, "my0");
        assert!(plan(&s, Some("my2")).is_err(), "my2 has no data");
    }

    #[test]
    fn refuses_to_guess() {
        let unknown = snapshot(vec![
            member("my0", Some("0-1-10"), true),
            member("my1", None, true),
        ]);
        assert!(plan(&unknown, None).unwrap_err().contains("my1"));
        let diverged = snapshot(vec![
            member("my0", Some("0-1-10,1-1-1"), true),
            member("my1", Some("0-1-12"), true),
        ]);
        assert!(plan(&diverged, None)
            .unwrap_err()
            .contains("name the member"));
        assert!(plan(&snapshot(vec![]), None).is_err());
        let mut present = snapshot(vec![member("my0", Some("0-1-1"), true)]);
        present.state = Some((
            ClusterState {
                generation: 1,
                primary: "my0".into(),
                sync: None,
            },
            7,
        ));
        assert!(plan(&present, None).is_err());
    }
}
