//! Where backups are kept: a local directory (the default, under `paas up`'s data dir) or
//! an S3 bucket and prefix (`paas up --backup-store s3://bucket/prefix`), and the
//! `object_store` client for either.
//!
//! S3 settings come from the usual `AWS_*` variables (`AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION` or `AWS_DEFAULT_REGION`,
//! `AWS_ENDPOINT_URL` or `AWS_ENDPOINT` for other S3 servers, where an `http://`
//! endpoint is allowed plain HTTP; `AWS_CA_BUNDLE`, a PEM file of more CAs to trust),
//! overridable with [`S3Options`]. [`S3Options::settings`] is that reading, for whoever
//! hands the same store to another S3 client (the Postgres archive's pgBackRest).
//! Requests are retried a few times only: a backup against a store that is down should
//! fail within seconds, not hang for minutes.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::AmazonS3Builder;
use object_store::chunked::ChunkedStore;
use object_store::local::LocalFileSystem;
use object_store::prefix::PrefixStore;
use object_store::{BackoffConfig, Certificate, ClientOptions, ObjectStore, RetryConfig};

/// The size of the chunks a directory store reads a file in. object_store's own is
/// 8 KiB, one trip to the blocking pool each: for a 1 GiB database's dump that is tens
/// of thousands of trips per pass, and a restore makes two (the check, then the load).
pub const LOCAL_READ_CHUNK: usize = 1 << 20;

/// Why a backup store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum LocationError {
    /// The location is neither a path nor an `s3://bucket[/prefix]` URL.
    #[error("backup store {0:?}: expected a directory or s3://bucket/prefix")]
    Invalid(String),
    /// The local directory could not be created.
    #[error("backup store directory {dir}: {source}")]
    Dir {
        /// The directory.
        dir: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// object_store refused the settings.
    #[error("backup store: {0}")]
    Store(#[from] object_store::Error),
    /// The CA bundle (`AWS_CA_BUNDLE`) could not be read.
    #[error("CA bundle {path}: {reason}")]
    CaBundle {
        /// The file.
        path: PathBuf,
        /// Why it was refused.
        reason: String,
    },
}

/// Where backups live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A directory on this machine.
    Dir(PathBuf),
    /// A bucket, and a key prefix inside it (may be empty).
    S3 {
        /// The bucket.
        bucket: String,
        /// Keys start with this (no leading or trailing `/`).
        prefix: String,
    },
}

/// Explicit S3 settings, over the `AWS_*` environment.
#[derive(Debug, Clone, Default)]
pub struct S3Options {
    /// Endpoint of an S3-compatible server (plain HTTP is then allowed).
    pub endpoint: Option<String>,
    /// Region.
    pub region: Option<String>,
    /// Access key id.
    pub access_key_id: Option<String>,
    /// Secret access key.
    pub secret_access_key: Option<String>,
}

/// The S3 settings in effect: [`S3Options`] over the `AWS_*` environment.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct S3Settings {
    /// Endpoint of an S3-compatible server; `None`: AWS.
    pub endpoint: Option<String>,
    /// Region (`us-east-1` unless set).
    pub region: String,
    /// Access key id.
    pub access_key_id: Option<String>,
    /// Secret access key.
    pub secret_access_key: Option<String>,
    /// Session token of temporary credentials.
    pub session_token: Option<String>,
    /// More CAs to trust, a PEM file (`AWS_CA_BUNDLE`).
    pub ca_bundle: Option<PathBuf>,
}

impl std::fmt::Debug for S3Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hidden = |v: &Option<String>| v.as_ref().map(|_| "<redacted>");
        f.debug_struct("S3Settings")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &hidden(&self.secret_access_key))
            .field("session_token", &hidden(&self.session_token))
            .field("ca_bundle", &self.ca_bundle)
            .finish()
    }
}

impl S3Options {
    /// These options over the variables `env` gives (pure; `std::env::var` in use):
    /// the endpoint from `AWS_ENDPOINT_URL`, else `AWS_ENDPOINT`; the region from
    /// `AWS_REGION`, else `AWS_DEFAULT_REGION`, else `us-east-1` (object_store's order).
    pub fn settings(&self, env: impl Fn(&str) -> Option<String>) -> S3Settings {
        let env = |key: &str| env(key).filter(|v| !v.is_empty());
        S3Settings {
            endpoint: self
                .endpoint
                .clone()
                .or_else(|| env("AWS_ENDPOINT_URL"))
                .or_else(|| env("AWS_ENDPOINT")),
            region: self
                .region
                .clone()
                .or_else(|| env("AWS_REGION"))
                .or_else(|| env("AWS_DEFAULT_REGION"))
                .unwrap_or_else(|| "us-east-1".into()),
            access_key_id: self
                .access_key_id
                .clone()
                .or_else(|| env("AWS_ACCESS_KEY_ID")),
            secret_access_key: self
                .secret_access_key
                .clone()
                .or_else(|| env("AWS_SECRET_ACCESS_KEY")),
            session_token: env("AWS_SESSION_TOKEN"),
            ca_bundle: env("AWS_CA_BUNDLE").map(PathBuf::from),
        }
    }
}

/// The process's environment variable `key`.
pub fn process_env(key: &str) -> Option<String> {
    std::env::var(key).ok()
}

