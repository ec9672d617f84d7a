//! `paas up`: the single-node platform.
//!
//! Starts (unless `--etcd` is given) a single-member etcd as a child process, then the
//! controller API, writes the client config and waits for SIGINT/SIGTERM. Everything
//! lives under the data directory, so a restart on the same directory keeps all state:
//!
//! ```text
//! DATA_DIR/paas.lock     flock held while running (a second `paas up` refuses)
//! DATA_DIR/ports.toml    etcd ports of data dirs made by older versions (new ones use
//!                        the data dir's own loopback address, ports 12379/12380)
//! DATA_DIR/admin-token   the admin token's secret (0600), printed at every start
//! DATA_DIR/cluster-secret what host agents and the log API require (0600)
//! DATA_DIR/forward-shared-key the Fluent Forward input's shared key (0600)
//! DATA_DIR/etcd/         etcd's data;   DATA_DIR/etcd.log: its output
//! DATA_DIR/artifacts/    uploaded code, `<sha256>.tar.gz`
//! DATA_DIR/host/         the host agent's job directories and log spool
//! DATA_DIR/logs/         the log aggregator's journal, store and dead letters
//! DATA_DIR/router/       the HTTP router's access-line spool
//! DATA_DIR/postgres/     the Postgres members' data (pgN/), their ports, the superuser password,
//!                        tls/ (the cluster's server certificate, from the cluster CA)
//! DATA_DIR/pki/          the cluster CA (with its key), etcd's and the platform's certificates
//! DATA_DIR/ca.pem        the cluster CA's certificate, readable by every job (0644)
//! DATA_DIR/redis/<group>/ one Redis resource's group: members' data (rN/), its secret,
//!                        group.json (members, endpoint port)
//! DATA_DIR/mysql/        the MariaDB members' data (myN/) and superuser password (--appliance mysql=N)
//! DATA_DIR/bin/paas      link to the running binary (the Postgres members' command)
//! DATA_DIR/restore/      left by `paas cluster restore` until this finishes it (`restore.rs`)
//! ```

use crate::appliance::ApplianceKind;
use std::fs;
use std::future::IntoFuture;
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use tokio::process::{Child, Command};
use tokio::signal::unix::{signal, SignalKind};

