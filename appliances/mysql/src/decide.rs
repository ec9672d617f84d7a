//! The supervisor's decision: a pure function from what one tick observed to the one
//! thing to do next, with the sentence that explains it. No I/O, no clock.
//!
//! The rules, in order (the first that applies wins):
//! 1. An action in progress (install, seed, start, promotion, choosing a sync) is
//!    waited for.
//! 2. No state document: if this member or any registered member holds data, wait and
//!    say so (never install over data; only an operator's `paas mysql recover` restarts
//!    such a cluster); otherwise, once every expected member registered, whoever takes
//!    the free leader key bootstraps.
//! 3. The leader key carries this member's previous lease: wait for it to expire.
//! 4. This member leads: keep mariadbd a writable primary; then, in this order: with a
//!    recorded sync, lock out every other member (every replica acknowledges, so only
//!    the sync may be connected); create missing replication accounts; unlock the
//!    sync (or, without a sync, everyone); make sure the sync acknowledges. A sync that
//!    is not connected is dropped from the document (the primary alone is promotable
//!    meanwhile, and the others may connect and acknowledge); without a sync, a
//!    connected replica is confirmed as the new one. A primary whose
//!    `Rpl_semi_sync_master_status` is OFF says ALARM in every sentence.
//! 5. Another member leads: a local writable server is fenced at once; otherwise
//!    replicate, acknowledgements always on: the sync from the primary, asyncs from the
//!    sync while it runs (so an async never holds a transaction the sync lacks). Data
//!    of a deposed primary rejoins with its unacknowledged tail cut; a replica that
//!    cannot follow (diverged or purged history) is seeded again from the primary —
//!    except the sync, which holds every acknowledged transaction.
//! 6. Nobody leads: the sync promotes (after applying its relay log); the recorded
//!    primary takes the key back when the sync is not there; everyone else waits.

use std::collections::BTreeMap;

use crate::cluster::{ClusterState, MemberStatus, Role};
use crate::gtid::GtidPos;

/// Who holds the cluster's leader key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Leader {
    /// The key is absent.
    Nobody,
    /// This member holds it with its current lease.
    Me,
    /// This member's name is in the key, bound to a previous run's lease.
    MyOldLease,
    /// Another member holds it.
    Other(String),
}

/// The local mariadbd as the supervisor sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Local {
    /// No complete datadir.
    Empty,
    /// Data present, mariadbd not running.
    Stopped {
        /// The member the data last followed; `None` if it was a primary's.
        upstream: Option<String>,
        /// Whether mariadbd exited without the supervisor asking it to.
        crashed: bool,
    },
    /// Started, not answering yet.
    Starting,
    /// Writable (`read_only` off).
    Primary {
        /// Members with a replication connection to it.
        connected: Vec<String>,
        /// `Rpl_semi_sync_master_clients`.
        acking: u32,
        /// `Rpl_semi_sync_master_status`.
        semi_sync_on: bool,
        /// Replication accounts: (member, locked).
        accounts: Vec<(String, bool)>,
    },
    /// `read_only`, replicating (or configured to).
    Replica {
        /// The member it replicates from (`None`: not configured).
        upstream: Option<String>,
        /// Whether its IO thread is connected.
        streaming: bool,
        /// Whether it failed to follow its running upstream for longer than tolerated
        /// (replication error, diverged or purged history).
        stalled: bool,
        /// Replication accounts here, (member, locked): a replica serves the asyncs
        /// that cascade from it.
        accounts: Vec<(String, bool)>,
    },
}

/// Everything one tick observed: the input of [`decide`].
#[derive(Debug, Clone)]
pub struct Observed {
    /// This member's name.
    pub me: String,
    /// The state document, `None` before bootstrap.
    pub state: Option<ClusterState>,
    /// Who holds the leader key.
    pub leader: Leader,
    /// Live registrations (this member's included), by name.
    pub members: BTreeMap<String, MemberStatus>,
    /// The local server.
    pub local: Local,
    /// The long action still running, if any.
    pub busy: Option<String>,
    /// How many members the cluster has (0: unknown); a bootstrap waits for all.
    pub expected_members: usize,
}

