//! HTTP routes: request parsing, authorization and response shapes. State changes go
//! through [`crate::store::Store`]; nothing here talks to etcd directly.

mod attach;
pub mod backups;
mod cluster_backup;
pub mod drain_policy;
pub mod logs;
pub mod pitr;
pub mod quota;
mod routes;
mod runtime;
pub use runtime::{artifact_path, MAX_ARTIFACT_BYTES};

use std::collections::BTreeMap;

use axum::extract::rejection::JsonRejection;
use axum::extract::DefaultBodyLimit;
use axum::extract::{FromRequest, Path, Request, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use chrono::Utc;
use paas_model::{keys, validate_env_key, Release, Resource, Scope, Token};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::auth::{generate_secret, short_id, Principal};
use crate::error::ApiError;
use crate::AppState;

/// The controller's routes, ready to be served.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/status", get(status))
        .route("/apps", post(create_app).get(list_apps))
        .route("/apps/{app}", get(show_app).delete(destroy_app))
        .route("/apps/{app}/env", get(get_env).patch(change_env))
        .route("/apps/{app}/releases/{version}", get(show_release))
        .route("/apps/{app}/rollback", post(rollback))
        .route(
            "/apps/{app}/resources",
            post(add_resource).get(list_resources),
        )
        .route("/apps/{app}/resources/{id}", delete(remove_resource))
        .route(
            "/apps/{app}/routes",
            post(routes::add_route).get(routes::list_routes),
        )
        .route("/apps/{app}/routes/{id}", delete(routes::remove_route))
        .route(
            "/artifacts",
            // The handler streams the body and enforces `max_artifact_bytes` itself.
            put(runtime::upload_artifact).layer(DefaultBodyLimit::disable()),
        )
        .route(
            "/apps/{app}/releases",
            get(list_releases).post(runtime::create_release),
        )
        .route(
            "/apps/{app}/formation",
            get(runtime::get_formation).put(runtime::scale),
        )
        .route("/apps/{app}/jobs", get(runtime::list_jobs))
        .route("/apps/{app}/run", post(attach::run))
        .route("/apps/{app}/jobs/{id}", delete(runtime::kill_job))
        .route("/apps/{app}/log", get(logs::app_log))
        .route("/drains", post(logs::add_drain).get(logs::list_drains))
        .route("/drains/{id}", delete(logs::remove_drain))
        .route("/cluster", get(cluster_status))
        .route("/cluster/{kind}/recover", post(recover_cluster))
        .route("/tokens", post(create_token).get(list_tokens))
        .route("/tokens/{id}", delete(revoke_token))
        .merge(backups::routes())
        .merge(pitr::routes())
        .merge(cluster_backup::routes())
        .fallback(|| async { ApiError::NotFound("no such endpoint".into()) })
        .with_state(state)
}

/// `Json<T>` whose rejections are reported in the API's error format (400).
pub struct Body<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(Body(v)),
            Err(e) => Err(ApiError::Invalid(json_rejection_message(e))),
        }
    }
}

fn json_rejection_message(e: JsonRejection) -> String {
    match e {
        JsonRejection::MissingJsonContentType(_) => {
            "request body must be JSON (Content-Type: application/json)".into()
        }
        other => format!("invalid request body: {}", other.body_text()),
    }
}

async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

#[derive(Serialize)]
struct StatusReply {
    version: &'static str,
    apps: usize,
    resource_kinds: Vec<String>,
    scope: Scope,
}

async fn status(p: Principal, State(s): State<AppState>) -> Result<Json<StatusReply>, ApiError> {
    let apps = s.store.list_apps().await?;
    Ok(Json(StatusReply {
        version: env!("CARGO_PKG_VERSION"),
        apps: apps.iter().filter(|a| p.can_see(&a.name)).count(),
        resource_kinds: s.providers.kinds(),
        scope: p.0,
    }))
}

