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
//! batches), `lease` (keep-alive and the lost signal; its module doc holds the timing
//! argument), `watch` (prefix snapshots without gaps), `registry` (registrations and
//! service watches), `election` (leaders and fencing tokens), `error`. Decisions are
//! pure functions next to the I/O that uses them: `first_failed_check`,
//! `lease::after_attempt`, `watch::apply`, `election::is_ours`.
//!
//! Invariants:
//! - A write that names a revision or absence either happens exactly as checked or not
//!   at all, reported as [`CoordError::Conflict`] / [`CoordError::NotFound`].
//! - Keys outside the namespace are never read, written or returned.

mod coord;
mod docs;
mod election;
mod error;
mod keys;
mod lease;
mod registry;
mod task;
mod watch;

pub use coord::Coord;
pub use docs::Batch;
pub use election::{FencingToken, Leader, LeaderWatch, Leadership, LeadershipLost};
pub use error::{CoordError, Result};
pub use lease::{Lease, LeaseState, LostReason};
pub use registry::{Registration, ServiceSnapshot, ServiceWatch};
