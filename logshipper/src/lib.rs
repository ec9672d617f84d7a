//! `paas-logshipper`: the log aggregator, and the host agent's side of shipping.
//!
//! A line's way in: [`ingest`] (TCP/TLS listeners, one task per connection) decodes
//! [`syslog`] (RFC 6587 framing, RFC 5424) or [`forward`] (Fluent Forward, all four
//! modes) into [`LogLine`]s, every message built through [`text::BoundedText`] and cut at
//! the line cap; [`aggregator`] accepts them: the [`journal`] assigns ids and keeps them
//! on disk (dropping a shipper's replays, [`dedupe`]), then the [`store`] keeps the last
//! lines per app for `paas log` ([`api`]). A line's way out: [`drain`] (one task per
//! drain reads the journal from its cursor, sends a batch, commits). [`shipper`] is the
//! host agent's spool and sender; [`service`] wires it all for `paas up`; [`metrics`] is
//! the one Prometheus registry. [`tls`] is syslog's mutual TLS (both sides) and
//! [`close_log`] the limit on lines about refused or broken connections.
//!
//! Invariants (details in ARCHITECTURE.md):
//! - Decoding is linear in the bytes received and does no I/O; no line exceeds the cap.
//! - A forward `chunk` is acked only after the journal fsync covering it; a drain
//!   commits its cursor only after its sink stored or refused every line of the batch.
//! - Journal ids are never reused; memory does not grow with the backlog.
//! - With credentials configured, no line from a connection that did not present them
//!   (client certificate, shared key) is accepted, and the API answers 401 without the
//!   bearer secret.

pub mod aggregator;
pub mod api;
pub mod close_log;
pub mod conn_buffer;
pub mod dedupe;
pub mod drain;
pub mod encode;
pub mod forward;
pub mod ingest;
pub mod journal;
pub mod line;
pub mod metrics;
pub mod service;
pub mod shipper;
pub mod store;
pub mod syslog;
pub mod text;
pub mod tls;

pub use line::{LogLine, Stream};
