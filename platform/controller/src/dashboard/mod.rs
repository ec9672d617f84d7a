//! The web dashboard: server-rendered HTML pages over the JSON API, served by the
//! controller itself with every asset compiled into the binary.
//!
//! Map:
//! - `shell`   `GET /`: the one full page (header, sign-in form, an empty `<main>`).
//! - `apps`    `/ui/apps`: list, create.
//! - `app`     `/ui/apps/{app}/...`: release and history with rollback, env, processes
//!   and scale, resources, routes, drains, destroy with a typed confirmation.
//! - `logs`    `/ui/apps/{app}/logs`: filters and a live follow as server-sent events.
//! - `cluster` `/ui/cluster`: hosts, scheduler leader, appliance members, aggregators,
//!   drains, refreshing itself.
//! - `client`  the in-process API client every page goes through.
//! - `html`    pieces the pages share (tables, error slots, time formatting).
//! - `assets`  htmx (vendored), the glue script and the stylesheet.
//!
//! How a page is shown: the browser loads `/` once; the glue script keeps the token the
//! user signed in with in `sessionStorage`, adds `Authorization: Bearer ...` to every
//! request htmx makes, and maps the location hash (`#/apps/shop`) to a fragment
//! (`/ui/apps/shop`) swapped into `<main>`. So the token is never in a URL, a cookie or a
//! log line, and closing the tab forgets it.
//!
//! Invariants:
//! - The dashboard has no authorization rules of its own: each fragment forwards the
//!   caller's `Authorization` header to the JSON API's router in process
//!   ([`client::Api`]) and renders what the API answered, including its refusals. A token
//!   scoped to one app therefore sees exactly what it sees on the API (other apps: 404).
//! - The dashboard never reads or writes etcd itself and keeps no state between requests.
//! - Every response carries a Content-Security-Policy that allows only this origin's
//!   scripts and styles: no inline script, no CDN.

mod app;
mod apps;
mod assets;
pub mod client;
mod cluster;
mod html;
mod logs;
mod shell;

use axum::http::{header, HeaderValue};
use axum::routing::{get, post};
use axum::Router;

use crate::AppState;

/// The dashboard's routes (`/`, `/ui/...`, `/assets/...`), to be merged with the API's.
pub fn router(state: AppState) -> Router {
    let api = client::Api::new(state);
    Router::new()
        .route("/", get(shell::page))
        .route("/assets/{name}", get(assets::serve))
        .route("/ui/apps", get(apps::page).post(apps::create))
        .route("/ui/apps/{app}", get(app::page))
        .route("/ui/apps/{app}/destroy", post(app::destroy))
        .route("/ui/apps/{app}/releases", get(app::releases))
        .route("/ui/apps/{app}/rollback", post(app::rollback))
        .route("/ui/apps/{app}/env", get(app::env).post(app::set_env))
        .route("/ui/apps/{app}/env/unset", post(app::unset_env))
        .route("/ui/apps/{app}/env/reveal", post(app::reveal_env))
        .route("/ui/apps/{app}/processes", get(app::processes))
        .route("/ui/apps/{app}/jobs/restart", post(app::restart_job))
        .route(
            "/ui/apps/{app}/scale",
            get(app::scale_form).post(app::scale),
        )
        .route(
            "/ui/apps/{app}/resources",
            get(app::resources).post(app::add_resource),
        )
        .route(
            "/ui/apps/{app}/resources/remove",
            post(app::remove_resource),
        )
        .route(
            "/ui/apps/{app}/routes",
            get(app::routes).post(app::add_route),
        )
        .route("/ui/apps/{app}/routes/remove", post(app::remove_route))
        .route(
            "/ui/apps/{app}/drains",
            get(app::drains).post(app::add_drain),
        )
        .route("/ui/apps/{app}/drains/remove", post(app::remove_drain))
        .route("/ui/apps/{app}/logs", get(logs::page))
        .route("/ui/apps/{app}/logs/stream", get(logs::stream))
        .route("/ui/cluster", get(cluster::page))
        .route("/ui/cluster/live", get(cluster::live))
        .layer(axum::middleware::map_response(secure_headers))
        .with_state(api)
}

/// What the browser may do with a dashboard response: only this origin's scripts,
/// styles and connections, no framing, no referrer, no caching of fragments that show
/// secrets.
async fn secure_headers(mut resp: axum::response::Response) -> axum::response::Response {
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
        ),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}
