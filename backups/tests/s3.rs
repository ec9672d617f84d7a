//! Backups into an S3 server (moto) through `s3://bucket/prefix`: a roundtrip, and the
//! store cut off in the middle of an upload (the backup fails, is not listed, its
//! multipart upload is aborted once the store is back, the next backup succeeds).

mod common;

use std::time::Duration;

use common::{fill, snapshot, Pg, Proxy};
use paas_backups::location::S3Options;
use paas_backups::{BackupError, Backups, Location, Trigger};
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

/// Multipart uploads the server holds open in `bucket` (moto accepts unsigned reads).
async fn open_uploads(s3: &paas_it::S3Server, bucket: &str) -> usize {
    let body = reqwest::get(format!("{}/{bucket}?uploads", s3.endpoint()))
        .await
        .expect("list uploads")
        .text()
        .await
        .unwrap();
    body.matches("<Upload>").count()
}

/// Object keys in `bucket`.
async fn keys(s3: &paas_it::S3Server, bucket: &str) -> Vec<String> {
    let body = reqwest::get(format!("{}/{bucket}?list-type=2", s3.endpoint()))
        .await
        .expect("list objects")
        .text()
        .await
        .unwrap();
    body.split("<Key>")
        .skip(1)
        .filter_map(|s| s.split("</Key>").next())
        .map(str::to_string)
        .collect()
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
    let stored = keys(&s3, "backups").await;
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
    s3.create_bucket("backups").unwrap();
    // Cut once 7 MiB went to the store: the first 5 MiB part is in, the second is not.
    let proxy = Proxy::start(s3.port(), 7 * 1024 * 1024).await;
    let backups = s3_backups(proxy.endpoint(), "backups");
    let pg = Pg::start();
    let target = pg.target("shop", "r1").await;
    let app = pg.connect(&target).await;
    fill(&app, 300_000).await;

    let (progress, _) = watch::channel(0);
    let err = backups
        .create(&target, Trigger::Manual, &progress)
        .await
        .expect_err("the store went away");
    assert!(proxy.is_down(), "the cut happened");
    assert!(matches!(err, BackupError::Upload(_)), "{err}");
    eprintln!("failed as expected: {err}");
    assert!(
        open_uploads(&s3, "backups").await >= 1,
        "a multipart upload was under way when the store went away"
    );

    // The store comes back: the failed backup is not listed, its upload is aborted by
    // the background retry, and no object of it is left.
    proxy.heal();
    assert!(backups.list("shop").await.unwrap().is_empty());
    paas_it::wait_for(
        "the failed upload to be aborted",
        Duration::from_secs(60),
        || async { open_uploads(&s3, "backups").await == 0 },
    )
    .await;
    assert!(keys(&s3, "backups").await.is_empty());

    // The next one succeeds and restores.
    let before = snapshot(&app).await.unwrap();
    let m = backups
        .create(&target, Trigger::Manual, &progress)
        .await
        .expect("next backup");
    assert_eq!(backups.list("shop").await.unwrap(), vec![m.clone()]);
    app.batch_execute("DELETE FROM orders").await.unwrap();
    backups.restore(&m, &target).await.expect("restore");
    assert_eq!(snapshot(&app).await.unwrap(), before);
}
