//! Leader election against a real etcd: a standby scheduler takes over when the leader
//! crashes (its runtime vanishes without a goodbye, so its lease must expire); a leader whose key is deleted behind its back stops, campaigns again and
//! leads with a greater fencing token; a clean shutdown releases leadership at once.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::Utc;
use paas_coord::{Batch, Coord, LeaderWatch, Lease};
use paas_it::{wait_for, Crashable};
use paas_model::keys::{self, SCHEDULER_ELECTION};
use paas_model::{App, Formation, Host, Job, Release};
use paas_scheduler::{run, SchedulerConfig};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

const PREFIX: &str = "t";

fn config(id: &str, endpoint: &str) -> SchedulerConfig {
    let mut cfg = SchedulerConfig::new(id, vec![endpoint.to_string()], PREFIX);
    cfg.lease_ttl = Duration::from_secs(2);
    cfg.interval = Duration::from_millis(100);
    cfg
}

async fn put<T: Serialize>(coord: &Coord, key: &str, value: &T) {
    let mut batch = Batch::new();
    batch.put(key, value).unwrap();
    coord.commit(batch).await.unwrap();
}

fn leader(leaders: &LeaderWatch<String>) -> Option<String> {
    leaders.current().map(|l| l.value)
}

async fn placements(coord: &Coord) -> Vec<Job> {
    let p: Vec<(String, Job, i64)> = coord.list(&keys::placements()).await.unwrap();
    p.into_iter().map(|(_, j, _)| j).collect()
}

/// Connects, registers host `h1` on a lease (as an agent would) and writes an app that
/// wants one web job.
async fn cluster(endpoint: &str) -> (Coord, Lease) {
    let coord = Coord::connect(&[endpoint], PREFIX, Duration::from_secs(5))
        .await
        .unwrap();
    let host_lease = coord.grant_lease(Duration::from_secs(10)).await.unwrap();
    let host = Host {
        id: "h1".into(),
        api_addr: "127.0.0.1:1".into(),
        job_ip: "127.0.0.1".into(),
        started_at: Utc::now(),
    };
    let mut batch = Batch::new();
    batch
        .put_leased(&keys::host("h1"), &host, &host_lease)
        .unwrap();
    coord.commit(batch).await.unwrap();
    let app = App {
        name: "shop".into(),
        created_at: Utc::now(),
        release: 1,
    };
    put(&coord, &keys::app("shop"), &app).await;
    let release = Release {
        app: "shop".into(),
        version: 1,
        env: BTreeMap::new(),
        processes: BTreeMap::from([("web".to_string(), "sleep 1000".to_string())]),
        artifact: None,
        description: "test".into(),
        created_at: Utc::now(),
    };
    put(&coord, &keys::release("shop", 1), &release).await;
    scale(&coord, 1).await;
    (coord, host_lease)
}

async fn scale(coord: &Coord, web: u32) {
    let formation = Formation {
        app: "shop".into(),
        processes: BTreeMap::from([("web".to_string(), web)]),
        limits: Default::default(),
    };
    put(coord, &keys::formation("shop"), &formation).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standby_takes_over_when_the_leader_dies() {
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let etcd = paas_it::EtcdServer::start().expect("etcd");
    let endpoint = etcd.endpoint();
    let (coord, _host_lease) = cluster(&endpoint).await;
    let leaders = coord
        .observe_leader::<String>(SCHEDULER_ELECTION)
        .await
        .unwrap();

    let mut a = Crashable::new();
    a.spawn(run(config("a", &endpoint), CancellationToken::new()));
    wait_for("a to lead", Duration::from_secs(10), || async {
        leader(&leaders).as_deref() == Some("a")
    })
    .await;
    let b_stop = CancellationToken::new();
    let b = tokio::spawn(run(config("b", &endpoint), b_stop.clone()));
    wait_for("a to place one job", Duration::from_secs(10), || async {
        placements(&coord).await.len() == 1
    })
    .await;
    // b stands by: still one placement, a still leads.
    assert_eq!(leader(&leaders).as_deref(), Some("a"));

    // The leader crashes: nothing revokes its lease, which must expire for b to win.
    let died = std::time::Instant::now();
    a.crash();
    wait_for("b to take over", Duration::from_secs(15), || async {
        leader(&leaders).as_deref() == Some("b")
    })
    .await;
    println!(
        "figure: leader crash -> standby leads: {:?} (lease TTL 2 s)",
        died.elapsed()
    );
    let scaled = std::time::Instant::now();
    scale(&coord, 3).await;
    wait_for("b to place three jobs", Duration::from_secs(10), || async {
        placements(&coord).await.len() == 3
    })
    .await;
    println!(
        "figure: formation 1 -> 3 written -> placements written: {:?} (tick interval 100 ms)",
        scaled.elapsed()
    );

    // A clean shutdown releases leadership at once.
    b_stop.cancel();
    b.await.unwrap().unwrap();
    let current: Option<(String, i64)> = coord.get(&keys::scheduler_leader()).await.unwrap();
    assert_eq!(current, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_key_is_deleted_campaigns_again() {
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let etcd = paas_it::EtcdServer::start().expect("etcd");
    let endpoint = etcd.endpoint();
    let (coord, _host_lease) = cluster(&endpoint).await;
    let leaders = coord
        .observe_leader::<String>(SCHEDULER_ELECTION)
        .await
        .unwrap();
    let stop = CancellationToken::new();
    let a = tokio::spawn(run(config("a", &endpoint), stop.clone()));
    wait_for("a to place one job", Duration::from_secs(10), || async {
        placements(&coord).await.len() == 1
    })
    .await;
    let first = leaders.current().expect("a leads").token;

    let mut batch = Batch::new();
    batch.remove(&keys::scheduler_leader());
    coord.commit(batch).await.unwrap();
    wait_for("a to lead again", Duration::from_secs(10), || async {
        leaders.current().is_some_and(|l| l.token > first)
    })
    .await;
    // The new term keeps reconciling.
    scale(&coord, 2).await;
    wait_for("two placements", Duration::from_secs(10), || async {
        placements(&coord).await.len() == 2
    })
    .await;
    stop.cancel();
    a.await.unwrap().unwrap();
}
