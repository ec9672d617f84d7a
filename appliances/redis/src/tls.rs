//! The client side of a group's certificate: a `rediss://` URL is opened trusting only
//! the group's CA (the platform's cluster CA), with the server's name (the IP address
//! dialled) verified by rustls; a `redis://` URL (a group started without a
//! certificate) stays plain. Used by the supervisor's admin connection, the provider,
//! the backup hooks and the node's readiness check.

use std::path::Path;

use redis::{Client, RedisResult, TlsCertificates};

/// The URL scheme of a group with a certificate.
pub const TLS_SCHEME: &str = "rediss://";

/// A client for `url`: TLS verified against `ca_file` when the URL is `rediss://` and
/// a CA is given, as redis-rs would otherwise open it.
pub fn open(url: &str, ca_file: Option<&Path>) -> RedisResult<Client> {
    match ca_file {
        Some(ca) if url.starts_with(TLS_SCHEME) => {
            paas_appliance::tls::use_ring();
            let root_cert = std::fs::read(ca)?;
            Client::build_with_tls(
                url,
                TlsCertificates {
                    client_tls: None,
                    root_cert: Some(root_cert),
                },
            )
        }
        _ => Client::open(url),
    }
}

/// `redis://` or `rediss://`, as a group with (`tls`) or without a certificate is
/// reached.
pub fn scheme(tls: bool) -> &'static str {
    if tls {
        TLS_SCHEME
    } else {
        "redis://"
    }
}
