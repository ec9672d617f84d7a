//! State documents against a real etcd: create/get/cas/delete/list, conflicts naming
//! the failing key, batches, namespaces.

use std::time::Duration;

use paas_coord::{Batch, Coord, CoordError};
use paas_it::EtcdServer;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct App {
    name: String,
    scale: u32,
}

fn app(name: &str, scale: u32) -> App {
    App {
        name: name.into(),
        scale,
    }
}

async fn connect(etcd: &EtcdServer, namespace: &str) -> Coord {
    Coord::connect(&[etcd.endpoint()], namespace, Duration::from_secs(5))
        .await
        .expect("connect to etcd")
}

fn conflict_on(err: &CoordError, expected: &str) -> bool {
    matches!(err, CoordError::Conflict { key } if key == expected)
}

fn not_found(err: &CoordError, expected: &str) -> bool {
    matches!(err, CoordError::NotFound { key } if key == expected)
}

#[tokio::test]
async fn create_get_cas_delete() {
    let etcd = EtcdServer::start().expect("etcd");
    let coord = connect(&etcd, "t").await;

    assert!(coord.get::<App>("apps/shop").await.unwrap().is_none());
    let created = coord.create("apps/shop", &app("shop", 1)).await.unwrap();
    let read = coord.get::<App>("apps/shop").await.unwrap().unwrap();
    assert_eq!(read, (app("shop", 1), created));

    let err = coord
        .create("apps/shop", &app("shop", 9))
        .await
        .unwrap_err();
    assert!(conflict_on(&err, "apps/shop"), "{err}");

    let updated = coord
        .cas("apps/shop", &app("shop", 2), created)
        .await
        .unwrap();
    assert!(updated > created);
    // A writer holding the old revision loses and changes nothing.
    let err = coord
        .cas("apps/shop", &app("shop", 7), created)
        .await
        .unwrap_err();
    assert!(conflict_on(&err, "apps/shop"), "{err}");
    let read = coord.get::<App>("apps/shop").await.unwrap().unwrap();
    assert_eq!(read, (app("shop", 2), updated));

    let err = coord.delete("apps/shop", created).await.unwrap_err();
    assert!(conflict_on(&err, "apps/shop"), "{err}");
    coord.delete("apps/shop", updated).await.unwrap();
    assert!(coord.get::<App>("apps/shop").await.unwrap().is_none());
    let err = coord.delete("apps/shop", updated).await.unwrap_err();
    assert!(not_found(&err, "apps/shop"), "{err}");
    // Gone since it was read: nothing is resurrected.
    let err = coord
        .cas("apps/shop", &app("shop", 3), updated)
        .await
        .unwrap_err();
    assert!(not_found(&err, "apps/shop"), "{err}");
    assert!(coord.get::<App>("apps/shop").await.unwrap().is_none());
}

#[tokio::test]
async fn concurrent_cas_has_exactly_one_winner() {
    let etcd = EtcdServer::start().expect("etcd");
    let coord = connect(&etcd, "t").await;
    let rev = coord.create("counter", &0u64).await.unwrap();
    let writers = (1..=8u64).map(|n| {
        let coord = coord.clone();
        tokio::spawn(async move { coord.cas("counter", &n, rev).await })
    });
    let results = futures::future::join_all(writers).await;
    let mut winners = Vec::new();
    for (n, result) in (1..=8u64).zip(results) {
        match result.expect("task") {
            Ok(_) => winners.push(n),
            Err(err) => assert!(conflict_on(&err, "counter"), "{err}"),
        }
    }
    assert_eq!(winners.len(), 1);
    let (stored, _) = coord.get::<u64>("counter").await.unwrap().unwrap();
    assert_eq!(stored, winners[0]);
}

