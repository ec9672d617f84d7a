//! Backups into an S3 server (moto) through `s3://bucket/prefix`: a roundtrip, and the
//! store cut off in the middle of an upload, for Postgres and MariaDB (Redis's is in
//! its appliance's tests, beside its group harness): the backup fails, is not listed,
//! its multipart upload is aborted once the store is back and no object of it is left,
//! and the next backup succeeds and restores.

mod common;

use std::time::Duration;

use common::maria::Maria;
use common::{fill, snapshot, Pg};
use mysql_async::prelude::Queryable;
use paas_backups::location::S3Options;
use paas_backups::{BackupError, Backups, Location, Target, Trigger};
use tokio::sync::watch;

fn s3_backups(endpoint: String, bucket: &str) -> Backups {
    let location = Location::parse(&format!("s3://{bucket}/clusters/main")).unwrap();
    let store = location
        .open(&S3Options {
            endpoint: Some(endpoint),
            region: Some("us-east-1".into()),
            access_key_id: Some("testing".into()),
            secret_access_key: Some("testing".into()),
        })
        .unwrap();
    Backups::new(store).with_part_size(5 * 1024 * 1024)
}

/// A backup of `target` (of app `shop`) through a proxy that cuts the store off once
/// 7 MiB went to it (the first 5 MiB part is in, the second is not): it fails, and
/// once the store is back nothing of it is listed or left. Returns the backups, through
/// the healed proxy, for the next run.
async fn backup_with_the_store_cut_off(
    s3: &paas_it::S3Server,
    target: &Target,
) -> (Backups, paas_it::CutProxy) {
    s3.create_bucket("backups").unwrap();
    let proxy = paas_it::CutProxy::start(s3.port(), 7 * 1024 * 1024)
        .await
        .unwrap();
    let backups = s3_backups(proxy.endpoint(), "backups");
    let (progress, _) = watch::channel(0);
    let err = backups
        .create(target, Trigger::Schedule, &progress)
        .await
        .expect_err("the store went away");
    assert!(proxy.is_down(), "the cut happened");
    assert!(matches!(err, BackupError::Upload(_)), "{err}");
    eprintln!("failed as expected: {err}");
    assert!(
        s3.open_uploads("backups").unwrap() >= 1,
        "a multipart upload was under way when the store went away"
    );

    // The store comes back: the failed backup is not listed, its upload is aborted by
    // the background retry, and no object of it is left.
    proxy.heal();
    assert!(backups.list("shop").await.unwrap().is_empty());
    paas_it::wait_for(
        "the failed upload to be aborted",
        Duration::from_secs(60),
        || async { s3.open_uploads("backups").unwrap() == 0 },
    )
    .await;
    assert!(s3.keys("backups").unwrap().is_empty());
    (backups, proxy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roundtrip_through_s3() {
    let s3 = paas_it::S3Server::start().expect("moto");
    s3.create_bucket("backups").unwrap();
    let backups = s3_backups(s3.endpoint(), "backups");
    let pg = Pg::start();
    let target = pg.target("shop", "r1").await;
    let app = pg.connect(&target).await;
    fill(&app, 150_000).await;
    let before = snapshot(&app).await.unwrap();

    let (progress, _) = watch::channel(0);
    let m = backups
        .create(&target, Trigger::Manual, &progress)
        .await
        .expect("backup to S3");
    assert!(m.size > 5 * 1024 * 1024, "several parts: {}", m.size);
    let stored = s3.keys("backups").unwrap();
    assert_eq!(
        stored,
        vec![
            format!("clusters/main/shop/{}/dump", m.id),
            format!("clusters/main/shop/{}/manifest.json", m.id)
        ]
    );
    assert_eq!(backups.list("shop").await.unwrap(), vec![m.clone()]);

    app.batch_execute("TRUNCATE orders").await.unwrap();
    backups.restore(&m, &target).await.expect("restore from S3");
    assert_eq!(snapshot(&app).await.unwrap(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_cut_off_mid_backup() {
    let s3 = paas_it::S3Server::start().expect("moto");
    let pg = Pg::start();
    let target = pg.target("shop", "r1").await;
    let app = pg.connect(&target).await;
    fill(&app, 300_000).await;
    let (backups, _proxy) = backup_with_the_store_cut_off(&s3, &target).await;

    // The next scheduled run succeeds and restores.
    let before = snapshot(&app).await.unwrap();
    let (progress, _) = watch::channel(0);
    let m = backups
        .create(&target, Trigger::Schedule, &progress)
        .await
        .expect("next backup");
    assert_eq!(backups.list("shop").await.unwrap(), vec![m.clone()]);
    app.batch_execute("DELETE FROM orders").await.unwrap();
    backups.restore(&m, &target).await.expect("restore");
    assert_eq!(snapshot(&app).await.unwrap(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_cut_off_mid_mariadb_backup() {
    let s3 = paas_it::S3Server::start().expect("moto");
    let maria = Maria::start().await;
    let target = maria.target("shop", "r1").await;
    let mut app = maria.connect(&target).await;
    common::maria::fill(&mut app, 120_000).await;
    let (backups, _proxy) = backup_with_the_store_cut_off(&s3, &target).await;

    let before = common::maria::snapshot(&mut app).await;
    let (progress, _) = watch::channel(0);
    let m = backups
        .create(&target, Trigger::Schedule, &progress)
        .await
        .expect("next backup");
    assert!(m.size > 7 * 1024 * 1024, "past the cut: {}", m.size);
    assert_eq!(backups.list("shop").await.unwrap(), vec![m.clone()]);
    app.query_drop("DELETE FROM filler WHERE id % 3 = 0; UPDATE accounts SET balance = 0")
        .await
        .unwrap();
    backups.restore(&m, &target).await.expect("restore");
    let mut app = maria.connect(&target).await;
    assert_eq!(common::maria::snapshot(&mut app).await, before);
}
