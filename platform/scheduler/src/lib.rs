//! `paas-scheduler`: keeps the jobs placed on hosts in line with the apps' formations.
//!
//! Map:
//! - [`keys`]      the runtime's etcd key layout (shared with the host agent).
//! - [`store`]     JSON documents in etcd, fenced writes.
//! - [`lease`]     a lease kept alive while its value lives.
//! - [`reconcile`] the pure decision: [`reconcile::View`] -> [`reconcile::Action`]s.
//! - this file     the loop: win the leader key, then every tick read the view, decide,
//!   apply.
//!
//! Invariants:
//! - Only the leader writes placements, and every placement write is one etcd transaction
//!   guarded by "the leader key is still on my lease" (a fencing check done by etcd), so a
//!   deposed leader cannot place or remove anything, even mid-tick.
//! - Losing the lease (keep-alives unanswered for a TTL, or etcd says it expired) stops
//!   acting at once; the scheduler then campaigns again with a new lease.
//! - A scheduler that dies (or whose task is aborted) stops keeping its lease alive; a
//!   standby wins the leader key within the lease TTL.
//! - `reconcile` does no I/O; everything it decides is logged at INFO with its reason.

pub mod keys;
pub mod lease;
pub mod reconcile;
pub mod store;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use chrono::Utc;
use paas_controller::model::{App, Formation, Host, Job, JobStatus, Release};
use tokio_util::sync::CancellationToken;

use crate::keys::Keys;
use crate::lease::Lease;
use crate::reconcile::{Action, View};
use crate::store::{Fence, Store, StoreError};

/// Settings of one scheduler process.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// Name of this scheduler, written in the leader key (e.g. the host id).
    pub id: String,
    /// etcd client URLs.
    pub etcd_endpoints: Vec<String>,
    /// The controller's key prefix (`/paas/`).
    pub prefix: String,
    /// TTL of the leader lease: how long a dead leader blocks a standby.
    pub lease_ttl: Duration,
    /// Time between reconcile ticks (and between campaigns of a standby).
    pub interval: Duration,
}

impl SchedulerConfig {
    /// Defaults: 5 s lease, 500 ms ticks.
    pub fn new(
        id: impl Into<String>,
        etcd_endpoints: Vec<String>,
        prefix: impl Into<String>,
    ) -> Self {
        SchedulerConfig {
            id: id.into(),
            etcd_endpoints,
            prefix: prefix.into(),
            lease_ttl: Duration::from_secs(5),
            interval: Duration::from_millis(500),
        }
    }
}

/// Why the scheduler stopped.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    /// etcd could not be reached at start-up.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// How a term as leader ended.
#[derive(Debug)]
enum TermEnd {
    /// Shutdown was requested.
    Shutdown,
    /// The lease was lost or a fenced write found another leader.
    Deposed(String),
}

/// Runs the scheduler until `shutdown` is cancelled: campaign, then reconcile every
/// `interval` while leader. On shutdown the lease is revoked so a standby takes over now.
pub async fn run(cfg: SchedulerConfig, shutdown: CancellationToken) -> Result<(), SchedulerError> {
    let store = Store::connect(&cfg.etcd_endpoints).await?;
    let keys = Keys::new(&cfg.prefix);
    let mut releases = ReleaseCache::default();
    loop {
        let lease = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            lease = Lease::grant(store.client(), cfg.lease_ttl) => lease,
        };
        let lease = match lease {
            Ok(lease) => lease,
            Err(e) => {
                tracing::warn!(error = %e, "scheduler: cannot get a lease; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(cfg.interval) => continue,
                }
            }
        };
        let fence = Fence {
            key: keys.scheduler_leader(),
            lease: lease.id(),
        };
        // Campaign.
        let lost = lease.lost();
        loop {
            match store.create_leased(&fence.key, &cfg.id, lease.id()).await {
                Ok(true) => break,
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "scheduler: campaign failed"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => {
                    lease.revoke().await;
                    return Ok(());
                }
                _ = lost.cancelled() => break,
                _ = tokio::time::sleep(cfg.interval) => {}
            }
        }
        if lost.is_cancelled() {
            continue;
        }
        tracing::info!(id = %cfg.id, lease = lease.id(), "scheduler: became leader");
        let end = lead(&cfg, &store, &keys, &fence, &lost, &shutdown, &mut releases).await;
        match end {
            TermEnd::Shutdown => {
                lease.revoke().await;
                tracing::info!(id = %cfg.id, "scheduler: stopped, leadership released");
                return Ok(());
            }
            TermEnd::Deposed(why) => {
                tracing::warn!(id = %cfg.id, %why, "scheduler: no longer leader");
                // Whatever is left of the old term goes now, not at its TTL.
                lease.revoke().await;
            }
        }
    }
}

