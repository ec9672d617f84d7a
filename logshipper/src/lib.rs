//! Log aggregator. See ARCHITECTURE.md for the map of this crate.

pub mod encode;
pub mod journal;
pub mod forward;
pub mod line;
pub mod syslog;

pub use line::{LogLine, Stream};
