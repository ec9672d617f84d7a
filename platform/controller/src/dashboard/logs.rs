//! The Logs page: filters (process type, stream), a pause button and a live view.
//!
//! `GET /ui/apps/{app}/logs/stream` turns the API's follow (`GET /apps/{app}/log?
//! follow=true`, NDJSON, one line or one `{"skipped": K}` marker per line) into
//! server-sent events whose data is the rendered `<li>`: `event: line` or
//! `event: skipped`. The glue script reads it with `fetch` (an `EventSource` cannot send
//! the bearer header), appends lines, and while paused holds them (bounded; what it
//! cannot hold becomes a skipped marker of its own). Dropping the response (the tab
//! navigated away, a filter changed) drops the follow on the aggregator.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::pin::Pin;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{Method, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use chrono::{TimeZone, Utc};
use futures::{Stream, StreamExt};
use maud::{html, Markup};
use paas_model::Release;
use serde::Deserialize;

use super::client::{seg, Api, Caller};
use super::html::fragment;

/// Lines of history shown when the view opens.
const BACKLOG_LINES: u32 = 200;

/// The filters, from the form (empty means "any").
#[derive(Deserialize, Default)]
pub struct Filters {
    #[serde(default, rename = "type")]
    process_type: String,
    #[serde(default)]
    stream: String,
}

impl Filters {
    /// The query string for the API and for the stream URL.
    fn query(&self) -> String {
        let mut q = String::new();
        if !self.process_type.is_empty() {
            q.push_str(&format!("&type={}", seg(&self.process_type)));
        }
        if !self.stream.is_empty() {
            q.push_str(&format!("&stream={}", seg(&self.stream)));
        }
        q
    }
}

/// `GET /ui/apps/{app}/logs?type=&stream=`
pub async fn page(
    State(api): State<Api>,
    caller: Caller,
    Path(app): Path<String>,
    Query(filters): Query<Filters>,
) -> Response {
    #[derive(Deserialize)]
    struct AppInfo {
        name: String,
        release: u64,
    }
    let info: AppInfo = match api.get(&caller, &format!("/apps/{}", seg(&app))).await {
        Ok(i) => i,
        Err(r) => return r.into_response(),
    };
    let types: Vec<String> = match api
        .get::<Release>(
            &caller,
            &format!("/apps/{}/releases/{}", seg(&app), info.release),
        )
        .await
    {
        Ok(r) => r.processes.into_keys().collect(),
        Err(r) => return r.into_response(),
    };
    let app = info.name;
    fragment(
        StatusCode::OK,
        html! {
            h1 tabindex="-1" { (app) " logs" }
            nav class="tabs" aria-label="App" {
                a href=(format!("#/apps/{app}")) { "Overview" }
                a href=(format!("#/apps/{app}/logs")) aria-current="page" { "Logs" }
            }
            (view(&app, &types, &filters))
        },
    )
}

/// The filter form and the live view; the form reloads this on every change.
fn view(app: &str, types: &[String], filters: &Filters) -> Markup {
    let stream_url = format!(
        "/ui/apps/{app}/logs/stream?lines={BACKLOG_LINES}{}",
        filters.query()
    );
    html! {
        div id="log-view" class="log-view" data-log-stream=(stream_url) {
            form class="inline log-filters" hx-get=(format!("/ui/apps/{app}/logs")) hx-target="#main" hx-trigger="change" {
                label for="log-type" { "Process type" }
                select id="log-type" name="type" {
                    option value="" selected[filters.process_type.is_empty()] { "any" }
                    @for t in types {
                        option value=(t) selected[&filters.process_type == t] { (t) }
                    }
                    @if !filters.process_type.is_empty() && !types.contains(&filters.process_type) {
                        option value=(filters.process_type) selected { (filters.process_type) }
                    }
                }
                label for="log-stream" { "Stream" }
                select id="log-stream" name="stream" {
                    @for (value, label) in [("", "any"), ("stdout", "stdout"), ("stderr", "stderr")] {
                        option value=(value) selected[filters.stream == value] { (label) }
                    }
                }
                button type="button" class="log-pause" aria-pressed="false" { "Pause" }
                span class="log-status meta" role="status" { "connecting…" }
            }
            ol class="log-lines" aria-label="Log lines" aria-live="off" tabindex="0" {}
        }
    }
}

/// `GET /ui/apps/{app}/logs/stream`: the follow as server-sent events.
pub async fn stream(
    State(api): State<Api>,
    caller: Caller,
    Path(app): Path<String>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    let mut path = format!("/apps/{}/log?follow=true", seg(&app));
    for key in ["lines", "type", "stream"] {
        if let Some(v) = q.get(key).filter(|v| !v.is_empty()) {
            path.push_str(&format!("&{key}={}", seg(v)));
        }
    }
    let resp = match api.send(&caller, Method::GET, &path, None).await {
        Ok(resp) => resp,
        Err(r) => return (r.status, r.message).into_response(),
    };
    let body: ByteStream = Box::pin(resp.into_body().into_data_stream());
    let events = ndjson_lines(body)
        .filter(|line| std::future::ready(!line.is_empty()))
        .map(|line| Ok::<_, Infallible>(event(&line)));
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}

