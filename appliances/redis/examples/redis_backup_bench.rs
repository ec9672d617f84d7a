//! Redis backup and restore throughput on a one-member group behind its endpoint:
//! `paas-backups` create (SCAN + DUMP as the app's user, streamed, hashed, uploaded to a
//! directory store) against the plain tool, `redis-cli --rdb` (the server's own RDB
//! snapshot, taken as the admin user, which the app's user may not) to a file, and
//! restore (checksum pass, load into a scratch database, swap). Rates are bytes of each
//! one's own output per second; the formats differ, so the seconds compare too.
//!
//! Usage: `redis_backup_bench [MIB=256]` (build with `cargo build --release -p
//! paas-redis --bins --examples`; needs root for the `redis` OS user).

#[path = "../tests/common/mod.rs"]
mod common;

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use paas_backups::{Backups, Target, Trigger};
use paas_redis::provision::{ProviderConfig, RedisProvider, ResourceData};

use common::{admin_password, Harness, LocalRunner};

const MIB: f64 = 1024.0 * 1024.0;

fn rate(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / MIB / secs
}

#[tokio::main]
async fn main() {
    let mib: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(256);
    let h = Harness::start(1).await;
    let coord = paas_coord::Coord::connect(&[h.etcd.endpoint()], "/paas/", Duration::from_secs(5))
        .await
        .unwrap();
    let provider = Arc::new(RedisProvider::new(
        ProviderConfig {
            base_dir: h.dir.path().to_path_buf(),
            etcd_endpoints: vec![h.etcd.endpoint()],
            prefix: "/paas/".into(),
            ttl_secs: 3,
            default_members: 1,
            ca_file: None,
        },
        Arc::new(LocalRunner::new(coord.clone())),
        coord,
    ));
    let data = ResourceData {
        group: "g".into(),
        dir: h.dir.path().to_path_buf(),
        members: 1,
        url: Some(h.url()),
    };
    let target = Target {
        app: "bench".into(),
        resource: "g".into(),
        kind: "redis".into(),
        data: serde_json::to_value(&data).unwrap(),
        provider,
    };

    // 100-byte values, written in pipelines of 10,000.
    let keys = mib * 1024 * 1024 / 100;
    let client = redis::Client::open(h.url()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let clock = Instant::now();
    let value = "v".repeat(100);
    let mut i = 0;
    while i < keys {
        let mut pipe = redis::pipe();
        for k in i..(i + 10_000).min(keys) {
            pipe.cmd("SET").arg(format!("key:{k}")).arg(&value).ignore();
        }
        pipe.query_async::<()>(&mut c).await.unwrap();
        i += 10_000;
    }
    let used: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(&mut c)
        .await
        .unwrap();
    let used = used
        .lines()
        .find_map(|l| l.strip_prefix("used_memory_human:"))
        .unwrap_or("?")
        .trim()
        .to_string();
    println!(
        "dataset: {keys} keys of 100 bytes, used_memory {used}, filled in {:.1} s",
        clock.elapsed().as_secs_f64()
    );

    let dir = tempfile::tempdir().unwrap();
    let rdb = dir.path().join("plain.rdb");
    let endpoint = h.endpoint.local_addr();
    let clock = Instant::now();
    let status = Command::new("redis-cli")
        .args([
            "-h",
            &endpoint.ip().to_string(),
            "-p",
            &endpoint.port().to_string(),
        ])
        .args([
            "--user",
            paas_redis::server::ADMIN_USER,
            "--no-auth-warning",
        ])
        .arg("--pass")
        .arg(admin_password())
        .arg("--rdb")
        .arg(&rdb)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let plain = clock.elapsed().as_secs_f64();
    let rdb_bytes = std::fs::metadata(&rdb).unwrap().len();

    let store = dir.path().join("store");
    std::fs::create_dir_all(&store).unwrap();
    let backups = Backups::new(
        // The store as `paas up` opens a directory store.
        paas_backups::Location::Dir(store.clone())
            .open(&paas_backups::location::S3Options::default())
            .unwrap(),
    );
    let (progress, _) = tokio::sync::watch::channel(0);
    let clock = Instant::now();
    let m = backups
        .create(&target, Trigger::Manual, &progress)
        .await
        .unwrap();
    let ours = clock.elapsed().as_secs_f64();
    println!(
        "backup: redis-cli --rdb FILE {:.1} MiB/s ({:.1} s, {rdb_bytes} bytes); paas backup create {:.1} MiB/s ({:.1} s, {} bytes); time ratio {:.2}x",
        rate(rdb_bytes, plain),
        plain,
        rate(m.size, ours),
        ours,
        m.size,
        plain / ours
    );

    let clock = Instant::now();
    backups.restore(&m, &target).await.unwrap();
    let ours = clock.elapsed().as_secs_f64();
    let n: u64 = redis::cmd("DBSIZE").query_async(&mut c).await.unwrap();
    assert_eq!(n, keys);
    println!(
        "restore: paas backup restore {:.1} MiB/s ({:.1} s, {:.0} keys/s)",
        rate(m.size, ours),
        ours,
        keys as f64 / ours
    );
}
