//! Prometheus metrics of the aggregator, all in one [`Registry`] served at `/metrics`.
//!
//! The binary builds one `Registry`, lets each component register its families
//! ([`IngestMetrics::register`], [`DrainMetrics::register`], or a component's own through
//! `&mut Registry`), then freezes it in an `Arc` for the API. Every family is under the
//! `logshipper_` prefix:
//!
//! | family                                      | labels          |
//! |---------------------------------------------|-----------------|
//! | `logshipper_lines_received_total`           | input           |
//! | `logshipper_bytes_received_total`           | input           |
//! | `logshipper_parse_errors_total`             | input, reason   |
//! | `logshipper_connections_total`              | input           |
//! | `logshipper_lines_truncated_total`          | input           |
//! | `logshipper_lines_dropped_total`            | reason          |
//! | `logshipper_duplicates_dropped_total`       |                 |
//! | `logshipper_drain_delivered_lines_total`    | drain           |
//! | `logshipper_drain_failed_total`             | drain           |
//! | `logshipper_drain_lag_lines`                | drain           |
//!
//! Hot paths resolve a family's child once (per connection) and keep the handle.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Prefix of every family registered here.
pub const PREFIX: &str = "logshipper";

/// Labels naming an input (`syslog`, `forward`).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InputLabel {
    /// The input.
    pub input: String,
}

/// Labels of a parse error: the input and a short, fixed reason.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// The input.
    pub input: String,
    /// Short fixed reason (`frame`, `message`, `too_large`, `stalled`, ...).
    pub reason: String,
}

/// Labels of a drop: why lines were not kept.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DropLabel {
    /// Short fixed reason.
    pub reason: String,
}

/// Labels naming a drain.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DrainLabel {
    /// The drain's name.
    pub drain: String,
}

/// Counters of the ingest path.
#[derive(Debug, Clone, Default)]
pub struct IngestMetrics {
    /// Lines accepted from each input.
    pub lines: Family<InputLabel, Counter>,
    /// Bytes read from each input's connections.
    pub bytes: Family<InputLabel, Counter>,
    /// Messages or connections rejected, by input and reason.
    pub parse_errors: Family<ErrorLabels, Counter>,
    /// Connections accepted per input.
    pub connections: Family<InputLabel, Counter>,
    /// Lines that were received but could not be kept, by reason.
    pub drops: Family<DropLabel, Counter>,
    /// Lines dropped because their sender had already delivered them (shipper replays).
    pub duplicates: Counter,
    /// Lines whose message was cut at the line cap, per input.
    pub truncated: Family<InputLabel, Counter>,
}

impl IngestMetrics {
    /// Creates the ingest families and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = IngestMetrics::default();
        let r = registry.sub_registry_with_prefix(PREFIX);
        r.register(
            "lines_received",
            "Lines accepted, per input",
            m.lines.clone(),
        );
        r.register(
            "bytes_received",
            "Bytes read from connections, per input",
            m.bytes.clone(),
        );
        r.register(
            "parse_errors",
            "Messages or connections rejected as bad input, per input and reason",
            m.parse_errors.clone(),
        );
        r.register(
            "connections",
            "Connections accepted, per input",
            m.connections.clone(),
        );
        r.register(
            "lines_dropped",
            "Lines received but not kept, per reason",
            m.drops.clone(),
        );
        r.register(
            "duplicates_dropped",
            "Lines dropped as replays of lines already accepted from the same sender",
            m.duplicates.clone(),
        );
        r.register(
            "lines_truncated",
            "Lines whose message was cut at the line cap, per input",
            m.truncated.clone(),
        );
        m
    }

    /// Counts `n` lines cut at the line cap.
    pub fn truncated(&self, input: &str, n: u64) {
        self.truncated
            .get_or_create(&InputLabel {
                input: input.to_owned(),
            })
            .inc_by(n);
    }

    /// Counts one parse error.
    pub fn parse_error(&self, input: &str, reason: &str) {
        self.parse_errors
            .get_or_create(&ErrorLabels {
                input: input.to_owned(),
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Counts `n` dropped lines.
    pub fn dropped(&self, reason: &str, n: u64) {
        self.drops
            .get_or_create(&DropLabel {
                reason: reason.to_owned(),
            })
            .inc_by(n);
    }

    /// The (lines, bytes) counters of one input, to keep on a connection.
    pub fn input_counters(&self, input: &str) -> (Counter, Counter) {
        let label = InputLabel {
            input: input.to_owned(),
        };
        (
            self.lines.get_or_create(&label).clone(),
            self.bytes.get_or_create(&label).clone(),
        )
    }
}

/// Per-drain delivery metrics; the drain manager updates them.
#[derive(Debug, Clone, Default)]
pub struct DrainMetrics {
    /// Lines a sink confirmed.
    pub delivered: Family<DrainLabel, Counter>,
    /// Lines the sink refused for good and that went to the drain's dead-letter file.
    pub failed: Family<DrainLabel, Counter>,
    /// Lines accepted but not yet delivered.
    pub lag: Family<DrainLabel, Gauge>,
}

impl DrainMetrics {
    /// Creates the drain families and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = DrainMetrics::default();
        let r = registry.sub_registry_with_prefix(PREFIX);
        r.register(
            "drain_delivered_lines",
            "Lines confirmed by the drain's sink",
            m.delivered.clone(),
        );
        r.register(
            "drain_failed",
            "Lines the drain's sink refused for good (dead-lettered)",
            m.failed.clone(),
        );
        r.register(
            "drain_lag_lines",
            "Lines accepted but not yet delivered by the drain",
            m.lag.clone(),
        );
        m
    }

    /// The label set for `drain`.
    pub fn label(drain: &str) -> DrainLabel {
        DrainLabel {
            drain: drain.to_owned(),
        }
    }
}

/// Renders the registry in the OpenMetrics text format.
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry)
        .expect("writing to a String cannot fail");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_registered_families() {
        let mut registry = Registry::default();
        let ingest = IngestMetrics::register(&mut registry);
        let drains = DrainMetrics::register(&mut registry);
        let (lines, bytes) = ingest.input_counters("syslog");
        lines.inc_by(3);
        bytes.inc_by(300);
        ingest.parse_error("forward", "message");
        ingest.dropped("store", 2);
        ingest.duplicates.inc_by(4);
        drains
            .delivered
            .get_or_create(&DrainMetrics::label("es"))
            .inc_by(5);
        drains.lag.get_or_create(&DrainMetrics::label("es")).set(7);
        let text = render(&registry);
        for expected in [
            r#"logshipper_lines_received_total{input="syslog"} 3"#,
            r#"logshipper_bytes_received_total{input="syslog"} 300"#,
            r#"logshipper_parse_errors_total{input="forward",reason="message"} 1"#,
            r#"logshipper_lines_dropped_total{reason="store"} 2"#,
            "logshipper_duplicates_dropped_total 4",
            r#"logshipper_drain_delivered_lines_total{drain="es"} 5"#,
            r#"logshipper_drain_lag_lines{drain="es"} 7"#,
        ] {
            assert!(text.contains(expected), "{expected} missing in\n{text}");
        }
    }
}
