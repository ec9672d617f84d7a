//! Redis for apps: `paas resource add redis -a APP [--members N]` creates a dedicated
//! replication group for the resource and returns its `REDIS_URL`; `resource remove`
//! stops the group and deletes its data and its records.
//!
//! The provider decides what a group is (name, passwords, directory, size) and waits
//! until the group answers `PING` through its leader-following endpoint, so the URL it
//! returns works at once. How members are started is not its business: it is handed a
//! [`GroupRunner`] (the node runs members as jobs of a system app `paas-redis-<group>`
//! behind a `paas-router` endpoint; the tests and the bench run them as local processes),
//! because an appliance may not import the platform.
//!
//! Names: the group is the resource id without its dashes (`redis-0a1b2c3d4e` ->
//! `redis0a1b2c3d4e`); its directory is `<base_dir>/<group>`, which must not exist yet:
//! a group never starts over data it did not create. Each group has its own secret (256
//! random bits), from which the app's password (in `REDIS_URL`) and the supervisors' are
//! derived (`crate::secret`); the latter never leaves the platform.
//!
//! TLS: when the platform has a CA ([`ProviderConfig::ca_file`]) its runner starts
//! groups with a certificate of it, and a member's only port speaks TLS (the plain port
//! is off, on one host as on many, so no client can send the password in clear by
//! mistake). `REDIS_URL` is then `rediss://` and `REDIS_TLS_CA` names the CA to verify
//! the server with: redis-rs `Client::build_with_tls` with it as `root_cert`,
//! `redis-cli --tls --cacert $REDIS_TLS_CA`, redis-py `ssl_ca_certs`. Groups made
//! before keep their `redis://` URL (their members run without `--tls-dir`).
//!
//! Whole-cluster restore (`Provider::reinstate`): a group is started again, empty,
//! under the secret its members had (the runner's record of it, see
//! [`GroupRunner::recorded_secret`]) and with its endpoint where its `REDIS_URL` says
//! ([`GroupRunner::relaunch`]), so the app's URL is unchanged; its keys then come back
//! through the backup hooks.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use paas_appliance::provider::{
    BackupInfo, BackupSink, Options, Provider, ProviderError, Provisioned, RestoreSource,
};
use paas_appliance::records::Records;
use paas_coord::{Batch, Coord};
use serde::{Deserialize, Serialize};

use crate::cluster::keys;
use crate::launcher::GroupSpec;

/// How long `provision` waits for a new group to answer `PING`.
pub const READY_LIMIT: Duration = Duration::from_secs(60);

/// The most members a group may have.
pub const MAX_MEMBERS: usize = 5;

/// Starts and stops groups: the capability the platform plugs into the provider.
#[async_trait::async_trait]
pub trait GroupRunner: Send + Sync {
    /// Starts `spec`'s members and its leader-following endpoint; returns the address
    /// apps connect to.
    async fn launch(&self, spec: &GroupSpec) -> Result<SocketAddr, ProviderError>;
    /// Stops group `group`'s members and endpoint (its directory is the provider's to
    /// delete); succeeds if they are already gone.
    async fn stop(&self, group: &str) -> Result<(), ProviderError>;
    /// The secret an earlier launch of `group` gave its members, where the runner keeps
    /// a record that outlives the group's directory (the node's: the group's system
    /// app in etcd, which a whole-cluster restore brings back); `None` when it has none.
    /// The provider itself records only the app's password, which is derived from it.
    async fn recorded_secret(&self, group: &str) -> Result<Option<String>, ProviderError>;
    /// Starts `spec`'s group again for a whole-cluster restore, with its endpoint on
    /// `listen` (what its `REDIS_URL` names) and its members speaking TLS when `tls`;
    /// fails, naming the address, when something else holds it. A group this runner
    /// already serves there (a restore resumed after a failed start) is left running.
    async fn relaunch(
        &self,
        spec: &GroupSpec,
        listen: SocketAddr,
        tls: bool,
    ) -> Result<SocketAddr, ProviderError>;
}

/// What `provision` remembers for `deprovision` (the controller stores it opaquely).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceData {
    /// The group's name.
    pub group: String,
    /// Its directory when it was made. Removal goes by the group's name under the
    /// provider's `base_dir` instead: a restored cluster's groups are under its own
    /// data dir, and this one may be another cluster's.
    pub dir: PathBuf,
    /// How many members it has.
    pub members: usize,
    /// The app's `REDIS_URL`, which backups connect with (recorded since backups exist:
    /// `None` for older resources, whose backups take it from their environment, see
    /// [`complete_data`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// Where groups go and how their members reach etcd.
