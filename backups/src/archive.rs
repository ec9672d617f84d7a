//! The whole-cluster backup file (`paas cluster backup FILE`): one tar, written as a
//! stream, read back twice.
//!
//! ```text
//! etcd.snapshot                     etcd's snapshot of the whole keyspace
//! artifacts/<sha256>.tar.gz         the code of every release the snapshot holds
//! backups/<app>/<id>/dump           a fresh backup of every resource (the engine's dump)
//! backups/<app>/<id>/manifest.json  that backup's manifest (paas-backups' own format)
//! manifest.json                     last: versions, counts, each part's size and SHA-256
//! ```
//!
//! The manifest comes last because the digests are known only once every part went by;
//! a file cut short has none and is refused. Reading is two passes over the file:
//! [`check`] hashes every entry and compares the set with the manifest ([`verdict`],
//! pure) before anything is written, then [`extract`] hands each part to the caller
//! and checks its digest again as it goes, so a file changed between the passes is
//! refused too (the caller removes what it wrote).
//!
//! Entries are plain ustar: paths of at most 100 bytes (app names and backup ids are
//! short), regular files only.

use std::collections::BTreeMap;
use std::io::Read;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The file format's version, written into every manifest; readers refuse others.
pub const FORMAT: u32 = 1;
/// The manifest's path, the archive's last entry.
pub const MANIFEST: &str = "manifest.json";
/// The etcd snapshot's path.
pub const ETCD_SNAPSHOT: &str = "etcd.snapshot";

/// tar's block size.
const BLOCK: usize = 512;
/// Bytes read or written at a time.
const CHUNK: usize = 64 * 1024;

/// Where the code artifact `sha256` is kept in the archive.
pub fn artifact_path(sha256: &str) -> String {
    format!("artifacts/{sha256}.tar.gz")
}

/// Where the dump of backup `id` of `app` is kept in the archive.
pub fn dump_path(app: &str, id: &str) -> String {
    format!("backups/{app}/{id}/dump")
}

/// Where the manifest of backup `id` of `app` is kept in the archive.
pub fn backup_manifest_path(app: &str, id: &str) -> String {
    format!("backups/{app}/{id}/manifest.json")
}

/// Why an archive cannot be written or read.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// Reading or writing the file (or a part's source) failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// A part's path does not fit a tar header.
    #[error("path {0:?} is too long for the archive")]
    PathTooLong(String),
    /// A part's source gave another number of bytes than announced.
    #[error("{path}: {announced} bytes announced, {read} read")]
    SizeChanged {
        /// The part.
        path: String,
        /// The size in its header.
        announced: u64,
        /// What the source gave.
        read: u64,
    },
    /// The file is not a complete archive of this format, or a part does not match the
    /// manifest.
    #[error("the file is not a sound cluster backup: {0}")]
    Damaged(String),
}

/// One part of the archive as the manifest records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Part {
    /// Its path in the archive.
    pub path: String,
    /// Its size in bytes.
    pub size: u64,
    /// Hex SHA-256 of its bytes.
    pub sha256: String,
}

/// A resource's backup in the archive, which a restore loads into the re-created
/// resource.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceBackup {
    /// The app owning the resource.
    pub app: String,
    /// The resource id.
    pub resource: String,
    /// The resource kind.
    pub kind: String,
    /// The backup's id (its dump and manifest are under `backups/<app>/<id>/`).
    pub backup: String,
}

/// The archive's manifest (`manifest.json`, the last entry).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveManifest {
    /// [`FORMAT`].
    pub format: u32,
    /// The version of paas that wrote it.
    pub paas_version: String,
    /// The etcd server's version the snapshot was taken from.
    pub etcd_version: String,
    /// When the backup started.
    pub created: DateTime<Utc>,
    /// What the snapshot holds, for people and for checks after a restore (apps,
    /// releases, tokens, resources, routes, drains; artifacts and backups in the file).
    pub counts: BTreeMap<String, u64>,
    /// Every other entry of the archive, in order.
    pub parts: Vec<Part>,
    /// The resources whose data the archive holds.
    pub resources: Vec<ResourceBackup>,
}

