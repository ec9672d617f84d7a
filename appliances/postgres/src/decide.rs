//! The supervisor's decision: a pure function from what one tick observed to the one
//! thing to do next, with the sentence that explains it.
//!
//! This module does no I/O and reads no clock; `supervisor` gathers an [`Observed`],
//! calls [`decide`], logs [`Decision::reason`] at INFO and carries the action out.
//! Tests call [`decide`] over the failure cases.
//!
//! The rules, in order (the first that applies wins):
//! 1. An action in progress (initdb, basebackup, rewind, promotion...) is waited for.
//! 2. No state document: if this member or any registered member holds data, wait and
//!    say so (etcd lost the state; only an operator's `paas pg recover` restarts such a
//!    cluster); otherwise, once every expected member registered, whoever takes the free
//!    leader key bootstraps. A holder of the key without a document resigns (its
//!    bootstrap failed: nothing was ever acknowledged, because a primary without a
//!    confirmed sync blocks every commit).
//! 3. The leader key is held by this member's previous lease (supervisor restarted within
//!    the TTL): wait for it to expire, touching nothing.
//! 4. This member leads: keep PostgreSQL a primary, restart it if it stopped cleanly,
//!    hand leadership to the sync if it crashed (the sync takes over in one tick instead
//!    of waiting for crash recovery here), make sure a streaming standby is the confirmed
//!    sync, and that commits wait for exactly that sync.
//! 5. Another member leads: a local primary is fenced at once; otherwise follow the leader
//!    as a standby. Asyncs stream from the sync while it runs (Flynn's chain primary ->
//!    sync -> async), the sync and everyone else from the primary. A running standby is
//!    re-pointed (cheap, and enough when its WAL did not go past the new primary's);
//!    stalled or former-primary data is rewound or re-cloned — except the sync's, which
//!    holds every acknowledged write and is never rebuilt.
//! 6. Nobody leads: the sync promotes itself; the recorded primary takes the key back when
//!    the sync is not there to do it; everyone else waits and says for whom. Only these two
//!    members can have every acknowledged write.

use std::collections::BTreeMap;

use crate::cluster::{ClusterState, MemberStatus, Role};

/// Who holds the cluster's leader key.
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

/// One standby as the primary sees it in `pg_stat_replication`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replica {
    /// Its `application_name`, which is its member name.
    pub name: String,
    /// Whether its WAL sender is in state `streaming` (caught up once, following live).
    pub streaming: bool,
    /// How far it has flushed WAL to disk.
    pub flush_lsn: u64,
}

/// The local PostgreSQL as the supervisor sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Local {
    /// No data directory yet.
    Empty,
    /// Data present, PostgreSQL not running.
    Stopped {
        /// The primary this data last followed; `None` if it was a primary itself.
        upstream: Option<String>,
        /// Whether PostgreSQL exited without the supervisor asking it to.
        crashed: bool,
    },
    /// The process runs but does not answer queries yet.
    Starting,
    /// A running, writable primary, with its standbys.
    Primary {
        /// The standbys connected to it.
        replicas: Vec<Replica>,
        /// The standby its commits currently wait for (`None`: none, commits block).
        requires: Option<String>,
    },
    /// A running standby.
    Standby {
        /// The member it is configured to follow.
        upstream: String,
        /// Whether its WAL receiver streams.
        streaming: bool,
        /// Whether it has not streamed for longer than the supervisor tolerates while its
        /// upstream was running: its timeline probably diverged and needs a rewind.
        stalled: bool,
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
    /// Live registrations of all members (this one included), by name.
    pub members: BTreeMap<String, MemberStatus>,
    /// The local PostgreSQL.
    pub local: Local,
    /// The long action still running, if any.
    pub busy: Option<String>,
    /// How many members the cluster has (0: unknown); a bootstrap waits for all of them.
    pub expected_members: usize,
}

