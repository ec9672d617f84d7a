//! The agent's HTTP API (axum), on `Host::api_addr`:
//! - `GET /health` -> `{"status":"ok","host":ID}`.
//! - `POST /run` with `Upgrade: paas-attach` and a [`RunRequest`] body: starts a one-off
//!   job (the app's release env and artifact, its own working dir and process group),
//!   answers `101` and then speaks the [`crate::attach`] protocol on the connection.
//!   Errors before the upgrade are `{"error":MESSAGE}` with 400 (bad request), 404 (no
//!   such app or release) or 500. If the client goes away, the job's group is killed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::Utc;
use hyper_util::rt::TokioIo;
use paas_logshipper::Stream;
use paas_model::keys;
use paas_model::{App, Job, JobState, JobStatus, Release};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use crate::attach::{self, Frame, RunRequest, PROTOCOL};
use crate::capture::{LineOrigin, LineSplitter, LogSink, MAX_LINE};
use crate::supervisor::{exit_code, group_command, job_env, signal_group, GroupGuard};
use crate::users::JobUser;
use crate::Shared;

/// The API routes.
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/run", post(run))
        .with_state(shared)
}

async fn health(State(shared): State<Arc<Shared>>) -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok", "host": shared.cfg.id}))
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    let message = message.into();
    tracing::warn!(%status, %message, "run request refused");
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

/// Whether `headers` carry `Authorization: Bearer <secret>`, compared in time that does
/// not depend on where the first difference is.
pub fn authorized(headers: &axum::http::HeaderMap, secret: &str) -> bool {
    let Some(given) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    let (a, b) = (given.as_bytes(), secret.as_bytes());
    !secret.is_empty()
        && a.len() == b.len()
        && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn run(State(shared): State<Arc<Shared>>, mut req: Request) -> Response {
    if !authorized(req.headers(), &shared.cfg.api_secret) {
        return error(
            StatusCode::UNAUTHORIZED,
            "POST /run needs the cluster secret (Authorization: Bearer)",
        );
    }
    let upgrade = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case(PROTOCOL));
    if !upgrade {
        return error(
            StatusCode::BAD_REQUEST,
            format!("POST /run needs Connection: Upgrade and Upgrade: {PROTOCOL}"),
        );
    }
    let on_upgrade = hyper::upgrade::on(&mut req);
    let body = match axum::body::to_bytes(req.into_body(), 1 << 20).await {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("reading body: {e}")),
    };
    let request: RunRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("bad run request: {e}")),
    };
    let child = match start(&shared, &request).await {
        Ok(c) => c,
        Err(resp) => return resp,
    };
    tokio::spawn(session(on_upgrade, child, shared));
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, PROTOCOL)
        .body(Body::empty())
        .unwrap_or_else(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

/// A one-off process and its working dir (removed when the session ends).
struct OneOff {
    child: Child,
    workdir: PathBuf,
    id: String,
    /// Its status as `paas ps` lists it (process type `run`) while it runs.
    status: JobStatus,
    /// Kills the group and forgets its record when the session ends.
    group: Option<GroupGuard>,
    /// The job's own user, free again when the session ends.
    _user: Option<JobUser>,
}

/// Resolves the release, prepares a working dir, spawns the command.
async fn start(shared: &Shared, request: &RunRequest) -> Result<OneOff, Response> {
    if request.command.is_empty() {
        return Err(error(StatusCode::BAD_REQUEST, "empty command"));
    }
    let coord_err = |e: paas_coord::CoordError| {
        tracing::warn!(app = %request.app, error = %e, "one-off job: reading the app failed");
        error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
    };
    let version = match request.release {
        Some(v) => v,
        None => {
            let (app, _) = shared
                .coord
                .get::<App>(&keys::app(&request.app))
                .await
                .map_err(coord_err)?
                .ok_or_else(|| error(StatusCode::NOT_FOUND, format!("no app {:?}", request.app)))?;
            app.release
        }
    };
    let (release, _): (Release, i64) = shared
        .coord
        .get(&keys::release(&request.app, version))
        .await
        .map_err(coord_err)?
        .ok_or_else(|| {
            error(
                StatusCode::NOT_FOUND,
                format!("app {:?} has no release {version}", request.app),
            )
        })?;
    let id = format!("run-{:012x}", rand::random::<u64>() >> 16);
    let workdir = shared.cfg.data_dir.join("jobs").join(&id);
    let (artifacts, artifact, dir) = (
        shared.artifacts.clone(),
        release.artifact.clone(),
        workdir.clone(),
    );
    let user = shared
        .users
        .for_job(&request.app, &id)
        .map_err(|e| error(StatusCode::SERVICE_UNAVAILABLE, e))?;
    let owner = user.as_ref().map(|u| u.id);
    tokio::task::spawn_blocking(move || artifacts.prepare_workdir(artifact.as_ref(), &dir, owner))
        .await
        .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let job = Job {
        id: id.clone(),
        app: request.app.clone(),
        release: version,
        process_type: "run".into(),
        host: shared.cfg.id.clone(),
        created_at: Utc::now(),
        limits: Default::default(),
    };
    let addr = std::net::TcpListener::bind((shared.cfg.job_ip, 0))
        .and_then(|l| l.local_addr())
        .map_err(|e| {
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("reserving a port: {e}"),
            )
        })?;
    let mut env: BTreeMap<String, String> = release.env.clone();
    env.extend(request.env.clone());
    let env = job_env(&env, &job, addr, &workdir);
    // The shim would start and then fail to exec (exit 127): refuse a missing program
    // here, as a direct spawn did.
    let path = env.get("PATH").map(String::as_str).unwrap_or("");
    if find_program(&request.command[0], path, &workdir).is_none() {
        let _ = tokio::fs::remove_dir_all(&workdir).await;
        return Err(error(
            StatusCode::BAD_REQUEST,
            format!(
                "cannot start {:?}: {}",
                request.command[0],
                std::io::Error::from_raw_os_error(libc::ENOENT)
            ),
        ));
    }
    let args: Vec<&std::ffi::OsStr> = request.command[1..].iter().map(|a| a.as_ref()).collect();
    let mut cmd: Command = shared
        .cfg
        .shim
        .command(request.command[0].as_ref(), &args, owner);
    cmd.stdin(Stdio::piped());
    group_command(&mut cmd, &env, &workdir);
    let child = cmd.spawn();
    match child {
        Ok(child) => {
            tracing::info!(job = %id, app = %request.app, release = version, command = ?request.command, "one-off job started");
            let group = child
                .id()
                .map(|pgid| GroupGuard::record(&shared.groups, &id, pgid).with_user(owner));
            let status = JobStatus {
                id: id.clone(),
                app: request.app.clone(),
                release: version,
                process_type: job.process_type.clone(),
                host: shared.cfg.id.clone(),
                state: JobState::Up,
                pid: child.id(),
                port: Some(addr.port()),
                restarts: 0,
                started_at: Some(Utc::now()),
                message: format!("one-off: {}", request.command.join(" ")),
            };
            Ok(OneOff {
                child,
                workdir,
                id,
                status,
                group,
                _user: user,
            })
        }
        Err(e) => {
            let _ = tokio::fs::remove_dir_all(&workdir).await;
            Err(error(
                StatusCode::BAD_REQUEST,
                format!("cannot start {:?}: {e}", request.command[0]),
            ))
        }
    }
}

