//! Backups of an app's resources (`paas backup ...`), over `paas-backups`: create (a
//! streamed NDJSON reply with progress), list, show, download, restore (also into
//! another app the token can see), delete, and the app's schedule in etcd.
//!
//! Every route checks the app like the rest of the API (404 for apps the token cannot
//! see), so an app-scoped token reaches only its own app's backups; a restore into
//! another app needs the token to see both.

use std::time::Duration;

use axum::body::Body as RawBody;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::Utc;
use futures::StreamExt;
use paas_backups::retention::Retention;
use paas_backups::runner::Resources;
use paas_backups::schedule::Schedule;
use paas_backups::schedules::{ScheduleError, Schedules};
use paas_backups::{BackupError, Backups, Manifest, Target, Trigger};
use serde::Deserialize;
use tokio::sync::watch;

use super::Body;
use crate::auth::Principal;
use crate::error::ApiError;
use crate::AppState;

/// How often a running backup reports its progress.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

/// The backup routes, merged into [`super::router`].
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/apps/{app}/backups", post(create).get(list))
        .route("/apps/{app}/backups/{id}", get(show).delete(remove))
        .route("/apps/{app}/backups/{id}/download", get(download))
        .route("/apps/{app}/backups/{id}/restore", post(restore))
        .route(
            "/apps/{app}/backup-schedule",
            get(get_schedule).put(put_schedule).delete(remove_schedule),
        )
}

fn backups(s: &AppState) -> Result<&Backups, ApiError> {
    s.backups
        .as_ref()
        .ok_or_else(|| ApiError::Invalid("backups are not configured on this controller".into()))
}

impl From<BackupError> for ApiError {
    fn from(e: BackupError) -> Self {
        match e {
            BackupError::NotFound { .. } => ApiError::NotFound(e.to_string()),
            BackupError::Engine { .. } => ApiError::Provider(e.to_string()),
            BackupError::Damaged { .. } | BackupError::Changed { .. } => {
                ApiError::Conflict(e.to_string())
            }
            BackupError::KindMismatch { .. } => ApiError::Invalid(e.to_string()),
            BackupError::Upload(_) | BackupError::Store(_) | BackupError::Incomplete { .. } => {
                ApiError::Unavailable(e.to_string())
            }
        }
    }
}

impl From<ScheduleError> for ApiError {
    fn from(e: ScheduleError) -> Self {
        match e {
            ScheduleError::Cron(e) => ApiError::Invalid(e.to_string()),
            ScheduleError::Coord(e) => ApiError::Unavailable(e.to_string()),
        }
    }
}

/// The resources of `app` a backup can be taken of: `resource` if given (404 if
/// missing), else every one whose provider has backups.
async fn targets(s: &AppState, app: &str, resource: Option<&str>) -> Result<Vec<Target>, ApiError> {
    s.store.get_app(app).await?;
    let resources = match resource {
        Some(id) => vec![s.store.resource(app, id).await?],
        None => s.store.list_resources(app).await?,
    };
    let mut targets = Vec::new();
    for r in resources {
        let Some(provider) = s.providers.get(&r.kind) else {
            if resource.is_some() {
                return Err(ApiError::Provider(format!(
                    "resource {} is of kind {:?}, which no configured provider serves",
                    r.id, r.kind
                )));
            }
            continue;
        };
        if !provider.has_backups() {
            if resource.is_some() {
                return Err(ApiError::Invalid(format!(
                    "resource {} is of kind {:?}, which has no backups",
                    r.id, r.kind
                )));
            }
            continue;
        }
        targets.push(Target {
            data: provider.backup_data(&r.data, &r.env),
            app: r.app,
            resource: r.id,
            kind: r.kind,
            provider,
        });
    }
    Ok(targets)
}

/// Exactly one target: the named resource, or the app's only one with backups (of
/// `kind`, when given).
async fn one_target(
    s: &AppState,
    app: &str,
    resource: Option<&str>,
    kind: Option<&str>,
) -> Result<Target, ApiError> {
    let mut found = targets(s, app, resource).await?;
    if let Some(kind) = kind {
        found.retain(|t| t.kind == kind);
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(ApiError::Invalid(format!(
            "app {app:?} has no {}resource with backups",
            kind.map(|k| format!("{k} ")).unwrap_or_default()
        ))),
        _ => {
            let ids: Vec<String> = found.into_iter().map(|t| t.resource).collect();
            Err(ApiError::Invalid(format!(
                "app {app:?} has several resources with backups; name one of: {}",
                ids.join(", ")
            )))
        }
    }
}

