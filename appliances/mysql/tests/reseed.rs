//! A replica whose data diverged (a transaction the primary never had: GTID strict mode
//! stops its SQL thread) is copied afresh from the primary with mariadb-backup, swapped
//! in whole, and follows again with every transaction of the primary and without the
//! stray one. The sync is never copied over.

mod common;

use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use paas_mysql::cluster::Role;

use common::{connect, connect_direct, opts, Harness, PASSWORD};

const MARKER: &str = "paas-test-marker";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_diverged_replica_is_seeded_afresh_from_the_primary() {
    let h = Harness::start(3).await;
    let state = h.wait_healthy(Duration::from_secs(90), None).await;
    let sync = state.sync.clone().expect("sync");
    let stray = h
        .cluster
        .members()
        .iter()
        .position(|m| m.name != state.primary && m.name != sync)
        .expect("an async");
    let name = h.cluster.members()[stray].name.clone();
    let mut admin = connect(opts(h.endpoint_addr(), "paas", PASSWORD, None))
        .await
        .unwrap();
    admin
        .query_drop("CREATE DATABASE d; CREATE TABLE d.t (id INT PRIMARY KEY) ENGINE=InnoDB")
        .await
        .unwrap();
    admin
        .query_drop("INSERT INTO d.t VALUES (1)")
        .await
        .unwrap();
    let started = Instant::now();
    let mut direct = loop {
        let mut conn = connect_direct(h.member_addr(stray)).await.unwrap();
        let rows: Option<i64> = conn
            .query_first("SELECT COUNT(*) FROM d.t")
            .await
            .ok()
            .flatten();
        if rows == Some(1) {
            break conn;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the async never applied d.t"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let dir = h.cluster.members()[stray].dir.join("data");
    std::fs::write(dir.join(MARKER), "old data").unwrap();

    // A stray transaction on the async (the supervisor's account bypasses read_only),
    // then the primary's next ones: same sequence numbers, different servers.
    direct
        .query_drop("INSERT INTO d.t VALUES (1000)")
        .await
        .unwrap();
    for id in 2..=5 {
        admin
            .exec_drop("INSERT INTO d.t VALUES (?)", (id,))
            .await
            .unwrap();
    }

    // It is copied afresh: the old datadir (and the marker) are gone, it streams again,
    // and holds the primary's rows and not the stray one.
    common::wait_until(
        "the diverged async seeded afresh",
        &h,
        Duration::from_secs(90),
        async || {
            !dir.join(MARKER).exists()
                && h.snapshot()
                    .await
                    .members
                    .get(&name)
                    .is_some_and(|m| m.role == Role::Async && m.streaming && m.running)
        },
    )
    .await;
    let started = Instant::now();
    loop {
        let mut conn = connect_direct(h.member_addr(stray)).await.unwrap();
        let ids: Vec<i64> = conn
            .query("SELECT id FROM d.t ORDER BY id")
            .await
            .unwrap_or_default();
        if ids == vec![1, 2, 3, 4, 5] {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "after the copy {name} has {ids:?}\n{}",
            h.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = std::fs::read_to_string(h.cluster.log_path(stray)).unwrap();
    assert!(log.contains("seeding again from primary"), "{}", h.logs());
    // The sync was never copied over.
    let sync_log = std::fs::read_to_string(h.cluster.log_path(h.index(&sync))).unwrap();
    assert_eq!(
        sync_log.matches("seeded from the primary").count(),
        1,
        "the sync was seeded again"
    );
}
