//! `paas redis recover`: the explicit way back for a group whose state document vanished
//! from etcd while members still hold data (they refuse to bootstrap over it, see
//! `decide`'s rule 2).
//!
//! The plan is pure ([`plan`]): a new state document naming the member with the most
//! data as the primary of a generation above every one the members saw. The supervisors
//! do the rest through `decide`'s leaderless rule: the named member takes the key (a
//! replica finishes its promotion, a stopped one starts as primary) and the others follow
//! it. Which member is "the one with the most data" follows the promise of `WAIT 1`:
//! - while a member's server runs as a replica, the live replica with the highest offset
//!   (lowest name on a tie) is chosen; it holds every write a `WAIT 1` confirmed when it
//!   is the group's only replica, and the highest offset of all live replicas otherwise.
//!   A stopped member is never chosen then, since `decide` lets a live replica take over
//!   before a stopped recorded primary (its disk may lack a confirmed write);
//! - with no live replica, the member with the highest recorded offset (the offset its
//!   supervisor last saw before the server stopped) is chosen; a member with data whose
//!   offset is unknown (its supervisor restarted since) makes the plan refuse to guess,
//!   and the operator names the member.
//!
//! [`recover`] is the I/O around it: one read of the group's records, the plan, and the
//! state document written only if it is still absent and nobody holds the leader key.

use paas_appliance::records::{Records, RecordsError, Snapshot};

use crate::cluster::{GroupState, MemberStatus, Role};

/// The group's records as one read sees them.
pub type GroupSnapshot = Snapshot<GroupState, MemberStatus>;

/// Why a recovery did not happen.
#[derive(Debug, thiserror::Error)]
pub enum RecoverError {
    /// The group is not in a state a recovery applies to, or the plan refuses to guess.
    #[error("{0}")]
    Refused(String),
    /// etcd could not be read or written.
    #[error("reading or writing the group's records: {0}")]
    Records(#[from] RecordsError),
    /// The records changed between the read and the write.
    #[error("the group's records changed meanwhile; look again")]
    Changed,
}

/// The state document that restarts the group, or why there is nothing safe to do.
/// `chosen` overrides the choice (the operator names the member).
pub fn plan(snapshot: &GroupSnapshot, chosen: Option<&str>) -> Result<GroupState, String> {
    if let Some((state, _)) = &snapshot.state {
        return Err(format!(
            "the group has its state (generation {}, primary {}): nothing to recover",
            state.generation, state.primary
        ));
    }
    if let Some(leader) = &snapshot.leader {
        return Err(format!(
            "{} holds the leader key; wait until it releases it",
            leader.record.member
        ));
    }
    let with_data: Vec<&MemberStatus> = snapshot.members.values().filter(|m| m.has_data).collect();
    if with_data.is_empty() {
        return Err(
            "no registered member holds data: nothing to recover from (a new group bootstraps by itself)"
                .into(),
        );
    }
    let live: Vec<&MemberStatus> = with_data
        .iter()
        .copied()
        .filter(|m| m.running && m.role == Role::Replica)
        .collect();
    let primary = match chosen {
        Some(name) => {
            let member = with_data
                .iter()
                .find(|m| m.name == name)
                .ok_or_else(|| format!("member {name} is not registered with data"))?;
            if !live.is_empty() && !live.iter().any(|m| m.name == name) {
                return Err(format!(
                    "{name}'s server does not run as a replica while {} do{}: a live replica takes over before a stopped member, so name one of them",
                    names(&live),
                    if live.len() == 1 { "es" } else { "" }
                ));
            }
            *member
        }
        None if !live.is_empty() => highest(&live).expect("live is not empty"),
        None => {
            let unknown: Vec<&MemberStatus> = with_data
                .iter()
                .copied()
                .filter(|m| m.offset.is_none())
                .collect();
            if !unknown.is_empty() {
                return Err(format!(
                    "no server runs and the offset of {} is unknown: name the member to restart from",
                    names(&unknown)
                ));
            }
            highest(&with_data).expect("with_data is not empty")
        }
    };
    let generation = snapshot
        .members
        .values()
        .filter_map(|m| m.generation)
        .max()
        .unwrap_or(0)
        + 1;
    Ok(GroupState {
        generation,
        primary: primary.name.clone(),
    })
}

/// The member with the highest offset, the lowest name on a tie (as `decide` picks).
fn highest<'a>(members: &[&'a MemberStatus]) -> Option<&'a MemberStatus> {
    members.iter().copied().max_by(|a, b| {
        a.offset
            .unwrap_or(0)
            .cmp(&b.offset.unwrap_or(0))
            .then_with(|| b.name.cmp(&a.name))
    })
}

