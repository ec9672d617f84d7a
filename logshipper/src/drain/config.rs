//! Drain configuration: what the API stores ([`DrainSpec`]) and its validated form
//! ([`DrainConfig`]), built by a pure function so bad input is refused before any task runs.
//!
//! Accepted URLs (the kind may also be given explicitly, as `paas drain add KIND URL`):
//! - `http(s)://host:port[/path]` with kind `elasticsearch` (or `elasticsearch+http(s)://`);
//!   credentials in the URL user info; option `index` is a strftime pattern
//!   (default `logs-%Y.%m.%d`) rendered from each line's timestamp;
//! - `s3://bucket[/prefix]` with options `endpoint` and `region` (default `us-east-1`);
//!   credentials from the usual `AWS_*` environment variables;
//! - `syslog+tcp://host:port` and `syslog+tls://host:port` (option `ca_file`: PEM roots;
//!   default: the system bundle);
//! - `forward://host:port` (Fluent Forward with acks).

use std::path::PathBuf;
use std::time::Duration;

use chrono::format::{Item, StrftimeItems};
use reqwest::Url;
use serde::{Deserialize, Serialize};

use crate::journal::cursor;

/// A drain as the API receives and stores it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainSpec {
    /// Unique id; also names the drain's journal cursor (`[A-Za-z0-9._-]`).
    pub id: String,
    /// Only ship this app's lines; `None` ships every app (cluster-wide drain).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    /// `elasticsearch`, `s3`, `syslog` or `forward`; inferred from the URL when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Where to send lines.
    pub url: String,
    /// Elasticsearch index pattern (strftime).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<String>,
    /// S3 endpoint for S3-compatible servers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// S3 region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// PEM file of trusted roots for `syslog+tls`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
    /// Flush a batch after this many milliseconds even if it is not full.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flush_ms: Option<u64>,
    /// Flush a batch once it holds about this many bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_bytes: Option<usize>,
}

/// Errors from validating a [`DrainSpec`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// The id is empty or has characters other than `[A-Za-z0-9._-]`.
    #[error("invalid drain id {0:?}: use letters, digits, '.', '_' or '-'")]
    InvalidId(String),
    /// The URL does not parse.
    #[error("invalid drain URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL given.
        url: String,
        /// Why it was refused.
        reason: String,
    },
    /// The kind or URL scheme is not one this aggregator drains to.
    #[error("unknown drain kind {0:?}: use elasticsearch, s3, syslog+tcp, syslog+tls or forward")]
    UnknownKind(String),
    /// The kind and the URL scheme disagree.
    #[error("drain kind {kind} cannot use a {scheme}:// URL")]
    KindMismatch {
        /// The kind given.
        kind: String,
        /// The URL's scheme.
        scheme: String,
    },
    /// The index pattern is not a valid strftime pattern or gives an invalid index name.
    #[error("invalid index pattern {0:?}: {1}")]
    InvalidIndex(String, &'static str),
    /// A size or time option is zero.
    #[error("invalid option {0}: must be greater than zero")]
    InvalidOption(&'static str),
}

/// A validated drain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrainConfig {
    /// Unique id.
    pub id: String,
    /// App filter.
    pub app: Option<String>,
    /// Where and how to send.
    pub sink: SinkConfig,
    /// When to flush a batch.
    pub batch: BatchLimits,
}

/// When the drain hands a batch to its sink: whichever limit is reached first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    /// Approximate encoded bytes.
    pub max_bytes: usize,
    /// Lines.
    pub max_lines: usize,
    /// Age of the batch's first line.
    pub max_age: Duration,
}

/// A validated sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkConfig {
    /// Elasticsearch `_bulk`.
    Elasticsearch(EsConfig),
    /// Gzip NDJSON objects in S3.
    S3(S3Config),
    /// RFC 5424 over TCP or TLS.
    Syslog(SyslogConfig),
    /// Fluent Forward over TCP.
    Forward(ForwardConfig),
}

