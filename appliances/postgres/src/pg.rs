//! One local PostgreSQL 15 server: its files, its process and the few queries the
//! supervisor needs.
//!
//! Files in the instance directory (`<dir>`):
//!
//! ```text
//! data/                    PGDATA (mode 0700, owned by the `postgres` OS user when root)
//! data/paas.conf           listen address, port, replication settings (rewritten before
//!                          every start, because pg_basebackup copies the primary's)
//! data/paas_sync.conf      synchronous_standby_names, rewritten by the primary
//! data/paas_standby.conf   primary_conninfo of a standby (mode 0600: holds the password)
//! data/standby.signal      present iff the data is started as a standby
//! data/paas_upstream       the member a standby's data follows; absent for a primary
//! tls/                     the cluster's certificate (ca.pem, server.pem, server-key.pem;
//!                          0600, owned by the server's user), copied from `--tls-dir`
//!                          before every start and every clone or rewind
//! postgres.log             the server's stderr
//! pgbackrest.conf, pgbackrest/, run/  with archiving only (see `crate::archive`)
//! ```
//!
//! With a certificate (`PgConfig::tls_dir`), the server runs with `ssl = on`, and the
//! members' own libpq connections to each other (streaming replication, pg_basebackup,
//! pg_rewind) require it with `sslmode=verify-full` against the cluster CA. The
//! supervisor's queries to its own server stay plain TCP on the member's loopback
//! address. Clients choose: `pg_hba.conf` accepts both, so the URL handed to apps
//! decides (see `crate::provision`).
//!
//! `postgresql.conf` gets three `include_if_exists` lines at initdb, and `pg_hba.conf`
//! (rewritten before every start) requires scram-sha-256 for every connection. No Unix
//! socket is opened unless the cluster archives (`crate::archive`): then one in
//! `<dir>/run` (0700, the server's user's), for pgBackRest and the superuser only. The
//! superuser `postgres` also replicates; its password comes from the supervisor config.
//!
//! When the supervisor runs as root, short-lived tools (initdb, pg_basebackup, pg_rewind)
//! run through `runuser -u postgres --`, and the server itself is spawned directly with
//! its uid/gid switched in the child, so it can carry a parent-death signal: when the
//! supervisor dies (even by SIGKILL), the postmaster is killed with it and never lingers
//! as an unsupervised primary.
//!
//! Invariant: `synchronous_standby_names` is never empty. A primary with no confirmed
//! sync names [`NO_SYNC`], a name no standby has, so commits wait instead of being
//! acknowledged without a copy.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};
use tokio_postgres::{Client, NoTls};

use crate::archive::{push_script_file, socket_dir, ArchiveConfig, ArchiverStats, S3Keys};

/// The `synchronous_standby_names` of a primary without a confirmed sync: blocks commits.
pub const NO_SYNC: &str = "paas_no_sync_standby";

/// `pg_hba.conf`, rewritten before every start: passwords always; the Unix socket
/// (opened only for pgBackRest when archiving is on, in a directory only the server's
/// user may enter) for the superuser alone.
const PG_HBA: &str = "# managed by the paas supervisor: passwords always\n\
    local all postgres scram-sha-256\n\
    host all all 0.0.0.0/0 scram-sha-256\nhost all all ::/0 scram-sha-256\n\
    host replication all 0.0.0.0/0 scram-sha-256\nhost replication all ::/0 scram-sha-256\n";

/// How long a query may take before PostgreSQL counts as not answering.
const QUERY_TIMEOUT: Duration = Duration::from_secs(3);

