//! Routes of apps: `POST/GET /apps/{app}/routes`, `DELETE /apps/{app}/routes/{id}`.
//!
//! An HTTP route sends requests for a domain (and optionally a path prefix) to the app's
//! `web` jobs; a TCP route (`tcp_port`) sends every connection to one port of every
//! router to them. Every router follows `routes/` in etcd. Like every app endpoint, a token
//! scoped to another app gets 404. A domain and path can be routed once (409 after).
//! Private keys are stored for the routers but never returned: replies carry `tls: true`.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use chrono::{DateTime, Utc};
use paas_model::{validate_route, Route, RouteTls};
use serde::{Deserialize, Serialize};

use crate::api::Body;
use crate::auth::{short_id, Principal};
use crate::error::ApiError;
use crate::AppState;

/// Body of `POST /apps/{app}/routes`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddRoute {
    #[serde(default)]
    domain: String,
    #[serde(default)]
    tcp_port: Option<u16>,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    sticky: bool,
    #[serde(default)]
    tls: Option<RouteTls>,
}

/// A route as the API shows it: without its private key.
#[derive(Serialize)]
pub struct RouteView {
    id: String,
    app: String,
    domain: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<String>,
    sticky: bool,
    tls: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    tcp_port: Option<u16>,
    created_at: DateTime<Utc>,
}

impl From<Route> for RouteView {
    fn from(r: Route) -> Self {
        RouteView {
            id: r.id,
            app: r.app,
            domain: r.domain,
            path: r.path,
            sticky: r.sticky,
            tls: r.tls.is_some(),
            tcp_port: r.tcp_port,
            created_at: r.created_at,
        }
    }
}

/// Checks that PEM text holds what its field promises (the routers parse it fully).
fn check_pem(tls: &RouteTls) -> Result<(), ApiError> {
    if !tls.cert_pem.contains("-----BEGIN CERTIFICATE-----") {
        return Err(ApiError::Invalid(
            "tls.cert_pem holds no PEM certificate".into(),
        ));
    }
    if !tls.key_pem.contains("PRIVATE KEY-----") {
        return Err(ApiError::Invalid(
            "tls.key_pem holds no PEM private key".into(),
        ));
    }
    Ok(())
}

/// `POST /apps/{app}/routes`: adds a route (201).
pub async fn add_route(
    p: Principal,
    State(s): State<AppState>,
    Path(app): Path<String>,
    Body(req): Body<AddRoute>,
) -> Result<impl IntoResponse, ApiError> {
    p.check_app(&app)?;
    s.store.get_app(&app).await?;
    if let Some(port) = req.tcp_port {
        if !req.domain.is_empty() || req.path.is_some() || req.sticky || req.tls.is_some() {
            return Err(ApiError::Invalid(
                "a TCP route takes only a port: no domain, path, sticky or tls".into(),
            ));
        }
        paas_model::validate_tcp_port(port)?;
        let route = Route {
            id: short_id(),
            app: app.clone(),
            domain: String::new(),
            path: None,
            sticky: false,
            tls: None,
            tcp_port: Some(port),
            created_at: Utc::now(),
        };
        s.store.create_route(&route).await?;
        tracing::info!(%app, id = %route.id, port, "TCP route added");
        return Ok((StatusCode::CREATED, Json(RouteView::from(route))));
    }
    let domain = req.domain.trim().trim_end_matches('.').to_ascii_lowercase();
    // `/api/` and `/api` are the same prefix; `/` is every path.
    let path = req
        .path
        .as_deref()
        .map(|p| p.trim_end_matches('/').to_string())
        .filter(|p| !p.is_empty());
    validate_route(&domain, req.path.as_deref())?;
    if let Some(tls) = &req.tls {
        check_pem(tls)?;
    }
    let route = Route {
        id: short_id(),
        app: app.clone(),
        domain,
        path,
        sticky: req.sticky,
        tls: req.tls,
        tcp_port: None,
        created_at: Utc::now(),
    };
    s.store.create_route(&route).await?;
    tracing::info!(%app, id = %route.id, domain = %route.domain, path = ?route.path, "route added");
    Ok((StatusCode::CREATED, Json(RouteView::from(route))))
}

/// `GET /apps/{app}/routes`: the app's stored routes.
pub async fn list_routes(
    p: Principal,
    State(s): State<AppState>,
    Path(app): Path<String>,
) -> Result<Json<Vec<RouteView>>, ApiError> {
    p.check_app(&app)?;
    s.store.get_app(&app).await?;
    let routes = s.store.list_routes(&app).await?;
    Ok(Json(routes.into_iter().map(RouteView::from).collect()))
}

/// `DELETE /apps/{app}/routes/{id}`: removes a route (204).
pub async fn remove_route(
    p: Principal,
    State(s): State<AppState>,
    Path((app, id)): Path<(String, String)>,
) -> Result<impl IntoResponse, ApiError> {
    p.check_app(&app)?;
    s.store.delete_route(&app, &id).await?;
    tracing::info!(%app, %id, "route removed");
    Ok(StatusCode::NO_CONTENT)
}