/// What the supervisor does next; every variant carries the sentence that says why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// All is as it should be.
    Nothing(String),
    /// Nothing can safely be done now; the reason says what is awaited.
    Wait(String),
    /// Take the free leader key, install, start as primary, write generation 1.
    Bootstrap(String),
    /// As the sync: take the leader key (generation + 1, no sync), apply the relay
    /// log, become writable.
    Promote {
        /// The sync the server may be acknowledged by (all others are locked out
        /// before writes open); `None`: anyone.
        sync: Option<String>,
        /// Why.
        reason: String,
    },
    /// Holding the key as a replica still: finish an interrupted promotion.
    FinishPromotion {
        /// The sync the server may be acknowledged by (all others are locked out
        /// before writes open); `None`: anyone.
        sync: Option<String>,
        /// Why.
        reason: String,
    },
    /// As the recorded primary: take the key back (generation + 1) and run as primary.
    Reclaim {
        /// The sync the server may be acknowledged by (all others are locked out
        /// before writes open); `None`: anyone.
        sync: Option<String>,
        /// Why.
        reason: String,
    },
    /// Holding the key with stopped primary data: start it as primary.
    StartPrimary {
        /// The sync the server may be acknowledged by (all others are locked out
        /// before writes open); `None`: anyone.
        sync: Option<String>,
        /// Why.
        reason: String,
    },
    /// Holding the key but unable to serve: release it so the sync can take over.
    Resign(String),
    /// Kill the local writable server now: someone else leads.
    Fence(String),
    /// Seed the datadir from `primary` (mariadb-backup) and replicate from `upstream`.
    Follow {
        /// The member whose copy is taken.
        primary: String,
        /// The member to replicate from afterwards.
        upstream: String,
        /// Why.
        reason: String,
    },
    /// Start the stopped data as a replica of `upstream` (a deposed primary's data
    /// with its unacknowledged tail cut).
    StartReplica {
        /// The member to replicate from.
        upstream: String,
        /// Why.
        reason: String,
    },
    /// Point the running replica at `upstream`.
    Repoint {
        /// The member to replicate from.
        upstream: String,
        /// Why.
        reason: String,
    },
    /// As primary: the recorded sync is not connected; record no sync, so that other
    /// replicas may connect (and acknowledge) and one of them can be confirmed.
    DropSync(String),
    /// As primary: lock out `members` (account locked here, connections ended).
    Lock {
        /// The members.
        members: Vec<String>,
        /// Why.
        reason: String,
    },
    /// Let `member` replicate from this server again.
    Unlock {
        /// The member.
        member: String,
        /// Why.
        reason: String,
    },
    /// As primary: create replication accounts for `members`.
    CreateAccounts {
        /// The members.
        members: Vec<String>,
        /// Why.
        reason: String,
    },
    /// Make `candidate` the sync: lock out everyone else, read the binlog position,
    /// wait until the candidate received it, record it.
    ChooseSync {
        /// The connected replica chosen.
        candidate: String,
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
            | Decision::Resign(r)
            | Decision::DropSync(r)
            | Decision::Fence(r) => r,
            Decision::Promote { reason, .. }
            | Decision::FinishPromotion { reason, .. }
            | Decision::Reclaim { reason, .. }
            | Decision::StartPrimary { reason, .. }
            | Decision::Follow { reason, .. }
            | Decision::StartReplica { reason, .. }
            | Decision::Repoint { reason, .. }
            | Decision::Lock { reason, .. }
            | Decision::Unlock { reason, .. }
            | Decision::CreateAccounts { reason, .. }
            | Decision::ChooseSync { reason, .. } => reason,
        }
    }
}

/// Decides the next action from one tick's observations (see the module doc).
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
            "I hold the leader key but the cluster was never initialized: my bootstrap failed, releasing the key".into(),
        ),
        Leader::MyOldLease => Decision::Wait(
            "my previous run's bootstrap lease still holds the leader key; waiting for it to expire".into(),
        ),
        Leader::Other(leader) => Decision::Wait(format!("{leader} is bootstrapping the cluster")),
    }
}

/// Bootstrap only when provably no member holds data: a missing document with data
/// around means etcd lost the cluster's state, not a new cluster.
fn bootstrap_or_wait(o: &Observed) -> Decision {
    const RECOVER: &str =
        "`paas mysql recover` restarts the cluster from the member with the most transactions";
    if !matches!(o.local, Local::Empty) {
        return Decision::Wait(format!(
            "no cluster state in etcd, but my datadir holds a database: refusing to bootstrap over it; {RECOVER}"
        ));
    }
    let with_data: Vec<&str> = o
        .members
        .values()
        .filter(|m| m.has_data)
        .map(|m| m.name.as_str())
        .collect();
    if !with_data.is_empty() {
        return Decision::Wait(format!(
            "no cluster state in etcd, but {} hold{} data: refusing to bootstrap over it; {RECOVER}",
            with_data.join(", "),
            if with_data.len() == 1 { "s" } else { "" }
        ));
    }
    if o.members.len() < o.expected_members {
        return Decision::Wait(format!(
            "cluster not initialized; {} of {} members registered: waiting for all before bootstrapping, as one not seen yet may hold data",
            o.members.len(),
            o.expected_members
        ));
    }
    Decision::Bootstrap(
        "cluster not initialized, nobody leads and no member holds data: bootstrapping".into(),
    )
}