type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, axum::Error>> + Send>>;

/// Splits a byte stream into lines (without the newline); a last unterminated line is
/// yielded when the stream ends; an error ends the stream.
fn ndjson_lines(body: ByteStream) -> impl Stream<Item = Vec<u8>> + Send {
    futures::stream::unfold(
        (body, Vec::new(), false),
        |(mut body, mut buf, mut done)| async move {
            loop {
                if let Some(i) = buf.iter().position(|b| *b == b'\n') {
                    let mut line: Vec<u8> = buf.drain(..=i).collect();
                    line.pop();
                    return Some((line, (body, buf, done)));
                }
                if done {
                    if buf.is_empty() {
                        return None;
                    }
                    let rest = std::mem::take(&mut buf);
                    return Some((rest, (body, buf, done)));
                }
                match body.next().await {
                    Some(Ok(chunk)) => buf.extend_from_slice(&chunk),
                    Some(Err(_)) | None => done = true,
                }
            }
        },
    )
}

/// One NDJSON line of the API as an event carrying its rendered `<li>`.
fn event(line: &[u8]) -> Event {
    let (kind, markup) = render_line(line);
    // SSE data cannot hold a carriage return; newlines become separate `data:` lines,
    // which the reader joins again.
    Event::default()
        .event(kind)
        .data(markup.into_string().replace('\r', ""))
}

/// `("line" | "skipped", <li>)` for one NDJSON line of the API.
fn render_line(line: &[u8]) -> (&'static str, Markup) {
    let v: serde_json::Value = match serde_json::from_slice(line) {
        Ok(v) => v,
        Err(_) => {
            let text = String::from_utf8_lossy(line);
            return (
                "line",
                html! { li class="log-line" { span class="msg" { (text) } } },
            );
        }
    };
    if let Some(n) = v["skipped"].as_u64() {
        return (
            "skipped",
            html! { li class="log-skipped" role="note" { "— " (n) " lines skipped —" } },
        );
    }
    let ts = v["timestamp_ns"]
        .as_i64()
        .map(|ns| Utc.timestamp_nanos(ns))
        .map(|t| t.format("%H:%M:%S%.3f").to_string())
        .unwrap_or_default();
    let source = match (v["process_type"].as_str(), v["job"].as_str()) {
        (Some(t), Some(j)) => format!("{t}.{j}"),
        (Some(t), None) => t.to_string(),
        (None, Some(j)) => j.to_string(),
        (None, None) => "-".to_string(),
    };
    let stream = v["stream"].as_str().unwrap_or("unknown");
    (
        "line",
        html! {
            li class=(format!("log-line stream-{stream}")) data-id=(v["id"].as_u64().unwrap_or(0)) {
                time { (ts) } " "
                span class="src" { (source) } " "
                span class="stream" { (stream) } " "
                span class="msg" { (v["message"].as_str().unwrap_or_default()) }
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_and_markers_render_escaped() {
        let (kind, m) = render_line(
            br#"{"id":7,"app":"shop","process_type":"web","job":"j1","stream":"stderr","timestamp_ns":0,"message":"<script>x</script>"}"#,
        );
        let m = m.into_string();
        assert_eq!(kind, "line");
        assert!(m.contains("&lt;script&gt;x&lt;/script&gt;"), "{m}");
        assert!(
            m.contains("web.j1") && m.contains("stream-stderr") && m.contains("00:00:00.000"),
            "{m}"
        );

        let (kind, m) = render_line(br#"{"skipped":12,"message":"12 lines skipped"}"#);
        assert_eq!(kind, "skipped");
        assert!(m.into_string().contains("12 lines skipped"));

        let (kind, m) = render_line(b"not json <b>");
        assert_eq!(kind, "line");
        assert!(m.into_string().contains("not json &lt;b&gt;"));
    }

    #[tokio::test]
    async fn byte_chunks_split_into_lines() {
        let chunks: Vec<Result<Bytes, axum::Error>> = vec![
            Ok(Bytes::from_static(b"{\"a\":1}\n{\"b\"")),
            Ok(Bytes::from_static(b":2}\n\n")),
            Ok(Bytes::from_static(b"tail")),
        ];
        let lines: Vec<Vec<u8>> = ndjson_lines(Box::pin(futures::stream::iter(chunks)))
            .collect()
            .await;
        assert_eq!(
            lines,
            vec![
                b"{\"a\":1}".to_vec(),
                b"{\"b\":2}".to_vec(),
                Vec::new(),
                b"tail".to_vec()
            ]
        );
    }
}