/// Options of `paas up`.
#[derive(clap::Args)]
pub struct UpArgs {
    /// Where all state lives (etcd data, logs, admin token).
    #[arg(long, env = "PAAS_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Use this etcd (comma-separated client URLs) instead of starting one.
    #[arg(long)]
    pub etcd: Option<String>,
    /// With --etcd https://...: the directory holding the client identity to present
    /// (ca.pem, client.pem, client-key.pem). The embedded etcd always uses DATA_DIR/pki.
    #[arg(long)]
    pub etcd_tls_dir: Option<PathBuf>,
    /// Address of the controller API.
    #[arg(long, default_value = "127.0.0.1:7700")]
    pub listen: String,
    /// Address of the log aggregator's syslog input: TLS (RFC 5425), clients must present
    /// a certificate from the cluster CA (DATA_DIR/pki/client.pem).
    #[arg(long, default_value = "127.0.0.1:5514")]
    pub syslog_listen: std::net::SocketAddr,
    /// Also take syslog on this address as plain TCP WITHOUT any authentication (for
    /// clients that cannot do TLS with a client certificate, such as `logger --tcp`):
    /// whoever reaches it can write lines into any app's log. Off by default.
    #[arg(long, value_name = "ADDR")]
    pub unauthenticated_syslog_listen: Option<std::net::SocketAddr>,
    /// Address of the log aggregator's Fluent Forward input (clients need the shared key
    /// in DATA_DIR/forward-shared-key).
    #[arg(long, default_value = "127.0.0.1:24224")]
    pub forward_listen: std::net::SocketAddr,
    /// How often (milliseconds) the log aggregator fsyncs accepted syslog lines and
    /// writes them to the store `paas log` reads: the most a machine crash can lose.
    /// Forward chunks that ask for an ack are fsynced before the ack, whatever this is.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub log_sync_ms: u64,
    /// Worker threads of the log aggregator (default: half the cores, at least 1). Its
    /// decoding never uses more, so a flood of log input cannot starve the control plane.
    #[arg(long, default_value_t = default_log_threads())]
    pub log_threads: usize,
    /// Appliances started at boot, as KIND=MEMBERS (repeatable; kinds: see
    /// `APPLIANCE_KINDS`: postgres, mysql). The default is postgres=3 (postgres=0 turns
    /// it off) and no mysql (mysql=3 starts a MariaDB cluster).
    #[arg(long = "appliance", value_name = "KIND=MEMBERS", value_parser = parse_appliance)]
    pub appliances: Vec<(String, usize)>,
    /// Members of the Postgres cluster started at boot (same as --appliance postgres=N).
    #[arg(long)]
    pub postgres_members: Option<usize>,
    /// Releases kept per app (besides the current one): older release records and the
    /// uploaded code no kept release uses are deleted every 5 minutes.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub keep_releases: u64,
    /// Most jobs an app-scoped token may give its app (all process types together);
    /// admin tokens are not limited.
    #[arg(long, default_value_t = 20)]
    pub quota_jobs: u32,
    /// Most releases (deploys, env changes, rollbacks, resource changes) an app-scoped
    /// token may make per hour; at most --keep-releases.
    #[arg(long, default_value_t = 10)]
    pub quota_releases: u32,
    /// Most one-off runs (`paas run`) of an app an app-scoped token may have at once.
    #[arg(long, default_value_t = 3)]
    pub quota_runs: u32,
    /// Lease TTL of the appliance members, in seconds (at least 2). A dead primary is
    /// replaced within about this long; a primary whose lease renewals stall for the TTL
    /// minus one second stops itself. Shorter fails over faster but fences a primary on
    /// a slow etcd sooner.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(2..=60))]
    pub lease_ttl: u64,
    /// Live hosts the appliances' members wait for before they are placed, so the
    /// scheduler puts each member of a cluster on another host (start `paas host
    /// --join` on the others meanwhile; `paas up` says what it waits for). 1: place
    /// them at once, on this host if no other is live.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub appliance_hosts: u64,
    /// Address of the leader-following Postgres endpoint every DATABASE_URL points at
    /// (same as --appliance-listen postgres=ADDR).
    #[arg(long)]
    pub postgres_listen: Option<std::net::SocketAddr>,
    /// Members of each Redis resource's own replication group when `paas resource add
    /// redis` does not say (`--members`); 0 turns the Redis provider off. Groups listen
    /// on their own endpoint ports from 127.0.0.1:26379 up.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(0..=5))]
    pub redis_members: u64,
    /// Address of an appliance's leader-following endpoint, as KIND=ADDR (repeatable);
    /// each kind has its default (postgres: 127.0.0.1:6432, mysql: 127.0.0.1:6033).
    #[arg(long = "appliance-listen", value_name = "KIND=ADDR", value_parser = parse_listen)]
    pub appliance_listen: Vec<(String, std::net::SocketAddr)>,
    /// Where backups of app resources are kept: a directory, or s3://bucket/prefix
    /// (credentials and endpoint from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
    /// AWS_DEFAULT_REGION, AWS_ENDPOINT_URL or AWS_ENDPOINT; an http:// endpoint is used
    /// without TLS; AWS_CA_BUNDLE: CAs to trust). With S3 over HTTPS, the Postgres WAL
    /// archive goes to prefix/pgbackrest there. Default: DATA_DIR/backups.
    #[arg(long, env = "PAAS_BACKUP_STORE")]
    pub backup_store: Option<String>,
    /// IP address this host's jobs listen on and are registered at (as `paas host
    /// --job-ip`): another host's router reaches them there, so with joined hosts it is
    /// an address of this machine the others can route to.
    #[arg(long, default_value = "127.0.0.1")]
    pub job_ip: std::net::IpAddr,
    /// The HTTP router's flags.
    #[command(flatten)]
    pub router: crate::router::RouterArgs,
}

