//! A MariaDB server: `mariadb-install-db` then `mariadbd`, as the `mysql` OS user when
//! the tests run as root.
//!
//! Both get `--no-defaults` first, so Debian's /etc/mysql settings never leak in. Layout
//! of the temp dir (owned by `mysql`): `data/`, `mysqld.sock`, `mysqld.pid`,
//! `mariadb.log`. `root` has no password (`--auth-root-authentication-method=normal`)
//! and can connect over TCP from 127.0.0.1. Ready means the TCP port sends a
//! protocol-10 handshake.

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::error::{FixtureError, Result};
use crate::port::free_port;
use crate::process::{
    require_binary, retry_port_races, run_setup, server_dir, OsUser, ServerProcess,
};

/// How long mariadbd gets to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

const INSTALL_HINT: &str = "apt-get install -y mariadb-server";

/// A running MariaDB server, stopped and deleted on drop.
#[derive(Debug)]
pub struct MariaDbServer {
    // Field order matters: the process must stop before its directory is removed.
    process: ServerProcess,
    port: u16,
    dir: tempfile::TempDir,
}

impl MariaDbServer {
    /// Installs a fresh data dir and starts the server.
    pub fn start() -> Result<Self> {
        Self::start_with(&[])
    }

    /// Like [`MariaDbServer::start`], with extra `mariadbd` options appended (e.g.
    /// `["--log-bin=binlog", "--server-id=1"]`).
    pub fn start_with(args: &[&str]) -> Result<Self> {
        let install_db = require_binary("mariadb-install-db", INSTALL_HINT)?;
        let mariadbd = require_binary("mariadbd", INSTALL_HINT)?;
        let user = OsUser::lookup("mysql")?;
        let dir = server_dir("mariadb")?;
        // Temporary tables go to the server's own directory, not the shared /tmp: once a
        // bootstrap failed deleting its `#sql-temptable` file there.
        let tmp = dir.path().join("tmp");
        std::fs::create_dir(&tmp).map_err(FixtureError::io(format!("create {}", tmp.display())))?;
        user.chown(dir.path())?;
        user.chown(&tmp)?;
        let data = dir.path().join("data");
        let tmpdir = format!("--tmpdir={}", tmp.display());

        let mut command = Command::new(install_db);
        command
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg(&tmpdir)
            .args(["--auth-root-authentication-method=normal", "--skip-test-db"])
            .arg("--skip-name-resolve");
        user.apply(&mut command);
        run_setup(command)?;

        let (process, port) = retry_port_races(|| {
            let port = free_port()?;
            let mut command = Command::new(&mariadbd);
            command
                .arg("--no-defaults")
                .arg(format!("--datadir={}", data.display()))
                .arg(&tmpdir)
                .arg(format!(
                    "--socket={}",
                    dir.path().join("mysqld.sock").display()
                ))
                .arg(format!(
                    "--pid-file={}",
                    dir.path().join("mysqld.pid").display()
                ))
                .arg(format!("--port={port}"))
                .args(["--bind-address=127.0.0.1", "--skip-name-resolve"])
                .args([
                    "--innodb-buffer-pool-size=32M",
                    "--innodb-flush-log-at-trx-commit=0",
                ])
                .args(args);
            user.apply(&mut command);
            let log = dir.path().join("mariadb.log");
            let mut process = ServerProcess::spawn("mariadbd", command, &log, libc::SIGTERM)?;
            process.wait_ready(READY_TIMEOUT, || handshake(port))?;
            Ok((process, port))
        })?;
        Ok(MariaDbServer { process, port, dir })
    }

    /// A `mysql://root@127.0.0.1:PORT/` URL (mysql_async and friends).
    pub fn url(&self) -> String {
        format!("mysql://root@127.0.0.1:{}/", self.port)
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The unix socket path.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("mysqld.sock")
    }

    /// The data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The server's temp dir (socket, pid file, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The server process (pid, log).
    pub fn process(&self) -> &ServerProcess {
        &self.process
    }
}

/// Reads the server's greeting: a packet whose first payload byte is protocol 10.
fn handshake(port: u16) -> std::result::Result<(), String> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    let mut head = [0u8; 5];
    stream
        .read_exact(&mut head)
        .map_err(|e| format!("read greeting: {e}"))?;
    match head[4] {
        10 => Ok(()),
        0xff => Err("server answered with an error packet".into()),
        other => Err(format!("unexpected protocol byte {other}")),
    }
}
