//! Backups of a real Redis group (supervisors, redis-servers, the leader-following
//! endpoint, the provider's own `REDIS_URL`) through the provider's hooks into a local
//! directory store: roundtrip over every type, TTLs and several databases; damaged
//! objects and broken streams leaving the data unchanged; a backup taken under a writer
//! restoring every key whole; the S3 store (moto) cut off in the middle of a backup; a
//! removed group reinstated under its URL (as a whole-cluster restore does) taking its
//! backup.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use object_store::local::LocalFileSystem;
use paas_appliance::provider::{Options, Provider};
use paas_backups::{BackupError, Backups, Target, Trigger};
use paas_redis::provision::{ProviderConfig, RedisProvider};
use redis::aio::MultiplexedConnection;
use tokio::sync::watch;

use common::{reachable_tempdir, LocalRunner};

/// etcd, a provider over local groups, and one provisioned one-member group as a target.
struct Setup {
    target: Target,
    url: String,
    provider: Arc<RedisProvider>,
    _runner: Arc<LocalRunner>,
    _dir: tempfile::TempDir,
    _etcd: paas_it::EtcdServer,
}

impl Setup {
    async fn start() -> Setup {
        let etcd = paas_it::EtcdServer::start().expect("etcd");
        let dir = reachable_tempdir("paas-redis-backup");
        let coord =
            paas_coord::Coord::connect(&[etcd.endpoint()], "/paas/", Duration::from_secs(5))
                .await
                .unwrap();
        let runner = Arc::new(LocalRunner::new(coord.clone()));
        let provider = Arc::new(RedisProvider::new(
            ProviderConfig {
                base_dir: dir.path().to_path_buf(),
                etcd_endpoints: vec![etcd.endpoint()],
                prefix: "/paas/".into(),
                ttl_secs: 3,
                default_members: 1,
                ca_file: None,
            },
            runner.clone(),
            coord,
        ));
        let made = provider
            .provision("shop", "redis-aaaa", &Options::new())
            .await
            .expect("provision");
        let target = Target {
            app: "shop".into(),
            resource: "redis-aaaa".into(),
            kind: "redis".into(),
            data: made.data,
            provider: provider.clone(),
        };
        Setup {
            target,
            url: made.env["REDIS_URL"].clone(),
            provider,
            _runner: runner,
            _dir: dir,
            _etcd: etcd,
        }
    }

    async fn conn(&self, db: u32) -> MultiplexedConnection {
        let client = redis::Client::open(format!("{}/{db}", self.url)).unwrap();
        client.get_multiplexed_async_connection().await.unwrap()
    }

    /// Every key of every database with its DUMP payload and whether it has a TTL.
    async fn snapshot(&self) -> BTreeMap<(u32, Vec<u8>), (Vec<u8>, bool)> {
        let mut all = BTreeMap::new();
        for db in 0..16 {
            let mut c = self.conn(db).await;
            let keys: Vec<Vec<u8>> = redis::cmd("KEYS")
                .arg("*")
                .query_async(&mut c)
                .await
                .unwrap();
            for key in keys {
                let payload: Vec<u8> = redis::cmd("DUMP")
                    .arg(&key)
                    .query_async(&mut c)
                    .await
                    .unwrap();
                let pttl: i64 = redis::cmd("PTTL")
                    .arg(&key)
                    .query_async(&mut c)
                    .await
                    .unwrap();
                all.insert((db, key), (payload, pttl >= 0));
            }
        }
        all
    }

    async fn restore_hook(&self, source: paas_appliance::provider::RestoreSource<'_>) -> String {
        self.provider
            .restore("shop", "redis-aaaa", &self.target.data, source)
            .await
            .expect_err("the restore fails")
            .to_string()
    }
}

fn local_backups(dir: &std::path::Path) -> Backups {
    Backups::new(Arc::new(LocalFileSystem::new_with_prefix(dir).unwrap()))
}

async fn backup(backups: &Backups, target: &Target) -> paas_backups::Manifest {
    let (progress, _) = watch::channel(0);
    backups
        .create(target, Trigger::Manual, &progress)
        .await
        .expect("backup")
}

