//! `decide()` over the failure cases: one row per situation, checked by kind of decision
//! and by the sentence the supervisor logs.

use std::collections::BTreeMap;

use paas_postgres::cluster::{ClusterState, MemberStatus, Role};
use paas_postgres::decide::{decide, Decision, Leader, Local, Observed, Replica};

fn member(name: &str, role: Role, running: bool) -> MemberStatus {
    MemberStatus {
        name: name.into(),
        pg_addr: "127.0.0.1:1".into(),
        health_addr: "127.0.0.1:2".into(),
        role,
        running,
        streaming: running,
        wal_lsn: None,
        lag_bytes: None,
        generation: Some(7),
        decision: String::new(),
        has_data: true,
        archiving: None,
    }
}

/// A three-member cluster at generation 7: primary pg0, sync pg1, async pg2, all alive.
fn observed(me: &str, leader: Leader, local: Local) -> Observed {
    let members: BTreeMap<String, MemberStatus> = [
        member("pg0", Role::Primary, true),
        member("pg1", Role::Sync, true),
        member("pg2", Role::Async, true),
    ]
    .into_iter()
    .map(|m| (m.name.clone(), m))
    .collect();
    Observed {
        me: me.into(),
        state: Some(ClusterState {
            generation: 7,
            primary: "pg0".into(),
            sync: Some("pg1".into()),
        }),
        leader,
        members,
        local,
        busy: None,
        expected_members: 3,
    }
}

fn standby(upstream: &str) -> Local {
    Local::Standby {
        upstream: upstream.into(),
        streaming: true,
        stalled: false,
    }
}

fn replica(name: &str, streaming: bool, flush_lsn: u64) -> Replica {
    Replica {
        name: name.into(),
        streaming,
        flush_lsn,
    }
}

fn other(name: &str) -> Leader {
    Leader::Other(name.into())
}

/// Checks the decision's kind (its `Debug` name) and that its sentence contains `says`.
fn check(o: &Observed, kind: &str, says: &str) {
    let decision = decide(o);
    let name = format!("{decision:?}");
    assert!(name.starts_with(kind), "expected {kind}, got {decision:?}");
    assert!(
        decision.reason().contains(says),
        "{:?} does not say {says:?}",
        decision.reason()
    );
}

#[test]
fn a_running_action_is_waited_for() {
    let mut o = observed("pg1", Leader::Nobody, standby("pg0"));
    o.busy = Some("pg_basebackup".into());
    check(&o, "Wait", "pg_basebackup in progress");
}

#[test]
fn bootstrap_happens_only_when_nobody_leads_an_uninitialized_cluster() {
    let mut o = observed("pg0", Leader::Nobody, Local::Empty);
    o.state = None;
    for m in o.members.values_mut() {
        m.has_data = false;
    }
    check(&o, "Bootstrap", "bootstrapping");
    o.leader = other("pg2");
    check(&o, "Wait", "pg2 is bootstrapping the cluster");
    o.leader = Leader::Me;
    check(&o, "Resign", "my bootstrap failed");
}

#[test]
fn a_lost_state_document_never_bootstraps_over_data() {
    // etcd lost the state (deleted key, lost etcd data): members still hold databases.
    let mut o = observed("pg2", Leader::Nobody, Local::Empty);
    o.state = None;
    check(&o, "Wait", "pg0, pg1, pg2 hold data: refusing to bootstrap");
    check(&o, "Wait", "paas pg recover");
    for m in o.members.values_mut() {
        m.has_data = m.name == "pg1";
    }
    check(&o, "Wait", "pg1 holds data");
    // My own data counts even before anyone registered it.
    for m in o.members.values_mut() {
        m.has_data = false;
    }
    o.local = Local::Stopped {
        upstream: None,
        crashed: false,
    };
    check(&o, "Wait", "my data directory holds a database");
    o.local = Local::Primary {
        replicas: vec![],
        requires: None,
    };
    check(&o, "Wait", "refusing to bootstrap over it");
    // A member not registered yet may hold data: wait for all of them.
    o.local = Local::Empty;
    o.members.remove("pg0");
    check(&o, "Wait", "2 of 3 members registered");
}

#[test]
fn a_healthy_primary_with_a_streaming_sync_does_nothing() {
    let o = observed(
        "pg0",
        Leader::Me,
        Local::Primary {
            replicas: vec![replica("pg1", true, 100), replica("pg2", true, 90)],
            requires: Some("pg1".into()),
        },
    );
    check(&o, "Nothing", "sync pg1 is streaming");
}

