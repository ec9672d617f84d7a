//! The supervisor of one PostgreSQL instance: the tick loop, the long actions, the
//! fencing watchdog and the health API.
//!
//! Every `tick` the loop (1) reads the cluster's records from etcd in one request,
//! (2) looks at the local server unless a long action holds it, (3) calls
//! `decide::decide`, logging the sentence at INFO whenever it differs from the previous
//! tick's (and at DEBUG otherwise, to keep logs readable at 4 ticks a second), (4)
//! publishes the member's status in etcd and on the health API, and (5) carries the
//! decision out. Quick decisions (fence, resign) run inline; long ones (initdb,
//! basebackup, rewind, start, promotion, choosing a sync) run in a task that owns the
//! local server's handle, which is how the next tick knows an action is in progress.
//!
//! Fencing has two layers. The appliance core's watchdog checks every 100 ms,
//! independently of the tick, whether the leader's lease is still safely held
//! (`paas_appliance::fence`, which holds the timing argument) and SIGKILLs PostgreSQL's
//! whole process group the moment it is not. And the primary only
//! acknowledges commits its sync standby flushed, so even a primary whose supervisor is
//! frozen (SIGSTOP: no watchdog runs) cannot acknowledge a write once its sync has been
//! promoted. Backends waiting for the sync are never cancelled, only killed.
//!
//! Choosing a sync (the only way a member becomes promotable) is ordered so that the
//! state document never names a member lacking an acknowledged write:
//! 1. `synchronous_standby_names` := a name nobody has: no commit is acknowledged now;
//! 2. `X` := the primary's WAL flush position; every acknowledged commit is at or below X;
//! 3. wait until the candidate streams and has flushed X;
//! 4. write `sync = candidate` (compare-and-set, only while still holding the leader key);
//! 5. `synchronous_standby_names` := the candidate: commits are acknowledged again.
//!
//! If any step fails, commits stay blocked and the next tick tries again.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use paas_appliance::fence::Fence;
use paas_appliance::leader::LeaderRecord;
use paas_appliance::supervisor::{Ctx, Engine, MemberConfig, RunError, Server, Slot};
use tokio::sync::OwnedMutexGuard;

use crate::archive::{failure, ArchiveConfig, Archiver, ArchiverStats};
use crate::cluster::{keys, ClusterState, MemberStatus, Role};
use crate::decide::{decide, Decision, Leader, Local, Observed, Replica};
use crate::pg::{PgConfig, PgError, Postgres, Runtime, StartAs};
use crate::store::{Snapshot, Store, StoreError};