/// Why an operation on the local PostgreSQL failed.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// A file operation or spawn failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A tool (initdb, pg_basebackup, pg_rewind) exited unsuccessfully.
    #[error("{tool} failed ({status}): {output}")]
    Tool {
        /// The tool's name.
        tool: String,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// Its last output lines.
        output: String,
    },
    /// A query failed or the connection was refused.
    #[error("query: {0}")]
    Query(#[from] tokio_postgres::Error),
    /// A query or the start did not finish in time.
    #[error("{0} timed out")]
    Timeout(String),
    /// The server process exited while it was expected to run.
    #[error("postgres exited: {0}")]
    Exited(String),
    /// The rewind source is not a primary with a checkpoint on its current timeline yet.
    #[error("{0} is not yet a checkpointed primary")]
    NotReadySource(String),
    /// A member's registered address is not `host:port`.
    #[error("bad address {0:?}")]
    BadAddress(String),
    /// The `postgres` OS user does not exist while running as root.
    #[error("running as root but there is no `postgres` OS user (apt-get install -y postgresql)")]
    NoOsUser,
    /// initdb was asked to run where a database already exists.
    #[error("{0} already holds a database: refusing to run initdb over it")]
    WouldOverwrite(String),
    /// The cluster's certificate could not be copied for the server.
    #[error("tls: {0}")]
    Tls(#[from] paas_appliance::tls::InstallError),
    /// The server's OS user cannot reach the instance directory.
    #[error("the postgres OS user cannot reach {dir}: {blocked} is mode {mode:o} (owner uid {owner}); choose a data directory it can reach, or give it search permission (chmod o+x)")]
    Unreachable {
        /// The instance directory.
        dir: String,
        /// The first directory on the path the user may not enter.
        blocked: String,
        /// Its permission bits.
        mode: u32,
        /// Its owner.
        owner: u32,
    },
}

/// Checks that the server's OS user (`postgres`, when running as root) can reach `dir`:
/// every existing directory on its path must be searchable by that user. A data
/// directory under a 0700 parent (`mktemp -d`, root's home) would otherwise make the
/// member wait forever, with only the server's own log saying why.
pub fn check_reachable(dir: &Path) -> Result<(), PgError> {
    let Some((uid, gid)) = os_user()? else {
        return Ok(());
    };
    match paas_appliance::os_user::blocked_ancestor(dir, uid, gid)
        .map_err(io(format!("resolving {}", dir.display())))?
    {
        None => Ok(()),
        Some(b) => Err(PgError::Unreachable {
            dir: dir.display().to_string(),
            blocked: b.path.display().to_string(),
            mode: b.mode,
            owner: b.owner,
        }),
    }
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> PgError {
    let what = what.into();
    move |source| PgError::Io { what, source }
}

/// Where and how the instance runs.
#[derive(Debug, Clone)]
pub struct PgConfig {
    /// The member name (also `application_name` when it streams).
    pub name: String,
    /// The instance directory.
    pub dir: PathBuf,
    /// PostgreSQL binaries, e.g. `/usr/lib/postgresql/15/bin`.
    pub bin_dir: PathBuf,
    /// The address PostgreSQL listens on and others reach it at.
    pub host: String,
    /// Its port.
    pub port: u16,
    /// The `postgres` superuser's password (also used for replication).
    pub superuser_password: String,
    /// The cluster's certificate (`paas_appliance::tls` file names); `None`: no TLS.
    pub tls_dir: Option<PathBuf>,
    /// Continuous archiving with pgBackRest (`crate::archive`): a primary or standby
    /// pushes its WAL into it, a scratch instance ([`StartAs::Scratch`]) only fetches WAL
    /// from it (its S3 keys, if it holds them, go in the server's environment for
    /// pgBackRest's `restore_command`); `None`: no archive.
    pub archive: Option<ArchiveConfig>,
}

/// How the data is to be started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartAs {
    /// As primary requiring `sync` (or [`NO_SYNC`]) for commits.
    Primary {
        /// The confirmed sync, if any.
        sync: Option<String>,
    },
    /// As standby streaming from `upstream` at `addr` (`host:port`); an empty `addr`:
    /// replay local WAL only, streaming from no one.
    Standby {
        /// The member followed.
        upstream: String,
        /// Its PostgreSQL address.
        addr: String,
    },
    /// As a scratch copy restored from the archive (`crate::pitr`): recovering to its
    /// target as the restore's `recovery.signal` says, then a primary that archives
    /// nothing, requires no sync and serves only the restore's dump.
    Scratch,
}

/// What a status query saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Runtime {
    /// Writable primary.
    Primary {
        /// `pg_current_wal_flush_lsn()`.
        flush_lsn: u64,
        /// `pg_stat_replication`: (application_name, streaming?, flush_lsn).
        replicas: Vec<(String, bool, u64)>,
        /// The standby `synchronous_standby_names` requires (`None`: [`NO_SYNC`]).
        requires: Option<String>,
    },
    /// In recovery.
    Standby {
        /// `pg_last_wal_replay_lsn()`.
        replay_lsn: u64,
        /// Whether the WAL receiver is streaming.
        streaming: bool,
    },
}

