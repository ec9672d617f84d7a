//! A single-member etcd on two free ports (client, peer) with its data dir in a temp dir.
//!
//! Ready means `GET /health` on the client port answers `"health":"true"`, i.e. the
//! member has elected itself and serves linearizable requests. [`EtcdServer::stop`] and
//! [`EtcdServer::restart`] keep the data dir and ports, so a test can take etcd away
//! from its clients and give it back with its data.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::error::Result;
use crate::http;
use crate::port::free_port;
use crate::process::{
    log_tail_matching, require_binary, retry_port_races, server_dir, ServerProcess,
};

/// How long etcd gets to become healthy.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

const INSTALL_HINT: &str = "apt-get install -y etcd-server";

/// A running single-member etcd, stopped and deleted on drop.
#[derive(Debug)]
pub struct EtcdServer {
    // Field order matters: the process must stop before its directory is removed.
    process: ServerProcess,
    client_port: u16,
    peer_port: u16,
    dir: tempfile::TempDir,
}

impl EtcdServer {
    /// Starts etcd and waits until it is healthy.
    pub fn start() -> Result<Self> {
        require_binary("etcd", INSTALL_HINT)?;
        let dir = server_dir("etcd")?;
        retry_port_races(|| {
            let (client_port, peer_port) = (free_port()?, free_port()?);
            let process = launch(dir.path(), client_port, peer_port)?;
            Ok((process, client_port, peer_port))
        })
        .map(|(process, client_port, peer_port)| EtcdServer {
            process,
            client_port,
            peer_port,
            dir,
        })
    }

    /// The client URL, e.g. `http://127.0.0.1:PORT`, as given to `etcd-client`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// The client port.
    pub fn client_port(&self) -> u16 {
        self.client_port
    }

    /// The member's data dir.
    pub fn data_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("data")
    }

    /// The server process (pid, log).
    pub fn process(&self) -> &ServerProcess {
        &self.process
    }

    /// Stops etcd (SIGTERM, then SIGKILL), keeping its data dir and ports for
    /// [`EtcdServer::restart`].
    pub fn stop(&mut self) {
        self.process.stop();
    }

    /// Starts etcd again on the same ports and data dir and waits until it is healthy.
    pub fn restart(&mut self) -> Result<()> {
        self.process.stop();
        self.process = launch(self.dir.path(), self.client_port, self.peer_port)?;
        Ok(())
    }
}

impl Drop for EtcdServer {
    /// A failing test shows etcd's warnings (slow `fdatasync`, requests that took too
    /// long, lost leadership) before the log goes with the temp dir: a test's etcd read
    /// that timed out is then explained by etcd's own account of that moment.
    fn drop(&mut self) {
        if std::thread::panicking() {
            let warnings = warnings(&self.dir.path().join("etcd.log"), WARNINGS_SHOWN);
            if !warnings.is_empty() {
                eprintln!("etcd's last warnings:\n{warnings}");
            }
        }
    }
}

/// How many of etcd's warnings a failing test shows.
const WARNINGS_SHOWN: usize = 20;

/// The last `n` warning-or-worse lines of an etcd (zap, JSON) log.
fn warnings(log: &Path, n: usize) -> String {
    const LEVELS: [&str; 4] = [
        "\"level\":\"warn\"",
        "\"level\":\"error\"",
        "\"level\":\"fatal\"",
        "\"level\":\"panic\"",
    ];
    log_tail_matching(log, n, |line| {
        LEVELS.iter().any(|level| line.contains(level))
    })
}

fn launch(dir: &Path, client_port: u16, peer_port: u16) -> Result<ServerProcess> {
    let client = format!("http://127.0.0.1:{client_port}");
    let peer = format!("http://127.0.0.1:{peer_port}");
    let mut command = Command::new("etcd");
    command
        .args(["--name", "it"])
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(["--listen-client-urls", &client])
        .args(["--advertise-client-urls", &client])
        .args(["--listen-peer-urls", &peer])
        .args(["--initial-advertise-peer-urls", &peer])
        .args(["--initial-cluster", &format!("it={peer}")])
        .args(["--initial-cluster-state", "new"])
        .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
        .args(["--logger", "zap", "--log-outputs", "stderr"]);
    let mut process = ServerProcess::spawn("etcd", command, &dir.join("etcd.log"), libc::SIGTERM)?;
    process.wait_ready(READY_TIMEOUT, || {
        let answer = http::request(client_port, "GET", "/health")?;
        if answer.status == 200 && answer.body.contains("\"health\":\"true\"") {
            Ok(())
        } else {
            Err(format!("/health: {} {}", answer.status, answer.body.trim()))
        }
    })?;
    Ok(process)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warnings_keeps_the_last_warning_lines() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("etcd.log");
        std::fs::write(
            &log,
            concat!(
                r#"{"level":"info","msg":"ready"}"#,
                "\n",
                r#"{"level":"warn","msg":"slow fdatasync","took":"2.1s"}"#,
                "\n",
                r#"{"level":"info","msg":"applied"}"#,
                "\n",
                r#"{"level":"warn","msg":"apply request took too long","took":"2.4s"}"#,
                "\n",
                r#"{"level":"error","msg":"failed to send out heartbeat"}"#,
                "\n",
            ),
        )
        .unwrap();
        assert_eq!(
            warnings(&log, 2),
            concat!(
                r#"{"level":"warn","msg":"apply request took too long","took":"2.4s"}"#,
                "\n",
                r#"{"level":"error","msg":"failed to send out heartbeat"}"#,
            )
        );
        assert_eq!(warnings(&dir.path().join("missing.log"), 5), "");
    }
}
