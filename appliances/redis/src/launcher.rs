//! A replication group as the appliance core's generic launcher runs it: what a group is
//! ([`GroupSpec`]) and the supervisor command line of its members ([`local_spec`]), for
//! the tests, the failover bench and the provider's local runner.
//!
//! Members are named `r0`, `r1`, ...; each listens on the group's own loopback address
//! (seeded by the group's directory, `paas_appliance::addr::cluster_ip`) on the fixed
//! ports `REDIS_PORT + i` (server) and `REDIS_HEALTH_PORT + i` (health API). Secrets
//! (the group's secret) go in the environment, never on a command line.

use std::path::PathBuf;

use paas_appliance::addr;
use paas_appliance::launcher::LocalClusterSpec;

use crate::args::SECRET_ENV;

/// Member names are this plus their index.
pub const MEMBER_PREFIX: &str = "r";

/// One replication group: everything needed to start its members.
#[derive(Debug, Clone)]
pub struct GroupSpec {
    /// The group's name (its etcd keys are `redis/<group>/`).
    pub group: String,
    /// How many members (1 primary + replicas).
    pub members: usize,
    /// Where member directories go (`<base_dir>/r0`, ...); seeds the loopback address.
    pub base_dir: PathBuf,
    /// The group's secret (`crate::secret`).
    pub secret: String,
    /// etcd client URLs.
    pub etcd_endpoints: Vec<String>,
    /// etcd key prefix.
    pub prefix: String,
    /// Lease TTL in seconds.
    pub ttl_secs: u64,
    /// The group's server certificate (`paas_appliance::tls`), passed as `--tls-dir`;
    /// `None`: plain TCP.
    pub tls_dir: Option<PathBuf>,
}

impl GroupSpec {
    /// The environment every member's supervisor gets (the secret).
    pub fn env(&self) -> Vec<(String, String)> {
        vec![(SECRET_ENV.to_string(), self.secret.clone())]
    }
}

/// The core launcher's spec for `group`, run by `program` (`paas-redis-supervisor`, or
/// `paas` with `args_prefix` `["appliance", "redis"]`).
pub fn local_spec(
    group: &GroupSpec,
    program: PathBuf,
    args_prefix: Vec<String>,
) -> LocalClusterSpec {
    LocalClusterSpec {
        program,
        args_prefix,
        args: match &group.tls_dir {
            Some(dir) => vec!["--tls-dir".into(), dir.display().to_string()],
            None => vec![],
        },
        env: group.env(),
        cluster: group.group.clone(),
        member_prefix: MEMBER_PREFIX.into(),
        port_base: addr::REDIS_PORT,
        health_port_base: addr::REDIS_HEALTH_PORT,
        members: group.members,
        etcd_endpoints: group.etcd_endpoints.clone(),
        prefix: group.prefix.clone(),
        base_dir: group.base_dir.clone(),
        ttl_secs: group.ttl_secs,
    }
}
