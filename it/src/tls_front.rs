//! A TLS terminator in front of a plain-TCP server: `https://localhost:PORT` with a
//! certificate for `localhost` from a throwaway CA, each accepted connection forwarded
//! to `127.0.0.1:upstream`. For clients that speak only HTTPS to a test server that
//! speaks only HTTP (pgBackRest to moto: `moto_server --ssl` fails its uploads).
//!
//! It can refuse for a while ([`TlsFront::refuse`]): open connections are cut and new
//! ones closed at once, the server behind it keeping its data; [`TlsFront::accept`]
//! ends that. That is "the store is down" without the restart of an in-memory server.
//!
//! It runs on a thread of its own (a current-thread runtime), so it serves sync and
//! async tests alike, and stops when dropped.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::error::{FixtureError, Result};

/// The CA's certificate file in the front's directory.
const CA_FILE: &str = "ca.pem";

/// A running terminator; stops when dropped.
pub struct TlsFront {
    port: u16,
    refusing: watch::Sender<bool>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    dir: tempfile::TempDir,
}

impl std::fmt::Debug for TlsFront {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsFront")
            .field("port", &self.port)
            .field("refusing", &*self.refusing.borrow())
            .finish()
    }
}

impl TlsFront {
    /// Starts terminating TLS on a free loopback port, forwarding to
    /// `127.0.0.1:upstream`.
    pub fn start(upstream: u16) -> Result<TlsFront> {
        // The CA must be readable by servers that run as their own user (pgBackRest as
        // postgres): a directory anyone may traverse, a CA file anyone may read.
        let dir = tempfile::Builder::new()
            .prefix("paas-it-tls-")
            .tempdir()
            .map_err(FixtureError::io("creating the TLS front's directory"))?;
        set_mode(dir.path(), 0o755)?;
        let acceptor = acceptor(dir.path())?;
        let listener = std::net::TcpListener::bind("127.0.0.1:0")
            .map_err(FixtureError::io("binding the TLS front"))?;
        listener
            .set_nonblocking(true)
            .map_err(FixtureError::io("setting the TLS front non-blocking"))?;
        let port = listener
            .local_addr()
            .map_err(FixtureError::io("reading the TLS front's address"))?
            .port();
        let (refusing, refused) = watch::channel(false);
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(FixtureError::io("building the TLS front's runtime"))?;
        let thread = std::thread::Builder::new()
            .name("tls-front".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let Ok(listener) = TcpListener::from_std(listener) else {
                        return;
                    };
                    tokio::select! {
                        _ = serve(listener, acceptor, upstream, refused) => {}
                        _ = stopped => {}
                    }
                });
            })
            .map_err(FixtureError::io("starting the TLS front's thread"))?;
        Ok(TlsFront {
            port,
            refusing,
            stop: Some(stop),
            thread: Some(thread),
            dir,
        })
    }

    /// `https://localhost:PORT`.
    pub fn endpoint(&self) -> String {
        format!("https://localhost:{}", self.port)
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The CA certificate (PEM) its certificate is signed by, readable by any user.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join(CA_FILE)
    }

    /// Cuts every open connection and closes new ones at once until [`TlsFront::accept`].
    pub fn refuse(&self) {
        self.refusing.send_replace(true);
    }

    /// Forwards connections again.
    pub fn accept(&self) {
        self.refusing.send_replace(false);
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn serve(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    upstream: u16,
    refused: watch::Receiver<bool>,
) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            // Out of descriptors or the like: give it a moment rather than spin.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        if *refused.borrow() {
            drop(client);
            continue;
        }
        let (acceptor, mut refused) = (acceptor.clone(), refused.clone());
        tokio::spawn(async move {
            let forward = async {
                let mut tls = acceptor.accept(client).await?;
                let mut server =
                    TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], upstream))).await?;
                tokio::io::copy_bidirectional(&mut tls, &mut server).await?;
                std::io::Result::Ok(())
            };
            tokio::select! {
                _ = forward => {}
                _ = refused.wait_for(|r| *r) => {}
            }
        });
    }
}

/// Makes a CA (its certificate written to `dir/ca.pem`, 0644) and a certificate for
/// `localhost` signed by it, and returns the acceptor presenting the latter.
fn acceptor(dir: &Path) -> Result<tokio_rustls::TlsAcceptor> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose, SanType,
    };
    let tls = |e: &dyn std::fmt::Display| FixtureError::Tls(e.to_string());
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(|e| tls(&e))?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "paas-it TLS front CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate().map_err(|e| tls(&e))?;
    let ca = ca.self_signed(&ca_key).map_err(|e| tls(&e))?;
    let ca_file = dir.join(CA_FILE);
    std::fs::write(&ca_file, ca.pem()).map_err(FixtureError::io("writing the CA file"))?;
    set_mode(&ca_file, 0o644)?;

    let mut leaf = CertificateParams::new(vec!["localhost".to_string()]).map_err(|e| tls(&e))?;
    leaf.subject_alt_names
        .push(SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()));
    leaf.distinguished_name
        .push(DnType::CommonName, "localhost");
    let key = KeyPair::generate().map_err(|e| tls(&e))?;
    let cert = leaf.signed_by(&key, &ca, &ca_key).map_err(|e| tls(&e))?;

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls(&e))?
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .map_err(|e| tls(&e))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(FixtureError::io(format!("chmod {}", path.display())))
}
