//! The supervisor of one redis-server: the Redis engine on the appliance core's skeleton
//! (`paas_appliance::supervisor`: etcd, lease, fencing watchdog, health API, tick loop,
//! long actions, shutdown).
//!
//! Every tick: read the group's records in one request, look at the local server unless
//! a long action holds it, call `decide::decide`, say the sentence, publish the member's
//! status (health API and etcd) and carry the decision out. Quick decisions (fence,
//! resign, re-point, `min-replicas-to-write`) run inline; long ones (bootstrap, start,
//! promotion, reclaim) run on a task that owns the server handle.
//!
//! Pace: a tick that decided nothing (no action running, no replica still connecting)
//! lets the next one wait [`SupervisorConfig::idle_tick`]; the core wakes it earlier on
//! any change of the group's records by another member or of the lease, and on the
//! local redis-server exiting ([`paas_appliance::wake`], `Engine::wants_tick`).
//! Otherwise ticks come every [`SupervisorConfig::tick`]. An idle group thus costs etcd
//! a watch and a lease per member instead of four reads a second.
//!
//! Fencing has two layers. The core's watchdog kills redis-server's process group the
//! moment the leader's lease may be expiring (`paas_appliance::fence` holds the timing
//! argument). And a primary whose supervisor is frozen (no watchdog runs) loses its
//! replicas when a new primary is chosen (they detach or follow the new one), so after
//! `min-replicas-max-lag` seconds it refuses writes (`min-replicas-to-write 1`); writes
//! it accepts meanwhile are never confirmed by `WAIT 1`, since no replica acknowledges
//! them.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use paas_appliance::fence::Fence;
use paas_appliance::leader::LeaderRecord;
use paas_appliance::records::{Records, RecordsError, Snapshot};
use paas_appliance::supervisor::{Ctx, Engine, MemberConfig, RunError, Server, Slot};
use tokio::sync::OwnedMutexGuard;

use crate::cluster::{keys, GroupState, MemberStatus, Role};
use crate::decide::{decide, required_replicas, Decision, Leader, Local, Observed};
use crate::server::{Fsync, Redis, Runtime, ServerConfig, ServerError, StartAs};

/// The group's records.
type Store = Records<GroupState, MemberStatus>;

