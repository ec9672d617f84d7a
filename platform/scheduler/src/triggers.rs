//! The scheduler's view, kept by watches on the prefixes it is made of (apps,
//! formations, hosts, placements, job statuses): any change ends
//! [`Triggers::changed`], and a tick builds its view from the watches' snapshots instead
//! of reading 2,000 placements and statuses from etcd again (under a burst of status
//! writes that read took 160 ms, the watches' copy a few).
//!
//! A tick must never act on a view older than its own writes (it would place a job
//! twice): [`Triggers::parts`] hands out the snapshots only once the placements watch
//! has seen the revision of the scheduler's last commit, and the caller reads from etcd
//! when that takes longer than a moment or when a watch could not start.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::future::select_all;
use paas_coord::{Coord, DocWatch, Snapshot};
use paas_model::{keys, App, Formation, Host, Job, JobStatus};
use tokio::sync::watch;

/// Longest wait for the placements watch to catch up with the scheduler's own writes.
const CATCH_UP: Duration = Duration::from_millis(500);

/// The documents of one view, from the watches.
pub(crate) struct Parts {
    pub(crate) apps: Vec<App>,
    pub(crate) formations: Vec<Formation>,
    pub(crate) hosts: Vec<Host>,
    pub(crate) placements: Vec<Job>,
    pub(crate) statuses: Vec<JobStatus>,
}

/// The five watches, or none if one could not start (the loop then reads etcd).
pub(crate) struct Triggers {
    watched: Option<Watched>,
}

struct Watched {
    apps: watch::Receiver<Snapshot<App>>,
    formations: watch::Receiver<Snapshot<Formation>>,
    hosts: watch::Receiver<Snapshot<Host>>,
    placements: watch::Receiver<Snapshot<Job>>,
    statuses: watch::Receiver<Snapshot<JobStatus>>,
    _watches: Watches,
}

/// The watch handles; the receivers above live as long as these.
type Watches = (
    DocWatch<App>,
    DocWatch<Formation>,
    DocWatch<Host>,
    DocWatch<Job>,
    DocWatch<JobStatus>,
);

fn docs<T: Clone>(rx: &watch::Receiver<Snapshot<T>>) -> Vec<T> {
    rx.borrow().docs.values().cloned().collect()
}

impl Triggers {
    /// Starts the watches; if one cannot start, it is logged and every tick reads etcd
    /// (the periodic tick still runs).
    pub(crate) async fn start(coord: &Coord) -> Triggers {
        let started = async {
            Ok::<_, paas_coord::CoordError>((
                coord.watch_prefix::<App>(&keys::apps()).await?,
                coord.watch_prefix::<Formation>(&keys::formations()).await?,
                coord.watch_prefix::<Host>(&keys::hosts()).await?,
                coord.watch_prefix::<Job>(&keys::placements()).await?,
                coord
                    .watch_prefix::<JobStatus>(&keys::job_statuses())
                    .await?,
            ))
        }
        .await;
        match started {
            Ok(w) => Triggers {
                watched: Some(Watched {
                    apps: w.0.subscribe(),
                    formations: w.1.subscribe(),
                    hosts: w.2.subscribe(),
                    placements: w.3.subscribe(),
                    statuses: w.4.subscribe(),
                    _watches: w,
                }),
            },
            Err(e) => {
                tracing::warn!(error = %e, "scheduler: cannot watch; reading etcd every tick");
                Triggers { watched: None }
            }
        }
    }

    /// The view's documents once the placements watch has seen `written` (the revision
    /// of this scheduler's last commit); `None`: read etcd instead.
    pub(crate) async fn parts(&mut self, written: i64) -> Option<Parts> {
        let w = self.watched.as_mut()?;
        let caught_up = tokio::time::timeout(CATCH_UP, async {
            w.placements
                .wait_for(|s| s.revision >= written)
                .await
                .map(drop)
        })
        .await;
        match caught_up {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => return None,
            Err(_) => {
                tracing::debug!(
                    written,
                    "scheduler: placements watch behind its own writes; reading etcd"
                );
                return None;
            }
        }
        Some(Parts {
            apps: docs(&w.apps),
            formations: docs(&w.formations),
            hosts: docs(&w.hosts),
            placements: docs(&w.placements),
            statuses: docs(&w.statuses),
        })
    }

    /// Waits until any watched prefix changes. Never returns if no watch is alive.
    pub(crate) async fn changed(&mut self) {
        let Some(w) = self.watched.as_mut() else {
            return std::future::pending().await;
        };
        let alive = {
            type Wait<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send + 'a>>;
            let waits: Vec<Wait<'_>> = vec![
                Box::pin(async { w.apps.changed().await.is_ok() }),
                Box::pin(async { w.formations.changed().await.is_ok() }),
                Box::pin(async { w.hosts.changed().await.is_ok() }),
                Box::pin(async { w.placements.changed().await.is_ok() }),
                Box::pin(async { w.statuses.changed().await.is_ok() }),
            ];
            select_all(waits).await.0
        };
        if !alive {
            // A watcher is gone (only if it panicked): read etcd from now on.
            self.watched = None;
            std::future::pending::<()>().await;
        }
    }
}

/// Keys by id, as the view wants them.
pub(crate) fn by_id<T>(items: Vec<T>, id: impl Fn(&T) -> String) -> BTreeMap<String, T> {
    items.into_iter().map(|t| (id(&t), t)).collect()
}
