//! Continuous archiving with pgBackRest: the WAL of the cluster and its base backups go
//! to one repository (a directory; all members of `paas up` share the machine), under
//! one stanza per appliance cluster, so [`crate::pitr`] can rebuild the cluster as it was
//! at any moment since the first base backup.
//!
//! Who does what:
//! - every member runs with `archive_mode = on` and an `archive_command` running
//!   `pgbackrest archive-push`; only the primary archives (a segment is forced every
//!   `archive_timeout`, which bounds the recovery point objective). After a failover
//!   the promoted member archives its new timeline, from a copy of the segment the
//!   switch happened in, under the same stanza. (pgBackRest refuses to back up a
//!   cluster with `archive_mode = always`, and concurrent pushes of the same segment
//!   from several members race in its repository, so standbys do not archive: a
//!   segment the old primary had completed but not yet pushed when it died is missing
//!   from the archive; the archiver pushes within a second of a segment's end);
//! - the primary's supervisor creates the stanza (idempotent) and takes the base
//!   backups when [`due`] says so: a full one first and every `full_every`, an
//!   incremental one every `every` in between. Old backups and the WAL only they need
//!   are expired by pgBackRest itself (`repo1-retention-full`).
//!
//! pgBackRest runs as the `postgres` OS user (from root, through `runuser`), with a
//! configuration file per member, `<member dir>/pgbackrest.conf`; it reaches its server
//! through a Unix socket in `<member dir>/run`, opened only when archiving is on.
//!
//! Files:
//!
//! ```text
//! <repo>/                    the repository (0750, owned by postgres)
//! <member dir>/pgbackrest.conf
//! <member dir>/pgbackrest/   pgBackRest's logs and lock files for this member
//! <member dir>/run/          the server's Unix socket (pgBackRest's way in)
//! ```

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::Deserialize;
use tokio::process::Command;

/// Where Debian installs pgBackRest.
pub const DEFAULT_PGBACKREST: &str = "/usr/bin/pgbackrest";

/// Why a pgBackRest operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// A file of the configuration could not be written.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// pgBackRest exited unsuccessfully; its output says why.
    #[error("pgbackrest {command} failed ({status}): {output}")]
    Tool {
        /// The pgBackRest command (`backup`, `restore`...).
        command: String,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// The end of its output.
        output: String,
    },
    /// `pgbackrest info` printed something that is not its JSON.
    #[error("pgbackrest info: {0}")]
    Info(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ArchiveError {
    let what = what.into();
    move |source| ArchiveError::Io { what, source }
}

/// The cluster's archive: where the repository is and how often base backups are taken.
#[derive(Debug, Clone)]
pub struct ArchiveConfig {
    /// The repository directory.
    pub repo: PathBuf,
    /// The stanza (the appliance cluster's name).
    pub stanza: String,
    /// The pgBackRest binary.
    pub pgbackrest: PathBuf,
    /// `archive_timeout`: at most this much committed work is not yet archived.
    pub archive_timeout: Duration,
    /// A base backup (incremental after the first full) at least this often.
    pub every: Duration,
    /// A full backup at least this often.
    pub full_every: Duration,
    /// How many full backups pgBackRest keeps (with the WAL they need).
    pub retention_full: u32,
}

impl ArchiveConfig {
    /// An archive in `repo` under `stanza` with the defaults: WAL forced every 30 s, an
    /// incremental backup daily, a full one weekly, two fulls kept.
    pub fn new(repo: PathBuf, stanza: &str) -> Self {
        ArchiveConfig {
            repo,
            stanza: stanza.into(),
            pgbackrest: PathBuf::from(DEFAULT_PGBACKREST),
            archive_timeout: Duration::from_secs(30),
            every: Duration::from_secs(24 * 3600),
            full_every: Duration::from_secs(7 * 24 * 3600),
            retention_full: 2,
        }
    }

    /// The `postgresql.conf` lines that archive every WAL segment of the instance whose
    /// pgBackRest configuration is `conf_file`.
    pub fn server_settings(&self, conf_file: &Path, socket_dir: &Path) -> String {
        let command = format!(
            "{} --config={} --stanza={} archive-push %p",
            self.pgbackrest.display(),
            conf_file.display(),
            self.stanza
        );
        format!(
            "archive_mode = on\narchive_command = '{}'\narchive_timeout = {}\n\
             unix_socket_directories = '{}'\n",
            command.replace('\'', "''"),
            self.archive_timeout.as_secs().max(1),
            socket_dir.display().to_string().replace('\'', "''"),
        )
    }

    /// The text of a pgBackRest configuration for the instance with PGDATA `data`,
    /// listening on `port` with its socket in `socket_dir`; logs and locks in `work`.
    pub fn pgbackrest_conf(
        &self,
        data: &Path,
        port: u16,
        socket_dir: &Path,
        work: &Path,
    ) -> String {
        format!(
            "[global]\nrepo1-path={repo}\nrepo1-retention-full={keep}\ncompress-type=lz4\n\
             start-fast=y\nlog-path={work}\nlock-path={work}/lock\nlog-level-console=warn\n\
             log-level-file=info\narchive-timeout=60\n\n\
             [{stanza}]\npg1-path={data}\npg1-port={port}\npg1-socket-path={socket}\npg1-user=postgres\n",
            repo = self.repo.display(),
            keep = self.retention_full,
            work = work.display(),
            stanza = self.stanza,
            data = data.display(),
            socket = socket_dir.display(),
        )
    }
}

/// One base backup in the repository, as `pgbackrest info` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseBackup {
    /// Its label.
    pub label: String,
    /// `full`, `diff` or `incr`.
    pub kind: String,
    /// When it started.
    pub started: SystemTime,
    /// When it ended: the earliest moment it can restore to.
    pub stopped: SystemTime,
}

