//! The platform's state as stored in etcd: apps, releases, formations, tokens,
//! resources, routes (desired), hosts, placements, job statuses and discovery values
//! (runtime). Where each lives is [`crate::keys`].
//!
//! Invariants:
//! - An app always has a current release (`App::release >= 1`); release 1 is created with
//!   the app. Releases are immutable: every change writes release N+1 and moves the app's
//!   pointer in the same revision-checked transaction.
//! - Tokens are stored by the SHA-256 of their secret; the secret itself is never stored.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::Limits;

/// An application: a name and a pointer to its current release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct App {
    /// Unique name, see [`validate_app_name`].
    pub name: String,
    /// When the app was created.
    pub created_at: DateTime<Utc>,
    /// Version of the current release.
    pub release: u64,
}

/// One immutable, numbered configuration of an app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    /// The app this release belongs to.
    pub app: String,
    /// 1, 2, 3... per app.
    pub version: u64,
    /// Environment variables given to every process of the release.
    pub env: BTreeMap<String, String>,
    /// Process types and their commands (a Procfile: `web: ...`, `worker: ...`).
    #[serde(default)]
    pub processes: BTreeMap<String, String>,
    /// The code the processes run, if any was uploaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact: Option<Artifact>,
    /// What changed, for people reading `paas releases`.
    pub description: String,
    /// When the release was made.
    pub created_at: DateTime<Utc>,
}

/// An uploaded code bundle: a gzip'd tarball stored by the controller, fetched by hosts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Artifact {
    /// Content address: hex SHA-256 of the tarball.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
}

/// Desired process counts of an app; the scheduler runs them at the app's current release.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Formation {
    /// The app.
    pub app: String,
    /// Process type -> number of jobs.
    pub processes: BTreeMap<String, u32>,
    /// Process type -> limits of its jobs (types not named are unlimited).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub limits: BTreeMap<String, Limits>,
}

impl Formation {
    /// The limits of `process_type`'s jobs.
    pub fn limits_of(&self, process_type: &str) -> Limits {
        self.limits.get(process_type).copied().unwrap_or_default()
    }
}

/// A host agent, registered on a lease: the key vanishes when the agent dies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Host {
    /// Stable host id.
    pub id: String,
    /// Address of the agent's HTTP API (`ip:port`).
    pub api_addr: String,
    /// IP address jobs on this host listen on and are reached at.
    pub job_ip: String,
    /// When the agent started.
    pub started_at: DateTime<Utc>,
}

/// A job placed on a host by the scheduler (`placements/<host>/<job>`); the host agent
/// runs exactly the placements under its id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    /// Unique job id.
    pub id: String,
    /// The app.
    pub app: String,
    /// Release version whose env, command and artifact the job runs.
    pub release: u64,
    /// Process type (`web`...).
    pub process_type: String,
    /// Host the job is placed on.
    pub host: String,
    /// When the scheduler placed it.
    pub created_at: DateTime<Utc>,
    /// Memory and CPU limits the host enforces (the formation's when it was placed).
    #[serde(default, skip_serializing_if = "Limits::is_unlimited")]
    pub limits: Limits,
}

/// Lifecycle state of a job as reported by its host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Being prepared or started, or waiting for its first health check.
    Starting,
    /// Running (and healthy, when a check is configured).
    Up,
    /// Exited or failed its health check; will be restarted after a backoff.
    Crashed,
    /// Being stopped.
    Stopping,
    /// Stopped for good.
    Down,
}

/// What a host reports about a job (`job-status/<job>`, on the host's lease).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobStatus {
    /// Job id.
    pub id: String,
    /// The app.
    pub app: String,
    /// Release version.
    pub release: u64,
    /// Process type.
    pub process_type: String,
    /// Host running it.
    pub host: String,
    /// Current state.
    pub state: JobState,
    /// Process id of the job's process group leader, while running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// `$PORT` given to the job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// How many times the host restarted it.
    pub restarts: u32,
    /// When the current process started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    /// Last exit code or signal, and why it is in this state.
    #[serde(default)]
    pub message: String,
}

/// What a token may do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Scope {
    /// Everything, including tokens and app creation.
    Admin,
    /// Only the named app: other apps are invisible (404).
    App {
        /// The app this token is bound to.
        app: String,
    },
}