/// Where `program` would be executed from, as `execvp` looks for it: a name with a `/` is
/// taken as it is (relative to `workdir`), any other name is searched in `path`; only
/// executable regular files count.
pub fn find_program(program: &str, path: &str, workdir: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    let executable = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if program.is_empty() {
        return None;
    }
    if program.contains('/') {
        let p = workdir.join(program);
        return executable(&p).then_some(p);
    }
    path.split(':')
        .map(|dir| {
            workdir
                .join(if dir.is_empty() { "." } else { dir })
                .join(program)
        })
        .find(|p| executable(p))
}

/// Reads `output` into frames made by `make` for the attached client, and into lines of
/// the app's log (`paas log --type run`), as a placed job's output goes.
fn pump_frames(
    mut output: impl AsyncRead + Unpin + Send + 'static,
    make: fn(Vec<u8>) -> Frame,
    tx: mpsc::Sender<Frame>,
    log: (LogSink, LineOrigin, Stream),
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let (sink, origin, stream) = log;
        let mut splitter = LineSplitter::new(MAX_LINE);
        let mut buf = vec![0u8; 32 * 1024];
        let mut client = true;
        loop {
            let n = output.read(&mut buf).await.unwrap_or(0);
            let lines = if n == 0 {
                splitter.finish().into_iter().collect()
            } else {
                splitter.push(&buf[..n])
            };
            let at = Utc::now();
            for line in lines {
                if let Err(e) = sink.write(&origin, stream, at, line) {
                    tracing::warn!(job = %origin.job, error = %e, "one-off job: logging a line failed");
                }
            }
            if n == 0 {
                return;
            }
            if client && tx.send(make(buf[..n].to_vec())).await.is_err() {
                // The client went away; the job is being killed, its last lines still
                // go to the log.
                client = false;
            }
        }
    })
}

