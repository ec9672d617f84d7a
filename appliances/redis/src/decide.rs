//! The supervisor's decision: a pure function from what one tick observed to the one
//! thing to do next, with the sentence that explains it.
//!
//! This module does no I/O and reads no clock; `supervisor` gathers an [`Observed`],
//! calls [`decide`], logs [`Decision::reason`] when it changes and carries it out.
//!
//! What "acknowledged" means here: Redis replication is asynchronous, so a write the
//! primary answered may exist nowhere else. The promise is for a write followed by
//! `WAIT 1 <timeout>` that returned at least 1: some replica processed it. The rules keep
//! that promise by promoting only a replica whose offset is the highest of all live
//! replicas, and by comparing offsets only once they are final (every replica detached
//! from the lost primary, see rule 6); a primary's server that crashed is never restarted
//! over a live replica, because with `appendfsync everysec` it may come back without a
//! write a replica confirmed, and the replica would then resynchronize from it.
//!
//! The rules, in order (the first that applies wins):
//! 1. An action in progress (start, promotion) is waited for.
//! 2. No state document: if this member or any registered member holds data, wait and
//!    say so (etcd lost the group's state: bootstrapping would replicate an empty primary
//!    over that data); otherwise, once every expected member registered, take the free
//!    leader key together with generation 1 and start as primary.
//! 3. The leader key is held by this member's previous lease (supervisor restarted within
//!    the TTL): wait for it to expire, touching nothing.
//! 4. This member leads: keep the server a writable primary; if it crashed while another
//!    member may hold a confirmed write its disk lacks (one not registered yet, or one
//!    reporting data: see rule 6), hand leadership over (release the key) instead of
//!    restarting it;
//!    require one replica for writes (`min-replicas-to-write 1`) exactly while another
//!    member's server runs ([`required_replicas`]): a member that is down or still
//!    starting does not hold writes up, one that runs is waited for.
//! 5. Another member leads: a local writable server is fenced at once; otherwise follow
//!    the leader as a replica (start, or re-point a running replica).
//! 6. Nobody leads: a running replica first detaches from the lost primary (so its
//!    offset stops moving); when every live replica is detached, the one with the highest
//!    offset (lowest name on a tie) takes the key with generation + 1 and promotes itself
//!    (a sole live replica promotes at once: `REPLICAOF NO ONE` detaches it). The recorded
//!    primary takes the key back only when no replica is alive to do so, and, if its
//!    server was killed, only once every member registered and no other reports data
//!    (a member reported "not running" may be a live server too busy to answer `INFO`
//!    in time, and a stopped one with data starts as a detached replica by itself).

use std::collections::BTreeMap;

use crate::cluster::{GroupState, MemberStatus, Role};

/// Who holds the group's leader key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Leader {
    /// The key is absent (never taken, released, or its lease expired).
    Nobody,
    /// This member holds it with its current lease.
    Me,
    /// This member's name is in the key, but bound to an older lease of a previous run.
    MyOldLease,
    /// Another member holds it.
    Other(String),
}

/// The local redis-server as the supervisor sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Local {
    /// Not running, no data on disk.
    Empty,
    /// Not running, data on disk.
    Stopped {
        /// Whether the server exited without the supervisor asking it to.
        crashed: bool,
    },
    /// The process runs but does not answer yet (loading its data).
    Starting,
    /// A running, writable primary.
    Primary {
        /// Its `min-replicas-to-write`.
        min_replicas: u32,
    },
    /// A running read-only replica.
    Replica {
        /// The member it follows; `None`: detached (pointed at no server).
        upstream: Option<String>,
        /// Whether its link to the upstream is up.
        link_up: bool,
        /// Its processed replication offset.
        offset: u64,
    },
}

/// Everything one tick observed: the input of [`decide`].
#[derive(Debug, Clone)]
pub struct Observed {
    /// This member's name.
    pub me: String,
    /// The state document, `None` before bootstrap.
    pub state: Option<GroupState>,
    /// Who holds the leader key.
    pub leader: Leader,
    /// Live registrations of all members (this one included), by name.
    pub members: BTreeMap<String, MemberStatus>,
    /// The local server.
    pub local: Local,
    /// The long action still running, if any.
    pub busy: Option<String>,
    /// How many members the group has (0: unknown); a bootstrap waits for all of them.
    pub expected_members: usize,
}