/// A stored API token (its secret is not stored, only the secret's hash as the key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Token {
    /// Short public identifier used to list and revoke the token.
    pub id: String,
    /// What the token may do.
    pub scope: Scope,
    /// Free text given at creation.
    #[serde(default)]
    pub description: String,
    /// When the token was created.
    pub created_at: DateTime<Utc>,
}

/// A provisioned add-on (a database, a cache) attached to an app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resource {
    /// Identifier, unique per app.
    pub id: String,
    /// The app the resource is attached to.
    pub app: String,
    /// Provider kind, e.g. `postgres`.
    pub kind: String,
    /// Variables the provider returned; they are set on the app's release.
    pub env: BTreeMap<String, String>,
    /// Provider-private data needed to deprovision (database and role names...).
    #[serde(default)]
    pub data: serde_json::Value,
    /// When it was provisioned.
    pub created_at: DateTime<Utc>,
}

/// Why a name or a variable was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// App names must match `[a-z][a-z0-9-]{0,29}`.
    #[error("invalid app name {0:?}: must start with a-z, contain only a-z, 0-9 and '-', and be at most 30 characters")]
    App(String),
    /// Environment variable names must match `[A-Za-z_][A-Za-z0-9_]*`.
    #[error("invalid environment variable name {0:?}: must match [A-Za-z_][A-Za-z0-9_]*")]
    EnvKey(String),
    /// Process type names must match `[a-z][a-z0-9_-]{0,29}` (they are part of job and
    /// discovery service names).
    #[error("invalid process type {0:?}: must match [a-z][a-z0-9_-]{{0,29}}")]
    ProcessType(String),
}

/// Checks an app name against `[a-z][a-z0-9-]{0,29}`.
pub fn validate_app_name(name: &str) -> Result<(), NameError> {
    let mut chars = name.chars();
    let ok = matches!(chars.next(), Some('a'..='z'))
        && name.len() <= 30
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '-'));
    if ok {
        Ok(())
    } else {
        Err(NameError::App(name.to_string()))
    }
}

/// Checks an environment variable name against `[A-Za-z_][A-Za-z0-9_]*`.
pub fn validate_env_key(key: &str) -> Result<(), NameError> {
    let mut chars = key.chars();
    let ok = matches!(chars.next(), Some('A'..='Z' | 'a'..='z' | '_'))
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(NameError::EnvKey(key.to_string()))
    }
}

/// Checks a process type name: `[a-z][a-z0-9_-]{0,29}`.
pub fn validate_process_type(name: &str) -> Result<(), NameError> {
    let mut chars = name.chars();
    let ok = matches!(chars.next(), Some('a'..='z'))
        && name.len() <= 30
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '-' | '_'));
    if ok {
        Ok(())
    } else {
        Err(NameError::ProcessType(name.to_string()))
    }
}

/// An HTTP route (`routes/<id>`): requests for `domain` (and, if set, a path under
/// `path`) go to the app's `web` jobs. Every app also has a default route
/// `<app>.<domain>` that the router derives itself; it is not stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// Short random id, unique among routes.
    pub id: String,
    /// The app the route sends traffic to.
    pub app: String,
    /// Lower-case host name the route matches (no port), see [`validate_route`].
    pub domain: String,
    /// Path prefix the route matches, starting with `/`; none matches every path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Whether a client keeps its backend through a signed cookie.
    #[serde(default)]
    pub sticky: bool,
    /// Certificate served for `domain` over HTTPS (by SNI).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<RouteTls>,
    /// A TCP route: every router listens on this port (in [`TCP_ROUTE_PORTS`]) and
    /// forwards each connection to one of the app's `web` jobs; `domain` is empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_port: Option<u16>,
    /// When the route was added.
    pub created_at: DateTime<Utc>,
}

/// The ports TCP routes may take on every router (Flynn's routers kept a range too), clear
/// of the platform's own fixed ports and of the kernel's ephemeral range.
pub const TCP_ROUTE_PORTS: std::ops::RangeInclusive<u16> = 3000..=3999;

/// A route's certificate chain and private key, PEM encoded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteTls {
    /// The certificate chain, leaf first (PEM).
    pub cert_pem: String,
    /// The private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key_pem: String,
}

