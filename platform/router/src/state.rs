//! Following etcd: stored routes, apps and discovery, folded into one [`Snapshot`] that
//! request handlers read without locking for long (a `watch` channel of `Arc`s).
//!
//! Three `paas-coord` prefix watches feed one task: `routes/` ([`Route`]), `apps/` (for
//! the default `<app>.<domain>` routes) and `services/` (the `web` jobs' registrations,
//! `services/<app>-web/<job>` = `{addr,app,job,process_type}`, written by host agents on
//! their leases while a job is Up). After any change the task rebuilds what changed and
//! publishes a new snapshot at once, so a backend whose registration vanished (deleted,
//! or its lease expired) is out of the set for every request that starts afterwards.
//!
//! A backend keeps its identity (and its in-flight counter) across snapshots as long as
//! its `(app, addr)` stays registered ([`backends_by_app`]).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use paas_coord::{Coord, CoordError};
use paas_model::{keys, Route, ServiceEntry};
use rustls::sign::CertifiedKey;
use tokio::sync::watch;

use crate::metrics::Metrics;
use crate::table::RouteTable;
use crate::tls;

/// The process type that receives HTTP traffic.
pub const WEB: &str = "web";

/// One backend: an app's `web` job.
#[derive(Debug)]
pub struct Backend {
    /// Where the job listens.
    pub addr: SocketAddr,
    /// The job id.
    pub job: String,
    in_flight: AtomicUsize,
    /// Milliseconds since [`epoch`] until which the backend is skipped (0: never).
    down_until: AtomicU64,
    /// Idle keep-alive connections to it; closed when the backend leaves the set.
    pool: crate::upstream::Pool,
}

/// Now in milliseconds on the coarse monotonic clock, the unit of down marks
/// ([`Backend::is_down_at`]) and of how long a pooled connection has been idle.
///
/// `CLOCK_MONOTONIC_COARSE` is the kernel's last tick (a few milliseconds of resolution,
/// plenty for marks of seconds), read from the vDSO without the TSC: every request
/// reads it twice or three times, and the precise clock's reads were 1.4% of the
/// router's CPU samples under `wrk`.
pub fn now_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid clock id and a timespec to write into; it cannot fail.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

impl Backend {
    /// A backend with nothing in flight.
    pub fn new(addr: SocketAddr, job: String) -> Self {
        Backend {
            addr,
            job,
            in_flight: AtomicUsize::new(0),
            down_until: AtomicU64::new(0),
            pool: crate::upstream::Pool::default(),
        }
    }

    /// Its idle keep-alive connections.
    pub fn pool(&self) -> &crate::upstream::Pool {
        &self.pool
    }

    /// Requests (and upgraded connections) this router has open to it.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Skips the backend for `period` (it refused a connection): until its registration
    /// goes, or the period ends, requests go to the others.
    pub fn mark_down(&self, period: Duration) {
        self.down_until
            .store(now_ms() + period.as_millis() as u64, Ordering::Relaxed);
    }

    /// Whether the backend is marked down now.
    pub fn is_down(&self) -> bool {
        self.is_down_at(now_ms())
    }

    /// Whether the backend is marked down at `now` ([`now_ms`]; read once for a whole set).
    pub fn is_down_at(&self, now: u64) -> bool {
        now < self.down_until.load(Ordering::Relaxed)
    }

    /// Counts one request until the guard drops.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(Arc::clone(self))
    }
}

/// Backends of one app as `balance::pick` sees them, on the stack for the usual few
/// (one request builds one such list per attempt).
pub type Candidates = smallvec::SmallVec<[crate::balance::Candidate; 8]>;

/// What `balance::pick` knows of each of `backends` now (in-flight count, down mark).
pub fn candidates(backends: &[Arc<Backend>]) -> Candidates {
    let now = now_ms();
    backends
        .iter()
        .map(|b| crate::balance::Candidate {
            addr: b.addr,
            in_flight: b.in_flight(),
            down: b.is_down_at(now),
        })
        .collect()
}

