//! `paas redis recover` against real servers: a group whose state document etcd lost
//! stays down (see `lost_state.rs`) until the recovery names the member with the most
//! data; then it serves again behind the same endpoint with every `WAIT`-confirmed write,
//! both members replicating, at a generation above the lost one.

mod common;

use std::time::{Duration, Instant};

use common::{connect, Harness};
use paas_redis::recover::{recover, RecoverError};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_restarts_a_group_that_lost_its_state_from_the_live_replica() {
    let h = Harness::start(2).await;
    let mut conn = connect(&h.url()).await.expect("connect");
    for i in 0..200 {
        let _: () = redis::cmd("SET")
            .arg(format!("k{i}"))
            .arg(i)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    let acked: i64 = redis::cmd("WAIT")
        .arg(1)
        .arg(2000)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(acked, 1);
    let before = h.wait_healthy(Duration::from_secs(30), None).await;

    // With its state in place the group has nothing to recover.
    match recover(&h.store, None).await {
        Err(RecoverError::Refused(reason)) => assert!(reason.contains("nothing to recover")),
        other => panic!("recovered a healthy group: {other:?}"),
    }

    let key = h.store.keys().state();
    let entry = h
        .store
        .coord()
        .entries(&key)
        .await
        .unwrap()
        .into_iter()
        .find(|e| e.key == key)
        .expect("state document");
    h.store
        .coord()
        .delete(&key, entry.mod_revision)
        .await
        .unwrap();

    // Wait until the primary released the key and both members refuse to bootstrap.
    let started = Instant::now();
    let replica = loop {
        let snapshot = h.snapshot().await;
        let refusing = snapshot.leader.is_none()
            && snapshot.members.len() == 2
            && snapshot
                .members
                .values()
                .all(|m| m.decision.contains("refusing to bootstrap"));
        let live = snapshot
            .members
            .values()
            .find(|m| m.running && m.role == paas_redis::cluster::Role::Replica)
            .map(|m| m.name.clone());
        if let (true, Some(replica)) = (refusing, live) {
            break replica;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "members do not refuse: {}\n{}",
            common::describe(&snapshot),
            h.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_ne!(replica, before.primary, "the old primary resigned");

    let done = recover(&h.store, None).await.expect("recover");
    assert!(
        done.starts_with(&format!("restarting the group from {replica} ")),
        "{done}"
    );
    assert!(
        done.contains(&format!("primary of generation {}", before.generation + 1)),
        "{done}"
    );
    // A second recovery finds the state written and does nothing.
    assert!(matches!(
        recover(&h.store, None).await,
        Err(RecoverError::Refused(_))
    ));

    let after = h.wait_healthy(Duration::from_secs(60), None).await;
    assert_eq!(after.primary, replica);
    assert!(after.generation > before.generation, "{after:?}");
    let mut conn = connect(&h.url()).await.expect("connect after recovery");
    for i in 0..200 {
        let v: Option<i64> = redis::cmd("GET")
            .arg(format!("k{i}"))
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(v, Some(i), "k{i} after recovery");
    }
    let _: () = redis::cmd("SET")
        .arg("after")
        .arg(1)
        .query_async(&mut conn)
        .await
        .unwrap();
    let acked: i64 = redis::cmd("WAIT")
        .arg(1)
        .arg(5000)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(acked, 1, "the old primary follows the new one");
}
