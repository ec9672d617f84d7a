//! Leased and leader-guarded batches against a real etcd: several keys on one lease
//! live and die together; a batch requiring a leadership commits while it leads and is
//! refused by etcd (nothing written) once another leadership holds the key.

use std::time::Duration;

use paas_coord::{Batch, Coord, CoordError};
use paas_it::EtcdServer;

const PATIENCE: Duration = Duration::from_secs(30);

async fn connect(etcd: &EtcdServer) -> Coord {
    Coord::connect(&[etcd.endpoint()], "t", Duration::from_secs(5))
        .await
        .expect("connect to etcd")
}

async fn value(coord: &Coord, key: &str) -> Option<String> {
    coord.get::<String>(key).await.unwrap().map(|(v, _)| v)
}

#[tokio::test]
async fn keys_on_one_lease_vanish_together() {
    let etcd = EtcdServer::start().expect("etcd");
    let coord = connect(&etcd).await;
    coord
        .create("job-status/j2", &"plain".to_string())
        .await
        .unwrap();
    coord
        .create("hosts/other", &"plain".to_string())
        .await
        .unwrap();

    let lease = coord.grant_lease(Duration::from_secs(30)).await.unwrap();
    let mut batch = Batch::new();
    batch
        .put_leased("hosts/h1", &"h1", &lease)
        .unwrap()
        .put_leased("job-status/j1", &"up", &lease)
        .unwrap()
        // An existing plain key is re-bound to the lease.
        .put_leased("job-status/j2", &"up", &lease)
        .unwrap()
        .remove("job-status/never-there");
    coord.commit(batch).await.unwrap();
    assert_eq!(value(&coord, "hosts/h1").await.as_deref(), Some("h1"));
    assert_eq!(value(&coord, "job-status/j2").await.as_deref(), Some("up"));

    // A later leased write on the same lease joins the set.
    let mut batch = Batch::new();
    batch
        .put_leased("services/web/j1", &"127.0.0.1:80", &lease)
        .unwrap();
    coord.commit(batch).await.unwrap();

    lease.revoke().await.unwrap();
    for key in [
        "hosts/h1",
        "job-status/j1",
        "job-status/j2",
        "services/web/j1",
    ] {
        assert_eq!(value(&coord, key).await, None, "{key} outlived its lease");
    }
    assert_eq!(value(&coord, "hosts/other").await.as_deref(), Some("plain"));

    // `remove` deletes whatever is there.
    let mut batch = Batch::new();
    batch.remove("hosts/other");
    coord.commit(batch).await.unwrap();
    assert_eq!(value(&coord, "hosts/other").await, None);
}

#[tokio::test]
async fn a_deposed_leaders_batch_is_refused() {
    let etcd = EtcdServer::start().expect("etcd");
    let (a, b) = (connect(&etcd).await, connect(&etcd).await);
    let first = a
        .campaign("sched", &"a", Duration::from_secs(30))
        .await
        .unwrap();
    let mut batch = Batch::new();
    batch
        .require_leadership(&first)
        .unwrap()
        .put("placements/h1/j1", &"web")
        .unwrap();
    a.commit(batch).await.unwrap();
    assert_eq!(value(&a, "placements/h1/j1").await.as_deref(), Some("web"));

    // Prepared while leading, committed after another leadership took the key.
    let mut late = Batch::new();
    late.require_leadership(&first)
        .unwrap()
        .put("placements/h1/j2", &"web")
        .unwrap()
        .remove("placements/h1/j1");
    let mut depose = Batch::new();
    depose.remove("elections/sched/leader");
    b.commit(depose).await.unwrap();
    let second = tokio::time::timeout(PATIENCE, b.campaign("sched", &"b", Duration::from_secs(30)))
        .await
        .expect("b wins the free key")
        .unwrap();
    match a.commit(late).await {
        Err(CoordError::Fenced { key }) => assert_eq!(key, "elections/sched/leader"),
        other => panic!("a deposed leader's batch was not fenced: {other:?}"),
    }
    assert_eq!(value(&a, "placements/h1/j2").await, None);
    assert_eq!(value(&a, "placements/h1/j1").await.as_deref(), Some("web"));

    // Once the old leadership knows it lost, building a guarded batch fails at once.
    tokio::time::timeout(PATIENCE, first.lost()).await.unwrap();
    assert!(matches!(
        Batch::new().require_leadership(&first),
        Err(CoordError::Fenced { .. })
    ));

    // The new leader's guarded batch goes through.
    let mut batch = Batch::new();
    batch
        .require_leadership(&second)
        .unwrap()
        .remove("placements/h1/j1");
    b.commit(batch).await.unwrap();
    assert_eq!(value(&b, "placements/h1/j1").await, None);
}
