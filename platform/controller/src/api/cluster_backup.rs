//! `POST /cluster/backup` (admin only): the whole cluster in one file, streamed as it is
//! written (format: `paas_backups::archive`).
//!
//! Order, so that what the snapshot refers to is in the file: the etcd snapshot first
//! (spooled to an unlinked file in the private artifacts directory, since its size must
//! be known before its tar header), then the apps, releases and resources are read and
//! every artifact a release names is opened, then a fresh backup of every resource is
//! taken, one after another. Only then does the reply start. A resource added or code
//! uploaded after the snapshot is in the file but not in the snapshot, and is ignored by
//! a restore; a resource removed after the snapshot comes back empty; gc removing a
//! release meanwhile cannot remove an artifact the file needs (it is already open).
//!
//! Complete or failed, never partial: a resource whose kind has no backups or cannot be
//! re-created by a restore (`Provider::can_reinstate`), a missing artifact or any failed
//! backup fails the request before a byte is sent (the latest older backup is never
//! used instead: it would silently lose what happened since). A failure while
//! streaming ends the reply with an error instead of the end of the body, and the
//! archive's manifest, its last entry, is then missing: a restore refuses the file.

use std::collections::BTreeMap;

use axum::body::Body as RawBody;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use chrono::Utc;
use futures::StreamExt;
use paas_backups::archive::{self, ArchiveManifest, Part, ResourceBackup};
use paas_backups::{Backups, Manifest, Target, Trigger};
use tokio::io::{AsyncSeekExt, AsyncWriteExt};
use tokio::sync::watch;

use crate::auth::Principal;
use crate::error::ApiError;
use crate::AppState;

/// Bytes buffered between the archive's writer and the reply.
const PIPE_BYTES: usize = 256 * 1024;

/// The route, merged into [`super::router`].
pub fn routes() -> Router<AppState> {
    Router::new().route("/cluster/backup", post(backup))
}

/// Everything the archive will hold, gathered before the reply starts.
struct Contents {
    snapshot: (tokio::fs::File, u64),
    etcd_version: String,
    artifacts: Vec<(String, u64, tokio::fs::File)>,
    backups: Vec<Manifest>,
    counts: BTreeMap<String, u64>,
}

async fn backup(p: Principal, State(s): State<AppState>) -> Result<Response, ApiError> {
    p.require_admin("a cluster backup")?;
    let store = s
        .backups
        .clone()
        .ok_or_else(|| ApiError::Invalid("backups are not configured on this controller".into()))?;
    let created = Utc::now();
    let contents = gather(&s, &store).await?;
    tracing::info!(
        resources = contents.backups.len(),
        artifacts = contents.artifacts.len(),
        snapshot_bytes = contents.snapshot.1,
        "cluster backup: streaming the archive"
    );
    let (mut writer, reader) = tokio::io::duplex(PIPE_BYTES);
    let task = tokio::spawn(async move {
        let result = write_archive(&mut writer, &store, contents, created).await;
        if let Err(e) = &result {
            tracing::error!(error = %e, "cluster backup failed while streaming");
        }
        result
    });
    // After the last byte, the writer's verdict: an error ends the body with an error
    // (the client sees a broken transfer, not a complete file).
    let tail = futures::stream::once(async move {
        match task.await {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(Err(std::io::Error::other(e))),
            Err(e) => Some(Err(std::io::Error::other(e.to_string()))),
        }
    })
    .filter_map(std::future::ready);
    let body = tokio_util::io::ReaderStream::new(reader).chain(tail);
    Ok((
        [(header::CONTENT_TYPE, "application/x-tar")],
        RawBody::from_stream(body),
    )
        .into_response())
}

/// Snapshot, lists, open artifacts and fresh backups (see the module doc for the order).
async fn gather(s: &AppState, store: &Backups) -> Result<Contents, ApiError> {
    let (snapshot, etcd_version) = spool_snapshot(s).await?;
    let coord = s.store.coord();
    let unavailable = |e: paas_coord::CoordError| ApiError::Unavailable(e.to_string());
    let mut counts = BTreeMap::new();
    let apps = s.store.list_apps().await?;
    let mut releases = 0u64;
    let mut resources = Vec::new();
    let mut artifacts = BTreeMap::new();
    for app in &apps {
        for release in s.store.list_releases(&app.name).await? {
            releases += 1;
            if let Some(a) = release.artifact {
                artifacts.insert(
                    a.sha256.clone(),
                    (a.size, app.name.clone(), release.version),
                );
            }
        }
        resources.extend(s.store.list_resources(&app.name).await?);
    }
    counts.insert("apps".into(), apps.len() as u64);
    counts.insert("releases".into(), releases);
    counts.insert("resources".into(), resources.len() as u64);
    counts.insert("tokens".into(), s.store.list_tokens().await?.len() as u64);
    for (name, prefix) in [
        ("routes", paas_model::keys::routes()),
        ("drains", paas_model::keys::drains()),
    ] {
        let n = coord.entries(&prefix).await.map_err(unavailable)?.len();
        counts.insert(name.into(), n as u64);
    }

    let mut targets = Vec::new();
    for r in resources {
        let provider = s.providers.get(&r.kind).ok_or_else(|| {
            ApiError::Provider(format!(
                "resource {} of app {} is of kind {:?}, which no configured provider serves; \
                 its data could not be in the backup",
                r.id, r.app, r.kind
            ))
        })?;
        if !provider.has_backups() || !provider.can_reinstate() {
            return Err(ApiError::Invalid(format!(
                "resource {} of app {} is {}, which a cluster restore cannot bring back \
                 (no backups or no re-creation with its credentials); remove it or back it \
                 up with `paas backup create`",
                r.id, r.app, r.kind
            )));
        }
        targets.push(Target {
            app: r.app,
            resource: r.id,
            kind: r.kind,
            // Completed from the variables for resources older than the backup hooks.
            data: provider.backup_data(&r.data, &r.env),
            provider,
        });
    }

    let mut open = Vec::new();
    for (sha, (size, app, version)) in artifacts {
        let path = super::artifact_path(&s.artifacts_dir, &sha);
        let file = tokio::fs::File::open(&path).await.map_err(|e| {
            ApiError::Internal(format!(
                "artifact {sha} of release {version} of app {app} cannot be read ({e}); \
                 the backup would be incomplete"
            ))
        })?;
        let on_disk = file
            .metadata()
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?
            .len();
        if on_disk != size {
            return Err(ApiError::Internal(format!(
                "artifact {sha} holds {on_disk} bytes, its release records {size}"
            )));
        }
        open.push((sha, size, file));
    }
    counts.insert("artifacts".into(), open.len() as u64);

    let mut backups = Vec::new();
    for target in &targets {
        let manifest = store
            .create(target, Trigger::Manual, &watch::channel(0).0)
            .await
            .map_err(|e| {
                ApiError::Provider(format!(
                    "backup of resource {} of app {} failed, so the cluster backup is \
                     not taken: {e}",
                    target.resource, target.app
                ))
            })?;
        backups.push(manifest);
    }
    counts.insert("backups".into(), backups.len() as u64);
    Ok(Contents {
        snapshot,
        etcd_version,
        artifacts: open,
        backups,
        counts,
    })
}