/// Why the supervisor could not start or an action failed.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    /// The configuration is unusable (bad name, weak password, TTL too small...).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// etcd could not be reached or refused a request.
    #[error(transparent)]
    Records(#[from] RecordsError),
    /// The local redis-server failed an operation.
    #[error(transparent)]
    Server(#[from] ServerError),
    /// The skeleton could not start (health API port).
    #[error(transparent)]
    Run(#[from] RunError),
    /// A conditional write lost against another member.
    #[error("{0}")]
    LostRace(String),
}

/// Everything one supervisor needs.
#[derive(Debug, Clone)]
pub struct SupervisorConfig {
    /// The group's name (etcd keys `<prefix>redis/<group>/`).
    pub group: String,
    /// This member's name: `[a-z0-9_]`, unique in the group.
    pub name: String,
    /// etcd client URLs.
    pub etcd_endpoints: Vec<String>,
    /// etcd key prefix, e.g. `paas/`.
    pub prefix: String,
    /// The member directory (Redis's data in `<dir>/data`).
    pub dir: PathBuf,
    /// The address redis-server and the health API listen on.
    pub host: String,
    /// redis-server's port.
    pub port: u16,
    /// The health API's port.
    pub health_port: u16,
    /// The app's password (`default` user), the same on every member.
    pub password: String,
    /// The supervisors' password (admin user, replication), the same on every member.
    pub admin_password: String,
    /// The AOF fsync policy.
    pub fsync: Fsync,
    /// `min-replicas-max-lag` in seconds.
    pub max_lag_secs: u32,
    /// The lease TTL: a dead primary is replaced after at most about this long.
    pub ttl: Duration,
    /// How long before the lease's earliest expiry the primary fences itself.
    pub fence_margin: Duration,
    /// The tick interval while something is to be done or awaited (starting, failing
    /// over), and the shortest time between two ticks.
    pub tick: Duration,
    /// The longest wait between two ticks while the group is steady: a change of the
    /// group's records or of the lease ends it early, so this only bounds how late a
    /// crash of the local redis-server is seen.
    pub idle_tick: Duration,
    /// How many members the group has (0: unknown); a bootstrap waits for all of them.
    pub members: usize,
    /// The group's server certificate (`paas_appliance::tls`); `None`: no TLS.
    pub tls_dir: Option<PathBuf>,
}

/// The shortest password accepted: 22 characters of `[A-Za-z0-9_-]` carry more than
/// 128 bits when random.
pub const MIN_PASSWORD_LEN: usize = 22;

impl SupervisorConfig {
    /// Checks the configuration without touching anything.
    pub fn validate(&self) -> Result<(), SupervisorError> {
        let ident = |s: &str| {
            !s.is_empty()
                && s.len() <= 64
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        };
        if !ident(&self.name) {
            return Err(SupervisorError::Config(format!(
                "member name {:?} must be 1-64 of [a-z0-9_]",
                self.name
            )));
        }
        if !ident(&self.group) {
            return Err(SupervisorError::Config(format!(
                "group name {:?} must be 1-64 of [a-z0-9_]",
                self.group
            )));
        }
        for (what, password) in [
            ("password", &self.password),
            ("admin password", &self.admin_password),
        ] {
            let safe = password
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if password.len() < MIN_PASSWORD_LEN || !safe {
                return Err(SupervisorError::Config(format!(
                    "the {what} must be at least {MIN_PASSWORD_LEN} characters of [A-Za-z0-9_-]"
                )));
            }
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
        if self.max_lag_secs == 0 {
            return Err(SupervisorError::Config(
                "min-replicas-max-lag must be at least 1 s".into(),
            ));
        }
        if self.idle_tick < self.tick {
            return Err(SupervisorError::Config(
                "the idle tick must not be shorter than the tick".into(),
            ));
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

impl Server for Redis {
    async fn stop(&mut self) {
        Redis::stop(self).await
    }
}

/// Runs the supervisor until `shutdown` completes; then stops redis-server, releases
/// the leader key and revokes the lease.
pub async fn run(
    config: SupervisorConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), SupervisorError> {
    config.validate()?;
    std::fs::create_dir_all(&config.dir).map_err(|source| {
        SupervisorError::Server(ServerError::Io {
            what: format!("creating {}", config.dir.display()),
            source,
        })
    })?;
    let redis = Redis::new(ServerConfig {
        dir: config.dir.clone(),
        host: config.host.clone(),
        port: config.port,
        password: config.password.clone(),
        admin_password: config.admin_password.clone(),
        fsync: config.fsync,
        max_lag_secs: config.max_lag_secs,
        tls_dir: config.tls_dir.clone(),
    });
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
        upstream: None,
        link_up: false,
        offset: None,
        lag_bytes: None,
        generation: None,
        decision: "starting".into(),
        has_data: redis.has_data(),
    };
    let member = MemberConfig {
        kind: "redis".into(),
        name: config.name.clone(),
        etcd_endpoints: config.etcd_endpoints.clone(),
        prefix: config.prefix.clone(),
        keys: keys(&config.group),
        health_addr,
        ttl: config.ttl,
        fence_margin: config.fence_margin,
        tick: config.tick,
    };
    tracing::info!(member = %config.name, group = %config.group, redis = %addr, "starting the redis supervisor");
    let pid = redis.pid_cell();
    let engine = RedisEngine {
        leader_record: LeaderRecord {
            member: config.name.clone(),
            addr,
        },
        config,
        crashed: Arc::new(AtomicBool::new(false)),
        status: initial.clone(),
        known_addrs: BTreeMap::new(),
        published: None,
        steady: false,
        server_pid: pid.clone(),
    };
    paas_appliance::supervisor::run(member, engine, redis, pid, initial, shutdown).await?;
    Ok(())
}

/// The Redis engine's state between ticks.
struct RedisEngine {
    config: SupervisorConfig,
    /// Whether redis-server exited without being asked to since it was last started.
    crashed: Arc<AtomicBool>,
    leader_record: LeaderRecord,
    status: MemberStatus,
    /// Members' redis addresses, from registrations and the leader key.
    known_addrs: BTreeMap<String, String>,
    /// What was last published, under which lease, and when.
    published: Option<(i64, MemberStatus, Instant)>,
    /// Whether the last tick found nothing to do and no action running: the next one
    /// may wait [`SupervisorConfig::idle_tick`] unless a record changes.
    steady: bool,
    /// The running redis-server's pid (0: none), shared with the server handle.
    server_pid: Arc<AtomicI32>,
}

/// How often an unchanged status is published again anyway (a lost registration write
/// is repaired within this long).
const REPUBLISH_EVERY: Duration = Duration::from_secs(5);

impl Engine for RedisEngine {
    type Server = Redis;
    type State = GroupState;
    type Status = MemberStatus;

    async fn tick(&mut self, ctx: &mut Ctx<Self>) {
        self.steady = false;
        self.run(ctx).await
    }

    /// Steady: the idle tick (a change of the group's records wakes the member at
    /// once); otherwise the short tick, still woken by changes.
    fn next_wait(&self) -> Option<Duration> {
        Some(if self.steady {
            self.config.idle_tick
        } else {
            self.config.tick
        })
    }

    /// The local redis-server exited (a crashed primary is handed over at once, not
    /// up to an idle tick later): one non-blocking `waitid` that leaves the child for
    /// the tick to reap.
    fn wants_tick(&self) -> bool {
        crate::server::has_exited(self.server_pid.load(Ordering::SeqCst))
    }
}

/// What a long action needs.
#[derive(Clone)]
struct Shared {
    store: Store,
    fence: Fence,
    crashed: Arc<AtomicBool>,
    leader_record: LeaderRecord,
}

impl RedisEngine {
    async fn run(&mut self, ctx: &mut Ctx<Self>) {
        let Some(lease) = ctx.lease() else {
            ctx.say("no etcd lease: cannot take part until etcd answers");
            return;
        };
        if let Err(err) = crate::server::check_reachable(&self.config.dir) {
            // Said in the member's status, so `paas redis info` shows it.
            let reason = format!("cannot run redis-server: {err}");
            ctx.say(&reason);
            self.status.decision = reason;
            self.publish(ctx, lease.id).await;
            return;
        }
        let snapshot = match ctx.records().read().await {
            Ok(snapshot) => snapshot,
            Err(err) => {
                ctx.say(&format!("cannot read the group state from etcd: {err}"));
                return;
            }
        };
        for member in snapshot.members.values() {
            self.known_addrs
                .insert(member.name.clone(), member.addr.clone());
        }
        if let Some(key) = &snapshot.leader {
            self.known_addrs
                .insert(key.record.member.clone(), key.record.addr.to_string());
        }
        let me = self.config.name.clone();
        let leader = match &snapshot.leader {
            None => Leader::Nobody,
            Some(key) if key.record.member == me && key.lease == lease.id => Leader::Me,
            Some(key) if key.record.member == me => Leader::MyOldLease,
            Some(key) => Leader::Other(key.record.member.clone()),
        };
        ctx.set_leading(if leader == Leader::Me { lease.id } else { 0 });

        let (local, runtime, guard, busy) = match ctx.server() {
            Slot::Free(mut guard) => {
                let (local, runtime) = self.observe_local(&mut guard).await;
                (local, runtime, Some(guard), None)
            }
            Slot::Busy(action) => (Local::Starting, None, None, Some(action)),
        };
        let observed = Observed {
            me,
            state: snapshot.state.as_ref().map(|(s, _)| s.clone()),
            leader,
            members: snapshot.members.clone(),
            local,
            busy,
            expected_members: self.config.members,
        };
        let decision = decide(&observed);
        // A replica still connecting to its primary is not steady: its link coming up
        // is seen (and published) by the short tick.
        self.steady = observed.busy.is_none()
            && matches!(decision, Decision::Nothing(_))
            && !matches!(observed.local, Local::Replica { link_up: false, .. });
        ctx.say(decision.reason());
        self.update_status(&observed, runtime.as_ref(), &snapshot, decision.reason());
        self.publish(ctx, lease.id).await;
        if let Some(guard) = guard {
            self.execute(ctx, decision, guard, &snapshot, lease.id, &observed)
                .await;
        }
    }

    /// Publishes the status (health API and etcd) when it changed, when the lease did, or
    /// every [`REPUBLISH_EVERY`]: an idle group then costs etcd one read per member and
    /// tick instead of a read and a write, which matters with many groups on a host.
    async fn publish(&mut self, ctx: &mut Ctx<Self>, lease: i64) {
        let fresh = match &self.published {
            Some((l, status, at)) => {
                *l != lease || *status != self.status || at.elapsed() >= REPUBLISH_EVERY
            }
            None => true,
        };
        if fresh {
            ctx.publish(self.status.clone()).await;
            self.published = Some((lease, self.status.clone(), Instant::now()));
        }
    }

    async fn observe_local(&mut self, redis: &mut Redis) -> (Local, Option<Runtime>) {
        if let Some(status) = redis.poll_exit() {
            self.crashed.store(true, Ordering::SeqCst);
            tracing::warn!(member = %self.config.name, %status, "redis-server exited unexpectedly");
        }
        if !redis.is_running() {
            let local = if redis.has_data() {
                Local::Stopped {
                    crashed: self.crashed.load(Ordering::SeqCst),
                }
            } else {
                Local::Empty
            };
            return (local, None);
        }
        match redis.runtime().await {
            Ok(runtime) => {
                let local = match &runtime {
                    Runtime::Primary { min_replicas, .. } => Local::Primary {
                        min_replicas: *min_replicas,
                    },
                    Runtime::Replica { link_up, offset } => Local::Replica {
                        upstream: redis.upstream().map(str::to_string),
                        link_up: *link_up,
                        offset: *offset,
                    },
                };
                (local, Some(runtime))
            }
            Err(err) => {
                tracing::debug!(error = %err, "redis-server does not answer");
                (Local::Starting, None)
            }
        }
    }

    fn update_status(
        &mut self,
        o: &Observed,
        runtime: Option<&Runtime>,
        snapshot: &Snapshot<GroupState, MemberStatus>,
        reason: &str,
    ) {
        let previous = self.status.clone();
        if o.busy.is_some() {
            self.status = MemberStatus {
                decision: reason.to_string(),
                generation: o
                    .state
                    .as_ref()
                    .map(|s| s.generation)
                    .or(previous.generation),
                ..previous
            };
            return;
        }
        let role = match (&o.local, &o.leader) {
            (Local::Primary { .. }, Leader::Me) => Role::Primary,
            (Local::Primary { .. }, _) => Role::Deposed,
            (Local::Replica { .. }, _) => Role::Replica,
            _ => Role::Stopped,
        };
        let primary_offset = snapshot
            .members
            .values()
            .find(|m| m.role == Role::Primary)
            .and_then(|m| m.offset);
        let (upstream, link_up, offset, lag_bytes) = match (&o.local, runtime) {
            (
                Local::Replica {
                    upstream, link_up, ..
                },
                Some(Runtime::Replica { offset, .. }),
            ) => (
                upstream.clone(),
                *link_up,
                Some(*offset),
                primary_offset.map(|p| p.saturating_sub(*offset)),
            ),
            (_, Some(Runtime::Primary { offset, .. })) => (None, false, Some(*offset), Some(0)),
            // A stopped server keeps the offset last seen while it ran: what `paas redis
            // recover` compares when no server runs.
            (Local::Stopped { .. }, None) => (None, false, previous.offset, None),
            _ => (None, false, None, None),
        };
        self.status = MemberStatus {
            role,
            running: runtime.is_some(),
            upstream,
            link_up,
            offset,
            lag_bytes,
            // The last generation seen survives a lost state document.
            generation: o
                .state
                .as_ref()
                .map(|s| s.generation)
                .or(previous.generation),
            decision: reason.to_string(),
            has_data: !matches!(o.local, Local::Empty),
            ..previous
        };
    }

    fn shared(&self, ctx: &Ctx<Self>) -> Shared {
        Shared {
            store: ctx.records().clone(),
            fence: ctx.fence().clone(),
            crashed: self.crashed.clone(),
            leader_record: self.leader_record.clone(),
        }
    }

    async fn execute(
        &mut self,
        ctx: &mut Ctx<Self>,
        decision: Decision,
        mut redis: OwnedMutexGuard<Redis>,
        snapshot: &Snapshot<GroupState, MemberStatus>,
        lease: i64,
        o: &Observed,
    ) {
        let state = snapshot.state.as_ref().map(|(s, _)| s.clone());
        let revision = snapshot.state_revision();
        let shared = self.shared(ctx);
        let min_replicas = required_replicas(o);
        let me = self.config.name.clone();
        let actions = ctx.actions().clone();
        match decision {
            Decision::Nothing(_) | Decision::Wait(_) => {}
            Decision::Fence(_) => {
                ctx.set_leading(0);
                redis.kill_now();
            }
            Decision::Resign(_) => {
                if matches!(o.local, Local::Primary { .. }) {
                    redis.kill_now();
                }
                ctx.set_leading(0);
                if let Err(err) = ctx.records().release_leadership(lease).await {
                    tracing::warn!(error = %err, "releasing the leader key failed; it expires with the lease");
                }
            }
            Decision::Bootstrap(_) => {
                let first = GroupState {
                    generation: 1,
                    primary: me,
                };
                actions.spawn("bootstrap", async move {
                    take_leader_key(&shared, lease, &first, 0).await?;
                    shared.crashed.store(false, Ordering::SeqCst);
                    redis.start(&StartAs::Primary { min_replicas }).await?;
                    Ok::<_, SupervisorError>(())
                });
            }
            Decision::Promote(_) => {
                let Some(state) = state else { return };
                let next = GroupState {
                    generation: state.generation + 1,
                    primary: me,
                };
                actions.spawn("promotion", async move {
                    take_leader_key(&shared, lease, &next, revision).await?;
                    tracing::info!(
                        generation = next.generation,
                        "took the leader key; promoting"
                    );
                    redis.promote(min_replicas).await?;
                    Ok::<_, SupervisorError>(())
                });
            }
            Decision::FinishPromotion(_) => {
                actions.spawn("promotion", async move {
                    redis.promote(min_replicas).await?;
                    Ok::<_, SupervisorError>(())
                });
            }
            Decision::Reclaim(_) => {
                let Some(state) = state else { return };
                let next = GroupState {
                    generation: state.generation + 1,
                    primary: me,
                };
                actions.spawn("reclaiming leadership", async move {
                    take_leader_key(&shared, lease, &next, revision).await?;
                    if !redis.is_running() {
                        shared.crashed.store(false, Ordering::SeqCst);
                        redis.start(&StartAs::Primary { min_replicas }).await?;
                    }
                    Ok::<_, SupervisorError>(())
                });
            }
            Decision::StartPrimary(_) => {
                actions.spawn("starting the primary", async move {
                    shared.crashed.store(false, Ordering::SeqCst);
                    redis.start(&StartAs::Primary { min_replicas }).await?;
                    Ok::<_, SupervisorError>(())
                });
            }
            Decision::StartReplica { upstream, .. } => {
                // An upstream nobody registered yet: start detached; a later tick
                // re-points the replica.
                let upstream = upstream
                    .and_then(|name| self.known_addrs.get(&name).map(|a| (name, a.clone())));
                actions.spawn("starting the replica", async move {
                    shared.crashed.store(false, Ordering::SeqCst);
                    redis.start(&StartAs::Replica { upstream }).await?;
                    Ok::<_, SupervisorError>(())
                });
            }
            Decision::Repoint { upstream, .. } => {
                let target = match &upstream {
                    Some(name) => match self.known_addrs.get(name) {
                        Some(addr) => Some((name.as_str(), addr.as_str())),
                        None => {
                            tracing::warn!(upstream = %name, "address of the new upstream unknown; waiting for its registration");
                            return;
                        }
                    },
                    None => None,
                };
                if let Err(err) = redis.repoint(target).await {
                    tracing::warn!(error = %err, "re-pointing the replica failed");
                }
            }
            Decision::RequireReplicas { count, .. } => {
                if let Err(err) = redis.set_min_replicas(count).await {
                    tracing::warn!(error = %err, "setting min-replicas-to-write failed");
                }
            }
        }
    }
}

/// Takes the free leader key with `next` as the group's state, guarded by the state's
/// `revision` (0: must not exist), and from then on leads under `lease`.
async fn take_leader_key(
    shared: &Shared,
    lease: i64,
    next: &GroupState,
    revision: i64,
) -> Result<(), SupervisorError> {
    if !shared
        .store
        .take_leadership(&shared.leader_record, lease, next, revision)
        .await?
    {
        return Err(SupervisorError::LostRace(
            "the leader key or the group state changed before I could take it".into(),
        ));
    }
    shared
        .fence
        .leading
        .store(lease, std::sync::atomic::Ordering::SeqCst);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> SupervisorConfig {
        SupervisorConfig {
            group: "redis_0a1b".into(),
            name: "r0".into(),
            etcd_endpoints: vec!["http://127.0.0.1:2379".into()],
            prefix: "paas/".into(),
            dir: PathBuf::from("/tmp/r0"),
            host: "127.1.2.3".into(),
            port: 16379,
            health_port: 18208,
            password: "a".repeat(32),
            admin_password: "b".repeat(32),
            fsync: Fsync::Everysec,
            max_lag_secs: 2,
            ttl: Duration::from_secs(3),
            fence_margin: Duration::from_secs(1),
            tick: Duration::from_millis(250),
            idle_tick: Duration::from_secs(1),
            members: 2,
            tls_dir: None,
        }
    }

    #[test]
    fn weak_or_unsafe_passwords_are_refused() {
        assert!(config().validate().is_ok());
        let mut short = config();
        short.password = "short".into();
        assert!(short.validate().is_err());
        let mut spaced = config();
        spaced.admin_password = format!("{} x", "a".repeat(30));
        assert!(spaced.validate().is_err());
    }
}