fn leading(o: &Observed, state: &ClusterState) -> Decision {
    let g = state.generation;
    if state.primary != o.me {
        return Decision::Resign(format!(
            "I hold the leader key but generation {g} names {} as primary; releasing it",
            state.primary
        ));
    }
    match &o.local {
        Local::Primary {
            connected,
            acking,
            semi_sync_on,
            accounts,
        } => {
            let decision = primary_upkeep(o, state, connected, *acking, accounts);
            if *semi_sync_on {
                decision
            } else {
                alarm(decision)
            }
        }
        Local::Replica { .. } => Decision::FinishPromotion {
            sync: state.sync.clone(),
            reason: format!("I lead generation {g} but still run as a replica: finishing the promotion"),
        },
        Local::Starting => Decision::Wait(format!("primary of generation {g}: mariadbd is starting")),
        Local::Stopped { crashed: true, .. } => match &state.sync {
            Some(sync) if replica_alive(o, sync) => Decision::Resign(format!(
                "mariadbd exited unexpectedly on the primary of generation {g}: handing leadership to the sync {sync}"
            )),
            _ => Decision::StartPrimary {
                sync: state.sync.clone(),
                reason: format!("mariadbd exited unexpectedly on the primary of generation {g} and no sync can take over: restarting it here"),
            },
        },
        Local::Stopped { crashed: false, upstream: None } => Decision::StartPrimary {
            sync: state.sync.clone(),
            reason: format!("I lead generation {g}: starting mariadbd as primary"),
        },
        Local::Stopped { crashed: false, upstream: Some(upstream) } => Decision::Resign(format!(
            "I lead generation {g} but my stopped data was a replica of {upstream}, not a primary: releasing the key"
        )),
        Local::Empty => Decision::Resign(format!("I lead generation {g} but have no data: releasing the key")),
    }
}

fn alarm(decision: Decision) -> Decision {
    let prefix = "ALARM: Rpl_semi_sync_master_status is OFF, commits may be acknowledged without a replica; ";
    match decision {
        Decision::Nothing(r) => Decision::Nothing(format!("{prefix}{r}")),
        Decision::Wait(r) => Decision::Wait(format!("{prefix}{r}")),
        Decision::Lock { members, reason } => Decision::Lock {
            members,
            reason: format!("{prefix}{reason}"),
        },
        Decision::Unlock { member, reason } => Decision::Unlock {
            member,
            reason: format!("{prefix}{reason}"),
        },
        Decision::CreateAccounts { members, reason } => Decision::CreateAccounts {
            members,
            reason: format!("{prefix}{reason}"),
        },
        Decision::ChooseSync { candidate, reason } => Decision::ChooseSync {
            candidate,
            reason: format!("{prefix}{reason}"),
        },
        Decision::DropSync(r) => Decision::DropSync(format!("{prefix}{r}")),
        other => other,
    }
}