/// Elasticsearch sink settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EsConfig {
    /// Base URL (credentials removed).
    pub url: Url,
    /// User and password from the URL, for basic auth.
    pub auth: Option<(String, String)>,
    /// Index name pattern.
    pub index: String,
}

/// S3 sink settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Config {
    /// Bucket name.
    pub bucket: String,
    /// Key prefix without leading or trailing slash (may be empty).
    pub prefix: String,
    /// Endpoint of an S3-compatible server.
    pub endpoint: Option<String>,
    /// Region.
    pub region: String,
}

/// Syslog sink settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyslogConfig {
    /// Host name or address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Use TLS, trusting these roots (`None`: the system bundle).
    pub tls: Option<Option<PathBuf>>,
}

/// Fluent Forward sink settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardConfig {
    /// Host name or address.
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl SinkConfig {
    /// The sink's URL for display, without credentials.
    pub fn display_url(&self) -> String {
        match self {
            SinkConfig::Elasticsearch(c) => c.url.to_string(),
            SinkConfig::S3(c) if c.prefix.is_empty() => format!("s3://{}", c.bucket),
            SinkConfig::S3(c) => format!("s3://{}/{}", c.bucket, c.prefix),
            SinkConfig::Syslog(c) => format!(
                "syslog+{}://{}:{}",
                if c.tls.is_some() { "tls" } else { "tcp" },
                c.host,
                c.port
            ),
            SinkConfig::Forward(c) => format!("forward://{}:{}", c.host, c.port),
        }
    }

    fn default_batch(&self) -> BatchLimits {
        let (max_bytes, max_lines, ms) = match self {
            SinkConfig::Elasticsearch(_) => (5 << 20, 10_000, 1_000),
            SinkConfig::S3(_) => (8 << 20, 100_000, 30_000),
            SinkConfig::Syslog(_) | SinkConfig::Forward(_) => (256 << 10, 2_000, 200),
        };
        BatchLimits {
            max_bytes,
            max_lines,
            max_age: Duration::from_millis(ms),
        }
    }
}

/// Checks that `pattern` is valid strftime and renders to a valid index name.
fn validate_index(pattern: &str) -> Result<(), ConfigError> {
    let bad = |why| ConfigError::InvalidIndex(pattern.to_string(), why);
    if StrftimeItems::new(pattern).any(|i| matches!(i, Item::Error)) {
        return Err(bad("not a valid strftime pattern"));
    }
    let sample = chrono::DateTime::UNIX_EPOCH.format(pattern).to_string();
    if sample.is_empty() || sample.len() > 255 {
        return Err(bad("index name must have 1 to 255 bytes"));
    }
    if sample.starts_with(['-', '_', '+', '.']) {
        return Err(bad("index name cannot start with - _ + or ."));
    }
    if sample
        .chars()
        .any(|c| c.is_uppercase() || " \\/*?\"<>|,#:".contains(c))
    {
        return Err(bad(
            "index name must be lowercase without spaces or \\/*?\"<>|,#:",
        ));
    }
    Ok(())
}

fn host_port(url: &Url, raw: &str) -> Result<(String, u16), ConfigError> {
    let invalid = |reason: &str| ConfigError::InvalidUrl {
        url: raw.to_string(),
        reason: reason.to_string(),
    };
    let host = url.host_str().ok_or_else(|| invalid("missing host"))?;
    let port = url.port().ok_or_else(|| invalid("missing port"))?;
    Ok((host.trim_matches(['[', ']']).to_string(), port))
}

