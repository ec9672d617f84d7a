//! Failover with real etcd, three real supervisor processes and real MariaDB 10.11.
//!
//! A writer inserts through the leader-following endpoint with an app's own
//! `DATABASE_URL` and records every insert that was acknowledged; a monitor probes every
//! member directly with a write by an account without READ ONLY ADMIN, ten times a
//! second. Then the primary is forced out, in turn: kill -9 of its mariadbd, kill -9 of
//! its supervisor (restarted afterwards, as a host agent would), and SIGSTOP of its
//! supervisor (its mariadbd keeps running; SIGCONT afterwards). After each: a new member
//! leads, writes resume through the same endpoint address, the old primary rejoins as
//! a replica, and every acknowledged row is present. At no sampled moment do two
//! members accept a write.
//!
//! `PAAS_MYSQL_FAILOVERS` sets how many rounds of the three kinds run (default 1).

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use common::{
    force_failover, monitor, prepare_app_database, verify_acked, writer, Acked, Harness, Kind,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_writes_survive_every_kind_of_failover() {
    let rounds: usize = std::env::var("PAAS_MYSQL_FAILOVERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let mut h = Harness::start(3).await;
    let url = prepare_app_database(&h).await;
    let acked = Arc::new(Mutex::new(Acked::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let writer_task = tokio::spawn(writer(url.clone(), acked.clone(), stop.clone()));
    let members = (0..h.cluster.members().len())
        .map(|i| (h.cluster.members()[i].name.clone(), h.member_addr(i)))
        .collect();
    let monitor_task = tokio::spawn(monitor(members, stop.clone()));

    let kinds = [
        Kind::KillServer,
        Kind::KillSupervisor,
        Kind::FreezeSupervisor,
    ];
    for round in 0..rounds {
        for kind in kinds {
            let f = force_failover(&mut h, kind, &url, &acked).await;
            println!(
                "round {round} {kind:?}: {} -> {} (generation {}), writes resumed after {:?}; {} acknowledged rows all present",
                f.old, f.new, f.generation, f.took, f.rows
            );
        }
    }

    stop.store(true, Ordering::SeqCst);
    writer_task.await.unwrap();
    let violations = monitor_task.await.unwrap();
    let rows = verify_acked(&h, &url, &acked).await;
    assert!(
        violations.is_empty(),
        "two writable members: {violations:#?}"
    );
    assert!(rows > 0);
}
