//! Backups while the primary fails over, with real etcd, three real supervisor processes
//! and real MariaDB 10.11 behind the leader-following endpoint: the primary is forced out
//! (kill -9 of its mariadbd, then of its supervisor, then SIGSTOP of its supervisor, whose
//! mariadbd keeps serving the dump until the endpoint follows the new leader) while
//! `paas-backups` streams the dump into a local store. The backup then either fails, leaving nothing listed and no
//! object behind, or completes with one snapshot's contents: restored into another
//! database, the transfers a writer made meanwhile keep the balances' sum and the
//! ledger agrees with the transfer counter (a dump mixing two servers or two moments
//! breaks one of those). After each failover a backup through the same endpoint
//! succeeds and restores just as consistently.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{connect, server_pid, url_opts, Harness};
use mysql_async::prelude::Queryable;
use object_store::local::LocalFileSystem;
use paas_backups::{Backups, Manifest, Target, Trigger};
use paas_mysql::provision::MysqlProvider;
use tokio::sync::watch;

/// Accounts and the sum of their balances.
const ACCOUNTS: i64 = 100;
const TOTAL: i64 = ACCOUNTS * 1000;

/// Filler rows, dumped between `accounts` and `ledger` (tables dump in name order), so
/// a kill during the filler falls between the two halves of the invariant.
const FILLER_ROWS: u32 = 100_000;

/// Dumped bytes after which the primary is killed.
const KILL_AFTER: u64 = 2 * 1024 * 1024;

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

/// Provisions the app database `(app, id)` and returns it as a backup target with its
/// `DATABASE_URL`.
async fn target(provider: &Arc<MysqlProvider>, app: &str, id: &str) -> (Target, String) {
    let (env, data) = provider
        .provision_database(app, id)
        .await
        .expect("provision");
    let target = Target {
        app: app.into(),
        resource: id.into(),
        kind: "mysql".into(),
        data: serde_json::to_value(data).unwrap(),
        provider: provider.clone(),
    };
    (target, env["DATABASE_URL"].clone())
}