/// What the supervisor does next; every variant carries the sentence that says why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// All is as it should be.
    Nothing(String),
    /// Nothing can safely be done now; the reason says what is awaited.
    Wait(String),
    /// Take the free leader key with generation 1, then start as primary.
    Bootstrap(String),
    /// Take the free leader key with generation + 1, then `REPLICAOF NO ONE`.
    Promote(String),
    /// Holding the key with the server still a replica: finish an interrupted promotion.
    FinishPromotion(String),
    /// As the recorded primary: take the key back (generation + 1), start if stopped.
    Reclaim(String),
    /// Holding the key with stopped data: start it as primary.
    StartPrimary(String),
    /// Holding the key but unable to serve: release it (killing a writable server).
    Resign(String),
    /// Kill the local writable server now: someone else leads, or nobody does.
    Fence(String),
    /// Start the stopped data as a replica of `upstream` (`None`: detached).
    StartReplica {
        /// The member to follow.
        upstream: Option<String>,
        /// Why.
        reason: String,
    },
    /// Point the running replica at `upstream` (`None`: detach it).
    Repoint {
        /// The member to follow.
        upstream: Option<String>,
        /// Why.
        reason: String,
    },
    /// Set the primary's `min-replicas-to-write`.
    RequireReplicas {
        /// The new value.
        count: u32,
        /// Why.
        reason: String,
    },
}

impl Decision {
    /// The sentence logged for this tick.
    pub fn reason(&self) -> &str {
        match self {
            Decision::Nothing(r)
            | Decision::Wait(r)
            | Decision::Bootstrap(r)
            | Decision::Promote(r)
            | Decision::FinishPromotion(r)
            | Decision::Reclaim(r)
            | Decision::StartPrimary(r)
            | Decision::Resign(r)
            | Decision::Fence(r) => r,
            Decision::StartReplica { reason, .. }
            | Decision::Repoint { reason, .. }
            | Decision::RequireReplicas { reason, .. } => reason,
        }
    }
}

/// Decides the next action from one tick's observations. See the module doc for the rules.
pub fn decide(o: &Observed) -> Decision {
    if let Some(action) = &o.busy {
        return Decision::Wait(format!("{action} in progress"));
    }
    let Some(state) = &o.state else {
        return uninitialized(o);
    };
    match &o.leader {
        Leader::MyOldLease => Decision::Wait(
            "the leader key still carries my previous run's lease; waiting for it to expire".into(),
        ),
        Leader::Me => leading(o, state),
        Leader::Other(leader) => following(o, state, leader),
        Leader::Nobody => leaderless(o, state),
    }
}

fn uninitialized(o: &Observed) -> Decision {
    match &o.leader {
        Leader::Nobody => bootstrap_or_wait(o),
        Leader::Me => Decision::Resign(
            "I hold the leader key but the group has no state document (deleted from etcd): releasing the key".into(),
        ),
        Leader::MyOldLease => Decision::Wait(
            "my previous run's lease still holds the leader key; waiting for it to expire".into(),
        ),
        Leader::Other(leader) => Decision::Wait(format!("{leader} is bootstrapping the group")),
    }
}

/// With no state document and nobody leading: bootstrap only when provably no member
/// holds data. A missing document with data around means etcd lost the group's state,
/// not a new group: a fresh primary would be replicated over that data.
fn bootstrap_or_wait(o: &Observed) -> Decision {
    if !matches!(o.local, Local::Empty) {
        return Decision::Wait(
            "no group state in etcd, but my data directory holds data: refusing to bootstrap over it".into(),
        );
    }
    let with_data: Vec<&str> = o
        .members
        .values()
        .filter(|m| m.has_data)
        .map(|m| m.name.as_str())
        .collect();
    if !with_data.is_empty() {
        return Decision::Wait(format!(
            "no group state in etcd, but {} hold{} data: refusing to bootstrap over it",
            with_data.join(", "),
            if with_data.len() == 1 { "s" } else { "" }
        ));
    }
    if o.members.len() < o.expected_members {
        return Decision::Wait(format!(
            "group not initialized; {} of {} members registered: waiting for all before bootstrapping, as one not seen yet may hold data",
            o.members.len(),
            o.expected_members
        ));
    }
    Decision::Bootstrap(
        "group not initialized, nobody leads and no member holds data: bootstrapping".into(),
    )
}

