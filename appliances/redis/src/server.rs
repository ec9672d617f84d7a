//! One local redis-server (Redis 7): its configuration, its process and the few commands
//! the supervisor needs.
//!
//! Files in the member directory (`<dir>`):
//!
//! ```text
//! redis.conf      written before every start (mode 0600: it holds both passwords)
//! data/           Redis's `dir`: appendonlydir/ (AOF, the source of truth on restart)
//!                 and dump.rdb (RDB snapshots)
//! redis.log       the server's output
//! redis.pid       the server's pid while it runs (for operators and tests)
//! tls/            the group's certificate (ca.pem, server.pem, server-key.pem; 0600,
//!                 owned by the `redis` user), copied from `--tls-dir` before every start
//! ```
//!
//! TLS: with a certificate (`ServerConfig::tls_dir`) the member's port is `tls-port`
//! and the plain port is off (`port 0`): every client, the supervisor's own admin
//! connection included, speaks TLS and verifies the server against the group's CA
//! (`crate::tls`). Replication too (`tls-replication yes`): a replica checks its
//! primary's certificate chain against the CA (Redis 7.0 does not check the name).
//! Clients present no certificate (`tls-auth-clients no`); the ACL passwords below
//! authenticate them, inside TLS.
//!
//! Two ACL users: `default`, the app's (`REDIS_URL`), may run every command but the
//! `@admin` category (CONFIG, REPLICAOF, SHUTDOWN, DEBUG, MONITOR, FAILOVER, SAVE, the
//! replication handshake...), so an app cannot reconfigure, demote or stop its own
//! group; and [`ADMIN_USER`], the supervisors' (replication links authenticate as it too),
//! with every command. Both passwords are 128+ random bits, from the supervisor's
//! configuration. No Unix socket is opened.
//!
//! Persistence: AOF (`appendfsync everysec` by default, `always` as an option) plus RDB
//! snapshots; at start redis-server loads the AOF before answering anything but
//! `LOADING`, and [`Redis::start`] returns only once `PING` answers, so a restarted
//! member never serves before its data is loaded.
//!
//! A replica is always started with `replicaof` in its configuration, so a member with
//! data never comes up writable unless it is to lead. "Detached" (see `decide`) points a
//! replica at [`NOWHERE`], a port on its own loopback address where nothing listens: its
//! data and offset stay as they are, read-only, until it is pointed at a real primary.
//!
//! When the supervisor runs as root, redis-server runs as the `redis` OS user (switched
//! in the child, so the parent-death signal survives) and leads its own process group:
//! the fencing watchdog kills it with one signal, and it dies with its supervisor.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use tokio::process::{Child, Command};

/// The supervisors' ACL user (replication links authenticate as it too).
pub const ADMIN_USER: &str = "paas_admin";

/// The port a detached replica is pointed at, on its own loopback address: privileged,
/// never bound by anything of ours, so the link stays down.
pub const NOWHERE: u16 = 1;

/// How long a command may take before redis-server counts as not answering.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

/// How long loading the data at start may take.
const START_TIMEOUT: Duration = Duration::from_secs(300);

/// Why an operation on the local redis-server failed.
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
    /// A command failed or the connection was refused.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// A command or the start did not finish in time.
    #[error("{0} timed out")]
    Timeout(String),
    /// The group's certificate could not be copied for the server.
    #[error("tls: {0}")]
    Tls(#[from] paas_appliance::tls::InstallError),
    /// The server process exited while it was expected to run.
    #[error("redis-server exited: {0}")]
    Exited(String),
    /// `INFO replication` said something this driver does not understand.
    #[error("unexpected INFO replication: {0}")]
    Info(String),
    /// The server's OS user cannot reach the member directory.
    #[error("the redis OS user cannot reach {dir}: {blocked} is mode {mode:o} (owner uid {owner}); choose a data directory it can reach, or give it search permission (chmod o+x)")]
    Unreachable {
        /// The member directory.
        dir: String,
        /// The first directory on the path the user may not enter.
        blocked: String,
        /// Its permission bits.
        mode: u32,
        /// Its owner.
        owner: u32,
    },
    /// The `redis` OS user does not exist while running as root.
    #[error("running as root but there is no `redis` OS user (apt-get install -y redis-server)")]
    NoOsUser,
}

