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
use paas_model::keys;
use paas_model::{App, Job, Release};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use crate::attach::{self, Frame, RunRequest, PROTOCOL};
use crate::supervisor::{exit_code, group_command, job_env, signal_group, GroupGuard};
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
    tokio::spawn(session(on_upgrade, child));
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
    /// Kills the group and forgets its record when the session ends.
    _group: Option<GroupGuard>,
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
    tokio::task::spawn_blocking(move || artifacts.prepare_workdir(artifact.as_ref(), &dir))
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
    let mut cmd: Command = shared.cfg.shim.command(request.command[0].as_ref(), &args);
    cmd.stdin(Stdio::piped());
    group_command(&mut cmd, &env, &workdir);
    let child = cmd.spawn();
    match child {
        Ok(child) => {
            tracing::info!(job = %id, app = %request.app, release = version, command = ?request.command, "one-off job started");
            let group = child
                .id()
                .map(|pgid| GroupGuard::record(&shared.groups, &id, pgid));
            Ok(OneOff {
                child,
                workdir,
                id,
                _group: group,
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

/// Reads `output` into frames made by `make`.
fn pump_frames(
    mut output: impl AsyncRead + Unpin + Send + 'static,
    make: fn(Vec<u8>) -> Frame,
    tx: mpsc::Sender<Frame>,
) {
    tokio::spawn(async move {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match output.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if tx.send(make(buf[..n].to_vec())).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
}

/// Serves one attached one-off job over the upgraded connection.
async fn session(on_upgrade: hyper::upgrade::OnUpgrade, mut one: OneOff) {
    let pgid = one.child.id();
    let upgraded = match on_upgrade.await {
        Ok(u) => u,
        Err(e) => {
            tracing::warn!(job = %one.id, error = %e, "upgrade failed; killing the one-off job");
            if let Some(p) = pgid {
                signal_group(p, libc::SIGKILL);
            }
            let _ = tokio::fs::remove_dir_all(&one.workdir).await;
            return;
        }
    };
    let (mut from_client, mut to_client) = tokio::io::split(TokioIo::new(upgraded));
    let (tx, mut rx) = mpsc::channel::<Frame>(16);
    if let Some(out) = one.child.stdout.take() {
        pump_frames(out, Frame::Stdout, tx.clone());
    }
    if let Some(err) = one.child.stderr.take() {
        pump_frames(err, Frame::Stderr, tx.clone());
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
    if !client_gone {
        wire.clear();
        attach::encode(&Frame::Exit(code), &mut wire);
        let _ = to_client.write_all(&wire).await;
        let _ = to_client.flush().await;
        let _ = to_client.shutdown().await;
    }
    if let Some(t) = stdin_task {
        t.abort();
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
