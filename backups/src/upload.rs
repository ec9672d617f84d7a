//! A byte stream to one object, part by part (multipart upload), hashed (SHA-256) and
//! counted on the way; nothing is kept on local disk and at most
//! `(MAX_IN_FLIGHT + 1) * part_size` bytes are in memory.
//!
//! The upload is not completed by [`stream`]: the caller completes it only once the
//! producer (the engine's dump) has succeeded too, and aborts it otherwise. An abort that
//! fails (the store is unreachable, the usual reason for failing) is retried in the
//! background for a few minutes, so no parts are left behind once the store is back.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use object_store::path::Path;
use object_store::{MultipartUpload, ObjectStore, PutPayload};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::watch;

/// Default part size: above S3's 5 MiB minimum.
pub const PART_SIZE: usize = 8 * 1024 * 1024;

/// Parts uploading at once.
const MAX_IN_FLIGHT: usize = 2;

/// How often a failed abort is retried in the background, and the longest pause.
const ABORT_ATTEMPTS: u32 = 12;
const ABORT_MAX_PAUSE: Duration = Duration::from_secs(30);

/// Why an upload failed (it was aborted).
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// The store refused or could not be reached.
    #[error("uploading to the backup store: {0}")]
    Store(#[from] object_store::Error),
    /// Reading the producer's bytes failed.
    #[error("reading the dump: {0}")]
    Read(#[from] std::io::Error),
}

/// An upload whose bytes are all sent, waiting to be completed or aborted. Dropped
/// without either (the task was cancelled), it is aborted.
pub struct Pending {
    upload: Option<Box<dyn MultipartUpload>>,
    path: Path,
    /// Bytes sent.
    pub size: u64,
    /// Hex SHA-256 of the bytes sent.
    pub sha256: String,
}

impl Pending {
    /// Completes the upload: the object now exists whole.
    pub async fn complete(mut self) -> Result<(), UploadError> {
        let mut upload = self
            .upload
            .take()
            .expect("an upload until completed or aborted");
        match upload.complete().await {
            Ok(_) => Ok(()),
            Err(e) => {
                abort(upload, self.path.clone());
                Err(e.into())
            }
        }
    }

    /// Aborts the upload (retried in the background if the store is unreachable).
    pub fn abort(mut self) {
        if let Some(upload) = self.upload.take() {
            abort(upload, self.path.clone());
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(upload) = self.upload.take() {
            if tokio::runtime::Handle::try_current().is_ok() {
                abort(upload, self.path.clone());
            }
        }
    }
}

/// Reads `source` to its end into a new multipart upload of `path`, publishing the
/// byte count on `progress`. On any error (or if the future is dropped) the upload is
/// aborted.
pub async fn stream(
    store: &Arc<dyn ObjectStore>,
    path: &Path,
    mut source: impl AsyncRead + Unpin,
    part_size: usize,
    progress: &watch::Sender<u64>,
) -> Result<Pending, UploadError> {
    let mut pending = Pending {
        upload: Some(store.put_multipart(path).await?),
        path: path.clone(),
        size: 0,
        sha256: String::new(),
    };
    let upload = pending.upload.as_mut().expect("just started");
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut in_flight = FuturesUnordered::new();
    let mut parts = 0usize;
    loop {
        let mut part = BytesMut::with_capacity(part_size);
        while part.len() < part_size {
            let n = source.read_buf(&mut part).await?;
            if n == 0 {
                break;
            }
            hasher.update(&part[part.len() - n..]);
            size += n as u64;
            progress.send_replace(size);
        }
        let last = part.len() < part_size;
        if !part.is_empty() || parts == 0 {
            while in_flight.len() >= MAX_IN_FLIGHT {
                if let Some(done) = in_flight.next().await {
                    done?;
                }
            }
            in_flight.push(upload.put_part(PutPayload::from(part.freeze())));
            parts += 1;
        }
        if last {
            break;
        }
    }
    while let Some(done) = in_flight.next().await {
        done?;
    }
    pending.size = size;
    pending.sha256 = hex::encode(hasher.finalize());
    Ok(pending)
}

/// Aborts `upload`, retrying in the background with growing pauses while it fails.
fn abort(mut upload: Box<dyn MultipartUpload>, path: Path) {
    tokio::spawn(async move {
        let mut pause = Duration::from_secs(1);
        for attempt in 1..=ABORT_ATTEMPTS {
            match upload.abort().await {
                Ok(()) => {
                    tracing::info!(%path, attempt, "incomplete backup upload aborted");
                    return;
                }
                Err(e) => {
                    tracing::warn!(%path, attempt, error = %e, "aborting an incomplete backup upload failed; retrying");
                }
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(ABORT_MAX_PAUSE);
        }
        tracing::error!(%path, "gave up aborting an incomplete backup upload; the store may keep its parts until a lifecycle rule removes them");
    });
}
