//! The log aggregator as `paas up` runs it: the logshipper service, registered in
//! discovery (`services/logaggregator/<host>`) so the controller and hosts find it, with
//! its drains kept equal to the drain documents in etcd (`drains/<id>`), followed with a
//! prefix watch.
//!
//! It runs on a tokio runtime of its own with a fixed number of worker threads
//! (`paas up --log-threads`, default half the cores): decoding a flood of input can use
//! those threads and no more, so the controller, scheduler and host agent on the main
//! runtime, and the lease keepers on theirs, keep their deadlines.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use paas_coord::{Coord, Registration};
use paas_logshipper::drain::DrainSpec;
use paas_logshipper::forward::handshake::SharedKey;
use paas_logshipper::ingest::IngestConfig;
use paas_logshipper::journal::JournalConfig;
use paas_logshipper::service::{Service, ServiceConfig};
use paas_model::keys::{self, AGGREGATOR_SERVICE};
use paas_model::AggregatorInstance;
use tokio_util::sync::CancellationToken;

/// How long until a drain that failed to start, or a failed watch, is tried again.
const DRAIN_RETRY_INTERVAL: Duration = Duration::from_secs(1);

/// Addresses of the aggregator's listeners.
pub struct Listen {
    /// Syslog (RFC 5424, octet-counted or newline framed).
    pub syslog: SocketAddr,
    /// Fluent Forward.
    pub forward: SocketAddr,
    /// HTTP API.
    pub api: SocketAddr,
    /// A plain syslog input that takes lines from anyone (off unless asked for).
    pub unauthenticated_syslog: Option<SocketAddr>,
}

/// What callers must present.
pub struct Credentials {
    /// The cluster's identity directory (`ca.pem`, `logs.pem`, `logs-key.pem`): the
    /// syslog input's certificate and the CA its clients' certificates must chain to.
    pub pki: PathBuf,
    /// The Fluent Forward shared key.
    pub forward_shared_key: String,
    /// The bearer secret of the HTTP API (the cluster secret).
    pub api_secret: String,
}

/// A running aggregator on its own runtime.
pub struct Running {
    inner: Option<Inner>,
    runtime: Option<tokio::runtime::Runtime>,
    syslog: Option<SocketAddr>,
    forward: Option<SocketAddr>,
    unauthenticated_syslog: Option<SocketAddr>,
    accept: paas_logshipper::aggregator::Aggregator,
}

/// The service with its registration and drain sync (lives on the aggregator runtime).
struct Inner {
    service: Service,
    _registration: Registration,
    stop_sync: CancellationToken,
    sync_task: tokio::task::JoinHandle<()>,
}

impl Inner {
    /// Stops the drain sync, then the service.
    async fn shutdown(self) {
        self.stop_sync.cancel();
        let _ = self.sync_task.await;
        self.service.shutdown().await;
    }
}

impl Running {
    /// The syslog input, where host agents ship job output.
    pub fn syslog_addr(&self) -> Option<SocketAddr> {
        self.syslog
    }

    /// The accept path itself, for producers in this process (the router's access
    /// lines): journaled and stored without a connection. Stop them before
    /// [`Running::shutdown`].
    pub fn local_input(&self) -> paas_logshipper::aggregator::Aggregator {
        self.accept.clone()
    }

    /// The forward input.
    pub fn forward_addr(&self) -> Option<SocketAddr> {
        self.forward
    }

    /// The plain syslog input without authentication, if it was asked for.
    pub fn unauthenticated_syslog_addr(&self) -> Option<SocketAddr> {
        self.unauthenticated_syslog
    }

