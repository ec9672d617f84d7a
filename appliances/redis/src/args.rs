//! The supervisor's command line, shared by the `paas-redis-supervisor` binary and
//! `paas appliance redis`, so both start a member the same way.

use std::time::Duration;

use paas_appliance::args::MemberArgs;

use crate::server::Fsync;
use crate::supervisor::SupervisorConfig;

/// The environment variable the app's password is passed in (never on the command line,
/// where `ps` would show it).
pub const PASSWORD_ENV: &str = "PAAS_REDIS_PASSWORD";

/// The environment variable the supervisors' admin password is passed in.
pub const ADMIN_PASSWORD_ENV: &str = "PAAS_REDIS_ADMIN_PASSWORD";

/// Supervise one redis-server of a replication group coordinated through etcd.
#[derive(clap::Args, Debug, Clone)]
pub struct SupervisorArgs {
    /// The flags every member takes (`--cluster` is the group's name).
    #[command(flatten)]
    pub member: MemberArgs,
    /// The app's password (the `default` user), the same on all members.
    #[arg(long, env = PASSWORD_ENV, hide_env_values = true)]
    pub password: String,
    /// The supervisors' password (admin user, replication links), the same on all members.
    #[arg(long, env = ADMIN_PASSWORD_ENV, hide_env_values = true)]
    pub admin_password: String,
    /// AOF fsync policy: `everysec` (a machine crash may lose the last second) or
    /// `always` (every write on disk before it is answered).
    #[arg(long, value_enum, default_value = "everysec")]
    pub appendfsync: Fsync,
    /// Seconds without a replica's acknowledgement after which a primary that requires
    /// a replica refuses writes (`min-replicas-max-lag`).
    #[arg(long, default_value_t = 2)]
    pub max_lag_secs: u32,
}

impl SupervisorArgs {
    /// The supervisor's configuration.
    pub fn into_config(self) -> SupervisorConfig {
        let m = self.member;
        SupervisorConfig {
            group: m.cluster.clone(),
            name: m.name.clone(),
            etcd_endpoints: m.etcd.clone(),
            prefix: m.prefix.clone(),
            dir: m.dir.clone(),
            host: m.host.clone(),
            port: m.port,
            health_port: m.health_port,
            password: self.password,
            admin_password: self.admin_password,
            fsync: self.appendfsync,
            max_lag_secs: self.max_lag_secs,
            ttl: m.ttl(),
            fence_margin: Duration::from_millis(1000),
            tick: Duration::from_millis(250),
            members: m.members,
        }
    }
}
