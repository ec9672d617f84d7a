//! `paas-coord`: the platform's coordination library on etcd.
//!
//! etcd is the one source of truth for platform state; this crate is the only code that
//! speaks to it. Everything is JSON values under string keys, all inside one namespace
//! per [`Coord`] (`<namespace>/<key>` in etcd) so clusters and tests sharing an etcd do
//! not collide.
//!
//! ```no_run
//! # async fn demo() -> paas_coord::Result<()> {
//! use paas_coord::{Batch, Coord, CoordError};
//! use std::time::Duration;
//!
//! let coord = Coord::connect(&["http://127.0.0.1:2379"], "prod", Duration::from_secs(5)).await?;
//!
//! // State documents: every write names the revision it read.
//! coord.create("apps/shop", &serde_json::json!({"name": "shop"})).await?;
//! let (mut app, rev): (serde_json::Value, i64) = coord.get("apps/shop").await?.unwrap();
//! app["scale"] = 2.into();
//! match coord.cas("apps/shop", &app, rev).await {
//!     Ok(_new_revision) => {}
//!     Err(CoordError::Conflict { .. }) => { /* someone wrote meanwhile: re-read, retry */ }
//!     Err(e) => return Err(e),
//! }
//!
//! // Several keys atomically: the app and its name index, or neither.
//! let mut batch = Batch::new();
//! batch
//!     .create("apps/blog", &serde_json::json!({"name": "blog"}))?
//!     .create("app-names/blog", &"blog")?;
//! coord.commit(batch).await?;
//! # Ok(()) }
//! ```
//!
//! Keys on one lease, and writes only a current leader can make:
//!
//! ```no_run
//! # async fn demo(coord: paas_coord::Coord) -> paas_coord::Result<()> {
//! use paas_coord::{Batch, CoordError};
//! use std::time::Duration;
//! let ttl = Duration::from_secs(5);
//!
//! // A host key and its job statuses all vanish when this process stops renewing.
//! let lease = coord.grant_lease(ttl).await?;
//! let mut batch = Batch::new();
//! batch
//!     .put_leased("hosts/h1", &"10.0.0.1", &lease)?
//!     .put_leased("job-status/j1", &"up", &lease)?;
//! coord.commit(batch).await?;
//!
//! // A placement that commits only while the leader key is still ours.
//! let leadership = coord.campaign("scheduler", &"h1", ttl).await?;
//! let mut batch = Batch::new();
//! batch.require_leadership(&leadership)?.put("placements/h1/j2", &"web")?;
//! match coord.commit(batch).await {
//!     Err(CoordError::Fenced { .. }) => { /* deposed: stop acting */ }
//!     other => { other?; }
//! }
//! // React to changes instead of polling.
//! let mut placements = coord.watch_prefix::<String>("placements/h1/").await?;
//! let _next = placements.changed().await;
//! # Ok(()) }
//! ```
//!
//! Leases, registrations, watches and elections:
//!
//! ```no_run
//! # async fn demo(coord: paas_coord::Coord) -> paas_coord::Result<()> {
//! use std::time::Duration;
//! let ttl = Duration::from_secs(5);
//!
//! // Service discovery: the key lives while this process renews its lease.
//! let me = coord.register("pg", "pg-1", &serde_json::json!({"addr": "10.0.0.1:5432"}), ttl).await?;
//! me.update(&serde_json::json!({"addr": "10.0.0.1:5432", "role": "primary"})).await?;
//! let mut instances = coord.watch_service::<serde_json::Value>("pg").await?;
//! println!("{:?}", instances.current().instances.keys());
//! let _next = instances.changed().await; // full set after the next change
//!
//! // Leader election with a fencing token; stop acting as soon as `lost()` fires.
//! let leadership = coord.campaign("pg-primary", &"pg-1", ttl).await?;
//! let token = leadership.token(); // strictly greater for every later leader
//! tokio::select! {
//!     reason = leadership.lost() => eprintln!("deposed: {reason}"),
//!     () = async { /* lead, passing `token` along with writes */ } => {}
//! }
//! # drop(token); Ok(()) }
//! ```
//!
//! Modules: `coord` (connect), `keys` (namespacing, pure), `docs` (documents and
//! batches, leased and leader-guarded writes), `lease` (keep-alive and the lost signal;
//! its module doc holds the timing argument), `keeper` (the thread and connection
//! every keep-alive of the process runs on, apart from everything else), `watch` (prefix snapshots without gaps,
//! [`Coord::watch_prefix`]), `registry` (registrations and service watches), `election`
//! (leaders and fencing tokens), `maintenance` (the whole keyspace's snapshot and prefix
//! deletion, for cluster backup and restore), `error`. Decisions are pure functions next to the I/O
//! that uses them: `first_failed_check`,
//! `lease::after_attempt`, `watch::apply`, `election::is_ours`.
//!
//! Invariants:
//! - A write that names a revision or absence either happens exactly as checked or not
//!   at all, reported as [`CoordError::Conflict`] / [`CoordError::NotFound`].
//! - A batch requiring a leadership commits only while etcd still holds that
//!   leadership's leader key (same create revision and lease); otherwise nothing is
//!   written and the error is [`CoordError::Fenced`].
//! - Keys outside the namespace are never read, written or returned.

mod coord;
mod docs;
mod election;
mod error;
mod keeper;
mod keys;
mod lease;
mod maintenance;
mod registry;
mod task;
pub mod tls;
mod watch;

pub use coord::Coord;
pub use docs::{Batch, Entry};
pub use election::{FencingToken, Leader, LeaderWatch, Leadership, LeadershipLost};
pub use error::{CoordError, Result};
pub use lease::{Lease, LeaseState, LostReason};
pub use maintenance::SnapshotInfo;
pub use registry::{Registration, ServiceSnapshot, ServiceWatch};
pub use watch::{DocWatch, Held, Snapshot};
