//! The supervisor's command line, shared by the `paas-pg-supervisor` binary and
//! `paas appliance postgres`, so both start a member the same way.

use std::path::PathBuf;

use paas_appliance::args::MemberArgs;

use crate::supervisor::SupervisorConfig;

/// Supervise one PostgreSQL 15 instance of an HA cluster coordinated through etcd.
#[derive(clap::Args, Debug, Clone)]
pub struct SupervisorArgs {
    /// The flags every member takes.
    #[command(flatten)]
    pub member: MemberArgs,
    /// PostgreSQL binaries.
    #[arg(long, default_value = "/usr/lib/postgresql/15/bin")]
    pub bin_dir: PathBuf,
    /// The superuser password (same on all members).
    #[arg(long, env = PASSWORD_ENV, hide_env_values = true)]
    pub superuser_password: String,
}

/// The environment variable the superuser password is passed in (never on the command
/// line, where `ps` would show it).
pub const PASSWORD_ENV: &str = "PAAS_PG_SUPERUSER_PASSWORD";

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
        config.bin_dir = self.bin_dir;
        config.host = m.host.clone();
        config.ttl = m.ttl();
        config.members = m.members;
        config.tls_dir = m.tls_dir.clone();
        config
    }
}
