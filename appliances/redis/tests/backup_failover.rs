//! Backups while the primary fails over, with real etcd, a three-member group of real
//! supervisors and redis-servers and the leader-following endpoint: the primary is
//! forced out (kill -9 of its redis-server, then of its supervisor, then SIGSTOP of its
//! supervisor, whose redis-server keeps serving the dump until the endpoint follows the
//! new leader) while `paas-backups` streams the provider's dump into a local store. The backup then either fails,
//! leaving nothing listed and no object behind, or completes with every key whole:
//! restored, the balances a writer moves inside one hash keep their sum, the writer's
//! sequence (a list it appends to in the same `MULTI`) has no gap or repeat, and it
//! holds every write `WAIT` confirmed before the backup started. After each failover a
//! backup through the same endpoint succeeds and restores with the same checks.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{connect, Harness, LocalRunner};
use object_store::local::LocalFileSystem;
use paas_backups::{Backups, Manifest, Target, Trigger};
use paas_redis::provision::{ProviderConfig, RedisProvider, ResourceData};
use tokio::sync::watch;

/// Fields of the `accounts` hash, and the sum of their balances.
const ACCOUNTS: i64 = 100;
const TOTAL: i64 = ACCOUNTS * 1000;

/// Filler keys: enough that the dump streams for a while (~7 MB).
const FILLER: u32 = 100_000;

/// Dumped bytes after which the primary is killed.
const KILL_AFTER: u64 = 1024 * 1024;

#[derive(Debug, Clone, Copy)]
enum Kill {
    /// kill -9 of the primary's server.
    Server,
    /// kill -9 of the primary's supervisor (its server dies with it).
    Supervisor,
    /// SIGSTOP of the primary's supervisor: its server keeps serving the dump until the
    /// endpoint follows the new leader.
    Freeze,
}

/// The provider over the harness's group, as the platform holds it, with the group as
/// a resource of app `shop`.
async fn target(h: &Harness) -> Target {
    let coord = paas_coord::Coord::connect(&[h.etcd.endpoint()], "/paas/", Duration::from_secs(5))
        .await
        .expect("etcd client");
    let provider = Arc::new(RedisProvider::new(
        ProviderConfig {
            base_dir: h.dir.path().to_path_buf(),
            etcd_endpoints: vec![h.etcd.endpoint()],
            prefix: "/paas/".into(),
            ttl_secs: 3,
            default_members: 3,
        },
        Arc::new(LocalRunner::new(coord.clone())),
        coord,
    ));
    let data = ResourceData {
        group: "g".into(),
        dir: h.dir.path().to_path_buf(),
        members: 3,
        url: Some(h.url()),
    };
    Target {
        app: "shop".into(),
        resource: "redis-g".into(),
        kind: "redis".into(),
        data: serde_json::to_value(data).unwrap(),
        provider,
    }
}

async fn fill(url: &str) {
    let mut c = connect(url).await.expect("connect");
    let mut pipe = redis::pipe();
    for i in 0..FILLER {
        pipe.cmd("SET")
            .arg(format!("k:{i}"))
            .arg(format!(
                "{:032x}",
                (i as u128).wrapping_mul(0x9e3779b97f4a7c15)
            ))
            .ignore();
        if i % 2000 == 1999 {
            pipe.query_async::<()>(&mut c).await.unwrap();
            pipe.clear();
        }
    }
    for i in 0..ACCOUNTS {
        pipe.cmd("HSET").arg("accounts").arg(i).arg(1000).ignore();
    }
    pipe.query_async::<()>(&mut c).await.unwrap();
}

/// Moves balances inside `accounts` and appends 0, 1, 2... to `log` (with `last`, its
/// newest element) in one `MULTI` each, until stopped; `confirmed` is one more than the
/// newest element `WAIT 1` confirmed. After an error it reconnects and continues after
/// the `last` the (new) primary has, so `log` never has a gap.
async fn writer(url: String, stop: Arc<AtomicBool>, confirmed: Arc<AtomicU64>) {
    while !stop.load(Ordering::SeqCst) {
        let Some(mut c) = connect(&url).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let last = tokio::time::timeout(
            Duration::from_secs(3),
            redis::cmd("GET")
                .arg("last")
                .query_async::<Option<u64>>(&mut c),
        )
        .await;
        let Ok(Ok(last)) = last else { continue };
        let mut next = last.map_or(0, |l| l + 1);
        while !stop.load(Ordering::SeqCst) {
            let (a, b, x) = (next * 7 % 100, next * 13 % 100, (next % 50 + 1) as i64);
            let mut pipe = redis::pipe();
            pipe.atomic()
                .cmd("HINCRBY")
                .arg("accounts")
                .arg(a)
                .arg(-x)
                .ignore()
                .cmd("HINCRBY")
                .arg("accounts")
                .arg(b)
                .arg(x)
                .ignore()
                .cmd("RPUSH")
                .arg("log")
                .arg(next)
                .ignore()
                .cmd("SET")
                .arg("last")
                .arg(next)
                .ignore();
            let wrote =
                tokio::time::timeout(Duration::from_secs(3), pipe.query_async::<()>(&mut c)).await;
            if !matches!(wrote, Ok(Ok(()))) {
                break;
            }
            let waited = tokio::time::timeout(
                Duration::from_secs(3),
                redis::cmd("WAIT")
                    .arg(1)
                    .arg(1000)
                    .query_async::<i64>(&mut c),
            )
            .await;
            match waited {
                Ok(Ok(n)) if n >= 1 => {
                    confirmed.fetch_max(next + 1, Ordering::SeqCst);
                }
                Ok(Ok(_)) => {}
                _ => break,
            }
            next += 1;
        }
    }
}

