//! The dashboard's static files, compiled into the binary: htmx (vendored from the npm
//! registry, see `assets/README.md`), the glue script and the stylesheet. Served with a
//! version in the URL so they can be cached for good.

use axum::extract::Path;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

/// Changes with every build of a new version, so browsers fetch new assets.
const VERSION: &str = env!("CARGO_PKG_VERSION");

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
    format!("/assets/{name}?v={VERSION}")
}

/// `GET /assets/{name}`
pub async fn serve(Path(name): Path<String>) -> Response {
    match FILES.iter().find(|(n, _, _)| *n == name) {
        Some((_, content_type, bytes)) => (
            [
                (header::CONTENT_TYPE, *content_type),
                (header::CACHE_CONTROL, "public, max-age=3600"),
            ],
            *bytes,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "no such asset").into_response(),
    }
}