#[tokio::test]
async fn batch_is_all_or_nothing_and_names_the_failing_key() {
    let etcd = EtcdServer::start().expect("etcd");
    let coord = connect(&etcd, "t").await;
    coord.create("app-names/blog", &"taken").await.unwrap();

    let mut batch = Batch::new();
    batch
        .create("apps/2", &app("blog", 1))
        .unwrap()
        .create("app-names/blog", &"2")
        .unwrap();
    let err = coord.commit(batch).await.unwrap_err();
    assert!(conflict_on(&err, "app-names/blog"), "{err}");
    assert!(
        coord.get::<App>("apps/2").await.unwrap().is_none(),
        "partial batch applied"
    );

    let mut batch = Batch::new();
    batch
        .create("apps/3", &app("shop", 1))
        .unwrap()
        .create("app-names/shop", &"3")
        .unwrap();
    let rev = coord.commit(batch).await.unwrap();
    let (_, app_rev) = coord.get::<App>("apps/3").await.unwrap().unwrap();
    let (_, name_rev) = coord
        .get::<String>("app-names/shop")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((app_rev, name_rev), (rev, rev));

    // A guard on an unchanged key passes; on a changed one it blocks the write.
    let mut batch = Batch::new();
    batch
        .require("apps/3", rev)
        .put("releases/3/1", &"v1")
        .unwrap();
    coord.commit(batch).await.unwrap();
    coord.cas("apps/3", &app("shop", 2), rev).await.unwrap();
    let mut batch = Batch::new();
    batch
        .put("releases/3/2", &"v2")
        .unwrap()
        .require("apps/3", rev);
    let err = coord.commit(batch).await.unwrap_err();
    assert!(conflict_on(&err, "apps/3"), "{err}");
    assert!(coord.get::<String>("releases/3/2").await.unwrap().is_none());
    let mut batch = Batch::new();
    batch.require_absent("apps/3");
    let err = coord.commit(batch).await.unwrap_err();
    assert!(conflict_on(&err, "apps/3"), "{err}");

    // Deletes with revision checks, atomically.
    let (_, app_rev) = coord.get::<App>("apps/3").await.unwrap().unwrap();
    let mut batch = Batch::new();
    batch.delete("apps/3", app_rev);
    for (key, _, rev) in coord.list::<String>("releases/3/").await.unwrap() {
        batch.delete(&key, rev);
    }
    coord.commit(batch).await.unwrap();
    assert!(coord
        .list::<String>("releases/3/")
        .await
        .unwrap()
        .is_empty());
    assert!(coord.get::<App>("apps/3").await.unwrap().is_none());
}

#[tokio::test]
async fn list_reads_a_prefix_inside_the_namespace_only() {
    let etcd = EtcdServer::start().expect("etcd");
    let a = connect(&etcd, "cluster-a").await;
    let b = connect(&etcd, "/cluster-b/").await;
    a.create("apps/x", &app("x", 1)).await.unwrap();
    a.create("apps/y", &app("y", 2)).await.unwrap();
    a.create("appsz", &app("not-in-prefix", 0)).await.unwrap();
    b.create("apps/x", &app("other-cluster", 5)).await.unwrap();

    let listed = a.list::<App>("apps/").await.unwrap();
    let names: Vec<(&str, &App)> = listed.iter().map(|(k, v, _)| (k.as_str(), v)).collect();
    assert_eq!(
        names,
        vec![("apps/x", &app("x", 1)), ("apps/y", &app("y", 2))]
    );
    for (key, _, rev) in &listed {
        assert_eq!(a.get::<App>(key).await.unwrap().unwrap().1, *rev);
    }
    let other = b.list::<App>("apps/").await.unwrap();
    assert_eq!(other.len(), 1);
    assert_eq!(other[0].1, app("other-cluster", 5));
}

#[tokio::test]
async fn undecodable_value_is_a_decode_error() {
    let etcd = EtcdServer::start().expect("etcd");
    let coord = connect(&etcd, "t").await;
    coord.create("apps/bad", &"just a string").await.unwrap();
    let err = coord.get::<App>("apps/bad").await.unwrap_err();
    assert!(
        matches!(err, CoordError::Decode { ref key, .. } if key == "apps/bad"),
        "{err}"
    );
}

#[tokio::test]
async fn connect_to_nothing_fails_within_the_timeout() {
    let port = paas_it::free_port().unwrap();
    let endpoint = format!("http://127.0.0.1:{port}");
    let err = Coord::connect(&[endpoint], "t", Duration::from_millis(500))
        .await
        .unwrap_err();
    assert!(matches!(err, CoordError::Unreachable { .. }), "{err}");
}
