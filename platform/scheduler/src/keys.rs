//! The runtime's etcd key layout inside the controller's namespace (`paas` -> `paas/...`,
//! the same keys `paas-coord` builds for that namespace).
//! Values are JSON documents of `paas_controller::model` types.
//!
//! ```text
//! apps/<app>                         App             controller
//! releases/<app>/<version:020>       Release         controller (immutable)
//! formations/<app>                   Formation       controller
//! hosts/<host>                       Host            agent, on its lease
//! placements/<host>/<job>            Job             scheduler (leader only)
//! job-status/<job>                   JobStatus       agent running the job, on its lease
//! services/<app>-<type>/<job>        ServiceEntry    agent, on its lease, while healthy
//! leaders/scheduler                  scheduler id    leader, on its lease
//! ```

/// Builds every key of the layout under one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// Keys under the namespace `prefix`, spelled as `paas-coord` does: leading and
    /// trailing slashes are ignored (`paas`, `/paas/` -> `paas/...`); empty means none.
    pub fn new(prefix: &str) -> Keys {
        let name = prefix.trim_matches('/');
        let prefix = if name.is_empty() {
            String::new()
        } else {
            format!("{name}/")
        };
        Keys { prefix }
    }

    /// Prefix of all apps.
    pub fn apps(&self) -> String {
        format!("{}apps/", self.prefix)
    }

    /// One release of an app.
    pub fn release(&self, app: &str, version: u64) -> String {
        format!("{}releases/{app}/{version:020}", self.prefix)
    }

    /// Prefix of all formations.
    pub fn formations(&self) -> String {
        format!("{}formations/", self.prefix)
    }

    /// One app's formation.
    pub fn formation(&self, app: &str) -> String {
        format!("{}formations/{app}", self.prefix)
    }

    /// Prefix of all live hosts.
    pub fn hosts(&self) -> String {
        format!("{}hosts/", self.prefix)
    }

    /// One host's registration.
    pub fn host(&self, host: &str) -> String {
        format!("{}hosts/{host}", self.prefix)
    }

    /// Prefix of every placement.
    pub fn placements(&self) -> String {
        format!("{}placements/", self.prefix)
    }

    /// Prefix of one host's placements.
    pub fn placements_of(&self, host: &str) -> String {
        format!("{}placements/{host}/", self.prefix)
    }

    /// One placement.
    pub fn placement(&self, host: &str, job: &str) -> String {
        format!("{}placements/{host}/{job}", self.prefix)
    }

    /// Prefix of every job status.
    pub fn job_statuses(&self) -> String {
        format!("{}job-status/", self.prefix)
    }

    /// One job's status.
    pub fn job_status(&self, job: &str) -> String {
        format!("{}job-status/{job}", self.prefix)
    }

    /// Prefix of one service's instances (`<app>-<type>`).
    pub fn service(&self, service: &str) -> String {
        format!("{}services/{service}/", self.prefix)
    }

    /// One job's discovery registration.
    pub fn service_instance(&self, app: &str, process_type: &str, job: &str) -> String {
        format!("{}services/{app}-{process_type}/{job}", self.prefix)
    }

    /// The scheduler's leader key.
    pub fn scheduler_leader(&self) -> String {
        format!("{}leaders/scheduler", self.prefix)
    }
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
        let k = Keys::new("paas");
        assert_eq!(k, Keys::new("/paas/"));
        assert_eq!(
            k.release("shop", 7),
            "paas/releases/shop/00000000000000000007"
        );
        assert_eq!(k.placement("h1", "j1"), "paas/placements/h1/j1");
        assert_eq!(k.placements_of("h1"), "paas/placements/h1/");
        assert_eq!(
            k.service_instance("shop", "web", "j1"),
            "paas/services/shop-web/j1"
        );
        assert_eq!(k.job_status("j1"), "paas/job-status/j1");
        assert_eq!(Keys::new("").apps(), "apps/");
    }
}
