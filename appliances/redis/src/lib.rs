//! `paas-redis`: the Redis appliance.
//!
//! Every Redis resource is its own replication group: N supervisors (2 by default), each
//! wrapping one real Redis 7 server, agreeing on roles (primary, replicas) through etcd.
//! The promise to users: a `REDIS_URL` (pointing at the leader-following endpoint of
//! `paas-router`) that keeps working through a failover, and a write followed by
//! `WAIT 1 <timeout>` that returned at least 1 is never lost by a failover. Redis
//! replication is asynchronous: a write without `WAIT` may be lost when the primary dies.
//!
//! Map, in reading order:
//! - [`cluster`]: the records in etcd (state document, member status) and their keys;
//! - [`decide`]: the pure decision function of a supervisor tick, with its rules;
//! - [`server`]: the local redis-server (configuration, process, commands); [`tls`]:
//!   connections to a group with a certificate (`rediss://`, verified against its CA);
//!   [`secret`]: the group's secret and the two passwords derived from it;
//! - [`health`]: what `/primary`, `/replica`, `/health` mean here;
//! - [`supervisor`]: the engine on the appliance core's skeleton (tick, actions);
//!   [`args`]: its command line (`paas-redis-supervisor`, `paas appliance redis`);
//! - [`launcher`]: a group's spec and its members' command line for the core launcher;
//! - [`provision`]: a dedicated group per resource (`RedisProvider`), started through a
//!   [`provision::GroupRunner`] the platform plugs in; [`info`]: `paas redis info`;
//!   [`backup`]: its backup hooks (SCAN + DUMP of every key as the app's user; restore
//!   into unused database indexes, swapped in with `SWAPDB` in one `MULTI`);
//!   [`recover`]: `paas redis recover`, a group whose state document etcd lost.
//!
//! Invariants:
//! - [`decide`] does no I/O.
//! - Only the member holding the leader key runs a writable server; a replica is always
//!   started with `replicaof`, and a writable server without the key is killed.
//! - A new primary is the live replica with the highest offset among replicas whose
//!   offsets are final (detached from the lost primary).
//! - Never bootstrap over data: a group without a state document starts only when no
//!   member has data.
//! - This crate talks to etcd only through `paas-coord` and the appliance core.

pub mod args;
pub mod backup;
pub mod cluster;
pub mod decide;
pub mod health;
pub mod info;
pub mod launcher;
pub mod provision;
pub mod recover;
pub mod secret;
pub mod server;
pub mod supervisor;
pub mod tls;
