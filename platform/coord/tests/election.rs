//! Leader election against a real etcd: one winner with a token, hand-over to a
//! strictly greater token when the winner dies, prompt loss signals.

use std::time::Duration;

use paas_coord::{Coord, LeadershipLost, LostReason};
use paas_it::EtcdServer;

/// Generous bound so a broken implementation fails instead of hanging; not a speed check.
const PATIENCE: Duration = Duration::from_secs(30);
const TTL: Duration = Duration::from_secs(2);

async fn connect(etcd: &EtcdServer) -> Coord {
    Coord::connect(&[etcd.endpoint()], "t", Duration::from_secs(5))
        .await
        .expect("connect")
}

#[tokio::test]
async fn crashed_leader_hands_over_to_a_strictly_greater_token() {
    let etcd = EtcdServer::start().expect("etcd");
    let (a, b, observer) = (
        connect(&etcd).await,
        connect(&etcd).await,
        connect(&etcd).await,
    );
    let leader = observer.observe_leader::<String>("sched").await.unwrap();
    assert!(leader.current().is_none());

    let first = a.campaign("sched", &"a".to_string(), TTL).await.unwrap();
    assert!(first.is_still_leader().await.unwrap());
    let second = tokio::spawn(async move { b.campaign("sched", &"b".to_string(), TTL).await });
    // b cannot win while a holds the key.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!second.is_finished());
    assert!(first.is_still_leader().await.unwrap());
    let seen = leader.current().expect("a leads");
    assert_eq!((seen.value.as_str(), seen.token), ("a", first.token()));

    let first_token = first.token();
    first.forget(); // crash: no resign, the lease runs out
    let second = tokio::time::timeout(PATIENCE, second)
        .await
        .expect("b wins after a's lease expires")
        .unwrap()
        .unwrap();
    assert!(
        second.token() > first_token,
        "{:?} <= {first_token:?}",
        second.token()
    );
    assert!(second.is_still_leader().await.unwrap());

    let mut rx = leader.subscribe();
    tokio::time::timeout(
        PATIENCE,
        rx.wait_for(|l| l.as_ref().is_some_and(|l| l.value == "b")),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(leader.current().unwrap().token, second.token());

    second.resign().await.unwrap();
    tokio::time::timeout(PATIENCE, rx.wait_for(Option::is_none))
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn resign_lets_the_next_candidate_win() {
    let etcd = EtcdServer::start().expect("etcd");
    let (a, b) = (connect(&etcd).await, connect(&etcd).await);
    let first = a
        .campaign("e", &1u32, Duration::from_secs(30))
        .await
        .unwrap();
    let waiting =
        tokio::spawn(async move { b.campaign("e", &2u32, Duration::from_secs(30)).await });
    let first_token = first.token();
    first.resign().await.unwrap();
    // With a 30 s TTL, only the resignation can have let b in within PATIENCE.
    let second = tokio::time::timeout(PATIENCE, waiting)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(second.token() > first_token);
}

#[tokio::test]
async fn deleting_the_leader_key_deposes_the_leader() {
    let etcd = EtcdServer::start().expect("etcd");
    let coord = connect(&etcd).await;
    let leadership = coord
        .campaign("e", &"x", Duration::from_secs(30))
        .await
        .unwrap();
    let out = std::process::Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args([
            "--endpoints",
            &etcd.endpoint(),
            "del",
            "t/elections/e/leader",
        ])
        .output()
        .expect("etcdctl");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1", "{out:?}");
    let reason = tokio::time::timeout(PATIENCE, leadership.lost())
        .await
        .unwrap();
    assert_eq!(reason, LeadershipLost::KeyGone);
    assert!(!leadership.is_still_leader().await.unwrap());
}

#[tokio::test]
async fn leader_cut_off_from_etcd_learns_it_lost() {
    let mut etcd = EtcdServer::start().expect("etcd");
    let coord = connect(&etcd).await;
    let leadership = coord.campaign("e", &"x", TTL).await.unwrap();
    etcd.stop();
    let reason = tokio::time::timeout(PATIENCE, leadership.lost())
        .await
        .unwrap();
    assert!(
        matches!(reason, LeadershipLost::Lease(LostReason::Unrenewed { .. })),
        "{reason:?}"
    );
    // Known locally: no request needed to answer.
    assert!(!leadership.is_still_leader().await.unwrap());
}
