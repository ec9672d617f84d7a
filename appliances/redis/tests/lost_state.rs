//! A group whose state document vanishes from etcd (etcd data lost, another `--etcd`, an
//! operator deleting a key) never bootstraps over its data: the members stay down and
//! say why, and every write `WAIT` confirmed is still on the replica's disk and in its
//! memory.

mod common;

use std::time::{Duration, Instant};

use common::{connect, password, Harness};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_state_document_leaves_the_group_down_with_its_data() {
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
    let state = h.wait_healthy(Duration::from_secs(30), None).await;

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

    // Every member says it refuses to bootstrap; nobody writes a new state document.
    let started = Instant::now();
    loop {
        let snapshot = h.snapshot().await;
        assert!(
            snapshot.state.is_none(),
            "re-bootstrapped: {:?}",
            snapshot.state
        );
        let refusing = snapshot.members.len() == 2
            && snapshot
                .members
                .values()
                .all(|m| m.decision.contains("refusing to bootstrap"));
        if refusing && started.elapsed() > Duration::from_secs(5) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "members do not refuse: {}\n{}",
            common::describe(&snapshot),
            h.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for m in h.group.members() {
        assert!(
            paas_redis::server::has_data(&m.dir.join("data")),
            "{}'s data is gone",
            m.name
        );
    }
    // The former replica still serves every confirmed write (read-only).
    let replica = h
        .group
        .members()
        .iter()
        .find(|m| m.name != state.primary)
        .unwrap();
    let mut direct = connect(&format!(
        "redis://default:{}@{}/",
        password(),
        replica.addr()
    ))
    .await
    .expect("connect to the replica");
    for i in 0..200 {
        let v: Option<i64> = redis::cmd("GET")
            .arg(format!("k{i}"))
            .query_async(&mut direct)
            .await
            .unwrap();
        assert_eq!(v, Some(i));
    }
}