/// Checks that the server's OS user (`redis`, when running as root) can reach `dir`:
/// every existing directory on its path must be searchable by it. A data directory
/// under a 0700 parent (`mktemp -d`, root's home) would otherwise keep the member down
/// with only redis-server's own log saying why.
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
            owner: b.owner,
        }),
    }
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ServerError {
    let what = what.into();
    move |source| ServerError::Io { what, source }
}

/// How writes reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Fsync {
    /// `appendfsync everysec`: a crash of the machine may lose the last second.
    Everysec,
    /// `appendfsync always`: every write is on disk before it is answered.
    Always,
}

impl Fsync {
    fn as_str(self) -> &'static str {
        match self {
            Fsync::Everysec => "everysec",
            Fsync::Always => "always",
        }
    }
}

/// Where and how the server runs.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The member directory.
    pub dir: PathBuf,
    /// The address redis-server listens on and others reach it at.
    pub host: String,
    /// Its port.
    pub port: u16,
    /// The `default` user's password (the app's).
    pub password: String,
    /// [`ADMIN_USER`]'s password (the supervisors').
    pub admin_password: String,
    /// The AOF fsync policy.
    pub fsync: Fsync,
    /// `min-replicas-max-lag`: seconds without a replica's acknowledgement after which an
    /// isolated primary refuses writes.
    pub max_lag_secs: u32,
    /// The group's certificate (`paas_appliance::tls` file names); `None`: plain TCP.
    pub tls_dir: Option<PathBuf>,
}

impl ServerConfig {
    /// The installed copy of the certificate (`<dir>/tls`), when the group has one.
    pub fn tls(&self) -> Option<paas_appliance::tls::Installed> {
        self.tls_dir
            .as_ref()
            .map(|_| paas_appliance::tls::Installed::at(&self.dir.join("tls")))
    }
}

/// How the data is to be started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartAs {
    /// Writable, requiring `min_replicas` replicas for writes.
    Primary {
        /// `min-replicas-to-write`.
        min_replicas: u32,
    },
    /// Read-only replica of the member `upstream` at `addr` (`host:port`); `None`:
    /// detached.
    Replica {
        /// The member followed and its address.
        upstream: Option<(String, String)>,
    },
}

/// A replica as its primary sees it (`INFO replication`'s `slaveN` lines).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Linked {
    /// `ip:port` it announced.
    pub addr: String,
    /// Whether its state is `online` (initial sync done, streaming).
    pub online: bool,
    /// The offset it acknowledged.
    pub offset: u64,
}

/// What `INFO replication` (and `CONFIG GET`) showed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Runtime {
    /// Writable primary.
    Primary {
        /// `master_repl_offset`.
        offset: u64,
        /// Its replicas.
        replicas: Vec<Linked>,
        /// `min-replicas-to-write`.
        min_replicas: u32,
    },
    /// Read-only replica.
    Replica {
        /// `master_link_status:up`.
        link_up: bool,
        /// The processed offset (`master_repl_offset` on a replica).
        offset: u64,
    },
}

/// The local server, its process and its admin connection.
pub struct Redis {
    cfg: ServerConfig,
    child: Option<Child>,
    conn: Option<MultiplexedConnection>,
    pid: Arc<AtomicI32>,
    upstream: Option<String>,
}

impl Redis {
    /// A handle for the member in `cfg.dir`; nothing is started.
    pub fn new(cfg: ServerConfig) -> Self {
        Redis {
            cfg,
            child: None,
            conn: None,
            pid: Arc::new(AtomicI32::new(0)),
            upstream: None,
        }
    }

    /// The server's pid (0 when none runs), shared so the fencing watchdog can kill it
    /// while a long action holds this handle.
    pub fn pid_cell(&self) -> Arc<AtomicI32> {
        self.pid.clone()
    }

    /// Redis's `dir`.
    pub fn data_dir(&self) -> PathBuf {
        self.cfg.dir.join("data")
    }

    /// Whether the data directory holds data: an AOF directory or an RDB file. Both
    /// appear at the first start, so any member that ever ran counts as data.
    pub fn has_data(&self) -> bool {
        has_data(&self.data_dir())
    }

    /// The member a running replica follows (`None`: a primary, detached or stopped).
    pub fn upstream(&self) -> Option<&str> {
        self.upstream.as_deref()
    }

