//! Leader election against a real etcd: a standby scheduler takes over when the leader's
//! task dies, and a deposed leader's lease no longer fences its writes.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::Utc;
use paas_controller::model::{App, Formation, Host, Job, Release};
use paas_scheduler::keys::Keys;
use paas_scheduler::lease::Lease;
use paas_scheduler::store::Store;
use paas_scheduler::{run, SchedulerConfig};
use tokio_util::sync::CancellationToken;

const PREFIX: &str = "t";

fn config(id: &str, endpoint: &str) -> SchedulerConfig {
    let mut cfg = SchedulerConfig::new(id, vec![endpoint.to_string()], PREFIX);
    cfg.lease_ttl = Duration::from_secs(2);
    cfg.interval = Duration::from_millis(100);
    cfg
}

async fn wait_for<F, Fut>(what: &str, limit: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while !f().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn leader(store: &Store, keys: &Keys) -> Option<String> {
    store.get::<String>(&keys.scheduler_leader()).await.unwrap()
}

async fn placements(store: &Store, keys: &Keys) -> Vec<Job> {
    let p: Vec<(String, Job)> = store.list(&keys.placements()).await.unwrap();
    p.into_iter().map(|(_, j)| j).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standby_takes_over_when_the_leader_dies() {
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let etcd = paas_it::EtcdServer::start().expect("etcd");
    let endpoint = etcd.endpoint();
    let store = Store::connect(std::slice::from_ref(&endpoint))
        .await
        .unwrap();
    let keys = Keys::new(PREFIX);

    // A registered host (on a lease, as an agent would) and an app wanting one web job.
    let host_lease = Lease::grant(store.client(), Duration::from_secs(10))
        .await
        .unwrap();
    let host = Host {
        id: "h1".into(),
        api_addr: "127.0.0.1:1".into(),
        job_ip: "127.0.0.1".into(),
        started_at: Utc::now(),
    };
    store
        .put(&keys.host("h1"), &host, Some(host_lease.id()))
        .await
        .unwrap();
    let app = App {
        name: "shop".into(),
        created_at: Utc::now(),
        release: 1,
    };
    store
        .put(&format!("{}shop", keys.apps()), &app, None)
        .await
        .unwrap();
    let release = Release {
        app: "shop".into(),
        version: 1,
        env: BTreeMap::new(),
        processes: BTreeMap::from([("web".to_string(), "sleep 1000".to_string())]),
        artifact: None,
        description: "test".into(),
        created_at: Utc::now(),
    };
    store
        .put(&keys.release("shop", 1), &release, None)
        .await
        .unwrap();
    let mut formation = Formation {
        app: "shop".into(),
        processes: BTreeMap::from([("web".to_string(), 1)]),
    };
    store
        .put(&keys.formation("shop"), &formation, None)
        .await
        .unwrap();

    let a = tokio::spawn(run(config("a", &endpoint), CancellationToken::new()));
    wait_for("a to lead", Duration::from_secs(10), || async {
        leader(&store, &keys).await.as_deref() == Some("a")
    })
    .await;
    let b_stop = CancellationToken::new();
    let b = tokio::spawn(run(config("b", &endpoint), b_stop.clone()));
    wait_for("a to place one job", Duration::from_secs(10), || async {
        placements(&store, &keys).await.len() == 1
    })
    .await;
    // b stands by: still one placement, a still leads.
    assert_eq!(leader(&store, &keys).await.as_deref(), Some("a"));

    // The leader dies without a goodbye: its lease must expire for b to win.
    let died = std::time::Instant::now();
    a.abort();
    let _ = a.await;
    wait_for("b to take over", Duration::from_secs(15), || async {
        leader(&store, &keys).await.as_deref() == Some("b")
    })
    .await;
    println!(
        "figure: leader death -> standby leads: {:?} (lease TTL 2 s)",
        died.elapsed()
    );
    formation.processes.insert("web".into(), 3);
    store
        .put(&keys.formation("shop"), &formation, None)
        .await
        .unwrap();
    wait_for("b to place three jobs", Duration::from_secs(10), || async {
        placements(&store, &keys).await.len() == 3
    })
    .await;

    // A clean shutdown releases leadership at once.
    b_stop.cancel();
    b.await.unwrap().unwrap();
    assert_eq!(leader(&store, &keys).await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fenced_writes_fail_without_the_leader_key() {
    let etcd = paas_it::EtcdServer::start().expect("etcd");
    let store = Store::connect(&[etcd.endpoint()]).await.unwrap();
    let keys = Keys::new(PREFIX);
    let mine = Lease::grant(store.client(), Duration::from_secs(10))
        .await
        .unwrap();
    let other = Lease::grant(store.client(), Duration::from_secs(10))
        .await
        .unwrap();
    let key = keys.scheduler_leader();
    assert!(store.create_leased(&key, &"me", mine.id()).await.unwrap());
    assert!(!store
        .create_leased(&key, &"other", other.id())
        .await
        .unwrap());
    let fence = paas_scheduler::store::Fence {
        key: key.clone(),
        lease: mine.id(),
    };
    assert!(store.put_fenced(&fence, "t/x", &1).await.unwrap());
    mine.revoke().await;
    assert!(!store.put_fenced(&fence, "t/y", &1).await.unwrap());
    assert_eq!(store.get::<i32>("t/y").await.unwrap(), None);
    assert_eq!(store.get::<i32>("t/x").await.unwrap(), Some(1));
}
