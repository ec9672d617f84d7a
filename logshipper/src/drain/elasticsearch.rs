//! Elasticsearch sink: one `_bulk` request per batch, every response item classified.
//!
//! Body: NDJSON pairs `{"index":{"_index":I,"_id":"<line id>"}}` + document, where I is
//! the index pattern rendered with the line's timestamp (UTC). Using the line id as `_id`
//! makes a replay overwrite rather than duplicate. Document fields: `@timestamp`,
//! `message`, `app`, `process_type`, `job`, `host`, `stream`, `id`.
//!
//! A whole-request failure (connection, 429, 5xx, other status, unparseable body) sends
//! the batch again later; otherwise each item is delivered, retried (429/5xx) or
//! dead-lettered (other 4xx), see [`super::retry`].

use std::time::Duration;

use chrono::{TimeZone, Utc};
use reqwest::Url;
use serde::Deserialize;
use serde_json::json;

use super::config::EsConfig;
use super::retry::{item_action, request_failure, ItemAction, RetryReason};
use super::sink::{DeadItem, SendOutcome};
use crate::line::{LogLine, Stream};

/// Errors building the sink.
#[derive(Debug, thiserror::Error)]
pub enum EsError {
    /// The HTTP client could not be built (TLS setup).
    #[error("elasticsearch client: {0}")]
    Client(#[from] reqwest::Error),
    /// The `_bulk` URL could not be formed from the base URL.
    #[error("elasticsearch url: {0}")]
    Url(String),
}

/// Sends batches to one Elasticsearch cluster.
pub struct EsSink {
    client: reqwest::Client,
    bulk_url: Url,
    auth: Option<(String, String)>,
    index: String,
}

/// The document stored for one line.
fn document(line: &LogLine) -> serde_json::Value {
    let ts = Utc.timestamp_nanos(line.timestamp_ns);
    json!({
        "@timestamp": ts.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        "message": line.message,
        "app": line.app,
        "process_type": line.process_type,
        "job": line.job,
        "host": line.host,
        "stream": match line.stream { Stream::Stdout => "stdout", Stream::Stderr => "stderr", Stream::Unknown => "unknown" },
        "id": line.id,
    })
}

/// Builds the NDJSON `_bulk` body for `lines`.
pub fn bulk_body(lines: &[LogLine], index_pattern: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(lines.len() * 256);
    for line in lines {
        let index = Utc
            .timestamp_nanos(line.timestamp_ns)
            .format(index_pattern)
            .to_string();
        let action = json!({"index": {"_index": index, "_id": line.id.to_string()}});
        serde_json::to_writer(&mut out, &action).expect("json to Vec");
        out.push(b'\n');
        serde_json::to_writer(&mut out, &document(line)).expect("json to Vec");
        out.push(b'\n');
    }
    out
}

#[derive(Deserialize)]
struct BulkResponse {
    errors: bool,
    items: Vec<std::collections::HashMap<String, BulkItem>>,
}

#[derive(Deserialize)]
struct BulkItem {
    status: u16,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

/// One classified response item: what to do, and the sink's error text if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemResult {
    /// Delivered, retry or dead-letter.
    pub action: ItemAction,
    /// The item's `error` object as text, when present.
    pub error: Option<String>,
}

/// Parses a `_bulk` response for a request of `expected` items.
pub fn parse_response(body: &[u8], expected: usize) -> Result<Vec<ItemResult>, RetryReason> {
    let resp: BulkResponse = serde_json::from_slice(body)
        .map_err(|e| RetryReason::BadResponse(format!("unparseable _bulk response: {e}")))?;
    if resp.items.len() != expected {
        return Err(RetryReason::BadResponse(format!(
            "_bulk response has {} items for {expected} sent",
            resp.items.len()
        )));
    }
    resp.items
        .into_iter()
        .map(|mut item| {
            let Some((_, inner)) = item.drain().next() else {
                return Err(RetryReason::BadResponse("empty _bulk item".into()));
            };
            let action = if resp.errors {
                item_action(inner.status)
            } else {
                ItemAction::Delivered
            };
            Ok(ItemResult {
                action,
                error: inner.error.map(|e| e.to_string()),
            })
        })
        .collect()
}

impl EsSink {
    /// Builds the sink (no connection is made yet).
    pub fn new(config: &EsConfig) -> Result<EsSink, EsError> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60))
            .build()?;
        Ok(EsSink {
            client,
            bulk_url: config
                .url
                .join("_bulk")
                .map_err(|e| EsError::Url(e.to_string()))?,
            auth: config.auth.clone(),
            index: config.index.clone(),
        })
    }

    /// Sends one batch; items to retry come back in the outcome.
    pub async fn send(&self, lines: &[LogLine]) -> Result<SendOutcome, RetryReason> {
        let body = bulk_body(lines, &self.index);
        let mut req = self
            .client
            .post(self.bulk_url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/x-ndjson")
            .body(body);
        if let Some((user, pass)) = &self.auth {
            req = req.basic_auth(user, Some(pass));
        }
        let resp = req
            .send()
            .await
            .map_err(|e| RetryReason::Unreachable(e.without_url().to_string()))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(request_failure(status.as_u16()));
        }
        let body = resp
            .bytes()
            .await
            .map_err(|e| RetryReason::Unreachable(e.without_url().to_string()))?;
        let items = parse_response(&body, lines.len())?;
        let mut outcome = SendOutcome::default();
        for (line, item) in lines.iter().zip(items) {
            match item.action {
                ItemAction::Delivered => outcome.delivered += 1,
                ItemAction::Retry(reason) => {
                    outcome.retry_reason.get_or_insert(reason);
                    outcome.retry.push(line.clone());
                }
                ItemAction::DeadLetter(status) => outcome.dead.push(DeadItem {
                    line: line.clone(),
                    status,
                    error: item.error.unwrap_or_default(),
                }),
            }
        }
        Ok(outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(id: u64, ts: i64) -> LogLine {
        LogLine {
            id,
            app: "shop".into(),
            process_type: None,
            job: None,
            host: None,
            stream: Stream::Stdout,
            timestamp_ns: ts,
            message: format!("m{id}"),
        }
    }

    #[test]
    fn body_uses_line_timestamp_for_index_and_id_for_doc_id() {
        let body = bulk_body(
            &[line(7, 1_700_000_000_000_000_000), line(8, 0)],
            "logs-%Y.%m.%d",
        );
        let text = String::from_utf8(body).unwrap();
        let rows: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(rows.len(), 4);
        assert_eq!(rows[0]["index"]["_index"], "logs-2023.11.14");
        assert_eq!(rows[0]["index"]["_id"], "7");
        assert_eq!(rows[1]["message"], "m7");
        assert_eq!(rows[1]["@timestamp"], "2023-11-14T22:13:20.000000Z");
        assert_eq!(rows[2]["index"]["_index"], "logs-1970.01.01");
    }

    #[test]
    fn response_items_are_classified() {
        let body = br#"{"took":3,"errors":true,"items":[
            {"index":{"_id":"1","status":201}},
            {"index":{"_id":"2","status":429,"error":{"type":"es_rejected_execution_exception"}}},
            {"index":{"_id":"3","status":400,"error":{"type":"mapper_parsing_exception"}}},
            {"create":{"_id":"4","status":503}}]}"#;
        let got = parse_response(body, 4).unwrap();
        let actions: Vec<_> = got.iter().map(|i| i.action.clone()).collect();
        assert_eq!(
            actions,
            vec![
                ItemAction::Delivered,
                ItemAction::Retry(RetryReason::RateLimited),
                ItemAction::DeadLetter(400),
                ItemAction::Retry(RetryReason::ServerError(503)),
            ]
        );
        assert!(got[2].error.as_deref().unwrap().contains("mapper_parsing"));
    }

    #[test]
    fn bad_responses_are_retry_reasons() {
        assert!(matches!(
            parse_response(b"<html>oops", 1),
            Err(RetryReason::BadResponse(_))
        ));
        assert!(matches!(
            parse_response(br#"{"errors":false,"items":[]}"#, 2),
            Err(RetryReason::BadResponse(_))
        ));
    }
}
