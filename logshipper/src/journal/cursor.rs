//! Cursor files: the last id a named reader has committed, persisted atomically.
//!
//! File `cursors/<name>.cursor` holds 12 bytes: `committed u64le` then CRC-32 (IEEE) of
//! those 8 bytes. It is replaced by writing `<name>.cursor.tmp`, fsyncing it and renaming
//! it over the old file, so a crash leaves either the old or the new value. Without the
//! fsync (`sync: false`, for readers that can re-read) a machine crash may leave the old
//! value, never a torn one.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Suffix of cursor files.
pub const SUFFIX: &str = ".cursor";

/// Whether `name` is usable as a reader name (and thus a file name).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// Path of the cursor file for `name` under `cursors_dir`.
pub fn path(cursors_dir: &Path, name: &str) -> PathBuf {
    cursors_dir.join(format!("{name}{SUFFIX}"))
}

/// Encodes a committed id as cursor file content.
pub fn encode(committed: u64) -> [u8; 12] {
    let mut out = [0u8; 12];
    out[..8].copy_from_slice(&committed.to_le_bytes());
    out[8..].copy_from_slice(&crc32fast::hash(&committed.to_le_bytes()).to_le_bytes());
    out
}

/// Decodes cursor file content; `None` when it is torn or corrupt.
pub fn decode(bytes: &[u8]) -> Option<u64> {
    if bytes.len() != 12 {
        return None;
    }
    let id: [u8; 8] = bytes[..8].try_into().ok()?;
    let crc = u32::from_le_bytes(bytes[8..].try_into().ok()?);
    (crc32fast::hash(&id) == crc).then(|| u64::from_le_bytes(id))
}

/// Atomically writes the cursor file for `name`; with `sync`, durably.
pub fn store(cursors_dir: &Path, name: &str, committed: u64, sync: bool) -> io::Result<()> {
    let final_path = path(cursors_dir, name);
    let tmp = cursors_dir.join(format!("{name}{SUFFIX}.tmp"));
    let mut f = File::create(&tmp)?;
    f.write_all(&encode(committed))?;
    if sync {
        f.sync_data()?;
    }
    fs::rename(&tmp, &final_path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_corruption() {
        assert_eq!(decode(&encode(123_456)), Some(123_456));
        let mut b = encode(5);
        b[3] ^= 1;
        assert_eq!(decode(&b), None);
        assert_eq!(decode(&b[..5]), None);
    }

    #[test]
    fn names() {
        assert!(valid_name("drain-es_1.shop"));
        assert!(!valid_name(""));
        assert!(!valid_name(".hidden"));
        assert!(!valid_name("a/b"));
        assert!(!valid_name("a b"));
    }
}
