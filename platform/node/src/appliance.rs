//! Running an appliance's cluster the way Flynn runs its appliances: the members are
//! jobs of a system app (`paas-<kind>`, or `paas-<kind>-<cluster>` for a cluster other
//! than `main`), one process type per member (`pg0`, `pg1`, ...) so each keeps its
//! name, its fixed port and its data directory across restarts; the scheduler places
//! them and the host agent supervises them. A member listens on the job IP of the host
//! it lands on (`HOST_IP`) when other machines can reach that, else on the cluster's
//! own loopback address (one machine). With `Site::spread_hosts` the members are placed
//! only once that many hosts are live, so the scheduler puts one on each. In front of
//! them, the leader-following endpoint the resources' URLs point at. What differs between engines is an
//! [`ApplianceKind`]; everything else is here, once.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use paas_appliance::addr;
use paas_appliance::provider::Provider;
use paas_appliance::records::Keys;
use paas_controller::{ApiError, Store};
use paas_model::Formation;
use paas_router::tcp::{EndpointConfig, TcpEndpoint};

/// How long `paas up` waits for a cluster to take durable writes.
const READY_LIMIT: Duration = Duration::from_secs(120);

/// What one engine adds to the common launcher.
#[async_trait::async_trait]
pub trait ApplianceKind: Send + Sync {
    /// The kind as users name it (`postgres`): `paas up --appliance KIND=N`, `paas
    /// appliance KIND`, `paas resource add KIND`.
    fn kind(&self) -> &'static str;
    /// Members are named this plus their index (`pg` -> `pg0`).
    fn member_prefix(&self) -> &'static str;
    /// The server's and the health API's port bases (`paas_appliance::addr`).
    fn port_bases(&self) -> (u16, u16);
    /// The records of cluster `cluster` in etcd (the endpoint follows its leader key).
    fn keys(&self, cluster: &str) -> Keys;
    /// The environment variable that carries the cluster's secret to its members.
    fn secret_env(&self) -> &'static str;
    /// Where the endpoint of the `main` cluster listens unless told otherwise.
    fn default_listen(&self) -> SocketAddr;
    /// Fails, naming the directory, when the engine's server could not use `dir` (for
    /// example because it runs as its own user and cannot traverse to it).
    fn check_dir(&self, dir: &Path) -> Result<()> {
        let _ = dir;
        Ok(())
    }
    /// Whether the engine's members take the cluster's server certificate
    /// (`--tls-dir`); those that do get one issued from the cluster CA.
    fn speaks_tls(&self) -> bool {
        false
    }
    /// Flags of the engine's own added to every member's command; `dir` is the
    /// cluster's directory (where the members' directories are).
    fn member_args(&self, site: &Site, dir: &Path) -> Result<Vec<String>> {
        let _ = (site, dir);
        Ok(Vec::new())
    }
    /// Variables of the engine's own in every member's environment (secrets, which
    /// must not be on a command line): each one the kind manages, with its value, or
    /// `None` for one to remove (a setting no longer in use).
    fn member_env(&self, site: &Site, dir: &Path) -> Result<Vec<(&'static str, Option<String>)>> {
        let _ = (site, dir);
        Ok(Vec::new())
    }
    /// Why the cluster does not take durable writes through `endpoint` yet; `None` when
    /// it does. `ca_file`: the cluster CA, when the members have its certificate.
    async fn not_ready(
        &self,
        endpoint: SocketAddr,
        secret: &str,
        ca_file: Option<&Path>,
    ) -> Option<String>;
    /// The provider `paas resource add KIND` is served by, for a running cluster.
    fn provider(&self, cluster: &Launched, etcd: &[String]) -> Arc<dyn Provider>;
}

/// A running cluster with its endpoint; dropping it stops forwarding (the members stop
/// with the host agent).
pub struct Launched {
    _endpoint: TcpEndpoint,
    /// The cluster's name.
    pub cluster: String,
    /// The address in every resource URL.
    pub endpoint: SocketAddr,
    /// The cluster's secret (its superuser's password).
    pub secret: String,
    /// Where the members' directories are.
    pub dir: PathBuf,
    /// The system app whose jobs the members are.
    pub system_app: String,
    /// The cluster CA's certificate, readable by every job, when the members speak TLS.
    pub ca_file: Option<PathBuf>,
    /// The platform's etcd (what a provider asks about the hosts).
    pub coord: Arc<paas_coord::Coord>,
    /// Where backups go (`paas up --backup-store`).
    pub backup_store: Arc<paas_backups::Location>,
}

