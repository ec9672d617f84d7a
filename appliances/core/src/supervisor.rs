//! The supervisor skeleton every engine runs: one member of a cluster, wrapping one
//! server process.
//!
//! [`run`] does what is the same for every engine: it binds the health API, connects to
//! etcd (waiting, and saying so, while etcd does not answer), keeps a lease
//! ([`crate::lease`]), starts the fencing watchdog ([`crate::fence`]) and ticks. Every
//! tick it hands the engine a [`Ctx`]; the engine observes (its records in one read, its
//! server unless a long action holds it), calls its pure `decide`, says the decision
//! ([`Ctx::say`]: logged at INFO when the sentence changes, at DEBUG otherwise),
//! publishes its status ([`Ctx::publish`]: health API and etcd) and acts. Quick actions
//! run inline; long ones run on a task that owns the server handle
//! ([`Actions::spawn`]), which is how the next tick knows one is in progress
//! ([`Slot::Busy`]). Ticks come every [`MemberConfig::tick`], or, for an engine that
//! asks for a longer wait while its cluster is steady ([`Engine::next_wait`]), as soon as
//! a record of the cluster or the lease changes ([`crate::wake`]) or the engine sees a
//! local reason ([`Engine::wants_tick`]). On shutdown it stops leading, stops the server (SIGKILL of its
//! process group if an action holds it for more than a minute), releases the leader key
//! and revokes the lease, so a successor does not wait for the TTL.
//!
//! Invariant: the fencing watchdog runs beside the tick, never inside it, so a slow tick
//! or a stuck action cannot delay a fence.

use std::fmt::Display;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI32, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use paas_coord::Coord;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::{watch, OwnedMutexGuard};

use crate::fence::{self, kill_pid_group, Fence};
use crate::health::{self, Probed};
use crate::lease::{LeaseHandle, LeaseState};
use crate::records::{Keys, Member, Records};
use crate::wake::Wake;

/// How often an engine waiting longer than its tick is asked whether something local
/// calls for a tick ([`Engine::wants_tick`]), as often as the fencing watchdog looks.
const LOCAL_CHECK: Duration = Duration::from_millis(100);

/// How long a shutdown waits for a running long action before killing the server.
const SHUTDOWN_PATIENCE: Duration = Duration::from_secs(60);

/// Why a supervisor could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The health API could not bind its address (in use, or not a local address).
    #[error("binding the health API on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// What every member needs besides its engine's own settings.
#[derive(Debug, Clone)]
pub struct MemberConfig {
    /// The engine, for log lines (`postgres`, `mysql`, ...).
    pub kind: String,
    /// This member's name, unique in its cluster.
    pub name: String,
    /// etcd client URLs.
    pub etcd_endpoints: Vec<String>,
    /// etcd key prefix (the platform's namespace, e.g. `paas/`).
    pub prefix: String,
    /// The cluster's records in etcd.
    pub keys: Keys,
    /// Where the health API listens.
    pub health_addr: SocketAddr,
    /// The lease TTL: a dead leader is replaced after at most about this long.
    pub ttl: Duration,
    /// How long before the lease's earliest expiry a leader is fenced.
    pub fence_margin: Duration,
    /// The tick interval.
    pub tick: Duration,
}

/// The handle of an engine's server process, owned by the supervisor (and lent to one
/// long action at a time).
pub trait Server: Send + 'static {
    /// Stops the server gracefully (the supervisor is shutting down).
    fn stop(&mut self) -> impl Future<Output = ()> + Send;
}

/// What an engine plugs into the skeleton: its types and its tick.
pub trait Engine: Send + Sized + 'static {
    /// The server handle.
    type Server: Server;
    /// The cluster's state document (roles, generation).
    type State: Serialize + DeserializeOwned + Send + Sync + 'static;
    /// The member status published on the health API and in etcd.
    type Status: Probed + Member + DeserializeOwned;

    /// One tick: observe, decide, say, publish, act.
    fn tick(&mut self, ctx: &mut Ctx<Self>) -> impl Future<Output = ()> + Send;

    /// How long after the start of the tick that just ran the next one may wait, asked
    /// after every tick. `None` (the default): [`MemberConfig::tick`], polling. `Some`
    /// (e.g. a longer wait while the cluster is steady): the loop also wakes as soon as
    /// another member's record, the state document, the leader key or the lease changes
    /// ([`crate::wake`]), though never sooner than [`MemberConfig::tick`] after the
    /// previous tick started.
    fn next_wait(&self) -> Option<Duration> {
        None
    }

    /// Whether something local calls for a tick before a longer wait is over (the
    /// server exited, say): asked every 100 ms during such a wait, so it must be cheap
    /// and must not block. Default: never.
    fn wants_tick(&self) -> bool {
        false
    }
}

/// The server handle as a tick finds it.
pub enum Slot<S> {
    /// Free: this tick may observe the server and act on it (or hand it to an action).
    Free(OwnedMutexGuard<S>),
    /// Held by the long action named here.
    Busy(String),
}

