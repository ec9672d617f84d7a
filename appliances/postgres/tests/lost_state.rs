//! A cluster whose records vanish from etcd (etcd data lost, another `--etcd`, an
//! operator deleting keys) never bootstraps over its data: the members stay down and
//! say why, no data directory is touched, and `recover` restarts the cluster from the
//! member with the most WAL with every acknowledged write.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{prepare_app_database, verify_acked, writer, Acked, Harness};
use paas_appliance::provider::Provider;
use paas_coord::Batch;

const MARKER: &str = "paas-test-marker";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_clusters_records_wipes_nothing_and_recover_brings_it_back() {
    let h = Harness::start(3).await;
    let url = prepare_app_database(&h).await;
    let acked = Arc::new(Mutex::new(Acked::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let w = tokio::spawn(writer(url.clone(), Arc::clone(&acked), Arc::clone(&stop)));
    common::wait_until("first writes", &h, Duration::from_secs(30), async || {
        acked.lock().unwrap().ids.len() > 20
    })
    .await;
    // A file in every data directory: initdb or a fresh clone would remove it.
    for m in h.cluster.members() {
        std::fs::write(m.dir.join("data").join(MARKER), "keep").unwrap();
    }

    // The cluster's whole prefix disappears, under the writer.
    let coord = h.store.coord().clone();
    let entries = coord.entries(h.keys.base()).await.unwrap();
    let mut batch = Batch::new();
    for e in &entries {
        batch.remove(&e.key);
    }
    coord.commit(batch).await.unwrap();

    // For 10 s: nobody bootstraps, every member says why it waits, nothing is wiped.
    let started = Instant::now();
    let mut waiting = false;
    while started.elapsed() < Duration::from_secs(10) {
        let snapshot = h.snapshot().await;
        assert!(
            snapshot.state.is_none(),
            "a member bootstrapped over data: {}",
            common::describe(&snapshot)
        );
        waiting = snapshot.members.len() == 3
            && snapshot
                .members
                .values()
                .all(|m| m.decision.contains("refusing to bootstrap"));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        waiting,
        "members do not say why they wait:\n{}",
        common::describe(&h.snapshot().await)
    );
    for m in h.cluster.members() {
        assert!(
            m.dir.join("data").join(MARKER).exists(),
            "{}'s data directory was wiped",
            m.name
        );
    }

    // The operator's recovery: from the member with the highest WAL position.
    let addr = h.endpoint_addr();
    let provider =
        paas_postgres::provision::PostgresProvider::new(paas_postgres::provision::ProviderConfig {
            host: addr.ip().to_string(),
            port: addr.port(),
            superuser_password: common::PASSWORD.into(),
            tls: None,
        })
        .with_status_from(vec![h.etcd.endpoint()], "/paas/", "main");
    let done = provider.recover(None).await.expect("recover");
    println!("{done}");
    assert!(done.contains("restarting the cluster from"), "{done}");
    assert!(
        provider.recover(None).await.is_err(),
        "a second recovery must be refused"
    );
    h.wait_healthy(Duration::from_secs(60), None).await;
    let before = acked.lock().unwrap().ids.len();
    common::wait_until(
        "writes after recovery",
        &h,
        Duration::from_secs(30),
        async || acked.lock().unwrap().ids.len() > before + 10,
    )
    .await;
    stop.store(true, Ordering::SeqCst);
    w.await.unwrap();
    let rows = verify_acked(&h, &url, &acked).await;
    println!("{rows} acknowledged rows all present after the records were deleted and recovered");
}
