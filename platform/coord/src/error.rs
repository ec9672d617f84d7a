//! The crate's error type. Callers match on [`CoordError::Conflict`] and
//! [`CoordError::NotFound`] to drive their read-modify-write retry loops; everything
//! else is an outage or a bug to report.

use std::time::Duration;

/// Why a coordination operation did not happen.
#[derive(Debug, thiserror::Error)]
pub enum CoordError {
    /// A revision-checked write lost, so nothing was written: the key exists (create),
    /// or changed since it was read (cas, delete, batch update). Re-read and decide again.
    #[error("conflict on {key}: changed concurrently or already exists")]
    Conflict {
        /// The first key whose check failed.
        key: String,
    },
    /// A key that must exist does not: a revision-checked update or delete of a key
    /// deleted since it was read, or an in-place update of a registration whose lease
    /// expired.
    #[error("{key} does not exist")]
    NotFound {
        /// The key (without the prefix).
        key: String,
    },
    /// A batch guarded by a leadership ([`crate::Batch::require_leadership`]) found the
    /// leader key deleted or held by a later leadership, or the leadership already lost:
    /// this process no longer leads, and nothing was written.
    #[error("not leader any more: {key} no longer holds this leadership")]
    Fenced {
        /// The leader key.
        key: String,
    },
    /// etcd could not be reached within the connect timeout.
    #[error("etcd at {endpoints:?} unreachable within {timeout:?}: {reason}")]
    Unreachable {
        /// The endpoints that were tried.
        endpoints: Vec<String>,
        /// The connect timeout.
        timeout: Duration,
        /// The last error seen.
        reason: String,
    },
    /// etcd answered with an error or the connection failed mid-request.
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    /// A value could not be turned into JSON (e.g. a map with non-string keys).
    #[error("cannot encode the value for {key}: {source}")]
    Encode {
        /// The key the value was meant for.
        key: String,
        /// What serde_json found.
        #[source]
        source: serde_json::Error,
    },
    /// A stored value is not valid JSON for the requested type.
    #[error("value of {key} is not a valid document: {source}")]
    Decode {
        /// The key (without the prefix) holding the bad value.
        key: String,
        /// What serde_json found.
        #[source]
        source: serde_json::Error,
    },
    /// Writing a snapshot to its destination failed ([`crate::Coord::snapshot`]).
    #[error("cannot write the etcd snapshot: {0}")]
    Sink(#[source] std::io::Error),
    /// A lease this operation depends on is gone (expired, revoked or unrenewable).
    #[error("lease {lease:x} lost: {reason}")]
    LeaseLost {
        /// The lease id.
        lease: i64,
        /// Why it is considered lost.
        reason: String,
    },
}

/// Result alias used across the crate.
pub type Result<T, E = CoordError> = std::result::Result<T, E>;
