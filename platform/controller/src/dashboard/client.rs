//! The dashboard's only way to the platform: the JSON API's own router, called in
//! process with the browser's `Authorization` header. Authorization, validation and
//! every store access stay in `crate::api`; a page sees exactly what the caller's token
//! sees there, and shows the API's refusals as they are.

use std::convert::Infallible;

use axum::body::{Body, Bytes};
use axum::extract::FromRequestParts;
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::request::Parts;
use axum::http::{HeaderValue, Method, Request, StatusCode};
use axum::response::Response;
use axum::Router;
use serde::de::DeserializeOwned;
use tower::ServiceExt;

use crate::AppState;

/// Largest API answer a page reads into memory (log follows are streamed, not read).
const MAX_ANSWER_BYTES: usize = 8 << 20;

/// The JSON API, callable in process.
#[derive(Clone)]
pub struct Api {
    router: Router,
}

/// The browser's credentials for one request: its `Authorization` header, forwarded
/// unchanged (and never logged).
pub struct Caller {
    auth: Option<HeaderValue>,
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Infallible> {
        Ok(Caller {
            auth: parts.headers.get(AUTHORIZATION).cloned(),
        })
    }
}

/// A request the API refused (its status and message), or could not answer.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct Refusal {
    /// The API's status code (401, 403, 404, 400, 502...).
    pub status: StatusCode,
    /// The API's error message, meant for people.
    pub message: String,
}

impl Refusal {
    fn internal(message: String) -> Self {
        Refusal {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message,
        }
    }
}

impl Api {
    /// The API over `state`, as `crate::api::router` serves it.
    pub fn new(state: AppState) -> Self {
        Api {
            router: crate::api::router(state),
        }
    }

    /// Sends one request; a non-2xx answer becomes a [`Refusal`] with the API's message.
    pub async fn send(
        &self,
        caller: &Caller,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<Response, Refusal> {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(auth) = &caller.auth {
            req = req.header(AUTHORIZATION, auth.clone());
        }
        let req = match body {
            Some(json) => req
                .header(CONTENT_TYPE, "application/json")
                .body(Body::from(json.to_string())),
            None => req.body(Body::empty()),
        }
        .map_err(|e| Refusal::internal(format!("building an API request: {e}")))?;
        let resp = match self.router.clone().oneshot(req).await {
            Ok(resp) => resp,
            Err(never) => match never {},
        };
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let bytes = read(resp).await.unwrap_or_default();
        let message = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
            .unwrap_or_else(|| format!("the API answered {status}"));
        Err(Refusal { status, message })
    }

    /// `GET path`, decoded as `T`.
    pub async fn get<T: DeserializeOwned>(
        &self,
        caller: &Caller,
        path: &str,
    ) -> Result<T, Refusal> {
        let resp = self.send(caller, Method::GET, path, None).await?;
        decode(resp).await
    }

    /// A change (`POST`, `PATCH`, `PUT`, `DELETE`) whose answer the page does not need.
    pub async fn act(
        &self,
        caller: &Caller,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<(), Refusal> {
        self.send(caller, method, path, body).await.map(drop)
    }
}

async fn read(resp: Response) -> Result<Bytes, Refusal> {
    axum::body::to_bytes(resp.into_body(), MAX_ANSWER_BYTES)
        .await
        .map_err(|e| Refusal::internal(format!("reading the API's answer: {e}")))
}

async fn decode<T: DeserializeOwned>(resp: Response) -> Result<T, Refusal> {
    let bytes = read(resp).await?;
    serde_json::from_slice(&bytes)
        .map_err(|e| Refusal::internal(format!("unexpected API answer: {e}")))
}

/// `s` percent-encoded for use as one path segment or query value, so a name typed into
/// the address bar can never reach another API route.
pub fn seg(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::seg;

    #[test]
    fn segments_cannot_escape_their_place() {
        assert_eq!(seg("shop"), "shop");
        assert_eq!(seg("a/../tokens"), "a%2F..%2Ftokens");
        assert_eq!(seg("x?follow=true&y"), "x%3Ffollow%3Dtrue%26y");
        assert_eq!(seg("é"), "%C3%A9");
    }
}