impl DrainConfig {
    /// Validates a spec.
    pub fn from_spec(spec: &DrainSpec) -> Result<DrainConfig, ConfigError> {
        if !cursor::valid_name(&spec.id) {
            return Err(ConfigError::InvalidId(spec.id.clone()));
        }
        let raw = spec.url.trim();
        let url = Url::parse(raw).map_err(|e| ConfigError::InvalidUrl {
            url: raw.to_string(),
            reason: e.to_string(),
        })?;
        let scheme = url.scheme().to_string();
        let kind = match spec.kind.as_deref() {
            Some(k) => k.to_ascii_lowercase(),
            None => match scheme.as_str() {
                "s3" => "s3".into(),
                "forward" => "forward".into(),
                "syslog+tcp" | "syslog+tls" => "syslog".into(),
                "elasticsearch+http" | "elasticsearch+https" => "elasticsearch".into(),
                other => return Err(ConfigError::UnknownKind(other.to_string())),
            },
        };
        let mismatch = || ConfigError::KindMismatch {
            kind: kind.clone(),
            scheme: scheme.clone(),
        };
        let sink = match kind.as_str() {
            "elasticsearch" | "es" => {
                let http_scheme = match scheme.as_str() {
                    "http" | "elasticsearch+http" => "http",
                    "https" | "elasticsearch+https" => "https",
                    _ => return Err(mismatch()),
                };
                let index = spec
                    .index
                    .clone()
                    .unwrap_or_else(|| "logs-%Y.%m.%d".to_string());
                validate_index(&index)?;
                let auth = (!url.username().is_empty()).then(|| {
                    (
                        url.username().to_string(),
                        url.password().unwrap_or("").to_string(),
                    )
                });
                let (host, port) = (url.host_str().unwrap_or(""), url.port());
                if host.is_empty() {
                    return Err(ConfigError::InvalidUrl {
                        url: raw.to_string(),
                        reason: "missing host".into(),
                    });
                }
                let mut base = format!("{http_scheme}://{host}");
                if let Some(p) = port {
                    base.push_str(&format!(":{p}"));
                }
                base.push_str(url.path().trim_end_matches('/'));
                base.push('/');
                let url = Url::parse(&base).map_err(|e| ConfigError::InvalidUrl {
                    url: raw.to_string(),
                    reason: e.to_string(),
                })?;
                SinkConfig::Elasticsearch(EsConfig { url, auth, index })
            }
            "s3" => {
                if scheme != "s3" {
                    return Err(mismatch());
                }
                let bucket = url.host_str().unwrap_or("").to_string();
                if bucket.is_empty() {
                    return Err(ConfigError::InvalidUrl {
                        url: raw.to_string(),
                        reason: "missing bucket".into(),
                    });
                }
                SinkConfig::S3(S3Config {
                    bucket,
                    prefix: url.path().trim_matches('/').to_string(),
                    endpoint: spec.endpoint.clone(),
                    region: spec.region.clone().unwrap_or_else(|| "us-east-1".into()),
                })
            }
            "syslog" => {
                let tls = match scheme.as_str() {
                    "syslog+tcp" => None,
                    "syslog+tls" => Some(spec.ca_file.clone().map(PathBuf::from)),
                    _ => return Err(mismatch()),
                };
                let (host, port) = host_port(&url, raw)?;
                SinkConfig::Syslog(SyslogConfig { host, port, tls })
            }
            "forward" => {
                if scheme != "forward" {
                    return Err(mismatch());
                }
                let (host, port) = host_port(&url, raw)?;
                SinkConfig::Forward(ForwardConfig { host, port })
            }
            other => return Err(ConfigError::UnknownKind(other.to_string())),
        };
        let mut batch = sink.default_batch();
        if let Some(ms) = spec.flush_ms {
            if ms == 0 {
                return Err(ConfigError::InvalidOption("flush_ms"));
            }
            batch.max_age = Duration::from_millis(ms);
        }
        if let Some(b) = spec.batch_bytes {
            if b == 0 {
                return Err(ConfigError::InvalidOption("batch_bytes"));
            }
            batch.max_bytes = b;
        }
        Ok(DrainConfig {
            id: spec.id.clone(),
            app: spec.app.clone(),
            sink,
            batch,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(kind: Option<&str>, url: &str) -> DrainSpec {
        DrainSpec {
            id: "d1".into(),
            kind: kind.map(str::to_string),
            url: url.into(),
            ..DrainSpec::default()
        }
    }

    fn check(s: DrainSpec, expected: Result<SinkConfig, ConfigError>) {
        assert_eq!(
            DrainConfig::from_spec(&s).map(|c| c.sink),
            expected,
            "{s:?}"
        );
    }

    #[test]
    fn elasticsearch() {
        check(
            spec(Some("elasticsearch"), "https://u:p@es.example:9200/base/"),
            Ok(SinkConfig::Elasticsearch(EsConfig {
                url: Url::parse("https://es.example:9200/base/").unwrap(),
                auth: Some(("u".into(), "p".into())),
                index: "logs-%Y.%m.%d".into(),
            })),
        );
        let mut s = spec(None, "elasticsearch+http://127.0.0.1:9200");
        s.index = Some("Logs-%Y".into());
        assert!(matches!(
            DrainConfig::from_spec(&s),
            Err(ConfigError::InvalidIndex(..))
        ));
        s.index = Some("logs-%Q".into());
        assert!(matches!(
            DrainConfig::from_spec(&s),
            Err(ConfigError::InvalidIndex(..))
        ));
        check(
            spec(Some("elasticsearch"), "s3://b"),
            Err(ConfigError::KindMismatch {
                kind: "elasticsearch".into(),
                scheme: "s3".into(),
            }),
        );
    }

    #[test]
    fn s3() {
        let mut s = spec(Some("s3"), "s3://logs/prod/eu/");
        s.endpoint = Some("http://127.0.0.1:9000".into());
        check(
            s,
            Ok(SinkConfig::S3(S3Config {
                bucket: "logs".into(),
                prefix: "prod/eu".into(),
                endpoint: Some("http://127.0.0.1:9000".into()),
                region: "us-east-1".into(),
            })),
        );
        check(
            spec(None, "s3:///x"),
            Err(ConfigError::InvalidUrl {
                url: "s3:///x".into(),
                reason: "missing bucket".into(),
            }),
        );
    }

    #[test]
    fn syslog_and_forward() {
        check(
            spec(None, "syslog+tcp://logs.example:514"),
            Ok(SinkConfig::Syslog(SyslogConfig {
                host: "logs.example".into(),
                port: 514,
                tls: None,
            })),
        );
        let mut s = spec(None, "syslog+tls://[::1]:6514");
        s.ca_file = Some("/etc/ca.pem".into());
        check(
            s,
            Ok(SinkConfig::Syslog(SyslogConfig {
                host: "::1".into(),
                port: 6514,
                tls: Some(Some("/etc/ca.pem".into())),
            })),
        );
        check(
            spec(None, "forward://10.0.0.1:24224"),
            Ok(SinkConfig::Forward(ForwardConfig {
                host: "10.0.0.1".into(),
                port: 24224,
            })),
        );
        check(
            spec(None, "syslog+tcp://host"),
            Err(ConfigError::InvalidUrl {
                url: "syslog+tcp://host".into(),
                reason: "missing port".into(),
            }),
        );
        check(
            spec(None, "ftp://x:1"),
            Err(ConfigError::UnknownKind("ftp".into())),
        );
    }

    #[test]
    fn ids_and_options() {
        let mut s = spec(None, "forward://h:1");
        s.id = "a/b".into();
        assert_eq!(
            DrainConfig::from_spec(&s),
            Err(ConfigError::InvalidId("a/b".into()))
        );
        s.id = "ok".into();
        s.flush_ms = Some(0);
        assert_eq!(
            DrainConfig::from_spec(&s),
            Err(ConfigError::InvalidOption("flush_ms"))
        );
        s.flush_ms = Some(50);
        assert_eq!(
            DrainConfig::from_spec(&s).unwrap().batch.max_age,
            Duration::from_millis(50)
        );
    }
}
