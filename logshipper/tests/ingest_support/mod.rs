//! Shared harness of the ingest integration tests: a whole aggregator (journal, store,
//! syslog and forward listeners, HTTP API) on 127.0.0.1 with free ports and a temporary
//! data directory, removed when the harness is dropped (also when a test panics).

#![allow(dead_code)] // Each test file uses a different part of the harness.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use paas_logshipper::aggregator::Aggregator;
use paas_logshipper::api::{router, ApiState};
use paas_logshipper::ingest::{Ingest, IngestConfig};
use paas_logshipper::journal::{Journal, JournalConfig, JournalReader};
use paas_logshipper::metrics::IngestMetrics;
use paas_logshipper::store::{Store, StoreConfig};
use prometheus_client::registry::Registry;
use serde_json::Value;

/// Upper bound for waiting on lines to show up; reaching it fails the test.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// A running aggregator.
pub struct Harness {
    pub ingest: Option<Ingest>,
    pub journal: Journal,
    pub api: SocketAddr,
    pub store: Arc<Store>,
    pub data: PathBuf,
    aggregator: Aggregator,
    store_reader: JournalReader,
    api_task: tokio::task::JoinHandle<()>,
    http: reqwest::Client,
}

impl Harness {
    /// Starts an aggregator over `data` (created if missing) with both inputs enabled.
    pub async fn start(data: &Path, tweak: impl FnOnce(&mut IngestConfig)) -> Harness {
        Self::start_with_store(data, |_| {}, tweak).await
    }

    /// Like [`Harness::start`], also adjusting the store configuration.
    pub async fn start_with_store(
        data: &Path,
        store_tweak: impl FnOnce(&mut StoreConfig),
        tweak: impl FnOnce(&mut IngestConfig),
    ) -> Harness {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "paas_logshipper=info".into()),
            )
            .with_test_writer()
            .try_init();
        let journal = Journal::open(data.join("journal"), JournalConfig::default()).unwrap();
        let mut store_config = StoreConfig::new(data.join("store"));
        store_tweak(&mut store_config);
        let store = Arc::new(Store::open(store_config).unwrap());
        let mut registry = Registry::default();
        let metrics = IngestMetrics::register(&mut registry);
        let aggregator = Aggregator::new(journal.clone(), Arc::clone(&store), metrics);
        let (store_reader, _) = aggregator.recover_store().await.unwrap();
        let mut config = IngestConfig {
            syslog_addr: Some("127.0.0.1:0".parse().unwrap()),
            forward_addr: Some("127.0.0.1:0".parse().unwrap()),
            ..IngestConfig::default()
        };
        tweak(&mut config);
        let ingest = Ingest::start(config, aggregator.clone()).await.unwrap();
        let app = router(ApiState {
            store: Arc::clone(&store),
            registry: Arc::new(registry),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let api = listener.local_addr().unwrap();
        let api_task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Harness {
            ingest: Some(ingest),
            journal,
            api,
            store,
            data: data.to_path_buf(),
            aggregator,
            store_reader,
            api_task,
            http: reqwest::Client::new(),
        }
    }

    pub fn syslog(&self) -> SocketAddr {
        self.ingest.as_ref().unwrap().syslog_addr().unwrap()
    }

    pub fn forward(&self) -> SocketAddr {
        self.ingest.as_ref().unwrap().forward_addr().unwrap()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.api, path)
    }

    /// `GET /apps/{app}/log?{query}` parsed as NDJSON.
    pub async fn log(&self, app: &str, query: &str) -> Vec<Value> {
        let resp = self
            .http
            .get(self.url(&format!("/apps/{app}/log?{query}")))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "log query failed");
        let body = resp.text().await.unwrap();
        body.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Polls the log API until `app` has at least `n` lines; fails after [`DEADLINE`].
    pub async fn wait_for_lines(&self, app: &str, n: usize) -> Vec<Value> {
        let start = Instant::now();
        loop {
            let lines = self.log(app, &format!("lines={}", n.max(1) * 2)).await;
            if lines.len() >= n {
                return lines;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "{app}: only {} of {n} lines arrived",
                lines.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn metrics(&self) -> String {
        self.http
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Polls `/metrics` until it contains `needle`; fails after [`DEADLINE`].
    pub async fn wait_for_metric(&self, needle: &str) -> String {
        let start = Instant::now();
        loop {
            let text = self.metrics().await;
            if text.contains(needle) {
                return text;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "metric {needle} never appeared:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Shuts the inputs down gracefully, flushes the store and stops the API.
    pub async fn stop(mut self) {
        if let Some(ingest) = self.ingest.take() {
            ingest.shutdown().await;
        }
        self.aggregator
            .persist(&mut self.store_reader)
            .await
            .unwrap();
        self.api_task.abort();
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.api_task.abort();
    }
}

/// Messages of the given lines, in order.
pub fn messages(lines: &[Value]) -> Vec<String> {
    lines
        .iter()
        .map(|l| l["message"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// Directory of the real test clients (package.json, scripts).
pub fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients")
}
