//! Log commands: `paas log` and `paas drain add|list|remove`.

use anyhow::{Context, Result};
use futures::StreamExt;
use reqwest::Method;
use serde_json::{json, Value};

use crate::client::Client;
use crate::{config, table};

const NO_BODY: Option<&Value> = None;

/// Filters and options of `paas log`.
pub struct LogArgs<'a> {
    /// App whose lines to show.
    pub app: &'a str,
    /// How many past lines.
    pub lines: usize,
    /// Keep the connection open for new lines.
    pub follow: bool,
    /// Only this job.
    pub job: Option<&'a str>,
    /// Only this process type.
    pub process_type: Option<&'a str>,
    /// Only stdout or stderr.
    pub stream: Option<&'a str>,
}

/// Formats one NDJSON record of the log API for people:
/// `TIMESTAMP app[type.job]: message`, or the skipped-lines marker.
fn format_line(v: &Value) -> String {
    if let Some(skipped) = v.get("skipped") {
        return format!("--- {skipped} lines skipped (the reader fell behind) ---");
    }
    let ts = v["timestamp_ns"].as_i64().unwrap_or_default();
    let when = chrono::DateTime::from_timestamp_nanos(ts).format("%Y-%m-%dT%H:%M:%S%.6fZ");
    let source = match (v["process_type"].as_str(), v["job"].as_str()) {
        (Some(t), Some(j)) => format!("[{t}.{j}]"),
        (Some(t), None) => format!("[{t}]"),
        (None, Some(j)) => format!("[{j}]"),
        (None, None) => String::new(),
    };
    format!(
        "{when} {}{source}: {}",
        v["app"].as_str().unwrap_or_default(),
        v["message"].as_str().unwrap_or_default()
    )
}

/// `paas log -a APP [-n N] [-f] [--job J] [--type T] [--stream S]`
pub async fn log(json: bool, args: LogArgs<'_>) -> Result<()> {
    let client = Client::new(config::load()?)?;
    let mut query = vec![format!("lines={}", args.lines)];
    if args.follow {
        query.push("follow=true".into());
    }
    for (k, v) in [
        ("job", args.job),
        ("type", args.process_type),
        ("stream", args.stream),
    ] {
        if let Some(v) = v {
            query.push(format!("{k}={v}"));
        }
    }
    let path = format!("/apps/{}/log?{}", args.app, query.join("&"));
    let resp = client.stream(Method::GET, &path).await?;
    let mut body = resp.bytes_stream();
    let mut pending: Vec<u8> = Vec::new();
    while let Some(chunk) = body.next().await {
        pending.extend_from_slice(&chunk.context("log stream interrupted")?);
        while let Some(nl) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=nl).collect();
            let text = String::from_utf8_lossy(&line[..line.len() - 1]);
            if json {
                println!("{text}");
            } else {
                match serde_json::from_str::<Value>(&text) {
                    Ok(v) => println!("{}", format_line(&v)),
                    Err(_) => println!("{text}"),
                }
            }
        }
    }
    Ok(())
}

/// Options of `paas drain add`.
pub struct DrainArgs<'a> {
    /// Only this app's lines (cluster-wide when absent).
    pub app: Option<&'a str>,
    /// `elasticsearch`, `s3`, `syslog` or `forward`.
    pub kind: &'a str,
    /// Where to send lines.
    pub url: &'a str,
    /// Elasticsearch index pattern.
    pub index: Option<&'a str>,
    /// S3 endpoint.
    pub endpoint: Option<&'a str>,
    /// S3 region.
    pub region: Option<&'a str>,
    /// PEM roots for syslog+tls.
    pub ca_file: Option<&'a str>,
    /// Batch age limit.
    pub flush_ms: Option<u64>,
}

/// `paas drain add [-a APP] KIND URL [...]`
pub async fn drain_add(json: bool, a: DrainArgs<'_>) -> Result<()> {
    let client = Client::new(config::load()?)?;
    let body = json!({
        "app": a.app, "kind": a.kind, "url": a.url, "index": a.index,
        "endpoint": a.endpoint, "region": a.region, "ca_file": a.ca_file,
        "flush_ms": a.flush_ms,
    });
    let drain: Value = client.call(Method::POST, "/drains", Some(&body)).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&drain)?);
    } else {
        let scope = a
            .app
            .map(|app| format!("app {app}"))
            .unwrap_or("every app".into());
        println!(
            "Added drain {} of {scope} to {}",
            drain["id"].as_str().unwrap_or_default(),
            a.url
        );
    }
    Ok(())
}

/// `paas drain list [-a APP]`
pub async fn drain_list(json: bool, app: Option<&str>) -> Result<()> {
    let client = Client::new(config::load()?)?;
    let path = match app {
        Some(app) => format!("/drains?app={app}"),
        None => "/drains".to_string(),
    };
    let drains: Value = client.call(Method::GET, &path, NO_BODY).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&drains)?);
        return Ok(());
    }
    let n = |v: &Value| v.as_u64().map(|n| n.to_string()).unwrap_or("-".into());
    let rows: Vec<Vec<String>> = drains
        .as_array()
        .into_iter()
        .flatten()
        .map(|d| {
            let st = &d["status"];
            let err = st["last_error"]["message"]
                .as_str()
                .or(st["last_error"].as_str())
                .unwrap_or_default()
                .to_string();
            vec![
                d["id"].as_str().unwrap_or_default().to_string(),
                d["app"].as_str().unwrap_or("*").to_string(),
                d["url"].as_str().unwrap_or_default().to_string(),
                n(&st["delivered"]),
                n(&st["failed"]),
                n(&st["dropped"]),
                n(&st["lag"]),
                err,
            ]
        })
        .collect();
    table::print(
        &[
            "ID",
            "APP",
            "URL",
            "DELIVERED",
            "FAILED",
            "DROPPED",
            "LAG",
            "LAST ERROR",
        ],
        &rows,
    );
    Ok(())
}

/// `paas drain remove ID`
pub async fn drain_remove(json: bool, id: &str) -> Result<()> {
    let client = Client::new(config::load()?)?;
    client
        .call_raw(Method::DELETE, &format!("/drains/{id}"), NO_BODY)
        .await?;
    if json {
        println!("{}", json!({ "removed": id }));
    } else {
        println!("Removed drain {id}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_lines_and_markers() {
        let v = json!({"id": 1, "app": "shop", "process_type": "web", "job": "j1",
                       "stream": "stdout", "timestamp_ns": 1_700_000_000_123_456_000i64,
                       "message": "GET / 200"});
        assert_eq!(
            format_line(&v),
            "2023-11-14T22:13:20.123456Z shop[web.j1]: GET / 200"
        );
        assert_eq!(
            format_line(&json!({"skipped": 12, "message": "12 lines skipped"})),
            "--- 12 lines skipped (the reader fell behind) ---"
        );
    }
}