/// The schedule runner's view of resources: the same rules as the API.
#[async_trait::async_trait]
impl Resources for AppState {
    async fn targets(&self, app: &str, resource: Option<&str>) -> Result<Vec<Target>, String> {
        targets(self, app, resource)
            .await
            .map_err(|e| e.to_string())
    }
}

/// `POST /apps/{app}/backups` body.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct CreateRequest {
    /// The resource; default the app's only resource with backups.
    #[serde(default)]
    resource: Option<String>,
}

/// `POST /apps/{app}/backups`: runs a backup; the reply is NDJSON, one
/// `{"progress":{"bytes":N,"estimate":M|null}}` line every 250 ms (`estimate`: the
/// previous backup's size of the resource), then `{"backup":MANIFEST}` or
/// `{"error":{"code","message"}}`. The backup runs to its end even if the client goes.
async fn create(
    p: Principal,
    State(s): State<AppState>,
    Path(app): Path<String>,
    Body(req): Body<CreateRequest>,
) -> Result<Response, ApiError> {
    p.check_app(&app)?;
    let backups = backups(&s)?.clone();
    let target = one_target(&s, &app, req.resource.as_deref(), None).await?;
    let total = match backups.estimate(&target).await {
        paas_backups::progress::Total::PreviousBackup(n) => serde_json::json!(n),
        _ => serde_json::Value::Null,
    };
    let (progress, seen) = watch::channel(0u64);
    let task =
        tokio::spawn(async move { backups.create(&target, Trigger::Manual, &progress).await });
    enum Phase {
        Running(tokio::task::JoinHandle<Result<Manifest, BackupError>>),
        Done,
    }
    let lines = futures::stream::unfold(Phase::Running(task), move |phase| {
        let (seen, total) = (seen.clone(), total.clone());
        async move {
            let Phase::Running(mut task) = phase else {
                return None;
            };
            let line = tokio::select! {
                done = &mut task => {
                    let value = match done {
                        Ok(Ok(m)) => serde_json::json!({ "backup": m }),
                        Ok(Err(e)) => error_line(ApiError::from(e)),
                        Err(e) => error_line(ApiError::Internal(e.to_string())),
                    };
                    return Some((ndjson(&value), Phase::Done));
                }
                () = tokio::time::sleep(PROGRESS_EVERY) => {
                    serde_json::json!({ "progress": { "bytes": *seen.borrow(), "estimate": total } })
                }
            };
            Some((ndjson(&line), Phase::Running(task)))
        }
    });
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        RawBody::from_stream(lines.map(Ok::<_, std::io::Error>)),
    )
        .into_response())
}

fn error_line(e: ApiError) -> serde_json::Value {
    let (_, code) = e.status_and_code();
    serde_json::json!({ "error": { "code": code, "message": e.to_string() } })
}

fn ndjson(value: &serde_json::Value) -> String {
    let mut line = value.to_string();
    line.push('\n');
    line
}

/// `GET /apps/{app}/backups`: complete backups, newest first.
async fn list(
    p: Principal,
    State(s): State<AppState>,
    Path(app): Path<String>,
) -> Result<Json<Vec<Manifest>>, ApiError> {
    p.check_app(&app)?;
    s.store.get_app(&app).await?;
    let mut list = backups(&s)?.list(&app).await?;
    list.reverse();
    Ok(Json(list))
}

async fn show(
    p: Principal,
    State(s): State<AppState>,
    Path((app, id)): Path<(String, String)>,
) -> Result<Json<Manifest>, ApiError> {
    p.check_app(&app)?;
    Ok(Json(backups(&s)?.get(&app, &id).await?))
}

