//! HTTPS: certificates by SNI from the routes' PEMs, ALPN `h2` and `http/1.1`.
//!
//! Each route with `tls` contributes its certificate for its domain ([`certs_of`]; a
//! route whose PEMs do not parse is logged and skipped, never stops the others). The
//! [`SniResolver`] answers each handshake from the current snapshot, so a route added
//! or removed takes effect on the next handshake without restarting the listener.

use std::collections::HashMap;
use std::sync::Arc;

use paas_model::{Route, RouteTls};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::sync::watch;

use crate::state::Snapshot;

/// Why a route's certificate could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate PEM holds no certificate or does not parse.
    #[error("certificate: {0}")]
    Cert(String),
    /// The key PEM holds no key, does not parse, or is of an unsupported type.
    #[error("private key: {0}")]
    Key(String),
    /// rustls refused the configuration.
    #[error("tls config: {0}")]
    Config(#[from] rustls::Error),
}

/// Parses a route's PEMs into a certified key.
pub fn certified_key(tls: &RouteTls) -> Result<CertifiedKey, TlsError> {
    let certs = rustls_pemfile::certs(&mut tls.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Cert(e.to_string()))?;
    if certs.is_empty() {
        return Err(TlsError::Cert("no certificate in PEM".into()));
    }
    let key = rustls_pemfile::private_key(&mut tls.key_pem.as_bytes())
        .map_err(|e| TlsError::Key(e.to_string()))?
        .ok_or_else(|| TlsError::Key("no private key in PEM".into()))?;
    let key = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| TlsError::Key(e.to_string()))?;
    Ok(CertifiedKey::new(certs, key))
}

/// Domain -> certificate for every route with usable TLS material.
pub fn certs_of<'a>(
    routes: impl IntoIterator<Item = &'a Route>,
) -> HashMap<String, Arc<CertifiedKey>> {
    let mut out = HashMap::new();
    for route in routes {
        let Some(tls) = &route.tls else { continue };
        match certified_key(tls) {
            Ok(key) => {
                out.insert(route.domain.to_ascii_lowercase(), Arc::new(key));
            }
            Err(e) => {
                tracing::warn!(route = %route.id, domain = %route.domain, error = %e, "skipping the route's certificate")
            }
        }
    }
    out
}

/// Picks the certificate for a handshake's server name from the current snapshot.
#[derive(Debug)]
pub struct SniResolver {
    state: watch::Receiver<Arc<Snapshot>>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello.server_name()?.to_ascii_lowercase();
        self.state.borrow().certs.get(&name).cloned()
    }
}

/// The server config: SNI certificates, ALPN h2 then http/1.1.
pub fn server_config(
    state: watch::Receiver<Arc<Snapshot>>,
) -> Result<rustls::ServerConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver { state }));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(id: &str, domain: &str, tls: Option<RouteTls>) -> Route {
        Route {
            id: id.into(),
            app: "shop".into(),
            domain: domain.into(),
            path: None,
            sticky: false,
            tls,
            tcp_port: None,
            created_at: chrono::Utc::now(),
        }
    }

    #[test]
    fn certs_by_domain_skip_bad_material() {
        let cert = rcgen::generate_simple_self_signed(vec!["shop.example.com".into()]).unwrap();
        let good = RouteTls {
            cert_pem: cert.cert.pem(),
            key_pem: cert.key_pair.serialize_pem(),
        };
        let bad = RouteTls {
            cert_pem: "not a pem".into(),
            key_pem: cert.key_pair.serialize_pem(),
        };
        let routes = [
            route("r1", "Shop.Example.com", Some(good)),
            route("r2", "bad.example.com", Some(bad)),
            route("r3", "plain.example.com", None),
        ];
        let certs = certs_of(&routes);
        assert_eq!(certs.keys().collect::<Vec<_>>(), ["shop.example.com"]);
    }
}