/// Why the supervisor could not start or an action failed.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    /// The configuration is unusable (bad name, TTL too small...).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// etcd could not be reached or refused a request.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The local PostgreSQL failed an operation.
    #[error(transparent)]
    Pg(#[from] PgError),
    /// The skeleton could not start (the health API could not bind its port).
    #[error(transparent)]
    Run(#[from] RunError),
    /// A conditional write lost against another member.
    #[error("{0}")]
    LostRace(String),
}

/// Everything one supervisor needs.
#[derive(Debug, Clone)]
pub struct SupervisorConfig {
    /// The cluster's name (etcd keys `<prefix>pg/<cluster>/`).
    pub cluster: String,
    /// This member's name: `[a-z0-9_]`, unique in the cluster.
    pub name: String,
    /// etcd client URLs.
    pub etcd_endpoints: Vec<String>,
    /// etcd key prefix, e.g. `/paas/`.
    pub prefix: String,
    /// The instance directory (PGDATA is `<dir>/data`).
    pub dir: PathBuf,
    /// PostgreSQL binaries.
    pub bin_dir: PathBuf,
    /// The address PostgreSQL and the health API listen on.
    pub host: String,
    /// PostgreSQL's port.
    pub pg_port: u16,
    /// The health API's port.
    pub health_port: u16,
    /// The `postgres` superuser's password, the same on every member.
    pub superuser_password: String,
    /// The lease TTL: a dead primary is replaced after at most this long.
    pub ttl: Duration,
    /// How long before the lease's earliest expiry the primary fences itself.
    pub fence_margin: Duration,
    /// The tick interval.
    pub tick: Duration,
    /// How long a standby may fail to stream from a running primary before it rewinds.
    pub stall_after: Duration,
    /// How many members the cluster has (0: unknown); a bootstrap waits until all of
    /// them registered without data.
    pub members: usize,
    /// The cluster's server certificate (`paas_appliance::tls`); `None`: no TLS.
    pub tls_dir: Option<PathBuf>,
    /// Continuous archiving and base backups with pgBackRest; `None`: none.
    pub archive: Option<ArchiveConfig>,
}

impl SupervisorConfig {
    /// A configuration with the defaults for everything but identity and addresses.
    pub fn new(
        cluster: &str,
        name: &str,
        etcd_endpoints: Vec<String>,
        dir: PathBuf,
        pg_port: u16,
        health_port: u16,
        superuser_password: &str,
    ) -> Self {
        SupervisorConfig {
            cluster: cluster.into(),
            name: name.into(),
            etcd_endpoints,
            prefix: "/paas/".into(),
            dir,
            bin_dir: PathBuf::from("/usr/lib/postgresql/15/bin"),
            host: "127.0.0.1".into(),
            pg_port,
            health_port,
            superuser_password: superuser_password.into(),
            ttl: Duration::from_secs(3),
            fence_margin: Duration::from_millis(1000),
            tick: Duration::from_millis(250),
            stall_after: Duration::from_secs(2),
            members: 0,
            tls_dir: None,
            archive: None,
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
        if !ident(&self.name) || self.name == crate::pg::NO_SYNC {
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
        if self.superuser_password.is_empty() || self.superuser_password.contains('\'') {
            return Err(SupervisorError::Config(
                "superuser password must be non-empty and contain no single quote".into(),
            ));
        }
        if self.etcd_endpoints.is_empty() {
            return Err(SupervisorError::Config("no etcd endpoint".into()));
        }
        Ok(())
    }

    fn pg_addr(&self) -> String {
        format!("{}:{}", self.host, self.pg_port)
    }
}

/// What the long actions need: the records and fence from the skeleton, and this
/// engine's own flags.
#[derive(Clone)]
struct Shared {
    me: String,
    store: Store,
    /// The lease id we lead with (0 when not leading) and the postmaster's pid: what
    /// the fencing watchdog watches and kills.
    fence: Fence,
    /// Whether PostgreSQL exited without being asked to since it was last started.
    crashed: Arc<AtomicBool>,
    leader_record: LeaderRecord,
}

impl Server for Postgres {
    async fn stop(&mut self) {
        Postgres::stop(self).await
    }
}

/// Runs the supervisor until `shutdown` completes; then stops PostgreSQL, releases the
/// leader key and revokes the lease (the appliance core's skeleton does the common
/// part: see `paas_appliance::supervisor`).
pub async fn run(
    config: SupervisorConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), SupervisorError> {
    config.validate()?;
    std::fs::create_dir_all(&config.dir).map_err(|e| {
        SupervisorError::Pg(PgError::Io {
            what: format!("creating {}", config.dir.display()),
            source: e,
        })
    })?;
    let postgres = Postgres::new(PgConfig {
        name: config.name.clone(),
        dir: config.dir.clone(),
        bin_dir: config.bin_dir.clone(),
        host: config.host.clone(),
        port: config.pg_port,
        superuser_password: config.superuser_password.clone(),
        tls_dir: config.tls_dir.clone(),
        archive: config.archive.clone(),
    });
    let archiver = match &config.archive {
        None => None,
        Some(archive) => Some(
            Archiver::prepare(
                archive,
                &config.dir,
                &postgres.data_dir(),
                config.pg_port,
                &config.superuser_password,
            )
            .map_err(|e| SupervisorError::Config(format!("archive: {e}")))?,
        ),
    };
    let parse = |port: u16| -> Result<SocketAddr, SupervisorError> {
        format!("{}:{port}", config.host).parse().map_err(|e| {
            SupervisorError::Config(format!(
                "host {:?} with port {port} is not an IP address: {e}",
                config.host
            ))
        })
    };
    let addr = parse(config.pg_port)?;
    let health_addr = parse(config.health_port)?;
    let initial = MemberStatus {
        name: config.name.clone(),
        pg_addr: config.pg_addr(),
        health_addr: health_addr.to_string(),
        role: Role::Stopped,
        running: false,
        streaming: false,
        wal_lsn: None,
        lag_bytes: None,
        generation: None,
        decision: "starting".into(),
        has_data: false,
        archiving: None,
    };
    let member = MemberConfig {
        kind: "postgres".into(),
        name: config.name.clone(),
        etcd_endpoints: config.etcd_endpoints.clone(),
        prefix: config.prefix.clone(),
        keys: keys(&config.cluster),
        health_addr,
        ttl: config.ttl,
        fence_margin: config.fence_margin,
        tick: config.tick,
    };
    tracing::info!(member = %config.name, cluster = %config.cluster, pg = %config.pg_addr(), "starting the postgres supervisor");
    let pid = postgres.pid_cell();
    let engine = PgEngine {
        leader_record: LeaderRecord {
            member: config.name.clone(),
            addr,
        },
        config,
        crashed: Arc::new(AtomicBool::new(false)),
        status: initial.clone(),
        known_addrs: BTreeMap::new(),
        not_streaming_since: None,
        archiving: archiver.map(Archiving::new),
        archive_failing_since: None,
    };
    paas_appliance::supervisor::run(member, engine, postgres, pid, initial, shutdown).await?;
    Ok(())
}

/// The Postgres engine's state between ticks.
struct PgEngine {
    config: SupervisorConfig,
    crashed: Arc<AtomicBool>,
    leader_record: LeaderRecord,
    status: MemberStatus,
    known_addrs: BTreeMap<String, String>,
    not_streaming_since: Option<Instant>,
    archiving: Option<Archiving>,
    /// Since when this member's archiving has been failing (`crate::archive::failure`).
    archive_failing_since: Option<SystemTime>,
}

/// How often the primary asks the repository whether a base backup is due (and makes
/// sure the stanza exists).
const ARCHIVE_CHECK_EVERY: Duration = Duration::from_secs(60);

/// The primary's archive housekeeping: the stanza and the periodic base backups, run
/// off the tick on their own task (they do not need the server's handle), one at a time.
struct Archiving {
    archiver: Archiver,
    busy: Arc<AtomicBool>,
    last: Option<Instant>,
}

impl Archiving {
    fn new(archiver: Archiver) -> Self {
        Archiving {
            archiver,
            busy: Arc::new(AtomicBool::new(false)),
            last: None,
        }
    }

    /// On the leading primary, at most every [`ARCHIVE_CHECK_EVERY`] (or sooner after a
    /// failure): creates the stanza if needed and takes the base backup that is due.
    fn maybe_run(&mut self, me: &str, leading: bool, local: &Local) {
        if !leading || !matches!(local, Local::Primary { .. }) {
            self.last = None;
            return;
        }
        if self.busy.load(Ordering::SeqCst)
            || self.last.is_some_and(|t| t.elapsed() < ARCHIVE_CHECK_EVERY)
        {
            return;
        }
        self.last = Some(Instant::now());
        self.busy.store(true, Ordering::SeqCst);
        let (archiver, busy, me) = (self.archiver.clone(), self.busy.clone(), me.to_string());
        tokio::spawn(async move {
            let outcome = async {
                archiver.ensure_stanza().await?;
                archiver.backup_if_due().await
            }
            .await;
            match outcome {
                Ok(Some(kind)) => tracing::info!(member = %me, ?kind, "base backup taken"),
                Ok(None) => tracing::debug!(member = %me, "no base backup due"),
                Err(err) => {
                    tracing::warn!(member = %me, error = %err, "archive housekeeping failed")
                }
            }
            busy.store(false, Ordering::SeqCst);
        });
    }
}

impl Engine for PgEngine {
    type Server = Postgres;
    type State = ClusterState;
    type Status = MemberStatus;

    async fn tick(&mut self, ctx: &mut Ctx<Self>) {
        self.run(ctx).await
    }
}

impl PgEngine {
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
        if let Err(err) = crate::pg::check_reachable(&self.config.dir) {
            // Said in the member's status, so `paas up` and `paas cluster status` show it.
            let reason = format!("cannot run PostgreSQL: {err}");
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
            self.known_addrs
                .insert(member.name.clone(), member.pg_addr.clone());
        }
        let me = self.config.name.clone();
        let leader = match &snapshot.leader {
            None => Leader::Nobody,
            Some(key) if key.record.member == me && key.lease == lease.id => Leader::Me,
            Some(key) if key.record.member == me => Leader::MyOldLease,
            Some(key) => Leader::Other(key.record.member.clone()),
        };
        if let Some(key) = &snapshot.leader {
            self.known_addrs
                .insert(key.record.member.clone(), key.record.addr.to_string());
        }
        ctx.set_leading(if leader == Leader::Me { lease.id } else { 0 });

        let (local, runtime, archiver, guard, busy) = match ctx.server() {
            Slot::Free(mut guard) => {
                let (local, runtime) = self.observe_local(&mut guard, &snapshot).await;
                let archiver = match (&self.archiving, &runtime) {
                    (Some(_), Some(_)) => guard.archiver_stats().await.ok(),
                    _ => None,
                };
                (local, runtime, archiver, Some(guard), None)
            }
            Slot::Busy(action) => (Local::Starting, None, None, None, Some(action)),
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
        if let Some(stats) = archiver {
            self.note_archiving(&stats);
        }
        ctx.publish(self.status.clone()).await;
        if let Some(archiving) = &mut self.archiving {
            archiving.maybe_run(&self.config.name, leader == Leader::Me, &local);
        }
        if let Some(guard) = guard {
            self.execute(ctx, decision, guard, &snapshot, lease.id, &local)
                .await;
        }
    }

    async fn observe_local(
        &mut self,
        pg: &mut Postgres,
        snapshot: &Snapshot,
    ) -> (Local, Option<Runtime>) {
        if let Some(status) = pg.poll_exit() {
            self.crashed.store(true, Ordering::SeqCst);
            tracing::warn!(member = %self.config.name, %status, "PostgreSQL exited unexpectedly");
        }
        if !pg.is_running() {
            self.not_streaming_since = None;
            let local = if pg.has_data() {
                Local::Stopped {
                    upstream: pg.upstream(),
                    crashed: self.crashed.load(Ordering::SeqCst),
                }
            } else {
                Local::Empty
            };
            return (local, None);
        }
        match pg.runtime().await {
            Ok(runtime @ Runtime::Primary { .. }) => {
                self.not_streaming_since = None;
                let Runtime::Primary {
                    replicas, requires, ..
                } = &runtime
                else {
                    unreachable!()
                };
                let replicas = replicas
                    .iter()
                    .map(|(name, streaming, flush_lsn)| Replica {
                        name: name.clone(),
                        streaming: *streaming,
                        flush_lsn: *flush_lsn,
                    })
                    .collect();
                let requires = requires.clone();
                (Local::Primary { replicas, requires }, Some(runtime))
            }
            Ok(runtime @ Runtime::Standby { streaming, .. }) => {
                let upstream = pg.upstream().unwrap_or_default();
                let upstream_runs = snapshot
                    .members
                    .get(&upstream)
                    .is_some_and(|m| m.running && matches!(m.role, Role::Primary | Role::Sync));
                let stalled = if streaming {
                    self.not_streaming_since = None;
                    false
                } else {
                    let since = *self.not_streaming_since.get_or_insert_with(Instant::now);
                    upstream_runs && since.elapsed() > self.config.stall_after
                };
                (
                    Local::Standby {
                        upstream,
                        streaming,
                        stalled,
                    },
                    Some(runtime),
                )
            }
            Err(err) => {
                tracing::debug!(error = %err, "PostgreSQL does not answer yet");
                (Local::Starting, None)
            }
        }
    }

    /// Puts in the member status whether archiving is failing, from this tick's
    /// `pg_stat_archiver` (kept as it was when the server did not answer).
    fn note_archiving(&mut self, stats: &ArchiverStats) {
        let Some(archiving) = &self.archiving else {
            return;
        };
        let since = failure::failing_since(stats, self.archive_failing_since);
        let line = since.map(|since| {
            failure::sentence(
                since,
                stats,
                archiving.archiver.last_push_error().as_deref(),
            )
        });
        if since.is_some() && self.archive_failing_since.is_none() {
            tracing::warn!(member = %self.config.name, status = line.as_deref().unwrap_or_default(), "archiving is failing; PostgreSQL keeps the WAL and retries");
        } else if since.is_none() && self.archive_failing_since.is_some() {
            tracing::info!(member = %self.config.name, "archiving works again");
        }
        self.archive_failing_since = since;
        self.status.archiving = line;
    }

    /// The member status for what this tick observed and decided.
    fn update_status(
        &mut self,
        o: &Observed,
        runtime: Option<&Runtime>,
        snapshot: &Snapshot,
        reason: &str,
    ) {
        let role = match (&o.local, &o.leader) {
            (_, _) if o.busy.is_some() => self.status.role,
            (Local::Primary { .. }, Leader::Me) => Role::Primary,
            (Local::Primary { .. }, _) => Role::Deposed,
            (Local::Standby { .. }, _)
                if o.state.as_ref().and_then(|s| s.sync.as_deref()) == Some(o.me.as_str()) =>
            {
                Role::Sync
            }
            (Local::Standby { .. }, _) => Role::Async,
            _ => Role::Stopped,
        };
        let primary_lsn = snapshot
            .members
            .values()
            .find(|m| m.role == Role::Primary)
            .and_then(|m| m.wal_lsn);
        let (wal_lsn, lag_bytes, streaming) = match runtime {
            Some(Runtime::Primary { flush_lsn, .. }) => (Some(*flush_lsn), Some(0), false),
            Some(Runtime::Standby {
                replay_lsn,
                streaming,
            }) => (
                Some(*replay_lsn),
                primary_lsn.map(|p| p.saturating_sub(*replay_lsn)),
                *streaming,
            ),
            None => (None, None, false),
        };
        let running = match (&o.busy, runtime) {
            (Some(_), _) => self.status.running,
            (None, runtime) => runtime.is_some(),
        };
        self.status = MemberStatus {
            role,
            running,
            wal_lsn: wal_lsn.or(if o.busy.is_some() {
                self.status.wal_lsn
            } else {
                None
            }),
            lag_bytes,
            streaming,
            // The last generation seen survives a lost state document (recovery
            // starts the next one above it).
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
        mut pg: OwnedMutexGuard<Postgres>,
        snapshot: &Snapshot,
        lease: i64,
        local: &Local,
    ) {
        let state = snapshot.state.as_ref().map(|(s, _)| s.clone());
        let revision = snapshot.state_revision();
        let shared = self.shared(ctx);
        let actions = ctx.actions();
        match decision {
            Decision::Nothing(_) | Decision::Wait(_) => {}
            Decision::Fence(_) => {
                ctx.set_leading(0);
                pg.kill_now();
            }
            Decision::Resign(_) => {
                if matches!(local, Local::Primary { .. }) {
                    pg.kill_now();
                }
                ctx.set_leading(0);
                if let Err(err) = ctx.records().release_leadership(lease).await {
                    tracing::warn!(error = %err, "releasing the leader key failed; it expires with the lease");
                }
            }
            Decision::Bootstrap(_) => actions.spawn("bootstrap", bootstrap(pg, shared, lease)),
            Decision::Promote(_) => {
                let state = state.expect("promotion needs a state document");
                actions.spawn("promotion", promote(pg, shared, lease, state, revision))
            }
            Decision::FinishPromotion(_) => actions.spawn("promotion", async move {
                pg.promote().await?;
                Ok::<_, SupervisorError>(())
            }),
            Decision::Reclaim(_) => {
                let state = state.expect("reclaiming needs a state document");
                actions.spawn(
                    "reclaiming leadership",
                    reclaim(pg, shared, lease, state, revision),
                )
            }
            Decision::StartPrimary(_) => {
                let sync = state.and_then(|s| s.sync);
                actions.spawn("starting the primary", async move {
                    shared.crashed.store(false, Ordering::SeqCst);
                    pg.start(&StartAs::Primary { sync }).await?;
                    Ok::<_, SupervisorError>(())
                })
            }
            Decision::Follow {
                primary, upstream, ..
            } => {
                let (Some(addr), Some(upstream_addr)) = (
                    self.known_addrs.get(&primary).cloned(),
                    self.known_addrs.get(&upstream).cloned(),
                ) else {
                    tracing::warn!(%primary, %upstream, "address of the primary or upstream unknown; waiting for its registration");
                    return;
                };
                actions.spawn(
                    "rebuilding as a standby",
                    follow(pg, shared, (primary, addr), (upstream, upstream_addr)),
                )
            }
            Decision::Repoint { upstream, .. } => {
                let Some(addr) = self.known_addrs.get(&upstream).cloned() else {
                    tracing::warn!(%upstream, "address of the upstream unknown; waiting for its registration");
                    return;
                };
                // The stall clock restarts: the standby gets a fair chance on the new upstream.
                self.not_streaming_since = Some(Instant::now());
                if let Err(err) = pg.repoint(&upstream, &addr).await {
                    tracing::warn!(member = %shared.me, error = %err, "re-pointing the standby failed");
                }
            }
            Decision::RequireSync { sync, .. } => {
                if let Err(err) = pg.set_sync(Some(&sync)).await {
                    tracing::warn!(member = %shared.me, error = %err, "requiring the sync failed");
                }
            }
            Decision::StartStandby { upstream, .. } => {
                // Upstream address unknown (nobody registered it yet): start replaying
                // local WAL only; a later tick re-points the standby.
                let (upstream, addr) = match self.known_addrs.get(&upstream) {
                    Some(addr) => (upstream, addr.clone()),
                    None => (String::new(), String::new()),
                };
                actions.spawn("starting the standby", async move {
                    shared.crashed.store(false, Ordering::SeqCst);
                    pg.start(&StartAs::Standby { upstream, addr }).await?;
                    Ok::<_, SupervisorError>(())
                })
            }
            Decision::ChooseSync { candidate, .. } => {
                let state = state.expect("choosing a sync needs a state document");
                actions.spawn(
                    "choosing a sync standby",
                    choose_sync(pg, shared, lease, state, revision, candidate),
                )
            }
        }
    }
}

async fn bootstrap(
    mut pg: OwnedMutexGuard<Postgres>,
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
    pg.initdb().await?;
    shared.crashed.store(false, Ordering::SeqCst);
    pg.start(&StartAs::Primary { sync: None }).await?;
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

/// Takes the free leader key with `next` as the cluster state, guarded by the state's
/// `revision`, and from then on leads under `lease`; `lost` says what was lost when the
/// key or the state changed first.
async fn take_leader_key(
    shared: &Shared,
    lease: i64,
    next: &ClusterState,
    revision: i64,
    lost: &str,
) -> Result<(), SupervisorError> {
    let store = shared.store.clone();
    if !store
        .take_leadership(&shared.leader_record, lease, next, revision)
        .await?
    {
        return Err(SupervisorError::LostRace(lost.into()));
    }
    shared.fence.leading.store(lease, Ordering::SeqCst);
    Ok(())
}

async fn promote(
    mut pg: OwnedMutexGuard<Postgres>,
    shared: Shared,
    lease: i64,
    state: ClusterState,
    revision: i64,
) -> Result<(), SupervisorError> {
    let next = ClusterState {
        generation: state.generation + 1,
        primary: shared.me.clone(),
        sync: None,
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
    pg.promote().await?;
    Ok(())
}

async fn reclaim(
    mut pg: OwnedMutexGuard<Postgres>,
    shared: Shared,
    lease: i64,
    state: ClusterState,
    revision: i64,
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
    if !pg.is_running() {
        shared.crashed.store(false, Ordering::SeqCst);
        pg.start(&StartAs::Primary {
            sync: next.sync.clone(),
        })
        .await?;
    }
    Ok(())
}

async fn follow(
    mut pg: OwnedMutexGuard<Postgres>,
    shared: Shared,
    (primary, addr): (String, String),
    (upstream, upstream_addr): (String, String),
) -> Result<(), SupervisorError> {
    // A standby is only taken down when the source can serve the rewind or clone: when
    // the primary just died, the running standby stays ready to follow its successor.
    pg.probe_source(&addr).await?;
    pg.stop().await;
    if pg.has_data() {
        if let Err(err) = pg.rewind(&addr).await {
            tracing::warn!(member = %shared.me, error = %err, "pg_rewind failed; cloning afresh with pg_basebackup");
            pg.basebackup(&primary, &addr).await?;
        }
    } else {
        pg.basebackup(&primary, &addr).await?;
    }
    shared.crashed.store(false, Ordering::SeqCst);
    pg.start(&StartAs::Standby {
        upstream,
        addr: upstream_addr,
    })
    .await?;
    Ok(())
}

async fn choose_sync(
    mut pg: OwnedMutexGuard<Postgres>,
    shared: Shared,
    lease: i64,
    state: ClusterState,
    revision: i64,
    candidate: String,
) -> Result<(), SupervisorError> {
    pg.set_sync(None).await?;
    if let Err(err) = confirm_candidate(&mut pg, &candidate).await {
        // Nothing was recorded: the old sync still has every acknowledged write, so
        // commits may wait for it again.
        if let Some(old) = &state.sync {
            pg.set_sync(Some(old)).await?;
        }
        return Err(err);
    }
    let next = ClusterState {
        sync: Some(candidate.clone()),
        ..state
    };
    let store = shared.store.clone();
    if !store.write_state(lease, &next, revision).await? {
        return Err(SupervisorError::LostRace(
            "the state document changed or I lost the leader key".into(),
        ));
    }
    pg.set_sync(Some(&candidate)).await?;
    tracing::info!(member = %shared.me, sync = %candidate, "sync standby confirmed; commits are acknowledged again");
    Ok(())
}

/// Waits until `candidate` streams and has flushed everything the primary had flushed
/// when commits were blocked (so every acknowledged commit).
async fn confirm_candidate(pg: &mut Postgres, candidate: &str) -> Result<(), SupervisorError> {
    let target = match pg.runtime().await? {
        Runtime::Primary { flush_lsn, .. } => flush_lsn,
        Runtime::Standby { .. } => {
            return Err(SupervisorError::LostRace("no longer a primary".into()))
        }
    };
    let started = Instant::now();
    loop {
        if let Runtime::Primary { replicas, .. } = pg.runtime().await? {
            if replicas
                .iter()
                .any(|(name, streaming, flush)| name == candidate && *streaming && *flush >= target)
            {
                break;
            }
        }
        if started.elapsed() > Duration::from_secs(5) {
            return Err(SupervisorError::LostRace(format!(
                "{candidate} did not flush {} in time",
                crate::cluster::format_lsn(target)
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}
