//! Backups of a real MariaDB database through the MariaDB provider's hooks, into a local
//! directory store: roundtrip (tables, a view, a procedure), damaged objects
//! and broken or refused restore streams leaving the database unchanged, restore into
//! another app's database, and a backup taken under a writer of transfers restoring to
//! a state where the transfer invariants hold.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use common::maria::{fill, snapshot, Maria};
use mysql_async::prelude::Queryable;
use object_store::local::LocalFileSystem;
use paas_backups::{BackupError, Backups, Target, Trigger};
use tokio::sync::watch;

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

fn no_helpers(databases: &[String]) {
    assert!(
        !databases
            .iter()
            .any(|d| d.starts_with("paas-restore-") || d.starts_with("paas-trash-")),
        "helper databases left: {databases:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_and_restore_roundtrip() {
    let maria = Maria::start().await;
    let dir = tempfile::tempdir().unwrap();
    let backups = local_backups(dir.path());
    let target = maria.target("shop", "r1").await;
    let mut app = maria.connect(&target).await;
    fill(&mut app, 20_000).await;
    app.query_drop("CALL transfer(1, 2, 5)").await.unwrap();
    let before = snapshot(&mut app).await;

    let m = backup(&backups, &target).await;
    assert_eq!(m.engine, "mariadb");
    assert_eq!(m.format, "mariadb-dump sql");
    assert!(m.version.contains("10.11"), "{}", m.version);
    assert!(m.size > 1_000_000, "{m:?}");
    let dump = std::fs::read(dir.path().join("shop").join(&m.id).join("dump")).unwrap();
    let text = String::from_utf8_lossy(&dump);
    assert!(text.contains("CREATE TABLE `accounts`"), "the dump is SQL");
    assert!(text.contains("PROCEDURE `transfer`"), "routines are dumped");

    // Change everything: data, the view, a new table; the restore brings back the
    // dump's state exactly and drops what it did not have.
    app.query_drop(
        "DELETE FROM filler WHERE id % 2 = 0; UPDATE accounts SET balance = 0;
         DROP VIEW total; CREATE VIEW total AS SELECT 1 AS s, 1 AS n;
         DROP PROCEDURE transfer; CREATE TABLE later (id INT);",
    )
    .await
    .unwrap();
    assert_ne!(snapshot(&mut app).await, before);
    backups.restore(&m, &target).await.expect("restore");
    let mut app = maria.connect(&target).await;
    assert_eq!(snapshot(&mut app).await, before);
    let tables: Vec<String> = app.query("SHOW TABLES").await.unwrap();
    assert!(!tables.contains(&"later".to_string()), "{tables:?}");
    // The procedure works again, as the app's user.
    app.query_drop("CALL transfer(3, 4, 7)").await.unwrap();
    let note: Option<String> = app
        .query_first("SELECT note FROM ledger ORDER BY id DESC LIMIT 1")
        .await
        .unwrap();
    assert_eq!(note.as_deref(), Some("moved 7"));
    no_helpers(&maria.databases().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_backups_and_broken_streams_change_nothing() {
    let maria = Maria::start().await;
    let dir = tempfile::tempdir().unwrap();
    let backups = local_backups(dir.path());
    let target = maria.target("shop", "r1").await;
    let mut app = maria.connect(&target).await;
    fill(&mut app, 5_000).await;
    let m = backup(&backups, &target).await;
    let path = dir.path().join("shop").join(&m.id).join("dump");
    let good = std::fs::read(&path).unwrap();

    app.query_drop("DELETE FROM filler WHERE id > 100; UPDATE accounts SET balance = 1")
        .await
        .unwrap();
    let current = snapshot(&mut app).await;

    let mut flipped = good.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x55;
    std::fs::write(&path, &flipped).unwrap();
    let err = backups.restore(&m, &target).await.expect_err("corrupted");
    assert!(matches!(err, BackupError::Damaged { .. }), "{err}");
    assert!(err.to_string().contains("SHA-256"), "{err}");
    assert_eq!(snapshot(&mut app).await, current);

    std::fs::write(&path, &good[..good.len() - 1000]).unwrap();
    let err = backups.restore(&m, &target).await.expect_err("truncated");
    assert!(err.to_string().contains("nothing was changed"), "{err}");
    assert_eq!(snapshot(&mut app).await, current);

    // The hook itself: a source that fails before its end (the verified stream's last
    // defence) and a dump the server refuses both leave the database as it was.
    let chunks = vec![
        Ok(bytes::Bytes::from(good[..good.len() - 1].to_vec())),
        Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "checksum mismatch",
        )),
    ];
    let mut source = tokio_util::io::StreamReader::new(futures::stream::iter(chunks));
    let err = paas_appliance::provider::Provider::restore(
        maria.provider.as_ref(),
        "shop",
        "r1",
        &target.data,
        &mut source,
    )
    .await
    .expect_err("a failing source fails the restore");
    assert!(err.to_string().contains("nothing was restored"), "{err}");
    assert_eq!(snapshot(&mut app).await, current);

    let mut refused = good.clone();
    refused.extend_from_slice(b"\nTHIS IS NOT SQL;\n");
    let err = paas_appliance::provider::Provider::restore(
        maria.provider.as_ref(),
        "shop",
        "r1",
        &target.data,
        &mut refused.as_slice(),
    )
    .await
    .expect_err("a refused statement fails the restore");
    assert!(err.to_string().contains("mariadb failed"), "{err}");
    assert_eq!(snapshot(&mut app).await, current);
    no_helpers(&maria.databases().await);

    std::fs::write(&path, &good).unwrap();
    backups.restore(&m, &target).await.expect("restore");
    let n: Option<i64> = app
        .query_first("SELECT COUNT(*) FROM filler")
        .await
        .unwrap();
    assert_eq!(n, Some(5_000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_into_another_apps_database() {
    let maria = Maria::start().await;
    let dir = tempfile::tempdir().unwrap();
    let backups = local_backups(dir.path());
    let shop = maria.target("shop", "r1").await;
    let staging = maria.target("staging", "r2").await;
    let mut shop_db = maria.connect(&shop).await;
    fill(&mut shop_db, 3_000).await;
    let expected = snapshot(&mut shop_db).await;
    let m = backup(&backups, &shop).await;

    backups
        .restore(&m, &staging)
        .await
        .expect("restore into staging");
    let mut staging_db = maria.connect(&staging).await;
    assert_eq!(snapshot(&mut staging_db).await, expected);
    // Views, routines and triggers belong to the target's user, which can use them.
    let definers: Vec<String> = staging_db
        .query(
            "SELECT DEFINER FROM information_schema.VIEWS WHERE TABLE_SCHEMA = DATABASE()
             UNION ALL SELECT DEFINER FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = DATABASE()",
        )
        .await
        .unwrap();
    assert_eq!(definers, vec!["staging_r2@%"; 2]);
    staging_db
        .query_drop("CALL transfer(1, 2, 1)")
        .await
        .expect("the target's user runs the restored procedure");
    assert_eq!(
        snapshot(&mut shop_db).await,
        expected,
        "the source is untouched"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_under_transfers_restores_consistently() {
    let maria = Maria::start().await;
    let dir = tempfile::tempdir().unwrap();
    let backups = local_backups(dir.path());
    let target = maria.target("shop", "r1").await;
    let mut app = maria.connect(&target).await;
    fill(&mut app, 100_000).await;

    // Transfers between random accounts, each one transaction over three tables.
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let mut writer = maria.connect(&target).await;
    let writer = tokio::spawn({
        let (stop, done) = (stop.clone(), done.clone());
        async move {
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                i += 1;
                let (a, b, x) = (i * 7 % 100 + 1, i * 13 % 100 + 1, i % 50 + 1);
                writer
                    .query_drop(format!(
                        "START TRANSACTION; CALL transfer({a}, {b}, {x}); COMMIT;"
                    ))
                    .await
                    .expect("transfer");
                done.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    while done.load(Ordering::SeqCst) < 50 {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let at_start = done.load(Ordering::SeqCst);
    let m = backup(&backups, &target).await;
    let at_end = done.load(Ordering::SeqCst);
    stop.store(true, Ordering::SeqCst);
    writer.await.unwrap();
    assert!(at_end > at_start, "transfers ran during the backup");

    backups.restore(&m, &target).await.expect("restore");
    let mut app = maria.connect(&target).await;
    let (sum, n): (i64, i64) = app
        .query_first("SELECT CAST(SUM(balance) AS SIGNED), COUNT(*) FROM accounts")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((sum, n), (100_000, 100), "balances sum as before");
    let (ledger, moved): (i64, i64) = app
        .query_first("SELECT COUNT(*), (SELECT v FROM meta WHERE k = 'transfers') FROM ledger")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ledger, moved, "the ledger and the counter agree");
    assert!(
        (at_start as i64..=at_end as i64 + 1).contains(&moved),
        "the dump holds the transfers of one moment during the backup: {moved} not in {at_start}..={at_end}+1"
    );
}

/// The journal's lines, as `paas log --type backup` would show them.
#[derive(Default)]
struct Lines(std::sync::Mutex<Vec<String>>);

impl paas_backups::journal::Journal for Lines {
    fn line(&self, _app: &str, _job: &str, message: &str, _failed: bool) {
        self.0.lock().unwrap().push(message.to_string());
    }
}

impl Lines {
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_lines_tell_rate_and_eta() {
    let maria = Maria::start().await;
    let dir = tempfile::tempdir().unwrap();
    let lines = Arc::new(Lines::default());
    let backups = local_backups(dir.path())
        .with_journal(lines.clone())
        .with_progress_every(std::time::Duration::from_millis(20));
    let target = maria.target("shop", "r1").await;
    let mut app = maria.connect(&target).await;
    fill(&mut app, 100_000).await;

    // A first backup has no total to go by: bytes and rate only.
    let first = backup(&backups, &target).await;
    let told = lines.take();
    let progress: Vec<&String> = told.iter().filter(|l| l.contains("/s")).collect();
    assert!(progress.len() >= 2, "{told:#?}");
    assert!(!told.iter().any(|l| l.contains("ETA")), "{told:#?}");
    assert!(told.last().unwrap().contains("complete"), "{told:#?}");

    // The next one is estimated from it, and says so.
    backup(&backups, &target).await;
    let told = lines.take();
    let estimated: Vec<&String> = told
        .iter()
        .filter(|l| l.contains("estimate: the previous backup's size"))
        .collect();
    assert!(estimated.iter().any(|l| l.contains("ETA")), "{told:#?}");
    // Before the first byte there is no rate, so no ETA either.
    assert!(
        estimated
            .iter()
            .all(|l| l.contains("ETA") || l.contains(": 0 B of")),
        "{told:#?}"
    );

    // A restore knows its total exactly.
    backups.restore(&first, &target).await.expect("restore");
    let told = lines.take();
    assert!(
        told.iter()
            .any(|l| l.contains("loading into r1") && l.contains("%") && l.contains("ETA")),
        "{told:#?}"
    );
}