/// The `min-replicas-to-write` a primary runs with: 1 while another member's server
/// runs, else 0 (a group whose other members are down still takes writes; `WAIT 1`
/// then tells the writer they have no copy).
pub fn required_replicas(o: &Observed) -> u32 {
    u32::from(o.members.values().any(|m| m.name != o.me && m.running))
}

/// Why another member may hold a write a `WAIT 1` confirmed that this member's disk
/// lacks, when its redis-server was killed; `None` when provably none can: every expected
/// member registered and no other reports data. A member's "not running" is no proof
/// that its server is down (a server too busy to answer `INFO` in time is reported so),
/// and a stopped one with data starts again as a replica by itself.
fn others_that_may_know_more(o: &Observed) -> Option<String> {
    if o.members.len() < o.expected_members {
        return Some(format!(
            "only {} of {} members registered and one not seen may hold confirmed writes my disk lacks",
            o.members.len(),
            o.expected_members
        ));
    }
    let with_data: Vec<&str> = o
        .members
        .values()
        .filter(|m| m.name != o.me && m.has_data)
        .map(|m| m.name.as_str())
        .collect();
    (!with_data.is_empty()).then(|| {
        format!(
            "{} hold{} data that may include confirmed writes my disk lacks",
            with_data.join(", "),
            if with_data.len() == 1 { "s" } else { "" }
        )
    })
}

/// Live replicas other than me, by name.
fn other_live_replicas(o: &Observed) -> Vec<&MemberStatus> {
    o.members
        .values()
        .filter(|m| m.name != o.me && m.running && m.role == Role::Replica)
        .collect()
}

fn leading(o: &Observed, state: &GroupState) -> Decision {
    let g = state.generation;
    if state.primary != o.me {
        return Decision::Resign(format!(
            "I hold the leader key but generation {g} names {} as primary; releasing it",
            state.primary
        ));
    }
    match &o.local {
        Local::Primary { min_replicas } => {
            let want = required_replicas(o);
            if *min_replicas != want {
                let reason = if want == 1 {
                    format!("primary of generation {g}; another member's server runs: writes require a replica")
                } else {
                    format!("primary of generation {g}; no other member's server runs: writes no longer wait for a replica")
                };
                return Decision::RequireReplicas {
                    count: want,
                    reason,
                };
            }
            let online = other_live_replicas(o)
                .iter()
                .filter(|m| m.upstream.as_deref() == Some(o.me.as_str()) && m.link_up)
                .count();
            Decision::Nothing(format!(
                "primary of generation {g}; {online} replica{} linked",
                if online == 1 { "" } else { "s" }
            ))
        }
        Local::Replica { .. } => Decision::FinishPromotion(format!(
            "I lead generation {g} but still run as a replica: finishing the promotion"
        )),
        Local::Starting => Decision::Wait(format!(
            "primary of generation {g}: redis-server is loading its data"
        )),
        Local::Stopped { crashed: true } => match others_that_may_know_more(o) {
            Some(why) => Decision::Resign(format!(
                "redis-server exited unexpectedly on the primary of generation {g}: handing leadership over, as {why}"
            )),
            None => Decision::StartPrimary(format!(
                "redis-server exited unexpectedly on the primary of generation {g}; every member registered and none other holds data: restarting it here"
            )),
        },
        Local::Stopped { crashed: false } => Decision::StartPrimary(format!(
            "I lead generation {g}: starting redis-server as primary"
        )),
        Local::Empty => {
            let with_data = o.members.values().any(|m| m.name != o.me && m.has_data);
            if g == 1 && !with_data {
                Decision::StartPrimary(format!(
                    "I lead the new group (generation {g}): starting redis-server as primary"
                ))
            } else {
                Decision::Resign(format!(
                    "I lead generation {g} but my data is gone: releasing the key"
                ))
            }
        }
    }
}

