//! Errors of the coordination library.

/// Why a coordination call failed.
#[derive(Debug, thiserror::Error)]
pub enum CoordError {
    /// A transaction's compare failed: the key exists (create), or changed since it was
    /// read (compare-and-set), or is missing.
    #[error("conflict on {key}: changed concurrently or already exists")]
    Conflict {
        /// The first key whose compare failed (or all keys of the transaction).
        key: String,
    },
    /// A stored value is not the JSON the caller expected.
    #[error("cannot decode {key}: {source}")]
    Decode {
        /// Key of the bad value.
        key: String,
        /// The JSON error.
        source: serde_json::Error,
    },
    /// A value could not be encoded as JSON.
    #[error("cannot encode value for {key}: {source}")]
    Encode {
        /// Key of the value.
        key: String,
        /// The JSON error.
        source: serde_json::Error,
    },
    /// etcd could not be reached or answered with an error.
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
}
