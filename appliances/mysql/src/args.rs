//! The supervisor's command line, shared by the `paas-mysql-supervisor` binary and
//! `paas appliance mysql`, so both start a member the same way.

use paas_appliance::args::MemberArgs;

use crate::supervisor::{server_id_of, SupervisorConfig};

/// Supervise one MariaDB instance of an HA cluster coordinated through etcd.
#[derive(clap::Args, Debug, Clone)]
pub struct SupervisorArgs {
    /// The flags every member takes.
    #[command(flatten)]
    pub member: MemberArgs,
    /// `server_id` (default: the number the member name ends with, plus one).
    #[arg(long)]
    pub server_id: Option<u32>,
    /// The superuser password (same on all members; [A-Za-z0-9_-]).
    #[arg(long, env = PASSWORD_ENV, hide_env_values = true)]
    pub superuser_password: String,
}

/// The environment variable the superuser password is passed in (never on the command
/// line, where `ps` would show it).
pub const PASSWORD_ENV: &str = "PAAS_MYSQL_SUPERUSER_PASSWORD";

impl SupervisorArgs {
    /// The supervisor's configuration.
    pub fn into_config(self) -> SupervisorConfig {
        let m = self.member;
        let mut config = SupervisorConfig::new(
            &m.cluster,
            &m.name,
            m.etcd.clone(),
            m.dir.clone(),
            m.port,
            m.health_port,
            &self.superuser_password,
        );
        config.prefix = m.prefix.clone();
        config.host = m.listen_host();
        config.server_id = self.server_id.unwrap_or_else(|| server_id_of(&m.name));
        config.ttl = m.ttl();
        config.members = m.members;
        config.tls_dir = m.tls_dir.clone();
        config
    }
}
