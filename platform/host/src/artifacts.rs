//! Release artifacts: gzip'd tarballs stored as `<sha256>.tar.gz` in the shared
//! artifacts directory. Each is verified (size and SHA-256) and unpacked once per host
//! into `DATA_DIR/artifacts/<sha256>/`; every job then gets its own copy of that tree as
//! its working directory, so jobs never see each other's writes.
//!
//! Invariants: an unpacked tree exists only if its tarball verified (trees are unpacked
//! into a temporary directory and renamed into place); a sha256 that is not 64 lowercase
//! hex digits is refused before any path is built from it; unpacking stops (and leaves
//! nothing) past [`MAX_UNPACKED_BYTES`] of tar stream or [`MAX_ENTRIES`] entries, so a
//! small gzip bomb cannot fill the disk. All functions here block (filesystem work):
//! call them from `spawn_blocking`.

use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use paas_model::Artifact;
use sha2::{Digest, Sha256};

/// Why an artifact could not be made ready.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    /// The artifact's sha256 is not 64 lowercase hex digits.
    #[error("invalid artifact id {0:?}")]
    InvalidId(String),
    /// The tarball's size or digest differs from the release's record.
    #[error("artifact {sha256}: expected {expected} bytes, found {actual_size} bytes with sha256 {actual}")]
    Mismatch {
        /// The expected digest.
        sha256: String,
        /// The expected size.
        expected: u64,
        /// The size found.
        actual_size: u64,
        /// The digest found.
        actual: String,
    },
    /// The tarball unpacks to more than the limits allow.
    #[error("artifact {sha256} unpacks to more than {limit}")]
    TooLarge {
        /// The artifact.
        sha256: String,
        /// The limit passed, in words.
        limit: String,
    },
    /// Reading, unpacking or copying failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ArtifactError {
    let path = path.to_path_buf();
    move |source| ArtifactError::Io { what, path, source }
}

/// Most bytes of uncompressed tar stream an artifact may unpack to (4x the largest
/// upload).
pub const MAX_UNPACKED_BYTES: u64 = 2 << 30;

/// Most entries (files, directories, links) an artifact may hold.
pub const MAX_ENTRIES: u64 = 200_000;

/// A reader that fails once more than `left` bytes were asked of it, and says so.
struct Capped<R> {
    inner: R,
    left: u64,
    passed: std::rc::Rc<std::cell::Cell<bool>>,
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        match self.left.checked_sub(n as u64) {
            Some(left) => {
                self.left = left;
                Ok(n)
            }
            None => {
                self.passed.set(true);
                Err(std::io::Error::other("unpack size limit passed"))
            }
        }
    }
}

/// Unpacks the gzip'd tarball `tarball` into `into`, within `max_bytes` of tar stream
/// and `max_entries` entries; `Ok(Err(limit))` when one was passed (what was unpacked is
/// left for the caller to remove).
fn unpack_bounded(
    tarball: &Path,
    into: &Path,
    max_bytes: u64,
    max_entries: u64,
) -> Result<Result<(), String>, ArtifactError> {
    let file = fs::File::open(tarball).map_err(io("opening", tarball))?;
    let passed = std::rc::Rc::new(std::cell::Cell::new(false));
    let mut archive = tar::Archive::new(Capped {
        inner: flate2::read::GzDecoder::new(file),
        left: max_bytes,
        passed: passed.clone(),
    });
    let too_large = || Ok(Err(format!("{max_bytes} bytes")));
    let mut entries = 0u64;
    for entry in archive.entries().map_err(io("unpacking", tarball))? {
        entries += 1;
        if entries > max_entries {
            return Ok(Err(format!("{max_entries} entries")));
        }
        let unpacked = entry.and_then(|mut entry| entry.unpack_in(into));
        if let Err(e) = unpacked {
            if passed.get() {
                return too_large();
            }
            return Err(io("unpacking", tarball)(e));
        }
    }
    if passed.get() {
        return too_large();
    }
    Ok(Ok(()))
}

/// Where tarballs come from and where they are unpacked.
#[derive(Debug, Clone)]
pub struct Artifacts {
    source: PathBuf,
    unpacked: PathBuf,
}

impl Artifacts {
    /// Tarballs in `source` (shared with the controller), trees under `data_dir/artifacts`.
    pub fn new(source: impl Into<PathBuf>, data_dir: &Path) -> Artifacts {
        Artifacts {
            source: source.into(),
            unpacked: data_dir.join("artifacts"),
        }
    }

