//! Log aggregator. See ARCHITECTURE.md for the map of this crate.

pub mod aggregator;
pub mod api;
pub mod dedupe;
pub mod drain;
pub mod encode;
pub mod forward;
pub mod ingest;
pub mod journal;
pub mod line;
pub mod metrics;
pub mod service;
pub mod shipper;
pub mod store;
pub mod syslog;
pub mod text;

pub use line::{LogLine, Stream};
