//! The client identity this process presents to an etcd that requires client
//! certificates.
//!
//! `paas up` runs etcd with TLS and client-certificate authentication, so only holders of
//! a certificate signed by the cluster CA (in the data dir's 0700 `pki/`, readable by the
//! platform's own processes, never by jobs) can read or write the platform's state. A
//! process sets its identity once ([`set_client_identity`]); every [`crate::Coord`] it
//! connects to an `https://` endpoint afterwards presents it and checks etcd's
//! certificate against the CA. Plain `http://` endpoints (tests, an operator's own etcd)
//! are unaffected.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use etcd_client::{Certificate, Identity, TlsOptions};

/// The files of an identity directory, as `paas up` writes them.
pub const CA_FILE: &str = "ca.pem";
/// The client certificate.
pub const CERT_FILE: &str = "client.pem";
/// The client key.
pub const KEY_FILE: &str = "client-key.pem";

#[derive(Debug, Clone)]
struct ClientTls {
    ca: Vec<u8>,
    cert: Vec<u8>,
    key: Vec<u8>,
}

static IDENTITY: OnceLock<ClientTls> = OnceLock::new();

/// Why the identity could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("reading {path}: {source}")]
pub struct TlsError {
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

/// Loads `dir`'s CA, client certificate and key as this process's etcd identity (the
/// first call wins; later ones are ignored).
pub fn set_client_identity(dir: &Path) -> Result<(), TlsError> {
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read(&path).map_err(|source| TlsError { path, source })
    };
    let tls = ClientTls {
        ca: read(CA_FILE)?,
        cert: read(CERT_FILE)?,
        key: read(KEY_FILE)?,
    };
    let _ = IDENTITY.set(tls);
    Ok(())
}

/// The TLS options for `https://` endpoints, if an identity was set.
pub(crate) fn options() -> Option<TlsOptions> {
    IDENTITY.get().map(|t| {
        TlsOptions::new()
            .ca_certificate(Certificate::from_pem(&t.ca))
            .identity(Identity::from_pem(&t.cert, &t.key))
    })
}
