//! A PostgreSQL 15 cluster: `initdb` then `postgres`, as the `postgres` OS user when the
//! tests run as root (PostgreSQL refuses to run as root).
//!
//! Layout of the temp dir (owned by `postgres`): `data/` (the cluster), the unix socket
//! `.s.PGSQL.<port>`, and `postgres.log`. Authentication is `trust` for local and
//! 127.0.0.1 connections, superuser `postgres`; `fsync` is off (test data only).
//! Ready means `pg_isready` accepts the TCP address. Stopping uses fast shutdown
//! (SIGINT), which also frees the shared memory.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::error::Result;
use crate::port::free_port;
use crate::process::{
    require_binary, retry_port_races, run_setup, server_dir, OsUser, ServerProcess,
};

/// Where Debian's PostgreSQL 15 binaries live.
pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// How long postgres gets to accept connections after start.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

const INSTALL_HINT: &str = "apt-get install -y postgresql";

/// A running PostgreSQL cluster, stopped and deleted on drop.
#[derive(Debug)]
pub struct PostgresServer {
    // Field order matters: the process must stop before its directory is removed.
    process: ServerProcess,
    port: u16,
    dir: tempfile::TempDir,
}

impl PostgresServer {
    /// Creates a fresh cluster and starts it with default settings.
    pub fn start() -> Result<Self> {
        Self::start_with(&[])
    }

    /// Like [`PostgresServer::start`], with extra server settings passed as
    /// `-c name=value` (e.g. `("wal_level", "replica")`).
    pub fn start_with(settings: &[(&str, &str)]) -> Result<Self> {
        let initdb = require_binary(&format!("{PG_BIN}/initdb"), INSTALL_HINT)?;
        let postgres = require_binary(&format!("{PG_BIN}/postgres"), INSTALL_HINT)?;
        let pg_isready = require_binary(&format!("{PG_BIN}/pg_isready"), INSTALL_HINT)?;
        let user = OsUser::lookup("postgres")?;
        let dir = server_dir("postgres")?;
        user.chown(dir.path())?;

        let mut command = Command::new(initdb);
        command.arg("-D").arg(dir.path().join("data")).args([
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
        ]);
        user.apply(&mut command);
        run_setup(command)?;

        let (process, port) = retry_port_races(|| {
            let port = free_port()?;
            let mut command = Command::new(&postgres);
            command
                .arg("-D")
                .arg(dir.path().join("data"))
                .args(["-p", &port.to_string()])
                .arg("-k")
                .arg(dir.path())
                .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"]);
            for (name, value) in settings {
                command.arg("-c").arg(format!("{name}={value}"));
            }
            user.apply(&mut command);
            let log = dir.path().join("postgres.log");
            let mut process = ServerProcess::spawn("postgres", command, &log, libc::SIGINT)?;
            process.wait_ready(READY_TIMEOUT, || pg_ready(&pg_isready, port))?;
            Ok((process, port))
        })?;
        Ok(PostgresServer { process, port, dir })
    }

    /// A libpq/tokio-postgres URL for the `postgres` superuser and database over TCP,
    /// e.g. `postgres://postgres@127.0.0.1:PORT/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The directory holding the unix socket (`host=` for libpq).
    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    /// The cluster's data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The server process (pid, log).
    pub fn process(&self) -> &ServerProcess {
        &self.process
    }
}

fn pg_ready(pg_isready: &Path, port: u16) -> std::result::Result<(), String> {
    let output = Command::new(pg_isready)
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres"])
        .output()
        .map_err(|e| format!("running pg_isready: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&output.stdout).trim().to_string())
    }
}