/// The primary's rules: who may acknowledge, accounts, and its sync.
fn primary_upkeep(
    o: &Observed,
    state: &ClusterState,
    connected: &[String],
    acking: u32,
    accounts: &[(String, bool)],
) -> Decision {
    let g = state.generation;
    let sync = state.sync.as_deref();
    let locked = |m: &str| accounts.iter().any(|(a, l)| a == m && *l);
    let is_connected = |m: &str| connected.iter().any(|c| c == m);
    let mut names: Vec<&str> = accounts.iter().map(|(a, _)| a.as_str()).collect();
    names.extend(connected.iter().map(String::as_str));
    names.sort();
    names.dedup();
    names.retain(|m| *m != o.me);
    if let Some(sync) = sync {
        // Every replica acknowledges: with a sync, it must be the only one connected.
        let lock: Vec<String> = names
            .iter()
            .filter(|m| **m != sync && (!locked(m) || is_connected(m)))
            .map(|m| m.to_string())
            .collect();
        if !lock.is_empty() {
            return Decision::Lock {
                reason: format!(
                    "primary of generation {g}: only the sync {sync} may acknowledge: locking {} out",
                    lock.join(", ")
                ),
                members: lock,
            };
        }
    }
    let missing: Vec<String> = o
        .members
        .keys()
        .filter(|m| **m != o.me && !accounts.iter().any(|(a, _)| a == *m))
        .cloned()
        .collect();
    if !missing.is_empty() {
        return Decision::CreateAccounts {
            reason: format!(
                "primary of generation {g}: creating replication accounts for {}",
                missing.join(", ")
            ),
            members: missing,
        };
    }
    if let Some(m) = names
        .iter()
        .find(|m| locked(m) && sync.is_none_or(|s| s == **m))
    {
        return Decision::Unlock {
            member: m.to_string(),
            reason: match sync {
                Some(_) => {
                    format!("primary of generation {g}: letting the sync {m} replicate again")
                }
                None => {
                    format!("primary of generation {g} without a sync: letting {m} replicate again")
                }
            },
        };
    }
    match sync {
        Some(sync) if is_connected(sync) && acking > 0 => {
            Decision::Nothing(format!("primary of generation {g}; sync {sync} acknowledges"))
        }
        Some(sync) if is_connected(sync) => Decision::Wait(format!(
            "primary of generation {g}; sync {sync} is connected but does not acknowledge yet; commits wait"
        )),
        Some(sync) => Decision::DropSync(format!(
            "primary of generation {g}: sync {sync} is not connected; dropping it so another replica can acknowledge and become the sync (meanwhile only I can be promoted)"
        )),
        None => {
            let candidate = connected
                .iter()
                .filter_map(|m| o.members.get(m))
                .filter(|m| m.running && m.streaming)
                .max_by(|a, b| {
                    let seq = |m: &MemberStatus| {
                        m.received
                            .as_ref()
                            .or(m.gtid.as_ref())
                            .map_or(0, |p| GtidPos::default().behind(p))
                    };
                    seq(a).cmp(&seq(b)).then_with(|| b.name.cmp(&a.name))
                });
            match candidate {
                Some(c) => Decision::ChooseSync {
                    candidate: c.name.clone(),
                    reason: format!(
                        "primary of generation {g}: no sync; making connected replica {} the sync",
                        c.name
                    ),
                },
                None => Decision::Wait(format!(
                    "primary of generation {g}: no sync and no replica connected; commits wait for a replica's acknowledgement"
                )),
            }
        }
    }
}

fn following(o: &Observed, state: &ClusterState, leader: &str) -> Decision {
    let g = state.generation;
    if matches!(o.local, Local::Primary { .. }) {
        return Decision::Fence(format!(
            "{leader} leads generation {g} but my mariadbd is writable: stopping it now"
        ));
    }
    if state.primary != leader {
        return Decision::Wait(format!(
            "{leader} holds the leader key but generation {g} names {}: waiting for them to agree",
            state.primary
        ));
    }
    let want = upstream_for(o, state, leader);
    let promoted = o
        .members
        .get(leader)
        .is_some_and(|m| m.running && m.role == Role::Primary);
    let i_am_sync = state.sync.as_deref() == Some(o.me.as_str());
    let from = if want == leader {
        format!("primary {leader}")
    } else {
        format!("sync {want} of primary {leader}")
    };
    let not_yet = |reason: String| {
        Decision::Wait(format!(
            "{reason}; waiting for {leader} to finish its promotion first"
        ))
    };
    match &o.local {
        Local::Empty => {
            let reason = format!("no local data: seeding from primary {leader} to replicate from {from} (generation {g})");
            if promoted {
                Decision::Follow { primary: leader.to_string(), upstream: want, reason }
            } else {
                not_yet(reason)
            }
        }
        Local::Stopped { upstream: Some(_), .. } => Decision::StartReplica {
            reason: format!("starting as replica of {from} (generation {g})"),
            upstream: want,
        },
        Local::Stopped { upstream: None, .. } => {
            let reason = format!(
                "my data was a primary's: rejoining as replica of {from} with its unacknowledged transactions cut (generation {g})"
            );
            if promoted {
                Decision::StartReplica { upstream: want, reason }
            } else {
                not_yet(reason)
            }
        }
        Local::Starting => Decision::Wait(format!("mariadbd is starting; {leader} leads generation {g}")),
        Local::Replica { stalled: true, .. } if i_am_sync => Decision::Wait(format!(
            "sync replica of {from} (generation {g}) cannot follow; the sync's data holds every acknowledged transaction, so it is never seeded over"
        )),
        Local::Replica { stalled: true, .. } => {
            let reason = format!("replication from {from} failed; seeding again from primary {leader} (generation {g})");
            if promoted {
                Decision::Follow { primary: leader.to_string(), upstream: want, reason }
            } else {
                not_yet(reason)
            }
        }
        Local::Replica { upstream, .. } if upstream.as_deref() != Some(want.as_str()) => Decision::Repoint {
            reason: format!(
                "I replicate from {} but should from {from} (generation {g}): re-pointing",
                upstream.as_deref().unwrap_or("nobody")
            ),
            upstream: want,
        },
        Local::Replica { accounts, .. }
            if o.members.keys().any(|m| *m != o.me && !accounts.iter().any(|(a, _)| a == m)) =>
        {
            let members: Vec<String> = o
                .members
                .keys()
                .filter(|m| **m != o.me && !accounts.iter().any(|(a, _)| a == *m))
                .cloned()
                .collect();
            Decision::CreateAccounts {
                reason: format!(
                    "replica of {from} (generation {g}): creating replication accounts for {}",
                    members.join(", ")
                ),
                members,
            }
        }
        Local::Replica { accounts, .. } if accounts.iter().any(|(_, locked)| *locked) => {
            let member = accounts.iter().find(|(_, l)| *l).map(|(m, _)| m.clone()).unwrap_or_default();
            Decision::Unlock {
                reason: format!("replica of {from} (generation {g}): letting {member} replicate from me again"),
                member,
            }
        }
        Local::Replica { streaming, .. } => {
            let role = if i_am_sync { "sync" } else { "async" };
            let how = if *streaming { "streaming" } else { "connecting" };
            Decision::Nothing(format!("{role} replica of {from} (generation {g}), {how}"))
        }
        Local::Primary { .. } => unreachable!("handled above"),
    }
}