/// `GET /cluster`: hosts, the scheduler's leader, the log aggregator and each
/// provider's own status (admin only: it names every host and instance).
async fn cluster_status(
    p: Principal,
    State(s): State<AppState>,
) -> Result<Json<serde_json::Value>, ApiError> {
    p.require_admin("cluster status")?;
    let hosts = s.store.hosts().await?;
    let jobs = s.store.job_statuses().await?;
    let hosts: Vec<serde_json::Value> = hosts
        .into_iter()
        .map(|h| {
            let running = jobs.iter().filter(|j| j.host == h.id).count();
            serde_json::json!({ "host": h, "jobs": running })
        })
        .collect();
    let scheduler: Option<String> = s
        .store
        .coord()
        .observe_leader::<String>(keys::SCHEDULER_ELECTION)
        .await?
        .current()
        .map(|leader| leader.value);
    let aggregators: Vec<serde_json::Value> = s
        .store
        .coord()
        .list::<serde_json::Value>(&keys::aggregators())
        .await?
        .into_iter()
        .map(|(_, v, _)| v)
        .collect();
    let mut providers = serde_json::Map::new();
    for kind in s.providers.kinds() {
        let provider = s.providers.get(&kind).expect("listed kind is registered");
        let status = match provider.status().await {
            Ok(v) => v,
            Err(e) => serde_json::json!({ "error": e.to_string() }),
        };
        providers.insert(kind, status);
    }
    Ok(Json(serde_json::json!({
        "hosts": hosts,
        "scheduler_leader": scheduler,
        "log_aggregators": aggregators,
        "providers": providers,
    })))
}

/// The body of `POST /cluster/{kind}/recover`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RecoverRequest {
    /// The member to restart from (default: the one with the most data).
    #[serde(default)]
    member: Option<String>,
}

