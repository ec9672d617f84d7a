//! The operations on backups of one resource: create (the engine's dump streamed into a
//! multipart upload, manifest last), list, get, download, restore (checked, then
//! streamed), delete.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::Utc;
use futures::stream::BoxStream;
use futures::StreamExt;
use paas_appliance::provider::Provider;
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;

use crate::journal::Journal;
use crate::manifest::{new_id, valid_id, Manifest, State, Trigger};
use crate::progress::{self, Total};
use crate::store::{BackupStore, StoreError};
use crate::upload::{self, UploadError, PART_SIZE};
use crate::verify::{self, CheckError};

/// Bytes buffered between the engine's dump and the upload.
const PIPE_BYTES: usize = 1024 * 1024;

/// How often a running backup or restore writes a progress line to the journal.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// Why a backup operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// No backup with that id (or not of that app).
    #[error("backup {id:?} of app {app:?} not found")]
    NotFound {
        /// The app.
        app: String,
        /// The id asked for.
        id: String,
    },
    /// The engine's hook failed (dump or restore).
    #[error("{kind}: {message}")]
    Engine {
        /// The resource kind.
        kind: String,
        /// What the engine said.
        message: String,
    },
    /// The upload failed; it was aborted, nothing is listed.
    #[error(transparent)]
    Upload(#[from] UploadError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The store holds a different size than was uploaded; the backup is not recorded.
    #[error("backup {id}: the store holds {stored} bytes after an upload of {sent}; not recorded")]
    Incomplete {
        /// The backup.
        id: String,
        /// The size the store reports.
        stored: u64,
        /// The bytes sent.
        sent: u64,
    },
    /// The stored dump does not match its manifest; nothing was restored.
    #[error("backup {id} is damaged ({reason}); refusing to restore it, nothing was changed")]
    Damaged {
        /// The backup.
        id: String,
        /// What does not match.
        reason: String,
    },
    /// The stored object changed or vanished between the check and the restore.
    #[error("backup {id} changed while it was being restored ({reason}); nothing was changed")]
    Changed {
        /// The backup.
        id: String,
        /// The store's answer.
        reason: String,
    },
    /// A backup of one kind cannot be restored into a resource of another.
    #[error("backup {id} is a {backup} dump; resource {resource} is {target}")]
    KindMismatch {
        /// The backup.
        id: String,
        /// Its kind.
        backup: String,
        /// The target resource.
        resource: String,
        /// Its kind.
        target: String,
    },
}

/// A resource to back up or restore into, with the provider that serves its kind.
#[derive(Clone)]
pub struct Target {
    /// The app owning the resource.
    pub app: String,
    /// The resource id.
    pub resource: String,
    /// The resource kind (`postgres`).
    pub kind: String,
    /// The provider's data for the resource.
    pub data: serde_json::Value,
    /// The provider of `kind`.
    pub provider: Arc<dyn Provider>,
}

/// Backups of every app, in one store.
#[derive(Clone)]
pub struct Backups {
    store: BackupStore,
    part_size: usize,
    journal: Option<Arc<dyn Journal>>,
    progress_every: Duration,
}

impl std::fmt::Debug for Backups {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backups")
            .field("store", &self.store)
            .field("part_size", &self.part_size)
            .finish_non_exhaustive()
    }
}

impl Backups {
    /// Backups kept in `store`.
    pub fn new(store: Arc<dyn object_store::ObjectStore>) -> Self {
        Backups {
            store: BackupStore::new(store),
            part_size: PART_SIZE,
            journal: None,
            progress_every: PROGRESS_EVERY,
        }
    }

    /// Also tells every backup's and restore's progress to `journal`.
    pub fn with_journal(mut self, journal: Arc<dyn Journal>) -> Self {
        self.journal = Some(journal);
        self
    }

    /// Writes progress lines every `every` instead of [`PROGRESS_EVERY`].
    pub fn with_progress_every(mut self, every: Duration) -> Self {
        self.progress_every = every;
        self
    }

