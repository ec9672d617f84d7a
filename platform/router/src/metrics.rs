//! Prometheus metrics of the router, served at the admin listener's `/metrics`.
//!
//! | family                                | type      | labels        |
//! |---------------------------------------|-----------|---------------|
//! | `router_requests_total`               | counter   | app, status   |
//! | `router_request_duration_seconds`     | histogram | app           |
//! | `router_retries_total`                | counter   | app, reason   |
//! | `router_backends`                     | gauge     | app           |
//! | `router_access_lines_dropped_total`   | counter   |               |
//! | `router_request_body_bytes`           | gauge     |               |
//! | `router_client_connections`           | gauge     |               |
//! | `router_connections_refused_total`    | counter   |               |
//! | `router_backend_connections`          | gauge     |               |
//!
//! `app` is `-` for requests that matched no route.
//!
//! The two families every request counts into (requests, duration) are kept per worker
//! thread ([`RequestStats`]): each worker adds to its own shard, alone on its cache
//! lines, and a scrape sums the shards. The other families change rarely and are
//! `prometheus_client`'s own.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicI64;
use std::sync::{Arc, Mutex};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::state::Backends;
use crate::worker::Shards;

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

/// Upper bounds of the latency buckets: 0.5 ms .. ~16 s (then +Inf).
const BUCKETS: [f64; 16] = {
    let mut b = [0.0005; 16];
    let mut i = 1;
    while i < 16 {
        b[i] = b[i - 1] * 2.0;
        i += 1;
    }
    b
};

/// One app's requests as one worker counted them.
#[derive(Debug, Default, Clone)]
struct AppStats {
    /// Requests by status (a handful per app).
    statuses: Vec<(u16, u64)>,
    /// Requests per latency bucket ([`BUCKETS`], then +Inf), not cumulative.
    buckets: [u64; BUCKETS.len() + 1],
    /// Sum of the latencies, in seconds.
    sum: f64,
}

impl AppStats {
    fn count_status(&mut self, status: u16, n: u64) {
        match self.statuses.iter_mut().find(|(s, _)| *s == status) {
            Some((_, total)) => *total += n,
            None => self.statuses.push((status, n)),
        }
    }

    fn add(&mut self, status: u16, seconds: f64) {
        self.count_status(status, 1);
        let bucket = BUCKETS
            .iter()
            .position(|&upper| seconds <= upper)
            .unwrap_or(BUCKETS.len());
        self.buckets[bucket] += 1;
        self.sum += seconds;
    }

    fn merge(&mut self, other: &AppStats) {
        for &(status, n) in &other.statuses {
            self.count_status(status, n);
        }
        for (total, n) in self.buckets.iter_mut().zip(other.buckets) {
            *total += n;
        }
        self.sum += other.sum;
    }
}

/// Requests by app and status, and their latency by app, counted per worker thread and
/// summed when scraped (`router_requests_total`, `router_request_duration_seconds`).
#[derive(Debug, Default)]
pub struct RequestStats {
    shards: Shards<foldhash::HashMap<Box<str>, AppStats>>,
}

impl RequestStats {
    /// Counts one request into the calling worker's shard.
    fn add(&self, app: &str, status: u16, seconds: f64) {
        let mut shard = self.shards.mine();
        match shard.get_mut(app) {
            Some(stats) => stats.add(status, seconds),
            None => shard.entry(app.into()).or_default().add(status, seconds),
        }
    }

    /// Every app's counts, summed over the shards, by app name.
    fn totals(&self) -> BTreeMap<Box<str>, AppStats> {
        let mut totals: BTreeMap<Box<str>, AppStats> = BTreeMap::new();
        for shard in self.shards.each() {
            for (app, stats) in shard.iter() {
                match totals.get_mut(app) {
                    Some(total) => total.merge(stats),
                    None => {
                        totals.insert(app.clone(), stats.clone());
                    }
                }
            }
        }
        totals
    }
}

impl Collector for RequestStats {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let totals = self.totals();
        let mut requests = encoder.encode_descriptor(
            "requests",
            "Requests by app and status sent",
            None,
            MetricType::Counter,
        )?;
        for (app, stats) in &totals {
            let mut statuses = stats.statuses.clone();
            statuses.sort_unstable();
            for (status, n) in statuses {
                let labels = RequestLabels {
                    app: app.to_string(),
                    status,
                };
                requests
                    .encode_family(&labels)?
                    .encode_counter::<NoLabelSet, _, u64>(&n, None)?;
            }
        }
        let mut duration = encoder.encode_descriptor(
            "request_duration_seconds",
            "Time from request to the end of the response, by app",
            None,
            MetricType::Histogram,
        )?;
        for (app, stats) in &totals {
            let buckets: Vec<(f64, u64)> = BUCKETS
                .iter()
                .copied()
                .chain(std::iter::once(f64::MAX))
                .zip(stats.buckets)
                .collect();
            let count = stats.buckets.iter().sum();
            let labels = AppLabel {
                app: app.to_string(),
            };
            duration
                .encode_family(&labels)?
                .encode_histogram::<NoLabelSet>(stats.sum, count, &buckets, None)?;
        }
        Ok(())
    }
}

