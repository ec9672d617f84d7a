//! `paas-host`: the host agent. One runs per machine; it runs exactly the jobs the
//! scheduler placed under its id (`placements/<host>/<job>` in etcd) and reports on them.
//!
//! Map:
//! - [`agent`]      registration on a lease, the placement loop (woken by a watch on this
//!   host's placements, resynced every poll interval), one task per job that prepares
//!   it, supervises it and writes its status and discovery entry.
//! - `status_writer` the one writer of every job's status and discovery entry: newest
//!   state per key, up to 100 keys per etcd transaction, one transaction at a time.
//! - [`supervisor`] one job's process group: spawn, restart with backoff, health, stop.
//! - [`cgroups`]    memory and CPU limits: one cgroup per limited job, entered at exec.
//! - [`shim`]       the tiny process between the agent and each job that kills the job's
//!   whole group when the agent dies (the `job-shim` subcommand of the agent's binary).
//! - [`reaper`]     records of the groups started (`DATA_DIR/groups`) and the start-up
//!   sweep that kills what an earlier run left.
//! - [`capture`]    stdout/stderr -> timestamped lines -> shipper or log files.
//! - [`health`]     discovery exposure and TCP/HTTP checks.
//! - [`artifacts`]  verify + unpack release tarballs once, copy a tree per job.
//! - [`api`]        the agent's HTTP API: `/health`, `/run` (upgraded to an attach stream).
//! - [`attach`]     the `/run` wire protocol: request, frame codec, client.
//!
//! All etcd access goes through `paas-coord` (the namespace is the controller's prefix).
//!
//! Invariants:
//! - Everything the agent writes to etcd (its host key, job statuses, discovery entries)
//!   is on its one `paas_coord::Lease` (`Batch::put_leased`): when the agent dies all of it vanishes within the TTL, and the
//!   scheduler moves the jobs.
//! - A job whose placement disappears is stopped (SIGTERM to its group, SIGKILL after the
//!   grace period) and its status and discovery entry are removed.
//! - A discovery entry exists only while its job is `Up` (passing its check, if any).
//! - No job process outlives the agent. If the agent task is dropped (abort), every job
//!   task is dropped with it and each job's whole process group is killed; if the agent
//!   process dies, however it dies, each job's shim gets the kernel's parent-death signal
//!   and SIGKILLs its group within milliseconds; groups that survived both (agent and
//!   shims killed together) are killed by the next agent's sweep before it starts any job.

pub mod agent;
pub mod api;
pub mod artifacts;
pub mod attach;
pub mod capture;
pub mod cgroups;
pub mod health;
pub mod reaper;
pub mod shim;
mod status_writer;
pub mod supervisor;
pub mod users;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use paas_coord::{Coord, CoordError};
use paas_logshipper::shipper::{Shipper, ShipperConfig};
use tokio_util::sync::CancellationToken;

use crate::artifacts::Artifacts;
use crate::capture::LogSink;
use crate::cgroups::Cgroups;
use crate::reaper::{Groups, Verdict};
use crate::shim::Shim;
use crate::users::JobUsers;

/// How long start-up waits for etcd.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Settings of one host agent.
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// Stable host id (`hosts/<id>`).
    pub id: String,
    /// etcd client URLs.
    pub etcd_endpoints: Vec<String>,
    /// The controller's key prefix (`/paas/`): the `paas-coord` namespace.
    pub prefix: String,
    /// Where job working dirs, unpacked artifacts, log files and the log spool live.
    pub data_dir: PathBuf,
    /// Address of the agent's HTTP API (port 0 picks one; the bound one is registered).
    pub api_listen: SocketAddr,
    /// IP jobs listen on and are registered with.
    pub job_ip: IpAddr,
    /// Directory of `<sha256>.tar.gz` release artifacts.
    pub artifacts_dir: PathBuf,
    /// Log aggregator syslog address; without one, logs go to `DATA_DIR/logs`.
    pub log_addr: Option<SocketAddr>,
    /// TTL of the host lease: how long a dead agent's jobs stay placed on it.
    pub lease_ttl: Duration,
    /// SIGTERM -> SIGKILL grace period when stopping a job.
    pub stop_grace: Duration,
    /// How often placements are re-read even without a change seen by the watch (the
    /// resync safety net); a watched change is acted on at once.
    pub poll_interval: Duration,
    /// The secret the controller presents (`Authorization: Bearer`) to start one-off
    /// jobs through `/run`; any other caller is refused. Defaults to a random secret
    /// nobody knows, so an agent never runs open.
    pub api_secret: String,
    /// The uids jobs of user apps run as (`base`, `count`): one per running job, from a
    /// range no account uses, its own for each data dir (several agents on one machine
    /// never share a uid). Only switched when the agent runs as root.
    pub job_uids: (u32, u32),
    /// How each job's shim is started (default: this executable's `job-shim`
    /// subcommand, [`Shim::current_exe`]; a binary that does not dispatch it must set
    /// another).
    pub shim: Shim,
}

