//! Token authentication: who is calling, and what may they see.
//!
//! A token is `paas_` followed by 64 hex digits (256 random bits). Only its SHA-256 is
//! stored (as the key of the token document), so a leaked etcd snapshot does not leak
//! credentials, and every request looks the hash up afresh: deleting the document revokes
//! the token at once, with no cache to expire.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use paas_model::Scope;
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::error::ApiError;
use crate::AppState;

/// A new token's secret (shown once) and the hash under which it is stored.
pub struct NewSecret {
    /// What the client sends as `Authorization: Bearer ...`.
    pub secret: String,
    /// Hex SHA-256 of `secret`.
    pub hash: String,
}

/// Makes a fresh random token secret.
pub fn generate_secret() -> NewSecret {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let secret = format!("paas_{}", hex::encode(bytes));
    let hash = hash_secret(&secret);
    NewSecret { secret, hash }
}

/// The storage key of a token secret.
pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// A short random identifier (hex), for tokens and resources.
pub fn short_id() -> String {
    let mut bytes = [0u8; 5];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// The authenticated caller of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal(pub Scope);

impl Principal {
    /// Whether the caller holds an admin token (quotas do not apply to it).
    pub fn is_admin(&self) -> bool {
        matches!(self.0, Scope::Admin)
    }

    /// Whether the caller may see `app` at all. Apps it may not see are reported as
    /// missing (404), so that names of other apps do not leak.
    pub fn can_see(&self, app: &str) -> bool {
        match &self.0 {
            Scope::Admin => true,
            Scope::App { app: own } => own == app,
        }
    }

    /// Fails with 404 unless the caller may see `app`.
    pub fn check_app(&self, app: &str) -> Result<(), ApiError> {
        if self.can_see(app) {
            Ok(())
        } else {
            Err(ApiError::NotFound(format!("app {app:?} not found")))
        }
    }

    /// Fails with 403 unless the caller holds an admin token.
    pub fn require_admin(&self, action: &str) -> Result<(), ApiError> {
        match self.0 {
            Scope::Admin => Ok(()),
            Scope::App { .. } => Err(ApiError::Forbidden(format!(
                "{action} needs an admin token; this token is scoped to one app"
            ))),
        }
    }
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let header = parts
            .headers
            .get(AUTHORIZATION)
            .ok_or_else(|| ApiError::Unauthorized("missing Authorization: Bearer token".into()))?;
        let value = header
            .to_str()
            .map_err(|_| ApiError::Unauthorized("malformed Authorization header".into()))?;
        let secret = value
            .strip_prefix("Bearer ")
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                ApiError::Unauthorized("Authorization header must be 'Bearer <token>'".into())
            })?;
        match state.store.token_by_hash(&hash_secret(secret)).await? {
            Some(token) => Ok(Principal(token.scope)),
            None => {
                tracing::info!("rejected request with an unknown or revoked token");
                Err(ApiError::Unauthorized("invalid or revoked token".into()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_random_and_hash_stably() {
        let a = generate_secret();
        let b = generate_secret();
        assert_ne!(a.secret, b.secret);
        assert_eq!(a.secret.len(), 5 + 64);
        assert_eq!(hash_secret(&a.secret), a.hash);
        assert_ne!(a.hash, b.hash);
    }

    #[test]
    fn scoped_principal_sees_only_its_app() {
        let p = Principal(Scope::App { app: "shop".into() });
        assert!(p.can_see("shop"));
        assert!(!p.can_see("blog"));
        assert!(matches!(p.check_app("blog"), Err(ApiError::NotFound(_))));
        assert!(matches!(p.require_admin("x"), Err(ApiError::Forbidden(_))));
        assert!(Principal(Scope::Admin).require_admin("x").is_ok());
    }
}
