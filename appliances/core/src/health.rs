//! A member's health API, in Patroni's style, for load balancers, `paas cluster status`
//! and the tests; the same routes for every engine.
//!
//! | route      | 200 when                                           | else |
//! |------------|----------------------------------------------------|------|
//! | `/primary` | this member leads and its server is writable       | 503  |
//! | `/replica` | the server is a replica that follows its upstream  | 503  |
//! | `/health`  | the server answers queries                         | 503  |
//! | `/status`  | always: the member's status as JSON                |      |
//!
//! The supervisor publishes a fresh status into a `watch` channel every tick; handlers
//! only read it, so a slow client cannot hold up the supervisor. What each probe means
//! for an engine's status is the engine's [`Probed::probes`].

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use tokio::sync::watch;

/// The answers of the three probes for one status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probes {
    /// `/primary`.
    pub primary: bool,
    /// `/replica`.
    pub replica: bool,
    /// `/health`.
    pub health: bool,
}

/// A member status the health API can judge.
pub trait Probed: Serialize + Clone + Send + Sync + 'static {
    /// The probes' answers for this status.
    fn probes(&self) -> Probes;
}

/// The health API's routes over the published status.
pub fn router<S: Probed>(published: watch::Receiver<S>) -> Router {
    Router::new()
        .route(
            "/primary",
            get(|State(p): State<watch::Receiver<S>>| async move { code(p.borrow().probes().primary) }),
        )
        .route(
            "/replica",
            get(|State(p): State<watch::Receiver<S>>| async move { code(p.borrow().probes().replica) }),
        )
        .route(
            "/health",
            get(|State(p): State<watch::Receiver<S>>| async move { code(p.borrow().probes().health) }),
        )
        .route(
            "/status",
            get(|State(p): State<watch::Receiver<S>>| async move { Json(p.borrow().clone()) }),
        )
        .with_state(published)
}

fn code(ok: bool) -> StatusCode {
    if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}