async fn fill(c: &mut MultiplexedConnection, keys: u32) {
    let mut pipe = redis::pipe();
    for i in 0..keys {
        pipe.cmd("SET")
            .arg(format!("k:{i}"))
            .arg(format!(
                "{:x}{:x}",
                (i as u64).wrapping_mul(0x9e3779b97f4a7c15),
                i as u64 * 31
            ))
            .ignore();
        if i % 1000 == 999 {
            pipe.query_async::<()>(c).await.unwrap();
            pipe.clear();
        }
    }
    pipe.query_async::<()>(c).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_and_restore_roundtrip() {
    let s = Setup::start().await;
    let dir = tempfile::tempdir().unwrap();
    let backups = local_backups(dir.path());
    let mut c = s.conn(0).await;
    fill(&mut c, 5_000).await;
    redis::pipe()
        .cmd("HSET")
        .arg("h")
        .arg("a")
        .arg(1)
        .arg("b")
        .arg(2)
        .ignore()
        .cmd("RPUSH")
        .arg("l")
        .arg("x")
        .arg("y")
        .ignore()
        .cmd("SADD")
        .arg("s")
        .arg("m")
        .ignore()
        .cmd("ZADD")
        .arg("z")
        .arg(1.5)
        .arg("m")
        .ignore()
        .cmd("XADD")
        .arg("x")
        .arg("*")
        .arg("f")
        .arg("v")
        .ignore()
        .cmd("SET")
        .arg("ttl")
        .arg("v")
        .arg("EX")
        .arg(3600)
        .ignore()
        .cmd("SET")
        .arg(b"bin\x00\xff")
        .arg(b"\x00\x01")
        .ignore()
        .query_async::<()>(&mut c)
        .await
        .unwrap();
    let mut db3 = s.conn(3).await;
    redis::cmd("SET")
        .arg("other")
        .arg("db")
        .query_async::<()>(&mut db3)
        .await
        .unwrap();
    let before = s.snapshot().await;
    assert_eq!(before.len(), 5_008);

    let m = backup(&backups, &s.target).await;
    assert_eq!(m.engine, "redis");
    assert_eq!(m.format, "paas redis dump v1");
    assert!(m.version.starts_with("Redis 7"), "{}", m.version);

    // Change everything: values, deletions, a new key, a new database.
    redis::pipe()
        .cmd("DEL")
        .arg("h")
        .arg("k:1")
        .ignore()
        .cmd("SET")
        .arg("k:2")
        .arg("changed")
        .ignore()
        .cmd("SET")
        .arg("new")
        .arg("1")
        .ignore()
        .cmd("PERSIST")
        .arg("ttl")
        .ignore()
        .query_async::<()>(&mut c)
        .await
        .unwrap();
    let mut db5 = s.conn(5).await;
    redis::cmd("SET")
        .arg("later")
        .arg("1")
        .query_async::<()>(&mut db5)
        .await
        .unwrap();
    assert_ne!(s.snapshot().await, before);

    backups.restore(&m, &s.target).await.expect("restore");
    assert_eq!(
        s.snapshot().await,
        before,
        "the dataset is the backup's, nothing else"
    );
    let pttl: i64 = redis::cmd("PTTL")
        .arg("ttl")
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(
        (3_500_000..=3_600_000).contains(&pttl),
        "the expiry kept its moment: {pttl}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_backups_and_broken_streams_change_nothing() {
    let s = Setup::start().await;
    let dir = tempfile::tempdir().unwrap();
    let backups = local_backups(dir.path());
    let mut c = s.conn(0).await;
    fill(&mut c, 3_000).await;
    let m = backup(&backups, &s.target).await;
    let path = dir.path().join("shop").join(&m.id).join("dump");
    let good = std::fs::read(&path).unwrap();
    redis::cmd("FLUSHDB")
        .query_async::<()>(&mut c)
        .await
        .unwrap();
    fill(&mut c, 10).await;
    let current = s.snapshot().await;

    let mut flipped = good.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x55;
    std::fs::write(&path, &flipped).unwrap();
    let err = backups.restore(&m, &s.target).await.expect_err("corrupted");
    assert!(matches!(err, BackupError::Damaged { .. }), "{err}");
    assert_eq!(s.snapshot().await, current);

    std::fs::write(&path, &good[..good.len() - 100]).unwrap();
    let err = backups.restore(&m, &s.target).await.expect_err("truncated");
    assert!(err.to_string().contains("nothing was changed"), "{err}");
    assert_eq!(s.snapshot().await, current);

    // The hook itself: a source failing before its end, a stream cut short, a damaged
    // record: each leaves the data as it was and no scratch database behind.
    let chunks = vec![
        Ok(bytes::Bytes::from(good[..good.len() - 1].to_vec())),
        Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "checksum mismatch",
        )),
    ];
    let mut source = tokio_util::io::StreamReader::new(futures::stream::iter(chunks));
    let err = s.restore_hook(&mut source).await;
    assert!(err.contains("nothing was restored"), "{err}");
    assert_eq!(s.snapshot().await, current);

    let err = s.restore_hook(&mut &good[..good.len() - 9]).await;
    assert!(err.contains("ends before its end record"), "{err}");
    assert_eq!(s.snapshot().await, current);

    let mut bad_payload = good.clone();
    let at = bad_payload.len() - 20;
    bad_payload[at] ^= 0xff;
    let err = s.restore_hook(&mut bad_payload.as_slice()).await;
    assert!(err.contains("nothing was restored"), "{err}");
    assert_eq!(s.snapshot().await, current);

    std::fs::write(&path, &good).unwrap();
    backups.restore(&m, &s.target).await.expect("restore");
    let n: u64 = redis::cmd("DBSIZE").query_async(&mut c).await.unwrap();
    assert_eq!(n, 3_000);
}

