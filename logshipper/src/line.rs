//! The unit everything in the aggregator moves: one log line with its origin.
//!
//! Inputs (syslog, Fluent Forward) produce [`LogLine`]s; the store keeps them per app;
//! the journal persists them for drains; drains encode them for their sink.

use serde::{Deserialize, Serialize};
pub use smol_str::SmolStr;

/// Which output stream of a job a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    /// Standard output (syslog MSGID `stdout`).
    Stdout,
    /// Standard error (syslog MSGID `stderr`).
    Stderr,
    /// The sender did not say.
    #[default]
    Unknown,
}

/// One log line with the app, job and stream it belongs to.
///
/// The short origin fields are [`SmolStr`]: app names, process types, job ids and host
/// names fit inline (up to 23 bytes), so decoding a line allocates only its message, and
/// cloning one (followers, drains) copies them without touching the allocator.
///
/// `id` is assigned by the aggregator when the line is accepted and is unique and
/// increasing within one aggregator; drains use it so a sink can deduplicate replays.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// Aggregator-assigned sequence number (0 until accepted).
    #[serde(default)]
    pub id: u64,
    /// App name: syslog APP-NAME, or the first part of a forward tag.
    pub app: SmolStr,
    /// Process type (`web`, `worker`), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process_type: Option<SmolStr>,
    /// Job id, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<SmolStr>,
    /// Sending host, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<SmolStr>,
    /// stdout, stderr or unknown.
    #[serde(default)]
    pub stream: Stream,
    /// Event time in nanoseconds since the Unix epoch (UTC).
    pub timestamp_ns: i64,
    /// The message text, without a trailing newline.
    pub message: String,
}