#[derive(Debug, Clone)]
pub struct ProviderConfig {
    /// Groups' directories go under it.
    pub base_dir: PathBuf,
    /// etcd client URLs for the members.
    pub etcd_endpoints: Vec<String>,
    /// etcd key prefix.
    pub prefix: String,
    /// Lease TTL in seconds for the members.
    pub ttl_secs: u64,
    /// Members of a group when `--members` is not given.
    pub default_members: usize,
    /// The CA whose certificates the runner gives new groups, when it does: URLs are
    /// then `rediss://` and every connection verifies the server against it.
    pub ca_file: Option<PathBuf>,
}

/// The variables an app connects with (pure): `REDIS_URL`, and `REDIS_TLS_CA` when the
/// group speaks TLS.
pub fn client_env(
    endpoint: SocketAddr,
    password: &str,
    ca_file: Option<&std::path::Path>,
) -> BTreeMap<String, String> {
    let scheme = crate::tls::scheme(ca_file.is_some());
    let mut env = BTreeMap::from([(
        "REDIS_URL".to_string(),
        format!("{scheme}default:{password}@{endpoint}"),
    )]);
    if let Some(ca) = ca_file {
        env.insert("REDIS_TLS_CA".into(), ca.display().to_string());
    }
    env
}

/// What a `REDIS_URL` of ours says (see [`client_env`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlParts {
    /// `rediss://`: the group speaks TLS.
    pub tls: bool,
    /// The app's password.
    pub password: String,
    /// The leader-following endpoint.
    pub endpoint: SocketAddr,
}