    /// Tells `message` about job `job` of `app` to the journal (the app's log, process
    /// type `backup`), if there is one; also used by jobs outside this crate such as
    /// the controller's point-in-time restores.
    pub fn tell(&self, app: &str, job: &str, message: &str, failed: bool) {
        if let Some(journal) = &self.journal {
            journal.line(app, job, message, failed);
        }
    }

    /// Runs `work`, telling a progress line (`what`, the bytes `done` publishes, the
    /// rate, the ETA against `total`) every [`Backups::with_progress_every`] meanwhile.
    async fn reporting<T>(
        &self,
        (app, job, what): (&str, &str, &str),
        done: watch::Receiver<u64>,
        total: Total,
        work: impl std::future::Future<Output = T>,
    ) -> T {
        let clock = Instant::now();
        let mut ticks = tokio::time::interval_at(
            tokio::time::Instant::now() + self.progress_every,
            self.progress_every,
        );
        tokio::pin!(work);
        loop {
            tokio::select! {
                out = &mut work => return out,
                _ = ticks.tick() => {
                    let bytes = *done.borrow();
                    self.tell(app, job, &progress::line(what, bytes, clock.elapsed(), total), false);
                }
            }
        }
    }

    /// What the next backup of `target` is expected to weigh: the size of its
    /// resource's newest backup, if there is one.
    pub async fn estimate(&self, target: &Target) -> Total {
        match self.store.list(&target.app).await {
            Ok(list) => list
                .iter()
                .rev()
                .find(|m| m.resource == target.resource && m.kind == target.kind)
                .map_or(Total::Unknown, |m| Total::PreviousBackup(m.size)),
            Err(e) => {
                tracing::debug!(error = %e, "no size estimate for the backup");
                Total::Unknown
            }
        }
    }

    /// Uploads in parts of `bytes` (S3 needs at least 5 MiB but for the last part).
    pub fn with_part_size(mut self, bytes: usize) -> Self {
        self.part_size = bytes;
        self
    }

    /// The store, for tests and tools that look at objects directly.
    pub fn store(&self) -> &BackupStore {
        &self.store
    }

