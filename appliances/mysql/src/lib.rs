//! `paas-mysql`: the MariaDB appliance.
//!
//! A cluster is N supervisors, each wrapping one real MariaDB 10.11 server, agreeing on
//! roles (primary, semi-sync standby, asyncs) through etcd. The promise to users: a
//! `DATABASE_URL` (pointing at the leader-following endpoint) that keeps working through
//! a failover and never loses a transaction that was acknowledged.
//!
//! Map, in reading order:
//! - [`cluster`]: the records in etcd (state document, member status) and their keys;
//! - [`decide`]: the pure decision function of a supervisor tick, with its rules;
//! - [`supervisor`]: the tick loop, long actions, fencing watchdog, seed server;
//! - [`server`]: the local mariadbd (files, process, queries, seeds); [`gtid`]: GTID
//!   positions and their comparison;
//! - [`info`]: the table of `paas mysql info`; [`provision`]: databases and users for
//!   apps (`MysqlProvider`); [`dump`]: its backup hooks (`mariadb-dump` as the app's
//!   user, restore into a scratch database swapped in with one `RENAME TABLE`); [`recover`]: the explicit restart of a cluster whose etcd
//!   state was lost; [`args`]: the supervisor's command line (the local
//!   launcher and the supervisor skeleton are the appliance core's); [`tls`]: the
//!   client side of the cluster's certificate (how our connections verify members).
//!
//! Invariants:
//! - Only the member named `sync` in the state document (or the recorded `primary`
//!   itself) ever takes the leader key; `sync` is only ever a member whose relay log
//!   held every acknowledged transaction when it was recorded, and from then on it is
//!   the only member allowed to acknowledge.
//! - A primary never acknowledges a commit no replica acknowledged (semi-sync
//!   AFTER_SYNC, wait with no replica, no timeout fallback), and only lets members that
//!   proved their acknowledgements off, or the sync, replicate from it.
//! - [`decide`] and [`gtid`] do no I/O.
//! - This crate talks to etcd only through `paas-coord` and the appliance core.

pub mod args;
pub mod cluster;
pub mod decide;
pub mod dump;
pub mod gtid;
pub mod info;
pub mod provision;
pub mod recover;
pub mod server;
pub mod supervisor;
pub mod tls;
