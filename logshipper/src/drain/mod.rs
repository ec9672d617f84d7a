//! Drains: ship every accepted line (or one app's lines) to an external system.
//!
//! Flow: config -> pure validation ([`config`]) -> sink build ([`sink`], one file per
//! sink: [`elasticsearch`], [`s3`], [`syslog`], [`forward`]) -> one task per drain
//! ([`manager`]) reading the shared [`crate::journal`] through its own cursor.
//!
//! Invariants:
//! - A drain commits its journal cursor only after its sink stored (or permanently
//!   refused) every line of the batch, so a sink outage of any length loses nothing;
//!   memory stays bounded by the batch limits while the backlog waits on disk.
//! - Delivery is at-least-once. Every line carries its journal id (ES `_id`, S3 key
//!   range and row `id`, syslog `[paas id=".."]`, forward record `id`), so replays after a
//!   restart can be recognised.
//! - Retry decisions ([`retry`]) are pure; only whole-request failures and 429/5xx items
//!   are retried, other refused items go to a dead-letter file ([`dead_letter`]) and
//!   are counted as failed.
//! - Lines the journal dropped over its size limit are counted per drain and replaced by
//!   one marker line in the sink ([`manager::drop_marker`]).

pub mod config;
pub mod dead_letter;
pub mod elasticsearch;
pub mod forward;
pub mod manager;
pub mod retry;
pub mod s3;
pub mod sink;
pub mod status;
pub mod syslog;

pub use config::{DrainConfig, DrainSpec};
pub use manager::{DrainError, DrainManager};
pub use status::{DrainFamilies, DrainStatus};