/// The kind of base backup to take now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackupType {
    /// Everything.
    Full,
    /// What changed since the last backup.
    Incremental,
}

impl BackupType {
    fn arg(self) -> &'static str {
        match self {
            BackupType::Full => "--type=full",
            BackupType::Incremental => "--type=incr",
        }
    }
}

/// Which base backup is due at `now`, given the repository's `backups` (pure): a full
/// one when there is none or the newest full one is `full_every` old, an incremental
/// one when the newest backup is `every` old, else none.
pub fn due(
    now: SystemTime,
    backups: &[BaseBackup],
    every: Duration,
    full_every: Duration,
) -> Option<BackupType> {
    let age = |b: &BaseBackup| now.duration_since(b.started).unwrap_or_default();
    let newest_full = backups
        .iter()
        .filter(|b| b.kind == "full")
        .max_by_key(|b| b.started);
    match newest_full {
        None => return Some(BackupType::Full),
        Some(full) if age(full) >= full_every => return Some(BackupType::Full),
        Some(_) => {}
    }
    let newest = backups.iter().max_by_key(|b| b.started)?;
    (age(newest) >= every).then_some(BackupType::Incremental)
}

/// The shape of `pgbackrest info --output=json` this module reads.
#[derive(Deserialize)]
struct InfoStanza {
    name: String,
    #[serde(default)]
    backup: Vec<InfoBackup>,
}

#[derive(Deserialize)]
struct InfoBackup {
    label: String,
    #[serde(rename = "type")]
    kind: String,
    timestamp: InfoTimestamp,
}

#[derive(Deserialize)]
struct InfoTimestamp {
    start: u64,
    stop: u64,
}

/// The base backups of `stanza` in `pgbackrest info --output=json` text (pure); none
/// when the stanza is not there yet.
pub fn parse_info(text: &str, stanza: &str) -> Result<Vec<BaseBackup>, ArchiveError> {
    let stanzas: Vec<InfoStanza> =
        serde_json::from_str(text).map_err(|e| ArchiveError::Info(e.to_string()))?;
    let at = |secs: u64| SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
    Ok(stanzas
        .into_iter()
        .filter(|s| s.name == stanza)
        .flat_map(|s| s.backup)
        .map(|b| BaseBackup {
            label: b.label,
            kind: b.kind,
            started: at(b.timestamp.start),
            stopped: at(b.timestamp.stop),
        })
        .collect())
}

/// pgBackRest for one instance: its configuration file and the commands run on it.
#[derive(Debug, Clone)]
pub struct Archiver {
    config: ArchiveConfig,
    conf_file: PathBuf,
    password: String,
}

impl Archiver {
    /// The archiver of the instance with PGDATA `data` on `port`, whose own files go in
    /// `dir`; writes its configuration file and creates the repository and the work and
    /// socket directories (owned by the server's user).
    pub fn prepare(
        config: &ArchiveConfig,
        dir: &Path,
        data: &Path,
        port: u16,
        password: &str,
    ) -> Result<Archiver, ArchiveError> {
        let work = dir.join("pgbackrest");
        let socket = socket_dir(dir);
        for (path, mode) in [
            (&config.repo, 0o750),
            (&work, 0o700),
            (&work.join("lock"), 0o700),
            (&socket, 0o700),
        ] {
            std::fs::create_dir_all(path).map_err(io(format!("creating {}", path.display())))?;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
                .map_err(io(format!("chmod {}", path.display())))?;
            chown(path)?;
        }
        let conf_file = dir.join("pgbackrest.conf");
        std::fs::write(
            &conf_file,
            config.pgbackrest_conf(data, port, &socket, &work),
        )
        .map_err(io(format!("writing {}", conf_file.display())))?;
        std::fs::set_permissions(&conf_file, std::fs::Permissions::from_mode(0o600))
            .map_err(io("chmod pgbackrest.conf"))?;
        chown(&conf_file)?;
        Ok(Archiver {
            config: config.clone(),
            conf_file,
            password: password.into(),
        })
    }

    /// The configuration file.
    pub fn conf_file(&self) -> &Path {
        &self.conf_file
    }