impl Location {
    /// `s3://bucket[/prefix]` or a directory path (`file://` accepted).
    pub fn parse(text: &str) -> Result<Location, LocationError> {
        if let Some(rest) = text.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(LocationError::Invalid(text.into()));
            }
            return Ok(Location::S3 {
                bucket: bucket.into(),
                prefix: prefix.trim_matches('/').into(),
            });
        }
        let path = text.strip_prefix("file://").unwrap_or(text);
        if path.is_empty() || text.contains("://") && !text.starts_with("file://") {
            return Err(LocationError::Invalid(text.into()));
        }
        Ok(Location::Dir(PathBuf::from(path)))
    }

    /// Opens the store: creates the directory, or builds the S3 client from the
    /// environment and `options`.
    pub fn open(&self, options: &S3Options) -> Result<Arc<dyn ObjectStore>, LocationError> {
        match self {
            Location::Dir(dir) => {
                std::fs::create_dir_all(dir).map_err(|source| LocationError::Dir {
                    dir: dir.clone(),
                    source,
                })?;
                // object_store reads a local file in 8 KiB chunks, each on the blocking
                // pool; a restore streams every chunk into the engine's tool, so the
                // chunks are made larger (see [`LOCAL_READ_CHUNK`]).
                Ok(Arc::new(ChunkedStore::new(
                    Arc::new(LocalFileSystem::new_with_prefix(dir)?),
                    LOCAL_READ_CHUNK,
                )))
            }
            Location::S3 { bucket, prefix } => {
                let settings = options.settings(process_env);
                let mut client = ClientOptions::new()
                    .with_connect_timeout(Duration::from_secs(5))
                    .with_timeout(Duration::from_secs(120));
                if let Some(path) = &settings.ca_bundle {
                    let refused = |reason: String| LocationError::CaBundle {
                        path: path.clone(),
                        reason,
                    };
                    let pem = std::fs::read(path).map_err(|e| refused(e.to_string()))?;
                    for ca in
                        Certificate::from_pem_bundle(&pem).map_err(|e| refused(e.to_string()))?
                    {
                        client = client.with_root_certificate(ca);
                    }
                }
                let mut builder = AmazonS3Builder::from_env()
                    .with_bucket_name(bucket)
                    .with_client_options(client)
                    .with_retry(RetryConfig {
                        backoff: BackoffConfig::default(),
                        max_retries: 3,
                        retry_timeout: Duration::from_secs(20),
                    })
                    .with_region(&settings.region);
                if let Some(endpoint) = &settings.endpoint {
                    // A plain-HTTP endpoint is a deliberate choice (a local S3 server).
                    builder = builder
                        .with_endpoint(endpoint)
                        .with_allow_http(endpoint.starts_with("http://"));
                }
                if let Some(key) = &settings.access_key_id {
                    builder = builder.with_access_key_id(key);
                }
                if let Some(secret) = &settings.secret_access_key {
                    builder = builder.with_secret_access_key(secret);
                }
                let s3: Arc<dyn ObjectStore> = Arc::new(builder.build()?);
                if prefix.is_empty() {
                    Ok(s3)
                } else {
                    Ok(Arc::new(PrefixStore::new(s3, prefix.as_str())))
                }
            }
        }
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Dir(dir) => write!(f, "{}", dir.display()),
            Location::S3 { bucket, prefix } if prefix.is_empty() => write!(f, "s3://{bucket}"),
            Location::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_directories_and_buckets() {
        assert_eq!(
            Location::parse("/var/lib/paas/backups").unwrap(),
            Location::Dir("/var/lib/paas/backups".into())
        );
        assert_eq!(
            Location::parse("file:///b").unwrap(),
            Location::Dir("/b".into())
        );
        assert_eq!(
            Location::parse("s3://bk/a/b/").unwrap(),
            Location::S3 {
                bucket: "bk".into(),
                prefix: "a/b".into()
            }
        );
        assert_eq!(
            Location::parse("s3://bk").unwrap(),
            Location::S3 {
                bucket: "bk".into(),
                prefix: "".into()
            }
        );
        assert!(Location::parse("s3://").is_err());
        assert!(Location::parse("gs://x").is_err());
        assert!(Location::parse("").is_err());
        assert_eq!(
            Location::parse("s3://bk/p").unwrap().to_string(),
            "s3://bk/p"
        );
    }

    #[test]
    fn settings_are_the_options_over_the_aws_variables() {
        let vars = |pairs: &'static [(&'static str, &'static str)]| {
            move |key: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == key)
                    .map(|(_, v)| v.to_string())
            }
        };
        let none = S3Options::default().settings(vars(&[]));
        assert_eq!(none.region, "us-east-1");
        assert_eq!(none.endpoint, None);
        let env = vars(&[
            ("AWS_ENDPOINT", "https://old:1"),
            ("AWS_ENDPOINT_URL", "https://localhost:9443"),
            ("AWS_DEFAULT_REGION", "eu-west-1"),
            ("AWS_REGION", "eu-west-3"),
            ("AWS_ACCESS_KEY_ID", "AKID"),
            ("AWS_SECRET_ACCESS_KEY", "shh"),
            ("AWS_SESSION_TOKEN", ""),
            ("AWS_CA_BUNDLE", "/etc/s3-ca.pem"),
        ]);
        let got = S3Options::default().settings(env);
        assert_eq!(got.endpoint.as_deref(), Some("https://localhost:9443"));
        assert_eq!(got.region, "eu-west-3");
        assert_eq!(got.access_key_id.as_deref(), Some("AKID"));
        assert_eq!(got.secret_access_key.as_deref(), Some("shh"));
        assert_eq!(got.session_token, None, "empty is unset");
        assert_eq!(got.ca_bundle, Some(PathBuf::from("/etc/s3-ca.pem")));
        assert!(!format!("{got:?}").contains("shh"));
        let over = S3Options {
            region: Some("ap-south-1".into()),
            ..Default::default()
        }
        .settings(env);
        assert_eq!(over.region, "ap-south-1");
    }
}
