//! Continuous archiving with pgBackRest: the WAL of the cluster and its base backups go
//! to one repository ([`Repo`]: a directory all members of `paas up` share on the
//! machine, or a path in an S3 bucket), under one stanza per appliance cluster, so
//! [`crate::pitr`] can rebuild the cluster as it was at any moment since the first base
//! backup.
//!
//! Who does what:
//! - every member archives (`archive_mode = always`): its `archive_command` is the
//!   member's push script (`<member dir>/pgbackrest/archive-push`), which runs `pgbackrest
//!   archive-push`. The primary pushes each segment as it completes (a segment is forced
//!   every `archive_timeout`, which bounds the recovery point objective); a standby
//!   pushes the segments it received too, so a segment the primary completed but had
//!   not pushed when it died still reaches the archive from the members that streamed
//!   it. After a failover the promoted member archives its new timeline under the same
//!   stanza.
//! - A segment pushed twice is accepted only as the same file: pgBackRest compares the
//!   checksum of what is pushed with the copy it has and refuses a different one (that
//!   member's archiver then retries and says so in its log; nothing in the archive is
//!   overwritten). A standby waits until a segment is [`STANDBY_PUSH_DELAY`] old before
//!   pushing it, so the primary's copy is normally the one stored and the standby's push
//!   only compares checksums. Every push takes a lock file ([`Repo::push_lock`]): in a
//!   directory repository one file in the repository shared by all members, since
//!   pgBackRest writes every copy of a segment through the same temporary file name,
//!   which two members writing at once would corrupt; in S3, where a PUT is atomic and
//!   no temporary object is written, a file of the member's own. pgBackRest's own guard
//!   against concurrent pushes (`archive-mode-check`, which refuses base backups of a
//!   server with `archive_mode = always`) is turned off.
//! - An unreachable repository loses no WAL: the push fails, PostgreSQL keeps the
//!   segment and retries it until it is accepted (`tests/pitr_s3.rs`).
//! - the primary's supervisor creates the stanza (idempotent) and takes the base
//!   backups when [`due`] says so: a full one first and every `full_every`, an
//!   incremental one every `every` in between. Old backups and the WAL only they need
//!   are expired by pgBackRest itself (`repo1-retention-full`).
//!
//! pgBackRest runs as the `postgres` OS user (from root, through `runuser`), with a
//! configuration file per member, `<member dir>/pgbackrest.conf`; it reaches its server
//! through a Unix socket in `<member dir>/run`, opened only when archiving is on. S3
//! keys are never written there (see [`repo`]).
//!
//! Files:
//!
//! ```text
//! <repo>/                    a directory repository (0750, owned by postgres)
//! <repo>/archive-push.lock  the lock every push takes (directory repository)
//! <member dir>/pgbackrest.conf
//! <member dir>/pgbackrest/   pgBackRest's logs (of pushes: errors only) and lock files
//!                            for this member, and archive-push, the member's
//!                            archive_command (0700), and archive-push.lock with an S3
//!                            repository
//! <member dir>/run/          the server's Unix socket (pgBackRest's way in)
//! ```

pub mod failure;
pub mod repo;

pub use failure::ArchiverStats;
pub use repo::{Repo, RepoError, S3Keys, S3Repo};

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::Deserialize;
use tokio::process::Command;

/// Where Debian installs pgBackRest.
pub const DEFAULT_PGBACKREST: &str = "/usr/bin/pgbackrest";

