//! The supervisor's command line, shared by the `paas-redis-supervisor` binary and
//! `paas appliance redis`, so both start a member the same way.

use std::time::Duration;

use paas_appliance::args::MemberArgs;

use crate::server::Fsync;
use crate::supervisor::SupervisorConfig;

/// The environment variable the group's secret is passed in (never on the command line,
/// where `ps` would show it); both passwords derive from it (`crate::secret`).
pub const SECRET_ENV: &str = "PAAS_REDIS_SECRET";

/// Supervise one redis-server of a replication group coordinated through etcd.
#[derive(clap::Args, Debug, Clone)]
pub struct SupervisorArgs {
    /// The flags every member takes (`--cluster` is the group's name).
    #[command(flatten)]
    pub member: MemberArgs,
    /// The group's secret, the same on all members.
    #[arg(long, env = SECRET_ENV, hide_env_values = true)]
    pub secret: String,
    /// AOF fsync policy: `everysec` (a machine crash may lose the last second) or
    /// `always` (every write on disk before it is answered).
    #[arg(long, value_enum, default_value = "everysec")]
    pub appendfsync: Fsync,
    /// Seconds without a replica's acknowledgement after which a primary that requires
    /// a replica refuses writes (`min-replicas-max-lag`).
    #[arg(long, default_value_t = 2)]
    pub max_lag_secs: u32,
    /// Milliseconds between two ticks while the group is steady (a change of its
    /// records wakes the supervisor at once): how late a crash of the local
    /// redis-server may be noticed.
    #[arg(long, default_value_t = 1000)]
    pub idle_tick_ms: u64,
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
            password: crate::secret::app_password(&self.secret),
            admin_password: crate::secret::admin_password(&self.secret),
            fsync: self.appendfsync,
            max_lag_secs: self.max_lag_secs,
            ttl: m.ttl(),
            fence_margin: Duration::from_millis(1000),
            tick: Duration::from_millis(250),
            idle_tick: Duration::from_millis(self.idle_tick_ms),
            members: m.members,
            tls_dir: m.tls_dir.clone(),
        }
    }
}
