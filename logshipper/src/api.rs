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
//!
//! With a bearer secret ([`require_bearer`], the cluster secret in `paas up`), every
//! endpoint answers `401` to a request without `Authorization: Bearer <secret>`: the logs
//! of every app are here, and jobs on the same machine can reach this port. The
//! controller presents the secret when it proxies `paas log`.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
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

/// Wraps `router` so every request must carry `Authorization: Bearer <secret>`; others
/// get `401` with a JSON error and `WWW-Authenticate: Bearer`.
pub fn require_bearer(router: Router, secret: &str) -> Router {
    let expected: Arc<[u8; 32]> = Arc::new(sha256(secret.as_bytes()));
    router.layer(middleware::from_fn(move |request: Request, next: Next| {
        let expected = Arc::clone(&expected);
        async move {
            if authorized(request.headers(), &expected) {
                next.run(request).await
            } else {
                tracing::debug!(path = %request.uri().path(), "log API request without the cluster secret");
                (
                    StatusCode::UNAUTHORIZED,
                    [(header::WWW_AUTHENTICATE, "Bearer")],
                    axum::Json(serde_json::json!({
                        "error": "this API requires the cluster secret as a bearer token"
                    })),
                )
                    .into_response()
            }
        }
    }))
}

/// Whether `headers` carry the bearer secret whose SHA-256 is `expected`; the digests
/// are compared without an early exit, so timing does not tell how much matched.
fn authorized(headers: &HeaderMap, expected: &[u8; 32]) -> bool {
    let Some(given) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    let given = sha256(given.trim().as_bytes());
    given
        .iter()
        .zip(expected.iter())
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        == 0
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_bearer_secret_is_authorized() {
        let expected = sha256(b"s3cret");
        let with = |value: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::AUTHORIZATION, value.parse().unwrap());
            h
        };
        assert!(authorized(&with("Bearer s3cret"), &expected));
        assert!(!authorized(&with("Bearer s3cre"), &expected));
        assert!(!authorized(&with("Bearer s3cretx"), &expected));
        assert!(!authorized(&with("Basic s3cret"), &expected));
        assert!(!authorized(&with("s3cret"), &expected));
        assert!(!authorized(&HeaderMap::new(), &expected));
    }
}
