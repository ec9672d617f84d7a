//! The supervisor's health API, in Patroni's style, for load balancers, `paas pg info`
//! and the tests.
//!
//! | route      | 200 when                                           | else |
//! |------------|----------------------------------------------------|------|
//! | `/primary` | this member leads and PostgreSQL is a primary      | 503  |
//! | `/replica` | PostgreSQL is a standby whose WAL receiver streams | 503  |
//! | `/health`  | PostgreSQL answers queries                         | 503  |
//! | `/status`  | always: the member's [`MemberStatus`] as JSON      |      |
//!
//! The tick loop publishes a fresh [`MemberStatus`] into a `watch` channel; handlers
//! only read it, so a slow client cannot hold up the supervisor.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use tokio::sync::watch;

use crate::cluster::{MemberStatus, Role};

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

/// Judges the probes from a status.
pub fn probes(status: &MemberStatus) -> Probes {
    let streaming = status.streaming;
    Probes {
        primary: status.running && status.role == Role::Primary,
        replica: status.running && matches!(status.role, Role::Sync | Role::Async) && streaming,
        health: status.running,
    }
}

/// What the handlers read: the member's latest status.
pub type Published = watch::Receiver<MemberStatus>;

/// The health API's routes over the published status.
pub fn router(published: Published) -> Router {
    Router::new()
        .route(
            "/primary",
            get(|State(p): State<Published>| async move { code(probes(&p.borrow()).primary) }),
        )
        .route(
            "/replica",
            get(|State(p): State<Published>| async move { code(probes(&p.borrow()).replica) }),
        )
        .route(
            "/health",
            get(|State(p): State<Published>| async move { code(probes(&p.borrow()).health) }),
        )
        .route(
            "/status",
            get(|State(p): State<Published>| async move { Json(p.borrow().clone()) }),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn status(role: Role, running: bool, streaming: bool) -> MemberStatus {
        MemberStatus {
            name: "pg0".into(),
            pg_addr: "127.0.0.1:1".into(),
            health_addr: "127.0.0.1:2".into(),
            role,
            running,
            streaming,
            wal_lsn: None,
            lag_bytes: None,
            generation: Some(1),
            decision: String::new(),
        }
    }

    #[test]
    fn probes_follow_role_and_streaming() {
        let check = |role, running, streaming, expected: (bool, bool, bool)| {
            let p = probes(&status(role, running, streaming));
            assert_eq!(
                (p.primary, p.replica, p.health),
                expected,
                "{role:?} running={running} streaming={streaming}"
            );
        };
        check(Role::Primary, true, false, (true, false, true));
        check(Role::Sync, true, true, (false, true, true));
        check(Role::Async, true, false, (false, false, true));
        check(Role::Stopped, false, false, (false, false, false));
        check(Role::Primary, false, false, (false, false, false));
    }
}
