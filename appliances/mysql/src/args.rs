//! The supervisor's command line, shared by the `paas-mysql-supervisor` binary and a
//! future `paas appliance mysql`, so both start a member the same way.

use std::path::PathBuf;
use std::time::Duration;

use crate::supervisor::{server_id_of, SupervisorConfig};

/// Supervise one MariaDB instance of an HA cluster coordinated through etcd.
#[derive(clap::Args, Debug, Clone)]
pub struct SupervisorArgs {
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
    /// Instance directory.
    #[arg(long)]
    pub dir: PathBuf,
    /// Listen address of mariadbd and the health API.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// mariadbd's port.
    #[arg(long)]
    pub port: u16,
    /// Health API (and seed server) port.
    #[arg(long)]
    pub health_port: u16,
    /// `server_id` (default: the number the member name ends with, plus one).
    #[arg(long)]
    pub server_id: Option<u32>,
    /// The superuser password (same on all members; [A-Za-z0-9_-]).
    #[arg(long, env = "PAAS_MYSQL_SUPERUSER_PASSWORD", hide_env_values = true)]
    pub superuser_password: String,
    /// Lease TTL in seconds: a dead primary is replaced within about this long; a
    /// primary whose keep-alives stall for TTL minus one second is fenced.
    #[arg(long, default_value_t = 3)]
    pub ttl_secs: u64,
    /// How many members the cluster has (0: unknown); a bootstrap waits for all.
    #[arg(long, default_value_t = 0)]
    pub members: usize,
}

impl SupervisorArgs {
    /// The supervisor's configuration.
    pub fn into_config(self) -> SupervisorConfig {
        let mut config = SupervisorConfig::new(
            &self.cluster,
            &self.name,
            self.etcd,
            self.dir,
            self.port,
            self.health_port,
            &self.superuser_password,
        );
        config.prefix = self.prefix;
        config.host = self.host;
        config.server_id = self.server_id.unwrap_or_else(|| server_id_of(&self.name));
        config.ttl = Duration::from_secs(self.ttl_secs);
        config.members = self.members;
        config
    }
}