/// The router's metric families and their registry.
pub struct Metrics {
    registry: Registry,
    requests: Arc<RequestStats>,
    retries: Family<RetryLabels, Counter>,
    backends: Family<AppLabel, Gauge>,
    access_dropped: Counter,
    body_bytes: Gauge<i64, AtomicI64>,
    client_connections: Gauge,
    connections_refused: Counter,
    backend_connections: Gauge,
    /// Apps with a backend gauge, so apps that lose every backend drop to 0.
    gauged: Mutex<Vec<String>>,
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
        let requests = Arc::new(RequestStats::default());
        let retries = Family::<RetryLabels, Counter>::default();
        let backends = Family::<AppLabel, Gauge>::default();
        registry.register_collector(Box::new(Arc::clone(&requests)));
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
        let body_bytes = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "request_body_bytes",
            "Bytes of request bodies the router holds (read whole so a retry can resend them)",
            body_bytes.clone(),
        );
        let client_connections = Gauge::default();
        registry.register(
            "client_connections",
            "Client connections open",
            client_connections.clone(),
        );
        let connections_refused = Counter::default();
        registry.register(
            "connections_refused",
            "Client connections closed at once: their client address held its most connections",
            connections_refused.clone(),
        );
        let backend_connections = Gauge::default();
        registry.register(
            "backend_connections",
            "Connections to backends open (pooled, in use and upgraded)",
            backend_connections.clone(),
        );
        Metrics {
            registry,
            backend_connections,
            requests,
            retries,
            backends,
            access_dropped,
            body_bytes,
            client_connections,
            connections_refused,
            gauged: Mutex::new(Vec::new()),
        }
    }

    /// The counter of lost access lines, for the access log's writer to count into.
    pub fn access_dropped(&self) -> Counter {
        self.access_dropped.clone()
    }

    /// The gauge of request body bytes held, for the router's body budget to count in.
    pub fn body_bytes(&self) -> Gauge<i64, AtomicI64> {
        self.body_bytes.clone()
    }

    /// The gauge of open client connections, for the router's admission to set.
    pub fn client_connections(&self) -> Gauge {
        self.client_connections.clone()
    }

    /// The counter of client connections refused for their client's limit.
    pub fn connections_refused(&self) -> Counter {
        self.connections_refused.clone()
    }

    /// The gauge of open backend connections, which is their count.
    pub fn backend_connections(&self) -> Gauge {
        self.backend_connections.clone()
    }

    /// Counts one finished request (into the calling worker's shard).
    pub fn request(&self, app: &str, status: u16, seconds: f64) {
        self.requests.add(app, status, seconds);
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
    use std::sync::Arc;

    #[test]
    fn families_are_exposed() {
        let m = Metrics::new();
        m.request("shop", 200, 0.003);
        m.request("shop", 200, 0.004);
        m.request("shop", 502, 0.001);
        m.retry("shop", "connect");
        let mut backends = Backends::default();
        backends.insert(
            "shop".into(),
            vec![Arc::new(crate::state::Backend::new(
                "127.0.0.1:1".parse().unwrap(),
                "j".into(),
            ))],
        );
        m.set_backends(&backends);
        m.set_backends(&Backends::default());
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

    #[test]
    fn the_shards_of_every_worker_are_summed() {
        let m = Arc::new(Metrics::new());
        let workers: Vec<_> = (0..3)
            .map(|index| {
                let m = Arc::clone(&m);
                std::thread::spawn(move || {
                    crate::worker::set_index(index);
                    for _ in 0..10 {
                        m.request("shop", 200, 0.001);
                    }
                    m.request("shop", 503, 20.0);
                    m.request("-", 404, 0.0);
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap();
        }
        let text = m.encode();
        for needle in [
            r#"router_requests_total{app="shop",status="200"} 30"#,
            r#"router_requests_total{app="shop",status="503"} 3"#,
            r#"router_requests_total{app="-",status="404"} 3"#,
            r#"router_request_duration_seconds_count{app="shop"} 33"#,
            r#"router_request_duration_seconds_bucket{le="0.0005",app="shop"} 0"#,
            r#"router_request_duration_seconds_bucket{le="0.001",app="shop"} 30"#,
            r#"router_request_duration_seconds_bucket{le="16.384",app="shop"} 30"#,
            r#"router_request_duration_seconds_bucket{le="+Inf",app="shop"} 33"#,
            "# TYPE router_request_duration_seconds histogram",
            "# TYPE router_requests counter",
        ] {
            assert!(text.contains(needle), "{needle} missing in\n{text}");
        }
    }
}
