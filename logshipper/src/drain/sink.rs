//! The sinks a drain can send to, behind one enum, and what a send reports back.

use super::config::SinkConfig;
use super::elasticsearch::{EsError, EsSink};
use super::forward::ForwardSink;
use super::retry::RetryReason;
use super::s3::{S3Error, S3Sink};
use super::syslog::{SyslogError, SyslogSink};
use crate::line::LogLine;

/// A line the sink refused for good, with its reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadItem {
    /// The refused line.
    pub line: LogLine,
    /// The sink's status for it.
    pub status: u16,
    /// The sink's error text.
    pub error: String,
}

/// The result of one send that reached the sink.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SendOutcome {
    /// Lines the sink stored.
    pub delivered: u64,
    /// Lines to send again (the sink asked us to, e.g. item 429/503).
    pub retry: Vec<LogLine>,
    /// Why the first of `retry` must be sent again.
    pub retry_reason: Option<RetryReason>,
    /// Lines refused for good.
    pub dead: Vec<DeadItem>,
}

impl SendOutcome {
    /// An outcome where every line was stored.
    pub fn all_delivered(n: usize) -> SendOutcome {
        SendOutcome {
            delivered: n as u64,
            ..SendOutcome::default()
        }
    }
}

/// Errors building a sink from its config.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The Elasticsearch client could not be built.
    #[error(transparent)]
    Es(#[from] EsError),
    /// The S3 client could not be built.
    #[error(transparent)]
    S3(#[from] S3Error),
    /// TLS settings for syslog could not be loaded.
    #[error(transparent)]
    Syslog(#[from] SyslogError),
}

/// One drain's connection to its sink.
pub enum Sink {
    /// Elasticsearch `_bulk`.
    Elasticsearch(EsSink),
    /// S3 objects.
    S3(S3Sink),
    /// RFC 5424 syslog over TCP/TLS.
    Syslog(SyslogSink),
    /// Fluent Forward.
    Forward(ForwardSink),
}

impl Sink {
    /// Builds the sink for `config`; `drain_id` names forward chunks.
    pub fn build(config: &SinkConfig, drain_id: &str) -> Result<Sink, SinkError> {
        Ok(match config {
            SinkConfig::Elasticsearch(c) => Sink::Elasticsearch(EsSink::new(c)?),
            SinkConfig::S3(c) => Sink::S3(S3Sink::new(c)?),
            SinkConfig::Syslog(c) => Sink::Syslog(SyslogSink::new(c)?),
            SinkConfig::Forward(c) => Sink::Forward(ForwardSink::new(c, drain_id)),
        })
    }

    /// Sends a batch. `Err` means nothing is known to be stored: send it all again.
    pub async fn send(&mut self, lines: &[LogLine]) -> Result<SendOutcome, RetryReason> {
        match self {
            Sink::Elasticsearch(s) => s.send(lines).await,
            Sink::S3(s) => s.send(lines).await,
            Sink::Syslog(s) => s.send(lines).await,
            Sink::Forward(s) => s.send(lines).await,
        }
    }
}
