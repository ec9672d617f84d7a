//! HTTP API of the aggregator, an axum [`Router`] the `paas` binary mounts.
//!
//! * `GET /apps/{app}/log?lines=N&follow=true&job=J&type=T&stream=stdout|stderr` — NDJSON:
//!   one JSON [`LogLine`] per line, oldest first: the last `N` lines (default 100) passing
//!   the filters, then, with `follow=true`, new lines as they arrive. A follower that
//!   fell behind gets a marker line `{"skipped": K, "message": "K lines skipped"}` where
//!   the gap is, never a silent gap.
//! * `GET /metrics` — the Prometheus registry in the OpenMetrics text format.
//!
//! Bad query parameters get `400` with a JSON `{"error": ...}` body.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures::StreamExt;
use prometheus_client::registry::Registry;
use serde::Deserialize;

use crate::line::{LogLine, Stream};
use crate::store::{Filter, FollowEvent, Store};

/// Lines returned when `lines` is not given.
pub const DEFAULT_LINES: usize = 100;

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState {
    /// Where lines are read from.
    pub store: Arc<Store>,
    /// Every metric family, rendered at `/metrics`.
    pub registry: Arc<Registry>,
}

/// Builds the router serving the log query and metrics endpoints.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/apps/{app}/log", get(app_log))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// Query parameters of the log endpoint.
#[derive(Debug, Deserialize)]
struct LogQuery {
    lines: Option<usize>,
    #[serde(default)]
    follow: bool,
    job: Option<String>,
    #[serde(rename = "type")]
    process_type: Option<String>,
    stream: Option<String>,
}

fn bad_request(message: String) -> Response {
    tracing::info!(error = %message, "rejected log query");
    (
        StatusCode::BAD_REQUEST,
        axum::Json(serde_json::json!({ "error": message })),
    )
        .into_response()
}

fn ndjson(lines: &[LogLine]) -> Bytes {
    let mut out = Vec::with_capacity(lines.len() * 200);
    for line in lines {
        serde_json::to_writer(&mut out, line).expect("a line always serializes");
        out.push(b'\n');
    }
    Bytes::from(out)
}

fn event_bytes(event: FollowEvent) -> Bytes {
    match event {
        FollowEvent::Lines(lines) => ndjson(&lines),
        FollowEvent::Skipped(n) => {
            let mut out = serde_json::to_vec(&serde_json::json!({
                "skipped": n,
                "message": format!("{n} lines skipped"),
            }))
            .expect("json value serializes");
            out.push(b'\n');
            Bytes::from(out)
        }
    }
}

async fn app_log(
    State(state): State<ApiState>,
    Path(app): Path<String>,
    query: Result<Query<LogQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Query(q) = match query {
        Ok(q) => q,
        Err(e) => return bad_request(e.body_text()),
    };
    let stream = match q.stream.as_deref() {
        None | Some("") => None,
        Some("stdout") => Some(Stream::Stdout),
        Some("stderr") => Some(Stream::Stderr),
        Some(other) => {
            return bad_request(format!("stream must be stdout or stderr, not {other:?}"))
        }
    };
    let filter = Filter {
        job: q.job.filter(|s| !s.is_empty()),
        process_type: q.process_type.filter(|s| !s.is_empty()),
        stream,
    };
    let n = q.lines.unwrap_or(DEFAULT_LINES);
    let body = if q.follow {
        let (backlog, follower) = state.store.follow(&app, n, filter);
        let live = futures::stream::unfold(follower, |mut f| async move {
            let event = f.next().await?;
            Some((Ok::<_, Infallible>(event_bytes(event)), f))
        });
        Body::from_stream(futures::stream::once(async move { Ok(ndjson(&backlog)) }).chain(live))
    } else {
        Body::from(ndjson(&state.store.tail(&app, n, &filter)))
    };
    ([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response()
}

async fn metrics(State(state): State<ApiState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        crate::metrics::render(&state.registry),
    )
        .into_response()
}
