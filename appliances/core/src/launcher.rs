//! Starting a local N-member cluster of any engine: one supervisor OS process per
//! member, each in `<base>/<member>/`, on the cluster's own loopback address and the
//! engine's fixed ports (`crate::addr`). Used by the engines' tests and failover
//! benches; `paas up` runs members as jobs of a system app instead.
//!
//! Members are named `<prefix>0`, `<prefix>1`, ... and started with the common member
//! flags of [`crate::args::MemberArgs`] plus the spec's extra arguments and environment.
//! Each supervisor gets a parent-death signal (SIGKILL), and its server gets one from
//! the supervisor, so nothing outlives the process that started the cluster. Dropping a
//! [`LocalCluster`] stops every member gracefully (SIGTERM, SIGKILL after 20 s) but
//! keeps the directories, which belong to the caller.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::addr;

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
    /// The supervisor program (`paas-pg-supervisor`, or `paas` with `args_prefix`).
    pub program: PathBuf,
    /// Arguments before the supervisor's own (e.g. `["appliance", "postgres"]`).
    pub args_prefix: Vec<String>,
    /// Arguments after the common member flags (engine settings).
    pub args: Vec<String>,
    /// Environment of every member (secrets are passed here, not on the command line).
    pub env: Vec<(String, String)>,
    /// The cluster name.
    pub cluster: String,
    /// Members are named this plus their index (`pg` -> `pg0`, `pg1`, ...).
    pub member_prefix: String,
    /// The engine's server port base (`crate::addr`): member `i` listens on base + i.
    pub port_base: u16,
    /// The engine's health API port base.
    pub health_port_base: u16,
    /// How many members.
    pub members: usize,
    /// etcd client URLs.
    pub etcd_endpoints: Vec<String>,
    /// etcd key prefix.
    pub prefix: String,
    /// Where member directories go (also the seed of the cluster's loopback address).
    pub base_dir: PathBuf,
    /// Lease TTL in seconds.
    pub ttl_secs: u64,
}

/// One member's process and addresses.
#[derive(Debug)]
pub struct Member {
    /// `<prefix>N`.
    pub name: String,
    /// The cluster's own loopback address, where it listens (see `crate::addr`).
    pub host: Ipv4Addr,
    /// Its server's port on `host`.
    pub port: u16,
    /// Its health API port on `host`.
    pub health_port: u16,
    /// Its directory.
    pub dir: PathBuf,
    child: Option<Child>,
}

impl Member {
    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((self.host, self.port))
    }

    /// The health API's address.
    pub fn health_addr(&self) -> SocketAddr {
        SocketAddr::from((self.host, self.health_port))
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
            let name = format!("{}{i}", spec.member_prefix);
            let dir = spec.base_dir.join(&name);
            std::fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
            members.push(Member {
                name,
                host,
                port: addr::member_port(spec.port_base, i),
                health_port: addr::member_port(spec.health_port_base, i),
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

    /// Stops member `i`'s supervisor gracefully (it stops its server).
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
            .args(&spec.args)
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        crate::process::tie(&mut command, libc::SIGKILL, None);
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