    /// Reaps the server if it exited, returning its status.
    pub fn poll_exit(&mut self) -> Option<String> {
        let child = self.child.as_mut()?;
        match child.try_wait() {
            Ok(None) => None,
            Ok(Some(status)) => {
                self.forget();
                Some(status.to_string())
            }
            Err(err) => Some(err.to_string()),
        }
    }

    /// Whether a server process was started and has not been seen to exit.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    fn forget(&mut self) {
        self.child = None;
        self.conn = None;
        self.upstream = None;
        self.pid.store(0, Ordering::SeqCst);
    }

    /// Writes the configuration for `how` and starts the server, waiting until it has
    /// loaded its data and answers `PING`.
    pub async fn start(&mut self, how: &StartAs) -> Result<(), ServerError> {
        if self.child.is_some() {
            return Ok(());
        }
        let ids = os_user()?;
        let data = self.data_dir();
        std::fs::create_dir_all(&data).map_err(io(format!("creating {}", data.display())))?;
        chown(&self.cfg.dir, ids)?;
        chown(&data, ids)?;
        if let Some(from) = &self.cfg.tls_dir {
            paas_appliance::tls::install(from, &self.cfg.dir.join("tls"), ids)?;
        }
        let conf = self.cfg.dir.join("redis.conf");
        write_private(&conf, &config_text(&self.cfg, how), ids)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.cfg.dir.join("redis.log"))
            .map_err(io("opening redis.log"))?;
        let log_err = log.try_clone().map_err(io("duplicating the log handle"))?;
        let mut command = std::process::Command::new("redis-server");
        command
            .arg(&conf)
            .current_dir(&data)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        paas_appliance::process::tie(&mut command, libc::SIGKILL, ids);
        let child = Command::from(command)
            .spawn()
            .map_err(io("spawning redis-server"))?;
        self.pid
            .store(child.id().map_or(0, |id| id as i32), Ordering::SeqCst);
        self.child = Some(child);
        self.upstream = match how {
            StartAs::Primary { .. } => None,
            StartAs::Replica { upstream } => upstream.as_ref().map(|(name, _)| name.clone()),
        };
        let started = Instant::now();
        loop {
            if let Some(status) = self.poll_exit() {
                return Err(ServerError::Exited(format!(
                    "{status} during start-up; see {}",
                    self.cfg.dir.join("redis.log").display()
                )));
            }
            if self.ping().await.is_ok() {
                return Ok(());
            }
            if started.elapsed() > START_TIMEOUT {
                self.kill_now();
                return Err(ServerError::Timeout("loading the data at start".into()));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The admin connection, opened on first use.
    async fn conn(&mut self) -> Result<MultiplexedConnection, ServerError> {
        if let Some(conn) = &self.conn {
            return Ok(conn.clone());
        }
        let url = format!(
            "{}{ADMIN_USER}:{}@{}:{}/",
            crate::tls::scheme(self.cfg.tls_dir.is_some()),
            self.cfg.admin_password,
            self.cfg.host,
            self.cfg.port
        );
        let ca = self.cfg.tls().map(|t| t.ca);
        let client = crate::tls::open(&url, ca.as_deref())?;
        let conn = timed("connecting", client.get_multiplexed_async_connection()).await?;
        self.conn = Some(conn.clone());
        Ok(conn)
    }

    /// Runs one admin command; a failure drops the connection so the next opens afresh.
    async fn command<T: redis::FromRedisValue>(
        &mut self,
        what: &str,
        cmd: &redis::Cmd,
    ) -> Result<T, ServerError> {
        let mut conn = self.conn().await?;
        let result = timed(what, cmd.query_async(&mut conn)).await;
        if result.is_err() {
            self.conn = None;
        }
        result
    }

    /// `PING`: fails while the server is loading its data.
    pub async fn ping(&mut self) -> Result<(), ServerError> {
        let _: String = self.command("PING", &redis::cmd("PING")).await?;
        Ok(())
    }

    /// Role, offsets, replicas and `min-replicas-to-write`.
    pub async fn runtime(&mut self) -> Result<Runtime, ServerError> {
        let text: String = self
            .command("INFO replication", redis::cmd("INFO").arg("replication"))
            .await?;
        let mut runtime = parse_replication(&text)?;
        if let Runtime::Primary { min_replicas, .. } = &mut runtime {
            let pair: Vec<String> = self
                .command(
                    "CONFIG GET",
                    redis::cmd("CONFIG").arg("GET").arg("min-replicas-to-write"),
                )
                .await?;
            *min_replicas = pair.get(1).and_then(|v| v.parse().ok()).unwrap_or(0);
        }
        Ok(runtime)
    }

    /// `REPLICAOF NO ONE`: the replica becomes a writable primary requiring
    /// `min_replicas` replicas for writes.
    pub async fn promote(&mut self, min_replicas: u32) -> Result<(), ServerError> {
        // Writes must not be accepted below the requirement, even for a moment.
        self.set_min_replicas(min_replicas).await?;
        let _: String = self
            .command(
                "REPLICAOF NO ONE",
                redis::cmd("REPLICAOF").arg("NO").arg("ONE"),
            )
            .await?;
        self.upstream = None;
        Ok(())
    }

    /// Points the running replica at member `upstream` at `addr` (`None`: detaches it).
    pub async fn repoint(&mut self, upstream: Option<(&str, &str)>) -> Result<(), ServerError> {
        let (host, port) = match upstream {
            Some((_, addr)) => split_addr(addr),
            None => (self.cfg.host.clone(), NOWHERE.to_string()),
        };
        let _: String = self
            .command("REPLICAOF", redis::cmd("REPLICAOF").arg(&host).arg(&port))
            .await?;
        self.upstream = upstream.map(|(name, _)| name.to_string());
        Ok(())
    }

    /// Sets `min-replicas-to-write`.
    pub async fn set_min_replicas(&mut self, count: u32) -> Result<(), ServerError> {
        let _: String = self
            .command(
                "CONFIG SET",
                redis::cmd("CONFIG")
                    .arg("SET")
                    .arg("min-replicas-to-write")
                    .arg(count),
            )
            .await?;
        Ok(())
    }

    /// SIGTERM (redis-server fsyncs the AOF and exits), SIGKILL after 10 s.
    pub async fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        self.forget();
        if let Some(pid) = child.id() {
            // SAFETY: kill(2) on our own unreaped child.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
        }
        if tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .is_err()
        {
            kill_group(&mut child);
            let _ = child.wait().await;
        }
    }

    /// SIGKILL to the server's process group: the fence. Nothing is flushed.
    pub fn kill_now(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_group(&mut child);
        }
        self.forget();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill_now();
    }
}