fn following(o: &Observed, state: &GroupState, leader: &str) -> Decision {
    let g = state.generation;
    if matches!(o.local, Local::Primary { .. }) {
        return Decision::Fence(format!(
            "{leader} leads generation {g} but my redis-server is a writable primary: killing it now"
        ));
    }
    if state.primary != leader {
        return Decision::Wait(format!(
            "{leader} holds the leader key but generation {g} names {}: waiting for them to agree",
            state.primary
        ));
    }
    match &o.local {
        Local::Empty | Local::Stopped { .. } => Decision::StartReplica {
            upstream: Some(leader.to_string()),
            reason: format!("starting as a replica of {leader} (generation {g})"),
        },
        Local::Starting => Decision::Wait(format!(
            "redis-server is loading its data; {leader} leads generation {g}"
        )),
        Local::Replica { upstream, .. } if upstream.as_deref() != Some(leader) => {
            Decision::Repoint {
                upstream: Some(leader.to_string()),
                reason: format!(
                    "{leader} leads generation {g} but I follow {}: re-pointing",
                    upstream.as_deref().unwrap_or("no one")
                ),
            }
        }
        Local::Replica { link_up, .. } => Decision::Nothing(format!(
            "replica of {leader} (generation {g}), {}",
            if *link_up { "linked" } else { "connecting" }
        )),
        Local::Primary { .. } => unreachable!("handled above"),
    }
}

fn leaderless(o: &Observed, state: &GroupState) -> Decision {
    let g = state.generation;
    let primary = &state.primary;
    if primary == &o.me {
        let replicas = other_live_replicas(o);
        if let Some(replica) = replicas.first() {
            if !matches!(o.local, Local::Primary { .. }) {
                return Decision::Wait(format!(
                    "nobody leads generation {g}; replica {} is alive and takes over, so I stay out of its way",
                    replica.name
                ));
            }
        }
        return match &o.local {
            Local::Empty => Decision::Wait(format!(
                "I was the primary of generation {g} but my data is gone and no replica is alive"
            )),
            Local::Starting => Decision::Wait(format!(
                "nobody leads generation {g}; my redis-server is loading its data"
            )),
            // Killed (crash, fence): with `everysec` my disk may lack a write a replica
            // confirmed, and that replica would then be resynchronized from me. Only
            // once every member is seen and none other holds data is my data the best
            // there is: a member with data that is not (yet) a live replica starts as
            // a detached one and takes over.
            Local::Stopped { crashed: true } => match others_that_may_know_more(o) {
                Some(why) => Decision::Wait(format!(
                    "nobody leads generation {g}; my redis-server was killed and {why}: waiting for it to take over"
                )),
                None => Decision::Reclaim(format!(
                    "nobody leads generation {g}; my redis-server was killed, every member registered and none other holds data: taking the key back"
                )),
            },
            _ => Decision::Reclaim(format!(
                "nobody leads and I am the primary of generation {g}: taking the key back"
            )),
        };
    }
    match &o.local {
        Local::Primary { .. } => Decision::Fence(format!(
            "nobody leads generation {g} and {primary} is its primary, yet my redis-server is writable: killing it"
        )),
        Local::Empty => Decision::Wait(format!(
            "nobody leads generation {g} and I have no data: waiting for a primary"
        )),
        Local::Starting => Decision::Wait(format!(
            "nobody leads generation {g}; my redis-server is loading its data"
        )),
        Local::Stopped { .. } => Decision::StartReplica {
            upstream: None,
            reason: format!(
                "nobody leads generation {g}: starting my data as a detached replica, to compare offsets"
            ),
        },
        Local::Replica {
            upstream, offset, ..
        } => candidacy(o, g, upstream.as_deref(), *offset),
    }
}

