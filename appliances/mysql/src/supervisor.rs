//! The supervisor of one MariaDB server: the tick loop, the long actions, the fencing
//! watchdog, the health API and the seed server.
//!
//! Every tick the loop (1) reads the cluster's records from etcd in one request, (2)
//! looks at the local server unless a long action holds it, (3) calls
//! [`decide`](crate::decide::decide), logging the sentence at INFO when it changes, (4)
//! publishes the member's status in etcd and on the health API, and (5) carries the
//! decision out. Quick decisions (fence, resign, lock, unlock, accounts, re-pointing,
//! acknowledgements) run inline; long ones (install, seed, start, promotion, choosing
//! a sync) run in a task that owns the server handle, which is how the next tick knows
//! an action is in progress.
//!
//! Fencing has two layers. The appliance core's watchdog (`paas_appliance::fence`,
//! which holds the timing argument) SIGKILLs mariadbd's process group the moment the
//! lease it leads with may be expiring. And a primary acknowledges a commit only once a
//! replica acknowledged it (semi-sync AFTER_SYNC, no timeout); only the sync may, and
//! the sync stops receiving the moment it promotes, so even a primary whose supervisor
//! is frozen cannot acknowledge a write after a failover. Sessions waiting for an
//! acknowledgement are never killed on a primary that may be deposed: mariadbd is.
//!
//! Choosing a sync (the only way a member becomes promotable), with no sync recorded
//! (after a promotion, or once the primary dropped a sync that was not connected):
//! 1. lock out every member but the candidate (account locked on this server, its
//!    connections ended): from now on only the candidate can acknowledge;
//! 2. `X` := the primary's `gtid_binlog_pos`; every commit acknowledged so far is in it;
//! 3. wait until the candidate's relay log has `X`;
//! 4. write `sync = candidate` (compare-and-set, only while holding the leader key).
//!
//! Seeds: `GET /seed` on the health address (bearer: the superuser password) streams
//! `mariadb-backup --backup --stream=mbstream` of this member's server.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use paas_appliance::fence::Fence;
use paas_appliance::leader::LeaderRecord;
use paas_appliance::records::RecordsError;
use paas_appliance::supervisor::{Ctx, Engine, MemberConfig, RunError, Server, Slot};
use tokio::sync::OwnedMutexGuard;

use crate::cluster::{keys, ClusterState, MemberStatus, Role, Snapshot, Store};
use crate::decide::{decide, Decision, Leader, Local, Observed};
use crate::server::{Mariadb, Runtime, ServerConfig, ServerError, StartAs};

