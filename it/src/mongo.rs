//! A MongoDB server, when `mongod` is installed.
//!
//! No registry reachable from these machines ships `mongod`, so this is the one fixture
//! that may not run: without `mongod` on PATH, [`MongoServer::start`] prints
//! `SKIPPED: mongod not on PATH` and returns [`MongoStart::Skipped`]; callers return
//! early. Everything else fails loudly like the other fixtures.
//!
//! Layout of the temp dir: `data/` (`--dbpath`) and `mongod.log` (stdout, JSON lines).
//! Ready means the log has mongod's "Waiting for connections" line and the port
//! accepts a TCP connection.

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::error::{FixtureError, Result};
use crate::port::free_port;
use crate::process::{log_tail, require_binary, retry_port_races, server_dir, ServerProcess};

/// How long mongod gets to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// What [`MongoServer::start`] produced.
#[derive(Debug)]
pub enum MongoStart {
    /// mongod runs.
    Running(MongoServer),
    /// mongod is not installed; the reason was printed as a SKIPPED line.
    Skipped(&'static str),
}

/// A running mongod, stopped and deleted on drop.
#[derive(Debug)]
pub struct MongoServer {
    // Field order matters: the process must stop before its directory is removed.
    process: ServerProcess,
    port: u16,
    dir: tempfile::TempDir,
}

impl MongoServer {
    /// Starts mongod with default options, or reports that it is not installed.
    pub fn start() -> Result<MongoStart> {
        Self::start_with(&[])
    }

    /// Like [`MongoServer::start`], with extra `mongod` options (e.g.
    /// `["--replSet", "rs0"]`).
    pub fn start_with(args: &[&str]) -> Result<MongoStart> {
        let mongod = match require_binary("mongod", "no package here; install MongoDB") {
            Ok(path) => path,
            Err(FixtureError::MissingBinary { .. }) => {
                const WHY: &str = "SKIPPED: mongod not on PATH";
                eprintln!("{WHY}");
                return Ok(MongoStart::Skipped(WHY));
            }
            Err(other) => return Err(other),
        };
        let dir = server_dir("mongo")?;
        let data = dir.path().join("data");
        std::fs::create_dir(&data).map_err(FixtureError::io("creating the mongod dbpath"))?;
        let (process, port) = retry_port_races(|| {
            let port = free_port()?;
            let mut command = Command::new(&mongod);
            command
                .arg("--dbpath")
                .arg(&data)
                .args(["--port", &port.to_string(), "--bind_ip", "127.0.0.1"])
                .args(args);
            let log = dir.path().join("mongod.log");
            let mut process = ServerProcess::spawn("mongod", command, &log, libc::SIGTERM)?;
            process.wait_ready(READY_TIMEOUT, || accepting(&log, port))?;
            Ok((process, port))
        })?;
        Ok(MongoStart::Running(MongoServer { process, port, dir }))
    }

    /// A `mongodb://127.0.0.1:PORT` URL.
    pub fn url(&self) -> String {
        format!("mongodb://127.0.0.1:{}", self.port)
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The `--dbpath` directory.
    pub fn data_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("data")
    }

    /// The server process (pid, log).
    pub fn process(&self) -> &ServerProcess {
        &self.process
    }
}

fn accepting(log: &Path, port: u16) -> std::result::Result<(), String> {
    if !log_tail(log, usize::MAX).contains("Waiting for connections") {
        return Err("no \"Waiting for connections\" in the log yet".into());
    }
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map(drop)
        .map_err(|e| format!("connect {addr}: {e}"))
}
