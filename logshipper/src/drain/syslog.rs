//! Syslog sink: RFC 5424 messages, RFC 6587 octet counting, over TCP or TLS.
//!
//! One connection is kept open and reopened after any failure. Syslog has no
//! acknowledgements: a batch counts as delivered once written to the socket. Before each
//! write the sink checks whether the peer has closed the connection (a syslog server never
//! sends data), so a receiver restart between batches is noticed and the batch goes to a
//! new connection; a crash of the receiver while bytes are in flight can still lose them.

use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::config::SyslogConfig;
use super::retry::RetryReason;
use super::sink::SendOutcome;
use crate::encode::syslog_frame;
use crate::line::LogLine;

/// Debian's bundle of trusted roots, used when no `ca_file` is given.
const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Errors setting up TLS.
#[derive(Debug, thiserror::Error)]
pub enum SyslogError {
    /// The roots file could not be read.
    #[error("read CA file {path}: {source}")]
    CaFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The roots file holds no usable certificate.
    #[error("no usable certificate in {0}")]
    NoRoots(PathBuf),
    /// rustls refused the configuration.
    #[error("tls config: {0}")]
    Tls(#[from] rustls::Error),
    /// The host is not a valid TLS server name.
    #[error("invalid TLS server name {0:?}")]
    ServerName(String),
}

enum Conn {
    Tcp(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Conn {
    /// Whether the peer closed (or sent data, which a syslog server never does).
    ///
    /// Polls one read without waiting; for TLS the read goes through the session, so
    /// handshake messages the server sends after connecting (session tickets) are
    /// consumed by rustls rather than mistaken for data.
    fn peer_closed(&mut self) -> bool {
        let mut probe = [0u8; 1];
        let polled = match self {
            Conn::Tcp(s) => s.read(&mut probe).now_or_never(),
            Conn::Tls(s) => s.read(&mut probe).now_or_never(),
        };
        // `None`: nothing to read yet, the connection is open.
        polled.is_some()
    }

    async fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        match self {
            Conn::Tcp(s) => {
                s.write_all(buf).await?;
                s.flush().await
            }
            Conn::Tls(s) => {
                s.write_all(buf).await?;
                s.flush().await
            }
        }
    }
}

/// Loads trusted roots from a PEM file into a client TLS config.
pub fn tls_connector(ca_file: Option<&Path>) -> Result<TlsConnector, SyslogError> {
    let path = ca_file.unwrap_or(Path::new(SYSTEM_ROOTS));
    let file = std::fs::File::open(path).map_err(|source| SyslogError::CaFile {
        path: path.to_path_buf(),
        source,
    })?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut BufReader::new(file)).flatten() {
        // Bundles may hold certificates rustls cannot use; skip those.
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        return Err(SyslogError::NoRoots(path.to_path_buf()));
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

/// Sends batches to one syslog receiver.
pub struct SyslogSink {
    addr: String,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    conn: Option<Conn>,
}

impl SyslogSink {
    /// Builds the sink (loads TLS roots now, connects on first send).
    pub fn new(config: &SyslogConfig) -> Result<SyslogSink, SyslogError> {
        let tls = match &config.tls {
            None => None,
            Some(ca) => {
                let name = ServerName::try_from(config.host.clone())
                    .map_err(|_| SyslogError::ServerName(config.host.clone()))?;
                Some((tls_connector(ca.as_deref())?, name))
            }
        };
        Ok(SyslogSink {
            addr: if config.host.contains(':') {
                format!("[{}]:{}", config.host, config.port)
            } else {
                format!("{}:{}", config.host, config.port)
            },
            tls,
            conn: None,
        })
    }

    async fn connect(&self) -> std::io::Result<Conn> {
        let tcp = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(&self.addr))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timeout"))??;
        tcp.set_nodelay(true)?;
        Ok(match &self.tls {
            None => Conn::Tcp(tcp),
            Some((connector, name)) => {
                Conn::Tls(Box::new(connector.connect(name.clone(), tcp).await?))
            }
        })
    }

    /// Writes the batch as octet-counted frames.
    pub async fn send(&mut self, lines: &[LogLine]) -> Result<SendOutcome, RetryReason> {
        if self.conn.as_mut().is_some_and(Conn::peer_closed) {
            self.conn = None;
        }
        let mut conn = match self.conn.take() {
            Some(c) => c,
            None => self
                .connect()
                .await
                .map_err(|e| RetryReason::Unreachable(format!("{}: {e}", self.addr)))?,
        };
        let mut buf = Vec::with_capacity(lines.len() * 160);
        for line in lines {
            syslog_frame(&mut buf, line, None);
        }
        conn.write_all(&buf)
            .await
            .map_err(|e| RetryReason::Unreachable(format!("{}: {e}", self.addr)))?;
        self.conn = Some(conn);
        Ok(SendOutcome::all_delivered(lines.len()))
    }
}
