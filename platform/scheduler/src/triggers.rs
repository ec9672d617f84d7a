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
//!
//! Nor on a view that never was: each watch runs on its own stream, and the formations
//! watch may deliver a scale before the hosts watch delivers the host that joined just
//! before it (all three jobs of a `web=3` then went to the one host in view, once, on a
//! busy CI machine). So the hosts and apps snapshots are handed out only once one read
//! shows each still holds, etcd having nothing newer under their prefixes
//! ([`Coord::still_held`]); while a change is on its way to one of them, `parts` waits
//! for it. The snapshots are taken before that read, so the hosts (and the apps' current
//! releases) in a view are never older than its formations and placements. Those two,
//! and the job statuses, are not checked: they change with every scale call, placement
//! and report, and the next tick sees what the last one missed. Checking the formations
//! too made the ticks of a burst of scale calls chase a moving target:
//! `scripts/bench-scale`'s ticks took 37.6 ms to read their view (median), not 8.6.
//! And a tick whose apps and formations are those of the last checked view (woken by a
//! status or a placement, most ticks of a burst) skips the check: its hosts can only be
//! newer. The check is one round trip to etcd, 10-15 ms on a loaded machine.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::future::select_all;
use paas_coord::{Coord, DocWatch, Held, Snapshot};
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
    /// The apps' and formations' revisions of the last view whose hosts and apps were
    /// checked current: while neither moves, a tick (woken by a status or a placement)
    /// needs no new check, as the hosts in view only get newer.
    checked: Option<(i64, i64)>,
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

/// One watch's current snapshot, copied out (and marked seen, so a wait for the next
/// change waits for one after it).
struct Taken<T> {
    revision: i64,
    keys: usize,
    docs: Vec<T>,
}

impl<T: Clone> Taken<T> {
    fn of(rx: &mut watch::Receiver<Snapshot<T>>) -> Taken<T> {
        let s = rx.borrow_and_update();
        Taken {
            revision: s.revision,
            keys: s.keys,
            docs: s.docs.values().cloned().collect(),
        }
    }

    /// What [`Coord::still_held`] checks for it.
    fn held<'a>(&self, prefix: &'a str) -> Held<'a> {
        Held {
            prefix,
            revision: self.revision,
            keys: self.keys,
        }
    }
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
                checked: None,
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
                Triggers {
                    watched: None,
                    checked: None,
                }
            }
        }
    }

    /// The view's documents once the placements watch has seen `written` (the revision
    /// of this scheduler's last commit) and the apps and hosts watches have seen all
    /// there is; `None`: read etcd instead (a watch is gone, etcd did not answer, or they
    /// did not catch up within [`CATCH_UP`]).
    pub(crate) async fn parts(&mut self, coord: &Coord, written: i64) -> Option<Parts> {
        let w = self.watched.as_mut()?;
        let deadline = tokio::time::Instant::now() + CATCH_UP;
        let caught_up = tokio::time::timeout_at(deadline, async {
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
        loop {
            let apps = Taken::of(&mut w.apps);
            let formations = Taken::of(&mut w.formations);
            let hosts = Taken::of(&mut w.hosts);
            let placements = Taken::of(&mut w.placements);
            let statuses = Taken::of(&mut w.statuses);
            let (apps_prefix, hosts_prefix) = (keys::apps(), keys::hosts());
            let checks = [apps.held(&apps_prefix), hosts.held(&hosts_prefix)];
            let seen = formations
                .revision
                .max(placements.revision)
                .max(statuses.revision);
            let wants = (apps.revision, formations.revision);
            let current = if self.checked == Some(wants) {
                Ok(true)
            } else {
                coord.still_held(&checks, seen).await
            };
            match current {
                Ok(true) => {
                    self.checked = Some(wants);
                    return Some(Parts {
                        apps: apps.docs,
                        formations: formations.docs,
                        hosts: hosts.docs,
                        placements: placements.docs,
                        statuses: statuses.docs,
                    });
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "scheduler: cannot check the watches are current; reading etcd");
                    return None;
                }
            }
            // A change has not reached one of the two yet: wait for it.
            let arrived = tokio::time::timeout_at(deadline, async {
                tokio::select! {
                    r = w.apps.changed() => r.is_ok(),
                    r = w.hosts.changed() => r.is_ok(),
                }
            })
            .await;
            match arrived {
                Ok(true) => {}
                Ok(false) => return None,
                Err(_) => {
                    tracing::debug!(
                        "scheduler: watches behind etcd past the catch-up time; reading etcd"
                    );
                    return None;
                }
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use paas_it::EtcdServer;
    use std::time::Duration;

    fn host(id: &str) -> Host {
        Host {
            id: id.to_string(),
            api_addr: "127.0.0.1:1".to_string(),
            job_ip: "127.0.0.1".to_string(),
            started_at: chrono::Utc::now(),
        }
    }

    fn formation(web: u32) -> Formation {
        Formation {
            app: "shop".to_string(),
            processes: BTreeMap::from([("web".to_string(), web)]),
            limits: BTreeMap::new(),
        }
    }

    /// A host joins, then the formation scales; the hosts watch is held back (its
    /// receiver replaced by one that still shows only the first host), as a stream
    /// that delivers later than the formations one does. The view must not be handed
    /// out with the scale but without the host.
    #[tokio::test]
    async fn a_view_waits_for_a_lagging_watch_and_never_mixes_revisions() {
        let etcd = EtcdServer::start().expect("etcd");
        let coord = Coord::connect(&[etcd.endpoint()], "t", Duration::from_secs(5))
            .await
            .unwrap();
        let first = coord.create(&keys::host("h1"), &host("h1")).await.unwrap();
        let mut triggers = Triggers::start(&coord).await;
        let stale = Snapshot {
            revision: first,
            docs: BTreeMap::from([("h1".to_string(), host("h1"))]),
            keys: 1,
        };
        let (lagging, rx) = watch::channel(stale);
        triggers.watched.as_mut().unwrap().hosts = rx;

        let joined = coord.create(&keys::host("h2"), &host("h2")).await.unwrap();
        let scaled = coord
            .create(&keys::formation("shop"), &formation(3))
            .await
            .unwrap();
        assert!(scaled > joined);
        // The formations watch has the scale; the hosts "watch" is behind.
        let w = triggers.watched.as_mut().unwrap();
        tokio::time::timeout(
            Duration::from_secs(10),
            w.formations.wait_for(|s| s.revision >= scaled),
        )
        .await
        .unwrap()
        .unwrap();

        // Behind for good: no view from the watches (the caller reads etcd).
        let started = tokio::time::Instant::now();
        assert!(triggers.parts(&coord, 0).await.is_none());
        assert!(started.elapsed() >= CATCH_UP);

        // Behind for a moment: the view waits for the host, then has both.
        let catch_up = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let both = Snapshot {
                revision: joined,
                docs: BTreeMap::from([
                    ("h1".to_string(), host("h1")),
                    ("h2".to_string(), host("h2")),
                ]),
                keys: 2,
            };
            lagging.send_replace(both);
            lagging
        });
        let parts = triggers.parts(&coord, 0).await.expect("a view");
        let _lagging = catch_up.await.unwrap();
        let ids: Vec<&str> = parts.hosts.iter().map(|h| h.id.as_str()).collect();
        assert_eq!(ids, ["h1", "h2"]);
        assert_eq!(parts.formations, vec![formation(3)]);
    }
}
