//! The dashboard's static files, compiled into the binary: htmx (vendored from the npm
//! registry, see `assets/README.md`), the glue script and the stylesheet. Linked with a
//! digest of their contents in the URL, so they can be cached.

use std::sync::LazyLock;

use axum::extract::Path;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

/// A digest of every asset, put in their URLs: a binary with other assets has other
/// URLs, so the long cache lifetime never serves a stale script.
static VERSION: LazyLock<String> = LazyLock::new(|| {
    let mut digest = Sha256::new();
    for (name, _, bytes) in FILES {
        digest.update(name.as_bytes());
        digest.update(bytes);
    }
    hex::encode(&digest.finalize()[..6])
});

/// (name, content type, bytes)
const FILES: [(&str, &str, &[u8]); 3] = [
    (
        "htmx.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("assets/htmx.min.js"),
    ),
    (
        "dashboard.js",
        "text/javascript; charset=utf-8",
        include_bytes!("assets/dashboard.js"),
    ),
    (
        "dashboard.css",
        "text/css; charset=utf-8",
        include_bytes!("assets/dashboard.css"),
    ),
];

/// Where the page links asset `name`.
pub fn url(name: &str) -> String {
    format!("/assets/{name}?v={}", *VERSION)
}

/// `GET /assets/{name}`
pub async fn serve(Path(name): Path<String>) -> Response {
    match FILES.iter().find(|(n, _, _)| *n == name) {
        Some((_, content_type, bytes)) => (
            [
                (header::CONTENT_TYPE, *content_type),
                (header::CACHE_CONTROL, "public, max-age=86400"),
            ],
            *bytes,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "no such asset").into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_asset_is_served_under_a_digest_url() {
        for (name, content_type, bytes) in FILES {
            let u = url(name);
            let digest = u.rsplit_once("?v=").map(|(_, v)| v).unwrap_or_default();
            assert_eq!(digest.len(), 12, "{u}");
            let resp = serve(Path(name.to_string())).await;
            assert_eq!(resp.status(), StatusCode::OK);
            assert_eq!(resp.headers()[header::CONTENT_TYPE], content_type);
            let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
                .await
                .unwrap();
            assert_eq!(&body[..], bytes);
        }
        let missing = serve(Path("../Cargo.toml".to_string())).await;
        assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    }
}