/// Reads a URL [`client_env`] made (pure): `redis[s]://default:PASSWORD@IP:PORT`, with
/// or without a trailing `/`; `None` for anything else.
pub fn parse_url(url: &str) -> Option<UrlParts> {
    let (tls, rest) = match url.strip_prefix(crate::tls::scheme(true)) {
        Some(rest) => (true, rest),
        None => (false, url.strip_prefix(crate::tls::scheme(false))?),
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let (user_info, host) = rest.rsplit_once('@')?;
    let password = user_info.strip_prefix("default:")?;
    if password.is_empty() {
        return None;
    }
    Some(UrlParts {
        tls,
        password: password.to_string(),
        endpoint: host.parse().ok()?,
    })
}

/// Creates and removes replication groups.
pub struct RedisProvider {
    config: ProviderConfig,
    runner: Arc<dyn GroupRunner>,
    coord: Coord,
}

/// The group name of resource `id`, if it yields a valid one: the id without its dashes,
/// so it is both a member-record name (`[a-z0-9_]`) and part of an app name
/// (`paas-redis-<group>`).
pub fn group_name(id: &str) -> Option<String> {
    let name = id.replace('-', "");
    let valid = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    valid.then_some(name)
}

/// The member count asked for in `options` (`members`), or `default`.
pub fn members_option(options: &Options, default: usize) -> Result<usize, ProviderError> {
    for key in options.keys() {
        if key != "members" {
            return Err(ProviderError(format!(
                "unknown option {key:?}; redis takes: members"
            )));
        }
    }
    let Some(value) = options.get("members") else {
        return Ok(default);
    };
    match value.parse::<usize>() {
        Ok(n) if (1..=MAX_MEMBERS).contains(&n) => Ok(n),
        _ => Err(ProviderError(format!(
            "members must be a number from 1 to {MAX_MEMBERS}, not {value:?}"
        ))),
    }
}

impl RedisProvider {
    /// A provider putting groups under `config.base_dir`, started by `runner`; `coord`
    /// reads the groups' records (`paas redis info`) and removes them with the group.
    pub fn new(config: ProviderConfig, runner: Arc<dyn GroupRunner>, coord: Coord) -> Self {
        RedisProvider {
            config,
            runner,
            coord,
        }
    }

    /// Waits until `PING` answers through `endpoint` with `password`, over TLS verified
    /// against the provider's CA when `tls`.
    async fn wait_ready(
        &self,
        endpoint: SocketAddr,
        password: &str,
        tls: bool,
    ) -> Result<(), ProviderError> {
        let ca = self.config.ca_file.as_deref().filter(|_| tls);
        let url = format!(
            "{}default:{password}@{endpoint}/",
            crate::tls::scheme(ca.is_some())
        );
        let client = crate::tls::open(&url, ca).map_err(|e| ProviderError(e.to_string()))?;
        let started = Instant::now();
        let mut last = String::new();
        while started.elapsed() < READY_LIMIT {
            let ping = async {
                let mut conn = client.get_multiplexed_async_connection().await?;
                redis::cmd("PING").query_async::<String>(&mut conn).await
            };
            match tokio::time::timeout(Duration::from_secs(2), ping).await {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(e)) => last = e.to_string(),
                Err(_) => last = "PING timed out".into(),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(ProviderError(format!(
            "the group did not answer PING within {READY_LIMIT:?}: {last}"
        )))
    }

    /// Deletes the group's records left in etcd (its state document; the leader key and
    /// registrations are bound to leases and vanish with the members).
    async fn delete_records(&self, group: &str) -> Result<(), ProviderError> {
        let keys = keys(group);
        let entries = self
            .coord
            .entries(keys.base())
            .await
            .map_err(|e| ProviderError(format!("reading the group's records: {e}")))?;
        let mut batch = Batch::new();
        for entry in &entries {
            batch.delete(&entry.key, entry.mod_revision);
        }
        if !entries.is_empty() {
            // A conflict means a record changed meanwhile (a member still running):
            // reported, so the removal can be retried.
            self.coord
                .commit(batch)
                .await
                .map_err(|e| ProviderError(format!("deleting the group's records: {e}")))?;
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl Provider for RedisProvider {
    async fn provision(
        &self,
        app: &str,
        id: &str,
        options: &Options,
    ) -> Result<Provisioned, ProviderError> {
        let members = members_option(options, self.config.default_members)?;
        let group = group_name(id)
            .ok_or_else(|| ProviderError(format!("cannot derive a group name from {id:?}")))?;
        let dir = self.config.base_dir.join(&group);
        if dir.exists() {
            return Err(ProviderError(format!(
                "{} already exists: a new group never starts over existing data",
                dir.display()
            )));
        }
        std::fs::create_dir_all(&dir)
            .map_err(|e| ProviderError(format!("creating {}: {e}", dir.display())))?;
        let secret = crate::secret::generate();
        let password = crate::secret::app_password(&secret);
        let spec = GroupSpec {
            group: group.clone(),
            members,
            base_dir: dir.clone(),
            secret,
            etcd_endpoints: self.config.etcd_endpoints.clone(),
            prefix: self.config.prefix.clone(),
            ttl_secs: self.config.ttl_secs,
            // The runner issues the certificate (the node's, from the cluster CA): the
            // provider has none to hand over.
            tls_dir: None,
        };
        let started = Instant::now();
        let launched = match self.runner.launch(&spec).await {
            Ok(endpoint) => self
                .wait_ready(endpoint, &password, self.config.ca_file.is_some())
                .await
                .map(|()| endpoint),
            Err(err) => Err(err),
        };
        let endpoint = match launched {
            Ok(endpoint) => endpoint,
            Err(err) => {
                // Nothing was handed out: stop whatever started and leave no directory
                // behind.
                if let Err(stop) = self.runner.stop(&group).await {
                    tracing::warn!(%group, error = %stop, "stopping a group that failed to start");
                } else {
                    let _ = std::fs::remove_dir_all(&dir);
                }
                return Err(err);
            }
        };
        tracing::info!(%app, %id, %group, members, took = ?started.elapsed(), "redis group provisioned");
        let env = client_env(endpoint, &password, self.config.ca_file.as_deref());
        let url = env["REDIS_URL"].clone();
        let data = ResourceData {
            group,
            dir,
            members,
            url: Some(url),
        };
        Ok(Provisioned {
            env,
            data: serde_json::to_value(&data).map_err(|e| ProviderError(e.to_string()))?,
        })
    }

    async fn deprovision(
        &self,
        app: &str,
        id: &str,
        data: &serde_json::Value,
    ) -> Result<(), ProviderError> {
        let data: ResourceData = serde_json::from_value(data.clone())
            .map_err(|e| ProviderError(format!("unrecognised resource data: {e}")))?;
        self.runner.stop(&data.group).await?;
        let dir = self.config.base_dir.join(&data.group);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(ProviderError(format!("deleting {}: {e}", dir.display()))),
        }
        self.delete_records(&data.group).await?;
        tracing::info!(%app, %id, group = %data.group, "redis group removed with its data");
        Ok(())
    }

    fn has_backups(&self) -> bool {
        true
    }

    fn backup_data(
        &self,
        data: &serde_json::Value,
        env: &BTreeMap<String, String>,
    ) -> serde_json::Value {
        complete_data(data, env)
    }

    async fn backup(
        &self,
        app: &str,
        id: &str,
        data: &serde_json::Value,
        sink: BackupSink<'_>,
    ) -> Result<BackupInfo, ProviderError> {
        let url = backup_url(id, data)?;
        crate::backup::dump(&url, self.config.ca_file.as_deref(), sink)
            .await
            .map_err(|e| {
                tracing::warn!(%app, %id, error = %e, "redis backup failed");
                ProviderError(e.to_string())
            })
    }

    async fn restore(
        &self,
        app: &str,
        id: &str,
        data: &serde_json::Value,
        source: RestoreSource<'_>,
    ) -> Result<(), ProviderError> {
        let url = backup_url(id, data)?;
        crate::backup::restore(&url, self.config.ca_file.as_deref(), source)
            .await
            .map_err(|e| {
                tracing::warn!(%app, %id, error = %e, "redis restore failed");
                ProviderError(e.to_string())
            })
    }

    fn can_reinstate(&self) -> bool {
        true
    }

    /// Starts the resource's group again, empty, for a whole-cluster restore: under the
    /// secret its members had (the runner's record; it must give the password in
    /// `REDIS_URL`), with `--members` as recorded and its endpoint where `REDIS_URL`
    /// says, over TLS when the URL is `rediss://`; then waits until that URL answers.
    /// The app's `REDIS_URL` is thus unchanged; the keys come afterwards from a backup.
    /// A failure leaves what started running (nothing when the address is taken): the
    /// next attempt finds it and only waits for it.
    async fn reinstate(
        &self,
        app: &str,
        id: &str,
        env: &BTreeMap<String, String>,
        data: &serde_json::Value,
    ) -> Result<(), ProviderError> {
        let fail = |message: String| {
            tracing::error!(%app, %id, error = %message, "redis reinstate failed");
            ProviderError(message)
        };
        let known: ResourceData = serde_json::from_value(complete_data(data, env))
            .map_err(|e| fail(format!("unrecognised resource data: {e}")))?;
        let url = known
            .url
            .as_deref()
            .ok_or_else(|| fail("the resource records no REDIS_URL".into()))?;
        // The URL holds the password: never in a message.
        let target = parse_url(url).ok_or_else(|| {
            fail("its REDIS_URL is not redis[s]://default:PASSWORD@IP:PORT".into())
        })?;
        if target.tls && self.config.ca_file.is_none() {
            return Err(fail(
                "its REDIS_URL is rediss:// but this cluster has no CA to certify the group".into(),
            ));
        }
        let group = known.group;
        let secret = self
            .runner
            .recorded_secret(&group)
            .await?
            .ok_or_else(|| fail(format!("no secret is recorded for group {group}")))?;
        if crate::secret::app_password(&secret) != target.password {
            return Err(fail(format!(
                "the secret recorded for group {group} does not give the password in its \
                 REDIS_URL"
            )));
        }
        let dir = self.config.base_dir.join(&group);
        std::fs::create_dir_all(&dir)
            .map_err(|e| fail(format!("creating {}: {e}", dir.display())))?;
        let spec = GroupSpec {
            group: group.clone(),
            members: known.members,
            base_dir: dir,
            secret,
            etcd_endpoints: self.config.etcd_endpoints.clone(),
            prefix: self.config.prefix.clone(),
            ttl_secs: self.config.ttl_secs,
            tls_dir: None,
        };
        let started = Instant::now();
        let endpoint = self
            .runner
            .relaunch(&spec, target.endpoint, target.tls)
            .await
            .map_err(|e| fail(e.0))?;
        self.wait_ready(endpoint, &target.password, target.tls)
            .await
            .map_err(|e| fail(e.0))?;
        tracing::info!(%app, %id, %group, %endpoint, took = ?started.elapsed(),
            "redis group reinstated");
        Ok(())
    }

    /// Restarts one group whose state document etcd lost (`paas redis recover -a APP`):
    /// every resource is a group of its own, so `member` names it, as `<group>` (restart
    /// from the member with the most data, see [`crate::recover`]) or `<group>/<member>`
    /// (from that member).
    async fn recover(&self, member: Option<&str>) -> Result<String, ProviderError> {
        let target = member.ok_or_else(|| {
            ProviderError(
                "every redis resource is a group of its own: name it (`paas redis recover -a APP`)"
                    .into(),
            )
        })?;
        let (group, chosen) = match target.split_once('/') {
            Some((group, member)) => (group, Some(member)),
            None => (target, None),
        };
        if group_name(group).as_deref() != Some(group) {
            return Err(ProviderError(format!("{group:?} is not a group name")));
        }
        let records = Records::new(self.coord.clone(), keys(group));
        crate::recover::recover(&records, chosen)
            .await
            .map_err(|e| ProviderError(e.to_string()))
    }

    /// Every group (`groups`: name -> `info::GroupInfo`) and their tables (`text`).
    async fn status(&self) -> Result<serde_json::Value, ProviderError> {
        let groups = crate::info::groups(&self.coord)
            .await
            .map_err(|e| ProviderError(e.to_string()))?;
        let text = crate::info::render_all(&groups);
        Ok(serde_json::json!({ "groups": groups, "text": text }))
    }
}

/// `data` with the resource's `REDIS_URL` when it records no URL (resources
/// provisioned before backups recorded it there); any other data as it is.
pub fn complete_data(
    data: &serde_json::Value,
    env: &BTreeMap<String, String>,
) -> serde_json::Value {
    let Ok(mut known) = serde_json::from_value::<ResourceData>(data.clone()) else {
        return data.clone();
    };
    if known.url.is_some() {
        return data.clone();
    }
    known.url = env.get("REDIS_URL").cloned();
    serde_json::to_value(known).unwrap_or_else(|_| data.clone())
}

/// The URL a backup of resource `id` connects with.
fn backup_url(id: &str, data: &serde_json::Value) -> Result<String, ProviderError> {
    let data: ResourceData = serde_json::from_value(data.clone())
        .map_err(|e| ProviderError(format!("unrecognised resource data: {e}")))?;
    data.url
        .ok_or_else(|| ProviderError(crate::backup::BackupError::NoUrl(id.into()).to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn older_resources_take_their_url_from_their_environment() {
        let env = BTreeMap::from([(
            "REDIS_URL".to_string(),
            "redis://default:pw@127.0.0.1:26379".to_string(),
        )]);
        let old = serde_json::json!({"group": "redisab", "dir": "/d", "members": 2});
        assert_eq!(
            complete_data(&old, &env)["url"],
            "redis://default:pw@127.0.0.1:26379"
        );
        let recorded = serde_json::json!({"group": "redisab", "dir": "/d", "members": 2, "url": "redis://own"});
        assert_eq!(complete_data(&recorded, &env), recorded);
        assert_eq!(complete_data(&old, &BTreeMap::new()), old);
    }

    #[test]
    fn urls_are_rediss_with_the_ca_when_groups_have_certificates() {
        let endpoint: SocketAddr = "127.0.0.1:26380".parse().unwrap();
        let plain = client_env(endpoint, "pw", None);
        assert_eq!(plain["REDIS_URL"], "redis://default:pw@127.0.0.1:26380");
        assert!(!plain.contains_key("REDIS_TLS_CA"));
        let ca = std::path::Path::new("/var/lib/paas/ca.pem");
        let tls = client_env(endpoint, "pw", Some(ca));
        assert_eq!(tls["REDIS_URL"], "rediss://default:pw@127.0.0.1:26380");
        assert_eq!(tls["REDIS_TLS_CA"], "/var/lib/paas/ca.pem");
    }

    #[test]
    fn urls_are_read_back_as_client_env_writes_them() {
        let endpoint: SocketAddr = "127.0.0.1:26380".parse().unwrap();
        let ca = std::path::Path::new("/var/lib/paas/ca.pem");
        for tls in [false, true] {
            let env = client_env(endpoint, "pw", tls.then_some(ca));
            let expected = UrlParts {
                tls,
                password: "pw".into(),
                endpoint,
            };
            assert_eq!(parse_url(&env["REDIS_URL"]), Some(expected.clone()));
            assert_eq!(parse_url(&format!("{}/", env["REDIS_URL"])), Some(expected));
        }
        for bad in [
            "http://default:pw@127.0.0.1:1",
            "redis://pw@127.0.0.1:1",
            "redis://default:@127.0.0.1:1",
            "redis://default:pw@localhost:1",
            "redis://default:pw@127.0.0.1",
            "rediss://default:pw@127.0.0.1:1/0",
        ] {
            assert_eq!(parse_url(bad), None, "{bad}");
        }
    }

    #[test]
    fn group_names_come_from_resource_ids() {
        assert_eq!(group_name("redis-0a1b2c3d4e").unwrap(), "redis0a1b2c3d4e");
        assert!(group_name("Redis-X").is_none());
        assert!(group_name("").is_none());
    }

    #[test]
    fn members_default_and_bounds() {
        let none = Options::new();
        assert_eq!(members_option(&none, 2).unwrap(), 2);
        let three = Options::from([("members".to_string(), "3".to_string())]);
        assert_eq!(members_option(&three, 2).unwrap(), 3);
        for bad in ["0", "6", "x"] {
            let o = Options::from([("members".to_string(), bad.to_string())]);
            assert!(members_option(&o, 2).is_err(), "{bad}");
        }
        let unknown = Options::from([("size".to_string(), "1".to_string())]);
        assert!(members_option(&unknown, 2).is_err());
    }
}
