//! Redis as `paas up` runs it: one replication group per resource. The Redis provider
//! (`paas_redis::provision`) decides what a group is; this module is the
//! [`GroupRunner`] it is given: each group is a cluster of the common launcher
//! (`crate::appliance`), its members jobs of the system app `paas-redis-<group>` and its
//! leader-following endpoint on a fixed port of its own, recorded in the group's
//! directory so `REDIS_URL` stays valid across restarts of `paas up`, which re-adopts
//! every group found under `DATA_DIR/redis/`. A whole-cluster restore starts each
//! group again ([`GroupRunner::relaunch`]) under the secret recorded in its system app's
//! release (etcd, so in the backup file) and on the port its `REDIS_URL` names.
//!
//! Files of a group (`DATA_DIR/redis/<group>/`): `superuser-password` (the group's
//! secret, 0600), `group.json` (members and endpoint port), `rN/` (members' dirs).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use paas_appliance::provider::{Provider, ProviderError};
use paas_appliance::records::Keys;
use paas_model::Formation;
use paas_redis::args::SupervisorArgs;
use paas_redis::launcher::GroupSpec;
use paas_redis::provision::{GroupRunner, ProviderConfig, RedisProvider};
use serde::{Deserialize, Serialize};

use crate::appliance::{system_app, ApplianceKind, Launched, Site};

/// Endpoints of groups listen on 127.0.0.1 from this port up, one per group: below the
/// ephemeral range, apart from the members' fixed ports.
pub const ENDPOINT_PORT_BASE: u16 = 26379;

/// How many groups one node serves (endpoint ports `ENDPOINT_PORT_BASE..+this`).
pub const MAX_GROUPS: u16 = 2000;

/// The lowest endpoint port that no group records (`used`) and that `bindable` says is
/// free on the machine now. Pure but for `bindable`.
fn pick_endpoint_port(
    used: &std::collections::BTreeSet<u16>,
    bindable: impl Fn(u16) -> bool,
) -> Option<u16> {
    (ENDPOINT_PORT_BASE..ENDPOINT_PORT_BASE + MAX_GROUPS)
        .find(|p| !used.contains(p) && bindable(*p))
}

/// How many endpoint ports a new group tries when each is taken between the check and
/// the bind.
const PORT_RACES: usize = 20;

/// Whether `err` comes from binding an address something else holds.
fn address_in_use(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::AddrInUse)
    })
}

/// How often adopting a group found on disk is tried at start.
const ADOPT_ATTEMPTS: u32 = 12;

/// How long removing a group waits for its members to stop before deleting its data.
const STOP_LIMIT: Duration = Duration::from_secs(30);

/// Redis 7 replication groups (`paas-redis`), one per resource.
pub struct RedisKind {
    site: Site,
    /// Whether groups get a certificate of the cluster CA (new groups do; a restored
    /// group made before TLS keeps its plain `redis://` URL).
    tls: bool,
}

/// What `group.json` records about a group.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct GroupFile {
    members: usize,
    endpoint_port: u16,
}

