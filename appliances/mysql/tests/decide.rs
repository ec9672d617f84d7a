//! The decision function over the cases that matter, without processes: bootstrap
//! never over data, only the sync promotes, the primary lets only its sync be connected,
//! a sync is dropped and confirmed the safe way, the alarm, fencing and rejoining.

use std::collections::BTreeMap;

use paas_mysql::cluster::{ClusterState, MemberStatus, Role};
use paas_mysql::decide::{decide, Decision, Leader, Local, Observed};
use paas_mysql::gtid::GtidPos;

fn member(name: &str, role: Role, running: bool) -> MemberStatus {
    MemberStatus {
        name: name.into(),
        addr: format!("127.0.0.1:{}", 13306 + name.len()),
        health_addr: "127.0.0.1:18108".into(),
        role,
        running,
        streaming: running && matches!(role, Role::Sync | Role::Async),
        gtid: Some(GtidPos::parse("0-1-10").unwrap()),
        received: None,
        lag: None,
        acks: matches!(role, Role::Sync | Role::Async),
        semi_sync_off: false,
        generation: Some(3),
        decision: String::new(),
        has_data: true,
    }
}

fn state(primary: &str, sync: Option<&str>) -> Option<ClusterState> {
    Some(ClusterState {
        generation: 3,
        primary: primary.into(),
        sync: sync.map(String::from),
    })
}

fn observed(me: &str, state: Option<ClusterState>, leader: Leader, local: Local) -> Observed {
    let members: BTreeMap<String, MemberStatus> = [
        member("my0", Role::Primary, true),
        member("my1", Role::Sync, true),
        member("my2", Role::Async, true),
    ]
    .into_iter()
    .map(|m| (m.name.clone(), m))
    .collect();
    Observed {
        me: me.into(),
        state,
        leader,
        members,
        local,
        busy: None,
        expected_members: 3,
    }
}

fn primary(connected: &[&str], acking: u32, accounts: &[(&str, bool)]) -> Local {
    Local::Primary {
        connected: connected.iter().map(|s| s.to_string()).collect(),
        acking,
        semi_sync_on: true,
        accounts: accounts.iter().map(|(m, l)| (m.to_string(), *l)).collect(),
    }
}

fn replica(upstream: &str, stalled: bool) -> Local {
    Local::Replica {
        upstream: Some(upstream.into()),
        streaming: !stalled,
        stalled,
        accounts: vec![
            ("my0".into(), false),
            ("my1".into(), false),
            ("my2".into(), false),
        ],
    }
}

fn check(o: &Observed, expected: &str) -> Decision {
    let d = decide(o);
    let variant = format!("{d:?}");
    assert!(
        variant.starts_with(expected),
        "expected {expected}, got {variant}"
    );
    d
}

#[test]
fn a_busy_member_waits_for_its_action() {
    let mut o = observed(
        "my0",
        state("my0", Some("my1")),
        Leader::Me,
        Local::Starting,
    );
    o.busy = Some("seeding from the primary".into());
    let d = check(&o, "Wait");
    assert_eq!(d.reason(), "seeding from the primary in progress");
}

#[test]
fn bootstrap_only_when_no_member_has_data_and_all_registered() {
    let mut o = observed("my0", None, Leader::Nobody, Local::Empty);
    for m in o.members.values_mut() {
        m.has_data = false;
    }
    check(&o, "Bootstrap");

    let mut missing = o.clone();
    missing.members.remove("my2");
    let d = check(&missing, "Wait");
    assert!(
        d.reason().contains("2 of 3 members registered"),
        "{}",
        d.reason()
    );

    let mut other_has_data = o.clone();
    other_has_data.members.get_mut("my2").unwrap().has_data = true;
    let d = check(&other_has_data, "Wait");
    assert!(d.reason().contains("my2 holds data"), "{}", d.reason());

    let mut mine = o.clone();
    mine.local = Local::Stopped {
        upstream: None,
        crashed: false,
    };
    let d = check(&mine, "Wait");
    assert!(
        d.reason().contains("refusing to bootstrap"),
        "{}",
        d.reason()
    );
}

#[test]
fn only_the_sync_promotes_and_with_no_sync_recorded() {
    let o = observed(
        "my1",
        state("my0", Some("my1")),
        Leader::Nobody,
        replica("my0", false),
    );
    match check(&o, "Promote") {
        Decision::Promote { sync, .. } => assert_eq!(sync, None),
        other => unreachable!("{other:?}"),
    }
    let o = observed(
        "my2",
        state("my0", Some("my1")),
        Leader::Nobody,
        replica("my1", false),
    );
    let d = check(&o, "Wait");
    assert!(
        d.reason().contains("only primary my0 or sync my1"),
        "{}",
        d.reason()
    );
    let o = observed(
        "my2",
        state("my0", None),
        Leader::Nobody,
        replica("my0", false),
    );
    let d = check(&o, "Wait");
    assert!(
        d.reason().contains("no sync was confirmed"),
        "{}",
        d.reason()
    );
}