/// Restores `m` into the group (the writer has stopped) and checks it; returns the
/// length of the writer's sequence in it.
async fn check_restored(backups: &Backups, target: &Target, url: &str, m: &Manifest) -> u64 {
    backups.restore(m, target).await.expect("restore a backup");
    let mut c = connect(url).await.expect("connect");
    let balances: Vec<i64> = redis::cmd("HVALS")
        .arg("accounts")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(balances.len() as i64, ACCOUNTS);
    assert_eq!(balances.iter().sum::<i64>(), TOTAL, "the hash is whole");
    let log: Vec<u64> = redis::cmd("LRANGE")
        .arg("log")
        .arg(0)
        .arg(-1)
        .query_async(&mut c)
        .await
        .unwrap();
    let expected: Vec<u64> = (0..log.len() as u64).collect();
    assert!(
        log == expected,
        "the sequence has a gap or a repeat: {log:?}"
    );
    let filler: Vec<Vec<u8>> = redis::cmd("KEYS")
        .arg("k:*")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(filler.len() as u32, FILLER, "keys older than the backup");
    log.len() as u64
}

/// Files under `dir/app`, relative to `dir`, sorted.
fn objects(dir: &std::path::Path, app: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.join(app)];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backup_across_a_failover_fails_or_restores_every_key_whole() {
    let mut h = Harness::start(3).await;
    let url = h.url();
    let shop = target(&h).await;
    fill(&url).await;
    let store_dir = tempfile::tempdir().unwrap();
    let backups = Backups::new(Arc::new(
        LocalFileSystem::new_with_prefix(store_dir.path()).unwrap(),
    ));

    let stop = Arc::new(AtomicBool::new(false));
    let confirmed = Arc::new(AtomicU64::new(0));
    let writer_task = tokio::spawn(writer(url.clone(), stop.clone(), confirmed.clone()));

    // Every listed backup, with the writes confirmed when it started.
    let mut listed: Vec<(Manifest, u64)> = Vec::new();
    for (round, kill) in [Kill::Server, Kill::Supervisor, Kill::Freeze]
        .into_iter()
        .enumerate()
    {
        let state = h.wait_healthy(Duration::from_secs(60), None).await;
        let i = h.index(&state.primary);
        let before = confirmed.load(Ordering::SeqCst);
        paas_it::wait_for("writes flowing", Duration::from_secs(30), || async {
            confirmed.load(Ordering::SeqCst) >= before + 20
        })
        .await;
        let at_start = confirmed.load(Ordering::SeqCst);
        let (progress, mut seen) = watch::channel(0u64);
        let backup = {
            let (backups, shop) = (backups.clone(), shop.clone());
            tokio::spawn(async move { backups.create(&shop, Trigger::Manual, &progress).await })
        };
        let killed_at = seen
            .wait_for(|bytes| *bytes >= KILL_AFTER)
            .await
            .map(|b| *b);
        let t0 = Instant::now();
        match kill {
            Kill::Server => {
                let pid = h.redis_pid(i).expect("the primary's redis pid");
                // SAFETY: kill(2) on the primary redis-server of this test's group.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            Kill::Supervisor => h.group.signal(i, libc::SIGKILL),
            Kill::Freeze => h.group.signal(i, libc::SIGSTOP),
        }
        let result = backup.await.unwrap();
        let listed_manifests: Vec<Manifest> = listed.iter().map(|(m, _)| m.clone()).collect();
        match result {
            Err(e) => {
                println!(
                    "round {round} ({kill:?} after {killed_at:?} bytes): the backup failed after {:?}: {e}",
                    t0.elapsed()
                );
                assert_eq!(backups.list("shop").await.unwrap(), listed_manifests);
                let mut kept: Vec<String> = listed_manifests
                    .iter()
                    .flat_map(|m| {
                        [
                            format!("shop/{}/dump", m.id),
                            format!("shop/{}/manifest.json", m.id),
                        ]
                    })
                    .collect();
                kept.sort();
                paas_it::wait_for(
                    "the failed backup's objects to go",
                    Duration::from_secs(30),
                    || async { objects(store_dir.path(), "shop") == kept },
                )
                .await;
            }
            Ok(m) => {
                println!(
                    "round {round} ({kill:?} after {killed_at:?} bytes): the backup completed ({} bytes)",
                    m.size
                );
                listed.push((m, at_start));
            }
        }
        match kill {
            Kill::Server => {}
            Kill::Supervisor => h.group.restart(i).expect("restart the supervisor"),
            Kill::Freeze => {
                paas_it::wait_for(
                    "another member to lead",
                    Duration::from_secs(60),
                    || async {
                        h.snapshot()
                            .await
                            .leader
                            .is_some_and(|l| l.record.member != state.primary)
                    },
                )
                .await;
                h.group.signal(i, libc::SIGCONT);
            }
        }

        h.wait_healthy(Duration::from_secs(60), Some(&state.primary))
            .await;
        let at_start = confirmed.load(Ordering::SeqCst);
        let (progress, _) = watch::channel(0u64);
        let m = backups
            .create(&shop, Trigger::Manual, &progress)
            .await
            .expect("a backup after the failover");
        listed.push((m, at_start));
        let manifests: Vec<Manifest> = listed.iter().map(|(m, _)| m.clone()).collect();
        assert_eq!(backups.list("shop").await.unwrap(), manifests);
    }
    stop.store(true, Ordering::SeqCst);
    writer_task.await.unwrap();

    // Each backup restores whole, with every write confirmed before it started.
    for (m, at_start) in &listed {
        let n = check_restored(&backups, &shop, &url, m).await;
        println!("backup {}: {n} writes in sequence", m.id);
        assert!(
            n >= *at_start,
            "confirmed writes are in the backup: {n} < {at_start}"
        );
    }
}
