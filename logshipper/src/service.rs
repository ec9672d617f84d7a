//! The whole aggregator as one service: journal, store, inputs, drains and the HTTP API,
//! wired together the way `paas up` runs them.
//!
//! ```text
//! DATA_DIR/journal/      the durable journal every accepted line goes to first
//! DATA_DIR/store/        per-app recent lines for `paas log` (written every
//!                        `persist_interval`; the journal covers the rest)
//! DATA_DIR/dead-letter/  items a sink refused for good, per drain
//! ```
//!
//! Drains are added and removed at run time ([`Service::drains`]); where their specs come
//! from (etcd, in `paas up`) is the caller's business, so this crate stays free of the
//! platform's coordination layer.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use axum::{Json, Router};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::aggregator::Aggregator;
use crate::api::{self, ApiState};
use crate::drain::manager::DrainManager;
use crate::drain::status::{DrainFamilies, DrainStatus};
use crate::ingest::{Ingest, IngestConfig, IngestError};
use crate::journal::{Journal, JournalConfig, JournalError};
use crate::metrics::IngestMetrics;
use crate::store::{Store, StoreConfig, StoreError};

/// Settings of the service.
#[derive(Clone)]
pub struct ServiceConfig {
    /// Root of the journal, store and dead-letter directories.
    pub data_dir: PathBuf,
    /// Inputs (syslog, forward, TLS, limits).
    pub ingest: IngestConfig,
    /// Address of the HTTP API (log queries, drain status, metrics).
    pub api_addr: SocketAddr,
    /// Journal sizes: the drains' disk-backed queue.
    pub journal: JournalConfig,
    /// Lines kept per app for `paas log`.
    pub lines_per_app: usize,
    /// The secret every API request must present as a bearer token (`None`: the API is
    /// open, for tests and embedding where nothing untrusted shares the host).
    pub api_bearer: Option<String>,
    /// How often the journal is fsynced and the store writes its new recent lines to
    /// disk ([`Aggregator::persist`]).
    pub persist_interval: Duration,
}

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The journal could not be opened.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// An input could not be bound.
    #[error(transparent)]
    Ingest(#[from] IngestError),
    /// The API address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
}

/// A running aggregator.
pub struct Service {
    aggregator: Aggregator,
    ingest: Ingest,
    drains: Arc<DrainManager>,
    api_addr: SocketAddr,
    stop_api: CancellationToken,
    api_task: tokio::task::JoinHandle<()>,
    stop_persisting: CancellationToken,
    persister: tokio::task::JoinHandle<Result<(), JournalError>>,
}

impl Service {
    /// Opens the journal and store, binds the inputs and the API, and starts serving.
    pub async fn start(config: ServiceConfig) -> Result<Service, ServiceError> {
        let mut registry = Registry::default();
        let ingest_metrics = IngestMetrics::register(&mut registry);
        let drain_metrics = DrainFamilies::register(&mut registry);
        let journal = Journal::open(config.data_dir.join("journal"), config.journal)?;
        let mut store_config = StoreConfig::new(config.data_dir.join("store"));
        store_config.lines_per_app = config.lines_per_app;
        let store = Arc::new(Store::open(store_config)?);
        let drains = Arc::new(DrainManager::new(
            journal.clone(),
            config.data_dir.join("dead-letter"),
            drain_metrics,
        ));
        let aggregator = Aggregator::new(journal, Arc::clone(&store), ingest_metrics);
        let (store_reader, _) = aggregator.recover_store().await?;
        let stop_persisting = CancellationToken::new();
        let persister = tokio::spawn(aggregator.clone().persist_every(
            store_reader,
            config.persist_interval,
            stop_persisting.clone(),
        ));
        let ingest = Ingest::start(config.ingest, aggregator.clone()).await?;

        let listener = tokio::net::TcpListener::bind(config.api_addr)
            .await
            .map_err(|source| ServiceError::Bind {
                addr: config.api_addr,
                source,
            })?;
        let api_addr = listener.local_addr().map_err(|source| ServiceError::Bind {
            addr: config.api_addr,
            source,
        })?;
        let for_status = Arc::clone(&drains);
        let mut router = api::router(ApiState {
            store,
            registry: Arc::new(registry),
        })
        .merge(Router::new().route(
            "/drains",
            get(move || {
                let drains = Arc::clone(&for_status);
                async move { Json::<Vec<DrainStatus>>(drains.list()) }
            }),
        ));
        if let Some(secret) = &config.api_bearer {
            router = api::require_bearer(router, secret);
        }
        let stop_api = CancellationToken::new();
        let stop = stop_api.clone();
        let api_task = tokio::spawn(async move {
            let served = axum::serve(listener, router)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "log API failed");
            }
        });
        tracing::info!(api = %api_addr, syslog = ?ingest.syslog_addr(), forward = ?ingest.forward_addr(), unauthenticated_syslog = ?ingest.unauthenticated_syslog_addr(), "log aggregator up");
        Ok(Service {
            aggregator,
            ingest,
            drains,
            api_addr,
            stop_api,
            api_task,
            stop_persisting,
            persister,
        })
    }

    /// The accept path, for a producer in the same process (the router of `paas up`):
    /// lines handed to it are journaled and stored as the inputs' are, without a
    /// connection. Hand nothing to it after [`Service::shutdown`] began.
    pub fn aggregator(&self) -> &Aggregator {
        &self.aggregator
    }

    /// The drain manager: add and remove drains while running.
    pub fn drains(&self) -> &Arc<DrainManager> {
        &self.drains
    }

    /// Bound address of the HTTP API.
    pub fn api_addr(&self) -> SocketAddr {
        self.api_addr
    }

    /// Bound address of the syslog input.
    pub fn syslog_addr(&self) -> Option<SocketAddr> {
        self.ingest.syslog_addr()
    }

    /// Bound address of the forward input.
    pub fn forward_addr(&self) -> Option<SocketAddr> {
        self.ingest.forward_addr()
    }

    /// Bound address of the unauthenticated syslog input, if one was asked for.
    pub fn unauthenticated_syslog_addr(&self) -> Option<SocketAddr> {
        self.ingest.unauthenticated_syslog_addr()
    }

    /// Stops the inputs (finishing complete messages), the drains (cursors saved) and
    /// the API.
    pub async fn shutdown(self) {
        self.ingest.shutdown().await;
        self.stop_persisting.cancel();
        if let Ok(Err(e)) = self.persister.await {
            tracing::error!(error = %e, "the last persist failed; a restart replays more lines");
        }
        self.drains.shutdown().await;
        self.stop_api.cancel();
        let _ = self.api_task.await;
    }
}
