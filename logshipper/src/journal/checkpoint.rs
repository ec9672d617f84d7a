//! Sender-mark checkpoints: the duplicate marks ([`Marks`]) as they stood when a segment
//! was started, so opening the journal rebuilds them by reading only the newest segments.
//!
//! File `<first id, 20 digits>.marks` beside its segment holds the marks JSON followed
//! by a newline and the CRC-32 (IEEE) of the JSON as 8 hex digits. It covers exactly the
//! lines with ids below the segment's first id. It is written by writing
//! `<name>.tmp` and renaming it, without fsync (it is written under the journal's lock);
//! the next [`super::Journal::sync`] fsyncs it. A machine crash before that may leave it
//! missing or torn, which the CRC catches, and opening then falls back to an older
//! checkpoint. It is deleted with its segment.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::dedupe::Marks;

/// Path of the checkpoint of the segment starting at `first_id`.
pub fn path(dir: &Path, first_id: u64) -> PathBuf {
    dir.join(format!("{first_id:020}.marks"))
}

/// Encodes marks as checkpoint file content.
pub fn encode(marks: &Marks) -> Vec<u8> {
    let mut out = serde_json::to_vec(marks).expect("marks serialize to JSON");
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(format!("\n{crc:08x}").as_bytes());
    out
}

/// Decodes checkpoint file content; `None` when it is torn or corrupt.
pub fn decode(bytes: &[u8]) -> Option<Marks> {
    let split = bytes.iter().rposition(|&b| b == b'\n')?;
    let (json, crc) = (&bytes[..split], &bytes[split + 1..]);
    let crc = u32::from_str_radix(std::str::from_utf8(crc).ok()?, 16).ok()?;
    if crc32fast::hash(json) != crc {
        return None;
    }
    serde_json::from_slice(json).ok()
}

/// Atomically writes the checkpoint of the segment starting at `first_id`; returns the
/// open file, for the caller to fsync later.
pub fn store(dir: &Path, first_id: u64, marks: &Marks) -> io::Result<File> {
    let final_path = path(dir, first_id);
    let tmp = dir.join(format!("{first_id:020}.marks.tmp"));
    let mut f = File::create(&tmp)?;
    f.write_all(&encode(marks))?;
    fs::rename(&tmp, &final_path)?;
    Ok(f)
}

/// Reads the checkpoint of the segment starting at `first_id`: `None` when there is none
/// or it is damaged (logged).
pub fn load(dir: &Path, first_id: u64) -> Option<Marks> {
    let p = path(dir, first_id);
    let bytes = match fs::read(&p) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(checkpoint = %p.display(), error = %e, "journal: cannot read sender marks");
            return None;
        }
    };
    let marks = decode(&bytes);
    if marks.is_none() {
        tracing::warn!(checkpoint = %p.display(), "journal: damaged sender marks, using an older checkpoint");
    }
    marks
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dedupe::Origin;

    #[test]
    fn round_trip_and_corruption() {
        let mut marks = Marks::default();
        marks.admit(
            Some("h1"),
            Some(&Origin {
                seq: 7,
                spool: Some(u64::MAX),
            }),
        );
        let bytes = encode(&marks);
        assert_eq!(decode(&bytes), Some(marks));
        let mut b = bytes.clone();
        b[3] ^= 1;
        assert_eq!(decode(&b), None);
        assert_eq!(decode(&bytes[..bytes.len() - 1]), None);
        assert_eq!(decode(b""), None);
    }

    #[test]
    fn store_then_load() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path(), 5), None);
        store(dir.path(), 5, &Marks::default()).unwrap();
        assert_eq!(load(dir.path(), 5), Some(Marks::default()));
    }
}
