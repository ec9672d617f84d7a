//! API errors and their JSON form: `{"error": {"code": "...", "message": "..."}}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// Every way a request can fail, each mapped to one HTTP status and a stable code.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No token, a malformed header, or a token that is unknown or revoked (401).
    #[error("{0}")]
    Unauthorized(String),
    /// The token is valid but not allowed to do this (403).
    #[error("{0}")]
    Forbidden(String),
    /// The thing does not exist, or the token may not see it (404).
    #[error("{0}")]
    NotFound(String),
    /// The thing already exists, or changed underneath a retried update (409).
    #[error("{0}")]
    Conflict(String),
    /// The request body or a name is invalid (400).
    #[error("{0}")]
    Invalid(String),
    /// The request body is larger than this route accepts (413).
    #[error("{0}")]
    TooLarge(String),
    /// A provider (database cluster...) failed to do its part (502).
    #[error("{0}")]
    Provider(String),
    /// etcd could not be reached or answered an error (503).
    #[error("state store unavailable: {0}")]
    Unavailable(String),
    /// A bug or an unexpected state (500).
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    /// The HTTP status and the machine-readable code of this error.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ApiError::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid"),
            ApiError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            ApiError::Provider(_) => (StatusCode::BAD_GATEWAY, "provider_failed"),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        if status.is_server_error() {
            tracing::warn!(%status, error = %self, "request failed");
        } else {
            tracing::debug!(%status, error = %self, "request rejected");
        }
        let body = json!({ "error": { "code": code, "message": self.to_string() } });
        (status, Json(body)).into_response()
    }
}

impl From<paas_model::NameError> for ApiError {
    fn from(e: paas_model::NameError) -> Self {
        ApiError::Invalid(e.to_string())
    }
}

impl From<paas_model::RouteError> for ApiError {
    fn from(e: paas_model::RouteError) -> Self {
        ApiError::Invalid(e.to_string())
    }
}
