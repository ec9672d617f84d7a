//! Prometheus metrics of the router, served at the admin listener's `/metrics`.
//!
//! | family                                | type      | labels        |
//! |---------------------------------------|-----------|---------------|
//! | `router_requests_total`               | counter   | app, status   |
//! | `router_request_duration_seconds`     | histogram | app           |
//! | `router_retries_total`                | counter   | app, reason   |
//! | `router_backends`                     | gauge     | app           |
//! | `router_access_lines_dropped_total`   | counter   |               |
//!
//! `app` is `-` for requests that matched no route.

use std::collections::HashMap;
use std::sync::{Mutex, RwLock};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::state::Backends;

/// Labels of a request count.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The app, or `-`.
    pub app: String,
    /// The HTTP status sent to the client.
    pub status: u16,
}

/// Labels naming an app.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AppLabel {
    /// The app.
    pub app: String,
}

/// Labels of a retry.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RetryLabels {
    /// The app.
    pub app: String,
    /// `connect` or `closed` ([`crate::retry::RetryReason::label`]).
    pub reason: String,
}

type HistogramFamily = Family<AppLabel, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 0.5 ms .. ~16 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// One app's request metrics, taken from the families once: counting a request then
/// costs one map lookup by the app's name, with no label built.
#[derive(Clone)]
struct AppHandles {
    duration: Histogram,
    /// Request counters by status (a handful per app).
    statuses: Vec<(u16, Counter)>,
}

/// The router's metric families and their registry.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    duration: HistogramFamily,
    retries: Family<RetryLabels, Counter>,
    backends: Family<AppLabel, Gauge>,
    access_dropped: Counter,
    /// Apps with a backend gauge, so apps that lose every backend drop to 0.
    gauged: Mutex<Vec<String>>,
    /// Handles of the families' series per app (they share the families' values).
    apps: RwLock<HashMap<String, AppHandles>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Fresh families in a new registry.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("router");
        let requests = Family::<RequestLabels, Counter>::default();
        let duration: HistogramFamily = Family::new_with_constructor(latency_histogram);
        let retries = Family::<RetryLabels, Counter>::default();
        let backends = Family::<AppLabel, Gauge>::default();
        registry.register(
            "requests",
            "Requests by app and status sent",
            requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from request to the end of the response, by app",
            duration.clone(),
        );
        registry.register(
            "retries",
            "Requests sent again to another backend",
            retries.clone(),
        );
        registry.register("backends", "Backends (web jobs) per app", backends.clone());
        let access_dropped = Counter::default();
        registry.register(
            "access_lines_dropped",
            "Access lines lost: the queue to the spool was full, or the spool refused them",
            access_dropped.clone(),
        );
        Metrics {
            registry,
            requests,
            duration,
            retries,
            backends,
            access_dropped,
            gauged: Mutex::new(Vec::new()),
            apps: RwLock::new(HashMap::new()),
        }
    }

    /// The counter of lost access lines, for the access log's writer to count into.
    pub fn access_dropped(&self) -> Counter {
        self.access_dropped.clone()
    }

    /// Counts one finished request.
    pub fn request(&self, app: &str, status: u16, seconds: f64) {
        {
            let apps = self.apps.read().unwrap_or_else(|p| p.into_inner());
            if let Some(handles) = apps.get(app) {
                if let Some((_, counter)) = handles.statuses.iter().find(|(s, _)| *s == status) {
                    counter.inc();
                    handles.duration.observe(seconds);
                    return;
                }
            }
        }
        let mut apps = self.apps.write().unwrap_or_else(|p| p.into_inner());
        let handles = apps.entry(app.to_string()).or_insert_with(|| AppHandles {
            duration: self
                .duration
                .get_or_create(&AppLabel {
                    app: app.to_string(),
                })
                .clone(),
            statuses: Vec::new(),
        });
        if !handles.statuses.iter().any(|(s, _)| *s == status) {
            let counter = self
                .requests
                .get_or_create(&RequestLabels {
                    app: app.to_string(),
                    status,
                })
                .clone();
            handles.statuses.push((status, counter));
        }
        if let Some((_, counter)) = handles.statuses.iter().find(|(s, _)| *s == status) {
            counter.inc();
        }
        handles.duration.observe(seconds);
    }

    /// Counts one retry.
    pub fn retry(&self, app: &str, reason: &str) {
        self.retries
            .get_or_create(&RetryLabels {
                app: app.to_string(),
                reason: reason.to_string(),
            })
            .inc();
    }

    /// Sets the backend gauges to the current sets.
    pub fn set_backends(&self, backends: &Backends) {
        let mut gauged = self.gauged.lock().unwrap_or_else(|p| p.into_inner());
        for app in gauged.iter() {
            if !backends.contains_key(app) {
                self.backends
                    .get_or_create(&AppLabel { app: app.clone() })
                    .set(0);
            }
        }
        for (app, list) in backends {
            self.backends
                .get_or_create(&AppLabel { app: app.clone() })
                .set(list.len() as i64);
            if !gauged.contains(app) {
                gauged.push(app.clone());
            }
        }
    }

    /// The Prometheus text exposition of every family.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!(error = %e, "encoding metrics failed");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::Arc;

    #[test]
    fn families_are_exposed() {
        let m = Metrics::new();
        m.request("shop", 200, 0.003);
        m.request("shop", 200, 0.004);
        m.request("shop", 502, 0.001);
        m.retry("shop", "connect");
        let mut backends: Backends = HashMap::new();
        backends.insert(
            "shop".into(),
            vec![Arc::new(crate::state::Backend::new(
                "127.0.0.1:1".parse().unwrap(),
                "j".into(),
            ))],
        );
        m.set_backends(&backends);
        m.set_backends(&HashMap::new());
        let text = m.encode();
        for needle in [
            r#"router_requests_total{app="shop",status="200"} 2"#,
            r#"router_requests_total{app="shop",status="502"} 1"#,
            r#"router_retries_total{app="shop",reason="connect"} 1"#,
            r#"router_backends{app="shop"} 0"#,
            r#"router_request_duration_seconds_count{app="shop"} 3"#,
        ] {
            assert!(text.contains(needle), "{needle} missing in\n{text}");
        }
    }
}
