//! One local MariaDB 10.11 server: its files, its process and the queries and actions
//! the supervisor needs.
//!
//! Files in the instance directory (`<dir>`):
//!
//! ```text
//! data/                  the datadir (owned by the `mysql` OS user when root)
//! data/paas_member       present once the datadir is complete (installed or seeded):
//!                        what "has data" means; never installed over
//! data/paas_upstream     the member replica data follows; absent for primary data
//! my.cnf                 the whole configuration, rewritten before every start
//! backup.cnf             credentials of mariadb-backup when this member serves a seed
//! tmp/                   tmpdir; backup.tmp/ the seed server's scratch directory
//! mariadb.log            the server's error log
//! tls/                   the cluster's certificate (ca.pem, server.pem, server-key.pem;
//!                        0600, owned by the `mysql` user), copied from `--tls-dir`
//!                        before every start
//! ```
//!
//! With a certificate (`ServerConfig::tls_dir`) the server offers TLS (`ssl-ca`,
//! `ssl-cert`, `ssl-key`), replication requires it and verifies the upstream's
//! certificate against the cluster CA and its address (`MASTER_SSL = 1`,
//! `MASTER_SSL_VERIFY_SERVER_CERT = 1`; the replication accounts `REQUIRE SSL`), and
//! every connection of the supervisor (to its own server and to other members'
//! servers) is TLS verified the same way (`crate::tls`). Whether apps must use TLS is
//! their account's (`crate::provision`). The seed stream's transport is the
//! supervisor's (`crate::supervisor`); `mariadb-backup` itself only talks to its own
//! server.
//!
//! Durability and replication settings (every start, nothing from /etc/mysql):
//! GTID replication in strict mode, binlog on every member with `log_slave_updates`,
//! `sync_binlog=1`, `innodb_flush_log_at_trx_commit=1`, `sync_relay_log=1` with
//! `relay_log_recovery` (a replica acknowledges a transaction only once its relay log is
//! on disk). Semi-sync is lossless or nothing: `rpl_semi_sync_master_wait_point =
//! AFTER_SYNC` (a transaction is visible only after a replica acknowledged it), the
//! master timeout at its maximum ([`SEMI_SYNC_TIMEOUT_MS`], about 585 million years, so
//! the primary never falls back to asynchronous commits) and
//! `rpl_semi_sync_master_wait_no_slave = ON` (without a replica, commits wait). Only
//! the primary enables the master side; only the recorded sync the replica side.
//! Every replica is `read_only`; on 10.11 that stops SUPER too, and only READ ONLY ADMIN
//! (part of `ALL ON *.*`, which only the supervisor's account has) bypasses it.
//!
//! Who may acknowledge: every replica acknowledges (a transaction received without an
//! acknowledgement can never be acknowledged later: with GTID positioning a
//! reconnecting replica does not report what it already has, and its commit would wait
//! forever), so the primary decides who may be connected: each member replicates
//! through its own account ([`repl_user`]), created on each server locally
//! (`sql_log_bin=0`); locking an account (locally) and killing its dump threads keeps
//! that member from acknowledging anything.
//!
//! When the supervisor runs as root, mariadbd is spawned directly as the `mysql` user
//! with its uid switched in the child (so it keeps a parent-death signal: no mariadbd
//! outlives its supervisor); tools (mariadb-install-db, mariadb-backup, mbstream) run
//! through `runuser -u mysql --`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, OptsBuilder, Row};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

use crate::gtid::GtidPos;

/// `rpl_semi_sync_master_timeout`'s maximum on 10.11 (milliseconds): commits wait for a
/// replica's acknowledgement instead of ever falling back to asynchronous replication.
pub const SEMI_SYNC_TIMEOUT_MS: u64 = u64::MAX;

/// The supervisor's account on every member (all privileges, from any address).
pub const SUPERUSER: &str = "paas";

/// How long a query may take before the server counts as not answering.
const QUERY_TIMEOUT: Duration = Duration::from_secs(3);

/// The replication account member `member` connects to its upstream with.
pub fn repl_user(member: &str) -> String {
    format!("paas_repl_{member}")
}

/// The member a replication account belongs to.
pub fn member_of(user: &str) -> Option<&str> {
    user.strip_prefix("paas_repl_")
}

