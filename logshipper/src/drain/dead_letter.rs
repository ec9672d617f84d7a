//! Dead-letter files: lines a sink refused for good, kept for an operator to inspect.
//!
//! File `<dir>/<drain id>.ndjson`, one JSON object per refused line:
//! `{"at": RFC 3339, "status": 400, "error": "...", "line": {LogLine}}`. Appended only.

use std::path::{Path, PathBuf};

use tokio::io::AsyncWriteExt;

use super::sink::DeadItem;

/// Appends refused lines of one drain to its dead-letter file.
pub struct DeadLetter {
    path: PathBuf,
}

impl DeadLetter {
    /// The dead-letter file of drain `id` in `dir` (created on first write).
    pub fn new(dir: &Path, id: &str) -> DeadLetter {
        DeadLetter {
            path: dir.join(format!("{id}.ndjson")),
        }
    }

    /// Where the file is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `items`.
    pub async fn write(&self, items: &[DeadItem]) -> std::io::Result<()> {
        if let Some(parent) = self.path.parent() {
            tokio::fs::create_dir_all(parent).await?;
        }
        let at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let mut buf = Vec::new();
        for item in items {
            let row = serde_json::json!({
                "at": at,
                "status": item.status,
                "error": item.error,
                "line": item.line,
            });
            serde_json::to_writer(&mut buf, &row)?;
            buf.push(b'\n');
        }
        let mut f = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .await?;
        f.write_all(&buf).await?;
        f.flush().await
    }
}
