//! `paas host`: a host agent (and a standby scheduler) joining an existing cluster.
//!
//! Every host also runs the HTTP router (`router.rs`), so any host's address serves
//! every app. Every host runs a scheduler candidate: one of them holds the leader lease and places
//! jobs; when its process dies, another takes over within the lease TTL.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio_util::sync::CancellationToken;

/// Options of `paas host`.
#[derive(clap::Args)]
pub struct HostArgs {
    /// etcd client URLs of the cluster, comma-separated (given by a join token
    /// otherwise).
    #[arg(long, required_unless_present_any = ["join_token", "join_token_file"])]
    pub join: Option<String>,
    /// A join token (`paas cluster join-token` on the `paas up` machine): the etcd URLs,
    /// the cluster's client identity and secret, and the log aggregator's address in one
    /// credential. Prefer the environment or a file: arguments show in `ps`.
    #[arg(long, env = "PAAS_JOIN_TOKEN", hide_env_values = true, conflicts_with_all = ["join_token_file", "etcd_tls_dir", "cluster_secret"])]
    pub join_token: Option<String>,
    /// A file holding a join token.
    #[arg(long, conflicts_with_all = ["etcd_tls_dir", "cluster_secret"])]
    pub join_token_file: Option<PathBuf>,
    /// A copy of the cluster's DATA_DIR/pki (ca.pem, client.pem, client-key.pem): the
    /// identity etcd requires of every client, and the log aggregator's syslog input of
    /// this host's shippers. Its ca.pem is also written where `paas up` publishes the
    /// CA for jobs (the path recorded in etcd), which the apps' URLs name.
    #[arg(long)]
    pub etcd_tls_dir: Option<PathBuf>,
    /// Host id (default: the machine's hostname).
    #[arg(long)]
    pub id: Option<String>,
    /// Where job directories, unpacked code and the log spool live.
    #[arg(long, env = "PAAS_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// IP address jobs listen on and are reached at.
    #[arg(long, default_value = "127.0.0.1")]
    pub job_ip: IpAddr,
    /// Address of the agent's API (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub api_listen: SocketAddr,
    /// Directory holding uploaded artifacts (shared with the controller).
    #[arg(long)]
    pub artifacts: PathBuf,
    /// Syslog address of the log aggregator.
    #[arg(long)]
    pub log_addr: Option<SocketAddr>,
    /// The cluster's secret (DATA_DIR/cluster-secret of `paas up`): the controller
    /// presents it to start one-off jobs on this host; nothing else may.
    #[arg(long, env = "PAAS_CLUSTER_SECRET", hide_env_values = true, required_unless_present_any = ["join_token", "join_token_file"])]
    pub cluster_secret: Option<String>,
    #[command(flatten)]
    pub router: crate::router::RouterArgs,
}

/// The machine's hostname, the default host id.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".to_string())
}

/// Settings shared by `paas up` and `paas host` for the runtime on one machine.
pub struct Runtime {
    /// Host id.
    pub id: String,
    /// etcd endpoints.
    pub etcd: Vec<String>,
    /// Host data dir.
    pub data_dir: PathBuf,
    /// IP jobs bind to.
    pub job_ip: IpAddr,
    /// Agent API address.
    pub api_listen: SocketAddr,
    /// Artifacts directory.
    pub artifacts: PathBuf,
    /// Aggregator syslog address.
    pub log_addr: Option<SocketAddr>,
    /// The secret the agent's `/run` requires.
    pub api_secret: String,
}