async fn schema(url: &str) -> Result<(), String> {
    let mut c = connect(url_opts(url)).await?;
    c.query_drop(format!(
        "CREATE TABLE accounts (id INT PRIMARY KEY, balance BIGINT NOT NULL) ENGINE=InnoDB;
         CREATE TABLE filler (id INT PRIMARY KEY, note TEXT NOT NULL) ENGINE=InnoDB;
         CREATE TABLE ledger (id BIGINT AUTO_INCREMENT PRIMARY KEY, amount BIGINT NOT NULL) ENGINE=InnoDB;
         CREATE TABLE meta (k VARCHAR(16) PRIMARY KEY, v BIGINT NOT NULL) ENGINE=InnoDB;
         INSERT INTO meta VALUES ('transfers', 0);
         INSERT INTO accounts SELECT seq, 1000 FROM seq_1_to_{ACCOUNTS};"
    ))
    .await
    .map_err(|e| e.to_string())?;
    // The filler in transactions of 20,000 rows (~2 MB each to the replicas).
    for from in (1..=FILLER_ROWS).step_by(20_000) {
        let to = (from + 19_999).min(FILLER_ROWS);
        c.query_drop(format!(
            "INSERT INTO filler SELECT seq, CONCAT(MD5(seq), MD5(seq * 7), MD5(seq * 13))
               FROM seq_{from}_to_{to}"
        ))
        .await
        .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Transfers between accounts through `url` until stopped, reconnecting after errors;
/// `done` counts the acknowledged ones.
async fn transfers(url: String, stop: Arc<AtomicBool>, done: Arc<AtomicU64>) {
    let mut i = 0u64;
    while !stop.load(Ordering::SeqCst) {
        let Ok(mut c) = connect(url_opts(&url)).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        while !stop.load(Ordering::SeqCst) {
            i += 1;
            let (a, b, x) = (i * 7 % 100 + 1, i * 13 % 100 + 1, i % 50 + 1);
            let sql = format!(
                "START TRANSACTION;
                 UPDATE accounts SET balance = balance - {x} WHERE id = {a};
                 UPDATE accounts SET balance = balance + {x} WHERE id = {b};
                 INSERT INTO ledger (amount) VALUES ({x});
                 UPDATE meta SET v = v + 1 WHERE k = 'transfers';
                 COMMIT;"
            );
            match tokio::time::timeout(Duration::from_secs(20), c.query_drop(sql)).await {
                Ok(Ok(())) => {
                    done.fetch_add(1, Ordering::SeqCst);
                }
                _ => break,
            }
        }
    }
}

/// Restores `m` into a fresh database and checks the invariants there; returns the
/// number of transfers the backup holds.
async fn check_restored(
    backups: &Backups,
    provider: &Arc<MysqlProvider>,
    m: &Manifest,
    scratch_id: &str,
) -> i64 {
    let (into, url) = target(provider, "check", scratch_id).await;
    backups.restore(m, &into).await.expect("restore a backup");
    let mut c = connect(url_opts(&url)).await.expect("connect to the copy");
    let (sum, n): (i64, i64) = c
        .query_first("SELECT CAST(SUM(balance) AS SIGNED), COUNT(*) FROM accounts")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((sum, n), (TOTAL, ACCOUNTS), "the balances keep their sum");
    let (ledger, moved): (i64, i64) = c
        .query_first("SELECT COUNT(*), (SELECT v FROM meta WHERE k = 'transfers') FROM ledger")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ledger, moved, "the ledger and the counter agree");
    let filler: Option<i64> = c.query_first("SELECT COUNT(*) FROM filler").await.unwrap();
    assert_eq!(filler, Some(FILLER_ROWS as i64));
    moved
}

/// The objects under the store's directory for `app`, as relative paths.
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
async fn a_backup_across_a_failover_fails_or_restores_consistently() {
    let mut h = Harness::start(3).await;
    let provider = Arc::new(h.provider());
    let (shop, url) = target(&provider, "shop", "r1").await;
    if let Err(e) = schema(&url).await {
        panic!(
            "schema: {e}\n{}\n{}",
            common::describe(&h.snapshot().await),
            h.logs()
        );
    }
    let store_dir = tempfile::tempdir().unwrap();
    let backups = Backups::new(Arc::new(
        LocalFileSystem::new_with_prefix(store_dir.path()).unwrap(),
    ));

    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let writer = tokio::spawn(transfers(url.clone(), stop.clone(), done.clone()));

    let mut listed = Vec::new();
    for (round, kill) in [Kill::Server, Kill::Supervisor, Kill::Freeze]
        .into_iter()
        .enumerate()
    {
        let state = h.wait_healthy(Duration::from_secs(120), None).await;
        let i = h.index(&state.primary);
        let before = done.load(Ordering::SeqCst);
        paas_it::wait_for("transfers flowing", Duration::from_secs(30), || async {
            done.load(Ordering::SeqCst) >= before + 20
        })
        .await;
        let at_start = done.load(Ordering::SeqCst);
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
                let pid = server_pid(&h.cluster.members()[i].dir).expect("mysqld.pid");
                // SAFETY: kill(2) on the primary mariadbd of this test's cluster.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            Kill::Supervisor => h.cluster.signal(i, libc::SIGKILL),
            Kill::Freeze => h.cluster.signal(i, libc::SIGSTOP),
        }
        let result = backup.await.unwrap();
        let at_end = done.load(Ordering::SeqCst);
        match &result {
            Err(e) => {
                println!(
                    "round {round} ({kill:?} after {killed_at:?} bytes): the backup failed after {:?}: {e}",
                    t0.elapsed()
                );
                // Nothing listed, and the aborted upload leaves no object behind.
                assert_eq!(backups.list("shop").await.unwrap(), listed);
                let kept: Vec<String> = listed
                    .iter()
                    .flat_map(|m: &Manifest| {
                        [
                            format!("shop/{}/dump", m.id),
                            format!("shop/{}/manifest.json", m.id),
                        ]
                    })
                    .collect();
                paas_it::wait_for(
                    "the failed backup's objects to go",
                    Duration::from_secs(30),
                    || async {
                        let mut expected = kept.clone();
                        expected.sort();
                        objects(store_dir.path(), "shop") == expected
                    },
                )
                .await;
            }
            Ok(m) => {
                println!(
                    "round {round} ({kill:?} after {killed_at:?} bytes): the backup completed ({} bytes)",
                    m.size
                );
                listed.push(m.clone());
            }
        }
        match kill {
            Kill::Server => {}
            Kill::Supervisor => h.cluster.restart(i).expect("restart the supervisor"),
            Kill::Freeze => {
                paas_it::wait_for(
                    "another member to lead",
                    Duration::from_secs(120),
                    || async {
                        h.snapshot()
                            .await
                            .leader
                            .is_some_and(|l| l.record.member != state.primary)
                    },
                )
                .await;
                h.cluster.signal(i, libc::SIGCONT);
            }
        }

        // After the failover, through the same endpoint: a backup succeeds and holds
        // one moment's transfers, including those acknowledged before the failover.
        h.wait_healthy(Duration::from_secs(120), Some(&state.primary))
            .await;
        // A completed backup is checked once the cluster is whole again (a restore
        // through the endpoint during the failover would fail like the dump).
        if let Ok(m) = &result {
            let moved = check_restored(&backups, &provider, m, &format!("c{round}a")).await;
            println!("round {round}: the backup restores consistently with {moved} transfers");
            // Each failover may commit one transfer whose acknowledgement was lost.
            let unacknowledged = round as i64 + 1;
            assert!(
                (at_start as i64..=at_end as i64 + unacknowledged).contains(&moved),
                "the transfers of one moment of the backup: {moved} not in {at_start}..={at_end}+{unacknowledged}"
            );
        }
        let at_start = done.load(Ordering::SeqCst);
        let (progress, _) = watch::channel(0u64);
        let m = backups
            .create(&shop, Trigger::Manual, &progress)
            .await
            .expect("a backup after the failover");
        listed.push(m.clone());
        let moved = check_restored(&backups, &provider, &m, &format!("c{round}b")).await;
        assert!(
            moved >= at_start as i64,
            "acknowledged transfers are in it: {moved} < {at_start}"
        );
        println!("round {round}: the next backup holds {moved} transfers");
        assert_eq!(backups.list("shop").await.unwrap(), listed);
    }
    stop.store(true, Ordering::SeqCst);
    writer.await.unwrap();
}