#[test]
fn commits_left_blocked_by_a_failed_sync_change_wait_for_the_recorded_sync_again() {
    let o = observed(
        "pg0",
        Leader::Me,
        Local::Primary {
            replicas: vec![replica("pg1", true, 100)],
            requires: None,
        },
    );
    assert_eq!(
        decide(&o),
        Decision::RequireSync {
            sync: "pg1".into(),
            reason: "primary of generation 7; sync pg1 streams but commits do not wait for it: requiring it".into()
        }
    );
}

#[test]
fn a_lost_sync_is_replaced_by_the_most_advanced_streaming_standby() {
    let o = observed(
        "pg0",
        Leader::Me,
        Local::Primary {
            replicas: vec![
                replica("pg1", false, 500),
                replica("pg2", true, 90),
                replica("pg3", true, 95),
            ],
            requires: Some("pg1".into()),
        },
    );
    assert_eq!(
        decide(&o),
        Decision::ChooseSync {
            candidate: "pg3".into(),
            reason: "primary of generation 7: sync pg1 is not streaming; making streaming standby pg3 the sync".into()
        }
    );
}

#[test]
fn a_primary_without_any_streaming_standby_keeps_commits_waiting() {
    let o = observed(
        "pg0",
        Leader::Me,
        Local::Primary {
            replicas: vec![replica("pg2", false, 90)],
            requires: Some("pg1".into()),
        },
    );
    check(&o, "Wait", "commits wait for a synchronous standby");
}

#[test]
fn a_crashed_primary_hands_over_to_a_live_sync_or_restarts_when_there_is_none() {
    let crashed = Local::Stopped {
        upstream: None,
        crashed: true,
    };
    check(
        &observed("pg0", Leader::Me, crashed.clone()),
        "Resign",
        "handing leadership to the sync pg1",
    );
    let mut o = observed("pg0", Leader::Me, crashed);
    o.members.get_mut("pg1").unwrap().running = false;
    check(&o, "StartPrimary", "no sync can take over");
}

#[test]
fn a_leader_whose_state_names_another_primary_resigns() {
    let mut o = observed(
        "pg0",
        Leader::Me,
        Local::Primary {
            replicas: vec![],
            requires: None,
        },
    );
    o.state.as_mut().unwrap().primary = "pg1".into();
    check(&o, "Resign", "generation 7 names pg1 as primary");
}

#[test]
fn a_primary_that_sees_another_leader_is_fenced() {
    let o = observed(
        "pg0",
        other("pg1"),
        Local::Primary {
            replicas: vec![],
            requires: None,
        },
    );
    check(
        &o,
        "Fence",
        "pg1 leads generation 7 but my PostgreSQL is a writable primary",
    );
}

#[test]
fn the_sync_promotes_itself_when_nobody_leads() {
    check(
        &observed("pg1", Leader::Nobody, standby("pg0")),
        "Promote",
        "I am the sync of generation 7",
    );
}

#[test]
fn an_async_never_promotes_and_says_whom_it_waits_for() {
    check(
        &observed("pg2", Leader::Nobody, standby("pg0")),
        "Wait",
        "only primary pg0 or sync pg1 has every acknowledged write",
    );
    let mut o = observed("pg2", Leader::Nobody, standby("pg0"));
    o.state.as_mut().unwrap().sync = None;
    check(&o, "Wait", "no sync was confirmed, so only primary pg0");
}

#[test]
fn the_recorded_primary_takes_the_key_back_only_when_the_sync_cannot() {
    let stopped = Local::Stopped {
        upstream: None,
        crashed: false,
    };
    check(
        &observed("pg0", Leader::Nobody, stopped.clone()),
        "Wait",
        "the sync pg1 is alive and takes over",
    );
    let mut o = observed("pg0", Leader::Nobody, stopped);
    o.members.remove("pg1");
    check(&o, "Reclaim", "I am the primary of generation 7");
}

#[test]
fn everything_failed_and_the_primary_comes_back_first() {
    // pg0 restarts after the whole cluster went down: no registrations but its own.
    let mut o = observed(
        "pg0",
        Leader::Nobody,
        Local::Stopped {
            upstream: None,
            crashed: false,
        },
    );
    o.members.retain(|name, _| name == "pg0");
    check(&o, "Reclaim", "taking the key back");
    // The async comes back first: it must wait, and say why.
    let mut o = observed(
        "pg2",
        Leader::Nobody,
        Local::Stopped {
            upstream: Some("pg0".into()),
            crashed: false,
        },
    );
    o.members.retain(|name, _| name == "pg2");
    check(&o, "Wait", "waiting for one of them");
}