    /// `pgbackrest <args> <command>` as the server's user.
    fn command(&self, command: &str, args: &[&str]) -> Command {
        let mut cmd = if crate::pg::is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"])
                .arg(&self.config.pgbackrest);
            c
        } else {
            Command::new(&self.config.pgbackrest)
        };
        cmd.arg(format!("--config={}", self.conf_file.display()))
            .arg(format!("--stanza={}", self.config.stanza))
            .args(args)
            .arg(command)
            .env("PGPASSWORD", &self.password)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        cmd
    }

    /// Runs `pgbackrest <command>`, failing with the end of its output.
    pub async fn run(&self, command: &str, args: &[&str]) -> Result<String, ArchiveError> {
        let out = self
            .command(command, args)
            .output()
            .await
            .map_err(io(format!("running pgbackrest {command}")))?;
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        if out.status.success() {
            return Ok(stdout);
        }
        let text = format!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
        let tail: Vec<&str> = text.lines().rev().take(8).collect();
        Err(ArchiveError::Tool {
            command: command.into(),
            status: out.status,
            output: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
        })
    }

    /// Creates the stanza, or checks that the existing one is this cluster's.
    pub async fn ensure_stanza(&self) -> Result<(), ArchiveError> {
        self.run("stanza-create", &[]).await.map(drop)
    }

    /// The repository's base backups of the stanza.
    pub async fn backups(&self) -> Result<Vec<BaseBackup>, ArchiveError> {
        let text = self.run("info", &["--output=json"]).await?;
        parse_info(&text, &self.config.stanza)
    }

    /// Takes a base backup of the (primary) instance; returns what was due.
    pub async fn backup_if_due(&self) -> Result<Option<BackupType>, ArchiveError> {
        let backups = self.backups().await?;
        let Some(kind) = due(
            SystemTime::now(),
            &backups,
            self.config.every,
            self.config.full_every,
        ) else {
            return Ok(None);
        };
        self.run("backup", &[kind.arg()]).await?;
        Ok(Some(kind))
    }
}

/// The directory of an instance's Unix socket (pgBackRest's way in).
pub fn socket_dir(dir: &Path) -> PathBuf {
    dir.join("run")
}

fn chown(path: &Path) -> Result<(), ArchiveError> {
    crate::pg::chown_to_server(path).map_err(|e| ArchiveError::Io {
        what: format!("chown {}", path.display()),
        source: std::io::Error::other(e.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    fn backup(kind: &str, hours_ago: u64, now: SystemTime) -> BaseBackup {
        BaseBackup {
            label: format!("{kind}-{hours_ago}"),
            kind: kind.into(),
            started: now - HOUR * hours_ago as u32,
            stopped: now - HOUR * hours_ago as u32 + Duration::from_secs(60),
        }
    }

    #[test]
    fn the_first_backup_is_full_then_incremental_until_the_full_is_old() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000 * 3600);
        let (day, week) = (24 * HOUR, 7 * 24 * HOUR);
        let check = |backups: &[BaseBackup], expected: Option<BackupType>| {
            assert_eq!(due(now, backups, day, week), expected, "{backups:?}");
        };
        check(&[], Some(BackupType::Full));
        check(&[backup("full", 1, now)], None);
        check(&[backup("full", 25, now)], Some(BackupType::Incremental));
        check(&[backup("full", 30, now), backup("incr", 2, now)], None);
        check(
            &[backup("full", 50, now), backup("incr", 24, now)],
            Some(BackupType::Incremental),
        );
        check(
            &[backup("full", 7 * 24, now), backup("incr", 1, now)],
            Some(BackupType::Full),
        );
        // Only incremental ones left (the full expired): a full is due.
        check(&[backup("incr", 1, now)], Some(BackupType::Full));
    }

    #[test]
    fn info_lists_the_stanzas_backups_with_their_times() {
        let text = r#"[{"name":"main","backup":[{"label":"20261201-101500F","type":"full",
            "timestamp":{"start":1796120100,"stop":1796120110},"info":{"size":1}}],
            "status":{"code":0,"message":"ok"}},
            {"name":"other","backup":[{"label":"x","type":"full","timestamp":{"start":1,"stop":2}}]}]"#;
        let backups = parse_info(text, "main").unwrap();
        assert_eq!(backups.len(), 1);
        assert_eq!(backups[0].label, "20261201-101500F");
        assert_eq!(
            backups[0].stopped,
            SystemTime::UNIX_EPOCH + Duration::from_secs(1796120110)
        );
        let missing = r#"[{"name":"main","status":{"code":1,"message":"missing stanza path"}}]"#;
        assert!(parse_info(missing, "main").unwrap().is_empty());
        assert!(parse_info("not json", "main").is_err());
    }

    #[test]
    fn the_archive_command_names_the_members_configuration_and_stanza() {
        let config = ArchiveConfig::new("/data/postgres/pgbackrest".into(), "main");
        let text =
            config.server_settings(Path::new("/d/pg0/pgbackrest.conf"), Path::new("/d/pg0/run"));
        assert!(text.contains("archive_mode = on\n"), "{text}");
        assert!(
            text.contains("archive_command = '/usr/bin/pgbackrest --config=/d/pg0/pgbackrest.conf --stanza=main archive-push %p'"),
            "{text}"
        );
        assert!(text.contains("archive_timeout = 30\n"), "{text}");
    }
}
