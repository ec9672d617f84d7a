//! A Redis server on a free port, no persistence, its working dir in a temp dir.
//!
//! Settings: bound to 127.0.0.1, `save ""` and `appendonly no` (nothing on disk unless a
//! test asks), `protected-mode no`, `repl-diskless-sync-delay 0` (otherwise every full
//! resync of a replica waits 5 s). Ready means `PING` answers `+PONG`.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::error::Result;
use crate::port::free_port;
use crate::process::{require_binary, retry_port_races, server_dir, ServerProcess};

/// How long redis gets to answer PING.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

const INSTALL_HINT: &str = "apt-get install -y redis-server";

/// A running Redis server, stopped and its dir deleted on drop.
#[derive(Debug)]
pub struct RedisServer {
    // Field order matters: the process must stop before its directory is removed.
    process: ServerProcess,
    port: u16,
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts redis-server with the test settings above.
    pub fn start() -> Result<Self> {
        Self::start_with(&[])
    }

    /// Like [`RedisServer::start`], with extra command-line configuration appended
    /// (e.g. `["--requirepass", "secret"]`).
    pub fn start_with(args: &[&str]) -> Result<Self> {
        let redis_server = require_binary("redis-server", INSTALL_HINT)?;
        let dir = server_dir("redis")?;
        let (process, port) = retry_port_races(|| {
            let port = free_port()?;
            let mut command = Command::new(&redis_server);
            command
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .arg("--dir")
                .arg(dir.path())
                .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
                .args(["--protected-mode", "no", "--repl-diskless-sync-delay", "0"])
                .args(args);
            let log = dir.path().join("redis.log");
            let mut process = ServerProcess::spawn("redis-server", command, &log, libc::SIGTERM)?;
            process.wait_ready(READY_TIMEOUT, || ping(port))?;
            Ok((process, port))
        })?;
        Ok(RedisServer { process, port, dir })
    }

    /// A `redis://127.0.0.1:PORT` URL.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's working directory (where an RDB would be written).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The server process (pid, log).
    pub fn process(&self) -> &ServerProcess {
        &self.process
    }
}

/// Sends an inline `PING`, expects `+PONG`.
fn ping(port: u16) -> std::result::Result<(), String> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(b"PING\r\n")
        .map_err(|e| format!("send PING: {e}"))?;
    let mut answer = [0u8; 64];
    let n = stream
        .read(&mut answer)
        .map_err(|e| format!("read PING answer: {e}"))?;
    let answer = String::from_utf8_lossy(&answer[..n]);
    if answer.starts_with("+PONG") {
        Ok(())
    } else {
        Err(format!("PING answered {:?}", answer.trim()))
    }
}
