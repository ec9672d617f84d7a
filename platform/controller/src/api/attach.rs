//! `POST /apps/{app}/run`: a one-off job with the client's terminal attached.
//!
//! The client sends the job request (`{"command": [...], "env": {...}}`) as the body of
//! an HTTP/1.1 `Upgrade: paas-attach` request. The controller picks a live host, makes
//! the same upgrade request to that host agent's `POST /run`, and, once the agent has
//! started the job (101), answers 101 itself and splices the two upgraded connections.
//! The bytes that then flow (stdin one way; stdout/stderr/exit frames the other, see
//! `paas_host::attach`) pass through untouched, so the controller need not understand
//! them.

use axum::body::Body as RawBody;
use axum::extract::{Path as UrlPath, Request, State};
use axum::http::{header, StatusCode};
use axum::response::Response;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use paas_model::Host;
use rand::seq::IndexedRandom;

use crate::auth::Principal;
use crate::error::ApiError;
use crate::AppState;

/// The `Upgrade` token shared with host agents.
pub const PROTOCOL: &str = "paas-attach";

/// Largest job request body.
const MAX_REQUEST: usize = 1 << 20;

/// `POST /apps/{app}/run`
pub async fn run(
    p: Principal,
    State(s): State<AppState>,
    UrlPath(app): UrlPath<String>,
    mut req: Request,
) -> Result<Response, ApiError> {
    p.check_app(&app)?;
    let wants_upgrade = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case(PROTOCOL));
    if !wants_upgrade {
        return Err(ApiError::Invalid(format!(
            "run needs an HTTP/1.1 'Upgrade: {PROTOCOL}' request (use `paas run`)"
        )));
    }
    let client_upgrade = hyper::upgrade::on(&mut req);
    let body = axum::body::to_bytes(req.into_body(), MAX_REQUEST)
        .await
        .map_err(|e| ApiError::Invalid(format!("cannot read the job request: {e}")))?;
    let mut job: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::Invalid(format!("invalid job request: {e}")))?;
    let command_ok = job["command"]
        .as_array()
        .is_some_and(|c| !c.is_empty() && c.iter().all(|a| a.is_string()));
    if !command_ok {
        return Err(ApiError::Invalid(
            "job request needs \"command\": a non-empty list of strings".into(),
        ));
    }
    s.store.get_app(&app).await?;
    job["app"] = serde_json::Value::String(app.clone());
    // Counted until the session ends (the slot moves into the splicing task).
    let slot = s
        .runs
        .start(&app, (!p.is_admin()).then_some(s.quotas.runs))?;

    let hosts = s.store.hosts().await?;
    let host: Host = hosts
        .choose(&mut rand::rng())
        .cloned()
        .ok_or_else(|| ApiError::Unavailable("no host is running".into()))?;
    let agent_upgrade = start_on_agent(&host, &s.agent_secret, &job).await?;
    tracing::info!(%app, host = %host.id, "one-off job attached");

    tokio::spawn(async move {
        let _slot = slot;
        let (client, agent) = tokio::join!(client_upgrade, async {
            Ok::<_, hyper::Error>(agent_upgrade)
        });
        match (client, agent) {
            (Ok(client), Ok(agent)) => {
                let mut client = TokioIo::new(client);
                let mut agent = TokioIo::new(agent);
                if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut agent).await {
                    tracing::debug!(error = %e, "attach connection ended");
                }
            }
            (Err(e), _) | (_, Err(e)) => tracing::warn!(error = %e, "attach upgrade failed"),
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, PROTOCOL)
        .body(RawBody::empty())
        .map_err(|e| ApiError::Internal(e.to_string()))
}

/// Asks `host`'s agent to start `job`; returns the upgraded connection once it has.
async fn start_on_agent(
    host: &Host,
    secret: &str,
    job: &serde_json::Value,
) -> Result<hyper::upgrade::Upgraded, ApiError> {
    let unavailable = |e: &dyn std::fmt::Display| {
        ApiError::Unavailable(format!("host {} at {}: {e}", host.id, host.api_addr))
    };
    let stream = tokio::net::TcpStream::connect(&host.api_addr)
        .await
        .map_err(|e| unavailable(&e))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| unavailable(&e))?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "agent connection ended");
        }
    });
    let body = serde_json::to_vec(job).map_err(|e| ApiError::Internal(e.to_string()))?;
    let request = hyper::Request::post("/run")
        .header(header::HOST, &host.api_addr)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, PROTOCOL)
        .header(header::AUTHORIZATION, format!("Bearer {secret}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(bytes::Bytes::from(body)))
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| unavailable(&e))?;
    let status = response.status();
    if status != StatusCode::SWITCHING_PROTOCOLS {
        let text = response
            .into_body()
            .collect()
            .await
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
            .unwrap_or_default();
        let message = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| {
                v["error"]["message"]
                    .as_str()
                    .or(v["error"].as_str())
                    .map(str::to_string)
            })
            .unwrap_or(text);
        return Err(if status.is_client_error() {
            ApiError::Invalid(format!("host refused the job: {message}"))
        } else {
            unavailable(&format!("{status}: {message}"))
        });
    }
    hyper::upgrade::on(response)
        .await
        .map_err(|e| unavailable(&e))
}
