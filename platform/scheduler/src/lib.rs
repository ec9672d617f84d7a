//! `paas-scheduler`: keeps the jobs placed on hosts in line with the apps' formations.
//!
//! Map:
//! - [`reconcile`] the pure decision: [`reconcile::View`] -> [`reconcile::Action`]s.
//! - `triggers`    prefix watches that hold the view and start a tick as soon as something
//!   relevant changes.
//! - this file     the loop: win the `scheduler` election (`paas-coord`), then on every
//!   change (and at least every interval, as a resync) take the view, decide, apply.
//!
//! All etcd access goes through `paas-coord`; keys and documents are `paas-model`'s.
//!
//! Invariants:
//! - Only the leader writes placements, and every placement write or delete is one
//!   `paas_coord::Batch` guarded by the leadership (`require_leadership`: the leader key
//!   still has this term's fencing token, checked by etcd in the same transaction), so a
//!   deposed leader cannot place or remove anything, even mid-tick.
//! - Losing leadership (`Leadership::lost`: lease unrenewed or expired, or the key gone)
//!   stops acting at once; the scheduler resigns what is left and campaigns again.
//! - A scheduler whose process dies stops renewing its lease; a standby wins the
//!   election within the lease TTL. One whose task is dropped revokes the lease on the
//!   way out (`paas_coord::Lease`'s drop), so a standby wins at once.
//! - A tick's view comes from the watches on its five prefixes (`triggers`), and only
//!   once the placements watch has seen this scheduler's last commit, so a tick never
//!   acts on a view older than its own writes; when the watch lags past a moment, or a
//!   watch could not start, the tick reads etcd (lenient lists: a document that does
//!   not decode is logged and skipped).
//! - `reconcile` does no I/O; everything it decides is logged at INFO with its reason.

pub mod reconcile;
mod triggers;

use std::collections::HashMap;
use std::time::Duration;

use chrono::Utc;
use futures::stream::{FuturesUnordered, StreamExt as _};
use paas_coord::{Batch, Coord, CoordError, Leadership};
use paas_model::keys;
use paas_model::{App, Formation, Host, Job, JobStatus, Release};
use tokio_util::sync::CancellationToken;

use crate::reconcile::{Action, View};
use crate::triggers::{by_id, Parts, Triggers};

/// How long start-up waits for etcd.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Least time between the starts of two ticks, so a burst of changes (every job of a
/// large scale-up reporting its status) costs a few view reads, not one per change.
const MIN_TICK_GAP: Duration = Duration::from_millis(50);

/// Settings of one scheduler process.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// Name of this scheduler, written in the leader key (e.g. the host id).
    pub id: String,
    /// etcd client URLs.
    pub etcd_endpoints: Vec<String>,
    /// The controller's key prefix (`/paas/`): the `paas-coord` namespace.
    pub prefix: String,
    /// TTL of the leader lease: how long a dead leader blocks a standby.
    pub lease_ttl: Duration,
    /// Longest time between reconcile ticks (a change to apps, formations, hosts,
    /// placements or job statuses starts one at once), and the pause before a failed
    /// campaign is retried.
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
    Coord(#[from] CoordError),
}

/// How a term as leader ended.
#[derive(Debug)]
enum TermEnd {
    /// Shutdown was requested.
    Shutdown,
    /// Leadership was lost or a guarded write found another leader.
    Deposed(String),
}