    /// The verified, unpacked tree of `artifact` (unpacking it if not yet done).
    pub fn unpacked(&self, artifact: &Artifact) -> Result<PathBuf, ArtifactError> {
        let id = &artifact.sha256;
        if id.len() != 64 || !id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(ArtifactError::InvalidId(id.clone()));
        }
        let tree = self.unpacked.join(id);
        if tree.is_dir() {
            return Ok(tree);
        }
        let tarball = self.source.join(format!("{id}.tar.gz"));
        verify(&tarball, artifact)?;
        fs::create_dir_all(&self.unpacked).map_err(io("creating", &self.unpacked))?;
        let tmp = tempfile::Builder::new()
            .prefix(".unpack-")
            .tempdir_in(&self.unpacked)
            .map_err(io("creating", &self.unpacked))?;
        if let Err(limit) = unpack_bounded(&tarball, tmp.path(), MAX_UNPACKED_BYTES, MAX_ENTRIES)? {
            // The temporary directory and what was unpacked go with `tmp`.
            return Err(ArtifactError::TooLarge {
                sha256: id.clone(),
                limit,
            });
        }
        let tmp = tmp.keep();
        if let Err(e) = fs::rename(&tmp, &tree) {
            // Another job of the same release won the race: use its tree.
            let _ = fs::remove_dir_all(&tmp);
            if !tree.is_dir() {
                return Err(io("renaming to", &tree)(e));
            }
        }
        tracing::info!(artifact = %id, tree = %tree.display(), "artifact unpacked");
        Ok(tree)
    }

    /// Makes `workdir` a fresh copy of `artifact`'s tree (or an empty directory).
    pub fn prepare_workdir(
        &self,
        artifact: Option<&Artifact>,
        workdir: &Path,
        owner: Option<u32>,
    ) -> Result<(), ArtifactError> {
        if workdir.exists() {
            fs::remove_dir_all(workdir).map_err(io("removing", workdir))?;
        }
        match artifact {
            None => fs::create_dir_all(workdir).map_err(io("creating", workdir))?,
            Some(a) => copy_tree(&self.unpacked(a)?, workdir)?,
        }
        if let Some(uid) = owner {
            // The job's alone: its user owns every file, nobody else may enter.
            chown_tree(workdir, uid)?;
            fs::set_permissions(workdir, fs::Permissions::from_mode(0o700))
                .map_err(io("restricting", workdir))?;
        }
        Ok(())
    }
}

/// Gives `dir` and everything below it to `uid` (and the group of the same number);
/// symbolic links themselves, never their targets.
fn chown_tree(dir: &Path, uid: u32) -> Result<(), ArtifactError> {
    std::os::unix::fs::lchown(dir, Some(uid), Some(uid)).map_err(io("chown", dir))?;
    let meta = fs::symlink_metadata(dir).map_err(io("reading", dir))?;
    if meta.is_dir() {
        for entry in fs::read_dir(dir).map_err(io("listing", dir))? {
            let entry = entry.map_err(io("listing", dir))?;
            chown_tree(&entry.path(), uid)?;
        }
    }
    Ok(())
}

/// Checks size and SHA-256 of `tarball` against `artifact`.
fn verify(tarball: &Path, artifact: &Artifact) -> Result<(), ArtifactError> {
    let mut file = fs::File::open(tarball).map_err(io("opening", tarball))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(io("reading", tarball))?;
        if n == 0 {
            break;
        }
        size += n as u64;
        hasher.update(&buf[..n]);
    }
    let actual = hex::encode(hasher.finalize());
    if actual != artifact.sha256 || size != artifact.size {
        return Err(ArtifactError::Mismatch {
            sha256: artifact.sha256.clone(),
            expected: artifact.size,
            actual_size: size,
            actual,
        });
    }
    Ok(())
}