/// `GET /apps/{app}/backups/{id}/download`: the dump as stored, with its size and
/// SHA-256 in headers (`content-length`, `x-backup-sha256`) so the client can check it.
async fn download(
    p: Principal,
    State(s): State<AppState>,
    Path((app, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    p.check_app(&app)?;
    let (manifest, stream) = backups(&s)?.download(&app, &id).await?;
    let body = RawBody::from_stream(stream.map(|chunk| chunk.map_err(std::io::Error::other)));
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, manifest.size.to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{app}-{id}.dump\""),
            ),
            (
                header::HeaderName::from_static("x-backup-sha256"),
                manifest.sha256,
            ),
        ],
        body,
    )
        .into_response())
}

/// `POST /apps/{app}/backups/{id}/restore` body.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RestoreRequest {
    /// Restore into this app's resource instead (the token must see it).
    #[serde(default)]
    into_app: Option<String>,
    /// The target resource; default the backup's own (or, into another app, that app's
    /// only resource of the backup's kind).
    #[serde(default)]
    resource: Option<String>,
}

/// `POST /apps/{app}/backups/{id}/restore`: checks the backup whole, then loads it.
async fn restore(
    p: Principal,
    State(s): State<AppState>,
    Path((app, id)): Path<(String, String)>,
    Body(req): Body<RestoreRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    p.check_app(&app)?;
    let backups = backups(&s)?;
    let manifest = backups.get(&app, &id).await?;
    let into_app = req.into_app.clone().unwrap_or_else(|| app.clone());
    p.check_app(&into_app)?;
    let resource = match (&req.resource, &req.into_app) {
        (Some(r), _) => Some(r.clone()),
        (None, None) => Some(manifest.resource.clone()),
        (None, Some(_)) => None,
    };
    let target = one_target(&s, &into_app, resource.as_deref(), Some(&manifest.kind)).await?;
    backups.restore(&manifest, &target).await?;
    tracing::info!(%app, %id, into = %into_app, resource = %target.resource, "backup restored");
    Ok(Json(serde_json::json!({
        "restored": manifest.id,
        "app": into_app,
        "resource": target.resource,
    })))
}

async fn remove(
    p: Principal,
    State(s): State<AppState>,
    Path((app, id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    p.check_app(&app)?;
    backups(&s)?.delete(&app, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `PUT /apps/{app}/backup-schedule` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScheduleRequest {
    cron: String,
    #[serde(default)]
    resource: Option<String>,
    #[serde(default)]
    keep_last: Option<u32>,
    #[serde(default)]
    keep_days: Option<u32>,
}

async fn put_schedule(
    p: Principal,
    State(s): State<AppState>,
    Path(app): Path<String>,
    Body(req): Body<ScheduleRequest>,
) -> Result<Json<Schedule>, ApiError> {
    p.check_app(&app)?;
    backups(&s)?;
    // The resource must exist and have backups now (schedules name it by id).
    one_target(&s, &app, req.resource.as_deref(), None).await?;
    let schedule = Schedule {
        app: app.clone(),
        resource: req.resource,
        cron: req.cron,
        retention: Retention {
            keep_last: req.keep_last,
            keep_days: req.keep_days,
        },
        created: Utc::now(),
    };
    Schedules::new(s.store.coord().clone())
        .put(&schedule)
        .await?;
    tracing::info!(%app, cron = %schedule.cron, "backup schedule set");
    Ok(Json(schedule))
}

async fn get_schedule(
    p: Principal,
    State(s): State<AppState>,
    Path(app): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    p.check_app(&app)?;
    s.store.get_app(&app).await?;
    match Schedules::new(s.store.coord().clone()).get(&app).await? {
        Some((schedule, run)) => Ok(Json(
            serde_json::json!({ "schedule": schedule, "runs": run }),
        )),
        None => Err(ApiError::NotFound(format!(
            "app {app:?} has no backup schedule"
        ))),
    }
}

/// Removes the schedule of a destroyed app (its backups stay in the store).
pub(super) async fn forget_schedule(s: &AppState, app: &str) -> Result<(), ApiError> {
    Schedules::new(s.store.coord().clone()).remove(app).await?;
    Ok(())
}

async fn remove_schedule(
    p: Principal,
    State(s): State<AppState>,
    Path(app): Path<String>,
) -> Result<StatusCode, ApiError> {
    p.check_app(&app)?;
    if Schedules::new(s.store.coord().clone()).remove(&app).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound(format!(
            "app {app:?} has no backup schedule"
        )))
    }
}
