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
//! - [`supervisor`]: the tick loop, long actions, fencing watchdog ([`supervisor::run`]);
//! - [`pg`]: the local PostgreSQL (files, process, queries); [`store`]: the cluster's
//!   records (the appliance core's, over this engine's types);
//! - [`health`]: what `/primary`, `/replica`, `/health` mean here; [`info`]: the table of
//!   `paas pg info` / `paas cluster status`;
//! - [`provision`]: databases and roles for apps (`PostgresProvider`);
//!   [`dump`]: its backup hooks (`pg_dump -Fc`, `pg_restore --single-transaction`);
//!   [`recover`]: the explicit restart of a cluster whose etcd state was lost;
//! - [`archive`]: continuous WAL archiving and base backups with pgBackRest;
//!   [`pitr`]: the restore of that archive to a moment, into a scratch instance, and
//!   the copy of one app database out of it.
//!
//! Invariants:
//! - Only the member named `sync` in the state document (or the recorded `primary`
//!   itself) ever takes the leader key; `sync` is only ever a member that flushed every
//!   acknowledged commit.
//! - A primary never acknowledges a commit its sync has not flushed
//!   (`synchronous_commit = on`, `synchronous_standby_names` never empty).
//! - [`decide`] does no I/O.
//! - This crate talks to etcd only through `paas-coord` and the appliance core
//!   (`paas-appliance`: records, lease, fencing watchdog, health routes, provider).

pub mod archive;
pub mod args;
pub mod cluster;
pub mod decide;
pub mod dump;
pub mod health;
pub mod info;
pub mod pg;
pub mod pitr;
pub mod provision;
pub mod recover;
pub mod store;
pub mod supervisor;