/// One request in flight to a backend; dropping it ends the count.
#[derive(Debug)]
pub struct InFlight(Arc<Backend>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Backends of every app, by app (foldhash: every request looks its app up here, and
/// SipHash was a measurable part of that).
pub type Backends = foldhash::HashMap<String, Vec<Arc<Backend>>>;

/// Everything a request needs to be routed, as of one moment.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Host/path -> app.
    pub table: RouteTable,
    /// App -> its `web` backends, ordered by address.
    pub backends: Backends,
    /// Domain -> certificate, for routes with TLS.
    pub certs: HashMap<String, Arc<CertifiedKey>>,
    /// TCP route port -> app.
    pub tcp: BTreeMap<u16, String>,
}

impl Snapshot {
    /// A router worker's copy: the same backends (their in-flight counts and pools are
    /// shared by every worker), the routes with app names of its own
    /// ([`RouteTable::localized`]).
    pub fn localized(&self) -> Snapshot {
        Snapshot {
            table: self.table.localized(),
            backends: self.backends.clone(),
            certs: self.certs.clone(),
            tcp: self.tcp.clone(),
        }
    }
}

/// The TCP routes among `routes`: port -> app. Pure.
pub fn tcp_routes<'a>(routes: impl IntoIterator<Item = &'a Route>) -> BTreeMap<u16, String> {
    routes
        .into_iter()
        .filter_map(|r| r.tcp_port.map(|port| (port, r.app.clone())))
        .collect()
}

/// The current snapshot, kept up to date by a background task until dropped.
pub struct Follower {
    rx: watch::Receiver<Arc<Snapshot>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Follower {
    /// A receiver of snapshots (cheap; clone per listener).
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.rx.clone()
    }
}

/// The app-wide `web` backends among discovery entries (keys `<app>-<type>/<job>`),
/// reusing the `Arc`s of `previous` for backends that are still registered. Entries of
/// other types or shapes (e.g. `logaggregator/<host>`) are skipped. Pure.
pub fn backends_by_app(
    services: &BTreeMap<String, serde_json::Value>,
    previous: &Backends,
) -> Backends {
    let mut out = Backends::default();
    for value in services.values() {
        let Ok(entry) = serde_json::from_value::<ServiceEntry>(value.clone()) else {
            continue;
        };
        if entry.process_type != WEB {
            continue;
        }
        let Ok(addr) = entry.addr.parse::<SocketAddr>() else {
            tracing::warn!(app = %entry.app, job = %entry.job, addr = %entry.addr, "unparsable backend address");
            continue;
        };
        let kept = previous
            .get(&entry.app)
            .and_then(|list| list.iter().find(|b| b.addr == addr && b.job == entry.job))
            .cloned();
        out.entry(entry.app.clone())
            .or_default()
            .push(kept.unwrap_or_else(|| Arc::new(Backend::new(addr, entry.job.clone()))));
    }
    for list in out.values_mut() {
        list.sort_by_key(|b| b.addr);
        list.dedup_by_key(|b| b.addr);
    }
    out
}