/// Why a route was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// Domains are DNS names: labels of `a-z`, `0-9`, `-`, separated by dots.
    #[error(
        "invalid domain {0:?}: must be a DNS name (labels of a-z, 0-9 and '-', separated by dots)"
    )]
    Domain(String),
    /// Paths start with `/` and hold no spaces, `?` or `#`.
    #[error("invalid path {0:?}: must start with '/' and contain no whitespace, '?' or '#'")]
    Path(String),
    /// A TCP route's port lies in [`TCP_ROUTE_PORTS`].
    #[error("TCP route port {0} is outside 3000-3999")]
    TcpPort(u16),
}

/// Checks a TCP route's port. Pure.
pub fn validate_tcp_port(port: u16) -> Result<(), RouteError> {
    if TCP_ROUTE_PORTS.contains(&port) {
        Ok(())
    } else {
        Err(RouteError::TcpPort(port))
    }
}

/// Checks a route's domain (already lower-cased) and path. Pure.
pub fn validate_route(domain: &str, path: Option<&str>) -> Result<(), RouteError> {
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| matches!(c, 'a'..='z' | '0'..='9' | '-'))
    };
    if domain.is_empty() || domain.len() > 253 || !domain.split('.').all(label_ok) {
        return Err(RouteError::Domain(domain.to_string()));
    }
    if let Some(path) = path {
        let bad = |c: char| c.is_whitespace() || c == '?' || c == '#';
        if !path.starts_with('/') || path.chars().any(bad) {
            return Err(RouteError::Path(path.to_string()));
        }
    }
    Ok(())
}

/// Value of a discovery registration (`services/<app>-<type>/<job>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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

/// What the log aggregator registers in discovery (`services/logaggregator/<host>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AggregatorInstance {
    /// `ip:port` of its HTTP API (log queries, drain status, metrics).
    pub api: String,
    /// `ip:port` of its syslog input, if enabled.
    #[serde(default)]
    pub syslog: Option<String>,
    /// `ip:port` of its Fluent Forward input, if enabled.
    #[serde(default)]
    pub forward: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_app(name: &str, ok: bool) {
        assert_eq!(validate_app_name(name).is_ok(), ok, "{name:?}");
    }

    #[test]
    fn app_names() {
        check_app("a", true);
        check_app("shop", true);
        check_app("shop-2", true);
        check_app("a23456789012345678901234567890", true);
        check_app("a234567890123456789012345678901", false);
        check_app("", false);
        check_app("2shop", false);
        check_app("-shop", false);
        check_app("Shop", false);
        check_app("shop_2", false);
        check_app("shop.io", false);
        check_app("shöp", false);
    }

    #[test]
    fn routes() {
        for (domain, path, ok) in [
            ("shop.example.com", None, true),
            ("localhost", Some("/api"), true),
            ("a-b.c0", Some("/"), true),
            ("", None, false),
            ("Shop.example.com", None, false),
            ("-shop.example.com", None, false),
            ("shop..com", None, false),
            ("shop.example.com:80", None, false),
            ("shop.example.com", Some("api"), false),
            ("shop.example.com", Some("/a b"), false),
            ("shop.example.com", Some("/a?b"), false),
        ] {
            assert_eq!(
                validate_route(domain, path).is_ok(),
                ok,
                "{domain:?} {path:?}"
            );
        }
    }

    #[test]
    fn process_types() {
        for ok in ["web", "worker_2", "pg-0", "a23456789012345678901234567890"] {
            assert!(validate_process_type(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "Web",
            "2web",
            "_web",
            "we b",
            "web.1",
            "a234567890123456789012345678901",
        ] {
            assert!(validate_process_type(bad).is_err(), "{bad}");
        }
        assert_eq!(
            validate_process_type("Web").unwrap_err().to_string(),
            "invalid process type \"Web\": must match [a-z][a-z0-9_-]{0,29}"
        );
    }

    #[test]
    fn env_keys() {
        for ok in ["A", "_X", "DATABASE_URL", "a1"] {
            assert!(validate_env_key(ok).is_ok(), "{ok}");
        }
        for bad in ["", "1A", "A-B", "A B", "A=B"] {
            assert!(validate_env_key(bad).is_err(), "{bad}");
        }
    }
}
