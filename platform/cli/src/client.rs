//! A thin HTTP client for the controller API that turns error bodies into messages.

use anyhow::{anyhow, Context, Result};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::config::ClientConfig;

/// Authenticated client for one controller.
pub struct Client {
    http: reqwest::Client,
    /// Without a total timeout, for bodies that stay open (`log --follow`).
    streaming: reqwest::Client,
    config: ClientConfig,
}

impl Client {
    /// Builds a client for the configured URL and token.
    pub fn new(config: ClientConfig) -> Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(120))
            .build()?;
        let streaming = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(10))
            .build()?;
        Ok(Client {
            http,
            streaming,
            config,
        })
    }

    /// Sends a request and decodes a JSON reply; a non-2xx reply becomes an error
    /// carrying the server's message.
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T> {
        let text = self.call_raw(method, path, body).await?;
        let text = if text.is_empty() { "null" } else { &text };
        serde_json::from_str(text).with_context(|| format!("unexpected reply from {path}"))
    }

    /// Sends raw bytes (an artifact) and decodes the JSON reply.
    pub async fn upload<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        bytes: Vec<u8>,
    ) -> Result<T> {
        let url = format!("{}{}", self.config.url.trim_end_matches('/'), path);
        let resp = self
            .http
            .request(method, &url)
            .bearer_auth(&self.config.token)
            .header("content-type", "application/gzip")
            .body(bytes)
            .send()
            .await
            .with_context(|| format!("cannot reach the paas API at {}", self.config.url))?;
        let status = resp.status();
        let text = resp.text().await?;
        if !status.is_success() {
            return Err(anyhow!(error_message(status, &text)));
        }
        serde_json::from_str(&text).with_context(|| format!("unexpected reply from {path}"))
    }

    /// Sends a GET and returns the response for streaming its body (e.g. `log -f`).
    pub async fn stream(&self, method: Method, path: &str) -> Result<reqwest::Response> {
        let url = format!("{}{}", self.config.url.trim_end_matches('/'), path);
        let resp = self
            .streaming
            .request(method, &url)
            .bearer_auth(&self.config.token)
            .send()
            .await
            .with_context(|| format!("cannot reach the paas API at {}", self.config.url))?;
        let status = resp.status();
        if !status.is_success() {
            let text = resp.text().await?;
            return Err(anyhow!(error_message(status, &text)));
        }
        Ok(resp)
    }

    /// Sends a JSON body and returns the response for streaming its body (a backup's
    /// progress lines, a download), with no total timeout.
    pub async fn stream_json(
        &self,
        method: Method,
        path: &str,
        body: &impl Serialize,
    ) -> Result<reqwest::Response> {
        let url = format!("{}{}", self.config.url.trim_end_matches('/'), path);
        let resp = self
            .streaming
            .request(method, &url)
            .bearer_auth(&self.config.token)
            .json(body)
            .send()
            .await
            .with_context(|| format!("cannot reach the paas API at {}", self.config.url))?;
        let status = resp.status();
        if !status.is_success() {
            let text = resp.text().await?;
            return Err(anyhow!(error_message(status, &text)));
        }
        Ok(resp)
    }

    /// Like [`Client::call`] but returns the raw body.
    pub async fn call_raw(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<String> {
        let url = format!("{}{}", self.config.url.trim_end_matches('/'), path);
        let mut req = self
            .http
            .request(method, &url)
            .bearer_auth(&self.config.token);
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("cannot reach the paas API at {}", self.config.url))?;
        let status = resp.status();
        let text = resp.text().await?;
        if status.is_success() {
            Ok(text)
        } else {
            Err(anyhow!(error_message(status, &text)))
        }
    }
}

/// The server's `{"error":{"message"}}`, or the status and raw body if it sent none.
fn error_message(status: StatusCode, body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| format!("{status}: {}", body.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_messages() {
        let body = r#"{"error":{"code":"not_found","message":"app \"x\" not found"}}"#;
        assert_eq!(
            error_message(StatusCode::NOT_FOUND, body),
            "app \"x\" not found"
        );
        assert_eq!(
            error_message(StatusCode::BAD_GATEWAY, "oops"),
            "502 Bad Gateway: oops"
        );
    }
}
