//! Service-watch snapshots are consistent: every snapshot a watcher publishes is
//! exactly what etcd held under the prefix at the snapshot's revision (checked with a
//! historical read), revisions never go backwards, and the last snapshot is the final
//! state. The writes mix leased registrations, plain documents and multi-key batches
//! (several events in one revision).

use std::collections::BTreeMap;
use std::time::Duration;

use etcd_client::GetOptions;
use paas_coord::{Batch, Coord, ServiceSnapshot};
use paas_it::EtcdServer;

const PATIENCE: Duration = Duration::from_secs(30);

#[tokio::test]
async fn every_snapshot_equals_etcd_at_its_revision() {
    let etcd = EtcdServer::start().expect("etcd");
    let coord = Coord::connect(&[etcd.endpoint()], "t", Duration::from_secs(5))
        .await
        .unwrap();
    coord.create("services/svc/pre", &0u32).await.unwrap();
    let mut watch = coord.watch_service::<u32>("svc").await.unwrap();
    let first = watch.current();
    let collector = tokio::spawn(async move {
        let mut seen = vec![first];
        while !seen.last().unwrap().instances.contains_key("done") {
            seen.push(watch.changed().await.expect("watcher alive"));
        }
        seen
    });

    let mut registrations = Vec::new();
    for round in 0..10u32 {
        let id = format!("r{round}");
        registrations.push(
            coord
                .register("svc", &id, &round, Duration::from_secs(30))
                .await
                .unwrap(),
        );
        let doc = format!("services/svc/d{round}");
        let rev = coord.create(&doc, &round).await.unwrap();
        coord.cas(&doc, &(round + 100), rev).await.unwrap();
        if round % 3 == 0 {
            let mut batch = Batch::new();
            batch
                .put(&format!("services/svc/b{round}a"), &round)
                .unwrap()
                .put(&format!("services/svc/b{round}b"), &round)
                .unwrap()
                .delete(&doc, rev + 1);
            coord.commit(batch).await.unwrap();
        }
        if round % 2 == 1 {
            registrations.remove(0).deregister().await.unwrap();
        }
        registrations[0].update(&(round + 1000)).await.unwrap();
    }
    let final_rev = coord.create("services/svc/done", &0u32).await.unwrap();
    let snapshots: Vec<ServiceSnapshot<u32>> = tokio::time::timeout(PATIENCE, collector)
        .await
        .expect("watcher saw the end marker")
        .unwrap();

    let mut raw = etcd_client::Client::connect([etcd.endpoint()], None)
        .await
        .unwrap();
    let mut previous = 0;
    for snapshot in &snapshots {
        assert!(snapshot.revision >= previous, "revision went backwards");
        previous = snapshot.revision;
        let options = GetOptions::new()
            .with_prefix()
            .with_revision(snapshot.revision);
        let stored: BTreeMap<String, u32> = raw
            .get("t/services/svc/", Some(options))
            .await
            .unwrap()
            .kvs()
            .iter()
            .map(|kv| {
                let id = kv.key_str().unwrap().trim_start_matches("t/services/svc/");
                (id.to_string(), serde_json::from_slice(kv.value()).unwrap())
            })
            .collect();
        assert_eq!(
            snapshot.instances, stored,
            "at revision {}",
            snapshot.revision
        );
    }
    let last = snapshots.last().unwrap();
    assert!(last.revision >= final_rev);
    assert_eq!(
        last.instances.len(),
        coord.list::<u32>("services/svc/").await.unwrap().len()
    );
    println!("{} snapshots checked against etcd history", snapshots.len());
}

#[tokio::test]
async fn document_watch_follows_a_prefix_and_skips_bad_values() {
    let etcd = EtcdServer::start().expect("etcd");
    let coord = Coord::connect(&[etcd.endpoint()], "t", Duration::from_secs(5))
        .await
        .unwrap();
    coord.create("placements/h1/a", &1u32).await.unwrap();
    coord
        .create("placements/h1/bad", &"not a number")
        .await
        .unwrap();
    coord.create("placements/h2/x", &9u32).await.unwrap();
    let mut watch = coord.watch_prefix::<u32>("placements/h1/").await.unwrap();
    let first = watch.current();
    assert_eq!(first.docs, BTreeMap::from([("a".to_string(), 1u32)]));

    // The same bad value is left out of lists that must keep going, too.
    let listed: Vec<(String, u32, i64)> = coord.list_decodable("placements/h1/").await.unwrap();
    assert_eq!(
        listed
            .iter()
            .map(|(k, v, _)| (k.as_str(), *v))
            .collect::<Vec<_>>(),
        vec![("placements/h1/a", 1)]
    );
    assert!(coord.list::<u32>("placements/h1/").await.is_err());

    let rev = coord.create("placements/h1/b", &2u32).await.unwrap();
    let next = tokio::time::timeout(PATIENCE, watch.changed())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(next.revision, rev);
    assert_eq!(
        next.docs,
        BTreeMap::from([("a".to_string(), 1u32), ("b".to_string(), 2u32)])
    );

    // A change on another host's prefix is not seen; a batch shows up as one snapshot.
    coord.create("placements/h2/y", &9u32).await.unwrap();
    let mut batch = Batch::new();
    batch
        .remove("placements/h1/a")
        .put("placements/h1/c", &3u32)
        .unwrap();
    let rev = coord.commit(batch).await.unwrap();
    let next = tokio::time::timeout(PATIENCE, watch.changed())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(next.revision, rev);
    assert_eq!(
        next.docs,
        BTreeMap::from([("b".to_string(), 2u32), ("c".to_string(), 3u32)])
    );
}
