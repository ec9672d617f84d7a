//! Service-watch snapshots are consistent: every snapshot a watcher publishes is
//! exactly what etcd held under the prefix at the snapshot's revision (checked with a
//! historical read), revisions never go backwards, and the last snapshot is the final
//! state. The writes mix leased registrations, plain documents and multi-key batches
//! (several events in one revision). A snapshot still holds (`still_held`) until a key
//! under its prefix is written or deleted.

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

/// Waits until the watch's current snapshot is tagged at least `revision`.
async fn tagged(watch: &paas_coord::DocWatch<u32>, revision: i64) -> paas_coord::Snapshot<u32> {
    tokio::time::timeout(PATIENCE, async {
        loop {
            let now = watch.current();
            if now.revision >= revision {
                return now;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the watch reached the revision")
}

#[tokio::test]
async fn a_snapshot_still_holds_until_its_prefix_changes() {
    let etcd = EtcdServer::start().expect("etcd");
    let coord = Coord::connect(&[etcd.endpoint()], "t", Duration::from_secs(5))
        .await
        .unwrap();
    coord.create("hosts/h1", &1u32).await.unwrap();
    coord.create("hosts/bad", &"not a number").await.unwrap();
    let first_rev = coord.create("formations/shop", &3u32).await.unwrap();
    let hosts = coord.watch_prefix::<u32>("hosts/").await.unwrap();
    let mut formations = coord.watch_prefix::<u32>("formations/").await.unwrap();
    let (h, f) = (hosts.current(), formations.current());
    assert_eq!(
        (h.docs.len(), h.keys),
        (1, 2),
        "an undecodable key still counts"
    );
    assert!(coord
        .still_held(&[h.held("hosts/"), f.held("formations/")], 0)
        .await
        .unwrap());

    // A host joins, then the formation changes: a view that has the second but not
    // the first never was. The old hosts snapshot no longer holds.
    let joined = coord.create("hosts/h2", &2u32).await.unwrap();
    let scaled = coord
        .cas("formations/shop", &4u32, first_rev)
        .await
        .unwrap();
    let f2 = tagged(&formations, scaled).await;
    assert!(!coord
        .still_held(&[h.held("hosts/"), f2.held("formations/")], 0)
        .await
        .unwrap());
    assert!(!coord.still_held(&[f.held("formations/")], 0).await.unwrap());
    let h2 = tagged(&hosts, joined).await;
    assert!(coord
        .still_held(&[h2.held("hosts/"), f2.held("formations/")], 0)
        .await
        .unwrap());

    // A value put again as it was moves the tag on without waking readers, so the
    // snapshot goes on holding.
    formations.changed().await.unwrap();
    let again = coord.cas("formations/shop", &4u32, scaled).await.unwrap();
    let f3 = tagged(&formations, again).await;
    assert_eq!(f3.docs, f2.docs);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), formations.changed())
            .await
            .is_err(),
        "an unchanged value woke the reader"
    );
    assert!(coord
        .still_held(&[f3.held("formations/")], 0)
        .await
        .unwrap());

    // Deletions count too: one host gone and another new in one batch, or one gone.
    let mut batch = Batch::new();
    batch.remove("hosts/h1").put("hosts/h3", &3u32).unwrap();
    let swapped = coord.commit(batch).await.unwrap();
    assert!(!coord.still_held(&[h2.held("hosts/")], 0).await.unwrap());
    let h4 = tagged(&hosts, swapped).await;
    assert!(coord.still_held(&[h4.held("hosts/")], 0).await.unwrap());
    // A member whose state is older than what the other watches showed cannot vouch.
    let newest = coord.revision().await.unwrap();
    assert!(coord
        .still_held(&[h4.held("hosts/")], newest)
        .await
        .unwrap());
    assert!(!coord
        .still_held(&[h4.held("hosts/")], newest + 1)
        .await
        .unwrap());
    let mut batch = Batch::new();
    batch.remove("hosts/h3");
    coord.commit(batch).await.unwrap();
    assert!(!coord.still_held(&[h4.held("hosts/")], 0).await.unwrap());

    // Lists read at one revision show the store as it was then.
    let then: Vec<(String, u32, i64)> = coord
        .list_decodable_at("hosts/", Some(joined))
        .await
        .unwrap();
    let names: Vec<&str> = then.iter().map(|(k, _, _)| k.as_str()).collect();
    assert_eq!(names, ["hosts/h1", "hosts/h2"]);
    assert!(coord.revision().await.unwrap() > swapped);
}