fn names(members: &[&MemberStatus]) -> String {
    members
        .iter()
        .map(|m| m.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The sentence that says what a plan does.
pub fn describe(state: &GroupState, snapshot: &GroupSnapshot) -> String {
    let offset = |m: &MemberStatus| m.offset.map_or_else(|| "unknown".into(), |o| o.to_string());
    let chosen = snapshot
        .members
        .get(&state.primary)
        .map_or_else(|| "unknown".into(), offset);
    let others: Vec<String> = snapshot
        .members
        .values()
        .filter(|m| m.has_data && m.name != state.primary)
        .map(|m| format!("{} (offset {})", m.name, offset(m)))
        .collect();
    let mut text = format!(
        "restarting the group from {} (offset {chosen}) as the primary of generation {}",
        state.primary, state.generation
    );
    if others.is_empty() {
        text.push_str("; no other member holds data");
    } else {
        let verb = if others.len() == 1 {
            "follows it and resynchronizes"
        } else {
            "follow it and resynchronize"
        };
        text.push_str(&format!("; {} {verb} from it", others.join(", ")));
    }
    text
}

/// Reads the group's records, plans and writes the new state document (only while it is
/// absent and nobody holds the leader key). Returns what was done.
pub async fn recover(
    records: &Records<GroupState, MemberStatus>,
    chosen: Option<&str>,
) -> Result<String, RecoverError> {
    let snapshot = records.read().await?;
    let state = plan(&snapshot, chosen).map_err(RecoverError::Refused)?;
    let done = describe(&state, &snapshot);
    if !records
        .reset_state(&state, snapshot.state_revision())
        .await?
    {
        return Err(RecoverError::Changed);
    }
    tracing::warn!(group = %records.keys().base(), "{done}");
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use paas_appliance::leader::LeaderRecord;
    use paas_appliance::records::LeaderKey;

    fn member(name: &str, role: Role, offset: Option<u64>, has_data: bool) -> MemberStatus {
        MemberStatus {
            name: name.into(),
            addr: String::new(),
            health_addr: String::new(),
            role,
            running: role != Role::Stopped,
            upstream: None,
            link_up: false,
            offset,
            lag_bytes: None,
            generation: Some(4),
            decision: String::new(),
            has_data,
        }
    }

    fn snapshot(members: Vec<MemberStatus>) -> GroupSnapshot {
        Snapshot {
            state: None,
            leader: None,
            members: members.into_iter().map(|m| (m.name.clone(), m)).collect(),
        }
    }

    fn check(members: Vec<MemberStatus>, chosen: Option<&str>, expected: Result<&str, &str>) {
        let s = snapshot(members);
        match (plan(&s, chosen), expected) {
            (Ok(state), Ok(primary)) => {
                assert_eq!(
                    state,
                    GroupState {
                        generation: 5,
                        primary: primary.into()
                    }
                );
            }
            (Err(reason), Err(part)) => assert!(reason.contains(part), "{reason}"),
            (got, want) => panic!("plan gave {got:?}, expected {want:?}"),
        }
    }

    #[test]
    fn a_live_replica_with_the_highest_offset_is_chosen() {
        let live = || {
            vec![
                member("r0", Role::Stopped, Some(900), true),
                member("r1", Role::Replica, Some(700), true),
                member("r2", Role::Replica, Some(800), true),
                member("r3", Role::Stopped, None, false),
            ]
        };
        check(live(), None, Ok("r2"));
        check(live(), Some("r1"), Ok("r1"));
        // A stopped member would lose to a live replica in `decide`: refused.
        check(live(), Some("r0"), Err("name one of them"));
        check(live(), Some("r3"), Err("not registered with data"));
        let tie = vec![
            member("r1", Role::Replica, Some(800), true),
            member("r2", Role::Replica, Some(800), true),
        ];
        check(tie, None, Ok("r1"));
    }

    #[test]
    fn with_no_live_replica_the_highest_recorded_offset_is_chosen() {
        let stopped = vec![
            member("r0", Role::Stopped, Some(900), true),
            member("r1", Role::Stopped, Some(950), true),
        ];
        check(stopped, None, Ok("r1"));
        let unknown = || {
            vec![
                member("r0", Role::Stopped, Some(900), true),
                member("r1", Role::Stopped, None, true),
            ]
        };
        check(unknown(), None, Err("offset of r1 is unknown"));
        check(unknown(), Some("r1"), Ok("r1"));
    }

    #[test]
    fn refuses_when_there_is_nothing_to_recover() {
        check(vec![], None, Err("no registered member holds data"));
        check(
            vec![member("r0", Role::Stopped, None, false)],
            None,
            Err("no registered member holds data"),
        );
        let mut present = snapshot(vec![member("r0", Role::Replica, Some(1), true)]);
        present.state = Some((
            GroupState {
                generation: 1,
                primary: "r0".into(),
            },
            7,
        ));
        assert!(plan(&present, None)
            .unwrap_err()
            .contains("nothing to recover"));
        let mut led = snapshot(vec![member("r0", Role::Replica, Some(1), true)]);
        led.leader = Some(LeaderKey {
            record: LeaderRecord {
                member: "r1".into(),
                addr: "127.0.0.1:1".parse().unwrap(),
            },
            lease: 9,
        });
        assert!(plan(&led, None)
            .unwrap_err()
            .contains("r1 holds the leader key"));
    }

    #[test]
    fn the_sentence_names_the_choice_and_the_followers() {
        let s = snapshot(vec![
            member("r0", Role::Stopped, None, true),
            member("r1", Role::Replica, Some(700), true),
        ]);
        let state = plan(&s, None).unwrap();
        assert_eq!(
            describe(&state, &s),
            "restarting the group from r1 (offset 700) as the primary of generation 5; r0 (offset unknown) follows it and resynchronizes from it"
        );
    }
}
