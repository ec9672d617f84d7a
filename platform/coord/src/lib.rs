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
//! Modules: `coord` (connect), `keys` (namespacing, pure), `docs` (documents and
//! batches), `error`.
//!
//! Invariants:
//! - A write that names a revision or absence either happens exactly as checked or not
//!   at all, reported as [`CoordError::Conflict`] / [`CoordError::NotFound`].
//! - Keys outside the namespace are never read, written or returned.

mod coord;
mod docs;
mod error;
mod keys;

pub use coord::Coord;
pub use docs::Batch;
pub use error::{CoordError, Result};
