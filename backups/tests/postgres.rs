//! Backups of a real PostgreSQL database through the Postgres provider's hooks, into a
//! local directory store: roundtrip, damaged objects refused with the database
//! unchanged, restore into another app's database, a broken restore stream rolled back.

mod common;

use std::sync::Arc;

use common::{fill, snapshot, Pg};
use object_store::local::LocalFileSystem;
use paas_backups::{BackupError, Backups, Trigger};
use tokio::sync::watch;

fn local_backups(dir: &std::path::Path) -> Backups {
    Backups::new(Arc::new(LocalFileSystem::new_with_prefix(dir).unwrap()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_and_restore_roundtrip() {
    let pg = Pg::start();
    let dir = tempfile::tempdir().unwrap();
    let backups = local_backups(dir.path());
    let target = pg.target("shop", "r1").await;
    let app = pg.connect(&target).await;
    fill(&app, 20_000).await;
    let before = snapshot(&app).await.expect("table");

    let (progress, seen) = watch::channel(0);
    let m = backups
        .create(&target, Trigger::Manual, &progress)
        .await
        .expect("backup");
    assert_eq!(*seen.borrow(), m.size, "progress ends at the size");
    assert!(m.size > 100_000, "{m:?}");
    assert_eq!(m.engine, "postgres");
    assert_eq!(m.format, "pg_dump custom");
    assert!(m.version.contains("PostgreSQL) 15"), "{}", m.version);
    assert_eq!(m.sha256.len(), 64);
    let listed = backups.list("shop").await.unwrap();
    assert_eq!(listed, vec![m.clone()]);
    assert_eq!(backups.get("shop", &m.id).await.unwrap(), m);
    assert!(backups.list("other").await.unwrap().is_empty());

    // The dump on disk is the engine's own format, byte for byte.
    let dump = std::fs::read(dir.path().join("shop").join(&m.id).join("dump")).unwrap();
    assert_eq!(&dump[..5], b"PGDMP");
    assert_eq!(dump.len() as u64, m.size);

    // Change everything, then restore: the rows are back, the later table is untouched
    // only if the dump did not have it (pg_restore --clean drops what it restores).
    app.batch_execute("DELETE FROM orders WHERE id % 2 = 0; UPDATE orders SET note = 'x'")
        .await
        .unwrap();
    assert_ne!(snapshot(&app).await.unwrap(), before);
    backups.restore(&m, &target).await.expect("restore");
    let app = pg.connect(&target).await;
    assert_eq!(snapshot(&app).await.unwrap(), before);
    // The restored table belongs to the app's role, which can still write it.
    app.batch_execute("INSERT INTO orders VALUES (0, 'after restore')")
        .await
        .expect("the app owns its restored table");

    backups.delete("shop", &m.id).await.unwrap();
    assert!(backups.list("shop").await.unwrap().is_empty());
    assert!(matches!(
        backups.get("shop", &m.id).await,
        Err(BackupError::NotFound { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_backups_are_refused_and_nothing_changes() {
    let pg = Pg::start();
    let dir = tempfile::tempdir().unwrap();
    let backups = local_backups(dir.path());
    let target = pg.target("shop", "r1").await;
    let app = pg.connect(&target).await;
    fill(&app, 5_000).await;
    let (progress, _) = watch::channel(0);
    let m = backups
        .create(&target, Trigger::Manual, &progress)
        .await
        .expect("backup");
    let path = dir.path().join("shop").join(&m.id).join("dump");
    let good = std::fs::read(&path).unwrap();

    // The database moves on after the backup; a refused restore must not touch it.
    app.batch_execute("DELETE FROM orders WHERE id > 100")
        .await
        .unwrap();
    let current = snapshot(&app).await.unwrap();

    // One flipped byte in the middle.
    let mut flipped = good.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x55;
    std::fs::write(&path, &flipped).unwrap();
    let err = backups.restore(&m, &target).await.expect_err("corrupted");
    assert!(matches!(err, BackupError::Damaged { .. }), "{err}");
    assert!(err.to_string().contains("SHA-256"), "{err}");
    assert_eq!(snapshot(&app).await.unwrap(), current);

    // Cut short.
    std::fs::write(&path, &good[..good.len() - 1000]).unwrap();
    let err = backups.restore(&m, &target).await.expect_err("truncated");
    assert!(err.to_string().contains("size is"), "{err}");
    assert!(err.to_string().contains("nothing was changed"), "{err}");
    assert_eq!(snapshot(&app).await.unwrap(), current);

    // Put back whole, it restores.
    std::fs::write(&path, &good).unwrap();
    backups.restore(&m, &target).await.expect("restore");
    assert_eq!(snapshot(&app).await.unwrap().0, 5_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_restore_stream_is_rolled_back() {
    // The second line of defence: pg_restore fed a dump whose source fails before its
    // end is killed before it can commit.
    let pg = Pg::start();
    let target = pg.target("shop", "r1").await;
    let app = pg.connect(&target).await;
    fill(&app, 5_000).await;
    let mut dump = Vec::new();
    paas_appliance::provider::Provider::backup(
        pg.provider.as_ref(),
        "shop",
        "r1",
        &target.data,
        &mut dump,
    )
    .await
    .expect("dump");
    app.batch_execute("DELETE FROM orders WHERE id > 10")
        .await
        .unwrap();
    let current = snapshot(&app).await.unwrap();

    let body = bytes::Bytes::from(dump[..dump.len() - 1].to_vec());
    let chunks = vec![
        Ok(body),
        Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "checksum mismatch",
        )),
    ];
    let mut source = tokio_util::io::StreamReader::new(futures::stream::iter(chunks));
    let err = paas_appliance::provider::Provider::restore(
        pg.provider.as_ref(),
        "shop",
        "r1",
        &target.data,
        &mut source,
    )
    .await
    .expect_err("a failing source fails the restore");
    assert!(err.to_string().contains("nothing was restored"), "{err}");
    assert_eq!(snapshot(&app).await.unwrap(), current);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_into_another_apps_database() {
    let pg = Pg::start();
    let dir = tempfile::tempdir().unwrap();
    let backups = local_backups(dir.path());
    let shop = pg.target("shop", "r1").await;
    let staging = pg.target("staging", "r2").await;
    let shop_db = pg.connect(&shop).await;
    fill(&shop_db, 3_000).await;
    let expected = snapshot(&shop_db).await.unwrap();
    let (progress, _) = watch::channel(0);
    let m = backups
        .create(&shop, Trigger::Manual, &progress)
        .await
        .unwrap();

    backups
        .restore(&m, &staging)
        .await
        .expect("restore into staging");
    let staging_db = pg.connect(&staging).await;
    assert_eq!(snapshot(&staging_db).await.unwrap(), expected);
    let owner: String = staging_db
        .query_one(
            "SELECT tableowner::text FROM pg_tables WHERE tablename = 'orders'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        owner, "staging_r2",
        "restored objects belong to the target's role"
    );
    // The source is untouched.
    assert_eq!(snapshot(&shop_db).await.unwrap(), expected);
}