#[test]
fn the_recorded_primary_takes_the_key_back_only_when_the_sync_cannot() {
    let stopped = Local::Stopped {
        upstream: None,
        crashed: true,
    };
    let o = observed(
        "my0",
        state("my0", Some("my1")),
        Leader::Nobody,
        stopped.clone(),
    );
    let d = check(&o, "Wait");
    assert!(d.reason().contains("sync my1 is alive"), "{}", d.reason());
    let mut gone = o.clone();
    gone.members.remove("my1");
    match check(&gone, "Reclaim") {
        Decision::Reclaim { sync, .. } => assert_eq!(sync.as_deref(), Some("my1")),
        other => unreachable!("{other:?}"),
    }
}

#[test]
fn a_crashed_primary_hands_over_to_a_live_sync() {
    let crashed = Local::Stopped {
        upstream: None,
        crashed: true,
    };
    let o = observed("my0", state("my0", Some("my1")), Leader::Me, crashed);
    check(&o, "Resign");
    let mut alone = o.clone();
    alone.members.remove("my1");
    check(&alone, "StartPrimary");
}

#[test]
fn with_a_sync_the_primary_locks_every_other_replica_out() {
    let accounts = [("my1", false), ("my2", false)];
    let o = observed(
        "my0",
        state("my0", Some("my1")),
        Leader::Me,
        primary(&["my1", "my2"], 2, &accounts),
    );
    match check(&o, "Lock") {
        Decision::Lock { members, .. } => assert_eq!(members, vec!["my2".to_string()]),
        other => unreachable!("{other:?}"),
    }
    // Locked but still connected: its connection is ended again.
    let o = observed(
        "my0",
        state("my0", Some("my1")),
        Leader::Me,
        primary(&["my1", "my2"], 2, &[("my1", false), ("my2", true)]),
    );
    check(&o, "Lock");
    // Locked and gone: all is well.
    let o = observed(
        "my0",
        state("my0", Some("my1")),
        Leader::Me,
        primary(&["my1"], 1, &[("my1", false), ("my2", true)]),
    );
    let d = check(&o, "Nothing");
    assert_eq!(d.reason(), "primary of generation 3; sync my1 acknowledges");
}

#[test]
fn the_sync_and_without_a_sync_everyone_is_let_back_in() {
    let o = observed(
        "my0",
        state("my0", Some("my1")),
        Leader::Me,
        primary(&[], 0, &[("my1", true), ("my2", true)]),
    );
    match check(&o, "Unlock") {
        Decision::Unlock { member, .. } => assert_eq!(member, "my1"),
        other => unreachable!("{other:?}"),
    }
    let o = observed(
        "my0",
        state("my0", None),
        Leader::Me,
        primary(&[], 0, &[("my1", false), ("my2", true)]),
    );
    match check(&o, "Unlock") {
        Decision::Unlock { member, .. } => assert_eq!(member, "my2"),
        other => unreachable!("{other:?}"),
    }
}

#[test]
fn missing_replication_accounts_are_created() {
    let o = observed(
        "my0",
        state("my0", None),
        Leader::Me,
        primary(&[], 0, &[("my1", false)]),
    );
    match check(&o, "CreateAccounts") {
        Decision::CreateAccounts { members, .. } => assert_eq!(members, vec!["my2".to_string()]),
        other => unreachable!("{other:?}"),
    }
}

#[test]
fn a_sync_that_is_gone_is_dropped_and_a_connected_replica_confirmed() {
    let accounts = [("my1", false), ("my2", true)];
    let o = observed(
        "my0",
        state("my0", Some("my1")),
        Leader::Me,
        primary(&[], 0, &accounts),
    );
    let d = check(&o, "DropSync");
    assert!(
        d.reason().contains("sync my1 is not connected"),
        "{}",
        d.reason()
    );

    let accounts = [("my1", false), ("my2", false)];
    let o = observed(
        "my0",
        state("my0", None),
        Leader::Me,
        primary(&["my2"], 1, &accounts),
    );
    match check(&o, "ChooseSync") {
        Decision::ChooseSync { candidate, .. } => assert_eq!(candidate, "my2"),
        other => unreachable!("{other:?}"),
    }

    let o = observed(
        "my0",
        state("my0", None),
        Leader::Me,
        primary(&[], 0, &accounts),
    );
    let d = check(&o, "Wait");
    assert!(d.reason().contains("commits wait"), "{}", d.reason());
}