#[test]
fn standbys_chain_behind_the_sync_and_follow_the_new_leader() {
    check(
        &observed("pg1", other("pg0"), standby("pg0")),
        "Nothing",
        "sync standby of primary pg0",
    );
    check(
        &observed("pg2", other("pg0"), standby("pg1")),
        "Nothing",
        "async standby of sync pg1 of primary pg0",
    );
    check(
        &observed("pg2", other("pg0"), standby("pg0")),
        "Repoint",
        "should from sync pg1 of primary pg0",
    );
    // The sync is down: the async streams from the primary instead.
    let mut o = observed("pg2", other("pg0"), standby("pg1"));
    o.members.get_mut("pg1").unwrap().running = false;
    check(
        &o,
        "Repoint",
        "I stream from pg1 but should from primary pg0",
    );

    // After a failover to pg1 (no sync confirmed yet), the chained async already streams
    // from pg1 and needs nothing.
    let mut o = observed("pg2", other("pg1"), standby("pg1"));
    o.state = Some(ClusterState {
        generation: 8,
        primary: "pg1".into(),
        sync: None,
    });
    o.members.get_mut("pg1").unwrap().role = Role::Primary;
    check(&o, "Nothing", "async standby of primary pg1 (generation 8)");
    // One that still streams from the old primary is re-pointed...
    o.local = standby("pg0");
    check(
        &o,
        "Repoint",
        "I stream from pg0 but should from primary pg1",
    );
    // ...and rebuilt if its timeline diverged so that it cannot stream.
    o.local = Local::Standby {
        upstream: "pg1".into(),
        streaming: false,
        stalled: true,
    };
    check(&o, "Follow", "stalled");
    // The sync is never rebuilt, even when it stops streaming (its primary may be dead
    // with its registration not yet expired): its data has every acknowledged write.
    let mut o = observed(
        "pg1",
        other("pg0"),
        Local::Standby {
            upstream: "pg0".into(),
            streaming: false,
            stalled: true,
        },
    );
    o.local = Local::Standby {
        upstream: "pg0".into(),
        streaming: false,
        stalled: true,
    };
    check(&o, "Wait", "never rebuilt");
}

#[test]
fn a_deposed_primary_rejoins_by_rewinding() {
    let mut o = observed(
        "pg0",
        other("pg1"),
        Local::Stopped {
            upstream: None,
            crashed: true,
        },
    );
    o.state = Some(ClusterState {
        generation: 8,
        primary: "pg1".into(),
        sync: None,
    });
    o.members.get_mut("pg1").unwrap().role = Role::Primary;
    o.members.get_mut("pg0").unwrap().role = Role::Stopped;
    check(
        &o,
        "Follow",
        "my data was a primary; rewinding onto primary pg1",
    );
    o.local = Local::Empty;
    check(&o, "Follow", "no local data: cloning from primary pg1");
    o.local = Local::Stopped {
        upstream: Some("pg1".into()),
        crashed: false,
    };
    check(&o, "StartStandby", "starting as standby of primary pg1");
    // Data that followed the deposed primary may hold WAL the new one never had.
    o.local = Local::Stopped {
        upstream: Some("pg0".into()),
        crashed: false,
    };
    check(&o, "Follow", "my data followed pg0; rewinding");
    // While the new primary has not published that its promotion finished, rewinding
    // would compare stale timelines: wait.
    o.members.get_mut("pg1").unwrap().role = Role::Sync;
    check(&o, "Wait", "waiting for pg1 to finish its promotion first");
}

#[test]
fn a_restarted_supervisor_waits_for_its_old_lease() {
    check(
        &observed(
            "pg0",
            Leader::MyOldLease,
            Local::Stopped {
                upstream: None,
                crashed: false,
            },
        ),
        "Wait",
        "previous run's lease",
    );
}

#[test]
fn a_writable_non_primary_is_fenced_when_nobody_leads() {
    check(
        &observed(
            "pg2",
            Leader::Nobody,
            Local::Primary {
                replicas: vec![],
                requires: None,
            },
        ),
        "Fence",
        "pg0 is its primary",
    );
}

#[test]
fn leadership_and_state_disagreeing_is_waited_out() {
    let o = observed("pg2", other("pg1"), standby("pg0"));
    check(
        &o,
        "Wait",
        "pg1 holds the leader key but generation 7 names pg0",
    );
}