#[async_trait::async_trait]
impl ApplianceKind for RedisKind {
    fn kind(&self) -> &'static str {
        "redis"
    }

    fn member_prefix(&self) -> &'static str {
        paas_redis::launcher::MEMBER_PREFIX
    }

    fn port_bases(&self) -> (u16, u16) {
        (
            paas_appliance::addr::REDIS_PORT,
            paas_appliance::addr::REDIS_HEALTH_PORT,
        )
    }

    fn keys(&self, cluster: &str) -> Keys {
        paas_redis::cluster::keys(cluster)
    }

    fn secret_env(&self) -> &'static str {
        paas_redis::args::SECRET_ENV
    }

    /// Not used: every group gets its own fixed endpoint port (`ENDPOINT_PORT_BASE`).
    fn default_listen(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], ENDPOINT_PORT_BASE))
    }

    /// The members run redis-server as the redis user: fail now, naming the directory,
    /// rather than wait for a group that cannot start.
    fn check_dir(&self, dir: &Path) -> Result<()> {
        Ok(paas_redis::server::check_reachable(dir)?)
    }

    /// Each new group gets a certificate of the cluster CA; its members' only port
    /// speaks TLS.
    fn speaks_tls(&self) -> bool {
        self.tls
    }

    /// Ready when the endpoint reaches a writable primary with the app's password
    /// (over TLS verified against the CA when the group has a certificate).
    async fn not_ready(
        &self,
        endpoint: SocketAddr,
        secret: &str,
        ca_file: Option<&Path>,
    ) -> Option<String> {
        let password = paas_redis::secret::app_password(secret);
        let scheme = paas_redis::tls::scheme(ca_file.is_some());
        let url = format!("{scheme}default:{password}@{endpoint}/");
        // ROLE is an admin command; INFO is the app's too.
        let check = async {
            let client = paas_redis::tls::open(&url, ca_file)?;
            let mut conn = client.get_multiplexed_async_connection().await?;
            redis::cmd("INFO")
                .arg("replication")
                .query_async::<String>(&mut conn)
                .await
        };
        match tokio::time::timeout(Duration::from_secs(3), check).await {
            Err(_) => Some("the endpoint did not answer in time".into()),
            Ok(Err(e)) => Some(format!("cannot reach the primary: {e}")),
            Ok(Ok(info)) if info.lines().any(|l| l.trim() == "role:master") => None,
            Ok(Ok(_)) => Some("the endpoint reaches a replica".into()),
        }
    }

    /// The Redis provider, which starts a group per resource on this kind's site (a
    /// Redis group is never a boot cluster, so `cluster` plays no part).
    fn provider(&self, _cluster: &Launched, etcd: &[String]) -> Arc<dyn Provider> {
        provider(&self.site, etcd, 2)
    }
}

/// The Redis provider of `site`, making groups of `default_members` unless told
/// otherwise; groups found on disk are re-adopted in the background.
pub fn provider(site: &Site, etcd: &[String], default_members: usize) -> Arc<dyn Provider> {
    let runner = Arc::new(NodeRunner {
        kind: RedisKind {
            site: site.clone(),
            tls: true,
        },
        launched: Mutex::new(BTreeMap::new()),
        serial: tokio::sync::Mutex::new(()),
    });
    let adopting = runner.clone();
    tokio::spawn(async move { adopting.adopt_all().await });
    Arc::new(RedisProvider::new(
        ProviderConfig {
            base_dir: groups_dir(&site.data_dir),
            etcd_endpoints: etcd.to_vec(),
            prefix: format!("{}/", paas_model::keys::DEFAULT_PREFIX),
            ttl_secs: site.ttl_secs,
            default_members,
            // The launcher gives every new group a certificate when the CA's key is here.
            ca_file: crate::pki::has_ca_key(&site.data_dir.join("pki"))
                .then(|| site.data_dir.join(crate::pki::PUBLIC_CA)),
        },
        runner,
        site.store.coord().clone(),
    ))
}

/// Where groups' directories are (what the common launcher uses for cluster `<group>`).
fn groups_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("redis")
}

/// A group this node serves: launched by `resource add` through the common launcher, or
/// adopted at start (its members are jobs the scheduler places again from the stored
/// formation; only the endpoint is this process's). Dropping it stops the endpoint.
enum Running {
    Launched(Launched),
    Adopted(paas_router::tcp::TcpEndpoint),
}

impl Running {
    /// Where its endpoint listens.
    fn endpoint(&self) -> SocketAddr {
        match self {
            Running::Launched(launched) => launched.endpoint,
            Running::Adopted(endpoint) => endpoint.local_addr(),
        }
    }
}

/// Runs groups through the common launcher and keeps their endpoints.
struct NodeRunner {
    kind: RedisKind,
    launched: Mutex<BTreeMap<String, Running>>,
    /// Held while a group found on disk is adopted or a group is relaunched, so the two
    /// never race for a group's endpoint port.
    serial: tokio::sync::Mutex<()>,
}

impl NodeRunner {
    /// The endpoint of `group`, when this runner serves it.
    fn serving(&self, group: &str) -> Option<SocketAddr> {
        self.launched
            .lock()
            .expect("launched lock")
            .get(group)
            .map(Running::endpoint)
    }