/// Why an operation on the local MariaDB failed.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A file operation or spawn failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A tool (mariadb-install-db, mariadb-backup, mbstream) exited unsuccessfully.
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
    Query(#[from] mysql_async::Error),
    /// A query or the start did not finish in time.
    #[error("{0} timed out")]
    Timeout(String),
    /// The server process exited while it was expected to run.
    #[error("mariadbd exited: {0}")]
    Exited(String),
    /// The server said something the supervisor cannot read.
    #[error("unexpected answer: {0}")]
    Unexpected(String),
    /// The `mysql` OS user does not exist while running as root.
    #[error("running as root but there is no `mysql` OS user (apt-get install -y mariadb-server)")]
    NoOsUser,
    /// Installing was asked for where a database already exists.
    #[error("{0} already holds a database: refusing to install over it")]
    WouldOverwrite(String),
    /// The seed source refused or broke off.
    #[error("seeding from {source_addr}: {reason}")]
    Seed {
        /// The serving member's health address.
        source_addr: String,
        /// What went wrong.
        reason: String,
    },
    /// The cluster's certificate could not be copied for the server.
    #[error("tls: {0}")]
    Tls(#[from] paas_appliance::tls::InstallError),
    /// The server's OS user cannot reach the instance directory.
    #[error("the mysql OS user cannot reach {dir}: {blocked} is mode {mode:o}; choose a data directory it can reach, or give it search permission (chmod o+x)")]
    Unreachable {
        /// The instance directory.
        dir: String,
        /// The first directory on the path the user may not enter.
        blocked: String,
        /// Its permission bits.
        mode: u32,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ServerError {
    let what = what.into();
    move |source| ServerError::Io { what, source }
}

/// Where and how the instance runs.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The member name.
    pub name: String,
    /// The instance directory.
    pub dir: PathBuf,
    /// The address mariadbd listens on and others reach it at.
    pub host: String,
    /// Its port.
    pub port: u16,
    /// `server_id`, unique in the cluster.
    pub server_id: u32,
    /// The superuser's password (also the replication accounts').
    pub superuser_password: String,
    /// The cluster's certificate (`paas_appliance::tls` file names); `None`: no TLS.
    pub tls_dir: Option<PathBuf>,
}

/// How the data is to be started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartAs {
    /// Writable, semi-sync master enabled (commits wait for the sync's acknowledgement).
    Primary,
    /// `read_only`, no replication threads yet ([`Mariadb::replicate`] starts them).
    /// `rejoin`: the data was a primary's: start with `--init-rpl-role=SLAVE` so
    /// transactions it binlogged but nobody acknowledged are rolled back and cut from
    /// its binlog (MDEV-21117, MDEV-33465).
    Replica {
        /// Whether the data last ran as a primary.
        rejoin: bool,
    },
}

/// The replication state of a replica (`SHOW SLAVE STATUS`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlaveStatus {
    /// `Slave_IO_Running`: `Yes`, `Connecting` or `No`.
    pub io: String,
    /// `Slave_SQL_Running = Yes`.
    pub sql_running: bool,
    /// Everything received into the relay log (`Gtid_IO_Pos`).
    pub io_pos: GtidPos,
    /// The last IO or SQL error, if any (number and text).
    pub error: Option<(u32, String)>,
}

/// What a status query saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Runtime {
    /// `@@read_only`.
    pub read_only: bool,
    /// `@@gtid_current_pos`.
    pub gtid_current: GtidPos,
    /// `@@gtid_binlog_pos`.
    pub gtid_binlog: GtidPos,
    /// `@@rpl_semi_sync_slave_enabled`: whether this server acknowledges to its upstream.
    pub semi_sync_slave: bool,
    /// `@@rpl_semi_sync_master_enabled`.
    pub semi_sync_master: bool,
    /// `Rpl_semi_sync_master_status`: OFF on an enabled master means it fell back to
    /// asynchronous commits (which the configuration is meant to make impossible).
    pub semi_sync_master_on: bool,
    /// `Rpl_semi_sync_master_clients`: replicas connected with acknowledgements on.
    pub semi_sync_clients: u32,
    /// The replication threads, when configured.
    pub slave: Option<SlaveStatus>,
    /// Members whose dump threads (replication connections) this server serves.
    pub connected: Vec<String>,
    /// Replication accounts on this server: (member, locked).
    pub accounts: Vec<(String, bool)>,
}

/// The local server and its connection.
pub struct Mariadb {
    cfg: ServerConfig,
    child: Option<Child>,
    conn: Option<Conn>,
    pid: Arc<AtomicI32>,
}

impl Mariadb {
    /// A handle for the instance in `cfg.dir`; nothing is started.
    pub fn new(cfg: ServerConfig) -> Self {
        Mariadb {
            cfg,
            child: None,
            conn: None,
            pid: Arc::new(AtomicI32::new(0)),
        }
    }

    /// mariadbd's pid (0 when none runs), shared so the fencing watchdog can kill the
    /// server while a long action holds this handle.
    pub fn pid_cell(&self) -> Arc<AtomicI32> {
        self.pid.clone()
    }

    /// The datadir.
    pub fn data_dir(&self) -> PathBuf {
        self.cfg.dir.join("data")
    }