/// Runs the host agent and a scheduler candidate until `shutdown`; returns when both
/// have stopped.
pub async fn run_runtime(rt: Runtime, shutdown: CancellationToken) -> Result<()> {
    let prefix = format!("{}/", paas_model::keys::DEFAULT_PREFIX);
    let mut host_cfg = paas_host::HostConfig::new(
        rt.id.clone(),
        rt.etcd.clone(),
        prefix.clone(),
        rt.data_dir,
        rt.artifacts,
    );
    host_cfg.job_ip = rt.job_ip;
    host_cfg.api_listen = rt.api_listen;
    host_cfg.log_addr = rt.log_addr;
    host_cfg.api_secret = rt.api_secret;
    let sched_cfg = paas_scheduler::SchedulerConfig {
        id: rt.id,
        etcd_endpoints: rt.etcd,
        prefix,
        lease_ttl: Duration::from_secs(5),
        interval: Duration::from_millis(500),
    };
    let (host, sched) = tokio::join!(
        paas_host::run(host_cfg, shutdown.clone()),
        paas_scheduler::run(sched_cfg, shutdown.clone()),
    );
    host.context("host agent failed")?;
    sched.context("scheduler failed")?;
    Ok(())
}

/// Comma-separated URLs.
fn split_urls(urls: &str) -> Vec<String> {
    urls.split(',').map(|s| s.trim().to_string()).collect()
}

/// `paas host --join ...` or `paas host --join-token-file FILE`: runs until
/// SIGINT/SIGTERM.
pub async fn run(args: HostArgs) -> Result<()> {
    crate::up::init_tracing();
    crate::fd_limit::raise();
    let data_dir = match args.data_dir {
        Some(d) => d,
        None => crate::up::default_data_dir()?.join("host"),
    };
    let id = args.id.unwrap_or_else(hostname);
    let token = match (&args.join_token, &args.join_token_file) {
        (Some(text), _) => Some(crate::join::decode(text)?),
        (None, Some(file)) => Some(crate::join::decode(
            &std::fs::read_to_string(file)
                .with_context(|| format!("cannot read the join token {}", file.display()))?,
        )?),
        (None, None) => None,
    };
    let (etcd, etcd_tls_dir, cluster_secret, log_addr) = match token {
        Some(t) => {
            let pki = crate::join::install(&t, &data_dir)?;
            let etcd = match &args.join {
                Some(urls) => split_urls(urls),
                None => t.etcd.clone(),
            };
            (
                etcd,
                Some(pki),
                t.cluster_secret,
                args.log_addr.or(t.log_addr),
            )
        }
        None => (
            split_urls(args.join.as_deref().unwrap_or_default()),
            args.etcd_tls_dir.clone(),
            args.cluster_secret.clone().unwrap_or_default(),
            args.log_addr,
        ),
    };
    if let Some(dir) = &etcd_tls_dir {
        paas_coord::tls::set_client_identity(dir)?;
        // The aggregator's syslog input takes the same certificate from this host's
        // shippers.
        paas_logshipper::tls::set_client_identity(dir)?;
    }
    let coord = paas_coord::Coord::connect(
        &etcd,
        paas_model::keys::DEFAULT_PREFIX,
        Duration::from_secs(10),
    )
    .await
    .with_context(|| format!("cannot use etcd at {}", etcd.join(",")))?;
    // The apps' database URLs name the CA's certificate at `paas up`'s path: put the
    // one handed over at join there.
    if let Some(dir) = &etcd_tls_dir {
        match crate::pki::install_joined_ca(&coord, dir).await? {
            Some(path) => {
                tracing::info!(ca = %path.display(), "the cluster CA is published for jobs")
            }
            None => tracing::warn!(
                "etcd records no CA path: apps here cannot verify the databases' certificates"
            ),
        }
    }
    let router = crate::router::start(
        &coord,
        &args.router,
        &id,
        &data_dir.join("router"),
        log_addr.map(crate::router::AccessLines::Ship),
    )
    .await?;
    let shutdown = CancellationToken::new();
    let rt = Runtime {
        id,
        etcd,
        data_dir,
        job_ip: args.job_ip,
        api_listen: args.api_listen,
        artifacts: args.artifacts,
        log_addr,
        api_secret: cluster_secret,
    };
    let task = tokio::spawn(run_runtime(rt, shutdown.clone()));
    crate::up::wait_for_signal().await;
    router.shutdown().await;
    shutdown.cancel();
    task.await.context("host task panicked")?
}