/// Publishes a one-off job's status on the host lease (absent lease: not registered
/// right now; the job still runs).
async fn publish_status(shared: &Shared, status: &JobStatus) {
    let lease = shared.lease.read().expect("lease lock").clone();
    let Some(lease) = lease else { return };
    let mut batch = paas_coord::Batch::new();
    let committed = match batch.put_leased(&keys::job_status(&status.id), status, &lease) {
        Ok(_) => shared
            .coord
            .commit(batch)
            .await
            .map(drop)
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    if let Err(e) = committed {
        tracing::warn!(job = %status.id, error = %e, "publishing the one-off job's status failed");
    }
}

/// Removes a one-off job's status (absent is fine).
async fn remove_status(shared: &Shared, id: &str) {
    let mut batch = paas_coord::Batch::new();
    batch.remove(&keys::job_status(id));
    if let Err(e) = shared.coord.commit(batch).await {
        tracing::warn!(job = %id, error = %e, "removing the one-off job's status failed");
    }
}

/// Serves one attached one-off job over the upgraded connection.
async fn session(on_upgrade: hyper::upgrade::OnUpgrade, mut one: OneOff, shared: Arc<Shared>) {
    let pgid = one.child.id();
    let origin = LineOrigin {
        app: one.status.app.clone(),
        process_type: one.status.process_type.clone(),
        job: one.id.clone(),
        host: shared.cfg.id.clone(),
    };
    publish_status(&shared, &one.status).await;
    let upgraded = match on_upgrade.await {
        Ok(u) => u,
        Err(e) => {
            tracing::warn!(job = %one.id, error = %e, "upgrade failed; killing the one-off job");
            if let Some(p) = pgid {
                signal_group(p, libc::SIGKILL);
            }
            remove_status(&shared, &one.id).await;
            let _ = tokio::fs::remove_dir_all(&one.workdir).await;
            return;
        }
    };
    let (mut from_client, mut to_client) = tokio::io::split(TokioIo::new(upgraded));
    let (tx, mut rx) = mpsc::channel::<Frame>(16);
    let mut pumps = Vec::new();
    if let Some(out) = one.child.stdout.take() {
        let log = (shared.sink.clone(), origin.clone(), Stream::Stdout);
        pumps.push(pump_frames(out, Frame::Stdout, tx.clone(), log));
    }
    if let Some(err) = one.child.stderr.take() {
        let log = (shared.sink.clone(), origin.clone(), Stream::Stderr);
        pumps.push(pump_frames(err, Frame::Stderr, tx.clone(), log));
    }
    drop(tx);
    let stdin_task = one.child.stdin.take().map(|mut stdin| {
        tokio::spawn(async move {
            let _ = tokio::io::copy(&mut from_client, &mut stdin).await;
            // Dropping stdin closes the job's input: EOF.
        })
    });
    let mut wire = Vec::new();
    let mut client_gone = false;
    while let Some(frame) = rx.recv().await {
        wire.clear();
        attach::encode(&frame, &mut wire);
        if to_client.write_all(&wire).await.is_err() {
            client_gone = true;
            break;
        }
    }
    if client_gone {
        tracing::warn!(job = %one.id, "client went away; killing the one-off job");
        if let Some(p) = pgid {
            signal_group(p, libc::SIGKILL);
        }
    }
    let code = match one.child.wait().await {
        Ok(status) => exit_code(status),
        Err(e) => {
            tracing::warn!(job = %one.id, error = %e, "waiting for one-off job failed");
            -1
        }
    };
    if let Some(p) = pgid {
        signal_group(p, libc::SIGKILL);
    }
    // Everything of the job ends (its group, and every process of its user, which
    // may hold the output pipes open), its output is in the log, its exit recorded and
    // its status gone before the client hears the exit code.
    drop(one.group.take());
    if let Some(t) = stdin_task {
        t.abort();
    }
    for pump in pumps {
        let _ = pump.await;
    }
    // The exit code is recorded in the app's log, as Heroku's "Process exited with
    // status N"; the status leaves `paas ps` with the job.
    if let Err(e) = shared.sink.write(
        &origin,
        Stream::Stderr,
        Utc::now(),
        format!("paas: one-off job {} exited with code {code}", one.id),
    ) {
        tracing::warn!(job = %one.id, error = %e, "logging the one-off job's exit failed");
    }
    remove_status(&shared, &one.id).await;
    if !client_gone {
        wire.clear();
        attach::encode(&Frame::Exit(code), &mut wire);
        let _ = to_client.write_all(&wire).await;
        let _ = to_client.flush().await;
        let _ = to_client.shutdown().await;
    }
    tracing::info!(job = %one.id, code, "one-off job ended");
    let _ = tokio::fs::remove_dir_all(&one.workdir).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_programs_as_execvp_would() {
        let dir = tempfile::tempdir().unwrap();
        let w = dir.path();
        assert!(find_program("sh", "/usr/bin:/bin", w).is_some());
        assert!(find_program("/bin/sh", "", w).is_some());
        assert!(find_program("no-such-program-here", "/usr/bin:/bin", w).is_none());
        assert!(find_program("/no/such/program", "/usr/bin:/bin", w).is_none());
        assert!(find_program("", "/usr/bin:/bin", w).is_none());
        // Relative to the job's working dir; only executables count.
        std::fs::write(w.join("tool"), "#!/bin/sh\n").unwrap();
        assert!(find_program("./tool", "", w).is_none());
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(w.join("tool"), std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(find_program("./tool", "", w).is_some());
        assert!(find_program("tool", "bin:.", w).is_some());
        assert!(find_program("tool", "/usr/bin", w).is_none());
    }
}
