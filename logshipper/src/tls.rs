//! TLS of the syslog input (RFC 5425) and of the shipper that sends to it.
//!
//! Syslog has no authentication of its own; its standard secure transport is TLS
//! (RFC 5425), and RFC 5425 §5.2 has the server authenticate its senders by their
//! certificates. So the aggregator's syslog input requires a client certificate signed by
//! the cluster's CA (mutual TLS), the one `paas up` keeps in `DATA_DIR/pki` (0700, readable
//! by the platform's processes, never by jobs). rsyslog speaks this with its gtls stream
//! driver (`StreamDriverMode="1"`, `StreamDriverAuthMode="x509/certvalid"` or
//! `"x509/name"` with `PermittedPeer="paas-logs"`).
//!
//! The aggregator presents its own certificate (`logs.pem`, for the name
//! [`SERVER_NAME`]), so a process that binds the syslog port while the aggregator is down
//! cannot collect the platform's lines: shippers check it against the same CA.
//!
//! Every shipper of a process (the host agent's job output, the router's access lines,
//! backup progress) presents the same identity, so it is loaded once per process
//! ([`set_client_identity`], next to `paas_coord::tls::set_client_identity`) rather than
//! threaded through each of their configurations.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;

/// The cluster CA in an identity directory.
pub const CA_FILE: &str = "ca.pem";
/// The platform's client certificate (the one etcd also requires).
pub const CLIENT_CERT_FILE: &str = "client.pem";
/// Its key.
pub const CLIENT_KEY_FILE: &str = "client-key.pem";
/// The aggregator's server certificate, for [`SERVER_NAME`].
pub const SERVER_CERT_FILE: &str = "logs.pem";
/// Its key.
pub const SERVER_KEY_FILE: &str = "logs-key.pem";
/// The name in the aggregator's certificate, which shippers check whatever address they
/// connect to (the aggregator may listen on any address of any host).
pub const SERVER_NAME: &str = "paas-logs";

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A file holds no usable certificate or key.
    #[error("{path}: {message}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// rustls refused the certificates or keys.
    #[error("TLS configuration: {0}")]
    Config(String),
}

static CLIENT: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();

/// Loads `dir`'s CA, client certificate and key as the identity every shipper of this
/// process presents (the first call wins).
pub fn set_client_identity(dir: &Path) -> Result<(), TlsError> {
    let config = client_config(dir)?;
    let _ = CLIENT.set(config);
    Ok(())
}

/// The identity set with [`set_client_identity`], if any.
pub fn client_identity() -> Option<Arc<rustls::ClientConfig>> {
    CLIENT.get().cloned()
}

/// A client configuration that presents `dir`'s client certificate and trusts only the
/// cluster CA in `dir`.
pub fn client_config(dir: &Path) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let roots = roots(&dir.join(CA_FILE))?;
    let certs = certs(&dir.join(CLIENT_CERT_FILE))?;
    let key = key(&dir.join(CLIENT_KEY_FILE))?;
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(config_error)?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .map_err(config_error)?;
    Ok(Arc::new(config))
}

/// The server name shippers check in the aggregator's certificate.
pub fn server_name() -> ServerName<'static> {
    ServerName::try_from(SERVER_NAME).expect("a valid DNS name")
}

/// A server configuration presenting `cert_pem`/`key_pem`, without client certificates
/// (TLS for confidentiality only, e.g. a forward input whose clients authenticate with
/// the shared key).
pub fn server_config(
    cert_pem: &Path,
    key_pem: &Path,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(config_error)?
        .with_no_client_auth()
        .with_single_cert(certs(cert_pem)?, key(key_pem)?)
        .map_err(config_error)?;
    Ok(Arc::new(config))
}

/// The syslog input's configuration for the identity directory `dir`: it presents
/// [`SERVER_CERT_FILE`] and refuses every client without a certificate signed by `dir`'s
/// CA.
pub fn mutual_server_config(dir: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let verifier = WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots(&dir.join(CA_FILE))?),
        provider(),
    )
    .build()
    .map_err(config_error)?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(config_error)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            certs(&dir.join(SERVER_CERT_FILE))?,
            key(&dir.join(SERVER_KEY_FILE))?,
        )
        .map_err(config_error)?;
    // Connections live long and are never resumed; without tickets nothing arrives
    // from the server after the handshake, so a shipper's "is the peer still there"
    // probe reads nothing but a close.
    config.send_tls13_tickets = 0;
    config.ignore_client_order = true;
    Ok(Arc::new(config))
}

/// ring's suites with AES-128-GCM first: log streams are bulk data, and it takes 10 AES
/// rounds per block where AES-256-GCM (rustls' first choice) takes 14, at a strength
/// that is not the weak point here. The syslog input prefers its own order, so other
/// clients (rsyslog's GnuTLS) use it too when they offer it.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider
        .cipher_suites
        .sort_by_key(|s| s.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    Arc::new(provider)
}

fn config_error(e: impl std::fmt::Display) -> TlsError {
    TlsError::Config(e.to_string())
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(path)?;
    let certs = rustls_pemfile::certs(&mut bytes.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: path.to_path_buf(),
            message: "no certificate".into(),
        });
    }
    Ok(certs)
}

fn key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read(path)?;
    rustls_pemfile::private_key(&mut bytes.as_slice())
        .map_err(|e| TlsError::Pem {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?
        .ok_or_else(|| TlsError::Pem {
            path: path.to_path_buf(),
            message: "no private key".into(),
        })
}

fn roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certs(path)? {
        roots.add(cert).map_err(config_error)?;
    }
    Ok(roots)
}