    /// Stops the drain sync, then the service, then the aggregator's runtime.
    pub async fn shutdown(mut self) {
        if let (Some(inner), Some(runtime)) = (self.inner.take(), self.runtime.take()) {
            let _ = runtime.spawn(inner.shutdown()).await;
            runtime.shutdown_background();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // Dropping a runtime blocks; from async code it must be let go in the background.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Starts the aggregator under `data_dir` on a runtime of `threads` worker threads and
/// registers it as `instance`; accepted lines are fsynced and stored every
/// `persist_interval`.
pub async fn start(
    coord: &Coord,
    data_dir: &Path,
    listen: Listen,
    credentials: Credentials,
    persist_interval: Duration,
    threads: usize,
    instance: &str,
) -> Result<Running> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .thread_name("paas-logs")
        .enable_all()
        .build()
        .context("cannot start the log aggregator's runtime")?;
    let started = runtime.spawn(start_inner(
        coord.clone(),
        data_dir.to_path_buf(),
        listen,
        credentials,
        persist_interval,
        instance.to_owned(),
    ));
    let inner = match started.await {
        Ok(inner) => inner,
        Err(e) => Err(anyhow::anyhow!("log aggregator start-up failed: {e}")),
    };
    let inner = match inner {
        Ok(inner) => inner,
        Err(e) => {
            runtime.shutdown_background();
            return Err(e);
        }
    };
    Ok(Running {
        syslog: inner.service.syslog_addr(),
        forward: inner.service.forward_addr(),
        unauthenticated_syslog: inner.service.unauthenticated_syslog_addr(),
        accept: inner.service.aggregator().clone(),
        inner: Some(inner),
        runtime: Some(runtime),
    })
}

async fn start_inner(
    coord: Coord,
    data_dir: std::path::PathBuf,
    listen: Listen,
    credentials: Credentials,
    persist_interval: Duration,
    instance: String,
) -> Result<Inner> {
    let (coord, data_dir, instance) = (&coord, data_dir.as_path(), instance.as_str());
    let syslog_tls =
        paas_logshipper::tls::mutual_server_config(&credentials.pki).with_context(|| {
            format!(
                "the syslog input needs the cluster's certificates in {} (made by `paas up` with its own etcd; with --etcd, pass --etcd-tls-dir holding ca.pem, logs.pem and logs-key.pem)",
                credentials.pki.display()
            )
        })?;
    let ingest = IngestConfig {
        syslog_addr: Some(listen.syslog),
        forward_addr: Some(listen.forward),
        syslog_tls: Some(syslog_tls),
        unauthenticated_syslog_addr: listen.unauthenticated_syslog,
        shared_key: Some(SharedKey {
            key: credentials.forward_shared_key,
            server_hostname: instance.to_owned(),
        }),
        ..IngestConfig::default()
    };
    if let Some(addr) = listen.unauthenticated_syslog {
        tracing::warn!(%addr, "syslog input WITHOUT authentication: anyone who reaches it can write into any app's log");
    }
    let service = Service::start(ServiceConfig {
        data_dir: data_dir.to_path_buf(),
        ingest,
        api_addr: listen.api,
        journal: JournalConfig::default(),
        lines_per_app: 10_000,
        api_bearer: Some(credentials.api_secret),
        persist_interval,
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
    Ok(Inner {
        service,
        _registration: registration,
        stop_sync,
        sync_task,
    })
}

/// What to change so the running drains equal the wanted ones: the ids to stop (gone or
/// changed) and the specs to start (new or changed). Pure.
fn drain_changes(
    running: &BTreeMap<String, DrainSpec>,
    wanted: &BTreeMap<String, DrainSpec>,
) -> (Vec<String>, Vec<DrainSpec>) {
    let stop: Vec<String> = running
        .iter()
        .filter(|(id, spec)| wanted.get(*id) != Some(*spec))
        .map(|(id, _)| id.clone())
        .collect();
    let start = wanted
        .iter()
        .filter(|(id, spec)| running.get(*id) != Some(*spec))
        .map(|(_, spec)| spec.clone())
        .collect();
    (stop, start)
}

/// Keeps the running drains equal to `drains/` in etcd until `stop`: applies each
/// snapshot of a prefix watch as it arrives; a drain that failed to start is tried again
/// after `DRAIN_RETRY_INTERVAL`, and the watch is re-established if it ends.
async fn sync_drains(
    coord: Coord,
    drains: std::sync::Arc<paas_logshipper::drain::manager::DrainManager>,
    stop: CancellationToken,
) {
    let mut running: BTreeMap<String, DrainSpec> = BTreeMap::new();
    'watch: loop {
        let mut watch = match coord.watch_prefix::<DrainSpec>(&keys::drains()).await {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch drains in etcd; retrying");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(DRAIN_RETRY_INTERVAL) => continue 'watch,
                }
            }
        };
        let mut snapshot = watch.current();
        loop {
            let wanted: BTreeMap<String, DrainSpec> = snapshot
                .docs
                .values()
                .map(|spec| (spec.id.clone(), spec.clone()))
                .collect();
            let (to_stop, to_start) = drain_changes(&running, &wanted);
            for id in to_stop {
                if let Err(e) = drains.remove(&id).await {
                    tracing::warn!(drain = %id, error = %e, "cannot stop drain");
                }
                running.remove(&id);
            }
            let mut failed = false;
            for spec in to_start {
                match drains.add(&spec) {
                    Ok(_) => {
                        running.insert(spec.id.clone(), spec);
                    }
                    Err(e) => {
                        failed = true;
                        tracing::warn!(drain = %spec.id, error = %e, "cannot start drain");
                    }
                }
            }
            let retry = async {
                if failed {
                    tokio::time::sleep(DRAIN_RETRY_INTERVAL).await
                } else {
                    std::future::pending().await
                }
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                changed = watch.changed() => match changed {
                    Some(next) => snapshot = next,
                    None => continue 'watch,
                },
                _ = retry => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(id: &str, url: &str) -> DrainSpec {
        serde_json::from_value(serde_json::json!({ "id": id, "url": url })).unwrap()
    }

    fn map(specs: &[DrainSpec]) -> BTreeMap<String, DrainSpec> {
        specs.iter().map(|s| (s.id.clone(), s.clone())).collect()
    }

    #[test]
    fn changed_drains_are_restarted_gone_ones_stopped_new_ones_started() {
        let running = map(&[
            spec("keep", "http://es:9200"),
            spec("change", "http://es:9200"),
            spec("gone", "s3://b/p"),
        ]);
        let wanted = map(&[
            spec("keep", "http://es:9200"),
            spec("change", "http://other:9200"),
            spec("new", "forward://h:24224"),
        ]);
        let (stop, start) = drain_changes(&running, &wanted);
        assert_eq!(stop, ["change", "gone"]);
        let started: Vec<(&str, &str)> = start
            .iter()
            .map(|s| (s.id.as_str(), s.url.as_str()))
            .collect();
        assert_eq!(
            started,
            [
                ("change", "http://other:9200"),
                ("new", "forward://h:24224")
            ]
        );
        assert_eq!(drain_changes(&wanted, &wanted), (vec![], vec![]));
    }
}