#[test]
fn a_connected_sync_that_does_not_acknowledge_is_waited_for() {
    let o = observed(
        "my0",
        state("my0", Some("my1")),
        Leader::Me,
        primary(&["my1"], 0, &[("my1", false), ("my2", true)]),
    );
    let d = check(&o, "Wait");
    assert!(
        d.reason().contains("does not acknowledge yet"),
        "{}",
        d.reason()
    );
}

#[test]
fn semi_sync_switched_off_on_a_primary_raises_the_alarm() {
    let mut local = primary(&["my1"], 1, &[("my1", false), ("my2", true)]);
    if let Local::Primary { semi_sync_on, .. } = &mut local {
        *semi_sync_on = false;
    }
    let o = observed("my0", state("my0", Some("my1")), Leader::Me, local);
    let d = check(&o, "Nothing");
    assert!(
        d.reason()
            .starts_with("ALARM: Rpl_semi_sync_master_status is OFF"),
        "{}",
        d.reason()
    );
}

#[test]
fn a_writable_server_that_does_not_lead_is_fenced() {
    let local = primary(&[], 0, &[]);
    let o = observed(
        "my0",
        state("my1", Some("my2")),
        Leader::Other("my1".into()),
        local.clone(),
    );
    check(&o, "Fence");
    let o = observed("my2", state("my0", Some("my1")), Leader::Nobody, local);
    check(&o, "Fence");
}

#[test]
fn replicas_follow_the_chain() {
    // The async follows the sync while it runs as the sync.
    let o = observed(
        "my2",
        state("my0", Some("my1")),
        Leader::Other("my0".into()),
        replica("my0", false),
    );
    match check(&o, "Repoint") {
        Decision::Repoint { upstream, .. } => assert_eq!(upstream, "my1"),
        other => unreachable!("{other:?}"),
    }
    // ... and the primary when the sync is down.
    let mut down = o.clone();
    down.members.get_mut("my1").unwrap().running = false;
    down.local = replica("my1", false);
    match check(&down, "Repoint") {
        Decision::Repoint { upstream, .. } => assert_eq!(upstream, "my0"),
        other => unreachable!("{other:?}"),
    }
    let o = observed(
        "my1",
        state("my0", Some("my1")),
        Leader::Other("my0".into()),
        replica("my0", false),
    );
    let d = check(&o, "Nothing");
    assert_eq!(
        d.reason(),
        "sync replica of primary my0 (generation 3), streaming"
    );
}

#[test]
fn a_deposed_primary_rejoins_once_the_new_primary_runs() {
    let stopped = Local::Stopped {
        upstream: None,
        crashed: true,
    };
    let mut o = observed(
        "my0",
        state("my1", None),
        Leader::Other("my1".into()),
        stopped,
    );
    o.members.get_mut("my1").unwrap().role = Role::Sync; // still promoting
    let d = check(&o, "Wait");
    assert!(
        d.reason()
            .contains("waiting for my1 to finish its promotion"),
        "{}",
        d.reason()
    );
    o.members.get_mut("my1").unwrap().role = Role::Primary;
    let d = check(&o, "StartReplica");
    assert!(
        d.reason().contains("unacknowledged transactions cut"),
        "{}",
        d.reason()
    );
}

#[test]
fn a_stalled_async_is_seeded_again_but_never_the_sync() {
    let o = observed(
        "my2",
        state("my0", Some("my1")),
        Leader::Other("my0".into()),
        replica("my1", true),
    );
    match check(&o, "Follow") {
        Decision::Follow {
            primary, upstream, ..
        } => assert_eq!((primary.as_str(), upstream.as_str()), ("my0", "my1")),
        other => unreachable!("{other:?}"),
    }
    let o = observed(
        "my1",
        state("my0", Some("my1")),
        Leader::Other("my0".into()),
        replica("my0", true),
    );
    let d = check(&o, "Wait");
    assert!(d.reason().contains("never seeded over"), "{}", d.reason());
}

#[test]
fn an_empty_member_seeds_from_the_primary() {
    let o = observed(
        "my2",
        state("my0", Some("my1")),
        Leader::Other("my0".into()),
        Local::Empty,
    );
    check(&o, "Follow");
}

#[test]
fn an_old_lease_is_waited_out() {
    let o = observed(
        "my0",
        state("my0", Some("my1")),
        Leader::MyOldLease,
        Local::Stopped {
            upstream: None,
            crashed: false,
        },
    );
    check(&o, "Wait");
}