/// Runs the scheduler until `shutdown` is cancelled: campaign, then reconcile on every
/// change (and every `interval`) while leader. On shutdown it resigns so a standby takes
/// over now.
pub async fn run(cfg: SchedulerConfig, shutdown: CancellationToken) -> Result<(), SchedulerError> {
    let coord = Coord::connect(&cfg.etcd_endpoints, &cfg.prefix, CONNECT_TIMEOUT).await?;
    let mut releases = ReleaseCache::default();
    loop {
        let won = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            won = coord.campaign(keys::SCHEDULER_ELECTION, &cfg.id, cfg.lease_ttl) => won,
        };
        let leadership = match won {
            Ok(leadership) => leadership,
            Err(e) => {
                tracing::warn!(error = %e, "scheduler: campaign failed; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(cfg.interval) => continue,
                }
            }
        };
        tracing::info!(id = %cfg.id, token = ?leadership.token(), "scheduler: became leader");
        let end = lead(&cfg, &coord, &leadership, &shutdown, &mut releases).await;
        if let TermEnd::Deposed(why) = &end {
            tracing::warn!(id = %cfg.id, %why, "scheduler: no longer leader");
        }
        // Whatever is left of the term goes now, not at its TTL (the delete is guarded
        // by the token, so a successor's key is never touched).
        if let Err(e) = leadership.resign().await {
            tracing::warn!(error = %e, "scheduler: resigning failed; the lease will expire");
        }
        if let TermEnd::Shutdown = end {
            tracing::info!(id = %cfg.id, "scheduler: stopped, leadership released");
            return Ok(());
        }
    }
}

/// One term as leader: tick until deposed or shut down.
async fn lead(
    cfg: &SchedulerConfig,
    coord: &Coord,
    leadership: &Leadership,
    shutdown: &CancellationToken,
    releases: &mut ReleaseCache,
) -> TermEnd {
    let mut triggers = Triggers::start(coord).await;
    // Revision of this term's last commit: no view older than it is acted on.
    let mut written: i64 = 0;
    loop {
        let started = tokio::time::Instant::now();
        let tick = async {
            let view = match triggers.parts(coord, written).await {
                Some(parts) => view_of(parts, coord, releases).await?,
                None => read_view(coord, releases).await?,
            };
            let read = started.elapsed();
            let mut actions = reconcile::reconcile(&view);
            let decided = started.elapsed();
            // Placements first, so a host's replacements start before the cleanup of
            // what it lost; the chunks go to etcd together (raft commits concurrent
            // proposals in shared rounds), not one round after another: 1,334 actions
            // after a host loss took 12.7 s one chunk at a time on a busy machine.
            actions.sort_by_key(|a| !matches!(a, Action::Place { .. }));
            let chunks: Vec<&[Action]> = actions.chunks(ACTIONS_PER_TXN).collect();
            for window in chunks.chunks(CONCURRENT_TXNS) {
                let mut commits = FuturesUnordered::new();
                for chunk in window {
                    commits.push(apply_logged(coord, leadership, &cfg.id, chunk));
                }
                while let Some(done) = commits.next().await {
                    written = written.max(done?);
                }
            }
            // One line per tick for `scripts/bench-scale` (RUST_LOG=paas_scheduler=debug).
            tracing::debug!(
                jobs = view.placements.len(),
                actions = actions.len(),
                read_ms = read.as_secs_f64() * 1e3,
                decide_ms = (decided - read).as_secs_f64() * 1e3,
                took_ms = started.elapsed().as_secs_f64() * 1e3,
                "scheduler tick"
            );
            Ok::<_, CoordError>(())
        };
        tokio::select! {
            _ = shutdown.cancelled() => return TermEnd::Shutdown,
            reason = leadership.lost() => return TermEnd::Deposed(reason.to_string()),
            result = tick => match result {
                Ok(()) => {}
                Err(e @ CoordError::Fenced { .. }) => return TermEnd::Deposed(e.to_string()),
                Err(e) => tracing::warn!(error = %e, "scheduler: tick failed; retrying"),
            },
        }
        tokio::select! {
            _ = shutdown.cancelled() => return TermEnd::Shutdown,
            reason = leadership.lost() => return TermEnd::Deposed(reason.to_string()),
            _ = tokio::time::sleep(cfg.interval) => {}
            () = triggers.changed() => {}
        }
        tokio::time::sleep_until(started + MIN_TICK_GAP).await;
    }
}

/// Releases are immutable, so each is read from etcd once.
#[derive(Default)]
struct ReleaseCache {
    by_version: HashMap<(String, u64), Release>,
}

