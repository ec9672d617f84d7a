//! The platform's data model and its etcd key layout, in one place for every process
//! that reads or writes them: the controller (desired state), the scheduler
//! (placements), the host agent (hosts, job statuses, discovery), the router (routes,
//! backends) and the daemons of `paas-node` (drains, the aggregator's registration).
//!
//! Map:
//! - `model` apps, releases, formations, jobs, hosts, tokens, resources, routes,
//!   discovery values and their name rules (pure; re-exported at the crate root).
//! - `limits` a job's memory and CPU limits, with their parsing (re-exported too).
//! - [`keys`] where each of them lives in etcd, relative to the coordination namespace.
//!
//! It depends on no other crate of the workspace, so every component can share it
//! without importing another component.

pub mod keys;
mod limits;
mod model;

pub use limits::*;
pub use model::*;
