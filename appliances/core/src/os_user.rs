//! The operating-system user a server runs as (`postgres`, `mysql`, `redis`), and
//! whether it can reach its directory: the same questions for every engine.

use std::ffi::CString;
use std::path::{Path, PathBuf};

/// Why a user was not found.
#[derive(Debug, thiserror::Error)]
#[error("the OS user {0:?} does not exist (is the server package installed?)")]
pub struct NoSuchUser(pub String);

/// The (uid, gid) of the OS user `name` when this process is root, which then starts
/// the server as that user; `None` when not root (the server runs as this process's
/// user).
pub fn server_user(name: &str) -> Result<Option<(u32, u32)>, NoSuchUser> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let c_name = CString::new(name).map_err(|_| NoSuchUser(name.to_string()))?;
    // SAFETY: getpwnam returns a pointer into static storage or null; the ids are copied
    // out at once.
    let entry = unsafe { libc::getpwnam(c_name.as_ptr()) };
    if entry.is_null() {
        return Err(NoSuchUser(name.to_string()));
    }
    // SAFETY: non-null pointer from getpwnam.
    Ok(Some(unsafe { ((*entry).pw_uid, (*entry).pw_gid) }))
}

/// A directory on the way to a server's data that its user may not search.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocked {
    /// The directory.
    pub path: PathBuf,
    /// Its permission bits.
    pub mode: u32,
    /// Its owner.
    pub owner: u32,
}

/// The first existing ancestor of `dir` (from `/` down, `dir` included) that the user
/// (`uid`, `gid`) may not search; `None` when every one lets it through. Directories not
/// created yet are made later, owned by the server's user, so the walk stops there.
pub fn blocked_ancestor(dir: &Path, uid: u32, gid: u32) -> std::io::Result<Option<Blocked>> {
    use std::os::unix::fs::MetadataExt;
    let absolute = std::path::absolute(dir)?;
    for ancestor in absolute.ancestors().collect::<Vec<_>>().into_iter().rev() {
        let Ok(meta) = std::fs::metadata(ancestor) else {
            break;
        };
        let mode = meta.mode() & 0o7777;
        let searchable = if meta.uid() == uid {
            mode & 0o100 != 0
        } else if meta.gid() == gid {
            mode & 0o010 != 0
        } else {
            mode & 0o001 != 0
        };
        if !searchable {
            return Ok(Some(Blocked {
                path: ancestor.to_path_buf(),
                mode,
                owner: meta.uid(),
            }));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_closed_parent_blocks_other_users_only() {
        let dir = tempfile::tempdir().unwrap();
        let inner = dir.path().join("a/b");
        std::fs::create_dir_all(&inner).unwrap();
        std::fs::set_permissions(dir.path().join("a"), std::fs::Permissions::from_mode(0o700))
            .unwrap();
        let blocked = blocked_ancestor(&inner.join("not-yet"), 4242, 4242)
            .unwrap()
            .expect("a 0700 directory blocks another user");
        assert_eq!(blocked.path, dir.path().join("a"));
        assert_eq!(blocked.mode, 0o700);
        // SAFETY: getuid/getgid have no preconditions.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        assert_eq!(blocked_ancestor(&inner, uid, gid).unwrap(), None);
    }
}
