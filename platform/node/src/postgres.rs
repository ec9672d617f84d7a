//! The Postgres appliance as `paas up` runs it, the way Flynn runs its appliances: as
//! jobs of a system app (`paas-postgres`), one process type per member (`pg0`, `pg1`,
//! ...) so each member keeps its name and its data directory (`DATA_DIR/postgres/pgN`)
//! across restarts; the scheduler places them and the host agent supervises them. In
//! front of them, the leader-following endpoint every `DATABASE_URL` points at, and the
//! provider `paas resource add postgres` calls.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use paas_controller::{ApiError, Store};
use paas_model::Formation;
use paas_postgres::args::SupervisorArgs;
use paas_postgres::provision::{PostgresProvider, ProviderConfig};
use paas_router::tcp::{EndpointConfig, TcpEndpoint};

/// Name of the cluster `paas up` runs.
pub const CLUSTER: &str = "main";

/// The system app whose jobs are the cluster's members.
pub const SYSTEM_APP: &str = "paas-postgres";

/// Environment variable carrying the superuser password to the members.
const PASSWORD_ENV: &str = "PAAS_PG_SUPERUSER_PASSWORD";

/// The endpoint in front of the cluster; dropping it stops forwarding.
pub struct Running {
    _endpoint: TcpEndpoint,
    /// The address in every DATABASE_URL.
    pub endpoint: SocketAddr,
}

/// Where each member listens: the cluster's own loopback address and fixed ports per
/// member (`paas_appliance::addr`), so no two members, and no outgoing connection, can
/// ever hold the same port.
#[derive(Debug)]
struct MemberAddrs {
    host: std::net::Ipv4Addr,
    /// `(postgres, health)` per member, in member order.
    members: Vec<(u16, u16)>,
}