/// One term as leader: tick until deposed or shut down.
async fn lead(
    cfg: &SchedulerConfig,
    store: &Store,
    keys: &Keys,
    fence: &Fence,
    lost: &CancellationToken,
    shutdown: &CancellationToken,
    releases: &mut ReleaseCache,
) -> TermEnd {
    loop {
        let tick = async {
            let view = read_view(store, keys, releases).await?;
            for action in reconcile::reconcile(&view) {
                if lost.is_cancelled() {
                    return Ok(Some("lease lost".to_string()));
                }
                if !apply(store, keys, fence, &action).await? {
                    return Ok(Some("the leader key is no longer ours".to_string()));
                }
                tracing::info!(scheduler = %cfg.id, "{action}");
            }
            Ok::<_, StoreError>(None)
        };
        tokio::select! {
            _ = shutdown.cancelled() => return TermEnd::Shutdown,
            _ = lost.cancelled() => return TermEnd::Deposed("lease lost".into()),
            result = tick => match result {
                Ok(Some(why)) => return TermEnd::Deposed(why),
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "scheduler: tick failed; retrying"),
            },
        }
        tokio::select! {
            _ = shutdown.cancelled() => return TermEnd::Shutdown,
            _ = lost.cancelled() => return TermEnd::Deposed("lease lost".into()),
            _ = tokio::time::sleep(cfg.interval) => {}
        }
    }
}

/// Releases are immutable, so each is read from etcd once.
#[derive(Default)]
struct ReleaseCache {
    by_version: HashMap<(String, u64), Release>,
}

/// Reads apps, their current releases, formations, live hosts, placements and statuses.
async fn read_view(
    store: &Store,
    keys: &Keys,
    cache: &mut ReleaseCache,
) -> Result<View, StoreError> {
    let apps: Vec<(String, App)> = store.list(&keys.apps()).await?;
    let mut view = View::default();
    for (_, app) in apps {
        let k = (app.name.clone(), app.release);
        if !cache.by_version.contains_key(&k) {
            match store
                .get::<Release>(&keys.release(&app.name, app.release))
                .await?
            {
                Some(r) => {
                    cache.by_version.insert(k.clone(), r);
                }
                None => {
                    tracing::warn!(app = %app.name, release = app.release, "current release missing; skipping app");
                    continue;
                }
            }
        }
        if let Some(r) = cache.by_version.get(&k) {
            view.releases.insert(app.name.clone(), r.clone());
        }
    }
    let formations: Vec<(String, Formation)> = store.list(&keys.formations()).await?;
    view.formations = formations
        .into_iter()
        .map(|(_, f)| (f.app.clone(), f))
        .collect();
    let hosts: Vec<(String, Host)> = store.list(&keys.hosts()).await?;
    view.hosts = hosts.into_iter().map(|(_, h)| (h.id.clone(), h)).collect();
    let placements: Vec<(String, Job)> = store.list(&keys.placements()).await?;
    view.placements = placements.into_iter().map(|(_, j)| j).collect();
    let statuses: Vec<(String, JobStatus)> = store.list(&keys.job_statuses()).await?;
    view.statuses = statuses
        .into_iter()
        .map(|(_, s)| (s.id.clone(), s))
        .collect::<BTreeMap<_, _>>();
    Ok(view)
}

/// A fresh job id: 16 random hex digits.
fn new_job_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// Applies one action under the fence; false when the fence no longer holds.
async fn apply(
    store: &Store,
    keys: &Keys,
    fence: &Fence,
    action: &Action,
) -> Result<bool, StoreError> {
    match action {
        Action::Place { job, host, .. } => {
            let job = Job {
                id: new_job_id(),
                app: job.app.clone(),
                release: job.release,
                process_type: job.process_type.clone(),
                host: host.clone(),
                created_at: Utc::now(),
            };
            store
                .put_fenced(fence, &keys.placement(host, &job.id), &job)
                .await
        }
        Action::Stop { job, .. } => {
            store
                .delete_fenced(fence, &keys.placement(&job.host, &job.id))
                .await
        }
    }
}
