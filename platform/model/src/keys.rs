//! The etcd key layout of the whole platform: every key the controller, the scheduler,
//! the host agent, the router and the daemons of `paas-node` write or read is built by a
//! function of this module. Keys are relative to the platform's `paas-coord` namespace
//! ([`DEFAULT_PREFIX`], e.g. `paas` -> `paas/apps/shop` in etcd), which
//! `paas_coord::Coord::connect` applies. Values are JSON documents of this crate's
//! types (the drains' `DrainSpec` is `paas-logshipper`'s).
//!
//! ```text
//! apps/<app>                     App                 controller
//! releases/<app>/<version:020>   Release             controller (immutable)
//! formations/<app>               Formation           controller
//! resources/<app>/<id>           Resource            controller
//! tokens/<sha256(secret)>        Token               controller (the secret is never stored)
//! drains/<id>                    DrainSpec           controller; the aggregator follows them
//! routes/<id>                    Route               controller; every router follows them
//! route-names/<domain><path>     route id            controller (one route per domain and path)
//! hosts/<host>                   Host                agent, on its lease
//! placements/<host>/<job>        Job                 scheduler (leader-guarded batches)
//! job-status/<job>               JobStatus           agent running the job, on its lease
//! services/<app>-<type>/<job>    ServiceEntry        agent, on its lease, while healthy
//! services/logaggregator/<host>  AggregatorInstance  aggregator (coord registration)
//! elections/scheduler/leader     scheduler id        leader, on its lease (coord election)
//! router/sticky-key              hex secret          first router (create-if-absent)
//! pki/ca-path                    path (JSON string)  paas up: where DATA_DIR/ca.pem is
//! ```
//!
//! `paas-coord` builds the last segments of registrations (`services/<service>/<id>`)
//! and of elections (`elections/<name>/leader`) itself from the names given here. The
//! appliances' records (`<kind>/<cluster>/...`, e.g. `pg/main/leader`) are laid out by
//! `paas-appliance` and the engines, which do not import this crate.

/// The etcd namespace under which the platform keeps its state (`paas up`, `paas host`).
pub const DEFAULT_PREFIX: &str = "paas";

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

/// Prefix of one app's releases.
pub fn releases_of(app: &str) -> String {
    format!("releases/{app}/")
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

/// Prefix of one app's resources.
pub fn resources_of(app: &str) -> String {
    format!("resources/{app}/")
}

/// One resource of an app.
pub fn resource(app: &str, id: &str) -> String {
    format!("resources/{app}/{id}")
}

/// Prefix of every token.
pub fn tokens() -> String {
    "tokens/".to_string()
}

/// The token whose secret hashes to `hash` (hex SHA-256).
pub fn token(hash: &str) -> String {
    format!("tokens/{hash}")
}

/// Prefix of every drain.
pub fn drains() -> String {
    "drains/".to_string()
}

/// One drain.
pub fn drain(id: &str) -> String {
    format!("drains/{id}")
}

/// Prefix of every stored route.
pub fn routes() -> String {
    "routes/".to_string()
}

/// One route.
pub fn route(id: &str) -> String {
    format!("routes/{id}")
}

/// The key that makes a domain and path taken; its value is the owning route's id.
pub fn route_name(domain: &str, path: Option<&str>) -> String {
    format!("route-names/{domain}{}", path.unwrap_or(""))
}

/// The key that makes what `route` claims taken: its domain and path, or its TCP port.
pub fn route_name_of(route: &crate::Route) -> String {
    match route.tcp_port {
        Some(port) => format!("route-names/tcp:{port}"),
        None => route_name(&route.domain, route.path.as_deref()),
    }
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

/// Prefix of every discovery registration (the router follows them all).
pub fn services() -> String {
    "services/".to_string()
}

/// Prefix of one service's instances (`<app>-<type>`).
pub fn service(service: &str) -> String {
    format!("services/{service}/")
}

/// The discovery service name of an app's process type (`<app>-<type>`).
pub fn service_name(app: &str, process_type: &str) -> String {
    format!("{app}-{process_type}")
}

/// One job's discovery registration.
pub fn service_instance(app: &str, process_type: &str, job: &str) -> String {
    format!("services/{app}-{process_type}/{job}")
}

/// Discovery service name under which the log aggregator registers
/// (`services/logaggregator/<host>`).
pub const AGGREGATOR_SERVICE: &str = "logaggregator";

/// Prefix of the log aggregators' registrations.
pub fn aggregators() -> String {
    service(AGGREGATOR_SERVICE)
}

/// The scheduler's leader key, as `paas-coord`'s election writes it.
pub fn scheduler_leader() -> String {
    format!("elections/{SCHEDULER_ELECTION}/leader")
}

/// The secret every router signs sticky-session cookies with (hex), created by the
/// first router that finds none.
pub fn sticky_key() -> String {
    "router/sticky-key".to_string()
}

/// Where `paas up` published the cluster CA's certificate (an absolute path ending in
/// `ca.pem`, named by the apps' database URLs): joined hosts write the CA they were
/// given at the same path, so those URLs work on every host.
pub fn ca_path() -> String {
    "pki/ca-path".to_string()
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
        assert!(release("shop", 7).starts_with(&releases_of("shop")));
        assert!(!release("shop-2", 7).starts_with(&releases_of("shop")));
        assert_eq!(resource("shop", "r1"), "resources/shop/r1");
        assert!(resource("shop", "r1").starts_with(&resources_of("shop")));
        assert!(token("ab12").starts_with(&tokens()));
        assert!(drain("d1").starts_with(&drains()));
        assert!(route("r1").starts_with(&routes()));
        assert_eq!(
            route_name("shop.example.com", Some("/api")),
            "route-names/shop.example.com/api"
        );
        assert_eq!(
            route_name("shop.example.com", None),
            "route-names/shop.example.com"
        );
        assert_eq!(service(&service_name("shop", "web")), service("shop-web"));
        assert!(service("shop-web").starts_with(&services()));
        assert_eq!(aggregators(), "services/logaggregator/");
        assert_eq!(scheduler_leader(), "elections/scheduler/leader");
    }
}