    /// Backs up `target`: its engine's dump is streamed to the store while its size and
    /// SHA-256 are computed; the byte count so far is published on `progress`. The
    /// manifest is written only after the dump succeeded and the object is complete.
    pub async fn create(
        &self,
        target: &Target,
        trigger: Trigger,
        progress: &watch::Sender<u64>,
    ) -> Result<Manifest, BackupError> {
        let started = Utc::now();
        let clock = Instant::now();
        let id = new_id(started);
        let path = BackupStore::dump_path(&target.app, &id);
        tracing::info!(app = %target.app, resource = %target.resource, %id, "backup started");
        self.tell(
            &target.app,
            &id,
            &format!(
                "backup {id} of {} ({}) started ({})",
                target.resource,
                target.kind,
                match trigger {
                    Trigger::Manual => "manual",
                    Trigger::Schedule => "scheduled",
                }
            ),
            false,
        );
        let (mut writer, reader) = tokio::io::duplex(PIPE_BYTES);
        let dump = async {
            let result = target
                .provider
                .backup(&target.app, &target.resource, &target.data, &mut writer)
                .await;
            let closed = writer.shutdown().await;
            drop(writer);
            result.and_then(|info| {
                closed
                    .map(|()| info)
                    .map_err(|e| paas_appliance::provider::ProviderError(e.to_string()))
            })
        };
        let sent = upload::stream(
            self.store.objects(),
            &path,
            reader,
            self.part_size,
            progress,
        );
        let total = self.estimate(target).await;
        let what = format!("backup {id} of {}", target.resource);
        let (dumped, sent) = self
            .reporting(
                (&target.app, &id, &what),
                progress.subscribe(),
                total,
                async { tokio::join!(dump, sent) },
            )
            .await;
        let result = async {
            let info = match (dumped, sent) {
                (Ok(info), Ok(pending)) => {
                    let (size, sha256) = (pending.size, pending.sha256.clone());
                    pending.complete().await?;
                    (info, size, sha256)
                }
                (dumped, sent) => {
                    // The upload's error explains a dump that could not write; report it
                    // first, else the engine's.
                    let engine_error = dumped.err();
                    match sent {
                        Ok(pending) => pending.abort(),
                        Err(e) => return Err(BackupError::Upload(e)),
                    }
                    let message = engine_error.map(|e| e.0).unwrap_or_default();
                    return Err(BackupError::Engine {
                        kind: target.kind.clone(),
                        message,
                    });
                }
            };
            let (info, size, sha256) = info;
            let stored = self
                .store
                .objects()
                .head(&path)
                .await
                .map_err(StoreError::from)?;
            if stored.size != size {
                return Err(BackupError::Incomplete {
                    id: id.clone(),
                    stored: stored.size,
                    sent: size,
                });
            }
            let manifest = Manifest {
                id: id.clone(),
                app: target.app.clone(),
                resource: target.resource.clone(),
                kind: target.kind.clone(),
                engine: info.engine,
                version: info.version,
                format: info.format,
                size,
                sha256,
                started,
                took_ms: clock.elapsed().as_millis() as u64,
                state: State::Complete,
                trigger,
            };
            self.store.put_manifest(&manifest).await?;
            Ok(manifest)
        }
        .await;
        match &result {
            Ok(m) => {
                tracing::info!(app = %m.app, resource = %m.resource, id = %m.id, size = m.size, took_ms = m.took_ms, "backup complete");
                self.tell(
                    &m.app,
                    &m.id,
                    &format!(
                        "backup {} complete: {} bytes ({}), sha256 {}, took {:.1} s ({}/s)",
                        m.id,
                        m.size,
                        progress::human_bytes(m.size),
                        m.sha256,
                        m.took_ms as f64 / 1000.0,
                        progress::human_bytes(
                            (m.size as f64 / (m.took_ms as f64 / 1000.0).max(0.001)) as u64
                        ),
                    ),
                    false,
                );
            }
            Err(e) => {
                tracing::warn!(app = %target.app, resource = %target.resource, %id, error = %e, "backup failed");
                self.tell(&target.app, &id, &format!("backup {id} failed: {e}"), true);
                // A completed object without a manifest is not a backup: remove it.
                if let Err(e) = self.store.delete(&target.app, &id).await {
                    tracing::warn!(%id, error = %e, "removing the failed backup's object failed");
                }
            }
        }
        result
    }

    /// The backups of `app`, oldest first.
    pub async fn list(&self, app: &str) -> Result<Vec<Manifest>, BackupError> {
        Ok(self.store.list(app).await?)
    }

    /// Backup `id` of `app`.
    pub async fn get(&self, app: &str, id: &str) -> Result<Manifest, BackupError> {
        let not_found = || BackupError::NotFound {
            app: app.into(),
            id: id.into(),
        };
        if !valid_id(id) {
            return Err(not_found());
        }
        self.store.manifest(app, id).await?.ok_or_else(not_found)
    }

    /// The dump of backup `id` of `app`, as stored, with its manifest (whose size and
    /// SHA-256 the reader can check).
    pub async fn download(
        &self,
        app: &str,
        id: &str,
    ) -> Result<(Manifest, BoxStream<'static, object_store::Result<Bytes>>), BackupError> {
        let manifest = self.get(app, id).await?;
        let (_, stream) = self.store.dump(app, id, None).await?;
        Ok((manifest, stream))
    }

    /// Reads the whole dump and checks it against the manifest; returns its ETag.
    pub async fn verify(&self, manifest: &Manifest) -> Result<Option<String>, BackupError> {
        self.verify_counting(manifest, &watch::channel(0).0).await
    }

    /// [`Backups::verify`], publishing the bytes read so far on `read`.
    async fn verify_counting(
        &self,
        manifest: &Manifest,
        read: &watch::Sender<u64>,
    ) -> Result<Option<String>, BackupError> {
        let (etag, stream) = self.store.dump(&manifest.app, &manifest.id, None).await?;
        let stream = counting(stream, read.clone());
        match verify::check(stream, manifest.size, &manifest.sha256).await {
            Ok(()) => Ok(etag),
            Err(CheckError::Mismatch(m)) => Err(BackupError::Damaged {
                id: manifest.id.clone(),
                reason: m.to_string(),
            }),
            Err(CheckError::Read(e)) => Err(StoreError::from(e).into()),
        }
    }