impl HostConfig {
    /// Defaults: API and jobs on 127.0.0.1, 5 s lease, 10 s grace, 300 ms polling.
    pub fn new(
        id: impl Into<String>,
        etcd_endpoints: Vec<String>,
        prefix: impl Into<String>,
        data_dir: impl Into<PathBuf>,
        artifacts_dir: impl Into<PathBuf>,
    ) -> HostConfig {
        let data_dir_path: PathBuf = data_dir.into();
        HostConfig {
            id: id.into(),
            etcd_endpoints,
            prefix: prefix.into(),
            job_uids: users::default_range(&data_dir_path),
            data_dir: data_dir_path,
            api_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            job_ip: IpAddr::from([127, 0, 0, 1]),
            artifacts_dir: artifacts_dir.into(),
            log_addr: None,
            lease_ttl: Duration::from_secs(5),
            stop_grace: Duration::from_secs(10),
            poll_interval: Duration::from_millis(300),
            api_secret: hex::encode(rand::random::<[u8; 32]>()),
            shim: Shim::current_exe(),
        }
    }
}

/// Why the agent stopped.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// etcd could not be reached or refused the registration at start-up.
    #[error(transparent)]
    Coord(#[from] CoordError),
    /// The data dir could not be created or the API address could not be bound.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The log shipper's spool could not be opened.
    #[error("log shipper: {0}")]
    Shipper(#[from] paas_logshipper::shipper::ShipperError),
}

/// What the agent loop, job tasks and API handlers share.
pub(crate) struct Shared {
    pub(crate) cfg: HostConfig,
    pub(crate) coord: Coord,
    pub(crate) artifacts: Artifacts,
    pub(crate) sink: LogSink,
    pub(crate) groups: Groups,
    pub(crate) users: JobUsers,
    pub(crate) cgroups: Cgroups,
    /// The host lease while registered, for what the API publishes (one-off jobs'
    /// statuses); cleared before the agent revokes it.
    pub(crate) lease: std::sync::RwLock<Option<Arc<paas_coord::Lease>>>,
    /// Releases read so far: they are immutable, so the jobs of one release (a scale-up,
    /// a host's share after another host died) read it from etcd once.
    pub(crate) releases: std::sync::Mutex<HashMap<(String, u64), Arc<paas_model::Release>>>,
}

/// Runs the agent until `shutdown` is cancelled; then stops every job and releases the
/// lease (so the scheduler moves its jobs at once).
pub async fn run(cfg: HostConfig, shutdown: CancellationToken) -> Result<(), HostError> {
    std::fs::create_dir_all(&cfg.data_dir).map_err(|source| HostError::Io {
        what: format!("creating {}", cfg.data_dir.display()),
        source,
    })?;
    let users = JobUsers::new(cfg.job_uids.0, cfg.job_uids.1);
    if users.switching() {
        users::prepare_jobs_dir(&cfg.data_dir).map_err(|what| HostError::Io {
            what,
            source: std::io::Error::from_raw_os_error(libc::EACCES),
        })?;
    }
    let groups = Groups::new(&cfg.data_dir);
    sweep(&groups).await?;
    let swept = users.sweep();
    if !swept.is_empty() {
        tracing::warn!(users = ?swept, "killed processes an earlier run's jobs left under their users");
    }
    let cgroups = Cgroups::detect(&cfg.id);
    cgroups.sweep();
    clear_leftovers(&cfg.data_dir, &cfg.artifacts_dir).await;
    let coord = Coord::connect(&cfg.etcd_endpoints, &cfg.prefix, CONNECT_TIMEOUT).await?;
    let shipper = match cfg.log_addr {
        Some(addr) => Some(Arc::new(Shipper::start(ShipperConfig::new(
            cfg.data_dir.join("spool"),
            addr.to_string(),
        ))?)),
        None => None,
    };
    let sink = match &shipper {
        Some(s) => LogSink::Shipper(Arc::clone(s)),
        None => LogSink::Files(cfg.data_dir.join("logs")),
    };
    let listener = tokio::net::TcpListener::bind(cfg.api_listen)
        .await
        .map_err(|source| HostError::Io {
            what: format!("binding {}", cfg.api_listen),
            source,
        })?;
    let api_addr = listener.local_addr().map_err(|source| HostError::Io {
        what: "reading the API address".into(),
        source,
    })?;
    let shared = Arc::new(Shared {
        artifacts: Artifacts::new(&cfg.artifacts_dir, &cfg.data_dir),
        cfg,
        coord,
        sink,
        groups,
        users,
        cgroups,
        lease: std::sync::RwLock::new(None),
        releases: Default::default(),
    });
    let api_stop = CancellationToken::new();
    let mut server = AbortOnDrop(tokio::spawn({
        let router = api::router(Arc::clone(&shared));
        let stop = api_stop.clone();
        async move {
            if let Err(e) = axum::serve(listener, router)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
            {
                tracing::warn!(error = %e, "agent API stopped");
            }
        }
    }));
    let result = agent::run(Arc::clone(&shared), api_addr, shutdown).await;
    api_stop.cancel();
    let _ = (&mut server.0).await;
    drop(shared);
    if let Some(shipper) = shipper.and_then(|s| Arc::try_unwrap(s).ok()) {
        shipper.shutdown().await;
    }
    result
}

/// Kills the process groups an earlier run of the agent on this data dir left behind,
/// before anything else starts.
async fn sweep(groups: &Groups) -> Result<(), HostError> {
    let g = groups.clone();
    let swept = tokio::task::spawn_blocking(move || g.sweep())
        .await
        .map_err(|e| HostError::Io {
            what: "sweeping earlier process groups".into(),
            source: std::io::Error::other(e.to_string()),
        })?
        .map_err(|source| HostError::Io {
            what: "sweeping earlier process groups".into(),
            source,
        })?;
    for s in swept {
        match s.verdict {
            Verdict::Kill { reason } => tracing::warn!(
                job = %s.record.job, pgid = s.record.pgid, members = s.members, reason,
                "killed a process group an earlier run left behind"
            ),
            Verdict::Forget { reason } => tracing::info!(
                job = %s.record.job, pgid = s.record.pgid, reason,
                "earlier process group already gone"
            ),
        }
    }
    Ok(())
}

/// Removes what jobs of an earlier run left (their working directories: no job runs yet)
/// and the unpacked code they used (a cache, unpacked again on demand), so a host killed
/// again and again does not fill its disk.
async fn clear_leftovers(data_dir: &std::path::Path, uploads: &std::path::Path) {
    for name in ["jobs", "artifacts"] {
        let dir = data_dir.join(name);
        // Never the uploaded tarballs themselves, should the two directories coincide.
        let same = |a: &std::path::Path, b: &std::path::Path| matches!((a.canonicalize(), b.canonicalize()), (Ok(a), Ok(b)) if a == b);
        if same(&dir, uploads) {
            continue;
        }
        let Ok(mut entries) = tokio::fs::read_dir(&dir).await else {
            continue;
        };
        let mut removed = 0;
        while let Ok(Some(entry)) = entries.next_entry().await {
            let path = entry.path();
            let gone = match entry.file_type().await {
                Ok(t) if t.is_dir() => tokio::fs::remove_dir_all(&path).await,
                _ => tokio::fs::remove_file(&path).await,
            };
            match gone {
                Ok(()) => removed += 1,
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "removing a leftover failed")
                }
            }
        }
        if removed > 0 {
            tracing::info!(dir = %dir.display(), removed, "removed what an earlier run left");
        }
    }
}

/// Aborts a task when dropped, so an aborted agent takes its API server with it.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