    /// A free endpoint port: the lowest above [`ENDPOINT_PORT_BASE`] that no group of
    /// this node records, that is not in `taken` (found held at bind time), and that
    /// nothing on the machine listens on or holds now (an other `paas up` on the same
    /// machine counts its own groups only).
    fn free_endpoint_port(
        &self,
        taken: &std::collections::BTreeSet<u16>,
    ) -> Result<u16, ProviderError> {
        let dir = groups_dir(&self.kind.site.data_dir);
        let mut used = taken.clone();
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if let Some(file) = read_group_file(&entry.path()) {
                used.insert(file.endpoint_port);
            }
        }
        pick_endpoint_port(&used, |port| {
            std::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port))).is_ok()
        })
        .ok_or_else(|| {
            ProviderError(format!(
                "no free redis endpoint port in 127.0.0.1:{ENDPOINT_PORT_BASE}-{}",
                ENDPOINT_PORT_BASE + MAX_GROUPS - 1
            ))
        })
    }

    async fn launch_group(
        &self,
        kind: &RedisKind,
        group: &str,
        members: usize,
        port: u16,
    ) -> Result<SocketAddr> {
        let listen = SocketAddr::from(([127, 0, 0, 1], port));
        let launched = crate::appliance::launch(kind, &kind.site, group, members, listen).await?;
        let endpoint = launched.endpoint;
        self.launched
            .lock()
            .expect("launched lock")
            .insert(group.to_string(), Running::Launched(launched));
        Ok(endpoint)
    }

    /// Serves an existing group again: its endpoint on its recorded port, in front of
    /// the members the scheduler runs from the stored formation.
    async fn adopt_group(&self, group: &str, port: u16) -> Result<SocketAddr> {
        let listen = SocketAddr::from(([127, 0, 0, 1], port));
        let endpoint = paas_router::tcp::TcpEndpoint::start(
            listen,
            paas_router::tcp::EndpointConfig {
                coord: self.kind.site.store.coord().clone(),
                leader_key: paas_redis::cluster::keys(group).leader(),
                no_leader_wait: Duration::from_secs(15),
            },
        )
        .await
        .with_context(|| format!("cannot listen on {listen} for redis group {group}"))?;
        let addr = endpoint.local_addr();
        self.launched
            .lock()
            .expect("launched lock")
            .insert(group.to_string(), Running::Adopted(endpoint));
        Ok(addr)
    }

    /// Starts again every group found on disk (after a restart of `paas up`).
    async fn adopt_all(&self) {
        let dir = groups_dir(&self.kind.site.data_dir);
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            let (Some(file), Some(group)) = (
                read_group_file(&path),
                path.file_name().map(|n| n.to_string_lossy().to_string()),
            ) else {
                continue;
            };
            // The endpoint's port may still be held by the previous run for a moment:
            // try again for a while before giving up on the group.
            for attempt in 1..=ADOPT_ATTEMPTS {
                let serial = self.serial.lock().await;
                if self.serving(&group).is_some() {
                    break; // relaunched by a restore meanwhile
                }
                let adopted = self.adopt_group(&group, file.endpoint_port).await;
                drop(serial);
                match adopted {
                    Ok(endpoint) => {
                        tracing::info!(%group, %endpoint, "redis group adopted");
                        break;
                    }
                    Err(err) => {
                        tracing::error!(%group, attempt, error = %format!("{err:#}"), "cannot adopt redis group");
                        tokio::time::sleep(Duration::from_secs(5)).await;
                    }
                }
            }
        }
    }
}

fn read_group_file(dir: &Path) -> Option<GroupFile> {
    let text = std::fs::read_to_string(dir.join("group.json")).ok()?;
    serde_json::from_str(&text).ok()
}

/// Records `members` and `endpoint_port` in the group directory `dir`.
fn write_group_file(dir: &Path, members: usize, endpoint_port: u16) -> Result<(), ProviderError> {
    let file = GroupFile {
        members,
        endpoint_port,
    };
    std::fs::write(
        dir.join("group.json"),
        serde_json::to_vec(&file).expect("GroupFile serializes"),
    )
    .map_err(|e| ProviderError(format!("writing group.json: {e}")))
}