/// Reads apps, formations, live hosts, placements and statuses from etcd when the
/// watches cannot serve the view: the five prefixes as they were at one revision (so
/// they agree with each other), read concurrently.
async fn read_view(coord: &Coord, cache: &mut ReleaseCache) -> Result<View, CoordError> {
    let prefixes = [
        keys::apps(),
        keys::formations(),
        keys::hosts(),
        keys::placements(),
        keys::job_statuses(),
    ];
    let at = Some(coord.revision().await?);
    let (apps, formations, hosts, placements, statuses) = tokio::try_join!(
        coord.list_decodable_at::<App>(&prefixes[0], at),
        coord.list_decodable_at::<Formation>(&prefixes[1], at),
        coord.list_decodable_at::<Host>(&prefixes[2], at),
        coord.list_decodable_at::<Job>(&prefixes[3], at),
        coord.list_decodable_at::<JobStatus>(&prefixes[4], at),
    )?;
    let parts = Parts {
        apps: docs(apps),
        formations: docs(formations),
        hosts: docs(hosts),
        placements: docs(placements),
        statuses: docs(statuses),
    };
    view_of(parts, coord, cache).await
}

/// The documents of a lenient list, without their keys and revisions.
fn docs<T>(listed: Vec<(String, T, i64)>) -> Vec<T> {
    listed.into_iter().map(|(_, d, _)| d).collect()
}

/// The view from its documents, with each app's current release (from the cache, or
/// read once: releases are immutable).
async fn view_of(
    parts: Parts,
    coord: &Coord,
    cache: &mut ReleaseCache,
) -> Result<View, CoordError> {
    let mut view = View::default();
    for app in parts.apps {
        let k = (app.name.clone(), app.release);
        if !cache.by_version.contains_key(&k) {
            match coord
                .get::<Release>(&keys::release(&app.name, app.release))
                .await
            {
                Ok(Some((r, _))) => {
                    cache.by_version.insert(k.clone(), r);
                }
                Ok(None) => {
                    tracing::warn!(app = %app.name, release = app.release, "current release missing; skipping app");
                    continue;
                }
                Err(e @ CoordError::Decode { .. }) => {
                    tracing::warn!(app = %app.name, error = %e, "current release unreadable; skipping app");
                    continue;
                }
                Err(e) => return Err(e),
            }
        }
        if let Some(r) = cache.by_version.get(&k) {
            view.releases.insert(app.name.clone(), r.clone());
        }
    }
    view.formations = by_id(parts.formations, |f| f.app.clone());
    view.hosts = by_id(parts.hosts, |h| h.id.clone());
    view.placements = parts.placements;
    view.statuses = by_id(parts.statuses, |st| st.id.clone());
    Ok(view)
}

/// A fresh job id: 16 random hex digits.
fn new_job_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// Placements and removals written per etcd transaction: one transaction (and one raft
/// round with its fsync) per hundred actions rather than per action, within etcd's
/// default limit of 128 operations per transaction (the leadership check is one more).
const ACTIONS_PER_TXN: usize = 100;

/// [`apply`], then logs each action (so the log shows only what was written).
async fn apply_logged(
    coord: &Coord,
    leadership: &Leadership,
    id: &str,
    actions: &[Action],
) -> Result<i64, CoordError> {
    let revision = apply(coord, leadership, actions).await?;
    for action in actions {
        tracing::info!(scheduler = %id, "{action}");
    }
    Ok(revision)
}

/// Transactions of one tick in flight at once.
const CONCURRENT_TXNS: usize = 16;

/// Writes `actions` in one transaction guarded by `leadership` and returns its
/// revision; `Fenced` when it no longer leads (nothing was written).
async fn apply(
    coord: &Coord,
    leadership: &Leadership,
    actions: &[Action],
) -> Result<i64, CoordError> {
    let mut batch = Batch::new();
    batch.require_leadership(leadership)?;
    for action in actions {
        match action {
            Action::Place { job, host, .. } => {
                let job = Job {
                    id: new_job_id(),
                    app: job.app.clone(),
                    release: job.release,
                    process_type: job.process_type.clone(),
                    host: host.clone(),
                    created_at: Utc::now(),
                    limits: job.limits,
                };
                batch.put(&keys::placement(host, &job.id), &job)?;
            }
            Action::Stop { job, .. } => {
                batch.remove(&keys::placement(&job.host, &job.id));
            }
        }
    }
    coord.commit(batch).await
}
