//! Fencing by the lease clock: when etcd becomes unreachable, the primary cannot renew
//! its lease and must stop PostgreSQL by itself before the lease could expire; when etcd
//! returns, the cluster recovers without manual steps and no acknowledged row is lost.

mod common;

use std::time::{Duration, Instant};

use common::{connect, connect_direct, endpoint_conninfo, Harness};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_that_cannot_renew_its_lease_stops_postgres() {
    let mut h = Harness::start(3).await;
    let state = h.wait_healthy(Duration::from_secs(90), None).await;
    let member = &h.cluster.members()[h.index(&state.primary)];
    let primary_addr = member.addr();
    common::create_kept(&h, 50).await;

    // etcd goes away: nobody can renew, nobody can be elected.
    h.etcd.stop();
    let started = Instant::now();
    loop {
        let accepts = match connect_direct(primary_addr).await {
            Ok(client) => matches!(
                tokio::time::timeout(Duration::from_millis(500), client.simple_query("SELECT 1"))
                    .await,
                Ok(Ok(_))
            ),
            Err(_) => false,
        };
        if !accepts {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the primary kept serving without a lease\n{}",
            h.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let fenced = std::fs::read_to_string(h.cluster.log_path(h.index(&state.primary))).unwrap();
    assert!(
        fenced.contains("fenced: server killed before the leader lease can expire"),
        "{}",
        h.logs()
    );

    // etcd returns: the cluster heals by itself and every acknowledged row is there.
    h.etcd.restart().expect("etcd restart");
    // etcd comes back with the old records (and their leases, renewed); they must give
    // way to a new generation led by a member whose PostgreSQL runs.
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
    let client = connect(&endpoint_conninfo(&h)).await.unwrap();
    let count: i64 = client
        .query_one("SELECT count(*) FROM kept", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 50);
    let write = client.execute("INSERT INTO kept VALUES (50)", &[]);
    tokio::time::timeout(Duration::from_secs(30), write)
        .await
        .unwrap_or_else(|_| panic!("writes hang after etcd returned\n{}", h.logs()))
        .expect("writes work again");
}