/// What the supervisor does next; every variant carries the sentence that says why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// All is as it should be.
    Nothing(String),
    /// Nothing can safely be done now; the reason says what is awaited.
    Wait(String),
    /// Take the free leader key, initdb, start as primary, write generation 1.
    Bootstrap(String),
    /// As the sync: take the leader key and bump the generation in one transaction, then
    /// promote the local standby.
    Promote(String),
    /// Holding the key with a standby still running: finish an interrupted promotion.
    FinishPromotion(String),
    /// As the recorded primary: take the key back (generation + 1) and run as primary.
    Reclaim(String),
    /// Holding the key with stopped data of the primary: start it as primary.
    StartPrimary(String),
    /// Holding the key but unable to serve: release it so the sync can take over.
    Resign(String),
    /// Stop the local primary immediately: someone else leads.
    Fence(String),
    /// Rebuild as a standby (stop, pg_rewind or pg_basebackup from `primary`, start
    /// streaming from `upstream`).
    Follow {
        /// The primary whose data is the source of the rewind or clone.
        primary: String,
        /// The member to stream from afterwards (the primary, or the sync).
        upstream: String,
        /// Why.
        reason: String,
    },
    /// Point the running standby at `upstream` (new `primary_conninfo`, reload); if its
    /// timeline diverged it stalls, and a later tick rebuilds it with [`Decision::Follow`].
    Repoint {
        /// The member to stream from.
        upstream: String,
        /// Why.
        reason: String,
    },
    /// Start the stopped standby data, which already follows `upstream`.
    StartStandby {
        /// The member it streams from.
        upstream: String,
        /// Why.
        reason: String,
    },
    /// Point `synchronous_standby_names` at the recorded, streaming `sync` (after a
    /// failed change of sync left commits blocked).
    RequireSync {
        /// The recorded sync.
        sync: String,
        /// Why.
        reason: String,
    },
    /// Make `candidate` the synchronous standby (block commits, wait until it has
    /// everything, record it, then require it for commits).
    ChooseSync {
        /// The streaming standby chosen.
        candidate: String,
        /// Why.
        reason: String,
    },
}

impl Decision {
    /// The sentence logged at INFO for this tick.
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
            Decision::Follow { reason, .. }
            | Decision::Repoint { reason, .. }
            | Decision::RequireSync { reason, .. }
            | Decision::StartStandby { reason, .. }
            | Decision::ChooseSync { reason, .. } => reason,
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
            "I hold the leader key but the cluster was never initialized: my bootstrap failed, releasing the key".into(),
        ),
        Leader::MyOldLease => {
            Decision::Wait("my previous run's bootstrap lease still holds the leader key; waiting for it to expire".into())
        }
        Leader::Other(leader) => Decision::Wait(format!("{leader} is bootstrapping the cluster")),
    }
}