/// The appliance kinds `paas up` can start, in start order: one registration line each.
pub fn appliance_kinds() -> Vec<Box<dyn ApplianceKind>> {
    vec![
        Box::new(crate::postgres::PostgresKind),
        Box::new(crate::mysql::MysqlKind),
    ]
}

fn known_kind(kind: &str) -> std::result::Result<(), String> {
    let kinds: Vec<&str> = appliance_kinds().iter().map(|k| k.kind()).collect();
    if kinds.contains(&kind) {
        Ok(())
    } else {
        Err(format!(
            "unknown appliance {kind:?}; available: {}",
            kinds.join(", ")
        ))
    }
}

fn parse_listen(text: &str) -> std::result::Result<(String, std::net::SocketAddr), String> {
    let (kind, addr) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not KIND=ADDR (e.g. postgres=127.0.0.1:6432)"))?;
    known_kind(kind)?;
    let addr = addr
        .parse()
        .map_err(|e| format!("{addr:?} is not an address: {e}"))?;
    Ok((kind.to_string(), addr))
}

fn parse_appliance(text: &str) -> std::result::Result<(String, usize), String> {
    let (kind, members) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not KIND=MEMBERS (e.g. postgres=3)"))?;
    known_kind(kind)?;
    let members = members
        .parse()
        .map_err(|_| format!("{members:?} is not a number of members"))?;
    Ok((kind.to_string(), members))
}

impl UpArgs {
    /// How many members of appliance `kind` to start: the last `--appliance kind=N`,
    /// else `--postgres-members` for postgres, else the default (postgres=3).
    pub fn members(&self, kind: &str) -> usize {
        let given = self
            .appliances
            .iter()
            .rev()
            .find(|(k, _)| k == kind)
            .map(|(_, n)| *n);
        match (kind, given) {
            (_, Some(n)) => n,
            ("postgres", None) => self.postgres_members.unwrap_or(3),
            _ => 0,
        }
    }

    /// Where the endpoint of appliance `kind` listens.
    pub fn listen(&self, kind: &dyn ApplianceKind) -> std::net::SocketAddr {
        let given = self
            .appliance_listen
            .iter()
            .rev()
            .find(|(k, _)| k == kind.kind())
            .map(|(_, a)| *a);
        match (kind.kind(), given) {
            (_, Some(a)) => a,
            ("postgres", None) => self
                .postgres_listen
                .unwrap_or_else(|| kind.default_listen()),
            _ => kind.default_listen(),
        }
    }
}

/// Half the cores, at least one: the log aggregator's share of the machine.
fn default_log_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
}

/// Ports of the embedded etcd in a data dir from before per-cluster addresses.
#[derive(Serialize, Deserialize)]
struct Ports {
    etcd_client: u16,
    etcd_peer: u16,
}

/// How long the API may take to finish in-flight requests once `paas up` is stopping.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// Runs the platform until a signal arrives, then stops every child. Once the API
/// listens, `save_config(url, admin_token)` stores the client configuration and returns
/// where (the CLI's config file), which is printed.
pub async fn run(
    args: UpArgs,
    save_config: impl FnOnce(&str, &str) -> Result<PathBuf>,
) -> Result<()> {
    init_tracing();
    crate::fd_limit::raise();
    let data_dir = match args.data_dir.clone() {
        Some(d) => d,
        None => default_data_dir()?,
    };
    fs::create_dir_all(&data_dir)
        .with_context(|| format!("cannot create data dir {}", data_dir.display()))?;
    // Traversable but not listable: server processes running as their own users (the
    // postgres members) reach their directories; secrets inside are 0600.
    fs::set_permissions(&data_dir, fs::Permissions::from_mode(0o711))?;
    let data_dir = data_dir.canonicalize()?;
    let _lock = lock_data_dir(&data_dir)?;
    private_dirs(&data_dir)?;
    if let Some(tls) = &args.etcd_tls_dir {
        paas_coord::tls::set_client_identity(tls)?;
        paas_logshipper::tls::set_client_identity(tls)?;
    }

    let mut etcd_child = None;
    let endpoints: Vec<String> = match &args.etcd {
        Some(urls) => urls.split(',').map(|s| s.trim().to_string()).collect(),
        None => {
            let (child, endpoint) = start_etcd(&data_dir).await?;
            etcd_child = Some(child);
            vec![endpoint]
        }
    };

    let result = serve(
        &data_dir,
        &endpoints,
        &args,
        etcd_child.as_mut(),
        save_config,
    )
    .await;
    if let Some(child) = etcd_child.as_mut() {
        stop_child("etcd", child).await;
    }
    result
}

