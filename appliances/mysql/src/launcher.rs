//! Starting a local N-member cluster: one supervisor OS process per member, on the
//! cluster's own loopback address and fixed ports, each in `<base>/<member>/`. Used by the tests and the failover bench.
//!
//! Members are named `my0`, `my1`, ... Each supervisor gets a parent-death signal
//! (SIGKILL), and its mariadbd gets one from the supervisor, so nothing outlives the
//! process that started the cluster. Dropping a [`LocalCluster`] stops every member
//! gracefully (SIGTERM, SIGKILL after 20 s) but keeps the directories, which belong to
//! the caller.

use std::net::Ipv4Addr;

use paas_appliance::addr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Why a member could not be started.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// Finding a port, creating a directory or spawning failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// How to start the cluster.
#[derive(Debug, Clone)]
pub struct LocalClusterSpec {
    /// The supervisor program (`paas-mysql-supervisor`, or `paas` with `args_prefix`).
    pub program: PathBuf,
    /// Arguments before the supervisor's own (e.g. `["appliance", "mysql"]`).
    pub args_prefix: Vec<String>,
    /// The cluster name.
    pub cluster: String,
    /// How many members.
    pub members: usize,
    /// etcd client URLs.
    pub etcd_endpoints: Vec<String>,
    /// etcd key prefix.
    pub prefix: String,
    /// Where member directories go.
    pub base_dir: PathBuf,
    /// The superuser password all members share.
    pub superuser_password: String,
    /// Lease TTL in seconds.
    pub ttl_secs: u64,
}

/// One member's process and addresses.
#[derive(Debug)]
pub struct Member {
    /// `myN`.
    pub name: String,
    /// The cluster's own loopback address, where it listens (see `paas_appliance::addr`).
    pub host: Ipv4Addr,
    /// Its mariadbd port on `host`.
    pub port: u16,
    /// Its health API port on `host`.
    pub health_port: u16,
    /// Its directory.
    pub dir: PathBuf,
    child: Option<Child>,
}

impl Member {
    /// mariadbd's pid, from its pid file, if present.
    pub fn server_pid(&self) -> Option<i32> {
        let text = std::fs::read_to_string(self.dir.join("mysqld.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }
}

/// A running local cluster.
#[derive(Debug)]
pub struct LocalCluster {
    spec: LocalClusterSpec,
    members: Vec<Member>,
}

impl LocalCluster {
    /// Starts every member's supervisor; they bootstrap the cluster among themselves.
    pub fn start(spec: LocalClusterSpec) -> Result<Self, LaunchError> {
        let mut members = Vec::new();
        let host = addr::cluster_ip(&spec.base_dir.to_string_lossy());
        for i in 0..spec.members {
            let name = format!("my{i}");
            let dir = spec.base_dir.join(&name);
            std::fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
            members.push(Member {
                name,
                host,
                port: addr::member_port(addr::MYSQL_PORT, i),
                health_port: addr::member_port(addr::MYSQL_HEALTH_PORT, i),
                dir,
                child: None,
            });
        }
        let mut cluster = LocalCluster { spec, members };
        for i in 0..cluster.members.len() {
            cluster.spawn(i)?;
        }
        Ok(cluster)
    }

    /// The members, in order.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// Sends `signal` to member `i`'s supervisor (SIGKILL, SIGSTOP, SIGCONT...).
    pub fn signal(&mut self, i: usize, signal: i32) {
        if let Some(child) = &self.members[i].child {
            // SAFETY: kill(2) on our own unreaped child.
            unsafe { libc::kill(child.id() as libc::pid_t, signal) };
        }
        if signal == libc::SIGKILL {
            if let Some(mut child) = self.members[i].child.take() {
                let _ = child.wait();
            }
        }
    }

    /// Starts member `i`'s supervisor again (after a kill), same ports and directory.
    pub fn restart(&mut self, i: usize) -> Result<(), LaunchError> {
        self.stop(i);
        self.spawn(i)
    }

    /// Stops member `i`'s supervisor gracefully (it stops its mariadbd).
    pub fn stop(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            // SAFETY: kill(2) on our own unreaped child.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn spawn(&mut self, i: usize) -> Result<(), LaunchError> {
        let spec = &self.spec;
        let member = &mut self.members[i];
        let log_path = member.dir.join("supervisor.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(io(format!("opening {}", log_path.display())))?;
        let log_err = log.try_clone().map_err(io("duplicating the log handle"))?;
        let mut command = Command::new(&spec.program);
        command
            .args(&spec.args_prefix)
            .args(["--cluster", &spec.cluster, "--name", &member.name])
            .args([
                "--etcd",
                &spec.etcd_endpoints.join(","),
                "--prefix",
                &spec.prefix,
            ])
            .arg("--dir")
            .arg(&member.dir)
            .args(["--host", &member.host.to_string()])
            .args([
                "--port",
                &member.port.to_string(),
                "--health-port",
                &member.health_port.to_string(),
            ])
            .args(["--ttl-secs", &spec.ttl_secs.to_string()])
            .args(["--members", &spec.members.to_string()])
            .env("PAAS_MYSQL_SUPERUSER_PASSWORD", &spec.superuser_password)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        paas_appliance::process::tie(&mut command, libc::SIGKILL, None);
        let child = command
            .spawn()
            .map_err(io(format!("spawning {}", spec.program.display())))?;
        member.child = Some(child);
        Ok(())
    }

    /// The path of member `i`'s supervisor log.
    pub fn log_path(&self, i: usize) -> PathBuf {
        self.members[i].dir.join("supervisor.log")
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            if let Some(child) = &self.members[i].child {
                // SAFETY: kill(2) on our own child; SIGCONT first in case it was frozen.
                unsafe {
                    libc::kill(child.id() as libc::pid_t, libc::SIGCONT);
                    libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
                }
            }
        }
        for i in 0..self.members.len() {
            self.stop(i);
        }
    }
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> LaunchError {
    let what = what.into();
    move |source| LaunchError::Io { what, source }
}
