//! Failover and provisioning figures against real etcd and a real 3-member cluster.
//!
//! `pg_failover_bench [FAILOVERS] [PROVISIONS]` (defaults 20 and 100): forces FAILOVERS
//! failovers, rotating kill -9 of the primary's postmaster, kill -9 of its supervisor and
//! SIGSTOP of its supervisor, while a writer records every acknowledged insert and a
//! monitor probes all instances for a second writable one. Each failover is checked like
//! in the tests (writes resume through the same endpoint, the old primary rejoins as a
//! standby, every acknowledged row is present). Prints the failover time (kill to first
//! write acknowledged by the new primary: median, max) and `resource add` latency
//! (p50, p99). The members archive their WAL with pgBackRest as under `paas up`
//! (`PG_BENCH_ARCHIVE=off`: without, for a comparison). Run by `scripts/bench`; needs
//! the `paas-pg-supervisor` binary built next to it (`cargo build -p paas-postgres
//! --bins --examples`).

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{
    force_failover, monitor, prepare_app_database, writer, Acked, Harness, Kind, PASSWORD,
};
use paas_postgres::provision::{PostgresProvider, ProviderConfig};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() {
    let mut args = std::env::args().skip(1);
    let failovers: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(20);
    let provisions: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(100);

    let archive = std::env::var("PG_BENCH_ARCHIVE").map_or(true, |v| v != "off");
    println!(
        "archiving with pgBackRest: {}",
        if archive { "on" } else { "off" }
    );
    let mut h = Harness::start_with(3, |dir| {
        if archive {
            vec![
                "--archive-repo".into(),
                dir.join("repo").display().to_string(),
            ]
        } else {
            vec![]
        }
    })
    .await;
    let url = prepare_app_database(&h).await;
    let acked = Arc::new(Mutex::new(Acked::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let writer_task = tokio::spawn(writer(url.clone(), acked.clone(), stop.clone()));
    let ports = h
        .cluster
        .members()
        .iter()
        .map(|m| (m.name.clone(), m.addr()))
        .collect();
    let monitor_task = tokio::spawn(monitor(ports, stop.clone()));

    let kinds = [
        Kind::KillPostgres,
        Kind::KillSupervisor,
        Kind::FreezeSupervisor,
    ];
    let mut times = Vec::new();
    for n in 0..failovers {
        let kind = kinds[n % kinds.len()];
        let f = force_failover(&mut h, kind, &url, &acked).await;
        println!("failover {:>2} {kind:<16?} {} -> {} generation {:>2}: {:>6.2} s, {} acknowledged rows all present", n + 1, f.old, f.new, f.generation, f.took.as_secs_f64(), f.rows);
        times.push(f.took);
    }
    stop.store(true, Ordering::SeqCst);
    writer_task.await.expect("writer");
    let violations = monitor_task.await.expect("monitor");
    assert!(
        violations.is_empty(),
        "two writable instances: {violations:#?}"
    );

    let addr = h.endpoint_addr();
    let provider = PostgresProvider::new(ProviderConfig {
        host: addr.ip().to_string(),
        port: addr.port(),
        superuser_password: PASSWORD.into(),
        tls: None,
    });
    let mut latencies = Vec::new();
    let mut created = Vec::new();
    for n in 0..provisions {
        let started = Instant::now();
        let (_, data) = provider
            .provision_database("bench", &format!("r{n}"))
            .await
            .expect("provision");
        latencies.push(started.elapsed());
        created.push(data);
    }
    for data in &created {
        provider
            .deprovision_database(data)
            .await
            .expect("deprovision");
    }

    if !times.is_empty() {
        times.sort();
        println!(
            "failover over {} forced failovers: median {:.2} s, max {:.2} s (targets: median <= 5 s, max <= 10 s); no second writable instance seen",
            times.len(),
            percentile(&times, 50.0).as_secs_f64(),
            times.last().unwrap().as_secs_f64()
        );
    }
    if !latencies.is_empty() {
        latencies.sort();
        println!(
            "resource add (role + database, through the endpoint) over {}: p50 {:.1} ms, p99 {:.1} ms (target p50 <= 200 ms)",
            latencies.len(),
            percentile(&latencies, 50.0).as_secs_f64() * 1e3,
            percentile(&latencies, 99.0).as_secs_f64() * 1e3
        );
    }
}