#[async_trait::async_trait]
impl GroupRunner for NodeRunner {
    async fn launch(&self, spec: &GroupSpec) -> Result<SocketAddr, ProviderError> {
        let fail = |e: anyhow::Error| ProviderError(format!("{e:#}"));
        let expected = groups_dir(&self.kind.site.data_dir).join(&spec.group);
        if spec.base_dir != expected {
            return Err(ProviderError(format!(
                "group directory {} is not {}",
                spec.base_dir.display(),
                expected.display()
            )));
        }
        // The launcher keeps the cluster's secret in this file: the provider's.
        crate::up::persistent_secret(&spec.base_dir.join("superuser-password"), || {
            spec.secret.clone()
        })
        .map_err(fail)?;
        // A port found free can be taken before the launch binds it (another `paas up`
        // on the machine creating a group at the same moment): the launch binds first
        // and fails at once then, and the next free port is tried.
        let mut taken = std::collections::BTreeSet::new();
        loop {
            let port = self.free_endpoint_port(&taken)?;
            write_group_file(&spec.base_dir, spec.members, port)?;
            match self
                .launch_group(&self.kind, &spec.group, spec.members, port)
                .await
            {
                Err(e) if address_in_use(&e) && taken.len() < PORT_RACES => {
                    tracing::info!(group = %spec.group, port, "the endpoint port was taken meanwhile; trying the next free one");
                    taken.insert(port);
                }
                result => return result.map_err(fail),
            }
        }
    }

    /// The secret in the current release of the group's system app (its members'
    /// environment), which a cluster backup's etcd snapshot holds.
    async fn recorded_secret(&self, group: &str) -> Result<Option<String>, ProviderError> {
        let store = &self.kind.site.store;
        let app = system_app("redis", group);
        let fail = |e: paas_controller::ApiError| {
            ProviderError(format!("reading the system app {app}: {e}"))
        };
        let current = match store.get_app(&app).await {
            Ok(current) => current,
            Err(paas_controller::ApiError::NotFound(_)) => return Ok(None),
            Err(e) => return Err(fail(e)),
        };
        let release = store.release(&app, current.release).await.map_err(fail)?;
        Ok(release.env.get(paas_redis::args::SECRET_ENV).cloned())
    }

    /// Launches the group with its endpoint on the port `listen` names, after checking
    /// that port is free (a taken one fails here, naming it and its holder, before
    /// anything is written). A group this process launched is left as it is; one only
    /// adopted at start (a restore resumed after a failed start, whose members' formation
    /// `restore::prepare` removed) is launched again in full.
    async fn relaunch(
        &self,
        spec: &GroupSpec,
        listen: SocketAddr,
        tls: bool,
    ) -> Result<SocketAddr, ProviderError> {
        let fail = |e: String| ProviderError(format!("redis group {}: {e}", spec.group));
        let expected = groups_dir(&self.kind.site.data_dir).join(&spec.group);
        if spec.base_dir != expected {
            return Err(fail(format!(
                "directory {} is not {}",
                spec.base_dir.display(),
                expected.display()
            )));
        }
        if listen.ip() != std::net::Ipv4Addr::LOCALHOST {
            return Err(fail(format!(
                "its URL names {listen}, but endpoints listen on 127.0.0.1"
            )));
        }
        let _serial = self.serial.lock().await;
        let adopted = {
            let mut running = self.launched.lock().expect("launched lock");
            match running.get(&spec.group) {
                Some(Running::Launched(launched)) if launched.endpoint == listen => {
                    return Ok(launched.endpoint)
                }
                Some(other) => {
                    let endpoint = other.endpoint();
                    if endpoint != listen {
                        return Err(fail(format!("it is served on {endpoint}, not {listen}")));
                    }
                    running.remove(&spec.group)
                }
                None => None,
            }
        };
        // An adopted endpoint lets go of the port as its tasks end: wait a moment.
        let patience = Duration::from_secs(if adopted.is_some() { 5 } else { 0 });
        drop(adopted);
        tokio::task::spawn_blocking(move || {
            paas_appliance::addr::wait_free(listen, "the endpoint its REDIS_URL names", patience)
        })
        .await
        .map_err(|e| fail(e.to_string()))?
        .map_err(|e| fail(format!("cannot start it: {e}")))?;
        let kept = crate::up::persistent_secret(&spec.base_dir.join("superuser-password"), || {
            spec.secret.clone()
        })
        .map_err(|e| fail(format!("{e:#}")))?;
        if kept != spec.secret {
            return Err(fail(format!(
                "{} holds another secret than the recorded one",
                spec.base_dir.display()
            )));
        }
        write_group_file(&spec.base_dir, spec.members, listen.port()).map_err(|e| fail(e.0))?;
        let kind = RedisKind {
            site: self.kind.site.clone(),
            tls,
        };
        self.launch_group(&kind, &spec.group, spec.members, listen.port())
            .await
            .map_err(|e| fail(format!("{e:#}")))
    }