/// What a tick works with.
pub struct Ctx<E: Engine> {
    me: String,
    lease: LeaseHandle,
    server: Arc<tokio::sync::Mutex<E::Server>>,
    actions: Actions<E>,
    published: watch::Sender<E::Status>,
    last_reason: String,
}

impl<E: Engine> Ctx<E> {
    /// This member's name.
    pub fn me(&self) -> &str {
        &self.me
    }

    /// The lease as last confirmed (`None` while etcd does not answer or just after a
    /// loss: a member without a lease takes no part).
    pub fn lease(&self) -> Option<LeaseState> {
        self.lease.current()
    }

    /// The cluster's records.
    pub fn records(&self) -> &Records<E::State, E::Status> {
        &self.actions.records
    }

    /// The fence: which lease the member leads with, and the server's pid.
    pub fn fence(&self) -> &Fence {
        &self.actions.fence
    }

    /// Records that the member leads with `lease` (0: does not lead); the watchdog
    /// fences the server when that lease may be expiring.
    pub fn set_leading(&self, lease: i64) {
        self.actions.fence.leading.store(lease, Ordering::SeqCst);
    }

    /// The server handle, or the long action holding it.
    pub fn server(&self) -> Slot<E::Server> {
        let busy = self.actions.busy.lock().expect("busy lock").clone();
        match (busy, self.server.clone().try_lock_owned()) {
            (None, Ok(guard)) => Slot::Free(guard),
            (Some(action), _) => Slot::Busy(action),
            (None, Err(_)) => Slot::Busy("an action".into()),
        }
    }

    /// A handle to start long actions with (cloneable into them).
    pub fn actions(&self) -> &Actions<E> {
        &self.actions
    }

    /// Says the decision: at INFO when it differs from the previous one, else at DEBUG
    /// (a tick runs several times a second).
    pub fn say(&mut self, reason: &str) {
        if reason != self.last_reason {
            tracing::info!(member = %self.me, "{reason}");
            self.last_reason = reason.to_string();
        } else {
            tracing::debug!(member = %self.me, "{reason}");
        }
    }

    /// The last published status.
    pub fn status(&self) -> E::Status {
        self.published.borrow().clone()
    }

    /// Publishes `status` on the health API and, when a lease is held, in etcd (bound to
    /// the lease, so it vanishes with the member).
    pub async fn publish(&mut self, status: E::Status) {
        self.published.send_replace(status.clone());
        if let Some(lease) = self.lease.current() {
            if let Err(err) = self.actions.records.register(&status, lease.id).await {
                tracing::warn!(member = %self.me, error = %err, "publishing member status failed");
            }
        }
    }
}

/// Starts long actions; a clone goes into each action that needs the records or the
/// fence.
pub struct Actions<E: Engine> {
    me: String,
    records: Records<E::State, E::Status>,
    fence: Fence,
    busy: Arc<Mutex<Option<String>>>,
}

impl<E: Engine> Clone for Actions<E> {
    fn clone(&self) -> Self {
        Actions {
            me: self.me.clone(),
            records: self.records.clone(),
            fence: self.fence.clone(),
            busy: self.busy.clone(),
        }
    }
}

impl<E: Engine> Actions<E> {
    /// This member's name.
    pub fn me(&self) -> &str {
        &self.me
    }

    /// The cluster's records.
    pub fn records(&self) -> &Records<E::State, E::Status> {
        &self.records
    }

    /// The fence.
    pub fn fence(&self) -> &Fence {
        &self.fence
    }

    /// Runs `action` on its own task, marked busy as `name` until it ends; the action
    /// should own the server's guard (from [`Slot::Free`]) so that nothing else acts on
    /// the server meanwhile. Its outcome is logged with its duration.
    pub fn spawn<F, Err>(&self, name: &str, action: F)
    where
        F: Future<Output = Result<(), Err>> + Send + 'static,
        Err: Display,
    {
        *self.busy.lock().expect("busy lock") = Some(name.to_string());
        let (busy, me, name) = (self.busy.clone(), self.me.clone(), name.to_string());
        tokio::spawn(async move {
            let started = Instant::now();
            let result = action.await;
            *busy.lock().expect("busy lock") = None;
            match result {
                Ok(()) => {
                    tracing::info!(member = %me, action = %name, took = ?started.elapsed(), "action finished")
                }
                Err(err) => {
                    tracing::warn!(member = %me, action = %name, error = %err, "action failed")
                }
            }
        });
    }
}

