//! Routes of the runtime: artifacts, releases with process types, formations, jobs.
//!
//! The controller only records desired state here (releases, formations) and reads what
//! hosts report (job statuses); the scheduler and host agents act on it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use axum::body::Body as RawBody;
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use futures::StreamExt;
use paas_model::{
    format_cpu, format_memory, validate_process_type, Artifact, Formation, Job, JobStatus, Limits,
    MAX_CPU_MILLIS, MIN_MEMORY,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::Body;
use crate::auth::Principal;
use crate::error::ApiError;
use crate::AppState;

/// Largest artifact accepted by default, in bytes: a bigger upload is refused with 413 as
/// soon as it passes this, and what was written is removed.
pub const MAX_ARTIFACT_BYTES: u64 = 512 << 20;

/// Where an artifact with this digest lives in the artifacts directory.
pub fn artifact_path(dir: &Path, sha256: &str) -> PathBuf {
    dir.join(format!("{sha256}.tar.gz"))
}

/// `PUT /artifacts`: stores a gzip'd tarball under its SHA-256 (content-addressed, so
/// uploading the same code twice stores it once).
pub async fn upload_artifact(
    _p: Principal,
    State(s): State<AppState>,
    body: RawBody,
) -> Result<impl IntoResponse, ApiError> {
    let dir = &s.artifacts_dir;
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(|e| ApiError::Internal(format!("cannot create {}: {e}", dir.display())))?;
    let tmp = dir.join(format!(".upload-{}", crate::auth::short_id()));
    let result = async {
        let mut file = tokio::fs::File::create(&tmp)
            .await
            .map_err(|e| ApiError::Internal(format!("cannot write artifact: {e}")))?;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut stream = body.into_data_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| ApiError::Invalid(format!("upload interrupted: {e}")))?;
            size += chunk.len() as u64;
            if size > s.max_artifact_bytes {
                return Err(ApiError::TooLarge(format!(
                    "artifact larger than {} bytes",
                    s.max_artifact_bytes
                )));
            }
            hasher.update(&chunk);
            file.write_all(&chunk)
                .await
                .map_err(|e| ApiError::Internal(format!("cannot write artifact: {e}")))?;
        }
        file.sync_all()
            .await
            .map_err(|e| ApiError::Internal(format!("cannot write artifact: {e}")))?;
        if size == 0 {
            return Err(ApiError::Invalid("empty artifact".into()));
        }
        let sha256 = hex::encode(hasher.finalize());
        tokio::fs::rename(&tmp, artifact_path(dir, &sha256))
            .await
            .map_err(|e| ApiError::Internal(format!("cannot store artifact: {e}")))?;
        Ok(Artifact { sha256, size })
    }
    .await;
    if result.is_err() {
        let _ = tokio::fs::remove_file(&tmp).await;
    }
    let artifact = result?;
    tracing::info!(sha256 = %artifact.sha256, size = artifact.size, "artifact stored");
    Ok((StatusCode::CREATED, Json(artifact)))
}

/// `POST /apps/{app}/releases`: a new release with process types and code; the env is
/// carried over from the current release.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewRelease {
    processes: BTreeMap<String, String>,
    #[serde(default)]
    artifact: Option<Artifact>,
}

/// `POST /apps/{app}/releases`
pub async fn create_release(
    p: Principal,
    State(s): State<AppState>,
    UrlPath(app): UrlPath<String>,
    Body(req): Body<NewRelease>,
) -> Result<impl IntoResponse, ApiError> {
    p.check_app(&app)?;
    super::check_release_quota(&s, &p, &app).await?;
    for (kind, command) in &req.processes {
        validate_process_type(kind)?;
        if command.trim().is_empty() {
            return Err(ApiError::Invalid(format!(
                "process type {kind:?} has an empty command"
            )));
        }
    }
    if let Some(a) = &req.artifact {
        let path = artifact_path(&s.artifacts_dir, &a.sha256);
        let meta = tokio::fs::metadata(&path)
            .await
            .map_err(|_| ApiError::Invalid(format!("artifact {} was not uploaded", a.sha256)))?;
        if meta.len() != a.size {
            return Err(ApiError::Invalid(format!(
                "artifact {} has {} bytes, not {}",
                a.sha256,
                meta.len(),
                a.size
            )));
        }
    }
    let kinds: Vec<&str> = req.processes.keys().map(String::as_str).collect();
    let description = match &req.artifact {
        Some(a) => format!(
            "Deploy {} ({})",
            &a.sha256[..12.min(a.sha256.len())],
            kinds.join(", ")
        ),
        None => format!("Deploy ({})", kinds.join(", ")),
    };
    let release = s
        .store
        .new_release_with(&app, |current| {
            let mut next = current.clone();
            next.processes = req.processes.clone();
            next.artifact = req.artifact.clone();
            next.description = description.clone();
            Ok(next)
        })
        .await?;
    tracing::info!(%app, version = release.version, "release created");
    Ok((StatusCode::CREATED, Json(release)))
}

/// `GET /apps/{app}/formation`
pub async fn get_formation(
    p: Principal,
    State(s): State<AppState>,
    UrlPath(app): UrlPath<String>,
) -> Result<Json<Formation>, ApiError> {
    p.check_app(&app)?;
    s.store.get_app(&app).await?;
    Ok(Json(s.store.formation(&app).await?))
}