fn kill_group(child: &mut Child) {
    if let Some(pid) = child.id() {
        paas_appliance::fence::kill_pid_group(pid as i32);
    }
}

async fn timed<T>(
    what: &str,
    f: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, ServerError> {
    match tokio::time::timeout(COMMAND_TIMEOUT, f).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(ServerError::Timeout(what.to_string())),
    }
}

/// Whether child process `pid` (0: none) has exited, without reaping it (`waitid` with
/// `WNOWAIT`), so [`Redis::poll_exit`] still sees its status.
pub fn has_exited(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    // SAFETY: a zeroed siginfo_t is valid; waitid only writes into it.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: non-blocking waitid on our own child, leaving it waitable.
    let rc = unsafe {
        libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        )
    };
    // SAFETY: si_pid is set by waitid (0 when no child changed state).
    rc == 0 && unsafe { info.si_pid() } != 0
}

/// Whether `data` (Redis's `dir`) holds an AOF directory or an RDB file.
pub fn has_data(data: &Path) -> bool {
    data.join("appendonlydir").is_dir() || data.join("dump.rdb").is_file()
}

fn split_addr(addr: &str) -> (String, String) {
    match addr.rsplit_once(':') {
        Some((host, port)) => (host.to_string(), port.to_string()),
        None => (addr.to_string(), "6379".to_string()),
    }
}

