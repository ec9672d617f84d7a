//! The command-line flags every member's supervisor takes, whatever its engine, so the
//! launchers (`crate::launcher`, and `paas up`'s jobs) start every engine the same way.
//! An engine flattens [`MemberArgs`] into its own arguments and adds its settings.

use std::path::PathBuf;
use std::time::Duration;

/// Who the member is, where it keeps its data and listens, and how it reaches etcd.
#[derive(clap::Args, Debug, Clone)]
pub struct MemberArgs {
    /// Cluster name.
    #[arg(long, default_value = "main")]
    pub cluster: String,
    /// This member's name ([a-z0-9_]).
    #[arg(long)]
    pub name: String,
    /// etcd client URLs, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "http://127.0.0.1:2379")]
    pub etcd: Vec<String>,
    /// etcd key prefix.
    #[arg(long, default_value = "paas/")]
    pub prefix: String,
    /// The client identity (ca.pem, client.pem, client-key.pem) presented to an
    /// `https://` etcd that requires client certificates.
    #[arg(long)]
    pub etcd_tls_dir: Option<PathBuf>,
    /// The cluster's server certificate (`ca.pem`, `server.pem`, `server-key.pem`, see
    /// `crate::tls`): engines that speak TLS (PostgreSQL, MariaDB, Redis) serve with it;
    /// without it, plain TCP only.
    #[arg(long)]
    pub tls_dir: Option<PathBuf>,
    /// Member directory (the server's data lives inside it).
    #[arg(long)]
    pub dir: PathBuf,
    /// Listen address of the server and the health API (see [`MemberArgs::listen_host`]).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// The address of the host the member runs on, as its host agent tells every job
    /// (`HOST_IP`): when it is reachable from other machines, the member listens and
    /// registers there instead of `--host`, so members on other hosts reach it.
    #[arg(long)]
    pub job_ip: Option<std::net::IpAddr>,
    /// The server's port.
    #[arg(long)]
    pub port: u16,
    /// Health API port.
    #[arg(long)]
    pub health_port: u16,
    /// Lease TTL in seconds: a dead leader is replaced within about this long; a leader
    /// whose keep-alives stall for TTL minus one second is fenced.
    #[arg(long, default_value_t = 3)]
    pub ttl_secs: u64,
    /// How many members the cluster has (0: unknown); a bootstrap waits until all of
    /// them registered, so a member with data that is slow to start is never bypassed.
    #[arg(long, default_value_t = 0)]
    pub members: usize,
}

impl MemberArgs {
    /// Loads the etcd client identity, if one is given, for every connection this
    /// process makes afterwards.
    pub fn load_etcd_identity(&self) -> Result<(), paas_coord::tls::TlsError> {
        match &self.etcd_tls_dir {
            Some(dir) => paas_coord::tls::set_client_identity(dir),
            None => Ok(()),
        }
    }

    /// Where the server and the health API listen and the member registers:
    /// `crate::addr::member_host` of `--host` and `--job-ip`.
    pub fn listen_host(&self) -> String {
        crate::addr::member_host(&self.host, self.job_ip)
    }

    /// The lease TTL.
    pub fn ttl(&self) -> Duration {
        Duration::from_secs(self.ttl_secs)
    }
}
