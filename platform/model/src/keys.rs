//! The runtime's key layout. Keys are relative to the platform's `paas-coord` namespace
//! (the controller's prefix, e.g. `paas` -> `paas/apps/shop` in etcd), which
//! [`paas_coord::Coord::connect`] applies. Values are JSON documents of
//! this crate's types.
//!
//! ```text
//! apps/<app>                         App             controller
//! releases/<app>/<version:020>       Release         controller (immutable)
//! formations/<app>                   Formation       controller
//! hosts/<host>                       Host            agent, on its lease
//! placements/<host>/<job>            Job             scheduler (leader-guarded batches)
//! job-status/<job>                   JobStatus       agent running the job, on its lease
//! services/<app>-<type>/<job>        ServiceEntry    agent, on its lease, while healthy
//! elections/scheduler/leader         scheduler id    leader, on its lease (coord election)
//! ```

/// The scheduler's election name in `paas-coord` (its leader key is
/// `elections/scheduler/leader`).
pub const SCHEDULER_ELECTION: &str = "scheduler";

/// Prefix of all apps.
pub fn apps() -> String {
    "apps/".to_string()
}

/// One app.
pub fn app(app: &str) -> String {
    format!("apps/{app}")
}

/// One release of an app.
pub fn release(app: &str, version: u64) -> String {
    format!("releases/{app}/{version:020}")
}

/// Prefix of all formations.
pub fn formations() -> String {
    "formations/".to_string()
}

/// One app's formation.
pub fn formation(app: &str) -> String {
    format!("formations/{app}")
}

/// Prefix of all live hosts.
pub fn hosts() -> String {
    "hosts/".to_string()
}

/// One host's registration.
pub fn host(host: &str) -> String {
    format!("hosts/{host}")
}

/// Prefix of every placement.
pub fn placements() -> String {
    "placements/".to_string()
}

/// Prefix of one host's placements.
pub fn placements_of(host: &str) -> String {
    format!("placements/{host}/")
}

/// One placement.
pub fn placement(host: &str, job: &str) -> String {
    format!("placements/{host}/{job}")
}

/// Prefix of every job status.
pub fn job_statuses() -> String {
    "job-status/".to_string()
}

/// One job's status.
pub fn job_status(job: &str) -> String {
    format!("job-status/{job}")
}

/// Prefix of one service's instances (`<app>-<type>`).
pub fn service(service: &str) -> String {
    format!("services/{service}/")
}

/// One job's discovery registration.
pub fn service_instance(app: &str, process_type: &str, job: &str) -> String {
    format!("services/{app}-{process_type}/{job}")
}

/// Value of a discovery registration (`services/<app>-<type>/<job>`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ServiceEntry {
    /// `ip:port` the job listens on.
    pub addr: String,
    /// The app.
    pub app: String,
    /// Job id.
    pub job: String,
    /// Process type.
    pub process_type: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        assert_eq!(release("shop", 7), "releases/shop/00000000000000000007");
        assert_eq!(placement("h1", "j1"), "placements/h1/j1");
        assert!(placement("h1", "j1").starts_with(&placements_of("h1")));
        assert!(placements_of("h1").starts_with(&placements()));
        assert_eq!(
            service_instance("shop", "web", "j1"),
            "services/shop-web/j1"
        );
        assert!(service_instance("shop", "web", "j1").starts_with(&service("shop-web")));
        assert_eq!(job_status("j1"), "job-status/j1");
        assert!(app("shop").starts_with(&apps()));
        assert!(host("h1").starts_with(&hosts()));
        assert!(formation("shop").starts_with(&formations()));
    }
}
