//! Routes of the log aggregator as seen through the controller: `paas log` (proxied to
//! the aggregator, which registers itself as the `logaggregator` service) and drains
//! (stored in etcd as `drains/<id>`; the aggregator watches them and reports status).

use axum::body::Body as RawBody;
use axum::extract::{Path as UrlPath, Query, RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use paas_logshipper::drain::{DrainConfig, DrainSpec};
use paas_model::{keys, AggregatorInstance, Scope};
use serde::{Deserialize, Serialize};

use super::Body;
use crate::auth::{short_id, Principal};
use crate::error::ApiError;
use crate::AppState;

async fn aggregator(s: &AppState) -> Result<AggregatorInstance, ApiError> {
    s.store
        .coord()
        .list::<AggregatorInstance>(&keys::aggregators())
        .await?
        .into_iter()
        .map(|(_, instance, _)| instance)
        .next()
        .ok_or_else(|| ApiError::Unavailable("no log aggregator is running".into()))
}

/// `GET /apps/{app}/log?lines=N&follow=true&job=&type=&stream=`: NDJSON from the
/// aggregator, streamed through unchanged (so `follow` keeps the response open).
pub async fn app_log(
    p: Principal,
    State(s): State<AppState>,
    UrlPath(app): UrlPath<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    p.check_app(&app)?;
    s.store.get_app(&app).await?;
    let agg = aggregator(&s).await?;
    let mut url = format!("http://{}/apps/{app}/log", agg.api);
    if let Some(q) = query {
        url.push('?');
        url.push_str(&q);
    }
    let resp = s
        .http
        .get(&url)
        .bearer_auth(&s.agent_secret)
        .send()
        .await
        .map_err(|e| ApiError::Unavailable(format!("log aggregator at {}: {e}", agg.api)))?;
    let status = resp.status();
    if !status.is_success() {
        let text = resp.text().await.unwrap_or_default();
        let message = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string))
            .unwrap_or(text);
        return Err(if status == reqwest::StatusCode::BAD_REQUEST {
            ApiError::Invalid(message)
        } else {
            ApiError::Unavailable(format!("log aggregator answered {status}: {message}"))
        });
    }
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        RawBody::from_stream(resp.bytes_stream()),
    )
        .into_response())
}

/// `POST /drains` body: a [`DrainSpec`] without its id (which the controller assigns).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewDrain {
    app: Option<String>,
    kind: Option<String>,
    url: String,
    index: Option<String>,
    endpoint: Option<String>,
    region: Option<String>,
    ca_file: Option<String>,
    flush_ms: Option<u64>,
    batch_bytes: Option<usize>,
}

/// A drain as listed: its spec and, when the aggregator answers, its delivery status.
#[derive(Serialize)]
pub struct DrainRow {
    #[serde(flatten)]
    spec: DrainSpec,
    status: Option<serde_json::Value>,
}

fn check_drain_scope(p: &Principal, app: Option<&str>) -> Result<(), ApiError> {
    match (&p.0, app) {
        (Scope::Admin, _) => Ok(()),
        (Scope::App { .. }, Some(app)) => p.check_app(app),
        (Scope::App { .. }, None) => Err(ApiError::Forbidden(
            "cluster-wide drains need an admin token; give an app".into(),
        )),
    }
}

/// `POST /drains`
pub async fn add_drain(
    p: Principal,
    State(s): State<AppState>,
    Body(req): Body<NewDrain>,
) -> Result<impl IntoResponse, ApiError> {
    check_drain_scope(&p, req.app.as_deref())?;
    if let Some(app) = &req.app {
        s.store.get_app(app).await?;
    }
    let spec = DrainSpec {
        id: format!("d-{}", short_id()),
        app: req.app,
        kind: req.kind,
        url: req.url,
        index: req.index,
        endpoint: req.endpoint,
        region: req.region,
        ca_file: req.ca_file,
        flush_ms: req.flush_ms,
        batch_bytes: req.batch_bytes,
    };
    let config = DrainConfig::from_spec(&spec).map_err(|e| ApiError::Invalid(e.to_string()))?;
    if let Scope::App { .. } = &p.0 {
        if let Err(reason) = super::drain_policy::check_scoped(&spec, &config.sink).await {
            tracing::warn!(app = ?spec.app, url = %config.sink.display_url(), %reason, "drain refused for an app-scoped token");
            return Err(ApiError::Forbidden(reason));
        }
    }
    s.store.put_drain(&spec).await?;
    tracing::info!(id = %spec.id, app = ?spec.app, url = %config.sink.display_url(), "drain added");
    Ok((StatusCode::CREATED, Json(spec)))
}

/// Query of `GET /drains`.
#[derive(Deserialize)]
pub struct DrainFilter {
    app: Option<String>,
}

/// `GET /drains[?app=APP]`
pub async fn list_drains(
    p: Principal,
    State(s): State<AppState>,
    Query(filter): Query<DrainFilter>,
) -> Result<Json<Vec<DrainRow>>, ApiError> {
    if let Some(app) = &filter.app {
        p.check_app(app)?;
    }
    let statuses: Vec<serde_json::Value> = match aggregator(&s).await {
        Ok(agg) => match s
            .http
            .get(format!("http://{}/drains", agg.api))
            .bearer_auth(&s.agent_secret)
            .send()
            .await
        {
            Ok(resp) if resp.status().is_success() => resp.json().await.unwrap_or_default(),
            _ => Vec::new(),
        },
        Err(_) => Vec::new(),
    };
    let rows = s
        .store
        .list_drains()
        .await?
        .into_iter()
        .filter(|d| match (&p.0, &d.app) {
            (Scope::Admin, _) => true,
            (Scope::App { app }, Some(a)) => a == app,
            (Scope::App { .. }, None) => false,
        })
        .filter(|d| filter.app.is_none() || d.app == filter.app)
        .map(|spec| {
            let status = statuses
                .iter()
                .find(|st| st["id"] == spec.id.as_str())
                .cloned();
            DrainRow { spec, status }
        })
        .collect();
    Ok(Json(rows))
}

/// `DELETE /drains/{id}`
pub async fn remove_drain(
    p: Principal,
    State(s): State<AppState>,
    UrlPath(id): UrlPath<String>,
) -> Result<impl IntoResponse, ApiError> {
    let drain = s
        .store
        .list_drains()
        .await?
        .into_iter()
        .find(|d| d.id == id)
        .ok_or_else(|| ApiError::NotFound(format!("drain {id:?} not found")))?;
    if check_drain_scope(&p, drain.app.as_deref()).is_err() {
        return Err(ApiError::NotFound(format!("drain {id:?} not found")));
    }
    s.store.delete_drain(&id).await?;
    tracing::info!(%id, "drain removed");
    Ok(StatusCode::NO_CONTENT)
}
