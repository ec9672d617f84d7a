//! The supervisor's command line, shared by the `paas-pg-supervisor` binary and
//! `paas appliance postgres`, so both start a member the same way.

use std::path::PathBuf;
use std::time::Duration;

use paas_appliance::args::MemberArgs;

use crate::archive::ArchiveConfig;
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
    /// Archive the cluster's WAL and base backups with pgBackRest into this repository
    /// directory (shared by all members), so it can be restored to a point in time.
    #[arg(long)]
    pub archive_repo: Option<PathBuf>,
    /// Take a base backup at least this often (seconds; incremental after the first full).
    #[arg(long, default_value_t = 24 * 3600)]
    pub base_backup_every_secs: u64,
    /// Take a full base backup at least this often (seconds).
    #[arg(long, default_value_t = 7 * 24 * 3600)]
    pub full_backup_every_secs: u64,
    /// Force a WAL segment to the archive at least this often (seconds): the recovery
    /// point objective of a point-in-time restore.
    #[arg(long, default_value_t = 30)]
    pub archive_timeout_secs: u64,
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
        config.host = m.listen_host();
        config.ttl = m.ttl();
        config.members = m.members;
        config.tls_dir = m.tls_dir.clone();
        config.archive = self.archive_repo.map(|repo| {
            let mut archive = ArchiveConfig::new(repo, &m.cluster);
            archive.every = Duration::from_secs(self.base_backup_every_secs);
            archive.full_every = Duration::from_secs(self.full_backup_every_secs);
            archive.archive_timeout = Duration::from_secs(self.archive_timeout_secs);
            archive
        });
        config
    }
}