/// A live replica's part in choosing a new primary.
fn candidacy(o: &Observed, g: u64, upstream: Option<&str>, my_offset: u64) -> Decision {
    let others = other_live_replicas(o);
    if others.is_empty() {
        return Decision::Promote(format!(
            "the primary of generation {g} lost the leader key and I am the only live replica: promoting"
        ));
    }
    if let Some(old) = upstream {
        return Decision::Repoint {
            upstream: None,
            reason: format!(
                "the primary of generation {g} lost the leader key: detaching from {old} so my offset is final before choosing whom to promote"
            ),
        };
    }
    let attached: Vec<&str> = others
        .iter()
        .filter(|m| m.upstream.is_some())
        .map(|m| m.name.as_str())
        .collect();
    if !attached.is_empty() {
        return Decision::Wait(format!(
            "nobody leads generation {g}; waiting for {} to detach before comparing offsets",
            attached.join(", ")
        ));
    }
    // Highest offset wins; on a tie the lowest name, so every member picks the same one.
    let best = others
        .iter()
        .map(|m| (m.offset.unwrap_or(0), m.name.as_str()))
        .chain(std::iter::once((my_offset, o.me.as_str())))
        .max_by(|a, b| a.0.cmp(&b.0).then_with(|| b.1.cmp(a.1)))
        .expect("at least me");
    if best.1 == o.me {
        Decision::Promote(format!(
            "the primary of generation {g} lost the leader key; my offset {my_offset} is the highest of the live replicas: promoting"
        ))
    } else {
        Decision::Wait(format!(
            "nobody leads generation {g}; {} has the highest offset ({}, mine {my_offset}) and takes over",
            best.1, best.0
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(name: &str, role: Role, upstream: Option<&str>, offset: u64) -> MemberStatus {
        MemberStatus {
            name: name.into(),
            addr: "127.1.2.3:16379".into(),
            health_addr: "127.1.2.3:18208".into(),
            role,
            running: role != Role::Stopped,
            upstream: upstream.map(str::to_string),
            link_up: upstream.is_some(),
            offset: Some(offset),
            lag_bytes: None,
            generation: Some(3),
            decision: String::new(),
            has_data: true,
        }
    }

    fn observed(me: &str, leader: Leader, local: Local, members: Vec<MemberStatus>) -> Observed {
        Observed {
            me: me.into(),
            state: Some(GroupState {
                generation: 3,
                primary: "r0".into(),
            }),
            leader,
            members: members.into_iter().map(|m| (m.name.clone(), m)).collect(),
            local,
            busy: None,
            expected_members: 2,
        }
    }

    fn replica(upstream: Option<&str>, offset: u64) -> Local {
        Local::Replica {
            upstream: upstream.map(str::to_string),
            link_up: upstream.is_some(),
            offset,
        }
    }

    #[test]
    fn an_action_in_progress_is_waited_for() {
        let mut o = observed("r1", Leader::Nobody, Local::Starting, vec![]);
        o.busy = Some("promotion".into());
        assert_eq!(decide(&o), Decision::Wait("promotion in progress".into()));
    }

    #[test]
    fn a_new_group_bootstraps_once_every_member_registered_without_data() {
        let mut fresh = member("r0", Role::Stopped, None, 0);
        fresh.has_data = false;
        let mut o = observed("r0", Leader::Nobody, Local::Empty, vec![fresh.clone()]);
        o.state = None;
        assert!(matches!(decide(&o), Decision::Wait(r) if r.contains("1 of 2")));
        let mut other = fresh.clone();
        other.name = "r1".into();
        o.members.insert("r1".into(), other);
        assert!(matches!(decide(&o), Decision::Bootstrap(_)));
    }

    #[test]
    fn never_bootstraps_over_data() {
        let mut empty = member("r0", Role::Stopped, None, 0);
        empty.has_data = false;
        let with_data = member("r1", Role::Stopped, None, 0);
        let mut o = observed("r0", Leader::Nobody, Local::Empty, vec![empty, with_data]);
        o.state = None;
        assert!(matches!(decide(&o), Decision::Wait(r) if r.contains("r1 holds data")));
        o.local = Local::Stopped { crashed: false };
        assert!(matches!(decide(&o), Decision::Wait(r) if r.contains("my data directory")));
    }

    #[test]
    fn a_primary_requires_a_replica_exactly_while_another_members_server_runs() {
        let me = member("r0", Role::Primary, None, 10);
        let other = member("r1", Role::Replica, Some("r0"), 10);
        let o = observed(
            "r0",
            Leader::Me,
            Local::Primary { min_replicas: 0 },
            vec![me.clone(), other],
        );
        assert!(matches!(
            decide(&o),
            Decision::RequireReplicas { count: 1, .. }
        ));
        let o = observed(
            "r0",
            Leader::Me,
            Local::Primary { min_replicas: 1 },
            vec![me.clone()],
        );
        assert!(matches!(
            decide(&o),
            Decision::RequireReplicas { count: 0, .. }
        ));
        // Registered but its server not running (restarting): writes do not wait for it.
        let down = member("r1", Role::Stopped, None, 0);
        let o = observed(
            "r0",
            Leader::Me,
            Local::Primary { min_replicas: 1 },
            vec![me, down],
        );
        assert!(matches!(
            decide(&o),
            Decision::RequireReplicas { count: 0, .. }
        ));
    }

    #[test]
    fn a_crashed_primary_hands_over_to_a_live_replica_instead_of_restarting() {
        let me = member("r0", Role::Stopped, None, 10);
        let other = member("r1", Role::Replica, Some("r0"), 10);
        let o = observed(
            "r0",
            Leader::Me,
            Local::Stopped { crashed: true },
            vec![me.clone(), other],
        );
        assert!(matches!(decide(&o), Decision::Resign(r) if r.contains("r1")));
        // r1 not registered (yet): it may hold what my disk lacks.
        let o = observed(
            "r0",
            Leader::Me,
            Local::Stopped { crashed: true },
            vec![me.clone()],
        );
        assert!(matches!(decide(&o), Decision::Resign(r) if r.contains("1 of 2")));
        // r1 reported not running (a server too busy to answer looks the same) with
        // data: handed over, not restarted over it.
        let mut busy = member("r1", Role::Stopped, None, 10);
        let o = observed(
            "r0",
            Leader::Me,
            Local::Stopped { crashed: true },
            vec![me.clone(), busy.clone()],
        );
        assert!(matches!(decide(&o), Decision::Resign(r) if r.contains("r1 holds data")));
        busy.has_data = false;
        let o = observed(
            "r0",
            Leader::Me,
            Local::Stopped { crashed: true },
            vec![me, busy],
        );
        assert!(matches!(decide(&o), Decision::StartPrimary(_)));
    }

    #[test]
    fn a_leader_without_data_resigns_unless_the_group_is_new() {
        let o = observed("r0", Leader::Me, Local::Empty, vec![]);
        assert!(matches!(decide(&o), Decision::Resign(_)));
        let mut o = observed("r0", Leader::Me, Local::Empty, vec![]);
        o.state.as_mut().unwrap().generation = 1;
        assert!(matches!(decide(&o), Decision::StartPrimary(_)));
    }

    #[test]
    fn followers_fence_a_writable_server_and_follow_the_leader() {
        let o = observed(
            "r1",
            Leader::Other("r0".into()),
            Local::Primary { min_replicas: 1 },
            vec![],
        );
        assert!(matches!(decide(&o), Decision::Fence(_)));
        let o = observed(
            "r1",
            Leader::Other("r0".into()),
            Local::Stopped { crashed: true },
            vec![],
        );
        assert_eq!(
            decide(&o),
            Decision::StartReplica {
                upstream: Some("r0".into()),
                reason: "starting as a replica of r0 (generation 3)".into()
            }
        );
        let o = observed("r1", Leader::Other("r0".into()), replica(None, 5), vec![]);
        assert!(matches!(decide(&o), Decision::Repoint { upstream: Some(u), .. } if u == "r0"));
        let o = observed(
            "r1",
            Leader::Other("r0".into()),
            replica(Some("r0"), 5),
            vec![],
        );
        assert!(matches!(decide(&o), Decision::Nothing(_)));
    }

    #[test]
    fn a_sole_live_replica_promotes_at_once() {
        let me = member("r1", Role::Replica, Some("r0"), 7);
        let o = observed("r1", Leader::Nobody, replica(Some("r0"), 7), vec![me]);
        assert!(matches!(decide(&o), Decision::Promote(_)));
    }

    #[test]
    fn several_replicas_detach_first_then_the_highest_offset_promotes() {
        let r1 = member("r1", Role::Replica, Some("r0"), 7);
        let r2 = member("r2", Role::Replica, Some("r0"), 9);
        let o = observed(
            "r1",
            Leader::Nobody,
            replica(Some("r0"), 7),
            vec![r1.clone(), r2.clone()],
        );
        assert!(matches!(
            decide(&o),
            Decision::Repoint { upstream: None, .. }
        ));
        // Detached, but r2 still attached: offsets are not final.
        let o = observed("r1", Leader::Nobody, replica(None, 7), vec![r1.clone(), r2]);
        assert!(matches!(decide(&o), Decision::Wait(r) if r.contains("r2 to detach")));
        let r2 = member("r2", Role::Replica, None, 9);
        let o = observed("r1", Leader::Nobody, replica(None, 7), vec![r1.clone(), r2]);
        assert!(matches!(decide(&o), Decision::Wait(r) if r.contains("r2 has the highest")));
        let r2 = member("r2", Role::Replica, None, 7);
        let o = observed("r1", Leader::Nobody, replica(None, 7), vec![r1, r2.clone()]);
        assert!(
            matches!(decide(&o), Decision::Promote(_)),
            "tie: lowest name"
        );
        let r1 = member("r1", Role::Replica, None, 7);
        let o = observed("r2", Leader::Nobody, replica(None, 7), vec![r1, r2]);
        assert!(
            matches!(decide(&o), Decision::Wait(_)),
            "tie: r1 wins, not r2"
        );
    }

    #[test]
    fn the_recorded_primary_reclaims_only_when_no_replica_is_alive() {
        let r1 = member("r1", Role::Replica, None, 7);
        let o = observed(
            "r0",
            Leader::Nobody,
            Local::Stopped { crashed: false },
            vec![r1],
        );
        assert!(matches!(decide(&o), Decision::Wait(r) if r.contains("r1 is alive")));
        let o = observed(
            "r0",
            Leader::Nobody,
            Local::Stopped { crashed: false },
            vec![],
        );
        assert!(matches!(decide(&o), Decision::Reclaim(_)));
        // Killed, and r1 not seen yet: r1 may hold what my disk lacks.
        let me = member("r0", Role::Stopped, None, 0);
        let o = observed(
            "r0",
            Leader::Nobody,
            Local::Stopped { crashed: true },
            vec![me.clone()],
        );
        assert!(matches!(decide(&o), Decision::Wait(r) if r.contains("1 of 2")));
        // r1 registered as not running, with data: it may be a server too busy to
        // answer, holding confirmed writes my disk lacks (or it starts as a detached
        // replica by itself): no reclaim over it.
        let mut down = member("r1", Role::Stopped, None, 0);
        let o = observed(
            "r0",
            Leader::Nobody,
            Local::Stopped { crashed: true },
            vec![me.clone(), down.clone()],
        );
        assert!(matches!(decide(&o), Decision::Wait(r) if r.contains("r1 holds data")));
        // r1 without data: nobody has more than my disk.
        down.has_data = false;
        let o = observed(
            "r0",
            Leader::Nobody,
            Local::Stopped { crashed: true },
            vec![me, down],
        );
        assert!(matches!(decide(&o), Decision::Reclaim(_)));
        let o = observed("r0", Leader::Nobody, Local::Empty, vec![]);
        assert!(matches!(decide(&o), Decision::Wait(_)));
    }

    #[test]
    fn a_writable_server_nobody_elected_is_fenced_and_stopped_data_starts_detached() {
        let o = observed(
            "r1",
            Leader::Nobody,
            Local::Primary { min_replicas: 1 },
            vec![],
        );
        assert!(matches!(decide(&o), Decision::Fence(_)));
        let o = observed(
            "r1",
            Leader::Nobody,
            Local::Stopped { crashed: false },
            vec![],
        );
        assert!(matches!(
            decide(&o),
            Decision::StartReplica { upstream: None, .. }
        ));
    }

    #[test]
    fn my_old_lease_is_waited_out() {
        let o = observed(
            "r0",
            Leader::MyOldLease,
            Local::Stopped { crashed: false },
            vec![],
        );
        assert!(matches!(decide(&o), Decision::Wait(_)));
    }
}