fn member_addrs(dir: &Path, members: usize) -> Result<MemberAddrs> {
    use paas_appliance::addr;
    let host = addr::cluster_ip(&dir.to_string_lossy());
    let members: Vec<(u16, u16)> = (0..members)
        .map(|i| {
            (
                addr::member_port(addr::POSTGRES_PORT, i),
                addr::member_port(addr::POSTGRES_HEALTH_PORT, i),
            )
        })
        .collect();
    // Nothing of ours runs yet (members of a killed previous run die with it): whoever
    // still holds a port after a few seconds would make a member fail later.
    for (i, (pg, health)) in members.iter().enumerate() {
        for (port, what) in [(pg, "postgres"), (health, "health API")] {
            let what = format!("pg{i}'s {what} port");
            addr::wait_free(
                std::net::SocketAddr::from((host, *port)),
                &what,
                Duration::from_secs(10),
            )
            .map_err(|e| anyhow::anyhow!("cannot start the postgres members: {e}"))?;
        }
    }
    Ok(MemberAddrs { host, members })
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

/// The process types of the system app: one per member.
fn member_processes(
    binary: &Path,
    dir: &Path,
    etcd: &[String],
    addrs: &MemberAddrs,
    members: usize,
    ttl_secs: u64,
) -> BTreeMap<String, String> {
    let prefix = format!("{}/", paas_model::keys::DEFAULT_PREFIX);
    (0..members)
        .map(|i| {
            let (pg, health) = addrs.members[i];
            let command = format!(
                "exec {} appliance postgres --cluster {CLUSTER} --name pg{i} --etcd {} \
                 --prefix {prefix} --dir {} --host {} --pg-port {pg} --health-port {health} --ttl-secs {ttl_secs} \
                 --members {members}",
                binary.display(),
                etcd.join(","),
                dir.join(format!("pg{i}")).display(),
                addrs.host,
            );
            (format!("pg{i}"), command)
        })
        .collect()
}

/// Makes the system app's release and formation run `processes` (idempotent: an
/// unchanged configuration makes no new release).
async fn ensure_system_app(
    store: &Store,
    processes: BTreeMap<String, String>,
    password: &str,
) -> Result<(), ApiError> {
    match store.create_app(SYSTEM_APP).await {
        Ok(_) | Err(ApiError::Conflict(_)) => {}
        Err(e) => return Err(e),
    }
    let app = store.get_app(SYSTEM_APP).await?;
    let current = store.release(SYSTEM_APP, app.release).await?;
    let mut env = current.env.clone();
    env.insert(PASSWORD_ENV.to_string(), password.to_string());
    if current.processes != processes || current.env != env {
        store
            .new_release_with(SYSTEM_APP, |current| {
                let mut next = current.clone();
                next.processes = processes.clone();
                next.env = env.clone();
                next.description = "Postgres members".to_string();
                Ok(next)
            })
            .await?;
    }
    let formation = Formation {
        app: SYSTEM_APP.to_string(),
        processes: processes.keys().map(|k| (k.clone(), 1)).collect(),
    };
    store.put_formation(&formation).await
}

/// Runs `members` members as jobs of the system app, starts the endpoint on `listen`
/// and waits until the cluster takes durable writes; returns the endpoint and the
/// provider to register.
pub async fn start(
    store: &Store,
    data_dir: &Path,
    etcd: &[String],
    members: usize,
    ttl_secs: u64,
    listen: SocketAddr,
) -> Result<(Running, PostgresProvider)> {
    let dir = data_dir.join("postgres");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    // The members run PostgreSQL as the postgres user: fail now, naming the directory,
    // rather than wait for a cluster that cannot start.
    paas_postgres::pg::check_reachable(&dir)
        .context("the postgres members cannot use the data directory (see --data-dir)")?;
    // 64 hex digits: 256 bits.
    let password = crate::up::persistent_secret(&dir.join("superuser-password"), || {
        paas_controller::auth::generate_secret().hash
    })?;
    let addrs = member_addrs(&dir, members)?;
    let binary = stable_binary(data_dir)?;
    let processes = member_processes(&binary, &dir, etcd, &addrs, members, ttl_secs);
    ensure_system_app(store, processes, &password)
        .await
        .context("cannot schedule the postgres members")?;
    let prefix = format!("{}/", paas_model::keys::DEFAULT_PREFIX);
    let endpoint = TcpEndpoint::start(
        listen,
        EndpointConfig {
            coord: store.coord().clone(),
            leader_key: paas_postgres::cluster::keys(CLUSTER).leader(),
            no_leader_wait: Duration::from_secs(15),
        },
    )
    .await
    .with_context(|| format!("cannot listen on {listen} for postgres (use --postgres-listen)"))?;
    let addr = endpoint.local_addr();
    let records = paas_postgres::store::Store::new(
        store.coord().clone(),
        paas_postgres::cluster::keys(CLUSTER),
    );
    wait_ready(addr, &password, &records, Duration::from_secs(120)).await?;
    let provider = PostgresProvider::new(ProviderConfig {
        host: addr.ip().to_string(),
        port: addr.port(),
        superuser_password: password,
    })
    .with_status_from(etcd.to_vec(), &prefix, CLUSTER);
    Ok((
        Running {
            _endpoint: endpoint,
            endpoint: addr,
        },
        provider,
    ))
}

/// Why the cluster is not ready yet, or `None` when it accepts durable writes: a primary
/// reachable through the endpoint with a synchronous standby streaming.
async fn not_ready(endpoint: SocketAddr, password: &str) -> Option<String> {
    let mut config = tokio_postgres::Config::new();
    config
        .host(endpoint.ip().to_string())
        .port(endpoint.port())
        .user("postgres")
        .password(password)
        .dbname("postgres")
        .connect_timeout(Duration::from_secs(5));
    let (client, conn) = match config.connect(tokio_postgres::NoTls).await {
        Ok(c) => c,
        Err(e) => return Some(format!("cannot connect: {e}")),
    };
    let conn = tokio::spawn(conn);
    let row = client
        .query_one(
            "select pg_is_in_recovery(), \
             (select count(*) from pg_stat_replication where sync_state = 'sync')",
            &[],
        )
        .await;
    conn.abort();
    match row {
        Err(e) => Some(format!("query failed: {e}")),
        Ok(row) if row.get::<_, bool>(0) => Some("the endpoint reaches a standby".into()),
        Ok(row) if row.get::<_, i64>(1) == 0 => Some("no synchronous standby yet".into()),
        Ok(_) => None,
    }
}

/// Waits until the cluster takes durable writes through the endpoint, or fails after
/// `limit` with the last reason.
async fn wait_ready(
    endpoint: SocketAddr,
    password: &str,
    records: &paas_postgres::store::Store,
    limit: Duration,
) -> Result<()> {
    let started = std::time::Instant::now();
    let mut last = String::new();
    while started.elapsed() < limit {
        match not_ready(endpoint, password).await {
            None => {
                tracing::info!(elapsed = ?started.elapsed(), "postgres cluster ready");
                return Ok(());
            }
            Some(reason) => {
                // What each member says it is doing or waiting for.
                let members = match records.read().await {
                    Ok(s) if s.members.is_empty() => "no member registered yet".to_string(),
                    Ok(s) => s
                        .members
                        .values()
                        .map(|m| format!("{}: {}", m.name, m.decision))
                        .collect::<Vec<_>>()
                        .join("; "),
                    Err(e) => format!("cannot read the members from etcd: {e}"),
                };
                let reason = format!("{reason}; {members}");
                if reason != last {
                    tracing::info!(%reason, "waiting for the postgres cluster");
                }
                last = reason;
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    anyhow::bail!("postgres cluster not ready after {limit:?}: {last}")
}

/// Runs one supervisor until SIGINT/SIGTERM.
pub async fn supervise(args: SupervisorArgs) -> Result<()> {
    crate::up::init_tracing();
    paas_postgres::supervisor::run(args.into_config(), crate::up::wait_for_signal())
        .await
        .context("postgres supervisor failed")
}
