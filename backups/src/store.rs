//! The object layout of backups, and manifests.
//!
//! ```text
//! <app>/<id>/dump            the engine's dump, byte for byte
//! <app>/<id>/manifest.json   the manifest, written after the dump is complete
//! ```
//!
//! A backup exists when its manifest does: listing reads manifests only, so a dump whose
//! manifest was never written (a crash between the two) is never shown. Deleting removes
//! the manifest first, so a half-deleted backup is not listed either.

use std::sync::Arc;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{GetOptions, ObjectStore, PutPayload};

use crate::manifest::Manifest;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The object store failed (unreachable, refused, precondition failed).
    #[error("backup store: {0}")]
    Store(#[from] object_store::Error),
    /// A manifest is not valid JSON of the expected shape.
    #[error("manifest {path}: {source}")]
    Manifest {
        /// Its path.
        path: String,
        /// The decoding error.
        source: serde_json::Error,
    },
}

/// Backups in one object store.
#[derive(Clone, Debug)]
pub struct BackupStore {
    store: Arc<dyn ObjectStore>,
}

impl BackupStore {
    /// Backups kept in `store`.
    pub fn new(store: Arc<dyn ObjectStore>) -> Self {
        BackupStore { store }
    }

    /// The underlying object store.
    pub fn objects(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// Where the dump of backup `id` of `app` lives.
    pub fn dump_path(app: &str, id: &str) -> Path {
        Path::from_iter([app, id, "dump"])
    }

    /// Where the manifest of backup `id` of `app` lives.
    pub fn manifest_path(app: &str, id: &str) -> Path {
        Path::from_iter([app, id, "manifest.json"])
    }

    /// Writes `manifest` (which makes the backup exist).
    pub async fn put_manifest(&self, manifest: &Manifest) -> Result<(), StoreError> {
        let body = serde_json::to_vec_pretty(manifest).expect("manifest serializes");
        self.store
            .put(
                &Self::manifest_path(&manifest.app, &manifest.id),
                PutPayload::from(body),
            )
            .await?;
        Ok(())
    }

    /// The manifest of backup `id` of `app`, if it exists.
    pub async fn manifest(&self, app: &str, id: &str) -> Result<Option<Manifest>, StoreError> {
        let path = Self::manifest_path(app, id);
        let body = match self.store.get(&path).await {
            Ok(got) => got.bytes().await?,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        serde_json::from_slice(&body)
            .map(Some)
            .map_err(|source| StoreError::Manifest {
                path: path.to_string(),
                source,
            })
    }

    /// Every backup of `app` that has a manifest, oldest first.
    pub async fn list(&self, app: &str) -> Result<Vec<Manifest>, StoreError> {
        let prefix = Path::from(app);
        let objects: Vec<_> = match self.store.list(Some(&prefix)).try_collect().await {
            Ok(objects) => objects,
            Err(object_store::Error::NotFound { .. }) => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        let mut manifests = Vec::new();
        for meta in objects {
            let parts: Vec<_> = meta.location.parts().collect();
            if let [_, id, name] = parts.as_slice() {
                if name.as_ref() == "manifest.json" {
                    if let Some(m) = self.manifest(app, id.as_ref()).await? {
                        manifests.push(m);
                    }
                }
            }
        }
        manifests.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(manifests)
    }

    /// The dump of backup `id` of `app` as a stream, and its ETag when the store has
    /// one; with `if_match`, only if the object still has that ETag.
    pub async fn dump(
        &self,
        app: &str,
        id: &str,
        if_match: Option<String>,
    ) -> Result<
        (
            Option<String>,
            BoxStream<'static, object_store::Result<Bytes>>,
        ),
        StoreError,
    > {
        let got = self
            .store
            .get_opts(
                &Self::dump_path(app, id),
                GetOptions {
                    if_match,
                    ..Default::default()
                },
            )
            .await?;
        let etag = got.meta.e_tag.clone();
        Ok((etag, got.into_stream().boxed()))
    }

    /// Removes backup `id` of `app`: manifest first, then the dump. Succeeds if already
    /// gone.
    pub async fn delete(&self, app: &str, id: &str) -> Result<(), StoreError> {
        for path in [Self::manifest_path(app, id), Self::dump_path(app, id)] {
            match self.store.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}
