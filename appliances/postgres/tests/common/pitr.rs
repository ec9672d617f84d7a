//! Helpers of the point-in-time tests: the archive the harness's members push into (the
//! `--archive-repo` of [`archive_args`]), the provider that restores from it, and the
//! rows of table `t` written and read back.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use paas_postgres::archive::{ArchiveConfig, Archiver};
use paas_postgres::pitr::PitrConfig;
use paas_postgres::provision::{PostgresProvider, ProviderConfig};

use super::{connect, Harness, PASSWORD};

/// The members' archive flags for a harness in `dir`.
pub fn archive_args(dir: &Path) -> Vec<String> {
    vec![
        "--archive-repo".into(),
        dir.join("repo").display().to_string(),
    ]
}

/// The archive of a harness in `dir` (stanza `main`).
pub fn archive_config(dir: &Path) -> ArchiveConfig {
    ArchiveConfig::new(dir.join("repo"), "main")
}

/// The superuser's view of the cluster through the endpoint.
pub fn cluster_config(h: &Harness) -> ProviderConfig {
    let addr = h.endpoint_addr();
    ProviderConfig {
        host: addr.ip().to_string(),
        port: addr.port(),
        superuser_password: PASSWORD.into(),
        tls: None,
    }
}

/// A provider that restores to a time from the harness's archive.
pub fn pitr_provider(h: &Harness) -> PostgresProvider {
    pitr_provider_from(h, archive_config(h.dir.path()))
}

/// A provider that restores to a time from `archive`.
pub fn pitr_provider_from(h: &Harness, archive: ArchiveConfig) -> PostgresProvider {
    let dir = h.dir.path();
    PostgresProvider::new(cluster_config(h)).with_pitr(PitrConfig {
        archive,
        scratch_root: dir.join("scratch"),
        bin_dir: paas_postgres::dump::DEFAULT_BIN_DIR.into(),
        superuser_password: PASSWORD.into(),
    })
}

/// Waits until the primary has taken its first base backup; returns when it ended.
pub async fn first_backup(h: &Harness, dir: &Path) -> SystemTime {
    first_backup_in(h, &archive_config(dir)).await
}

/// [`first_backup`] in the repository of `archive`.
pub async fn first_backup_in(h: &Harness, archive: &ArchiveConfig) -> SystemTime {
    let probe = h.dir.path().join("probe");
    std::fs::create_dir_all(&probe).unwrap();
    let archiver = Archiver::prepare(archive, &probe, &probe.join("data"), 1, PASSWORD).unwrap();
    let started = Instant::now();
    loop {
        if let Ok(backups) = archiver.backups().await {
            if let Some(b) = backups.first() {
                return b.stopped;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no base backup after 60 s\n{}",
            h.logs()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Waits out the second the first base backup ended in: a backup serves targets from
/// the second after it ended (pgBackRest's stop times are whole seconds).
pub async fn after_first_backup(h: &Harness) {
    after_first_backup_in(h, &archive_config(h.dir.path())).await
}

/// [`after_first_backup`] in the repository of `archive`.
pub async fn after_first_backup_in(h: &Harness, archive: &ArchiveConfig) {
    let backed_up = first_backup_in(h, archive).await;
    while SystemTime::now() < backed_up + Duration::from_millis(1100) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The ids in table `t` of the database behind `url`.
pub async fn ids(url: &str) -> Vec<i32> {
    let client = connect(url).await.unwrap();
    client
        .query("SELECT id FROM t ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Inserts the ids of `range` into table `t`, one acknowledged commit each.
pub async fn insert(url: &str, range: std::ops::RangeInclusive<i32>) {
    let client = connect(url).await.unwrap();
    for id in range {
        client
            .execute("INSERT INTO t VALUES ($1)", &[&id])
            .await
            .unwrap();
    }
}

/// A moment between two writes: the writes before it committed earlier, the ones after
/// it commit later.
pub async fn note_time() -> SystemTime {
    tokio::time::sleep(Duration::from_millis(100)).await;
    let t = SystemTime::now();
    tokio::time::sleep(Duration::from_millis(100)).await;
    t
}

/// A new database `name` of app `shop`, the target of a restore: its URL and its
/// provider data.
pub async fn new_database(provider: &PostgresProvider, name: &str) -> (String, serde_json::Value) {
    let (env, data) = provider.provision_database("shop", name).await.unwrap();
    (
        env["DATABASE_URL"].clone(),
        serde_json::to_value(data).unwrap(),
    )
}