async fn serve(
    data_dir: &Path,
    endpoints: &[String],
    args: &UpArgs,
    etcd: Option<&mut Child>,
    save_config: impl FnOnce(&str, &str) -> Result<PathBuf>,
) -> Result<()> {
    let listen = args.listen.as_str();
    let mut controller =
        paas_controller::Controller::connect(endpoints, paas_model::keys::DEFAULT_PREFIX)
            .await
            .with_context(|| format!("cannot use etcd at {}", endpoints.join(",")))?
            .with_artifacts_dir(data_dir.join("artifacts"));
    // The secret host agents require from the controller; `paas host --join` is given it
    // (--cluster-secret), jobs never are.
    let cluster_secret = persistent_secret(&data_dir.join("cluster-secret"), || {
        paas_controller::auth::generate_secret().secret
    })?;
    controller = controller.with_agent_secret(cluster_secret.clone());
    if u64::from(args.quota_releases) > args.keep_releases {
        bail!(
            "--quota-releases ({}) may not exceed --keep-releases ({}): the releases made in the last hour are counted among the kept ones",
            args.quota_releases,
            args.keep_releases
        );
    }
    controller = controller.with_quotas(paas_controller::api::quota::Quotas {
        jobs: args.quota_jobs,
        releases_per_hour: args.quota_releases,
        runs: args.quota_runs,
    });
    let admin_token = admin_token(data_dir)?;
    controller
        .ensure_admin_token(&admin_token)
        .await
        .context("cannot store the admin token")?;
    // A data dir made by `paas cluster restore`: the old cluster's process records go
    // before anything runs; the resources' data comes back once the appliances are up.
    let restoring = crate::restore::prepare(
        controller.state().store.coord(),
        data_dir,
        args.etcd.is_some(),
    )
    .await?;
    // The CA's certificate for jobs, at a path joined hosts learn from etcd.
    let own_pki = data_dir.join("pki");
    if crate::pki::has_ca_key(&own_pki) {
        let ca_file = crate::pki::publish_ca(data_dir, &own_pki)?;
        crate::pki::announce_ca(controller.state().store.coord(), &ca_file)
            .await
            .context("cannot record the CA's path in etcd")?;
    }

    // The identity directory: the embedded etcd's, or the one given with --etcd.
    let pki = match (&args.etcd, &args.etcd_tls_dir) {
        (Some(_), Some(dir)) => dir.clone(),
        _ => data_dir.join("pki"),
    };
    let forward_shared_key = persistent_secret(&data_dir.join("forward-shared-key"), || {
        paas_controller::auth::generate_secret().secret
    })?;
    let logs = crate::aggregator::start(
        controller.state().store.coord(),
        &data_dir.join("logs"),
        crate::aggregator::Listen {
            syslog: args.syslog_listen,
            forward: args.forward_listen,
            api: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
            unauthenticated_syslog: args.unauthenticated_syslog_listen,
        },
        crate::aggregator::Credentials {
            pki: pki.clone(),
            forward_shared_key,
            api_secret: cluster_secret.clone(),
        },
        std::time::Duration::from_millis(args.log_sync_ms),
        args.log_threads,
        &crate::host::hostname(),
    )
    .await?;

    let router = crate::router::start(
        controller.state().store.coord(),
        &args.router,
        &crate::host::hostname(),
        &data_dir.join("router"),
        Some(crate::router::AccessLines::Local {
            aggregator: logs.local_input(),
            syslog: logs.syslog_addr(),
        }),
    )
    .await?;

    let stop = tokio_util::sync::CancellationToken::new();
    // Jobs run as their own users (when we are root): fail now, naming the directory
    // that blocks them, rather than start an agent whose jobs cannot reach their dirs.
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        paas_host::users::prepare_jobs_dir(&data_dir.join("host"))
            .map_err(|e| anyhow::anyhow!("cannot run jobs: {e}"))?;
    }
    let runtime = tokio::spawn(crate::host::run_runtime(
        crate::host::Runtime {
            id: crate::host::hostname(),
            etcd: endpoints.to_vec(),
            data_dir: data_dir.join("host"),
            job_ip: args.job_ip,
            api_listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
            artifacts: data_dir.join("artifacts"),
            log_addr: logs.syslog_addr(),
            api_secret: cluster_secret.clone(),
        },
        stop.clone(),
    ));

    let gc = tokio::spawn(paas_controller::gc::run(
        controller.state().clone(),
        paas_controller::gc::GcConfig {
            keep_releases: args.keep_releases as usize,
            ..Default::default()
        },
    ));
    let result = async {
        let mut appliances = Vec::new();
        let mut providers = paas_controller::Providers::default();
        let site = crate::appliance::Site {
            store: controller.state().store.clone(),
            data_dir: data_dir.to_path_buf(),
            etcd: endpoints.to_vec(),
            ttl_secs: args.lease_ttl,
            pki: pki.clone(),
            spread_hosts: usize::try_from(args.appliance_hosts).unwrap_or(1),
            backup_store: std::sync::Arc::new(crate::backups::location(
                data_dir,
                args.backup_store.as_deref(),
            )?),
        };
        for kind in appliance_kinds() {
            let members = args.members(kind.kind());
            if members == 0 {
                continue;
            }
            let launched = crate::appliance::launch(
                kind.as_ref(),
                &site,
                "main",
                members,
                args.listen(kind.as_ref()),
            )
            .await?;
            providers.register(kind.kind(), kind.provider(&launched, endpoints));
            appliances.push((kind.kind(), members, launched));
        }
        if args.redis_members > 0 {
            // Redis groups are made per resource (and re-adopted from disk), not at boot.
            let members = usize::try_from(args.redis_members).unwrap_or(2);
            providers.register("redis", crate::redis::provider(&site, endpoints, members));
        }
        controller = controller.with_providers(providers);
        let (backups, backup_location) =
            crate::backups::open(data_dir, (*site.backup_store).clone(), logs.syslog_addr())?;
        controller = controller.with_backups(backups.clone());
        if let Some(pending) = &restoring {
            let state = controller.state();
            crate::restore::finish(pending, data_dir, &state.store, &state.providers).await?;
        }
        crate::backups::run_schedules(
            controller.state(),
            backups,
            &crate::host::hostname(),
            stop.clone(),
        );

        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| {
                format!("cannot listen on {listen} (is another paas running? use --listen)")
            })?;
        let url = format!("http://{}", listener.local_addr()?);
        let config_path = save_config(&url, &admin_token)?;
        println!("paas is up");
        println!("  API:      {url}");
        println!("  token:    {admin_token}");
        println!("  etcd:     {}", endpoints.join(","));
        if let Some(a) = logs.syslog_addr() {
            println!(
                "  syslog:   {a} (RFC 5424 over TLS, RFC 5425; client certificate from {})",
                pki.display()
            );
        }
        if let Some(a) = logs.unauthenticated_syslog_addr() {
            println!("  syslog-unauthenticated: {a} (plain TCP, anyone may write any app's log)");
        }
        if let Some(a) = logs.forward_addr() {
            println!(
                "  forward:  {a} (Fluent Forward; shared key in {})",
                data_dir.join("forward-shared-key").display()
            );
        }
        for (kind, members, launched) in &appliances {
            println!(
                "  {kind}: {}{} ({members} members, app {}; `paas resource add {kind}`)",
                " ".repeat(8usize.saturating_sub(kind.len())),
                launched.endpoint,
                launched.system_app
            );
        }
        println!(
            "  router:   http://{} (apps at <app>.{}), https {}, metrics http://{}/metrics",
            router.http_addr(),
            args.router.domain,
            router.tls_addr().map_or("-".into(), |a| a.to_string()),
            router.admin_addr().map_or("-".into(), |a| a.to_string()),
        );
        println!("  backups:  {backup_location}");
        if let Some((_, _, pg)) = appliances.iter().find(|(kind, _, _)| *kind == "postgres") {
            println!(
                "  pitr:     {}",
                crate::postgres::describe_archive(&site, &pg.dir)?
            );
        }
        println!("  data dir: {}", data_dir.display());
        println!("  config:   {}", config_path.display());
        println!("Press Ctrl-C to stop.");

        let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
        let (close_tx, close_rx) = tokio::sync::watch::channel(false);
        let app = controller
            .router()
            .layer(axum::middleware::map_response(move |resp| {
                let close = close_rx.clone();
                async move { end_streams_on(resp, close) }
            }));
        let server = tokio::spawn(
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stop_rx.wait_for(|stop| *stop).await;
                })
                .into_future(),
        );
        shutdown_signal(etcd).await;
        let _ = stop_tx.send(true);
        // A log follow (`paas log --follow`, a dashboard's log view) never ends by itself:
        // in-flight requests get a grace period, then streamed bodies are ended.
        let mut server = server;
        let joined = match tokio::time::timeout(SHUTDOWN_GRACE, &mut server).await {
            Ok(joined) => joined,
            Err(_) => {
                tracing::info!(grace = ?SHUTDOWN_GRACE, "ending the log follows still open");
                let _ = close_tx.send(true);
                server.await
            }
        };
        joined
            .context("API server task panicked")?
            .context("API server failed")?;
        tracing::info!("controller stopped");
        drop(appliances);
        Ok::<(), anyhow::Error>(())
    }
    .await;

    gc.abort();
    router.shutdown().await;
    // Jobs (the Postgres members among them) stop with the host agent.
    stop.cancel();
    match runtime.await {
        Ok(Ok(())) => tracing::info!("host agent and scheduler stopped"),
        Ok(Err(e)) => tracing::error!(error = %format!("{e:#}"), "runtime failed"),
        Err(e) => tracing::error!(error = %e, "runtime task panicked"),
    }
    logs.shutdown().await;
    tracing::info!("log aggregator stopped");
    result
}