/// The local server and its connection.
pub struct Postgres {
    cfg: PgConfig,
    child: Option<Child>,
    client: Option<Client>,
    pid: Arc<AtomicI32>,
}

impl Postgres {
    /// A handle for the instance in `cfg.dir`; nothing is started.
    pub fn new(cfg: PgConfig) -> Self {
        Postgres {
            cfg,
            child: None,
            client: None,
            pid: Arc::new(AtomicI32::new(0)),
        }
    }

    /// The postmaster's pid (0 when none runs), shared so the fencing watchdog can kill
    /// the server while a long action holds this handle.
    pub fn pid_cell(&self) -> Arc<AtomicI32> {
        self.pid.clone()
    }

    /// PGDATA.
    pub fn data_dir(&self) -> PathBuf {
        self.cfg.dir.join("data")
    }

    /// Whether PGDATA holds a cluster.
    pub fn has_data(&self) -> bool {
        self.data_dir().join("PG_VERSION").exists()
            && self.data_dir().join("global/pg_control").exists()
    }

    /// The member the data follows, from `paas_upstream`; `None` for primary data.
    pub fn upstream(&self) -> Option<String> {
        std::fs::read_to_string(self.data_dir().join("paas_upstream"))
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    }

    /// Whether the server process runs; reaps it (and returns its status) if it exited.
    pub fn poll_exit(&mut self) -> Option<String> {
        let child = self.child.as_mut()?;
        match child.try_wait() {
            Ok(None) => None,
            Ok(Some(status)) => {
                self.child = None;
                self.pid.store(0, Ordering::SeqCst);
                self.client = None;
                Some(status.to_string())
            }
            Err(err) => Some(err.to_string()),
        }
    }

