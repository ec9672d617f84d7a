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
}

/// What `provision` remembers for `deprovision` (the controller stores it opaquely).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceData {
    /// The group's name.
    pub group: String,
    /// Its directory.
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

    /// Waits until `PING` answers through `endpoint` with `password`.
    async fn wait_ready(endpoint: SocketAddr, password: &str) -> Result<(), ProviderError> {
        let url = format!("redis://default:{password}@{endpoint}/");
        let client = redis::Client::open(url).map_err(|e| ProviderError(e.to_string()))?;
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
            "the new group did not answer PING within {READY_LIMIT:?}: {last}"
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
        };
        let started = Instant::now();
        let launched = match self.runner.launch(&spec).await {
            Ok(endpoint) => Self::wait_ready(endpoint, &password)
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
        let url = format!("redis://default:{password}@{endpoint}");
        let env = BTreeMap::from([("REDIS_URL".to_string(), url.clone())]);
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
        match std::fs::remove_dir_all(&data.dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(ProviderError(format!(
                    "deleting {}: {e}",
                    data.dir.display()
                )))
            }
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
        crate::backup::dump(&url, sink).await.map_err(|e| {
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
        crate::backup::restore(&url, source).await.map_err(|e| {
            tracing::warn!(%app, %id, error = %e, "redis restore failed");
            ProviderError(e.to_string())
        })
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