/// A whole-cluster restore's part: the group gone (stopped, its directory and records
/// deleted), `reinstate` starts it again under the recorded secret with its endpoint
/// where the URL says (refused, naming the address, while something else holds it),
/// and the backup loads into it: the same URL gives the same keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_group_comes_back_under_its_url_with_its_backup() {
    let s = Setup::start().await;
    let dir = tempfile::tempdir().unwrap();
    let backups = local_backups(dir.path());
    let mut c = s.conn(0).await;
    fill(&mut c, 2_000).await;
    let mut db2 = s.conn(2).await;
    redis::cmd("SET")
        .arg("other")
        .arg("db")
        .query_async::<()>(&mut db2)
        .await
        .unwrap();
    drop((c, db2));
    let before = s.snapshot().await;
    let m = backup(&backups, &s.target).await;
    let env = BTreeMap::from([("REDIS_URL".to_string(), s.url.clone())]);
    s.provider
        .deprovision("shop", "redis-aaaa", &s.target.data)
        .await
        .expect("deprovision");
    assert!(!s._dir.path().join("redisaaaa").exists());

    let endpoint = paas_redis::provision::parse_url(&s.url).unwrap().endpoint;
    let squatter = std::net::TcpListener::bind(endpoint).unwrap();
    let err = s
        .provider
        .reinstate("shop", "redis-aaaa", &env, &s.target.data)
        .await
        .expect_err("the endpoint's address is taken");
    assert!(err.to_string().contains(&endpoint.to_string()), "{err}");
    drop(squatter);

    s.provider
        .reinstate("shop", "redis-aaaa", &env, &s.target.data)
        .await
        .expect("reinstate");
    // Idempotent: the group runs, so a second call only waits for it.
    s.provider
        .reinstate("shop", "redis-aaaa", &env, &s.target.data)
        .await
        .expect("reinstate again");
    let mut c = s.conn(0).await;
    let n: u64 = redis::cmd("DBSIZE").query_async(&mut c).await.unwrap();
    assert_eq!(n, 0, "a reinstated group starts empty");
    backups.restore(&m, &s.target).await.expect("restore");
    assert_eq!(s.snapshot().await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_under_writes_restores_every_key_whole() {
    let s = Setup::start().await;
    let dir = tempfile::tempdir().unwrap();
    let backups = local_backups(dir.path());
    let mut c = s.conn(0).await;
    fill(&mut c, 50_000).await;
    let mut init = redis::pipe();
    for i in 0..100 {
        init.cmd("HSET").arg("accounts").arg(i).arg(1000).ignore();
    }
    init.query_async::<()>(&mut c).await.unwrap();

    // Transfers inside one hash (one key), and new keys w:0, w:1... in order.
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let mut w = s.conn(0).await;
    let writer = tokio::spawn({
        let (stop, written) = (stop.clone(), written.clone());
        async move {
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let (a, b, x) = (i * 7 % 100, i * 13 % 100, (i % 50 + 1) as i64);
                redis::pipe()
                    .atomic()
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
                    .cmd("SET")
                    .arg(format!("w:{i}"))
                    .arg(i)
                    .ignore()
                    .query_async::<()>(&mut w)
                    .await
                    .expect("write");
                i += 1;
                written.store(i, Ordering::SeqCst);
            }
        }
    });
    while written.load(Ordering::SeqCst) < 50 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let at_start = written.load(Ordering::SeqCst);
    let m = backup(&backups, &s.target).await;
    let at_end = written.load(Ordering::SeqCst);
    stop.store(true, Ordering::SeqCst);
    writer.await.unwrap();
    assert!(at_end > at_start, "writes ran during the backup");

    backups.restore(&m, &s.target).await.expect("restore");
    let balances: Vec<i64> = redis::cmd("HVALS")
        .arg("accounts")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(balances.len(), 100);
    assert_eq!(
        balances.iter().sum::<i64>(),
        100_000,
        "the hash was saved whole"
    );
    for i in 0..at_start {
        let v: Option<u64> = redis::cmd("GET")
            .arg(format!("w:{i}"))
            .query_async(&mut c)
            .await
            .unwrap();
        assert_eq!(v, Some(i), "w:{i} existed for the whole backup");
    }
    let n: u64 = redis::cmd("DBSIZE").query_async(&mut c).await.unwrap();
    assert!(
        (50_001 + at_start..=50_002 + at_end).contains(&n),
        "{n} keys, between {} and {}",
        50_001 + at_start,
        50_002 + at_end
    );
}

