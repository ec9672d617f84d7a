//! The Redis appliance's figures: `resource add redis` latency until `REDIS_URL`
//! answers PING, RSS per idle group, and forced failovers of a two-member group under a
//! `WAIT 1` writer (kill -9 redis-server / kill -9 supervisor / SIGSTOP supervisor, in
//! turn): time until the first write is accepted by the new primary, median and max;
//! WAIT-confirmed writes lost (must be 0) and unconfirmed writes lost (reported).
//!
//! Usage: `redis_failover_bench [FAILOVERS=20] [GROUPS=10]` (build with
//! `cargo build -p paas-redis --bins --examples`; needs root for the `redis` OS user).

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use paas_appliance::provider::{Options, Provider};
use paas_redis::provision::{ProviderConfig, RedisProvider, ResourceData};

use common::{missing, reachable_tempdir, writer, Harness, LocalRunner, Written};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Resident set size of `pid` in KiB, from /proc.
fn rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Pids of the supervisors whose command line mentions `dir`.
fn supervisors_under(dir: &std::path::Path) -> Vec<i32> {
    let needle = dir.to_string_lossy().to_string();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(&needle))
                .unwrap_or(false)
        })
        .collect()
}

async fn provisioning(groups: usize) {
    let etcd = paas_it::EtcdServer::start().expect("etcd");
    let dir = reachable_tempdir("paas-redis-bench");
    let coord = paas_coord::Coord::connect(&[etcd.endpoint()], "/paas/", Duration::from_secs(5))
        .await
        .unwrap();
    let runner = Arc::new(LocalRunner::new(coord.clone()));
    let provider = RedisProvider::new(
        ProviderConfig {
            base_dir: dir.path().to_path_buf(),
            etcd_endpoints: vec![etcd.endpoint()],
            prefix: "/paas/".into(),
            ttl_secs: 3,
            default_members: 2,
            ca_file: None,
        },
        runner.clone(),
        coord,
    );
    let mut latencies = Vec::new();
    let mut resources = Vec::new();
    for i in 0..groups {
        let id = format!("redis-{i:010x}");
        let started = Instant::now();
        let r = provider
            .provision("bench", &id, &Options::new())
            .await
            .expect("provision");
        latencies.push(started.elapsed());
        resources.push((id, r));
    }
    latencies.sort();
    println!(
        "resource add redis (2 members) until REDIS_URL answers PING, {groups} groups: p50 {:?}, max {:?}",
        percentile(&latencies, 0.5),
        latencies.last().unwrap()
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut per_group = Vec::new();
    for (_, r) in &resources {
        let data: ResourceData = serde_json::from_value(r.data.clone()).unwrap();
        let mut redis_kib = 0;
        for m in 0..data.members {
            let pidfile = data.dir.join(format!("r{m}/redis.pid"));
            if let Some(pid) = std::fs::read_to_string(pidfile)
                .ok()
                .and_then(|t| t.trim().parse().ok())
            {
                redis_kib += rss_kib(pid);
            }
        }
        let supervisors_kib: u64 = supervisors_under(&data.dir).into_iter().map(rss_kib).sum();
        per_group.push((redis_kib, supervisors_kib));
    }
    let n = per_group.len() as u64;
    let redis: u64 = per_group.iter().map(|g| g.0).sum::<u64>() / n;
    let sup: u64 = per_group.iter().map(|g| g.1).sum::<u64>() / n;
    println!(
        "RSS per idle 2-member group (mean of {n}): {:.1} MiB = redis-servers {:.1} MiB + supervisors {:.1} MiB (leader-following endpoint not counted: a task in the platform process)",
        (redis + sup) as f64 / 1024.0,
        redis as f64 / 1024.0,
        sup as f64 / 1024.0
    );
    for (id, r) in &resources {
        provider
            .deprovision("bench", id, &r.data)
            .await
            .expect("deprovision");
    }
}

#[derive(Debug, Clone, Copy)]
enum Fault {
    KillRedis,
    KillSupervisor,
    StopSupervisor,
}

async fn failovers(count: usize) {
    // With a certificate, as `paas up` runs groups: replication, the supervisors' and
    // the writer's connections over verified TLS.
    let mut h = Harness::start_with(2, true).await;
    let written = Arc::new(Mutex::new(Written::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let task = tokio::spawn(writer(h.url(), written.clone(), stop.clone()));
    let faults = [
        Fault::KillRedis,
        Fault::KillSupervisor,
        Fault::StopSupervisor,
    ];
    let mut times: Vec<(Fault, Duration)> = Vec::new();
    for i in 0..count {
        let fault = faults[i % faults.len()];
        let state = h.wait_healthy(Duration::from_secs(60), None).await;
        let old = h.index(&state.primary);
        let old_port = h.group.members()[old].port;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let t0 = Instant::now();
        match fault {
            Fault::KillRedis => {
                let pid = h.redis_pid(old).expect("primary's redis pid");
                // SAFETY: kill(2) on a redis-server this bench's group started.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            Fault::KillSupervisor => {
                h.group.signal(old, libc::SIGKILL);
                h.group.restart(old).expect("restart");
            }
            Fault::StopSupervisor => {
                h.group.signal(old, libc::SIGSTOP);
                loop {
                    let s = h.snapshot().await;
                    if s.leader
                        .as_ref()
                        .is_some_and(|l| l.record.member != state.primary)
                    {
                        break;
                    }
                    assert!(t0.elapsed() < Duration::from_secs(30), "no failover");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                h.group.signal(old, libc::SIGCONT);
            }
        }
        h.wait_healthy(Duration::from_secs(60), Some(&state.primary))
            .await;
        let back = loop {
            if let Some(at) = written
                .lock()
                .unwrap()
                .first_accepted_elsewhere_after(t0, old_port)
            {
                break at;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "no write after {fault:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        println!(
            "failover {:>2} {fault:?}: writes accepted again after {:?}",
            i + 1,
            back - t0
        );
        times.push((fault, back - t0));
    }
    h.wait_healthy(Duration::from_secs(60), None).await;
    stop.store(true, Ordering::SeqCst);
    task.await.unwrap();
    let summary = |name: &str, mut d: Vec<Duration>| {
        if d.is_empty() {
            return;
        }
        d.sort();
        println!(
            "  {name:<15} n={:<2} median {:?}, max {:?}",
            d.len(),
            percentile(&d, 0.5),
            d.last().unwrap()
        );
    };
    println!("failover time until the first write is accepted by the new primary:");
    summary("all", times.iter().map(|t| t.1).collect());
    for f in faults {
        summary(
            &format!("{f:?}"),
            times
                .iter()
                .filter(|t| std::mem::discriminant(&t.0) == std::mem::discriminant(&f))
                .map(|t| t.1)
                .collect(),
        );
    }
    let w = std::mem::take(&mut *written.lock().unwrap());
    let lost_confirmed = missing(&h.url(), &w.confirmed).await;
    let lost_unconfirmed = missing(&h.url(), &w.unconfirmed).await;
    println!(
        "writes: {} WAIT-confirmed, {} of them lost; {} unconfirmed (WAIT returned 0 or failed), {} of them lost",
        w.confirmed.len(),
        lost_confirmed.len(),
        w.unconfirmed.len(),
        lost_unconfirmed.len()
    );
    assert!(lost_confirmed.is_empty(), "WAIT-confirmed writes lost");
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut args = std::env::args().skip(1);
    let count: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(20);
    let groups: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(10);
    provisioning(groups).await;
    failovers(count).await;
}