/// `POST /cluster/{kind}/recover`: the provider's explicit recovery (admin only).
async fn recover_cluster(
    p: Principal,
    State(s): State<AppState>,
    axum::extract::Path(kind): axum::extract::Path<String>,
    Body(req): Body<RecoverRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    p.require_admin("recovering a cluster")?;
    let provider = s
        .providers
        .get(&kind)
        .ok_or_else(|| ApiError::NotFound(format!("no {kind} provider is configured")))?;
    let done = provider
        .recover(req.member.as_deref())
        .await
        .map_err(|e| ApiError::Conflict(e.to_string()))?;
    tracing::warn!(%kind, %done, "cluster recovery requested by an operator");
    Ok(Json(serde_json::json!({ "kind": kind, "recovered": done })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateApp {
    name: String,
}

async fn create_app(
    p: Principal,
    State(s): State<AppState>,
    Body(req): Body<CreateApp>,
) -> Result<impl IntoResponse, ApiError> {
    p.require_admin("creating an app")?;
    // `paas-...` apps are the platform's own (appliance members); their jobs keep the
    // host agent's user, so nobody creates one through the API.
    if req.name.starts_with("paas-") {
        return Err(ApiError::Invalid(format!(
            "app names starting with \"paas-\" are reserved for the platform ({:?})",
            req.name
        )));
    }
    let app = s.store.create_app(&req.name).await?;
    tracing::info!(app = %app.name, "app created");
    Ok((StatusCode::CREATED, Json(app)))
}

async fn list_apps(p: Principal, State(s): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let mut apps = s.store.list_apps().await?;
    apps.retain(|a| p.can_see(&a.name));
    Ok(Json(apps))
}

#[derive(Serialize)]
struct AppInfo {
    #[serde(flatten)]
    app: paas_model::App,
    env_keys: Vec<String>,
    resources: Vec<Resource>,
}

async fn show_app(
    p: Principal,
    State(s): State<AppState>,
    Path(app): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    p.check_app(&app)?;
    let a = s.store.get_app(&app).await?;
    let release = s.store.release(&app, a.release).await?;
    let resources = s.store.list_resources(&app).await?;
    Ok(Json(AppInfo {
        app: a,
        env_keys: release.env.keys().cloned().collect(),
        resources,
    }))
}

async fn destroy_app(
    p: Principal,
    State(s): State<AppState>,
    Path(app): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    p.check_app(&app)?;
    p.require_admin("destroying an app")?;
    s.store.get_app(&app).await?;
    for r in s.store.list_resources(&app).await? {
        deprovision(&s, &r).await?;
        s.store.delete_resource(&app, &r.id).await?;
    }
    s.store.destroy_app(&app).await?;
    backups::forget_schedule(&s, &app).await?;
    tracing::info!(%app, "app destroyed");
    Ok(StatusCode::NO_CONTENT)
}

async fn get_env(
    p: Principal,
    State(s): State<AppState>,
    Path(app): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    p.check_app(&app)?;
    let a = s.store.get_app(&app).await?;
    Ok(Json(s.store.release(&app, a.release).await?.env))
}

/// `PATCH /apps/{app}/env`: set and unset variables in one new release.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EnvChange {
    #[serde(default)]
    set: BTreeMap<String, String>,
    #[serde(default)]
    unset: Vec<String>,
}

async fn change_env(
    p: Principal,
    State(s): State<AppState>,
    Path(app): Path<String>,
    Body(change): Body<EnvChange>,
) -> Result<impl IntoResponse, ApiError> {
    p.check_app(&app)?;
    check_release_quota(&s, &p, &app).await?;
    if change.set.is_empty() && change.unset.is_empty() {
        return Err(ApiError::Invalid(
            "nothing to change: give 'set' or 'unset'".into(),
        ));
    }
    for key in change.set.keys().chain(change.unset.iter()) {
        validate_env_key(key)?;
    }
    let description = describe_env_change(&change);
    let release = s
        .store
        .new_release(&app, |current| {
            let mut env = current.env.clone();
            for key in &change.unset {
                env.remove(key);
            }
            env.extend(change.set.clone());
            Ok((env, description.clone()))
        })
        .await?;
    Ok((StatusCode::CREATED, Json(release)))
}

fn describe_env_change(change: &EnvChange) -> String {
    let mut parts = Vec::new();
    if !change.set.is_empty() {
        let keys: Vec<&str> = change.set.keys().map(String::as_str).collect();
        parts.push(format!("Set {}", keys.join(", ")));
    }
    if !change.unset.is_empty() {
        parts.push(format!("Unset {}", change.unset.join(", ")));
    }
    parts.join("; ")
}

async fn list_releases(
    p: Principal,
    State(s): State<AppState>,
    Path(app): Path<String>,
) -> Result<Json<Vec<Release>>, ApiError> {
    p.check_app(&app)?;
    s.store.get_app(&app).await?;
    let mut releases = s.store.list_releases(&app).await?;
    releases.sort_by_key(|r| std::cmp::Reverse(r.version));
    Ok(Json(releases))
}

async fn show_release(
    p: Principal,
    State(s): State<AppState>,
    Path((app, version)): Path<(String, String)>,
) -> Result<Json<Release>, ApiError> {
    p.check_app(&app)?;
    let version: u64 = version
        .trim_start_matches('v')
        .parse()
        .map_err(|_| ApiError::Invalid(format!("invalid release version {version:?}")))?;
    s.store.get_app(&app).await?;
    Ok(Json(s.store.release(&app, version).await?))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RollbackRequest {
    #[serde(default)]
    version: Option<u64>,
}

async fn rollback(
    p: Principal,
    State(s): State<AppState>,
    Path(app): Path<String>,
    Body(req): Body<RollbackRequest>,
) -> Result<impl IntoResponse, ApiError> {
    p.check_app(&app)?;
    check_release_quota(&s, &p, &app).await?;
    let current = s.store.get_app(&app).await?;
    let target = match req.version {
        Some(v) => v,
        None if current.release > 1 => current.release - 1,
        None => {
            return Err(ApiError::Invalid(
                "app has a single release: nothing to roll back to".into(),
            ))
        }
    };
    let old = s.store.release(&app, target).await?;
    let release = s
        .store
        .new_release(&app, |_| {
            Ok((old.env.clone(), format!("Rollback to v{target}")))
        })
        .await?;
    tracing::info!(%app, to = target, version = release.version, "rolled back");
    Ok((StatusCode::CREATED, Json(release)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddResource {
    kind: String,
    /// The kind's own settings (`paas resource add redis --members 3`).
    #[serde(default)]
    options: paas_appliance::provider::Options,
}

async fn add_resource(
    p: Principal,
    State(s): State<AppState>,
    Path(app): Path<String>,
    Body(req): Body<AddResource>,
) -> Result<impl IntoResponse, ApiError> {
    p.check_app(&app)?;
    check_release_quota(&s, &p, &app).await?;
    s.store.get_app(&app).await?;
    let provider = s.providers.get(&req.kind).ok_or_else(|| {
        let kinds = s.providers.kinds();
        let available = if kinds.is_empty() {
            "none are configured".to_string()
        } else {
            kinds.join(", ")
        };
        ApiError::Invalid(format!(
            "unknown resource kind {:?}; available kinds: {available}",
            req.kind
        ))
    })?;
    let id = format!("{}-{}", req.kind, short_id());
    let provisioned = provider
        .provision(&app, &id, &req.options)
        .await
        .map_err(|e| ApiError::Provider(format!("{} provider: {e}", req.kind)))?;
    let resource = Resource {
        id: id.clone(),
        app: app.clone(),
        kind: req.kind.clone(),
        env: provisioned.env,
        data: provisioned.data,
        created_at: Utc::now(),
    };
    let description = format!("Add {} resource {id}", req.kind);
    match attach_resource(&s, &resource, &description).await {
        Ok(release) => {
            tracing::info!(%app, %id, kind = %req.kind, version = release.version, "resource added");
            Ok((StatusCode::CREATED, Json(resource)))
        }
        Err(e) => {
            // Do not leave an orphaned database behind a failed request.
            if let Err(undo) = provider.deprovision(&app, &id, &resource.data).await {
                tracing::error!(%app, %id, error = %undo, "could not undo provisioning");
            }
            let _ = s.store.delete_resource(&app, &id).await;
            Err(e)
        }
    }
}

/// Records `resource` and makes a release of its app with the resource's variables
/// added (`description` names the release).
pub(crate) async fn attach_resource(
    s: &AppState,
    resource: &Resource,
    description: &str,
) -> Result<Release, ApiError> {
    s.store.put_resource(resource).await?;
    s.store
        .new_release(&resource.app, |current| {
            let mut env = current.env.clone();
            env.extend(resource.env.clone());
            Ok((env, description.to_string()))
        })
        .await
}

async fn list_resources(
    p: Principal,
    State(s): State<AppState>,
    Path(app): Path<String>,
) -> Result<Json<Vec<Resource>>, ApiError> {
    p.check_app(&app)?;
    s.store.get_app(&app).await?;
    Ok(Json(s.store.list_resources(&app).await?))
}

async fn deprovision(s: &AppState, r: &Resource) -> Result<(), ApiError> {
    let provider = s.providers.get(&r.kind).ok_or_else(|| {
        ApiError::Provider(format!(
            "resource {} is of kind {:?}, which no configured provider serves",
            r.id, r.kind
        ))
    })?;
    provider
        .deprovision(&r.app, &r.id, &r.data)
        .await
        .map_err(|e| ApiError::Provider(format!("{} provider: {e}", r.kind)))
}

async fn remove_resource(
    p: Principal,
    State(s): State<AppState>,
    Path((app, id)): Path<(String, String)>,
) -> Result<impl IntoResponse, ApiError> {
    p.check_app(&app)?;
    check_release_quota(&s, &p, &app).await?;
    let resource = s.store.resource(&app, &id).await?;
    deprovision(&s, &resource).await?;
    let keys: Vec<String> = resource.env.keys().cloned().collect();
    s.store
        .new_release(&app, |current| {
            let mut env = current.env.clone();
            for k in &keys {
                // Only remove values the resource set: the user may have overridden one.
                if env.get(k) == resource.env.get(k) {
                    env.remove(k);
                }
            }
            Ok((env, format!("Remove {} resource {id}", resource.kind)))
        })
        .await?;
    s.store.delete_resource(&app, &id).await?;
    tracing::info!(%app, %id, "resource removed");
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct CreateToken {
    #[serde(default)]
    app: Option<String>,
    #[serde(default)]
    description: String,
}

#[derive(Serialize)]
struct CreatedToken {
    /// The secret; shown only in this response.
    token: String,
    #[serde(flatten)]
    info: Token,
}

async fn create_token(
    p: Principal,
    State(s): State<AppState>,
    Body(req): Body<CreateToken>,
) -> Result<impl IntoResponse, ApiError> {
    p.require_admin("creating tokens")?;
    let scope = match req.app {
        Some(app) => {
            s.store.get_app(&app).await?;
            Scope::App { app }
        }
        None => Scope::Admin,
    };
    let secret = generate_secret();
    let token = Token {
        id: short_id(),
        scope,
        description: req.description,
        created_at: Utc::now(),
    };
    s.store.put_token(&secret.hash, &token).await?;
    tracing::info!(id = %token.id, "token created");
    Ok((
        StatusCode::CREATED,
        Json(CreatedToken {
            token: secret.secret,
            info: token,
        }),
    ))
}

async fn list_tokens(
    p: Principal,
    State(s): State<AppState>,
) -> Result<impl IntoResponse, ApiError> {
    p.require_admin("listing tokens")?;
    let mut tokens = s.store.list_tokens().await?;
    tokens.sort_by_key(|t| t.created_at);
    Ok(Json(tokens))
}

async fn revoke_token(
    p: Principal,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    p.require_admin("revoking tokens")?;
    s.store.delete_token(&id).await?;
    tracing::info!(%id, "token revoked");
    Ok(StatusCode::NO_CONTENT)
}

/// Fails when an app-scoped caller's app already made its hourly share of releases.
/// Exact while the quota is at most the releases GC keeps (`paas up` checks that): the
/// newest kept releases then include every one made in the last hour that counts.
pub(crate) async fn check_release_quota(
    s: &AppState,
    p: &Principal,
    app: &str,
) -> Result<(), ApiError> {
    if p.is_admin() {
        return Ok(());
    }
    let made = s.store.list_releases(app).await?;
    quota::check_releases(made.iter().map(|r| r.created_at), Utc::now(), &s.quotas)
}