/// `resp` with its body ended once `close` turns true, if it is a stream that only the
/// client ends (NDJSON log follows, server-sent events); other responses unchanged. The
/// server's graceful shutdown waits for every response to finish, and the controller's
/// follows also hold the log aggregator's own shutdown open.
fn end_streams_on(
    resp: axum::response::Response,
    mut close: tokio::sync::watch::Receiver<bool>,
) -> axum::response::Response {
    let streamed = resp
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| {
            t.starts_with("application/x-ndjson") || t.starts_with("text/event-stream")
        });
    if !streamed {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let closed = async move {
        let _ = close.wait_for(|closed| *closed).await;
    };
    let body = axum::body::Body::from_stream(futures::StreamExt::take_until(
        body.into_data_stream(),
        closed,
    ));
    axum::response::Response::from_parts(parts, body)
}

/// Resolves on SIGINT or SIGTERM.
pub async fn wait_for_signal() {
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("install SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received; shutting down"),
        _ = int.recv() => tracing::info!("SIGINT received; shutting down"),
    }
}

/// Resolves on SIGINT or SIGTERM, or when the embedded etcd dies (nothing can work then).
async fn shutdown_signal(etcd: Option<&mut Child>) {
    let etcd_exit = async {
        match etcd {
            Some(child) => {
                let status = child.wait().await;
                tracing::error!(?status, "etcd exited; shutting down");
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = wait_for_signal() => {}
        _ = etcd_exit => {}
    }
}

/// Logs to stderr, at INFO unless RUST_LOG says otherwise.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// `/var/lib/paas` for root (the database servers run as their own users and must reach
/// it; root's home is not traversable), else `$XDG_DATA_HOME/paas` or
/// `~/.local/share/paas`.
pub fn default_data_dir() -> Result<PathBuf> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return Ok(PathBuf::from("/var/lib/paas"));
    }
    if let Ok(d) = std::env::var("XDG_DATA_HOME") {
        if !d.is_empty() {
            return Ok(PathBuf::from(d).join("paas"));
        }
    }
    let home = std::env::var("HOME").context("HOME is not set; pass --data-dir")?;
    Ok(PathBuf::from(home).join(".local/share/paas"))
}