/// Copies a tree: directories, files (with permissions) and symlinks.
fn copy_tree(from: &Path, to: &Path) -> Result<(), ArtifactError> {
    fs::create_dir_all(to).map_err(io("creating", to))?;
    for entry in fs::read_dir(from).map_err(io("reading", from))? {
        let entry = entry.map_err(io("reading", from))?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let kind = entry.file_type().map_err(io("reading", &src))?;
        if kind.is_dir() {
            copy_tree(&src, &dst)?;
        } else if kind.is_symlink() {
            let target = fs::read_link(&src).map_err(io("reading", &src))?;
            std::os::unix::fs::symlink(target, &dst).map_err(io("linking", &dst))?;
        } else {
            fs::copy(&src, &dst).map_err(io("copying", &src))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// Writes a tarball with `files` into `dir` and returns its Artifact record.
    fn tarball(dir: &Path, files: &[(&str, &str, u32)]) -> Artifact {
        let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            flate2::Compression::fast(),
        ));
        for (name, body, mode) in files {
            let mut header = tar::Header::new_gnu();
            header.set_size(body.len() as u64);
            header.set_mode(*mode);
            header.set_cksum();
            builder
                .append_data(&mut header, name, body.as_bytes())
                .unwrap();
        }
        let bytes = builder.into_inner().unwrap().finish().unwrap();
        let sha256 = hex::encode(Sha256::digest(&bytes));
        fs::write(dir.join(format!("{sha256}.tar.gz")), &bytes).unwrap();
        Artifact {
            sha256,
            size: bytes.len() as u64,
        }
    }

    #[test]
    fn unpacking_stops_at_the_size_and_entry_limits() {
        let src = tempfile::tempdir().unwrap();
        let big = "0".repeat(1 << 20);
        let bomb = tarball(src.path(), &[("zeros", big.as_str(), 0o644)]);
        assert!(bomb.size < 64 * 1024, "1 MiB of zeros compresses well");
        let tarball_path = |a: &Artifact| src.path().join(format!("{}.tar.gz", a.sha256));
        let into = tempfile::tempdir().unwrap();
        let verdict = unpack_bounded(&tarball_path(&bomb), into.path(), 256 * 1024, 100).unwrap();
        assert!(verdict.unwrap_err().contains("262144 bytes"));
        let into = tempfile::tempdir().unwrap();
        unpack_bounded(&tarball_path(&bomb), into.path(), 2 << 20, 100)
            .unwrap()
            .unwrap();
        assert_eq!(
            fs::metadata(into.path().join("zeros")).unwrap().len(),
            1 << 20
        );

        let names: Vec<String> = (0..20).map(|i| format!("f{i}")).collect();
        let files: Vec<(&str, &str, u32)> =
            names.iter().map(|n| (n.as_str(), "x", 0o644)).collect();
        let many = tarball(src.path(), &files);
        let into = tempfile::tempdir().unwrap();
        let verdict = unpack_bounded(&tarball_path(&many), into.path(), 1 << 20, 10).unwrap();
        assert!(verdict.unwrap_err().contains("10 entries"));
    }

    #[test]
    fn unpacks_once_and_copies_per_job() {
        let src = tempfile::tempdir().unwrap();
        let data = tempfile::tempdir().unwrap();
        let a = tarball(
            src.path(),
            &[("bin/run.sh", "echo hi", 0o755), ("README", "x", 0o644)],
        );
        let arts = Artifacts::new(src.path(), data.path());
        let w1 = data.path().join("jobs/1");
        let w2 = data.path().join("jobs/2");
        arts.prepare_workdir(Some(&a), &w1, None).unwrap();
        arts.prepare_workdir(Some(&a), &w2, None).unwrap();
        assert_eq!(
            fs::read_to_string(w1.join("bin/run.sh")).unwrap(),
            "echo hi"
        );
        let mode = fs::metadata(w2.join("bin/run.sh"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o111, 0o111);
        // Jobs have separate copies.
        fs::write(w1.join("README"), "changed").unwrap();
        assert_eq!(fs::read_to_string(w2.join("README")).unwrap(), "x");
        // A second unpack uses the cached tree even if the tarball is gone.
        fs::remove_file(src.path().join(format!("{}.tar.gz", a.sha256))).unwrap();
        arts.prepare_workdir(Some(&a), &data.path().join("jobs/3"), None)
            .unwrap();
    }

    #[test]
    fn refuses_corrupt_and_invalid_artifacts() {
        let src = tempfile::tempdir().unwrap();
        let data = tempfile::tempdir().unwrap();
        let mut a = tarball(src.path(), &[("f", "x", 0o644)]);
        let arts = Artifacts::new(src.path(), data.path());
        a.size += 1;
        assert!(matches!(
            arts.unpacked(&a),
            Err(ArtifactError::Mismatch { .. })
        ));
        let bad = Artifact {
            sha256: "../../etc".into(),
            size: 1,
        };
        assert!(matches!(
            arts.unpacked(&bad),
            Err(ArtifactError::InvalidId(_))
        ));
        assert!(!data.path().join("artifacts").join(&a.sha256).exists());
    }

    #[test]
    fn no_artifact_means_empty_workdir() {
        let data = tempfile::tempdir().unwrap();
        let arts = Artifacts::new(data.path().join("none"), data.path());
        let w = data.path().join("jobs/x");
        fs::create_dir_all(&w).unwrap();
        fs::write(w.join("stale"), "old run").unwrap();
        arts.prepare_workdir(None, &w, None).unwrap();
        assert_eq!(fs::read_dir(&w).unwrap().count(), 0);
    }
}
