//! The log aggregator as `paas up` runs it: the logshipper service, registered in
//! discovery (`services/logaggregator/<host>`) so the controller and hosts find it, with
//! its drains kept equal to the drain documents in etcd (`drains/<id>`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use paas_controller::api::logs::{AggregatorInstance, AGGREGATOR_SERVICE};
use paas_coord::{Coord, Registration};
use paas_logshipper::drain::DrainSpec;
use paas_logshipper::ingest::IngestConfig;
use paas_logshipper::journal::JournalConfig;
use paas_logshipper::service::{Service, ServiceConfig};
use tokio_util::sync::CancellationToken;

/// How often the drain documents are re-read.
const DRAIN_SYNC_INTERVAL: Duration = Duration::from_secs(1);

/// Addresses of the aggregator's listeners.
pub struct Listen {
    /// Syslog (RFC 5424, octet-counted or newline framed).
    pub syslog: SocketAddr,
    /// Fluent Forward.
    pub forward: SocketAddr,
    /// HTTP API.
    pub api: SocketAddr,
}

/// A running aggregator with its registration and drain sync.
pub struct Running {
    service: Service,
    _registration: Registration,
    stop_sync: CancellationToken,
    sync_task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// The syslog input, where host agents ship job output.
    pub fn syslog_addr(&self) -> Option<SocketAddr> {
        self.service.syslog_addr()
    }

    /// The forward input.
    pub fn forward_addr(&self) -> Option<SocketAddr> {
        self.service.forward_addr()
    }

    /// Stops the drain sync, then the service.
    pub async fn shutdown(self) {
        self.stop_sync.cancel();
        let _ = self.sync_task.await;
        self.service.shutdown().await;
    }
}

/// Starts the aggregator under `data_dir` and registers it as `instance`.
pub async fn start(
    coord: &Coord,
    data_dir: &Path,
    listen: Listen,
    instance: &str,
) -> Result<Running> {
    let ingest = IngestConfig {
        syslog_addr: Some(listen.syslog),
        forward_addr: Some(listen.forward),
        ..IngestConfig::default()
    };
    let service = Service::start(ServiceConfig {
        data_dir: data_dir.to_path_buf(),
        ingest,
        api_addr: listen.api,
        journal: JournalConfig::default(),
        lines_per_app: 10_000,
        store_flush_interval: Duration::from_secs(1),
    })
    .await
    .context("cannot start the log aggregator")?;
    let value = AggregatorInstance {
        api: service.api_addr().to_string(),
        syslog: service.syslog_addr().map(|a| a.to_string()),
        forward: service.forward_addr().map(|a| a.to_string()),
    };
    let registration = coord
        .register(
            AGGREGATOR_SERVICE,
            instance,
            &value,
            Duration::from_secs(10),
        )
        .await
        .context("cannot register the log aggregator")?;
    let stop_sync = CancellationToken::new();
    let sync_task = tokio::spawn(sync_drains(
        coord.clone(),
        std::sync::Arc::clone(service.drains()),
        stop_sync.clone(),
    ));
    Ok(Running {
        service,
        _registration: registration,
        stop_sync,
        sync_task,
    })
}

/// Keeps the running drains equal to `drains/` in etcd until `stop`.
async fn sync_drains(
    coord: Coord,
    drains: std::sync::Arc<paas_logshipper::drain::manager::DrainManager>,
    stop: CancellationToken,
) {
    let mut running: BTreeMap<String, DrainSpec> = BTreeMap::new();
    loop {
        match coord.list::<DrainSpec>("drains/").await {
            Ok(docs) => {
                let wanted: BTreeMap<String, DrainSpec> = docs
                    .into_iter()
                    .map(|(_, spec, _)| (spec.id.clone(), spec))
                    .collect();
                for (id, spec) in &running.clone() {
                    if wanted.get(id) != Some(spec) {
                        match drains.remove(id).await {
                            Ok(()) => {}
                            Err(e) => tracing::warn!(drain = %id, error = %e, "cannot stop drain"),
                        }
                        running.remove(id);
                    }
                }
                for (id, spec) in wanted {
                    if running.contains_key(&id) {
                        continue;
                    }
                    match drains.add(&spec) {
                        Ok(_) => {
                            running.insert(id, spec);
                        }
                        Err(e) => tracing::warn!(drain = %id, error = %e, "cannot start drain"),
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot read drains from etcd"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(DRAIN_SYNC_INTERVAL) => {}
        }
    }
}