/// Holds an exclusive flock on `DATA_DIR/paas.lock` for the life of the process.
fn lock_data_dir(dir: &Path) -> Result<fs::File> {
    let path = dir.join("paas.lock");
    let mut file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    // SAFETY: flock on a file descriptor we own; no memory is shared.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let mut holder = String::new();
        let _ = file.read_to_string(&mut holder);
        bail!(
            "another `paas up` (pid {}) is already running with data dir {}",
            holder.trim(),
            dir.display()
        );
    }
    file.set_len(0)?;
    file.rewind()?;
    write!(file, "{}", std::process::id())?;
    file.flush()?;
    Ok(file)
}

/// The data dir's subdirectories only the platform's own processes may enter (etcd's
/// data, uploaded code, logs, the router's keys, the shipper's spool): made 0700, also
/// when an older version left them readable. `host` is 0711 (jobs, each as its own user,
/// reach their own 0700 directories inside it) and appliance directories stay
/// traversable for servers that run as their own users.
const PRIVATE_DIRS: &[&str] = &[
    "etcd",
    "artifacts",
    "logs",
    "host",
    "router",
    "spool",
    "bin",
];

fn private_dirs(data_dir: &Path) -> Result<()> {
    for name in PRIVATE_DIRS {
        let dir = data_dir.join(name);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot restrict {}", dir.display()))?;
    }
    Ok(())
}