/// Why the supervisor could not start or an action failed.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    /// The configuration is unusable.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// etcd could not be reached or refused a request.
    #[error(transparent)]
    Store(#[from] RecordsError),
    /// The local MariaDB failed an operation.
    #[error(transparent)]
    Server(#[from] ServerError),
    /// The skeleton could not start (the health API could not bind its port).
    #[error(transparent)]
    Run(#[from] RunError),
    /// A conditional write lost against another member, or a precondition failed.
    #[error("{0}")]
    LostRace(String),
}

/// Everything one supervisor needs.
#[derive(Debug, Clone)]
pub struct SupervisorConfig {
    /// The cluster's name (etcd keys `<prefix>mysql/<cluster>/`).
    pub cluster: String,
    /// This member's name: `[a-z0-9_]`, unique in the cluster.
    pub name: String,
    /// etcd client URLs.
    pub etcd_endpoints: Vec<String>,
    /// etcd key prefix.
    pub prefix: String,
    /// The instance directory (datadir `<dir>/data`).
    pub dir: PathBuf,
    /// The address mariadbd and the health API listen on.
    pub host: String,
    /// mariadbd's port.
    pub port: u16,
    /// The health API's port.
    pub health_port: u16,
    /// `server_id`, unique in the cluster (1..2^32-1).
    pub server_id: u32,
    /// The superuser's password, the same on every member.
    pub superuser_password: String,
    /// The lease TTL: a dead primary is replaced after at most about this long.
    pub ttl: Duration,
    /// How long before the lease's earliest expiry the primary fences itself.
    pub fence_margin: Duration,
    /// The tick interval.
    pub tick: Duration,
    /// How long a replica may fail to follow a running upstream before it is seeded
    /// again.
    pub stall_after: Duration,
    /// How many members the cluster has (0: unknown); a bootstrap waits for all.
    pub members: usize,
    /// The cluster's server certificate (`paas_appliance::tls`); `None`: no TLS.
    pub tls_dir: Option<PathBuf>,
}

impl SupervisorConfig {
    /// A configuration with the defaults for everything but identity and addresses.
    pub fn new(
        cluster: &str,
        name: &str,
        etcd_endpoints: Vec<String>,
        dir: PathBuf,
        port: u16,
        health_port: u16,
        superuser_password: &str,
    ) -> Self {
        SupervisorConfig {
            cluster: cluster.into(),
            name: name.into(),
            etcd_endpoints,
            prefix: "/paas/".into(),
            dir,
            host: "127.0.0.1".into(),
            port,
            health_port,
            server_id: server_id_of(name),
            superuser_password: superuser_password.into(),
            ttl: Duration::from_secs(3),
            fence_margin: Duration::from_millis(1000),
            tick: Duration::from_millis(250),
            stall_after: Duration::from_secs(3),
            members: 0,
            tls_dir: None,
        }
    }

    /// Checks the configuration without touching anything.
    pub fn validate(&self) -> Result<(), SupervisorError> {
        let ident = |s: &str| {
            !s.is_empty()
                && s.len() <= 48
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        };
        if !ident(&self.name) {
            return Err(SupervisorError::Config(format!(
                "member name {:?} must be 1-48 of [a-z0-9_]",
                self.name
            )));
        }
        if !ident(&self.cluster) {
            return Err(SupervisorError::Config(format!(
                "cluster name {:?} must be 1-48 of [a-z0-9_]",
                self.cluster
            )));
        }
        if self.ttl < Duration::from_secs(2) || self.ttl.subsec_nanos() != 0 {
            return Err(SupervisorError::Config(
                "ttl must be whole seconds, at least 2 s (etcd's minimum)".into(),
            ));
        }
        if self.fence_margin.is_zero() || self.fence_margin >= self.ttl / 2 {
            return Err(SupervisorError::Config(
                "fence margin must be positive and below half the TTL".into(),
            ));
        }
        if self.superuser_password.is_empty()
            || !self
                .superuser_password
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(SupervisorError::Config(
                "superuser password must be non-empty and only of [A-Za-z0-9_-]".into(),
            ));
        }
        if self.server_id == 0 {
            return Err(SupervisorError::Config("server_id must not be 0".into()));
        }
        if self.etcd_endpoints.is_empty() {
            return Err(SupervisorError::Config("no etcd endpoint".into()));
        }
        Ok(())
    }

    fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// A member's default `server_id`: the number its name ends with plus one (`my0` -> 1),
/// else a stable hash of the name; never 0.
pub fn server_id_of(name: &str) -> u32 {
    let digits: String = name
        .chars()
        .rev()
        .take_while(char::is_ascii_digit)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    if let Ok(n) = digits.parse::<u32>() {
        if n < 1_000_000 {
            return n + 1;
        }
    }
    let mut h: u32 = 0x811c_9dc5;
    for b in name.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h.max(1_000_001)
}

/// What the long actions need: the records and fence from the skeleton, and this
/// engine's own flags.
#[derive(Clone)]
struct Shared {
    me: String,
    store: Store,
    fence: Fence,
    /// Whether mariadbd exited without being asked to since it was last started.
    crashed: Arc<AtomicBool>,
    leader_record: LeaderRecord,
}

impl Server for Mariadb {
    async fn stop(&mut self) {
        Mariadb::stop(self).await
    }
}

/// What the seed route needs.
#[derive(Clone)]
struct SeedSource {
    config: ServerConfig,
    password: String,
}

/// `GET /seed`: a mariadb-backup stream of this member's server.
async fn seed_route(State(source): State<SeedSource>, headers: HeaderMap) -> Response {
    let authorized = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == format!("Bearer {}", source.password));
    if !authorized {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let command = Mariadb::new(source.config.clone()).backup_command();
    let mut command = match command {
        Ok(command) => command,
        Err(err) => return (StatusCode::INTERNAL_SERVER_ERROR, err.to_string()).into_response(),
    };
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(err) => return (StatusCode::INTERNAL_SERVER_ERROR, err.to_string()).into_response(),
    };
    let stdout = child.stdout.take().expect("piped");
    let stderr = child.stderr.take().expect("piped");
    tokio::spawn(async move {
        let text = crate::server::read_all(stderr).await;
        match child.wait().await {
            Ok(status) if status.success() => tracing::info!("seed stream served"),
            other => {
                let tail: Vec<&str> = text.lines().rev().take(5).collect();
                tracing::warn!(status = ?other, output = %tail.join(" | "), "seed stream failed")
            }
        }
    });
    Body::from_stream(tokio_util::io::ReaderStream::new(stdout)).into_response()
}

/// Runs the supervisor until `shutdown` completes; then stops mariadbd, releases the
/// leader key and revokes the lease (the appliance core's skeleton does the common
/// part: see `paas_appliance::supervisor`).
pub async fn run(
    config: SupervisorConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), SupervisorError> {
    config.validate()?;
    std::fs::create_dir_all(&config.dir).map_err(|e| {
        SupervisorError::Server(ServerError::Io {
            what: format!("creating {}", config.dir.display()),
            source: e,
        })
    })?;
    let server_config = ServerConfig {
        name: config.name.clone(),
        dir: config.dir.clone(),
        host: config.host.clone(),
        port: config.port,
        server_id: config.server_id,
        superuser_password: config.superuser_password.clone(),
        tls_dir: config.tls_dir.clone(),
    };
    let server = Mariadb::new(server_config.clone());
    let parse = |port: u16| -> Result<SocketAddr, SupervisorError> {
        format!("{}:{port}", config.host).parse().map_err(|e| {
            SupervisorError::Config(format!(
                "host {:?} with port {port} is not an IP address: {e}",
                config.host
            ))
        })
    };
    let addr = parse(config.port)?;
    let health_addr = parse(config.health_port)?;
    let initial = MemberStatus {
        name: config.name.clone(),
        addr: config.addr(),
        health_addr: health_addr.to_string(),
        role: Role::Stopped,
        running: false,
        streaming: false,
        gtid: None,
        received: None,
        lag: None,
        acks: false,
        semi_sync_off: false,
        generation: None,
        decision: "starting".into(),
        has_data: false,
    };
    let member = MemberConfig {
        kind: "mysql".into(),
        name: config.name.clone(),
        etcd_endpoints: config.etcd_endpoints.clone(),
        prefix: config.prefix.clone(),
        keys: keys(&config.cluster),
        health_addr,
        ttl: config.ttl,
        fence_margin: config.fence_margin,
        tick: config.tick,
    };
    let routes = axum::Router::new()
        .route("/seed", axum::routing::get(seed_route))
        .with_state(SeedSource {
            config: server_config,
            password: config.superuser_password.clone(),
        });
    tracing::info!(member = %config.name, cluster = %config.cluster, mysql = %config.addr(), "starting the mysql supervisor");
    let pid = server.pid_cell();
    let engine = MysqlEngine {
        leader_record: LeaderRecord {
            member: config.name.clone(),
            addr,
        },
        config,
        crashed: Arc::new(AtomicBool::new(false)),
        status: initial.clone(),
        known: BTreeMap::new(),
        failing_since: None,
    };
    paas_appliance::supervisor::run_with_routes(
        member, engine, server, pid, initial, routes, shutdown,
    )
    .await?;
    Ok(())
}

/// Addresses of the other members, from their registrations and the leader key.
#[derive(Debug, Clone)]
struct Addrs {
    mysql: String,
    health: Option<String>,
}

/// The MariaDB engine's state between ticks.
struct MysqlEngine {
    config: SupervisorConfig,
    crashed: Arc<AtomicBool>,
    leader_record: LeaderRecord,
    status: MemberStatus,
    known: BTreeMap<String, Addrs>,
    failing_since: Option<Instant>,
}

impl Engine for MysqlEngine {
    type Server = Mariadb;
    type State = ClusterState;
    type Status = MemberStatus;

    async fn tick(&mut self, ctx: &mut Ctx<Self>) {
        self.run(ctx).await
    }
}

impl MysqlEngine {
    fn shared(&self, ctx: &Ctx<Self>) -> Shared {
        Shared {
            me: self.config.name.clone(),
            store: ctx.records().clone(),
            fence: ctx.fence().clone(),
            crashed: self.crashed.clone(),
            leader_record: self.leader_record.clone(),
        }
    }

    async fn run(&mut self, ctx: &mut Ctx<Self>) {
        let Some(lease) = ctx.lease() else {
            ctx.say("no etcd lease: cannot take part until etcd answers");
            return;
        };
        if let Err(err) = crate::server::check_reachable(&self.config.dir) {
            // Said in the member's status, so `paas cluster status` shows it.
            let reason = format!("cannot run mariadbd: {err}");
            ctx.say(&reason);
            self.status.decision = reason;
            ctx.publish(self.status.clone()).await;
            return;
        }
        let snapshot = match ctx.records().read().await {
            Ok(snapshot) => snapshot,
            Err(err) => {
                ctx.say(&format!("cannot read the cluster state from etcd: {err}"));
                return;
            }
        };
        for member in snapshot.members.values() {
            self.known.insert(
                member.name.clone(),
                Addrs {
                    mysql: member.addr.clone(),
                    health: Some(member.health_addr.clone()),
                },
            );
        }
        let me = self.config.name.clone();
        let leader = match &snapshot.leader {
            None => Leader::Nobody,
            Some(key) if key.record.member == me && key.lease == lease.id => Leader::Me,
            Some(key) if key.record.member == me => Leader::MyOldLease,
            Some(key) => Leader::Other(key.record.member.clone()),
        };
        if let Some(key) = &snapshot.leader {
            let health = self
                .known
                .get(&key.record.member)
                .and_then(|a| a.health.clone());
            self.known.insert(
                key.record.member.clone(),
                Addrs {
                    mysql: key.record.addr.to_string(),
                    health,
                },
            );
        }
        ctx.set_leading(if leader == Leader::Me { lease.id } else { 0 });

        let (local, runtime, guard, busy) = match ctx.server() {
            Slot::Free(mut guard) => {
                let (local, runtime) = self.observe_local(&mut guard, &snapshot).await;
                (local, runtime, Some(guard), None)
            }
            Slot::Busy(action) => (Local::Starting, None, None, Some(action)),
        };
        let observed = Observed {
            me,
            state: snapshot.state.as_ref().map(|(s, _)| s.clone()),
            leader: leader.clone(),
            members: snapshot.members.clone(),
            local: local.clone(),
            busy,
            expected_members: self.config.members,
        };
        let decision = decide(&observed);
        ctx.say(decision.reason());
        self.update_status(&observed, runtime.as_ref(), &snapshot, decision.reason());
        ctx.publish(self.status.clone()).await;
        if let Some(guard) = guard {
            self.execute(ctx, decision, guard, &snapshot, lease.id, &local)
                .await;
        }
    }

    async fn observe_local(
        &mut self,
        server: &mut Mariadb,
        snapshot: &Snapshot,
    ) -> (Local, Option<Runtime>) {
        if let Some(status) = server.poll_exit() {
            self.crashed.store(true, Ordering::SeqCst);
            tracing::warn!(member = %self.config.name, %status, "mariadbd exited unexpectedly");
        }
        if !server.is_running() {
            self.failing_since = None;
            let local = if server.has_data() {
                Local::Stopped {
                    upstream: server.upstream(),
                    crashed: self.crashed.load(Ordering::SeqCst),
                }
            } else {
                Local::Empty
            };
            return (local, None);
        }
        let runtime = match server.runtime().await {
            Ok(runtime) => runtime,
            Err(err) => {
                tracing::debug!(error = %err, "mariadbd does not answer yet");
                return (Local::Starting, None);
            }
        };
        if !runtime.read_only {
            self.failing_since = None;
            let local = Local::Primary {
                connected: runtime.connected.clone(),
                acking: runtime.semi_sync_clients,
                semi_sync_on: runtime.semi_sync_master_on,
                accounts: runtime.accounts.clone(),
            };
            return (local, Some(runtime));
        }
        // The upstream it follows, only while replication runs, tries to or failed: a
        // server started as a replica before its upstream's address was known keeps the
        // previous run's master info with its threads stopped (`skip-slave-start`);
        // reported as following nobody, the next tick points it (else it would wait,
        // "connecting", for a connection nothing starts).
        let upstream = runtime
            .slave
            .as_ref()
            .filter(|s| s.io != "No" || s.sql_running || s.error.is_some())
            .and_then(|_| server.upstream());
        let streaming = runtime
            .slave
            .as_ref()
            .is_some_and(|s| s.io == "Yes" && s.sql_running);
        // A replica that cannot follow its running upstream (replication error,
        // diverged or purged history) for long enough is stalled.
        let upstream_runs = upstream.as_ref().is_some_and(|u| {
            snapshot
                .members
                .get(u)
                .is_some_and(|m| m.running && matches!(m.role, Role::Primary | Role::Sync))
        });
        let failing = runtime
            .slave
            .as_ref()
            .is_some_and(|s| s.error.is_some() && !(s.io == "Yes" && s.sql_running));
        let stalled = if failing && upstream_runs {
            let since = *self.failing_since.get_or_insert_with(Instant::now);
            since.elapsed() > self.config.stall_after
        } else {
            self.failing_since = None;
            false
        };
        if let Some((errno, error)) = runtime.slave.as_ref().and_then(|s| s.error.clone()) {
            tracing::debug!(member = %self.config.name, errno, %error, "replication error");
        }
        (
            Local::Replica {
                upstream,
                streaming,
                stalled,
                accounts: runtime.accounts.clone(),
            },
            Some(runtime),
        )
    }

    /// The member status for what this tick observed and decided.
    fn update_status(
        &mut self,
        o: &Observed,
        runtime: Option<&Runtime>,
        snapshot: &Snapshot,
        reason: &str,
    ) {
        let sync = o.state.as_ref().and_then(|s| s.sync.clone());
        let role = match (&o.local, &o.leader) {
            (_, _) if o.busy.is_some() => self.status.role,
            (Local::Primary { .. }, Leader::Me) => Role::Primary,
            (Local::Primary { .. }, _) => Role::Deposed,
            (Local::Replica { .. }, _) if sync.as_deref() == Some(o.me.as_str()) => Role::Sync,
            (Local::Replica { .. }, _) => Role::Async,
            _ => Role::Stopped,
        };
        let primary_gtid = snapshot
            .members
            .values()
            .find(|m| m.role == Role::Primary)
            .and_then(|m| m.gtid.clone());
        let running = match (&o.busy, runtime) {
            (Some(_), _) => self.status.running,
            (None, runtime) => runtime.is_some(),
        };
        let (gtid, received, lag, streaming, acks, semi_sync_off) = match runtime {
            Some(r) if !r.read_only => (
                Some(r.gtid_current.clone()),
                None,
                Some(0),
                false,
                r.semi_sync_slave,
                r.semi_sync_master && !r.semi_sync_master_on,
            ),
            Some(r) => (
                Some(r.gtid_current.clone()),
                r.slave.as_ref().map(|s| s.io_pos.clone()),
                primary_gtid.map(|p| r.gtid_current.behind(&p)),
                r.slave.as_ref().is_some_and(|s| s.io == "Yes"),
                r.semi_sync_slave,
                false,
            ),
            None if o.busy.is_some() => (
                self.status.gtid.clone(),
                None,
                None,
                false,
                self.status.acks,
                false,
            ),
            None => (None, None, None, false, false, false),
        };
        self.status = MemberStatus {
            role,
            running,
            streaming,
            gtid,
            received,
            lag,
            acks,
            semi_sync_off,
            generation: o
                .state
                .as_ref()
                .map(|s| s.generation)
                .or(self.status.generation),
            decision: reason.to_string(),
            has_data: match (&o.busy, &o.local) {
                (Some(_), _) => self.status.has_data,
                (None, Local::Empty) => false,
                (None, _) => true,
            },
            ..self.status.clone()
        };
    }

    async fn execute(
        &mut self,
        ctx: &Ctx<Self>,
        decision: Decision,
        mut server: OwnedMutexGuard<Mariadb>,
        snapshot: &Snapshot,
        lease: i64,
        local: &Local,
    ) {
        let state = snapshot.state.as_ref().map(|(s, _)| s.clone());
        let revision = snapshot.state_revision();
        let shared = self.shared(ctx);
        let actions = ctx.actions();
        let me = self.config.name.clone();
        let warn = |what: &str, err: ServerError| {
            tracing::warn!(member = %me, error = %err, "{what} failed");
        };
        match decision {
            Decision::Nothing(_) | Decision::Wait(_) => {}
            Decision::Fence(_) => {
                ctx.set_leading(0);
                server.kill_now();
            }
            Decision::Resign(_) => {
                if matches!(local, Local::Primary { .. }) {
                    server.kill_now();
                }
                ctx.set_leading(0);
                if let Err(err) = ctx.records().release_leadership(lease).await {
                    tracing::warn!(error = %err, "releasing the leader key failed; it expires with the lease");
                }
            }
            Decision::Lock { members, .. } => {
                if let Err(err) = server.lock(&members).await {
                    warn("locking out replicas", err);
                }
            }
            Decision::Unlock { member, .. } => {
                if let Err(err) = server.unlock(&member).await {
                    warn("unlocking a replica", err);
                }
            }
            Decision::CreateAccounts { members, .. } => {
                if let Err(err) = server.create_accounts(&members).await {
                    warn("creating replication accounts", err);
                }
            }
            Decision::DropSync(_) => {
                if let Some(state) = state {
                    let next = ClusterState {
                        sync: None,
                        ..state
                    };
                    match ctx.records().write_state(lease, &next, revision).await {
                        Ok(true) => {
                            tracing::info!(member = %me, "sync dropped; only the primary is promotable until a new one is confirmed")
                        }
                        Ok(false) => {
                            tracing::warn!(member = %me, "dropping the sync lost a race; the next tick looks again")
                        }
                        Err(err) => {
                            tracing::warn!(member = %me, error = %err, "dropping the sync failed")
                        }
                    }
                }
            }
            Decision::Repoint { upstream, .. } => {
                let Some(addr) = self.known.get(&upstream).map(|a| a.mysql.clone()) else {
                    tracing::warn!(%upstream, "address of the upstream unknown; waiting for its registration");
                    return;
                };
                self.failing_since = None;
                if let Err(err) = server.replicate(&upstream, &addr, false).await {
                    warn("re-pointing the replica", err);
                }
            }
            Decision::Bootstrap(_) => actions.spawn("bootstrap", bootstrap(server, shared, lease)),
            Decision::Promote { sync, .. } => {
                let state = state.expect("promotion needs a state document");
                actions.spawn(
                    "promotion",
                    promote(server, shared, lease, state, revision, sync),
                )
            }
            Decision::FinishPromotion { sync, .. } => actions.spawn("promotion", async move {
                server.promote(sync.as_deref()).await?;
                Ok::<_, SupervisorError>(())
            }),
            Decision::Reclaim { sync, .. } => {
                let state = state.expect("reclaiming needs a state document");
                actions.spawn(
                    "reclaiming leadership",
                    reclaim(server, shared, lease, state, revision, sync),
                )
            }
            Decision::StartPrimary { sync, .. } => {
                actions.spawn("starting the primary", start_primary(server, shared, sync))
            }
            Decision::StartReplica { upstream, .. } => {
                let addr = self.known.get(&upstream).map(|a| a.mysql.clone());
                let rejoin = matches!(local, Local::Stopped { upstream: None, .. });
                actions.spawn(
                    "starting the replica",
                    start_replica(server, shared, upstream, addr, rejoin),
                )
            }
            Decision::Follow {
                primary, upstream, ..
            } => {
                let (Some(source), Some(addr)) = (
                    self.known.get(&primary).and_then(|a| a.health.clone()),
                    self.known.get(&upstream).map(|a| a.mysql.clone()),
                ) else {
                    tracing::warn!(%primary, %upstream, "address of the primary or upstream unknown; waiting for its registration");
                    return;
                };
                actions.spawn(
                    "seeding from the primary",
                    follow(server, shared, source, upstream, addr),
                )
            }
            Decision::ChooseSync { candidate, .. } => {
                let state = state.expect("choosing a sync needs a state document");
                let Some(addr) = self.known.get(&candidate).map(|a| a.mysql.clone()) else {
                    return;
                };
                actions.spawn(
                    "choosing a sync",
                    choose_sync(server, shared, lease, state, revision, candidate, addr),
                )
            }
        }
    }
}

async fn bootstrap(
    mut server: OwnedMutexGuard<Mariadb>,
    shared: Shared,
    lease: i64,
) -> Result<(), SupervisorError> {
    let store = shared.store.clone();
    if !store.claim_bootstrap(&shared.leader_record, lease).await? {
        return Err(SupervisorError::LostRace(
            "another member claimed the bootstrap".into(),
        ));
    }
    shared.fence.leading.store(lease, Ordering::SeqCst);
    server.install().await?;
    shared.crashed.store(false, Ordering::SeqCst);
    server.start(&StartAs::Primary).await?;
    server.open_writes(None).await?;
    let state = ClusterState {
        generation: 1,
        primary: shared.me.clone(),
        sync: None,
    };
    if !store.write_state(lease, &state, 0).await? {
        return Err(SupervisorError::LostRace(
            "lost the leader key before writing generation 1".into(),
        ));
    }
    Ok(())
}

async fn take_leader_key(
    shared: &Shared,
    lease: i64,
    next: &ClusterState,
    revision: i64,
    lost: &str,
) -> Result<(), SupervisorError> {
    if !shared
        .store
        .take_leadership(&shared.leader_record, lease, next, revision)
        .await?
    {
        return Err(SupervisorError::LostRace(lost.into()));
    }
    shared.fence.leading.store(lease, Ordering::SeqCst);
    Ok(())
}

async fn promote(
    mut server: OwnedMutexGuard<Mariadb>,
    shared: Shared,
    lease: i64,
    state: ClusterState,
    revision: i64,
    sync: Option<String>,
) -> Result<(), SupervisorError> {
    let next = ClusterState {
        generation: state.generation + 1,
        primary: shared.me.clone(),
        sync: sync.clone(),
    };
    take_leader_key(
        &shared,
        lease,
        &next,
        revision,
        "the leader key or the state changed before I could take it",
    )
    .await?;
    tracing::info!(member = %shared.me, generation = next.generation, "took the leader key; promoting");
    server.promote(sync.as_deref()).await?;
    Ok(())
}

async fn reclaim(
    mut server: OwnedMutexGuard<Mariadb>,
    shared: Shared,
    lease: i64,
    state: ClusterState,
    revision: i64,
    sync: Option<String>,
) -> Result<(), SupervisorError> {
    let next = ClusterState {
        generation: state.generation + 1,
        ..state
    };
    take_leader_key(
        &shared,
        lease,
        &next,
        revision,
        "the leader key or the state changed before I could take it back",
    )
    .await?;
    if server.is_running() {
        server.promote(sync.as_deref()).await?;
    } else {
        shared.crashed.store(false, Ordering::SeqCst);
        server.start(&StartAs::Primary).await?;
        server.open_writes(sync.as_deref()).await?;
    }
    Ok(())
}

async fn start_primary(
    mut server: OwnedMutexGuard<Mariadb>,
    shared: Shared,
    sync: Option<String>,
) -> Result<(), SupervisorError> {
    shared.crashed.store(false, Ordering::SeqCst);
    server.start(&StartAs::Primary).await?;
    server.open_writes(sync.as_deref()).await?;
    Ok(())
}

async fn start_replica(
    mut server: OwnedMutexGuard<Mariadb>,
    shared: Shared,
    upstream: String,
    addr: Option<String>,
    rejoin: bool,
) -> Result<(), SupervisorError> {
    shared.crashed.store(false, Ordering::SeqCst);
    server.start(&StartAs::Replica { rejoin }).await?;
    if let Some(pos) = server.take_seed_position() {
        server.set_slave_pos(&pos).await?;
    }
    let Some(addr) = addr else {
        // Upstream unknown yet: read_only and idle; a later tick points it.
        return Ok(());
    };
    server.replicate(&upstream, &addr, rejoin).await?;
    server.clear_seed_position();
    Ok(())
}

async fn follow(
    mut server: OwnedMutexGuard<Mariadb>,
    shared: Shared,
    source: String,
    upstream: String,
    addr: String,
) -> Result<(), SupervisorError> {
    let pos = server.seed(&source, &upstream).await?;
    tracing::info!(member = %shared.me, %source, gtid = %pos, "seeded from the primary");
    shared.crashed.store(false, Ordering::SeqCst);
    server.start(&StartAs::Replica { rejoin: false }).await?;
    server.set_slave_pos(&pos).await?;
    server.replicate(&upstream, &addr, false).await?;
    server.clear_seed_position();
    Ok(())
}

async fn choose_sync(
    mut server: OwnedMutexGuard<Mariadb>,
    shared: Shared,
    lease: i64,
    state: ClusterState,
    revision: i64,
    candidate: String,
    addr: String,
) -> Result<(), SupervisorError> {
    server.lock_all_but(&candidate).await?;
    // Killed dump threads take a moment to go.
    let started = Instant::now();
    let runtime = loop {
        let runtime = server.runtime().await?;
        if runtime.read_only {
            return Err(SupervisorError::LostRace("no longer a primary".into()));
        }
        match runtime.connected.iter().find(|m| **m != candidate) {
            None => break runtime,
            Some(other) if started.elapsed() > Duration::from_secs(2) => {
                return Err(SupervisorError::LostRace(format!(
                    "{other} is still connected; not choosing a sync while anyone else could acknowledge"
                )))
            }
            Some(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    let target = runtime.gtid_binlog;
    server
        .wait_received(&addr, &target, Duration::from_secs(5))
        .await?;
    let next = ClusterState {
        sync: Some(candidate.clone()),
        ..state
    };
    if !shared.store.write_state(lease, &next, revision).await? {
        return Err(SupervisorError::LostRace(
            "the state document changed or I lost the leader key".into(),
        ));
    }
    tracing::info!(member = %shared.me, sync = %candidate, gtid = %target, "sync confirmed");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_ids_follow_member_numbers() {
        assert_eq!(server_id_of("my0"), 1);
        assert_eq!(server_id_of("my12"), 13);
        let hashed = server_id_of("alpha");
        assert!(hashed > 1_000_000);
        assert_eq!(hashed, server_id_of("alpha"));
    }
}
