//! Point-in-time restore of one app database, never in place (as CloudNativePG and
//! Heroku Rollback do): the cluster's archive ([`crate::archive`]) is restored up to the
//! target moment into a scratch instance, which recovers, promotes, serves one
//! `pg_dump -Fc` of the app's database, and is stopped and deleted; the dump is loaded
//! into another database (a new resource), in one transaction.
//!
//! Order, with its failure modes:
//! 1. [`check_target`] (pure): a target in the future, or before the end of the first
//!    base backup (the earliest moment the archive can rebuild), is refused;
//! 2. the primary is asked to close its current WAL segment (`pg_switch_wal`), and the
//!    restore waits (bounded) until the archive has it, so a target a moment ago is
//!    covered;
//! 3. `pgbackrest restore --type=time --target-action=promote --target-timeline=latest`
//!    into `<scratch root>/pitr-<random>/data`; the scratch runs with archiving off (it
//!    must never push a timeline of its own into the stanza), no TLS, no sync, on a
//!    free loopback port;
//! 4. it recovers until the target and promotes; if the archive ends before the target
//!    PostgreSQL exits with "recovery ended before configured recovery target was
//!    reached", which is reported;
//! 5. `pg_dump -Fc` from the scratch streams into `pg_restore --single-transaction` on
//!    the target database;
//! 6. the scratch server is killed and its directory removed, whatever happened (also
//!    when the future is dropped: [`Scratch`]'s `Drop`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use crate::archive::{ArchiveConfig, ArchiveError, Archiver, BaseBackup};
use crate::dump::Tools;
use crate::pg::{PgConfig, PgError, Postgres, StartAs};
use crate::provision::{ProviderConfig, ResourceData};

/// How long the restore waits for the primary's current segment to reach the archive.
const ARCHIVE_WAIT: Duration = Duration::from_secs(60);

/// How long the scratch may take to recover up to the target.
const RECOVERY_LIMIT: Duration = Duration::from_secs(3600);

/// Why a point-in-time restore failed.
#[derive(Debug, thiserror::Error)]
pub enum PitrError {
    /// The cluster does not archive (no `--archive-repo`).
    #[error("point-in-time restore needs continuous archiving, which this cluster does not have")]
    NotArchived,
    /// The archive holds no base backup yet.
    #[error("the archive has no base backup yet (the first is taken within a minute of the primary's start)")]
    NoBaseBackup,
    /// The target is later than now.
    #[error("{target} is in the future (now is {now})")]
    Future {
        /// The target, formatted.
        target: String,
        /// The current time, formatted.
        now: String,
    },
    /// The target is earlier than the end of the first base backup.
    #[error("{target} is before the first base backup, which ended at {first}")]
    BeforeFirstBackup {
        /// The target, formatted.
        target: String,
        /// When the earliest backup ended, formatted.
        first: String,
    },
    /// pgBackRest failed.
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    /// The scratch server failed (or did not reach the target).
    #[error("scratch instance: {0}")]
    Scratch(String),
    /// The dump or the load failed; the target database is unchanged.
    #[error("copying the database: {0}")]
    Copy(String),
    /// A local file operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// `time` as pgBackRest and PostgreSQL read a UTC timestamp, to the microsecond.
pub fn format_time(time: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(time)
        .format("%Y-%m-%d %H:%M:%S%.6f+00")
        .to_string()
}

/// Whether the archive can rebuild the cluster as it was at `target` (pure): not in
/// the future, not before the end of the earliest base backup.
pub fn check_target(
    target: SystemTime,
    now: SystemTime,
    backups: &[BaseBackup],
) -> Result<(), PitrError> {
    if target > now {
        return Err(PitrError::Future {
            target: format_time(target),
            now: format_time(now),
        });
    }
    let first = backups
        .iter()
        .map(|b| b.stopped)
        .min()
        .ok_or(PitrError::NoBaseBackup)?;
    if !serves(first, target) {
        return Err(PitrError::BeforeFirstBackup {
            target: format_time(target),
            first: format_time(first),
        });
    }
    Ok(())
}

/// What a restore needs besides its arguments.
#[derive(Debug, Clone)]
pub struct PitrConfig {
    /// The cluster's archive.
    pub archive: ArchiveConfig,
    /// Where scratch instances are made (reachable by the `postgres` OS user).
    pub scratch_root: PathBuf,
    /// PostgreSQL binaries.
    pub bin_dir: PathBuf,
    /// The cluster's superuser password (the scratch is a copy: the same).
    pub superuser_password: String,
}

/// What a finished restore did, for the caller's message.
#[derive(Debug, Clone)]
pub struct Restored {
    /// The base backup the scratch started from (the newest before the target).
    pub from_backup: String,
    /// How long the whole restore took.
    pub took: Duration,
}

/// A scratch instance: killed and deleted when dropped.
struct Scratch {
    pg: Postgres,
    dir: PathBuf,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        self.pg.kill_now();
        // The postmaster's group was SIGKILLed; give the kernel a moment to release
        // its files before removing them.
        std::thread::sleep(Duration::from_millis(100));
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            tracing::warn!(dir = %self.dir.display(), error = %e, "removing the scratch instance failed");
        }
    }
}