/// How old a segment must be before a standby pushes it: the primary's archiver is
/// woken when the segment completes and pushes it in well under a second, so by then
/// the standby's push normally finds the primary's copy and only compares checksums.
pub const STANDBY_PUSH_DELAY: Duration = Duration::from_secs(5);

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
    /// Where the repository is.
    pub repo: Repo,
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
    pub fn new(repo: impl Into<Repo>, stanza: &str) -> Self {
        ArchiveConfig {
            repo: repo.into(),
            stanza: stanza.into(),
            pgbackrest: PathBuf::from(DEFAULT_PGBACKREST),
            archive_timeout: Duration::from_secs(30),
            every: Duration::from_secs(24 * 3600),
            full_every: Duration::from_secs(7 * 24 * 3600),
            retention_full: 2,
        }
    }

    /// The `postgresql.conf` lines that archive every WAL segment the instance writes
    /// or receives through its push script `push_script` ([`ArchiveConfig::push_script`]).
    pub fn server_settings(&self, push_script: &Path, socket_dir: &Path) -> String {
        format!(
            "archive_mode = always\narchive_command = '{} %p'\narchive_timeout = {}\n\
             unix_socket_directories = '{}'\n",
            sh_quote(&push_script.display().to_string()).replace('\'', "''"),
            self.archive_timeout.as_secs().max(1),
            socket_dir.display().to_string().replace('\'', "''"),
        )
    }

    /// The text of a member's push script, its `archive_command` (run by PostgreSQL's
    /// archiver in PGDATA with the WAL file's path): on a standby (`standby.signal`) it
    /// first waits until the file is [`STANDBY_PUSH_DELAY`] old, and keeps pgBackRest's
    /// "already exists with the same checksum" warning out of the server's log; then it
    /// runs `pgbackrest archive-push` with the member's configuration `conf_file`,
    /// its errors (only) logged to `<work>/<stanza>-archive-push.log` (pgBackRest keeps no
    /// file log of pushes otherwise; the member's status reads the reason of a failing
    /// push there, [`failure`]), under the push lock ([`Repo::push_lock`]; `work` is the member's pgBackRest
    /// directory).
    pub fn push_script(&self, conf_file: &Path, work: &Path) -> String {
        let delay = STANDBY_PUSH_DELAY.as_secs();
        format!(
            "#!/bin/sh\n\
             # archive_command of this member, written by paas-postgres: pushes WAL file $1\n\
             # into the cluster's pgBackRest repository.\n\
             set -eu\n\
             quiet=\n\
             if [ -f standby.signal ]; then\n\
             \x20   age=$(( $(date +%s) - $(stat -c %Y \"$1\") ))\n\
             \x20   if [ \"$age\" -lt {delay} ]; then sleep $(( {delay} - age )); fi\n\
             \x20   quiet=--log-level-console=error\n\
             fi\n\
             exec flock {lock} {pgbackrest} --config={conf} --stanza={stanza} --log-level-file=error $quiet archive-push \"$1\"\n",
            lock = sh_quote(&self.repo.push_lock(work).display().to_string()),
            pgbackrest = sh_quote(&self.pgbackrest.display().to_string()),
            conf = sh_quote(&conf_file.display().to_string()),
            stanza = sh_quote(&self.stanza),
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
            "[global]\n{repo}repo1-retention-full={keep}\ncompress-type=lz4\n\
             start-fast=y\nlog-path={work}\nlock-path={work}/lock\nlog-level-console=warn\n\
             log-level-file=info\narchive-timeout=60\narchive-mode-check=n\n\n\
             [{stanza}]\npg1-path={data}\npg1-port={port}\npg1-socket-path={socket}\npg1-user=postgres\n",
            repo = self.repo.conf_lines(),
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
    work: PathBuf,
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
        let repo_dir = config.repo.dir().map(|d| (d.to_path_buf(), 0o750));
        for (path, mode) in repo_dir.into_iter().chain([
            (work.clone(), 0o700),
            (work.join("lock"), 0o700),
            (socket.clone(), 0o700),
        ]) {
            let path = &path;
            std::fs::create_dir_all(path).map_err(io(format!("creating {}", path.display())))?;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
                .map_err(io(format!("chmod {}", path.display())))?;
            chown(path)?;
        }
        let conf_file = dir.join("pgbackrest.conf");
        let script = push_script_file(dir);
        for (path, text, mode) in [
            (
                &conf_file,
                config.pgbackrest_conf(data, port, &socket, &work),
                0o600,
            ),
            (&script, config.push_script(&conf_file, &work), 0o700),
        ] {
            std::fs::write(path, text).map_err(io(format!("writing {}", path.display())))?;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
                .map_err(io(format!("chmod {}", path.display())))?;
            chown(path)?;
        }
        Ok(Archiver {
            config: config.clone(),
            conf_file,
            work,
            password: password.into(),
        })
    }

    /// The configuration file.
    pub fn conf_file(&self) -> &Path {
        &self.conf_file
    }

    /// The last error in pgBackRest's log of this instance's pushes
    /// ([`failure::last_error`] over the end of `<work>/<stanza>-archive-push.log`).
    pub fn last_push_error(&self) -> Option<String> {
        use std::io::{Read, Seek, SeekFrom};
        const TAIL: u64 = 16 * 1024;
        let log = self
            .work
            .join(format!("{}-archive-push.log", self.config.stanza));
        let mut file = std::fs::File::open(log).ok()?;
        let len = file.metadata().ok()?.len();
        file.seek(SeekFrom::Start(len.saturating_sub(TAIL))).ok()?;
        let mut tail = Vec::new();
        file.read_to_end(&mut tail).ok()?;
        failure::last_error(&String::from_utf8_lossy(&tail))
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
            .envs(self.config.repo.keys().into_iter().flat_map(S3Keys::env))
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

/// The push script (`archive_command`) of the instance whose own files are in `dir`;
/// pgBackRest requires its name in the `archive_command` of a server it backs up.
pub fn push_script_file(dir: &Path) -> PathBuf {
    dir.join("pgbackrest").join("archive-push")
}

/// `text` as one shell word.
fn sh_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
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
    fn every_member_archives_through_its_push_script() {
        let config = ArchiveConfig::new(PathBuf::from("/data/postgres/pgbackrest"), "main");
        let text =
            config.server_settings(Path::new("/d/it's/archive-push"), Path::new("/d/pg0/run"));
        assert!(text.contains("archive_mode = always\n"), "{text}");
        assert!(
            text.contains(r"archive_command = '''/d/it''\''''s/archive-push'' %p'"),
            "{text}"
        );
        assert!(text.contains("archive_timeout = 30\n"), "{text}");
        let conf = config.pgbackrest_conf(
            Path::new("/d/pg0/data"),
            5432,
            Path::new("/d/pg0/run"),
            Path::new("/d/pg0/pgbackrest"),
        );
        assert!(conf.contains("\narchive-mode-check=n\n"), "{conf}");
    }

    #[test]
    fn the_push_script_delays_standbys_and_pushes_under_the_repository_lock() {
        let config = ArchiveConfig::new(PathBuf::from("/data/postgres/pgbackrest"), "main");
        let script = config.push_script(
            Path::new("/d/pg0/pgbackrest.conf"),
            Path::new("/d/pg0/pgbackrest"),
        );
        assert!(script.starts_with("#!/bin/sh\n"), "{script}");
        assert!(
            script.contains("if [ -f standby.signal ]; then\n"),
            "{script}"
        );
        assert!(
            script.contains(r#"if [ "$age" -lt 5 ]; then sleep $(( 5 - age )); fi"#),
            "{script}"
        );
        assert!(
            script.ends_with(
                "exec flock '/data/postgres/pgbackrest/archive-push.lock' '/usr/bin/pgbackrest' \
                 --config='/d/pg0/pgbackrest.conf' --stanza='main' --log-level-file=error $quiet \
                 archive-push \"$1\"\n"
            ),
            "{script}"
        );
        assert_eq!(sh_quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn with_an_s3_repository_a_member_pushes_under_its_own_lock_and_no_key_is_written() {
        let mut s3 = S3Repo::new(
            "s3://bk/cluster-a/pgbackrest",
            Some("https://localhost:9443"),
            "us-east-1",
        )
        .unwrap();
        s3.keys = Some(S3Keys {
            key: "AKID".into(),
            secret: "very-secret".into(),
            token: None,
        });
        let config = ArchiveConfig::new(Repo::S3(s3), "main");
        let script = config.push_script(
            Path::new("/d/pg0/pgbackrest.conf"),
            Path::new("/d/pg0/pgbackrest"),
        );
        assert!(
            script.contains("exec flock '/d/pg0/pgbackrest/archive-push.lock' "),
            "{script}"
        );
        let conf = config.pgbackrest_conf(
            Path::new("/d/pg0/data"),
            5432,
            Path::new("/d/pg0/run"),
            Path::new("/d/pg0/pgbackrest"),
        );
        assert!(
            conf.starts_with("[global]\nrepo1-type=s3\nrepo1-path=/cluster-a/pgbackrest\n"),
            "{conf}"
        );
        assert!(conf.contains("\nrepo1-retention-full=2\n"), "{conf}");
        assert!(
            !conf.contains("AKID") && !conf.contains("very-secret"),
            "{conf}"
        );
        assert!(
            !script.contains("AKID") && !script.contains("very-secret"),
            "{script}"
        );
    }
}
