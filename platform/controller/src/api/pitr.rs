//! Point-in-time restore of an app's Postgres database (`paas pg restore --to-time`),
//! never in place: the provider rebuilds the cluster from its archive as it was at the
//! given moment in scratch space and copies the app's database out of it into a NEW
//! resource, attached to the app (or to `into_app`) under its own variable
//! `<RESOURCE_ID>_URL`, like Heroku Rollback; the app's `DATABASE_URL` is not changed
//! (the operator switches when satisfied). A failed restore removes the new database.
//!
//! The reply is NDJSON: `{"step": TEXT}` lines as the restore goes, then
//! `{"restored": {...}}` or `{"error": {"code","message"}}`. The restore runs to its
//! end even if the client goes; its steps also go to the app's log (process type
//! `backup`) like the backup jobs'.

use axum::body::Body as RawBody;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use chrono::{DateTime, NaiveDateTime, Utc};
use futures::StreamExt;
use paas_model::Resource;
use serde::Deserialize;
use tokio::sync::mpsc;

use super::Body;
use crate::auth::{short_id, Principal};
use crate::error::ApiError;
use crate::AppState;

/// The resource kind that has point-in-time restores.
const KIND: &str = "postgres";

/// The route, merged into [`super::router`].
pub fn routes() -> Router<AppState> {
    Router::new().route("/apps/{app}/pg-restore", post(restore))
}

/// `POST /apps/{app}/pg-restore` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RestoreRequest {
    /// `YYYY-MM-DD HH:MM:SS[.f]` in UTC, or with an offset (`+01:00`, `Z`).
    to_time: String,
    /// Attach the restored database to this app instead (the token must see it).
    #[serde(default)]
    into_app: Option<String>,
    /// The source resource; default the app's only Postgres resource.
    #[serde(default)]
    resource: Option<String>,
}

/// Reads a target time (pure): UTC unless an offset is given.
pub fn parse_time(text: &str) -> Result<DateTime<Utc>, String> {
    let text = text.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(&text.replacen(' ', "T", 1)) {
        return Ok(t.with_timezone(&Utc));
    }
    for format in [
        "%Y-%m-%d %H:%M:%S%.f%:z",
        "%Y-%m-%d %H:%M:%S%.f%z",
        "%Y-%m-%d %H:%M:%S%.f%#z",
    ] {
        if let Ok(t) = DateTime::parse_from_str(text, format) {
            return Ok(t.with_timezone(&Utc));
        }
    }
    for format in [
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M",
    ] {
        if let Ok(t) = NaiveDateTime::parse_from_str(text, format) {
            return Ok(t.and_utc());
        }
    }
    Err(format!(
        "cannot read {text:?} as a time: use 'YYYY-MM-DD HH:MM:SS' (UTC) or add an offset ('+01:00', 'Z')"
    ))
}

/// The variable the restored database's URL is attached under: `<ID>_URL` with the
/// resource id in capitals (pure).
pub fn url_variable(resource_id: &str) -> String {
    format!("{}_URL", resource_id.to_uppercase().replace('-', "_"))
}

