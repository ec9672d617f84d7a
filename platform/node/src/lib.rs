//! `paas-node`: the platform's daemons, which the `paas` binary runs as `paas up`,
//! `paas host` and `paas appliance KIND`.
//!
//! Map:
//! - [`up`]: the single-node platform: data-dir lock, the etcd child, the controller,
//!   then the log aggregator, the runtime and the appliances; shutdown in reverse;
//! - [`host`]: a host agent with a scheduler candidate (also what `paas up` runs);
//! - [`aggregator`]: the log aggregator on its own runtime, registered in discovery,
//!   its drains kept equal to etcd;
//! - [`backups`]: the backup store handed to the controller and the schedule runner;
//! - [`fd_limit`]: the open-file limit raised to its hard value when a daemon starts
//!   (a thousand idle connections must not lock everyone else out of the router);
//! - [`router`]: the HTTP router's flags and the one call that starts it on a host;
//! - [`appliance`]: any appliance's members as jobs of a system app (`paas-<kind>`),
//!   with fixed addresses and data dirs, the leader-following endpoint and the
//!   readiness wait that says what it waits for; what differs is an `ApplianceKind`;
//! - [`postgres`]: PostgreSQL's `ApplianceKind` and `paas appliance postgres`;
//! - [`mysql`]: MariaDB's `ApplianceKind` and `paas appliance mysql`;
//! - [`redis`]: a Redis replication group per resource (the Redis provider's group
//!   runner on the common launcher) and `paas appliance redis`;
//! - [`restore`]: `paas cluster restore` (a backup file laid out in an empty data dir,
//!   etcd's snapshot restored) and the part `paas up` finishes (old process records
//!   deleted, resources re-created and their data loaded).
//!
//! Invariants:
//! - Nothing but the CLI imports this crate; it talks to etcd only through `paas-coord`.
//! - Every child process it starts dies with it (parent-death signal) and is stopped
//!   on shutdown.

pub mod aggregator;
pub mod appliance;
pub mod backups;
pub mod fd_limit;
pub mod host;
pub mod join;
pub mod mysql;
pub mod pki;
pub mod postgres;
pub mod redis;
pub mod restore;
pub mod router;
pub mod up;