/// Restores `source`'s database as it was at `target` into `into` (reached as
/// `cluster` says), telling each step to `tell`. `cluster` is also where the primary
/// is asked to close its current WAL segment.
pub async fn restore_database(
    config: &PitrConfig,
    cluster: &ProviderConfig,
    source: &ResourceData,
    target: SystemTime,
    into: &ResourceData,
    tell: &(dyn Fn(&str) + Send + Sync),
) -> Result<Restored, PitrError> {
    let started = Instant::now();
    let port = free_port()?;
    let dir = config
        .scratch_root
        .join(format!("pitr-{}", hex::encode(rand::random::<[u8; 6]>())));
    for d in [&config.scratch_root, &dir, &dir.join("data")] {
        make_private_dir(d)?;
    }
    let pg = Postgres::new(PgConfig {
        name: "pitr".into(),
        dir: dir.clone(),
        bin_dir: config.bin_dir.clone(),
        host: "127.0.0.1".into(),
        port,
        superuser_password: config.superuser_password.clone(),
        tls_dir: None,
        // Read from only: a scratch instance never archives (see `StartAs::Scratch`).
        archive: Some(config.archive.clone()),
    });
    let mut scratch = Scratch {
        pg,
        dir: dir.clone(),
    };
    let archiver = Archiver::prepare(
        &config.archive,
        &dir,
        &scratch.pg.data_dir(),
        port,
        &config.superuser_password,
    )?;
    let backups = archiver.backups().await?;
    check_target(target, SystemTime::now(), &backups)?;
    let from_backup = backups
        .iter()
        .filter(|b| serves(b.stopped, target))
        .max_by_key(|b| b.stopped)
        .map(|b| b.label.clone())
        .unwrap_or_default();

    match flush_current_segment(cluster).await {
        Ok(()) => {}
        Err(e) => tell(&format!(
            "could not make sure the latest WAL is archived ({e}); restoring from what the archive has"
        )),
    }

    tell(&format!(
        "restoring base backup {from_backup} and WAL up to {} into a scratch instance",
        format_time(target)
    ));
    archiver
        .run(
            "restore",
            &[
                "--type=time",
                &format!("--target={}", format_time(target)),
                "--target-action=promote",
                "--target-timeline=latest",
                "--archive-mode=off",
            ],
        )
        .await?;
    tell("recovering the scratch instance up to the target");
    recover(&mut scratch.pg, &dir).await?;

    tell(&format!(
        "copying database {} into {}",
        source.database, into.database
    ));
    copy(config, port, source, cluster, into).await?;
    drop(scratch);
    Ok(Restored {
        from_backup,
        took: started.elapsed(),
    })
}