/// The S3 store (moto) cut off in the middle of an upload: the backup fails, is never
/// listed, its multipart upload is aborted once the store is back and nothing of it is
/// left; the next run succeeds and restores.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_cut_off_mid_backup() {
    let s3 = paas_it::S3Server::start().expect("moto");
    s3.create_bucket("backups").unwrap();
    // Cut once 7 MiB went to the store: the first 5 MiB part is in, the second is not.
    let proxy = paas_it::CutProxy::start(s3.port(), 7 * 1024 * 1024)
        .await
        .unwrap();
    let location = paas_backups::Location::parse("s3://backups/clusters/main").unwrap();
    let store = location
        .open(&paas_backups::location::S3Options {
            endpoint: Some(proxy.endpoint()),
            region: Some(s3.region().into()),
            access_key_id: Some(s3.access_key_id().into()),
            secret_access_key: Some(s3.secret_access_key().into()),
        })
        .unwrap();
    let backups = Backups::new(store).with_part_size(5 * 1024 * 1024);
    let s = Setup::start().await;
    let mut c = s.conn(0).await;
    fill(&mut c, 150_000).await;

    let (progress, _) = watch::channel(0);
    let err = backups
        .create(&s.target, Trigger::Schedule, &progress)
        .await
        .expect_err("the store went away");
    assert!(proxy.is_down(), "the cut happened");
    assert!(matches!(err, BackupError::Upload(_)), "{err}");
    assert!(
        s3.open_uploads("backups").unwrap() >= 1,
        "a multipart upload was under way when the store went away"
    );

    proxy.heal();
    assert!(backups.list("shop").await.unwrap().is_empty());
    paas_it::wait_for(
        "the failed upload to be aborted",
        Duration::from_secs(60),
        || async { s3.open_uploads("backups").unwrap() == 0 },
    )
    .await;
    assert!(s3.keys("backups").unwrap().is_empty());

    let sample = ["k:0", "k:77777", "k:149999"];
    let values = async |c: &mut MultiplexedConnection| -> (u64, Vec<String>) {
        let n: u64 = redis::cmd("DBSIZE").query_async(c).await.unwrap();
        let v: Vec<String> = redis::cmd("MGET")
            .arg(&sample)
            .query_async(c)
            .await
            .unwrap();
        (n, v)
    };
    let before = values(&mut c).await;
    assert_eq!(before.0, 150_000);
    let m = backups
        .create(&s.target, Trigger::Schedule, &progress)
        .await
        .expect("next backup");
    assert!(m.size > 7 * 1024 * 1024, "past the cut: {}", m.size);
    assert_eq!(backups.list("shop").await.unwrap(), vec![m.clone()]);
    redis::cmd("FLUSHDB")
        .query_async::<()>(&mut c)
        .await
        .unwrap();
    backups.restore(&m, &s.target).await.expect("restore");
    assert_eq!(values(&mut c).await, before);
}
