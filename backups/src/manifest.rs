//! What a backup is: the manifest written next to the dump, last, once the dump object is
//! complete. Its presence is what makes a backup exist.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Who asked for a backup. Retention only ever deletes scheduled ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Trigger {
    /// `paas backup create`.
    Manual,
    /// The schedule runner.
    Schedule,
}

/// A backup's state. Only complete backups have a manifest; the field is there so
/// readers need not know that rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Every byte is stored and its size confirmed.
    Complete,
}

/// The manifest of one backup (`<app>/<id>/manifest.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Unique per app; sorts by start time (`20261201T030000Z-1a2b3c`).
    pub id: String,
    /// The app whose resource was backed up.
    pub app: String,
    /// The resource id (`postgres-1a2b3c4d5e`).
    pub resource: String,
    /// The resource kind (`postgres`).
    pub kind: String,
    /// The engine, as its hook reported it.
    pub engine: String,
    /// The version of the tool that wrote the dump.
    pub version: String,
    /// The dump's format (`pg_dump custom`).
    pub format: String,
    /// Size of the dump object in bytes.
    pub size: u64,
    /// Hex SHA-256 of the dump object.
    pub sha256: String,
    /// When the backup started.
    pub started: DateTime<Utc>,
    /// How long it took, in milliseconds.
    pub took_ms: u64,
    /// Always complete (see [`State`]).
    pub state: State,
    /// Who asked for it.
    pub trigger: Trigger,
}

/// A new backup id for a backup started at `at`: sortable by time, random suffix.
pub fn new_id(at: DateTime<Utc>) -> String {
    format!(
        "{}-{}",
        at.format("%Y%m%dT%H%M%SZ"),
        hex::encode(rand::random::<[u8; 3]>())
    )
}

/// Whether `id` has the shape [`new_id`] makes (so it is safe as a key segment).
pub fn valid_id(id: &str) -> bool {
    id.len() == 23
        && id.bytes().all(|b| {
            b.is_ascii_digit() || b.is_ascii_lowercase() || b == b'T' || b == b'Z' || b == b'-'
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn ids_sort_by_time_and_validate() {
        let a = new_id(Utc.with_ymd_and_hms(2026, 12, 1, 3, 0, 0).unwrap());
        let b = new_id(Utc.with_ymd_and_hms(2026, 12, 2, 3, 0, 0).unwrap());
        assert!(a.starts_with("20261201T030000Z-"), "{a}");
        assert!(a < b);
        assert!(valid_id(&a), "{a}");
        assert!(!valid_id("../../etc/passwd-xxxxxxxxxxx"));
        assert!(!valid_id("x"));
    }
}