/// Connects to etcd, retrying every second and saying why until it answers: a member
/// started before etcd (or during an outage) waits instead of exiting.
async fn connect_etcd(config: &MemberConfig) -> Coord {
    let mut logged = false;
    loop {
        match Coord::connect(
            &config.etcd_endpoints,
            &config.prefix,
            Duration::from_secs(2),
        )
        .await
        {
            Ok(coord) => return coord,
            Err(err) => {
                if !logged {
                    tracing::warn!(member = %config.name, error = %err, "waiting for etcd");
                    logged = true;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Runs one member until `shutdown` completes: `engine` ticks over `server`, whose
/// running process's pid (leader of its process group) is kept in `pid` for the
/// watchdog; `initial` is the status published before the first tick.
pub async fn run<E: Engine>(
    config: MemberConfig,
    engine: E,
    server: E::Server,
    pid: Arc<AtomicI32>,
    initial: E::Status,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    run_with_routes(
        config,
        engine,
        server,
        pid,
        initial,
        axum::Router::new(),
        shutdown,
    )
    .await
}

/// [`run`], with the engine's own `routes` served beside the health API on its address
/// (e.g. MariaDB's seed stream, which a joining member copies its data from).
pub async fn run_with_routes<E: Engine>(
    config: MemberConfig,
    mut engine: E,
    server: E::Server,
    pid: Arc<AtomicI32>,
    initial: E::Status,
    routes: axum::Router,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    let listener = tokio::net::TcpListener::bind(config.health_addr)
        .await
        .map_err(|source| RunError::Bind {
            addr: config.health_addr,
            source,
        })?;
    let coord = connect_etcd(&config).await;
    let records = Records::new(coord.clone(), config.keys.clone());
    let lease = LeaseHandle::spawn(coord.clone(), config.ttl);
    let mut wake = Wake::new(coord, &config.keys, &config.name, lease.subscribe());
    let fence = Fence {
        leading: Arc::new(AtomicI64::new(0)),
        pid,
    };
    let (published, health_rx) = watch::channel(initial);
    let (stop_health, mut stop_health_rx) = watch::channel(false);
    let health_task = tokio::spawn(async move {
        let stop = async move {
            let _ = stop_health_rx.wait_for(|stop| *stop).await;
        };
        if let Err(err) = axum::serve(listener, health::router(health_rx).merge(routes))
            .with_graceful_shutdown(stop)
            .await
        {
            tracing::error!(error = %err, "health API failed");
        }
    });
    let watchdog = tokio::spawn(fence::watchdog(
        config.name.clone(),
        fence.clone(),
        lease.subscribe(),
        config.ttl,
        config.fence_margin,
    ));
    tracing::info!(kind = %config.kind, member = %config.name, cluster = %config.keys.base(), health = %config.health_addr, "supervisor started");

    let server = Arc::new(tokio::sync::Mutex::new(server));
    let mut ctx = Ctx::<E> {
        me: config.name.clone(),
        lease,
        server: server.clone(),
        actions: Actions {
            me: config.name.clone(),
            records,
            fence: fence.clone(),
            busy: Arc::new(Mutex::new(None)),
        },
        published,
        last_reason: String::new(),
    };
    tokio::pin!(shutdown);
    'ticks: loop {
        let started = tokio::time::Instant::now();
        engine.tick(&mut ctx).await;
        let paced = started + config.tick;
        let Some(wait) = engine.next_wait() else {
            tokio::select! {
                _ = &mut shutdown => break 'ticks,
                _ = tokio::time::sleep_until(paced) => continue 'ticks,
            }
        };
        let idle = tokio::time::sleep_until(started + wait.max(config.tick));
        tokio::pin!(idle);
        let mut local = tokio::time::interval_at(started + LOCAL_CHECK, LOCAL_CHECK);
        loop {
            tokio::select! {
                _ = &mut shutdown => break 'ticks,
                _ = &mut idle => break,
                _ = local.tick() => if engine.wants_tick() {
                    tokio::select! {
                        _ = &mut shutdown => break 'ticks,
                        _ = tokio::time::sleep_until(paced) => break,
                    }
                },
                _ = wake.changed() => {
                    tokio::select! {
                        _ = &mut shutdown => break 'ticks,
                        _ = tokio::time::sleep_until(paced) => break,
                    }
                }
            }
        }
    }

    tracing::info!(kind = %config.kind, member = %config.name, "shutting down: stopping the server, releasing leadership");
    drop(engine);
    fence.leading.store(0, Ordering::SeqCst);
    watchdog.abort();
    let mut guard = match tokio::time::timeout(SHUTDOWN_PATIENCE, server.clone().lock_owned()).await
    {
        Ok(guard) => guard,
        Err(_) => {
            tracing::warn!(member = %config.name, "a long action still holds the server; killing it");
            kill_pid_group(fence.pid.load(Ordering::SeqCst));
            server.clone().lock_owned().await
        }
    };
    guard.stop().await;
    let Ctx { lease, actions, .. } = ctx;
    if let Some(state) = lease.current() {
        let _ = actions.records.release_leadership(state.id).await;
    }
    lease.revoke().await;
    let _ = stop_health.send(true);
    let _ = health_task.await;
    Ok(())
}