    async fn stop(&self, group: &str) -> Result<(), ProviderError> {
        let fail = |e: String| ProviderError(e);
        let launched = self.launched.lock().expect("launched lock").remove(group);
        drop(launched);
        let store = &self.kind.site.store;
        let app = system_app("redis", group);
        if store.get_app(&app).await.is_ok() {
            store
                .put_formation(&Formation {
                    app: app.clone(),
                    processes: BTreeMap::new(),
                    limits: Default::default(),
                })
                .await
                .map_err(|e| fail(format!("scaling {app} to zero: {e}")))?;
        }
        // The members deregister (their leases are revoked) as they stop; then the
        // system app goes (with its formation and releases), leaving no empty app behind.
        let members = paas_redis::cluster::keys(group).members();
        let started = Instant::now();
        loop {
            match store.coord().entries(&members).await {
                Ok(entries) if entries.is_empty() => break,
                Ok(_) if started.elapsed() > STOP_LIMIT => {
                    return Err(fail(format!(
                        "the members of {group} did not stop within {STOP_LIMIT:?}"
                    )))
                }
                Ok(_) => {}
                Err(e) => return Err(fail(format!("reading {group}'s members: {e}"))),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        match store.destroy_app(&app).await {
            Ok(()) => Ok(()),
            Err(paas_controller::ApiError::NotFound(_)) => Ok(()),
            Err(e) => Err(fail(format!("removing the system app {app}: {e}"))),
        }
    }
}

/// Runs one member's supervisor until SIGINT/SIGTERM (`paas appliance redis`).
pub async fn supervise(args: SupervisorArgs) -> Result<()> {
    crate::up::init_tracing();
    args.member.load_etcd_identity()?;
    paas_redis::supervisor::run(args.into_config(), crate::up::wait_for_signal())
        .await
        .context("redis supervisor failed")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_taken_address_is_told_apart_through_the_context() {
        let taken = anyhow::Error::from(std::io::Error::from(std::io::ErrorKind::AddrInUse))
            .context("cannot listen on 127.0.0.1:26379 for redis");
        assert!(address_in_use(&taken));
        let other = anyhow::Error::from(std::io::Error::from(std::io::ErrorKind::PermissionDenied))
            .context("cannot listen on 127.0.0.1:26379 for redis");
        assert!(!address_in_use(&other));
        assert!(!address_in_use(&anyhow::anyhow!("address already in use")));
    }

    #[test]
    fn endpoint_ports_skip_recorded_and_busy_ones() {
        let used: std::collections::BTreeSet<u16> =
            [ENDPOINT_PORT_BASE, ENDPOINT_PORT_BASE + 2].into();
        // Another process on the machine holds base+1.
        let busy = ENDPOINT_PORT_BASE + 1;
        assert_eq!(
            pick_endpoint_port(&used, |p| p != busy),
            Some(ENDPOINT_PORT_BASE + 3)
        );
        assert_eq!(
            pick_endpoint_port(&used, |_| true),
            Some(ENDPOINT_PORT_BASE + 1)
        );
        assert_eq!(pick_endpoint_port(&used, |_| false), None);
    }
}