/// Whom a replica follows: asyncs the sync while it runs as the sync (so an async never
/// holds a transaction the sync lacks), everyone else the primary.
fn upstream_for(o: &Observed, state: &ClusterState, leader: &str) -> String {
    match &state.sync {
        Some(sync)
            if sync != &o.me
                && o.members
                    .get(sync)
                    .is_some_and(|m| m.running && m.role == Role::Sync) =>
        {
            sync.clone()
        }
        _ => leader.to_string(),
    }
}

fn leaderless(o: &Observed, state: &ClusterState) -> Decision {
    let g = state.generation;
    let primary = &state.primary;
    if state.sync.as_deref() == Some(o.me.as_str()) {
        return match &o.local {
            Local::Replica { .. } => Decision::Promote {
                sync: None,
                reason: format!(
                    "primary {primary} lost the leader key; I am the sync of generation {g} and have every acknowledged transaction: promoting"
                ),
            },
            Local::Stopped { .. } => Decision::StartReplica {
                upstream: primary.clone(),
                reason: format!("nobody leads and I am the sync of generation {g}: starting my replica to promote it"),
            },
            Local::Starting => Decision::Wait(format!("nobody leads; I am the sync of generation {g} and mariadbd is starting")),
            Local::Primary { .. } => Decision::Fence(format!(
                "nobody leads generation {g} yet my mariadbd is writable: stopping it"
            )),
            Local::Empty => Decision::Wait(format!(
                "nobody leads; I am the sync of generation {g} but have no data: waiting for primary {primary}"
            )),
        };
    }
    if primary == &o.me {
        if let Some(sync) = &state.sync {
            if replica_alive(o, sync) {
                return Decision::Wait(format!(
                    "nobody leads generation {g}; the sync {sync} is alive and takes over, so I stay out of its way"
                ));
            }
        }
        return match &o.local {
            Local::Empty => Decision::Wait(format!(
                "I was the primary of generation {g} but my data is gone; nobody else has every acknowledged transaction"
            )),
            Local::Starting => Decision::Wait(format!("nobody leads generation {g}; my mariadbd is starting")),
            _ => Decision::Reclaim {
                sync: state.sync.clone(),
                reason: format!(
                    "nobody leads and I am the primary of generation {g}, which has every acknowledged transaction: taking the key back"
                ),
            },
        };
    }
    if matches!(o.local, Local::Primary { .. }) {
        return Decision::Fence(format!(
            "nobody leads generation {g} and {primary} is its primary, yet my mariadbd is writable: stopping it"
        ));
    }
    Decision::Wait(match &state.sync {
        Some(sync) => format!(
            "nobody leads generation {g}; only primary {primary} or sync {sync} has every acknowledged transaction, waiting for one of them"
        ),
        None => format!(
            "nobody leads generation {g}; no sync was confirmed, so only primary {primary} has every acknowledged transaction: waiting for it"
        ),
    })
}

/// Whether `name` is registered with a running replica (so it can promote itself).
fn replica_alive(o: &Observed, name: &str) -> bool {
    o.members
        .get(name)
        .is_some_and(|m| m.running && matches!(m.role, Role::Sync | Role::Async))
}
