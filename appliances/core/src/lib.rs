//! `paas-appliance`: what every appliance (PostgreSQL, MariaDB, Redis, MongoDB) shares,
//! so an engine is only its pure `decide`, its server driver and its provider.
//!
//! Map:
//! - [`args`]: the flags every member's supervisor takes;
//! - [`launcher`]: a local N-member cluster of supervisor processes (tests, benches);
//! - [`addr`]: a loopback address per cluster and fixed member ports, which cannot
//!   collide or be taken by outgoing connections;
//! - [`provider`]: the interface `paas resource add KIND` is served through, and the
//!   registry of kinds the controller holds;
//! - [`records`]: a cluster's records in etcd (state document, leader key, member
//!   registrations) and the guarded transactions that change roles;
//! - [`leader`]: the leader key's value, which the leader-following endpoint follows;
//! - [`lease`]: the member's lease, re-granted after any loss;
//! - [`fence`]: the timing argument, the pure lease clock and the watchdog that kills a
//!   leader's server before its lease can expire;
//! - [`health`]: `/primary`, `/replica`, `/health`, `/status`;
//! - [`os_user`]: the OS user a server runs as, and the directory that keeps it out;
//! - [`process`]: servers started in their own process group, dying with their parent;
//! - [`tls`]: the cluster's server certificate as members receive it (`--tls-dir`) and
//!   install it for their server's OS user;
//! - [`supervisor`]: the skeleton every member runs (etcd, lease, watchdog, health API,
//!   the tick that hands an engine its context, long actions, shutdown);
//! - [`wake`]: what ends a steady engine's idle wait early (a change of the cluster's
//!   records by another member, a new or lost lease).
//!
//! Invariants:
//! - Only `paas-coord` talks to etcd; this crate depends on nothing else of the platform.
//! - [`fence::lease_verdict`] does no I/O.
//! - Every write that changes leadership or the state document is one transaction
//!   guarded by what its writer read.

pub mod addr;
pub mod args;
pub mod fence;
pub mod health;
pub mod launcher;
pub mod leader;
pub mod lease;
pub mod os_user;
pub mod process;
pub mod provider;
pub mod records;
pub mod supervisor;
pub mod tls;
pub mod wake;