/// With no state document and nobody leading: bootstrap only when provably no member
/// holds data. A missing document with data around means etcd lost the cluster's state
/// (its data, another `--etcd`, a deleted key), not a new cluster: initdb there would
/// wipe every database, so the cluster stays down until an operator recovers it.
fn bootstrap_or_wait(o: &Observed) -> Decision {
    const RECOVER: &str =
        "`paas pg recover` restarts the cluster from the member with the highest WAL position";
    if !matches!(o.local, Local::Empty) {
        return Decision::Wait(format!(
            "no cluster state in etcd, but my data directory holds a database: refusing to bootstrap over it; {RECOVER}"
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
        Local::Primary { replicas, requires } => sync_check(state, replicas, requires.as_deref()),
        Local::Standby { .. } => Decision::FinishPromotion(format!(
            "I lead generation {g} but still run as a standby: finishing the promotion"
        )),
        Local::Starting => Decision::Wait(format!("primary of generation {g}: PostgreSQL is starting")),
        Local::Stopped { crashed: true, .. } => match &state.sync {
            Some(sync) if standby_alive(o, sync) => Decision::Resign(format!(
                "PostgreSQL exited unexpectedly on the primary of generation {g}: handing leadership to the sync {sync}"
            )),
            _ => Decision::StartPrimary(format!(
                "PostgreSQL exited unexpectedly on the primary of generation {g} and no sync can take over: restarting it here"
            )),
        },
        Local::Stopped { crashed: false, upstream: None } => {
            Decision::StartPrimary(format!("I lead generation {g}: starting PostgreSQL as primary"))
        }
        Local::Stopped { crashed: false, upstream: Some(upstream) } => Decision::Resign(format!(
            "I lead generation {g} but my stopped data was a standby of {upstream}, not a primary: releasing the key"
        )),
        Local::Empty => Decision::Resign(format!("I lead generation {g} but have no data: releasing the key")),
    }
}

/// The primary's check of its synchronous standby.
fn sync_check(state: &ClusterState, replicas: &[Replica], requires: Option<&str>) -> Decision {
    let g = state.generation;
    if let Some(sync) = &state.sync {
        if replicas.iter().any(|r| &r.name == sync && r.streaming) {
            if requires != Some(sync.as_str()) {
                // Safe at any time: the recorded sync has every acknowledged write.
                return Decision::RequireSync {
                    sync: sync.clone(),
                    reason: format!("primary of generation {g}; sync {sync} streams but commits do not wait for it: requiring it"),
                };
            }
            return Decision::Nothing(format!(
                "primary of generation {g}; sync {sync} is streaming"
            ));
        }
    }
    let candidate = replicas.iter().filter(|r| r.streaming).max_by(|a, b| {
        a.flush_lsn
            .cmp(&b.flush_lsn)
            .then_with(|| b.name.cmp(&a.name))
    });
    let missing = match &state.sync {
        Some(sync) => format!("sync {sync} is not streaming"),
        None => "no sync confirmed yet".to_string(),
    };
    match candidate {
        Some(candidate) => Decision::ChooseSync {
            candidate: candidate.name.clone(),
            reason: format!(
                "primary of generation {g}: {missing}; making streaming standby {} the sync",
                candidate.name
            ),
        },
        None => Decision::Wait(format!(
            "primary of generation {g}: {missing} and no standby streams; commits wait for a synchronous standby"
        )),
    }
}

fn following(o: &Observed, state: &ClusterState, leader: &str) -> Decision {
    let g = state.generation;
    if matches!(o.local, Local::Primary { .. }) {
        return Decision::Fence(format!(
            "{leader} leads generation {g} but my PostgreSQL is a writable primary: stopping it now"
        ));
    }
    if state.primary != leader {
        return Decision::Wait(format!(
            "{leader} holds the leader key but generation {g} names {}: waiting for them to agree",
            state.primary
        ));
    }
    let primary = leader.to_string();
    let want = upstream_for(o, state, leader);
    let promoted = o
        .members
        .get(leader)
        .is_some_and(|m| m.running && m.role == Role::Primary);
    let rebuild = |reason: String| {
        if promoted {
            Decision::Follow {
                primary: leader.to_string(),
                upstream: want.clone(),
                reason,
            }
        } else {
            // pg_rewind compares control-file timelines: against a primary still
            // promoting it would find nothing to rewind and leave the data diverged.
            Decision::Wait(format!(
                "{reason}; waiting for {leader} to finish its promotion first"
            ))
        }
    };
    let from = if want == primary {
        format!("primary {primary}")
    } else {
        format!("sync {want} of primary {primary}")
    };
    match &o.local {
        Local::Empty => rebuild(format!("no local data: cloning from primary {primary} to stream from {from} (generation {g})")),
        Local::Stopped { upstream: Some(upstream), .. } if *upstream == want => Decision::StartStandby {
            reason: format!("starting as standby of {from} (generation {g})"),
            upstream: want,
        },
        Local::Stopped { upstream: Some(upstream), .. }
            if o.members.get(upstream).is_some_and(|m| m.role == Role::Sync || m.role == Role::Primary) =>
        {
            // Data that streamed from the primary or its sync never went past the new
            // primary's history: it can start and re-point without a rewind.
            Decision::StartStandby {
                reason: format!("starting as standby of {from} (generation {g}); my data followed {upstream}, which is on its history"),
                upstream: want,
            }
        }
        Local::Stopped { upstream, .. } => rebuild(match upstream {
            Some(old) => format!("my data followed {old}; rewinding onto primary {primary} to stream from {from} (generation {g})"),
            None => format!("my data was a primary; rewinding onto primary {primary} to rejoin as a standby of {from} (generation {g})"),
        }),
        Local::Starting => Decision::Wait(format!("PostgreSQL is starting; {primary} leads generation {g}")),
        Local::Standby { upstream, .. } if *upstream != want => Decision::Repoint {
            reason: format!("I stream from {upstream} but should from {from} (generation {g}): re-pointing"),
            upstream: want,
        },
        Local::Standby { stalled: true, .. } if state.sync.as_deref() == Some(o.me.as_str()) => Decision::Wait(format!(
            "sync standby of {from} (generation {g}) is not streaming; the sync's data holds every acknowledged write, so it is never rebuilt"
        )),
        Local::Standby { stalled: true, .. } => {
            rebuild(format!("streaming from {from} stalled; rewinding or re-cloning (generation {g})"))
        }
        Local::Standby { streaming, .. } => {
            let role = if state.sync.as_deref() == Some(o.me.as_str()) { "sync" } else { "async" };
            let how = if *streaming { "streaming" } else { "connecting" };
            Decision::Nothing(format!("{role} standby of {from} (generation {g}), {how}"))
        }
        Local::Primary { .. } => unreachable!("handled above"),
    }
}

/// Whom a standby streams from: asyncs cascade from the sync while it runs as a standby
/// (so an async never holds WAL the sync lacks, and keeps streaming without a rewind
/// when the sync is promoted), everyone else from the primary. Whether the sync streams
/// does not matter: it stops streaming exactly when the primary dies, which is when the
/// asyncs should stay behind it.
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
            Local::Standby { .. } => Decision::Promote(format!(
                "primary {primary} lost the leader key; I am the sync of generation {g} and have every acknowledged write: promoting"
            )),
            Local::Stopped { .. } => Decision::StartStandby {
                upstream: primary.clone(),
                reason: format!("nobody leads and I am the sync of generation {g}: starting my standby to promote it"),
            },
            Local::Starting => Decision::Wait(format!("nobody leads; I am the sync of generation {g} and PostgreSQL is starting")),
            Local::Primary { .. } => {
                Decision::Fence(format!("nobody leads generation {g} yet my PostgreSQL is a writable primary: stopping it"))
            }
            Local::Empty => Decision::Wait(format!(
                "nobody leads; I am the sync of generation {g} but have no data: waiting for primary {primary}"
            )),
        };
    }
    if primary == &o.me {
        if let Some(sync) = &state.sync {
            if standby_alive(o, sync) {
                return Decision::Wait(format!(
                    "nobody leads generation {g}; the sync {sync} is alive and takes over, so I stay out of its way"
                ));
            }
        }
        return match &o.local {
            Local::Empty => Decision::Wait(format!(
                "I was the primary of generation {g} but my data is gone; nobody else has every acknowledged write"
            )),
            Local::Starting => Decision::Wait(format!("nobody leads generation {g}; my PostgreSQL is starting")),
            _ => Decision::Reclaim(format!(
                "nobody leads and I am the primary of generation {g}, which has every acknowledged write: taking the key back"
            )),
        };
    }
    if matches!(o.local, Local::Primary { .. }) {
        return Decision::Fence(format!(
            "nobody leads generation {g} and {primary} is its primary, yet my PostgreSQL is a writable primary: stopping it"
        ));
    }
    Decision::Wait(match &state.sync {
        Some(sync) => format!(
            "nobody leads generation {g}; only primary {primary} or sync {sync} has every acknowledged write, waiting for one of them"
        ),
        None => format!(
            "nobody leads generation {g}; no sync was confirmed, so only primary {primary} has every acknowledged write: waiting for it"
        ),
    })
}

/// Whether `name` is registered with a running standby (so it can promote itself).
fn standby_alive(o: &Observed, name: &str) -> bool {
    o.members
        .get(name)
        .is_some_and(|m| m.running && matches!(m.role, Role::Sync | Role::Async))
}
