//! S3 sink: each batch becomes gzip-compressed NDJSON objects, one per app and hour.
//!
//! Key: `<prefix>/<app>/YYYY/MM/DD/HH/<first-id>-<last-id>.ndjson.gz` (UTC hour of the
//! lines' timestamps). A row is the [`LogLine`] as JSON, id included, so readers can
//! count and dedupe. The key depends only on the lines, so sending the same batch again
//! after a failure overwrites instead of duplicating. After a restart the journal may
//! cut batches differently; lines can then appear in two objects (at-least-once), and
//! the ids tell them apart.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use flate2::write::GzEncoder;
use flate2::Compression;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{ClientOptions, ObjectStore, PutPayload, RetryConfig};

use super::config::S3Config;
use super::retry::RetryReason;
use super::sink::SendOutcome;
use crate::line::LogLine;

/// Errors building the S3 client.
#[derive(Debug, thiserror::Error)]
pub enum S3Error {
    /// object_store refused the settings (bad endpoint, missing region).
    #[error("s3 client: {0}")]
    Build(#[from] object_store::Error),
}

/// Writes batches as objects to one bucket.
pub struct S3Sink {
    store: Arc<dyn ObjectStore>,
    prefix: String,
}

/// Replaces characters that do not belong in a key segment.
fn key_segment(s: &str) -> String {
    let out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.is_empty() || out.chars().all(|c| c == '.') {
        "_".into()
    } else {
        out
    }
}

/// The object key for lines of `app` in the hour of `timestamp_ns`, ids `first..=last`.
pub fn object_key(prefix: &str, app: &str, timestamp_ns: i64, first: u64, last: u64) -> String {
    let hour = Utc.timestamp_nanos(timestamp_ns).format("%Y/%m/%d/%H");
    let name = format!("{}/{hour}/{first}-{last}.ndjson.gz", key_segment(app));
    if prefix.is_empty() {
        name
    } else {
        format!("{prefix}/{name}")
    }
}

/// Groups lines by object key, keeping id order inside each group.
pub fn group_objects<'a>(prefix: &str, lines: &'a [LogLine]) -> Vec<(String, Vec<&'a LogLine>)> {
    let mut groups: BTreeMap<(String, i64), Vec<&LogLine>> = BTreeMap::new();
    for line in lines {
        let hour = line.timestamp_ns.div_euclid(3_600_000_000_000);
        groups
            .entry((line.app.to_string(), hour))
            .or_default()
            .push(line);
    }
    groups
        .into_values()
        .map(|g| {
            let (first, last) = (g[0].id, g[g.len() - 1].id);
            (
                object_key(prefix, &g[0].app, g[0].timestamp_ns, first, last),
                g,
            )
        })
        .collect()
}

/// Gzip-compressed NDJSON of `lines`.
pub fn encode_object(lines: &[&LogLine]) -> Vec<u8> {
    let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
    for line in lines {
        serde_json::to_writer(&mut gz, line).expect("json to gzip buffer");
        gz.write_all(b"\n").expect("gzip to Vec");
    }
    gz.finish().expect("gzip to Vec")
}

impl S3Sink {
    /// Builds the client; credentials come from the `AWS_*` environment variables.
    pub fn new(config: &S3Config) -> Result<S3Sink, S3Error> {
        let mut b = AmazonS3Builder::from_env()
            .with_bucket_name(&config.bucket)
            .with_region(&config.region)
            .with_client_options(
                ClientOptions::new()
                    .with_connect_timeout(Duration::from_secs(5))
                    .with_timeout(Duration::from_secs(60)),
            )
            // The drain retries forever with its own backoff; keep object_store's short so
            // an outage is reported (last error) instead of hidden inside one call.
            .with_retry(RetryConfig {
                max_retries: 2,
                retry_timeout: Duration::from_secs(10),
                ..RetryConfig::default()
            });
        if let Some(endpoint) = &config.endpoint {
            b = b
                .with_endpoint(endpoint)
                .with_allow_http(true)
                .with_virtual_hosted_style_request(false);
        }
        Ok(S3Sink {
            store: Arc::new(b.build()?),
            prefix: config.prefix.clone(),
        })
    }

    /// Uploads the batch; on any failure the whole batch is sent again (same keys).
    pub async fn send(&self, lines: &[LogLine]) -> Result<SendOutcome, RetryReason> {
        for (key, group) in group_objects(&self.prefix, lines) {
            let body = encode_object(&group);
            self.store
                .put(&ObjectPath::from(key), PutPayload::from(body))
                .await
                .map_err(|e| RetryReason::Unreachable(e.to_string()))?;
        }
        Ok(SendOutcome::all_delivered(lines.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::line::Stream;

    fn line(id: u64, app: &str, ts: i64) -> LogLine {
        LogLine {
            id,
            app: app.into(),
            process_type: None,
            job: None,
            host: None,
            stream: Stream::Stdout,
            timestamp_ns: ts,
            message: format!("m{id}"),
        }
    }

    #[test]
    fn keys() {
        let ts = 1_700_000_000_000_000_000;
        assert_eq!(
            object_key("logs/prod", "shop", ts, 5, 9),
            "logs/prod/shop/2023/11/14/22/5-9.ndjson.gz"
        );
        assert_eq!(
            object_key("", "a/b", 0, 1, 1),
            "a_b/1970/01/01/00/1-1.ndjson.gz"
        );
        assert_eq!(
            object_key("", "..", 0, 1, 1),
            "_/1970/01/01/00/1-1.ndjson.gz"
        );
    }

    #[test]
    fn groups_by_app_and_hour() {
        let h = 3_600_000_000_000i64;
        let lines = vec![
            line(1, "a", 0),
            line(2, "b", 10),
            line(3, "a", h + 1),
            line(4, "a", 20),
        ];
        let g = group_objects("p", &lines);
        let keys: Vec<_> = g.iter().map(|(k, v)| (k.as_str(), v.len())).collect();
        assert_eq!(
            keys,
            vec![
                ("p/a/1970/01/01/00/1-4.ndjson.gz", 2),
                ("p/a/1970/01/01/01/3-3.ndjson.gz", 1),
                ("p/b/1970/01/01/00/2-2.ndjson.gz", 1),
            ]
        );
    }

    #[test]
    fn objects_are_gzip_ndjson() {
        let lines = [line(1, "a", 0), line(2, "a", 0)];
        let refs: Vec<&LogLine> = lines.iter().collect();
        let gz = encode_object(&refs);
        let mut text = String::new();
        std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&gz[..]), &mut text)
            .unwrap();
        let back: Vec<LogLine> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(back, lines);
    }
}