/// Body of `PUT /apps/{app}/formation`: counts to change and limits to set (other
/// types are kept; a type named in `limits` gets exactly those, `{}` for none).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scale {
    #[serde(default)]
    processes: BTreeMap<String, u32>,
    #[serde(default)]
    limits: BTreeMap<String, Limits>,
}

/// Refuses limits the kernel cannot honour or that no job could start under.
fn check_limits(kind: &str, l: &Limits) -> Result<(), ApiError> {
    if let Some(m) = l.memory {
        if m < MIN_MEMORY {
            return Err(ApiError::Invalid(format!(
                "{kind}: memory {}: at least {}",
                format_memory(m),
                format_memory(MIN_MEMORY)
            )));
        }
    }
    if let Some(c) = l.cpu_millis {
        if !(10..=MAX_CPU_MILLIS).contains(&c) {
            return Err(ApiError::Invalid(format!(
                "{kind}: cpu {}: between 0.01 and {}",
                format_cpu(c),
                format_cpu(MAX_CPU_MILLIS)
            )));
        }
    }
    Ok(())
}

/// Most jobs of one process type.
pub const MAX_SCALE: u32 = 100;

/// `PUT /apps/{app}/formation`: `paas scale web=2`.
pub async fn scale(
    p: Principal,
    State(s): State<AppState>,
    UrlPath(app): UrlPath<String>,
    Body(req): Body<Scale>,
) -> Result<Json<Formation>, ApiError> {
    p.check_app(&app)?;
    let a = s.store.get_app(&app).await?;
    let release = s.store.release(&app, a.release).await?;
    let named = req
        .processes
        .iter()
        .map(|(kind, count)| (kind, Some(*count)))
        .chain(req.limits.keys().map(|kind| (kind, None)));
    for (kind, count) in named {
        if !release.processes.contains_key(kind) {
            let known: Vec<&str> = release.processes.keys().map(String::as_str).collect();
            return Err(ApiError::Invalid(format!(
                "no process type {kind:?} in release v{} (types: {})",
                release.version,
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            )));
        }
        if let Some(count) = count.filter(|c| *c > MAX_SCALE) {
            return Err(ApiError::Invalid(format!(
                "{kind}={count}: at most {MAX_SCALE} jobs per type"
            )));
        }
    }
    for (kind, limits) in &req.limits {
        check_limits(kind, limits)?;
    }
    let mut formation = s.store.formation(&app).await?;
    formation.processes.extend(req.processes);
    formation.processes.retain(|_, n| *n > 0);
    formation.limits.extend(req.limits);
    formation.limits.retain(|_, l| !l.is_unlimited());
    if !p.is_admin() {
        super::quota::check_jobs(&formation.processes, &s.quotas)?;
    }
    s.store.put_formation(&formation).await?;
    tracing::info!(%app, processes = ?formation.processes, limits = ?formation.limits, "scaled");
    Ok(Json(formation))
}

/// One row of `paas ps`: what the host reports, or the placement while none is reported.
#[derive(Serialize)]
pub struct JobRow {
    #[serde(flatten)]
    status: JobStatus,
}

/// `GET /apps/{app}/jobs`
pub async fn list_jobs(
    p: Principal,
    State(s): State<AppState>,
    UrlPath(app): UrlPath<String>,
) -> Result<Json<Vec<JobRow>>, ApiError> {
    p.check_app(&app)?;
    s.store.get_app(&app).await?;
    let statuses = s.store.job_statuses().await?;
    let mut rows: Vec<JobRow> = Vec::new();
    for job in s
        .store
        .placements()
        .await?
        .into_iter()
        .filter(|j| j.app == app)
    {
        let status = statuses
            .iter()
            .find(|st| st.id == job.id)
            .cloned()
            .unwrap_or_else(|| pending(&job));
        rows.push(JobRow { status });
    }
    rows.sort_by(|a, b| {
        (&a.status.process_type, &a.status.id).cmp(&(&b.status.process_type, &b.status.id))
    });
    Ok(Json(rows))
}

fn pending(job: &Job) -> JobStatus {
    JobStatus {
        id: job.id.clone(),
        app: job.app.clone(),
        release: job.release,
        process_type: job.process_type.clone(),
        host: job.host.clone(),
        state: paas_model::JobState::Starting,
        pid: None,
        port: None,
        restarts: 0,
        started_at: None,
        message: "placed; host has not reported yet".to_string(),
    }
}

/// `DELETE /apps/{app}/jobs/{id}`: stops the job; the scheduler starts a replacement if
/// the formation still wants it.
pub async fn kill_job(
    p: Principal,
    State(s): State<AppState>,
    UrlPath((app, id)): UrlPath<(String, String)>,
) -> Result<impl IntoResponse, ApiError> {
    p.check_app(&app)?;
    let job = s
        .store
        .placements()
        .await?
        .into_iter()
        .find(|j| j.id == id && j.app == app)
        .ok_or_else(|| ApiError::NotFound(format!("job {id:?} of app {app:?} not found")))?;
    s.store.delete_placement(&job).await?;
    tracing::info!(%app, job = %id, host = %job.host, "job killed");
    Ok(StatusCode::NO_CONTENT)
}
