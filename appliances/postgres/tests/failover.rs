//! Failover with real etcd, three real supervisor processes and real PostgreSQL 15.
//!
//! A writer inserts through the leader-following endpoint and records every insert
//! that was acknowledged; a monitor probes every instance directly with a write, many
//! times a second. Then the primary is forced out, in turn: kill -9 of its postmaster,
//! kill -9 of its supervisor (restarted afterwards, as a host agent would), and SIGSTOP
//! of its supervisor (a partition: its PostgreSQL keeps running; SIGCONT afterwards).
//! After each: a new member leads, writes resume through the same endpoint address, the
//! old primary rejoins as a standby, and every acknowledged row is present. At no
//! sampled moment do two instances accept a write.
//!
//! `PAAS_PG_FAILOVERS` sets how many rounds of the three kinds run (default 2).

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use common::{
    force_failover, monitor, prepare_app_database, verify_acked, writer, Acked, Harness, Kind,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_writes_survive_every_kind_of_failover() {
    let rounds: usize = std::env::var("PAAS_PG_FAILOVERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let mut h = Harness::start(3).await;
    // The writer uses exactly what an app gets: its DATABASE_URL, pointing at the endpoint.
    let url = prepare_app_database(&h).await;
    let acked = Arc::new(Mutex::new(Acked::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let writer_task = tokio::spawn(writer(url.clone(), acked.clone(), stop.clone()));
    let ports = h
        .cluster
        .members()
        .iter()
        .map(|m| (m.name.clone(), m.addr()))
        .collect();
    let monitor_task = tokio::spawn(monitor(ports, stop.clone()));

    let kinds = [
        Kind::KillPostgres,
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
        "two writable instances: {violations:#?}"
    );
    assert!(rows > 0);
}
