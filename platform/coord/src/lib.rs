//! `paas-coord`: coordination on etcd, the one source of truth of the platform.
//!
//! - [`Coord`]: a connected client whose every key lives under a prefix, so clusters
//!   and tests sharing one etcd never collide.
//! - Documents (`doc.rs`): JSON values with their mod-revision, and multi-key
//!   transactions ([`Op`]) whose compares make read-modify-write safe (compare-and-set).
//!
//! Invariant: every key passed to this API is relative to the prefix; nothing outside
//! this crate builds etcd keys or talks to etcd directly.

mod doc;
mod error;

pub use doc::{Doc, Op};
pub use error::CoordError;

use std::time::Duration;

use etcd_client::{Client, ConnectOptions};

/// How long connecting (and each request's first byte) may take before giving up.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A connected etcd client scoped to a key prefix. Cheap to clone.
#[derive(Clone)]
pub struct Coord {
    client: Client,
    prefix: String,
}

impl Coord {
    /// Connects to `endpoints` and checks that etcd answers; all keys are put under
    /// `prefix` (e.g. `/paas/`).
    pub async fn connect(endpoints: &[String], prefix: &str) -> Result<Coord, CoordError> {
        let opts = ConnectOptions::new()
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_timeout(Duration::from_secs(10))
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2));
        let mut client = Client::connect(endpoints, Some(opts)).await?;
        // connect() is lazy about cluster health; ask for something real.
        client.status().await?;
        Ok(Coord {
            client,
            prefix: prefix.to_string(),
        })
    }

    /// The key prefix this client works under.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The underlying etcd client, for the other modules of this crate.
    pub(crate) fn client(&self) -> Client {
        self.client.clone()
    }

    /// `key` with the prefix.
    pub(crate) fn full_key(&self, key: &str) -> String {
        format!("{}{}", self.prefix, key)
    }

    /// `full` without the prefix.
    pub(crate) fn strip<'a>(&self, full: &'a str) -> &'a str {
        full.strip_prefix(self.prefix.as_str()).unwrap_or(full)
    }
}
