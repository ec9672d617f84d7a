//! The controller: the platform's HTTP+JSON API over its desired state in etcd.
//!
//! Map:
//! - `store`    every read and revision-checked write of the platform's desired state
//!   (`paas-model`'s types, at `paas_model::keys`) in etcd.
//! - `auth`     bearer tokens (hashed at rest) and the per-request [`auth::Principal`].
//! - `provider` the interface resource kinds (postgres...) implement (it lives in
//!   `paas-appliance`; re-exported here).
//! - `api`      routes: parse, authorize, call the store, shape the reply
//!   (`api::backups`: backups and schedules over `paas-backups`).
//! - `error`    the error enum and its JSON form.
//! - `dashboard` the web dashboard at `/`: HTML pages over the API's own router.
//!
//! Invariants: the controller keeps no state of its own between requests (several can
//! run against one etcd); every multi-key change is one etcd transaction guarded by the
//! revisions it read, retried on conflict.

pub mod api;
pub mod auth;
pub mod dashboard;
pub mod error;
pub mod gc;
pub use paas_appliance::provider;
pub mod store;

use std::path::PathBuf;
use std::sync::Arc;

use chrono::Utc;

pub use error::ApiError;
pub use provider::{Provider, ProviderError, Providers, Provisioned};
pub use store::Store;

/// What every request handler can reach.
#[derive(Clone)]
pub struct AppState {
    /// Desired state in etcd.
    pub store: Store,
    /// Resource kinds that can be provisioned.
    pub providers: Arc<Providers>,
    /// Where uploaded artifacts (`<sha256>.tar.gz`) are kept; hosts read them from here.
    pub artifacts_dir: PathBuf,
    /// The cluster secret: host agents require it to start one-off jobs (`paas run`),
    /// the log aggregator's API for every query the controller proxies.
    pub agent_secret: String,
    /// Largest artifact `PUT /artifacts` accepts (413 beyond).
    pub max_artifact_bytes: u64,
    /// Client for calls to other platform services (the log aggregator).
    pub http: reqwest::Client,
    /// Where backups of resources are kept; `None`: backups are not offered.
    pub backups: Option<paas_backups::Backups>,
    /// What an app-scoped token may make its app consume.
    pub quotas: api::quota::Quotas,
    /// One-off runs attached through this controller (for the runs quota).
    pub runs: api::quota::RunCounter,
}

/// A connected controller, ready to serve its router.
pub struct Controller {
    state: AppState,
}

/// Why the controller could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// etcd could not be reached or refused a request.
    #[error(transparent)]
    Coord(#[from] paas_coord::CoordError),
    /// The state store refused a bootstrap write.
    #[error(transparent)]
    Api(#[from] ApiError),
}

impl Controller {
    /// Connects to etcd at `endpoints`, keeping all keys under `prefix`.
    pub async fn connect(endpoints: &[String], prefix: &str) -> Result<Self, StartError> {
        let coord =
            paas_coord::Coord::connect(endpoints, prefix, std::time::Duration::from_secs(5))
                .await?;
        Ok(Controller {
            state: AppState {
                store: Store::new(coord),
                providers: Arc::new(Providers::default()),
                artifacts_dir: std::env::temp_dir().join("paas-artifacts"),
                max_artifact_bytes: api::MAX_ARTIFACT_BYTES,
                agent_secret: String::new(),
                http: reqwest::Client::new(),
                backups: None,
                quotas: Default::default(),
                runs: Default::default(),
            },
        })
    }

    /// Replaces the set of resource providers.
    pub fn with_providers(mut self, providers: Providers) -> Self {
        self.state.providers = Arc::new(providers);
        self
    }

    /// Offers backups of resources, kept in `backups`.
    pub fn with_backups(mut self, backups: paas_backups::Backups) -> Self {
        self.state.backups = Some(backups);
        self
    }

    /// Sets the directory uploaded artifacts are stored in.
    pub fn with_artifacts_dir(mut self, dir: PathBuf) -> Self {
        self.state.artifacts_dir = dir;
        self
    }

    /// Sets the cluster secret presented to host agents.
    pub fn with_agent_secret(mut self, secret: String) -> Self {
        self.state.agent_secret = secret;
        self
    }

    /// Sets the largest artifact accepted (default [`api::MAX_ARTIFACT_BYTES`]).
    pub fn with_max_artifact_bytes(mut self, bytes: u64) -> Self {
        self.state.max_artifact_bytes = bytes;
        self
    }

    /// Sets the limits of app-scoped tokens (default [`api::quota::Quotas::default`]).
    pub fn with_quotas(mut self, quotas: api::quota::Quotas) -> Self {
        self.state.quotas = quotas;
        self
    }

    /// Makes sure the admin token with this secret exists (idempotent; used at start-up).
    pub async fn ensure_admin_token(&self, secret: &str) -> Result<(), StartError> {
        let hash = auth::hash_secret(secret);
        if self.state.store.token_by_hash(&hash).await?.is_none() {
            let token = paas_model::Token {
                id: "admin".to_string(),
                scope: paas_model::Scope::Admin,
                description: "created by paas up".to_string(),
                created_at: Utc::now(),
            };
            self.state.store.put_token(&hash, &token).await?;
        }
        Ok(())
    }

    /// The shared state, for embedding the store in other services.
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// The API routes, and the web dashboard at `/`.
    pub fn router(&self) -> axum::Router {
        api::router(self.state.clone()).merge(dashboard::router(self.state.clone()))
    }
}