    /// Whether the datadir holds a complete database.
    pub fn has_data(&self) -> bool {
        self.data_dir().join("paas_member").exists()
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
                self.conn = None;
                Some(status.to_string())
            }
            Err(err) => Some(err.to_string()),
        }
    }

    /// Whether a server process was started and has not been seen to exit.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Creates a fresh datadir with `mariadb-install-db`; the superuser account is
    /// created at the first start ([`StartAs::Primary`] after this). Refuses to run
    /// over a complete datadir.
    pub async fn install(&self) -> Result<(), ServerError> {
        let data = self.data_dir();
        if self.has_data() {
            return Err(ServerError::WouldOverwrite(data.display().to_string()));
        }
        self.fresh_dir(&data).await?;
        self.fresh_dir(&self.cfg.dir.join("tmp")).await?;
        let result = self
            .tool("mariadb-install-db")
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--tmpdir={}", self.cfg.dir.join("tmp").display()))
            .args([
                "--auth-root-authentication-method=socket",
                "--skip-test-db",
                "--skip-name-resolve",
            ])
            .output()
            .await;
        check("mariadb-install-db", result)?;
        let password = quote(&self.cfg.superuser_password);
        write_owned(
            &self.cfg.dir.join("init.sql"),
            &format!(
                "SET SESSION sql_log_bin = 0;\n\
                 CREATE USER IF NOT EXISTS '{SUPERUSER}'@'%' IDENTIFIED BY {password};\n\
                 GRANT ALL PRIVILEGES ON *.* TO '{SUPERUSER}'@'%' WITH GRANT OPTION;\n"
            ),
            0o600,
        )?;
        write_owned(&data.join("paas_member"), &self.cfg.name, 0o600)
    }

    /// Writes the configuration for `how` and starts the server, waiting until it
    /// answers; a primary is writable and requires acknowledgements when this returns.
    pub async fn start(&mut self, how: &StartAs) -> Result<(), ServerError> {
        if self.child.is_some() {
            return Ok(());
        }
        std::fs::create_dir_all(self.cfg.dir.join("tmp")).map_err(io("creating tmp/"))?;
        chown(&self.cfg.dir.join("tmp"))?;
        let init = self.cfg.dir.join("init.sql");
        let cnf = self.cfg.dir.join("my.cnf");
        if let Some(from) = &self.cfg.tls_dir {
            paas_appliance::tls::install(from, &self.tls_installed_dir(), os_user()?)?;
        }
        write_owned(&cnf, &self.my_cnf(how, init.exists()), 0o600)?;
        let mut command = std::process::Command::new("mariadbd");
        command
            .arg(format!("--defaults-file={}", cnf.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let ids = os_user()?;
        paas_appliance::process::tie(&mut command, libc::SIGKILL, ids);
        let child = Command::from(command)
            .spawn()
            .map_err(io("spawning mariadbd"))?;
        self.pid
            .store(child.id().map_or(0, |id| id as i32), Ordering::SeqCst);
        self.child = Some(child);
        let started = Instant::now();
        loop {
            if let Some(status) = self.poll_exit() {
                return Err(ServerError::Exited(format!(
                    "{status} during start-up; see {}",
                    self.cfg.dir.join("mariadb.log").display()
                )));
            }
            if self.connect().await.is_ok() {
                break;
            }
            if started.elapsed() > Duration::from_secs(120) {
                self.kill_now();
                return Err(ServerError::Timeout("start-up".into()));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // The superuser exists now; the file held its password.
        std::fs::remove_file(&init).ok();
        if *how == StartAs::Primary {
            self.mark_upstream(None)?;
        }
        Ok(())
    }

    fn my_cnf(&self, how: &StartAs, init_file: bool) -> String {
        let dir = &self.cfg.dir;
        let primary = *how == StartAs::Primary;
        let on = |b: bool| if b { "ON" } else { "OFF" };
        let mut cnf = format!(
            "# written by the paas supervisor before every start\n[mariadbd]\n\
             datadir={data}\ntmpdir={dir}/tmp\nsocket={dir}/mysqld.sock\npid-file={dir}/mysqld.pid\n\
             log-error={dir}/mariadb.log\nbind-address={host}\nport={port}\nskip-name-resolve\n\
             server-id={id}\nlog-bin=binlog\nrelay-log=relay\nlog-slave-updates=ON\nbinlog-format=ROW\n\
             gtid-strict-mode=ON\nsync-binlog=1\ninnodb-flush-log-at-trx-commit=1\n\
             sync-relay-log=1\nsync-master-info=1\nrelay-log-recovery=ON\nskip-slave-start\n\
             rpl-semi-sync-master-enabled={master}\nrpl-semi-sync-slave-enabled={slave}\n\
             rpl-semi-sync-master-wait-point=AFTER_SYNC\nrpl-semi-sync-master-timeout={SEMI_SYNC_TIMEOUT_MS}\n\
             rpl-semi-sync-master-wait-no-slave=ON\nread-only={read_only}\n\
             slave-net-timeout=4\ninnodb-buffer-pool-size=32M\nmax-connections=200\n",
            data = self.data_dir().display(),
            dir = dir.display(),
            host = self.cfg.host,
            port = self.cfg.port,
            id = self.cfg.server_id,
            master = on(primary),
            // The truncation of unacknowledged transactions at start-up runs only with
            // the replica side enabled; `replicate` sets it to the role's value after.
            slave = on(matches!(how, StartAs::Replica { rejoin: true })),
            // Always read-only at start: a primary opens writes only after locking
            // out whoever may not acknowledge (`open_writes`).
            read_only = on(true),
        );
        if let StartAs::Replica { rejoin: true } = how {
            cnf.push_str("init-rpl-role=SLAVE\n");
        }
        if init_file {
            cnf.push_str(&format!("init-file={}/init.sql\n", dir.display()));
        }
        if let Some(tls) = self.tls() {
            cnf.push_str(&format!(
                "ssl-ca={}\nssl-cert={}\nssl-key={}\n",
                tls.ca.display(),
                tls.cert.display(),
                tls.key.display()
            ));
        }
        cnf
    }

    /// Where the server's copy of the cluster's certificate is.
    fn tls_installed_dir(&self) -> PathBuf {
        self.cfg.dir.join("tls")
    }

    /// The installed certificate's paths, when the cluster has one.
    fn tls(&self) -> Option<paas_appliance::tls::Installed> {
        self.cfg
            .tls_dir
            .as_ref()
            .map(|_| paas_appliance::tls::Installed::at(&self.tls_installed_dir()))
    }

    /// The CA our connections verify servers against, when the cluster has one.
    fn ca_file(&self) -> Option<PathBuf> {
        self.tls().map(|t| t.ca)
    }

    /// Replicates from `upstream` (member name) at `addr` (`host:port`) by GTID, with
    /// acknowledgements on (always: a replica that received a transaction without
    /// acknowledging it could never acknowledge it later, and its commit would wait
    /// forever); the data then counts as following `upstream`. After a rejoin the
    /// position starts from the data's own binlog.
    pub async fn replicate(
        &mut self,
        upstream: &str,
        addr: &str,
        from_binlog: bool,
    ) -> Result<(), ServerError> {
        let (host, port) = addr
            .rsplit_once(':')
            .ok_or_else(|| ServerError::Unexpected(format!("address {addr:?}")))?;
        let me = self.cfg.name.clone();
        let password = quote(&self.cfg.superuser_password);
        let ssl = match self.tls() {
            Some(t) => format!(
                ", MASTER_SSL = 1, MASTER_SSL_CA = {}, MASTER_SSL_VERIFY_SERVER_CERT = 1",
                quote(&t.ca.to_string_lossy())
            ),
            None => ", MASTER_SSL = 0, MASTER_SSL_VERIFY_SERVER_CERT = 0".into(),
        };
        let mut statements = vec!["STOP SLAVE".to_string()];
        if from_binlog {
            statements.push("SET GLOBAL gtid_slave_pos = @@gtid_binlog_pos".into());
        }
        statements.extend([
            format!(
                "CHANGE MASTER TO MASTER_HOST = {}, MASTER_PORT = {port}, MASTER_USER = {}, \
                 MASTER_PASSWORD = {password}, MASTER_USE_GTID = slave_pos, \
                 MASTER_CONNECT_RETRY = 1, MASTER_HEARTBEAT_PERIOD = 1{ssl}",
                quote(host),
                quote(&repl_user(&me))
            ),
            "SET GLOBAL rpl_semi_sync_slave_enabled = 1".into(),
            "START SLAVE".into(),
        ]);
        for sql in statements {
            self.exec(&sql).await?;
        }
        self.mark_upstream(Some(upstream))
    }

    /// Promotes this replica: stops receiving, waits until the SQL thread applied
    /// everything in the relay log, drops the replication configuration, turns the
    /// master side of semi-sync on and opens writes ([`Mariadb::open_writes`]).
    pub async fn promote(&mut self, sync: Option<&str>) -> Result<(), ServerError> {
        self.exec("STOP SLAVE IO_THREAD").await?;
        if let Some(slave) = self.slave_status().await? {
            let received = slave.io_pos.to_string();
            let waited: Option<i64> = self
                .query_first(&format!(
                    "SELECT MASTER_GTID_WAIT({}, 60)",
                    quote(&received)
                ))
                .await?;
            if waited != Some(0) {
                return Err(ServerError::Timeout(format!(
                    "applying the relay log up to {received}"
                )));
            }
        }
        for sql in [
            "STOP SLAVE",
            "RESET SLAVE ALL",
            "SET GLOBAL rpl_semi_sync_slave_enabled = 0",
            "SET GLOBAL rpl_semi_sync_master_enabled = 1",
        ] {
            self.exec(sql).await?;
        }
        self.open_writes(sync).await?;
        self.mark_upstream(None)
    }

    /// Makes the server writable; with a `sync`, after locking out every other member
    /// with a replication account, so no commit is ever acknowledged by a member that
    /// is not the sync.
    pub async fn open_writes(&mut self, sync: Option<&str>) -> Result<(), ServerError> {
        if let Some(sync) = sync {
            self.lock_all_but(sync).await?;
        }
        self.exec("SET GLOBAL read_only = 0").await
    }

    /// Locks out every member with a replication account here but `member`.
    pub async fn lock_all_but(&mut self, member: &str) -> Result<(), ServerError> {
        let me = self.cfg.name.clone();
        let others: Vec<String> = self
            .runtime()
            .await?
            .accounts
            .into_iter()
            .map(|(m, _)| m)
            .filter(|m| *m != me && m != member)
            .collect();
        self.lock(&others).await
    }

    /// Locks the replication accounts of `members` on this server only (not
    /// replicated) and ends their replication connections.
    pub async fn lock(&mut self, members: &[String]) -> Result<(), ServerError> {
        for member in members {
            let user = quote(&repl_user(member));
            self.exec_local(&format!("ALTER USER IF EXISTS {user}@'%' ACCOUNT LOCK"))
                .await?;
            let ids: Vec<u64> = self
                .conn()
                .await?
                .exec(
                    "SELECT id FROM information_schema.PROCESSLIST WHERE user = ? AND command LIKE 'Binlog Dump%'",
                    (repl_user(member),),
                )
                .await?;
            for id in ids {
                // Already gone is fine.
                let _ = self.exec(&format!("KILL CONNECTION {id}")).await;
            }
        }
        Ok(())
    }

    /// Unlocks member `member`'s replication account on this server only.
    pub async fn unlock(&mut self, member: &str) -> Result<(), ServerError> {
        let user = quote(&repl_user(member));
        self.exec_local(&format!("ALTER USER IF EXISTS {user}@'%' ACCOUNT UNLOCK"))
            .await
    }

    /// Creates the replication accounts of `members` on this server only: written to
    /// the binlog they would wait for an acknowledgement nobody can give before the
    /// accounts exist. Every primary creates the ones it lacks. With TLS they
    /// `REQUIRE SSL`: a member never sends the password or receives the binlog in clear.
    pub async fn create_accounts(&mut self, members: &[String]) -> Result<(), ServerError> {
        let password = quote(&self.cfg.superuser_password);
        let require = match self.tls() {
            Some(_) => "SSL",
            None => "NONE",
        };
        for member in members {
            let user = quote(&repl_user(member));
            self.exec_local(&format!(
                "CREATE USER IF NOT EXISTS {user}@'%' IDENTIFIED BY {password}"
            ))
            .await?;
            self.exec_local(&format!("GRANT REPLICATION SLAVE ON *.* TO {user}@'%'"))
                .await?;
            self.exec_local(&format!("ALTER USER {user}@'%' REQUIRE {require}"))
                .await?;
        }
        Ok(())
    }

    /// Waits until the replica at `addr` has received (relay log) every transaction of
    /// `target`, for at most `patience`.
    pub async fn wait_received(
        &self,
        addr: &str,
        target: &GtidPos,
        patience: Duration,
    ) -> Result<(), ServerError> {
        let (host, port) = addr
            .rsplit_once(':')
            .ok_or_else(|| ServerError::Unexpected(format!("address {addr:?}")))?;
        let port: u16 = port
            .parse()
            .map_err(|_| ServerError::Unexpected(format!("address {addr:?}")))?;
        let mut conn = timed(Conn::new(self.opts(host, port))).await?;
        let started = Instant::now();
        loop {
            let row: Option<Row> = timed(conn.query_first("SHOW SLAVE STATUS")).await?;
            if let Some(slave) = row.map(|r| slave_status(&r)).transpose()? {
                if slave.io_pos.covers(target) {
                    let _ = conn.disconnect().await;
                    return Ok(());
                }
            }
            if started.elapsed() > patience {
                return Err(ServerError::Timeout(format!("{addr} receiving {target}")));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Graceful shutdown (SIGTERM), SIGKILL of the whole group after 30 s.
    pub async fn stop(&mut self) {
        self.conn = None;
        self.pid.store(0, Ordering::SeqCst);
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Some(pid) = child.id() {
            // SAFETY: kill(2) on our own unreaped child.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
        }
        if tokio::time::timeout(Duration::from_secs(30), child.wait())
            .await
            .is_err()
        {
            kill_group(&mut child);
            let _ = child.wait().await;
        }
    }

    /// SIGKILL to mariadbd's process group: the fence. Commits waiting for an
    /// acknowledgement die unacknowledged (they stay prepared, and a rejoin with
    /// `--init-rpl-role=SLAVE` rolls them back).
    pub fn kill_now(&mut self) {
        self.conn = None;
        self.pid.store(0, Ordering::SeqCst);
        if let Some(mut child) = self.child.take() {
            kill_group(&mut child);
        }
    }

    /// What the running server says about itself.
    pub async fn runtime(&mut self) -> Result<Runtime, ServerError> {
        type Vars = (i64, String, String, i64, i64);
        let vars: Option<Vars> = self
            .query_first(
                "SELECT @@read_only, @@gtid_current_pos, @@gtid_binlog_pos, \
                 @@rpl_semi_sync_slave_enabled, @@rpl_semi_sync_master_enabled",
            )
            .await?;
        let (read_only, current, binlog, ack, master) =
            vars.ok_or_else(|| ServerError::Unexpected("no variables".into()))?;
        let status: Vec<(String, String)> = timed(self.conn().await?.query(
            "SHOW GLOBAL STATUS WHERE Variable_name IN ('Rpl_semi_sync_master_status', 'Rpl_semi_sync_master_clients')",
        ))
        .await?;
        let value = |name: &str| {
            status
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        let connected: Vec<String> = timed(self.conn().await?.query(
            "SELECT user FROM information_schema.PROCESSLIST WHERE command LIKE 'Binlog Dump%'",
        ))
        .await?;
        let accounts: Vec<(String, Option<String>)> = timed(self.conn().await?.query(
            "SELECT user, JSON_VALUE(priv, '$.account_locked') FROM mysql.global_priv WHERE user LIKE 'paas\\_repl\\_%'",
        ))
        .await?;
        let slave = self.slave_status().await?;
        let gtid =
            |text: &str| GtidPos::parse(text).map_err(|e| ServerError::Unexpected(e.to_string()));
        Ok(Runtime {
            read_only: read_only != 0,
            gtid_current: gtid(&current)?,
            gtid_binlog: gtid(&binlog)?,
            semi_sync_slave: ack != 0,
            semi_sync_master: master != 0,
            semi_sync_master_on: value("Rpl_semi_sync_master_status").eq_ignore_ascii_case("ON"),
            semi_sync_clients: value("Rpl_semi_sync_master_clients").parse().unwrap_or(0),
            slave,
            connected: connected
                .iter()
                .filter_map(|u| member_of(u).map(str::to_string))
                .collect(),
            accounts: accounts
                .iter()
                .filter_map(|(u, locked)| {
                    member_of(u).map(|m| {
                        (
                            m.to_string(),
                            locked.as_deref() == Some("true") || locked.as_deref() == Some("1"),
                        )
                    })
                })
                .collect(),
        })
    }

    async fn slave_status(&mut self) -> Result<Option<SlaveStatus>, ServerError> {
        let row: Option<Row> = self.query_first("SHOW SLAVE STATUS").await?;
        row.map(|r| slave_status(&r)).transpose()
    }

    /// The `mariadb-backup` command that streams this server's data (mbstream format)
    /// to its stdout, for a member seeding from it; its credentials are in a 0600 file.
    pub fn backup_command(&self) -> Result<Command, ServerError> {
        let scratch = self.cfg.dir.join("backup.tmp");
        std::fs::create_dir_all(&scratch).map_err(io("creating backup.tmp"))?;
        chown(&scratch)?;
        let cnf = self.cfg.dir.join("backup.cnf");
        write_owned(
            &cnf,
            &format!(
                "[mariadb-backup]\nuser={SUPERUSER}\npassword={}\nhost={}\nport={}\ndatadir={}\n",
                self.cfg.superuser_password,
                self.cfg.host,
                self.cfg.port,
                self.data_dir().display()
            ),
            0o600,
        )?;
        let mut command = self.tool("mariadb-backup");
        command
            .arg(format!("--defaults-file={}", cnf.display()))
            .args(["--backup", "--stream=mbstream"])
            .arg(format!("--target-dir={}", scratch.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        Ok(command)
    }

    /// Replaces the datadir with a copy of the member whose supervisor serves seeds at
    /// `source` (its health address), authenticated with the superuser password. The
    /// copy is extracted and prepared next to the datadir and swapped in only when
    /// complete, so a failed seed leaves the old data untouched. Returns the copy's
    /// GTID position, which replication starts from, and marks the data as following
    /// `upstream`.
    pub async fn seed(&mut self, source: &str, upstream: &str) -> Result<GtidPos, ServerError> {
        let seed_dir = self.cfg.dir.join("data.seed");
        self.fresh_dir(&seed_dir).await?;
        let fail = |reason: String| ServerError::Seed {
            source_addr: source.to_string(),
            reason,
        };
        let mut stream = tokio::net::TcpStream::connect(source)
            .await
            .map_err(|e| fail(e.to_string()))?;
        stream
            .write_all(
                format!(
                    "GET /seed HTTP/1.0\r\nHost: {source}\r\nAuthorization: Bearer {}\r\n\r\n",
                    self.cfg.superuser_password
                )
                .as_bytes(),
            )
            .await
            .map_err(|e| fail(e.to_string()))?;
        let mut reader = tokio::io::BufReader::new(stream);
        let mut status = String::new();
        reader
            .read_line(&mut status)
            .await
            .map_err(|e| fail(e.to_string()))?;
        if status.split_whitespace().nth(1) != Some("200") {
            return Err(fail(format!("answered {}", status.trim())));
        }
        loop {
            let mut line = String::new();
            let n = reader
                .read_line(&mut line)
                .await
                .map_err(|e| fail(e.to_string()))?;
            if n == 0 || line == "\r\n" || line == "\n" {
                break;
            }
        }
        let mut extract = self
            .tool("mbstream")
            .arg("-x")
            .arg("-C")
            .arg(&seed_dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(io("running mbstream"))?;
        let mut stdin = extract.stdin.take().expect("piped");
        let copied = tokio::io::copy(&mut reader, &mut stdin).await;
        drop(stdin);
        let output = extract
            .wait_with_output()
            .await
            .map_err(io("waiting for mbstream"))?;
        copied.map_err(|e| fail(format!("receiving: {e}")))?;
        check("mbstream", Ok(output))?;
        // mariadb-backup writes these last: their presence means the stream is whole.
        for file in ["xtrabackup_checkpoints", "xtrabackup_info"] {
            if !seed_dir.join(file).exists() {
                return Err(fail(format!("the stream ended before {file}")));
            }
        }
        let prepared = self
            .tool("mariadb-backup")
            .arg("--no-defaults")
            .arg("--prepare")
            .arg(format!("--target-dir={}", seed_dir.display()))
            .output()
            .await;
        check("mariadb-backup --prepare", prepared)?;
        let info = std::fs::read_to_string(seed_dir.join("xtrabackup_binlog_info"))
            .map_err(io("reading xtrabackup_binlog_info"))?;
        let gtid = info.split_whitespace().nth(2).unwrap_or("");
        let gtid = GtidPos::parse(gtid).map_err(|e| fail(e.to_string()))?;
        write_owned(&seed_dir.join("paas_member"), &self.cfg.name, 0o600)?;
        write_owned(&seed_dir.join("paas_upstream"), upstream, 0o600)?;
        // The copy's binlog position goes with it; its own (empty) binlog starts fresh.
        write_owned(&seed_dir.join("paas_seed_gtid"), &gtid.to_string(), 0o600)?;
        self.stop().await;
        let data = self.data_dir();
        let old = self.cfg.dir.join("data.old");
        if old.exists() {
            tokio::fs::remove_dir_all(&old)
                .await
                .map_err(io("removing data.old"))?;
        }
        if data.exists() {
            std::fs::rename(&data, &old).map_err(io("moving the old datadir aside"))?;
        }
        std::fs::rename(&seed_dir, &data).map_err(io("moving the seed into place"))?;
        if old.exists() {
            tokio::fs::remove_dir_all(&old)
                .await
                .map_err(io("removing the old datadir"))?;
        }
        Ok(gtid)
    }

    /// After a seed: the position the copy was taken at, consumed once.
    pub fn take_seed_position(&self) -> Option<GtidPos> {
        let path = self.data_dir().join("paas_seed_gtid");
        let text = std::fs::read_to_string(&path).ok()?;
        let pos = GtidPos::parse(text.trim()).ok();
        pos
    }

    /// Forgets the seed position once replication started from it.
    pub fn clear_seed_position(&self) {
        std::fs::remove_file(self.data_dir().join("paas_seed_gtid")).ok();
    }

    /// Sets `gtid_slave_pos` (a seeded copy starts replicating where it was taken).
    pub async fn set_slave_pos(&mut self, pos: &GtidPos) -> Result<(), ServerError> {
        self.exec("STOP SLAVE").await?;
        self.exec("RESET SLAVE ALL").await?;
        self.exec(&format!(
            "SET GLOBAL gtid_slave_pos = {}",
            quote(&pos.to_string())
        ))
        .await
    }

    /// A connected superuser session, reconnecting if the last one broke.
    async fn conn(&mut self) -> Result<&mut Conn, ServerError> {
        if self.conn.is_none() {
            self.connect().await?;
        }
        Ok(self.conn.as_mut().expect("connected above"))
    }

    fn opts(&self, host: &str, port: u16) -> OptsBuilder {
        let opts = OptsBuilder::default()
            .ip_or_hostname(host)
            .tcp_port(port)
            .user(Some(SUPERUSER))
            .pass(Some(self.cfg.superuser_password.clone()))
            .prefer_socket(false);
        crate::tls::with_tls(opts, self.ca_file().as_deref())
    }

    async fn connect(&mut self) -> Result<(), ServerError> {
        let opts = self.opts(&self.cfg.host.clone(), self.cfg.port);
        let conn = timed(Conn::new(opts)).await?;
        self.conn = Some(conn);
        Ok(())
    }

    /// Runs `sql`; a broken connection is dropped so the next call reconnects.
    pub async fn exec(&mut self, sql: &str) -> Result<(), ServerError> {
        let result = timed(self.conn().await?.query_drop(sql)).await;
        if result.is_err() {
            self.conn = None;
        }
        result
    }

    /// Runs `sql` without writing it to the binlog: a change of this server alone.
    async fn exec_local(&mut self, sql: &str) -> Result<(), ServerError> {
        self.exec("SET SESSION sql_log_bin = 0").await?;
        let result = self.exec(sql).await;
        let _ = self.exec("SET SESSION sql_log_bin = 1").await;
        result
    }

    async fn query_first<T>(&mut self, sql: &str) -> Result<Option<T>, ServerError>
    where
        T: mysql_async::prelude::FromRow + Send + 'static,
    {
        let result = timed(self.conn().await?.query_first(sql)).await;
        if result.is_err() {
            self.conn = None;
        }
        result
    }

    fn mark_upstream(&self, upstream: Option<&str>) -> Result<(), ServerError> {
        let path = self.data_dir().join("paas_upstream");
        match upstream {
            Some(name) => write_owned(&path, name, 0o600),
            None => {
                std::fs::remove_file(&path).ok();
                Ok(())
            }
        }
    }

    /// Empties (or creates) `dir` with mode 0700, owned by the server's OS user.
    async fn fresh_dir(&self, dir: &Path) -> Result<(), ServerError> {
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
        let mut command = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "mysql", "--", name]);
            c
        } else {
            Command::new(name)
        };
        command.current_dir(&self.cfg.dir).kill_on_drop(true);
        command
    }
}

fn slave_status(row: &Row) -> Result<SlaveStatus, ServerError> {
    let text = |name: &str| -> String {
        row.get_opt::<String, &str>(name)
            .and_then(Result::ok)
            .unwrap_or_default()
    };
    let number = |name: &str| -> Option<u64> { text(name).parse().ok() };
    let io_pos =
        GtidPos::parse(&text("Gtid_IO_Pos")).map_err(|e| ServerError::Unexpected(e.to_string()))?;
    let io_errno = number("Last_IO_Errno").unwrap_or(0) as u32;
    let sql_errno = number("Last_SQL_Errno").unwrap_or(0) as u32;
    let error = if io_errno != 0 {
        Some((io_errno, text("Last_IO_Error")))
    } else if sql_errno != 0 {
        Some((sql_errno, text("Last_SQL_Error")))
    } else {
        None
    };
    Ok(SlaveStatus {
        io: text("Slave_IO_Running"),
        sql_running: text("Slave_SQL_Running") == "Yes",
        io_pos,
        error,
    })
}

/// Checks that the server's OS user (`mysql`, when running as root) can reach `dir`:
/// every existing directory on its path must be searchable by it. A datadir under a
/// 0700 parent would otherwise keep the member down with only mariadbd's log saying why.
pub fn check_reachable(dir: &Path) -> Result<(), ServerError> {
    let Some((uid, gid)) = os_user()? else {
        return Ok(());
    };
    match paas_appliance::os_user::blocked_ancestor(dir, uid, gid)
        .map_err(io(format!("resolving {}", dir.display())))?
    {
        None => Ok(()),
        Some(b) => Err(ServerError::Unreachable {
            dir: dir.display().to_string(),
            blocked: b.path.display().to_string(),
            mode: b.mode,
        }),
    }
}

/// `'text'` with quotes and backslashes escaped (the default SQL mode).
pub fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\\', "\\\\").replace('\'', "\\'"))
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The `mysql` OS user's (uid, gid) when running as root; `None` otherwise.
fn os_user() -> Result<Option<(libc::uid_t, libc::gid_t)>, ServerError> {
    paas_appliance::os_user::server_user("mysql").map_err(|_| ServerError::NoOsUser)
}

fn chown(path: &Path) -> Result<(), ServerError> {
    if let Some((uid, gid)) = os_user()? {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .map_err(io(format!("chown {}", path.display())))?;
    }
    Ok(())
}

/// Writes `contents` to `path` with `mode`, owned by the `mysql` user when root.
fn write_owned(path: &Path, contents: &str, mode: u32) -> Result<(), ServerError> {
    std::fs::write(path, contents).map_err(io(format!("writing {}", path.display())))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(io(format!("chmod {}", path.display())))?;
    chown(path)
}

fn kill_group(child: &mut Child) {
    if let Some(pid) = child.id() {
        // SAFETY: kill(2) on the process group our unreaped child leads.
        unsafe { libc::kill(-(pid as libc::pid_t), libc::SIGKILL) };
    }
    let _ = child.start_kill();
}

async fn timed<T>(
    f: impl std::future::Future<Output = Result<T, mysql_async::Error>>,
) -> Result<T, ServerError> {
    match tokio::time::timeout(QUERY_TIMEOUT, f).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(ServerError::Timeout("query".into())),
    }
}

fn check(tool: &str, result: std::io::Result<std::process::Output>) -> Result<(), ServerError> {
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
    Err(ServerError::Tool {
        tool: tool.into(),
        status: output.status,
        output: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
    })
}

/// Reads a child's stderr to the end (for a failed backup's message).
pub async fn read_all(mut from: impl tokio::io::AsyncRead + Unpin) -> String {
    let mut text = String::new();
    let _ = from.read_to_string(&mut text).await;
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replication_accounts_name_their_member() {
        assert_eq!(repl_user("my1"), "paas_repl_my1");
        assert_eq!(member_of("paas_repl_my1"), Some("my1"));
        assert_eq!(member_of("paas"), None);
    }

    #[test]
    fn quoting_escapes_quotes_and_backslashes() {
        assert_eq!(quote("it's"), "'it\\'s'");
        assert_eq!(quote("a\\b"), "'a\\\\b'");
    }
}