/// The etcd snapshot in an unlinked 0600 file of the artifacts directory (private to
/// the platform), rewound, with its size and etcd's version.
async fn spool_snapshot(s: &AppState) -> Result<((tokio::fs::File, u64), String), ApiError> {
    let internal = |e: std::io::Error| ApiError::Internal(format!("spooling the snapshot: {e}"));
    let path = s.artifacts_dir.join(format!(
        ".cluster-backup-{}.snapshot",
        hex::encode(rand::random::<[u8; 8]>())
    ));
    let mut file = tokio::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .await
        .map_err(internal)?;
    tokio::fs::remove_file(&path).await.map_err(internal)?;
    let info = s
        .store
        .coord()
        .snapshot(&mut file)
        .await
        .map_err(|e| ApiError::Unavailable(format!("etcd snapshot: {e}")))?;
    file.rewind().await.map_err(internal)?;
    Ok(((file, info.bytes), info.etcd_version))
}

/// Writes every part, then the manifest.
async fn write_archive(
    out: &mut tokio::io::DuplexStream,
    store: &Backups,
    contents: Contents,
    created: chrono::DateTime<Utc>,
) -> Result<(), String> {
    let mut parts = Vec::new();
    let (mut snapshot, size) = contents.snapshot;
    parts.push(
        archive::write_part(out, archive::ETCD_SNAPSHOT, size, &mut snapshot)
            .await
            .map_err(|e| e.to_string())?,
    );
    for (sha, size, mut file) in contents.artifacts {
        let part = archive::write_part(out, &archive::artifact_path(&sha), size, &mut file)
            .await
            .map_err(|e| e.to_string())?;
        if part.sha256 != sha {
            return Err(format!(
                "artifact {sha} has SHA-256 {} on disk",
                part.sha256
            ));
        }
        parts.push(part);
    }
    let mut resources = Vec::new();
    for m in &contents.backups {
        parts.push(write_backup(out, store, m).await?);
        let json = serde_json::to_vec_pretty(m).map_err(|e| e.to_string())?;
        let path = archive::backup_manifest_path(&m.app, &m.id);
        parts.push(
            archive::write_part(out, &path, json.len() as u64, &mut json.as_slice())
                .await
                .map_err(|e| e.to_string())?,
        );
        resources.push(ResourceBackup {
            app: m.app.clone(),
            resource: m.resource.clone(),
            kind: m.kind.clone(),
            backup: m.id.clone(),
        });
    }
    let manifest = ArchiveManifest {
        format: archive::FORMAT,
        paas_version: env!("CARGO_PKG_VERSION").into(),
        etcd_version: contents.etcd_version,
        created,
        counts: contents.counts,
        parts,
        resources,
    };
    archive::finish(out, &manifest)
        .await
        .map_err(|e| e.to_string())?;
    out.shutdown().await.map_err(|e| e.to_string())
}

/// One backup's dump, as stored, checked against its manifest on the way.
async fn write_backup(
    out: &mut tokio::io::DuplexStream,
    store: &Backups,
    m: &Manifest,
) -> Result<Part, String> {
    let (_, stream) = store
        .download(&m.app, &m.id)
        .await
        .map_err(|e| e.to_string())?;
    let mut reader =
        tokio_util::io::StreamReader::new(stream.map(|chunk| chunk.map_err(std::io::Error::other)));
    let part = archive::write_part(out, &archive::dump_path(&m.app, &m.id), m.size, &mut reader)
        .await
        .map_err(|e| e.to_string())?;
    if part.sha256 != m.sha256 {
        return Err(format!(
            "backup {} of app {} reads back with SHA-256 {}, its manifest says {}",
            m.id, m.app, part.sha256, m.sha256
        ));
    }
    Ok(part)
}
