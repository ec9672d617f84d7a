//! The supervisor's command line, shared by the `paas-pg-supervisor` binary and
//! `paas appliance postgres`, so both start a member the same way.

use std::path::PathBuf;
use std::time::Duration;

use paas_appliance::args::MemberArgs;

use crate::archive::{ArchiveConfig, Repo, RepoError, S3Repo};
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
    /// Archive the cluster's WAL and base backups with pgBackRest into this repository,
    /// so it can be restored to a point in time: a directory (shared by all members) or
    /// s3://bucket/path (keys from PGBACKREST_REPO1_S3_KEY and
    /// PGBACKREST_REPO1_S3_KEY_SECRET in the environment).
    #[arg(long)]
    pub archive_repo: Option<String>,
    /// With an s3:// repository: the S3 endpoint, https://host[:port] (the host as its
    /// certificate names it); default: AWS's endpoint of the region.
    #[arg(long)]
    pub archive_s3_endpoint: Option<String>,
    /// With an s3:// repository: the region.
    #[arg(long, default_value = "us-east-1")]
    pub archive_s3_region: String,
    /// With an s3:// repository: the CA that the endpoint's certificate is checked
    /// against (readable by the postgres user); default: the system's.
    #[arg(long)]
    pub archive_s3_ca_file: Option<PathBuf>,
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
    /// The repository `--archive-repo` and the `--archive-s3-*` flags name, if any.
    pub fn repo(&self) -> Result<Option<Repo>, RepoError> {
        let Some(repo) = &self.archive_repo else {
            return Ok(None);
        };
        if !repo.starts_with("s3://") {
            return Ok(Some(Repo::Dir(PathBuf::from(repo))));
        }
        let mut s3 = S3Repo::new(
            repo,
            self.archive_s3_endpoint.as_deref(),
            &self.archive_s3_region,
        )?;
        s3.ca_file = self.archive_s3_ca_file.clone();
        Ok(Some(Repo::S3(s3)))
    }

    /// The supervisor's configuration; fails when the archive's repository is not one.
    pub fn into_config(self) -> Result<SupervisorConfig, RepoError> {
        let repo = self.repo()?;
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
        config.archive = repo.map(|repo| {
            let mut archive = ArchiveConfig::new(repo, &m.cluster);
            archive.every = Duration::from_secs(self.base_backup_every_secs);
            archive.full_every = Duration::from_secs(self.full_backup_every_secs);
            archive.archive_timeout = Duration::from_secs(self.archive_timeout_secs);
            archive
        });
        Ok(config)
    }
}
