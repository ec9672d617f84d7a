//! `paas-postgres`: the PostgreSQL appliance.
//!
//! A cluster is N supervisors, each wrapping one real PostgreSQL 15 server, agreeing on
//! roles (primary, sync, async) through etcd. The promise to users: a `DATABASE_URL`
//! (pointing at the leader-following endpoint of `paas-router`) that keeps working
//! through a failover and never loses a write that was acknowledged.
//!
//! Map, in reading order:
//! - [`cluster`]: the records in etcd (state document, leader record, member status) and
//!   their keys;
//! - [`decide`]: the pure decision function of a supervisor tick, with its rules;
//! - [`fence`]: the pure lease clock that decides when a primary must stop itself;
//! - [`supervisor`]: the tick loop, long actions, fencing watchdog ([`supervisor::run`]);
//! - [`pg`]: the local PostgreSQL (files, process, queries); [`store`] and [`lease`]: etcd;
//! - [`health`]: `/primary`, `/replica`, `/health`, `/status`; [`info`]: the table of
//!   `paas pg info` / `paas cluster status`;
//! - [`launcher`]: starts a local N-member cluster of supervisor processes (tests, bench,
//!   `paas up`); [`provision`]: databases and roles for apps (`PostgresProvider`).
//!
//! Invariants:
//! - Only the member named `sync` in the state document (or the recorded `primary`
//!   itself) ever takes the leader key; `sync` is only ever a member that flushed every
//!   acknowledged commit.
//! - A primary never acknowledges a commit its sync has not flushed
//!   (`synchronous_commit = on`, `synchronous_standby_names` never empty).
//! - [`decide`] and [`fence`] do no I/O.

pub mod args;
pub mod cluster;
pub mod decide;
pub mod fence;
pub mod health;
pub mod info;
pub mod launcher;
pub mod lease;
pub mod pg;
pub mod provision;
pub mod store;
pub mod supervisor;