/// Whether clients of an endpoint may connect from another machine, so the URLs
/// handed to apps must make them verify the server: the endpoint listens on a
/// non-loopback address, or the cluster has more than one live host.
pub fn clients_off_host(endpoint: SocketAddr, live_hosts: usize) -> bool {
    !endpoint.ip().is_loopback() || live_hosts > 1
}

/// Asks etcd how many hosts are live and applies [`clients_off_host`]; when etcd cannot
/// say, verification is required.
pub async fn clients_may_be_off_host(coord: &paas_coord::Coord, endpoint: SocketAddr) -> bool {
    match coord.entries(&paas_model::keys::hosts()).await {
        Ok(hosts) => clients_off_host(endpoint, hosts.len()),
        Err(e) => {
            tracing::warn!(error = %e, "cannot count the hosts; requiring verified TLS");
            true
        }
    }
}

/// How apps reach `cluster` over TLS (`None` when its members have no certificate):
/// the published CA, and [`clients_may_be_off_host`] as the rule that makes URLs
/// require verification.
pub fn client_tls(cluster: &Launched) -> Option<paas_appliance::tls::ClientTls> {
    let ca = cluster.ca_file.as_ref()?;
    let (coord, endpoint) = (cluster.coord.clone(), cluster.endpoint);
    let verify_full: paas_appliance::tls::VerifyRule = Arc::new(move || {
        let coord = coord.clone();
        Box::pin(async move { clients_may_be_off_host(&coord, endpoint).await })
    });
    Some(paas_appliance::tls::ClientTls {
        ca_file: ca.display().to_string(),
        verify_full,
    })
}

/// The system app of cluster `cluster` of `kind`.
pub fn system_app(kind: &str, cluster: &str) -> String {
    if cluster == "main" {
        format!("paas-{kind}")
    } else {
        format!("paas-{kind}-{cluster}")
    }
}

/// Where clusters are launched: the platform's store, data dir and etcd, and the
/// members' lease TTL. Kept by whoever launches clusters later (a provider that makes
/// one cluster per resource).
#[derive(Clone)]
pub struct Site {
    /// The controller's store (system apps are created through it).
    pub store: Store,
    /// The platform's data directory.
    pub data_dir: PathBuf,
    /// etcd client URLs.
    pub etcd: Vec<String>,
    /// The members' lease TTL in seconds.
    pub ttl_secs: u64,
    /// The platform's identity directory: the etcd client identity handed to the
    /// members and, when it holds the CA's key, the CA their certificates come from.
    pub pki: PathBuf,
    /// How many live hosts a cluster's members wait for before they are placed, so the
    /// scheduler spreads them one per host (`paas up --appliance-hosts`); 1: no wait.
    pub spread_hosts: usize,
    /// Where backups go (`paas up --backup-store`); engines that archive on their own
    /// (Postgres's pgBackRest) follow it.
    pub backup_store: Arc<paas_backups::Location>,
}