/// The configuration file for `how`.
pub fn config_text(cfg: &ServerConfig, how: &StartAs) -> String {
    let data = cfg.dir.join("data");
    let mut text = format!(
        "# written by the paas supervisor before every start; edits are lost\n\
         bind {host}\n\
         {ports}\
         unixsocket \"\"\n\
         protected-mode no\n\
         daemonize no\n\
         supervised no\n\
         logfile \"\"\n\
         pidfile \"{pidfile}\"\n\
         dir \"{data}\"\n\
         dbfilename dump.rdb\n\
         appendonly yes\n\
         appenddirname appendonlydir\n\
         appendfsync {fsync}\n\
         aof-use-rdb-preamble yes\n\
         aof-load-truncated yes\n\
         save 3600 1 300 100 60 10000\n\
         repl-diskless-sync yes\n\
         repl-diskless-sync-delay 0\n\
         replica-read-only yes\n\
         replica-announce-ip {host}\n\
         min-replicas-max-lag {lag}\n\
         masteruser {ADMIN_USER}\n\
         masterauth {admin}\n\
         user default on >{password} ~* &* +@all -@admin\n\
         user {ADMIN_USER} on >{admin} ~* &* +@all\n",
        host = cfg.host,
        ports = match cfg.tls() {
            None => format!("port {}\n", cfg.port),
            Some(t) => format!(
                "port 0\ntls-port {}\ntls-cert-file \"{}\"\ntls-key-file \"{}\"\n\
                 tls-ca-cert-file \"{}\"\ntls-auth-clients no\ntls-replication yes\n",
                cfg.port,
                t.cert.display(),
                t.key.display(),
                t.ca.display()
            ),
        },
        data = data.display(),
        pidfile = cfg.dir.join("redis.pid").display(),
        fsync = cfg.fsync.as_str(),
        lag = cfg.max_lag_secs,
        admin = cfg.admin_password,
        password = cfg.password,
    );
    match how {
        StartAs::Primary { min_replicas } => {
            text.push_str(&format!("min-replicas-to-write {min_replicas}\n"));
        }
        StartAs::Replica { upstream } => {
            let (host, port) = match upstream {
                Some((_, addr)) => split_addr(addr),
                None => (cfg.host.clone(), NOWHERE.to_string()),
            };
            text.push_str(&format!("replicaof {host} {port}\n"));
        }
    }
    text
}

/// Parses `INFO replication` (`min_replicas` is left 0: it is not in that section).
pub fn parse_replication(text: &str) -> Result<Runtime, ServerError> {
    let fields: std::collections::BTreeMap<&str, &str> = text
        .lines()
        .filter_map(|l| l.trim().split_once(':'))
        .collect();
    let offset = |key: &str| -> Result<u64, ServerError> {
        fields
            .get(key)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| ServerError::Info(format!("no {key}")))
    };
    match fields.get("role").copied() {
        Some("master") => {
            let mut replicas = Vec::new();
            for (key, value) in &fields {
                if !key.starts_with("slave") || !key[5..].bytes().all(|b| b.is_ascii_digit()) {
                    continue;
                }
                let attrs: std::collections::BTreeMap<&str, &str> = value
                    .split(',')
                    .filter_map(|kv| kv.split_once('='))
                    .collect();
                let (Some(ip), Some(port)) = (attrs.get("ip"), attrs.get("port")) else {
                    return Err(ServerError::Info(format!("{key}:{value}")));
                };
                replicas.push(Linked {
                    addr: format!("{ip}:{port}"),
                    online: attrs.get("state") == Some(&"online"),
                    offset: attrs
                        .get("offset")
                        .and_then(|o| o.parse().ok())
                        .unwrap_or(0),
                });
            }
            Ok(Runtime::Primary {
                offset: offset("master_repl_offset")?,
                replicas,
                min_replicas: 0,
            })
        }
        Some("slave") => Ok(Runtime::Replica {
            link_up: fields.get("master_link_status") == Some(&"up"),
            offset: offset("master_repl_offset")?,
        }),
        other => Err(ServerError::Info(format!("role {other:?}"))),
    }
}

/// The `redis` OS user's ids when running as root (redis-server then runs as it).
fn os_user() -> Result<Option<(libc::uid_t, libc::gid_t)>, ServerError> {
    paas_appliance::os_user::server_user("redis").map_err(|_| ServerError::NoOsUser)
}

fn chown(path: &Path, ids: Option<(libc::uid_t, libc::gid_t)>) -> Result<(), ServerError> {
    if let Some((uid, gid)) = ids {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .map_err(io(format!("chown {}", path.display())))?;
    }
    Ok(())
}

