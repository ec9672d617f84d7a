//! Leased registrations and service watches against a real etcd: a crashed instance
//! disappears for watchers, updates keep the lease, and losing etcd is signalled.

use std::time::Duration;

use paas_coord::{Coord, CoordError, LeaseState, LostReason, ServiceWatch};
use paas_it::EtcdServer;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Instance {
    addr: String,
    role: String,
}

fn instance(addr: &str, role: &str) -> Instance {
    Instance {
        addr: addr.into(),
        role: role.into(),
    }
}

/// Generous bound so a broken implementation fails instead of hanging; not a speed check.
const PATIENCE: Duration = Duration::from_secs(30);

async fn connect(etcd: &EtcdServer) -> Coord {
    Coord::connect(&[etcd.endpoint()], "t", Duration::from_secs(5))
        .await
        .expect("connect")
}

/// Waits for a snapshot satisfying `done`, returning it.
async fn until<T: Clone>(
    watch: &mut ServiceWatch<T>,
    done: impl Fn(&std::collections::BTreeMap<String, T>) -> bool,
) -> paas_coord::ServiceSnapshot<T> {
    tokio::time::timeout(PATIENCE, async {
        let mut snapshot = watch.current();
        while !done(&snapshot.instances) {
            snapshot = watch.changed().await.expect("watcher alive");
        }
        snapshot
    })
    .await
    .expect("the expected snapshot never came")
}

#[tokio::test]
async fn crashed_instance_vanishes_and_watchers_see_it() {
    let etcd = EtcdServer::start().expect("etcd");
    let (a, b) = (connect(&etcd).await, connect(&etcd).await);
    let mut watch = b.watch_service::<Instance>("web").await.unwrap();
    assert!(watch.current().instances.is_empty());

    let crashing = a
        .register(
            "web",
            "w1",
            &instance("10.0.0.1:80", "web"),
            Duration::from_secs(2),
        )
        .await
        .unwrap();
    let staying = a
        .register(
            "web",
            "w2",
            &instance("10.0.0.2:80", "web"),
            Duration::from_secs(2),
        )
        .await
        .unwrap();
    let seen = until(&mut watch, |i| i.len() == 2).await;
    assert_eq!(seen.instances["w1"], instance("10.0.0.1:80", "web"));

    // Simulated crash: renewals stop, nothing is revoked.
    crashing.forget();
    let seen = until(&mut watch, |i| !i.contains_key("w1")).await;
    assert_eq!(seen.instances.keys().collect::<Vec<_>>(), vec!["w2"]);
    // The renewed one outlived several TTLs.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(watch.current().instances.contains_key("w2"));
    assert!(matches!(staying.lease().state(), LeaseState::Held { .. }));

    staying.deregister().await.unwrap();
    until(&mut watch, |i| i.is_empty()).await;
}

#[tokio::test]
async fn update_keeps_the_lease_and_fails_once_the_key_is_gone() {
    let etcd = EtcdServer::start().expect("etcd");
    let coord = connect(&etcd).await;
    let mut watch = coord.watch_service::<Instance>("pg").await.unwrap();
    let reg = coord
        .register(
            "pg",
            "pg-1",
            &instance("10.0.0.1:5432", "replica"),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    assert_eq!(reg.key(), "services/pg/pg-1");
    reg.update(&instance("10.0.0.1:5432", "primary"))
        .await
        .unwrap();
    let seen = until(&mut watch, |i| {
        i.get("pg-1").is_some_and(|v| v.role == "primary")
    })
    .await;
    assert_eq!(seen.instances.len(), 1);

    // The key is still bound to the same lease: revoking that lease from outside
    // (as etcd would on expiry) removes it.
    let out = std::process::Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", &etcd.endpoint(), "lease", "revoke"])
        .arg(format!("{:x}", reg.lease().id()))
        .output()
        .expect("etcdctl");
    assert!(out.status.success(), "{out:?}");
    until(&mut watch, |i| i.is_empty()).await;
    // The keeper notices on its next renewal; either way the update must not
    // resurrect the key.
    let err = reg
        .update(&instance("10.0.0.1:5432", "primary"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            CoordError::NotFound { .. } | CoordError::LeaseLost { .. }
        ),
        "{err}"
    );
    let reason = tokio::time::timeout(PATIENCE, reg.lease().lost())
        .await
        .unwrap();
    assert_eq!(reason, LostReason::Expired);
    assert!(coord
        .watch_service::<Instance>("pg")
        .await
        .unwrap()
        .current()
        .instances
        .is_empty());
}

#[tokio::test]
async fn losing_etcd_is_signalled_and_the_watch_recovers() {
    let mut etcd = EtcdServer::start().expect("etcd");
    let coord = connect(&etcd).await;
    let mut watch = coord.watch_service::<Instance>("api").await.unwrap();
    let reg = coord
        .register(
            "api",
            "a1",
            &instance("10.0.0.9:80", "api"),
            Duration::from_secs(2),
        )
        .await
        .unwrap();
    until(&mut watch, |i| i.contains_key("a1")).await;

    etcd.stop();
    let reason = tokio::time::timeout(PATIENCE, reg.lease().lost())
        .await
        .unwrap();
    assert!(matches!(reason, LostReason::Unrenewed { .. }), "{reason:?}");

    // etcd comes back with its data; the watcher re-lists and follows again.
    etcd.restart().expect("etcd restarts");
    let other = coord
        .register(
            "api",
            "a2",
            &instance("10.0.0.10:80", "api"),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    let seen = until(&mut watch, |i| i.contains_key("a2")).await;
    assert!(seen.instances.contains_key("a2"));
    drop(other);
}