impl ArchiveManifest {
    /// The part at `path`, if the manifest lists it.
    pub fn part(&self, path: &str) -> Option<&Part> {
        self.parts.iter().find(|p| p.path == path)
    }
}

/// The tar header of a regular file `path` of `size` bytes.
fn header(path: &str, size: u64) -> Result<[u8; BLOCK], ArchiveError> {
    let mut header = tar::Header::new_ustar();
    if path.len() > 100 {
        return Err(ArchiveError::PathTooLong(path.into()));
    }
    header
        .set_path(path)
        .map_err(|_| ArchiveError::PathTooLong(path.into()))?;
    header.set_size(size);
    header.set_mode(0o600);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_mtime(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    );
    header.set_cksum();
    let mut block = [0u8; BLOCK];
    block.copy_from_slice(header.as_bytes());
    Ok(block)
}

/// Zero bytes that complete a part of `size` bytes to whole blocks.
fn padding(size: u64) -> usize {
    (BLOCK - (size % BLOCK as u64) as usize) % BLOCK
}

/// Writes part `path` of exactly `size` bytes read from `source` to `out` (header,
/// bytes, padding) and returns it with its SHA-256. A source that ends early or has
/// more is an error: the archive is then unusable and must be abandoned.
pub async fn write_part(
    out: &mut (dyn AsyncWrite + Send + Unpin),
    path: &str,
    size: u64,
    source: &mut (dyn AsyncRead + Send + Unpin),
) -> Result<Part, ArchiveError> {
    out.write_all(&header(path, size)?).await?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut read = 0u64;
    loop {
        let n = source.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        read += n as u64;
        if read > size {
            break;
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n]).await?;
    }
    if read != size {
        return Err(ArchiveError::SizeChanged {
            path: path.into(),
            announced: size,
            read,
        });
    }
    out.write_all(&vec![0u8; padding(size)]).await?;
    Ok(Part {
        path: path.into(),
        size,
        sha256: hex::encode(hasher.finalize()),
    })
}

/// Writes the manifest as the last entry and the end-of-archive blocks.
pub async fn finish(
    out: &mut (dyn AsyncWrite + Send + Unpin),
    manifest: &ArchiveManifest,
) -> Result<(), ArchiveError> {
    let json = serde_json::to_vec_pretty(manifest).map_err(std::io::Error::other)?;
    write_part(out, MANIFEST, json.len() as u64, &mut json.as_slice()).await?;
    out.write_all(&[0u8; 2 * BLOCK]).await?;
    out.flush().await?;
    Ok(())
}

/// Whether the entries seen (path, size, SHA-256, in file order, the manifest
/// excluded) are exactly the parts `manifest` lists, each with its size and digest;
/// the first difference otherwise. Pure.
pub fn verdict(manifest: &ArchiveManifest, seen: &[Part]) -> Result<(), String> {
    if manifest.format != FORMAT {
        return Err(format!(
            "format {} (this paas reads format {FORMAT})",
            manifest.format
        ));
    }
    if manifest.part(ETCD_SNAPSHOT).is_none() {
        return Err("the manifest lists no etcd snapshot".into());
    }
    for part in seen {
        match manifest.part(&part.path) {
            None => return Err(format!("{} is not in the manifest", part.path)),
            Some(listed) if listed.size != part.size => {
                return Err(format!(
                    "{}: {} bytes, the manifest says {}",
                    part.path, part.size, listed.size
                ))
            }
            Some(listed) if listed.sha256 != part.sha256 => {
                return Err(format!(
                    "{}: SHA-256 {}, the manifest says {}",
                    part.path, part.sha256, listed.sha256
                ))
            }
            Some(_) => {}
        }
    }
    for listed in &manifest.parts {
        let count = seen.iter().filter(|p| p.path == listed.path).count();
        if count != 1 {
            return Err(format!(
                "{} is in the file {count} times, the manifest lists it once",
                listed.path
            ));
        }
    }
    for r in &manifest.resources {
        for path in [
            dump_path(&r.app, &r.backup),
            backup_manifest_path(&r.app, &r.backup),
        ] {
            if manifest.part(&path).is_none() {
                return Err(format!(
                    "resource {} of app {} names backup {}, whose {path} is missing",
                    r.resource, r.app, r.backup
                ));
            }
        }
    }
    Ok(())
}