/// Starts following routes, apps and services under `coord`; the first snapshot is
/// complete when this returns.
pub async fn follow(
    coord: &Coord,
    domain: String,
    metrics: Arc<Metrics>,
) -> Result<Follower, CoordError> {
    let routes = coord.watch_prefix::<Route>(&keys::routes()).await?;
    let apps = coord
        .watch_prefix::<serde_json::Value>(&keys::apps())
        .await?;
    let services = coord
        .watch_prefix::<serde_json::Value>(&keys::services())
        .await?;
    let (mut routes_rx, mut apps_rx, mut services_rx) =
        (routes.subscribe(), apps.subscribe(), services.subscribe());

    let build_table = move |routes: &BTreeMap<String, Route>,
                            apps: &BTreeMap<String, serde_json::Value>| {
        RouteTable::build(routes.values(), apps.keys().map(String::as_str), &domain)
    };
    let routes_now = routes_rx.borrow_and_update().docs.clone();
    let apps_now = apps_rx.borrow_and_update().docs.clone();
    let services_now = services_rx.borrow_and_update().docs.clone();
    let mut table = build_table(&routes_now, &apps_now);
    let mut certs = tls::certs_of(routes_now.values());
    let mut tcp = tcp_routes(routes_now.values());
    let mut backends = backends_by_app(&services_now, &Backends::default());
    metrics.set_backends(&backends);
    let (tx, rx) = watch::channel(Arc::new(Snapshot {
        table: table.clone(),
        backends: backends.clone(),
        certs: certs.clone(),
        tcp: tcp.clone(),
    }));
    let task = tokio::spawn(async move {
        // The watches live as long as this task.
        let _watches = (routes, apps, services);
        loop {
            tokio::select! {
                changed = routes_rx.changed() => {
                    if changed.is_err() { break; }
                    let routes = routes_rx.borrow_and_update().docs.clone();
                    table = build_table(&routes, &apps_rx.borrow().docs);
                    certs = tls::certs_of(routes.values());
                    tcp = tcp_routes(routes.values());
                }
                changed = apps_rx.changed() => {
                    if changed.is_err() { break; }
                    let apps = apps_rx.borrow_and_update().docs.clone();
                    table = build_table(&routes_rx.borrow().docs, &apps);
                }
                changed = services_rx.changed() => {
                    if changed.is_err() { break; }
                    let services = services_rx.borrow_and_update().docs.clone();
                    backends = backends_by_app(&services, &backends);
                    metrics.set_backends(&backends);
                }
            }
            tracing::debug!(
                routes = table.len(),
                apps_with_backends = backends.len(),
                "routing state changed"
            );
            let snapshot = Snapshot {
                table: table.clone(),
                backends: backends.clone(),
                certs: certs.clone(),
                tcp: tcp.clone(),
            };
            if tx.send(Arc::new(snapshot)).is_err() {
                break;
            }
        }
        tracing::debug!("routing state follower stopped");
    });
    Ok(Follower { rx, task })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn services(entries: &[(&str, &str, &str, &str)]) -> BTreeMap<String, serde_json::Value> {
        entries
            .iter()
            .map(|(app, ty, job, addr)| {
                (
                    format!("{app}-{ty}/{job}"),
                    json!({"addr": addr, "app": app, "job": job, "process_type": ty}),
                )
            })
            .collect()
    }

    #[test]
    fn web_backends_by_app_keep_their_identity() {
        let mut s = services(&[
            ("shop", "web", "j1", "127.0.0.1:5001"),
            ("shop", "web", "j2", "127.0.0.1:5002"),
            ("shop", "worker", "j3", "127.0.0.1:5003"),
            ("blog", "web", "j4", "bad address"),
        ]);
        s.insert("logaggregator/h1".into(), json!({"api": "x"}));
        let first = backends_by_app(&s, &Backends::default());
        assert_eq!(first.len(), 1);
        let shop: Vec<_> = first["shop"]
            .iter()
            .map(|b| (b.job.as_str(), b.addr.port()))
            .collect();
        assert_eq!(shop, [("j1", 5001), ("j2", 5002)]);

        let _busy = first["shop"][0].begin();
        s.remove("shop-web/j2");
        let second = backends_by_app(&s, &first);
        assert_eq!(second["shop"].len(), 1);
        assert!(Arc::ptr_eq(&first["shop"][0], &second["shop"][0]));
        assert_eq!(second["shop"][0].in_flight(), 1);
        drop(_busy);
        assert_eq!(second["shop"][0].in_flight(), 0);
        // A mark lasts its period, and survives a rebuild of the set.
        second["shop"][0].mark_down(Duration::from_secs(60));
        assert!(second["shop"][0].is_down());
        assert!(backends_by_app(&s, &second)["shop"][0].is_down());
        second["shop"][0].mark_down(Duration::ZERO);
        assert!(!second["shop"][0].is_down());
    }
}
