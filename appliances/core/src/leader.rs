//! The value of an appliance cluster's leader key.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// Who leads an appliance cluster and where clients reach it: the value of its leased
/// leader key, which the leader-following endpoint (`paas-router`) forwards to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderRecord {
    /// The leading member's name, for humans and for the members themselves.
    pub member: String,
    /// The address client connections are forwarded to.
    pub addr: SocketAddr,
}