/// A reader that hashes and counts what passes through it.
struct Hashing<R> {
    inner: R,
    hasher: Sha256,
    size: u64,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }
}

impl<R> Hashing<R> {
    fn new(inner: R) -> Self {
        Hashing {
            inner,
            hasher: Sha256::new(),
            size: 0,
        }
    }

    fn part(self, path: &str) -> Part {
        Part {
            path: path.into(),
            size: self.size,
            sha256: hex::encode(self.hasher.finalize()),
        }
    }
}

/// First pass: reads the whole archive, hashing every entry, and returns its manifest
/// once [`verdict`] found every part as listed. Nothing is written.
pub fn check(file: impl Read) -> Result<ArchiveManifest, ArchiveError> {
    let mut archive = tar::Archive::new(file);
    let mut seen = Vec::new();
    let mut manifest = None;
    let damaged = |what: String| ArchiveError::Damaged(what);
    for entry in archive
        .entries()
        .map_err(|e| damaged(format!("not a tar file: {e}")))?
    {
        let entry = entry.map_err(|e| damaged(format!("unreadable entry: {e}")))?;
        let path = entry_path(&entry)?;
        if manifest.is_some() {
            return Err(damaged(format!("{path} follows the manifest")));
        }
        if entry.header().entry_type() != tar::EntryType::Regular {
            return Err(damaged(format!("{path} is not a regular file")));
        }
        if path == MANIFEST {
            let mut text = Vec::new();
            let mut entry = entry;
            entry
                .read_to_end(&mut text)
                .map_err(|e| damaged(format!("reading the manifest: {e}")))?;
            manifest = Some(
                serde_json::from_slice::<ArchiveManifest>(&text)
                    .map_err(|e| damaged(format!("the manifest does not parse: {e}")))?,
            );
            continue;
        }
        let mut hashing = Hashing::new(entry);
        std::io::copy(&mut hashing, &mut std::io::sink())
            .map_err(|e| damaged(format!("reading {path}: {e}")))?;
        seen.push(hashing.part(&path));
    }
    let manifest = manifest.ok_or_else(|| damaged("no manifest: the file is incomplete".into()))?;
    verdict(&manifest, &seen).map_err(damaged)?;
    Ok(manifest)
}

fn entry_path<R: Read>(entry: &tar::Entry<'_, R>) -> Result<String, ArchiveError> {
    let path = entry
        .path()
        .map_err(|e| ArchiveError::Damaged(format!("an entry's path: {e}")))?;
    path.to_str()
        .map(str::to_string)
        .ok_or_else(|| ArchiveError::Damaged(format!("path {path:?} is not UTF-8")))
}

