//! Figures for paas-coord against a real single-member etcd on this machine: document
//! write latency, watch delivery latency, the lead of the leader's lost signal over
//! lease expiry, and election hand-over time after a leader crash.
//!
//! Run: `cargo bench -p paas-coord`. Prints figures; asserts nothing about speed.

use std::time::{Duration, Instant};

use paas_coord::Coord;
use paas_it::EtcdServer;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn summary(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let total: Duration = samples.iter().sum();
    println!(
        "{name}: n={} mean={:?} p50={:?} p99={:?} max={:?}",
        samples.len(),
        total / samples.len() as u32,
        percentile(&samples, 0.5),
        percentile(&samples, 0.99),
        samples.last().unwrap()
    );
}

#[tokio::main]
async fn main() {
    let mut etcd = EtcdServer::start().expect("etcd");
    let coord = Coord::connect(&[etcd.endpoint()], "bench", Duration::from_secs(5))
        .await
        .expect("connect");

    // Compare-and-set round trips.
    let mut rev = coord.create("counter", &0u64).await.unwrap();
    let mut cas = Vec::new();
    let started = Instant::now();
    for n in 1..=500u64 {
        let t = Instant::now();
        rev = coord.cas("counter", &n, rev).await.unwrap();
        cas.push(t.elapsed());
    }
    println!(
        "cas: {:.0} ops/s sequential",
        500.0 / started.elapsed().as_secs_f64()
    );
    summary("cas latency", cas);

    // Write -> watcher snapshot.
    let mut watch = coord.watch_service::<u64>("svc").await.unwrap();
    let mut delivery = Vec::new();
    for n in 0..200u64 {
        let t = Instant::now();
        coord
            .create(&format!("services/svc/i{n}"), &n)
            .await
            .unwrap();
        let key = format!("i{n}");
        while !watch.current().instances.contains_key(&key) {
            watch.changed().await.unwrap();
        }
        delivery.push(t.elapsed());
    }
    summary("write-to-snapshot", delivery);

    // Leader crash -> next candidate wins.
    let ttl = Duration::from_secs(2);
    let mut handover = Vec::new();
    for round in 0..3 {
        let election = format!("e{round}");
        let first = coord.campaign(&election, &"a", ttl).await.unwrap();
        let other = coord.clone();
        let name = election.clone();
        let waiting = tokio::spawn(async move { other.campaign(&name, &"b", ttl).await });
        tokio::time::sleep(Duration::from_millis(300)).await;
        let t = Instant::now();
        first.forget();
        let second = waiting.await.unwrap().unwrap();
        handover.push(t.elapsed());
        second.resign().await.unwrap();
    }
    summary(
        &format!("hand-over after leader crash (ttl {ttl:?})"),
        handover,
    );

    // etcd gone -> leader's lost signal, compared with when etcd could expire the lease.
    let leadership = coord.campaign("cut", &"a", ttl).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let t = Instant::now();
    etcd.stop();
    let reason = leadership.lost().await;
    println!(
        "lost signal {:?} after etcd stopped (ttl {ttl:?}; etcd could expire the lease no earlier than ttl after the last renewal was sent): {reason}",
        t.elapsed()
    );
}