/// The app's Postgres resource: `resource` if given, else its only one.
async fn source(s: &AppState, app: &str, resource: Option<&str>) -> Result<Resource, ApiError> {
    s.store.get_app(app).await?;
    if let Some(id) = resource {
        let r = s.store.resource(app, id).await?;
        if r.kind != KIND {
            return Err(ApiError::Invalid(format!(
                "resource {id} is of kind {:?}; point-in-time restore is for {KIND}",
                r.kind
            )));
        }
        return Ok(r);
    }
    let mut found: Vec<Resource> = s
        .store
        .list_resources(app)
        .await?
        .into_iter()
        .filter(|r| r.kind == KIND)
        .collect();
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(ApiError::NotFound(format!(
            "app {app} has no {KIND} resource"
        ))),
        _ => Err(ApiError::Invalid(format!(
            "app {app} has several {KIND} resources ({}); name one",
            found
                .iter()
                .map(|r| r.id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

async fn restore(
    p: Principal,
    State(s): State<AppState>,
    Path(app): Path<String>,
    Body(req): Body<RestoreRequest>,
) -> Result<Response, ApiError> {
    p.check_app(&app)?;
    let into_app = req.into_app.clone().unwrap_or_else(|| app.clone());
    p.check_app(&into_app)?;
    s.store.get_app(&into_app).await?;
    super::check_release_quota(&s, &p, &into_app).await?;
    let to = parse_time(&req.to_time).map_err(ApiError::Invalid)?;
    let from = source(&s, &app, req.resource.as_deref()).await?;
    let provider = s.providers.get(KIND).ok_or_else(|| {
        ApiError::Provider(format!(
            "no {KIND} provider is configured on this controller"
        ))
    })?;
    let (lines, mut rx) = mpsc::unbounded_channel::<serde_json::Value>();
    let job = format!("pitr-{}", short_id());
    tokio::spawn(async move {
        let tell = {
            let (lines, s, app, job) = (lines.clone(), s.clone(), app.clone(), job.clone());
            move |step: &str| {
                if let Some(b) = &s.backups {
                    b.tell(&app, &job, step, false);
                }
                tracing::info!(%app, %job, "{step}");
                let _ = lines.send(serde_json::json!({ "step": step }));
            }
        };
        let outcome = run(&s, &provider, &from, to, &into_app, &tell).await;
        let line = match outcome {
            Ok(resource) => serde_json::json!({ "restored": resource }),
            Err(e) => {
                if let Some(b) = &s.backups {
                    b.tell(
                        &app,
                        &job,
                        &format!("point-in-time restore failed: {e}"),
                        true,
                    );
                }
                let (_, code) = e.status_and_code();
                serde_json::json!({ "error": { "code": code, "message": e.to_string() } })
            }
        };
        let _ = lines.send(line);
    });
    let stream = futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).map(|value| {
        let mut line = value.to_string();
        line.push('\n');
        Ok::<_, std::io::Error>(line)
    });
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        RawBody::from_stream(stream),
    )
        .into_response())
}

/// Provisions the new database, restores into it, attaches it; removes it on failure.
async fn run(
    s: &AppState,
    provider: &std::sync::Arc<dyn paas_appliance::provider::Provider>,
    from: &Resource,
    to: DateTime<Utc>,
    into_app: &str,
    tell: &(dyn for<'l> Fn(&'l str) + Send + Sync),
) -> Result<serde_json::Value, ApiError> {
    let id = format!("{KIND}-{}", short_id());
    tell(&format!(
        "point-in-time restore of {} ({}) as of {} UTC into a new database {id} of {into_app}",
        from.id,
        from.app,
        to.format("%Y-%m-%d %H:%M:%S%.3f")
    ));
    let provisioned = provider
        .provision(into_app, &id, &Default::default())
        .await
        .map_err(|e| ApiError::Provider(format!("{KIND} provider: {e}")))?;
    let url = provisioned
        .env
        .get("DATABASE_URL")
        .cloned()
        .unwrap_or_default();
    let variable = url_variable(&id);
    let resource = Resource {
        id: id.clone(),
        app: into_app.to_string(),
        kind: KIND.into(),
        env: [(variable.clone(), url)].into(),
        data: provisioned.data,
        created_at: Utc::now(),
    };
    let done = async {
        let said = provider
            .restore_to_time(&from.data, to.into(), &resource.data, tell)
            .await
            .map_err(|e| ApiError::Provider(e.to_string()))?;
        let description = format!(
            "Add {KIND} resource {id}: {} as of {}",
            from.id,
            to.format("%Y-%m-%d %H:%M:%S UTC")
        );
        super::attach_resource(s, &resource, &description).await?;
        Ok::<_, ApiError>(said)
    }
    .await;
    match done {
        Ok(said) => {
            tell(&format!(
                "done: {said}; attached to {into_app} as {variable}"
            ));
            Ok(serde_json::json!({
                "app": into_app,
                "resource": id,
                "variable": variable,
                "from": from.id,
                "to_time": to.to_rfc3339(),
                "detail": said,
            }))
        }
        Err(e) => {
            if let Err(undo) = provider.deprovision(into_app, &id, &resource.data).await {
                tracing::error!(app = %into_app, %id, error = %undo, "could not remove the database of a failed restore");
            }
            let _ = s.store.delete_resource(into_app, &id).await;
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_utc_unless_an_offset_is_given() {
        let check = |text: &str, expected: &str| {
            assert_eq!(
                parse_time(text).map(|t| t.to_rfc3339()),
                Ok(expected.to_string()),
                "{text}"
            );
        };
        check("2026-12-01 10:42:17", "2026-12-01T10:42:17+00:00");
        check("2026-12-01T10:42:17", "2026-12-01T10:42:17+00:00");
        check("2026-12-01 10:42:17.250", "2026-12-01T10:42:17.250+00:00");
        check("2026-12-01 10:42", "2026-12-01T10:42:00+00:00");
        check("2026-12-01 10:42:17Z", "2026-12-01T10:42:17+00:00");
        check("2026-12-01 11:42:17+01:00", "2026-12-01T10:42:17+00:00");
        check("2026-12-01 11:42:17+0100", "2026-12-01T10:42:17+00:00");
        check("2026-12-01T05:42:17-05:00", "2026-12-01T10:42:17+00:00");
        assert!(parse_time("yesterday").is_err());
        assert!(parse_time("2026-13-01 10:42:17").is_err());
    }

    #[test]
    fn the_restored_url_gets_a_variable_of_its_own() {
        assert_eq!(url_variable("postgres-1a2b3c"), "POSTGRES_1A2B3C_URL");
        assert!(paas_model::validate_env_key(&url_variable("postgres-1a2b3c")).is_ok());
    }
}
