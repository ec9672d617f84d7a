//! Resource providers: the interface `paas resource add KIND` is served through.
//!
//! A provider creates something in a managed cluster (a database and a role, say) for one
//! app and returns the environment variables the app needs to use it. The controller
//! stores the result and puts the variables on a new release; it never looks inside
//! `data`, which belongs to the provider and is handed back to `deprovision`.
//!
//! Backup hooks: an engine that can dump one resource in its own format implements
//! [`Provider::backup`] (write the dump to a byte sink) and [`Provider::restore`] (load
//! one from a byte source, atomically where the engine allows it). The backups crate owns
//! everything else (object store, checksums, manifests, schedules); engines that do not
//! implement the hooks answer "not supported". A whole-cluster restore also needs
//! [`Provider::reinstate`]: the resource re-created under its recorded credentials.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};

/// What a provider returns for a new resource.
#[derive(Debug, Clone, Default)]
pub struct Provisioned {
    /// Variables set on the app (DATABASE_URL, PGHOST...).
    pub env: BTreeMap<String, String>,
    /// Provider-private data needed later to remove the resource.
    pub data: serde_json::Value,
}

/// Kind-specific options of `paas resource add` (e.g. `members=3` for Redis), by name;
/// a provider refuses the ones it does not know.
pub type Options = BTreeMap<String, String>;

/// Why a provider could not do its part.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ProviderError(pub String);

/// What an engine's backup hook wrote, recorded in the backup's manifest so a restore
/// knows which tool and format it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupInfo {
    /// The engine (`postgres`, `mariadb`, `redis`...).
    pub engine: String,
    /// The version of the tool or server that wrote the dump.
    pub version: String,
    /// The dump's format, e.g. `pg_dump custom`.
    pub format: String,
}

/// Where a backup hook writes the dump.
pub type BackupSink<'a> = &'a mut (dyn AsyncWrite + Send + Unpin);

/// Where a restore hook reads the dump from. A read error means the source is not
/// trustworthy (it failed verification or broke): the hook must then leave the
/// resource as it was.
pub type RestoreSource<'a> = &'a mut (dyn AsyncRead + Send + Unpin);

/// A kind of resource the platform can provision.
#[async_trait::async_trait]
pub trait Provider: Send + Sync {
    /// Creates the resource for `app`; `id` is unique per app and safe to embed in names;
    /// `options` are the kind's own settings, refused when unknown.
    async fn provision(
        &self,
        app: &str,
        id: &str,
        options: &Options,
    ) -> Result<Provisioned, ProviderError>;
    /// Removes what `provision` created; must succeed if it is already gone.
    async fn deprovision(
        &self,
        app: &str,
        id: &str,
        data: &serde_json::Value,
    ) -> Result<(), ProviderError>;

    /// The provider's cluster as operators see it (`paas cluster status`, `paas pg
    /// info`): roles, leaders, positions. Providers without a cluster of their own
    /// report nothing.
    async fn status(&self) -> Result<serde_json::Value, ProviderError> {
        Ok(serde_json::Value::Null)
    }

    /// An operator's explicit recovery of a cluster that refuses to start on its own
    /// because its coordination state is gone while members still hold data (`paas pg
    /// recover`): restart it from the member with the most data, or from `member` when
    /// the operator names one. Returns what was done.
    async fn recover(&self, member: Option<&str>) -> Result<String, ProviderError> {
        let _ = member;
        Err(ProviderError("this kind has no explicit recovery".into()))
    }

    /// Whether [`Provider::backup`] and [`Provider::restore`] are implemented, so a
    /// schedule covering "every resource of an app" knows which to take.
    fn has_backups(&self) -> bool {
        false
    }

    /// The resource's `data` as [`Provider::backup`] and [`Provider::restore`] take it,
    /// completed from the `env` the resource gave its app: resources provisioned before
    /// an engine's hooks existed hold their credentials only there. Providers whose data
    /// is always complete keep the default, `data` as it is.
    fn backup_data(
        &self,
        data: &serde_json::Value,
        env: &BTreeMap<String, String>,
    ) -> serde_json::Value {
        let _ = env;
        data.clone()
    }

    /// Writes a dump of the resource (`app`, `id`, with the provider's `data`) to
    /// `sink`, in the engine's own format, and says what it wrote. The dump is one
    /// consistent snapshot, or the hook fails. The sink is not flushed or closed here.
    async fn backup(
        &self,
        app: &str,
        id: &str,
        data: &serde_json::Value,
        sink: BackupSink<'_>,
    ) -> Result<BackupInfo, ProviderError> {
        let _ = (app, id, data, sink);
        Err(ProviderError("this kind has no backups".into()))
    }

    /// Replaces the resource's contents with the dump read from `source` (written by
    /// [`Provider::backup`] of the same kind, possibly of another resource). If `source`
    /// fails to read, or the engine refuses the dump, the resource is left unchanged
    /// where the engine allows it (one transaction).
    async fn restore(
        &self,
        app: &str,
        id: &str,
        data: &serde_json::Value,
        source: RestoreSource<'_>,
    ) -> Result<(), ProviderError> {
        let _ = (app, id, data, source);
        Err(ProviderError("this kind has no restore".into()))
    }

    /// Whether [`Provider::reinstate`] is implemented, so a whole-cluster backup knows
    /// before it starts whether a restore can bring every resource back.
    fn can_reinstate(&self) -> bool {
        false
    }

    /// Re-creates what `provision` made for (`app`, `id`) in a fresh cluster, with the
    /// same names and credentials it handed out then (`env`: the variables stored with
    /// the resource, `data`: the provider's data), so the app's URLs keep working after
    /// a whole-cluster restore; the contents come afterwards from a backup through
    /// [`Provider::restore`]. Idempotent: existing names get the recorded password.
    async fn reinstate(
        &self,
        app: &str,
        id: &str,
        env: &BTreeMap<String, String>,
        data: &serde_json::Value,
    ) -> Result<(), ProviderError> {
        let _ = (app, id, env, data);
        Err(ProviderError(
            "this kind cannot be reinstated by a cluster restore".into(),
        ))
    }

    /// Loads the resource (`data`) as it was at `to` into another resource of the same
    /// kind (`into`), never in place: the engine rebuilds its cluster from its archive in
    /// scratch space and copies that one resource out of it (`paas pg restore
    /// --to-time`). `tell` receives progress lines. Returns what was done.
    async fn restore_to_time(
        &self,
        data: &serde_json::Value,
        to: std::time::SystemTime,
        into: &serde_json::Value,
        tell: &(dyn for<'l> Fn(&'l str) + Send + Sync),
    ) -> Result<String, ProviderError> {
        let _ = (data, to, into, tell);
        Err(ProviderError(
            "this kind has no point-in-time restore".into(),
        ))
    }
}

/// The providers available in this platform, by kind.
#[derive(Clone, Default)]
pub struct Providers {
    by_kind: HashMap<String, Arc<dyn Provider>>,
}

impl Providers {
    /// Registers `provider` under `kind` (e.g. `postgres`).
    pub fn register(&mut self, kind: &str, provider: Arc<dyn Provider>) {
        self.by_kind.insert(kind.to_string(), provider);
    }

    /// The provider for `kind`, if registered.
    pub fn get(&self, kind: &str) -> Option<Arc<dyn Provider>> {
        self.by_kind.get(kind).cloned()
    }

    /// Registered kinds, sorted, for error messages and `paas status`.
    pub fn kinds(&self) -> Vec<String> {
        let mut kinds: Vec<String> = self.by_kind.keys().cloned().collect();
        kinds.sort();
        kinds
    }
}