/// Writes `contents` to `path` with mode 0600, owned by the server's user.
fn write_private(
    path: &Path,
    contents: &str,
    ids: Option<(libc::uid_t, libc::gid_t)>,
) -> Result<(), ServerError> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io(format!("writing {}", path.display())))?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(io(format!("chmod {}", path.display())))?;
    file.write_all(contents.as_bytes())
        .map_err(io(format!("writing {}", path.display())))?;
    chown(path, ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> ServerConfig {
        ServerConfig {
            dir: PathBuf::from("/var/lib/paas/redis/r0"),
            host: "127.9.8.7".into(),
            port: 16379,
            password: "app-secret".into(),
            admin_password: "admin-secret".into(),
            fsync: Fsync::Everysec,
            max_lag_secs: 2,
            tls_dir: None,
        }
    }

    #[test]
    fn with_a_certificate_only_the_tls_port_listens_and_replication_uses_it() {
        let plain = config_text(&cfg(), &StartAs::Primary { min_replicas: 1 });
        assert!(plain.contains("\nport 16379\n") && !plain.contains("tls-"));
        let tls = ServerConfig {
            tls_dir: Some(PathBuf::from("/var/lib/paas/redis/tls")),
            ..cfg()
        };
        let text = config_text(&tls, &StartAs::Primary { min_replicas: 1 });
        for line in [
            "port 0",
            "tls-port 16379",
            "tls-cert-file \"/var/lib/paas/redis/r0/tls/server.pem\"",
            "tls-key-file \"/var/lib/paas/redis/r0/tls/server-key.pem\"",
            "tls-ca-cert-file \"/var/lib/paas/redis/r0/tls/ca.pem\"",
            "tls-auth-clients no",
            "tls-replication yes",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} missing:\n{text}");
        }
        assert!(!text.lines().any(|l| l == "port 16379"));
    }

    #[test]
    fn the_config_locks_the_app_out_of_admin_commands_and_persists() {
        let text = config_text(&cfg(), &StartAs::Primary { min_replicas: 1 });
        assert!(text.contains("bind 127.9.8.7\n"));
        assert!(text.contains("user default on >app-secret ~* &* +@all -@admin\n"));
        assert!(text.contains("user paas_admin on >admin-secret ~* &* +@all\n"));
        assert!(text.contains("masterauth admin-secret\n"));
        assert!(text.contains("appendonly yes\n"));
        assert!(text.contains("appendfsync everysec\n"));
        assert!(text.contains("min-replicas-to-write 1\n"));
        assert!(text.contains("dir \"/var/lib/paas/redis/r0/data\"\n"));
        assert!(!text.contains("replicaof"));
    }

    #[test]
    fn an_exited_child_is_seen_without_being_reaped() {
        let mut running = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        assert!(!has_exited(running.id() as i32));
        running.kill().unwrap();
        let started = Instant::now();
        while !has_exited(running.id() as i32) {
            assert!(started.elapsed() < Duration::from_secs(5), "exit not seen");
            std::thread::sleep(Duration::from_millis(10));
        }
        // Still there for the owner to reap.
        assert!(running.try_wait().unwrap().is_some());
        assert!(!has_exited(0));
    }

    #[test]
    fn a_replica_is_never_started_writable() {
        let text = config_text(
            &cfg(),
            &StartAs::Replica {
                upstream: Some(("r1".into(), "127.9.8.7:16380".into())),
            },
        );
        assert!(text.contains("replicaof 127.9.8.7 16380\n"));
        let detached = config_text(&cfg(), &StartAs::Replica { upstream: None });
        assert!(detached.contains("replicaof 127.9.8.7 1\n"));
    }

    #[test]
    fn info_replication_of_a_primary_and_a_replica() {
        let primary = "# Replication\r\nrole:master\r\nconnected_slaves:1\r\nmin_slaves_good_slaves:1\r\nslave0:ip=127.9.8.7,port=16380,state=online,offset=4242,lag=0\r\nmaster_failover_state:no-failover\r\nmaster_replid:abc\r\nmaster_repl_offset:4300\r\n";
        assert_eq!(
            parse_replication(primary).unwrap(),
            Runtime::Primary {
                offset: 4300,
                replicas: vec![Linked {
                    addr: "127.9.8.7:16380".into(),
                    online: true,
                    offset: 4242
                }],
                min_replicas: 0
            }
        );
        let replica = "# Replication\r\nrole:slave\r\nmaster_host:127.9.8.7\r\nmaster_port:16379\r\nmaster_link_status:down\r\nslave_repl_offset:99\r\nmaster_repl_offset:99\r\n";
        assert_eq!(
            parse_replication(replica).unwrap(),
            Runtime::Replica {
                link_up: false,
                offset: 99
            }
        );
        assert!(parse_replication("role:sentinel\r\n").is_err());
    }
}