/// Second pass over an archive [`check`] accepted: hands every part but the manifest
/// to `put` (its manifest record and a reader of its bytes), and fails if a part's
/// bytes no longer match the manifest once `put` read them (the caller must then undo
/// what it wrote). `put` must read the whole part.
pub fn extract(
    file: impl Read,
    manifest: &ArchiveManifest,
    mut put: impl FnMut(&Part, &mut dyn Read) -> std::io::Result<()>,
) -> Result<(), ArchiveError> {
    let mut archive = tar::Archive::new(file);
    for entry in archive.entries()? {
        let entry = entry?;
        let path = entry_path(&entry)?;
        if path == MANIFEST {
            break;
        }
        let listed = manifest
            .part(&path)
            .ok_or_else(|| ArchiveError::Damaged(format!("{path} is not in the manifest")))?;
        let mut hashing = Hashing::new(entry);
        put(listed, &mut hashing)?;
        let got = hashing.part(&path);
        if &got != listed {
            return Err(ArchiveError::Damaged(format!(
                "{path} changed since it was checked"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(parts: Vec<Part>) -> ArchiveManifest {
        ArchiveManifest {
            format: FORMAT,
            paas_version: "0.1.0".into(),
            etcd_version: "3.4.23".into(),
            created: Utc::now(),
            counts: BTreeMap::new(),
            parts,
            resources: vec![],
        }
    }

    fn part(path: &str, size: u64, sha: &str) -> Part {
        Part {
            path: path.into(),
            size,
            sha256: sha.into(),
        }
    }

    #[tokio::test]
    async fn an_archive_written_part_by_part_checks_and_extracts() {
        let mut file = Vec::new();
        let snapshot = b"etcd bytes".to_vec();
        let dump = vec![7u8; 1500];
        let mut parts = Vec::new();
        for (path, bytes) in [
            (ETCD_SNAPSHOT.to_string(), &snapshot),
            (dump_path("shop", "b1"), &dump),
        ] {
            parts.push(
                write_part(&mut file, &path, bytes.len() as u64, &mut bytes.as_slice())
                    .await
                    .unwrap(),
            );
        }
        let m = manifest(parts);
        finish(&mut file, &m).await.unwrap();

        assert_eq!(check(file.as_slice()).unwrap(), m);
        let mut got = BTreeMap::new();
        extract(file.as_slice(), &m, |p, r| {
            let mut bytes = Vec::new();
            r.read_to_end(&mut bytes)?;
            got.insert(p.path.clone(), bytes);
            Ok(())
        })
        .unwrap();
        assert_eq!(got[ETCD_SNAPSHOT], snapshot);
        assert_eq!(got[&dump_path("shop", "b1")], dump);

        // One flipped byte inside the dump: refused by the first pass.
        let mut bad = file.clone();
        bad[BLOCK * 2 + BLOCK + 700] ^= 1;
        let err = check(bad.as_slice()).unwrap_err().to_string();
        assert!(err.contains("SHA-256"), "{err}");
        // Cut short: no manifest.
        let err = check(&file[..file.len() / 2]).unwrap_err().to_string();
        assert!(err.contains("not a sound cluster backup"), "{err}");
    }

    #[tokio::test]
    async fn a_source_of_another_size_than_announced_is_an_error() {
        let mut out = Vec::new();
        let err = write_part(&mut out, "x", 10, &mut &b"12345"[..])
            .await
            .unwrap_err();
        assert!(matches!(err, ArchiveError::SizeChanged { read: 5, .. }));
    }

    #[test]
    fn verdict_names_the_first_difference() {
        let listed = vec![
            part(ETCD_SNAPSHOT, 3, "aa"),
            part("artifacts/x.tar.gz", 4, "bb"),
        ];
        let m = manifest(listed.clone());
        assert_eq!(verdict(&m, &listed), Ok(()));
        let check = |seen: Vec<Part>, expected: &str| {
            let err = verdict(&m, &seen).unwrap_err();
            assert!(err.contains(expected), "{err} lacks {expected}");
        };
        check(
            vec![part(ETCD_SNAPSHOT, 3, "aa")],
            "artifacts/x.tar.gz is in the file 0 times",
        );
        check(
            vec![part(ETCD_SNAPSHOT, 3, "ab"), listed[1].clone()],
            "etcd.snapshot: SHA-256 ab",
        );
        check(
            vec![part(ETCD_SNAPSHOT, 5, "aa"), listed[1].clone()],
            "etcd.snapshot: 5 bytes",
        );
        check(
            vec![listed[0].clone(), listed[1].clone(), part("extra", 1, "cc")],
            "extra is not in the manifest",
        );
        check(
            vec![listed[0].clone(), listed[1].clone(), listed[1].clone()],
            "in the file 2 times",
        );
        let mut other = m.clone();
        other.format = FORMAT + 1;
        assert!(verdict(&other, &listed).unwrap_err().contains("format"));
        let mut no_snapshot = manifest(vec![listed[1].clone()]);
        no_snapshot.format = FORMAT;
        assert!(verdict(&no_snapshot, &listed[1..])
            .unwrap_err()
            .contains("no etcd snapshot"));
        let mut missing_dump = m.clone();
        missing_dump.resources.push(ResourceBackup {
            app: "shop".into(),
            resource: "pg1".into(),
            kind: "postgres".into(),
            backup: "b1".into(),
        });
        assert!(verdict(&missing_dump, &listed)
            .unwrap_err()
            .contains("backups/shop/b1/dump is missing"));
    }
}