    /// Whether a server process was started and has not been seen to exit.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Creates a fresh cluster in PGDATA (removing whatever was there).
    pub async fn initdb(&self) -> Result<(), PgError> {
        let data = self.data_dir();
        if self.has_data() {
            return Err(PgError::WouldOverwrite(data.display().to_string()));
        }
        self.fresh_data_dir().await?;
        let pwfile = self.cfg.dir.join("pwfile");
        write_owned(&pwfile, &self.cfg.superuser_password, 0o600)?;
        let result = self
            .tool("initdb")
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "--auth=scram-sha-256",
                "-E",
                "UTF8",
                "--locale=C",
            ])
            .arg(format!("--pwfile={}", pwfile.display()))
            .output()
            .await;
        let _ = std::fs::remove_file(&pwfile);
        check("initdb", result)?;
        let conf = data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).map_err(io("reading postgresql.conf"))?;
        text.push_str(
            "\n# managed by the paas supervisor\ninclude_if_exists = 'paas.conf'\ninclude_if_exists = 'paas_sync.conf'\ninclude_if_exists = 'paas_standby.conf'\n",
        );
        write_owned(&conf, &text, 0o600)?;
        write_owned(&data.join("pg_hba.conf"), PG_HBA, 0o600)
    }

    /// Replaces PGDATA with a copy of the server at `addr`, streaming WAL, and marks it
    /// as following `upstream`. The copy is made next to PGDATA and swapped in only when
    /// complete, so a failed clone (source gone) leaves the old data untouched.
    pub async fn basebackup(&self, upstream: &str, addr: &str) -> Result<(), PgError> {
        let clone = self.cfg.dir.join("data.clone");
        self.fresh_dir(&clone).await?;
        let (host, port) = split_addr(addr);
        let result = self
            .tool("pg_basebackup")
            .arg("-D")
            .arg(&clone)
            .args(["-X", "stream", "-c", "fast", "--no-sync"])
            .arg("-d")
            .arg(format!(
                "host={host} port={port} user=postgres application_name={}{}",
                self.cfg.name,
                self.ssl_conninfo()?
            ))
            .output()
            .await;
        check("pg_basebackup", result)?;
        let data = self.data_dir();
        if data.exists() {
            let old = self.cfg.dir.join("data.old");
            if old.exists() {
                tokio::fs::remove_dir_all(&old)
                    .await
                    .map_err(io("removing data.old"))?;
            }
            std::fs::rename(&data, &old).map_err(io("moving old PGDATA aside"))?;
            std::fs::rename(&clone, &data).map_err(io("moving the clone into place"))?;
            tokio::fs::remove_dir_all(&old)
                .await
                .map_err(io("removing the old PGDATA"))?;
        } else {
            std::fs::rename(&clone, &data).map_err(io("moving the clone into place"))?;
        }
        self.mark_upstream(Some(upstream))
    }

    /// Checks that the server at `addr` can be the source of a rewind or clone: it accepts
    /// a superuser session, is a primary, and its last checkpoint is on its current
    /// timeline (otherwise pg_rewind would see no divergence and do nothing).
    pub async fn probe_source(&self, addr: &str) -> Result<(), PgError> {
        let (host, port) = split_addr(addr);
        let port: u16 = port
            .parse()
            .map_err(|_| PgError::BadAddress(addr.to_string()))?;
        let mut config = tokio_postgres::Config::new();
        config
            .host(host)
            .port(port)
            .user("postgres")
            .password(&self.cfg.superuser_password)
            .dbname("postgres")
            .connect_timeout(Duration::from_secs(2));
        let (client, connection) = timed(config.connect(NoTls)).await?;
        let driver = tokio::spawn(connection);
        // A primary whose last checkpoint is on its current timeline: what pg_rewind reads.
        let ready: bool = timed(client.query_one(
            "SELECT CASE WHEN pg_is_in_recovery() THEN false ELSE \
             (SELECT timeline_id FROM pg_control_checkpoint()) = \
             ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int END",
            &[],
        ))
        .await?
        .get(0);
        driver.abort();
        if ready {
            Ok(())
        } else {
            Err(PgError::NotReadySource(addr.to_string()))
        }
    }

    /// Rewinds stopped PGDATA onto the timeline of the server at `addr` (pg_rewind runs
    /// crash recovery first if the data was not shut down cleanly).
    pub async fn rewind(&self, addr: &str) -> Result<(), PgError> {
        let (host, port) = split_addr(addr);
        let result = self
            .tool("pg_rewind")
            .arg("-D")
            .arg(self.data_dir())
            .arg(format!(
                "--source-server=host={host} port={port} user=postgres dbname=postgres{}",
                self.ssl_conninfo()?
            ))
            .output()
            .await;
        check("pg_rewind", result)
    }

    /// Writes the configuration for `how` and starts the server, waiting until it answers.
    pub async fn start(&mut self, how: &StartAs) -> Result<(), PgError> {
        if self.child.is_some() {
            return Ok(());
        }
        self.write_config(how)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.cfg.dir.join("postgres.log"))
            .map_err(io("opening postgres.log"))?;
        let log_err = log.try_clone().map_err(io("duplicating the log handle"))?;
        let mut command = std::process::Command::new(self.cfg.bin_dir.join("postgres"));
        command
            .arg("-D")
            .arg(self.data_dir())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        let ids = os_user()?;
        paas_appliance::process::tie(&mut command, libc::SIGKILL, ids);
        if ids.is_some() {
            command.env("HOME", self.cfg.dir.as_os_str());
        }
        let keys = self.cfg.archive.as_ref().and_then(|a| a.repo.keys());
        command.envs(keys.into_iter().flat_map(S3Keys::env));
        let child = Command::from(command)
            .spawn()
            .map_err(io("spawning postgres"))?;
        self.pid
            .store(child.id().map_or(0, |id| id as i32), Ordering::SeqCst);
        self.child = Some(child);
        let started = Instant::now();
        loop {
            if let Some(status) = self.poll_exit() {
                return Err(PgError::Exited(format!(
                    "{status} during start-up; see {}",
                    self.cfg.dir.join("postgres.log").display()
                )));
            }
            if self.connect().await.is_ok() {
                return Ok(());
            }
            if started.elapsed() > Duration::from_secs(120) {
                self.kill_now();
                return Err(PgError::Timeout("start-up".into()));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Points a running standby at another upstream: rewrites `primary_conninfo` and
    /// reloads (the WAL receiver reconnects; `recovery_target_timeline = 'latest'` lets
    /// it follow the new primary's timeline).
    pub async fn repoint(&mut self, upstream: &str, addr: &str) -> Result<(), PgError> {
        self.write_config(&StartAs::Standby {
            upstream: upstream.into(),
            addr: addr.into(),
        })?;
        self.query_one_bool("SELECT pg_reload_conf()").await?;
        Ok(())
    }

    /// Fast shutdown (SIGINT: abort sessions, checkpoint), SIGKILL after 10 s.
    pub async fn stop(&mut self) {
        self.client = None;
        self.pid.store(0, Ordering::SeqCst);
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Some(pid) = child.id() {
            // SAFETY: kill(2) on our own unreaped child.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGINT) };
        }
        if tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .is_err()
        {
            kill_group(&mut child);
            let _ = child.wait().await;
        }
    }

    /// SIGKILL to the postmaster and every backend at once: the fence. Commits waiting
    /// for the sync die unacknowledged.
    pub fn kill_now(&mut self) {
        self.client = None;
        self.pid.store(0, Ordering::SeqCst);
        if let Some(mut child) = self.child.take() {
            kill_group(&mut child);
            // Reaped by tokio's orphan handling; the group is dead already.
        }
    }

    /// Points `synchronous_standby_names` at `sync` (or [`NO_SYNC`]) and reloads, waiting
    /// until a new session sees the new value.
    pub async fn set_sync(&mut self, sync: Option<&str>) -> Result<(), PgError> {
        let value = sync.unwrap_or(NO_SYNC);
        write_owned(
            &self.data_dir().join("paas_sync.conf"),
            &format!("synchronous_standby_names = '\"{value}\"'\n"),
            0o600,
        )?;
        self.query_one_bool("SELECT pg_reload_conf()").await?;
        let started = Instant::now();
        loop {
            // A fresh session reads the reloaded file.
            self.client = None;
            let shown = self.client().await?;
            let row = timed(shown.query_one("SHOW synchronous_standby_names", &[])).await?;
            let now: String = row.get(0);
            if now.trim_matches('"') == value {
                // Walsenders pick the reload up on their next wake-up, within milliseconds.
                tokio::time::sleep(Duration::from_millis(100)).await;
                return Ok(());
            }
            if started.elapsed() > Duration::from_secs(5) {
                return Err(PgError::Timeout(
                    "reloading synchronous_standby_names".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `pg_promote()` and a checkpoint, so pg_rewind on others sees the new timeline.
    pub async fn promote(&mut self) -> Result<(), PgError> {
        if !self.query_one_bool("SELECT pg_promote(true, 60)").await? {
            return Err(PgError::Timeout("pg_promote".into()));
        }
        std::fs::remove_file(self.data_dir().join("paas_upstream")).ok();
        write_owned(&self.data_dir().join("paas_standby.conf"), "", 0o600)?;
        let client = self.client().await?;
        timed(client.batch_execute("CHECKPOINT")).await?;
        Ok(())
    }

    /// What the archiver reports (`pg_stat_archiver`).
    pub async fn archiver_stats(&mut self) -> Result<ArchiverStats, PgError> {
        let client = self.client().await?;
        let row = timed(client.query_one(
            "SELECT failed_count, last_failed_wal, \
             extract(epoch FROM last_failed_time)::float8, \
             extract(epoch FROM last_archived_time)::float8 FROM pg_stat_archiver",
            &[],
        ))
        .await?;
        let at = |secs: Option<f64>| {
            secs.filter(|s| *s >= 0.0)
                .map(|s| std::time::UNIX_EPOCH + Duration::from_secs_f64(s))
        };
        Ok(ArchiverStats {
            failed_count: row.get(0),
            last_failed_wal: row.get(1),
            last_failed_time: at(row.get(2)),
            last_archived_time: at(row.get(3)),
        })
    }

    /// What the running server says about itself.
    pub async fn runtime(&mut self) -> Result<Runtime, PgError> {
        let client = self.client().await?;
        let recovery: bool = timed(client.query_one("SELECT pg_is_in_recovery()", &[]))
            .await?
            .get(0);
        if recovery {
            let row = timed(client.query_one(
                "SELECT COALESCE((pg_last_wal_replay_lsn() - '0/0'::pg_lsn)::bigint, 0), \
                 EXISTS (SELECT 1 FROM pg_stat_wal_receiver WHERE status = 'streaming')",
                &[],
            ))
            .await?;
            Ok(Runtime::Standby {
                replay_lsn: row.get::<_, i64>(0) as u64,
                streaming: row.get(1),
            })
        } else {
            let flush: i64 = timed(client.query_one(
                "SELECT (pg_current_wal_flush_lsn() - '0/0'::pg_lsn)::bigint",
                &[],
            ))
            .await?
            .get(0);
            let rows = timed(client.query(
                "SELECT application_name, state = 'streaming', COALESCE((flush_lsn - '0/0'::pg_lsn)::bigint, 0) \
                 FROM pg_stat_replication",
                &[],
            ))
            .await?;
            let replicas = rows
                .iter()
                .map(|r| {
                    (
                        r.get::<_, String>(0),
                        r.get::<_, bool>(1),
                        r.get::<_, i64>(2) as u64,
                    )
                })
                .collect();
            let names: String = timed(client.query_one("SHOW synchronous_standby_names", &[]))
                .await?
                .get(0);
            let requires =
                Some(names.trim_matches('"').to_string()).filter(|n| n != NO_SYNC && !n.is_empty());
            Ok(Runtime::Primary {
                flush_lsn: flush as u64,
                replicas,
                requires,
            })
        }
    }

    /// A connected superuser client, reconnecting if the last one broke.
    pub async fn client(&mut self) -> Result<&Client, PgError> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            self.client = None;
            self.connect().await?;
        }
        Ok(self.client.as_ref().expect("connected above"))
    }

    async fn connect(&mut self) -> Result<(), PgError> {
        let mut config = tokio_postgres::Config::new();
        config
            .host(&self.cfg.host)
            .port(self.cfg.port)
            .user("postgres")
            .password(&self.cfg.superuser_password)
            .dbname("postgres")
            .application_name("paas-supervisor")
            .connect_timeout(Duration::from_secs(2));
        let (client, connection) = timed(config.connect(NoTls)).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        self.client = Some(client);
        Ok(())
    }

    async fn query_one_bool(&mut self, sql: &str) -> Result<bool, PgError> {
        let client = self.client().await?;
        Ok(timed(client.query_one(sql, &[])).await?.get(0))
    }

    fn write_config(&self, how: &StartAs) -> Result<(), PgError> {
        let data = self.data_dir();
        write_owned(
            &data.join("paas.conf"),
            &format!(
                "listen_addresses = '{host}'\nport = {port}\nunix_socket_directories = ''\n\
                 wal_level = replica\nmax_wal_senders = 10\nwal_keep_size = '256MB'\nwal_log_hints = on\n\
                 hot_standby = on\nsynchronous_commit = on\nwal_sender_timeout = '5s'\nwal_receiver_timeout = '5s'\n\
                 wal_retrieve_retry_interval = '500ms'\nshared_buffers = '32MB'\nmax_connections = 100\n\
                 logging_collector = off\nrecovery_target_timeline = 'latest'\n{ssl}{archive}",
                host = self.cfg.host,
                port = self.cfg.port,
                ssl = if *how == StartAs::Scratch { String::new() } else { self.ssl_settings()? },
                archive = match (&self.cfg.archive, how) {
                    (Some(archive), StartAs::Primary { .. } | StartAs::Standby { .. }) => archive
                        .server_settings(
                            &push_script_file(&self.cfg.dir),
                            &socket_dir(&self.cfg.dir),
                        ),
                    _ => "archive_mode = off\n".into(),
                },
            ),
            0o600,
        )?;
        write_owned(&data.join("pg_hba.conf"), PG_HBA, 0o600)?;
        match how {
            StartAs::Scratch => {
                std::fs::remove_file(data.join("standby.signal")).ok();
                write_owned(&data.join("paas_standby.conf"), "", 0o600)?;
                write_owned(&data.join("paas_sync.conf"), "", 0o600)?;
                self.mark_upstream(None)
            }
            StartAs::Primary { sync } => {
                std::fs::remove_file(data.join("standby.signal")).ok();
                write_owned(&data.join("paas_standby.conf"), "", 0o600)?;
                write_owned(
                    &data.join("paas_sync.conf"),
                    &format!(
                        "synchronous_standby_names = '\"{}\"'\n",
                        sync.as_deref().unwrap_or(NO_SYNC)
                    ),
                    0o600,
                )?;
                self.mark_upstream(None)
            }
            StartAs::Standby { addr, .. } if addr.is_empty() => {
                // Upstream unknown: replay local WAL only, and say so (empty marker), so
                // the next tick re-points it once a leader is known.
                write_owned(&data.join("standby.signal"), "", 0o600)?;
                write_owned(&data.join("paas_standby.conf"), "", 0o600)?;
                write_owned(&data.join("paas_upstream"), "", 0o600)
            }
            StartAs::Standby { upstream, addr } => {
                let (host, port) = split_addr(addr);
                write_owned(&data.join("standby.signal"), "", 0o600)?;
                write_owned(
                    &data.join("paas_sync.conf"),
                    &format!("synchronous_standby_names = '\"{NO_SYNC}\"'\n"),
                    0o600,
                )?;
                let password = conninfo_quote(&self.cfg.superuser_password);
                let ssl = self.ssl_conninfo()?.replace('\'', "''");
                write_owned(
                    &data.join("paas_standby.conf"),
                    &format!(
                        "primary_conninfo = 'host={host} port={port} user=postgres password=''{password}'' application_name={}{ssl}'\n",
                        self.cfg.name
                    ),
                    0o600,
                )?;
                self.mark_upstream(Some(upstream))
            }
        }
    }

    /// Copies the cluster's certificate into `<dir>/tls` for the server's user; `None`
    /// without one.
    fn tls(&self) -> Result<Option<paas_appliance::tls::Installed>, PgError> {
        let Some(from) = &self.cfg.tls_dir else {
            return Ok(None);
        };
        Ok(Some(paas_appliance::tls::install(
            from,
            &self.cfg.dir.join("tls"),
            os_user()?,
        )?))
    }

    /// The `paas.conf` lines that turn TLS on (empty without a certificate).
    fn ssl_settings(&self) -> Result<String, PgError> {
        Ok(match self.tls()? {
            None => String::new(),
            Some(t) => format!(
                "ssl = on\nssl_cert_file = {}\nssl_key_file = {}\n",
                conf_quote(&t.cert.to_string_lossy()),
                conf_quote(&t.key.to_string_lossy()),
            ),
        })
    }

    /// What a member's libpq connection to another member adds to its conninfo: TLS
    /// required and the server verified against the cluster CA (empty without one).
    fn ssl_conninfo(&self) -> Result<String, PgError> {
        Ok(match self.tls()? {
            None => String::new(),
            Some(t) => format!(
                " sslmode=verify-full sslrootcert='{}'",
                conninfo_quote(&t.ca.to_string_lossy())
            ),
        })
    }

    fn mark_upstream(&self, upstream: Option<&str>) -> Result<(), PgError> {
        let path = self.data_dir().join("paas_upstream");
        match upstream {
            Some(name) => write_owned(&path, name, 0o600),
            None => {
                std::fs::remove_file(&path).ok();
                Ok(())
            }
        }
    }

    async fn fresh_data_dir(&self) -> Result<(), PgError> {
        self.fresh_dir(&self.data_dir()).await
    }

    /// Empties (or creates) `dir` with mode 0700, owned by the server's OS user.
    async fn fresh_dir(&self, dir: &Path) -> Result<(), PgError> {
        if dir.exists() {
            tokio::fs::remove_dir_all(dir)
                .await
                .map_err(io(format!("removing {}", dir.display())))?;
        }
        std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io("chmod 0700"))?;
        chown(&self.cfg.dir)?;
        chown(dir)
    }

    fn tool(&self, name: &str) -> Command {
        let binary = self.cfg.bin_dir.join(name);
        let mut command = if nix_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(binary);
            c
        } else {
            Command::new(binary)
        };
        command
            .env("PGPASSWORD", &self.cfg.superuser_password)
            .current_dir(&self.cfg.dir)
            .kill_on_drop(true);
        command
    }
}

/// Whether this process runs as root (so the server's tools run as `postgres`).
pub fn is_root() -> bool {
    nix_root()
}

/// Gives `path` to the server's OS user when running as root.
pub fn chown_to_server(path: &Path) -> Result<(), PgError> {
    chown(path)
}

fn nix_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The `postgres` OS user's (uid, gid) when running as root; `None` otherwise.
fn os_user() -> Result<Option<(libc::uid_t, libc::gid_t)>, PgError> {
    paas_appliance::os_user::server_user("postgres").map_err(|_| PgError::NoOsUser)
}

fn chown(path: &Path) -> Result<(), PgError> {
    if let Some((uid, gid)) = os_user()? {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .map_err(io(format!("chown {}", path.display())))?;
    }
    Ok(())
}

/// Writes `contents` to `path` with `mode`, owned by the `postgres` user when root.
fn write_owned(path: &Path, contents: &str, mode: u32) -> Result<(), PgError> {
    std::fs::write(path, contents).map_err(io(format!("writing {}", path.display())))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(io(format!("chmod {}", path.display())))?;
    chown(path)
}

/// `text` escaped for a single-quoted libpq conninfo value (the quotes not included).
fn conninfo_quote(text: &str) -> String {
    text.replace('\\', "\\\\").replace('\'', "\\'")
}

/// `text` as a single-quoted `postgresql.conf` string.
fn conf_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

fn kill_group(child: &mut Child) {
    if let Some(pid) = child.id() {
        // SAFETY: kill(2) on the process group our unreaped child leads.
        unsafe { libc::kill(-(pid as libc::pid_t), libc::SIGKILL) };
    }
    let _ = child.start_kill();
}

fn split_addr(addr: &str) -> (&str, &str) {
    addr.rsplit_once(':').unwrap_or((addr, "5432"))
}

async fn timed<T>(
    f: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, PgError> {
    match tokio::time::timeout(QUERY_TIMEOUT, f).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(PgError::Timeout("query".into())),
    }
}

fn check(tool: &str, result: std::io::Result<std::process::Output>) -> Result<(), PgError> {
    let output = result.map_err(io(format!("running {tool}")))?;
    if output.status.success() {
        return Ok(());
    }
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let tail: Vec<&str> = text.lines().rev().take(8).collect();
    Err(PgError::Tool {
        tool: tool.into(),
        status: output.status,
        output: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_directory_under_a_private_parent_is_unreachable_for_the_server_user() {
        let tmp = tempfile::tempdir().unwrap();
        let private = tmp.path().join("private");
        std::fs::create_dir(&private).unwrap();
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let dir = private.join("data/postgres");
        let open = tmp.path().join("open/postgres");
        if nix_root() {
            match check_reachable(&dir) {
                Err(PgError::Unreachable { blocked, mode, .. }) => {
                    assert_eq!(blocked, private.display().to_string());
                    assert_eq!(mode, 0o700);
                }
                other => panic!("expected Unreachable, got {other:?}"),
            }
            let message = check_reachable(&dir).unwrap_err().to_string();
            assert!(
                message.contains(&private.display().to_string()),
                "{message}"
            );
        } else {
            // Not root: PostgreSQL runs as this user, which made the directory.
            assert!(check_reachable(&dir).is_ok());
        }
        assert!(check_reachable(&open).is_ok());
    }
}
