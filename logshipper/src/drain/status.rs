//! Per-drain counters (delivered, failed, dropped, lag, last error) and their snapshots.
//!
//! The counters are Prometheus series labelled by drain id, so `paas drain list` (via
//! [`DrainStatus`]) and `/metrics` read the same numbers: delivered, failed
//! (dead-lettered lines) and lag come from the shared [`crate::metrics::DrainMetrics`]
//! families; `logshipper_drain_dropped_lines_total` (lines lost to the journal size limit)
//! is registered here.

use std::sync::{Arc, Mutex};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Serialize;

use crate::metrics::{DrainLabel, DrainMetrics, PREFIX};

/// The metric families of all drains; register once, then hand out per-drain stats.
#[derive(Clone, Default)]
pub struct DrainFamilies {
    shared: DrainMetrics,
    dropped: Family<DrainLabel, Counter>,
}

impl DrainFamilies {
    /// Creates the families and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let shared = DrainMetrics::register(registry);
        let dropped = Family::<DrainLabel, Counter>::default();
        registry.sub_registry_with_prefix(PREFIX).register(
            "drain_dropped_lines",
            "Lines lost before delivery because the journal reached its size limit",
            dropped.clone(),
        );
        DrainFamilies { shared, dropped }
    }

    /// The counters of drain `id`.
    pub fn stats(&self, id: &str) -> Arc<DrainStats> {
        let label = DrainMetrics::label(id);
        Arc::new(DrainStats {
            delivered: self.shared.delivered.get_or_create(&label).clone(),
            failed: self.shared.failed.get_or_create(&label).clone(),
            dropped: self.dropped.get_or_create(&label).clone(),
            lag: self.shared.lag.get_or_create(&label).clone(),
            last_error: Mutex::new(None),
        })
    }

    /// Forgets the series of a removed drain.
    pub fn remove(&self, id: &str) {
        let label = DrainMetrics::label(id);
        self.shared.delivered.remove(&label);
        self.shared.failed.remove(&label);
        self.shared.lag.remove(&label);
        self.dropped.remove(&label);
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
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(LastError { message, at });
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drain_series_are_rendered_and_removed() {
        let mut registry = Registry::default();
        let families = DrainFamilies::register(&mut registry);
        let stats = families.stats("es1");
        stats.delivered.inc_by(5);
        stats.failed.inc_by(2);
        stats.dropped.inc_by(3);
        stats.lag.set(7);
        let text = crate::metrics::render(&registry);
        for expected in [
            r#"logshipper_drain_delivered_lines_total{drain="es1"} 5"#,
            r#"logshipper_drain_failed_total{drain="es1"} 2"#,
            r#"logshipper_drain_dropped_lines_total{drain="es1"} 3"#,
            r#"logshipper_drain_lag_lines{drain="es1"} 7"#,
        ] {
            assert!(text.contains(expected), "{expected} missing in\n{text}");
        }
        families.remove("es1");
        assert!(!crate::metrics::render(&registry).contains("es1"));
    }
}
