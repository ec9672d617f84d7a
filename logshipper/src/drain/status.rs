//! Per-drain counters (delivered, failed, dropped, lag, last error) and their snapshots.
//!
//! The counters are Prometheus metrics from one set of families labelled by drain id, so
//! `paas drain list` (via [`DrainStatus`]) and `/metrics` read the same numbers:
//! `paas_drain_delivered_total`, `paas_drain_failed_total` (dead-lettered),
//! `paas_drain_dropped_total` (lost to the journal size limit) and `paas_drain_lag_lines`
//! (lines in the journal not yet delivered).

use std::sync::{Arc, Mutex};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Serialize;

/// Label set of every drain metric.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DrainLabels {
    /// The drain's id.
    pub drain: String,
}

/// The metric families of all drains; register once, then hand out per-drain stats.
#[derive(Clone, Default)]
pub struct DrainMetrics {
    delivered: Family<DrainLabels, Counter>,
    failed: Family<DrainLabels, Counter>,
    dropped: Family<DrainLabels, Counter>,
    lag: Family<DrainLabels, Gauge>,
}

impl DrainMetrics {
    /// Registers the families in `registry` (names get the registry's prefix, if any).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "paas_drain_delivered",
            "Lines a drain's sink accepted",
            self.delivered.clone(),
        );
        registry.register(
            "paas_drain_failed",
            "Lines a sink rejected permanently (written to the dead-letter file)",
            self.failed.clone(),
        );
        registry.register(
            "paas_drain_dropped",
            "Lines lost before delivery because the journal reached its size limit",
            self.dropped.clone(),
        );
        registry.register(
            "paas_drain_lag_lines",
            "Lines in the journal a drain has not delivered yet",
            self.lag.clone(),
        );
    }

    /// The counters of drain `id`.
    pub fn stats(&self, id: &str) -> Arc<DrainStats> {
        let labels = DrainLabels { drain: id.into() };
        Arc::new(DrainStats {
            delivered: self.delivered.get_or_create(&labels).clone(),
            failed: self.failed.get_or_create(&labels).clone(),
            dropped: self.dropped.get_or_create(&labels).clone(),
            lag: self.lag.get_or_create(&labels).clone(),
            last_error: Mutex::new(None),
        })
    }

    /// Forgets the series of a removed drain.
    pub fn remove(&self, id: &str) {
        let labels = DrainLabels { drain: id.into() };
        self.delivered.remove(&labels);
        self.failed.remove(&labels);
        self.dropped.remove(&labels);
        self.lag.remove(&labels);
    }
}

/// Live counters of one drain, updated by its task.
#[derive(Debug)]
pub struct DrainStats {
    /// Lines the sink accepted.
    pub delivered: Counter,
    /// Lines dead-lettered.
    pub failed: Counter,
    /// Lines dropped by the journal limit.
    pub dropped: Counter,
    /// Undelivered lines.
    pub lag: Gauge,
    last_error: Mutex<Option<LastError>>,
}

/// The most recent delivery problem of a drain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LastError {
    /// What went wrong.
    pub message: String,
    /// When (RFC 3339, UTC).
    pub at: String,
}

impl DrainStats {
    /// Records a delivery problem as the drain's last error.
    pub fn set_error(&self, message: String) {
        let at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(LastError { message, at });
    }

    /// The last recorded problem, if any.
    pub fn last_error(&self) -> Option<LastError> {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// What `paas drain list` shows for one drain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DrainStatus {
    /// Drain id.
    pub id: String,
    /// App filter, if the drain is per app.
    pub app: Option<String>,
    /// Sink URL without credentials.
    pub url: String,
    /// Lines delivered.
    pub delivered: u64,
    /// Lines dead-lettered.
    pub failed: u64,
    /// Lines dropped by the journal limit.
    pub dropped: u64,
    /// Lines waiting.
    pub lag: u64,
    /// The last problem, if any.
    pub last_error: Option<LastError>,
}