/// Starts (or adopts, after a restart) cluster `cluster` of `kind` with `members`
/// members, its endpoint on `listen`, and waits until it takes durable writes.
pub async fn launch(
    kind: &dyn ApplianceKind,
    site: &Site,
    cluster: &str,
    members: usize,
    listen: SocketAddr,
) -> Result<Launched> {
    let (store, data_dir, etcd, ttl_secs) =
        (&site.store, &site.data_dir, &site.etcd, site.ttl_secs);
    let name = kind.kind();
    // The endpoint's port first: taken by something else, nothing is set up for nothing
    // (and a caller that picked the port can pick another).
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen} for {name}"))?;
    let dir = if cluster == "main" {
        data_dir.join(name)
    } else {
        data_dir.join(name).join(cluster)
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    kind.check_dir(&dir).with_context(|| {
        format!("the {name} members cannot use the data directory (see --data-dir)")
    })?;
    // 64 hex digits: 256 bits.
    let secret = crate::up::persistent_secret(&dir.join("superuser-password"), || {
        paas_controller::auth::generate_secret().hash
    })?;
    let host = addr::cluster_ip(&dir.to_string_lossy());
    let ports = member_ports(kind, host, members)?;
    let binary = stable_binary(data_dir)?;
    let pki = site.pki.as_path();
    let hosts = wait_for_hosts(store.coord(), name, site.spread_hosts).await?;
    let (tls_dir, ca_file) = if kind.speaks_tls() {
        let mut ips = vec![IpAddr::V4(host), IpAddr::V4(Ipv4Addr::LOCALHOST)];
        if !listen.ip().is_unspecified() {
            ips.push(listen.ip());
        }
        ips.extend(hosts.iter().filter_map(|h| routable(&h.job_ip)));
        server_certificate(kind, data_dir, pki, &dir, &ips)?
    } else {
        (None, None)
    };
    let etcd_tls = etcd
        .iter()
        .any(|e| e.starts_with("https://"))
        .then_some(pki);
    let processes = member_processes(
        kind,
        &binary,
        &dir,
        etcd,
        cluster,
        host,
        &ports,
        ttl_secs,
        etcd_tls,
        tls_dir.as_deref(),
        &kind.member_args(site, &dir)?,
    );
    let system_app = system_app(name, cluster);
    let mut env = kind.member_env(site, &dir)?;
    env.push((kind.secret_env(), Some(secret.clone())));
    ensure_system_app(store, &system_app, processes, &env, name)
        .await
        .with_context(|| format!("cannot schedule the {name} members"))?;
    let keys = kind.keys(cluster);
    let endpoint = TcpEndpoint::on_listener(
        listener,
        EndpointConfig {
            coord: store.coord().clone(),
            leader_key: keys.leader(),
            no_leader_wait: Duration::from_secs(15),
        },
    )
    .with_context(|| format!("cannot serve {listen} for {name}"))?;
    let addr = endpoint.local_addr();
    wait_ready(kind, store, &keys, addr, &secret, ca_file.as_deref()).await?;
    Ok(Launched {
        _endpoint: endpoint,
        cluster: cluster.to_string(),
        endpoint: addr,
        secret,
        dir,
        system_app,
        ca_file,
        coord: Arc::new(store.coord().clone()),
        backup_store: site.backup_store.clone(),
    })
}

/// A host's job IP when members there listen on it ([`addr::member_host`]): not a
/// loopback or unspecified address. Those are what the certificate must name besides
/// the cluster's own loopback address.
fn routable(job_ip: &str) -> Option<IpAddr> {
    let ip: IpAddr = job_ip.parse().ok()?;
    addr::reachable_from_elsewhere(ip).then_some(ip)
}

/// What `paas up` says while a cluster's members wait for hosts, e.g. "waiting for 3
/// live hosts to place postgres members, 1 live: host1".
fn hosts_wait_line(kind: &str, wanted: usize, live: &[String]) -> String {
    let names = if live.is_empty() {
        String::new()
    } else {
        format!(": {}", live.join(", "))
    };
    format!(
        "waiting for {wanted} live hosts to place {kind} members, {} live{names}",
        live.len()
    )
}

