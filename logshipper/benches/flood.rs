//! Hostile-input memory bench: the aggregator's peak RSS under a flood of 16 MiB forward
//! frames and 1,000 slow connections, while another app's lines keep arriving.
//!
//! The aggregator (ingest, journal, store, persisting every second as the service does)
//! runs in this process; the attack runs in a child process (this binary re-executed with
//! `FLOOD_ROLE=attacker`), so the RSS printed is the aggregator's alone. The attack:
//! - `FLOOD_SLOW` (default 1000) connections each start a 16 MiB forward message and
//!   then trickle one byte every 500 ms (slowloris): each is closed at the whole-message
//!   deadline, whatever the trickle, and reconnects;
//! - `FLOOD_BIG` (default 8) connections send complete 16 MiB forward messages (one
//!   entry each) as fast as they are read.
//!
//! Meanwhile a well-behaved syslog client sends one line of app `calm` every 100 ms; the
//! bench prints how many arrived in the store and the largest gap between them.
//! Prints peak RSS (VmHWM) against the 256 MiB target, the budget's peak, and the
//! counters of closed and refused connections.
//!
//! Run: `cargo bench -p paas-logshipper --bench flood` (or `scripts/bench`).
//! Environment: `FLOOD_SECS` (default 30), `FLOOD_SLOW`, `FLOOD_BIG`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use paas_logshipper::aggregator::Aggregator;
use paas_logshipper::ingest::{Ingest, IngestConfig};
use paas_logshipper::journal::{Journal, JournalConfig};
use paas_logshipper::metrics::IngestMetrics;
use paas_logshipper::store::{Filter, Store, StoreConfig};
use prometheus_client::registry::Registry;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const FRAME: usize = 16 * 1024 * 1024;

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A memory figure from /proc/self/status, in MiB.
fn proc_status_mib(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kib| kib.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

/// A forward Message-mode value `["flood", 0, {"log": "x" * n}]` of about `total` bytes,
/// with a str32 header so its length is known from the first bytes.
fn big_message(total: usize) -> Vec<u8> {
    let text = total - 32;
    let mut m = vec![0x93, 0xa5];
    m.extend_from_slice(b"flood");
    m.push(0x00);
    m.push(0x81);
    m.push(0xa3);
    m.extend_from_slice(b"log");
    m.push(0xdb);
    m.extend_from_slice(&(text as u32).to_be_bytes());
    m.resize(m.len() + text, b'x');
    m
}

fn main() {
    if std::env::var("FLOOD_ROLE").as_deref() == Ok("attacker") {
        let addr: SocketAddr = std::env::var("FLOOD_ADDR").unwrap().parse().unwrap();
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
            .block_on(attack(addr));
        return;
    }
    // One worker thread, as `paas up` gives the aggregator on this 2-core machine.
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
        .block_on(defend());
}

async fn attack(addr: SocketAddr) {
    let slow = env_num("FLOOD_SLOW", 1000);
    let big = env_num("FLOOD_BIG", 8);
    let message = Arc::new(big_message(FRAME));
    for _ in 0..slow {
        let message = message.clone();
        tokio::spawn(async move {
            loop {
                let Ok(mut s) = TcpStream::connect(addr).await else {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                };
                // The header and a first slice, then one byte every 500 ms.
                if s.write_all(&message[..4096]).await.is_err() {
                    continue;
                }
                let mut at = 4096;
                while s.write_all(&message[at..at + 1]).await.is_ok() {
                    at += 1;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        });
    }
    for _ in 0..big {
        let message = message.clone();
        tokio::spawn(async move {
            loop {
                let Ok(mut s) = TcpStream::connect(addr).await else {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                };
                while s.write_all(&message).await.is_ok() {}
            }
        });
    }
    std::future::pending::<()>().await;
}

async fn defend() {
    let secs = env_num("FLOOD_SECS", 30);
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(dir.path().join("journal"), JournalConfig::default()).unwrap();
    let store = Arc::new(Store::open(StoreConfig::new(dir.path().join("store"))).unwrap());
    let mut registry = Registry::default();
    let metrics = IngestMetrics::register(&mut registry);
    let aggregator = Aggregator::new(journal, store.clone(), metrics);
    let (reader, _) = aggregator.recover_store().await.unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let persister = tokio::spawn(aggregator.clone().persist_every(
        reader,
        Duration::from_secs(1),
        stop.clone(),
    ));
    let local: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let config = IngestConfig {
        syslog_addr: Some(local),
        forward_addr: Some(local),
        ..IngestConfig::default()
    };
    let budget = config.buffer_budget;
    let ingest = Ingest::start(config, aggregator.clone()).await.unwrap();
    let forward = ingest.forward_addr().unwrap();
    let syslog = ingest.syslog_addr().unwrap();
    let baseline = proc_status_mib("VmRSS:");

    let mut attacker = std::process::Command::new(std::env::current_exe().unwrap())
        .env("FLOOD_ROLE", "attacker")
        .env("FLOOD_ADDR", forward.to_string())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();

    let sent = Arc::new(AtomicU64::new(0));
    let calm = {
        let sent = sent.clone();
        tokio::spawn(async move {
            let mut s = TcpStream::connect(syslog).await.unwrap();
            loop {
                let n = sent.load(Ordering::Relaxed) + 1;
                let msg = format!("<14>1 - calm-host calm web.1 stdout - line {n}");
                let frame = format!("{} {msg}", msg.len());
                if s.write_all(frame.as_bytes()).await.is_err() {
                    s = TcpStream::connect(syslog).await.unwrap();
                    continue;
                }
                sent.store(n, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };

    let started = Instant::now();
    let mut last_seen = (0usize, Instant::now());
    let mut largest_gap = Duration::ZERO;
    let mut peak_rss: f64 = 0.0;
    while started.elapsed() < Duration::from_secs(secs) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        peak_rss = peak_rss.max(proc_status_mib("VmRSS:"));
        let seen = store.tail("calm", usize::MAX, &Filter::default()).len();
        if seen > last_seen.0 {
            largest_gap = largest_gap.max(last_seen.1.elapsed());
            last_seen = (seen, Instant::now());
        }
    }
    largest_gap = largest_gap.max(last_seen.1.elapsed());
    let _ = attacker.kill();
    let _ = attacker.wait();
    calm.abort();
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    let closes: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("logshipper_parse_errors_total{") && !l.ends_with(" 0"))
        .collect();
    println!(
        "flood for {secs} s: {} slow connections + {} connections of 16 MiB forward messages",
        env_num("FLOOD_SLOW", 1000),
        env_num("FLOOD_BIG", 8)
    );
    println!(
        "aggregator RSS: {baseline:.1} MiB before, peak {peak_rss:.1} MiB sampled, VmHWM {:.1} MiB (target <= 256 MiB; buffer budget {} MiB)",
        proc_status_mib("VmHWM:"),
        budget >> 20
    );
    println!(
        "calm app: {} of {} lines stored, largest gap between arrivals {:.2} s",
        last_seen.0,
        sent.load(Ordering::Relaxed),
        largest_gap.as_secs_f64()
    );
    for line in closes {
        println!("  {line}");
    }
    ingest.shutdown().await;
    stop.cancel();
    persister.await.unwrap().unwrap();
}
