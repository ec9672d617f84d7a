//! A cluster's server certificate, as every engine's members receive it: the platform
//! issues one certificate per appliance cluster from the cluster CA and writes it to a
//! directory (`--tls-dir`, see [`crate::args::MemberArgs`]) with these file names; each
//! member copies the files next to its server's data, owned by the server's OS user and
//! mode 0600 (PostgreSQL refuses a key others can read), before every start, so a
//! re-issued certificate is picked up by the next start.
//!
//! Also shared by the engines' providers: [`ClientTls`], what the URLs handed to apps
//! say about TLS and the rule ([`VerifyRule`]) that makes them require verification, and
//! [`use_ring`], the process's rustls crypto provider for client libraries (mysql_async,
//! redis-rs) that ask rustls for its process default.

use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

/// The cluster CA's certificate (public).
pub const CA_FILE: &str = "ca.pem";
/// The server certificate (SANs: the endpoint's and the members' addresses, `localhost`).
pub const CERT_FILE: &str = "server.pem";
/// The server certificate's private key.
pub const KEY_FILE: &str = "server-key.pem";

/// Why the certificate could not be installed.
#[derive(Debug, thiserror::Error)]
#[error("installing {file} from {from} into {to}: {source}")]
pub struct InstallError {
    /// The file being copied.
    pub file: &'static str,
    /// The directory it was read from.
    pub from: String,
    /// The directory it was written to.
    pub to: String,
    /// The OS error.
    #[source]
    pub source: std::io::Error,
}

/// Where an installed copy of the certificate is, as a server's configuration names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    /// The CA's certificate.
    pub ca: PathBuf,
    /// The server certificate.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
}

impl Installed {
    /// The paths of the files in `dir`, without touching them.
    pub fn at(dir: &Path) -> Installed {
        Installed {
            ca: dir.join(CA_FILE),
            cert: dir.join(CERT_FILE),
            key: dir.join(KEY_FILE),
        }
    }
}

/// Copies the three files from `from` into `to` (created 0700), each 0600 and owned by
/// `owner` (uid, gid) when given; returns where they are.
pub fn install(
    from: &Path,
    to: &Path,
    owner: Option<(u32, u32)>,
) -> Result<Installed, InstallError> {
    let fail = |file: &'static str| {
        let (from, to) = (from.display().to_string(), to.display().to_string());
        move |source| InstallError {
            file,
            from,
            to,
            source,
        }
    };
    std::fs::create_dir_all(to).map_err(fail("the directory"))?;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o700))
        .map_err(fail("the directory"))?;
    chown(to, owner).map_err(fail("the directory"))?;
    for file in [CA_FILE, CERT_FILE, KEY_FILE] {
        let text = std::fs::read(from.join(file)).map_err(fail(file))?;
        let tmp = to.join(format!(".{file}.new"));
        std::fs::write(&tmp, text).map_err(fail(file))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
            .map_err(fail(file))?;
        chown(&tmp, owner).map_err(fail(file))?;
        std::fs::rename(&tmp, to.join(file)).map_err(fail(file))?;
    }
    Ok(Installed::at(to))
}

/// Whether clients must verify the server, asked at each provisioning.
pub type VerifyRule = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = bool> + Send>> + Send + Sync>;

/// How apps reach a cluster over TLS.
#[derive(Clone)]
pub struct ClientTls {
    /// The cluster CA's certificate, at a path the apps' jobs can read.
    pub ca_file: String,
    /// `true` when clients may connect from another machine, so the URL must require
    /// TLS with the server verified.
    pub verify_full: VerifyRule,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("ca_file", &self.ca_file)
            .finish_non_exhaustive()
    }
}

/// Makes ring rustls's process-wide crypto provider, unless one is set already.
/// Client libraries that build their TLS configuration with `ClientConfig::builder()`
/// panic when the binary links more than one provider (ring here, aws-lc through
/// reqwest) and none was chosen; call this before their first TLS connection.
pub fn use_ring() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Losing a race to another caller leaves a provider set, which is all we need.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

fn chown(path: &Path, owner: Option<(u32, u32)>) -> std::io::Result<()> {
    match owner {
        Some((uid, gid)) => std::os::unix::fs::chown(path, Some(uid), Some(gid)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn installs_private_copies_and_replaces_them() {
        let tmp = tempfile::tempdir().unwrap();
        let (from, to) = (tmp.path().join("from"), tmp.path().join("to"));
        std::fs::create_dir(&from).unwrap();
        for (file, text) in [(CA_FILE, "ca"), (CERT_FILE, "cert"), (KEY_FILE, "key")] {
            std::fs::write(from.join(file), text).unwrap();
        }
        let installed = install(&from, &to, None).unwrap();
        assert_eq!(std::fs::read_to_string(&installed.key).unwrap(), "key");
        assert_eq!(
            std::fs::metadata(&installed.key).unwrap().mode() & 0o777,
            0o600
        );
        assert_eq!(std::fs::metadata(&to).unwrap().mode() & 0o777, 0o700);
        std::fs::write(from.join(CERT_FILE), "renewed").unwrap();
        let again = install(&from, &to, None).unwrap();
        assert_eq!(std::fs::read_to_string(again.cert).unwrap(), "renewed");
        std::fs::remove_file(from.join(KEY_FILE)).unwrap();
        let err = install(&from, &to, None).unwrap_err();
        assert_eq!(err.file, KEY_FILE);
    }
}