/// The live hosts, once there are at least `wanted` of them; says on the terminal and
/// in the log what it waits for whenever that changes. Waits as long as it takes: the
/// hosts are started by whoever asked for them.
async fn wait_for_hosts(
    coord: &paas_coord::Coord,
    kind: &str,
    wanted: usize,
) -> Result<Vec<paas_model::Host>> {
    let mut last = String::new();
    loop {
        let mut hosts: Vec<paas_model::Host> = coord
            .entries(&paas_model::keys::hosts())
            .await
            .context("cannot read the live hosts")?
            .iter()
            .filter_map(|e| serde_json::from_slice(&e.value).ok())
            .collect();
        hosts.sort_by(|a, b| a.id.cmp(&b.id));
        if hosts.len() >= wanted {
            if wanted > 1 {
                let ids: Vec<&str> = hosts.iter().map(|h| h.id.as_str()).collect();
                tracing::info!(kind, hosts = %ids.join(", "), "placing the members on the live hosts");
            }
            return Ok(hosts);
        }
        let ids: Vec<String> = hosts.iter().map(|h| h.id.clone()).collect();
        let line = hosts_wait_line(kind, wanted, &ids);
        if line != last {
            println!("{line}");
            tracing::info!("{line}");
            last = line;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Issues the cluster's server certificate from the cluster CA in `pki` into `DIR/tls`
/// for `ips` (the members' loopback address and hosts' addresses, the endpoint's,
/// 127.0.0.1) and `localhost`, and publishes the CA's certificate for the jobs; returns
/// both paths. Without the CA's key in `pki` (an external etcd without it), the
/// members speak plain TCP.
fn server_certificate(
    kind: &dyn ApplianceKind,
    data_dir: &Path,
    pki: &Path,
    dir: &Path,
    ips: &[IpAddr],
) -> Result<(Option<PathBuf>, Option<PathBuf>)> {
    if !crate::pki::has_ca_key(pki) {
        tracing::warn!(
            kind = kind.kind(),
            "no cluster CA in {}: the members speak plain TCP",
            pki.display()
        );
        return Ok((None, None));
    }
    let tls_dir = dir.join("tls");
    crate::pki::issue_server(pki, &tls_dir, &format!("paas {}", kind.kind()), ips)
        .with_context(|| format!("cannot issue the {} certificate", kind.kind()))?;
    let ca_file = crate::pki::publish_ca(data_dir, pki)?;
    // Jobs run under uids of their own: check as another user (`nobody`), when root.
    if let Some((uid, gid)) = paas_appliance::os_user::server_user("nobody")
        .ok()
        .flatten()
    {
        if let Ok(Some(b)) = paas_appliance::os_user::blocked_ancestor(data_dir, uid, gid) {
            tracing::warn!(
                ca = %ca_file.display(),
                blocked = %b.path.display(),
                "jobs cannot read the CA certificate: a directory on its path is closed to other users"
            );
        }
    }
    Ok((Some(tls_dir), Some(ca_file)))
}

/// `(server, health)` ports per member on the cluster's own address, each checked free:
/// members of a killed previous run die with it, so whoever still holds a port after a
/// few seconds would make a member fail later; unless it is a process of ours, a member
/// the host agent already started from the formation a previous run stored.
fn member_ports(
    kind: &dyn ApplianceKind,
    host: Ipv4Addr,
    members: usize,
) -> Result<Vec<(u16, u16)>> {
    let (server_base, health_base) = kind.port_bases();
    let ports: Vec<(u16, u16)> = (0..members)
        .map(|i| {
            (
                addr::member_port(server_base, i),
                addr::member_port(health_base, i),
            )
        })
        .collect();
    for (i, (server, health)) in ports.iter().enumerate() {
        for (port, what) in [(server, "server"), (health, "health API")] {
            let what = format!("{}{i}'s {what} port", kind.member_prefix());
            addr::wait_free_or_held_within(
                SocketAddr::from((host, *port)),
                &what,
                Duration::from_secs(10),
                Some(std::process::id()),
            )
            .map_err(|e| anyhow::anyhow!("cannot start the {} members: {e}", kind.kind()))?;
        }
    }
    Ok(ports)
}

/// A stable path to this binary, so the members' command does not change (and roll the
/// members over) when the binary is rebuilt elsewhere.
fn stable_binary(data_dir: &Path) -> Result<PathBuf> {
    let bin = data_dir.join("bin");
    std::fs::create_dir_all(&bin)?;
    let link = bin.join("paas");
    let exe = std::env::current_exe().context("cannot find the paas binary")?;
    let tmp = bin.join("paas.new");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&exe, &tmp)?;
    std::fs::rename(&tmp, &link)?;
    Ok(link)
}

/// The process types of the system app: one per member, each running `paas appliance
/// KIND` with the common member flags (`paas_appliance::args::MemberArgs`); `--job-ip`
/// is the `HOST_IP` its host agent gives it, `--host` the loopback fallback.
#[allow(clippy::too_many_arguments)]
fn member_processes(
    kind: &dyn ApplianceKind,
    binary: &Path,
    dir: &Path,
    etcd: &[String],
    cluster: &str,
    host: Ipv4Addr,
    ports: &[(u16, u16)],
    ttl_secs: u64,
    etcd_tls: Option<&Path>,
    tls: Option<&Path>,
    kind_args: &[String],
) -> BTreeMap<String, String> {
    let prefix = format!("{}/", paas_model::keys::DEFAULT_PREFIX);
    let members = ports.len();
    ports
        .iter()
        .enumerate()
        .map(|(i, (port, health))| {
            let name = format!("{}{i}", kind.member_prefix());
            let mut command = format!(
                "exec {} appliance {} --cluster {cluster} --name {name} --etcd {} \
                 --prefix {prefix} --dir {} --host {host} --job-ip \"$HOST_IP\" --port {port} \
                 --health-port {health} --ttl-secs {ttl_secs} --members {members}",
                binary.display(),
                kind.kind(),
                etcd.join(","),
                dir.join(&name).display(),
            );
            if let Some(tls) = etcd_tls {
                command.push_str(&format!(" --etcd-tls-dir {}", tls.display()));
            }
            if let Some(tls) = tls {
                command.push_str(&format!(" --tls-dir {}", tls.display()));
            }
            for arg in kind_args {
                command.push_str(&format!(" {arg}"));
            }
            (name, command)
        })
        .collect()
}

/// Makes the system app's release and formation run `processes` with the variables
/// `vars` set (or, `None`, removed) in its environment (idempotent: an unchanged
/// configuration makes no new release). Created through the store, which checks the
/// name like the API does.
async fn ensure_system_app(
    store: &Store,
    app: &str,
    processes: BTreeMap<String, String>,
    vars: &[(&str, Option<String>)],
    kind: &str,
) -> Result<(), ApiError> {
    match store.create_app(app).await {
        Ok(_) | Err(ApiError::Conflict(_)) => {}
        Err(e) => return Err(e),
    }
    let current = store.get_app(app).await?;
    let current = store.release(app, current.release).await?;
    let mut env = current.env.clone();
    for (key, value) in vars {
        match value {
            Some(value) => env.insert(key.to_string(), value.clone()),
            None => env.remove(*key),
        };
    }
    if current.processes != processes || current.env != env {
        store
            .new_release_with(app, |current| {
                let mut next = current.clone();
                next.processes = processes.clone();
                next.env = env.clone();
                next.description = format!("{kind} members");
                Ok(next)
            })
            .await?;
    }
    let formation = Formation {
        app: app.to_string(),
        processes: processes.keys().map(|k| (k.clone(), 1)).collect(),
        limits: Default::default(),
    };
    store.put_formation(&formation).await
}

/// What each member says it is doing or waiting for, from the registrations in etcd
/// (every engine's member status has `name` and `decision`).
async fn member_decisions(store: &Store, keys: &Keys) -> String {
    match store.coord().entries(&keys.members()).await {
        Ok(entries) if entries.is_empty() => "no member registered yet".to_string(),
        Ok(entries) => entries
            .iter()
            .filter_map(|e| serde_json::from_slice::<serde_json::Value>(&e.value).ok())
            .map(|m| {
                format!(
                    "{}: {}",
                    m["name"].as_str().unwrap_or("?"),
                    m["decision"].as_str().unwrap_or("?")
                )
            })
            .collect::<Vec<_>>()
            .join("; "),
        Err(e) => format!("cannot read the members from etcd: {e}"),
    }
}

/// Waits until the cluster takes durable writes through the endpoint, saying what it
/// waits for (the endpoint's answer and each member's decision), or fails after
/// [`READY_LIMIT`] with the last reason.
async fn wait_ready(
    kind: &dyn ApplianceKind,
    store: &Store,
    keys: &Keys,
    endpoint: SocketAddr,
    secret: &str,
    ca_file: Option<&Path>,
) -> Result<()> {
    let started = Instant::now();
    let mut last = String::new();
    while started.elapsed() < READY_LIMIT {
        match kind.not_ready(endpoint, secret, ca_file).await {
            None => {
                tracing::info!(kind = kind.kind(), elapsed = ?started.elapsed(), "cluster ready");
                return Ok(());
            }
            Some(reason) => {
                let reason = format!("{reason}; {}", member_decisions(store, keys).await);
                if reason != last {
                    tracing::info!(kind = kind.kind(), %reason, "waiting for the cluster");
                }
                last = reason;
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    anyhow::bail!(
        "{} cluster not ready after {READY_LIMIT:?}: {last}",
        kind.kind()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_for_hosts_names_the_live_ones() {
        assert_eq!(
            hosts_wait_line("postgres", 3, &["host1".into()]),
            "waiting for 3 live hosts to place postgres members, 1 live: host1"
        );
        assert_eq!(
            hosts_wait_line("mysql", 2, &[]),
            "waiting for 2 live hosts to place mysql members, 0 live"
        );
    }

    #[test]
    fn certificates_name_only_the_hosts_members_listen_on() {
        assert_eq!(routable("10.77.0.2"), Some("10.77.0.2".parse().unwrap()));
        assert_eq!(routable("127.0.0.1"), None);
        assert_eq!(routable("0.0.0.0"), None);
        assert_eq!(routable("not an address"), None);
    }

    #[test]
    fn verification_is_required_once_clients_can_be_elsewhere() {
        let loopback: SocketAddr = "127.0.0.1:6432".parse().unwrap();
        let routable: SocketAddr = "10.1.2.3:6432".parse().unwrap();
        let any: SocketAddr = "0.0.0.0:6432".parse().unwrap();
        assert!(!clients_off_host(loopback, 0));
        assert!(!clients_off_host(loopback, 1));
        assert!(clients_off_host(loopback, 2));
        assert!(clients_off_host(routable, 1));
        assert!(clients_off_host(any, 1));
    }
}