/// Starts the scratch and waits until it has recovered to the target and promoted.
async fn recover(pg: &mut Postgres, dir: &Path) -> Result<(), PitrError> {
    let failed = |what: String| {
        let log = std::fs::read_to_string(dir.join("postgres.log")).unwrap_or_default();
        let tail: Vec<&str> = log
            .lines()
            .rev()
            .filter(|l| l.contains("FATAL") || l.contains("ERROR") || l.contains("PANIC"))
            .take(3)
            .collect();
        PitrError::Scratch(format!(
            "{what}{}{}",
            if tail.is_empty() { "" } else { ": " },
            tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
        ))
    };
    pg.start(&StartAs::Scratch)
        .await
        .map_err(|e: PgError| failed(e.to_string()))?;
    let started = Instant::now();
    loop {
        if let Some(status) = pg.poll_exit() {
            return Err(failed(format!("postgres exited ({status})")));
        }
        if let Ok(client) = pg.client().await {
            if let Ok(row) = client.query_one("SELECT pg_is_in_recovery()", &[]).await {
                if !row.get::<_, bool>(0) {
                    return Ok(());
                }
            }
        }
        if started.elapsed() > RECOVERY_LIMIT {
            return Err(failed("recovery did not finish in time".into()));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `pg_dump -Fc` of `source` on the scratch streamed into `pg_restore` on `into`.
async fn copy(
    config: &PitrConfig,
    port: u16,
    source: &ResourceData,
    cluster: &ProviderConfig,
    into: &ResourceData,
) -> Result<(), PitrError> {
    let from = Tools::new(
        &config.bin_dir,
        ProviderConfig {
            host: "127.0.0.1".into(),
            port,
            superuser_password: config.superuser_password.clone(),
            tls: None,
        },
    );
    let to = Tools::new(&config.bin_dir, cluster.clone());
    let (mut writer, mut reader) = tokio::io::duplex(1 << 20);
    let dump = async {
        let result = from.dump(source, &mut writer).await;
        drop(writer);
        result
    };
    let (dumped, loaded) = tokio::join!(dump, to.restore(into, &mut reader));
    // A failed dump may have ended the stream early: the load is not to be trusted
    // then even if pg_restore accepted what it got.
    dumped.map_err(|e| PitrError::Copy(e.to_string()))?;
    loaded.map_err(|e| PitrError::Copy(e.to_string()))
}

/// Closes the primary's current WAL segment and waits until the archive has it.
async fn flush_current_segment(cluster: &ProviderConfig) -> Result<(), String> {
    let mut pg = tokio_postgres::Config::new();
    pg.host(&cluster.host)
        .port(cluster.port)
        .user("postgres")
        .password(&cluster.superuser_password)
        .dbname("postgres")
        .application_name("paas-pitr")
        .connect_timeout(Duration::from_secs(5));
    let (client, connection) = pg
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(|e| e.to_string())?;
    let driver = tokio::spawn(connection);
    let outcome = async {
        let segment: String = client
            .query_one("SELECT pg_walfile_name(pg_switch_wal())", &[])
            .await
            .map_err(|e| e.to_string())?
            .get(0);
        let started = Instant::now();
        loop {
            let archived: Option<String> = client
                .query_one("SELECT last_archived_wal FROM pg_stat_archiver", &[])
                .await
                .map_err(|e| e.to_string())?
                .get(0);
            if archived.is_some_and(|a| a.get(8..) >= segment.get(8..)) {
                return Ok(());
            }
            if started.elapsed() > ARCHIVE_WAIT {
                return Err(format!(
                    "segment {segment} not archived after {ARCHIVE_WAIT:?}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    .await;
    driver.abort();
    outcome
}

fn make_private_dir(dir: &Path) -> Result<(), PitrError> {
    use std::os::unix::fs::PermissionsExt;
    let io = |what: String| move |source| PitrError::Io { what, source };
    std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(io(format!("chmod {}", dir.display())))?;
    crate::pg::chown_to_server(dir).map_err(|e| PitrError::Scratch(e.to_string()))
}

/// A loopback port free now, for the scratch instance (short-lived: it is gone when the
/// restore ends).
fn free_port() -> Result<u16, PitrError> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|source| PitrError::Io {
        what: "finding a free port".into(),
        source,
    })?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|source| PitrError::Io {
            what: "finding a free port".into(),
            source,
        })
}

/// Whether a base backup that ended at `stopped` can be restored up to `target`.
/// pgBackRest records stop times in whole seconds and takes a backup only when its stop
/// time is before the target, compared in whole seconds: a target in the same second
/// as the backup's end is refused ("unable to find backup set with stop time less
/// than ..."), so a backup serves targets from one second after its end.
fn serves(stopped: SystemTime, target: SystemTime) -> bool {
    stopped + Duration::from_secs(1) <= target
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn backup(stopped: u64) -> BaseBackup {
        BaseBackup {
            label: format!("b{stopped}"),
            kind: "full".into(),
            started: at(stopped - 10),
            stopped: at(stopped),
        }
    }

    #[test]
    fn a_target_must_be_between_the_first_backup_and_now() {
        let now = at(2_000_000_000);
        let backups = [backup(1_999_990_000), backup(1_999_999_000)];
        assert!(check_target(at(1_999_995_000), now, &backups).is_ok());
        assert!(check_target(at(1_999_990_001), now, &backups).is_ok());
        // The second the first backup ended in: pgBackRest finds no backup for it.
        assert!(matches!(
            check_target(
                at(1_999_990_000) + Duration::from_millis(866),
                now,
                &backups
            ),
            Err(PitrError::BeforeFirstBackup { .. })
        ));
        assert!(check_target(now, now, &backups).is_ok());
        assert!(matches!(
            check_target(at(2_000_000_001), now, &backups),
            Err(PitrError::Future { .. })
        ));
        let before = check_target(at(1_999_989_999), now, &backups).unwrap_err();
        assert!(
            before.to_string().contains("before the first base backup"),
            "{before}"
        );
        assert!(matches!(
            check_target(at(1_999_995_000), now, &[]),
            Err(PitrError::NoBaseBackup)
        ));
    }

    #[test]
    fn times_are_given_to_pgbackrest_in_utc_to_the_microsecond() {
        let t = at(1_796_121_737) + Duration::from_micros(250);
        assert_eq!(format_time(t), "2026-12-01 10:42:17.000250+00");
    }
}