    /// Restores backup `manifest` into `into` (the same resource, or another of the same
    /// kind): the dump is checked whole first, then streamed to the engine, checked
    /// again on the way. A damaged dump is refused before the engine sees any of it.
    pub async fn restore(&self, manifest: &Manifest, into: &Target) -> Result<(), BackupError> {
        if manifest.kind != into.kind {
            return Err(BackupError::KindMismatch {
                id: manifest.id.clone(),
                backup: manifest.kind.clone(),
                resource: into.resource.clone(),
                target: into.kind.clone(),
            });
        }
        let (app, id) = (&into.app, &manifest.id);
        self.tell(
            app,
            id,
            &format!(
                "restore of backup {id} (app {}) into {} started",
                manifest.app, into.resource
            ),
            false,
        );
        let result = self.restore_checked(manifest, into).await;
        match &result {
            Ok(took) => self.tell(
                app,
                id,
                &format!(
                    "restore of backup {id} into {} complete, took {:.1} s",
                    into.resource,
                    took.as_secs_f64()
                ),
                false,
            ),
            Err(e) => self.tell(
                app,
                id,
                &format!("restore of backup {id} failed: {e}"),
                true,
            ),
        }
        result.map(|_| ())
    }

    async fn restore_checked(
        &self,
        manifest: &Manifest,
        into: &Target,
    ) -> Result<std::time::Duration, BackupError> {
        let clock = Instant::now();
        let (app, id) = (into.app.as_str(), manifest.id.as_str());
        let total = Total::Exact(manifest.size);
        let (checked_bytes, seen) = watch::channel(0u64);
        let what = format!("restore of backup {id}: checking");
        let etag = self
            .reporting(
                (app, id, &what),
                seen,
                total,
                self.verify_counting(manifest, &checked_bytes),
            )
            .await?;
        let stream = match self.store.dump(&manifest.app, &manifest.id, etag).await {
            Ok((_, stream)) => stream,
            Err(StoreError::Store(e)) => {
                return Err(BackupError::Changed {
                    id: manifest.id.clone(),
                    reason: e.to_string(),
                })
            }
            Err(e) => return Err(e.into()),
        };
        let (loaded, seen) = watch::channel(0u64);
        let checked = verify::verified(counting(stream, loaded), manifest.size, &manifest.sha256);
        let mut reader = tokio_util::io::StreamReader::new(Box::pin(checked));
        let what = format!("restore of backup {id}: loading into {}", into.resource);
        self.reporting(
            (app, id, &what),
            seen,
            total,
            into.provider
                .restore(&into.app, &into.resource, &into.data, &mut reader),
        )
        .await
        .map_err(|e| BackupError::Engine {
            kind: into.kind.clone(),
            message: e.0,
        })?;
        tracing::info!(id = %manifest.id, app = %into.app, resource = %into.resource, took = ?clock.elapsed(), "backup restored");
        Ok(clock.elapsed())
    }

    /// Deletes backup `id` of `app`.
    pub async fn delete(&self, app: &str, id: &str) -> Result<(), BackupError> {
        self.get(app, id).await?;
        self.store.delete(app, id).await?;
        tracing::info!(%app, %id, "backup deleted");
        Ok(())
    }
}

/// `stream`, publishing the bytes it yielded so far on `read`.
fn counting(
    stream: BoxStream<'static, object_store::Result<Bytes>>,
    read: watch::Sender<u64>,
) -> BoxStream<'static, object_store::Result<Bytes>> {
    let mut total = 0u64;
    Box::pin(stream.inspect(move |chunk| {
        if let Ok(bytes) = chunk {
            total += bytes.len() as u64;
            read.send_replace(total);
        }
    }))
}
