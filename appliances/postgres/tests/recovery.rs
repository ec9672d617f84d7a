//! Recovery without manual steps after every member failed, and the health API.

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::{connect, endpoint_conninfo, Harness};

/// `GET path` on host:port; returns the status code.
fn http_status(host: std::net::Ipv4Addr, port: u16, path: &str) -> u16 {
    let mut stream = std::net::TcpStream::connect((host, port)).expect("health API");
    write!(stream, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .expect("status line")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_recovers_when_the_primary_returns_after_everything_failed() {
    let mut h = Harness::start(3).await;
    let state = h.wait_healthy(Duration::from_secs(90), None).await;
    let (primary, sync) = (state.primary.clone(), state.sync.clone().expect("sync"));
    let async_member = h
        .cluster
        .members()
        .iter()
        .map(|m| m.name.clone())
        .find(|n| *n != primary && *n != sync)
        .unwrap();

    // Health API: the primary answers /primary, the standbys /replica, all /health.
    for member in h.cluster.members() {
        let is_primary = member.name == primary;
        let port = member.health_port;
        assert_eq!(
            http_status(member.host, port, "/primary"),
            if is_primary { 200 } else { 503 },
            "{} /primary",
            member.name
        );
        assert_eq!(
            http_status(member.host, port, "/replica"),
            if is_primary { 503 } else { 200 },
            "{} /replica",
            member.name
        );
        assert_eq!(
            http_status(member.host, port, "/health"),
            200,
            "{} /health",
            member.name
        );
    }

    common::create_kept(&h, 100).await;

    // Every supervisor dies at once (their PostgreSQL servers die with them).
    for i in 0..3 {
        h.cluster.signal(i, libc::SIGKILL);
    }
    // Only the async comes back: it must not lead, and it says why it waits.
    h.cluster.restart(h.index(&async_member)).unwrap();
    let started = Instant::now();
    let expected = format!("only primary {primary} or sync {sync} has every acknowledged write");
    loop {
        let snapshot = h.snapshot().await;
        let waiting = snapshot
            .members
            .get(&async_member)
            .is_some_and(|m| m.decision.contains(&expected));
        if waiting && snapshot.leader.is_none() {
            break;
        }
        assert!(
            snapshot
                .leader
                .as_ref()
                .is_none_or(|l| l.record.member != async_member),
            "the async must never lead: {}",
            common::describe(&snapshot)
        );
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "async did not explain its wait: {}\n{}",
            common::describe(&snapshot),
            h.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(h.snapshot().await.leader.is_none(), "the async took over");

    // The old primary returns: it takes the key back by itself, the async follows it and
    // becomes the sync; then the old sync returns and rejoins.
    h.cluster.restart(h.index(&primary)).unwrap();
    h.cluster.restart(h.index(&sync)).unwrap();
    let healed = h.wait_healthy(Duration::from_secs(90), None).await;
    assert_eq!(healed.primary, primary);
    assert!(healed.generation > state.generation);
    let client = connect(&endpoint_conninfo(&h)).await.unwrap();
    let count: i64 = client
        .query_one("SELECT count(*) FROM kept", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 100, "acknowledged rows lost");
    let write = client.execute("INSERT INTO kept VALUES (100)", &[]);
    tokio::time::timeout(Duration::from_secs(30), write)
        .await
        .unwrap_or_else(|_| panic!("the write after recovery hangs\n{}", h.logs()))
        .expect("writes work again");

    // `paas pg info` shows every member with its role and WAL position.
    let info = paas_postgres::info::ClusterInfo::read(&[h.etcd.endpoint()], "/paas/", "main")
        .await
        .unwrap();
    let text = info.render();
    assert!(text.contains(&format!("primary {primary}")), "{text}");
    assert_eq!(info.members.len(), 3, "{text}");
    assert!(info.members.iter().all(|m| m.wal_lsn.is_some()), "{text}");
}