/// Reads the admin token, creating it (0600) on first start.
fn admin_token(dir: &Path) -> Result<String> {
    persistent_secret(&dir.join("admin-token"), || {
        paas_controller::auth::generate_secret().secret
    })
}

/// The secret kept in `path`, made by `make` and written with mode 0600 the first time.
pub fn persistent_secret(path: &Path, make: impl FnOnce() -> String) -> Result<String> {
    match fs::read_to_string(path) {
        Ok(t) if !t.trim().is_empty() => return Ok(t.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
    let secret = make();
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    writeln!(f, "{secret}")?;
    f.sync_all()?;
    Ok(secret)
}

/// Where the embedded etcd listens. A data dir made before per-cluster addresses keeps
/// its `ports.toml` (etcd stores its peer URL); a new one gets the data dir's own
/// loopback address with fixed ports 12379/12380, which no other member and no outgoing
/// connection can take.
fn etcd_addrs(dir: &Path) -> Result<(std::net::IpAddr, Ports)> {
    let path = dir.join("ports.toml");
    if let Ok(text) = fs::read_to_string(&path) {
        let ports =
            toml::from_str(&text).with_context(|| format!("cannot parse {}", path.display()))?;
        return Ok((std::net::Ipv4Addr::LOCALHOST.into(), ports));
    }
    let host = paas_appliance::addr::cluster_ip(&dir.join("etcd").to_string_lossy());
    Ok((
        host.into(),
        Ports {
            etcd_client: 12379,
            etcd_peer: 12380,
        },
    ))
}

/// The client URL of the embedded etcd of `data_dir` (what `paas up` prints as `etcd:`).
pub(crate) fn embedded_etcd_url(data_dir: &Path) -> Result<String> {
    let data_dir = data_dir
        .canonicalize()
        .with_context(|| format!("cannot read the data dir {}", data_dir.display()))?;
    let (host, ports) = etcd_addrs(&data_dir)?;
    Ok(format!("https://{host}:{}", ports.etcd_client))
}

/// The peer URL the embedded etcd of `data_dir` (canonical) advertises, which a
/// snapshot restored into `data_dir/etcd` must record as its member's.
pub(crate) fn etcd_peer_url(data_dir: &Path) -> Result<String> {
    let (host, ports) = etcd_addrs(data_dir)?;
    Ok(format!("https://{host}:{}", ports.etcd_peer))
}

/// Starts the embedded etcd and waits until it answers.
async fn start_etcd(dir: &Path) -> Result<(Child, String)> {
    let (host, ports) = etcd_addrs(dir)?;
    // Clients must present the cluster's client certificate: only the platform's own
    // processes (which can read DATA_DIR/pki) reach its state.
    let pki = crate::pki::ensure(dir, host)?;
    paas_coord::tls::set_client_identity(&pki)?;
    // The same identity opens the log aggregator's syslog input to this process's
    // shippers (job output, access lines, backup progress).
    paas_logshipper::tls::set_client_identity(&pki)?;
    let client = format!("https://{host}:{}", ports.etcd_client);
    // The peer port speaks TLS too and wants a certificate of the cluster's CA: raft
    // messages from anyone else are refused. A data dir made with a plain peer URL keeps
    // that URL in etcd's member list; with one member nothing dials it.
    let peer = format!("https://{host}:{}", ports.etcd_peer);
    for (port, what) in [
        (ports.etcd_client, "etcd client port"),
        (ports.etcd_peer, "etcd peer port"),
    ] {
        paas_appliance::addr::wait_free(
            std::net::SocketAddr::new(host, port),
            what,
            Duration::from_secs(10),
        )
        .map_err(|e| anyhow::anyhow!("cannot start etcd: {e}"))?;
    }
    let log_path = dir.join("etcd.log");
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)?;
    // Its own process group, and SIGTERM from the kernel when we die, even by SIGKILL.
    let mut etcd = std::process::Command::new("etcd");
    paas_appliance::process::tie(&mut etcd, libc::SIGTERM, None);
    let mut cmd = Command::from(etcd);
    cmd.arg("--name")
        .arg("paas")
        .arg("--data-dir")
        .arg(dir.join("etcd"))
        .arg("--listen-client-urls")
        .arg(&client)
        .arg("--advertise-client-urls")
        .arg(&client)
        .arg("--listen-peer-urls")
        .arg(&peer)
        .arg("--initial-advertise-peer-urls")
        .arg(&peer)
        .arg("--initial-cluster")
        .arg(format!("paas={peer}"))
        .arg("--client-cert-auth")
        .arg("--trusted-ca-file")
        .arg(pki.join(paas_coord::tls::CA_FILE))
        .arg("--cert-file")
        .arg(pki.join(crate::pki::SERVER_CERT))
        .arg("--key-file")
        .arg(pki.join(crate::pki::SERVER_KEY))
        .arg("--peer-client-cert-auth")
        .arg("--peer-trusted-ca-file")
        .arg(pki.join(paas_coord::tls::CA_FILE))
        .arg("--peer-cert-file")
        .arg(pki.join(crate::pki::SERVER_CERT))
        .arg("--peer-key-file")
        .arg(pki.join(crate::pki::SERVER_KEY))
        .arg("--auto-compaction-mode=revision")
        .arg("--auto-compaction-retention=10000")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            anyhow::anyhow!(
                "etcd is not installed (apt-get install etcd-server), or pass --etcd URL"
            )
        } else {
            anyhow::anyhow!("cannot start etcd: {e}")
        }
    })?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait()? {
            bail!(
                "etcd exited during start-up ({status}); last lines of {}:\n{}",
                log_path.display(),
                tail(&log_path, 15)
            );
        }
        if paas_coord::Coord::connect(&[client.as_str()], "", Duration::from_secs(1))
            .await
            .is_ok()
        {
            tracing::info!(endpoint = %client, "etcd is ready");
            return Ok((child, client));
        }
        if Instant::now() > deadline {
            let _ = child.start_kill();
            bail!(
                "etcd did not become ready in 30 s; last lines of {}:\n{}",
                log_path.display(),
                tail(&log_path, 15)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn tail(path: &Path, n: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// SIGTERM, then SIGKILL after 10 s.
async fn stop_child(name: &str, child: &mut Child) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    if let Some(pid) = child.id() {
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    }
    match tokio::time::timeout(Duration::from_secs(10), child.wait()).await {
        Ok(status) => tracing::info!(?status, "{name} stopped"),
        Err(_) => {
            tracing::warn!("{name} did not stop in 10 s; killing it");
            let _ = child.kill().await;
        }
    }
}
