//! `paas run -a APP -- CMD...`: a one-off job with this terminal attached.
//!
//! Speaks the controller's `POST /apps/{app}/run` upgrade (see the controller's
//! `api/attach.rs`): our stdin goes to the job unframed (EOF is a write half-close);
//! stdout, stderr and the exit code come back as `paas_host::attach` frames.

use std::collections::BTreeMap;

use anyhow::{anyhow, bail, Context, Result};
use http_body_util::{BodyExt, Full};
use hyper::header;
use hyper_util::rt::TokioIo;
use paas_host::attach::relay_frames;
use tokio::io::AsyncWriteExt;

use crate::config;

/// The `Upgrade` token of the attach protocol.
const PROTOCOL: &str = "paas-attach";

/// Runs `command` in `app`'s environment and returns its exit code.
pub async fn run(app: &str, command: &[String], env: BTreeMap<String, String>) -> Result<i32> {
    let cfg = config::load()?;
    let url: reqwest::Url = cfg.url.parse().context("invalid API URL")?;
    let host = url.host_str().context("API URL has no host")?;
    let port = url.port_or_known_default().context("API URL has no port")?;
    if url.scheme() != "http" {
        bail!(
            "paas run supports http:// API URLs only (got {})",
            url.scheme()
        );
    }
    let stream = tokio::net::TcpStream::connect((host, port))
        .await
        .with_context(|| format!("cannot reach the paas API at {}", cfg.url))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    let body = serde_json::to_vec(&serde_json::json!({ "command": command, "env": env }))?;
    let request = hyper::Request::post(format!("/apps/{app}/run"))
        .header(header::HOST, format!("{host}:{port}"))
        .header(header::AUTHORIZATION, format!("Bearer {}", cfg.token))
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, PROTOCOL)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(bytes::Bytes::from(body)))?;
    let response = sender.send_request(request).await?;
    if response.status() != hyper::StatusCode::SWITCHING_PROTOCOLS {
        let status = response.status();
        let text = response.into_body().collect().await?.to_bytes();
        let text = String::from_utf8_lossy(&text);
        let message = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
            .unwrap_or_else(|| format!("{status}: {text}"));
        bail!(message);
    }
    let upgraded = TokioIo::new(hyper::upgrade::on(response).await?);
    let (reader, mut writer) = tokio::io::split(upgraded);

    let feeder = tokio::spawn(async move {
        let mut stdin = tokio::io::stdin();
        let _ = tokio::io::copy(&mut stdin, &mut writer).await;
        let _ = writer.shutdown().await;
    });
    let result = relay_frames(reader, Vec::new(), tokio::io::stdout(), tokio::io::stderr())
        .await
        .map_err(|e| anyhow!("{e}"));
    feeder.abort();
    result
}
