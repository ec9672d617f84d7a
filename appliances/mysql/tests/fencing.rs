//! Fencing by the lease clock: when etcd becomes unreachable, the primary cannot renew
//! its lease and must kill mariadbd by itself before the lease could expire; when etcd
//! returns, the cluster recovers without manual steps and no acknowledged row is lost.

mod common;

use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;

use common::{connect, connect_direct, opts, Harness, PASSWORD};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_primary_that_cannot_renew_its_lease_kills_mariadbd() {
    let mut h = Harness::start(3).await;
    let state = h.wait_healthy(Duration::from_secs(90), None).await;
    let primary_addr = h.member_addr(h.index(&state.primary));
    let mut admin = connect(opts(h.endpoint_addr(), "paas", PASSWORD, None))
        .await
        .unwrap();
    admin
        .query_drop("CREATE DATABASE fence; CREATE TABLE fence.kept (id INT) ENGINE=InnoDB")
        .await
        .unwrap();
    for id in 0..50 {
        admin
            .exec_drop("INSERT INTO fence.kept VALUES (?)", (id,))
            .await
            .unwrap();
    }
    drop(admin);

    // etcd goes away: nobody can renew, nobody can be elected.
    h.etcd.stop();
    let started = Instant::now();
    loop {
        let answers = match connect_direct(primary_addr).await {
            Ok(mut conn) => matches!(
                tokio::time::timeout(Duration::from_millis(500), conn.query_drop("SELECT 1")).await,
                Ok(Ok(()))
            ),
            Err(_) => false,
        };
        if !answers {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the primary kept serving without a lease\n{}",
            h.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = std::fs::read_to_string(h.cluster.log_path(h.index(&state.primary))).unwrap();
    assert!(
        log.contains("fenced: server killed before the leader lease can expire"),
        "{}",
        h.logs()
    );

    // etcd returns with the old records: they give way to a new generation, the cluster
    // heals by itself and every acknowledged row is there.
    h.etcd.restart().expect("etcd restart");
    let started = Instant::now();
    while h
        .snapshot()
        .await
        .state
        .is_none_or(|(s, _)| s.generation <= state.generation)
    {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no new generation\n{}",
            h.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    h.wait_healthy(Duration::from_secs(120), None).await;
    let mut admin = connect(opts(h.endpoint_addr(), "paas", PASSWORD, None))
        .await
        .unwrap();
    let count: Option<i64> = admin
        .query_first("SELECT COUNT(*) FROM fence.kept")
        .await
        .unwrap();
    assert_eq!(count, Some(50));
    let write = admin.query_drop("INSERT INTO fence.kept VALUES (50)");
    tokio::time::timeout(Duration::from_secs(30), write)
        .await
        .unwrap_or_else(|_| panic!("writes hang after etcd returned\n{}", h.logs()))
        .expect("writes work again");
}
